"""PostgreSQL's side of the measurement: its own counts of the pages and rows it read, and the
CPU one round trip costs it and its client."""

from __future__ import annotations

import os
import time

from benchmarks.rating.servers import proc_stat


def postgresql_reads() -> dict[str, int]:
    """PostgreSQL's own counts of its work, which do not drift with the machine's speed as CPU
    time does: pages read from its buffer cache (``pg_statio``), in all and per rating table
    (heap and indexes), and rows of the lease table read by scans of the whole table."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        out = {f"pages {name.removeprefix('annotation_')}": n for name, n in conn.execute(
            "SELECT relname, heap_blks_hit + coalesce(idx_blks_hit, 0) "
            "FROM pg_statio_user_tables WHERE relname LIKE 'annotation\\_%'").fetchall()}
        out["pages in all"] = conn.execute("SELECT blks_hit FROM pg_stat_database "
                                           "WHERE datname = current_database()").fetchone()[0]
        out["lease rows read by whole-table scans"] = conn.execute(
            "SELECT seq_tup_read FROM pg_stat_user_tables "
            "WHERE relname = 'annotation_assignment'").fetchone()[0]
    return out


def reads_per_judgment(before: dict[str, int], after: dict[str, int],
                       judgments: int) -> dict[str, float]:
    """The counts' growth over a run, per judgment: the totals first, then each table that read
    half a page or more per judgment, most first."""
    n = max(judgments, 1)
    per = {k: round((after[k] - before.get(k, 0)) / n, 1) for k in after}
    keep = ("pages in all", "lease rows read by whole-table scans")
    return {k: per[k] for k in (*keep, *sorted((k for k in per if k not in keep and per[k] >= 0.5),
                                                key=lambda k: -per[k]))}


def round_trip_cpu(n: int = 3000) -> dict:
    """What one database round trip costs in CPU on each side, apart from any work: ``SELECT
    1`` ``n`` times over psycopg, the client's CPU and its PostgreSQL backend's (from /proc)."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        for _ in range(200):  # warm
            conn.execute("SELECT 1").fetchone()
        backend0, client0 = proc_stat(pid)[2], time.process_time()
        for _ in range(n):
            conn.execute("SELECT 1").fetchone()
        backend1, client1 = proc_stat(pid)[2], time.process_time()
    return {"statement": "SELECT 1", "n": n,
            "postgresql_cpu_ms": round((backend1 - backend0) / n * 1000, 3),
            "client_cpu_ms": round((client1 - client0) / n * 1000, 3)}

