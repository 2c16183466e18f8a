"""``manage.py backup`` and ``restore`` on real PostgreSQL: a restored instance, in a database
of its own, makes the same preference snapshot (the same content hash) as the one backed up,
and holds the same media bytes; backups that were changed, or restores that would replace
data without ``--force``, change nothing. The embedded default (SQLite) is restored too."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from psycopg import sql

from feedback import export
from feedback.models import Snapshot
from feedback.services.backup import MANIFEST, migrations_compare
from rendering import blobs
from tests.annotation.conftest import corpus, enrol, make_campaign, researcher  # noqa: F401
from tests.feedback.test_snapshots import answer_all, make

ROOT = Path(__file__).resolve().parent.parent

# pg_dump and the restored instance read committed rows only
committed = pytest.mark.django_db(transaction=True)


@pytest.fixture
def instance(corpus, researcher):  # noqa: F811
    """A campaign answered by three raters through the rating path, and a snapshot of it."""
    campaign = make_campaign(corpus, created_by=researcher, reason_tags=["timing"])
    assert answer_all(campaign, enrol(campaign, 3)) > 10
    snapshot = make({"campaigns": [campaign.slug], "qc": "all"})
    assert snapshot.content_hash, snapshot.error
    return campaign, snapshot


def pg_params(name: str | None = None) -> dict:
    db = settings.DATABASES["default"]
    return {"host": db.get("HOST") or None, "port": db.get("PORT") or None,
            "user": db.get("USER") or None, "password": db.get("PASSWORD") or None,
            "dbname": name or db["NAME"]}


@pytest.fixture
def restored_db():
    """A fresh, empty database beside the test database; its URL. Dropped afterwards."""
    db = settings.DATABASES["default"]
    name = f"{db['NAME']}_restore"
    with psycopg.connect(**pg_params("postgres"), autocommit=True) as admin:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        admin.execute(drop)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        user = quote(db.get("USER") or "")
        password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
        try:
            yield (f"postgres://{user}{password}@{db.get('HOST') or 'localhost'}:"
                   f"{db.get('PORT') or 5432}/{name}")
        finally:
            admin.execute(drop)


def manage(*args: str, database_url: str, media_root: Path) -> subprocess.CompletedProcess:
    """``manage.py`` as a separate instance: its own database and media folder."""
    env = {**os.environ, "DATABASE_URL": database_url, "MEDIA_ROOT": str(media_root)}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def table_digests(cursor) -> dict[str, tuple[int, str]]:
    """Every table's row count and the md5 of its rows (as text, in order)."""
    cursor.execute("SET TIME ZONE 'UTC'")
    cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                   "ORDER BY 1")
    out = {}
    for (table,) in cursor.fetchall():
        cursor.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' "  # noqa: S608
                       f"ORDER BY t::text), '')) FROM \"{table}\" t")
        out[table] = tuple(cursor.fetchone())
    return out


def here_digests() -> dict[str, tuple[int, str]]:
    with connection.cursor() as cur:
        return table_digests(cur)


def media_contents(root: Path | str) -> dict[str, bytes]:
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def state() -> tuple[dict, dict]:
    """What a restore would change: the database's rows and the media files."""
    return here_digests(), media_contents(settings.MEDIA_ROOT)


@committed
def test_a_restored_instance_makes_the_same_snapshot_with_the_same_media(
        instance, restored_db, tmp_path):
    # given an instance with judgments and a snapshot of them, backed up
    campaign, original = instance
    backup = tmp_path / "backup"
    call_command("backup", str(backup), "--no-progress")
    before = state()
    # when the backup is restored into a fresh database and an empty media folder
    media = tmp_path / "restored-media"
    done = manage("restore", str(backup), "--no-progress", database_url=restored_db,
                  media_root=media)
    assert done.returncode == 0, done.stderr
    # then every table holds the same rows and every media file has the same bytes
    with psycopg.connect(**pg_params(restored_db.rsplit("/", 1)[1])) as conn, \
            conn.cursor() as cur:
        assert table_digests(cur) == before[0]
    assert media_contents(media) == before[1]
    assert any(p.startswith("blobs/") for p in before[1]) and any(
        p.startswith(f"snapshots/{original.content_hash}/") for p in before[1])
    # and a snapshot made anew by the restored instance has the original's hash
    out = tmp_path / "export"
    made = manage("export_preferences", "--campaign", campaign.slug, "--qc", "all", "--out",
                  str(out), "--no-progress", database_url=restored_db, media_root=media)
    assert made.returncode == 0, made.stderr
    found = re.search(r"snapshot #(\d+) ([0-9a-f]{64})", made.stdout)
    assert found, made.stdout
    assert int(found[1]) > original.pk  # a new snapshot, computed again from the rows
    assert found[2] == original.content_hash
    assert export.content_hash(out)[0] == original.content_hash
    # and the backed-up instance itself was not touched
    assert state() == before


TAMPERINGS = {
    "a media file's bytes": lambda b: _flip(next((b / "media" / "blobs").rglob("*.npy"))),
    "the database dump": lambda b: _append(b / "database.dump"),
    "a media file removed": lambda b: next((b / "media" / "blobs").rglob("*.mp4")).unlink(),
    "a file added": lambda b: (b / "media" / "blobs" / "extra.npy").write_bytes(b"x"),
    "the manifest removed": lambda b: (b / MANIFEST).unlink(),
    "a path out of the media folder": lambda b: _edit_manifest(
        b, lambda m: m["media"]["files"][0].update(path="../../outside.npy")),
}
EXPECTED = {
    "a media file's bytes": r"media/blobs/.+\.npy: sha256 \w+ differs from the manifest",
    "the database dump": r"database\.dump: \d+ bytes, the manifest says \d+",
    "a media file removed": r"media/blobs/.+\.mp4: missing",
    "a file added": r"media/blobs/extra\.npy: not listed in the manifest",
    "the manifest removed": r"manifest\.json: missing",
    "a path out of the media folder": r"media\.files\[0\]\.path: '\.\./\.\./outside\.npy' is "
                                      r"not a relative path",
}


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _append(path: Path) -> None:
    with open(path, "ab") as fh:
        fh.write(b"\0")


def _edit_manifest(backup: Path, change) -> None:
    data = json.loads((backup / MANIFEST).read_text())
    change(data)
    (backup / MANIFEST).write_text(json.dumps(data))


@committed
def test_a_changed_backup_is_refused_naming_the_file_and_changes_nothing(instance, tmp_path):
    # given a backup, and an instance that has changed since (a restore would undo that)
    backup = tmp_path / "backup"
    call_command("backup", str(backup), "--no-progress")
    Snapshot.objects.all().delete()
    blobs.put_blob(b"made after the backup", "json")
    before = state()
    for i, (case, tamper) in enumerate(TAMPERINGS.items()):
        copy = tmp_path / f"copy-{i}"
        shutil.copytree(backup, copy)
        tamper(copy)
        # when it is restored, even with --force
        with pytest.raises(CommandError, match=EXPECTED[case]) as refused:
            call_command("restore", str(copy), "--force", "--no-progress")
        # then it is refused, naming the file, and nothing changed
        assert str(copy) in str(refused.value), case
        assert state() == before, case
    assert not (tmp_path / "outside.npy").exists()


@committed
def test_a_restore_over_data_needs_force_and_then_brings_back_the_backup(instance, tmp_path):
    # given a backup, then changes: the snapshot row gone, a new media file
    backup = tmp_path / "backup"
    call_command("backup", str(backup), "--no-progress")
    backed_up = state()
    Snapshot.objects.all().delete()
    sha, _ = blobs.put_blob(b"made after the backup", "json")
    changed = state()
    # when it is restored without --force
    with pytest.raises(CommandError, match=r"is not empty \(rows in annotation_.*pass --force"):
        call_command("restore", str(backup), "--no-progress")
    # then nothing changed
    assert state() == changed
    # when with --force
    call_command("restore", str(backup), "--force", "--no-progress")
    # then the rows are the backup's again, and its media are there; the newer file stays
    rows, media = state()
    assert rows == backed_up[0]
    assert Snapshot.objects.filter(content_hash=instance[1].content_hash).exists()
    assert {k: v for k, v in media.items() if k in backed_up[1]} == backed_up[1]
    assert set(media) - set(backed_up[1]) == {blobs.blob_name(sha, "json")}


@committed
def test_a_backup_from_newer_code_is_refused_and_one_from_older_code_would_migrate(
        instance, tmp_path):
    # given a backup whose migrations include one this code does not have
    backup = tmp_path / "backup"
    call_command("backup", str(backup), "--no-progress")
    manifest = json.loads((backup / MANIFEST).read_text())
    applied = [tuple(m) for m in manifest["migrations"]]
    assert migrations_compare(applied) == ([], [])
    _edit_manifest(backup, lambda m: m["migrations"].append(["annotation", "9999_future"]))
    before = state()
    # when it is restored, then it is refused and nothing changed
    with pytest.raises(CommandError, match=r"newer version .*annotation\.9999_future"):
        call_command("restore", str(backup), "--force", "--no-progress")
    assert state() == before
    # given instead a backup without this code's last feedback migration
    last = max(m for m in applied if m[0] == "feedback")
    _edit_manifest(backup, lambda m: m.update(
        migrations=[list(x) for x in applied if x != last]))
    # when it is checked, then a restore would migrate it
    out = tmp_path / "check.txt"
    with open(out, "w") as fh:
        call_command("restore", str(backup), "--force", "--check", "--no-progress", stdout=fh)
    assert f"would migrate 1 migrations newer than the backup ({last[0]}.{last[1]})" in \
        out.read_text()
    assert state() == before


@committed
def test_link_dest_hard_links_the_files_an_earlier_backup_holds(instance, tmp_path, capsys):
    # given a backup, and one new media file since
    first = tmp_path / "first"
    call_command("backup", str(first), "--no-progress")
    sha, _ = blobs.put_blob(b"made after the first backup", "json")
    capsys.readouterr()
    # when the next backup links to the first
    second = tmp_path / "second"
    call_command("backup", str(second), "--link-dest", str(first), "--no-progress")
    # then every blob the first holds is the same file on disk, the new one a copy
    new = blobs.blob_name(sha, "json")
    old = [p.relative_to(first / "media") for p in (first / "media" / "blobs").rglob("*")
           if p.is_file()]
    assert old and all(os.path.samefile(first / "media" / p, second / "media" / p)
                       for p in old)
    assert (second / "media" / new).read_bytes() == b"made after the first backup"
    assert not (first / "media" / new).exists()
    assert f"{len(old)} linked to the earlier backup" in capsys.readouterr().out
    # and the second backup is whole
    call_command("restore", str(second), "--check", "--force", "--no-progress")


def test_sqlite_is_restored_and_a_backup_older_than_the_code_is_migrated(tmp_path):
    # given an instance on SQLite (the embedded default) from before the feedback app, with a
    # user and a media file
    source = {"database_url": f"sqlite:///{tmp_path / 'source.sqlite3'}",
              "media_root": tmp_path / "media"}
    (tmp_path / "media" / "imports").mkdir(parents=True)
    (tmp_path / "media" / "imports" / "corpus.zip").write_bytes(b"PK" + bytes(range(256)))
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "annotation", "-v0"], cwd=ROOT,
        capture_output=True, text=True, check=False,
        env={**os.environ, "DATABASE_URL": source["database_url"],
             "MEDIA_ROOT": str(source["media_root"])})
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "source.sqlite3") as db:
        db.execute("INSERT INTO auth_user (password, is_superuser, username, first_name, "
                   "last_name, email, is_staff, is_active, date_joined) VALUES ('!', 1, "
                   "'admin', '', '', 'admin@example.com', 1, 1, '2026-01-01 00:00:00')")
    # when it is backed up, and restored by this code into another file and media folder
    backup = tmp_path / "backup"
    done = manage("backup", str(backup), "--no-progress", **source)
    assert done.returncode == 0, done.stderr
    target = tmp_path / "restored.sqlite3"
    done = manage("restore", str(backup), "--no-progress", database_url=f"sqlite:///{target}",
                  media_root=tmp_path / "restored-media")
    assert done.returncode == 0, done.stderr

    # then every table of the backup holds the same rows (but those migrate adds to), and the
    # media are the same
    def rows(path: Path) -> dict[str, list]:
        with sqlite3.connect(path) as db:
            tables = [t for (t,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            return {t: sorted(map(repr, db.execute(f'SELECT * FROM "{t}"'))) for t in tables}  # noqa: S608

    before, after = rows(tmp_path / "source.sqlite3"), rows(target)
    grown = {"django_migrations", "django_content_type", "auth_permission", "sqlite_sequence"}
    assert {t: after[t] for t in before if t not in grown} == {
        t: v for t, v in before.items() if t not in grown}
    assert any("admin" in r for r in after["auth_user"])
    assert set(before["django_migrations"]) < set(after["django_migrations"])
    assert media_contents(tmp_path / "restored-media") == media_contents(tmp_path / "media")
    # and migrate brought it up to this code: the feedback app's migrations and tables
    def applied(path: Path) -> set[str]:
        with sqlite3.connect(path) as db:
            return {f"{a}.{n}" for a, n in db.execute("SELECT app, name FROM django_migrations")}

    feedback = {m for m in migrations_compare([])[1] if m.startswith("feedback.")}
    assert feedback and not feedback & applied(tmp_path / "source.sqlite3")
    assert feedback <= applied(target)
    assert "feedback_snapshot" not in before and "feedback_snapshot" in after
    assert re.search(r"migrated \d+ migrations newer than the backup \(", done.stdout)
    # and restoring again over it needs --force
    done = manage("restore", str(backup), "--no-progress", database_url=f"sqlite:///{target}",
                  media_root=tmp_path / "restored-media")
    assert done.returncode != 0 and "is not empty (rows in auth_user" in done.stderr
