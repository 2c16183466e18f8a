"""Asking for a snapshot (one job per set of filters in progress) and claiming its job."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from feedback.models import Snapshot
from feedback.tasks_snapshots import SNAPSHOT_TIME_LIMIT_S, snapshot_make_task
from policy.models import JobStatus

from .filters import SnapshotError, rater_statuses, snapshot_filters_clean, snapshot_judgments

logger = logging.getLogger(__name__)

# A job still RUNNING this long after its claim outlived its worker's hard time limit.
STALE_AFTER = timedelta(seconds=SNAPSHOT_TIME_LIMIT_S + 600)
_IN_PROGRESS = (JobStatus.QUEUED, JobStatus.RUNNING)


def _in_progress(key: str) -> Snapshot | None:
    return Snapshot.objects.filter(filter_key=key, status__in=_IN_PROGRESS).first()


def _stale(snapshot: Snapshot) -> bool:
    return (snapshot.status == JobStatus.RUNNING and snapshot.started_at is not None
            and snapshot.started_at < timezone.now() - STALE_AFTER)


def _enqueue(snapshot_id: int) -> None:
    transaction.on_commit(lambda: snapshot_make_task.delay(snapshot_id))


@transaction.atomic
def snapshot_request(*, filters: dict, user, name: str = "", enqueue: bool = True) -> Snapshot:
    """The snapshot of ``filters`` (campaigns, qc, since, until, sources, test_fraction), made by
    a ``default`` worker once this transaction commits (without ``enqueue`` the caller runs
    ``snapshot_make`` itself). The same filters asked while a snapshot of them is queued or
    running give that snapshot. Raises ``SnapshotError``: a campaign the user may not see,
    face layouts mixed, a bad value, or no judgment to export."""
    f, campaigns = snapshot_filters_clean(filters, user=user)
    raters = rater_statuses([c.pk for c in campaigns])
    if not snapshot_judgments(f, campaigns, raters).exists():
        raise SnapshotError(
            f"filters: no judgment of {', '.join(f.campaigns)} matches (qc {f.qc}, since "
            f"{f.since or '-'}, until {f.until or '-'}, sources {', '.join(f.sources) or 'all'})"
            ": there is nothing to export", field="filters")
    for _ in range(3):  # another request may take the key, or finish it, in between
        existing = _in_progress(f.key)
        if existing is not None:
            if enqueue and (existing.status == JobStatus.QUEUED or _stale(existing)):
                _enqueue(existing.pk)  # a lost or dead job's task again; claiming is once only
            return existing
        try:
            with transaction.atomic():
                snapshot = Snapshot.objects.create(
                    name=name[:200], filters=f.as_json(), filter_key=f.key,
                    created_by=user if user is not None and user.is_authenticated else None)
        except IntegrityError:
            continue
        if enqueue:
            _enqueue(snapshot.pk)
        logger.info("snapshot %s requested: %s", snapshot.pk, f.as_json())
        return snapshot
    raise SnapshotError("filters: the same snapshot is being asked for too often; try again")


def snapshot_claim(*, snapshot_id: int) -> bool:
    """Take the job: one conditional update, so of two workers exactly one gets it."""
    now = timezone.now()
    takeable = Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING,
                                               started_at__lt=now - STALE_AFTER)
    return Snapshot.objects.filter(takeable, pk=snapshot_id).update(
        status=JobStatus.RUNNING, started_at=now, finished_at=None, progress=0.0,
        error="") == 1
