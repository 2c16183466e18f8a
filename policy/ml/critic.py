"""The critic: an ensemble of reward models r(speaker, listener) -> one reward per head.

A member reads what the policy reads of the speaker (standardised coefficients, log-mel audio,
the words heard, optionally video: :class:`Prepared` from ``Policy.prepare()``) and a candidate
listener sequence in the tokenizer's [-1, 1] units, with its frame-to-frame change. The sum of
their per-frame embeddings (through a GELU) is merged ``frame_stride`` frames to a token, goes
through a small non-causal transformer (the policy's ``Block`` with a padding mask), is
mean-pooled over the real frames and read out by one linear head per entry of ``HEADS`` (four
criteria and "overall").

Loss: Bradley-Terry with ties (Davidson 1970), per comparison on its own head only. With
rewards r_a, r_b, tie parameter nu = exp(log_nu[head]) and margin m(s) = margin_per_strength *
(s - 1) for a win of strength s:

    a wins:  d = r_a - r_b - m(s),  P = 1 / (1 + e^{-d} + nu e^{-d/2})
    b wins:  d = r_b - r_a - m(s),  the same
    tie:     d = r_a - r_b,         P = nu / (e^{d/2} + e^{-d/2} + nu)

so -log P(win) = logsumexp(0, -d, log nu - d/2) and -log P(tie) = logsumexp(d/2, -d/2, log nu)
- log nu. Without a margin the three probabilities sum to 1; the margin asks a strong win to be
won by more (the reward gap must exceed m(s) before it is as likely as a slight win at gap 0).

An ensemble of ``members`` such models, each with its own seed and its own bootstrap resample
of the training comparisons (whole items at a time, so repeated judgments of one item stay
together), gives a mean reward and a spread (std across members) that says where it does not
know; :func:`ensemble_reward` turns them into a pessimistic reward, mean - lambda * std.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import _canonical, _cpu, file_sha256
from .config import ModelConfig, _from_dict
from .data import (
    EpisodeData,
    Prepared,
    check_episodes,
    episode_from,
    pad_stack,
    prepare_episodes,
)
from .device import autocast, pick_device
from .errors import CheckpointError
from .model import Block, text_input, video_input
from .prefdata import HEADS, Comparison
from .tokenizer import ActionTokenizer

logger = logging.getLogger(__name__)

FORMAT = "backchannel-critic"
MEMBER_FORMAT = "backchannel-critic-member"
FORMAT_VERSION = 1
OUTCOME_CODE = {"a": 0, "b": 1, "tie": 2}
STRENGTHS = ("1", "2", "3")
DELTA_SCALE = 10.0  # a listener's frame-to-frame changes are a few hundredths of its [-1, 1]
#   range; scaled, they start on the footing of the positions (jitter and stillness are what
#   people notice first)
INPUT_BOUND = (2.0, 3.0)  # positions and scaled changes are clipped to these: a jump of a
#   third of the range per frame is already one no face makes, and beyond it a value would
#   only swamp the embedding of everything else in the frame
DATA_SEED_OFFSET = 7919  # a member's batch generator is seeded apart from its initialisation
CEILING_TOLERANCE = 0.05  # critic accuracy this far above human agreement counts as over it
CEILING_MIN_N = 30  # fewer judgments than this in a stratum: too noisy to compare
# CriticConfig fields a resumed run may set anew; the others must match the saved members'.
RESUME_MAY_CHANGE = ("device", "amp", "log_every")

ProgressFn = Callable[[int, int, dict], None]  # (done steps, total steps, info)


@dataclass
class CriticConfig:
    # --- each member's network ---
    d_model: int = 64  # width of the residual stream
    n_layers: int = 2  # non-causal transformer blocks over the frames
    frame_stride: int = 4  # frames merged into one transformer token (133 ms at 30 fps):
    #   attention then costs 1/16 of per-frame tokens; the merge keeps each frame's own weights
    n_heads: int = 4  # attention heads; d_model / n_heads must be even (rotary)
    mlp_ratio: int = 4  # hidden width of each MLP = mlp_ratio * d_model
    dropout: float = 0.1  # on attention, residual branches and input embeddings
    tie_init: float = 1.0  # Davidson nu at the start (P(tie) = 1/3 at equal rewards)
    # --- the ensemble ---
    members: int = 4  # independently seeded, bootstrapped reward models (a round uses >= 4)
    bootstrap: bool = True  # each member trains on items drawn with replacement (same count)
    # --- training ---
    epochs: float = 10.0  # passes over the training comparisons, per member
    max_steps: int = 0  # cap on optimiser steps per member (0: no cap)
    batch_size: int = 32  # comparisons per step (two sequences each)
    lr: float = 2e-3  # peak learning rate (AdamW), after warm-up, cosine-decayed to lr / 10
    warmup_steps: int = 20  # linear warm-up (at most a fifth of the member's steps)
    weight_decay: float = 0.05  # on matrices only; none on biases, norms, embeddings, nu
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    margin_per_strength: float = 0.5  # a win of strength s must be won by (s - 1) * this
    seed: int = 0  # member i uses seed + i (initialisation, dropout, resample, batches)
    log_every: int = 10  # steps between loss records and progress calls
    device: str = "auto"  # "auto" picks CUDA when available, else CPU
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model / n_heads must be an even integer (rotary embeddings)")
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.batch_size < 1 or self.epochs <= 0 or self.max_steps < 0 or self.log_every < 1:
            raise ValueError("need batch_size >= 1, epochs > 0, max_steps >= 0, log_every >= 1")
        if self.margin_per_strength < 0 or self.tie_init <= 0:
            raise ValueError("need margin_per_strength >= 0 and tie_init > 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CriticConfig:
        return _from_dict(cls, data)


# --- the loss --------------------------------------------------------------------------------


def davidson_nll(r_a: torch.Tensor, r_b: torch.Tensor, outcome: torch.Tensor,
                 strength: torch.Tensor, log_nu: torch.Tensor,
                 margin_per_strength: float) -> torch.Tensor:
    """(N,) -log P(outcome) of N comparisons (see the module docstring).

    r_a, r_b (N,) rewards on each comparison's head; outcome (N,) codes of OUTCOME_CODE;
    strength (N,) 1..3; log_nu (N,) or scalar: log of the head's tie parameter.
    """
    tie = outcome == OUTCOME_CODE["tie"]
    sign = torch.where(outcome == OUTCOME_CODE["b"], -1.0, 1.0).to(r_a.dtype)
    margin = margin_per_strength * (strength.to(r_a.dtype) - 1)
    d = sign * (r_a - r_b) - torch.where(tie, torch.zeros_like(margin), margin)  # (N,)
    log_nu = log_nu.expand_as(d)
    win = torch.logsumexp(torch.stack([torch.zeros_like(d), -d, log_nu - d / 2]), 0)
    draw = torch.logsumexp(torch.stack([d / 2, -d / 2, log_nu]), 0) - log_nu
    return torch.where(tie, draw, win)


def ensemble_reward(mean: np.ndarray, std: np.ndarray, lam: float) -> np.ndarray:
    """Pessimistic reward: the ensemble mean less ``lam`` times its spread."""
    return np.asarray(mean) - lam * np.asarray(std)


# --- one member --------------------------------------------------------------------------------


class Critic(nn.Module):
    def __init__(self, model_config: ModelConfig, width: int, config: CriticConfig) -> None:
        super().__init__()
        mc, d = model_config, config.d_model
        self.speaker_in = nn.Linear(width, d)
        self.audio_in = nn.Linear(mc.n_mels * mc.mel_per_frame, d) if mc.use_audio else None
        self.text_in = text_input(mc, d)
        self.video_in = video_input(mc, d)
        self.listener_in = nn.Linear(2 * width, d)  # position and change of each frame
        self.stride = config.frame_stride
        self.merge = nn.Linear(self.stride * d, d) if self.stride > 1 else None
        block = ModelConfig(d_model=d, n_layers=config.n_layers, n_heads=config.n_heads,
                            mlp_ratio=config.mlp_ratio, dropout=config.dropout)
        self.blocks = nn.ModuleList(Block(block) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, len(HEADS))  # row k: the linear head of HEADS[k]
        self.log_nu = nn.Parameter(torch.full((len(HEADS),), math.log(config.tie_init)))
        self.dropout = config.dropout
        for name, p in self.named_parameters():
            if p.ndim >= 2 and "ln" not in name:
                std = 0.02 / math.sqrt(2 * config.n_layers) if name.endswith("proj.weight") \
                    else 0.02
                nn.init.normal_(p, std=std)
        if isinstance(self.text_in, nn.Embedding):
            with torch.no_grad():
                self.text_in.weight[0].zero_()

    def forward(self, batch: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """Rewards (B, len(HEADS)) of a padded batch (see :class:`_Inputs`)."""
        x = self.speaker_in(batch["speaker"])  # (B, T, D) -> (B, T, d)
        if self.audio_in is not None and batch.get("mel") is not None:
            x = x + self.audio_in(batch["mel"]) * batch["mel_mask"].to(x.dtype)[:, None, None]
        if self.text_in is not None and batch.get("text") is not None:
            x = x + self.text_in(batch["text"])  # ids (B, T) or vectors (B, T, E) -> (B, T, d)
        if self.video_in is not None and batch.get("video") is not None:
            b, t = batch["video"].shape[:2]
            frames = self.video_in(batch["video"].flatten(0, 1)).view(b, t, -1)  # (B, T, d)
            x = x + frames * batch["video_mask"].to(x.dtype)[:, None, None]
        y = batch["listener"]  # (B, T, D) in [-1, 1] units
        delta = torch.cat([torch.zeros_like(y[:, :1]), y[:, 1:] - y[:, :-1]], dim=1)
        pos_bound, delta_bound = INPUT_BOUND
        y = torch.cat([y.clamp(-pos_bound, pos_bound),
                       (delta * DELTA_SCALE).clamp(-delta_bound, delta_bound)], dim=-1)
        x = x + self.listener_in(y)  # (B, T, 2D) -> (B, T, d)
        x = F.gelu(x)  # per frame, before the merge: a token can then carry how much its
        #   frames moved (jitter, stillness), not only a linear mix of where they went
        real = batch["mask"]  # (B, T) bool
        count = real.to(x.dtype)  # (B, T); merged: (B, N) real frames per token, N = T / stride
        if self.merge is not None:
            b, t, d = x.shape
            pad = -t % self.stride
            x = F.pad(x * count[..., None], (0, 0, 0, pad))  # padded frames add nothing
            x = self.merge(x.view(b, (t + pad) // self.stride, self.stride * d))  # (B, N, d)
            count = F.pad(count, (0, pad)).view(b, -1, self.stride).sum(-1)  # (B, N)
        x = F.dropout(x, self.dropout, self.training)
        keys = (count > 0)[:, None, None, :]  # (B, 1, 1, N): every token sees every real one
        pos = torch.arange(x.shape[1], device=x.device)
        for i, blk in enumerate(self.blocks):
            x = blk(x, pos, keys, None, i, None)
        w = count[..., None]  # (B, N, 1): tokens weigh by their real frames
        pooled = (self.ln_f(x) * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, d)
        return self.head(pooled)  # (B, H)


class _Inputs:
    """Episodes' speaker inputs and candidate sequences, padded once and kept on the device;
    a batch is a gather of (episode, candidate) rows cut to its longest episode."""

    def __init__(self, prepared: Sequence[Prepared], candidates: Sequence[torch.Tensor],
                 device: torch.device) -> None:
        self.lengths = torch.tensor([p.n_frames for p in prepared], dtype=torch.long)
        t = int(self.lengths.max())

        def pad(parts: list[torch.Tensor | None]) -> tuple[torch.Tensor | None, torch.Tensor]:
            out, present = pad_stack(parts, t)  # (E, T, ...), (E,)
            return (None if out is None else out.to(device)), present.to(device)

        self.speaker, _ = pad([p.speaker for p in prepared])  # (E, T, D)
        self.mel, self.mel_present = pad([p.mel for p in prepared])  # (E, T, M)
        self.text, _ = pad([p.text for p in prepared])  # (E, T) | (E, T, E')
        self.video, self.video_present = pad([p.video for p in prepared])  # (E, T, 3, S, S)
        self.cands, _ = pad(list(candidates))  # (C, T, D)
        self.lengths = self.lengths.to(device)
        self.device = device

    def batch(self, ep: torch.Tensor, cand: torch.Tensor) -> dict[str, torch.Tensor | None]:
        lengths = self.lengths[ep]  # (B,)
        t = int(lengths.max())
        return {
            "speaker": self.speaker[ep, :t],  # (B, t, D)
            "mel": self.mel[ep, :t] if self.mel is not None else None,
            "mel_mask": self.mel_present[ep],  # (B,)
            "text": self.text[ep, :t] if self.text is not None else None,
            "video": self.video[ep, :t] if self.video is not None else None,
            "video_mask": self.video_present[ep],
            "listener": self.cands[cand, :t],  # (B, t, D)
            "mask": torch.arange(t, device=self.device)[None] < lengths[:, None],  # (B, t)
        }


# --- the ensemble --------------------------------------------------------------------------------


class CriticEnsemble:
    def __init__(self, members: Sequence[Critic], *, config: CriticConfig,
                 model_config: ModelConfig, tokenizer: ActionTokenizer,
                 input_stats: Mapping[str, torch.Tensor]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.config = config
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.input_stats = {k: torch.as_tensor(v).detach().cpu().float()
                            for k, v in input_stats.items()}
        for m in self.members:
            m.eval()

    @property
    def device(self) -> torch.device:
        return next(self.members[0].parameters()).device

    def to(self, device: torch.device | str) -> CriticEnsemble:
        for m in self.members:
            m.to(device)
        return self

    def prepare(self, episodes: Iterable[Any]) -> list[Prepared]:
        """Speaker inputs of episodes, as the policy this critic was trained against sees them."""
        eps = check_episodes([dataclasses.replace(episode_from(e), listener=None)
                              for e in episodes], self.model_config, split="input",
                             need_listener=False)
        return prepare_episodes(eps, self.model_config, self.input_stats, self.tokenizer)

    def _normalise(self, seq: np.ndarray, where: str, n_frames: int) -> torch.Tensor:
        """A (T, D) candidate in layout units -> (T, D) float32 in [-1, 1] units, checked."""
        a = np.asarray(seq)
        if a.ndim != 2 or a.shape != (n_frames, self.tokenizer.width):
            raise ValueError(f"{where}: shape {a.shape}, expected ({n_frames}, "
                             f"{self.tokenizer.width}) (the episode's frames x the layout's "
                             f"{self.tokenizer.layout!r} width)")
        if not np.isfinite(a).all():
            raise ValueError(f"{where}: contains NaN or infinity")
        return self.tokenizer.normalise(torch.as_tensor(a, dtype=torch.float32))

    @torch.no_grad()
    def _member_rewards(self, inputs: _Inputs, ep: torch.Tensor, cand: torch.Tensor,
                       rows_per_batch: int = 256) -> torch.Tensor:
        """(M, N, H) float32 rewards of every member for rows (episode ``ep``, candidate
        ``cand``); the rows are batched in order of length, so padding stays small."""
        order = torch.argsort(inputs.lengths[ep].cpu(), stable=True)
        out = torch.empty(len(self.members), len(ep), len(HEADS))
        dev = inputs.device
        for m in self.members:
            m.eval()
        for idx in order.split(rows_per_batch):
            batch = inputs.batch(ep[idx].to(dev), cand[idx].to(dev))
            with autocast(dev, self.config.amp):
                r = torch.stack([m(batch) for m in self.members])  # (M, b, H)
            out[:, idx] = r.float().cpu()
        return out

    def score(self, prepared: Sequence[Prepared], candidates: Sequence[np.ndarray],
              rows_per_batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std across members (population std: 0 with one member) of the rewards,
        (N, len(HEADS)) each, of candidate i for prepared episode i."""
        if len(prepared) != len(candidates):
            raise ValueError(f"{len(prepared)} prepared episodes but {len(candidates)} "
                             "candidates: one candidate per episode")
        if not prepared:
            return np.zeros((0, len(HEADS)), np.float32), np.zeros((0, len(HEADS)), np.float32)
        cands = [self._normalise(c, f"candidate {i} (episode {p.key!r})", p.n_frames)
                 for i, (p, c) in enumerate(zip(prepared, candidates, strict=True))]
        rows = torch.arange(len(prepared))
        r = self._member_rewards(_Inputs(prepared, cands, self.device), rows, rows,
                                rows_per_batch)  # (M, N, H)
        return r.mean(0).numpy(), r.std(0, correction=0).numpy()

    # --- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return _canonical(_cpu({
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "critic_config": dataclasses.asdict(self.config),
            "model_config": dataclasses.asdict(self.model_config),
            "tokenizer": self.tokenizer.state_dict(),
            "input_stats": dict(self.input_stats),
            "members": [m.state_dict() for m in self.members],
        }))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return buf.getvalue()

    @property
    def content_hash(self) -> str:
        """sha256 of the file :meth:`save` writes."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, path: str | os.PathLike) -> str:
        """Write the ensemble atomically; return the file's sha256."""
        data = self.to_bytes()
        _write_atomic(Path(path), data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             expected_sha256: str | None = None) -> CriticEnsemble:
        path = Path(path)
        state = _read(path, FORMAT, expected_sha256)
        try:
            config = CriticConfig.from_dict(state["critic_config"])
            mc = ModelConfig.from_dict(state["model_config"])
            tok = ActionTokenizer.from_state_dict(state["tokenizer"])
            members = []
            for sd in state["members"]:
                m = Critic(mc, tok.width, config)
                m.load_state_dict(sd)
                members.append(m)
            ens = cls(members, config=config, model_config=mc, tokenizer=tok,
                      input_stats=state["input_stats"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: a {FORMAT} file whose contents do not fit "
                                  f"together ({type(exc).__name__}: {exc})") from exc
        return ens.to(pick_device(str(device)))


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, fmt: str, expected_sha256: str | None = None) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256.lower():
        raise CheckpointError(f"{path} has another sha256 than the {expected_sha256} expected")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the safe unpickler raises many types for a foreign file
        raise CheckpointError(f"{path} cannot be read safely as a {fmt} file ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != fmt:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a {fmt} file (format {found!r})")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {state.get('format_version')}, this "
                              f"code reads version {FORMAT_VERSION}")
    return state


# --- agreement and accuracy ---------------------------------------------------------------------


def _array_key(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return hashlib.blake2b(str(a.shape).encode() + a.tobytes(), digest_size=16).digest()


class _Keys:
    """Content keys of arrays, each array hashed once (snapshots share arrays between rows)."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[np.ndarray, bytes]] = {}

    def __call__(self, a: np.ndarray) -> bytes:
        hit = self._seen.get(id(a))
        if hit is None or hit[0] is not a:
            hit = self._seen[id(a)] = (a, _array_key(a))
        return hit[1]


def _summary(values: Sequence[float | None], comparisons: Sequence[Comparison]) -> dict:
    """Per head and over all heads: the mean of ``values`` (1 right, 0 wrong, 0.5 undecided;
    None: not counted), overall and by strength, with counts."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for v, c in zip(values, comparisons, strict=True):
        if v is not None:
            for head in (c.head, "all"):
                acc[head]["all"].append(v)
                acc[head][str(c.strength)].append(v)

    def cell(xs: list[float]) -> dict:
        return {"n": len(xs), "accuracy": float(np.mean(xs)) if xs else None}

    return {head: {**cell(acc[head]["all"]),
                   "by_strength": {s: cell(acc[head][s]) for s in STRENGTHS}}
            for head in (*HEADS, "all")}


def _agreement_values(comparisons: Sequence[Comparison], keys: _Keys | None = None,
                      ) -> list[float | None]:
    """Per comparison: does the majority of the other judgments of the same question agree
    (1 / 0.5 / 0); None where it is a tie, has no item or no other judgment."""
    keys = keys or _Keys()
    groups: dict[tuple, list[int]] = defaultdict(list)
    winners: list[bytes | None] = []
    for i, c in enumerate(comparisons):
        ka, kb = keys(c.a), keys(c.b)
        winners.append(None if c.outcome == "tie" else ka if c.outcome == "a" else kb)
        if c.item:  # one question: an item, a head and the two sequences in either order
            groups[(c.item, c.head, c.episode, *sorted((ka, kb)))].append(i)
    out: list[float | None] = [None] * len(comparisons)
    for members in groups.values():
        if len(members) < 2:
            continue
        for i in members:
            if winners[i] is None:
                continue
            others = [winners[j] for j in members if j != i]
            support = sum(1.0 if w == winners[i] else 0.5 if w is None else 0.0
                          for w in others) / len(others)
            out[i] = 1.0 if support > 0.5 else 0.5 if support == 0.5 else 0.0
    return out


def human_agreement(comparisons: Sequence[Comparison]) -> dict:
    """How often people agree with each other: for every decided judgment of a question (item,
    head, pair) judged at least twice, 1 if the majority of the other judgments (leave-one-out,
    their ties counted as half a vote each way) chose the same sequence, 0 if the other one,
    0.5 on a split. Per head and over all heads ("all"), overall and by the judgment's strength.
    """
    return _summary(_agreement_values(comparisons), comparisons)


def ceiling_check(critic: Mapping, human: Mapping, *, tolerance: float = CEILING_TOLERANCE,
                  min_n: int = CEILING_MIN_N) -> tuple[bool, list[dict], str]:
    """Strata (head x strength) where the critic's accuracy on the judgments human agreement
    was read on exceeds that agreement by more than ``tolerance``, on at least ``min_n``
    judgments. Predicting people better than people predict each other is a sign of
    over-fitting to the held-out set, or of a leak; with two judgments per item the
    leave-one-out majority is itself noisy, so this is a warning to look, not a verdict."""
    over = []
    for head in (*HEADS, "all"):
        for stratum in ("all", *STRENGTHS):
            c = critic[head] if stratum == "all" else critic[head]["by_strength"][stratum]
            h = human[head] if stratum == "all" else human[head]["by_strength"][stratum]
            if c["n"] >= min_n and h["n"] >= min_n and c["accuracy"] is not None \
                    and h["accuracy"] is not None and c["accuracy"] > h["accuracy"] + tolerance:
                over.append({"head": head, "strength": stratum, "n": c["n"],
                             "critic": c["accuracy"], "human": h["accuracy"]})
    if over:
        worst = max(over, key=lambda s: s["critic"] - s["human"])
        note = (f"held-out accuracy above human agreement on {len(over)} strata (worst: "
                f"{worst['head']}, strength {worst['strength']}: {worst['critic']:.2f} vs "
                f"{worst['human']:.2f} on {worst['n']} judgments): a sign of over-fitting")
    else:
        note = (f"no stratum with >= {min_n} judgments has held-out accuracy more than "
                f"{tolerance:.2f} above human agreement")
    return bool(over), over, note


# --- training ----------------------------------------------------------------------------------


@dataclass
class CriticResult:
    ensemble: CriticEnsemble
    history: list[list[dict]] = field(default_factory=list)  # per member: [{step, loss}, ...]
    report: dict = field(default_factory=dict)  # JSON-ready figures (see train_critic)
    seconds: float = 0.0  # wall time of this call


class _Data:
    """Comparisons as index tensors into deduplicated candidates and prepared episodes."""

    def __init__(self, comparisons: Sequence[Comparison], episodes: Mapping[str, EpisodeData],
                 model_config: ModelConfig, tokenizer: ActionTokenizer,
                 input_stats: Mapping[str, torch.Tensor]) -> None:
        width, keys = tokenizer.width, _Keys()
        used = sorted({c.episode for c in comparisons})
        missing = [k for k in used if k not in episodes]
        if missing:
            first = next(i for i, c in enumerate(comparisons) if c.episode == missing[0])
            raise ValueError(f"comparison {first} (item {comparisons[first].item!r}): episode "
                             f"{missing[0]!r} is not among the episodes given ({len(missing)} "
                             f"episode keys missing in all)")
        eps = check_episodes([dataclasses.replace(episode_from(episodes[k]), listener=None)
                              for k in used], model_config, split="critic", need_listener=False)
        stats = {k: torch.as_tensor(v).float() for k, v in input_stats.items()}
        self.prepared = prepare_episodes(eps, model_config, stats, tokenizer)
        ep_index = {k: i for i, k in enumerate(used)}
        cand_index: dict[bytes, int] = {}
        self.cands: list[torch.Tensor] = []
        rows = []
        h = hashlib.sha256()
        for i, c in enumerate(comparisons):
            n = self.prepared[ep_index[c.episode]].n_frames
            ids = []
            for side in ("a", "b"):
                a = np.asarray(getattr(c, side))
                where = f"comparison {i} (episode {c.episode!r}, item {c.item!r}), side {side}"
                if a.ndim != 2 or a.shape[1] != width or len(a) != n:
                    raise ValueError(f"{where}: shape {a.shape}, expected ({n}, {width}): the "
                                     f"episode's frames x the width of layout "
                                     f"{tokenizer.layout!r}")
                if not np.isfinite(a).all():
                    raise ValueError(f"{where}: contains NaN or infinity")
                k = keys(a)
                if k not in cand_index:
                    cand_index[k] = len(self.cands)
                    self.cands.append(tokenizer.normalise(torch.as_tensor(a, dtype=torch.float32)))
                ids.append(cand_index[k])
                h.update(k)
            rows.append((ep_index[c.episode], *ids, OUTCOME_CODE[c.outcome], int(c.strength),
                         HEADS.index(c.head)))
            h.update(repr((c.episode, c.outcome, int(c.strength), c.head, c.split,
                           c.item)).encode())
        for p in self.prepared:
            for t in (p.speaker, p.mel, p.text, p.video):
                if t is not None:
                    h.update(t.numpy().tobytes())
        self.fingerprint = h.hexdigest()
        table = torch.tensor(rows, dtype=torch.long).view(-1, 6)  # (N, 6)
        self.ep, self.a, self.b, self.outcome, self.strength, self.head = table.unbind(1)
        self.comparisons = list(comparisons)
        self.is_train = torch.tensor([c.split == "train" for c in comparisons], dtype=torch.bool)
        self.items = [c.item or f"#{i}" for i, c in enumerate(comparisons)]  # no item: alone


def _resample(data: _Data, train_idx: torch.Tensor, gen: torch.Generator,
              bootstrap: bool) -> torch.Tensor:
    """The member's training comparisons: whole items drawn with replacement, as many draws
    as there are items (or all of them, without bootstrap)."""
    if not bootstrap:
        return train_idx
    by_item: dict[str, list[int]] = defaultdict(list)
    for i in train_idx.tolist():
        by_item[data.items[i]].append(i)
    groups = list(by_item.values())
    draws = torch.randint(len(groups), (len(groups),), generator=gen).tolist()
    return torch.tensor([i for g in draws for i in groups[g]], dtype=torch.long)


def _lr(step: int, total: int, cfg: CriticConfig) -> float:
    warm = min(cfg.warmup_steps, total // 5)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


def _run_id(cfg: CriticConfig, model_config: ModelConfig, tokenizer: ActionTokenizer,
            stats: Mapping[str, torch.Tensor], fingerprint: str) -> str:
    """What a saved member must have been trained with to be reused on resume."""
    kept = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_MAY_CHANGE}
    h = hashlib.sha256(repr((sorted(kept.items()), sorted(dataclasses.asdict(
        model_config).items()), tokenizer.fingerprint(), fingerprint)).encode())
    for k in sorted(stats):
        h.update(torch.as_tensor(stats[k]).float().numpy().tobytes())
    return h.hexdigest()


def _train_member(i: int, data: _Data, inputs: _Inputs, make: Callable[[], Critic],
                  cfg: CriticConfig, steps: int, device: torch.device,
                  report_progress: Callable[[int, dict], None]) -> tuple[Critic, list[dict]]:
    seed = cfg.seed + i
    devices = ([device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=devices):  # the caller's generators stay untouched
        torch.manual_seed(seed)  # initialisation and dropout
        gen = torch.Generator().manual_seed(seed + DATA_SEED_OFFSET)  # resample and batches
        model = make().to(device)
        train_idx = torch.nonzero(data.is_train)[:, 0]
        sample = _resample(data, train_idx, gen, cfg.bootstrap)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "text_in" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2
                                                               and "text_in" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=cfg.lr,
                                betas=(0.9, 0.95))
        cols = [t.to(device) for t in (data.ep, data.a, data.b, data.outcome, data.strength,
                                       data.head)]
        queue = torch.empty(0, dtype=torch.long)
        history: list[dict] = []
        running = torch.zeros((), device=device)
        since = 0
        model.train()
        for step in range(steps):
            while len(queue) < cfg.batch_size:  # epochs of the resample, each shuffled
                queue = torch.cat([queue, sample[torch.randperm(len(sample), generator=gen)]])
            pick, queue = queue[: cfg.batch_size].to(device), queue[cfg.batch_size :]
            ep, a, b, outcome, strength, head = (c[pick] for c in cols)  # (B,) each
            for group in opt.param_groups:
                group["lr"] = _lr(step, steps, cfg)
            batch = inputs.batch(torch.cat([ep, ep]), torch.cat([a, b]))  # 2B rows
            with autocast(device, cfg.amp):
                r = model(batch).float()  # (2B, H)
            r_a, r_b = r.chunk(2)  # (B, H) each
            loss = davidson_nll(r_a.gather(1, head[:, None])[:, 0],
                                r_b.gather(1, head[:, None])[:, 0], outcome, strength,
                                model.log_nu[head], cfg.margin_per_strength).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            running, since = running + loss.detach(), since + 1
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                mean = float(running) / since  # reading the loss waits for the device
                history.append({"step": step + 1, "loss": mean})
                running, since = torch.zeros((), device=device), 0
                report_progress(step + 1, {"member": i, "step": step + 1, "loss": mean})
    model.eval()
    return model, history


def _accuracy(diff: torch.Tensor, outcome: torch.Tensor) -> list[float | None]:
    """1 / 0 / 0.5 per comparison: does the reward gap point to the chosen side (ties: None)."""
    sign = torch.sign(diff).tolist()
    return [None if o == OUTCOME_CODE["tie"] else
            0.5 if s == 0 else float((s > 0) == (o == OUTCOME_CODE["a"]))
            for s, o in zip(sign, outcome.tolist(), strict=True)]


def _report(data: _Data, ens: CriticEnsemble, inputs: _Inputs,
            history: list[list[dict]]) -> dict:
    # Every distinct (episode, candidate) is scored once, by every member.
    pairs = torch.cat([torch.stack([data.ep, data.a], 1), torch.stack([data.ep, data.b], 1)])
    uniq, inv = torch.unique(pairs, dim=0, return_inverse=True)
    r = ens._member_rewards(inputs, uniq[:, 0], uniq[:, 1])  # (M, U, H)
    n = len(data.ep)
    per_member = r[:, inv[:n], data.head] - r[:, inv[n:], data.head]  # (M, N) r_a - r_b
    diff = per_member.mean(0)  # (N,) the ensemble mean's gap
    comps = data.comparisons
    train = [i for i in range(n) if data.is_train[i]]
    test = [i for i in range(n) if not data.is_train[i]]
    correct = _accuracy(diff, data.outcome)

    def summary(values: list, idx: list[int]) -> dict:
        return _summary([values[i] for i in idx], [comps[i] for i in idx])

    heldout = summary(correct, test)
    log_nu = torch.stack([m.log_nu.detach().float().cpu() for m in ens.members]).mean(0)
    nll = davidson_nll(diff, torch.zeros_like(diff), data.outcome, data.strength,
                       log_nu[data.head], ens.config.margin_per_strength)  # (N,)
    for head in (*HEADS, "all"):
        rows = [i for i in test if head in ("all", comps[i].head)]
        heldout[head]["ties"] = sum(comps[i].outcome == "tie" for i in rows)
        heldout[head]["nll"] = float(nll[rows].mean()) if rows else None
    test_comps = [comps[i] for i in test]
    human_values = _agreement_values(test_comps)
    human = _summary(human_values, test_comps)
    same = [correct[i] if v is not None else None for i, v in zip(test, human_values,
                                                                 strict=True)]
    critic_same = _summary(same, test_comps)
    flag, strata, note = ceiling_check(critic_same, human)
    members = []
    for k in range(len(ens.members)):
        acc = _accuracy(per_member[k], data.outcome)
        members.append({
            "member": k, "seed": ens.config.seed + k,
            "final_loss": history[k][-1]["loss"] if history[k] else None,
            "train_accuracy": summary(acc, train)["all"]["accuracy"],
            "heldout_accuracy": summary(acc, test)["all"]["accuracy"],
        })
    spread = r.std(0, correction=0)  # (U, H) across members
    return {
        "data": {"comparisons": n, "train": len(train), "test": len(test),
                 "ties_train": sum(comps[i].outcome == "tie" for i in train),
                 "ties_test": sum(comps[i].outcome == "tie" for i in test),
                 "candidates": len(data.cands), "episodes": len(data.prepared),
                 "fingerprint": data.fingerprint},
        "train": summary(correct, train),
        "heldout": heldout,
        "human": human,
        "heldout_on_human_set": critic_same,
        "over_ceiling": flag,
        "over_ceiling_strata": strata,
        "over_ceiling_note": note,
        "members": members,
        "spread": {"mean_std": {h: float(spread[:, j].mean()) for j, h in enumerate(HEADS)},
                   "max_std": float(spread.max()) if spread.numel() else 0.0},
        "tie_nu": {h: float(log_nu[j].exp()) for j, h in enumerate(HEADS)},
    }


def train_critic(comparisons: Sequence[Comparison], episodes: Mapping[str, EpisodeData], *,
                 model_config: ModelConfig, tokenizer: ActionTokenizer,
                 input_stats: Mapping[str, torch.Tensor], config: CriticConfig | None = None,
                 progress: ProgressFn | None = None,
                 checkpoint_dir: str | os.PathLike | None = None,
                 resume: bool = True) -> CriticResult:
    """Train ``config.members`` critics on the comparisons of split "train"; report on "test".

    ``episodes`` maps episode keys to episodes (their speaker side is used; a listener, if
    present, is ignored). With ``checkpoint_dir`` every finished member is written there as
    ``member_<i>.pt``; with ``resume`` the members found there (of this very run: same data,
    configs, tokenizer and statistics) are loaded instead of trained, so a killed worker goes
    on at the member it was on and ends with the ensemble an uninterrupted run makes.
    ``progress(done, total, info)`` counts optimiser steps over all members.

    The report (JSON-ready) holds ``train`` and ``heldout`` accuracy of the ensemble mean on
    decided comparisons, ``human`` agreement on the same test comparisons
    (:func:`human_agreement`), ``heldout_on_human_set`` (the critic on exactly those judgments),
    ``over_ceiling`` with its strata and note (:func:`ceiling_check`), per-member figures and the
    spread across members. Accuracy blocks are ``{head: {n, accuracy, by_strength}}`` for every
    head and "all".
    """
    started = time.perf_counter()
    cfg = config or CriticConfig()
    device = pick_device(cfg.device)
    model_config = model_config.without_backbone()  # the critic is a small network of its own
    if not any(c.split == "train" for c in comparisons):
        raise ValueError(f"none of the {len(comparisons)} comparisons has split 'train': the "
                         "critic has nothing to learn from")
    data = _Data(comparisons, episodes, model_config, tokenizer, input_stats)
    n_train = int(data.is_train.sum())
    steps = max(1, math.ceil(cfg.epochs * n_train / cfg.batch_size))
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    total = steps * cfg.members
    inputs = _Inputs(data.prepared, data.cands, device)
    run_id = _run_id(cfg, model_config, tokenizer, input_stats, data.fingerprint)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    logger.info("critic %s: %d members x %d steps on %d train comparisons (%d test), %s",
                run_id[:12], cfg.members, steps, n_train, len(data.ep) - n_train, device)

    def make() -> Critic:
        return Critic(model_config, tokenizer.width, cfg)

    members, history = [], []
    for i in range(cfg.members):
        t0 = time.perf_counter()
        path = folder / f"member_{i}.pt" if folder is not None else None
        if path is not None and resume and path.exists():
            saved = _read(path, MEMBER_FORMAT)
            if saved.get("run") != run_id or saved.get("member") != i:
                raise ValueError(f"{path} was written by another critic run (other data, "
                                 "configs, tokenizer or statistics); use a fresh folder or "
                                 "resume=False")
            model = make()
            model.load_state_dict(saved["state"])
            model.to(device).eval()
            members.append(model)
            history.append(list(saved["history"]))
            if progress is not None:
                progress((i + 1) * steps, total, {"member": i, "resumed": True})
            logger.info("critic %s: member %d loaded from %s", run_id[:12], i, path)
            continue

        def report_progress(step: int, info: dict, base: int = i * steps) -> None:
            if progress is not None:
                progress(base + step, total, info)

        model, hist = _train_member(i, data, inputs, make, cfg, steps, device, report_progress)
        members.append(model)
        history.append(hist)
        if path is not None:
            _write_atomic(path, _member_bytes(model, i, run_id, hist))
        logger.info("critic %s: member %d trained in %.1fs, final loss %.4f", run_id[:12], i,
                    time.perf_counter() - t0, hist[-1]["loss"])
    ens = CriticEnsemble(members, config=cfg, model_config=model_config, tokenizer=tokenizer,
                         input_stats=input_stats)
    t0 = time.perf_counter()
    report = _report(data, ens, inputs, history)
    report["steps_per_member"] = steps
    report["seconds"] = time.perf_counter() - started
    logger.info("critic %s: report in %.1fs; held-out accuracy %s, human agreement %s",
                run_id[:12], time.perf_counter() - t0, report["heldout"]["overall"]["accuracy"],
                report["human"]["overall"]["accuracy"])
    return CriticResult(ensemble=ens, history=history, report=report,
                        seconds=time.perf_counter() - started)


def _member_bytes(model: Critic, i: int, run_id: str, history: list[dict]) -> bytes:
    buf = io.BytesIO()
    torch.save(_canonical(_cpu({"format": MEMBER_FORMAT, "format_version": FORMAT_VERSION,
                                "member": i, "run": run_id, "state": model.state_dict(),
                                "history": history})), buf)
    return buf.getvalue()
