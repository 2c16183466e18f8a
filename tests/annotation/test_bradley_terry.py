"""Bradley–Terry with ties (annotation.bradley_terry): recovery, the tie parameter, agreement with
choix, intervals, degenerate and bad input. Pure NumPy: no database."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from annotation import bradley_terry as bt


def simulated(players: int, judgments: int, *, nu: float, seed: int):
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, 1.0, players)
    truth -= truth.mean()
    return truth, bt.simulate(truth, judgments, nu=nu, rng=rng)


def test_recovers_known_strengths_and_tie_parameter():
    # given 200 players and 50k judgments drawn from Davidson's model with ν = 0.6
    truth, (w, lo, ta, tb) = simulated(200, 50_000, nu=0.6, seed=1)
    assert 0.1 < len(ta) / 50_000 < 0.4  # ties are a real share of the data
    # when fitted
    fitted = bt.fit(w, lo, ta, tb, n_players=200)
    # then the order and the tie parameter come back
    assert fitted.converged and fitted.model == "davidson" and fitted.n == 50_000
    assert spearmanr(fitted.strengths, truth).statistic >= 0.95
    assert abs(fitted.nu - 0.6) < 0.05
    assert abs(fitted.strengths.mean()) < 1e-9
    # and the scale is the model's (no shrinkage toward the middle from counting ties as halves)
    slope = np.polyfit(truth, fitted.strengths, 1)[0]
    assert 0.9 < slope < 1.1


def test_ties_as_half_wins_would_shrink_strengths_the_davidson_fit_does_not():
    truth, (w, lo, ta, tb) = simulated(50, 40_000, nu=2.0, seed=2)
    davidson = bt.fit(w, lo, ta, tb, n_players=50)
    halves = bt.fit(np.concatenate([w, ta, tb]), np.concatenate([lo, tb, ta]), n_players=50,
                    weights=np.concatenate([np.ones(len(w)), np.full(2 * len(ta), 0.5)]),
                    ties=False)
    assert np.polyfit(truth, halves.strengths, 1)[0] < 0.8
    assert 0.9 < np.polyfit(truth, davidson.strengths, 1)[0] < 1.1


def test_plain_fit_matches_choix_on_decisive_judgments():
    choix = pytest.importorskip("choix")
    # given a small set of decisive judgments where every player wins and loses
    truth, (w, lo, _, _) = simulated(15, 3000, nu=0.0, seed=3)
    ridge = 2e-6  # choix's opt_pairwise minimises alpha·‖θ‖² + NLL: ridge = 2·alpha
    ours = bt.fit(w, lo, n_players=15, ties=False, ridge=ridge)
    data = ours.data
    pairs = np.column_stack([w, lo]).tolist()
    theirs = choix.opt_pairwise(15, pairs, alpha=ridge / 2, tol=1e-10)
    ilsr = choix.ilsr_pairwise(15, pairs, alpha=0.0, tol=1e-10, max_iter=500)
    # then the log-likelihoods agree to float tolerance, ours is no worse, same strengths
    ll_ours = bt.log_likelihood(data, ours.strengths)
    assert ll_ours == pytest.approx(ours.loglik, rel=1e-12)
    for params in (theirs, ilsr):
        ll = bt.log_likelihood(data, np.asarray(params))
        assert ll_ours == pytest.approx(ll, rel=1e-7)
        assert ll_ours >= ll - 1e-7 * abs(ll)
        np.testing.assert_allclose(ours.strengths, params - np.mean(params), atol=1e-3)


def test_davidson_without_ties_is_the_plain_model():
    _, (w, lo, _, _) = simulated(20, 2000, nu=0.0, seed=4)
    davidson, plain = bt.fit(w, lo, n_players=20), bt.fit(w, lo, n_players=20, ties=False)
    assert davidson.nu == 0.0
    np.testing.assert_allclose(davidson.strengths, plain.strengths, atol=1e-9)


def test_weights_count_like_repeated_judgments():
    _, (w, lo, ta, tb) = simulated(10, 500, nu=0.5, seed=5)
    twice = bt.fit(np.concatenate([w, w]), np.concatenate([lo, lo]), np.concatenate([ta, ta]),
                   np.concatenate([tb, tb]), n_players=10)
    weighted = bt.fit(w, lo, ta, tb, weights=np.full(len(w), 2.0),
                      tie_weights=np.full(len(ta), 2.0), n_players=10)
    np.testing.assert_allclose(twice.strengths, weighted.strengths, atol=1e-9)
    assert twice.nu == pytest.approx(weighted.nu, rel=1e-9)
    assert twice.loglik == pytest.approx(weighted.loglik, rel=1e-12)


def test_intervals_cover_the_truth_most_of_the_time():
    # given 40 players, 20k judgments and a fixed seed
    truth, (w, lo, ta, tb) = simulated(40, 20_000, nu=0.5, seed=6)
    fitted = bt.fit(w, lo, ta, tb, n_players=40)
    # when intervals are drawn both ways
    sandwich = bt.sandwich(fitted)
    boot = bt.bootstrap(fitted, rounds=60, seed=1)
    # then each covers most true strengths (95 % nominal), and the true ν
    for intervals in (sandwich, boot):
        assert np.all(intervals.lo <= fitted.strengths + 1e-9)
        assert np.all(fitted.strengths <= intervals.hi + 1e-9)
        covered = np.mean((intervals.lo <= truth) & (truth <= intervals.hi))
        assert covered >= 0.8, (intervals.method, covered)
        assert intervals.nu_lo < 0.5 < intervals.nu_hi
    # and the two methods agree on the widths
    ratio = (boot.hi - boot.lo).mean() / (sandwich.hi - sandwich.lo).mean()
    assert 0.7 < ratio < 1.4


def test_clustered_judgments_are_not_counted_as_independent():
    _, (w, lo, ta, tb) = simulated(8, 2000, nu=0.5, seed=7)
    once = bt.sandwich(bt.fit(w, lo, ta, tb, n_players=8))
    doubled = dict(winners=np.repeat(w, 2), losers=np.repeat(lo, 2), tie_a=np.repeat(ta, 2),
                   tie_b=np.repeat(tb, 2), n_players=8)
    naive = bt.sandwich(bt.fit(**doubled))
    clustered = bt.sandwich(bt.fit(**doubled, clusters=np.repeat(np.arange(len(w)), 2),
                                   tie_clusters=np.repeat(np.arange(len(ta)) + len(w), 2)))
    width = lambda iv: iv.hi - iv.lo  # noqa: E731
    np.testing.assert_allclose(width(clustered), width(once), rtol=1e-3)
    np.testing.assert_allclose(width(naive), width(once) / np.sqrt(2), rtol=1e-3)


def test_sandwich_diagonal_approximation_is_close_on_a_well_mixed_graph():
    _, (w, lo, ta, tb) = simulated(60, 30_000, nu=0.5, seed=8)
    fitted = bt.fit(w, lo, ta, tb, n_players=60)
    exact, approx = bt.sandwich(fitted), bt.sandwich(fitted, dense_limit=0)
    np.testing.assert_allclose(approx.hi - approx.lo, exact.hi - exact.lo, rtol=0.1)


@pytest.mark.parametrize("args, players", [
    (([], []), None),  # no judgments at all
    (([], []), 5),  # players but no judgments
    (([], []), 1),  # one player
    (([], [], [0, 1, 2, 0], [1, 2, 0, 2]), 3),  # only ties
    (([0, 0, 0, 1], [1, 2, 1, 2]), 3),  # player 0 unbeaten, player 2 never wins
])
def test_degenerate_inputs_give_finite_results(args, players):
    fitted = bt.fit(*args, n_players=players)
    assert fitted.converged
    assert np.all(np.isfinite(fitted.strengths)) and np.isfinite(fitted.nu)
    assert np.isfinite(fitted.loglik)
    for intervals in (bt.sandwich(fitted), bt.bootstrap(fitted, rounds=5)):
        assert np.all(np.isfinite(intervals.lo)) and np.all(np.isfinite(intervals.hi))
    if len(args) == 4:  # only ties: everyone equal, ties very likely
        np.testing.assert_allclose(fitted.strengths, 0.0, atol=1e-9)
        assert fitted.nu > 2


def test_unbeaten_player_is_first_but_finite():
    fitted = bt.fit([0, 0, 0, 1, 2], [1, 2, 1, 2, 1])
    assert fitted.strengths.argmax() == 0 and fitted.strengths[0] < 20


def test_unconnected_groups_each_have_mean_zero():
    # players 0-2 and 3-5 are never compared across
    fitted = bt.fit([0, 1, 0, 3, 4, 3], [1, 2, 2, 4, 5, 5], [1], [2])
    assert fitted.strengths[:3].sum() == pytest.approx(0.0, abs=1e-9)
    assert fitted.strengths[3:].sum() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("kwargs, message", [
    ({"winners": [0, -1], "losers": [1, 2]}, r"winners: player indices must be >= 0; position 1"),
    ({"winners": [0, 1], "losers": [1, 2], "tie_a": [3], "tie_b": [-2]}, r"tie_b: .*>= 0"),
    ({"winners": [0, 1], "losers": [1]}, "winners and losers differ in length: 2 vs 1"),
    ({"winners": [0], "losers": [1], "tie_a": [0, 1], "tie_b": [2]}, "tie_a and tie_b differ"),
    ({"winners": [0, 1], "losers": [1, 0], "weights": [1.0, np.nan]},
     r"weights: weights must be finite and >= 0; position 1 holds nan"),
    ({"winners": [0, 1], "losers": [1, 0], "weights": [1.0]}, r"weights: expected 2 weights"),
    ({"winners": [0], "losers": [1], "tie_a": [0], "tie_b": [1], "tie_weights": [-1.0]},
     "tie_weights"),
    ({"winners": [0.5], "losers": [1]}, "winners: expected integer player indices"),
    ({"winners": [[0, 1]], "losers": [1]}, "winners: expected a 1-d array"),
    ({"winners": [2], "losers": [2]}, "player 2 is compared with itself"),
    ({"winners": [0], "losers": [4], "n_players": 3}, "n_players: 3 is less than"),
    ({"winners": [0], "losers": [1], "ridge": -1.0}, "ridge"),
])
def test_bad_input_is_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bt.fit(**kwargs)


def test_log_likelihood_checks_its_arguments_and_counts_ties():
    data = bt.comparisons([0], [1], [0], [1])
    with pytest.raises(ValueError, match=r"strengths: expected shape \(2,\)"):
        bt.log_likelihood(data, np.zeros(3))
    assert bt.log_likelihood(data, np.zeros(2), nu=0.0) == -np.inf
    # equal strengths, ν = 1: each of the three outcomes has probability 1/3
    assert bt.log_likelihood(data, np.zeros(2), nu=1.0) == pytest.approx(2 * np.log(1 / 3))
    assert bt.log_likelihood(data, np.zeros(2)) == pytest.approx(np.log(0.5))  # decisive only


def test_win_rates_between_groups():
    # players 0, 1 in group 0, player 2 in group 1
    data = bt.comparisons([0, 2, 1, 0], [2, 1, 2, 1], [0], [2])
    rates = bt.win_rates(data, groups=[0, 0, 1])
    assert rates.wins.tolist() == [[0, 2], [1, 0]]  # 0-1 judgment is within group 0
    assert rates.rate[0, 1] == pytest.approx(2 / 3) and rates.rate[1, 0] == pytest.approx(1 / 3)
    assert np.isnan(rates.rate[0, 0]) and rates.ties[0, 1] == rates.ties[1, 0] == 1
