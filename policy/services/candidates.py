"""Candidates: K sampled answers per episode from a policy version, plus the ground truth and
baselines. Generation is idempotent: each row's ``source_key`` names its source completely, so a
retried or repeated request computes and stores only what is missing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from django.db import transaction

from policy.models import Candidate, CandidateSource, Episode, PolicyVersion
from policy.selectors import episode_arrays
from rendering import blobs

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


def policy_source_key(
    version: PolicyVersion, *, seed: int, k: int, index: int, temperature: float, top_p: float
) -> str:
    # K is part of the key: sample i is drawn jointly with its K-1 siblings.
    return f"policy:{version.pk}:seed{seed}:k{k}#{index}:t{temperature:g}:p{top_p:g}"


def candidates_generate(
    *,
    version: PolicyVersion,
    episodes: Sequence[Episode],
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    ground_truth: bool = True,
    baselines: Sequence[str] = (),
    progress: ProgressFn | None = None,
    batch_episodes: int = 256,
) -> int:
    """Store K policy samples per episode (and the ground truth, and baselines). Returns the
    number of rows created; a repeated call creates none."""
    from policy.ml.config import SampleConfig

    if k < 1 or not 0 < top_p <= 1 or temperature < 0:
        raise ValueError("k >= 1, temperature >= 0 and 0 < top_p <= 1 are required")
    wrong = [e for e in episodes if e.dataset_id != version.dataset_id]
    if wrong:
        raise ValueError(
            f"episode {wrong[0]} is not in {version.dataset.name}, the corpus {version.name} "
            "was trained on (its layout and input statistics)"
        )
    keys = [
        policy_source_key(version, seed=seed, k=k, index=i, temperature=temperature, top_p=top_p)
        for i in range(k)
    ]
    have = set(
        Candidate.objects.filter(episode__in=episodes, source_key__in=keys).values_list(
            "episode_id", "source_key"
        )
    )
    missing = [e for e in episodes if any((e.pk, key) not in have for key in keys)]
    created = 0
    policy = None
    config = SampleConfig(k=k, temperature=temperature, top_p=top_p, seed=seed)
    for start in range(0, len(missing), batch_episodes):
        group = missing[start : start + batch_episodes]
        if policy is None:
            from policy.services.training import load_version_policy

            policy = load_version_policy(version)
        arrays = episode_arrays(group)
        samples = policy.sample(arrays, config)  # list of (K, T, D)
        rows = []
        for ep, stack in zip(group, samples, strict=True):
            for i, key in enumerate(keys):
                if (ep.pk, key) in have:
                    continue
                sha, _ = blobs.put_array(stack[i])
                rows.append(
                    Candidate(
                        episode=ep,
                        source=CandidateSource.POLICY,
                        policy_version=version,
                        seed=seed,
                        temperature=temperature,
                        top_p=top_p,
                        source_key=key,
                        array_sha=sha,
                        n_frames=int(stack[i].shape[0]),
                    )
                )
        created += _store(rows)
        if progress is not None:
            progress(min(start + batch_episodes, len(missing)), len(missing))
    if ground_truth:
        created += candidates_ground_truth(episodes=episodes)
    if baselines:
        created += _baselines(version, episodes, baselines, seed)
    logger.info(
        "version %s: %d candidate rows created for %d episodes",
        version.name,
        created,
        len(episodes),
    )
    return created


def _store(rows: list[Candidate]) -> int:
    if not rows:
        return 0
    # A concurrent retry may have stored some of them: the unique key keeps one of each, and
    # only the rows these keys name are counted (not the whole table).
    mine = Candidate.objects.filter(
        episode_id__in={r.episode_id for r in rows}, source_key__in={r.source_key for r in rows}
    )
    with transaction.atomic():
        before = mine.count()
        Candidate.objects.bulk_create(rows, ignore_conflicts=True)
        return mine.count() - before


def candidates_ground_truth(*, episodes: Sequence[Episode]) -> int:
    """Store each episode's own listener as its ground-truth candidate (idempotent)."""
    have = set(
        Candidate.objects.filter(episode__in=episodes, source_key="ground_truth").values_list(
            "episode_id", flat=True
        )
    )
    rows = [
        Candidate(
            episode=ep,
            source=CandidateSource.GROUND_TRUTH,
            source_key="ground_truth",
            array_sha=ep.listener_sha,
            n_frames=ep.n_frames,
        )
        for ep in episodes
        if ep.pk not in have
    ]
    return _store(rows)


def _baselines(
    version: PolicyVersion, episodes: Sequence[Episode], names: Sequence[str], seed: int
) -> int:
    from policy.ml.baselines import BASELINES, Baselines
    from policy.selectors import dataset_split

    unknown = [n for n in names if n not in BASELINES or n == "ground_truth"]
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r} (known: {', '.join(BASELINES[1:])})")
    keys = {name: f"baseline:{name}:seed{seed}" for name in names}
    have = set(
        Candidate.objects.filter(episode__in=episodes, source_key__in=keys.values()).values_list(
            "episode_id", "source_key"
        )
    )
    todo = [ep for ep in episodes if any((ep.pk, key) not in have for key in keys.values())]
    if not todo:
        return 0
    fitted = Baselines(episode_arrays(dataset_split(version.dataset, "train")))
    rows = []
    for ep, data in zip(todo, episode_arrays(todo), strict=True):
        for name, key in keys.items():
            if (ep.pk, key) in have:
                continue
            one = fitted.candidates(name, data, k=1, seed=seed)[0]
            sha, _ = blobs.put_array(one)
            rows.append(
                Candidate(
                    episode=ep,
                    source=CandidateSource.BASELINE,
                    baseline=name,
                    seed=seed,
                    source_key=key,
                    array_sha=sha,
                    n_frames=int(one.shape[0]),
                )
            )
    return _store(rows)


def candidate_store_array(*, episode: Episode, baseline: str, array: np.ndarray) -> Candidate:
    """Store one reference response made outside the samplers (e.g. the clearly wrong answer of
    a gold rating item) as a baseline candidate; the same name for the same episode finds the
    same row."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != 2 or not np.isfinite(array).all():
        raise ValueError(f"{baseline}: expected a finite (T, D) array, got shape {array.shape}")
    sha, _ = blobs.put_array(array)
    candidate, _ = Candidate.objects.get_or_create(
        episode=episode, source_key=f"baseline:{baseline}",
        defaults={"source": CandidateSource.BASELINE, "baseline": baseline, "array_sha": sha,
                  "n_frames": len(array)},
    )
    return candidate

