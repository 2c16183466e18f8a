"""Quality-control figures over judgments held in NumPy arrays: pure, no Django, no database.

``feedback.services.qc`` loads a campaign's judgments into a :class:`QcData` and calls
:func:`compute`; the benchmark (``benchmarks/feedback/qc.py``) calls the same function on
simulated arrays. Every figure is computed for all raters, items and comparisons at once (NumPy
gathers, sorts and ``bincount``); the few Python loops run over a group's slot pairs, the
criteria, EM iterations or chunks of episodes, never over judgments.

Terms:

* a **comparison** is one rater's answer about one *unit*. On a pairwise campaign a unit is a
  regular item and its label the judgment's outcome; on a group campaign each judgment implies
  one comparison per pair of slots, by the weighted mean score (the rule of
  ``annotation.rules.group_pairs``), and a unit is (item, slot pair);
* labels are ``A`` (slot 0 / the first of the pair preferred), ``B``, and ``NOPREF``: a tie or
  "both bad" (neither is preferred; Chatbot Arena counts both bad as a tie as well);
* probes (gold, catch, hidden repeats) are judged by ``annotation.rules.probe_verdict`` when the
  answer arrives; here they are only counted. They never enter the comparisons.

Per rater: gold and catch accuracy, repeat consistency, side bias (two-sided binomial test of
left against right among the decisive presses), decision time against the clip's length,
agreement with the leave-one-out majority, and a reliability estimated jointly with the items
(:func:`reliability_em`, MACE-style). Per unit and campaign: raw pairwise agreement,
Krippendorff's alpha (nominal for preference labels, ordinal for 1-5 scores) and the 3-cycles
of each episode's majority preferences.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

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
_SHARES = ("_flag", "_exclude", "_share", "_p")  # thresholds that are shares or probabilities


@dataclass(frozen=True)
class Thresholds:
    """When quality control flags or excludes a rater (``settings.FEEDBACK_QC``; the table is
    in ``feedback/services/qc.py``). A rule is applied only once its own minimum count is
    reached, and no rule before ``min_answers``."""

    batch: int = 200  # not a rule: new judgments in a campaign that start a run (the beat)
    min_answers: int = 20  # no decision about a rater with fewer judgments
    min_gold: int = 10  # gold items answered before gold accuracy counts
    gold_accuracy_flag: float = 0.8
    gold_accuracy_exclude: float = 0.7  # common tools' rule: >= 0.7 after 10 gold items
    min_catch: int = 3  # catch items answered before catch accuracy flags
    catch_accuracy_flag: float = 0.8
    min_catch_exclude: int = 6  # ... and before it excludes
    catch_accuracy_exclude: float = 0.5
    min_repeats: int = 3  # hidden repeats answered before consistency counts
    repeat_consistency_flag: float = 0.6
    min_decisive: int = 10  # left/right presses before side bias counts
    side_bias_p: float = 0.001  # two-sided binomial test against 1/2 ...
    side_bias_share: float = 0.8  # ... and the pressed side's share above this
    fast_fraction: float = 0.1  # an answer is too fast below this fraction of the clip's length
    fast_share_flag: float = 0.3  # flagged when more answers than this are too fast
    min_regular: int = 10  # regular comparisons before agreement and reliability count
    loo_agreement_flag: float = 0.5  # agreement with the others' majority
    reliability_flag: float = 0.5
    reliability_exclude: float = 0.15  # answers barely tied to the items: mostly noise

    @classmethod
    def from_mapping(cls, values: Mapping[str, object] | None) -> Thresholds:
        """Thresholds from a settings dict: unknown keys and values of the wrong kind are
        refused with the key's name (``ValueError``); missing keys keep their defaults."""
        values = dict(values or {})
        known = {f.name: f for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ValueError(f"FEEDBACK_QC: unknown key {key!r}; known keys: "
                                 f"{', '.join(sorted(known))}")
        out: dict[str, object] = {}
        for key, value in values.items():
            want = type(getattr(cls, key))
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < 0:
                raise ValueError(f"FEEDBACK_QC[{key!r}]: expected a number >= 0, got {value!r}")
            if want is int and not float(value).is_integer():
                raise ValueError(f"FEEDBACK_QC[{key!r}]: expected a whole number, got {value!r}")
            if want is float and key.endswith(_SHARES) and value > 1:
                raise ValueError(f"FEEDBACK_QC[{key!r}]: expected a share in [0, 1], got "
                                 f"{value!r}")
            out[key] = want(value)
        return cls(**out)

    def as_dict(self) -> dict[str, float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class QcData:
    """A campaign's judgments as arrays (see the module's terms)."""

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


def pairwise_agreement(counts: np.ndarray) -> dict[str, np.ndarray | float | None]:
    """Raw agreement: of every two answers to the same unit, the share that agree. Per unit
    (nan under two answers) and pooled over the campaign (pairs of answers weigh equally).
    ``decisive``: the same over the answers that prefer one side, the figure comparable with
    the human ceiling (people who both chose a side)."""
    n = counts.sum(1)
    same = (counts * (counts - 1)).sum(1).astype(np.float64)
    pairs = (n * (n - 1)).astype(np.float64)
    d = counts[:, :2]
    nd = d.sum(1)
    same_d = (d * (d - 1)).sum(1).astype(np.float64)
    pairs_d = (nd * (nd - 1)).astype(np.float64)
    return {
        "per_unit": _share(same, pairs),
        "agreement": float(same.sum() / pairs.sum()) if pairs.sum() else None,
        "agreement_decisive": float(same_d.sum() / pairs_d.sum()) if pairs_d.sum() else None,
        "pairs": float(pairs.sum() / 2),
    }


def loo_agreement(rater: np.ndarray, unit: np.ndarray, label: np.ndarray,
                  counts: np.ndarray, n_raters: int) -> tuple[np.ndarray, np.ndarray]:
    """Per rater: (comparisons scored, comparisons agreeing with the majority of the others).
    A comparison is scored when its unit has at least two other answers and their most frequent
    label is unique."""
    rows = np.arange(len(label))
    others = counts[unit].astype(np.int32)  # (M, 3): the unit's answers ...
    others[rows, label] -= 1  # ... less this one
    top = others.max(1)
    unique = (others == top[:, None]).sum(1) == 1
    scored = (others.sum(1) >= 2) & unique
    agree = scored & (others[rows, label] == top)
    return _count(rater, n_raters, scored), _count(rater, n_raters, agree)


def reliability_em(rater: np.ndarray, unit: np.ndarray, label: np.ndarray, *, n_raters: int,
                   n_units: int, max_iter: int = 100, tol: float = 1e-4,
                   prior: tuple[float, float] = (1.0, 1.0)
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Each rater's reliability, estimated jointly with each unit's label (MACE, Hovy et al.
    2013; a one-coin Dawid-Skene with a per-rater spam distribution), by EM.

    Rater r answers a unit's true label with probability ``theta_r`` ("knows"), otherwise draws
    a label from its own distribution ``xi_r`` (a side it always presses, a habit of saying
    "tie"): P(l | t) = theta_r [l = t] + (1 - theta_r) xi_r(l). A random rater has theta = 0
    whatever it presses; a careful one near 1. ``prior``: Beta pseudo-counts on theta (MAP). The
    default (1, 1) is the maximum-likelihood estimate: a prior towards 1/2 lifts a random
    rater's theta by about (a - 1) / n, and small samples are kept from the rules by
    ``min_regular`` instead.

    Returns (theta (R,) with nan for raters without comparisons, the units' label posteriors
    (U, 3), iterations). Every step is a gather or a ``bincount`` over the comparisons.
    """
    m = len(label)
    theta = np.full(n_raters, np.nan)
    if m == 0:
        return theta, np.full((n_units, N_LABELS), np.nan), 0
    k = N_LABELS
    ul = unit * k + label  # (M,) flat index into (U, 3)
    rl = rater * k + label  # (M,) flat index into (R, 3)
    n_rl = _count(rl, n_raters * k).reshape(n_raters, k)  # (R, 3) answers per label
    n_r = n_rl.sum(1)  # (R,)
    counts = unit_counts(unit, label, n_units).astype(np.float64)
    post = (counts + 0.1) / (counts + 0.1).sum(1, keepdims=True)  # (U, 3) soft majority
    know = post.ravel()[ul]  # (M,) P(the answer is the unit's label): the first M-step's input
    a, b = prior
    th = np.full(n_raters, 0.5)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        # M-step: reliability, spam distribution, label prior. Everything that depends only on
        # (rater, label) is computed on (R, 3) tables and gathered: one log per table cell,
        # not per judgment.
        prev = th
        know_rl = _count(rl, n_raters * k, know).reshape(n_raters, k)  # (R, 3)
        th = np.clip((know_rl.sum(1) + a - 1) / np.maximum(n_r + a + b - 2, 1e-9), 1e-4,
                     1 - 1e-4)
        xi = n_rl - know_rl + 1.0  # (R, 3) answers not "known", plus one
        xi /= xi.sum(1, keepdims=True)
        log_pi = np.log(post.sum(0) + 1.0) - np.log(post.sum() + k)  # (3,)
        # E-step: each unit's label posterior. The factor (1 - theta) xi(l) is the same for
        # every candidate label, so only the bonus of "t = l" is summed per unit.
        spam = (1.0 - th)[:, None] * xi  # (R, 3) P(l | the rater did not know)
        bonus = np.log1p(th[:, None] / spam)  # (R, 3) log P(l | t = l) - log P(l | t != l)
        log_post = log_pi + _count(ul, n_units * k, bonus.ravel()[rl]).reshape(n_units, k)
        log_post -= log_post.max(1, keepdims=True)
        post = np.exp(log_post)  # (U, 3)
        post /= post.sum(1, keepdims=True)
        gain = th[:, None] / (th[:, None] + spam)  # (R, 3) P(knew | answered l and t = l)
        know = post.ravel()[ul] * gain.ravel()[rl]  # (M,)
        if np.max(np.abs(th - prev)) < tol:
            break
    theta = np.where(n_r > 0, th, np.nan)
    return theta, post, iterations


def value_counts(unit: np.ndarray, value_index: np.ndarray, n_units: int,
                 n_values: int) -> np.ndarray:
    """(U, V): how many answers of each unit have each value (index into the domain)."""
    flat = np.bincount(unit * n_values + value_index, minlength=n_units * n_values)
    return flat[: n_units * n_values].reshape(n_units, n_values)


def krippendorff_alpha(counts: np.ndarray, *, level: str, domain) -> float | None:
    """Krippendorff's alpha of (U, V) value counts by the ``krippendorff`` package, at the
    given level of measurement: pass it always (the package's default, ``interval``, is wrong
    for preference labels and for 1-5 scores). None when no unit has two answers or every
    answer is the same value (alpha is undefined)."""
    import krippendorff

    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise ValueError(f"level: expected nominal, ordinal, interval or ratio, got {level!r}")
    kept = counts[counts.sum(1) >= 2]  # units with one answer carry no pairs
    if not len(kept):
        return None
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            value = krippendorff.alpha(value_counts=kept, value_domain=list(domain),
                                       level_of_measurement=level)
    except ValueError:
        return None
    return float(value) if math.isfinite(value) else None


def preference_cycles(unit_episode: np.ndarray, unit_cands: np.ndarray,
                      counts: np.ndarray, *, chunk_cells: int = 20_000_000) -> dict:
    """Intransitive triads of each episode's majority preferences.

    Units comparing the same two candidates of an episode are pooled; the candidate more raters
    preferred gets an edge to the other (an even split gives none). In each episode's directed
    graph a 3-cycle (x > y > z > x) is counted once; ``triads`` counts the triples whose three
    pairs all have an edge, so ``cycle_share`` is the share of those that are intransitive."""
    margin = (counts[:, A] - counts[:, B]).astype(np.int64)
    keep = margin != 0
    if not keep.any():
        return {"cycles": 0, "triads": 0, "cycle_share": None, "episodes": 0,
                "episodes_with_cycles": 0, "worst_episodes": []}
    ep = unit_episode[keep].astype(np.int64)
    ca, cb = unit_cands[keep, 0].astype(np.int64), unit_cands[keep, 1].astype(np.int64)
    m = margin[keep]
    lo, hi = np.minimum(ca, cb), np.maximum(ca, cb)
    m_lo = np.where(ca == lo, m, -m)  # margin in favour of the lower candidate id
    # Pool the units of each (episode, candidate, candidate).
    order = np.lexsort((hi, lo, ep))
    ep, lo, hi, m_lo = ep[order], lo[order], hi[order], m_lo[order]
    new = np.ones(len(ep), dtype=bool)
    new[1:] = (ep[1:] != ep[:-1]) | (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    group = np.cumsum(new) - 1
    pooled = np.bincount(group, weights=m_lo)
    p_ep, p_lo, p_hi = ep[new], lo[new], hi[new]
    edge = pooled != 0
    p_ep, p_lo, p_hi, pooled = p_ep[edge], p_lo[edge], p_hi[edge], pooled[edge]
    src = np.where(pooled > 0, p_lo, p_hi)
    dst = np.where(pooled > 0, p_hi, p_lo)
    # Each episode's candidates numbered 0, 1, ... (a node key is episode * base + candidate).
    base = int(max(src.max(), dst.max())) + 1
    node_keys = np.unique(np.concatenate([p_ep * base + src, p_ep * base + dst]))
    episodes, first, per = np.unique(node_keys // base, return_index=True, return_counts=True)
    local = np.arange(len(node_keys)) - np.repeat(first, per)
    size = int(per.max())
    s_loc = local[np.searchsorted(node_keys, p_ep * base + src)]
    d_loc = local[np.searchsorted(node_keys, p_ep * base + dst)]
    e_idx = np.searchsorted(episodes, p_ep)
    cycles = np.zeros(len(episodes))
    triads = np.zeros(len(episodes))
    step = max(1, chunk_cells // (size * size))
    for start in range(0, len(episodes), step):  # bounded memory: (chunk, size, size)
        stop = min(start + step, len(episodes))
        sel = (e_idx >= start) & (e_idx < stop)
        adj = np.zeros((stop - start, size, size), dtype=np.float32)
        adj[e_idx[sel] - start, s_loc[sel], d_loc[sel]] = 1.0
        cycles[start:stop] = ((adj @ adj) * adj.transpose(0, 2, 1)).sum((1, 2)) / 3.0
        und = adj + adj.transpose(0, 2, 1)
        triads[start:stop] = ((und @ und) * und).sum((1, 2)) / 6.0
    n_cycles, n_triads = int(round(cycles.sum())), int(round(triads.sum()))
    worst = np.argsort(-cycles, kind="stable")[:10]
    return {
        "cycles": n_cycles,
        "triads": n_triads,
        "cycle_share": round(n_cycles / n_triads, 4) if n_triads else None,
        "episodes": int((triads > 0).sum()),
        "episodes_with_cycles": int((cycles > 0).sum()),
        "worst_episodes": [[int(episodes[i]), int(round(cycles[i]))] for i in worst
                           if cycles[i] > 0],
    }


def side_bias(rater: np.ndarray, choice: np.ndarray, n_raters: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per rater: (decisive presses, left presses, share of left, two-sided p-value of the
    binomial test against 1/2; nan without a decisive press).

    The p-value is ``scipy.stats.binomtest(left, n, 0.5).pvalue``, written in closed form so
    that it is computed for every rater at once: against 1/2 the distribution is symmetric,
    so the outcomes at most as likely as the one seen are the two tails, p = min(1,
    2 F(min(k, n - k))). (binomtest itself costs ~1 ms a call: 2 s for 2,000 raters; the tests
    check the two agree.)"""
    from scipy.stats import binom

    decisive = (choice == LEFT) | (choice == RIGHT)
    n = _count(rater, n_raters, decisive)
    left = _count(rater, n_raters, choice == LEFT)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.minimum(1.0, 2.0 * binom.cdf(np.minimum(left, n - left), n, 0.5))
    p = np.where(n > 0, p, np.nan)
    return n, left, _share(left, n), p


def binomial_band(n: np.ndarray, p_value: float) -> tuple[np.ndarray, np.ndarray]:
    """Shares of left presses that a two-sided binomial test at ``p_value`` does not reject,
    for n decisive presses: the band an unbiased rater stays inside."""
    from scipy.stats import binom

    n = np.asarray(n, dtype=np.float64)
    lo = binom.ppf(p_value / 2, n, 0.5)
    hi = binom.isf(p_value / 2, n, 0.5)
    with np.errstate(invalid="ignore", divide="ignore"):
        return lo / n, hi / n


def _grouped_quantiles(group: np.ndarray, value: np.ndarray, n_groups: int,
                       qs: tuple[float, ...]) -> np.ndarray:
    """(n_groups, len(qs)) lower quantiles of ``value`` per group (nan for empty groups)."""
    order = np.argsort(value, kind="stable")  # by value, then (stably) by group:
    order = order[np.argsort(group[order], kind="stable")]  # faster than lexsort on 1e6 rows
    g, v = group[order], value[order]
    n = np.bincount(g, minlength=n_groups)[:n_groups]
    start = np.cumsum(n) - n  # (n_groups,) first row of each group in the sorted order
    out = np.full((n_groups, len(qs)), np.nan)
    has = n > 0
    for j, q in enumerate(qs):  # a handful of quantiles, each vectorised over the groups
        pos = start[has] + np.floor(q * (n[has] - 1)).astype(np.int64)
        out[has, j] = v[pos]
    return out


def decision_speed(rater: np.ndarray, decision_ms: np.ndarray, clip_ms: np.ndarray,
                   fraction: float, n_raters: int) -> dict[str, np.ndarray]:
    """Per rater: answers with a known clip length, the share decided in less than
    ``fraction`` of the clip's length, and the 10th / 50th / 90th percentile of decision time
    over clip length."""
    known = np.isfinite(clip_ms) & (clip_ms > 0)
    ratio = decision_ms[known] / clip_ms[known]
    r = rater[known]
    n = _count(r, n_raters)
    fast = _count(r, n_raters, ratio < fraction)
    q = _grouped_quantiles(r, ratio, n_raters, (0.1, 0.5, 0.9))
    return {"timed_n": n, "fast_n": fast, "fast_share": _share(fast, n),
            "time_ratio_p10": q[:, 0], "time_ratio_p50": q[:, 1], "time_ratio_p90": q[:, 2]}


def probe_figures(rater: np.ndarray, probe: np.ndarray, passed: np.ndarray,
                  n_raters: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, code in (("gold", PROBE_GOLD), ("catch", PROBE_CATCH), ("repeat", PROBE_REPEAT)):
        sel = (probe == code) & np.isfinite(passed)
        n = _count(rater[sel], n_raters)
        ok = _count(rater[sel], n_raters, passed[sel] > 0.5)
        out[f"{name}_n"], out[f"{name}_passed"] = n, ok
    out["gold_accuracy"] = _share(out["gold_passed"], out["gold_n"])
    out["catch_accuracy"] = _share(out["catch_passed"], out["catch_n"])
    out["repeat_consistency"] = _share(out["repeat_passed"], out["repeat_n"])
    return out


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


# --- everything at once ----------------------------------------------------------------------

def rater_figures(data: QcData, th: Thresholds, timings: dict[str, float] | None = None
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every per-rater figure as (R,) arrays; also the units' label counts and EM
    posteriors."""
    timings = timings if timings is not None else {}
    t = time.perf_counter()
    r = data.n_raters
    out: dict[str, np.ndarray] = {"n_judgments": _count(data.rater, r)}
    out.update(probe_figures(data.rater, data.probe, data.passed, r))
    pairwise = data.choice >= 0
    n, left, share, p = side_bias(data.rater[pairwise], data.choice[pairwise], r)
    out.update({"decisive_n": n, "left_n": left, "left_share": share, "side_p": p})
    out.update(decision_speed(data.rater, data.decision_ms, data.clip_ms, th.fast_fraction, r))
    timings["rater_basic_s"] = time.perf_counter() - t

    t = time.perf_counter()
    counts = unit_counts(data.c_unit, data.c_label, data.n_units)
    out["regular_n"] = _count(data.c_rater, r)
    scored, agreed = loo_agreement(data.c_rater, data.c_unit, data.c_label, counts, r)
    out["loo_n"], out["loo_agreement"] = scored, _share(agreed, scored)
    timings["loo_s"] = time.perf_counter() - t

    t = time.perf_counter()
    theta, post, iters = reliability_em(data.c_rater, data.c_unit, data.c_label, n_raters=r,
                                        n_units=data.n_units)
    out["reliability"] = theta
    timings["reliability_s"] = time.perf_counter() - t
    timings["reliability_iterations"] = iters
    return out, counts, post


def campaign_figures(data: QcData, counts: np.ndarray, *, timings: dict[str, float] | None = None
                     ) -> tuple[dict, dict[str, np.ndarray]]:
    """Campaign figures (JSON-ready) and per-unit arrays, from the units' label counts."""
    timings = timings if timings is not None else {}
    t = time.perf_counter()
    agreement = pairwise_agreement(counts)
    n = counts.sum(1)
    majority = np.where(n > 0, counts.argmax(1), -1)
    hist = np.histogram(agreement["per_unit"][np.isfinite(agreement["per_unit"])],
                        bins=10, range=(0.0, 1.0))[0]
    timings["agreement_s"] = time.perf_counter() - t

    t = time.perf_counter()
    alpha = {"nominal": krippendorff_alpha(counts, level="nominal", domain=range(N_LABELS))}
    if data.s_unit is not None and data.s_value is not None and len(data.s_value):
        v = len(SCORE_DOMAIN)
        vi = data.s_value.astype(np.int64) - SCORE_DOMAIN[0]
        n_s = int(data.s_unit.max()) + 1
        alpha["ordinal"] = krippendorff_alpha(value_counts(data.s_unit, vi, n_s, v),
                                              level="ordinal", domain=SCORE_DOMAIN)
        by_criterion = {}
        for c, name in enumerate(data.criteria):  # four criteria
            sel = data.s_criterion == c
            by_criterion[name] = krippendorff_alpha(
                value_counts(data.s_unit[sel], vi[sel], n_s, v), level="ordinal",
                domain=SCORE_DOMAIN)
        alpha["ordinal_by_criterion"] = by_criterion
    timings["alpha_s"] = time.perf_counter() - t

    t = time.perf_counter()
    cycles = preference_cycles(data.unit_episode, data.unit_cands, counts)
    timings["cycles_s"] = time.perf_counter() - t

    multi = n >= 2
    per_unit = agreement["per_unit"]
    low = np.flatnonzero(multi)[np.argsort(per_unit[multi], kind="stable")[:10]]
    figures = {
        "n_judgments": int(len(data.rater)),
        "n_comparisons": int(len(data.c_label)),
        "n_units": int((n > 0).sum()),
        "n_units_multi": int(multi.sum()),
        "labels": {name: int(counts[:, k].sum()) for k, name in enumerate(LABELS)},
        "agreement": _round(agreement["agreement"]),
        "agreement_decisive": _round(agreement["agreement_decisive"]),
        "agreement_pairs": int(agreement["pairs"]),
        "agreement_histogram": hist.astype(int).tolist(),
        "human_ceiling": list(HUMAN_CEILING),
        "alpha": _rounded(alpha),
        "cycles": cycles,
        "least_agreed": [{"item": int(data.unit_item[u]), "answers": int(n[u]),
                          "agreement": _round(per_unit[u]),
                          "counts": counts[u].astype(int).tolist()} for u in low],
    }
    return figures, {"n": n, "agreement": per_unit, "majority": majority}


def compute(data: QcData, th: Thresholds) -> QcResult:
    """Every figure: per rater, per unit and for the campaign."""
    timings: dict[str, float] = {}
    raters, counts, post = rater_figures(data, th, timings)
    campaign, units = campaign_figures(data, counts, timings=timings)
    units["posterior"] = post
    return QcResult(raters=raters, units=units, campaign=campaign, timings=timings)


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


# --- the decision ----------------------------------------------------------------------------

def _round(x: float | None, digits: int = 4) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return _round(value) if isinstance(value, float) else value


# Every per-rater figure, in the order tables show them.
RATER_FIGURES = (
    "n_judgments", "gold_n", "gold_passed", "gold_accuracy", "catch_n", "catch_passed",
    "catch_accuracy", "repeat_n", "repeat_passed", "repeat_consistency", "decisive_n", "left_n",
    "left_share", "side_p", "timed_n", "fast_n", "fast_share", "time_ratio_p10",
    "time_ratio_p50", "time_ratio_p90", "regular_n", "loo_n", "loo_agreement", "reliability",
)
COUNT_FIGURES = ("n_judgments", "gold_n", "gold_passed", "catch_n", "catch_passed", "repeat_n",
                 "repeat_passed", "decisive_n", "left_n", "timed_n", "fast_n", "regular_n",
                 "loo_n")


def rater_row(raters: Mapping[str, np.ndarray], i: int) -> dict[str, float | int | None]:
    """One rater's figures as JSON-ready values (counts as ints, shares rounded, None for a
    figure without data)."""
    row: dict[str, float | int | None] = {}
    for name in RATER_FIGURES:
        x = float(raters[name][i])
        if name in COUNT_FIGURES:
            row[name] = int(x) if math.isfinite(x) else 0
        elif name == "side_p":
            row[name] = None if not math.isfinite(x) else float(f"{x:.3g}")
        else:
            row[name] = _round(x)
    return row


def empty_row() -> dict[str, float | int | None]:
    """The figures of a rater without judgments."""
    return {name: 0 if name in COUNT_FIGURES else None for name in RATER_FIGURES}


def rater_decision(fig: Mapping[str, float | int | None], th: Thresholds
                   ) -> tuple[str | None, str]:
    """(status, reason in words) for one rater's figures (a :func:`rater_row`): ``excluded``
    when an exclusion rule holds, else ``flagged`` when a warning rule holds, else
    ``trusted``; None before ``min_answers`` (not judged yet)."""
    n = int(fig.get("n_judgments") or 0)
    if n < th.min_answers:
        return None, f"not judged yet: {n} answers of the {th.min_answers} needed"
    excluded: list[str] = []
    flagged: list[str] = []

    def get(name: str) -> float | None:
        x = fig.get(name)
        return None if x is None else float(x)

    gold, gold_n = get("gold_accuracy"), int(fig.get("gold_n") or 0)
    if gold is not None and gold_n >= th.min_gold:
        text = f"gold accuracy {gold:.2f} over {gold_n} gold items"
        if gold < th.gold_accuracy_exclude:
            excluded.append(f"{text}, below {th.gold_accuracy_exclude:.2f}")
        elif gold < th.gold_accuracy_flag:
            flagged.append(f"{text}, below {th.gold_accuracy_flag:.2f}")
    catch, catch_n = get("catch_accuracy"), int(fig.get("catch_n") or 0)
    if catch is not None:
        failed = catch_n - int(fig.get("catch_passed") or 0)
        text = f"{failed} of {catch_n} catch items failed (accuracy {catch:.2f})"
        if catch_n >= th.min_catch_exclude and catch < th.catch_accuracy_exclude:
            excluded.append(f"{text}, below {th.catch_accuracy_exclude:.2f}")
        elif catch_n >= th.min_catch and catch < th.catch_accuracy_flag:
            flagged.append(f"{text}, below {th.catch_accuracy_flag:.2f}")
    rep, rep_n = get("repeat_consistency"), int(fig.get("repeat_n") or 0)
    if rep is not None and rep_n >= th.min_repeats and rep < th.repeat_consistency_flag:
        flagged.append(f"answered {rep:.2f} of {rep_n} hidden repeats the same way, below "
                       f"{th.repeat_consistency_flag:.2f}")
    share, p, dec_n = get("left_share"), get("side_p"), int(fig.get("decisive_n") or 0)
    if share is not None and p is not None and dec_n >= th.min_decisive:
        side, s = ("left", share) if share >= 0.5 else ("right", 1.0 - share)
        if p < th.side_bias_p and s > th.side_bias_share:
            flagged.append(f"pressed {side} in {s:.0%} of {dec_n} decisive answers (binomial "
                           f"p = {p:.1e} < {th.side_bias_p:g}, share above "
                           f"{th.side_bias_share:.0%})")
    fast, timed = get("fast_share"), int(fig.get("timed_n") or 0)
    if fast is not None and timed >= th.min_answers and fast > th.fast_share_flag:
        flagged.append(f"{fast:.0%} of {timed} answers decided in under "
                       f"{th.fast_fraction:.0%} of the clip's length (more than "
                       f"{th.fast_share_flag:.0%})")
    loo, loo_n = get("loo_agreement"), int(fig.get("loo_n") or 0)
    if loo is not None and loo_n >= th.min_regular and loo < th.loo_agreement_flag:
        flagged.append(f"agreed with the others' majority on {loo:.2f} of {loo_n} items, below "
                       f"{th.loo_agreement_flag:.2f}")
    rel, reg_n = get("reliability"), int(fig.get("regular_n") or 0)
    if rel is not None and reg_n >= th.min_regular:
        text = f"reliability {rel:.2f} over {reg_n} comparisons"
        if rel < th.reliability_exclude:
            excluded.append(f"{text}, below {th.reliability_exclude:.2f}")
        elif rel < th.reliability_flag:
            flagged.append(f"{text}, below {th.reliability_flag:.2f}")
    if excluded:
        return "excluded", "; ".join(excluded + flagged)
    if flagged:
        return "flagged", "; ".join(flagged)
    return "trusted", f"within every threshold ({n} answers)"
