"""Quality control of a campaign's raters: figures, decisions, overrides and runs.

A run (``QcRun``, on the ``default`` queue) loads the campaign's judgments into arrays
(``qc_load``: a handful of ``values_list`` queries, no row objects), computes every figure with
the pure functions of ``feedback.qc`` and decides each rater's status. A decision is an
append-only ``QcDecision`` row with the reason in words, the rater's figures and the thresholds
in force; a row is written only when a rater's status changes (or for a researcher's override),
so a second run over the same judgments writes nothing. ``excluded`` turns annotation's switch
(``enrollment_set_excluded``: the rater is served nothing more, their live leases end, nothing
they answered is touched); leaving ``excluded`` turns it back.

Runs start from the beat (``qc_runs_due``, every minute: active campaigns with ``batch`` new
judgments since their last run), from the page and API (``qc_run_create``) and from
``manage.py run_qc`` (in process).

Rules (thresholds: ``settings.FEEDBACK_QC``, defaults in ``feedback.qc.Thresholds``). A rater
with fewer than ``min_answers`` judgments is not judged (status ``trusted``, source ``pending``:
nothing has been found against them yet); each rule applies once its own minimum is reached.

* gold accuracy (gold items passed, from ``Judgment.qc``), once ``min_gold`` (10) are answered:
  flagged below ``gold_accuracy_flag`` (0.8), excluded below ``gold_accuracy_exclude`` (0.7);
* catch accuracy ("about the same" on identical clips): flagged below ``catch_accuracy_flag``
  (0.8) once ``min_catch`` (3) are answered, excluded below ``catch_accuracy_exclude`` (0.5)
  once ``min_catch_exclude`` (6) are;
* repeat consistency (hidden repeats answered the same way), once ``min_repeats`` (3): flagged
  below ``repeat_consistency_flag`` (0.6);
* side bias (left among the decisive left / right presses, two-sided ``scipy.stats.binomtest``
  against 1/2), once ``min_decisive`` (10): flagged when p < ``side_bias_p`` (0.001) and the
  pressed side's share > ``side_bias_share`` (0.8);
* decision time: an answer is too fast when ``decision_ms`` is under ``fast_fraction`` (0.1) of
  the clip's length (the episode's ``n_frames / fps``); flagged when more than
  ``fast_share_flag`` (0.3) of at least ``min_answers`` timed answers are;
* leave-one-out agreement (the rater's label against the unique majority of the item's other
  answers, at least two), over ``min_regular`` (10) scored items: flagged below
  ``loo_agreement_flag`` (0.5);
* reliability (MACE-style EM over (rater, item, label), jointly with the items' labels), over
  ``min_regular`` (10) comparisons: flagged below ``reliability_flag`` (0.5), excluded below
  ``reliability_exclude`` (0.15).

Any exclusion rule makes the rater ``excluded``, else any warning rule ``flagged``, else
``trusted``; the reason lists every rule that held. ``batch`` (200) is not a rule: it is how many
new judgments start a run. Labels are a / b / no preference (a tie or "both bad"); group answers
count as the pairs they imply (``feedback.qc.group_comparisons``) and their scores give an
ordinal alpha. A researcher's override (``qc_override``) is a row too, with the reason; quality
control never decides over it until it is cleared (status ``auto``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Case, Count, IntegerField, Max, Q, Value, When
from django.utils import timezone

from annotation.models import (
    CRITERIA,
    Campaign,
    CampaignStatus,
    Enrollment,
    Item,
    ItemMember,
    Judgment,
    Probe,
    Protocol,
)
from annotation.services.enrollment import enrollment_set_excluded
from feedback import qc
from feedback.models import DecisionSource, QcDecision, QcRun, RaterStatus
from feedback.tasks_qc import QC_TIME_LIMIT_S, qc_run_task
from policy.models import JobStatus

logger = logging.getLogger(__name__)

# A run still RUNNING (or QUEUED) this long after its claim (or creation) outlived its worker's
# hard time limit, or its message was lost: it may be claimed again, and the beat starts another.
STALE_AFTER = timedelta(seconds=QC_TIME_LIMIT_S + 300)
OVERRIDE_STATUSES = (*RaterStatus.values, "auto")
MAX_REASON = 2000
PENDING = "pending"  # rater_table's source for a rater without a decision yet

ProgressFn = Callable[[float], None]


class QcError(ValueError):
    """A quality-control request that cannot be done as asked; the message names the field."""


def qc_thresholds() -> qc.Thresholds:
    """The thresholds in force (``settings.FEEDBACK_QC``); a bad value raises ``QcError``
    naming its key."""
    try:
        return qc.Thresholds.from_mapping(getattr(settings, "FEEDBACK_QC", {}))
    except ValueError as exc:
        raise QcError(str(exc)) from None


# --- loading ---------------------------------------------------------------------------------

def _code(field: str, codes: dict[str, int]) -> Case:
    """A database-side code for a text column (so rows arrive as integers, ready for NumPy)."""
    return Case(*[When(**{field: text}, then=Value(code)) for text, code in codes.items()],
                default=Value(-1), output_field=IntegerField())


_PROBES = {Probe.NONE: qc.PROBE_NONE, Probe.GOLD: qc.PROBE_GOLD, Probe.CATCH: qc.PROBE_CATCH,
           Probe.REPEAT: qc.PROBE_REPEAT}
_CHOICES = {"left": qc.LEFT, "right": qc.RIGHT, "tie": qc.TIE, "both_bad": qc.BOTH_BAD}
_OUTCOMES = {"a": qc.A, "b": qc.B, "tie": qc.NOPREF, "both_bad": qc.NOPREF}


@dataclass
class Loaded:
    """A campaign's judgments as ``feedback.qc`` arrays, and who the raters are."""

    data: qc.QcData
    enrollment_ids: np.ndarray  # (R,) rater index -> enrollment id
    pseudonyms: list[str]  # (R,)
    excluded: np.ndarray  # (R,) bool: annotation's switch as loaded
    judgments_seen: int


def qc_load(*, campaign: Campaign) -> Loaded:
    """Read the campaign into arrays: enrolments, items (episode, clip length, candidates per
    slot) and one row per judgment, text columns coded by the database."""
    enrol = list(Enrollment.objects.filter(campaign=campaign).order_by("id")
                 .values_list("id", "rater_id", "pseudonym", "excluded"))
    enrollment_ids = np.array([e[0] for e in enrol], dtype=np.int64)
    rater_ids = np.array([e[1] for e in enrol], dtype=np.int64)
    by_rater = np.argsort(rater_ids)

    items = np.array(list(Item.objects.filter(campaign=campaign).order_by("id").values_list(
        "id", "episode_id", "episode__n_frames", "episode__fps")), dtype=np.float64
    ).reshape(-1, 4)
    item_ids = items[:, 0].astype(np.int64)
    clip_ms = np.where(items[:, 3] > 0, 1000.0 * items[:, 2] / np.maximum(items[:, 3], 1e-9),
                       np.nan)
    members = np.array(list(ItemMember.objects.filter(item__campaign=campaign).values_list(
        "item_id", "slot", "candidate_id")), dtype=np.int64).reshape(-1, 3)
    n_slots = int(members[:, 1].max()) + 1 if len(members) else 2
    item_cands = np.full((len(item_ids), max(n_slots, 2)), -1, dtype=np.int64)
    if len(members):
        item_cands[np.searchsorted(item_ids, members[:, 0]), members[:, 1]] = members[:, 2]

    group = campaign.protocol == Protocol.GROUP
    columns = ["rater_id", "item_id", "probe_code", "choice_code", "outcome_code",
               "decision_ms", "passed_code"]
    if group:  # each score extracted by the database: scores -> slot -> criterion
        columns += [f"scores__{s}__{c}" for s in range(n_slots) for c in CRITERIA]
    rows = (Judgment.objects.filter(campaign=campaign).order_by("id")
            .annotate(probe_code=_code("probe", _PROBES), choice_code=_code("choice", _CHOICES),
                      outcome_code=_code("outcome", _OUTCOMES),
                      passed_code=Case(When(qc__passed=True, then=Value(1)),
                                       When(qc__passed=False, then=Value(0)),
                                       default=Value(-1), output_field=IntegerField()))
            .values_list(*columns))
    table = np.array(list(rows), dtype=np.float64).reshape(-1, len(columns))  # None -> nan
    seen = len(table)
    # Every judgment's rater is enrolled; a row that is not (none should be) is left out.
    sorted_ids = rater_ids[by_rater]
    if len(enrol):
        pos = np.clip(np.searchsorted(sorted_ids, table[:, 0]), 0, len(enrol) - 1)
        known = sorted_ids[pos] == table[:, 0]
    else:
        pos, known = np.zeros(seen, dtype=np.int64), np.zeros(seen, dtype=bool)
    table, pos = table[known], pos[known]
    rater = by_rater[pos].astype(np.int64)
    item = np.searchsorted(item_ids, table[:, 1].astype(np.int64))
    probe = table[:, 2].astype(np.int8)
    choice = table[:, 3].astype(np.int8)
    outcome = table[:, 4].astype(np.int8)
    passed = np.where(table[:, 6] >= 0, table[:, 6], np.nan)
    regular = probe == qc.PROBE_NONE

    unit_episode = items[:, 1].astype(np.int64)
    s_rater = s_unit = s_value = s_criterion = None
    if not group:
        comp = regular & (outcome >= 0)
        c_rater, c_unit, c_label = rater[comp], item[comp], outcome[comp]
        unit_cands, unit_item = item_cands[:, :2], item_ids
    else:
        n_crit = len(CRITERIA)
        scores = table[:, 7:].reshape(-1, n_slots, n_crit)  # (N, S, C)
        w = np.array([campaign.weights[c] for c in CRITERIA])
        values = (scores * w).sum(-1) / (w.sum() or 1.0)  # (N, S) weighted mean per slot
        g = regular & np.isfinite(scores).any((1, 2))
        c_rater, c_unit, c_label, unit_episode, unit_cands, unit_item = qc.group_comparisons(
            item=item[g], rater=rater[g], values=values[g], item_cands=item_cands,
            item_episode=unit_episode, item_ids=item_ids)
        # Ordinal alpha over (item, slot, criterion) units.
        jj, ss, cc = np.nonzero(np.isfinite(scores[g]))
        s_rater = rater[g][jj]
        s_unit = (item[g][jj] * n_slots + ss) * n_crit + cc
        s_value = scores[g][jj, ss, cc].astype(np.int64)
        s_criterion = cc
    data = qc.QcData(
        n_raters=len(enrol), rater=rater, probe=probe, passed=passed, choice=choice,
        decision_ms=table[:, 5], clip_ms=clip_ms[item] if len(item) else np.zeros(0),
        c_rater=c_rater, c_unit=c_unit, c_label=c_label.astype(np.int64),
        unit_episode=unit_episode, unit_cands=unit_cands, unit_item=unit_item,
        s_rater=s_rater, s_unit=s_unit, s_value=s_value, s_criterion=s_criterion,
        criteria=CRITERIA if group else (),
    )
    return Loaded(data=data, enrollment_ids=enrollment_ids,
                  pseudonyms=[str(e[2]) for e in enrol],
                  excluded=np.array([e[3] for e in enrol], dtype=bool), judgments_seen=seen)


@dataclass
class Figures:
    rows: dict[int, dict]  # enrollment id -> the rater's figures (feedback.qc.rater_row)
    campaign: dict  # all raters' judgments
    campaign_kept: dict  # without the judgments of raters now excluded
    judgments_seen: int
    timings: dict[str, float]


def _kept_figures(loaded: Loaded, result: qc.QcResult, statuses: dict[int, str]) -> dict:
    keep = np.array([statuses.get(int(e)) != RaterStatus.EXCLUDED
                     for e in loaded.enrollment_ids], dtype=bool)
    if keep.all():
        return result.campaign
    kept = qc.keep_raters(loaded.data, keep)
    figures, _ = qc.campaign_figures(kept, qc.unit_counts(kept.c_unit, kept.c_label,
                                                          kept.n_units))
    return figures


def qc_compute(*, campaign: Campaign, thresholds: qc.Thresholds) -> tuple[Loaded, qc.QcResult]:
    """Every figure of the campaign, without writing anything."""
    t0 = time.perf_counter()
    loaded = qc_load(campaign=campaign)
    t1 = time.perf_counter()
    result = qc.compute(loaded.data, thresholds)
    result.timings["load_s"] = t1 - t0
    logger.info("qc of campaign %s: %d judgments, %d raters loaded in %.2fs, figures in %.2fs",
                campaign.slug, loaded.judgments_seen, loaded.data.n_raters, t1 - t0,
                time.perf_counter() - t1)
    return loaded, result


def _rows(loaded: Loaded, result: qc.QcResult) -> dict[int, dict]:
    return {int(e): qc.rater_row(result.raters, i) for i, e in enumerate(loaded.enrollment_ids)}


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


# --- deciding --------------------------------------------------------------------------------

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


# --- runs ------------------------------------------------------------------------------------

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


def quality_page(*, campaign: Campaign) -> dict:
    """What the quality page shows: the figures now, the rater table, the latest run."""
    figures = _current_figures(campaign, qc_thresholds())
    return {"figures": figures, "raters": _table(campaign, figures),
            "run": latest_run(campaign=campaign), "thresholds": qc_thresholds()}
