"""Fully sharded SFT of a backbone policy on CPU: two gloo processes against one, the same
global batch; sharded checkpoints that resume exactly and load whole in one process."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from policy.ml import distributed
from policy.ml.backbone import save_random_backbone
from policy.ml.checkpoint import load_checkpoint, load_policy
from policy.ml.config import ModelConfig, TrainConfig
from policy.ml.sharded import is_sharded_checkpoint
from policy.ml.train import train

from .test_distributed import _free_port

RTOL, ATOL = 1e-4, 1e-5
TINY_LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2)


def _configs(backbone: Path) -> tuple[ModelConfig, TrainConfig]:
    model = ModelConfig(backbone=str(backbone), chunk=3, context=24, bin_head_dim=8, n_mels=8,
                        dropout=0.0, text_slots=2, grad_checkpointing=True)
    return model, TrainConfig(max_steps=4, batch_size=4, warmup_steps=1, log_every=1,
                              device="cpu", seed=2, fsdp=True, checkpoint_every=2)


def _full_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight whole (gathered from the shards: a collective under fsdp)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    return {k: v.detach().clone() for k, v in state.items()}


def _worker(rank: int, world: int, port: int, tmp: Path, data: list, backbone: Path) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init("cpu", timeout_s=120)
    out: dict = {}
    try:
        model_cfg, train_cfg = _configs(backbone)
        full = train(data, model_cfg, train_cfg, checkpoint_path=tmp / "two")
        sharded = any(type(p).__name__ == "DTensor" for p in full.policy.model.parameters())
        out.update(losses=[h["loss"] for h in full.history], sha=full.checkpoint_sha256,
                   params=_full_params(full.policy.model), sharded=sharded)
        train(data, model_cfg, train_cfg, checkpoint_path=tmp / "part", stop_at_step=2)
        rest = train(data, checkpoint_path=tmp / "part", resume_from=tmp / "part")
        out.update(rest_losses=[h["loss"] for h in rest.history],
                   rest_params=_full_params(rest.policy.model))
    finally:
        distributed.destroy()
    torch.save(out, tmp / f"rank{rank}.pt")


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=RTOL,
                                                       atol=ATOL) for k in a)


def test_two_sharded_processes_train_like_one_and_resume_exactly(tmp_path, episodes):
    backbone = save_random_backbone(
        tmp_path / "llama", words=sorted({w["word"] for e in episodes
                                          for w in (e.transcript or [])}), **TINY_LM)
    data = episodes[:4]
    model_cfg, train_cfg = _configs(backbone)
    one = train(data, model_cfg, dataclasses.replace(train_cfg, fsdp=False))
    one_params = {k: v.detach().clone() for k, v in one.policy.model.state_dict().items()}

    mp.start_processes(_worker, args=(2, _free_port(), tmp_path, data, backbone), nprocs=2,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    assert r0["sharded"] and r1["sharded"]  # every rank held shards, not replicas
    # the same loss curve and weights as one process, within float tolerance
    assert np.allclose(r0["losses"], [h["loss"] for h in one.history], rtol=RTOL, atol=ATOL)
    assert r0["losses"] == r1["losses"]
    assert _close(r0["params"], one_params)
    # the checkpoint is a directory of shards; rank 0 reports its hash
    assert is_sharded_checkpoint(tmp_path / "two") and r1["sha"] is None
    assert r0["sha"] == load_checkpoint(tmp_path / "two").sha256
    # stopped at step 2 and resumed from the shards: exactly the uninterrupted run
    assert r0["rest_losses"] == r0["losses"]
    assert all(torch.equal(r0["rest_params"][k], r0["params"][k]) for k in r0["params"])
    # one process, no process group, loads the shards whole and samples
    policy = load_policy(tmp_path / "two")
    assert _close({k: v for k, v in policy.model.state_dict().items()}, r0["params"])
    out = policy.sample(episodes[4:5], k=2)
    assert out[0].shape == (2, episodes[4].n_frames, 18) and np.isfinite(out[0]).all()
