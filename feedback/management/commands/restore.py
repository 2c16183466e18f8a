"""Restore a backup made by ``manage.py backup`` over this instance (docs/backup.md).

    manage.py restore /backups/2026-05-01 --check    # verify it and say what would change
    manage.py restore /backups/2026-05-01            # into an empty database
    manage.py restore /backups/2026-05-01 --force    # replacing the database's data

Nothing is changed until the whole backup matches its manifest (every sha256), fits this
database engine and this code's migrations, and what it replaces is allowed. Stop the web
processes and the workers first.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from feedback.services.backup import BackupError, backup_restore, restore_plan

from ._progress import PhaseBars


class Command(BaseCommand):
    help = ("Restore a backup folder (database and media) over this instance, after checking "
            "it against its manifest; migrate when it is older than the code.")

    # The checks import every URL module and view; a restore needs the settings and the
    # database only (and the database may be empty, which some checks would not like).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", help="a backup folder (with manifest.json)")
        parser.add_argument("--force", action="store_true",
                            help="replace a database that holds data, and media files whose "
                                 "bytes differ from the backup's")
        parser.add_argument("--check", action="store_true",
                            help="verify the backup and print what a restore would do; "
                                 "change nothing")
        parser.add_argument("--pg-bin", metavar="DIR",
                            help="folder of pg_restore and psql (default: found on PATH)")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: object, **opts: object) -> None:
        folder = Path(str(opts["folder"]))
        force = bool(opts["force"])
        bars = PhaseBars(disable=bool(opts["no_progress"]))
        try:
            if opts["check"]:
                plan = restore_plan(folder=folder, force=force, pg_bin=opts["pg_bin"] or None,
                                    progress=bars)
            else:
                plan = backup_restore(folder=folder, force=force, pg_bin=opts["pg_bin"] or None,
                                      progress=bars)
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bars.close()
        m = plan.manifest
        made = f"made {m.created_at}" + (f" by {m.app.get('name')} {m.app.get('version')}"
                                          if m.app.get("version") else "")
        newer = (f"{len(plan.migrate)} migrations newer than the backup "
                 f"({', '.join(plan.migrate[:3])}{' …' if len(plan.migrate) > 3 else ''})")
        migrate = ("migrations: the same as the code's" if not plan.migrate
                   else f"would migrate {newer}" if opts["check"] else f"migrated {newer}")
        replaced = (f"; replaces the data in {len(plan.replaces_rows_in)} tables"
                    if plan.replaces_rows_in else "")
        if opts["check"]:
            self.stdout.write(
                f"backup {folder}: whole and unchanged ({made}; {len(m.media)} media files, "
                f"{len(plan.media_kept)} already here, {len(plan.media_replaced)} to replace)."
                f"\nA restore into {plan.database}{replaced}; {migrate}.")
            return
        c = plan.media
        self.stdout.write(
            f"restored {folder} ({made}) into {plan.database}{replaced}; media: {c['copied']} "
            f"copied, {c['linked']} linked, {c['kept']} already there; {migrate}; "
            f"{plan.seconds:.1f} s")
