"""A small listener policy trained on the synthetic corpus in a few minutes on a CPU.

The demo, the tests and the first round of the feedback loop start from it. Its settings are the
smallest found that still beat every baseline but the ground truth on the synthetic test split
(see ``tests/policy/ml/test_synthetic_policy.py`` for the thresholds and ``docs/policy.md`` for
the figures).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ModelConfig, SampleConfig, TrainConfig
from .data import EpisodeData, episode_from
from .train import ProgressFn, TrainResult, train

DEMO_MODEL = ModelConfig(
    d_model=96,  # small and fast on two CPU cores
    n_layers=3,
    n_heads=4,
    chunk=4,
    context=64,  # 2.1 s: a response's lag and rise fit inside, with the listener's last moves
    lookahead_s=0.3,
    bin_head_dim=16,
    dropout=0.0,  # the corpus is generated, so more data is cheaper than regularisation
    n_mels=24,
    text_vocab=1024,
)
DEMO_TRAIN = TrainConfig(
    max_steps=200,  # ~50 s on two cores; 300 steps gain ~10 % on FD for 50 % more time
    batch_size=24,  # windows of 64 frames: ~1,500 frames per step
    lr=3e-3,
    min_lr=2e-4,
    warmup_steps=20,
    loss_stride=0,  # chunk-tiled heads: a quarter of the head cost on CPU
    log_every=10,
    device="cpu",  # a tiny model gains little from a GPU and stays bit-reproducible on CPU
)
DEMO_SAMPLE = SampleConfig(k=4, temperature=1.0, top_p=1.0, seed=0)


@dataclass
class DemoCorpus:
    train: list[EpisodeData]
    val: list[EpisodeData]
    test: list[EpisodeData]


def synthetic_splits(n_episodes: int = 400, seed: int = 0) -> DemoCorpus:
    """Episodes 0 .. n - 1 of synthetic corpus ``seed``, by their own split."""
    from policy.synthetic import generate_corpus  # the corpus generator is pure NumPy

    eps = [episode_from(e) for e in generate_corpus(n_episodes, seed)]
    return DemoCorpus(train=[e for e in eps if e.split == "train"],
                      val=[e for e in eps if e.split == "val"],
                      test=[e for e in eps if e.split == "test"])


def train_small_demo_policy(train_episodes: Sequence[Any] | None = None, *,
                            n_episodes: int = 400, corpus_seed: int = 0,
                            checkpoint_path: str | Path | None = None,
                            progress: ProgressFn | None = None,
                            **train_overrides: Any) -> TrainResult:
    """Train the demo policy (a few minutes on CPU) on the given episodes, or on the training
    split of ``n_episodes`` synthetic episodes of corpus ``corpus_seed``."""
    if train_episodes is None:
        train_episodes = synthetic_splits(n_episodes, corpus_seed).train
    return train(train_episodes, DEMO_MODEL, dataclasses.replace(DEMO_TRAIN, **train_overrides),
                 checkpoint_path=checkpoint_path, progress=progress)
