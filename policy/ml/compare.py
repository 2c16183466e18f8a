"""Two policies compared on held-out speaker clips: benchmark metrics of each, and how often a
sample of one beats a sample of the other under a critic and under an oracle (pure Python +
NumPy + PyTorch; the round's evaluation step and the round benchmark call it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rendering.layouts import get_layout

from . import metrics as M
from .evaluate import KMEANS_K, OracleFn, score_candidates

METRICS = ("l2", "fd", "pfd", "oracle", "variance")
ScoreFn = Callable[[Sequence, Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]]


def win_rate(new: np.ndarray, old: np.ndarray) -> float:
    """Mean over episodes of P(a sample of ``new`` scores above one of ``old``), every (K x K)
    pairing of an episode's samples, ties half: (E, K) scores each."""
    diff = np.asarray(new)[:, :, None] - np.asarray(old)[:, None, :]  # (E, K, K)
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def compare_policies(new, parent, episodes: Sequence, *, oracle: OracleFn | None,
                     scorer: ScoreFn | None, k: int, seed: int,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Metrics of ``new`` and ``parent`` on ``episodes`` and the win-rates of new over parent.

    Both sample ``k`` candidates per episode with the same seed; the critic (``scorer``: prepared
    inputs and one candidate each -> (mean, std) per head, the last head "overall") and the
    oracle score every sample. ``l2_ratio`` / ``fd_ratio`` / ``pfd_ratio`` are new / parent
    against the ground truth (the rule-following reference where the corpus keeps one).
    """
    out: dict[str, Any] = {"n_episodes": len(episodes), "k": k}
    layout = get_layout(parent.cfg.layout)
    truth = np.concatenate([e.reference if e.reference is not None else e.listener
                            for e in episodes])
    centroids = {"expression": M.kmeans(truth[:, layout.expression_indices],
                                        KMEANS_K["expression"], seed=seed),
                 "pose": M.kmeans(truth[:, layout.pose_indices], KMEANS_K["pose"], seed=seed)}
    samples = {}
    for i, (name, policy) in enumerate((("new", new), ("parent", parent))):
        samples[name] = policy.sample(episodes, k=k, seed=seed)
        if progress:
            progress(2 * i + 1, 5)
        src = score_candidates(samples[name], episodes, layout, centroids=centroids,
                               oracle=oracle)
        out[name] = {m: src[m] for m in METRICS if src.get(m) is not None}
        if progress:
            progress(2 * i + 2, 5)
    for m in ("l2", "fd", "pfd"):
        if out["parent"].get(m):
            out[f"{m}_ratio"] = out["new"][m] / out["parent"][m]
    if scorer is not None:
        scores = {}
        for name, policy in (("new", new), ("parent", parent)):
            _, prepared = policy.prepare(episodes)
            rows = [(p, c) for p, cands in zip(prepared, samples[name], strict=True)
                    for c in cands]
            mean, _std = scorer([p for p, _ in rows], [c for _, c in rows])
            scores[name] = np.asarray(mean)[:, -1].reshape(len(episodes), k)  # overall head
        out["critic_win_rate"] = win_rate(scores["new"], scores["parent"])
    if oracle is not None:
        o = {name: np.array([[oracle(c, ep) for c in cands]
                             for cands, ep in zip(samples[name], episodes, strict=True)])
             for name in samples}
        out["oracle_win_rate"] = win_rate(o["new"], o["parent"])
    if progress:
        progress(5, 5)
    return out
