"""The files of a snapshot folder: its sequences under ``arrays/``, the listing in order,
copying and removing a folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

from .schema import ARRAYS, array_path

_COPY_BUFFER = 1 << 20


def array_link(root: Path, sha: str, source: Path) -> None:
    """Put one stored sequence into ``arrays/`` as a hard link to the stored file (blobs are
    written once, by rename, and never changed), or a copy across file systems. Raises
    ``FileNotFoundError`` when it is not stored."""
    dest = root / array_path(sha)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copyfile(source, dest)


def array_put(root: Path, sha: str, source: IO[bytes]) -> None:
    """Copy one stored sequence into ``arrays/`` from a stream (storages that are not local
    files)."""
    dest = root / array_path(sha)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        shutil.copyfileobj(source, out, _COPY_BUFFER)


def snapshot_files(root: Path) -> list[str]:
    """The snapshot's files, relative, in the order the hash and the archives take them."""
    out = []
    for folder, _, names in os.walk(root):
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        out += [name if rel == "." else f"{rel}/{name}" for name in names]
    return sorted(out)


def folder_copy(src: Path, dest: Path, *, link_arrays: bool = True) -> None:
    """Copy a finished snapshot to ``dest`` (made, or empty). The sequences under ``arrays/``
    are hard links where the file system allows (they are named by their hash and never
    written again; a million small files copy slowly), unless ``link_arrays`` is off."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    made: set[Path] = set()
    for rel in snapshot_files(src):
        target = dest / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        if link_arrays and rel.startswith(f"{ARRAYS}/"):
            try:
                os.link(src / rel, target)
                continue
            except OSError:
                pass
        shutil.copyfile(src / rel, target)


def folder_remove(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
