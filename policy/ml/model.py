"""The listener VLA: speaker encoders, a causal transformer over frames, per-dimension bin heads.

Each frame is one token. Its embedding is the sum of
  * the speaker's coefficients (linear), log-mel audio (linear), the last heard word (hashed
    embedding, or a linear map of a registered text encoder's vectors) and, optionally, a video
    frame (small conv net) -- all taken ``lookahead`` frames ahead, so position t sees the speaker
    up to t + lookahead;
  * the listener's own previous action (frame t - 1, decoded tokens; a learned start vector before
    the episode): the closed loop.
A causal transformer with rotary positions and a sliding window of ``context`` frames mixes them;
position t then predicts the action tokens of frames t .. t + chunk - 1, every dimension through
its own head over ``n_bins`` bins. Sampling feeds its own decoded actions back in through a
key/value cache (:class:`KVCache`), ``chunk`` frames per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .config import ModelConfig


def rotary(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (B, H, T, hd) by angles ``pos * freq`` (RoFormer)."""
    hd = x.shape[-1]
    freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd))
    ang = pos.to(torch.float32)[:, None] * freq[None, :]  # (T, hd / 2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def window_mask(qpos: torch.Tensor, kpos: torch.Tensor, window: int) -> torch.Tensor:
    """(Tq, Tk) bool: query at frame q may see keys at frames q - window + 1 .. q."""
    diff = qpos[:, None] - kpos[None, :]
    return (diff >= 0) & (diff < window)


def attend_few(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention of a few queries q (B, H, T, hd) to keys and values (B, H, S, hd) under
    a (T, S) bool mask, written out. Fused attention kernels tile 64 or more queries, so for the
    chunk of a sampling step (T = 4) they compute mostly padding: on an H100 the fused kernel
    took 3.3 ms per layer of a 16k-row step, where reading its keys and values takes ~0.1 ms.
    Every query must see at least one key."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, T, S)
    scores = scores.float().masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v  # (B, H, T, hd)


class KVCache:
    """Keys and values of past positions for every layer, trimmed to the attention window."""

    def __init__(self, n_layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layers  # (B, H, S, hd) each
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.pos: torch.Tensor | None = None  # (S,) frame of each cached key, shared by layers


class RingCache:
    """Keys and values of the last ``size`` positions for every layer, in fixed buffers: position
    p lives in slot p % size, so writing a step and reading the window never change a shape.

    ``pos`` holds the frame in each slot, shared by the layers; a slot never written holds
    EMPTY, which no query's window reaches. The buffers are allocated at the first write, in
    the dtype the step computes in (bf16 under CUDA autocast).
    """

    EMPTY = -(1 << 40)  # frame of a slot never written: query - EMPTY is never < window
    ATTENTION_ROWS = 32768  # rows per attention call (fused kernels' grids stop at 65,535)

    def __init__(self, n_layers: int, size: int, device: torch.device | str) -> None:
        self.size = size
        self.k: list[torch.Tensor | None] = [None] * n_layers  # (B, H, size, hd) each
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.pos = torch.full((size,), self.EMPTY, dtype=torch.long, device=device)  # (size,)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (B, H, T, hd) in ``slots`` (T,); the layer's whole buffers back."""
        if self.k[layer] is None:
            b, h, _, hd = k.shape
            self.k[layer] = k.new_zeros(b, h, self.size, hd)
            self.v[layer] = v.new_zeros(b, h, self.size, hd)
        keys, values = self.k[layer], self.v[layer]
        keys.index_copy_(2, slots, k)
        values.index_copy_(2, slots, v)
        return keys, values


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None, layer: int, keep: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # (B, T, d) each
        # (B, T, d) -> (B, H, T, hd)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        q, k = rotary(q, pos), rotary(k, pos)
        if cache is not None:
            if cache.k[layer] is not None:
                k = torch.cat([cache.k[layer], k], dim=2)  # (B, H, S + T, hd)
                v = torch.cat([cache.v[layer], v], dim=2)
            cache.k[layer], cache.v[layer] = k[:, :, keep], v[:, :, keep]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(b, t, d)  # (B, H, T, hd) -> (B, T, d)
        return F.dropout(self.proj(y), self.dropout, self.training)

    def forward_static(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor,
                       ring: RingCache, layer: int, slots: torch.Tensor,
                       order: torch.Tensor | None) -> torch.Tensor:
        """:meth:`forward` with a :class:`RingCache`, for sampling (no dropout): the new keys go
        into ``slots``, the queries attend to the ring under ``mask`` (T, S). Read in ``order``,
        the ring gives the keys of :meth:`forward`'s cache in its order, to the same attention
        kernel; read as it lies, the attention is written out (:func:`attend_few`; on CUDA the
        same in one kernel, :func:`policy.ml.kernels.ring_attention`)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # (B, T, d) each
        # (B, T, d) -> (B, H, T, hd)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        q, k = rotary(q, pos), rotary(k, pos)
        keys, values = ring.write(layer, slots, k, v)  # (B, H, size, hd)
        if order is not None:
            keys, values = keys.index_select(2, order), values.index_select(2, order)
            attend = F.scaled_dot_product_attention
        elif kernels.available(q.device):
            attend = kernels.ring_attention  # the same, one kernel (policy.ml.kernels)
        else:
            attend = attend_few
        step = ring.ATTENTION_ROWS
        parts = [attend(q[r : r + step], keys[r : r + step], values[r : r + step], attn_mask=mask)
                 for r in range(0, b, step)]
        y = parts[0] if len(parts) == 1 else torch.cat(parts)  # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(b, t, d)  # (B, H, T, hd) -> (B, T, d)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None, layer: int, keep: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), pos, mask, cache, layer, keep)
        return x + F.dropout(self.proj(F.gelu(self.fc(self.ln2(x)))), self.dropout, self.training)

    def forward_static(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor,
                       ring: RingCache, layer: int, slots: torch.Tensor,
                       order: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn.forward_static(self.ln1(x), pos, mask, ring, layer, slots, order)
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class VideoEncoder(nn.Module):
    """(N, 3, S, S) uint8 frames -> (N, d) features: three stride-2 convs, global average pool."""

    def __init__(self, channels: int, d_model: int) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.GELU(),
        )
        self.out = nn.Linear(4 * c, d_model)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float() / 127.5 - 1.0  # (N, 3, S, S) in [-1, 1]
        return self.out(self.net(x).mean(dim=(2, 3)))  # (N, 4c) -> (N, d)


class VisionProjection(nn.Module):
    """(N, E) features of a pretrained vision encoder (stored as float16) -> (N, d)."""

    def __init__(self, dim: int, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features.to(self.proj.weight.dtype))


def text_input(cfg: ModelConfig, d: int) -> nn.Module | None:
    """The word input of a small policy or critic of width ``d``: None without words, an
    embedding of hashed ids (id 0: no word), or a map of a registered encoder's vectors (a zero
    vector: no word)."""
    if not cfg.use_text:
        return None
    if cfg.text_encoder == "hashed":
        return nn.Embedding(cfg.text_vocab, d, padding_idx=0)
    return nn.Linear(cfg.text_dim, d, bias=False)


def video_input(cfg: ModelConfig, d: int) -> nn.Module | None:
    """The speaker-video input of a policy or critic of width ``d``: None without video, a
    projection of precomputed features with a pretrained encoder, else the small conv net."""
    if not cfg.use_video:
        return None
    if cfg.vision_encoder:
        if cfg.vision_dim <= 0:
            raise ValueError("a pretrained vision encoder needs vision_dim > 0 "
                             "(policy.ml.backbone.pin_pretrained records it)")
        return VisionProjection(cfg.vision_dim, d)
    return VideoEncoder(cfg.video_channels, d)


class ActionHeads:
    """What every listener policy shares, whatever mixes its frames: input standardisation,
    the per-dimension bin heads read at frame positions, and the sampling-noise coupling.

    A mixin for an ``nn.Module`` with ``cfg`` and ``width``; its attribute names are part of the
    checkpoint format."""

    cfg: ModelConfig
    width: int

    def _init_heads(self, d: int) -> None:
        cfg, width, m = self.cfg, self.width, self.cfg.n_mels * self.cfg.mel_per_frame
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.chunk * width * (cfg.bin_head_dim + 2))
        # Per-dimension bin heads: dimension j maps its bin_head_dim features to n_bins free-form
        # logits, plus a discretised Gaussian (mean offset from the previous action, log width).
        self.bin_w = nn.Parameter(torch.empty(width, cfg.bin_head_dim, cfg.n_bins))
        self.bin_b = nn.Parameter(torch.zeros(width, cfg.n_bins))
        # Bin centres in the model's [-1, 1] action units: the same for every dimension because
        # the tokenizer's bins are uniform between each dimension's 1st and 99th percentile.
        k = cfg.n_bins
        self.register_buffer("centers", (torch.arange(k) + 0.5) / k * 2 - 1, persistent=False)
        self.fused_gaussian: bool | None = None  # None: fused in float32, plain form otherwise
        # Input standardisation, fitted on the training split and saved with the weights.
        self.register_buffer("speaker_mean", torch.zeros(width))
        self.register_buffer("speaker_std", torch.ones(width))
        self.register_buffer("mel_mean", torch.zeros(m))
        self.register_buffer("mel_std", torch.ones(m))
        # Sampling noise coupling across dimensions (Gaussian copula), fitted on the training
        # listeners by data.fit_noise_coupling; identity = independent dimensions.
        self.register_buffer("noise_chol", torch.eye(width))

    def set_input_stats(self, stats: dict[str, torch.Tensor]) -> None:
        for name, value in stats.items():
            getattr(self, name).copy_(value)

    def input_stats(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n).detach().cpu().clone()
                for n in ("speaker_mean", "speaker_std", "mel_mean", "mel_std")}

    def head_parts(self, x: torch.Tensor, batch: dict[str, torch.Tensor | None],
                   heads_at: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the bin logits are made of at frame positions ``heads_at`` (default: all T):
        the features (B, T', C, D, e) after the GELU, and the Gaussian's centre and inverse
        variance (B, T', C, D), float32.

        Each dimension's logits over its bins k = a free-form part, features . bin_w[:, k], plus
        a discretised Gaussian, -(c_k - mean)^2 / (2 width^2), around the previous action plus
        an offset. A sharp, continuous answer ("about where I was, a little higher") is then one
        linear read-out away, where 256 free logits would learn it bin by bin."""
        b = x.shape[0]
        if heads_at is not None:
            x = x[:, heads_at]  # (B, T', d)
        h = self.head(self.ln_f(x))  # (B, T, C * D * (e + 2))
        h = h.view(b, x.shape[1], self.cfg.chunk, self.width, -1)  # (B, T, C, D, e + 2)
        prev = batch["prev"] * batch["prev_valid"][..., None]  # (B, T, D)
        if heads_at is not None:
            prev = prev[:, heads_at]
        mean = prev[:, :, None, :].float() + h[..., -2].float()  # (B, T', C, D)
        inv_var = (F.softplus(h[..., -1].float() - 2.0) + 1.0 / self.cfg.n_bins) ** -2
        return F.gelu(h[..., :-2]), mean, inv_var

    def read_heads(self, x: torch.Tensor, batch: dict[str, torch.Tensor | None],
                   heads_at: torch.Tensor | None) -> torch.Tensor:
        """Bin logits (B, T', chunk, D, n_bins) from frame features ``x`` (B, T, d) at frame
        positions ``heads_at`` (default: all T)."""
        feats, mean, inv_var = self.head_parts(x, batch, heads_at)
        fused = self.fused_gaussian if self.fused_gaussian is not None else (
            feats.dtype == torch.float32)
        if fused:
            # In float32 the Gaussian expands to c_k * mean / width^2 - c_k^2 / (2 width^2)
            # (+ a constant softmax ignores): two more features against the fixed rows c_k and
            # c_k^2, so both parts are one contraction -- a third of the CPU time of the plain
            # form. Its terms reach 1 / width^2 ~ 65,000, so it needs float32: under bf16 the
            # cancellation would leave nothing of a one-bin-wide peak.
            feats = torch.cat([feats.float(), (mean * inv_var)[..., None],
                               (-0.5 * inv_var)[..., None]], dim=-1)  # (B, T', C, D, e + 2)
            c = self.centers
            rows = torch.cat([self.bin_w.float(), torch.stack([c, c * c]).expand(
                self.width, 2, -1)], dim=1)  # (D, e + 2, K)
            return torch.einsum("btcde,dek->btcdk", feats, rows) + self.bin_b.float()
        free = torch.einsum("btcde,dek->btcdk", feats, self.bin_w.to(feats.dtype))
        z = self.centers - mean[..., None]  # (B, T', C, D, K), float32
        return free.float() + self.bin_b.float() - 0.5 * z * z * inv_var[..., None]


class VLA(ActionHeads, nn.Module):
    def __init__(self, cfg: ModelConfig, width: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.width = width
        d, m = cfg.d_model, cfg.n_mels * cfg.mel_per_frame
        self.speaker_in = nn.Linear(width, d)
        self.audio_in = nn.Linear(m, d) if cfg.use_audio else None
        self.text_in = text_input(cfg, d)
        self.video_in = video_input(cfg, d)
        self.listener_in = nn.Linear(width, d)
        self.start = nn.Parameter(torch.zeros(d))  # stands in for the action before frame 0
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self._init_heads(d)
        self._init()

    def _init(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias") or name in ("start", "bin_b") or ".ln" in name \
                    or name.startswith("ln_"):
                continue
            if name.endswith("proj.weight"):  # residual outputs: GPT-2's depth-scaled init
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.cfg.n_layers))
            elif p.ndim >= 2:
                nn.init.normal_(p, std=0.02)
        if isinstance(self.text_in, nn.Embedding):
            with torch.no_grad():
                self.text_in.weight[0].zero_()

    def embed(self, batch: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """Sum of the input embeddings of each frame: (B, T, d)."""
        x = self.speaker_in(batch["speaker"])  # (B, T, D) -> (B, T, d)
        if self.audio_in is not None and batch.get("mel") is not None:
            present = batch["mel_mask"].to(x.dtype)[:, None, None]  # (B, 1, 1)
            x = x + self.audio_in(batch["mel"]) * present
        if self.text_in is not None and batch.get("text") is not None:
            x = x + self.text_in(batch["text"])  # ids (B, T) or vectors (B, T, E) -> (B, T, d)
        if self.video_in is not None and batch.get("video") is not None:
            b, t = batch["video"].shape[:2]
            frames = batch["video"].flatten(0, 1)  # (B, T, 3, S, S) -> (B * T, 3, S, S)
            present = batch["video_mask"].to(x.dtype)[:, None, None]
            x = x + self.video_in(frames).view(b, t, -1) * present
        prev = self.listener_in(batch["prev"])  # (B, T, D) -> (B, T, d)
        x = x + torch.where(batch["prev_valid"][..., None], prev, self.start)
        return F.dropout(x, self.cfg.dropout, self.training)

    def forward(self, batch: dict[str, torch.Tensor | None], pos: torch.Tensor | None = None,
                cache: KVCache | None = None, heads_at: torch.Tensor | None = None,
                ) -> torch.Tensor:
        """Bin logits (B, T', chunk, D, n_bins) at positions ``heads_at`` (default: all T).

        ``pos`` (T,) are the frames of the given positions (default 0 .. T - 1); with a cache the
        new positions attend to the cached ones within the window, and the cache is updated.
        The heads are the costly part at 256 bins, so training may read them at a subset of
        positions and sampling reads only the last one.
        """
        x = self.embed(batch)  # (B, T, d)
        b, t, _ = x.shape
        pos = torch.arange(t, device=x.device) if pos is None else pos.to(
            x.device, non_blocking=True)
        window = self.cfg.context
        keep = None
        if cache is None:
            mask = None if t <= window else window_mask(pos, pos, window)
        else:
            kpos = pos if cache.pos is None else torch.cat([cache.pos, pos])  # (S + T,)
            mask = window_mask(pos, kpos, window)  # (T, S + T)
            keep = kpos > pos.max() + 1 - window  # keys the next query may still see
        for i, block in enumerate(self.blocks):
            x = block(x, pos, mask, cache, i, keep)
        if cache is not None:
            cache.pos = kpos[keep]
        return self.read_heads(x, batch, heads_at)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layers)

    def new_ring(self, device: torch.device | str) -> RingCache:
        """A ring for :meth:`forward_static` steps of up to ``chunk`` positions: the last step's
        first query sees ``context - 1`` earlier frames, so the ring holds ``context - 1 +
        chunk`` positions."""
        return RingCache(self.cfg.n_layers, self.cfg.context - 1 + self.cfg.chunk, device)

    def forward_static(self, batch: dict[str, torch.Tensor | None], pos: torch.Tensor,
                       ring: RingCache, keys: int | None = None) -> torch.Tensor:
        """The residual stream (B, 1, d) at the last of the positions ``pos`` (T,) -- feed it to
        :meth:`read_heads` -- for sampling with fixed shapes: the keys and values of ``pos`` go
        into ``ring``, and the positions attend to what it holds within the window.

        ``keys=None`` reads the whole ring as it lies, the slots outside a query's window
        masked, so every step of T positions has the same shapes and a CUDA graph can replay
        it; the attention is then written out for the few queries (:func:`attend_few`).
        ``keys=n`` reads the n newest positions in position order: the keys :meth:`forward`
        with a :class:`KVCache` holds, in its order, through its attention kernel -- its
        arithmetic bit for bit on the CPU (whose attention kernel rounds differently when keys
        move or masked ones are added).
        """
        if self.training:
            raise RuntimeError("forward_static samples: call model.eval() first")
        x = self.embed(batch)  # (B, T, d)
        slots = pos.remainder(ring.size)  # (T,)
        ring.pos.index_copy_(0, slots, pos)
        order = None
        kpos = ring.pos  # (S,)
        if keys is not None:  # slots of the positions last - keys + 1 .. last, oldest first
            order = (pos[-1] + 1 - keys + torch.arange(keys, device=pos.device)).remainder(
                ring.size)  # (keys,)
            kpos = ring.pos[order]
        mask = window_mask(pos, kpos, self.cfg.context)  # (T, S) or (T, keys)
        for i, block in enumerate(self.blocks):
            x = block.forward_static(x, pos, mask, ring, i, slots, order)
        return x[:, -1:]  # (B, 1, d)

    # --- accounting, for the benchmark ------------------------------------------------------
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_frame(self, training: bool = True, head_fraction: float = 1.0) -> float:
        """Estimated FLOPs per frame: 2 per multiply-add of every weight a frame passes through,
        plus attention over ``context`` keys; x3 for training (forward + backward).

        This is nanoGPT's 6N + 12 L d T estimate, with the heads counted as they run: at
        ``head_fraction`` of the positions (1 / chunk when training reads them chunk-tiled),
        the bin contraction once per chunk frame (free logits plus the two Gaussian rows), and
        no embedding tables (lookups, not multiplies).
        """
        cfg = self.cfg
        skip = ("bin_w", "head.weight", "text_in.weight")
        dense = sum(p.numel() for n, p in self.named_parameters() if p.ndim >= 2 and n not in skip)
        if self.video_in is not None:  # the convs run at S/2, S/4 and S/8 resolution
            s, c = cfg.video_size, cfg.video_channels
            convs = sum(p.numel() for p in self.video_in.net.parameters() if p.ndim >= 2)
            dense += (27 * c * (s // 2) ** 2 + 9 * c * 2 * c * (s // 4) ** 2
                      + 9 * 2 * c * 4 * c * (s // 8) ** 2) - convs
        bins = cfg.chunk * self.width * (cfg.bin_head_dim + 2) * cfg.n_bins
        heads = self.head.weight.numel() + bins
        attention = 2 * cfg.n_layers * cfg.d_model * cfg.context  # QK^T and AV, per frame
        forward = 2 * (dense + head_fraction * heads) + 2 * attention
        return float(3 * forward if training else forward)
