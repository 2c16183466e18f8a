"""The backup folder's layout and its manifest: reading one back checks every field, so a
damaged or hand-edited manifest is refused with the field that is wrong."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

FORMAT = 1  # raised when the layout changes; restore refuses formats it does not know
MANIFEST = "manifest.json"
MEDIA_DIR = "media"  # MEDIA_ROOT's files, by their path under it
DUMP_FILES = {"postgresql": "database.dump", "sqlite": "database.sqlite3"}

_BUFFER = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# (phase, bytes done, bytes in all): "media" while backing up, "verify", "restore"
ProgressFn = Callable[[str, int, int], None]


class BackupError(Exception):
    """A backup that cannot be made or restored; the message names the file and what is wrong.
    Raised before anything was changed, unless the message says otherwise."""


@dataclass
class MediaEntry:
    path: str  # relative to MEDIA_ROOT, with "/"
    sha256: str
    bytes: int
    same_as: str | None = None  # a hard link to this earlier entry's file (one copy on disk)

    def as_json(self) -> dict:
        out: dict = {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}
        if self.same_as:
            out["same_as"] = self.same_as
        return out


@dataclass
class Manifest:
    created_at: str
    app: dict
    engine: str  # "postgresql" or "sqlite"
    dump_file: str
    dump_sha256: str
    dump_bytes: int
    database: dict  # what else is known about the database (server and tool versions)
    migrations: list[tuple[str, str]]  # (app label, migration name), applied in the dump
    media: list[MediaEntry] = field(default_factory=list)

    @property
    def media_bytes(self) -> int:
        return sum(e.bytes for e in self.media if not e.same_as)

    def as_json(self) -> dict:
        return {
            "format": FORMAT,
            "created_at": self.created_at,
            "app": self.app,
            "database": {**self.database, "engine": self.engine, "file": self.dump_file,
                         "sha256": self.dump_sha256, "bytes": self.dump_bytes},
            "migrations": [list(m) for m in self.migrations],
            "media": {"dir": MEDIA_DIR, "count": len(self.media), "bytes": self.media_bytes,
                      "files": [e.as_json() for e in self.media]},
        }


def manifest_write(folder: Path, manifest: Manifest) -> None:
    """Written last and by rename: a folder without ``manifest.json`` is a backup that did
    not finish."""
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest.as_json(), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)


def manifest_read(folder: Path) -> Manifest:
    path = folder / MANIFEST
    if not path.is_file():
        raise BackupError(f"{path}: missing; {folder} is not a backup, or one that did not "
                          "finish")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupError(f"{path}: not valid JSON ({exc})") from None

    def need(value: object, where: str, kind: type) -> Any:
        if not isinstance(value, kind):
            raise BackupError(f"{path}: {where}: expected {_kind_name(kind)}, got {value!r}")
        return value

    need(data, "the top level", dict)
    if data.get("format") != FORMAT:
        raise BackupError(f"{path}: format: {data.get('format')!r}; this version reads format "
                          f"{FORMAT} only")
    db = need(data.get("database"), "database", dict)
    engine = need(db.get("engine"), "database.engine", str)
    if engine not in DUMP_FILES:
        raise BackupError(f"{path}: database.engine: {engine!r}, expected one of "
                          f"{', '.join(DUMP_FILES)}")
    if db.get("file") != DUMP_FILES[engine]:
        raise BackupError(f"{path}: database.file: {db.get('file')!r}, expected "
                          f"{DUMP_FILES[engine]!r} for {engine}")
    dump_sha = _sha(db.get("sha256"), path, "database.sha256")
    dump_bytes = _count(db.get("bytes"), path, "database.bytes")
    migrations = []
    for i, m in enumerate(need(data.get("migrations"), "migrations", list)):
        if not (isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) for s in m)):
            raise BackupError(f"{path}: migrations[{i}]: expected [app, name], got {m!r}")
        migrations.append((m[0], m[1]))
    media = need(data.get("media"), "media", dict)
    entries: list[MediaEntry] = []
    seen: dict[str, MediaEntry] = {}
    for i, e in enumerate(need(media.get("files"), "media.files", list)):
        where = f"media.files[{i}]"
        need(e, where, dict)
        rel = media_path_check(need(e.get("path"), f"{where}.path", str), path, where)
        if rel in seen:
            raise BackupError(f"{path}: {where}.path: {rel!r} is listed twice")
        entry = MediaEntry(path=rel, sha256=_sha(e.get("sha256"), path, f"{where}.sha256"),
                           bytes=_count(e.get("bytes"), path, f"{where}.bytes"),
                           same_as=e.get("same_as"))
        if entry.same_as is not None:
            first = seen.get(entry.same_as)
            if first is None or first.same_as or (first.sha256, first.bytes) != (
                    entry.sha256, entry.bytes):
                raise BackupError(f"{path}: {where}.same_as: {entry.same_as!r} is not an "
                                  "earlier file with the same sha256 and size")
        seen[rel] = entry
        entries.append(entry)
    app = data.get("app") if isinstance(data.get("app"), dict) else {}
    return Manifest(created_at=str(data.get("created_at", "")), app=app,
                    engine=engine, dump_file=db["file"], dump_sha256=dump_sha,
                    dump_bytes=dump_bytes,
                    database={k: v for k, v in db.items()
                              if k not in ("engine", "file", "sha256", "bytes")},
                    migrations=migrations, media=entries)


def media_path_check(rel: str, path: Path, where: str) -> str:
    """A manifest's file path, refused unless it stays inside the media folder (a hand-made
    manifest must not write elsewhere) and is one that a backup takes."""
    p = PurePosixPath(rel)
    if (not rel or p.is_absolute() or "\\" in rel or "\x00" in rel or str(p) != rel
            or any(part in ("", ".", "..") or part.startswith(".") for part in p.parts)):
        raise BackupError(f"{path}: {where}.path: {rel!r} is not a relative path of a media "
                          "file")
    return rel


def _sha(value: object, path: Path, where: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise BackupError(f"{path}: {where}: expected a sha256 in hex, got {value!r}")
    return value


def _count(value: object, path: Path, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BackupError(f"{path}: {where}: expected a byte count, got {value!r}")
    return value


def _kind_name(kind: type) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(kind, kind.__name__)


def copy_hashed(src: Path, dest: Path,
                on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Copy ``src`` to ``dest`` in one read, hashing what was written: (sha256, bytes). The
    file appears whole (a dot-named temporary file, then a rename), so a reader, or a backup
    running at the same time, never sees part of it."""
    digest = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-copy-")
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while chunk := fin.read(_BUFFER):
                digest.update(chunk)
                fout.write(chunk)
                size += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        shutil.copymode(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


def link_or_copy(src: Path, dest: Path) -> bool:
    """A hard link where the file system allows (True), else a copy (False)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
        return True
    except FileExistsError:
        raise
    except OSError:
        copy_hashed(src, dest)
        return False
