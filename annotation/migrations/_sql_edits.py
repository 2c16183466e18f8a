"""For migrations that change a database function an earlier migration created.

Such a migration takes the earlier migration's text of the function and applies its edits, each
checked to apply exactly once: the function's whole text stays in the migration that created it,
and the later one shows only what it changes. (The migration loader skips this module: its name
starts with an underscore.)
"""

from __future__ import annotations


def function_text(sql: str, name: str) -> str:
    """The statement that creates function ``name`` in an earlier migration's SQL (bodies are
    quoted with ``$fn$``)."""
    for create in (f"CREATE OR REPLACE FUNCTION {name}(", f"CREATE FUNCTION {name}("):
        start = sql.find(create)
        if start >= 0:
            end = sql.index("$fn$;", sql.index("$fn$", start) + 4) + len("$fn$;")
            return sql[start:end]
    raise LookupError(f"no function {name} in the given SQL")


def edited(sql: str, edits: list[tuple[str, str]], where: str) -> str:
    """``sql`` with each (old, new) applied; raises unless each old text occurs exactly once."""
    for old, new in edits:
        if sql.count(old) != 1:
            raise RuntimeError(f"{where}: expected one {old!r}")
        sql = sql.replace(old, new)
    return sql
