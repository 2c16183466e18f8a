"""Two versions compared on held-out speaker clips: benchmark metrics, and how often a sample of
one beats a sample of the other under the critic and, on the synthetic corpus, the oracle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from policy.models import Dataset

METRICS = ("l2", "fd", "pfd", "oracle", "variance")


def win_rate(new: np.ndarray, old: np.ndarray) -> float:
    """Mean over episodes of P(a sample of ``new`` scores above one of ``old``), every (K x K)
    pairing of an episode's samples, ties half: (E, K) scores each."""
    diff = new[:, :, None] - old[:, None, :]  # (E, K, K)
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def compare_versions(new, parent, episodes: Sequence, *, dataset: Dataset,
                     scorer: Callable | None, k: int, seed: int,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Metrics of each policy (``new`` and ``parent``) on ``episodes`` and their win-rates.

    Both sample ``k`` candidates per episode with the same seed; the critic (``scorer``:
    prepared inputs and one candidate each -> (mean, std) per head) and the oracle score every
    sample; ``*_win_rate`` is :func:`win_rate` of new over parent. ``l2_ratio`` / ``fd_ratio``
    are new / parent against the ground truth (the rule-following reference where the corpus
    keeps one).
    """
    from policy.ml import metrics as M
    from policy.ml.evaluate import KMEANS_K, score_candidates
    from policy.services.training import oracle_for
    from rendering.layouts import get_layout

    oracle = oracle_for(dataset)
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
        out[name] = {m: src.get(m) for m in METRICS if src.get(m) is not None}
        if progress:
            progress(2 * i + 2, 5)
    for m in ("l2", "fd", "pfd"):
        if out["parent"].get(m):
            out[f"{m}_ratio"] = out["new"][m] / out["parent"][m]
    if scorer is not None:
        scores = {}
        for name, policy in (("new", new), ("parent", parent)):
            _, prepared = policy.prepare(episodes)
            rows = [(p, c) for p, cands in zip(prepared, samples[name]) for c in cands]
            mean, _std = scorer([p for p, _ in rows], [c for _, c in rows])
            scores[name] = np.asarray(mean)[:, -1].reshape(len(episodes), k)  # overall head
        out["critic_win_rate"] = win_rate(scores["new"], scores["parent"])
    if oracle is not None:
        o = {name: np.array([[oracle(c, ep) for c in cands]
                             for cands, ep in zip(samples[name], episodes)])
             for name in samples}
        out["oracle_win_rate"] = win_rate(o["new"], o["parent"])
    if progress:
        progress(5, 5)
    return out
