"""Raters through the rate page's protocol (next, heartbeat, answer with an idempotency key),
some of whose answers' replies are dropped: the client throws the reply away and sends the
same answer again, as a browser does whose connection broke before the reply came. An answer
whose request failed (no reply, 5xx) is sent again, with the same key, until it is
acknowledged or refused.

A rater answers at a steady pace (``interval`` seconds an answer, so that all of them together
send the run's answers in its time), catching up after a stall. The next call's ``state`` is
followed as the rate page follows it: ``rating`` gives items; ``waiting`` (the items left are
held by other raters' leases) and ``cool_down`` mean ask again later (``waiting`` after a short
pause, at most ``WAIT_PAUSE_S``; ``cool_down`` after its ``retry_after``); ``finished``,
``paused`` and ``blocked`` end the rater's work.

Every answer is written down (``Ledger``) with what became of it; every request that failed,
with its time, so that it can be placed inside or outside a fault's window; every state the
next call answered, counted."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

from benchmarks.rating.fixtures import SLUG
from benchmarks.rating.load import LeanHttp, RaterSession, _answer

# Seconds a client keeps sending one answer again before it gives up on it (the lease lasts 90).
GIVE_UP_S = 120.0
# The longest pause before asking again when told to wait (the platform's retry_after is up to
# a minute; a page polls sooner, and items held by others come back as they are answered).
WAIT_PAUSE_S = 3.0
# A rater more than this far behind its pace starts afresh from now instead of catching up.
CATCH_UP_LIMIT_S = 30.0
# States of the next call after which the rater stops: nothing more will come.
FINAL_STATES = ("finished", "paused", "blocked")


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
    states: dict[str, int] = field(default_factory=dict)  # next call's state -> how often
    stopped: dict[str, int] = field(default_factory=dict)  # raters stopped, by final state
    ok_times: list[float] = field(default_factory=list)  # every 2xx, for recovery times
    ack_times: list[float] = field(default_factory=list)  # every answer acknowledged

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

    def answers_between(self, a: float, b: float) -> int:
        """Answers acknowledged between ``a`` and ``b`` (seconds since t0)."""
        import bisect

        return bisect.bisect_right(self.ack_times, b) - bisect.bisect_left(self.ack_times, a)

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


def _pause(rater: RaterSession, body: dict) -> float:
    """Seconds to wait before asking again after a ``waiting`` or ``cool_down`` reply."""
    after = float(body.get("retry_after") or 1)
    if body.get("state") == "waiting":
        after = min(after, WAIT_PAUSE_S)
    return after * rater.rng.uniform(0.5, 1.0)


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
            ledger.ack_times.append(ledger.now())
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
                     base: str, interval: float) -> None:
    """One rater until ``stop``: an answer every ``interval`` seconds on average (0: as fast
    as served)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    rater.http = LeanHttp(host, int(port))
    rater.queue = []
    loop = asyncio.get_running_loop()
    due = loop.time() + rater.rng.uniform(0, interval)  # raters start spread over one interval
    try:
        while not stop.is_set():
            if not rater.queue or rater.rng.random() < 0.1:  # a page (re)load
                status, body = await _call(rater, ledger, "next", f"/api/rate/{SLUG}/next/",
                                           None)
                if status != 200 or not body:
                    rater.queue = []
                    await asyncio.sleep(0.2)
                    continue
                state = str(body.get("state"))
                ledger.states[state] = ledger.states.get(state, 0) + 1
                rater.queue = _leases(body)
                if state in FINAL_STATES:
                    ledger.stopped[state] = ledger.stopped.get(state, 0) + 1
                    return
                if not rater.queue:  # waiting, cool_down (or rating with nothing: a defect)
                    await _sleep_or_stop(stop, _pause(rater, body))
                    continue
            if interval:
                wait = due - loop.time()
                if wait > 0:
                    await _sleep_or_stop(stop, wait)
                    if stop.is_set():
                        break
                elif wait < -CATCH_UP_LIMIT_S:
                    due = loop.time()
                due += interval * rater.rng.uniform(0.5, 1.5)
            token = rater.queue[0]
            if rater.rng.random() < 0.2:  # a heartbeat while the clips play
                await _call(rater, ledger, "heartbeat",
                            f"/api/assignments/{token}/heartbeat/", None)
            rater.queue = await submit(rater, ledger, token)
    finally:
        rater.http.close()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def raters_rng(raters: list[RaterSession], seed: int) -> None:
    for i, r in enumerate(raters):
        r.rng = random.Random(seed * 7919 + i)
