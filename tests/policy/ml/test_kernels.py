"""The sampling kernels (policy.ml.kernels), run on the CPU by Triton's interpreter: the bins
the fused draw picks and the attention are PyTorch's, and the static sampler draws the same
candidates with them.

The interpreter is switched on by an environment variable read when a kernel is first built,
so each check runs in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from policy.ml import kernels

ROOT = Path(__file__).resolve().parents[3]


def _interpreted(script: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_fused_draw_picks_the_bins_pytorch_picks():
    out = _interpreted("""
        import json, torch
        from policy.ml.fastsample import pick_bins
        from policy.ml.kernels import draw_bins

        g = torch.Generator().manual_seed(0)
        results = []
        # (rows, frames, dims, features, bins, temperature, dtype): padded features and bins,
        # a temperature, greedy, and bf16 features whose contraction is rounded to bf16.
        for r, c, d, e, k, t, dt in [(37, 3, 5, 8, 256, 1.0, torch.float32),
                                     (64, 4, 18, 32, 256, 0.7, torch.float32),
                                     (20, 2, 3, 8, 50, 0.0, torch.float32),
                                     (50, 4, 6, 32, 256, 1.0, torch.bfloat16)]:
            feats = torch.randn(r, c, d, e, generator=g).to(dt)
            mean = torch.rand(r, c, d, generator=g) * 2 - 1
            inv_var = torch.rand(r, c, d, generator=g) * 1000 + 1
            u = torch.rand(r, c, d, generator=g)
            w, b = torch.randn(d, e, k, generator=g), torch.randn(d, k, generator=g)
            centers = (torch.arange(k) + 0.5) / k * 2 - 1
            ids = draw_bins(feats, mean, inv_var, u, w, b, centers, t)
            free = torch.einsum("rcde,dek->rcdk", feats, w.to(dt))  # read_heads' plain form
            z = centers - mean[..., None]
            logits = free.float() + b - 0.5 * z * z * inv_var[..., None]
            ref = pick_bins(logits, u, t, 1.0)
            results.append({"dtype": str(dt), "shape": list(ids.shape), "ref": list(ref.shape),
                            "same": float((ids == ref).float().mean()),
                            "in_range": bool(((ids >= 0) & (ids < k)).all())})
        print(json.dumps(results))
    """)
    for case in out:
        assert case["shape"] == case["ref"] and case["in_range"]
        # float32: the same sums in another order. bf16: the interpreter rounds the contraction
        # to bf16 by truncation where the GPU rounds to nearest, a bin apart at the boundaries.
        assert case["same"] >= (0.999 if case["dtype"] == "torch.float32" else 0.95), case


def test_the_static_sampler_draws_the_same_candidates_with_the_fused_kernel():
    out = _interpreted("""
        import dataclasses, json, numpy as np, torch
        from policy.ml import fastsample, kernels
        from policy.ml.config import ModelConfig, SampleConfig
        from policy.ml.data import episode_from, prepare_episode, raw_features, fit_input_stats
        from policy.ml.model import VLA
        from policy.ml.tokenizer import ActionTokenizer
        from policy.synthetic import generate_episode

        eps = [episode_from(generate_episode(3, i)) for i in range(2)]
        cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, context=16, bin_head_dim=8,
                          n_mels=8, dropout=0.0)
        tok = ActionTokenizer.fit(np.concatenate([e.listener for e in eps]), n_bins=cfg.n_bins,
                                  layout=cfg.layout)
        torch.manual_seed(0)
        model = VLA(cfg, tok.width).eval()
        model.fused_gaussian = False  # the plain form the kernel computes (as on CUDA)
        raws = [raw_features(e, cfg) for e in eps]
        stats = fit_input_stats(raws, cfg)
        parts = ("speaker", "mel", "text", "video", "listener_ids", "listener_in")
        prepared = [prepare_episode(e, cfg, stats, tok, r) for e, r in zip(eps, raws)]
        prepared = [dataclasses.replace(p, n_frames=40, **{  # plenty: the interpreter is slow
            f: None if getattr(p, f) is None else getattr(p, f)[:40] for f in parts})
            for p in prepared]
        scfg = SampleConfig(k=2, engine="static")
        assert fastsample.use_fused_draw(model, scfg)
        fused = fastsample.sample_group_static(model, tok, prepared, scfg)
        # The ring read as it lies, as on CUDA: the attention kernel too.
        ring = fastsample.sample_group_static(model, tok, prepared, scfg, exact=False)
        kernels.ENABLED = False
        plain = fastsample.sample_group_static(model, tok, prepared, scfg)
        ring_plain = fastsample.sample_group_static(model, tok, prepared, scfg, exact=False)
        same = lambda x, y: [bool(np.array_equal(a, b)) for a, b in zip(x, y)]
        print(json.dumps({"same": same(fused, plain), "ring_same": same(ring, ring_plain),
                          "shapes": [list(a.shape) for a in fused]}))
    """)
    assert out["same"] == [True, True]
    assert out["ring_same"] == [True, True]
    assert all(s[0] == 2 and s[1] == 40 for s in out["shapes"])


def test_the_attention_kernel_attends_as_pytorch_does():
    out = _interpreted("""
        import json, torch
        from policy.ml.kernels import ring_attention
        from policy.ml.model import attend_few

        g = torch.Generator().manual_seed(0)
        diffs = []
        for b, h, t, s, hd in [(5, 4, 4, 67, 32), (3, 2, 3, 20, 8), (2, 1, 1, 5, 16)]:
            q, k, v = (torch.randn(b, h, n, hd, generator=g) for n in (t, s, s))
            mask = torch.rand(t, s, generator=g) < 0.6
            mask[:, 0] = True  # every query sees a key
            diffs.append(float((ring_attention(q, k, v, mask) - attend_few(q, k, v, mask))
                               .abs().max()))
        print(json.dumps(diffs))
    """)
    assert max(out) < 1e-5, out


def test_the_kernels_run_only_where_they_can():
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert not kernels.available(torch.device("cpu"))  # the CPU samples in PyTorch
