"""Back up the database and MEDIA_ROOT into a folder (docs/backup.md).

    manage.py backup /backups/2026-05-01
    manage.py backup /backups/2026-05-02 --link-dest /backups/2026-05-01   # new files only

The folder holds the dump (PostgreSQL: pg_dump's custom format; SQLite: a copy), every media
file and ``manifest.json`` (written last) with the sha256 of each. ``manage.py restore`` puts
it back.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from feedback.services.backup import BackupError, backup_create

from ._progress import PhaseBars


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


class Command(BaseCommand):
    help = ("Back up the database (pg_dump, or SQLite's backup API) and every file of "
            "MEDIA_ROOT into a new folder, with a manifest of sha256 sums.")

    # The system checks import every URL module and view; a backup needs the settings and
    # the database only.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", help="where to write the backup (new, or empty)")
        parser.add_argument("--link-dest", metavar="EARLIER",
                            help="an earlier backup: files named by their sha256 that it holds "
                                 "become hard links to its copies instead of new copies")
        parser.add_argument("--pg-bin", metavar="DIR",
                            help="folder of pg_dump (default: found on PATH); its major "
                                 "version must be at least the server's")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: object, **opts: object) -> None:
        folder = Path(str(opts["folder"]))
        bars = PhaseBars(disable=bool(opts["no_progress"]))
        if not opts["no_progress"]:
            self.stderr.write("dumping the database …")
        try:
            result = backup_create(
                folder=folder, link_dest=Path(str(opts["link_dest"])) if opts["link_dest"]
                else None, pg_bin=opts["pg_bin"] or None, progress=bars)
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bars.close()
        m, c = result.manifest, result.media
        linked = f", {c['from_previous']} linked to the earlier backup" if c["from_previous"] \
            else ""
        self.stdout.write(
            f"backup {folder}: {m.engine} database {_mb(m.dump_bytes)} at "
            f"{len(m.migrations)} migrations; {len(m.media)} media files "
            f"{_mb(m.media_bytes)} ({c['copied']} copied{linked}, {c['same_as']} hard links "
            f"kept); {result.seconds:.1f} s")
        if c["vanished"]:
            self.stderr.write(f"{c['vanished']} media files were removed while the backup "
                              "ran and are not in it")
