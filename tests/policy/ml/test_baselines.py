"""Baselines: what each one answers, on hand-made episodes."""

from __future__ import annotations

import numpy as np
import pytest

from policy.ml.baselines import BASELINES, Baselines
from policy.ml.data import EpisodeData
from policy.ml.errors import EmptySplitError


def _ep(key: str, speaker_level: float, listener_level: float, t: int = 10) -> EpisodeData:
    spk = np.full((t, 2), speaker_level, np.float32)
    spk[::2] += 0.1
    lis = np.full((t, 2), listener_level, np.float32)
    lis[:, 1] = np.arange(t)
    return EpisodeData(key=key, speaker=spk, listener=lis, fps=30.0)


TRAIN = [_ep("a", 0.0, 1.0), _ep("b", 5.0, 2.0, t=6), _ep("c", 10.0, 3.0)]


def test_each_baseline_answers_k_candidates_of_the_episode_length():
    base = Baselines(TRAIN)
    query = _ep("q", 4.8, 9.0, t=8)
    for name in BASELINES:
        out = base.candidates(name, query, 3, seed=0)
        assert out.shape == (3, 8, 2) and out.dtype == np.float32
    assert np.array_equal(base.candidates("ground_truth", query, 1)[0], query.listener)
    assert np.array_equal(base.candidates("mirror", query, 1)[0], query.speaker)
    # mean face: the mean training frame, all frames alike
    mean = np.concatenate([e.listener for e in TRAIN]).mean(0)
    assert np.allclose(base.candidates("mean_face", query, 1)[0], mean)
    # nearest neighbour by speaker mean and std: episode b (level 5), held after its 6 frames
    nn = base.candidates("nearest_neighbour", query, 1)[0]
    assert np.allclose(nn[:, 0], 2.0) and nn[:, 1].tolist() == [0, 1, 2, 3, 4, 5, 5, 5]


def test_random_clips_come_from_long_enough_training_listeners_and_vary():
    base = Baselines(TRAIN)
    clips = base.candidates("random_clip", _ep("q", 0.0, 0.0, t=8), 6, seed=1)
    for clip in clips:  # a, c are the only listeners with 8 frames or more
        assert clip[0, 0] in (1.0, 3.0)
        assert np.array_equal(np.diff(clip[:, 1]), np.ones(7))  # a contiguous stretch
    assert len({tuple(c[:, 1]) + (c[0, 0],) for c in clips}) > 1
    again = base.candidates("random_clip", _ep("q", 0.0, 0.0, t=8), 6, seed=1)
    assert np.array_equal(clips, again)


def test_the_nearest_neighbour_is_never_the_episode_itself():
    base = Baselines(TRAIN)
    assert base.nearest(TRAIN[0]) != 0


def test_unknown_baseline_and_empty_training_split():
    with pytest.raises(ValueError, match="unknown baseline"):
        Baselines(TRAIN).candidates("oracle", TRAIN[0], 1)
    with pytest.raises(EmptySplitError):
        Baselines([])
