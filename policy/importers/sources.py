"""Read-only views of an import source: a folder or a .zip archive.

Both refuse, before anything is read, what could escape the source or exhaust the machine:
absolute or ``..`` paths, symbolic links, a file over ``IMPORT_MAX_FILE_BYTES`` and a total over
``IMPORT_MAX_TOTAL_BYTES``. Paths are POSIX-style and relative to the source's root.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from django.conf import settings

from .errors import ImportProblem


def _check_relative(name: str, where: str) -> str:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ImportProblem(where, name, "absolute paths are not allowed")
    if any(part == ".." for part in path.parts):
        raise ImportProblem(where, name, "paths with '..' are not allowed")
    return str(path)


class Source:
    """Files of one import. ``label(rel)`` is what error messages call a file."""

    root_label: str
    _sizes: dict[str, int]

    def files(self) -> list[str]:
        return sorted(self._sizes)

    def exists(self, rel: str) -> bool:
        return rel in self._sizes

    def size(self, rel: str) -> int:
        return self._sizes[rel]

    def label(self, rel: str) -> str:
        return rel

    def read(self, rel: str, field: str = "file") -> bytes:
        rel = _check_relative(rel, self.root_label)
        if rel not in self._sizes:
            raise ImportProblem(rel, field, "file not found in the import")
        return self._read(rel)

    def _read(self, rel: str) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_sizes(self) -> None:
        limit = settings.IMPORT_MAX_FILE_BYTES
        total = 0
        for rel, size in self._sizes.items():
            if size > limit:
                raise ImportProblem(
                    rel, "size", f"{size} bytes is over the limit of {limit} bytes per file"
                )
            total += size
        if total > settings.IMPORT_MAX_TOTAL_BYTES:
            raise ImportProblem(
                self.root_label,
                "size",
                f"{total} bytes in all is over the limit of {settings.IMPORT_MAX_TOTAL_BYTES}",
            )


class FolderSource(Source):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root_label = str(root)
        self._sizes = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            for name in dirnames + filenames:
                full = Path(dirpath) / name
                rel = full.relative_to(self.root).as_posix()
                if full.is_symlink():
                    raise ImportProblem(rel, "file", "symbolic links are not allowed")
                if name in filenames:
                    self._sizes[rel] = full.stat().st_size
        self._check_sizes()

    def _read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


class ZipSource(Source):
    def __init__(self, path: Path) -> None:
        self.root_label = path.name
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ImportProblem(path.name, "archive", f"not a readable zip file ({exc})") from exc
        self._sizes = {}
        self._names: dict[str, zipfile.ZipInfo] = {}
        try:
            for info in self._zip.infolist():
                rel = _check_relative(info.filename, path.name)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise ImportProblem(info.filename, "file", "symbolic links are not allowed")
                if info.is_dir():
                    continue
                if rel in self._sizes:
                    raise ImportProblem(rel, "file", "appears twice in the archive")
                self._sizes[rel] = info.file_size
                self._names[rel] = info
            self._check_sizes()
        except BaseException:
            self._zip.close()
            raise

    def label(self, rel: str) -> str:
        return f"{self.root_label}:{rel}"

    def _read(self, rel: str) -> bytes:
        try:
            return self._zip.read(self._names[rel])
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ImportProblem(self.label(rel), "file", f"cannot be read ({exc})") from exc

    def close(self) -> None:
        self._zip.close()


def open_source(path: Path) -> Source:
    if path.is_symlink():
        raise ImportProblem(str(path), "path", "symbolic links are not allowed")
    if path.is_dir():
        return FolderSource(path)
    if path.is_file():
        size, limit = path.stat().st_size, settings.IMPORT_MAX_TOTAL_BYTES
        if size > limit:
            raise ImportProblem(
                str(path), "size", f"{size} bytes is over the limit of {limit} bytes per import"
            )
        return ZipSource(path)
    raise ImportProblem(str(path), "path", "no such file or folder")
