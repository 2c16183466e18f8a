"""A campaign's judgments into ``feedback.qc`` arrays (a handful of ``values_list`` queries,
no row objects), and every figure computed from them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from itertools import islice

import numpy as np
from django.db.models import Case, IntegerField, QuerySet, Value, When

from annotation.models import (
    CRITERIA,
    Campaign,
    Enrollment,
    Item,
    ItemMember,
    Judgment,
    Probe,
    Protocol,
)
from feedback import qc
from feedback.models import RaterStatus

logger = logging.getLogger(__name__)


def _code(field: str, codes: dict[str, int]) -> Case:
    """A database-side code for a text column (so rows arrive as integers, ready for NumPy)."""
    return Case(*[When(**{field: text}, then=Value(code)) for text, code in codes.items()],
                default=Value(-1), output_field=IntegerField())


_PROBES = {Probe.NONE: qc.PROBE_NONE, Probe.GOLD: qc.PROBE_GOLD, Probe.CATCH: qc.PROBE_CATCH,
           Probe.REPEAT: qc.PROBE_REPEAT}
_CHOICES = {"left": qc.LEFT, "right": qc.RIGHT, "tie": qc.TIE, "both_bad": qc.BOTH_BAD}
_OUTCOMES = {"a": qc.A, "b": qc.B, "tie": qc.NOPREF, "both_bad": qc.NOPREF}


CHUNK = 20_000  # judgments turned into arrays at a time (the only rows held as tuples)


def _columns(rows: QuerySet, specs: list[tuple[type, int]], *, hint: int) -> list[np.ndarray]:
    """Stream a ``values_list`` into one array per (dtype, width) of ``specs``, the columns in
    that order (width > 1: a 2-D array of that many columns). Room for ``hint`` rows is made up
    front and doubled if more come (judgments arrive while a run reads); a chunk at a time goes
    through one float64 block, None becoming NaN."""
    width = sum(w for _, w in specs)
    out = [np.empty((hint, w) if w > 1 else hint, dtype=d) for d, w in specs]
    n = 0
    rows_iter = iter(rows.iterator(chunk_size=CHUNK))
    while part := list(islice(rows_iter, CHUNK)):
        block = np.array(part, dtype=np.float64).reshape(-1, width)
        del part
        end = n + len(block)
        if end > len(out[0]):
            room = max(end, 2 * len(out[0]))
            grown = [np.empty((room, *a.shape[1:]), dtype=a.dtype) for a in out]
            for new, old in zip(grown, out, strict=True):
                new[:n] = old[:n]
            out = grown
        col = 0
        for a, (_, w) in zip(out, specs, strict=True):
            a[n:end] = block[:, col] if w == 1 else block[:, col:col + w]
            col += w
        n = end
    return [a[:n] for a in out]


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
    judgments = Judgment.objects.filter(campaign=campaign)
    rows = (judgments.order_by("id")
            .annotate(probe_code=_code("probe", _PROBES), choice_code=_code("choice", _CHOICES),
                      outcome_code=_code("outcome", _OUTCOMES),
                      passed_code=Case(When(qc__passed=True, then=Value(1)),
                                       When(qc__passed=False, then=Value(0)),
                                       default=Value(-1), output_field=IntegerField()))
            .values_list(*columns))
    rater_id, item_id, probe, choice, outcome, decision_ms, passed_code, *rest = _columns(
        rows, [(np.int64, 1), (np.int64, 1), (np.int8, 1), (np.int8, 1), (np.int8, 1),
               (np.float64, 1), (np.int8, 1)] + ([(np.float64, len(columns) - 7)] if group else []),
        hint=judgments.count())
    seen = len(rater_id)
    # Every judgment's rater is enrolled; a row that is not (none should be) is left out.
    sorted_ids = rater_ids[by_rater]
    if len(enrol):
        pos = np.clip(np.searchsorted(sorted_ids, rater_id), 0, len(enrol) - 1)
        known = sorted_ids[pos] == rater_id
    else:
        pos, known = np.zeros(seen, dtype=np.int64), np.zeros(seen, dtype=bool)
    if not known.all():
        pos, item_id, probe, choice, outcome, decision_ms, passed_code, *rest = (
            a[known] for a in (pos, item_id, probe, choice, outcome, decision_ms, passed_code,
                               *rest))
    rater = by_rater[pos].astype(np.int64)
    item = np.searchsorted(item_ids, item_id)
    passed = np.where(passed_code >= 0, passed_code, np.nan)
    regular = probe == qc.PROBE_NONE

    unit_episode = items[:, 1].astype(np.int64)
    s_rater = s_unit = s_value = s_criterion = None
    if not group:
        comp = regular & (outcome >= 0)
        c_rater, c_unit, c_label = rater[comp], item[comp], outcome[comp]
        unit_cands, unit_item = item_cands[:, :2], item_ids
    else:
        n_crit = len(CRITERIA)
        scores = rest[0].reshape(-1, n_slots, n_crit)  # (N, S, C)
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
        decision_ms=decision_ms, clip_ms=clip_ms[item] if len(item) else np.zeros(0),
        c_rater=c_rater, c_unit=c_unit, c_label=c_label.astype(np.int64),
        unit_episode=unit_episode, unit_cands=unit_cands, unit_item=unit_item,
        s_rater=s_rater, s_unit=s_unit, s_value=s_value, s_criterion=s_criterion,
        criteria=CRITERIA if group else (),
    )
    return Loaded(data=data, enrollment_ids=enrollment_ids,
                  pseudonyms=[str(e[2]) for e in enrol],
                  excluded=np.array([e[3] for e in enrol], dtype=bool), judgments_seen=seen)


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


def _kept_figures(loaded: Loaded, result: qc.QcResult, statuses: dict[int, str]) -> dict:
    keep = np.array([statuses.get(int(e)) != RaterStatus.EXCLUDED
                     for e in loaded.enrollment_ids], dtype=bool)
    if keep.all():
        return result.campaign
    kept = qc.keep_raters(loaded.data, keep)
    figures, _ = qc.campaign_figures(kept, qc.unit_counts(kept.c_unit, kept.c_label,
                                                          kept.n_units))
    return figures
