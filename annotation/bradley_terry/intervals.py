"""Intervals for a fit: the sandwich (robust) covariance and the bootstrap."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.stats import norm

from .data import I_WON, J_WON, TIE
from .fitting import Fit
from .newton import _derivatives, _kernel, _newton, _Problem, _State, _Weights

DENSE_LIMIT = 2000  # players up to which the sandwich covariance is computed exactly


@dataclass(frozen=True, eq=False)
class Intervals:
    """Two-sided intervals at ``level`` for each log-strength and for ν."""

    lo: np.ndarray  # (P,)
    hi: np.ndarray  # (P,)
    nu_lo: float
    nu_hi: float
    level: float
    method: str  # "sandwich" or "bootstrap"
    rounds: int = 0


def _at_optimum(fitted: Fit) -> tuple[_Problem, _Weights, _State]:
    problem = _Problem(fitted.data)
    w = _Weights(fitted.data.counts, fitted.model == "davidson" and fitted.nu > 0)
    lam = float(np.log(fitted.nu)) if w.ties else 0.0
    return problem, w, _State(problem, w, fitted.strengths, lam, fitted.ridge)


def sandwich(fitted: Fit, *, level: float = 0.95, dense_limit: int = DENSE_LIMIT) -> Intervals:
    """Normal intervals from the robust covariance H⁻¹·B·H⁻¹ (scores summed per cluster when
    the data has clusters)."""
    data = fitted.data
    problem, w, s = _at_optimum(fitted)
    p, with_lam = data.n_players, w.ties
    g, edge, diag, _, border, h_ll = _derivatives(problem, w, s, fitted.ridge)
    # Each judgment's score: ∂ log-likelihood / ∂(θᵢ − θⱼ) and / ∂λ, by its outcome.
    q, _, pt, _ = _kernel(s)
    row, outcome = data.cell // 3, data.cell % 3
    keep = outcome != TIE if not with_lam else np.ones(len(row), dtype=bool)
    row, outcome, wk = row[keep], outcome[keep], data.weight[keep]
    sd = np.where(outcome == I_WON, 0.5, np.where(outcome == J_WON, -0.5, 0.0)) - 0.5 * q[row]
    cl = (data.cluster[keep] if data.cluster is not None
          else np.arange(len(data.cell))[keep])
    cols = [data.i[row], data.j[row]]
    vals = [wk * sd, -wk * sd]
    if with_lam:
        cols.append(np.full(len(row), p))
        vals.append(wk * ((outcome == TIE) - pt[row]))
    m = p + (1 if with_lam else 0)
    scores = sparse.csr_matrix((np.concatenate(vals), (np.tile(cl, len(cols)),
                                                       np.concatenate(cols))),
                               shape=(max(data.n_clusters, 1), m))
    if m <= dense_limit:
        hess = np.zeros((m, m))
        hess[data.i, data.j] -= edge
        hess[data.j, data.i] -= edge
        hess[np.arange(p), np.arange(p)] += diag
        if with_lam:
            hess[:p, p] = hess[p, :p] = border
            hess[p, p] = h_ll
        inv = np.linalg.inv(hess) if m else hess
        meat = (scores.T @ scores).toarray()
        var = np.sum((inv @ meat) * inv, axis=1)  # diag(H⁻¹ B H⁻¹), H⁻¹ symmetric
    else:
        meat_diag = np.asarray(scores.multiply(scores).sum(axis=0)).reshape(-1)
        h_diag = np.append(diag, h_ll) if with_lam else diag
        var = meat_diag / h_diag ** 2
    se = np.sqrt(np.clip(var, 0.0, None))
    zq = float(norm.ppf(0.5 + level / 2))
    lo, hi = fitted.strengths - zq * se[:p], fitted.strengths + zq * se[:p]
    nu_lo = nu_hi = fitted.nu
    if with_lam:
        lam = np.log(fitted.nu)
        nu_lo, nu_hi = float(np.exp(lam - zq * se[p])), float(np.exp(lam + zq * se[p]))
    return Intervals(lo=lo, hi=hi, nu_lo=nu_lo, nu_hi=nu_hi, level=level, method="sandwich")


def bootstrap(fitted: Fit, *, rounds: int = 100, seed: int = 0, level: float = 0.95,
              tol: float = 1e-6) -> Intervals:
    """Percentile intervals over ``rounds`` refits on data resampled with replacement
    (judgments, or clusters when the data has them), each refit started at ``fitted``.
    A round stops at a looser ``tol`` than a fit: its error is then a few thousandths of a
    log-strength, far inside the spread between rounds."""
    if rounds < 1:
        raise ValueError(f"rounds: expected >= 1, got {rounds}")
    data = fitted.data
    problem = _Problem(data)
    rng = np.random.default_rng(seed)
    ties = fitted.model == "davidson" and fitted.nu > 0
    lam0 = float(np.log(fitted.nu)) if ties else 0.0
    # Every round starts at the full fit: the per-row probabilities there are computed once.
    base = _State(problem, _Weights(data.counts, ties), fitted.strengths, lam0, fitted.ridge)
    _kernel(base)
    thetas = np.empty((rounds, data.n_players))
    nus = np.zeros(rounds)
    size = 3 * len(data.i)
    for k in range(rounds):
        times = np.bincount(rng.integers(0, max(data.n_clusters, 1), data.n_clusters),
                            minlength=data.n_clusters).astype(np.float64)
        if data.cluster is not None:
            times = times[data.cluster]
        counts = np.bincount(data.cell, data.weight * times, minlength=size).reshape(-1, 3)
        w = _Weights(counts, ties, keep_nu=ties)
        theta, lam, _, _, _ = _newton(problem, w, fitted.strengths, lam0, ridge=fitted.ridge,
                                      tol=tol, max_iter=50, start=base.reweighed(w, fitted.ridge),
                                      evaluate_last=False)
        thetas[k] = problem.centre(theta)
        nus[k] = np.exp(lam) if ties else 0.0
    tails = [50 * (1 - level), 50 * (1 + level)]
    lo, hi = np.percentile(thetas, tails, axis=0)
    nu_lo, nu_hi = np.percentile(nus, tails)
    return Intervals(lo=lo, hi=hi, nu_lo=float(nu_lo), nu_hi=float(nu_hi), level=level,
                     method="bootstrap", rounds=rounds)
