"""Sampling K listener candidates per episode, closed loop, chunk by chunk.

All K candidates of an episode (and several episodes) run as rows of one batch. At step s the
model reads the speaker up to frame s * chunk + look-ahead and its own sampled actions up to frame
s * chunk - 1 (through the key/value cache), and emits the next ``chunk`` frames. A bin is drawn
from each (frame, dimension) distribution -- softmax(logits / temperature), cut to the top-p
nucleus -- by inverting its CDF *in bin order* at a uniform number. The uniforms come from a
generator seeded by (seed, episode key), so an episode's candidates depend only on the policy, the
seed and the sampling settings, not on which other episodes share the batch.

This module samples from a model and its tokenizer on prepared inputs; ``Policy.sample`` (in
``policy``) checks and prepares episodes and calls :func:`sample_prepared`. It does not import
``policy``, so the import graph stays acyclic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from .config import SampleConfig
from .data import Prepared, pad_stack
from .device import autocast
from .model import VLA
from .tokenizer import ActionTokenizer

CPU_SINGLE_THREAD_ROWS = 512  # CPU passes with fewer rows (episodes x K) run on one thread


def episode_seed(seed: int, key: str) -> int:
    """A 63-bit seed for one episode's draws (stable across processes and machines)."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def pick_bins(logits: torch.Tensor, u: torch.Tensor, temperature: float,
              top_p: float) -> torch.Tensor:
    """Bin ids (...,) from logits (..., K) and uniforms u (...,) in [0, 1)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (..., K)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p  # the top bin is always kept
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = probs * keep
    cdf = probs.cumsum(-1)  # (..., K), in bin order so equal u means equal quantile
    target = u[..., None] * cdf[..., -1:]
    return (cdf <= target).sum(-1).clamp(max=probs.shape[-1] - 1)


def sampling_noise(group: Sequence[Prepared], cfg: SampleConfig, chunk: int,
                   chol: torch.Tensor, length: int) -> torch.Tensor:
    """(E * K, T, D) uniforms for inverse-CDF sampling, row = episode * K + candidate.

    Normals from each episode's own generator, correlated across dimensions through ``chol``
    (when ``couple_dims``), one draw per chunk (``noise="chunk"``) or per frame, mapped to [0, 1)
    by the normal CDF.
    """
    k, width = cfg.k, chol.shape[0]
    u = torch.zeros(len(group), k, length, width)  # (E, K, T, D)
    for i, p in enumerate(group):
        g = torch.Generator().manual_seed(episode_seed(cfg.seed, p.key))
        n_draws = -(-p.n_frames // chunk) if cfg.noise == "chunk" else p.n_frames
        z = torch.randn((k, n_draws, width), generator=g)  # (K, n, D)
        if cfg.couple_dims:
            z = z @ chol.T  # rows ~ N(0, chol chol^T)
        if cfg.noise == "chunk":  # every frame of a chunk uses its chunk's draw
            z = z.repeat_interleave(chunk, dim=1)[:, : p.n_frames]
        u[i, :, : p.n_frames] = 0.5 * (1 + torch.erf(z / 2**0.5))
    return u.flatten(0, 1).clamp(0.0, 1.0 - 1e-7)


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
        pos = torch.arange(fed, start + 1, device=device)  # positions to feed now
        step = {name: (x[:, pos] if x is not None and x.ndim > 1 else x)
                for name, x in inputs.items()}
        step["prev"] = actions[:, (pos - 1).clamp(min=0)]  # (B, n, D)
        step["prev_valid"] = (pos >= 1)[None, :].expand(b, -1)  # (B, n)
        with autocast(device, True):
            logits = model(step, pos=pos, cache=cache, heads_at=last)[:, 0]  # (B, C, D, K)
        n = min(chunk, length - start)
        new = pick_bins(logits[:, :n], u[:, start : start + n], cfg.temperature, cfg.top_p)
        ids[:, start : start + n] = new  # (B, n, D)
        actions[:, start : start + n] = tok.normalise(tok.decode(new))
        fed = start + 1
    values = tok.decode(ids.cpu()).view(len(group), k, length, width).numpy()
    return [values[i, :, : p.n_frames].copy() for i, p in enumerate(group)]


def sample_prepared(model: VLA, tokenizer: ActionTokenizer, prepared: Sequence[Prepared],
                    cfg: SampleConfig) -> list[np.ndarray]:
    """``cfg.k`` candidates for each prepared episode: a list of ``(K, T_i, D)`` float32 arrays,
    in the order of ``prepared``. The model runs in eval mode and is left as it was found."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # Longest first, so each pass pads little; as many episodes per pass as max_rows allows.
    order = sorted(range(len(prepared)), key=lambda i: -prepared[i].n_frames)
    per_pass = max(1, cfg.max_rows // cfg.k)
    out: list[np.ndarray | None] = [None] * len(prepared)
    threads = torch.get_num_threads()
    try:
        for s in range(0, len(order), per_pass):
            idx = order[s : s + per_pass]
            if device.type == "cpu" and len(idx) * cfg.k < CPU_SINGLE_THREAD_ROWS:
                # A step of a small pass is hundreds of tiny kernels: worker threads spend more
                # time meeting than working (20x slower with 2 threads on a busy 2-core box).
                torch.set_num_threads(1)
            group = [prepared[i] for i in idx]
            for i, values in zip(idx, _sample_group(model, tokenizer, group, cfg)):
                out[i] = values
            torch.set_num_threads(threads)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return out  # type: ignore[return-value]
