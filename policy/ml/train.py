"""Supervised fine-tuning (SFT) of the listener policy: one straight training loop.

Loss = expression_weight * CE(expression tokens) + pose_weight * CE(head and jaw tokens)
     + smooth_weight * mean squared acceleration of the decoded expected values,
where the expected value of a dimension is sum_k softmax(logits)_k * centre_k in the tokenizer's
[-1, 1] units, and the acceleration is the second difference along time (between positions, and
within each predicted chunk). AdamW, linear warm-up then cosine decay, bf16 autocast on CUDA.
Checkpoints hold the optimiser, schedule and every generator's state, so an interrupted run that
resumes ends with the same weights as one that was never interrupted.

Under torchrun the same loop runs data-parallel (``distributed``): each process takes its shard of
the same global batch, the loss is normalised by the global token counts, DDP averages the
gradients; rank 0 writes the checkpoints and calls ``progress``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .backbone import build_model, pin_pretrained
from .checkpoint import checkpoint_meta, load_checkpoint, restore_rng, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import (
    Prepared,
    WindowStore,
    check_episodes,
    fit_input_stats,
    fit_noise_coupling,
    prepare_episode,
    prepare_episodes,
    raw_features_batch,
    window_index,
)
from .device import autocast, pick_device
from .policy import Policy
from .sharded import load_sharded_state, save_sharded, shard_units
from .tokenizer import ActionTokenizer

logger = logging.getLogger(__name__)

# TrainConfig fields a resumed run may set anew; the others must match the checkpoint's.
RESUME_MAY_CHANGE = ("device", "amp", "log_every", "eval_every", "checkpoint_every",
                     "compile_layers")

ProgressFn = Callable[[int, int, dict[str, float]], None]  # (step, total, losses)


@dataclass
class TrainResult:
    policy: Policy
    step: int  # optimiser steps done
    history: list[dict] = field(default_factory=list)  # one {step, lr, loss, ...} per log
    checkpoint: Path | None = None
    checkpoint_sha256: str | None = None
    tokenizer_round_trip: dict = field(default_factory=dict)  # ActionTokenizer.round_trip_error
    seconds: float = 0.0  # wall time of this call
    frames_per_s: float = 0.0  # training frames (window positions) per second, this call, all
    #   processes together (the global batch)
    world_size: int = 1  # processes that trained together (torchrun); 1 without a group


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device
                   ) -> torch.optim.AdamW:
    """AdamW over the trained weights (a frozen backbone's are left out); no decay on biases,
    norms and embedding tables."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def decays(name: str, p: torch.Tensor) -> bool:
        return p.ndim >= 2 and "text_in" not in name and "embed_tokens" not in name

    decay = [p for n, p in trained if decays(n, p)]
    no_decay = [p for n, p in trained if not decays(n, p)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda")


def _paths(x: torch.Tensor, tiled: bool) -> list[torch.Tensor]:
    """The trajectories the smoothness term runs along, from x (B, P, C, ...) at P positions."""
    b, p, c = x.shape[:3]
    if tiled:  # consecutive chunks form one trajectory of P * C frames
        return [x.reshape(b, p * c, *x.shape[3:])]
    return [x[:, :, 0], x.flatten(0, 1)]  # first frames of all positions: (B, P, ...); each
    #   chunk on its own: (B * P, C, ...)


def _triples(v: torch.Tensor) -> torch.Tensor:
    """(N, S - 2) float: frames whose second difference is defined, of a (N, S) bool mask."""
    return (v[:, 2:] & v[:, 1:-1] & v[:, :-2]).float()


def loss_counts(mask: torch.Tensor, tiled: bool) -> torch.Tensor:
    """(2,) float32: the supervised frames and the smoothness terms that normalise ``sft_loss``,
    of a (B, P, C) mask. Data-parallel processes sum theirs, so that every shard's loss is
    divided by the counts of the whole global batch."""
    ce = mask.sum().float()
    smooth = ce.new_zeros(())
    for v in _paths(mask, tiled):
        if v.shape[1] >= 3:
            smooth = smooth + _triples(v).sum()
    return torch.stack([ce, smooth])


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
             centers: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor,
             cfg: TrainConfig, tiled: bool = False, counts: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted token cross-entropy plus the smoothness penalty (see the module docstring).

    logits (B, P, C, D, K) at P supervised positions; targets (B, P, C, D) int64; mask (B, P, C)
    bool; centers (D, K) bin centres in [-1, 1] units; expression / pose: dimension indices.
    ``tiled``: the positions are ``chunk`` apart, so their chunks join into one trajectory.
    ``counts``: the denominators (:func:`loss_counts`), default this batch's own; given the
    global batch's, the losses of the shards add up to the loss of the global batch.
    """
    if counts is None:
        counts = loss_counts(mask, tiled)  # (2,)
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, P, C, D, K)
    ce = -logp.gather(-1, targets[..., None])[..., 0]  # (B, P, C, D)
    m = mask[..., None].float()  # (B, P, C, 1)
    per_dim = (ce * m).sum((0, 1, 2)) / counts[0].clamp_min(1.0)  # (D,)
    ce_expr = per_dim[expression].mean() if len(expression) else per_dim.new_zeros(())
    ce_pose = per_dim[pose].mean() if len(pose) else per_dim.new_zeros(())
    ev = torch.einsum("bpcdk,dk->bpcd", logp.exp(), centers)  # (B, P, C, D) expected values
    num = ce_expr.new_zeros(())
    for x, v in zip(_paths(ev, tiled), _paths(mask, tiled)):  # (N, S, D), (N, S)
        if x.shape[1] < 3:
            continue
        acc = x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2]  # (N, S - 2, D) second differences
        num = num + ((acc**2).mean(-1) * _triples(v)).sum()
    smooth = num / counts[1].clamp_min(1.0)
    loss = cfg.expression_weight * ce_expr + cfg.pose_weight * ce_pose + cfg.smooth_weight * smooth
    return loss, {"ce_expression": ce_expr.detach(), "ce_pose": ce_pose.detach(),
                  "smooth": smooth.detach()}


def compile_layers(model: torch.nn.Module) -> None:
    """Compile each decoder layer (or block) of ``model`` in place: the training step's shapes
    are fixed, and the fused norms, rotary and activations take ~30 % off a backbone's step."""
    for unit in shard_units(model):
        unit.compile()


def uncompile_layers(model: torch.nn.Module) -> None:
    """Undo :func:`compile_layers` (sampling feeds a few tokens at a time, in changing shapes).
    ``nn.Module.compile`` keeps the compiled call in ``_compiled_call_impl`` and has no public
    inverse; clearing it restores the module's own forward."""
    for unit in shard_units(model):
        unit._compiled_call_impl = None


class Trainer:
    """The state of one SFT run; :func:`train` is the entry point.

    ``dist``: this process's place in a data-parallel run (default: on its own). Every process
    holds all the data, draws the same global batch and trains on its rows of it."""

    def __init__(self, policy: Policy, tcfg: TrainConfig, train: Sequence[Prepared],
                 val: Sequence[Prepared], device: torch.device,
                 dist: distributed.Dist | None = None) -> None:
        self.policy, self.tcfg, self.device = policy, tcfg, device
        self.dist = dist or distributed.SINGLE
        distributed.check_batch(tcfg.batch_size, self.dist.world)
        self.rows = distributed.shard(tcfg.batch_size, self.dist)  # this process's batch rows
        self.cfg = policy.cfg
        self.train_set, self.val_set = train, val
        self.index = window_index(train, self.cfg.context)  # (W, 2)
        self.store = WindowStore(train, self.cfg, device)
        self.val_store = WindowStore(val, self.cfg, device) if val else None
        model = policy.model
        # An encoder whose input no training episode has gets no gradient; DDP must know.
        unused = ((model.audio_in is not None and self.store.mel is None)
                  or (model.text_in is not None and self.store.text is None)
                  or (model.video_in is not None and self.store.video is None))
        # The forward for training; sharded in place under fsdp (all ranks then take part in
        # every forward, saving and validation included).
        self.sharded = bool(tcfg.fsdp and self.dist.active)
        self.net = distributed.wrap(model, self.dist, find_unused=unused, fsdp=self.sharded)
        if tcfg.compile_layers and device.type == "cuda" and policy.cfg.backbone:
            compile_layers(model)
        self.optimizer = make_optimizer(model, tcfg, device)
        self.gen = torch.Generator().manual_seed(tcfg.seed + 1)  # windows and augmentation
        self.step = 0
        self.history: list[dict] = []
        layout = policy.layout
        self.expression = torch.as_tensor(layout.expression_indices, device=device)
        self.pose = torch.as_tensor(layout.pose_indices, device=device)
        tok = policy.tokenizer
        self.centers = tok.normalise(tok.centers.T).T.contiguous().to(device)  # (D, K), [-1, 1]

    def next_batch(self) -> dict:
        """This process's rows of the next global batch (all of it at world size 1). Every
        random draw is made for the whole global batch, so the generator's stream, and each
        example, are the same whatever the world size."""
        n, rows = self.tcfg.batch_size, self.rows
        picks = self.index[torch.randint(len(self.index), (n,), generator=self.gen)]  # (B, 2)
        batch = self.store.batch(picks[rows])  # (b, ...), b = B / world
        # Closed-loop robustness: the past listener input is noisy, sometimes hidden entirely.
        # (Drawn on the CPU generator, whose state the checkpoint keeps, then moved.)
        noise = torch.randn((n, *batch["prev"].shape[1:]), generator=self.gen)[rows]  # (b, L, D)
        noise = noise * self.tcfg.listener_noise
        batch["prev"] = batch["prev"] + noise.to(self.device) * batch["prev_valid"][..., None]
        hide = torch.rand(n, generator=self.gen)[rows] < self.tcfg.listener_drop  # (b,)
        batch["prev_valid"] = batch["prev_valid"] & ~hide.to(self.device)[:, None]
        stride = self.tcfg.loss_stride or self.cfg.chunk
        offset = int(torch.randint(stride, (1,), generator=self.gen))
        batch["heads_at"] = torch.arange(offset, self.cfg.context, stride, device=self.device)
        return batch

    def _tiled(self, at: torch.Tensor) -> bool:
        return len(at) > 1 and int(at[1] - at[0]) == self.cfg.chunk

    def loss(self, batch: dict, net: torch.nn.Module | None = None,
             counts: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The SFT loss of ``batch`` through ``net`` (default the bare model), normalised by
        ``counts`` (default the batch's own; see :func:`loss_counts`)."""
        at = batch["heads_at"]
        with autocast(self.device, self.tcfg.amp):
            logits = (net or self.policy.model)(batch, heads_at=at)  # (B, P, C, D, K)
        return sft_loss(logits, batch["targets"][:, at], batch["target_mask"][:, at],
                        self.centers, self.expression, self.pose, self.tcfg, self._tiled(at),
                        counts)

    def train_step(self) -> dict[str, torch.Tensor | float]:
        """One optimiser step. Losses come back as device tensors: reading them waits for the
        GPU, so the loop reads them only when it logs, and the CPU queues the next step.
        In a data-parallel run they are this process's shares (see :meth:`read_losses`)."""
        model, opt, d = self.policy.model, self.optimizer, self.dist
        self.net.train()
        lr = lr_at(self.step, self.tcfg)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = self.next_batch()
        counts = None
        if d.world > 1:
            at = batch["heads_at"]
            counts = distributed.all_reduce_sum(  # (2,) of the global batch
                loss_counts(batch["target_mask"][:, at], self._tiled(at)), d)
            if self.cfg.dropout > 0:  # this process's own masks, reproducible on resume
                torch.manual_seed(distributed.step_seed(self.tcfg.seed, self.step, d.rank))
        loss, parts = self.loss(batch, self.net, counts)
        opt.zero_grad(set_to_none=True)
        # DDP averages the gradients over the processes; the shares of the loss add up to the
        # global loss, so their gradients must add up too: scale by the world size.
        (loss * d.world if d.world > 1 else loss).backward()
        if self.tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.tcfg.grad_clip)
        opt.step()
        self.step += 1
        return {"loss": loss.detach(), "lr": lr, **parts}

    def read_losses(self, step_losses: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """The losses of :meth:`train_step` as floats, summed over the processes (every process
        must call this at the same steps: it is a collective in a data-parallel run)."""
        if self.dist.world == 1:
            return {k: float(v) for k, v in step_losses.items()}
        keys = [k for k, v in step_losses.items() if isinstance(v, torch.Tensor)]
        total = distributed.all_reduce_sum(torch.stack([step_losses[k].float() for k in keys]),
                                           self.dist)
        out = {k: float(v) for k, v in step_losses.items()}
        out.update(zip(keys, total.tolist(), strict=True))
        return out

    @torch.no_grad()
    def val_loss(self, max_windows: int = 256) -> float:
        """Mean loss over fixed, evenly spaced validation windows (no augmentation)."""
        self.policy.model.eval()
        index = window_index(self.val_set, self.cfg.context)
        picks = index[torch.linspace(0, len(index) - 1, min(max_windows, len(index))).long()]
        total, n = 0.0, 0
        stride = self.tcfg.loss_stride or self.cfg.chunk
        for chunk in picks.split(self.tcfg.batch_size):
            batch = self.val_store.batch(chunk)
            batch["heads_at"] = torch.arange(0, self.cfg.context, stride, device=self.device)
            loss, _ = self.loss(batch)
            total, n = total + float(loss) * len(chunk), n + len(chunk)
        return total / n

    def save(self, path: Path) -> str | None:
        """Rank 0 writes a checkpoint file and returns its sha256; a sharded run writes a
        directory of shards from every rank (rank 0 returns its sha256, the others None)."""
        common = dict(policy=self.policy, train_config=self.tcfg, step=self.step,
                      data_generator=self.gen, history=self.history,
                      schedule={"kind": "warmup-cosine", "step": self.step,
                                "lr": lr_at(self.step, self.tcfg)})
        if self.sharded:
            return save_sharded(path, model=self.policy.model, optimizer=self.optimizer,
                                meta=checkpoint_meta(**common), rank=self.dist.rank,
                                barrier=lambda: distributed.barrier(self.dist))
        if not self.dist.is_main:
            return None
        return save_checkpoint(path, optimizer=self.optimizer, **common)


def _prepare_split(episodes: Sequence[Any], cfg: ModelConfig, split: str, tokenizer, stats,
                   device: torch.device) -> list[Prepared]:
    eps = check_episodes(episodes, cfg, split=split, need_listener=True)
    return prepare_episodes(eps, cfg, stats, tokenizer, device=device)


def train(train_episodes: Sequence[Any], model_config: ModelConfig | None = None,
          train_config: TrainConfig | None = None, *, val_episodes: Sequence[Any] | None = None,
          checkpoint_path: str | Path | None = None, resume_from: str | Path | None = None,
          stop_at_step: int | None = None, progress: ProgressFn | None = None) -> TrainResult:
    """Train a policy on ``train_episodes`` (episode-like objects with a listener).

    The tokenizer and the input statistics are fitted on the training split. With
    ``resume_from``, configs, tokenizer, statistics, weights, optimiser, step and generators come
    from that checkpoint (configs given here must then be None or equal, but for the fields in
    RESUME_MAY_CHANGE: a run may continue on another device). ``stop_at_step`` ends
    the call early (the run is resumable from ``checkpoint_path``); ``progress(step, total,
    losses)`` is called every ``log_every`` steps and at the end.

    Under torchrun (:func:`distributed.init` done) every process calls this with the same
    arguments: each trains on its shard of every global batch, rank 0 alone writes the
    checkpoint, validates and calls ``progress``; all of them read ``resume_from``, which may come
    from a run of another world size. Only rank 0's result has ``checkpoint_sha256``.
    """
    started = time.perf_counter()
    dist = distributed.current()
    ckpt = load_checkpoint(resume_from) if resume_from is not None else None
    if ckpt is not None:
        saved_train = ckpt.train_config or TrainConfig()
        if train_config is not None:  # where and how often to log may change, nothing else
            saved_train = dataclasses.replace(
                saved_train, **{f: getattr(train_config, f) for f in RESUME_MAY_CHANGE})
        for given, saved in ((model_config, ckpt.model_config), (train_config, saved_train)):
            if given is not None and given != saved:
                raise ValueError(f"resuming {resume_from}: the given {type(given).__name__} "
                                 "differs from the checkpoint's; pass None to use the saved one")
        model_config, train_config = ckpt.model_config, saved_train
    cfg = pin_pretrained(model_config or ModelConfig())  # a backbone's hash goes in the config
    tcfg = train_config or TrainConfig()
    device = distributed.device_for(dist, tcfg.device) if dist.active else pick_device(tcfg.device)
    distributed.check_batch(tcfg.batch_size, dist.world)  # before the costly preparation

    eps = check_episodes(train_episodes, cfg, split="train", need_listener=True)
    raws = raw_features_batch(eps, cfg, device=device)  # log-mel on the training device
    if ckpt is not None:
        tokenizer = ckpt.tokenizer
    else:
        tokenizer = ActionTokenizer.fit(np.concatenate([e.listener for e in eps]),
                                        n_bins=cfg.n_bins, layout=cfg.layout)
    torch.manual_seed(tcfg.seed)  # initialisation and dropout (the global generator, as nanoGPT)
    model = build_model(cfg, tokenizer.width)
    if ckpt is None:
        stats = fit_input_stats(raws, cfg)
        model.set_input_stats({**stats, "noise_chol": fit_noise_coupling(
            [e.listener for e in eps], tokenizer, cfg.chunk)})
    else:
        stats = ckpt.input_stats()
    policy = Policy(model, tokenizer, cfg).to(device)
    train_set = [prepare_episode(e, cfg, stats, tokenizer, raw) for e, raw in zip(eps, raws)]
    val_set = (_prepare_split(val_episodes, cfg, "val", tokenizer, stats, device)
               if val_episodes else [])
    trainer = Trainer(policy, tcfg, train_set, val_set, device, dist)
    if ckpt is not None and ckpt.sharded:  # any world size, sharded or not
        load_sharded_state(ckpt.path, model=model, optimizer=trainer.optimizer)
    elif ckpt is not None and trainer.sharded:
        raise ValueError(f"resuming {resume_from}: a sharded (fsdp) run resumes from a sharded "
                         "checkpoint (a directory); start it from a new run instead")
    elif ckpt is not None:
        model.load_state_dict(ckpt.state["model"])
        trainer.optimizer.load_state_dict(ckpt.state["optimizer"])
    if ckpt is not None:
        trainer.step = ckpt.step
        trainer.history = list(ckpt.state["history"])
        restore_rng(ckpt.state["rng"], trainer.gen)
    round_trip = tokenizer.round_trip_error(np.concatenate([e.listener for e in eps]))
    main = dist.is_main
    if main:
        logger.info("SFT start: %d train windows, %d params, step %d/%d on %s (world size %d)",
                    len(trainer.index), model.n_params(), trainer.step, tcfg.max_steps, device,
                    dist.world)

    end = tcfg.max_steps if stop_at_step is None else min(stop_at_step, tcfg.max_steps)
    first_step, t0 = trainer.step, time.perf_counter()
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    sha, saved = None, False
    while trainer.step < end:
        step_losses = trainer.train_step()
        done = trainer.step == end
        validate = val_set and ((tcfg.eval_every and trainer.step % tcfg.eval_every == 0)
                                or trainer.step == tcfg.max_steps)
        if trainer.step % tcfg.log_every == 0 or done or validate:
            losses = trainer.read_losses(step_losses)  # a collective: every rank, same steps
            if validate and (main or trainer.sharded):  # sharded: every rank takes part
                losses["val_loss"] = trainer.val_loss()
            trainer.history.append({"step": trainer.step, **losses})
            if progress is not None and main:
                progress(trainer.step, tcfg.max_steps, losses)
        if path is not None and (done or (tcfg.checkpoint_every
                                          and trainer.step % tcfg.checkpoint_every == 0)):
            sha, saved = trainer.save(path), True
    if path is not None and not saved:  # nothing left to train: still leave a checkpoint
        sha = trainer.save(path)
    distributed.barrier(dist)  # the checkpoint is on disk before any rank returns
    seconds = time.perf_counter() - t0
    frames = (trainer.step - first_step) * tcfg.batch_size * cfg.context
    uncompile_layers(policy.model)  # sampling's shapes change every step: eager
    policy.model.eval()
    if main:
        logger.info("SFT done: step %d in %.1fs (%.0f frames/s)", trainer.step, seconds,
                    frames / max(seconds, 1e-9))
    return TrainResult(policy=policy, step=trainer.step, history=trainer.history, checkpoint=path,
                       checkpoint_sha256=sha, tokenizer_round_trip=round_trip,
                       seconds=time.perf_counter() - started,
                       frames_per_s=frames / max(seconds, 1e-9), world_size=dist.world)
