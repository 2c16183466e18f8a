"""Reference answers a policy must beat, each giving K candidates (K, T, D) for an episode.

| name              | candidate                                                             |
|-------------------|-----------------------------------------------------------------------|
| ground_truth      | the recorded listener (the ceiling; K copies)                         |
| random_clip       | K random stretches of T frames of training listeners                  |
| nearest_neighbour | the listener of the training episode whose speaker looks most alike   |
|                   | (per-dimension mean and std of the speaker's coefficients, z-scored)  |
| mirror            | the speaker's own coefficients (same layout): imitation, no listening |
| mean_face         | the mean training listener frame, frozen                              |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .data import EpisodeData, episode_from
from .errors import EmptySplitError
from .sample import episode_seed

BASELINES = ("ground_truth", "random_clip", "nearest_neighbour", "mirror", "mean_face")


def _fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Crop to ``length`` frames, or hold the last frame to reach it."""
    if len(x) >= length:
        return x[:length]
    return np.concatenate([x, np.repeat(x[-1:], length - len(x), axis=0)])


def speaker_features(speaker: np.ndarray) -> np.ndarray:
    """(2 D,) summary of a speaker sequence (T, D): per-dimension mean and std over time."""
    s = np.asarray(speaker, np.float64)
    return np.concatenate([s.mean(0), s.std(0)])


class Baselines:
    """Baselines fitted on a training split; ``candidates(name, episode, k, seed)``."""

    def __init__(self, train_episodes: Sequence[Any]) -> None:
        eps = [episode_from(e) for e in train_episodes]
        eps = [e for e in eps if e.listener is not None]
        if not eps:
            raise EmptySplitError("baselines need training episodes with a listener; the train "
                                  "split has none")
        self.listeners = [np.asarray(e.listener, np.float32) for e in eps]
        self.keys = [e.key for e in eps]
        self.mean = np.concatenate(self.listeners).mean(0).astype(np.float32)  # (D,)
        feats = np.stack([speaker_features(e.speaker) for e in eps])  # (N, 2D)
        self.feat_mean = feats.mean(0)
        self.feat_std = np.maximum(feats.std(0), 1e-6)
        self.feats = (feats - self.feat_mean) / self.feat_std

    def nearest(self, ep: EpisodeData) -> int:
        f = (speaker_features(ep.speaker) - self.feat_mean) / self.feat_std
        d2 = ((self.feats - f) ** 2).sum(1)
        for i in np.argsort(d2, kind="stable"):
            if self.keys[i] != ep.key:  # never the episode itself, if it is in the train split
                return int(i)
        return int(np.argmin(d2))

    def candidates(self, name: str, episode: Any, k: int, seed: int = 0) -> np.ndarray:
        ep = episode_from(episode)
        t = ep.n_frames
        if name == "ground_truth":
            if ep.listener is None:
                raise ValueError(f"episode {ep.key!r} has no ground truth")
            one = np.asarray(ep.listener, np.float32)
        elif name == "random_clip":
            rng = np.random.default_rng(episode_seed(seed, ep.key))
            long_enough = [i for i, x in enumerate(self.listeners) if len(x) >= t]
            out = []
            for _ in range(k):
                if long_enough:
                    x = self.listeners[long_enough[int(rng.integers(len(long_enough)))]]
                    s = int(rng.integers(len(x) - t + 1))
                    out.append(x[s : s + t])
                else:
                    out.append(_fit_length(self.listeners[int(rng.integers(len(self.listeners)))],
                                           t))
            return np.stack(out).astype(np.float32)
        elif name == "nearest_neighbour":
            one = _fit_length(self.listeners[self.nearest(ep)], t)
        elif name == "mirror":
            one = np.asarray(ep.speaker, np.float32)
        elif name == "mean_face":
            one = np.repeat(self.mean[None], t, axis=0)
        else:
            raise ValueError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})")
        return np.repeat(one[None], k, axis=0).astype(np.float32)  # (K, T, D)
