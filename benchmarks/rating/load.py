"""The load generator: raters join as browsers do, then each works as the rate page does, over
one kept-alive connection of its own, all of them on one asyncio loop in this process; and the
figures of one load run."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field

from benchmarks.rating.fixtures import SLUG, analyze
from benchmarks.rating.servers import Server, ServerConfig, cpu_snapshot, cpu_split

ENDPOINTS = ("next", "heartbeat", "judgment")
# The share of items that start with a page (re)load, which asks for the items anew (next);
# the others come with the previous answer's reply, as on the page.
RELOAD_SHARE = 0.1


@dataclass
class RaterSession:
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
    warmup_until: float
    t_stop: float
    rows: dict[str, list[tuple]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})
    errors: dict[str, int] = field(default_factory=dict)
    judgments: list[float] = field(default_factory=list)  # completion times of stored answers
    requests: int = 0
    late_cycles: int = 0  # paced cycles that began behind their schedule

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
    except Exception:  # noqa: BLE001 - counted as errors
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
    stop = start + warmup + duration
    rec = Recorder(warmup_until=start + warmup, t_stop=stop)

    async def rater_loop(r: RaterSession) -> None:
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
                    rec.late_cycles += 1
                    due = loop.time()

    async def analyze_after_warmup() -> None:
        await asyncio.sleep(max(0.0, rec.warmup_until - time.perf_counter() - 0.5))
        await asyncio.to_thread(analyze)

    host, port = base.removeprefix("http://").rsplit(":", 1)
    for r in raters:
        r.http = LeanHttp(host, int(port))
    try:
        await asyncio.gather(analyze_after_warmup(), *(rater_loop(r) for r in raters))
    finally:
        for r in raters:
            r.http.close()
    return rec


async def join_raters(base: str, invite: str, n: int, seed: int) -> list[RaterSession]:
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
        return RaterSession(cookies["sessionid"], cookies["csrftoken"],
                            rate_page_config(page)["token"], random.Random(seed * 100_003 + i))

    sem = asyncio.Semaphore(16)

    async def bounded(i: int, http) -> RaterSession:
        async with sem:
            return await join(i, http)

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        return list(await asyncio.gather(*(bounded(i, http) for i in range(n))))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarise(rec: Recorder, label: str, config: ServerConfig, cpu: dict | None) -> dict:
    window = rec.t_stop - rec.warmup_until
    done = [t for t in rec.judgments if rec.warmup_until <= t <= rec.t_stop]
    endpoints = {}
    for e in ENDPOINTS:
        rows = rec.rows[e]
        lat = [r[0] * 1000 for r in rows]
        server = [r[2] / 1000 for r in rows if r[2] is not None]
        db = [r[4] / 1000 for r in rows if r[4] is not None]
        queries = [r[3] for r in rows if r[3] is not None]
        endpoints[e] = {
            "requests": len(rows),
            "p50_ms": round(pct(lat, 0.5), 2),
            "p95_ms": round(pct(lat, 0.95), 2),
            "p99_ms": round(pct(lat, 0.99), 2),
            "max_ms": round(max(lat), 1) if lat else None,
            "server_p50_ms": round(pct(server, 0.5), 2) if server else None,
            "server_p95_ms": round(pct(server, 0.95), 2) if server else None,
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
        "late_cycles": rec.late_cycles,
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

