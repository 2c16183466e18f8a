"""Backup and restore of a whole instance: the database and MEDIA_ROOT (docs/backup.md).

A backup is a folder:

    manifest.json        written last: when, which code, the migrations in the dump, and the
                         sha256 and size of the dump and of every media file
    database.dump        pg_dump's custom format (PostgreSQL), or
    database.sqlite3     a copy made through SQLite's backup API (the embedded default)
    media/...            every file of MEDIA_ROOT, by its path there

``backup_create`` dumps the database first and copies the media after it, so the copy holds
every file the dump refers to (files are written before the rows that name them, and never
changed in place). All of MEDIA_ROOT is copied, not only the files rows refer to: what refers
to a file is spread over many tables of four apps, and a list that missed one would lose data
without a word, while files nothing refers to cost only their bytes. Names starting with a dot
are work in progress and left out. Files named by their hash can be hard links into an earlier
backup (``link_dest``), so a daily backup writes only what is new.

``backup_restore`` checks the whole backup against its manifest, the database engine, the
migrations (a backup made by newer code is refused) and what it would replace, before it
changes anything; then it copies the media, restores the database in one transaction and runs
``migrate`` when the backup is older than the code.
"""

from .database import migrations_compare, tables_with_rows
from .manifest import MANIFEST, MEDIA_DIR, BackupError, Manifest, MediaEntry, manifest_read
from .run import (
    BackupResult,
    RestorePlan,
    backup_create,
    backup_restore,
    backup_verify,
    restore_plan,
)

__all__ = [
    "MANIFEST",
    "MEDIA_DIR",
    "BackupError",
    "BackupResult",
    "Manifest",
    "MediaEntry",
    "RestorePlan",
    "backup_create",
    "backup_restore",
    "backup_verify",
    "manifest_read",
    "migrations_compare",
    "restore_plan",
    "tables_with_rows",
]
