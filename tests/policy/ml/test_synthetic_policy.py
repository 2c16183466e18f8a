"""The demo policy on the synthetic corpus: it must beat the baselines, under the metrics and
the oracle, on held-out episodes. Trained from scratch on CPU (about 1.5 minutes on 2 cores)."""

from __future__ import annotations

import logging

from policy.ml.demo import DEMO_SAMPLE, synthetic_splits, train_small_demo_policy
from policy.ml.evaluate import evaluate
from policy.oracle import EpisodeContext, oracle_score

logger = logging.getLogger(__name__)

N_EPISODES = 400  # corpus seed 0: 318 train, 41 val, 41 test episodes
OTHERS = ("random_clip", "nearest_neighbour", "mirror", "mean_face")


def _oracle(candidate, episode) -> float:
    ctx = EpisodeContext.from_meta(episode.meta, fps=episode.fps, n_frames=len(candidate))
    return oracle_score(candidate, ctx).total


def test_sft_policy_beats_the_baselines_on_the_synthetic_test_split():
    # given: the synthetic corpus and the demo policy trained on its train split
    corpus = synthetic_splits(N_EPISODES, seed=0)
    result = train_small_demo_policy(corpus.train)
    # when: it answers the held-out test split with K = 4 samples per episode
    report = evaluate(result.policy, corpus.test, corpus.train, sample_config=DEMO_SAMPLE,
                      oracle=_oracle)
    src = report["sources"]
    pol = src["policy"]
    for name, m in src.items():
        logger.warning("%-18s l2 %.4f (expr %.4f pose %.5f) fd %.4f pfd %.4f frdiv %.4f "
                       "oracle %.3f", name, m["l2"], m["l2_expression"], m["l2_pose"], m["fd"],
                       m["pfd"], m["frdiv"], m["oracle"])
    # then: lower L2 (all dims, and expression) and FD than every baseline but the ground truth,
    # each by at least 10 %
    for name in OTHERS:
        assert pol["l2"] < 0.9 * src[name]["l2"], name
        assert pol["l2_expression"] < 0.9 * src[name]["l2_expression"], name
        assert pol["fd"] < 0.9 * src[name]["fd"], name
    # Pose L2 is not asserted: the mean face is unbeatable there by any sampler. Head drift is
    # unpredictable, and a sample of it doubles its error: even the generator itself, drawing a
    # fresh listener for the same speaker, scores ~0.00043 against the mean face's ~0.0003.
    # The oracle prefers the policy's answers to the nearest neighbour's, by a wide margin.
    assert pol["oracle"] > src["nearest_neighbour"]["oracle"] + 0.1
    # The K samples differ: FRDiv well above zero (a tenth of the ground truth's variance;
    # identical samples give 0, as the deterministic baselines show).
    assert pol["frdiv"] > 0.1 * report["ground_truth_variance"]
    assert src["mirror"]["frdiv"] == 0.0
    # and the tokenizer's round trip stays within half a bin inside the fitted range
    trip = result.tokenizer_round_trip
    assert trip["max_in_range"] <= trip["half_bin_max"] + 1e-6
