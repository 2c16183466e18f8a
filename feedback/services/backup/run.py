"""Making a backup, checking one, restoring one."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import DatabaseError
from django.utils import timezone

from feedback.export.hashing import file_sha256

from .database import (
    database_engine,
    database_label,
    migrations_compare,
    pg_dump,
    pg_restore,
    pg_restore_check,
    sqlite_dump,
    sqlite_restore,
    tables_with_rows,
)
from .manifest import (
    DUMP_FILES,
    MEDIA_DIR,
    BackupError,
    Manifest,
    ProgressFn,
    manifest_read,
    manifest_write,
)
from .media import media_backup, media_compare, media_restore, media_verify

logger = logging.getLogger(__name__)


@dataclass
class BackupResult:
    manifest: Manifest
    media: Counter  # copied, from_previous, same_as, vanished
    seconds: float


@dataclass
class RestorePlan:
    manifest: Manifest
    database: str  # which database, for messages
    replaces_rows_in: list[str]  # tables that hold data now (only with --force)
    media_kept: set[str]  # already in MEDIA_ROOT with the backup's bytes
    media_replaced: list[str]  # in MEDIA_ROOT with other bytes (only with --force)
    migrate: list[str]  # this code's migrations the backup lacks: migrate runs after
    media: Counter = field(default_factory=Counter)  # what the restore did: copied, linked, kept
    seconds: float = 0.0


def _media_root() -> Path:
    return Path(settings.MEDIA_ROOT)


def _app_info() -> dict:
    base = Path(settings.BASE_DIR)
    info: dict = {"name": None, "version": None, "commit": None}
    try:
        project = tomllib.loads((base / "pyproject.toml").read_text())["project"]
        info.update(name=project.get("name"), version=project.get("version"))
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    if (base / ".git").exists() and shutil.which("git"):
        done = subprocess.run(["git", "-C", str(base), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            info["commit"] = done.stdout.strip()
    return info


def backup_create(*, folder: Path, link_dest: Path | None = None, pg_bin: str | None = None,
                  progress: ProgressFn | None = None) -> BackupResult:
    """Write a backup into ``folder`` (new, or empty): the database first, then MEDIA_ROOT,
    then the manifest. Every file a row of the dump names was written before that row was
    committed (blobs and snapshot folders are renamed into place first), and media files are
    never changed in place, so the copy made after the dump holds all the dump needs. A
    failure removes what was written."""
    t0 = time.perf_counter()
    engine = database_engine()
    root = _media_root()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BackupError(f"{folder}: exists and is not an empty folder")
    if folder.resolve().is_relative_to(root.resolve()):
        raise BackupError(f"{folder}: inside MEDIA_ROOT ({root}); the backup would copy "
                          "itself")
    previous = None
    if link_dest is not None:
        previous = (link_dest, manifest_read(link_dest))
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        dump = folder / DUMP_FILES[engine]
        t = time.perf_counter()
        if engine == "postgresql":
            migrations, about = pg_dump(out=dump, pg_bin=pg_bin)
        else:
            migrations, about = sqlite_dump(out=dump)
        dump_bytes = dump.stat().st_size
        logger.info("backup %s: database dumped in %.1fs (%d bytes)", folder,
                    time.perf_counter() - t, dump_bytes)
        t = time.perf_counter()
        entries, counts = media_backup(root=root, dest=folder / MEDIA_DIR, previous=previous,
                                       progress=progress)
        logger.info("backup %s: %d media files in %.1fs (%s)", folder, len(entries),
                    time.perf_counter() - t, dict(counts))
        manifest = Manifest(
            created_at=timezone.now().isoformat(), app=_app_info(), engine=engine,
            dump_file=dump.name, dump_sha256=file_sha256(dump), dump_bytes=dump_bytes,
            database=about, migrations=migrations, media=entries)
        manifest_write(folder, manifest)
    except BaseException:
        _remove_contents(folder, remove_folder=created)
        raise
    return BackupResult(manifest=manifest, media=counts, seconds=time.perf_counter() - t0)


def _remove_contents(folder: Path, *, remove_folder: bool) -> None:
    if remove_folder:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def backup_verify(*, folder: Path, progress: ProgressFn | None = None) -> Manifest:
    """The manifest, once the dump and every media file match it (size and sha256) and
    nothing else is in the media folder. Raises ``BackupError`` naming the first file that
    does not."""
    manifest = manifest_read(folder)
    dump = folder / manifest.dump_file
    if not dump.is_file():
        raise BackupError(f"{dump}: missing (the manifest lists it); the backup is incomplete")
    if (size := dump.stat().st_size) != manifest.dump_bytes:
        raise BackupError(f"{dump}: {size} bytes, the manifest says {manifest.dump_bytes}; the "
                          "file was changed or damaged")
    if (sha := file_sha256(dump)) != manifest.dump_sha256:
        raise BackupError(f"{dump}: sha256 {sha} differs from the manifest's "
                          f"{manifest.dump_sha256}; the file was changed or damaged")
    media_verify(folder=folder, manifest=manifest, progress=progress)
    return manifest


def restore_plan(*, folder: Path, force: bool, pg_bin: str | None = None,
                 progress: ProgressFn | None = None) -> RestorePlan:
    """Everything ``backup_restore`` checks before it changes anything: the backup is whole
    and unchanged, it fits this database engine, the PostgreSQL tools here can read it, it is
    not newer than this code's migrations, and what it would replace (a database that holds
    data, media files with other bytes) is replaced only with ``force``."""
    manifest = backup_verify(folder=folder, progress=progress)
    engine = database_engine()
    if manifest.engine != engine:
        raise BackupError(f"{folder}: a {manifest.engine} backup; this instance runs on "
                          f"{engine} ({database_label()})")
    if engine == "postgresql":
        pg_restore_check(dump=folder / manifest.dump_file, pg_bin=pg_bin)
    newer, missing = migrations_compare(manifest.migrations)
    if newer:
        raise BackupError(f"{folder}: made by a newer version of the code (migrations this "
                          f"one does not have: {', '.join(newer[:5])}"
                          f"{' …' if len(newer) > 5 else ''}); deploy that version first")
    label = database_label()
    try:
        held = tables_with_rows()
    except DatabaseError as exc:
        raise BackupError(f"{label}: cannot read it ({exc})") from None
    if held and not force:
        raise BackupError(f"{label} is not empty (rows in {', '.join(held[:5])}"
                          f"{' …' if len(held) > 5 else ''}); a restore replaces everything "
                          "in it: pass --force to do so")
    kept, differ = media_compare(manifest=manifest, root=_media_root(), progress=progress)
    if differ and not force:
        raise BackupError(f"{_media_root() / differ[0]}: exists with other bytes than the "
                          f"backup's ({len(differ)} such files); pass --force to replace them")
    return RestorePlan(manifest=manifest, database=label, replaces_rows_in=held,
                       media_kept=kept, media_replaced=differ, migrate=missing)


def backup_restore(*, folder: Path, force: bool = False, pg_bin: str | None = None,
                   progress: ProgressFn | None = None) -> RestorePlan:
    """Restore the backup in ``folder`` over this instance, once ``restore_plan`` allows it:
    the media files first (a database that fails to restore afterwards is left as it was,
    with files it does not refer to, which harm nothing), then the database in one
    transaction, then ``migrate`` when the backup is older than this code."""
    t0 = time.perf_counter()
    plan = restore_plan(folder=folder, force=force, pg_bin=pg_bin, progress=progress)
    manifest = plan.manifest
    root = _media_root()
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    plan.media = media_restore(folder=folder, manifest=manifest, root=root, keep=plan.media_kept,
                               progress=progress)
    logger.info("restore %s: media in %.1fs (%s)", folder, time.perf_counter() - t,
                dict(plan.media))
    t = time.perf_counter()
    dump = folder / manifest.dump_file
    if manifest.engine == "postgresql":
        pg_restore(dump=dump, pg_bin=pg_bin)
    else:
        sqlite_restore(dump=dump)
    logger.info("restore %s: database %s restored in %.1fs", folder, plan.database,
                time.perf_counter() - t)
    ContentType.objects.clear_cache()  # ids read before the restore may name other rows
    if plan.migrate:
        t = time.perf_counter()
        call_command("migrate", interactive=False, verbosity=0)
        logger.info("restore %s: %d migrations applied in %.1fs", folder, len(plan.migrate),
                    time.perf_counter() - t)
    plan.seconds = time.perf_counter() - t0
    return plan
