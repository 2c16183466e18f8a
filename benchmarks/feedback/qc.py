"""Quality control of 1,000,000 simulated judgments held in arrays (``--quick``: 20,000).

``qc_s`` is everything a run computes after loading: every per-rater figure (probe accuracy,
side bias with its binomial tests, decision time, leave-one-out agreement, the reliability EM),
per-item agreement, Krippendorff's alpha, the episodes' preference cycles, and a decision for
every rater. The raters are simulated by kind (careful, noisy, left-biased, random, as
``annotation.simulation``), so the figures also say how well the rules sort them.

Comparisons in the same run: one EM iteration written as the naive loop over judgments (timed
on a slice, scaled to the full size), and crowd-kit's NoisyBradleyTerry and MACE on a subset
when crowd-kit is installed (optional; ``pip install crowd-kit``).
"""

from __future__ import annotations

import math
import time

import numpy as np

from feedback import qc

KINDS = ("careful", "noisy", "left-biased", "random")
KIND_SHARES = (0.6, 0.25, 0.1, 0.05)
ANSWERS_PER_RATER = 500
ITEMS_PER_EPISODE = 10  # every pair of 5 candidates (4 samples and the ground truth)
_PI = np.array([i for i in range(5) for j in range(i + 1, 5)])
_PJ = np.array([j for i in range(5) for j in range(i + 1, 5)])
# P(probe passed) by kind: gold, catch (identical clips: "about the same"), hidden repeat.
_PASS = {"careful": (0.97, 0.95, 0.9), "noisy": (0.9, 0.1, 0.7),
         "left-biased": (0.65, 0.3, 0.55), "random": (0.25, 0.25, 0.3)}


def simulate(n: int, *, seed: int = 0) -> tuple[qc.QcData, np.ndarray]:
    """``n`` judgments by simulated raters; (data, kind index per rater)."""
    rng = np.random.default_rng(seed)
    n_raters = max(20, n // ANSWERS_PER_RATER)
    kinds = rng.choice(len(KINDS), size=n_raters, p=KIND_SHARES)
    kinds[: len(KINDS)] = np.arange(len(KINDS))  # every kind at least once
    n_items = max(ITEMS_PER_EPISODE, n // 10 // ITEMS_PER_EPISODE * ITEMS_PER_EPISODE)
    n_episodes = n_items // ITEMS_PER_EPISODE
    quality = rng.normal(0.0, 0.3, size=(n_episodes, 5))  # oracle totals, roughly
    clip_ms = rng.uniform(4000, 12000, size=n_episodes)

    rater = rng.integers(0, n_raters, n)
    kind = kinds[rater]
    u = rng.random(n)
    probe = np.select([u < 0.10, u < 0.15, u < 0.20],
                      [qc.PROBE_GOLD, qc.PROBE_CATCH, qc.PROBE_REPEAT], qc.PROBE_NONE
                      ).astype(np.int8)
    item = rng.integers(0, n_items, n)
    ep, pair = item // ITEMS_PER_EPISODE, item % ITEMS_PER_EPISODE
    diff = quality[ep, _PI[pair]] - quality[ep, _PJ[pair]]  # (N,) slot 0 minus slot 1
    a_on_left = rng.random(n) < 0.5
    careful = np.where(np.abs(diff) < 0.05, qc.NOPREF, np.where(diff > 0, qc.A, qc.B))
    noisy = np.where(rng.random(n) < 1 / (1 + np.exp(-diff / 0.08)), qc.A, qc.B)
    left = np.where(a_on_left, qc.A, qc.B)
    biased = np.where(rng.random(n) < 0.7, left, careful)
    pressed = rng.integers(0, 4, n)  # random raters: any of the four keys
    random_outcome = np.where(pressed == qc.LEFT, left, np.where(
        pressed == qc.RIGHT, np.where(a_on_left, qc.B, qc.A), qc.NOPREF))
    outcome = np.choose(kind, [careful, noisy, biased, random_outcome]).astype(np.int8)
    choice = np.where(outcome == qc.NOPREF, qc.TIE,
                      np.where((outcome == qc.A) == a_on_left, qc.LEFT, qc.RIGHT))
    choice = np.where(kind == 3, pressed, choice).astype(np.int8)
    p_pass = np.array([_PASS[k] for k in KINDS])  # (4 kinds, 3 probes)
    passed = np.full(n, np.nan)
    is_probe = probe != qc.PROBE_NONE
    passed[is_probe] = (rng.random(is_probe.sum())
                        < p_pass[kind[is_probe], probe[is_probe] - 1]).astype(float)
    # seconds after the clips unlock; random raters press at once
    decision_ms = np.where(kind == 3, rng.exponential(400, n), rng.lognormal(7.8, 0.6, n))
    regular = probe == qc.PROBE_NONE
    data = qc.QcData(
        n_raters=n_raters, rater=rater, probe=probe, passed=passed, choice=choice,
        decision_ms=decision_ms, clip_ms=clip_ms[ep], c_rater=rater[regular],
        c_unit=item[regular], c_label=outcome[regular].astype(np.int64),
        unit_episode=np.arange(n_items) // ITEMS_PER_EPISODE,
        unit_cands=np.stack([np.arange(n_items) // ITEMS_PER_EPISODE * 5 + _PI[
            np.arange(n_items) % ITEMS_PER_EPISODE], np.arange(n_items) // ITEMS_PER_EPISODE
            * 5 + _PJ[np.arange(n_items) % ITEMS_PER_EPISODE]], 1),
        unit_item=np.arange(n_items),
    )
    return data, kinds


def run_qc(data: qc.QcData, th: qc.Thresholds) -> tuple[qc.QcResult, list[str | None]]:
    """What a run computes after loading: the figures and a decision per rater."""
    result = qc.compute(data, th)
    statuses = [qc.rater_decision(qc.rater_row(result.raters, i), th)[0]
                for i in range(data.n_raters)]
    return result, statuses


def naive_em_iteration(rater, unit, label, theta, xi, n_units: int) -> float:
    """One E-step of the same EM as a loop over judgments, the way it is usually written;
    returns the seconds it took."""
    t = time.perf_counter()
    log_post = [[0.0] * qc.N_LABELS for _ in range(n_units)]
    for r, u, lab in zip(rater.tolist(), unit.tolist(), label.tolist()):
        for k in range(qc.N_LABELS):
            p = (theta[r] if k == lab else 0.0) + (1 - theta[r]) * xi[r][lab]
            log_post[u][k] += math.log(p)
    del log_post
    return time.perf_counter() - t


def _crowdkit(data: qc.QcData, n: int) -> dict:
    try:
        import pandas as pd
        from crowdkit.aggregation import MACE, NoisyBT
    except ImportError:
        return {"crowdkit": "not installed"}
    sel = np.arange(min(n, len(data.c_label)))
    labels = data.c_label[sel]
    decisive = labels != qc.NOPREF
    out: dict = {"crowdkit_n": int(len(sel))}
    cands = data.unit_cands[data.c_unit[sel]]
    win = np.where(labels == qc.A, cands[:, 0], cands[:, 1])
    lose = np.where(labels == qc.A, cands[:, 1], cands[:, 0])
    df = pd.DataFrame({"worker": data.c_rater[sel][decisive], "left": win[decisive],
                       "right": lose[decisive], "label": win[decisive]})
    t = time.perf_counter()
    NoisyBT(n_iter=100).fit(df)
    out["crowdkit_noisybt_s"] = round(time.perf_counter() - t, 3)
    mace_df = pd.DataFrame({"task": data.c_unit[sel], "worker": data.c_rater[sel],
                            "label": labels})
    t = time.perf_counter()
    MACE(n_iter=50).fit(mace_df)
    out["crowdkit_mace_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    qc.reliability_em(data.c_rater[sel], data.c_unit[sel], labels, n_raters=data.n_raters,
                      n_units=data.n_units)
    ours = time.perf_counter() - t
    out["reliability_subset_s"] = round(ours, 4)
    out["noisybt_over_ours"] = round(out["crowdkit_noisybt_s"] / max(ours, 1e-9), 1)
    out["mace_over_ours"] = round(out["crowdkit_mace_s"] / max(ours, 1e-9), 1)
    return out


def measure(*, quick: bool) -> dict:
    n = 20_000 if quick else 1_000_000
    th = qc.Thresholds()
    run_qc(simulate(2_000, seed=1)[0], th)  # imports (scipy.stats, krippendorff) outside the timing
    t = time.perf_counter()
    data, kinds = simulate(n)
    simulate_s = time.perf_counter() - t

    t = time.perf_counter()
    result, statuses = run_qc(data, th)
    qc_s = time.perf_counter() - t

    # The naive loop: one E-step over a slice, scaled to every comparison.
    m = len(data.c_label)
    sl = slice(0, min(m, 50_000))
    theta = np.nan_to_num(result.raters["reliability"], nan=0.5).clip(1e-4, 1 - 1e-4)
    xi = np.full((data.n_raters, qc.N_LABELS), 1.0 / qc.N_LABELS)
    naive = naive_em_iteration(data.c_rater[sl], data.c_unit[sl], data.c_label[sl],
                               theta.tolist(), xi.tolist(), data.n_units)
    naive_per_iteration = naive * m / max(sl.stop, 1)
    ours_per_iteration = result.timings["reliability_s"] / max(
        result.timings["reliability_iterations"], 1)

    by_kind = {}
    rel = result.raters["reliability"]
    for k, name in enumerate(KINDS):
        mine = np.flatnonzero(kinds == k)
        by_kind[name] = {
            "raters": int(len(mine)),
            "reliability_mean": round(float(np.nanmean(rel[mine])), 3) if len(mine) else None,
            **{s: sum(1 for i in mine if statuses[i] == s)
               for s in ("trusted", "flagged", "excluded")},
        }
    c = result.campaign
    figures = {
        "qc_n_judgments": n,
        "qc_n_raters": data.n_raters,
        "qc_n_items": data.n_units,
        "qc_simulate_s": round(simulate_s, 3),
        "qc_s": round(qc_s, 3),
        **{f"qc_{k}": round(v, 4) if isinstance(v, float) else v
           for k, v in result.timings.items()},
        "qc_em_iteration_s": round(ours_per_iteration, 4),
        "qc_naive_em_iteration_s": round(naive_per_iteration, 3),
        "qc_em_iteration_speedup": round(naive_per_iteration / max(ours_per_iteration, 1e-9), 1),
        "qc_agreement_decisive": c["agreement_decisive"],
        "qc_alpha_nominal": c["alpha"]["nominal"],
        "qc_cycles": c["cycles"]["cycles"],
        "qc_triads": c["cycles"]["triads"],
        "qc_status_by_kind": by_kind,
    }
    figures.update({f"qc_{k}": v for k, v in _crowdkit(data, 2_000 if quick else 20_000).items()})
    return figures


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(measure(quick=parser.parse_args().quick), indent=2))
