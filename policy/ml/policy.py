"""A trained listener policy: the model, its action tokenizer and its config, used together."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from rendering.layouts import FaceModelLayout, get_layout

from .config import ModelConfig, SampleConfig
from .data import EpisodeData, Prepared, check_episodes, prepare_episodes
from .model import VLA
from .sample import sample_prepared
from .tokenizer import ActionTokenizer


class Policy:
    def __init__(self, model: VLA, tokenizer: ActionTokenizer, cfg: ModelConfig) -> None:
        if tokenizer.width != model.width or tokenizer.n_bins != cfg.n_bins:
            raise ValueError(f"tokenizer ({tokenizer.width} dims x {tokenizer.n_bins} bins) does "
                             f"not fit the model ({model.width} dims x {cfg.n_bins} bins)")
        if tokenizer.layout != cfg.layout:
            raise ValueError(f"tokenizer layout {tokenizer.layout!r} != config {cfg.layout!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg

    @property
    def layout(self) -> FaceModelLayout:
        return get_layout(self.cfg.layout)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Policy:
        self.model.to(device)
        return self

    def prepare(self, episodes: Iterable[Any], *, split: str = "input",
                need_listener: bool = False) -> tuple[list[EpisodeData], list[Prepared]]:
        """Check episodes against this policy and compute their (look-ahead shifted) inputs, as
        CPU tensors (the log-mel of all of them together on the model's device)."""
        eps = check_episodes(episodes, self.cfg, split=split, need_listener=need_listener)
        stats = self.model.input_stats()
        return eps, prepare_episodes(eps, self.cfg, stats, self.tokenizer, device=self.device)

    def sample(self, episodes: Iterable[Any], config: SampleConfig | None = None,
               **overrides: Any) -> list[np.ndarray]:
        """``config.k`` candidates for each episode: a list of ``(K, T_i, D)`` float32 arrays.

        Episodes need speaker inputs only (a listener, if present, is ignored). Overrides replace
        fields of ``config`` (``policy.sample(eps, k=8, seed=3)``); see
        ``policy.ml.sample.sample_prepared`` for how the draws are made.
        """
        cfg = dataclasses.replace(config or SampleConfig(), **overrides)
        eps = check_episodes(episodes, self.cfg, split="input", need_listener=False)
        stats = self.model.input_stats()
        prepared = prepare_episodes([dataclasses.replace(e, listener=None) for e in eps],
                                    self.cfg, stats, self.tokenizer,
                                    device=self.device)  # no listener tokens needed
        return sample_prepared(self.model, self.tokenizer, prepared, cfg)
