"""Fitting Davidson's (or the plain Bradley–Terry) model, and the log-likelihood of given
strengths."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .data import I_WON, J_WON, TIE, Comparisons, comparisons
from .newton import _newton, _Problem, _State, _Weights

RIDGE = 0.01  # precision of the Gaussian prior on each log-strength and on log ν (sd 10)


@dataclass(frozen=True, eq=False)
class Fit:
    """A fitted model. ``strengths`` are log-strengths θ (mean 0 within each connected group of
    players); ``loglik`` is the total weighted log-likelihood of the judgments fitted, prior
    left out; ``n`` counts those judgments (the plain model fits the decisive ones only)."""

    strengths: np.ndarray  # (P,) float64
    nu: float  # Davidson's tie parameter; 0 for the plain model or when there are no ties
    loglik: float
    n: int
    iterations: int  # Newton steps
    converged: bool
    model: str  # "davidson" or "plain"
    ridge: float
    data: Comparisons = field(repr=False)



def _initial_theta(problem: _Problem, counts: np.ndarray) -> np.ndarray:
    """Each player's log-odds of winning a decisive judgment (one win and one loss added):
    the strength against an average opponent, which Newton then corrects in a few steps
    (from 0 it needs two or three more on a wide spread of strengths)."""
    won = problem.by_i(counts[:, I_WON]) + problem.by_j(counts[:, J_WON])
    lost = problem.by_i(counts[:, J_WON]) + problem.by_j(counts[:, I_WON])
    return problem.centre(np.log1p(won) - np.log1p(lost))


def _initial_lam(counts: np.ndarray) -> float:
    """log ν from the share of ties, as if every pair were evenly matched: τ = ν / (2 + ν)."""
    total = float(counts.sum())
    tau = (float(counts[:, TIE].sum()) + 0.5) / (total + 1.0)
    return float(np.log(2 * tau / (1 - tau)))


def fit_comparisons(data: Comparisons, *, ties: bool = True, ridge: float = RIDGE,
                    tol: float = 1e-10, max_iter: int = 100,
                    init: np.ndarray | None = None) -> Fit:
    """Fit Davidson's model (``ties=True``; with no ties in the data it is the plain model
    and ν = 0) or the plain Bradley–Terry model on the decisive judgments (``ties=False``)."""
    if not (ridge >= 0 and np.isfinite(ridge)):
        raise ValueError(f"ridge: expected a finite number >= 0, got {ridge}")
    problem = _Problem(data)
    return _fit(problem, data, data.counts, ties=ties, ridge=ridge, tol=tol,
                max_iter=max_iter, theta=init, lam=None)


def _fit(problem: _Problem, data: Comparisons, counts: np.ndarray, *, ties: bool,
         ridge: float, tol: float, max_iter: int, theta: np.ndarray | None,
         lam: float | None) -> Fit:
    w = _Weights(counts, ties)
    theta = (_initial_theta(problem, counts) if theta is None
             else np.asarray(theta, np.float64))
    lam = (_initial_lam(counts) if lam is None or not np.isfinite(lam) else lam) if w.ties \
        else 0.0
    theta, lam, ll, iterations, converged = _newton(problem, w, theta, lam, ridge=ridge,
                                                    tol=tol, max_iter=max_iter)
    return Fit(strengths=problem.centre(theta), nu=float(np.exp(lam)) if w.ties else 0.0,
               loglik=ll, n=data.n_judgments if ties else data.n_decisive,
               iterations=iterations, converged=converged,
               model="davidson" if ties else "plain", ridge=ridge, data=data)


def fit(winners: object, losers: object, tie_a: object = None, tie_b: object = None, *,
        weights: object = None, tie_weights: object = None, clusters: object = None,
        tie_clusters: object = None, n_players: int | None = None, ties: bool = True,
        ridge: float = RIDGE, tol: float = 1e-10, max_iter: int = 100) -> Fit:
    """Fit from index arrays (see ``comparisons`` for the arguments, ``fit_comparisons`` for
    the model)."""
    data = comparisons(winners, losers, tie_a, tie_b, weights=weights, tie_weights=tie_weights,
                       clusters=clusters, tie_clusters=tie_clusters, n_players=n_players)
    return fit_comparisons(data, ties=ties, ridge=ridge, tol=tol, max_iter=max_iter)


def log_likelihood(data: Comparisons, strengths: np.ndarray, nu: float | None = None) -> float:
    """Total weighted log-likelihood of ``strengths``: the plain model over the decisive
    judgments when ``nu`` is None, Davidson's with this ν over all of them otherwise (−inf if
    ν = 0 and there are ties)."""
    theta = np.asarray(strengths, dtype=np.float64)
    if theta.shape != (data.n_players,):
        raise ValueError(f"strengths: expected shape ({data.n_players},), got {theta.shape}")
    if nu is None:
        return _State(data, _Weights(data.counts, False), theta, 0.0, 0.0).ll
    if not nu >= 0:
        raise ValueError(f"nu: expected a number >= 0, got {nu}")
    if nu == 0:
        return -np.inf if data.counts[:, TIE].sum() > 0 else log_likelihood(data, theta)
    return _State(data, _Weights(data.counts, True, keep_nu=True), theta, float(np.log(nu)),
                  0.0).ll
