"""Sampling K listener candidates per episode, closed loop, chunk by chunk.

All K candidates of an episode (and several episodes) run as rows of one batch. At step s the
model reads the speaker up to frame s * chunk + look-ahead and its own sampled actions up to frame
s * chunk - 1 (through the key/value cache), and emits the next ``chunk`` frames. A bin is drawn
from each (frame, dimension) distribution -- softmax(logits / temperature), cut to the top-p
nucleus -- by inverting its CDF *in bin order* at a uniform number. The uniforms come from a
generator seeded by (seed, episode key), so an episode's candidates depend only on the policy, the
seed and the sampling settings, not on which other episodes share the batch.

Two engines run the loop. ``"loop"`` (:func:`_sample_group`, here) grows a key/value cache step
by step; ``"static"`` (:func:`policy.ml.fastsample.sample_group_static`) keeps every shape fixed,
so that CUDA replays its step from a graph. They draw the same candidates: bit for bit on the
CPU; on CUDA up to bf16 rounding, where one bin flipped by it sends an episode's closed loop
elsewhere (the same holds there between passes of different sizes, whose kernels differ).
``SampleConfig.engine="auto"`` takes the static engine on CUDA and the loop on the CPU, where the
static engine has nothing to gain.

This module samples from a model and its tokenizer on prepared inputs; ``Policy.sample`` (in
``policy``) checks and prepares episodes and calls :func:`sample_prepared`. It does not import
``policy``, so the import graph stays acyclic; the draws both engines share live in
``fastsample`` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .config import SampleConfig
from .data import Prepared, pad_stack
from .device import autocast
from .fastsample import STATIC_CUDA_ROWS, sample_passes_static, supports_static
from .fastsample import episode_seed as episode_seed  # re-exported: callers import it from here
from .fastsample import pick_bins as pick_bins
from .fastsample import sampling_noise as sampling_noise
from .model import VLA
from .tokenizer import ActionTokenizer

CPU_SINGLE_THREAD_ROWS = 512  # CPU passes with fewer rows (episodes x K) run on one thread
LOOP_ROWS = 2048  # default rows (episodes x K) of a pass, but for the static engine on CUDA


@torch.no_grad()
def _sample_group(model: VLA, tok: ActionTokenizer, group: Sequence[Prepared],
                  cfg: SampleConfig) -> list[np.ndarray]:
    device, k, chunk = next(model.parameters()).device, cfg.k, model.cfg.chunk
    length = max(p.n_frames for p in group)
    width = tok.width

    def rows(x: torch.Tensor | None) -> torch.Tensor | None:  # (E, ...) -> (E * K, ...)
        return None if x is None else x.repeat_interleave(k, dim=0).to(device)

    speaker, _ = pad_stack([p.speaker for p in group], length)
    mel, mel_mask = pad_stack([p.mel for p in group], length)
    text, _ = pad_stack([p.text for p in group], length)
    video, video_mask = pad_stack([p.video for p in group], length)
    inputs = {"speaker": rows(speaker), "mel": rows(mel), "mel_mask": rows(mel_mask),
              "text": rows(text), "video": rows(video), "video_mask": rows(video_mask)}

    u = sampling_noise(group, cfg, chunk, model.noise_chol.cpu(), length).to(device)  # (B, T, D)

    b = len(group) * k
    ids = torch.zeros(b, length, width, dtype=torch.long, device=device)  # sampled tokens
    actions = torch.zeros(b, length, width, device=device)  # decoded, in [-1, 1] units
    cache = model.new_cache()
    fed = 0  # first position not yet in the cache
    last = torch.tensor([-1], device=device)
    for start in range(0, length, chunk):
        # The positions to feed now, made on the host (a backbone lays its sequence out there)
        # and copied without waiting for the GPU.
        pos_host = torch.arange(fed, start + 1)
        pos = pos_host.to(device, non_blocking=True)
        step = {name: (x[:, pos] if x is not None and x.ndim > 1 else x)
                for name, x in inputs.items()}
        step["prev"] = actions[:, (pos - 1).clamp(min=0)]  # (B, n, D)
        step["prev_valid"] = (pos >= 1)[None, :].expand(b, -1)  # (B, n)
        with autocast(device, True):
            logits = model(step, pos=pos_host, cache=cache, heads_at=last)[:, 0]  # (B, C, D, K)
        n = min(chunk, length - start)
        new = pick_bins(logits[:, :n], u[:, start : start + n], cfg.temperature, cfg.top_p)
        ids[:, start : start + n] = new  # (B, n, D)
        actions[:, start : start + n] = tok.normalise(tok.decode(new))
        fed = start + 1
    values = tok.decode(ids.cpu()).view(len(group), k, length, width).numpy()
    return [values[i, :, : p.n_frames].copy() for i, p in enumerate(group)]


def sample_engine(model: torch.nn.Module, cfg: SampleConfig) -> str:
    """The engine that samples ``model`` under ``cfg``: ``"loop"`` or ``"static"``."""
    device = next(model.parameters()).device
    if cfg.engine == "static" and not supports_static(model):
        raise ValueError(f"SampleConfig.engine='static' runs the small transformer (VLA), not "
                         f"{type(model).__name__}: use engine='loop' or 'auto'")
    if cfg.engine == "auto":
        return "static" if device.type == "cuda" and supports_static(model) else "loop"
    return cfg.engine


def rows_per_pass(cfg: SampleConfig, engine: str, device: torch.device) -> int:
    """``cfg.max_rows``, or by default 2048 -- and 16384 for the static engine on CUDA, whose
    larger passes save per-pass costs (graph capture, inputs) at bounded memory."""
    if cfg.max_rows is not None:
        return cfg.max_rows
    return STATIC_CUDA_ROWS if engine == "static" and device.type == "cuda" else LOOP_ROWS


def sample_prepared(model: VLA, tokenizer: ActionTokenizer, prepared: Sequence[Prepared],
                    cfg: SampleConfig) -> list[np.ndarray]:
    """``cfg.k`` candidates for each prepared episode: a list of ``(K, T_i, D)`` float32 arrays,
    in the order of ``prepared``. The model runs in eval mode and is left as it was found."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    engine = sample_engine(model, cfg)
    # Longest first, so each pass pads little; as many episodes per pass as max_rows allows.
    order = sorted(range(len(prepared)), key=lambda i: -prepared[i].n_frames)
    per_pass = max(1, rows_per_pass(cfg, engine, device) // cfg.k)
    passes = [order[s : s + per_pass] for s in range(0, len(order), per_pass)]
    groups = [[prepared[i] for i in idx] for idx in passes]
    results = (sample_passes_static(model, tokenizer, groups, cfg) if engine == "static"
               else (_sample_group(model, tokenizer, group, cfg) for group in groups))
    out: list[np.ndarray | None] = [None] * len(prepared)
    threads = torch.get_num_threads()
    try:
        for idx in passes:  # each pass runs when its results are asked for
            if device.type == "cpu" and len(idx) * cfg.k < CPU_SINGLE_THREAD_ROWS:
                # A step of a small pass is hundreds of tiny kernels: worker threads spend more
                # time meeting than working (20x slower with 2 threads on a busy 2-core box).
                torch.set_num_threads(1)
            for i, values in zip(idx, next(results)):
                out[i] = values
            torch.set_num_threads(threads)
    finally:
        results.close()
        torch.set_num_threads(threads)
        model.train(was_training)
    return out  # type: ignore[return-value]
