"""Content-addressed media: arrays, audio, video and clips stored under the sha256 of their bytes.

Every app stores large payloads here and keeps only the hash in the database, so the same bytes
are written once however often they are imported or rendered. Paths look like
``blobs/ab/cd/abcd…ef.npy``. Writes are atomic on the file system (temporary file + rename), so a
crash never leaves a half-written file under a valid hash.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, Storage, default_storage

_ALLOWED_EXT = {"npy", "mp4", "png", "wav", "json", "webm", "mov", "avi", "mkv", "pt"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_name(sha: str, ext: str) -> str:
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"not a sha256 hex digest: {sha!r}")
    if ext not in _ALLOWED_EXT:
        raise ValueError(f"unsupported blob extension {ext!r}")
    return f"blobs/{sha[:2]}/{sha[2:4]}/{sha}.{ext}"


def array_bytes(array: np.ndarray) -> bytes:
    """Canonical ``.npy`` bytes of a float32, C-ordered array (so equal arrays hash equally)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def blob_exists(sha: str, ext: str, storage: Storage | None = None) -> bool:
    return (storage or default_storage).exists(blob_name(sha, ext))


def put_blob(
    data: bytes, ext: str, storage: Storage | None = None, *, sha: str | None = None
) -> tuple[str, bool]:
    """Store ``data`` under its hash. Returns ``(sha256, created)``; ``created`` is False when
    the same bytes were already stored (nothing is written then). ``sha`` skips re-hashing
    bytes the caller has just hashed."""
    storage = storage or default_storage
    sha = sha or sha256_bytes(data)
    name = blob_name(sha, ext)
    if storage.exists(name):
        return sha, False
    if isinstance(storage, FileSystemStorage):
        path = Path(storage.path(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=f".{ext}")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        storage.save(name, ContentFile(data))
    return sha, True


def put_array(array: np.ndarray, storage: Storage | None = None) -> tuple[str, bool]:
    return put_blob(array_bytes(array), "npy", storage)


def read_blob(sha: str, ext: str, storage: Storage | None = None) -> bytes:
    with (storage or default_storage).open(blob_name(sha, ext), "rb") as fh:
        return fh.read()


def load_array(sha: str, storage: Storage | None = None) -> np.ndarray:
    return np.load(io.BytesIO(read_blob(sha, "npy", storage)), allow_pickle=False)


def delete_blob(sha: str, ext: str, storage: Storage | None = None) -> None:
    storage = storage or default_storage
    name = blob_name(sha, ext)
    if storage.exists(name):
        storage.delete(name)
