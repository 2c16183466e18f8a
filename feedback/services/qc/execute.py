"""A run's work, in a worker or in ``manage.py run_qc``: load, compute, decide, record."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone

from feedback import qc
from feedback.models import QcRun, RaterStatus
from feedback.tasks_qc import QC_TIME_LIMIT_S
from policy.models import JobStatus

from .decide import latest_status, qc_decide
from .load import _kept_figures, _rows, qc_load
from .runs import qc_run_claim
from .thresholds import QcError, qc_thresholds

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float], None]


def _finish(run_id: int, **fields: object) -> QcRun:
    QcRun.objects.filter(pk=run_id).update(finished_at=timezone.now(), **fields)
    return QcRun.objects.get(pk=run_id)


def qc_run_execute(*, run_id: int, progress: ProgressFn | None = None) -> QcRun | None:
    """Claim the run, compute every figure, record the decisions that changed. Returns the
    finished run, or None when it was not this call's to run (a second call, a redelivery)."""
    if not qc_run_claim(run_id=run_id):
        logger.info("qc run %s: not queued (gone, taken or finished), nothing to do", run_id)
        return None
    run = QcRun.objects.select_related("campaign").get(pk=run_id)
    campaign = run.campaign

    def step(percent: float, **fields: object) -> None:
        QcRun.objects.filter(pk=run_id).update(progress=percent, **fields)
        if progress is not None:
            progress(percent)

    try:
        thresholds = qc_thresholds()
        t0 = time.perf_counter()
        step(5.0)
        loaded = qc_load(campaign=campaign)
        step(40.0, judgments_seen=loaded.judgments_seen)
        t1 = time.perf_counter()
        result = qc.compute(loaded.data, thresholds)
        step(75.0)
        t2 = time.perf_counter()
        rows = _rows(loaded, result)
        written = qc_decide(campaign=campaign, rows=rows, thresholds=thresholds)
        statuses = latest_status(enrollment_ids=list(rows))
        kept = _kept_figures(loaded, result, statuses)
        t3 = time.perf_counter()
        counts = {s: sum(1 for v in statuses.values() if v == s) for s in RaterStatus.values}
        summary = {
            "campaign": result.campaign, "campaign_kept": kept, "raters": {
                str(k): v for k, v in rows.items()},
            "statuses": counts, "decisions_written": written,
            "thresholds": thresholds.as_dict(),
            "timings": {"load_s": round(t1 - t0, 3), "figures_s": round(t2 - t1, 3),
                        "decide_s": round(t3 - t2, 3),
                        **{k: round(v, 4) for k, v in result.timings.items()}},
        }
    except QcError as exc:  # the settings: a person can act on the message
        logger.warning("qc run %s failed: %s", run_id, exc)
        return _finish(run_id, status=JobStatus.FAILED, error=str(exc))
    except SoftTimeLimitExceeded:
        logger.warning("qc run %s: time limit reached", run_id)
        _finish(run_id, status=JobStatus.FAILED,
                error=f"stopped at the time limit ({QC_TIME_LIMIT_S} s); decisions recorded "
                      "before it are kept")
        raise
    except Exception as exc:
        logger.exception("qc run %s crashed", run_id)
        _finish(run_id, status=JobStatus.FAILED, error=f"internal error: {exc!r}")
        raise
    logger.info("qc run %s of %s: %d judgments, %d decisions written in %.2fs", run_id,
                campaign.slug, loaded.judgments_seen, written, time.perf_counter() - t0)
    return _finish(run_id, status=JobStatus.SUCCEEDED, progress=100.0, summary=summary,
                   judgments_seen=loaded.judgments_seen)
