"""Each rater's reliability, estimated jointly with the units' labels by EM (MACE-style)."""

from __future__ import annotations

import numpy as np

from .data import N_LABELS, _count, unit_counts


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

