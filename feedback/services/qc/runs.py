"""Runs (``QcRun``, on the ``default`` queue): started from the beat (:func:`qc_runs_due`),
the page and API (:func:`qc_run_create`), claimed by one worker (:func:`qc_run_claim`)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from annotation.models import Campaign, CampaignStatus, Judgment
from feedback.models import QcRun
from feedback.tasks_qc import QC_TIME_LIMIT_S, qc_run_task
from policy.models import JobStatus

from .thresholds import qc_thresholds

logger = logging.getLogger(__name__)

# A run still RUNNING (or QUEUED) this long after its claim (or creation) outlived its worker's
# hard time limit, or its message was lost: it may be claimed again, and the beat starts another.
STALE_AFTER = timedelta(seconds=QC_TIME_LIMIT_S + 300)


def _in_progress(campaign_id: int):
    now = timezone.now()
    return QcRun.objects.filter(
        Q(status=JobStatus.QUEUED, created_at__gte=now - STALE_AFTER)
        | Q(status=JobStatus.RUNNING, started_at__gte=now - STALE_AFTER),
        campaign_id=campaign_id)


@transaction.atomic
def qc_run_create(*, campaign: Campaign, user=None, enqueue: bool = True) -> QcRun:
    """A run of the campaign's quality control: the one queued or running, if any, else a new
    one, handed to a ``default`` worker once this transaction commits (``enqueue``) or left
    for the caller to run (``qc_run_execute``)."""
    current = _in_progress(campaign.pk).order_by("-id").first()
    if current is not None:
        return current
    run = QcRun.objects.create(campaign=campaign, created_by=user)
    if enqueue:
        transaction.on_commit(lambda: qc_run_task.delay(run.pk))
    return run


def qc_run_claim(*, run_id: int) -> bool:
    """Take the run for this worker: one conditional update QUEUED -> RUNNING (or a stale
    RUNNING one), so of two workers handed the same run exactly one gets it."""
    now = timezone.now()
    takeable = Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING,
                                                started_at__lt=now - STALE_AFTER)
    return QcRun.objects.filter(takeable, pk=run_id).update(
        status=JobStatus.RUNNING, started_at=now, finished_at=None, progress=0.0,
        error="") == 1


def qc_runs_due() -> list[QcRun]:
    """For the beat: a run for each active campaign with at least ``batch`` judgments more than
    its last run saw, unless one is queued or running."""
    batch = qc_thresholds().batch
    counts = dict(Judgment.objects.filter(campaign__status=CampaignStatus.ACTIVE).order_by()
                  .values("campaign").annotate(n=Count("id")).values_list("campaign", "n"))
    if not counts:
        return []
    seen = dict(QcRun.objects.filter(campaign_id__in=counts).order_by().values("campaign")
                .annotate(seen=Max("judgments_seen")).values_list("campaign", "seen"))
    runs = []
    for campaign in Campaign.objects.filter(pk__in=[c for c, n in counts.items()
                                                    if n - (seen.get(c) or 0) >= batch]):
        if not _in_progress(campaign.pk).exists():
            runs.append(qc_run_create(campaign=campaign))
            logger.info("qc of campaign %s: %d new judgments, run %s queued", campaign.slug,
                        counts[campaign.pk] - (seen.get(campaign.pk) or 0), runs[-1].pk)
    return runs


def latest_run(*, campaign: Campaign) -> QcRun | None:
    return QcRun.objects.filter(campaign=campaign).order_by("-id").first()


def run_summary(run: QcRun | None) -> dict | None:
    """A run for the API and the page: its state and the campaign figures (not the raters')."""
    if run is None:
        return None
    s = run.summary or {}
    return {"id": run.pk, "status": run.status, "progress": run.progress, "error": run.error,
            "judgments_seen": run.judgments_seen,
            "created_at": run.created_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "campaign": s.get("campaign"), "campaign_kept": s.get("campaign_kept"),
            "statuses": s.get("statuses"), "decisions_written": s.get("decisions_written"),
            "thresholds": s.get("thresholds"), "timings": s.get("timings")}
