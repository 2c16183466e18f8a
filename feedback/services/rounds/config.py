"""A round's configuration: what it may set, its defaults, and the check made when it starts.

The critic's and the optimiser's own settings (``critic`` and ``optimise``) are the fields of
``policy.ml.critic.CriticConfig`` and ``policy.ml.preference.PreferenceConfig``; they are checked
by those classes when the step runs, where torch is loaded (web processes never load it).
"""

from __future__ import annotations

import copy
import math
from typing import Any

from feedback.services.snapshots import DEFAULT_TEST_FRACTION, QC_POLICIES

METHODS = ("sft_chosen", "dpo", "dpo_imitation", "critic", "imitation_critic_best")

DEFAULTS: dict[str, Any] = {
    "method": "dpo_imitation",  # see policy.ml.preference
    "qc": "trusted",  # which raters' judgments the snapshot keeps
    "test_fraction": DEFAULT_TEST_FRACTION,  # episodes held out of the critic's training
    "min_pairs": 50,  # decided pairs the snapshot must hold, or the round refuses it
    "critic": {},  # CriticConfig fields
    "optimise": {},  # PreferenceConfig fields (method and device are the round's)
    "val_episodes": 32,  # validation episodes for the optimiser's guards
    "eval_episodes": 64,  # held-out test episodes for the evaluation
    "eval_k": 4,  # samples per episode and version in the evaluation
    "device": "auto",
    "auto_promote": False,  # promote without a click when every gate passes
    "gates": {
        "min_oracle_win_rate": 0.55,  # against the parent (synthetic corpora only)
        "min_critic_win_rate": 0.55,
        "max_l2_ratio": 1.10,  # of the parent's, against the ground truth
        "max_fd_ratio": 1.10,
    },
    "next_campaign": {
        "create": True,  # sample the promoted version and make the next campaign (a draft)
        "split": "test",
        "limit": 20,  # episodes
        "samples": 2,  # of the new version per item pool
        "parent_samples": 1,  # of the parent, so the next judgments compare the two
        "ground_truth": True,
        "overlap": 3,
        "per_rater_limit": 50,
    },
}


class RoundError(ValueError):
    """A round that cannot start or go on, with a reason a person can act on."""


def _merge(base: dict, given: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in given.items():
        if key not in base:
            raise RoundError(f"config: {where}{key} is not a round setting (settings are "
                             f"{', '.join(sorted(base))})")
        if isinstance(base[key], dict) and base[key] and not isinstance(value, dict):
            raise RoundError(f"config: {where}{key} must be an object")
        if isinstance(base[key], dict) and base[key]:
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _number(cfg: dict, key: str, lo: float, hi: float, *, integer: bool = False,
            where: str = "") -> None:
    value = cfg[key]
    ok = (isinstance(value, int) if integer else isinstance(value, int | float)) \
        and not isinstance(value, bool) and math.isfinite(value) and lo <= value <= hi
    if not ok:
        kind = "an integer" if integer else "a number"
        raise RoundError(f"config: {where}{key} must be {kind} in [{lo}, {hi}], got {value!r}")


def round_config_clean(given: dict | None) -> dict:
    """The full configuration: ``given`` over the defaults, checked (``RoundError``)."""
    if given is not None and not isinstance(given, dict):
        raise RoundError("config must be an object")
    cfg = _merge(DEFAULTS, given or {}, "")
    if cfg["method"] not in METHODS:
        raise RoundError(f"config: method must be one of {', '.join(METHODS)}, "
                         f"got {cfg['method']!r}")
    if cfg["qc"] not in QC_POLICIES:
        raise RoundError(f"config: qc must be one of {', '.join(QC_POLICIES)}")
    _number(cfg, "test_fraction", 0.0, 0.9)
    _number(cfg, "min_pairs", 1, 10_000_000, integer=True)
    _number(cfg, "val_episodes", 1, 100_000, integer=True)
    _number(cfg, "eval_episodes", 1, 100_000, integer=True)
    _number(cfg, "eval_k", 1, 64, integer=True)
    for key in ("critic", "optimise"):
        if not isinstance(cfg[key], dict):
            raise RoundError(f"config: {key} must be an object of settings")
    for key in ("method", "device"):
        if key in cfg["optimise"]:
            raise RoundError(f"config: optimise.{key} is set by the round ({key})")
    if cfg["device"] not in ("auto", "cpu", "cuda"):
        raise RoundError("config: device must be auto, cpu or cuda")
    if not isinstance(cfg["auto_promote"], bool):
        raise RoundError("config: auto_promote must be true or false")
    gates = cfg["gates"]
    for key in ("min_oracle_win_rate", "min_critic_win_rate"):
        _number(gates, key, 0.0, 1.0, where="gates.")
    for key in ("max_l2_ratio", "max_fd_ratio"):
        _number(gates, key, 0.0, 100.0, where="gates.")
    nxt = cfg["next_campaign"]
    if not isinstance(nxt["create"], bool) or not isinstance(nxt["ground_truth"], bool):
        raise RoundError("config: next_campaign.create and .ground_truth are true or false")
    if nxt["split"] not in ("train", "val", "test"):
        raise RoundError("config: next_campaign.split must be train, val or test")
    _number(nxt, "limit", 1, 100_000, integer=True, where="next_campaign.")
    _number(nxt, "samples", 1, 8, integer=True, where="next_campaign.")
    _number(nxt, "parent_samples", 0, 8, integer=True, where="next_campaign.")
    _number(nxt, "overlap", 1, 50, integer=True, where="next_campaign.")
    _number(nxt, "per_rater_limit", 1, 100_000, integer=True, where="next_campaign.")
    return cfg
