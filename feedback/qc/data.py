"""The arrays quality control works on: the codes of labels, probes and presses, a campaign's
judgments (:class:`QcData`), the figures computed from them (:class:`QcResult`), and the
counting helpers every figure shares."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Labels of a comparison.
A, B, NOPREF = 0, 1, 2
N_LABELS = 3
LABELS = ("a", "b", "no preference")
# Probe kinds and pressed sides, as codes in the arrays.
PROBE_NONE, PROBE_GOLD, PROBE_CATCH, PROBE_REPEAT = 0, 1, 2, 3
LEFT, RIGHT, TIE, BOTH_BAD = 0, 1, 2, 3
SCORE_DOMAIN = (1, 2, 3, 4, 5)
# How often two people agree on a subjective pair (InstructGPT 72.6-77.3 %, Arena 73-83 %): a
# campaign inside this band is as consistent as people get.
HUMAN_CEILING = (0.70, 0.80)


@dataclass
class QcData:
    """A campaign's judgments as arrays (see the terms in ``feedback.qc``)."""

    n_raters: int
    # One row per judgment, shape (N,).
    rater: np.ndarray  # int: index of the rater, 0 .. n_raters - 1
    probe: np.ndarray  # int8: PROBE_*
    passed: np.ndarray  # float: 1 passed, 0 failed, nan no verdict (a regular item)
    choice: np.ndarray  # int8: LEFT / RIGHT / TIE / BOTH_BAD, -1 for group scores
    decision_ms: np.ndarray  # float: from voting unlocked to the answer
    clip_ms: np.ndarray  # float: length of the item's clips; nan when unknown
    # One row per comparison on a regular item, shape (M,).
    c_rater: np.ndarray  # int
    c_unit: np.ndarray  # int: 0 .. n_units - 1
    c_label: np.ndarray  # int8: A / B / NOPREF
    # One row per unit, shape (U,).
    unit_episode: np.ndarray  # int: the episode's id
    unit_cands: np.ndarray  # (U, 2) int: candidate ids of the unit's first and second member
    unit_item: np.ndarray  # int: the item's id (for the page)
    # Group campaigns: one row per score given, shape (S,).
    s_rater: np.ndarray | None = None  # int
    s_unit: np.ndarray | None = None  # int: (item, slot, criterion) unit
    s_value: np.ndarray | None = None  # int: 1 .. 5
    s_criterion: np.ndarray | None = None  # int: index into the criteria
    criteria: tuple[str, ...] = ()

    @property
    def n_units(self) -> int:
        return len(self.unit_episode)


@dataclass
class QcResult:
    raters: dict[str, np.ndarray]  # figure name -> (R,) array
    units: dict[str, np.ndarray]  # figure name -> (U,) array
    campaign: dict  # JSON-ready campaign figures
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


# --- building blocks -------------------------------------------------------------------------

def _count(index: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(index, weights=weights, minlength=size)[:size].astype(np.float64,
                                                                             copy=False)


def _share(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def unit_counts(unit: np.ndarray, label: np.ndarray, n_units: int) -> np.ndarray:
    """(U, 3) how many comparisons of each unit have each label."""
    flat = np.bincount(unit * N_LABELS + label, minlength=n_units * N_LABELS)
    return flat[: n_units * N_LABELS].reshape(n_units, N_LABELS)


def value_counts(unit: np.ndarray, value_index: np.ndarray, n_units: int,
                 n_values: int) -> np.ndarray:
    """(U, V): how many answers of each unit have each value (index into the domain)."""
    flat = np.bincount(unit * n_values + value_index, minlength=n_units * n_values)
    return flat[: n_units * n_values].reshape(n_units, n_values)


def _round(x: float | None, digits: int = 4) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return _round(value) if isinstance(value, float) else value


def keep_raters(data: QcData, keep: np.ndarray) -> QcData:
    """The same data without the judgments of the raters where ``keep`` (R,) is False."""
    j, c = keep[data.rater], keep[data.c_rater]
    s = keep[data.s_rater] if data.s_rater is not None else None

    def pick(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None or s is None else values[s]

    return QcData(
        n_raters=data.n_raters, rater=data.rater[j], probe=data.probe[j],
        passed=data.passed[j], choice=data.choice[j], decision_ms=data.decision_ms[j],
        clip_ms=data.clip_ms[j], c_rater=data.c_rater[c], c_unit=data.c_unit[c],
        c_label=data.c_label[c], unit_episode=data.unit_episode, unit_cands=data.unit_cands,
        unit_item=data.unit_item, s_rater=pick(data.s_rater), s_unit=pick(data.s_unit),
        s_value=pick(data.s_value), s_criterion=pick(data.s_criterion), criteria=data.criteria,
    )


def group_comparisons(*, item: np.ndarray, rater: np.ndarray, values: np.ndarray,
                      item_cands: np.ndarray, item_episode: np.ndarray, item_ids: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                 np.ndarray]:
    """The comparisons group answers imply: for each pair of slots (i < j) of each answer, A
    when slot i's weighted mean score is higher, B when lower, NOPREF when they are equal
    (``math.isclose``, as ``annotation.rules.group_pairs`` decides).

    ``item``: (N,) index into the items; ``values``: (N, S) weighted mean score per slot (nan
    where the item has fewer slots); ``item_cands``: (I, S) candidate ids (-1: no slot).
    Returns (c_rater, c_unit, c_label, unit_episode, unit_cands, unit_item), a unit being
    (item, slot pair) numbered ``item * P + pair``."""
    n_items, s = item_cands.shape
    slot_pairs = [(i, j) for i in range(s) for j in range(i + 1, s)]
    p = len(slot_pairs)
    cr, cu, cl = [], [], []
    for k, (i, j) in enumerate(slot_pairs):  # at most 28 pairs of slots, each vectorised
        vi, vj = values[:, i], values[:, j]
        ok = np.isfinite(vi) & np.isfinite(vj)
        same = np.isclose(vi, vj, rtol=1e-9, atol=0.0)
        label = np.where(same, NOPREF, np.where(vi > vj, A, B)).astype(np.int8)
        cr.append(rater[ok])
        cu.append(item[ok] * p + k)
        cl.append(label[ok])
    if p == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty.astype(np.int8), empty, np.zeros((0, 2), np.int64), empty
    ii = np.array([i for i, _ in slot_pairs])
    jj = np.array([j for _, j in slot_pairs])
    unit_cands = np.stack([item_cands[:, ii].ravel(), item_cands[:, jj].ravel()], 1)
    return (np.concatenate(cr), np.concatenate(cu), np.concatenate(cl),
            np.repeat(item_episode, p), unit_cands, np.repeat(item_ids, p))

