"""A snapshot folder as the archives it is downloaded as, produced while they are sent."""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from .files import _COPY_BUFFER, snapshot_files


def tar_gz_stream(root: Path, prefix: str) -> Iterator[bytes]:
    """The folder as a .tar.gz, produced as it is sent (one file buffer at a time). Dates are
    zero and owners blank, so one folder always gives the same archive."""
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip framing, mtime 0
    for rel in snapshot_files(root):
        path = root / rel
        info = tarfile.TarInfo(f"{prefix}/{rel}")
        info.size = path.stat().st_size
        info.mode = 0o644
        yield gz.compress(info.tobuf(format=tarfile.PAX_FORMAT))
        with open(path, "rb") as fh:
            while chunk := fh.read(_COPY_BUFFER):
                yield gz.compress(chunk)
        yield gz.compress(b"\0" * (-info.size % tarfile.BLOCKSIZE))
    yield gz.compress(b"\0" * (2 * tarfile.BLOCKSIZE))  # end of archive
    yield gz.flush()


class _Sink:
    """A write-only stream whose bytes are taken away as they come (for ``zipfile``)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def zip_stream(root: Path, prefix: str) -> Iterator[bytes]:
    """The folder as a .zip, produced as it is sent. Parquet files are compressed already, so
    members are stored (a zip reader then seeks straight into them)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for rel in snapshot_files(root):
            info = zipfile.ZipInfo(f"{prefix}/{rel}", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with open(root / rel, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while chunk := src.read(_COPY_BUFFER):
                    dst.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()
