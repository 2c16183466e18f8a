"""Raters under load: the rating calls against gunicorn on PostgreSQL, paced, then saturation.

    python -m benchmarks.rating [--raters 200] [--pace 2] [--paced-s 60] [--sat-raters 32]
                                [--sat-s 20] [--sat-rounds 3] [--sweep-s 4]
                                [--capacity 10,25,50] [--quick]

Everything runs on this machine; traffic goes only to 127.0.0.1, for a bounded time:

1. A throw-away PostgreSQL database ``backchannel_bench`` (dropped and made again, migrated, left
   behind for inspection; ``BENCH_DATABASE_URL`` names another), a synthetic corpus and one
   large pairwise campaign (3,360 items, overlap 3, gold/catch/repeat probes at the default
   rates, consent text), its clips marked rendered with stand-in files, and an earlier, closed
   round over the same corpus, fully answered by the same raters (written in bulk), so the
   tables are those of a platform at work rather than a new install. The environment
   (``SECRET_KEY``, ``DEBUG=0``, plain HTTP cookies, ...) is set here; ``scripts/test`` makes
   .venv and starts PostgreSQL.
2. Raters join through the invite page over HTTP (GET, then POST with the CSRF token and
   consent), each with its own session cookie, as a browser does, and open the rate page for
   the rater token it hands its script.
3. A *sweep*: short saturation runs against ``manage.py runserver`` (what a first-time user
   starts), gunicorn's default (one sync worker) and tuned gunicorn configurations (sync,
   gthread, gevent with a connection pool), taking turns over two rounds. The fastest tuned one
   is then measured in full. Each rater works as the rate page does: one kept-alive connection,
   the token in a header, the next items carried by each answer's reply (``next`` when the page
   opens, after an error and on one item in ten, a reload):
   (a) paced: ``--raters`` raters, each completing one item (a heartbeat, then the answer) every
       ``--pace`` seconds (about ten times a real rater's pace); goal p95 < 50 ms everywhere;
   (b) saturation: ``--sat-raters`` raters with no think time, ``--sat-rounds`` runs, the median
       reported; goal over 300 judgments/s. Also: the same with answers only (the page sends no
       heartbeat for an item answered within the heartbeat interval), the same answered by the
       REST views with the fast path switched off (``RATING_FAST_PATH=0``), a client that signs
       in with the session and asks for each next item separately (three calls per item), and
       a DRF rating view that does nothing (what that stack costs before any rating work). The
       paced load also runs against gunicorn's default, and with fewer raters (``--capacity``);
       last, saturation on the tables of a new install (the earlier round removed).
4. Where the time goes: the server answers with its own time per request (``X-Bench`` header
   from ``benchmarks/rating_settings.py``, which wraps the project's WSGI application: µs in
   the application, SQL statements, µs in them), the
   CPU of the server processes, PostgreSQL, this load generator and everything else is read
   from /proc, PostgreSQL's own counts of pages and rows it read (which do not drift with the
   machine's speed), and, in process with Django's test client, the statements of each call and
   the cost of a request that does nothing.

Each run starts from the same state: the campaign's leases and judgments are deleted, counters
zeroed and the tables vacuumed; planner statistics are taken after a warm-up, as autovacuum
keeps them in a running campaign. Takes about 6 minutes. The figures describe this machine
(other processes on it are measured too); timings are never tests.
Results: benchmarks/results/rating.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import machine_info, write_results

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "backchannel_bench"
SLUG = "bench"
ENDPOINTS = ("next", "heartbeat", "judgment")
# The share of items that start with a page (re)load, which asks for the items anew (next);
# the others come with the previous answer's reply, as on the page.
RELOAD_SHARE = 0.1
SECRET = "benchmark-only-not-secret"  # noqa: S105
# Candidates per episode: the ground truth and these made-up wrong answers (name -> kind);
# every pair of them is an item: 8 candidates, 28 items per episode.
BASELINES = {"jitter-a": "jitter", "jitter-b": "jitter", "mistimed-a": "mistimed",
             "mistimed-b": "mistimed", "frozen": "frozen", "valence": "valence_swap",
             "jitter-c": "jitter"}


# -- environment, database, data ----------------------------------------------------------------

def _environment(media_root: str) -> dict[str, str]:
    url = os.environ.get("BENCH_DATABASE_URL",
                         f"postgres://postgres@127.0.0.1:5432/{DB_NAME}")
    env = {
        "DATABASE_URL": url,
        "SECRET_KEY": SECRET,
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "STATIC_MANIFEST": "0",
        "MEDIA_ROOT": media_root,
        "STATIC_ROOT": str(Path(media_root).parent / "static"),
        "CELERY_BROKER_URL": os.environ.get("BENCH_CELERY_BROKER_URL",
                                            "redis://127.0.0.1:6379/15"),
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "benchmarks.rating_settings",
    }
    os.environ.update(env)
    Path(env["STATIC_ROOT"]).mkdir(parents=True, exist_ok=True)
    return env


def _recreate_database(url: str) -> None:
    import psycopg

    base, name = url.rsplit("/", 1)
    if not name.replace("_", "").isalnum():
        raise SystemExit(f"unexpected database name {name!r}")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def build_campaign(*, episodes: int, items: int, seed: int) -> dict:
    """A synthetic corpus and one active pairwise campaign over it; returns its sizes."""
    import numpy as np

    import rendering.services
    from annotation.models import Campaign, Item, Probe
    from annotation.services.campaigns import (
        campaign_clip_ids,
        campaign_create,
        campaign_set_status,
        invite_create,
    )
    from policy.oracle import EpisodeContext, wrong_response
    from policy.services.candidates import candidate_store_array, candidates_ground_truth
    from policy.services.synthetic import synthetic_corpus_create
    from rendering import blobs
    from rendering.models import Clip, ClipStatus

    rendering.services._enqueue = lambda clip_id: None  # no renderer here: clips faked below
    t0 = time.perf_counter()
    dataset = synthetic_corpus_create(episodes=episodes, seed=seed, name="bench").dataset
    eps = list(dataset.episodes.order_by("key"))
    candidates_ground_truth(episodes=eps)
    rng = np.random.default_rng(seed)
    for ep in eps:
        gt = blobs.load_array(ep.listener_sha)
        ctx = EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=ep.n_frames)
        for name, kind in BASELINES.items():
            candidate_store_array(episode=ep, baseline=name,
                                  array=wrong_response(gt, ctx, kind, rng))
    corpus_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    sources = [{"kind": "ground_truth"}] + [{"kind": "baseline", "name": n} for n in BASELINES]
    build = campaign_create(
        name="Benchmark", slug=SLUG, dataset=dataset, sources=sources, episodes=eps,
        overlap=3, target_items=items, per_rater_limit=1_000_000, lease_seconds=90,
        gold_rate=0.1, catch_rate=0.05, repeat_rate=0.05, seed=seed,
        consent_text="I agree to take part in this benchmark.",
        # Load-generator raters answer at random: they would fail probes and be blocked.
        warn_after=32_000, block_after=32_000,
    )
    campaign = build.campaign
    mp4, _ = blobs.put_blob(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "mp4")
    png, _ = blobs.put_blob(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, "png")
    ids = campaign_clip_ids(campaign)
    Clip.objects.filter(pk__in=ids).update(status=ClipStatus.SUCCEEDED, mp4_sha=mp4,
                                           poster_sha=png, progress=100.0)
    campaign_set_status(campaign=campaign, status="active")
    invite = invite_create(campaign=campaign, label="benchmark")
    campaign_s = time.perf_counter() - t0
    campaign = Campaign.objects.get(pk=campaign.pk)
    return {
        "episodes": len(eps),
        "candidates_per_episode": 1 + len(BASELINES),
        "items": Item.objects.filter(campaign=campaign, probe=Probe.NONE).count(),
        "gold_items": build.gold,
        "catch_items": build.catch,
        "overlap": campaign.overlap,
        "rates": {"gold": campaign.gold_rate, "catch": campaign.catch_rate,
                  "repeat": campaign.repeat_rate},
        "lease_seconds": campaign.lease_seconds,
        "clips": len(ids),
        "corpus_s": round(corpus_s, 1),
        "campaign_s": round(campaign_s, 1),
        "invite": invite.token,
    }


def build_history(*, seed: int) -> dict:
    """An earlier, closed campaign over the same corpus with every item answered by three of the
    raters, written in bulk: the lease and judgment tables of a platform that has run campaigns
    before. On a nearly empty lease table PostgreSQL plans the rating functions' lookups as
    whole-table scans and keeps those plans for the connection until statistics are retaken;
    a run starting from one measured that, not a platform at work."""
    from django.db import connection

    from annotation.models import Campaign, CampaignStatus, Enrollment
    from annotation.services.campaigns import campaign_create

    t0 = time.perf_counter()
    bench = Campaign.objects.get(slug=SLUG)
    items = bench.items.count()
    earlier = campaign_create(
        name="Benchmark, earlier round", slug=f"{SLUG}-earlier", dataset=bench.dataset,
        sources=bench.sources, episodes=list(bench.dataset.episodes.order_by("key")),
        overlap=bench.overlap, target_items=items, seed=seed + 1, gold_rate=0, catch_rate=0,
        repeat_rate=0).campaign
    Campaign.objects.filter(pk=earlier.pk).update(status=CampaignStatus.CLOSED)
    raters = list(Enrollment.objects.filter(campaign=bench).order_by("rater_id")
                  .values_list("rater_id", flat=True))
    with connection.cursor() as cursor:
        # Item k is answered by raters k, k + 1 and k + 2 (mod the number of raters).
        cursor.execute(
            'INSERT INTO annotation_assignment (token, campaign_id, item_id, rater_id, probe, '
            '"order", status, leased_at, heartbeat_at, expires_at) '
            "SELECT gen_random_uuid(), %s, i.id, (%s::int[])[1 + (i.k + j) %% %s], 'none', "
            "'[0, 1]', 'submitted', now() - interval '1 day', now() - interval '1 day', "
            "now() - interval '1 day' + interval '90 seconds' "
            "FROM (SELECT id, row_number() OVER (ORDER BY id) AS k FROM annotation_item "
            "      WHERE campaign_id = %s) i, generate_series(0, %s - 1) j",
            [earlier.pk, raters, len(raters), earlier.pk, bench.overlap])
        cursor.execute(
            'INSERT INTO annotation_judgment (idempotency_key, assignment_id, campaign_id, '
            'item_id, rater_id, probe, "order", choice, outcome, strength, reasons, decision_ms, '
            "viewing_ms, playback, qc, created_at) "
            "SELECT gen_random_uuid(), a.id, a.campaign_id, a.item_id, a.rater_id, 'none', "
            "a.\"order\", 'left', 'a', NULL, '[]', 2000, 9000, '{}', '{}', a.expires_at "
            "FROM annotation_assignment a WHERE a.campaign_id = %s",
            [earlier.pk])
        cursor.execute("UPDATE annotation_item SET n_judgments = %s WHERE campaign_id = %s",
                       [bench.overlap, earlier.pk])
        cursor.execute("SELECT count(*) FROM annotation_judgment WHERE campaign_id = %s",
                       [earlier.pk])
        answered = cursor.fetchone()[0]
    connection.close()
    return {"earlier_round_judgments": answered,
            "earlier_round_s": round(time.perf_counter() - t0, 1)}


def drop_history() -> None:
    """Remove the earlier round's leases and judgments (the next reset vacuums the tables)."""
    from annotation.models import Assignment, Judgment

    earlier = f"{SLUG}-earlier"
    Judgment.objects.filter(campaign__slug=earlier).delete()
    Assignment.objects.filter(campaign__slug=earlier).delete()


def reset_campaign() -> None:
    """Forget every lease and judgment: each run starts from the same state."""
    from django.db import connection

    from annotation.models import Assignment, Campaign, Enrollment, Item, Judgment

    campaign = Campaign.objects.get(slug=SLUG)
    Judgment.objects.filter(campaign=campaign).delete()
    Assignment.objects.filter(campaign=campaign).delete()
    Item.objects.filter(campaign=campaign).update(n_judgments=0)
    Enrollment.objects.filter(campaign=campaign).update(
        n_judgments=0, probes_passed=0, probes_failed=0, blocked=False, finished_at=None)
    with connection.cursor() as cursor:
        for model in (Judgment, Assignment, Item, Enrollment):
            cursor.execute(f"VACUUM {model._meta.db_table}")
    connection.close()


def _analyze() -> None:
    """Fresh planner statistics, as autovacuum keeps them in a running campaign. Taken once
    the warm-up has made leases and judgments: statistics of the emptied tables would make
    PostgreSQL count live leases through the wrong index."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("ANALYZE annotation_assignment, annotation_judgment, annotation_item, "
                     "annotation_enrollment")


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
    n = max(judgments, 1)
    per = {k: round((after[k] - before.get(k, 0)) / n, 1) for k in after}
    keep = ("pages in all", "lease rows read by whole-table scans")
    return {k: per[k] for k in (*keep, *sorted((k for k in per if k not in keep and per[k] >= 0.5),
                                                key=lambda k: -per[k]))}


def campaign_check() -> dict:
    """The overlap invariant and exactly-once, read back from the database after a run."""
    from django.db.models import Count, F, Q

    from annotation.models import Assignment, AssignmentStatus, Campaign, Item, Judgment, Probe

    campaign = Campaign.objects.get(slug=SLUG)
    regular = Judgment.objects.filter(campaign=campaign, probe=Probe.NONE)
    # (a hidden repeat is a second look by the same rater, not part of the overlap)
    over = (Item.objects.filter(campaign=campaign, probe=Probe.NONE)
            .annotate(j=Count("judgments", filter=~Q(judgments__probe=Probe.REPEAT)))
            .filter(j__gt=campaign.overlap).count())
    mismatched = (Item.objects.filter(campaign=campaign, probe=Probe.NONE)
                  .annotate(j=Count("judgments", filter=Q(judgments__probe=Probe.NONE)))
                  .exclude(j=F("n_judgments")).count())
    return {
        "judgments": Judgment.objects.filter(campaign=campaign).count(),
        "regular_judgments": regular.count(),
        "probe_judgments": Judgment.objects.filter(campaign=campaign).exclude(
            probe=Probe.NONE).count(),
        "items_over_overlap": over,
        "items_count_mismatch": mismatched,
        "submitted_without_judgment": Assignment.objects.filter(
            campaign=campaign, status=AssignmentStatus.SUBMITTED, judgment__isnull=True).count(),
    }


# -- servers ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerConfig:
    name: str
    kind: str  # runserver | sync | gthread | gevent
    workers: int = 1
    threads: int = 1
    note: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, port: int) -> list[str]:
        py = sys.executable
        if self.kind == "runserver":
            return [py, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
        argv = [py, "-m", "gunicorn", "benchmarks.rating_settings:application",
                "--bind", f"127.0.0.1:{port}", "--workers", str(self.workers),
                "--worker-class", self.kind,
                "--log-level", "warning", "--timeout", "60", "--graceful-timeout", "5"]
        if self.kind == "gthread":
            argv += ["--threads", str(self.threads)]
        if self.kind == "gevent":
            argv += ["--worker-connections", "1000"]
        return argv


class Server:
    def __init__(self, config: ServerConfig, env: dict[str, str], log_dir: Path) -> None:
        self.config, self.env = config, env
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / f"{config.name}.log", "wb")  # noqa: SIM115
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        import httpx

        self.proc = subprocess.Popen(self.config.argv(self.port), cwd=ROOT,
                                     env={**os.environ, **self.env, **self.config.env},
                                     stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.config.name} exited; see {self.log.name}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{self.config.name} did not answer /healthz in 60 s")
        # Every gunicorn worker imports Django lazily: warm them all before measuring.
        for _ in range(4 * max(1, self.config.workers)):
            httpx.get(f"{self.base}/healthz", timeout=5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.config.kind != "runserver"
                                  else signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def pids(self) -> list[int]:
        return [self.proc.pid, *_descendants(self.proc.pid)] if self.proc else []


# -- CPU accounting from /proc -------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[str, int, float, float] | None:
    """(comm, ppid, own CPU s, reaped children's CPU s)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1: raw.rindex(")")]
    f = raw[raw.rindex(")") + 2:].split()
    return comm, int(f[1]), (int(f[11]) + int(f[12])) / _TICK, (int(f[13]) + int(f[14])) / _TICK


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _descendants(root: int) -> list[int]:
    parent = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st:
            parent[pid] = st[1]
    out, frontier = [], {root}
    while frontier:
        kids = {p for p, pp in parent.items() if pp in frontier}
        out += sorted(kids)
        frontier = kids
    return out


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return (sum(f[:8]) - idle) / _TICK, sum(f[:8]) / _TICK


def cpu_snapshot(server: Server) -> dict:
    server_cpu = 0.0
    for pid in server.pids():
        st = _stat(pid)
        if st:
            server_cpu += st[2] + st[3]
    pg = 0.0
    for pid in _all_pids():
        st = _stat(pid)
        if not st or not st[0].startswith("postgres"):
            continue
        parent = _stat(st[1])
        is_master = parent is None or not parent[0].startswith("postgres")
        pg += st[2] + (st[3] if is_master else 0.0)  # reaped backends count in the postmaster
    t = os.times()
    busy, total = _machine_busy()
    return {"server": server_cpu, "postgres": pg, "load_generator": t.user + t.system,
            "machine_busy": busy, "machine_total": total, "wall": time.monotonic()}


def cpu_split(before: dict, after: dict) -> dict:
    wall = after["wall"] - before["wall"]
    d = {k: (after[k] - before[k]) / wall for k in before if k != "wall"}
    cores = d.pop("machine_total")
    busy = d.pop("machine_busy")
    mine = d["server"] + d["postgres"] + d["load_generator"]
    out = {k: round(v, 3) for k, v in d.items()}
    out["other_processes"] = round(max(0.0, busy - mine), 3)
    out["machine_busy"] = round(busy, 3)
    out["machine_cores"] = round(cores, 2)
    out["unit"] = "cores (CPU seconds per second of wall time)"
    return out


# -- the load generator ---------------------------------------------------------------------------

@dataclass
class RaterSession:
    name: str
    sessionid: str
    csrftoken: str
    token: str  # the rater API token the rate page hands its script
    rng: random.Random
    queue: list[str] = field(default_factory=list)  # lease ids the last reply carried
    http: LeanHttp | None = None  # its connection during a load run

    def headers(self) -> dict[str, str]:
        """What the rate page sends with a rating call."""
        return {"Authorization": f"Rater {self.token}"}

    def session_headers(self, base: str) -> dict[str, str]:
        """What a client that signs in with the session sends (cookie and CSRF token)."""
        return {"Cookie": f"sessionid={self.sessionid}; csrftoken={self.csrftoken}",
                "X-CSRFToken": self.csrftoken, "Referer": base + "/"}


@dataclass
class Recorder:
    t_start: float
    warmup_until: float
    rows: dict[str, list[tuple]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})
    errors: dict[str, int] = field(default_factory=dict)
    judgments: list[float] = field(default_factory=list)  # completion times of stored answers
    requests: int = 0

    def add(self, endpoint: str, t0: float, t1: float, status: int, bench: str | None) -> None:
        self.requests += 1
        if not 200 <= status < 300:
            key = ("transport" if status == 0 else "409" if status == 409 else
                   "410" if status == 410 else f"{status // 100}xx")
            self.errors[f"{endpoint}:{key}"] = self.errors.get(f"{endpoint}:{key}", 0) + 1
        if t0 < self.warmup_until:
            return
        server = queries = db = None
        if bench:
            server, queries, db = (int(x) for x in bench.split(";"))
        self.rows[endpoint].append((t1 - t0, status, server, queries, db))

    def error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1


class LeanHttp:
    """One rater's connection: HTTP/1.1 over asyncio streams, kept alive where the server
    allows it, requests written by hand. A general client spent as much CPU per request as the
    server's framework did (about 0.5 ms here), on the same two cores; this one is a fraction.

    A request whose connection the server closed while idle is sent again on a new one (safe:
    every answer carries its idempotency key)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict | None, headers: dict[str, str]
                   ) -> tuple[int, dict[str, str], bytes]:
        payload = json.dumps(body).encode() if body is not None else b""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                   f"{head}\r\n").encode() + payload
        for attempt in range(2):
            fresh = self.writer is None
            if fresh:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(request)
                line = await self.reader.readline()
                if not line:
                    raise ConnectionResetError("closed by the server")
                status = int(line.split(b" ", 2)[1])
                got: dict[str, str] = {}
                while (line := await self.reader.readline()) not in (b"\r\n", b""):
                    k, _, v = line.decode("latin-1").partition(":")
                    got[k.strip().lower()] = v.strip()
                data = await self.reader.readexactly(int(got.get("content-length", 0)))
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if fresh or attempt:
                    raise
                continue
            if got.get("connection", "").lower() == "close":
                self.close()
            return status, got, data
        raise ConnectionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _post(base: str, rater: RaterSession, endpoint: str, path: str,
                body: dict | None, rec: Recorder, *, session: bool = False
                ) -> tuple[int, dict | None]:
    t0 = time.perf_counter()
    status, data, bench = 0, None, None
    headers = rater.session_headers(base) if session else rater.headers()
    try:
        status, got, raw = await rater.http.post(path, body, headers)
        bench = got.get("x-bench")
        if got.get("content-type", "").startswith("application/json"):
            data = json.loads(raw)
    except (TimeoutError, OSError, Exception):  # noqa: BLE001 - counted as errors
        status = 0
    rec.add(endpoint, t0, time.perf_counter(), status, bench)
    return status, data


def _answer(rater: RaterSession) -> dict:
    answer = {
        "idempotency_key": str(uuid.uuid4()),
        "choice": rater.rng.choice(("left", "right", "tie", "both_bad")),
        "decision_ms": rater.rng.randint(800, 6000),
        "viewing_ms": rater.rng.randint(8000, 20000),
        "playback": {"plays": 1, "events": [{"t": 0, "e": "play"}, {"t": 9000, "e": "ended"}]},
    }
    if answer["choice"] in ("left", "right"):
        answer["strength"] = rater.rng.randint(1, 3)
    return answer


def _leases(rec: Recorder, body: dict | None, endpoint: str) -> list[str]:
    if not body or body.get("state") != "rating" or not body.get("assignments"):
        rec.error(f"{endpoint}:state_{(body or {}).get('state')}")
        return []
    return [a["id"] for a in body["assignments"]]


async def one_judgment(base: str, rater: RaterSession, rec: Recorder,
                       think: float, *, heartbeat: bool = True) -> bool:
    """What the rater page does for one item: the items on screen and preloading come with the
    previous answer's reply (``next`` when there was none: the first item, after an error, and
    for ``RELOAD_SHARE`` of the items, a page reload), a heartbeat while the clips play, then
    the answer."""
    if not rater.queue or rater.rng.random() < RELOAD_SHARE:
        status, body = await _post(base, rater, "next", f"/api/rate/{SLUG}/next/", None,
                                   rec)
        rater.queue = _leases(rec, body, "next") if status == 200 else []
        if not rater.queue:
            return False
    token = rater.queue[0]
    if think:
        await asyncio.sleep(think * rater.rng.uniform(0.6, 1.4))
    if heartbeat:
        await _post(base, rater, "heartbeat", f"/api/assignments/{token}/heartbeat/",
                    None, rec)
    if think:
        await asyncio.sleep(think * rater.rng.uniform(0.6, 1.4))
    status, body = await _post(base, rater, "judgment",
                               f"/api/assignments/{token}/judgment/", _answer(rater), rec)
    rater.queue = _leases(rec, body.get("next"), "judgment") if status == 201 and body else []
    if status == 201:
        rec.judgments.append(time.perf_counter())
    return status == 201


async def answer_only(base: str, rater: RaterSession, rec: Recorder,
                      think: float) -> bool:
    """One item as the page handles it when the rater answers within the heartbeat interval
    (a quarter of the lease time, 22.5 s by default): no heartbeat is due, so the answer is
    the only call."""
    return await one_judgment(base, rater, rec, think, heartbeat=False)


async def session_judgment(base: str, rater: RaterSession, rec: Recorder,
                           think: float) -> bool:
    """The same item through the session (cookie, CSRF token) with a separate next call
    before each answer: what a client that ignores the token and the carried items does."""
    status, body = await _post(base, rater, "next", f"/api/rate/{SLUG}/next/", None,
                               rec, session=True)
    leases = _leases(rec, body, "next") if status == 200 else []
    if not leases:
        return False
    token = leases[0]
    if think:
        await asyncio.sleep(think * rater.rng.uniform(0.6, 1.4))
    status, _ = await _post(base, rater, "heartbeat",
                            f"/api/assignments/{token}/heartbeat/", None, rec, session=True)
    if think:
        await asyncio.sleep(think * rater.rng.uniform(0.6, 1.4))
    status, _ = await _post(base, rater, "judgment",
                            f"/api/assignments/{token}/judgment/", _answer(rater), rec,
                            session=True)
    if status == 201:
        rec.judgments.append(time.perf_counter())
    return status == 201


async def floor_cycle(base: str, rater: RaterSession, rec: Recorder,
                      think: float) -> bool:
    """Two calls, as one judgment makes, to a rating view that does nothing (the rater token
    is checked): what the stack (gunicorn, middleware, DRF) costs before any rating work."""
    for endpoint in ("heartbeat", "judgment"):
        status, _ = await _post(base, rater, endpoint, "/bench/floor/rater/", None, rec)
        if status != 200:
            return False
    rec.judgments.append(time.perf_counter())
    return True


async def _load(base: str, raters: list[RaterSession], *, duration: float, pace: float,
                warmup: float, max_judgments: int, cycle=one_judgment) -> Recorder:

    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    rec = Recorder(t_start=start, warmup_until=start + warmup)
    stop = start + warmup + duration
    late = 0

    async def rater_loop(r: RaterSession) -> None:
        nonlocal late
        r.queue = []  # leases of an earlier run are gone
        if pace:
            await asyncio.sleep(r.rng.uniform(0, pace))
        due = loop.time()
        while time.perf_counter() < stop and len(rec.judgments) < max_judgments:
            ok = await cycle(base, r, rec, think=pace * 0.25)
            if not ok and not pace:
                await asyncio.sleep(0.05)  # do not spin on a failing server
            if pace:
                due += pace
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                else:
                    late += 1
                    due = loop.time()

    async def analyze_after_warmup() -> None:
        await asyncio.sleep(max(0.0, rec.warmup_until - time.perf_counter() - 0.5))
        await asyncio.to_thread(_analyze)

    host, port = base.removeprefix("http://").rsplit(":", 1)
    for r in raters:
        r.http = LeanHttp(host, int(port))
    try:
        await asyncio.gather(analyze_after_warmup(), *(rater_loop(r) for r in raters))
    finally:
        for r in raters:
            r.http.close()
    rec.late_cycles = late  # type: ignore[attr-defined]
    rec.t_stop = stop  # type: ignore[attr-defined]
    return rec


async def _join(base: str, invite: str, n: int, seed: int) -> list[RaterSession]:
    """Raters join through the invite page as browsers do: GET it, POST the form back."""
    import re

    import aiohttp

    from annotation.simulation import rate_page_config

    async def join(i: int, http) -> RaterSession:
        cookies: dict[str, str] = {}

        def keep(resp) -> None:
            for k, morsel in resp.cookies.items():
                cookies[k] = morsel.value

        url = f"{base}/rate/invite/{invite}/"
        async with http.get(url) as resp:
            assert resp.status == 200, resp.status
            keep(resp)
            page = await resp.text()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        async with http.post(url, data={"csrfmiddlewaretoken": token, "consent": "1"},
                             headers={"Cookie": f"csrftoken={cookies['csrftoken']}",
                                      "Referer": url},
                             allow_redirects=False) as resp:
            if resp.status != 302:
                raise RuntimeError(f"joining answered {resp.status}: {await resp.text()}")
            keep(resp)
        # The rate page, as the browser opens it next: it carries the rater API token.
        async with http.get(f"{base}/rate/{SLUG}/",
                            headers={"Cookie": f"sessionid={cookies['sessionid']}"}) as resp:
            assert resp.status == 200, resp.status
            page = await resp.text()
        return RaterSession(f"r{i}", cookies["sessionid"], cookies["csrftoken"],
                            rate_page_config(page)["token"], random.Random(seed * 100_003 + i))

    sem = asyncio.Semaphore(16)

    async def bounded(i: int, http) -> RaterSession:
        async with sem:
            return await join(i, http)

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        return list(await asyncio.gather(*(bounded(i, http) for i in range(n))))


# -- figures -----------------------------------------------------------------------------------

def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarise(rec: Recorder, label: str, config: ServerConfig, cpu: dict | None) -> dict:
    window = rec.t_stop - rec.warmup_until  # type: ignore[attr-defined]
    done = [t for t in rec.judgments if rec.warmup_until <= t <= rec.t_stop]  # type: ignore
    endpoints = {}
    for e in ENDPOINTS:
        rows = rec.rows[e]
        lat = [r[0] * 1000 for r in rows]
        server = [r[2] / 1000 for r in rows if r[2] is not None]
        db = [r[4] / 1000 for r in rows if r[4] is not None]
        queries = [r[3] for r in rows if r[3] is not None]
        endpoints[e] = {
            "requests": len(rows),
            "p50_ms": round(_pct(lat, 0.5), 2),
            "p95_ms": round(_pct(lat, 0.95), 2),
            "p99_ms": round(_pct(lat, 0.99), 2),
            "max_ms": round(max(lat), 1) if lat else None,
            "server_p50_ms": round(_pct(server, 0.5), 2) if server else None,
            "server_p95_ms": round(_pct(server, 0.95), 2) if server else None,
            "server_mean_ms": round(sum(server) / len(server), 3) if server else None,
            "sql_mean_ms": round(sum(db) / len(db), 3) if db else None,
            "sql_statements_mean": round(sum(queries) / len(queries), 2) if queries else None,
        }
    return {
        "label": label,
        "server": config.name,
        "server_config": {"kind": config.kind, "workers": config.workers,
                          "threads": config.threads, "note": config.note},
        "window_s": round(window, 2),
        "requests": rec.requests,
        "judgments": len(done),
        "judgments_per_s": round(len(done) / window, 1),
        "requests_per_s": round(sum(len(rec.rows[e]) for e in ENDPOINTS) / window, 1),
        "errors": dict(sorted(rec.errors.items())),
        "error_count": sum(rec.errors.values()),
        "late_cycles": getattr(rec, "late_cycles", 0),
        "endpoints": endpoints,
        "cpu": cpu,
    }


def run_load(server: Server, raters: list[RaterSession], *, label: str, duration: float,
             pace: float, warmup: float, cycle=one_judgment) -> dict:
    """One load run; the caller checks the campaign afterwards (``campaign_check``)."""
    before = cpu_snapshot(server)
    rec = asyncio.run(_load(server.base, raters, duration=duration, pace=pace, warmup=warmup,
                            max_judgments=int(duration + warmup) * 2000, cycle=cycle))
    cpu = cpu_split(before, cpu_snapshot(server))
    out = summarise(rec, label, server.config, cpu)
    out["raters"] = len(raters)
    out["pace_s"] = pace
    return out


# -- in process: the SQL of each call, and the framework's own share --------------------------

def sql_per_call(cycles: int = 30) -> dict:
    """Statements per call with the Django test client (the whole request, as the rate page
    makes it: rater token, the next items carried by each answer's reply), counted over
    ``cycles`` judgments of one rater, with one example of each, and the median in-process
    time per call (no HTTP, no concurrency)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from annotation.models import Enrollment
    from annotation.services.enrollment import rater_token_make

    enrollment = Enrollment.objects.filter(campaign__slug=SLUG).order_by("pk").first()
    client = Client(HTTP_HOST="127.0.0.1",
                    HTTP_AUTHORIZATION="Rater " + rater_token_make(enrollment=enrollment))
    counts: dict[str, list[int]] = {e: [] for e in ENDPOINTS}
    times: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
    examples: dict[tuple[str, int], list[str]] = {}  # one per (call, statement count)
    rng = random.Random(0)

    def call(endpoint: str, path: str, body: dict | None = None):
        with CaptureQueriesContext(connection) as ctx:
            t0 = time.perf_counter()
            res = client.post(path, body, content_type="application/json")
            times[endpoint].append(time.perf_counter() - t0)
        assert 200 <= res.status_code < 300, (endpoint, res.status_code, res.content[:200])
        counts[endpoint].append(len(ctx.captured_queries))
        sqls = [q["sql"] for q in ctx.captured_queries]
        key = (endpoint, len(sqls))
        if key not in examples or "RANDOM()" in " ".join(examples[key]):
            examples[key] = sqls  # preferably one without a probe (those are drawn at random)
        return res

    body = call("next", f"/api/rate/{SLUG}/next/").json()
    for i in range(cycles):
        token = body["assignments"][0]["id"]
        call("heartbeat", f"/api/assignments/{token}/heartbeat/")
        body = call("judgment", f"/api/assignments/{token}/judgment/",
                    {"idempotency_key": str(uuid.uuid4()), "decision_ms": 1000,
                     "choice": rng.choice(("left", "right", "tie", "both_bad"))}).json()["next"]
        if i == 4:  # warmed up: measure from here
            times = {e: [] for e in ENDPOINTS}
    # The next call alone (the page makes it once, when it opens).
    for _ in range(10):
        call("next", f"/api/rate/{SLUG}/next/")
    return {e: {"statements_min": min(v), "statements_max": max(v),
                "statements_mean": round(sum(v) / len(v), 2),
                "in_process_p50_ms": round(_pct([t * 1000 for t in times[e]], 0.5), 2),
                "example": [q[:140] for q in examples[(e, max(set(v), key=v.count))]]}
            for e, v in counts.items()}


def __getattr__(name: str):
    """``urlpatterns``: this module is the URLconf of the measured server (see
    rating_settings.py): the project's URLs, and a view that does nothing but read the
    signed-in user, through DRF and through plain Django (the framework's floor)."""
    if name != "urlpatterns":
        raise AttributeError(name)
    from django.http import JsonResponse
    from django.urls import path
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from annotation.apis import RaterApi
    from config.urls import urlpatterns

    class Nothing(APIView):
        def post(self, request):
            return Response({"user": request.user.pk})

    class RaterNothing(RaterApi):
        def post(self, request):
            return Response({"user": request.user.pk})

    def plain(request):
        return JsonResponse({"user": request.user.pk})

    return [*urlpatterns, path("bench/floor/drf/", Nothing.as_view()),
            path("bench/floor/rater/", RaterNothing.as_view()),
            path("bench/floor/plain/", plain)]


def round_trip_cpu(n: int = 3000) -> dict:
    """What one database round trip costs in CPU on each side, apart from any work: ``SELECT
    1`` ``n`` times over psycopg, the client's CPU and its PostgreSQL backend's (from /proc)."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        for _ in range(200):  # warm
            conn.execute("SELECT 1").fetchone()
        backend0, client0 = _stat(pid)[2], time.process_time()
        for _ in range(n):
            conn.execute("SELECT 1").fetchone()
        backend1, client1 = _stat(pid)[2], time.process_time()
    return {"statement": "SELECT 1", "n": n,
            "postgresql_cpu_ms": round((backend1 - backend0) / n * 1000, 3),
            "client_cpu_ms": round((client1 - client0) / n * 1000, 3)}


def framework_floor(rounds: int = 6, n: int = 40) -> dict:
    """What a request costs before the view does anything, in process (best of ``rounds``):
    the middleware and DRF with the rater token; with the session and the user (two queries)
    instead; and anonymous plain Django, for scale."""
    from django.test import Client, override_settings

    from annotation.models import Enrollment
    from annotation.services.enrollment import rater_token_make

    enrollment = Enrollment.objects.filter(campaign__slug=SLUG).order_by("pk").first()
    out = {}
    with override_settings(ROOT_URLCONF=__name__):  # as in the server (rating_settings.py)
        signed_in = Client(HTTP_HOST="127.0.0.1")
        signed_in.force_login(enrollment.rater)
        token = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION="Rater " + rater_token_make(
            enrollment=enrollment))
        cases = {"drf_rater_token_ms": (token, "/bench/floor/rater/"),
                 "drf_signed_in_ms": (signed_in, "/bench/floor/drf/"),
                 "django_signed_in_ms": (signed_in, "/bench/floor/plain/"),
                 "django_anonymous_ms": (Client(HTTP_HOST="127.0.0.1"), "/bench/floor/plain/")}
        for key, (client, url) in cases.items():
            best = float("inf")
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(n):
                    client.post(url)
                best = min(best, (time.perf_counter() - t0) / n)
            out[key] = round(best * 1000, 2)
    return out


def where_the_time_goes(run: dict, sql: dict, floor: dict, floor_http: dict) -> dict:
    """Per judgment (a heartbeat and an answer, and the odd next): CPU of each party, and the
    split of the server's time into SQL, the framework and the rest of the view."""
    per_j = 1000 / max(run["judgments_per_s"], 1e-9)
    cpu = run["cpu"]
    ep = run["endpoints"]
    # Calls of each kind per judgment, from the run itself.
    per = {e: ep[e]["requests"] / max(run["judgments_per_s"] * run["window_s"], 1e-9)
           for e in ENDPOINTS}
    server_ms = sum((ep[e]["server_mean_ms"] or 0) * per[e] for e in ENDPOINTS)
    sql_ms = sum((ep[e]["sql_mean_ms"] or 0) * per[e] for e in ENDPOINTS)
    requests = sum(per.values())
    return {
        "requests_per_judgment": {e: round(v, 3) for e, v in per.items()},
        "cpu_ms_per_judgment": {
            "server (gunicorn workers)": round(cpu["server"] * per_j, 1),
            "postgresql": round(cpu["postgres"] * per_j, 1),
            "load generator": round(cpu["load_generator"] * per_j, 1),
            "other processes on the machine": round(cpu["other_processes"] * per_j, 1),
        },
        "server_ms_per_judgment": {
            "in the application (worker wall time)": round(server_ms, 1),
            "of which SQL statements (wall)": round(sql_ms, 1),
            "framework floor x requests (in process, idle machine)": round(
                requests * floor["drf_rater_token_ms"], 1),
        },
        "statements_per_call": {e: sql[e]["statements_mean"] for e in ENDPOINTS},
        "postgresql_reads_per_judgment": run["postgresql_reads_per_judgment"],
        "stack_alone_judgments_per_s": floor_http["judgments_per_s"],
        "stack_alone_server_cpu_ms_per_judgment": round(
            floor_http["cpu"]["server"] * 1000 / max(floor_http["judgments_per_s"], 1e-9), 1),
        "note": "server CPU per judgment over the framework floor x requests is the work of the "
                "views; "
                "wall time in the worker above its CPU is waiting for PostgreSQL and for a core",
    }


# -- main ----------------------------------------------------------------------------------------

def _print_run(r: dict) -> None:
    ep = r["endpoints"]
    cells = "  ".join(f"{ep[e]['p50_ms']:6.1f} {ep[e]['p95_ms']:7.1f} {ep[e]['p99_ms']:7.1f}"
                      for e in ENDPOINTS)
    print(f"  {r['label']:<36} {r['raters']:>4} {r['judgments_per_s']:7.1f} "
          f"{r['error_count']:>6}   {cells}")


def _header() -> None:
    cols = "  ".join(f"{e + ' p50/p95/p99 ms':>22}" for e in ENDPOINTS)
    print(f"  {'run':<36} {'n':>4} {'judg/s':>7} {'errors':>6}   {cols}")


def _measure(config: ServerConfig, env: dict, logs: Path, raters: list[RaterSession], *,
             label: str, duration: float, pace: float, warmup: float,
             cycle=one_judgment) -> dict:
    reset_campaign()
    before = postgresql_reads()
    with Server(config, env, logs) as server:
        run = run_load(server, raters, label=label, duration=duration, pace=pace,
                       warmup=warmup, cycle=cycle)
    # (read once the server's connections are closed: a backend reports its counts on exit)
    after = postgresql_reads()
    run["check"] = campaign_check()
    # Every judgment of the run, warm-up included, as the counts are.
    run["postgresql_reads_per_judgment"] = reads_per_judgment(before, after,
                                                                run["check"]["judgments"])
    _print_run(run)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", type=int, default=200)
    parser.add_argument("--pace", type=float, default=2.0, help="seconds per judgment, paced")
    parser.add_argument("--paced-s", type=float, default=60)
    parser.add_argument("--compare-s", type=float, default=10,
                        help="paced run against gunicorn's default, for the comparison")
    parser.add_argument("--capacity", default="10,25,50",
                        help="paced rater counts tried on the chosen server (p95 < 50 ms?)")
    parser.add_argument("--capacity-s", type=float, default=8)
    parser.add_argument("--sat-raters", type=int, default=32)
    parser.add_argument("--sat-s", type=float, default=20)
    parser.add_argument("--sat-rounds", type=int, default=3,
                        help="saturation runs; the median one is reported")
    parser.add_argument("--sweep-s", type=float, default=4)
    parser.add_argument("--sweep-rounds", type=int, default=2)
    parser.add_argument("--floor-s", type=float, default=8,
                        help="saturation against a view that only reads the user")
    parser.add_argument("--episodes", type=int, default=120)
    parser.add_argument("--items", type=int, default=3360)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="short runs, a smoke test (results go to the temporary folder)")
    args = parser.parse_args()
    if args.quick:
        args.paced_s, args.compare_s, args.sat_s, args.sweep_s, args.capacity_s = 8, 4, 6, 2, 3
        args.sat_rounds = 1
        args.sweep_rounds = 1
        args.floor_s = 3
        args.episodes, args.items, args.capacity = 80, 2000, "25"
    warmup = 2.0

    t_all = time.perf_counter()
    cpus = len(os.sched_getaffinity(0))
    sweep = [
        ServerConfig("runserver", "runserver", note="manage.py runserver (threaded)"),
        ServerConfig("gunicorn-default", "sync", 1, note="gunicorn's default: 1 sync worker"),
        ServerConfig(f"gunicorn-sync-{cpus + 1}", "sync", cpus + 1),
        ServerConfig(f"gunicorn-sync-{2 * cpus + 1}", "sync", 2 * cpus + 1,
                     note="gunicorn's advice: 2 x cores + 1"),
        ServerConfig(f"gunicorn-gthread-{cpus}x4", "gthread", cpus, 4),
        ServerConfig(f"gunicorn-gthread-{cpus}x8", "gthread", cpus, 8),
        ServerConfig(f"gunicorn-gevent-{cpus}", "gevent", cpus, env={"DB_POOL": "1"},
                     note="gevent worker, connections from a pool (DB_POOL=1)"),
    ]
    by_name = {c.name: c for c in sweep}

    with tempfile.TemporaryDirectory(prefix="bench-rating-") as tmp:
        env = _environment(str(Path(tmp) / "media"))
        logs = Path(tmp)
        print(f"rating: database {env['DATABASE_URL']}, {cpus} CPUs "
              f"(load average {os.getloadavg()[0]:.1f})")
        _recreate_database(env["DATABASE_URL"])
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.db import connection

        import annotation.services.scheduling as scheduling

        t0 = time.perf_counter()
        call_command("migrate", verbosity=0)
        migrate_s = time.perf_counter() - t0
        sizes = build_campaign(episodes=args.episodes, items=args.items, seed=args.seed)
        invite = sizes.pop("invite")
        sizes["migrate_s"] = round(migrate_s, 1)
        print(f"  {sizes['episodes']} episodes, {sizes['items']} items (+{sizes['gold_items']} "
              f"gold, {sizes['catch_items']} catch), overlap {sizes['overlap']}; set up in "
              f"{migrate_s + sizes['corpus_s'] + sizes['campaign_s']:.0f} s")
        connection.close()

        # Raters join once, through gunicorn; their sessions serve every later server.
        with Server(by_name[f"gunicorn-sync-{cpus + 1}"], env, logs) as server:
            t0 = time.perf_counter()
            raters = asyncio.run(_join(server.base, invite, max(args.raters, args.sat_raters),
                                       args.seed))
            sizes["join_s"] = round(time.perf_counter() - t0, 1)
        sizes.update(build_history(seed=args.seed))
        print(f"  an earlier round: {sizes['earlier_round_judgments']} judgments in another "
              f"campaign ({sizes['earlier_round_s']:.0f} s)")

        # This machine's speed drifts by tens of percent within minutes: the configurations
        # take turns, round after round, and are compared by their mean.
        print(f"\nsweep: {args.sat_raters} raters with no think time, {args.sweep_s:g} s per "
              f"run, {args.sweep_rounds} rounds taking turns")
        _header()
        sweep_runs = [_measure(c, env, logs, raters[: args.sat_raters], label=c.name,
                               duration=args.sweep_s, pace=0, warmup=1.5)
                      for _ in range(args.sweep_rounds) for c in sweep]
        sweep_mean = {c.name: round(sum(r["judgments_per_s"] for r in sweep_runs
                                        if r["server"] == c.name) / args.sweep_rounds, 1)
                      for c in sweep}
        print("  mean judgments/s: " + ", ".join(f"{k} {v}" for k, v in sweep_mean.items()))
        clean = {r["server"] for r in sweep_runs} - {r["server"] for r in sweep_runs
                                                     if r["error_count"]}
        tuned = [n for n in sweep_mean if n not in ("runserver", "gunicorn-default")
                 and n in clean] or list(sweep_mean)
        best = by_name[max(tuned, key=sweep_mean.get)]

        print(f"\nmeasured in full on {best.name}: (a) {args.raters} raters, one judgment "
              f"every {args.pace:g} s, {args.paced_s:.0f} s; (b) {args.sat_raters} raters, "
              f"no think time, {args.sat_s:.0f} s")
        _header()
        paced = _measure(best, env, logs, raters[: args.raters],
                         label=f"(a) paced, {best.name}", duration=args.paced_s,
                         pace=args.pace, warmup=warmup)
        # This machine's speed drifts: (b) is measured in rounds and the median round counts.
        sat_runs = [_measure(best, env, logs, raters[: args.sat_raters],
                             label=f"(b) saturation {k + 1}/{args.sat_rounds}, {best.name}",
                             duration=args.sat_s, pace=0, warmup=warmup)
                    for k in range(args.sat_rounds)]
        saturation = sorted(sat_runs, key=lambda r: r["judgments_per_s"])[len(sat_runs) // 2]
        answers = _measure(best, env, logs, raters[: args.sat_raters],
                           label=f"(b) answers only, {best.name}", duration=args.floor_s,
                           pace=0, warmup=warmup, cycle=answer_only)
        with Server(best, env, logs) as server:  # the same load on a do-nothing view
            floor_http = run_load(server, raters[: args.sat_raters],
                                  label=f"(b) floor: do-nothing view, {best.name}",
                                  duration=args.floor_s, pace=0, warmup=warmup,
                                  cycle=floor_cycle)
        _print_run(floor_http)
        # The same raters answered by the REST views alone (the fast path switched off).
        rest = ServerConfig(f"{best.name}-rest-views", best.kind, best.workers, best.threads,
                            note="RATING_FAST_PATH=0", env={"RATING_FAST_PATH": "0"})
        rest_views = _measure(rest, env, logs, raters[: args.sat_raters],
                              label=f"(b) REST views, fast path off, {best.name}",
                              duration=args.floor_s, pace=0, warmup=warmup)
        # What a client gets that signs in with the session and asks for each next item.
        session = _measure(best, env, logs, raters[: args.sat_raters],
                           label=f"(b) session, 3 calls, {best.name}", duration=args.floor_s,
                           pace=0, warmup=warmup, cycle=session_judgment)
        default = by_name["gunicorn-default"]
        paced_default = _measure(default, env, logs, raters[: args.raters],
                                 label=f"(a) paced, {default.name}", duration=args.compare_s,
                                 pace=args.pace, warmup=warmup)
        capacity = []
        for n in [int(x) for x in args.capacity.split(",") if x]:
            if n >= args.raters:
                continue
            capacity.append(_measure(best, env, logs, raters[:n],
                                     label=f"paced, {n} raters, {best.name}",
                                     duration=args.capacity_s, pace=args.pace, warmup=warmup))

        # The same load on the tables of a new install: no earlier round (measured last).
        drop_history()
        new_install = _measure(best, env, logs, raters[: args.sat_raters],
                               label=f"(b) new install's tables, {best.name}",
                               duration=args.sat_s, pace=0, warmup=warmup)

        reset_campaign()
        sql = sql_per_call()
        floor = framework_floor()
        round_trip = round_trip_cpu()
        server_settings = {
            "session_engine": settings.SESSION_ENGINE,
            "conn_max_age": settings.DATABASES["default"].get("CONN_MAX_AGE"),
            "middleware": settings.MIDDLEWARE,
            "rating_fast_path": settings.RATING_FAST_PATH,
            "prefetch": scheduling.PREFETCH,
        }
        connection.close()

    def ok(run: dict) -> bool:
        return all(run["endpoints"][e]["p95_ms"] < 50 for e in ENDPOINTS)

    comparison = {
        f"saturation_{best.name}_vs_{name}": round(
            sweep_mean[best.name] / max(sweep_mean[name], 1e-9), 2)
        for name in ("runserver", "gunicorn-default")
    }
    comparison["saturation_fast_path_vs_rest_views"] = round(
        saturation["judgments_per_s"] / max(rest_views["judgments_per_s"], 1e-9), 2)
    comparison["saturation_vs_new_install_tables"] = round(
        saturation["judgments_per_s"] / max(new_install["judgments_per_s"], 1e-9), 2)
    comparison["saturation_rate_page_protocol_vs_session_3_calls"] = round(
        saturation["judgments_per_s"] / max(session["judgments_per_s"], 1e-9), 2)
    comparison[f"paced_p95_{default.name}_over_{best.name}"] = {
        e: round(paced_default["endpoints"][e]["p95_ms"]
                 / max(paced["endpoints"][e]["p95_ms"], 1e-9), 2) for e in ENDPOINTS}
    comparison[f"paced_judgments_per_s_{best.name}_vs_{default.name}"] = (
        round(paced["judgments_per_s"] / paced_default["judgments_per_s"], 2)
        if paced_default["judgments_per_s"] else None)
    met = [r["raters"] for r in capacity if ok(r) and r["error_count"] == 0]
    checks = [r["check"] for r in [*sweep_runs, paced, *sat_runs, answers, rest_views, session,
                                   new_install,
                                   paced_default,
                                   *capacity]]
    goals = {
        "a_paced_p95_under_50ms_every_endpoint": ok(paced),
        "b_saturation_over_300_judgments_per_s": saturation["judgments_per_s"] > 300,
        # Not the goal's measure (it keeps one heartbeat per item): the page's own calls when
        # items are answered faster than the heartbeat interval.
        "b_answers_only_over_300_judgments_per_s": answers["judgments_per_s"] > 300,
        "zero_errors": paced["error_count"] == 0 and saturation["error_count"] == 0,
        "overlap_never_exceeded": all(c["items_over_overlap"] == 0 for c in checks),
        "counts_agree": all(c["items_count_mismatch"] == 0
                            and c["submitted_without_judgment"] == 0 for c in checks),
    }
    result = {
        "benchmark": "rating",
        "machine": machine_info(database="postgresql"),
        "inputs": {**sizes, "raters": args.raters, "pace_s": args.pace,
                   "paced_s": args.paced_s, "sat_raters": args.sat_raters,
                   "sat_s": args.sat_s, "sat_rounds": args.sat_rounds,
                   "sweep_s": args.sweep_s,
                   "sweep_rounds": args.sweep_rounds, "compare_s": args.compare_s,
                   "capacity_s": args.capacity_s, "warmup_s": warmup, "seed": args.seed,
                   "load_generator": "asyncio streams in this process (hand-written HTTP/1.1, "
                                     "one kept-alive connection and one rater token per "
                                     "rater, as the rate page), on this machine"},
        "server_settings": server_settings,
        "chosen_server": best.name,
        "paced": paced,
        "saturation": saturation,
        "paced_default": paced_default,
        "saturation_rounds_judgments_per_s": [r["judgments_per_s"] for r in sat_runs],
        "saturation_answers_only": answers,
        "floor_http": floor_http,
        "saturation_rest_views": rest_views,
        "saturation_new_install_tables": new_install,
        "session_three_calls": session,
        "paced_capacity": capacity,
        "largest_paced_raters_meeting_p95": max(met) if met else None,
        "sweep_mean_judgments_per_s": sweep_mean,
        "sweep": sweep_runs,
        "comparison": comparison,
        "sql_per_call": sql,
        "framework_floor_ms": floor,
        "round_trip_cpu_ms": round_trip,
        "where_the_time_goes": where_the_time_goes(saturation, sql, floor, floor_http),
        "goals": goals,
        "goal": "(a) p95 < 50 ms on every endpoint at 200 raters x 1 judgment / 2 s; "
                "(b) > 300 judgments/s at saturation; zero errors (409/410 counted apart)",
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    # A smoke test does not replace the measured figures.
    out = write_results("rating", result, Path(tempfile.gettempdir()) / "rating-quick.json"
                        if args.quick else None)
    wt = result["where_the_time_goes"]
    print("\nwhere the time goes, per judgment at saturation (CPU ms): "
          + ", ".join(f"{k} {v}" for k, v in wt["cpu_ms_per_judgment"].items()))
    print("  SQL statements per call: "
          + ", ".join(f"{e} {sql[e]['statements_mean']:g}" for e in ENDPOINTS)
          + "; in process, alone: "
          + ", ".join(f"{e} {sql[e]['in_process_p50_ms']:g} ms" for e in ENDPOINTS))
    print("  PostgreSQL's work per judgment: " + ", ".join(
        f"{k} {v:g}" for k, v in wt["postgresql_reads_per_judgment"].items()))
    print(f"  a database round trip (SELECT 1) costs {round_trip['postgresql_cpu_ms']} ms of "
          f"PostgreSQL CPU and {round_trip['client_cpu_ms']} ms in the client")
    print(f"  a rating call that does nothing costs {floor['drf_rater_token_ms']} ms in process "
          f"(with the session instead of the token {floor['drf_signed_in_ms']} ms, anonymous "
          f"plain Django {floor['django_anonymous_ms']} ms); two of them per judgment, "
          f"through {best.name}: {floor_http['judgments_per_s']} 'judgments'/s at most")
    print("comparison: " + ", ".join(f"{k} {v}x" for k, v in comparison.items()
                                     if not isinstance(v, dict)))
    print(f"goals: {goals}")
    print(f"largest paced rater count with p95 < 50 ms: "
          f"{result['largest_paced_raters_meeting_p95']}; {result['total_s']:.0f} s in all")
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
