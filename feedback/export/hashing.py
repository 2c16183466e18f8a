"""The content hash of a snapshot folder (its name)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from .files import _COPY_BUFFER, snapshot_files
from .schema import ARRAYS, array_path


def file_sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """The file's sha256; ``on_bytes`` hears how many bytes each read hashed (progress)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_COPY_BUFFER):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()


def content_hash(root: Path) -> tuple[str, int]:
    """(hash, bytes): the sha256 of the ``sha256sum`` listing of every file, by relative path
    in byte order ("<sha256>  <path>\\n" per file), which anyone can recompute (see the card).
    A sequence's sha256 is its name: the blob store writes each under the hash of its bytes,
    once, by rename (``rendering.blobs``), so a million sequences are not read again here."""
    listing = hashlib.sha256()
    size = 0
    for rel in snapshot_files(root):
        path = root / rel
        name = rel.removeprefix(f"{ARRAYS}/").removesuffix(".npy")
        digest = name if rel == array_path(name) and len(name) == 64 else file_sha256(path)
        listing.update(f"{digest}  {rel}\n".encode())
        size += path.stat().st_size
    return listing.hexdigest(), size
