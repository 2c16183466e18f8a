"""The rating path's PostgreSQL functions are their files in annotation/sql, and only mechanics."""

import re
import uuid

import psycopg
import pytest
from django.db import connection

from annotation import sql
from annotation.models import CRITERIA
from tests.test_platform import clean_env, manage

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql",
                                reason="the database functions are PostgreSQL's")

SCRATCH = "sql_file_check"


def definitions(cursor, schema: str) -> dict[str, str]:
    """pg_get_functiondef of every rating function in ``schema``, without the schema's name."""
    cursor.execute(
        "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND p.proname LIKE 'annotation%%'", [schema])
    return {name: text.replace(f"{schema}.", "") for name, text in cursor.fetchall()}


@pytest.mark.django_db
def test_every_live_function_is_its_file():
    # given: the live functions, as migrations made them
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        (live_schema,) = cursor.fetchone()
        live = definitions(cursor, live_schema)
        # when: the files are run into a scratch schema (rolled back with the test)
        cursor.execute(f"CREATE SCHEMA {SCRATCH}")
        cursor.execute(f"SET LOCAL search_path TO {SCRATCH}, {live_schema}")
        for name in sql.FUNCTIONS:
            cursor.execute(sql.text(name))
        from_files = definitions(cursor, SCRATCH)
    # then: the same functions, definition for definition, and no others
    assert sorted(live) == sorted(sql.FUNCTIONS) == sorted(from_files)
    for name in sql.FUNCTIONS:
        assert live[name] == from_files[name], f"{name} differs from annotation/sql/{name}.sql"


def test_each_file_makes_the_function_it_is_named_after():
    for name in sql.FUNCTIONS:
        made = re.findall(r"CREATE OR REPLACE FUNCTION (\w+)\(", sql.text(name))
        assert made == [name]
    assert sorted(p.stem for p in sql.HERE.glob("*.sql")) == sorted(sql.FUNCTIONS)


def test_no_rule_is_spelled_in_sql():
    """Criteria, verdicts and what a side means are annotation.rules' (the functions read a
    campaign's columns, such as its weights and rates, only to hand them to Python)."""
    text = "\n".join(sql.text(name) for name in sql.FUNCTIONS).lower()
    for word in (*CRITERIA, "'left'", "'right'", "'tie'", "'both_bad'", "passed'"):
        assert word not in text, word


@pytest.mark.slow
def test_migrations_build_the_functions_and_go_back_to_zero():
    # given: an empty database of its own
    name = f"bc_migrations_{uuid.uuid4().hex[:8]}"
    settings = connection.settings_dict
    server = (f"postgres://{settings['USER']}@{settings['HOST'] or '127.0.0.1'}:"
              f"{settings['PORT'] or 5432}")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = f"{server}/{name}"
    env = clean_env(DEBUG="1", DATABASE_URL=url)
    query = ("SELECT string_agg(proname, ',' ORDER BY proname) FROM pg_proc "
             "WHERE proname LIKE 'annotation%'")

    def functions() -> str:
        out = manage("shell", "-c", f"from django.db import connection\n"
                     f"c = connection.cursor(); c.execute({query!r}); print(c.fetchone()[0])",
                     env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    try:
        # when: migrated from scratch, back to zero and forward again
        forward = manage("migrate", "-v", "0", env=env, timeout=300)
        assert forward.returncode == 0, forward.stderr
        made = functions()
        back = manage("migrate", "annotation", "zero", "-v", "0", env=env, timeout=300)
        assert back.returncode == 0, back.stderr
        gone = functions()
        again = manage("migrate", "-v", "0", env=env, timeout=300)
        assert again.returncode == 0, again.stderr
        # then
        assert made == ",".join(sorted(sql.FUNCTIONS))
        assert gone == "None"
        assert functions() == made
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
