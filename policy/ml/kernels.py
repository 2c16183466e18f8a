"""GPU kernels for the static sampler's step: the 256-bin heads and the draw fused, and the
attention of a step's few queries to the ring cache.

A sampling step reads the per-dimension bin heads at the last position and draws a bin from each
(row, chunk frame, dimension) distribution by inverting its CDF at a uniform number
(:func:`policy.ml.fastsample.pick_bins`). Written in PyTorch that is a contraction that writes
(rows, C, D, 256) float32 logits, then a softmax, a cumulative sum and a comparison that each read
and write that tensor again: at 16k rows, 1.2 GB a pass, most of a step's time on an H100. Here
one program takes a block of distributions of one dimension, computes their logits from the head
features in registers, and reduces them to bin ids: the logits never reach memory.

The arithmetic is :meth:`policy.ml.model.ActionHeads.read_heads` in its plain form (the free
logits, rounded to bf16 as the contraction under autocast rounds them, plus the bias and the
discretised Gaussian) followed by ``pick_bins``: the same draws up to float rounding (the sums
run in another order), and where a uniform falls on the boundary between two bins that rounding
may pick the other one. ``top_p < 1`` (a sort) stays in PyTorch.

Triton compiles the kernel for the GPU; with ``TRITON_INTERPRET=1`` set before it is first used,
the same kernel runs on the CPU, which is how the tests check it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

BLOCK_N = 64  # distributions per program
ENABLED = True  # False: every caller takes its PyTorch path (benchmarks compare the two)


def available(device: torch.device) -> bool:
    """Whether the kernels run on ``device``: CUDA with Triton installed, or any device under
    the interpreter (``TRITON_INTERPRET=1``); never when ``ENABLED`` is off."""
    if not ENABLED:
        return False
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def draw_bins_kernel(feat_ptr, w_ptr, b_ptr, c_ptr, mean_ptr, ivar_ptr, u_ptr, out_ptr,
                         n, width, n_feats, n_bins, temperature,
                         BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
                         ROUND_BF16: tl.constexpr, GREEDY: tl.constexpr):
        d = tl.program_id(0)  # the dimension: every program reads one head's weights
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # distributions (row, frame)
        re = tl.arange(0, BLOCK_E)
        rk = tl.arange(0, BLOCK_K)
        live_n, live_e, live_k = rn < n, re < n_feats, rk < n_bins
        feats = tl.load(feat_ptr + (rn[:, None] * width + d) * n_feats + re[None, :],
                        mask=live_n[:, None] & live_e[None, :], other=0.0)  # (N, E)
        w = tl.load(w_ptr + (d * n_feats + re[:, None]) * n_bins + rk[None, :],
                    mask=live_e[:, None] & live_k[None, :], other=0.0)  # (E, K)
        # In float32, exactly: products of bf16 values are exact there, and a contraction of a
        # few dozen features per bin is cheap next to the rest.
        free = tl.dot(feats.to(tl.float32), w.to(tl.float32), input_precision="ieee")  # (N, K)
        if ROUND_BF16:  # the contraction's output dtype under autocast
            free = free.to(tl.bfloat16).to(tl.float32)
        at = rn * width + d  # into the (n, width) per-distribution values
        mean = tl.load(mean_ptr + at, mask=live_n, other=0.0)
        ivar = tl.load(ivar_ptr + at, mask=live_n, other=0.0)
        bias = tl.load(b_ptr + d * n_bins + rk, mask=live_k, other=0.0)
        centre = tl.load(c_ptr + rk, mask=live_k, other=0.0)
        z = centre[None, :] - mean[:, None]
        logits = free + bias[None, :] - 0.5 * z * z * ivar[:, None]
        logits = tl.where(live_k[None, :], logits, float("-inf"))
        if GREEDY:
            ids = tl.argmax(logits, 1)
        else:
            logits = logits / temperature
            p = tl.exp(logits - tl.max(logits, 1)[:, None])
            cdf = tl.cumsum(p, 1)  # in bin order, so equal u means equal quantile
            u = tl.load(u_ptr + at, mask=live_n, other=0.0)
            target = u * tl.max(cdf, 1)  # the CDF's last value: the total
            ids = tl.sum((cdf <= target[:, None]).to(tl.int32), 1)
            ids = tl.minimum(ids, n_bins - 1)
        tl.store(out_ptr + at, ids.to(tl.int64), mask=live_n)

    return draw_bins_kernel


def _block(x: int) -> int:
    """The power of two >= max(x, 16) (the matrix unit's smallest tile side)."""
    return max(16, 1 << (int(x) - 1).bit_length())


def draw_bins(feats: torch.Tensor, mean: torch.Tensor, inv_var: torch.Tensor, u: torch.Tensor,
              bin_w: torch.Tensor, bin_b: torch.Tensor, centers: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """Bin ids (..., D) int64 drawn from the heads' plain-form logits.

    ``feats`` (..., D, E): the head features after the GELU, bf16 or float32 (for bf16 the
    contraction's result is rounded to bf16, as autocast's is); ``mean``, ``inv_var`` and
    ``u`` (..., D): the Gaussian's centre and inverse variance per distribution and the uniform
    it is inverted at; ``bin_w`` (D, E, K), ``bin_b`` (D, K), ``centers`` (K,).
    ``temperature`` 0 takes the most likely bin."""
    *lead, width, n_feats = feats.shape
    n_bins = bin_w.shape[-1]
    n = feats[..., 0, 0].numel()
    dtype = feats.dtype
    feats = feats.reshape(n, width, n_feats).contiguous()
    out = torch.empty(n, width, dtype=torch.int64, device=feats.device)
    if n == 0:
        return out.view(*lead, width)
    grid = (width, -(-n // BLOCK_N))
    _kernel()[grid](
        feats, bin_w.to(dtype).contiguous(), bin_b.float().contiguous(),
        centers.float().contiguous(), mean.reshape(n, width).float().contiguous(),
        inv_var.reshape(n, width).float().contiguous(),
        u.reshape(n, width).float().contiguous(), out,
        n, width, n_feats, n_bins, float(temperature) if temperature > 0 else 1.0,
        BLOCK_N=BLOCK_N, BLOCK_E=_block(n_feats), BLOCK_K=_block(n_bins),
        ROUND_BF16=dtype == torch.bfloat16, GREEDY=temperature == 0, num_warps=8)
    return out.view(*lead, width)


# --- attention of a step's few queries to the ring ---------------------------------------------


@functools.lru_cache(maxsize=1)
def _attention_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def ring_attention_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, n_q, n_keys, head_dim,
                              scale, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr,
                              BLOCK_D: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)  # one (row, head): its queries, keys and values
        rt = tl.arange(0, BLOCK_T)
        rs = tl.arange(0, BLOCK_S)
        rd = tl.arange(0, BLOCK_D)
        live_t, live_s, live_d = rt < n_q, rs < n_keys, rd < head_dim
        q = tl.load(q_ptr + (bh * n_q + rt[:, None]) * head_dim + rd[None, :],
                    mask=live_t[:, None] & live_d[None, :], other=0.0).to(tl.float32)
        k = tl.load(k_ptr + (bh * n_keys + rs[:, None]) * head_dim + rd[None, :],
                    mask=live_s[:, None] & live_d[None, :], other=0.0).to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # (T, S)
        seen = tl.load(mask_ptr + rt[:, None] * n_keys + rs[None, :],
                       mask=live_t[:, None] & live_s[None, :], other=0)
        seen = (seen != 0) | ~live_t[:, None]  # padded queries see everything: no empty rows
        scores = tl.where(seen & live_s[None, :], scores, float("-inf"))
        p = tl.exp(scores - tl.max(scores, 1)[:, None])
        p = p / tl.sum(p, 1)[:, None]
        v = tl.load(v_ptr + (bh * n_keys + rs[:, None]) * head_dim + rd[None, :],
                    mask=live_s[:, None] & live_d[None, :], other=0.0).to(tl.float32)
        out = tl.dot(p, v, input_precision="ieee")  # (T, hd)
        tl.store(out_ptr + (bh * n_q + rt[:, None]) * head_dim + rd[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=live_t[:, None] & live_d[None, :])

    return ring_attention_kernel


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   attn_mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention of a few queries q (B, H, T, hd) to keys and values (B, H, S, hd)
    under a (T, S) bool mask: :func:`policy.ml.model.attend_few` in one kernel, a program per
    (row, head) that reads its keys and values once. Batched matrix products of 4 x 32 by
    32 x 67 run far below the memory's speed; this is bound by reading the ring. Scores and
    weights stay in float32 (``attend_few`` rounds the scores to the input dtype first). Every
    query must see at least one key."""
    b, h, t, hd = q.shape
    s = k.shape[2]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    if q.numel() == 0:
        return out
    _attention_kernel()[(b * h,)](
        q, k, v, attn_mask.to(torch.int8).contiguous(), out, t, s, hd, hd ** -0.5,
        BLOCK_T=_block(t), BLOCK_S=_block(s), BLOCK_D=_block(hd), num_warps=4)
    return out
