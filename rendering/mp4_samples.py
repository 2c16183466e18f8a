"""Constant-size samples: an MP4's video served with every frame the same number of bytes.

Padding a file to a shared size hides its total, but the sample table inside (``stsz``, each
frame's encoded size) still follows the content, and a script that parses MP4 can sum it. So
a rendered clip (one H.264 track, no composition offsets: ``rendering.encode`` writes neither
B-frames nor scene-cut key frames) is served remuxed:

- every sample is followed by a filler NAL unit (H.264 type 12, which decoders discard) that
  brings it to a sample size shared by the item's clips;
- the sample table says that one size (``stsz``), the samples sit in one chunk (``stsc``,
  ``stco``), and nothing else in ``moov`` changes;
- the ``mdat`` box holds the samples, then the exposure's keyed padding.

``plan`` reads what the remux needs from a stored file (its boxes before ``mdat`` and the sample
table; a few kilobytes) and returns None for anything else (another layout, several tracks, B
frames), which is then served with the plain padding of ``rendering.blinding``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

_PATH = (b"trak", b"mdia", b"minf", b"stbl")
_FILLER_MIN = 6  # length (4) + NAL header (1) + rbsp trailing bits (1)
SAMPLE_QUANTUM = 64  # shared sample sizes are multiples of this


@dataclass(frozen=True)
class Plan:
    """What a remux needs from a stored clip."""

    ftyp_end: int  # bytes of the file before ``moov`` (``ftyp``), served as stored
    moov: bytes  # the ``moov`` box as stored
    offsets: tuple[int, ...]  # each sample's offset in the file
    sizes: tuple[int, ...]  # and its size

    @property
    def largest(self) -> int:
        return max(self.sizes, default=0)

    def served_base(self, sample_size: int) -> int:
        """Bytes of the remuxed file before the padding, at ``sample_size``."""
        return self.ftyp_end + len(remuxed_moov(self, sample_size, 0)) + 8 + \
            sample_size * len(self.sizes)


def _boxes(buf: bytes) -> list[tuple[bytes, bytes]] | None:
    """The boxes (type, whole box) one after another in ``buf``; None when malformed or when
    a box uses a 64-bit or open size (not found inside ``moov`` of a rendered clip)."""
    out, at = [], 0
    while at < len(buf):
        if at + 8 > len(buf):
            return None
        size, kind = struct.unpack(">I4s", buf[at:at + 8])
        if size < 8 or at + size > len(buf):
            return None
        out.append((kind, buf[at:at + size]))
        at += size
    return out


def _child(box: bytes, kind: bytes) -> list[bytes]:
    return [b for k, b in (_boxes(box[8:]) or []) if k == kind]


def plan(fh: BinaryIO, stored: int) -> Plan | None:
    """The remux plan of a stored MP4, or None when it is not a single H.264 track laid out as
    ``ftyp``, ``moov``, (``free``), ``mdat`` with a plain sample table."""
    try:
        return _plan(fh, stored)
    except (struct.error, ValueError, IndexError):
        return None


def _plan(fh: BinaryIO, stored: int) -> Plan | None:
    fh.seek(0)
    head = fh.read(min(stored, 8))
    if len(head) < 8 or head[4:8] != b"ftyp":
        return None
    ftyp_end = struct.unpack(">I", head[:4])[0]
    fh.seek(ftyp_end)
    size, kind = struct.unpack(">I4s", fh.read(8))
    if kind != b"moov" or size < 8 or ftyp_end + size > stored or size > 16 * 1024 * 1024:
        return None
    fh.seek(ftyp_end)
    moov = fh.read(size)
    at = ftyp_end + size
    while at < stored:  # only free space before the media data, which must be last
        fh.seek(at)
        box, kind = struct.unpack(">I4s", fh.read(8))
        if kind == b"mdat":
            if box != stored - at:
                return None
            break
        if kind not in (b"free", b"skip") or box < 8:
            return None
        at += box
    else:
        return None
    traks = _child(moov, b"trak")
    if len(traks) != 1:
        return None
    stbl = traks[0]
    for kind in _PATH[1:]:
        found = _child(stbl, kind)
        if len(found) != 1:
            return None
        stbl = found[0]
    tables = dict(_boxes(stbl[8:]) or [])
    if b"ctts" in tables or not {b"stsz", b"stsc", b"stco", b"stsd"} <= tables.keys():
        return None
    if b"avc1" not in tables[b"stsd"] or _nal_length_size(tables[b"stsd"]) != 4:
        return None
    stsz, stsc, stco = tables[b"stsz"], tables[b"stsc"], tables[b"stco"]
    fixed, count = struct.unpack(">II", stsz[12:20])
    sizes = [fixed] * count if fixed else list(struct.unpack(f">{count}I",
                                                           stsz[20:20 + 4 * count]))
    chunks = struct.unpack(f">{struct.unpack('>I', stco[12:16])[0]}I", stco[16:])
    runs = struct.unpack(">I", stsc[12:16])[0]
    entries = [struct.unpack(">III", stsc[16 + 12 * i:28 + 12 * i])[:2] for i in range(runs)]
    offsets: list[int] = []
    sample = 0
    for c, chunk_at in enumerate(chunks, start=1):
        per = next(n for first, n in reversed(entries) if first <= c)
        at = chunk_at
        for _ in range(per):
            if sample >= count:
                break
            offsets.append(at)
            at += sizes[sample]
            sample += 1
    if sample != count or any(o + s > stored for o, s in zip(offsets, sizes, strict=True)):
        return None
    return Plan(ftyp_end=ftyp_end, moov=moov, offsets=tuple(offsets), sizes=tuple(sizes))


def _nal_length_size(stsd: bytes) -> int:
    at = stsd.find(b"avcC")
    return (stsd[at + 8] & 0x03) + 1 if at >= 0 else 0


def shared_sample_size(plans: list[Plan]) -> int:
    """The sample size every clip of an item is served with: room for a filler after the
    largest sample of any of them, rounded up to ``SAMPLE_QUANTUM``."""
    need = max(p.largest for p in plans) + _FILLER_MIN
    return -(-need // SAMPLE_QUANTUM) * SAMPLE_QUANTUM


def _table(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + 4 + len(body), kind) + b"\0\0\0\0" + body


def remuxed_moov(p: Plan, sample_size: int, data_at: int) -> bytes:
    """``moov`` with one sample size, one chunk of all samples, starting at ``data_at``."""
    n = len(p.sizes)
    tables = {b"stsz": _table(b"stsz", struct.pack(">II", sample_size, n)),
              b"stsc": _table(b"stsc", struct.pack(">IIII", 1, 1, n, 1)),
              b"stco": _table(b"stco", struct.pack(">II", 1, data_at))}

    def rebuild(box: bytes, path: tuple[bytes, ...]) -> bytes:
        parts = []
        for kind, child in _boxes(box[8:]) or []:
            if not path:
                parts.append(tables.get(kind, child))
            elif kind == path[0]:
                parts.append(rebuild(child, path[1:]))
            else:
                parts.append(child)
        body = b"".join(parts)
        return struct.pack(">I", 8 + len(body)) + box[4:8] + body

    return rebuild(p.moov, _PATH)


def filler(n: int) -> bytes:
    """An H.264 filler-data NAL unit of ``n`` bytes in all, with its 4-byte length."""
    if n < _FILLER_MIN:
        raise ValueError(f"a filler NAL unit needs {_FILLER_MIN} bytes, not {n}")
    return struct.pack(">I", n - 4) + b"\x0c" + b"\xff" * (n - 6) + b"\x80"
