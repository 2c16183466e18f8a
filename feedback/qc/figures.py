"""Every figure at once: per rater, per unit and for the campaign (:func:`compute`)."""

from __future__ import annotations

import time

import numpy as np

from .agreement import krippendorff_alpha, loo_agreement, pairwise_agreement, preference_cycles
from .data import (
    HUMAN_CEILING,
    LABELS,
    N_LABELS,
    SCORE_DOMAIN,
    QcData,
    QcResult,
    _count,
    _round,
    _rounded,
    _share,
    unit_counts,
    value_counts,
)
from .decisions import Thresholds
from .probes import decision_speed, probe_figures, side_bias
from .reliability import reliability_em


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

