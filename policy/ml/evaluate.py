"""Evaluation of a policy and every baseline on held-out episodes, with all metrics.

Ground-truth metrics (L2, FD, P-FD, the SI-diversity clusters, the ground truth's variance) are
measured against each episode's *target*: its ``reference`` (the rule-following listener a mixed
corpus keeps beside a ground truth that breaks the rules) when it has one, else its ``listener``.
A policy is then not rewarded for copying a socially wrong response, and the ``ground_truth``
source shows how far the recorded listeners are from the rules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rendering.layouts import FaceModelLayout, get_layout

from . import metrics as M
from .baselines import BASELINES, Baselines
from .config import ModelConfig, SampleConfig
from .data import EpisodeData, check_episodes, episode_from
from .errors import EmptySplitError, PolicyDataError
from .policy import Policy

logger = logging.getLogger(__name__)

OracleFn = Callable[[np.ndarray, EpisodeData], float]  # (candidate (T, D), episode) -> score
KMEANS_K = {"expression": 40, "pose": 20}  # Learning to Listen's SI-diversity clusters


def target(ep: EpisodeData) -> np.ndarray:
    """(T, D) what an answer to ``ep`` is measured against: the reference, else the listener."""
    return ep.reference if ep.reference is not None else ep.listener


def _check_references(episodes: Sequence[EpisodeData]) -> None:
    for ep in episodes:
        if ep.reference is None:
            continue
        ref = np.asarray(ep.reference)
        where = f"episode {ep.key!r} (test split): field 'reference'"
        if ref.shape != np.shape(ep.listener):
            raise PolicyDataError(f"{where} has shape {ref.shape}, the listener "
                                  f"{np.shape(ep.listener)}")
        if not np.isfinite(ref).all():
            raise PolicyDataError(f"{where} contains NaN or infinity")


def score_candidates(candidates: Sequence[np.ndarray], episodes: Sequence[EpisodeData],
                     layout: FaceModelLayout, *, centroids: dict[str, np.ndarray],
                     oracle: OracleFn | None = None) -> dict[str, float]:
    """Every metric for one source: ``candidates[i]`` (K, T_i, D) answers ``episodes[i]``.

    Per-sequence metrics (L2, FD, P-FD, variance, oracle) are averaged over all candidates of all
    episodes; FRDiv / FRVar over episodes; SI-diversity pools all predicted frames. L2, FD and
    P-FD compare with :func:`target` (the reference where an episode has one).
    """
    expr, pose = layout.expression_indices, layout.pose_indices
    rows: dict[str, list[float]] = {k: [] for k in ("l2_expression", "l2_pose", "l2", "fd",
                                                     "fd_expression", "fd_pose", "pfd",
                                                     "variance", "frdiv", "frvar", "oracle")}
    preds, speakers = [], []
    for cands, ep in zip(candidates, episodes, strict=True):
        gt, spk = target(ep), ep.speaker
        for y in cands:
            rows["l2_expression"].append(M.l2(y, gt, expr))
            rows["l2_pose"].append(M.l2(y, gt, pose))
            rows["l2"].append(M.l2(y, gt))
            rows["fd"].append(M.fd(y, gt))
            rows["fd_expression"].append(M.fd(y, gt, expr))
            rows["fd_pose"].append(M.fd(y, gt, pose))
            rows["pfd"].append(M.paired_fd(y, gt, spk))
            rows["variance"].append(M.variance(y))
            if oracle is not None:
                rows["oracle"].append(float(oracle(y, ep)))
            preds.append(y)
            speakers.append(spk)
        rows["frdiv"].append(M.frdiv(cands))
        rows["frvar"].append(M.frvar(cands))
    out = {k: float(np.mean(v)) for k, v in rows.items() if v}
    frames = np.concatenate(preds)  # (N, D)
    out["si_div_expression"] = M.si_diversity(frames[:, expr], centroids["expression"])
    out["si_div_pose"] = M.si_diversity(frames[:, pose], centroids["pose"])
    fps = episodes[0].fps
    out["frsyn"] = M.frsyn(preds, speakers, max_lag=int(round(2 * fps)) - 1)
    return out


def evaluate(policy: Policy | None, test_episodes: Sequence[Any], train_episodes: Sequence[Any],
             *, sample_config: SampleConfig | None = None, oracle: OracleFn | None = None,
             baselines: Sequence[str] = BASELINES, seed: int = 0, layout: str | None = None,
             ) -> dict[str, Any]:
    """Metrics of the policy (``"policy"``, K samples per episode) and of each baseline.

    Returns ``{"sources": {name: {metric: value}}, "ground_truth_variance", "k", "n_episodes",
    "seconds"}``. With ``oracle`` (``oracle(candidate, episode) -> float``), every source also
    gets its mean oracle score. K-means clusters for SI-diversity are fitted once, on the
    target frames of the held-out episodes, and shared by all sources. Without a policy
    (baselines only), name the ``layout``.

    Every ground-truth metric compares with :func:`target`: an episode's ``reference`` when it
    has one (``n_reference`` counts them), else its ``listener``. On a mixed corpus the
    ``ground_truth`` source is then the recorded listeners scored against the rule-following ones,
    and ``ground_truth_variance`` is the targets' variance.
    """
    started = time.perf_counter()
    cfg = sample_config or SampleConfig()
    test = [episode_from(e) for e in test_episodes]
    if not test:
        raise EmptySplitError("the test split has no episodes")
    if policy is not None:
        model_cfg = policy.cfg
    elif layout is not None:
        model_cfg = ModelConfig(layout=layout, fps=test[0].fps)
    else:
        raise ValueError("evaluate without a policy needs the layout name")
    test = check_episodes(test, model_cfg, split="test", need_listener=True)
    _check_references(test)
    lay = get_layout(model_cfg.layout)
    gt_frames = np.concatenate([target(e) for e in test])  # (N, D)
    centroids = {
        "expression": M.kmeans(gt_frames[:, lay.expression_indices],
                               KMEANS_K["expression"], seed=seed),
        "pose": M.kmeans(gt_frames[:, lay.pose_indices], KMEANS_K["pose"], seed=seed),
    }
    candidates: dict[str, list[np.ndarray]] = {}
    if policy is not None:
        t0 = time.perf_counter()
        candidates["policy"] = policy.sample(test, cfg)
        logger.info("sampled %d x %d candidates in %.1fs", len(test), cfg.k,
                    time.perf_counter() - t0)
    base = Baselines(train_episodes)
    for name in baselines:
        candidates[name] = [base.candidates(name, e, cfg.k, seed=cfg.seed) for e in test]
    sources = {name: score_candidates(c, test, lay, centroids=centroids, oracle=oracle)
               for name, c in candidates.items()}
    return {"sources": sources,
            "ground_truth_variance": float(np.mean([M.variance(target(e)) for e in test])),
            "k": cfg.k, "n_episodes": len(test),
            "n_reference": sum(e.reference is not None for e in test),
            "seconds": time.perf_counter() - started}
