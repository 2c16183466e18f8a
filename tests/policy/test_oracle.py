"""The rule-based oracle: bad input, hand-made cases, and ground truth vs. wrong responses."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest

from policy.oracle import (
    WEIGHTS,
    WRONG_KINDS,
    EpisodeContext,
    OracleScore,
    oracle_score,
    wrong_response,
)
from policy.synthetic import generate_corpus, generate_episode
from rendering.layouts import BUILTIN

SEED = 2024
N_EPISODES = 500
SEPARATION_THRESHOLD = 0.95  # gt must beat each wrong kind on at least this share of episodes
GT_MEAN_MIN = 0.95  # documented: ground truth of any profile scores high (docs/synthetic_corpus.md)
GT_MIN = 0.9
IX = {name: BUILTIN.index(name) for name in BUILTIN.names}
FPS = 30


@functools.cache
def scored_corpus() -> tuple[tuple[np.ndarray, EpisodeContext, dict], ...]:
    """(listener, context, profile) of each episode; audio is dropped to keep memory small."""
    out = []
    for ep in generate_corpus(N_EPISODES, SEED):
        ctx = EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=len(ep.listener))
        out.append((ep.listener, ctx, ep.meta["listener_profile"]))
    return tuple(out)


def context_of(seed: int = 3, index: int = 0) -> tuple[np.ndarray, EpisodeContext]:
    ep = generate_episode(seed, index)
    return ep.listener, EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=len(ep.listener))


def alive_still_face(n: int, pauses: tuple = ()) -> np.ndarray:
    """A listener at rest: blinks every ~3 s, slow head drift, nods at the given pauses."""
    t = np.arange(n) / FPS
    x = np.zeros((n, BUILTIN.width))
    x[:, IX["eye_blink"]] = np.clip(np.cos(2 * np.pi * (t - 1.0) / 3.0) * 12 - 11, 0, 1)
    x[:, IX["head_yaw"]] = 0.03 * np.sin(2 * np.pi * 0.2 * t)
    x[:, IX["head_roll"]] = 0.02 * np.sin(2 * np.pi * 0.13 * t + 1)
    for start, _end in pauses:
        tau = t - start - 0.2
        nod = 0.04 * (1 - np.cos(2 * np.pi * 2.0 * tau))
        x[:, IX["head_pitch"]] += np.where((tau >= 0) & (tau <= 0.5), nod, 0.0)
    return x


def test_ground_truth_beats_every_wrong_response_on_at_least_95_percent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gt_totals = np.array([oracle_score(x, ctx).total for x, ctx, _ in scored_corpus()])
    rates = {}
    for k, kind in enumerate(WRONG_KINDS):
        wins = []
        for i, (x, ctx, _) in enumerate(scored_corpus()):
            rng = np.random.default_rng([SEED, i, k])
            wins.append(gt_totals[i] > oracle_score(wrong_response(x, ctx, kind, rng), ctx).total)
        rates[kind] = float(np.mean(wins))
    with capsys.disabled():
        print(f"\noracle separation on {N_EPISODES} episodes (threshold {SEPARATION_THRESHOLD}):")
        for kind, rate in rates.items():
            print(f"  gt > {kind:<13s} {rate:.3f}")
    assert all(rate >= SEPARATION_THRESHOLD for rate in rates.values()), rates


def test_ground_truth_of_every_profile_scores_high() -> None:
    scores = [oracle_score(x, ctx) for x, ctx, _ in scored_corpus()]
    totals = np.array([s.total for s in scores])
    assert totals.mean() >= GT_MEAN_MIN and totals.min() >= GT_MIN
    # including the extreme profiles: the slowest and fastest responders, least and most expressive
    profiles = [p for _, _, p in scored_corpus()]
    for key in ("lag_s", "gain"):
        values = np.array([p[key] for p in profiles])
        for i in (int(values.argmin()), int(values.argmax())):
            assert totals[i] >= GT_MIN, (key, profiles[i])


def test_scores_are_deterministic_and_in_unit_range() -> None:
    x, ctx = context_of()
    a = oracle_score(x, ctx)
    b = oracle_score(x.copy(), EpisodeContext.from_meta(generate_episode(3, 0).meta, fps=FPS,
                                                        n_frames=len(x)))
    assert a == b
    rng = np.random.default_rng(0)
    candidates = [
        x,
        np.zeros_like(x),
        rng.uniform(-5, 5, x.shape),  # far outside the layout's ranges
        np.full(x.shape, 1e6),
        rng.uniform(BUILTIN.low, BUILTIN.high, x.shape),
    ]
    for c in candidates:
        s = oracle_score(c, ctx)
        assert isinstance(s, OracleScore)
        values = s.as_dict()
        assert set(values) == {"appropriateness", "timing", "naturalness", "total"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
        expected = sum(WEIGHTS[k] * values[k] for k in WEIGHTS)
        assert values["total"] == pytest.approx(expected)


def test_out_of_range_values_cost_naturalness() -> None:
    x, ctx = context_of()
    pushed = x.astype(np.float64)
    pushed[:, IX["head_yaw"]] += 2.0  # far beyond +-0.8 rad
    assert oracle_score(pushed, ctx).naturalness < oracle_score(x, ctx).naturalness - 0.15


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: np.where(np.arange(len(x))[:, None] == 5, np.nan, x), "NaN or infinite"),
        (lambda x: np.where(np.arange(len(x))[:, None] == 9, np.inf, x), "NaN or infinite"),
        (lambda x: x[:, :17], "17 dims"),
        (lambda x: x[:, 0], "2-D"),
        (lambda x: x[:0], "zero frames"),
        (lambda x: x[:-1], "frames but the episode has"),
        (lambda x: np.concatenate([x, x[:3]]), "frames but the episode has"),
    ],
)
def test_bad_candidates_are_refused_with_a_clear_message(
    make: Callable[[np.ndarray], np.ndarray], message: str
) -> None:
    x, ctx = context_of()
    with pytest.raises(ValueError, match=message):
        oracle_score(make(x), ctx)


def test_bad_contexts_are_refused() -> None:
    meta = generate_episode(3, 0).meta
    with pytest.raises(ValueError, match="no 'sentences'"):
        EpisodeContext.from_meta({"pauses": []}, fps=30, n_frames=100)
    with pytest.raises(ValueError, match="sentiment"):
        bad = dict(meta, sentences=[dict(meta["sentences"][0], sentiment="ecstatic")])
        EpisodeContext.from_meta(bad, fps=30, n_frames=100)
    with pytest.raises(ValueError, match="start"):
        EpisodeContext.from_meta({"sentences": [{"text": "x", "sentiment": "neutral"}]}, fps=30,
                                 n_frames=100)
    with pytest.raises(ValueError, match="n_frames"):
        EpisodeContext.from_meta(meta, fps=30, n_frames=0)
    with pytest.raises(ValueError, match="fps"):
        EpisodeContext.from_meta(meta, fps=0, n_frames=100)


def test_a_context_built_from_lists_scores_like_one_built_from_tuples() -> None:
    x, ctx = context_of()
    listed = EpisodeContext(fps=ctx.fps, n_frames=ctx.n_frames,
                            sentences=[list(s) for s in ctx.sentences],
                            pauses=[list(p) for p in ctx.pauses])
    assert listed == ctx and oracle_score(x, listed) == oracle_score(x, ctx)


def test_without_pauses_the_gaps_between_sentences_are_used() -> None:
    meta = {"sentences": [{"start": 0.5, "end": 2.0, "sentiment": "neutral"},
                          {"start": 2.8, "end": 4.0, "sentiment": "positive"}]}
    ctx = EpisodeContext.from_meta(meta, fps=30, n_frames=180)
    assert ctx.pauses == ((2.0, 2.8),)


def test_on_neutral_talk_a_still_face_beats_a_constant_smile() -> None:
    # given: an episode where the speaker only states plain facts
    pauses = ((2.6, 3.4), (6.0, 8.0))
    ctx = EpisodeContext(fps=FPS, n_frames=240, pauses=pauses,
                         sentences=((0.4, 2.6, "neutral"), (3.4, 6.0, "neutral")))
    still = alive_still_face(240, pauses)
    smiling = still.copy()
    smiling[:, [IX["smile_left"], IX["smile_right"]]] = 0.6
    smiling[:, IX["cheek_raise"]] = 0.35
    # when
    s_still, s_smiling = oracle_score(still, ctx), oracle_score(smiling, ctx)
    # then
    assert s_still.appropriateness > 0.95 and s_smiling.appropriateness < 0.05
    assert s_still.total > s_smiling.total + 0.3


def test_a_smile_after_the_cue_beats_one_before_it() -> None:
    pauses = ((3.0, 3.8), (6.0, 8.0))
    ctx = EpisodeContext(fps=FPS, n_frames=240, pauses=pauses,
                         sentences=((3.8, 6.0, "positive"), (0.4, 3.0, "neutral")))
    t = np.arange(240) / FPS

    def smiling_from(onset: float) -> np.ndarray:
        x = alive_still_face(240, pauses)
        ramp = np.clip((t - onset) / 0.4, 0, 1) * np.clip((7.2 - t) / 0.5, 0, 1)
        x[:, [IX["smile_left"], IX["smile_right"]]] = 0.5 * ramp[:, None]
        return x

    on_time = oracle_score(smiling_from(3.8 + 0.5), ctx)
    early = oracle_score(smiling_from(3.8 - 1.2), ctx)  # smiling before the good news is told
    late = oracle_score(smiling_from(3.8 + 2.0), ctx)
    assert on_time.timing > early.timing + 0.1 and on_time.timing > late.timing + 0.1
    assert on_time.total > max(early.total, late.total)


def test_nodding_at_pauses_beats_nodding_elsewhere() -> None:
    pauses = ((2.6, 3.4), (6.0, 8.0))
    ctx = EpisodeContext(fps=FPS, n_frames=240, pauses=pauses,
                         sentences=((0.4, 2.6, "neutral"), (3.4, 6.0, "neutral")))
    at_pauses = alive_still_face(240, pauses)
    elsewhere = alive_still_face(240, ((1.2, 1.3), (4.6, 4.7)))
    assert oracle_score(at_pauses, ctx).timing > oracle_score(elsewhere, ctx).timing + 0.2


def test_wrong_responses_keep_the_shape_and_range_and_are_deterministic() -> None:
    x, ctx = context_of()
    for kind in WRONG_KINDS:
        a = wrong_response(x, ctx, kind, np.random.default_rng(5))
        b = wrong_response(x, ctx, kind, np.random.default_rng(5))
        assert a.shape == x.shape and a.dtype == np.float32
        assert np.array_equal(a, b)
        assert (a >= BUILTIN.low).all() and (a <= BUILTIN.high).all()
        assert not np.allclose(a, x)
    swapped = wrong_response(x, ctx, "valence_swap", np.random.default_rng(0))
    smile = x[:, [IX["smile_left"], IX["smile_right"]]].mean(1)
    brow = swapped[:, IX["brow_inner_raise"]]
    assert np.corrcoef(smile, brow)[0, 1] > 0.95  # concern where the smile was
    frozen = wrong_response(x, ctx, "frozen", np.random.default_rng(0))
    assert np.ptp(frozen, axis=0).max() == 0


def test_unknown_wrong_kind_is_refused() -> None:
    x, ctx = context_of()
    with pytest.raises(ValueError, match="unknown wrong-response kind"):
        wrong_response(x, ctx, "sarcastic", np.random.default_rng(0))
