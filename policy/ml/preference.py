"""Preference optimisation of the listener policy: DPO, imitation and critic-guided (GRPO-style).

Every method scores whole listener sequences the way sampling draws them
(:func:`sequence_logprob`): log pi(y | speaker) = sum over chunk starts s = 0, C, 2C, ... of the
log-probabilities, at position s, of the tokens of frames s .. s + C - 1, with the sequence's own
previous frame fed back as ``prev``. The reference is a frozen copy of the parent.

  sft_chosen             L = NLL per token of the chosen sequences
  dpo                    L = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))  (ties skipped;
                             with label smoothing e: (1 - e) * that + e * the flipped term)
  dpo_imitation          L = dpo + imitation_weight * NLL per token of the chosen sequences
  critic                 per speaker episode, K samples of the current policy, scored by a critic
                         ensemble: reward_h = mean_h - lam_std * std_h, z-scored per head within
                         the K, summed over heads = advantage A;
                         L = -mean(A * pi(y) / n_tokens) + kl_coef * KL,
                         KL = mean over sampled tokens of exp(ref - pi) - (ref - pi) - 1 (k3)
  imitation_critic_best  L = NLL per token of the sample with the largest A of each episode

The critic methods take one gradient step per batch of samples (on-policy), so the probability
ratio of PPO/GRPO is 1 and needs no clipping.

Guards against reward hacking: every ``val_every`` steps (and for the parent at step 0) the
policy answers the validation episodes; mean L2 and FD against the reference listener (the
rule-following one where the corpus keeps it) must stay within ``max_l2_ratio`` /
``max_fd_ratio`` of the parent's. DPO checkpoints must also predict the snapshot's held-out
pairs better than chance (a one-sided test at ``chance_alpha``, shared among the run's
evaluations): weights fitted to random or contradictory labels can still move (DPO's pushes
on rejected sequences sharpen the policy whatever the labels) yet learned nothing from them.
The best validation score among the evaluations within bounds is kept; ``patience``
evaluations out of bounds in a row stop the run. Checkpoints resume exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .checkpoint import load_checkpoint, restore_rng, save_checkpoint
from .config import SampleConfig, TrainConfig, _from_dict
from .data import EpisodeData, Prepared, check_episodes, pad_stack, prepare_episodes
from .device import autocast, pick_device
from .evaluate import target
from .model import VLA
from .policy import Policy
from .prefdata import HEADS, Comparison, preferences
from .sample import episode_seed, sample_prepared
from .train import lr_at, make_optimizer

logger = logging.getLogger(__name__)

METHODS = ("sft_chosen", "dpo", "dpo_imitation", "critic", "imitation_critic_best")
PAIR_METHODS = ("sft_chosen", "dpo", "dpo_imitation")  # read human comparisons
CRITIC_METHODS = ("critic", "imitation_critic_best")  # sample and ask a critic
KIND = "preference-optimisation"  # marks this module's checkpoints (their "extra")
RESUME_MAY_CHANGE = ("device", "amp", "log_every", "checkpoint_every")
GROUP_STD_EPS = 1e-6  # a group whose rewards spread less than this carries no advantage

# scorer(prepared, candidates) -> mean (N, H), std (N, H) over a critic ensemble's members:
# candidate i, a (T_i, D) array in layout units, answers prepared[i] (the policy's inputs of its
# episode); H heads, the last "overall". ``CriticEnsemble.score`` has this form.
ScoreFn = Callable[[Sequence[Prepared], Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]]
ProgressFn = Callable[[int, int, dict[str, float]], None]  # (step, total, info)


# --- sequence log-probabilities -------------------------------------------------------------


@dataclass
class SequenceBatch:
    """Listener sequences teacher-forced through the policy, padded at the end."""

    inputs: dict[str, torch.Tensor | None]  # model inputs (B, L, ...), with prev / prev_valid
    ids: torch.Tensor  # (B, P * C, D) int64 action tokens, 0 past each sequence's end
    mask: torch.Tensor  # (B, P * C) bool: the frame belongs to its sequence
    heads_at: torch.Tensor  # (P,) the chunk starts 0, C, 2C, ... where sampling reads the heads

    @property
    def n_tokens(self) -> torch.Tensor:
        """(B,) int64 action tokens per sequence (frames x dimensions)."""
        return self.mask.sum(1) * self.ids.shape[-1]


def sequence_batch(model: VLA, prepared: Sequence[Prepared], listener_ids: Sequence[torch.Tensor],
                   tokenizer=None) -> SequenceBatch:
    """Inputs and targets for scoring ``listener_ids[i]`` (T_i, D) as answers to ``prepared[i]``.

    ``prev`` at frame t is the sequence's own decoded action of frame t - 1 in [-1, 1] units,
    as sampling feeds it back: ``tokenizer.normalise(tokenizer.decode(ids))``, or the model's
    bin centres (the same values) without a tokenizer.
    """
    if len(prepared) != len(listener_ids) or not prepared:
        raise ValueError(f"need one listener sequence per prepared episode, got "
                         f"{len(listener_ids)} for {len(prepared)}")
    device, chunk, width = next(model.parameters()).device, model.cfg.chunk, model.width
    for p, ids in zip(prepared, listener_ids):
        if tuple(ids.shape) != (p.n_frames, width):
            raise ValueError(f"episode {p.key!r}: listener tokens have shape {tuple(ids.shape)}, "
                             f"expected ({p.n_frames}, {width})")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= model.cfg.n_bins):
            raise ValueError(f"episode {p.key!r}: listener tokens outside 0 .. "
                             f"{model.cfg.n_bins - 1}")
    length = max(p.n_frames for p in prepared)
    n_pos = -(-length // chunk)  # chunk starts
    ids, _ = pad_stack([i.long().cpu() for i in listener_ids], n_pos * chunk)  # (B, P * C, D)
    mask = torch.arange(n_pos * chunk)[None, :] < torch.tensor([p.n_frames for p in prepared]
                                                               )[:, None]  # (B, P * C)
    if tokenizer is not None:
        actions = tokenizer.normalise(tokenizer.decode(ids))  # (B, P * C, D) in [-1, 1]
    else:
        actions = model.centers.cpu()[ids]
    actions = actions[:, :length] * mask[:, :length, None]
    prev = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], dim=1)  # (B, L, D)
    prev_valid = (torch.arange(length) >= 1)[None, :].expand(len(prepared), -1)  # (B, L)
    speaker, _ = pad_stack([p.speaker for p in prepared], length)
    mel, mel_mask = pad_stack([p.mel for p in prepared], length)
    text, _ = pad_stack([p.text for p in prepared], length)
    video, video_mask = pad_stack([p.video for p in prepared], length)
    inputs = {"speaker": speaker, "mel": mel, "mel_mask": mel_mask, "text": text,
              "video": video, "video_mask": video_mask, "prev": prev, "prev_valid": prev_valid}
    inputs = {k: (v.to(device) if v is not None else None) for k, v in inputs.items()}
    return SequenceBatch(inputs=inputs, ids=ids.to(device), mask=mask.to(device),
                         heads_at=torch.arange(0, length, chunk, device=device))


def token_logprobs(model: VLA, batch: SequenceBatch, *, temperature: float = 1.0,
                   amp: bool = True) -> torch.Tensor:
    """(B, P * C, D) float32 log-probability of every action token, 0 outside the sequences.

    One forward over whole sequences: the model's window mask limits each position to the last
    ``context`` frames, as the sampler's trimmed cache does.
    """
    device = batch.ids.device
    with autocast(device, amp):
        logits = model(batch.inputs, heads_at=batch.heads_at)  # (B, P, C, D, K)
    b, p, c, d, _ = logits.shape
    logits = logits.float() / temperature
    tgt = batch.ids.view(b, p, c, d)
    logp = logits.gather(-1, tgt[..., None])[..., 0] - logits.logsumexp(-1)  # (B, P, C, D)
    return logp.reshape(b, p * c, d) * batch.mask[..., None]


def sequence_logprob(model: VLA, prepared: Sequence[Prepared],
                     listener_ids: Sequence[torch.Tensor] | None = None, *, tokenizer=None,
                     temperature: float = 1.0, amp: bool = True,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(listener | speaker) of each sequence, (B,) float64, and its token count (B,).

    ``listener_ids`` (T_i, D) int64 default to each episode's own ``listener_ids``. Teacher-forced
    exactly as :func:`policy.ml.sample.sample_prepared` factorises a sample at ``temperature``:
    heads read at chunk starts, each frame's tokens counted once. Gradients flow unless called
    under ``torch.no_grad``; the model's train/eval mode is the caller's.
    """
    if listener_ids is None:
        missing = [p.key for p in prepared if p.listener_ids is None]
        if missing:
            raise ValueError(f"episodes {missing} have no listener to score")
        listener_ids = [p.listener_ids for p in prepared]
    batch = sequence_batch(model, prepared, listener_ids, tokenizer)
    logp = token_logprobs(model, batch, temperature=temperature, amp=amp)
    return logp.double().sum((1, 2)), batch.n_tokens


# --- configuration ----------------------------------------------------------------------------


@dataclass
class PreferenceConfig:
    method: str = "dpo"  # one of METHODS (see the module docstring)
    head: str = "overall"  # the comparisons the pair methods read (prefdata.HEADS)
    # --- DPO ---
    beta: float = 0.1  # implicit reward = beta * log(pi / ref); TRL's default
    label_smoothing: float = 0.0  # assumed share of flipped labels (conservative DPO); 0 = off
    imitation_weight: float = 1.0  # weight of the chosen NLL per token in "dpo_imitation"; the
    #   DPO term sums thousands of tokens per sequence, so 1.0 is a gentle anchor
    # --- critic-guided ---
    k: int = 4  # samples per speaker episode; advantages are normalised within these K
    lam_std: float = 1.0  # reward = ensemble mean - lam_std * ensemble std (Coste et al.)
    kl_coef: float = 0.01  # weight of the per-token KL estimate to the reference
    temperature: float = 1.0  # sampling temperature (training samples, validation, log-probs)
    # --- optimisation ---
    lr: float = 1e-4  # peak learning rate (well below SFT's: the parent is a good start)
    min_lr: float = 1e-5  # end of the cosine decay
    warmup: int = 10  # linear warm-up steps
    max_steps: int = 200  # optimiser steps
    batch_size: int = 8  # pairs (DPO), chosen sequences (sft_chosen) or speaker episodes
    #   (critic methods, each with k samples) per step
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    weight_decay: float = 0.0  # AdamW decay on matrices; none pulls towards zero, only the KL
    #   or the reference ratio pulls towards the parent
    dropout: bool = False  # keep the model's dropout while optimising; off by default, so the
    #   log-ratios to the reference start at exactly 0 and samples and gradients see one policy
    # --- guards ---
    val_every: int = 25  # steps between validation evaluations (0: only at the end)
    max_l2_ratio: float = 1.10  # bound on mean L2 to the reference listener, x the parent's
    max_fd_ratio: float = 1.10  # bound on mean FD to the reference listener, x the parent's
    patience: int = 2  # evaluations out of bounds in a row that stop the run
    chance_alpha: float = 0.05  # DPO methods: a checkpoint is kept only when its accuracy on
    #   the snapshot's held-out pairs is above chance (0.5) in a one-sided test at this level,
    #   shared among the run's evaluations (Bonferroni); weights that do not predict held-out
    #   preferences learned nothing from them. 0 disables
    val_k: int = 2  # samples per validation episode
    val_limit: int = 32  # validation episodes used (the first ones given)
    # --- bookkeeping ---
    log_every: int = 5  # steps between history entries and progress calls
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end)
    seed: int = 0  # batches, samples and validation draws
    device: str = "auto"  # "auto" picks CUDA when available, else CPU
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        checks = [("beta", self.beta > 0), ("label_smoothing", 0 <= self.label_smoothing < 0.5),
                  ("imitation_weight", self.imitation_weight >= 0), ("k", self.k >= 2),
                  ("lam_std", self.lam_std >= 0), ("kl_coef", self.kl_coef >= 0),
                  ("temperature", self.temperature > 0), ("lr", self.lr > 0),
                  ("min_lr", 0 <= self.min_lr <= self.lr), ("warmup", self.warmup >= 0),
                  ("max_steps", self.max_steps >= 1), ("batch_size", self.batch_size >= 1),
                  ("grad_clip", self.grad_clip >= 0), ("weight_decay", self.weight_decay >= 0),
                  ("val_every", self.val_every >= 0), ("max_l2_ratio", self.max_l2_ratio > 0),
                  ("max_fd_ratio", self.max_fd_ratio > 0), ("patience", self.patience >= 1),
                  ("chance_alpha", 0 <= self.chance_alpha < 1),
                  ("val_k", self.val_k >= 1), ("val_limit", self.val_limit >= 1),
                  ("log_every", self.log_every >= 1),
                  ("checkpoint_every", self.checkpoint_every >= 0)]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ValueError(f"PreferenceConfig: out of range: {bad} (k >= 2, rates and "
                             "bounds > 0, label_smoothing in [0, 0.5))")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreferenceConfig:
        return _from_dict(cls, data)

    def chance_z(self) -> float | None:
        """Standard errors above 0.5 a held-out accuracy needs (None: no test)."""
        if self.chance_alpha == 0:
            return None
        looks = (self.max_steps // self.val_every + (self.max_steps % self.val_every > 0)
                 if self.val_every else 1)
        return NormalDist().inv_cdf(1 - self.chance_alpha / looks)

    def schedule(self) -> TrainConfig:
        """The learning-rate schedule and AdamW settings, in SFT's terms."""
        return TrainConfig(max_steps=self.max_steps, lr=self.lr, min_lr=self.min_lr,
                           warmup_steps=self.warmup, weight_decay=self.weight_decay)


@dataclass
class OptimiseResult:
    policy: Policy  # the best evaluation within bounds; the parent when none was
    used_parent: bool  # no evaluation after step 0 passed the guards
    best_step: int | None  # step of the returned weights (None: the parent's)
    stopped_early: bool  # the guards stopped the run before max_steps
    step: int  # optimiser steps done
    history: list[dict] = field(default_factory=list)  # {step, loss, lr, ...} per log step
    evals: list[dict] = field(default_factory=list)  # guard evaluations, step 0 first
    parent_metrics: dict = field(default_factory=dict)  # the step-0 evaluation
    checkpoint: Path | None = None
    checkpoint_sha256: str | None = None
    seconds: float = 0.0  # wall time of this call


# --- the run ----------------------------------------------------------------------------------


@dataclass
class _Pair:
    episode: str
    chosen: torch.Tensor  # (T, D) int64 tokens
    rejected: torch.Tensor


def _fingerprint(model: VLA) -> str:
    """sha256 of a model's weights and buffers: a resumed run must start from the same parent."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cpu_state(model: VLA) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _smoothness(x: np.ndarray) -> float:
    """Mean squared second difference along time of a (T, D) sequence."""
    return float((np.diff(np.asarray(x, np.float64), 2, axis=0) ** 2).mean()) if len(x) > 2 \
        else 0.0


class _Run:
    """The state of one optimisation; :func:`optimise` is the entry point."""

    def __init__(self, parent: Policy, cfg: PreferenceConfig, comparisons, episodes, val_episodes,
                 scorer: ScoreFn | None) -> None:
        if cfg.method in CRITIC_METHODS and scorer is None:
            raise ValueError(f"method {cfg.method!r} needs a scorer (a critic ensemble)")
        self.cfg, self.scorer, self.parent = cfg, scorer, parent
        self.device = pick_device(cfg.device)
        self.tok = parent.tokenizer
        model = copy.deepcopy(parent.model).to(self.device)
        model.requires_grad_(True)
        self.policy = Policy(model, self.tok, parent.cfg)
        self.ref = copy.deepcopy(parent.model).to(self.device).eval().requires_grad_(False)
        self.parent_fingerprint = _fingerprint(parent.model)
        stats = parent.model.input_stats()

        def prepare(eps: Sequence[Any], split: str) -> list[Prepared]:
            checked = check_episodes(eps, parent.cfg, split=split, need_listener=False)
            return prepare_episodes(checked, parent.cfg, stats, self.tok, device=self.device)

        data = hashlib.sha256()  # what the run reads: a resumed run must read the same

        self.train_pairs: list[_Pair] = []
        self.test_pairs: list[_Pair] = []
        self.prep: dict[str, Prepared] = {}
        if cfg.method in PAIR_METHODS:
            self._read_pairs(comparisons, episodes)
            keys = sorted({p.episode for p in self.train_pairs + self.test_pairs})
            self.prep = dict(zip(keys, prepare([episodes[k] for k in keys], "comparison")))
            for p in self.train_pairs + self.test_pairs:
                data.update(p.episode.encode())
                data.update(torch.stack([p.chosen, p.rejected]).numpy().tobytes())
        else:
            self.train_prep = prepare(list(episodes.values()), "train")
            data.update(" ".join(p.key for p in self.train_prep).encode())
        vals = check_episodes(list(val_episodes)[: cfg.val_limit], parent.cfg, split="val",
                              need_listener=False)
        self.val_prep = prepare_episodes(vals, parent.cfg, stats, self.tok, device=self.device)
        self.val_targets = [self._target(e) for e in vals]
        for x in self.val_targets:
            data.update(np.ascontiguousarray(x, np.float32).tobytes())
        self.data_fingerprint = data.hexdigest()

        self.optimizer = make_optimizer(model, cfg.schedule(), self.device)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)  # batch picks
        self.step = 0
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.best: dict | None = None  # {"step", "score", "model"}
        self.bad_streak = 0
        self.stopped = False
        self.ref_train = self.ref_test = None
        if self.train_pairs and cfg.method != "sft_chosen":
            self.ref_train = self._pair_logps(self.ref, self.train_pairs)[0]  # (N, 2)
        if self.test_pairs and cfg.method != "sft_chosen":
            self.ref_test = self._pair_logps(self.ref, self.test_pairs)[0]

    # --- input -----------------------------------------------------------------------------
    def _read_pairs(self, comparisons: Sequence[Comparison] | None,
                    episodes: Mapping[str, EpisodeData]) -> None:
        decided = preferences(comparisons or [], head=self.cfg.head)
        if not decided:
            raise ValueError(f"method {self.cfg.method!r} needs decided comparisons on head "
                             f"{self.cfg.head!r}; none were given (ties do not count)")
        width = self.tok.width
        for i, c in enumerate(decided):
            where = f"comparison {i} (episode {c.episode!r})"
            if c.episode not in episodes:
                raise ValueError(f"{where}: the episode is not among the given episodes")
            n = episodes[c.episode].speaker.shape[0]
            for name, a in (("a", c.a), ("b", c.b)):
                if a.shape != (n, width):
                    raise ValueError(f"{where}: sequence {name!r} has shape {a.shape}, the "
                                     f"policy needs ({n}, {width}) for this episode")
                if not np.isfinite(a).all():
                    raise ValueError(f"{where}: sequence {name!r} contains NaN or infinity")
            pair = _Pair(c.episode, self.tok.encode(torch.as_tensor(c.chosen, dtype=torch.float32)),
                         self.tok.encode(torch.as_tensor(c.rejected, dtype=torch.float32)))
            (self.test_pairs if c.split == "test" else self.train_pairs).append(pair)
        if not self.train_pairs:
            raise ValueError(f"method {self.cfg.method!r}: every decided comparison is in the "
                             "test split; none is left to train on")

    def _target(self, ep: EpisodeData) -> np.ndarray:
        x = target(ep)
        where = f"validation episode {ep.key!r}"
        if x is None:
            raise ValueError(f"{where} has neither a reference nor a listener to measure against")
        x = np.asarray(x)
        if x.shape != (ep.n_frames, self.tok.width) or not np.isfinite(x).all():
            raise ValueError(f"{where}: the reference listener must be a finite "
                             f"({ep.n_frames}, {self.tok.width}) array, got shape {x.shape}")
        return x

    def _scores(self, group: Sequence[Prepared], samples: Sequence[np.ndarray]) -> np.ndarray:
        """(N, H) reward = mean - lam_std * std of the scorer's ensemble for every sample,
        ``samples[i]`` (K, T_i, D) answering ``group[i]``, in episode order."""
        rows = [p for p, s in zip(group, samples, strict=True) for _ in range(len(s))]
        flat = [c for s in samples for c in s]
        n = len(flat)
        mean, std = (np.asarray(a, np.float64) for a in self.scorer(rows, flat))
        if mean.ndim != 2 or mean.shape[0] != n or std.shape != mean.shape:
            raise ValueError(f"the scorer must return mean and std of shape ({n}, H), got "
                             f"{mean.shape} and {std.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise ValueError("the scorer returned NaN or infinite rewards")
        return mean - self.cfg.lam_std * std

    # --- log-probabilities -------------------------------------------------------------------
    def _logp(self, model: VLA, prep: Sequence[Prepared], ids: Sequence[torch.Tensor],
              ) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logprob(model, prep, ids, tokenizer=self.tok,
                                temperature=self.cfg.temperature, amp=self.cfg.amp)

    @torch.no_grad()
    def _pair_logps(self, model: VLA, pairs: Sequence[_Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 2) float64 log-probs of [chosen, rejected] and (N, 2) token counts, in eval mode."""
        was = model.training
        model.eval()
        lps, ns = [], []
        for s in range(0, len(pairs), self.cfg.batch_size):
            part = pairs[s : s + self.cfg.batch_size]
            prep = [self.prep[p.episode] for p in part] * 2
            lp, n = self._logp(model, prep, [p.chosen for p in part] + [p.rejected for p in part])
            lps.append(lp.view(2, -1).T.cpu())
            ns.append(n.view(2, -1).T.cpu())
        model.train(was)
        return torch.cat(lps), torch.cat(ns)

    # --- one step ------------------------------------------------------------------------------
    def _pair_step(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, b = self.cfg, self.cfg.batch_size
        idx = torch.randint(len(self.train_pairs), (b,), generator=self.gen)
        pairs = [self.train_pairs[i] for i in idx.tolist()]
        prep = [self.prep[p.episode] for p in pairs]
        if cfg.method == "sft_chosen":
            lp, n = self._logp(self.policy.model, prep, [p.chosen for p in pairs])
            nll = -lp.sum() / n.sum()
            return nll, {"nll": nll.detach()}
        lp, n = self._logp(self.policy.model, prep * 2,
                           [p.chosen for p in pairs] + [p.rejected for p in pairs])  # (2B,)
        ref = self.ref_train[idx].to(lp.device)  # (B, 2)
        chosen, rejected = lp[:b] - ref[:, 0], lp[b:] - ref[:, 1]  # log pi / ref, (B,) each
        z = cfg.beta * (chosen - rejected)
        eps = cfg.label_smoothing
        loss = (-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)).mean()
        info = {"dpo_loss": loss.detach(), "dpo_acc": (z > 0).double().mean(),
                "margin": z.detach().mean(), "chosen_reward": cfg.beta * chosen.detach().mean(),
                "rejected_reward": cfg.beta * rejected.detach().mean()}
        if cfg.method == "dpo_imitation":
            nll = -lp[:b].sum() / n[:b].sum()
            loss = loss + cfg.imitation_weight * nll
            info["nll"] = nll.detach()
        return loss, info

    def _critic_step(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, model, k = self.cfg, self.policy.model, self.cfg.k
        n_eps = min(cfg.batch_size, len(self.train_prep))
        # Without replacement: an episode's samples depend on its key, so a repeat is a copy.
        group = [self.train_prep[i] for i in
                 torch.randperm(len(self.train_prep), generator=self.gen)[:n_eps].tolist()]
        seed = episode_seed(cfg.seed, f"preference-step-{self.step}")
        samples = sample_prepared(model, self.tok, group, SampleConfig(
            k=k, temperature=cfg.temperature, seed=seed))  # [(K, T_i, D)] in eval, no grad
        reward = self._scores(group, samples).reshape(n_eps, k, -1)  # (E, K, H)
        mu, sd = reward.mean(1, keepdims=True), reward.std(1, keepdims=True)
        z = np.where(sd > GROUP_STD_EPS, (reward - mu) / np.maximum(sd, GROUP_STD_EPS), 0.0)
        adv = z.sum(-1)  # (E, K)
        info = {"reward": torch.tensor(reward.mean()),
                "reward_overall": torch.tensor(reward[..., -1].mean())}
        ids = [self.tok.encode(torch.from_numpy(c)) for s in samples for c in s]
        rows = [p for p in group for _ in range(k)]
        if cfg.method == "imitation_critic_best":
            best = adv.argmax(1)  # (E,)
            keep = [e * k + int(j) for e, j in enumerate(best)]
            lp, n = self._logp(model, [rows[i] for i in keep], [ids[i] for i in keep])
            nll = -lp.sum() / n.sum()
            info["nll"] = nll.detach()
            return nll, info
        batch = sequence_batch(model, rows, ids, self.tok)
        logp = token_logprobs(model, batch, temperature=cfg.temperature, amp=cfg.amp)
        with torch.no_grad():
            ref = token_logprobs(self.ref, batch, temperature=cfg.temperature, amp=cfg.amp)
        n = batch.n_tokens.double()  # (N,)
        a = torch.as_tensor(adv.reshape(-1), device=logp.device)  # (N,)
        pg = -(a * logp.double().sum((1, 2)) / n).mean()
        r = ref - logp  # (N, P * C, D), 0 outside the sequences, where k3 is 0 too
        kl = ((torch.exp(r) - r - 1).double().sum((1, 2)) / n).mean()
        info.update({"pg": pg.detach(), "kl": kl.detach(),
                     "adv_abs": torch.tensor(np.abs(adv).mean())})
        return pg + cfg.kl_coef * kl, info

    def train_step(self) -> dict[str, float]:
        cfg, model = self.cfg, self.policy.model
        lr = lr_at(self.step, cfg.schedule())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        step = self._critic_step if cfg.method in CRITIC_METHODS else self._pair_step
        model.train(cfg.dropout)  # dropout is the only difference between the modes
        loss, info = step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return {"loss": float(loss.detach()), "lr": lr, **{k: float(v) for k, v in info.items()}}

    # --- guards --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation figures of the current weights; ratios to the parent's (step 0)."""
        cfg, model = self.cfg, self.policy.model
        samples = sample_prepared(model, self.tok, self.val_prep, SampleConfig(
            k=cfg.val_k, temperature=cfg.temperature, seed=cfg.seed))
        l2s, fds, smooth = [], [], []
        for cands, tgt in zip(samples, self.val_targets, strict=True):
            for c in cands:
                l2s.append(metrics.l2(c, tgt))
                fds.append(metrics.fd(c, tgt))
                smooth.append(_smoothness(c))
        out: dict[str, Any] = {"step": self.step, "l2": float(np.mean(l2s)),
                               "fd": float(np.mean(fds)), "smooth": float(np.mean(smooth))}
        if self.scorer is not None:
            reward = self._scores(self.val_prep, samples)
            out["val_reward"] = float(reward.mean())
        if self.test_pairs:
            lp, n = self._pair_logps(model, self.test_pairs)
            if self.ref_test is not None:
                z = cfg.beta * ((lp[:, 0] - self.ref_test[:, 0]) - (lp[:, 1] - self.ref_test[:, 1]))
                out["val_acc"] = float(((z > 0).double() + 0.5 * (z == 0).double()).mean())
                out["val_margin"] = float(z.mean())
                # standard errors above chance (0.5) of the held-out accuracy
                out["val_acc_z"] = (out["val_acc"] - 0.5) / math.sqrt(0.25 / len(z))
            out["val_nll"] = float(-lp[:, 0].sum() / n[:, 0].sum())
        parent = self.evals[0] if self.evals else out
        for name in ("l2", "fd", "smooth"):
            out[f"{name}_ratio"] = out[name] / max(parent[name], 1e-12)
        out["within_bounds"] = bool(out["l2_ratio"] <= cfg.max_l2_ratio
                                    and out["fd_ratio"] <= cfg.max_fd_ratio)
        # A DPO checkpoint must also predict held-out preferences better than chance; one that
        # does not has fitted noise (random or contradictory labels), however close it stays.
        need = cfg.chance_z()
        out["above_chance"] = bool(cfg.method not in ("dpo", "dpo_imitation")
                                   or "val_acc_z" not in out or self.step == 0
                                   or need is None or out["val_acc_z"] >= need)
        # The score the best checkpoint is chosen by: held-out preferences where there are some,
        # else the critic's reward of the samples, else closeness to the reference.
        if cfg.method in ("dpo", "dpo_imitation") and "val_acc" in out:
            out["score"], out["score_kind"] = out["val_acc"], "val_acc"
        elif cfg.method == "sft_chosen" and "val_nll" in out:
            out["score"], out["score_kind"] = -out["val_nll"], "-val_nll"
        elif "val_reward" in out:
            out["score"], out["score_kind"] = out["val_reward"], "val_reward"
        else:
            out["score"], out["score_kind"] = -out["l2_ratio"], "-l2_ratio"
        return out

    def guard(self) -> None:
        ev = self.evaluate()
        self.evals.append(ev)
        if self.step == 0:
            logger.info("preference baseline (parent): l2 %.4g fd %.4g score %.4g", ev["l2"],
                        ev["fd"], ev["score"])
            return
        if ev["within_bounds"]:
            self.bad_streak = 0
            if ev["above_chance"] and (self.best is None or ev["score"] > self.best["score"]):
                self.best = {"step": self.step, "score": ev["score"],
                             "model": _cpu_state(self.policy.model)}
        else:
            self.bad_streak += 1
            self.stopped = self.bad_streak >= self.cfg.patience
        logger.info("preference step %d: l2 x%.3f fd x%.3f score %.4g%s%s%s", self.step,
                    ev["l2_ratio"], ev["fd_ratio"], ev["score"],
                    "" if ev["within_bounds"] else " OUT OF BOUNDS",
                    "" if ev["above_chance"] else " (held-out accuracy not above chance)",
                    " -> stopping" if self.stopped else "")

    # --- checkpoints ---------------------------------------------------------------------------
    def save(self, path: Path) -> str:
        extra = {"kind": KIND, "config": dataclasses.asdict(self.cfg), "evals": self.evals,
                 "best": self.best, "bad_streak": self.bad_streak, "stopped": self.stopped,
                 "parent_fingerprint": self.parent_fingerprint,
                 "data_fingerprint": self.data_fingerprint}
        return save_checkpoint(path, policy=self.policy, train_config=None, step=self.step,
                               optimizer=self.optimizer, data_generator=self.gen,
                               schedule={"kind": "warmup-cosine", "step": self.step,
                                         "lr": lr_at(self.step, self.cfg.schedule())},
                               history=self.history, extra=extra)

    def restore(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path, tokenizer=self.tok)
        extra = ckpt.state["extra"]
        if extra.get("kind") != KIND:
            raise ValueError(f"resuming {path}: not a preference optimisation checkpoint")
        if extra["parent_fingerprint"] != self.parent_fingerprint:
            raise ValueError(f"resuming {path}: it was started from another parent policy")
        if extra["data_fingerprint"] != self.data_fingerprint:
            raise ValueError(f"resuming {path}: it was started on other comparisons, episodes or "
                             "validation episodes")
        saved = dataclasses.replace(PreferenceConfig.from_dict(extra["config"]),
                                    **{f: getattr(self.cfg, f) for f in RESUME_MAY_CHANGE})
        if saved != self.cfg:
            raise ValueError(f"resuming {path}: the given PreferenceConfig differs from the "
                             f"checkpoint's (only {RESUME_MAY_CHANGE} may change)")
        self.policy.model.load_state_dict(ckpt.state["model"])
        self.optimizer.load_state_dict(ckpt.state["optimizer"])
        self.step = ckpt.step
        self.history = list(ckpt.state["history"])
        self.evals = list(extra["evals"])
        self.best = extra["best"]
        self.bad_streak = int(extra["bad_streak"])
        self.stopped = bool(extra["stopped"])
        restore_rng(ckpt.state["rng"], self.gen)

    def result_policy(self) -> Policy:
        if self.best is None:
            return self.parent
        model = copy.deepcopy(self.parent.model)  # a backbone is not read from disk again
        model.load_state_dict(self.best["model"])
        return Policy(model.eval(), self.tok, self.parent.cfg).to(self.device)


def optimise(parent: Policy, *, config: PreferenceConfig,
             comparisons: Sequence[Comparison] | None = None,
             episodes: Mapping[str, EpisodeData], val_episodes: Sequence[EpisodeData],
             scorer: ScoreFn | None = None, checkpoint_path: str | Path | None = None,
             resume_from: str | Path | None = None, stop_at_step: int | None = None,
             progress: ProgressFn | None = None) -> OptimiseResult:
    """Optimise a copy of ``parent`` by ``config.method``; the parent is the frozen reference.

    ``episodes`` maps episode keys to the speaker episodes: those the comparisons answer (pair
    methods; test-split comparisons give the held-out score) or those to sample on (critic
    methods). ``val_episodes`` feed the guards. ``scorer`` is the critic ensemble (see
    :data:`ScoreFn`). ``resume_from`` continues a checkpoint of the same parent and config
    exactly; ``stop_at_step`` ends the call early (resumable from ``checkpoint_path``).
    ``progress(step, total, info)`` is called with every history entry.
    """
    started = time.perf_counter()
    cfg = config
    if not val_episodes:
        raise ValueError("the guards need validation episodes; none were given")
    run = _Run(parent, cfg, comparisons, episodes, val_episodes, scorer)
    if resume_from is not None:
        run.restore(resume_from)
    logger.info("preference optimisation (%s) from step %d/%d on %s: %d train pairs, %d test "
                "pairs, %d validation episodes", cfg.method, run.step, cfg.max_steps, run.device,
                len(run.train_pairs), len(run.test_pairs), len(run.val_prep))
    if not run.evals:
        run.guard()  # the parent's figures, which the bounds are relative to
    end = cfg.max_steps if stop_at_step is None else min(stop_at_step, cfg.max_steps)
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    sha, saved, t0 = None, False, time.perf_counter()
    while run.step < end and not run.stopped:
        info = run.train_step()
        if not all(math.isfinite(v) for v in info.values()):
            raise FloatingPointError(f"preference step {run.step}: non-finite loss {info}")
        if (cfg.val_every and run.step % cfg.val_every == 0) or run.step == cfg.max_steps:
            run.guard()
        done = run.step == end or run.stopped
        if run.step % cfg.log_every == 0 or done:
            run.history.append({"step": run.step, **info})
            if progress is not None:
                progress(run.step, cfg.max_steps, info)
        if path is not None and (done or (cfg.checkpoint_every
                                          and run.step % cfg.checkpoint_every == 0)):
            sha, saved = run.save(path), True
    if path is not None and not saved:  # nothing left to do: still leave the checkpoint
        sha = run.save(path)
    run.policy.model.eval()
    logger.info("preference optimisation done: step %d in %.1fs, best step %s%s", run.step,
                time.perf_counter() - t0, run.best["step"] if run.best else None,
                ", stopped by the guards" if run.stopped else "")
    return OptimiseResult(
        policy=run.result_policy(), used_parent=run.best is None,
        best_step=run.best["step"] if run.best else None, stopped_early=run.stopped,
        step=run.step, history=run.history, evals=run.evals, parent_metrics=run.evals[0],
        checkpoint=path, checkpoint_sha256=sha, seconds=time.perf_counter() - started)
