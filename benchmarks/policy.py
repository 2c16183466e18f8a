"""Listener policy speed: SFT training throughput and sampling K candidates for many episodes.

    python -m benchmarks.policy                      # CUDA if available, else CPU
    python -m benchmarks.policy --device cuda        # ~3 minutes on one H100
    python -m benchmarks.policy --device cpu --episodes 40

Training: frames (window positions) per second of ``policy.ml.train.Trainer.train_step`` with the
default ``ModelConfig`` (bf16 autocast on CUDA), and model FLOP utilisation = frames/s x
``VLA.flops_per_frame`` (~6 x parameters + attention, the 256-bin heads counted per chunk frame)
/ the device's peak dense bf16 rate (a table for H100 / H200; n/a on CPU). Compared in the same
run with fp32 (no autocast).

Sampling: seconds to draw K = 8 candidates for each of N synthetic episodes (default 10,000 on
CUDA, 100 on CPU), closed loop, on the same prepared episodes by:

* the static engine (``policy.ml.fastsample``: fixed shapes, its step replayed from a CUDA graph,
  its attention and its heads and draw in two kernels, ``policy.ml.kernels``), the default on
  CUDA: ``sample_s``, with its peak GPU memory;
* the same engine with those in PyTorch: ``sample_s_static_unfused``; and in passes of half the
  rows: ``sample_s_half_rows``;
* the loop engine (a growing key/value cache): ``sample_s_loop``, as a ratio, with the share of
  episodes whose candidates the two drew identically (1.0 on the CPU, where they agree bit for
  bit; on CUDA a bin flipped by bf16 rounding sends an episode's closed loop elsewhere);
* the naive loop (re-running the whole prefix every chunk, no cache) on a subset, as a ratio.

Feature preparation (``Policy.prepare``: the log-mel of all episodes together on the device) is
timed apart, against preparing one episode after another on the CPU (on up to 1,000 of them,
scaled to all: ``prepare_serial_estimate_s``), with the largest log-mel difference between the
two. Timing does not depend on the weights, so the policy is the one the training measurement
leaves.

Results: benchmarks/results/policy-<device>.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch

from benchmarks.common import machine_info, write_results
from policy.ml import kernels
from policy.ml.config import ModelConfig, SampleConfig, TrainConfig
from policy.ml.data import (
    EpisodeData,
    Prepared,
    check_episodes,
    episode_from,
    mel_options,
    prepare_episode,
)
from policy.ml.fastsample import STATIC_CUDA_ROWS, use_fused_draw
from policy.ml.features import log_mel_batch
from policy.ml.policy import Policy
from policy.ml.sample import pick_bins, sample_prepared, sampling_noise
from policy.ml.train import Trainer, autocast, train
from policy.synthetic import generate_episode

# Peak dense bf16 tensor-core rates (FLOP/s) from NVIDIA's data sheets (sparsity excluded).
PEAK_BF16 = {
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # "NVIDIA H100 80GB HBM3" is the SXM part
    "H200": 989e12,
}


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16, key=len, reverse=True):  # the most specific name first
        if all(part in name for part in key.split()):
            return name, PEAK_BF16[key]
    return name, None


def corpus(n: int, distinct: int, seed: int = 1) -> list[EpisodeData]:
    """n episodes: ``distinct`` generated ones, repeated under new keys (own sampling noise)."""
    base = [episode_from(generate_episode(seed, i)) for i in range(min(n, distinct))]
    return [dataclasses.replace(base[i % len(base)], key=f"bench-{i:06d}") for i in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_training(episodes: Sequence[EpisodeData], cfg: ModelConfig, tcfg: TrainConfig,
                   device: torch.device, warmup: int, steps: int) -> tuple[Policy, dict]:
    policy = train(episodes, cfg, dataclasses.replace(tcfg, max_steps=1)).policy
    _, prepared = policy.prepare(episodes, need_listener=True)
    trainer = Trainer(policy, tcfg, prepared, [], device)
    for _ in range(warmup):
        trainer.train_step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync(device)
    seconds = time.perf_counter() - t0
    frames = steps * tcfg.batch_size * cfg.context
    heads = 1.0 / cfg.chunk if tcfg.loss_stride == 0 else 1.0 / tcfg.loss_stride
    flops = policy.model.flops_per_frame(training=True, head_fraction=heads)
    name, peak = peak_flops(device)
    fps = frames / seconds
    return policy, {
        "amp_bf16": bool(tcfg.amp and device.type == "cuda"),
        "batch_size": tcfg.batch_size, "window": cfg.context, "steps_timed": steps,
        "seconds": seconds, "frames_per_s": fps, "steps_per_s": steps / seconds,
        "params": policy.model.n_params(), "flops_per_frame": flops,
        "achieved_tflops": fps * flops / 1e12,
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "mfu": fps * flops / peak if peak else None,
        "device_name": name,
    }


@torch.no_grad()
def naive_sample(policy: Policy, group: Sequence[Prepared], cfg: SampleConfig) -> None:
    """The loop a user writes first: the whole prefix through the model for every chunk."""
    model, tok, mcfg, device = policy.model, policy.tokenizer, policy.cfg, policy.device
    length, k, width = max(p.n_frames for p in group), cfg.k, tok.width
    u = sampling_noise(group, cfg, mcfg.chunk, model.noise_chol.cpu(), length).to(device)
    speaker = torch.zeros(len(group), length, width)
    for i, p in enumerate(group):
        speaker[i, : p.n_frames] = p.speaker
    speaker = speaker.repeat_interleave(k, 0).to(device)
    b = len(group) * k
    actions = torch.zeros(b, length, width, device=device)
    for start in range(0, length, mcfg.chunk):
        pos = torch.arange(0, start + 1, device=device)
        prev = torch.cat([torch.zeros(b, 1, width, device=device), actions[:, :start]], dim=1)
        batch = {"speaker": speaker[:, pos], "prev": prev,
                 "prev_valid": (pos >= 1)[None].expand(b, -1)}
        with autocast(device, True):
            logits = model(batch, heads_at=torch.tensor([start], device=device))[:, 0]
        n = min(mcfg.chunk, length - start)
        ids = pick_bins(logits[:, :n], u[:, start : start + n], cfg.temperature, cfg.top_p)
        actions[:, start : start + n] = tok.normalise(tok.decode(ids))
    sync(device)


def timed_sample(policy: Policy, prepared: Sequence[Prepared], cfg: SampleConfig,
                 ) -> tuple[list[np.ndarray], float]:
    device = policy.device
    sync(device)
    t0 = time.perf_counter()
    out = sample_prepared(policy.model, policy.tokenizer, prepared, cfg)
    sync(device)
    return out, time.perf_counter() - t0


def bench_sampling(policy: Policy, episodes: Sequence[EpisodeData], k: int, max_rows: int,
                   loop_max_rows: int, naive_episodes: int) -> dict:
    device = policy.device
    episodes = [dataclasses.replace(e, listener=None) for e in episodes]  # as Policy.sample
    t0 = time.perf_counter()
    _, prepared = policy.prepare(episodes)
    prep_s = time.perf_counter() - t0
    t0 = time.perf_counter()  # its log-mel part alone
    log_mel_batch([e.audio for e in episodes], [e.sample_rate for e in episodes],
                  [e.n_frames for e in episodes], [e.fps for e in episodes], device=device,
                  **mel_options(policy.cfg))
    mel_s = time.perf_counter() - t0
    # What preparation was before: one episode after another on the CPU, on a subset.
    serial_eps = episodes[: min(len(episodes), 1000)]
    t0 = time.perf_counter()
    checked = check_episodes(serial_eps, policy.cfg, split="input", need_listener=False)
    stats = policy.model.input_stats()
    serial = [prepare_episode(e, policy.cfg, stats, policy.tokenizer) for e in checked]
    serial_s = time.perf_counter() - t0
    mel_diff = max(float((a.mel - b.mel).abs().max()) for a, b in zip(serial, prepared)
                   if a.mel is not None)

    static_cfg = SampleConfig(k=k, max_rows=max_rows, engine="static")
    loop_cfg = SampleConfig(k=k, max_rows=loop_max_rows, engine="loop")
    warm = prepared[: max(1, min(len(prepared), 64 // k))]  # kernels, handles, graph pools
    sample_prepared(policy.model, policy.tokenizer, warm, static_cfg)
    sample_prepared(policy.model, policy.tokenizer, warm, loop_cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    static, static_s = timed_sample(policy, prepared, static_cfg)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    fused = use_fused_draw(policy.model, static_cfg)
    if fused:  # the same engine with the attention, the heads and the draw in PyTorch
        kernels.ENABLED = False
        try:
            sample_prepared(policy.model, policy.tokenizer, warm, static_cfg)
            unfused, unfused_s = timed_sample(policy, prepared, static_cfg)
        finally:
            kernels.ENABLED = True
    half_cfg = dataclasses.replace(static_cfg, max_rows=max(1, max_rows // 2))
    _, half_s = timed_sample(policy, prepared, half_cfg)  # smaller passes, for the choice
    loop, loop_s = timed_sample(policy, prepared, loop_cfg)
    same = [np.array_equal(a, b) for a, b in zip(static, loop, strict=True)]
    # Where bf16 rounding sends closed loops apart, the two engines' candidates still share
    # their distribution: per-dimension means and spreads over every frame drawn.
    def moments(out: list[np.ndarray]) -> np.ndarray:
        flat = np.concatenate([o.reshape(-1, o.shape[-1]) for o in out])
        return np.stack([flat.mean(0), flat.std(0)])
    spread = moments(loop)[1].mean()
    moments_gap = float(np.abs(moments(static) - moments(loop)).max() / max(spread, 1e-9))
    frames = sum(o.shape[0] * o.shape[1] for o in static)

    # The naive loop on a subset, against the default engine (static on CUDA, loop on the CPU).
    sub = prepared[:naive_episodes]
    _, cached_s = timed_sample(policy, sub, SampleConfig(k=k))
    t0 = time.perf_counter()
    for s in range(0, len(sub), max(1, loop_max_rows // k)):
        naive_sample(policy, sub[s : s + max(1, loop_max_rows // k)], loop_cfg)
    naive_s = time.perf_counter() - t0
    return {
        "episodes": len(episodes), "k": k, "max_rows": max_rows, "loop_max_rows": loop_max_rows,
        "engine": "static",
        "mean_frames": float(np.mean([e.n_frames for e in episodes])),
        "prepare_features_s": prep_s,
        "prepare_log_mel_alone_s": mel_s,
        "prepare_serial_subset_episodes": len(serial_eps),
        "prepare_serial_subset_s": serial_s,
        "prepare_serial_estimate_s": serial_s * len(episodes) / len(serial_eps),
        "prepare_speedup_vs_serial": serial_s * len(episodes) / len(serial_eps) / prep_s,
        "prepare_max_abs_mel_difference": mel_diff,
        "sample_s_including_features": static_s + prep_s,
        "sample_s": static_s,
        "candidate_frames_per_s": frames / max(static_s, 1e-9),
        "sample_s_half_rows": half_s, "half_rows": half_cfg.max_rows,
        "fused_draw": fused,
        "sample_s_static_unfused": unfused_s if fused else None,
        "speedup_fused_draw": unfused_s / max(static_s, 1e-9) if fused else None,
        "fused_equals_unfused_fraction": (float(np.mean([np.array_equal(a, b) for a, b in zip(
            static, unfused, strict=True)])) if fused else None),
        "sample_s_loop": loop_s,
        "speedup_static_vs_loop": loop_s / max(static_s, 1e-9),
        "static_equals_loop_fraction": float(np.mean(same)),
        "static_vs_loop_moment_gap": moments_gap,  # largest |mean or std difference| / mean std
        "static_peak_gpu_memory_gb": peak / 2**30 if peak is not None else None,
        "naive_subset_episodes": len(sub), "cached_subset_s": cached_s, "naive_subset_s": naive_s,
        "speedup_vs_naive": naive_s / max(cached_s, 1e-9),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--episodes", type=int, default=None,
                    help="episodes to sample for (default 10000 on CUDA, 100 on CPU)")
    ap.add_argument("--k", type=int, default=8, help="candidates per episode")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps")
    ap.add_argument("--batch-size", type=int, default=None, help="training windows per step")
    ap.add_argument("--max-rows", type=int, default=None,
                    help="episodes x k rows per pass of the static engine "
                         "(default STATIC_CUDA_ROWS on CUDA, 256 on CPU)")
    ap.add_argument("--loop-max-rows", type=int, default=None,
                    help="rows per pass of the loop engine (default 4096 on CUDA, 256 on CPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    n_sample = args.episodes or (10_000 if gpu else 100)
    steps = args.steps or (50 if gpu else 5)
    batch = args.batch_size or (128 if gpu else 16)
    max_rows = args.max_rows or (STATIC_CUDA_ROWS if gpu else 256)
    loop_max_rows = args.loop_max_rows or (4096 if gpu else 256)
    cfg = ModelConfig()  # the default (research) model, not the CPU demo one
    tcfg = TrainConfig(batch_size=batch, device=str(device), log_every=10**9)
    print(f"device {device}: generating episodes ...", flush=True)
    t0 = time.perf_counter()
    train_eps = corpus(64 if gpu else 16, 64)
    sample_eps = corpus(n_sample, 1000 if gpu else 100)
    corpus_s = time.perf_counter() - t0

    results: dict = {"machine": machine_info(torch=torch.__version__, device=str(device)),
                     "model_config": dataclasses.asdict(cfg), "corpus_s": corpus_s}
    policy, results["train_bf16" if gpu else "train"] = bench_training(
        train_eps, cfg, tcfg, device, warmup=5 if gpu else 1, steps=steps)
    if gpu:  # the alternative: plain fp32
        _, results["train_fp32"] = bench_training(
            train_eps, cfg, dataclasses.replace(tcfg, amp=False), device, warmup=5, steps=steps)
        results["bf16_speedup"] = (results["train_bf16"]["frames_per_s"]
                                   / results["train_fp32"]["frames_per_s"])
    policy.model.eval()
    results["sample"] = bench_sampling(policy, sample_eps, args.k, max_rows, loop_max_rows,
                                       naive_episodes=min(n_sample, 64 if gpu else 4))

    print(f"\n{'measurement':<36}{'value':>16}")
    for key, label, fmt in (("train_bf16", "train frames/s (bf16)", "{:,.0f}"),
                            ("train_fp32", "train frames/s (fp32)", "{:,.0f}"),
                            ("train", "train frames/s", "{:,.0f}")):
        if key in results:
            r = results[key]
            print(f"{label:<36}{fmt.format(r['frames_per_s']):>16}")
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.2f} %"
            print(f"{'  MFU (' + r['device_name'][:20] + ')':<36}{mfu:>16}")
    s = results["sample"]
    label = f"sample K={s['k']} for {s['episodes']} episodes (s)"
    print(f"{label:<36}{s['sample_s']:>16.2f}")
    print(f"{'  passes of half the rows (s)':<36}{s['sample_s_half_rows']:>16.2f}")
    if s["fused_draw"]:
        print(f"{'  without the kernels (s)':<36}{s['sample_s_static_unfused']:>16.2f}")
    print(f"{'  loop engine (s)':<36}{s['sample_s_loop']:>16.2f}")
    print(f"{'  static vs loop (x faster)':<36}{s['speedup_static_vs_loop']:>16.1f}")
    print(f"{'  episodes drawn identically':<36}{s['static_equals_loop_fraction']:>16.2f}")
    print(f"{'  + feature preparation (s)':<36}{s['prepare_features_s']:>16.2f}")
    print(f"{'    one by one on the CPU (s, est.)':<36}{s['prepare_serial_estimate_s']:>16.2f}")
    print(f"{'  cache vs naive loop (x faster)':<36}{s['speedup_vs_naive']:>16.1f}")
    out = write_results(f"policy-{device.type}", results, args.out)
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
