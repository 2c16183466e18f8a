"""The faults, each injected once, and how long the platform took to come back from each.

A fault's *window* is the time its own action lasts: from the kill or the stop until the
process is running again (restarted by this benchmark, playing the supervisor) or, for a
gunicorn worker, until its master has started the replacement. A request that fails inside a
window (plus ``GRACE_S`` for requests already in flight when it ends) is the fault's; one outside
every window is a defect."""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.faults import workload
from benchmarks.faults.stack import (
    CeleryProcess,
    PrivatePostgres,
    PrivateRedis,
    gunicorn_workers,
)
from benchmarks.faults.traffic import Ledger

logger = logging.getLogger(__name__)

KINDS = ("gunicorn_worker_kill9", "celery_kill9_during_render", "celery_kill9_during_round_step",
         "postgresql_restart", "redis_restart")
GRACE_S = 1.0
# The longest wait for a fault's recovery before it is recorded as not recovered.
RECOVERY_LIMIT_S = 300.0
# Seconds a supervisor waits before it starts a dead worker again (systemd's RestartSec).
RESTART_DELAY_S = 1.0


@dataclass
class Fault:
    kind: str
    due_s: float  # seconds after the load began when it is due (a Celery fault: its work begins)
    slice_s: tuple[float, float]  # its own part of the run
    injected_s: float | None = None  # seconds since the load began
    window_end_s: float | None = None
    recovered_s: float | None = None  # from injection to the first success after it
    detail: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "due_at_s": _r(self.due_s),
                "slice_s": [_r(self.slice_s[0]), _r(self.slice_s[1])],
                "injected_at_s": _r(self.injected_s),
                # after its due moment: its work's start (Celery faults), or the previous
                # fault's recovery still going on when it fell due
                "late_s": _r(None if self.injected_s is None else self.injected_s - self.due_s),
                "window_s": _r(None if self.window_end_s is None or self.injected_s is None
                               else self.window_end_s - self.injected_s),
                "recovered_s": _r(self.recovered_s),
                "recovered": self.recovered_s is not None, **self.detail}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def schedule(seed: int, duration: float) -> list[Fault]:
    """Each kind once, in a random order, each due at a random moment of the first half of its
    own fifth of 5 % .. 95 % of the run's ``duration`` (seconds): the second half leaves it
    room to recover before the next one is due, so that no two faults overlap."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    lo, span = 0.05 * duration, 0.9 * duration / len(kinds)
    out = []
    for k, kind in enumerate(kinds):
        a = lo + k * span
        out.append(Fault(kind, a + rng.uniform(0.0, 0.5 * span), (a, a + span)))
    return out


def _wait(pred: Callable[[], object], timeout: float, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = pred()
        except Exception:  # noqa: BLE001 - the database may be coming back
            from django.db import connection

            connection.close()
            got = None
        if got:
            return got
        time.sleep(every)
    return None


@dataclass
class Platform:
    ledger: Ledger
    postgres: PrivatePostgres
    redis: PrivateRedis
    worker: CeleryProcess
    gunicorn_pid: int
    gunicorn_workers: int
    round_slug: str
    seed: int

    def inject(self, fault: Fault) -> None:
        getattr(self, fault.kind)(fault)
        from django.db import connection

        connection.close()

    def _mark(self, fault: Fault) -> None:
        fault.injected_s = self.ledger.now()
        print(f"\n  fault: {fault.kind} at {fault.injected_s:.1f} s", flush=True)

    def _ok_after_window(self, fault: Fault) -> None:
        t = _wait(lambda: self.ledger.first_ok_after(fault.window_end_s), RECOVERY_LIMIT_S)
        if t is not None:
            fault.recovered_s = t - fault.injected_s

    # --- the web -------------------------------------------------------------------------

    def gunicorn_worker_kill9(self, fault: Fault) -> None:
        before = gunicorn_workers(self.gunicorn_pid)
        victim = random.Random(self.seed).choice(before)
        self._mark(fault)
        os.kill(victim, signal.SIGKILL)
        # The master notices the death and starts a replacement.
        _wait(lambda: len(set(gunicorn_workers(self.gunicorn_pid)) - set(before)) >= 1,
              RECOVERY_LIMIT_S, every=0.05)
        fault.window_end_s = self.ledger.now()
        fault.detail["killed_pid"] = victim
        self._ok_after_window(fault)

    def postgresql_restart(self, fault: Fault) -> None:
        self._mark(fault)
        self.postgres.restart()
        fault.window_end_s = self.ledger.now()
        fault.detail["mode"] = "pg_ctl stop -m immediate, then start (crash recovery)"
        self._ok_after_window(fault)

    def redis_restart(self, fault: Fault) -> None:
        from config.celery import app

        self._mark(fault)
        self.redis.restart()
        fault.window_end_s = self.ledger.now()
        fault.detail["recovery_measured_by"] = "first reply of the worker to a broadcast ping"

        def pinged() -> bool:
            return bool(app.control.ping(timeout=0.5))

        t = _wait(pinged, RECOVERY_LIMIT_S, every=0.2)
        if t:
            fault.recovered_s = self.ledger.now() - fault.injected_s

    # --- the worker ----------------------------------------------------------------------

    def _restart_worker(self, fault: Fault) -> None:
        self.worker.kill()
        time.sleep(RESTART_DELAY_S)
        self.worker.start()
        fault.window_end_s = self.ledger.now()

    def celery_kill9_during_render(self, fault: Fault) -> None:
        from rendering.models import Clip, ClipStatus

        clip = workload.render_request(seed=self.seed)
        fault.detail["clip"] = clip.pk
        started = _wait(lambda: Clip.objects.filter(pk=clip.pk, status=ClipStatus.RUNNING,
                                                    progress__gt=0).exists(), 180)
        if not started:
            fault.detail["error"] = "the render never started"
            return
        self._mark(fault)
        self._restart_worker(fault)
        done = _wait(lambda: Clip.objects.filter(
            pk=clip.pk, status__in=(ClipStatus.SUCCEEDED, ClipStatus.FAILED)).exists(),
            RECOVERY_LIMIT_S, every=0.25)
        clip.refresh_from_db()
        fault.detail |= {"clip_status": clip.status, "attempts": clip.attempts,
                         "progress_when_killed": "> 0",
                         "recovered_by": "beat: requeue-stale-clips (CLIP_SILENT_S), "
                                         "then the restarted worker"}
        if done and clip.status == ClipStatus.SUCCEEDED:
            fault.recovered_s = self.ledger.now() - fault.injected_s
        fault.detail["exactly_once"] = clip.status == ClipStatus.SUCCEEDED and clip.attempts == 2

    def celery_kill9_during_round_step(self, fault: Fault) -> None:
        from feedback.models import Round, RoundStatus, RoundStep, StepState
        from feedback.services.rounds import round_folder
        from policy.models import PolicyVersion

        rnd = workload.round_begin(self.round_slug)
        fault.detail["round"] = rnd.pk
        ckpt = round_folder(rnd.pk) / "optimise.pt"

        def mid_step() -> bool:
            r = Round.objects.get(pk=rnd.pk)
            if r.status not in (RoundStatus.QUEUED, RoundStatus.RUNNING):
                raise RuntimeError(f"round {r.pk} is {r.status}: {r.error}")
            return (r.step == RoundStep.OPTIMISE and r.step_state == StepState.RUNNING
                    and ckpt.exists())

        try:
            started = _wait(mid_step, 600, every=0.2)
        except RuntimeError as exc:
            fault.detail["error"] = str(exc)
            return
        if not started:
            fault.detail["error"] = "the optimisation step never started"
            return
        self._mark(fault)
        self._restart_worker(fault)

        def step_done() -> bool:
            r = Round.objects.get(pk=rnd.pk)
            return (r.step != RoundStep.OPTIMISE
                    or r.status not in (RoundStatus.QUEUED, RoundStatus.RUNNING))

        def ended() -> bool:
            r = Round.objects.get(pk=rnd.pk)
            return r.status not in (RoundStatus.QUEUED, RoundStatus.RUNNING)

        # Recovered once the killed step has finished; the round is then followed to its end
        # (evaluation, registration) to count what it made.
        step_finished = _wait(step_done, RECOVERY_LIMIT_S, every=0.25)
        step_s = self.ledger.now() - fault.injected_s
        done = _wait(ended, RECOVERY_LIMIT_S, every=0.25)
        rnd.refresh_from_db()
        versions = PolicyVersion.objects.filter(lineage=workload.ROUND_LINEAGE).exclude(
            name="faults-tiny").count()
        attempts = rnd.steps.get("optimise", {}).get("attempts")
        fault.detail |= {"step": "optimise", "round_status": rnd.status,
                         "optimise_attempts": attempts, "versions_registered": versions,
                         "resumed_from_checkpoint": "attempt 2, resuming" in rnd.log,
                         "recovered_by": "beat: requeue-stale-round-steps (ROUND_STEP_STALE_S), "
                                         "then the restarted worker"}
        if rnd.status == RoundStatus.FAILED:
            fault.detail["error"] = rnd.error
        if step_finished and done and rnd.status in (RoundStatus.WAITING,
                                                     RoundStatus.SUCCEEDED):
            fault.recovered_s = step_s
            fault.detail["round_finished_s"] = round(self.ledger.now() - fault.injected_s, 2)
        fault.detail["exactly_once"] = (rnd.status in (RoundStatus.WAITING,
                                                       RoundStatus.SUCCEEDED)
                                        and attempts == 2 and versions == 1)
