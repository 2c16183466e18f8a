"""Shared fixtures of the policy/ml tests: a few synthetic episodes and a tiny trained policy.

Everything here is pure PyTorch + NumPy and small enough for two CPU cores."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from policy.ml.config import ModelConfig, TrainConfig
from policy.ml.data import EpisodeData, episode_from
from policy.ml.train import TrainResult, train
from policy.synthetic import generate_corpus

TINY_MODEL = ModelConfig(d_model=32, n_layers=2, n_heads=2, chunk=3, context=16,
                         bin_head_dim=8, dropout=0.1, n_mels=8, text_vocab=64)
TINY_TRAIN = TrainConfig(max_steps=6, batch_size=4, warmup_steps=2, log_every=1, device="cpu",
                         seed=3)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def episodes() -> list[EpisodeData]:
    """Ten short synthetic episodes (about 10 s each), all splits mixed."""
    return [episode_from(e) for e in generate_corpus(10, 7)]


@pytest.fixture(scope="session")
def tiny_result(episodes: list[EpisodeData]) -> TrainResult:
    return train(episodes[:6], TINY_MODEL, TINY_TRAIN)


def tiny_configs(**train_overrides) -> tuple[ModelConfig, TrainConfig]:
    return TINY_MODEL, dataclasses.replace(TINY_TRAIN, **train_overrides)
