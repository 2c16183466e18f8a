"""Raters through the rate page's protocol (next, heartbeat, answer with an idempotency key),
some of whose answers' replies are dropped: the client throws the reply away and sends the
same answer again, as a browser does whose connection broke before the reply came. An answer
whose request failed (no reply, 5xx) is sent again, with the same key, until it is
acknowledged or refused.

Every answer is written down (``Ledger``) with what became of it; every request that failed,
with its time, so that it can be placed inside or outside a fault's window."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from benchmarks.rating.fixtures import SLUG
from benchmarks.rating.load import LeanHttp, RaterSession, _answer

# Seconds a client keeps sending one answer again before it gives up on it (the lease lasts 90).
GIVE_UP_S = 120.0


@dataclass
class Ledger:
    """What the raters sent and saw."""

    drop_share: float
    t0: float = field(default_factory=time.monotonic)
    submissions: int = 0  # answers (idempotency keys) sent
    acknowledged: dict[str, str] = field(default_factory=dict)  # key -> lease
    refused: dict[str, int] = field(default_factory=dict)  # key -> status (409, 410, ...)
    abandoned: list[str] = field(default_factory=list)  # no verdict within GIVE_UP_S
    dropped_replies: int = 0
    resent: int = 0  # answers sent again with the same key (dropped replies, failures)
    requests: int = 0
    ok: int = 0
    # (seconds since t0, endpoint, status); 0: no reply (connection reset, refused, ...)
    failures: list[tuple[float, str, int]] = field(default_factory=list)
    last_ok: float = 0.0  # seconds since t0 of the latest 2xx
    ok_times: list[float] = field(default_factory=list)  # every 2xx, for recovery times

    def now(self) -> float:
        return time.monotonic() - self.t0

    def record(self, endpoint: str, status: int) -> None:
        self.requests += 1
        t = self.now()
        if 200 <= status < 300:
            self.ok += 1
            self.last_ok = t
            self.ok_times.append(t)
        elif status == 0 or status >= 500:
            self.failures.append((round(t, 3), endpoint, status))

    def first_ok_after(self, t: float) -> float | None:
        """The first 2xx completed after ``t`` (seconds since t0)."""
        import bisect

        i = bisect.bisect_right(self.ok_times, t)
        return self.ok_times[i] if i < len(self.ok_times) else None


async def _call(rater: RaterSession, ledger: Ledger, endpoint: str, path: str,
                body: dict | None) -> tuple[int, dict | None]:
    import json

    try:
        status, headers, raw = await asyncio.wait_for(
            rater.http.post(path, body, rater.headers()), timeout=30)
        data = json.loads(raw) if headers.get("content-type", "").startswith(
            "application/json") and raw else None
    except Exception:  # noqa: BLE001 - no reply: recorded as status 0
        rater.http.close()
        status, data = 0, None
    ledger.record(endpoint, status)
    return status, data


def _leases(body: dict | None) -> list[str]:
    if not body or body.get("state") != "rating":
        return []
    return [a["id"] for a in body.get("assignments") or []]


async def submit(rater: RaterSession, ledger: Ledger, token: str) -> list[str]:
    """One answer to lease ``token``, sent until acknowledged or refused; the next leases."""
    answer = _answer(rater)
    key = answer["idempotency_key"]
    ledger.submissions += 1
    path = f"/api/assignments/{token}/judgment/"
    drop = rater.rng.random() < ledger.drop_share
    started = time.monotonic()
    delay = 0.1
    while True:
        status, body = await _call(rater, ledger, "judgment", path, answer)
        if drop and status:  # the reply is lost on its way: the client never saw it
            drop = False
            ledger.dropped_replies += 1
            ledger.resent += 1
            rater.http.close()  # as a broken connection
            continue
        if status in (200, 201):
            ledger.acknowledged[key] = token
            return _leases((body or {}).get("next"))
        if 400 <= status < 500:
            ledger.refused[key] = status
            return []
        if time.monotonic() - started > GIVE_UP_S:
            ledger.abandoned.append(key)
            return []
        ledger.resent += 1
        await asyncio.sleep(delay * rater.rng.uniform(0.5, 1.5))
        delay = min(delay * 2, 2.0)


async def rater_loop(rater: RaterSession, ledger: Ledger, stop: asyncio.Event,
                     base: str, think: float) -> None:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    rater.http = LeanHttp(host, int(port))
    rater.queue = []
    try:
        while not stop.is_set():
            if not rater.queue or rater.rng.random() < 0.1:  # a page (re)load
                status, body = await _call(rater, ledger, "next", f"/api/rate/{SLUG}/next/",
                                           None)
                rater.queue = _leases(body) if status == 200 else []
                if not rater.queue:
                    await asyncio.sleep(0.5 if status == 200 else 0.2)
                    continue
            token = rater.queue[0]
            if think:
                await asyncio.sleep(think * rater.rng.uniform(0.5, 1.5))
            if rater.rng.random() < 0.2:  # a heartbeat while the clips play
                await _call(rater, ledger, "heartbeat",
                            f"/api/assignments/{token}/heartbeat/", None)
            rater.queue = await submit(rater, ledger, token)
    finally:
        rater.http.close()


def raters_rng(raters: list[RaterSession], seed: int) -> None:
    for i, r in enumerate(raters):
        r.rng = random.Random(seed * 7919 + i)
