"""Checkpoints: one ``torch.save`` file of plain tensors, numbers, strings, lists and dicts.

Nothing in it needs unpickling of classes, so it is read with ``torch.load(weights_only=True)``:
a checkpoint from elsewhere cannot run code. It holds everything a run needs to continue exactly
where it stopped: the configs (as dicts), the tokenizer edges, the model weights and input
statistics, the optimiser state, the step, the loss history and every random generator's state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig, TrainConfig
from .device import pick_device
from .errors import CheckpointError, ChecksumMismatchError, TokenizerMismatchError
from .policy import Policy
from .tokenizer import ActionTokenizer

FORMAT = "backchannel-listener-policy"
FORMAT_VERSION = 1


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cpu(obj: Any) -> Any:
    """Tensors moved to the CPU, recursively (a GPU run's checkpoint loads anywhere)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _canonical(obj: Any) -> Any:
    """The same data with every string interned, so equal values pickle to equal bytes.

    Pickle writes a repeated object once and refers back to it, by identity. A run resumed from
    a checkpoint holds strings (dict keys, optimiser state names) read from that file, where an
    uninterrupted run holds the interned originals; without this its checkpoint would differ in
    bytes, and in sha256, from the uninterrupted run's.
    """
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_canonical(v) for v in obj)
    return obj


def rng_state(data_generator: torch.Generator | None) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": data_generator.get_state() if data_generator is not None else None,
    }


def restore_rng(state: dict, data_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if data_generator is not None and state["data"] is not None:
        data_generator.set_state(state["data"])


def checkpoint_meta(*, policy: Policy, train_config: TrainConfig | None, step: int,
                    schedule: dict | None = None, data_generator: torch.Generator | None = None,
                    history: list[dict] | None = None, extra: dict | None = None) -> dict:
    """Everything a checkpoint holds but the weights and the optimiser state (which a sharded
    checkpoint keeps in shards beside it, ``policy.ml.sharded``)."""
    return _canonical({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": dataclasses.asdict(policy.cfg),
        "train_config": dataclasses.asdict(train_config) if train_config else None,
        "tokenizer": policy.tokenizer.state_dict(),
        "input_stats": _cpu(policy.model.input_stats()),
        "schedule": dict(schedule or {}),
        "step": int(step),
        "rng": _cpu(rng_state(data_generator)),
        "history": list(history or []),
        "extra": dict(extra or {}),
    })


def save_checkpoint(path: str | os.PathLike, *, policy: Policy, train_config: TrainConfig | None,
                    step: int, optimizer: torch.optim.Optimizer | None = None,
                    schedule: dict | None = None, data_generator: torch.Generator | None = None,
                    history: list[dict] | None = None, extra: dict | None = None) -> str:
    """Write the checkpoint atomically (a reader never sees half a file); return its sha256."""
    state = checkpoint_meta(policy=policy, train_config=train_config, step=step,
                            schedule=schedule, data_generator=data_generator, history=history,
                            extra=extra)
    state["model"] = _cpu(policy.model.state_dict())
    state["optimizer"] = _cpu(optimizer.state_dict()) if optimizer is not None else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(_canonical(state), f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file_sha256(path)


@dataclass
class Checkpoint:
    path: Path
    sha256: str
    state: dict  # everything save_checkpoint wrote

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.state["model_config"])

    @property
    def train_config(self) -> TrainConfig | None:
        tc = self.state["train_config"]
        return TrainConfig.from_dict(tc) if tc is not None else None

    @property
    def tokenizer(self) -> ActionTokenizer:
        return ActionTokenizer.from_state_dict(self.state["tokenizer"])

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def sharded(self) -> bool:
        """A directory of shards (``policy.ml.sharded``): no weights in ``state``."""
        return "model" not in self.state

    def input_stats(self) -> dict[str, torch.Tensor]:
        if "input_stats" in self.state:
            return dict(self.state["input_stats"])
        return {k: self.state["model"][k]
                for k in ("speaker_mean", "speaker_std", "mel_mean", "mel_std")}

    def policy(self, device: str | torch.device = "cpu") -> Policy:
        cfg = self.model_config
        tok = self.tokenizer
        from .backbone import build_model  # the backbone's libraries load only when needed

        model = build_model(cfg, tok.width)
        try:
            if self.sharded:
                from .sharded import load_sharded_model

                load_sharded_model(self.path, model)
            else:
                model.load_state_dict(self.state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{self.path}: model weights do not match its config "
                                  f"({exc})") from exc
        model.eval()
        return Policy(model, tok, cfg).to(pick_device(str(device)))


def load_checkpoint(path: str | os.PathLike, *, expected_sha256: str | None = None,
                    tokenizer: ActionTokenizer | str | None = None) -> Checkpoint:
    """Read a checkpoint safely and check it is the one the caller means.

    ``expected_sha256``: the file's recorded hash (e.g. a ``PolicyVersion``'s); a different file
    is refused before it is parsed. ``tokenizer``: the action tokenizer (or its fingerprint) the
    caller's data is encoded with; a checkpoint trained on other bins is refused.
    """
    from .sharded import dir_sha256, is_sharded_checkpoint, read_meta

    path = Path(path)
    sharded = is_sharded_checkpoint(path)
    if not path.is_file() and not sharded:
        raise CheckpointError(f"checkpoint {path} does not exist")
    sha = dir_sha256(path) if sharded else file_sha256(path)
    if expected_sha256 is not None and sha != expected_sha256.lower():
        raise ChecksumMismatchError(f"checkpoint {path} has sha256 {sha}, expected "
                                    f"{expected_sha256}: the file changed or is the wrong one")
    try:
        state = read_meta(path) if sharded else torch.load(path, map_location="cpu",
                                                           weights_only=True)
    except Exception as exc:  # the unpickler raises many types for a foreign or damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read safely ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {state.get('format_version')}, "
                              f"this code reads version {FORMAT_VERSION}")
    ckpt = Checkpoint(path=path, sha256=sha, state=state)
    if tokenizer is not None:
        want = tokenizer if isinstance(tokenizer, str) else tokenizer.fingerprint()
        have = ckpt.tokenizer.fingerprint()
        if want != have:
            raise TokenizerMismatchError(
                f"checkpoint {path} was trained with action tokenizer {have[:12]} "
                f"({ckpt.tokenizer.layout}, {ckpt.tokenizer.n_bins} bins), but tokenizer "
                f"{want[:12]} was requested: its tokens would mean different values")
    return ckpt


def load_policy(path: str | os.PathLike, *, expected_sha256: str | None = None,
                tokenizer: ActionTokenizer | str | None = None,
                device: str | torch.device = "cpu") -> Policy:
    """The policy of a checkpoint, ready to sample (eval mode) on ``device``."""
    return load_checkpoint(path, expected_sha256=expected_sha256,
                           tokenizer=tokenizer).policy(device)
