"""Each rater's status: the decision in force (the latest ``QcDecision``), quality control's
decisions (:func:`qc_decide`) and a researcher's override (:func:`qc_override`); annotation's
switch follows the status in force."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Max

from annotation.models import Campaign, Enrollment
from annotation.services.enrollment import enrollment_set_excluded
from feedback import qc
from feedback.models import DecisionSource, QcDecision, QcRun, RaterStatus
from policy.models import JobStatus

from .runs import qc_run_create
from .thresholds import QcError, qc_thresholds

logger = logging.getLogger(__name__)


# --- reading decisions -----------------------------------------------------------------------

def _latest(qs) -> dict[int, QcDecision]:
    last = qs.order_by().values("enrollment_id").annotate(last=Max("id")).values("last")
    return {d.enrollment_id: d for d in QcDecision.objects.filter(pk__in=last)}


def latest_decisions(*, campaign: Campaign) -> dict[int, QcDecision]:
    """The decision in force for each enrolment of the campaign that has one."""
    return _latest(QcDecision.objects.filter(campaign=campaign))


def latest_status(*, enrollment_ids: list[int]) -> dict[int, str]:
    """Each enrolment's status: its latest decision's, ``trusted`` where there is none yet."""
    ids = [int(i) for i in enrollment_ids]
    found = _latest(QcDecision.objects.filter(enrollment_id__in=ids))
    return {i: found[i].status if i in found else RaterStatus.TRUSTED for i in ids}


# --- deciding --------------------------------------------------------------------------------

OVERRIDE_STATUSES = (*RaterStatus.values, "auto")
MAX_REASON = 2000


def _lock(campaign_id: int) -> None:
    """One decider per campaign at a time (a run, an override): the campaign row, locked
    without blocking the judgments that reference it."""
    Campaign.objects.select_for_update(no_key=True).filter(pk=campaign_id).first()


def _switch(enrollment_id: int, status: str) -> None:
    """annotation's switch follows the status in force."""
    enrollment = Enrollment.objects.get(pk=enrollment_id)
    want = status == RaterStatus.EXCLUDED
    if enrollment.excluded != want:
        enrollment_set_excluded(enrollment=enrollment, excluded=want)


@transaction.atomic
def qc_decide(*, campaign: Campaign, rows: dict[int, dict], thresholds: qc.Thresholds) -> int:
    """Record each rater's status where it changed (one row each), never over an override, and
    turn annotation's switch to match every status in force. Returns the rows written."""
    _lock(campaign.pk)
    latest = latest_decisions(campaign=campaign)
    th = thresholds.as_dict()
    written = []
    for eid, fig in rows.items():
        last = latest.get(eid)
        if last is not None and last.source == DecisionSource.OVERRIDE:
            continue
        status, reason = qc.rater_decision(fig, thresholds)
        if status is None or (last is not None and last.status == status):
            continue
        written.append(QcDecision(enrollment_id=eid, campaign=campaign, status=status,
                                  source=DecisionSource.AUTO, reason=reason, figures=fig,
                                  thresholds=th, judgments_seen=int(fig["n_judgments"])))
    QcDecision.objects.bulk_create(written)
    for d in written:
        latest[d.enrollment_id] = d
        logger.info("qc of campaign %s: enrolment %s is %s (%s)", campaign.slug,
                    d.enrollment_id, d.status, d.reason)
    excluded = set(Enrollment.objects.filter(campaign=campaign, excluded=True)
                   .values_list("id", flat=True))
    for eid, d in latest.items():
        if (d.status == RaterStatus.EXCLUDED) != (eid in excluded):
            _switch(eid, d.status)
    return len(written)


@transaction.atomic
def qc_override(*, enrollment: Enrollment, status: str, reason: str, user) -> QcDecision:
    """A researcher decides a rater's status, with the reason (recorded with the figures of the
    latest run). Quality control does not decide over it; ``status="auto"`` clears it (the
    status stays until the run this enqueues decides again)."""
    status = str(status or "").strip().lower()
    reason = str(reason or "").strip()
    if status not in OVERRIDE_STATUSES:
        raise QcError(f"status: expected one of {', '.join(OVERRIDE_STATUSES)}, got {status!r}")
    if not reason:
        raise QcError("reason: say why; it is recorded with the decision")
    if len(reason) > MAX_REASON:
        raise QcError(f"reason: at most {MAX_REASON} characters, got {len(reason)}")
    _lock(enrollment.campaign_id)
    last = (QcDecision.objects.filter(enrollment=enrollment).order_by("-id").first())
    run = (QcRun.objects.filter(campaign_id=enrollment.campaign_id, status=JobStatus.SUCCEEDED)
           .order_by("-id").first())
    figures = (run.summary.get("raters", {}).get(str(enrollment.pk)) if run else None) or {}
    who = getattr(user, "get_username", lambda: "")() or "a researcher"
    fields = {"enrollment": enrollment, "campaign_id": enrollment.campaign_id,
              "figures": figures, "thresholds": qc_thresholds().as_dict(), "decided_by": user,
              "judgments_seen": int(figures.get("n_judgments") or 0)}
    if status == "auto":
        if last is None or last.source != DecisionSource.OVERRIDE:
            raise QcError("status: this rater has no override to clear")
        decision = QcDecision.objects.create(
            status=last.status, source=DecisionSource.AUTO, **fields,
            reason=f"override cleared by {who}: {reason}; quality control decides again at "
                   "its next run")
        qc_run_create(campaign=enrollment.campaign, user=user)
    else:
        decision = QcDecision.objects.create(status=status, source=DecisionSource.OVERRIDE,
                                             reason=f"{who}: {reason}", **fields)
        _switch(enrollment.pk, status)
    logger.info("qc override on enrolment %s by %s: %s (%s)", enrollment.pk, who, status, reason)
    return decision
