"""Metrics on cases small enough to compute by hand."""

from __future__ import annotations

import numpy as np
import pytest

from policy.ml import metrics as M


def test_l2_is_the_mean_squared_error_over_frames_and_dims():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    gt = np.zeros((2, 2))
    assert M.l2(pred, gt) == pytest.approx((1 + 4 + 9 + 16) / 4)  # 7.5
    assert M.l2(pred, gt, np.array([0])) == pytest.approx((1 + 9) / 2)
    assert M.l2(pred, gt, np.array([1])) == pytest.approx((4 + 16) / 2)


def test_frechet_distance_of_1d_gaussians_has_the_closed_form():
    # N(0, 1) vs N(3, 4): (0 - 3)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 10
    fd = M.frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([3.0]),
                            np.array([[4.0]]), eps=0.0)
    assert fd == pytest.approx(10.0)


def test_frechet_distance_of_diagonal_gaussians():
    # means (0, 0) vs (1, 2): 5; covariances diag(1, 4) vs diag(9, 1):
    # 1 + 4 + 9 + 1 - 2 * (sqrt(9) + sqrt(4)) = 5 ; total 10
    fd = M.frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]),
                            np.diag([9.0, 1.0]), eps=0.0)
    assert fd == pytest.approx(10.0)


def test_frechet_distance_of_non_commuting_covariances_matches_the_definition():
    # S1 = [[2, 1], [1, 2]], S2 = diag(1, 0): S1 S2 = [[2, 0], [1, 0]] has eigenvalues 2 and 0,
    # so Tr((S1 S2)^(1/2)) = sqrt(2): FD = 4 + 1 - 2 sqrt(2)
    s1 = np.array([[2.0, 1.0], [1.0, 2.0]])
    s2 = np.diag([1.0, 0.0])
    fd = M.frechet_distance(np.zeros(2), s1, np.zeros(2), s2, eps=0.0)
    assert fd == pytest.approx(5.0 - 2.0 * np.sqrt(2.0))


def test_fd_of_sequences_uses_mean_and_unbiased_covariance_over_time():
    pred = np.array([[0.0], [2.0]])  # mean 1, unbiased variance 2
    gt = np.array([[1.0], [1.0], [1.0]])  # mean 1, variance 0
    assert M.fd(pred, gt, eps=0.0) == pytest.approx(2.0)
    # the default eps regularises the singular covariance and moves the value only a little
    assert M.fd(pred, gt) == pytest.approx(2.0, abs=0.01)
    assert M.fd(gt, gt) == pytest.approx(0.0, abs=1e-5)


def test_paired_fd_sees_a_constant_offset_of_the_listener_only():
    rng = np.random.default_rng(0)
    speaker = rng.standard_normal((50, 3))
    gt = rng.standard_normal((50, 2))
    # same covariance, listener mean moved by (0.5, -1): P-FD = 0.25 + 1
    assert M.paired_fd(gt + np.array([0.5, -1.0]), gt, speaker) == pytest.approx(1.25, abs=1e-6)
    assert M.paired_fd(gt, gt, speaker) == pytest.approx(0.0, abs=1e-6)


def test_variance_is_the_mean_over_dims_of_the_variance_over_time():
    x = np.array([[0.0, 1.0], [2.0, 1.0]])  # dim 0: variance 1, dim 1: 0
    assert M.variance(x) == pytest.approx(0.5)


def test_si_diversity_is_the_entropy_of_the_cluster_histogram():
    rng = np.random.default_rng(0)
    corners = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    gt = np.concatenate([c + 0.1 * rng.standard_normal((25, 2)) for c in corners])
    centers = M.kmeans(gt, 4, seed=0)
    assert len(centers) == 4
    near = lambda i, n: corners[i] + 0.1 * rng.standard_normal((n, 2))  # noqa: E731
    assert M.si_diversity(near(0, 40), centers) == pytest.approx(0.0)  # one cluster: 0 bits
    two = np.concatenate([near(0, 20), near(3, 20)])
    assert M.si_diversity(two, centers) == pytest.approx(1.0)  # two equal clusters: 1 bit
    four = np.concatenate([near(i, 10) for i in range(4)])
    assert M.si_diversity(four, centers) == pytest.approx(2.0)  # four equal clusters: 2 bits
    # 3/4 and 1/4: -(0.75 log2 0.75 + 0.25 log2 0.25) = 0.8113
    skew = np.concatenate([near(1, 30), near(2, 10)])
    assert M.si_diversity(skew, centers) == pytest.approx(0.811278, abs=1e-5)


def test_frdiv_averages_squared_distances_over_ordered_pairs():
    # K = 2, T = 2, D = 1: ||0 - 1||^2 = 2 for each ordered pair: (2 + 2) / (2 * 1 * 2 * 1) = 1
    assert M.frdiv([np.zeros((2, 1)), np.ones((2, 1))]) == pytest.approx(1.0)
    # K = 3 constants 0, 1, 2 (T = D = 1): ordered pairs 1 + 4 + 1 twice = 12; / (3 * 2) = 2
    assert M.frdiv([np.full((1, 1), v) for v in (0.0, 1.0, 2.0)]) == pytest.approx(2.0)
    assert M.frdiv([np.ones((3, 2))] * 4) == pytest.approx(0.0)


def test_frvar_is_the_mean_over_samples_and_dims_of_the_variance_over_time():
    y = [np.array([[0.0], [2.0]]), np.array([[1.0], [1.0]])]  # variances 1 and 0
    assert M.frvar(y) == pytest.approx(0.5)


def _brute_tlcc(x: np.ndarray, s: np.ndarray, max_lag: int) -> int:
    """The definition, one lag at a time."""
    t = len(x)
    best, best_r = 0, -np.inf
    for lag in range(-max_lag, max_lag + 1):
        a, b = (x[lag:], s[: t - lag]) if lag >= 0 else (x[: t + lag], s[-lag:])
        if len(a) < 3:
            continue
        a, b = a - a.mean(0), b - b.mean(0)
        den = np.sqrt((a**2).sum(0) * (b**2).sum(0))
        ok = den > 1e-12
        r = ((a * b).sum(0)[ok] / den[ok]).mean()
        if r > best_r:
            best, best_r = lag, r
    return best


def test_tlcc_lag_finds_a_known_delay_and_frsyn_averages_its_magnitude():
    rng = np.random.default_rng(1)
    speaker = np.cumsum(rng.standard_normal((200, 3)), axis=0)
    follows = np.roll(speaker, 5, axis=0)  # listener[t] = speaker[t - 5]
    leads = np.roll(speaker, -3, axis=0)  # listener[t] = speaker[t + 3]
    assert M.tlcc_lag(follows, speaker, 20) == 5
    assert M.tlcc_lag(leads, speaker, 20) == -3
    assert M.frsyn([follows, leads], [speaker, speaker], 20) == pytest.approx(4.0)


def test_tlcc_lag_matches_the_one_lag_at_a_time_definition():
    rng = np.random.default_rng(2)
    for _ in range(10):
        x = np.cumsum(rng.standard_normal((60, 4)), axis=0)
        s = np.cumsum(rng.standard_normal((60, 4)), axis=0)
        x[:, 3] = 1.0  # a constant dimension is skipped, not a NaN
        assert M.tlcc_lag(x, s, 25) == _brute_tlcc(x, s, 25)
