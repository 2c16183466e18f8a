"""Fully sharded training (PyTorch's ``fully_shard``) and its sharded checkpoints.

With ``TrainConfig.fsdp`` every process of a torchrun run holds 1/N of each parameter, its
gradient and its AdamW state instead of a whole replica, so a model that no single GPU holds
(a 7 B backbone fine-tuned in full: 16 bytes a parameter with AdamW) trains across several.
Each transformer block (the backbone's decoder layers, the small model's blocks) is one unit:
its parameters are gathered just before its forward and backward and freed after. On CUDA the
gathered weights are bf16 and gradients are reduced in float32 (``MixedPrecisionPolicy``);
activation checkpointing is the model config's ``grad_checkpointing``.

The loss scaling and the global-batch sampling are the data-parallel layer's (``distributed``):
N processes train like one, up to float summation order (tested on CPU with gloo).

A sharded checkpoint is a directory: every process writes its shards of the weights and of the
optimiser state (``torch.distributed.checkpoint``), and rank 0 writes ``meta.pt`` -- configs,
tokenizer, input statistics, step, generators, history -- in the single-file checkpoint's format
minus the tensors. A run of any world size resumes from it exactly; one process without a
process group loads it whole (:func:`load_sharded_model`) to sample or to register.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

META = "meta.pt"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / META).is_file()


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded as one unit each: transformer blocks and decoder layers."""
    from .model import Block

    return [m for m in model.modules()
            if isinstance(m, Block) or type(m).__name__.endswith("DecoderLayer")]


def shard(model: nn.Module, *, cuda: bool) -> nn.Module:
    """Shard ``model`` in place over the default process group; returns it (its forward is the
    training forward)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if cuda else MixedPrecisionPolicy())
    for unit in shard_units(model):
        fully_shard(unit, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def dir_sha256(path: Path) -> str:
    """sha256 over a checkpoint directory's file names and contents, in name order."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                h.update(block)
    return h.hexdigest()


def save_sharded(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 meta: dict, rank: int, barrier: Any) -> str | None:
    """Every process writes its shards into ``path`` (a directory, replaced whole: a reader
    never sees half of it); rank 0 adds ``meta.pt`` and returns the directory's sha256."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    sha = None
    if rank == 0:
        torch.save(meta, tmp / META)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        sha = dir_sha256(path)
    barrier()
    return sha


def load_sharded_state(path: str | os.PathLike, *, model: nn.Module,
                       optimizer: torch.optim.Optimizer) -> None:
    """Resume: the weights and optimiser state of a sharded checkpoint into a (sharded or
    plain) model and its optimiser, whatever world size wrote it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


def load_sharded_model(path: str | os.PathLike, model: nn.Module) -> None:
    """The weights of a sharded checkpoint into a plain model, in one process (no process
    group): what sampling and registration need."""
    import torch.distributed.checkpoint as dcp

    state = {"model": dict(model.state_dict())}
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])


def read_meta(path: str | os.PathLike) -> dict:
    return torch.load(Path(path) / META, map_location="cpu", weights_only=True)
