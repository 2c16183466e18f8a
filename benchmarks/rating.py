"""Raters under load: the three rating calls against gunicorn on PostgreSQL, then saturation.

    python -m benchmarks.rating [--raters 200] [--pace 2] [--paced-s 60]
                                [--sat-raters 32] [--sat-s 30] [--sweep-s 10] [--quick]

Everything runs on this machine, traffic only to 127.0.0.1:

1. A throw-away PostgreSQL database ``backchannel_bench`` (dropped and made again, migrated; set
   ``BENCH_DATABASE_URL`` to use another server), a synthetic corpus and one large pairwise
   campaign (thousands of items, overlap 3, gold/catch/repeat probes at the default rates,
   consent text), its clips marked rendered with stand-in files.
2. Raters join through the invite page over HTTP (GET, then POST with the CSRF token and
   consent), each with its own session cookie, as a browser does.
3. A *sweep*: short saturation runs against ``manage.py runserver`` (what a first-time user
   starts), gunicorn's default (one sync worker) and tuned gunicorn configurations; the best
   tuned one is measured in full:
   (a) paced: ``--raters`` raters, each completing one judgment (next, heartbeat, submit) every
       ``--pace`` seconds (about ten times a real rater's pace), for ``--paced-s`` seconds;
       goal p95 < 50 ms on every endpoint;
   (b) saturation: ``--sat-raters`` raters with no think time for ``--sat-s`` seconds; goal
       over 300 judgments/s.
   The paced load also runs briefly against the defaults, for the comparison.
4. Where the time goes: the server answers with its own time per request (``X-Bench`` header
   from ``benchmarks/rating_settings.py``: µs in the worker, SQL statements, µs in SQL), the
   CPU of the server processes, PostgreSQL and this load generator is read from /proc, and the
   SQL of one request of each kind is listed (Django test client, in process).

Between runs the campaign is reset (judgments and leases deleted, counters zeroed, vacuumed) so
every run starts from the same state. Needs PostgreSQL on 127.0.0.1:5432 (``scripts/test``
starts it and makes .venv). Takes about 4-5 minutes. Timings are figures for this machine, not
tests. Results: benchmarks/results/rating.json
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
        "CELERY_BROKER_URL": os.environ.get("BENCH_CELERY_BROKER_URL",
                                            "redis://127.0.0.1:6379/15"),
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "benchmarks.rating_settings",
    }
    os.environ.update(env)
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
    from annotation.services.campaigns import campaign_create, campaign_set_status, invite_create
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
    ids = set(campaign.items.values_list("speaker_clip_id", flat=True))
    ids |= set(campaign.items.values_list("members__clip_id", flat=True))
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
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")
    connection.close()


def campaign_check() -> dict:
    """The overlap invariant and exactly-once, read back from the database after a run."""
    from django.db.models import Count, F, Q

    from annotation.models import Assignment, AssignmentStatus, Campaign, Item, Judgment, Probe

    campaign = Campaign.objects.get(slug=SLUG)
    regular = Judgment.objects.filter(campaign=campaign, probe=Probe.NONE)
    over = (Item.objects.filter(campaign=campaign, probe=Probe.NONE)
            .annotate(j=Count("judgments")).filter(j__gt=campaign.overlap).count())
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
    kind: str  # runserver | sync | gthread
    workers: int = 1
    threads: int = 1
    note: str = ""

    def argv(self, port: int) -> list[str]:
        py = sys.executable
        if self.kind == "runserver":
            return [py, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
        argv = [py, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
                "--workers", str(self.workers), "--worker-class", self.kind,
                "--log-level", "warning", "--timeout", "60", "--graceful-timeout", "5"]
        if self.kind == "gthread":
            argv += ["--threads", str(self.threads)]
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
                                     env={**os.environ, **self.env}, stdout=self.log,
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
    pg, pg_bench = 0.0, 0.0
    for pid in _all_pids():
        st = _stat(pid)
        if not st or not st[0].startswith("postgres"):
            continue
        parent = _stat(st[1])
        is_master = parent is None or not parent[0].startswith("postgres")
        pg += st[2] + (st[3] if is_master else 0.0)  # reaped backends count in the postmaster
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmd = b""
        if DB_NAME.encode() in cmd:
            pg_bench += st[2]
    t = os.times()
    busy, total = _machine_busy()
    return {"server": server_cpu, "postgres": pg, "postgres_bench_backends": pg_bench,
            "load_generator": t.user + t.system, "machine_busy": busy, "machine_total": total,
            "wall": time.monotonic()}


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
    rng: random.Random

    def headers(self, base: str) -> dict[str, str]:
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
        if endpoint == "judgment" and status == 201:
            self.judgments.append(t1)
        if t0 < self.warmup_until:
            return
        server = queries = db = None
        if bench:
            server, queries, db = (int(x) for x in bench.split(";"))
        self.rows[endpoint].append((t1 - t0, status, server, queries, db))

    def error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1


async def _post(http, base: str, rater: RaterSession, endpoint: str, path: str,
                body: dict | None, rec: Recorder) -> tuple[int, dict | None]:
    t0 = time.perf_counter()
    status, data, bench = 0, None, None
    try:
        async with http.post(base + path, json=body, headers=rater.headers(base)) as resp:
            status = resp.status
            bench = resp.headers.get("X-Bench")
            raw = await resp.read()
            if resp.content_type == "application/json":
                data = json.loads(raw)
    except (OSError, asyncio.TimeoutError, Exception):  # noqa: BLE001 - counted as errors
        status = 0
    rec.add(endpoint, t0, time.perf_counter(), status, bench)
    return status, data


async def one_judgment(http, base: str, rater: RaterSession, rec: Recorder,
                       think: float) -> bool:
    """What the rater page does for one item: next (tops the leases up to two; the first is
    on screen), a heartbeat while the clips play, then the answer."""
    status, body = await _post(http, base, rater, "next", f"/api/rate/{SLUG}/next/", None, rec)
    if status != 200 or not body:
        return False
    if body.get("state") != "rating" or not body.get("assignments"):
        rec.error(f"next:state_{body.get('state')}")
        return False
    token = body["assignments"][0]["id"]
    if think:
        await asyncio.sleep(think * rater.rng.uniform(0.6, 1.4))
    status, _ = await _post(http, base, rater, "heartbeat",
                            f"/api/assignments/{token}/heartbeat/", None, rec)
    if think:
        await asyncio.sleep(think * rater.rng.uniform(0.6, 1.4))
    answer = {
        "idempotency_key": str(uuid.uuid4()),
        "choice": rater.rng.choice(("left", "right", "tie", "both_bad")),
        "decision_ms": rater.rng.randint(800, 6000),
        "viewing_ms": rater.rng.randint(8000, 20000),
        "playback": {"plays": 1, "events": [{"t": 0, "e": "play"}, {"t": 9000, "e": "ended"}]},
    }
    if answer["choice"] in ("left", "right"):
        answer["strength"] = rater.rng.randint(1, 3)
    status, _ = await _post(http, base, rater, "judgment",
                            f"/api/assignments/{token}/judgment/", answer, rec)
    return status == 201


async def _load(base: str, raters: list[RaterSession], *, duration: float, pace: float,
                warmup: float, max_judgments: int) -> Recorder:
    import aiohttp

    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    rec = Recorder(t_start=start, warmup_until=start + warmup)
    stop = start + warmup + duration
    late = 0

    async def rater_loop(r: RaterSession) -> None:
        nonlocal late
        if pace:
            await asyncio.sleep(r.rng.uniform(0, pace))
        due = loop.time()
        while time.perf_counter() < stop and len(rec.judgments) < max_judgments:
            ok = await one_judgment(http, base, r, rec, think=pace * 0.25)
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

    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:
        await asyncio.gather(*(rater_loop(r) for r in raters))
    rec.late_cycles = late  # type: ignore[attr-defined]
    rec.t_stop = stop  # type: ignore[attr-defined]
    return rec


async def _join(base: str, invite: str, n: int, seed: int) -> list[RaterSession]:
    """Raters join through the invite page as browsers do: GET it, POST the form back."""
    import re

    import aiohttp

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
        return RaterSession(f"r{i}", cookies["sessionid"], cookies["csrftoken"],
                            random.Random(seed * 100_003 + i))

    sem = asyncio.Semaphore(16)

    async def bounded(i: int, http) -> RaterSession:
        async with sem:
            return await join(i, http)

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        return list(await asyncio.gather(*(bounded(i, http) for i in range(n))))


# -- figures ----------------------------------------------------------------------------------------

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
             pace: float, warmup: float) -> dict:
    before = cpu_snapshot(server)
    rec = asyncio.run(_load(server.base, raters, duration=duration, pace=pace, warmup=warmup,
                            max_judgments=int(duration + warmup) * 2000))
    cpu = cpu_split(before, cpu_snapshot(server))
    out = summarise(rec, label, server.config, cpu)
    out["raters"] = len(raters)
    out["pace_s"] = pace
    out["check"] = campaign_check()
    return out


# -- in process: the SQL of each call ------------------------------------------------------------

def sql_per_call(cycles: int = 30) -> dict:
    """Statements per call with the Django test client (the whole request: session, user,
    view), counted over ``cycles`` judgments of one rater, with one example of each."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from annotation.models import Enrollment

    enrollment = Enrollment.objects.filter(campaign__slug=SLUG).order_by("pk").first()
    client = Client()
    client.force_login(enrollment.rater)
    counts: dict[str, list[int]] = {e: [] for e in ENDPOINTS}
    examples: dict[str, list[str]] = {}
    rng = random.Random(0)

    def call(endpoint: str, path: str, body: dict | None = None):
        with CaptureQueriesContext(connection) as ctx:
            res = client.post(path, body, content_type="application/json")
        counts[endpoint].append(len(ctx.captured_queries))
        examples.setdefault(endpoint, [q["sql"][:160] for q in ctx.captured_queries])
        return res

    for _ in range(cycles):
        body = call("next", f"/api/rate/{SLUG}/next/").json()
        token = body["assignments"][0]["id"]
        call("heartbeat", f"/api/assignments/{token}/heartbeat/")
        call("judgment", f"/api/assignments/{token}/judgment/",
             {"idempotency_key": str(uuid.uuid4()), "decision_ms": 1000,
              "choice": rng.choice(("left", "right", "tie", "both_bad"))})
    return {e: {"min": min(v), "max": max(v), "mean": round(sum(v) / len(v), 2),
                "example": examples[e]} for e, v in counts.items()}


# -- main ----------------------------------------------------------------------------------------

def _print_run(r: dict) -> None:
    print(f"  {r['label']:<34} {r['judgments_per_s']:7.1f} judgments/s  "
          f"{r['requests_per_s']:7.1f} req/s  errors {r['error_count']}")
    for e in ENDPOINTS:
        x = r["endpoints"][e]
        print(f"      {e:<10} p50 {x['p50_ms']:7.1f}  p95 {x['p95_ms']:7.1f}  "
              f"p99 {x['p99_ms']:7.1f} ms   server p50 {x['server_p50_ms'] or 0:6.2f} ms, "
              f"{x['sql_statements_mean'] or 0:4.1f} SQL ({x['sql_mean_ms'] or 0:5.2f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", type=int, default=200)
    parser.add_argument("--pace", type=float, default=2.0, help="seconds per judgment, paced")
    parser.add_argument("--paced-s", type=float, default=60)
    parser.add_argument("--compare-paced-s", type=float, default=20,
                        help="paced run against the defaults, for the comparison")
    parser.add_argument("--sat-raters", type=int, default=32)
    parser.add_argument("--sat-s", type=float, default=30)
    parser.add_argument("--sweep-s", type=float, default=10)
    parser.add_argument("--episodes", type=int, default=250)
    parser.add_argument("--items", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--configs", default="",
                        help="comma-separated names from the sweep to run (default all)")
    args = parser.parse_args()
    if args.quick:
        args.paced_s, args.compare_paced_s, args.sat_s, args.sweep_s = 10, 5, 8, 4
        args.episodes, args.items = 60, 1500
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
    ]
    if args.configs:
        keep = set(args.configs.split(","))
        sweep = [c for c in sweep if c.name in keep or c.name == "gunicorn-default"]

    with tempfile.TemporaryDirectory(prefix="bench-rating-") as tmp:
        env = _environment(str(Path(tmp) / "media"))
        logs = Path(tmp)
        print(f"rating benchmark: database {env['DATABASE_URL']}, {cpus} CPUs")
        _recreate_database(env["DATABASE_URL"])
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        t0 = time.perf_counter()
        call_command("migrate", verbosity=0)
        migrate_s = time.perf_counter() - t0
        sizes = build_campaign(episodes=args.episodes, items=args.items, seed=args.seed)
        invite = sizes.pop("invite")
        sizes["migrate_s"] = round(migrate_s, 1)
        print(f"  {sizes['episodes']} episodes, {sizes['items']} items (+{sizes['gold_items']} "
              f"gold, {sizes['catch_items']} catch), overlap {sizes['overlap']}; "
              f"set up in {migrate_s + sizes['corpus_s'] + sizes['campaign_s']:.0f} s")
        connection.close()

        n_raters = max(args.raters, args.sat_raters)
        results: dict = {"sweep": [], "paced": [], "saturation": None}
        raters: list[RaterSession] = []
        print(f"\nsweep: {args.sat_raters} raters, no think time, {args.sweep_s:.0f} s each")
        for config in sweep:
            reset_campaign()
            with Server(config, env, logs) as server:
                if not raters:
                    t0 = time.perf_counter()
                    raters = asyncio.run(_join(server.base, invite, n_raters, args.seed))
                    sizes["join_s"] = round(time.perf_counter() - t0, 1)
                run = run_load(server, raters[: args.sat_raters], label=config.name,
                               duration=args.sweep_s, pace=0, warmup=1.0)
            results["sweep"].append(run)
            _print_run(run)
        tuned = [r for r in results["sweep"] if r["server"].startswith("gunicorn")
                 and r["server"] != "gunicorn-default" and r["error_count"] == 0]
        best_name = max(tuned or results["sweep"], key=lambda r: r["judgments_per_s"])["server"]
        best = next(c for c in sweep if c.name == best_name)
        print(f"\nmeasured in full: {best.name}")

        reset_campaign()
        with Server(best, env, logs) as server:
            paced = run_load(server, raters[: args.raters], label=f"(a) paced, {best.name}",
                             duration=args.paced_s, pace=args.pace, warmup=warmup)
            _print_run(paced)
            results["paced"].append(paced)
            reset_campaign()
            sat = run_load(server, raters[: args.sat_raters],
                           label=f"(b) saturation, {best.name}", duration=args.sat_s, pace=0,
                           warmup=warmup)
            _print_run(sat)
            results["saturation"] = sat
        for config in [c for c in sweep if c.name in ("runserver", "gunicorn-default")]:
            reset_campaign()
            with Server(config, env, logs) as server:
                run = run_load(server, raters[: args.raters], label=f"(a) paced, {config.name}",
                               duration=args.compare_paced_s, pace=args.pace, warmup=warmup)
            _print_run(run)
            results["paced"].append(run)

        reset_campaign()
        sql = sql_per_call()
        import annotation.services.scheduling as scheduling

        from django.conf import settings

        server_settings = {
            "session_engine": settings.SESSION_ENGINE,
            "conn_max_age": settings.DATABASES["default"].get("CONN_MAX_AGE"),
            "middleware": settings.MIDDLEWARE,
            "prefetch": scheduling.PREFETCH,
        }

    by_name = {r["server"]: r for r in results["sweep"]}
    sat_rate = results["saturation"]["judgments_per_s"]
    paced_best = results["paced"][0]
    comparison = {}
    for name in ("runserver", "gunicorn-default"):
        if name in by_name:
            comparison[f"saturation_vs_{name}"] = round(
                by_name[best.name]["judgments_per_s"] / max(by_name[name]["judgments_per_s"],
                                                            1e-9), 2)
        paced_other = next((r for r in results["paced"] if r["server"] == name), None)
        if paced_other:
            comparison[f"paced_p95_{name}_over_tuned"] = {
                e: round(paced_other["endpoints"][e]["p95_ms"]
                         / max(paced_best["endpoints"][e]["p95_ms"], 1e-9), 1)
                for e in ENDPOINTS}
    p95_ok = all(paced_best["endpoints"][e]["p95_ms"] < 50 for e in ENDPOINTS)
    goals = {
        "paced_p95_under_50ms": p95_ok,
        "saturation_over_300_per_s": sat_rate > 300,
        "zero_errors": paced_best["error_count"] == 0 and results["saturation"]["error_count"] == 0,
    }
    result = {
        "benchmark": "rating",
        "machine": machine_info(database="postgresql"),
        "inputs": {**sizes, "raters": args.raters, "pace_s": args.pace,
                   "paced_s": args.paced_s, "sat_raters": args.sat_raters,
                   "sat_s": args.sat_s, "sweep_s": args.sweep_s, "warmup_s": warmup,
                   "seed": args.seed, "load_generator": "asyncio + aiohttp, one process, "
                   "one session cookie per rater, on this machine"},
        "server_settings": server_settings,
        "chosen_server": best.name,
        "paced": results["paced"],
        "saturation": results["saturation"],
        "sweep": results["sweep"],
        "comparison": comparison,
        "sql_per_call": sql,
        "goals": goals,
        "goal": "(a) p95 < 50 ms on every endpoint at 200 raters x 1 judgment / 2 s; "
                "(b) > 300 judgments/s at saturation; zero errors",
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    out = write_results("rating", result)
    print(f"\nsaturation: {sat_rate} judgments/s on {best.name}; "
          + ", ".join(f"{k} {v}x" for k, v in comparison.items() if not isinstance(v, dict)))
    print(f"goals: {goals}; {result['total_s']:.0f} s in all")
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
