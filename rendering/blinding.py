"""Media bytes that tell a rater nothing about a clip's source.

A rendered clip's encoded size follows its motion (a lively source makes larger files), and
the same clip is the same bytes wherever it appears: a script could tell sources apart by size,
and pass catch trials, hidden repeats and gold items by comparing hashes, without watching.

So a rater's copy of a file is the stored file plus one padding element whose bytes are keyed
to that exposure (the lease, the screen position, the part), and whose length brings the file
to a size shared by every clip of the item:

- MP4: a rendered clip is remuxed to constant-size samples (``rendering.mp4_samples``), so
  its sample table says nothing either, and its ``mdat`` ends with the padding. Any other MP4:
  the ``mdat`` box grows by the padding (bytes no sample refers to; the stored files are
  written with ``+faststart``, so ``mdat`` is the last box and no offset moves), which also
  gives every file of the item the same ``mdat`` size; a file whose last box is not ``mdat``
  gets a trailing ``free`` box instead;
- PNG: a private, ancillary, safe-to-copy chunk (``bcPd``) just before ``IEND``.

The served size is the largest stored size of the item's clips plus room for the padding,
rounded up to ``QUANTUM`` bytes: every file of an item has the same size, which carries no more
about the sources than the item itself. The padding is derived from the server's secret and the
exposure, so a byte range or a reload serves the same bytes, and nobody else can predict them.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from rendering.mp4_samples import Plan, filler, plan, remuxed_moov, shared_sample_size

QUANTUM = 16 * 1024  # served sizes are multiples of this
NONCE = 32  # at least this many keyed bytes in every padding element
_MP4_HEAD = 8  # box size (4) + type (4)
_PNG_CHUNK = 12  # length (4) + type (4) + CRC (4)
_PNG_TYPE = b"bcPd"  # ancillary, private, reserved bit clear, safe to copy
_PNG_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
OVERHEAD = {"video": _MP4_HEAD + NONCE, "poster": _PNG_CHUNK + NONCE}


@dataclass(frozen=True)
class Padding:
    """How one exposure's copy of a file is made: its total size, the key of its bytes and,
    for a video served with constant-size samples, that size (``rendering.mp4_samples``)."""

    size: int
    key: bytes
    sample_size: int | None = None
    plan: Plan | None = None  # this file's remux plan, when the caller has it already


def exposure_key(secret: str, *parts: object) -> bytes:
    """The key of one exposure's padding: an HMAC of what names the exposure."""
    message = ":".join(str(p) for p in ("exposure-media", *parts)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def shared_size(sizes: Iterable[int], part: str) -> int:
    """The size every file of ``part`` of an item is served at: room for the padding above the
    largest, rounded up to ``QUANTUM``."""
    need = max(sizes) + OVERHEAD[part]
    return -(-need // QUANTUM) * QUANTUM


def video_padding(plans: list[Plan | None], stored: list[int], key: bytes,
                  own: Plan | None = None) -> Padding:
    """The padding of a video shown with others: constant-size samples when every clip of the
    item can be remuxed (``plans``; ``own``: the served file's, among them), else the shared
    size of the stored files."""
    if plans and all(p is not None for p in plans):
        sample = shared_sample_size(plans)  # type: ignore[arg-type]
        need = max(p.served_base(sample) for p in plans) + NONCE  # type: ignore[union-attr]
        return Padding(size=-(-need // QUANTUM) * QUANTUM, key=key, sample_size=sample,
                       plan=own)
    return Padding(size=shared_size(stored, "video"), key=key)


def keyed_bytes(key: bytes, n: int) -> bytes:
    return hashlib.shake_256(key).digest(n) if n else b""


@dataclass(frozen=True)
class Segment:
    """A piece of the served file: ``length`` bytes of the stored file from ``offset``, or
    the literal ``data``."""

    offset: int = 0
    length: int = 0
    data: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.length


def _last_box(fh: BinaryIO, stored: int) -> tuple[int, bytes, int] | None:
    """(offset, type, header length) of the last top-level box of an MP4, or None when the
    file is not a well-formed sequence of boxes."""
    at, last = 0, None
    while at < stored:
        fh.seek(at)
        head = fh.read(16)
        if len(head) < 8:
            return None
        size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if size == 1:  # a 64-bit size follows the type
            if len(head) < 16:
                return None
            size, header = struct.unpack(">Q", head[8:16])[0], 16
        elif size == 0:  # to the end of the file
            size = stored - at
        if size < header or at + size > stored:
            return None
        last = (at, kind, header)
        at += size
    return last


def segments(part: str, fh: BinaryIO, stored: int, padding: Padding | None) -> list[Segment]:
    """The served file as pieces of the stored one (``stored`` bytes, open as ``fh``) and
    padding. Raises ``ValueError`` when the padding would not fit (a size below the stored
    file's)."""
    if padding is None:
        return [Segment(0, stored)]
    extra = padding.size - stored
    if extra < OVERHEAD[part]:
        raise ValueError(f"a {part} of {stored} bytes cannot be served in {padding.size}")
    if part == "video" and padding.sample_size:
        remuxed = _remuxed(fh, stored, padding)
        if remuxed is not None:
            return remuxed
    if part == "video":
        last = _last_box(fh, stored)
        if last is not None and last[1] == b"mdat":
            at, _, header = last
            size = stored - at + extra
            head = (struct.pack(">I4s", size, b"mdat") if header == 8 and size < 2 ** 32
                    else struct.pack(">I4sQ", 1, b"mdat", size) if header == 16 else None)
            if head is not None:
                return [Segment(0, at), Segment(data=head),
                        Segment(at + header, stored - at - header),
                        Segment(data=keyed_bytes(padding.key, extra))]
        box = struct.pack(">I", extra) + b"free" + keyed_bytes(padding.key, extra - _MP4_HEAD)
        return [Segment(0, stored), Segment(data=box)]
    body = keyed_bytes(padding.key, extra - _PNG_CHUNK)
    chunk = (struct.pack(">I", len(body)) + _PNG_TYPE + body
             + struct.pack(">I", zlib.crc32(_PNG_TYPE + body)))
    fh.seek(max(0, stored - len(_PNG_IEND)))
    if fh.read(len(_PNG_IEND)) == _PNG_IEND:  # before IEND, where decoders expect chunks
        return [Segment(0, stored - len(_PNG_IEND)), Segment(data=chunk),
                Segment(stored - len(_PNG_IEND), len(_PNG_IEND))]
    return [Segment(0, stored), Segment(data=chunk)]  # not ending in IEND: after the end


def _remuxed(fh: BinaryIO, stored: int, padding: Padding) -> list[Segment] | None:
    """Pieces of the copy with constant-size samples, or None when this file cannot be
    remuxed to ``padding`` (then it is padded as stored)."""
    p = padding.plan or plan(fh, stored)
    size = padding.sample_size or 0
    if p is None or p.largest + 6 > size:
        return None
    data_at = p.ftyp_end + len(remuxed_moov(p, size, 0)) + 8
    pad = padding.size - data_at - size * len(p.sizes)
    if pad < NONCE:
        return None
    pieces = [Segment(0, p.ftyp_end), Segment(data=remuxed_moov(p, size, data_at)),
              Segment(data=struct.pack(">I4s", 8 + size * len(p.sizes) + pad, b"mdat"))]
    for at, n in zip(p.offsets, p.sizes, strict=True):
        pieces += [Segment(at, n), Segment(data=filler(size - n))]
    pieces.append(Segment(data=keyed_bytes(padding.key, pad)))
    return pieces


def read_range(fh: BinaryIO, pieces: list[Segment], start: int, length: int,
               chunk: int = 64 * 1024) -> Iterator[bytes]:
    """``length`` bytes of the served file from ``start``, in chunks; closes ``fh``."""
    try:
        at = 0  # where the current piece starts in the served file
        for piece in pieces:
            if length <= 0:
                break
            end = at + piece.size
            if start < end:
                skip = start - at
                take = min(piece.size - skip, length)
                if piece.data is not None:
                    yield piece.data[skip:skip + take]
                else:
                    fh.seek(piece.offset + skip)
                    left = take
                    while left > 0:
                        data = fh.read(min(chunk, left))
                        if not data:
                            return
                        left -= len(data)
                        yield data
                start += take
                length -= take
            at = end
    finally:
        fh.close()
