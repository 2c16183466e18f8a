"""MEDIA_ROOT's files into a backup and back: every file, each hashed as it is copied, hard
links kept as hard links."""

from __future__ import annotations

import logging
import os
import stat
import uuid
from collections import Counter
from pathlib import Path, PurePosixPath

from feedback.export.hashing import file_sha256

from .manifest import (
    MEDIA_DIR,
    BackupError,
    Manifest,
    MediaEntry,
    ProgressFn,
    copy_hashed,
)

logger = logging.getLogger(__name__)


class _Meter:
    """Bytes done in one phase, handed to the progress callback."""

    def __init__(self, progress: ProgressFn | None, phase: str, total: int) -> None:
        self.progress, self.phase, self.total, self.done = progress, phase, total, 0
        self.add(0)

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.phase, self.done, self.total)


def media_list(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every regular file under ``root`` by relative path, in path order. Names that start
    with a dot are left out: the project writes every file under such a name first and
    renames it into place (blobs, snapshot folders, checkpoints), so they are work in
    progress, or the leftovers of a process that died."""
    out = []
    if not root.is_dir():
        return out
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            rel = path.relative_to(root).as_posix()
            if not stat.S_ISREG(st.st_mode):
                logger.warning("media: %s is not a regular file (a link?), left out", rel)
                continue
            out.append((rel, st))
    out.sort(key=lambda x: x[0])
    return out


def _named_by_content(rel: str, sha: str) -> bool:
    """Blobs and a snapshot's arrays are named by their sha256 and never written again."""
    return PurePosixPath(rel).stem == sha


def media_backup(*, root: Path, dest: Path, previous: tuple[Path, Manifest] | None,
                 progress: ProgressFn | None) -> tuple[list[MediaEntry], Counter]:
    """Copy every file of ``root`` into ``dest``; the manifest's entries and counts (copied,
    from_previous, same_as, vanished). A file named by its sha256 that ``previous`` (an earlier
    backup) holds under the same path, hash and size is a hard link to that copy, not read
    again. Files that share an inode (a snapshot's arrays are links to the blobs) are copied
    once and linked in the backup."""
    files = media_list(root)
    inodes: set[tuple[int, int]] = set()
    total = 0
    for _, st in files:
        if (st.st_dev, st.st_ino) not in inodes:
            inodes.add((st.st_dev, st.st_ino))
            total += st.st_size
    meter = _Meter(progress, "media", total)
    earlier = {e.path: e for e in previous[1].media} if previous else {}
    first_of: dict[tuple[int, int], MediaEntry] = {}
    entries: list[MediaEntry] = []
    counts: Counter = Counter()
    for rel, st in files:
        target = dest / rel
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in first_of:
            first = first_of[key]
            _link(dest / first.path, target)
            entries.append(MediaEntry(rel, first.sha256, first.bytes, same_as=first.path))
            counts["same_as"] += 1
            continue
        entry = None
        old = earlier.get(rel)
        if previous and old and old.bytes == st.st_size and _named_by_content(rel, old.sha256):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(previous[0] / MEDIA_DIR / rel, target)
                entry = MediaEntry(rel, old.sha256, old.bytes)
                counts["from_previous"] += 1
                meter.add(st.st_size)
            except OSError:
                entry = None  # gone from there, or another file system: copied below
        if entry is None:
            try:
                sha, n = copy_hashed(root / rel, target, meter.add)
            except FileNotFoundError:
                # removed since the listing; the dump, made before it, does not need it
                logger.warning("media: %s was removed during the backup, left out", rel)
                counts["vanished"] += 1
                continue
            entry = MediaEntry(rel, sha, n)
            counts["copied"] += 1
        entries.append(entry)
        if st.st_nlink > 1:
            first_of[key] = entry
    return entries, counts


def _link(src: Path, dest: Path) -> None:
    """``dest`` becomes a hard link to ``src`` (replacing what is there), or a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-link-{uuid.uuid4().hex[:12]}")
    try:
        os.link(src, tmp)
    except OSError:
        copy_hashed(src, dest)
        return
    os.replace(tmp, dest)


def media_verify(*, folder: Path, manifest: Manifest, progress: ProgressFn | None) -> None:
    """Every listed file is there with its size and sha256, and no other file is."""
    base = folder / MEDIA_DIR
    listed = {e.path for e in manifest.media}
    if base.is_dir():
        for current, _, names in os.walk(base):
            for name in names:
                path = Path(current) / name
                if path.relative_to(base).as_posix() not in listed:
                    raise BackupError(f"{path}: not listed in the manifest; the backup was "
                                      "changed after it was made")
    meter = _Meter(progress, "verify", manifest.media_bytes)
    hashed: dict[tuple[int, int], str] = {}
    for e in manifest.media:
        path = base / e.path
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise BackupError(f"{path}: missing (the manifest lists it); the backup is "
                              "incomplete") from None
        if not stat.S_ISREG(st.st_mode):
            raise BackupError(f"{path}: not a regular file")
        if st.st_size != e.bytes:
            raise BackupError(f"{path}: {st.st_size} bytes, the manifest says {e.bytes}; the "
                              "file was changed or damaged")
        key = (st.st_dev, st.st_ino)
        if key not in hashed:
            hashed[key] = file_sha256(path, meter.add)
        if hashed[key] != e.sha256:
            raise BackupError(f"{path}: sha256 {hashed[key]} differs from the manifest's "
                              f"{e.sha256}; the file was changed or damaged")


def media_compare(*, manifest: Manifest, root: Path,
                  progress: ProgressFn | None) -> tuple[set[str], list[str]]:
    """The listed files already in ``root`` with the backup's bytes (kept as they are), and
    those there with other bytes (replaced only with --force)."""
    same: set[str] = set()
    differ: list[str] = []
    there = [(e, root / e.path) for e in manifest.media if (root / e.path).exists()
             or (root / e.path).is_symlink()]
    meter = _Meter(progress, "compare", sum(e.bytes for e, _ in there))
    for e, path in there:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_size == e.bytes and file_sha256(
                path, meter.add) == e.sha256:
            same.add(e.path)
        else:
            differ.append(e.path)
    return same, differ


def media_restore(*, folder: Path, manifest: Manifest, root: Path, keep: set[str],
                  progress: ProgressFn | None) -> Counter:
    """Copy the backup's files into ``root`` (each by rename, so none is ever seen in part),
    except those in ``keep``; files of ``root`` that the backup does not list stay. Counts
    (copied, linked, kept)."""
    base = folder / MEDIA_DIR
    meter = _Meter(progress, "restore", sum(e.bytes for e in manifest.media
                                            if not e.same_as and e.path not in keep))
    counts: Counter = Counter()
    for e in manifest.media:
        target = root / e.path
        if e.path in keep:
            counts["kept"] += 1
        elif e.same_as:
            _link(root / e.same_as, target)
            counts["linked"] += 1
        else:
            sha, _ = copy_hashed(base / e.path, target, meter.add)
            if sha != e.sha256:
                raise BackupError(f"{base / e.path}: changed while it was being restored "
                                  f"(sha256 {sha}, the manifest says {e.sha256}); the media "
                                  "copied so far stay, the database was not touched")
            counts["copied"] += 1
    return counts
