"""The database into one file and back: ``pg_dump`` / ``pg_restore`` for PostgreSQL, SQLite's
online backup API for the embedded default. Both read one consistent state, and the migrations
recorded in the manifest are read from that same state."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.migrations.loader import MigrationLoader

from .manifest import BackupError

logger = logging.getLogger(__name__)

# Tables that ``migrate`` fills by itself (the roles migration adds the groups): rows there
# do not make a database "not empty".
MIGRATE_MADE = frozenset({"django_migrations", "django_content_type", "auth_permission",
                          "auth_group", "auth_group_permissions"})

# Run in the restoring transaction before the dump's statements: everything in the schemas
# Django uses goes, so objects that the backup does not have (a newer version's tables) do
# not survive it. The names are read before the first drop (a drop cascades to others).
_CLEAR_SQL = r"""
SET LOCAL lock_timeout = '%(lock_timeout)s';
SET LOCAL client_min_messages = warning;
DO $clear$
DECLARE
    stmt text;
    stmts text[];
BEGIN
    SELECT coalesce(array_agg(s ORDER BY o), '{}') INTO stmts FROM (
        SELECT 1 AS o, format('DROP %%s IF EXISTS %%I.%%I CASCADE',
                              CASE c.relkind WHEN 'v' THEN 'VIEW'
                                             WHEN 'm' THEN 'MATERIALIZED VIEW'
                                             WHEN 'f' THEN 'FOREIGN TABLE'
                                             ELSE 'TABLE' END,
                              n.nspname, c.relname) AS s
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY (current_schemas(false))
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND NOT EXISTS (SELECT 1 FROM pg_depend d
                            WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                              AND d.deptype = 'e')
        UNION ALL
        -- sequences of no column (an identity or serial column's goes with its table)
        SELECT 2, format('DROP SEQUENCE IF EXISTS %%I.%%I CASCADE', n.nspname, c.relname)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY (current_schemas(false)) AND c.relkind = 'S'
           AND NOT EXISTS (SELECT 1 FROM pg_depend d
                            WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                              AND d.deptype IN ('a', 'i', 'e'))
        UNION ALL
        SELECT 3, format('DROP %%s IF EXISTS %%s CASCADE',
                         CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                         p.oid::regprocedure)
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = ANY (current_schemas(false)) AND p.prokind IN ('f', 'p', 'w')
           AND NOT EXISTS (SELECT 1 FROM pg_depend d
                            WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                              AND d.deptype = 'e')
        UNION ALL
        SELECT 4, format('DROP TYPE IF EXISTS %%I.%%I CASCADE', n.nspname, t.typname)
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
          LEFT JOIN pg_class c ON c.oid = t.typrelid
         WHERE n.nspname = ANY (current_schemas(false))
           AND (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND c.relkind = 'c'))
           AND NOT EXISTS (SELECT 1 FROM pg_depend d
                            WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                              AND d.deptype = 'e')
    ) AS x;
    FOREACH stmt IN ARRAY stmts LOOP
        EXECUTE stmt;
    END LOOP;
END
$clear$;
"""


def database_engine(alias: str = DEFAULT_DB_ALIAS) -> str:
    engine = connections[alias].settings_dict["ENGINE"]
    if engine.endswith("postgresql"):
        return "postgresql"
    if engine.endswith("sqlite3"):
        return "sqlite"
    raise BackupError(f"DATABASES[{alias!r}]: engine {engine} is not supported (PostgreSQL or "
                      "SQLite)")


def database_label(alias: str = DEFAULT_DB_ALIAS) -> str:
    """The database, for messages (no password)."""
    s = connections[alias].settings_dict
    if database_engine(alias) == "sqlite":
        return f"SQLite {s['NAME']}"
    return f"PostgreSQL {s.get('NAME')} on {s.get('HOST') or 'the local socket'}"


def tables_with_rows(alias: str = DEFAULT_DB_ALIAS) -> list[str]:
    """The tables that hold something beyond what ``migrate`` writes: a database is empty
    when this is empty (no tables at all, or freshly migrated)."""
    conn = connections[alias]
    held = []
    with conn.cursor() as cur:
        for table in sorted(conn.introspection.table_names(cur)):
            if table in MIGRATE_MADE:
                continue
            cur.execute(f"SELECT 1 FROM {conn.ops.quote_name(table)} LIMIT 1")  # noqa: S608
            if cur.fetchone() is not None:
                held.append(table)
    return held


def migrations_compare(applied: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(newer, missing): the backup's migrations this code does not have (it was made by a
    newer version), and this code's migrations the backup lacks (it is older: ``migrate``
    runs after the restore). A squashed migration counts as the ones it replaces."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    known: set[tuple[str, str]] = set(loader.disk_migrations)
    for m in loader.disk_migrations.values():
        known.update(m.replaces or [])
    labels = {app for app, _ in loader.disk_migrations}
    done = set(applied)
    newer = sorted(f"{a}.{n}" for a, n in done - known if a in labels)
    missing = sorted(f"{a}.{n}" for (a, n), m in loader.disk_migrations.items()
                     if (a, n) not in done
                     and not (m.replaces and all(tuple(r) in done for r in m.replaces)))
    return newer, missing


# --- PostgreSQL -------------------------------------------------------------------------------

def _pg_tool(name: str, pg_bin: str | None) -> str:
    path = str(Path(pg_bin) / name) if pg_bin else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise BackupError(f"{name}: not found{f' in {pg_bin}' if pg_bin else ' on PATH'}; "
                          "install the PostgreSQL client of the server's major version (or "
                          "pass --pg-bin)")
    return path


def _pg_env(alias: str) -> dict[str, str]:
    """libpq's variables for the connection Django makes (the password out of the command
    line, where other users of the machine could read it)."""
    s = connections[alias].settings_dict
    env = dict(os.environ)
    for key, var in (("NAME", "PGDATABASE"), ("USER", "PGUSER"), ("PASSWORD", "PGPASSWORD"),
                     ("HOST", "PGHOST"), ("PORT", "PGPORT")):
        if s.get(key):
            env[var] = str(s[key])
    options = s.get("OPTIONS") or {}
    for key, var in (("sslmode", "PGSSLMODE"), ("sslrootcert", "PGSSLROOTCERT"),
                     ("sslcert", "PGSSLCERT"), ("sslkey", "PGSSLKEY"),
                     ("passfile", "PGPASSFILE"), ("service", "PGSERVICE"),
                     ("options", "PGOPTIONS")):
        if options.get(key):
            env[var] = str(options[key])
    return env


def _tool_version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def pg_dump(*, out: Path, pg_bin: str | None,
            alias: str = DEFAULT_DB_ALIAS) -> tuple[list[tuple[str, str]], dict]:
    """Dump the database in pg_dump's custom format; (the migrations applied in the dumped
    state, what the manifest records about the server). The dump reads a snapshot exported by
    the transaction that reads the migrations, so both describe the same moment."""
    tool = _pg_tool("pg_dump", pg_bin)
    conn = connections[alias]
    if conn.in_atomic_block:
        raise BackupError("backup: runs outside a transaction (pg_dump reads committed data "
                          "only)")
    with transaction.atomic(using=alias), conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SELECT pg_export_snapshot(), current_setting('server_version'), "
                    "to_regclass('django_migrations') IS NOT NULL")
        snapshot, server, migrated = cur.fetchone()
        if not migrated:
            raise BackupError(f"{database_label(alias)}: no django_migrations table; there "
                              "is nothing to back up (run migrate first?)")
        cur.execute("SELECT app, name FROM django_migrations ORDER BY app, name")
        migrations = [(a, n) for a, n in cur.fetchall()]
        _run([tool, "--format=custom", "--no-password", f"--snapshot={snapshot}",
              f"--file={out}"], env=_pg_env(alias), what="pg_dump")
    return migrations, {"server_version": server, "tool": _tool_version(tool)}


def pg_restore_check(*, dump: Path, pg_bin: str | None) -> None:
    """The tools are there and can read the dump (a ``pg_restore`` older than the dump's
    format cannot): checked before a restore changes anything."""
    _pg_tool("psql", pg_bin)
    done = subprocess.run([_pg_tool("pg_restore", pg_bin), "--list", str(dump)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"{dump}: pg_restore cannot read it ({_tail(done.stderr)})")


def pg_restore(*, dump: Path, pg_bin: str | None, alias: str = DEFAULT_DB_ALIAS,
               lock_timeout_s: int = 60) -> None:
    """Replace everything in the database with the dump, in one transaction: ``pg_restore``
    turns the dump into SQL, which ``psql`` runs between our BEGIN and COMMIT. The COMMIT is
    sent only once ``pg_restore`` has finished without error, so a failure anywhere leaves
    the database as it was."""
    restore, psql = _pg_tool("pg_restore", pg_bin), _pg_tool("psql", pg_bin)
    env = _pg_env(alias)
    if connections[alias].in_atomic_block:
        raise BackupError("restore: runs outside a transaction")
    connections[alias].close()  # ours holds nothing, but it should not sit idle in the way
    producer = subprocess.Popen(
        [restore, "--no-owner", "--no-acl", "--file=-", str(dump)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    consumer = subprocess.Popen(
        [psql, "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1",
         "--file=-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=env)
    errors: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda p=p, k=k: errors.__setitem__(k, p.stderr.read()))
               for k, p in (("pg_restore", producer), ("psql", consumer))]
    for t in readers:
        t.start()
    sent_all = False
    try:
        consumer.stdin.write(b"BEGIN;\n" + (_CLEAR_SQL % {"lock_timeout": f"{lock_timeout_s}s"})
                             .encode())
        while chunk := producer.stdout.read(1 << 20):
            consumer.stdin.write(chunk)
        if producer.wait() == 0:
            consumer.stdin.write(b"\nCOMMIT;\n")
            sent_all = True
    except BrokenPipeError:
        pass  # psql stopped at an error: it says which below
    finally:
        producer.stdout.close()
        with contextlib.suppress(BrokenPipeError):
            consumer.stdin.close()  # without COMMIT: the server rolls the transaction back
        if producer.poll() is None:
            producer.kill()
        producer.wait()
        consumer.wait()
        for t in readers:
            t.join()
    # psql first: when it stops at an error, pg_restore is killed for writing on
    if consumer.returncode != 0:
        raise BackupError(f"{dump}: psql failed ({consumer.returncode}): "
                          f"{_tail(errors.get('psql'))}; the database was not changed")
    if producer.returncode != 0 or not sent_all:
        raise BackupError(f"{dump}: pg_restore failed ({producer.returncode}): "
                          f"{_tail(errors.get('pg_restore'))}; the database was not changed")


def _run(cmd: list[str], *, env: dict[str, str], what: str) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"{what} failed ({done.returncode}): {_tail(done.stderr)}")


def _tail(text: bytes | None, n: int = 2000) -> str:
    s = (text or b"").decode(errors="replace").strip()
    return s[-n:] or "no message"


# --- SQLite -----------------------------------------------------------------------------------

def _sqlite_path(alias: str) -> Path:
    name = str(connections[alias].settings_dict["NAME"])
    if name in ("", ":memory:") or name.startswith("file:"):
        raise BackupError(f"DATABASES[{alias!r}]: NAME {name!r} is not a database file")
    return Path(name)


def sqlite_dump(*, out: Path, alias: str = DEFAULT_DB_ALIAS) -> tuple[list[tuple[str, str]],
                                                                        dict]:
    """Copy the database file through SQLite's online backup API (one consistent state, even
    while the web process and the worker write); the migrations are read from the copy."""
    path = _sqlite_path(alias)
    if not path.is_file():
        raise BackupError(f"{path}: no such database file")
    src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)
        try:
            rows = dst.execute("SELECT app, name FROM django_migrations "
                               "ORDER BY app, name").fetchall()
        except sqlite3.OperationalError:
            raise BackupError(f"{path}: no django_migrations table; there is nothing to back "
                              "up (run migrate first?)") from None
    finally:
        dst.close()
        src.close()
    return [(a, n) for a, n in rows], {"sqlite_version": sqlite3.sqlite_version}


def sqlite_restore(*, dump: Path, alias: str = DEFAULT_DB_ALIAS) -> None:
    """Replace the database file's content with the backup's, in one step (the backup API
    writes the destination under its lock)."""
    path = _sqlite_path(alias)
    path.parent.mkdir(parents=True, exist_ok=True)
    connections[alias].close()
    src = sqlite3.connect(f"{dump.resolve().as_uri()}?mode=ro", uri=True)
    dst = sqlite3.connect(path, timeout=30)
    try:
        src.backup(dst)
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: the restore failed ({exc}); the database was not "
                          "changed") from None
    finally:
        dst.close()
        src.close()
