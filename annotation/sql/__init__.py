"""The rating path's PostgreSQL functions, one file each: the source of truth for their text.

Migrations create them from these files (``load``); a test compares every live function with its
file. The functions do mechanics only (locks, lease liveness, the overlap invariant, inserts,
counters, the top-up); every decision about what an answer means is ``annotation.rules``'s.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

# In the order they are created (a function may call one created before it).
FUNCTIONS = ("annotation_seat", "annotation_lease_context", "annotation_heartbeat",
             "annotation_top_up", "annotation_answer")

# Rating functions and types of earlier releases, dropped before the current ones are made.
RETIRED_FUNCTIONS = ("annotation_lease_for_answer", "annotation_group_best")
RETIRED_TYPES = ("annotation_lease_choice",)


def text(name: str) -> str:
    """The statement that creates function ``name``."""
    return (HERE / f"{name}.sql").read_text()


def _drop_functions(schema_editor, names: tuple[str, ...]) -> None:
    """Drop every overload of the named functions in the current schema (a signature that
    changed leaves the old one behind otherwise)."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = current_schema() AND p.proname = ANY(%s)", [list(names)])
        signatures = [row[0] for row in cursor.fetchall()]
    for signature in signatures:
        schema_editor.execute(f"DROP FUNCTION {signature}", params=None)


def load(apps, schema_editor) -> None:
    """Migration step: (re)create every rating function from its file (PostgreSQL only)."""
    if schema_editor.connection.vendor != "postgresql":
        return
    _drop_functions(schema_editor, FUNCTIONS + RETIRED_FUNCTIONS)
    for name in RETIRED_TYPES:
        schema_editor.execute(f"DROP TYPE IF EXISTS {name}", params=None)
    for name in FUNCTIONS:
        schema_editor.execute(text(name), params=None)  # "%" is PL/pgSQL's, not a placeholder


def unload(apps, schema_editor) -> None:
    """Migration step backwards: drop the rating functions."""
    if schema_editor.connection.vendor == "postgresql":
        _drop_functions(schema_editor, FUNCTIONS)
