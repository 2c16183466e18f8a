"""Running a round's steps: claim, heartbeat and progress, cancel, advance, and the reaper.

A step is a Celery task on its resource's queue (``STEP_QUEUE``). The task claims the step by the
conditional update ``step_state: queued -> running``, so a second delivery does nothing. While
it runs, :class:`StepContext` renews the heartbeat, records progress, and raises
:class:`RoundCancelled` once an admin has cancelled the round. A step whose worker died stops
renewing its heartbeat; :func:`round_reap_stale` (Celery beat) puts it back in the queue, and it
resumes from its own checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from config.queues import Queue
from feedback.models import ROUND_STEPS, Round, RoundStatus, RoundStep, StepState

from .config import RoundError

logger = logging.getLogger(__name__)

STEP_QUEUE = {
    RoundStep.SNAPSHOT: Queue.DEFAULT,
    RoundStep.CRITIC: Queue.GPU,
    RoundStep.OPTIMISE: Queue.GPU,
    RoundStep.EVALUATE: Queue.GPU,
    RoundStep.REGISTER: Queue.DEFAULT,
    RoundStep.PROMOTE: Queue.DEFAULT,
    RoundStep.CANDIDATES: Queue.GPU,
}
# Share of the round's percentage each step stands for (about its share of the time).
STEP_WEIGHT = {"snapshot": 5, "critic": 25, "optimise": 45, "evaluate": 15, "register": 2,
               "promote": 1, "candidates": 7}
OPEN = (RoundStatus.QUEUED, RoundStatus.RUNNING)
HEARTBEAT_EVERY_S = 2.0


class RoundCancelled(Exception):
    pass


class StepLost(Exception):
    """The step was queued again while this worker still ran it (its heartbeat had been silent
    too long): the other run owns it now, this one stops without touching the round."""


def round_folder(round_id: int) -> Path:
    """Where a round's steps keep their files and checkpoints."""
    path = Path(settings.MEDIA_ROOT) / "rounds" / str(round_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def stale_after() -> timedelta:
    return timedelta(seconds=getattr(settings, "ROUND_STEP_STALE_S", 300))


def enqueue_step(round_id: int, step: str) -> None:
    """Queue ``step`` of the round once the current transaction commits."""
    from feedback.tasks_rounds import round_step_task

    transaction.on_commit(
        lambda: round_step_task.apply_async(args=(round_id, step), queue=STEP_QUEUE[step]))


def append_log(round_id: int, line: str) -> None:
    stamp = timezone.now().strftime("%H:%M:%S")
    Round.objects.filter(pk=round_id).update(log=Concat(F("log"), Value(f"{stamp} {line}\n")))
    logger.info("round %s: %s", round_id, line)


def overall_progress(step: str, fraction: float) -> float:
    i = ROUND_STEPS.index(step)
    done = sum(STEP_WEIGHT[s] for s in ROUND_STEPS[:i])
    total = sum(STEP_WEIGHT.values())
    return round(100.0 * (done + STEP_WEIGHT[step] * min(max(fraction, 0.0), 1.0)) / total, 1)


class StepContext:
    """What a running step may do to its round: report progress and curves, log, and learn
    that it was cancelled."""

    def __init__(self, rnd: Round, step: str) -> None:
        self.round = rnd
        self.step = step
        self.folder = round_folder(rnd.pk)
        self._last = 0.0
        self._beat = rnd.heartbeat_at  # the claim's; a reaper's requeue changes the state

    def log(self, line: str) -> None:
        append_log(self.round.pk, line)

    def progress(self, fraction: float, *, force: bool = False,
                 curves: dict[str, list] | None = None) -> None:
        """Record ``fraction`` (0-1) of this step, renew the heartbeat; raises RoundCancelled."""
        now = time.monotonic()
        if not force and now - self._last < HEARTBEAT_EVERY_S and curves is None:
            return
        self._last = now
        rnd = Round.objects.filter(pk=self.round.pk).only("steps", "curves",
                                                          "cancel_requested").first()
        if rnd is None or rnd.cancel_requested:
            raise RoundCancelled()
        steps = dict(rnd.steps)
        steps[self.step] = {**steps.get(self.step, {}), "progress": round(100 * fraction, 1)}
        fields = {"steps": steps, "heartbeat_at": timezone.now(),
                  "progress": overall_progress(self.step, fraction)}
        if curves is not None:
            fields["curves"] = {**rnd.curves, **curves}
        kept = Round.objects.filter(pk=self.round.pk, step=self.step,
                                    step_state=StepState.RUNNING,
                                    heartbeat_at=self._beat).update(**fields)
        if not kept:
            raise StepLost()
        self._beat = fields["heartbeat_at"]

    def fraction_hook(self, lo: float, hi: float) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback covering ``lo``..``hi`` of this step."""
        def hook(done: int, total: int, *_: object) -> None:
            self.progress(lo + (hi - lo) * done / max(total, 1))
        return hook


def _record(rnd: Round, step: str, **fields: object) -> dict:
    steps = dict(rnd.steps)
    steps[step] = {**steps.get(step, {}), **fields}
    return steps


def round_step_run(*, round_id: int, step: str, enqueue_next: bool = True) -> bool:
    """Claim and run one step of a round; False when it was not this call's to run. Without
    ``enqueue_next`` the next step is left queued for the caller (``round_run_here``)."""
    from .steps import STEP_FUNCS

    now = timezone.now()
    claimed = Round.objects.filter(
        pk=round_id, step=step, step_state=StepState.QUEUED, status__in=OPEN,
        cancel_requested=False,
    ).update(step_state=StepState.RUNNING, status=RoundStatus.RUNNING, heartbeat_at=now)
    if not claimed:
        logger.info("round %s: step %s is not queued, nothing to do", round_id, step)
        return False
    rnd = Round.objects.select_related("parent", "parent__dataset").get(pk=round_id)
    attempts = int(rnd.steps.get(step, {}).get("attempts", 0)) + 1
    rnd.steps = _record(rnd, step, attempts=attempts, started_at=now.isoformat(),
                        progress=rnd.steps.get(step, {}).get("progress", 0.0))
    Round.objects.filter(pk=round_id).update(steps=rnd.steps)
    append_log(round_id, f"{step}: started" + (f" (attempt {attempts}, resuming)"
                                                  if attempts > 1 else ""))
    t0 = time.perf_counter()
    ctx = StepContext(rnd, step)
    try:
        STEP_FUNCS[step](rnd, ctx)
    except RoundCancelled:
        _end(round_id, RoundStatus.CANCELLED, f"{step}: cancelled")
        return True
    except StepLost:
        logger.warning("round %s: step %s was queued again elsewhere; this run stops",
                       round_id, step)
        return False
    except Exception as exc:  # the round records every failure; a person resumes it
        logger.exception("round %s: step %s failed", round_id, step)
        message = str(exc) or repr(exc)
        _end(round_id, RoundStatus.FAILED, f"{step}: failed: {message}", error=message)
        if not isinstance(exc, RoundError | ValueError):
            raise
        return True
    seconds = round(time.perf_counter() - t0, 2)
    rnd.refresh_from_db()
    if rnd.cancel_requested:
        _end(round_id, RoundStatus.CANCELLED, f"{step}: cancelled")
        return True
    steps = _record(rnd, step, progress=100.0, finished_at=timezone.now().isoformat(),
                    seconds=round(float(rnd.steps.get(step, {}).get("seconds", 0)) + seconds, 2))
    Round.objects.filter(pk=round_id).update(steps=steps)
    append_log(round_id, f"{step}: done in {seconds:.1f}s")
    advance(rnd, step, enqueue=enqueue_next)
    return True


def advance(rnd: Round, step: str, *, enqueue: bool = True) -> None:
    """After ``step``: queue the next one, wait for an admin, or finish."""
    if step == RoundStep.PROMOTE:
        rnd.refresh_from_db()
        if rnd.status == RoundStatus.WAITING:
            return  # the promote step decided to wait for a click
    if step == ROUND_STEPS[-1] or (step == RoundStep.PROMOTE
                                   and not rnd.config["next_campaign"]["create"]):
        _end(rnd.pk, RoundStatus.SUCCEEDED, "round finished")
        return
    nxt = ROUND_STEPS[ROUND_STEPS.index(step) + 1]
    with transaction.atomic():
        moved = Round.objects.filter(pk=rnd.pk, step=step, status=RoundStatus.RUNNING).update(
            step=nxt, step_state=StepState.QUEUED,
            progress=overall_progress(nxt, 0.0))
        if moved and enqueue:
            enqueue_step(rnd.pk, nxt)


def _end(round_id: int, status: str, line: str, error: str = "") -> None:
    fields: dict = {"status": status, "finished_at": timezone.now()}
    if status != RoundStatus.FAILED:
        fields["step_state"] = StepState.DONE
    else:  # resumable: the step is queued again by round_resume
        fields["step_state"] = StepState.QUEUED
    if status == RoundStatus.SUCCEEDED:
        fields["progress"] = 100.0
    if error:
        fields["error"] = error
    Round.objects.filter(pk=round_id).update(**fields)
    append_log(round_id, line)


def round_reap_stale(*, older_than: timedelta | None = None) -> int:
    """Queue again every step whose worker stopped renewing its heartbeat; how many."""
    limit = timezone.now() - (older_than if older_than is not None else stale_after())
    n = 0
    for rnd in Round.objects.filter(step_state=StepState.RUNNING, status=RoundStatus.RUNNING,
                                    heartbeat_at__lt=limit):
        with transaction.atomic():
            moved = Round.objects.filter(pk=rnd.pk, step=rnd.step,
                                         step_state=StepState.RUNNING,
                                         heartbeat_at=rnd.heartbeat_at).update(
                step_state=StepState.QUEUED)
            if moved:
                append_log(rnd.pk, f"{rnd.step}: its worker stopped answering; queued again")
                enqueue_step(rnd.pk, rnd.step)
                n += moved
    return n


def round_run_here(round_id: int, progress: Callable[[Round], None] | None = None) -> Round:
    """Run the round's queued steps one after the other in this process (a command, the demo,
    the benchmark) until it finishes, fails, or waits for a promotion."""
    while True:
        rnd = Round.objects.get(pk=round_id)
        if rnd.status not in OPEN or rnd.step_state != StepState.QUEUED:
            return rnd
        if progress is not None:
            progress(rnd)
        round_step_run(round_id=round_id, step=rnd.step, enqueue_next=False)
