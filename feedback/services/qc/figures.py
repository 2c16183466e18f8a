"""What the quality page, the API and exports read: the figures now (the latest run's when it
is current) and the rater table."""

from __future__ import annotations

from dataclasses import dataclass

from annotation.models import Campaign, Enrollment, Judgment
from feedback import qc
from feedback.models import QcRun, RaterStatus
from policy.models import JobStatus

from .decide import latest_decisions, latest_status
from .load import _kept_figures, _rows, qc_compute
from .runs import latest_run
from .thresholds import qc_thresholds

PENDING = "pending"  # rater_table's source for a rater without a decision yet


@dataclass
class Figures:
    rows: dict[int, dict]  # enrollment id -> the rater's figures (feedback.qc.rater_row)
    campaign: dict  # all raters' judgments
    campaign_kept: dict  # without the judgments of raters now excluded
    judgments_seen: int
    timings: dict[str, float]


def _current_figures(campaign: Campaign, thresholds: qc.Thresholds) -> Figures:
    """The figures now: those of the latest run when it saw every judgment there is under the
    same thresholds (judgments are never deleted, so the same count is the same set), else
    computed afresh."""
    run = (QcRun.objects.filter(campaign=campaign, status=JobStatus.SUCCEEDED)
           .order_by("-id").first())
    if run is not None and run.summary.get("thresholds") == thresholds.as_dict() and (
            run.judgments_seen == Judgment.objects.filter(campaign=campaign).count()):
        s = run.summary
        return Figures(rows={int(k): v for k, v in s.get("raters", {}).items()},
                       campaign=s.get("campaign", {}), campaign_kept=s.get("campaign_kept", {}),
                       judgments_seen=run.judgments_seen, timings={})
    loaded, result = qc_compute(campaign=campaign, thresholds=thresholds)
    statuses = latest_status(enrollment_ids=[int(e) for e in loaded.enrollment_ids])
    return Figures(rows=_rows(loaded, result), campaign=result.campaign,
                   campaign_kept=_kept_figures(loaded, result, statuses),
                   judgments_seen=loaded.judgments_seen, timings=result.timings)


def rater_table(*, campaign: Campaign) -> list[dict]:
    """One dict per enrolment (enrolment order): ``pseudonym`` (str), ``n_judgments``, every
    figure of ``feedback.qc.RATER_FIGURES``, ``status``, ``source`` (``auto``, ``override``, or
    ``pending`` before the first decision), ``reason``, ``decided_at`` (ISO time or None),
    ``excluded`` (annotation's switch) and ``blocked`` (failed too many probes)."""
    return _table(campaign, _current_figures(campaign, qc_thresholds()))


def _table(campaign: Campaign, figures: Figures) -> list[dict]:
    th = qc_thresholds()
    decisions = latest_decisions(campaign=campaign)
    out = []
    for eid, pseudonym, excluded, blocked in (Enrollment.objects.filter(campaign=campaign)
                                              .order_by("id").values_list(
                                                  "id", "pseudonym", "excluded", "blocked")):
        fig = figures.rows.get(eid) or qc.empty_row()
        d = decisions.get(eid)
        if d is None:
            status, source = RaterStatus.TRUSTED.value, PENDING
            reason = qc.rater_decision(fig, th)[1] if (
                fig["n_judgments"] < th.min_answers) else "not judged yet: no run since"
        else:
            status, source, reason = d.status, d.source, d.reason
        out.append({"enrollment": eid, "pseudonym": str(pseudonym), **fig, "status": status,
                    "source": source, "reason": reason,
                    "decided_at": d.created_at.isoformat() if d else None,
                    "excluded": excluded, "blocked": blocked})
    return out


def quality_page(*, campaign: Campaign) -> dict:
    """What the quality page shows: the figures now, the rater table, the latest run."""
    figures = _current_figures(campaign, qc_thresholds())
    return {"figures": figures, "raters": _table(campaign, figures),
            "run": latest_run(campaign=campaign), "thresholds": qc_thresholds()}
