"""Sampling: K candidates per episode in one pass, closed loop, reproducible per seed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from policy.ml.config import SampleConfig
from policy.ml.errors import PolicyDataError
from policy.ml.sample import episode_seed, pick_bins


def test_pick_bins_inverts_the_cdf_in_bin_order():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    u = torch.tensor([[0.05, 0.15, 0.31, 0.59, 0.61, 0.999]]).T  # (6, 1)
    picks = pick_bins(logits.expand(6, 4), u[:, 0], temperature=1.0, top_p=1.0)
    assert picks.tolist() == [0, 1, 2, 2, 3, 3]
    # top-p 0.5 keeps the two likeliest bins (0.4, 0.3), renormalised: cdf 0, 0, 3/7, 1
    picks = pick_bins(logits.expand(6, 4), u[:, 0], temperature=1.0, top_p=0.5)
    assert picks.tolist() == [2, 2, 2, 3, 3, 3]
    assert pick_bins(logits, torch.tensor([0.0]), temperature=0.0, top_p=1.0).tolist() == [3]


def test_k_candidates_per_episode_with_the_episode_length(tiny_result, episodes):
    out = tiny_result.policy.sample(episodes[6:9], k=5, seed=0)
    assert [o.shape for o in out] == [(5, e.n_frames, 18) for e in episodes[6:9]]
    assert all(o.dtype == np.float32 for o in out)
    tok = tiny_result.policy.tokenizer
    assert np.all(out[0] >= tok.low.numpy() - 1e-6) and np.all(out[0] <= tok.high.numpy() + 1e-6)
    # the K candidates differ from each other
    assert not np.array_equal(out[0][0], out[0][1])


def test_same_seed_same_candidates_regardless_of_batch_company(tiny_result, episodes):
    policy = tiny_result.policy
    together = policy.sample(episodes[6:9], k=3, seed=4)
    again = policy.sample(episodes[6:9], k=3, seed=4)
    alone = policy.sample(episodes[7:8], k=3, seed=4)
    one_per_pass = policy.sample(episodes[6:9], SampleConfig(k=3, seed=4, max_rows=3))
    assert all(np.array_equal(a, b) for a, b in zip(together, again, strict=True))
    assert np.array_equal(together[1], alone[0])
    assert all(np.array_equal(a, b) for a, b in zip(together, one_per_pass, strict=True))
    assert not np.array_equal(together[0], policy.sample(episodes[6:7], k=3, seed=5)[0])
    assert episode_seed(4, "a") == episode_seed(4, "a") != episode_seed(4, "b")


def test_greedy_sampling_gives_k_equal_candidates(tiny_result, episodes):
    out = tiny_result.policy.sample(episodes[6:7], k=3, temperature=0.0)[0]
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])


def test_noise_options_and_bad_settings(tiny_result, episodes):
    policy = tiny_result.policy
    frame = policy.sample(episodes[6:7], k=2, noise="frame", couple_dims=False)[0]
    chunk = policy.sample(episodes[6:7], k=2)[0]
    assert frame.shape == chunk.shape and not np.array_equal(frame, chunk)
    with pytest.raises(ValueError):
        SampleConfig(top_p=0.0)
    with pytest.raises(ValueError):
        SampleConfig(noise="smooth")
    wrong = dataclasses.replace(episodes[6], speaker=np.zeros((50, 56), np.float32),
                                listener=None)
    with pytest.raises(PolicyDataError, match="expected \\(T, 18\\)"):
        policy.sample([wrong])
