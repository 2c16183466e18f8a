"""Bradley–Terry at scale: ``annotation.bradley_terry`` against choix on simulated judgments.

1,000,000 judgments over 10,000 candidates (``--quick``: 20,000 over 500), drawn from Davidson's
model (true log-strengths N(0, 1), ν = 0.5: about a fifth of the judgments are ties, a rater
who cannot tell). Figures:

* ``bt_fit_s``, ``bt_loglik``: the plain (no-tie) fit on the decisive judgments with the
  platform's default prior, and its mean log-likelihood per decisive judgment
  (``bt_mle_loglik``: the same without the prior);
* ``choix_fit_s``, ``choix_loglik``: choix's fastest estimator (``ilsr_pairwise``) on the same
  judgments, its log-likelihood computed by the same function, per judgment;
* ``bt_ties_fit_s``: Davidson's model on every judgment (ties as ties);
* ``bootstrap_rounds``, ``bootstrap_s``: percentile intervals of the Davidson fit by resampling.

Every timing includes the de-duplication of the judgments (from index arrays to the fit).
"""

from __future__ import annotations

import time

import numpy as np
from scipy.stats import spearmanr

from annotation import bradley_terry as bt

SEED = 7
NU = 0.5  # true tie parameter: P(tie) = 0.2 between equals
ROUNDS = 100


def measure(*, quick: bool) -> dict:
    n, players = (20_000, 500) if quick else (1_000_000, 10_000)
    rng = np.random.default_rng(SEED)
    truth = rng.normal(0.0, 1.0, players)
    truth -= truth.mean()
    winners, losers, tie_a, tie_b = bt.simulate(truth, n, nu=NU, rng=rng)
    out: dict = {"n_judgments": n, "n_players": players, "n_decisive": len(winners),
                 "n_ties": len(tie_a), "nu_true": NU}

    t0 = time.perf_counter()
    plain = bt.fit(winners, losers, n_players=players, ties=False)
    out["bt_fit_s"] = round(time.perf_counter() - t0, 3)
    decisive = plain.data
    out["bt_loglik"] = bt.log_likelihood(decisive, plain.strengths) / len(winners)
    out["bt_iterations"] = plain.iterations
    # The same fit without the prior (the plain maximum-likelihood estimate, as choix computes
    # it): what is left of any gap to choix is the prior's, not the optimiser's.
    mle = bt.fit(winners, losers, n_players=players, ties=False, ridge=0.0)
    out["bt_mle_loglik"] = mle.loglik / len(winners)

    t0 = time.perf_counter()
    davidson = bt.fit(winners, losers, tie_a, tie_b, n_players=players)
    out["bt_ties_fit_s"] = round(time.perf_counter() - t0, 3)
    out["bt_ties_iterations"] = davidson.iterations
    out["nu_fitted"] = round(davidson.nu, 4)
    out["spearman_vs_truth"] = round(float(spearmanr(davidson.strengths, truth).statistic), 4)
    out["spearman_plain_vs_truth"] = round(float(spearmanr(plain.strengths, truth).statistic), 4)

    t0 = time.perf_counter()
    sandwich = bt.sandwich(davidson)
    out["sandwich_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    boot = bt.bootstrap(davidson, rounds=ROUNDS, seed=SEED)
    out["bootstrap_rounds"] = ROUNDS
    out["bootstrap_s"] = round(time.perf_counter() - t0, 2)
    for name, iv in (("sandwich", sandwich), ("bootstrap", boot)):
        out[f"{name}_coverage"] = round(float(np.mean((iv.lo <= truth) & (truth <= iv.hi))), 3)

    out.update(_choix(players, winners, losers, decisive))
    if "choix_fit_s" in out:
        out["choix_over_bt_fit"] = round(out["choix_fit_s"] / max(out["bt_fit_s"], 1e-9), 1)
    return out


def _choix(players: int, winners: np.ndarray, losers: np.ndarray,
           decisive: bt.Comparisons) -> dict:
    try:
        import choix
    except ImportError:
        return {"choix": "not installed"}
    pairs = np.column_stack([winners, losers]).tolist()
    t0 = time.perf_counter()
    params = choix.ilsr_pairwise(players, pairs, alpha=0.0)
    seconds = time.perf_counter() - t0
    return {"choix_fit_s": round(seconds, 2),
            "choix_loglik": bt.log_likelihood(decisive, np.asarray(params)) / len(winners),
            "choix_method": "ilsr_pairwise(alpha=0)"}
