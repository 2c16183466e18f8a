"""Simulated judgments under Davidson's model (for tests and benchmarks)."""

from __future__ import annotations

import numpy as np


def simulate(strengths: np.ndarray, n: int, *, nu: float = 0.0,
             rng: np.random.Generator | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` judgments between uniformly drawn pairs of distinct players under Davidson's
    model: (winners, losers, tie_a, tie_b)."""
    rng = rng or np.random.default_rng()
    theta = np.asarray(strengths, dtype=np.float64)
    p = len(theta)
    if p < 2:
        raise ValueError("simulate: needs at least two players")
    a = rng.integers(0, p, n)
    b = (a + rng.integers(1, p, n)) % p  # never a itself
    pi_a, pi_b = np.exp(theta[a] / 2 - theta[b] / 2), np.exp(theta[b] / 2 - theta[a] / 2)
    total = pi_a + pi_b + nu
    draw = rng.random(n) * total
    a_won, b_won = draw < pi_a, (draw >= pi_a) & (draw < pi_a + pi_b)
    tie = ~(a_won | b_won)
    winners = np.where(a_won, a, b)[~tie]
    losers = np.where(a_won, b, a)[~tie]
    return winners, losers, a[tie], b[tie]
