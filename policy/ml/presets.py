"""Named starting points for SFT that an admin picks when training (``config.preset``).

| preset     | model                                   | where it runs, what it needs           |
|------------|-----------------------------------------|----------------------------------------|
| ``demo``   | the small transformer, 0.3 M parameters | a CPU: ~1 min on two cores (200 steps) |
| ``default``| the small transformer, 1.8 M parameters | a GPU for minutes, or a CPU for hours  |
| ``backbone``| a local Llama / Qwen directory + LoRA  | one GPU; see docs/policy.md's table    |

A config's ``model`` and ``train`` mappings replace fields of the preset's. ``backbone`` needs
``model.backbone``: a model directory (a name under ``POLICY_MODEL_DIR`` or an absolute path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .config import ModelConfig, TrainConfig
from .demo import DEMO_MODEL, DEMO_TRAIN

# A pretrained decoder fine-tuned through LoRA adapters: its weights frozen in bf16, the
# adapters, input projections and action heads trained; windows of 8.5 s.
BACKBONE_MODEL = ModelConfig(
    backbone="",  # required: the config names the directory
    backbone_dtype="bfloat16",
    lora_rank=16,
    lora_alpha=32.0,
    lora_dropout=0.05,
    grad_checkpointing=True,
    context=256,
    dropout=0.0,
    text_slots=4,
)
BACKBONE_TRAIN = TrainConfig(
    max_steps=2000,
    batch_size=16,  # 16 windows x 512 positions
    lr=2e-4,
    min_lr=2e-5,
    warmup_steps=50,
    weight_decay=0.0,
    loss_stride=0,
)

PRESETS: dict[str, tuple[ModelConfig, TrainConfig]] = {
    "demo": (DEMO_MODEL, DEMO_TRAIN),
    "default": (ModelConfig(), TrainConfig()),
    "backbone": (BACKBONE_MODEL, BACKBONE_TRAIN),
}


class PresetError(ValueError):
    """A preset or override that cannot make a config."""


def preset_configs(name: str, model: Mapping[str, Any] | None = None,
                   train: Mapping[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """The preset's configs with ``model`` / ``train`` fields replaced."""
    if name not in PRESETS:
        raise PresetError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    base_model, base_train = PRESETS[name]
    try:
        model_cfg = dataclasses.replace(base_model, **dict(model or {}))
        train_cfg = dataclasses.replace(base_train, **dict(train or {}))
    except (TypeError, ValueError) as exc:
        raise PresetError(f"config: {exc}") from exc
    if name == "backbone" and not model_cfg.backbone:
        raise PresetError("the backbone preset needs model.backbone: a model directory (a name "
                          "under POLICY_MODEL_DIR or an absolute path)")
    return model_cfg, train_cfg
