"""The listener policy on a language-model backbone: SFT throughput, sampling, a 7 B LoRA step.

    python -m benchmarks.backbone                     # one GPU: ~1 B full SFT + sampling, 7 B LoRA
    python -m benchmarks.backbone --size tiny --device cpu   # the same path, tiny, on a CPU

Backbones are randomly initialised from a configuration of the real architecture (Llama-shaped),
built in memory on the device: timing does not depend on the weights, and nothing is downloaded.

* ``1b``: hidden 2048, 16 layers, 32 heads (8 key/value), MLP 8192, vocabulary 32,000 -- about
  1 B parameters. Full fine-tuning, float32 weights under bf16 autocast, AdamW. Reported:
  ``params``, ``tokens_per_s`` (frame and word-slot positions through the decoder per second),
  ``mfu`` (model FLOPs per frame, ``BackboneVLA.flops_per_frame``, x frames/s / the GPU's peak
  dense bf16 rate), ``peak_mem_gb``, and ``sample_s``: 8 candidates for each of 1,000 synthetic
  episodes, closed loop with the decoder's key/value cache, bf16 weights (feature preparation
  timed apart).
* ``7b``: Llama-2-7B's shape (hidden 4096, 32 layers, MLP 11008): bf16 frozen weights, LoRA
  adapters of rank 16 on every projection, gradient checkpointing. Step time, tokens/s, memory.
* The same run measures the small default model's SFT step on the same windows, for scale.

``--distributed`` (a machine with several GPUs): full fine-tuning sharded over every GPU
(``TrainConfig.fsdp``, torchrun through ``policy.ml.distributed.launch``). The ``1b`` backbone
runs under 1 GPU and under all of them with the same per-GPU batch, for ``scaling_efficiency`` =
tokens/s(N) / (N x tokens/s(1)); then a ``7b`` Llama-shaped backbone that no single GPU holds
(16 bytes a parameter with AdamW) is fine-tuned in full across all of them: ``params``,
``tokens_per_s``, ``mfu`` (against N x the peak), ``peak_mem_gb`` (per GPU). CPU processes
under gloo run the same path with ``--device cpu --nproc 2`` (tiny sizes).

Results: benchmarks/results/backbone-<device>.json, backbone-<device>-multi.json with
``--distributed`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine_info, write_results
from benchmarks.policy import corpus, peak_flops, sync
from policy.ml.backbone import DECODE_ATTENTION, BackboneVLA, save_word_tokenizer
from policy.ml.config import ModelConfig, SampleConfig, TrainConfig
from policy.ml.data import (
    EpisodeData,
    fit_input_stats,
    fit_noise_coupling,
    prepare_episode,
    raw_features,
)
from policy.ml.model import VLA
from policy.ml.policy import Policy
from policy.ml.tokenizer import ActionTokenizer
from policy.ml.train import Trainer, uncompile_layers

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=2000),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
}


def random_decoder(size: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A Llama decoder of ``size``, initialised on ``device`` directly (no disk, no CPU copy)."""
    from transformers import AutoModel, LlamaConfig

    config = LlamaConfig(max_position_embeddings=8192, **SIZES[size])
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModel.from_config(config, dtype=dtype)


def build_policy(episodes: Sequence[EpisodeData], cfg: ModelConfig, decoder: Any,
                 device: torch.device) -> tuple[Policy, list]:
    """A policy over ``decoder`` (or the small model when None) with statistics fitted on
    ``episodes``, and the episodes prepared for it."""
    raws = [raw_features(e, cfg) for e in episodes]
    tok = ActionTokenizer.fit(np.concatenate([e.listener for e in episodes]),
                              n_bins=cfg.n_bins, layout=cfg.layout)
    torch.manual_seed(0)
    with torch.device(device):
        model = BackboneVLA(cfg, tok.width, decoder) if decoder is not None else VLA(cfg, tok.width)
    stats = fit_input_stats(raws, cfg)
    model.set_input_stats({**stats, "noise_chol": fit_noise_coupling(
        [e.listener for e in episodes], tok, cfg.chunk)})
    policy = Policy(model, tok, cfg).to(device)
    prepared = [prepare_episode(e, cfg, stats, tok, r) for e, r in zip(episodes, raws)]
    return policy, prepared


def time_training(policy: Policy, prepared: list, tcfg: TrainConfig, device: torch.device,
                  warmup: int, steps: int) -> dict:
    cfg = policy.cfg
    trainer = Trainer(policy, tcfg, prepared, [], device)
    for _ in range(warmup):
        trainer.train_step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync(device)
    seconds = time.perf_counter() - t0
    frames = steps * tcfg.batch_size * cfg.context
    slots = cfg.text_slots if cfg.backbone else 0
    tokens = frames * (cfg.chunk + slots) / cfg.chunk
    heads = 1.0 / cfg.chunk if tcfg.loss_stride == 0 else 1.0 / tcfg.loss_stride
    flops = policy.model.flops_per_frame(training=True, head_fraction=heads)
    name, peak = peak_flops(device)
    model = policy.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "params": model.n_params(), "trainable_params": trainable,
        "batch_windows": tcfg.batch_size, "window_frames": cfg.context,
        "tokens_per_step": tokens / steps, "steps_timed": steps,
        "step_s": seconds / steps, "frames_per_s": frames / seconds,
        "tokens_per_s": tokens / seconds, "flops_per_frame": flops,
        "achieved_tflops": frames / seconds * flops / 1e12,
        "mfu": frames / seconds * flops / peak if peak else None,
        "peak_mem_gb": (torch.cuda.max_memory_allocated(device) / 2**30
                        if device.type == "cuda" else None),
        "device_name": name,
    }


def time_sampling(policy: Policy, episodes: Sequence[EpisodeData], k: int,
                  max_rows: int, keep: list | None = None) -> dict:
    """Seconds to sample ``k`` candidates per episode (features timed apart); the candidates
    are appended to ``keep`` when given."""
    device = policy.device
    cfg = SampleConfig(k=k, max_rows=max_rows)
    t0 = time.perf_counter()
    _, prepared = policy.prepare(episodes)
    prep_s = time.perf_counter() - t0
    policy.sample(episodes[: max(1, min(len(episodes), 4))], cfg)  # warm-up
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = policy.sample(episodes, cfg)
    sync(device)
    total = time.perf_counter() - t0
    frames = sum(o.shape[0] * o.shape[1] for o in out)
    if keep is not None:
        keep.extend(out)
    return {"episodes": len(episodes), "k": k, "max_rows": max_rows,
            "prepare_features_s": prep_s, "sample_s": max(total - prep_s, 0.0),
            "sample_s_including_features": total,
            "candidate_frames_per_s": frames / max(total - prep_s, 1e-9),
            "peak_mem_gb": (torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda" else None)}


def _worker(args: argparse.Namespace) -> None:
    """One rank of a sharded run (started by torchrun): time ``--steps`` steps, rank 0 writes
    what it measured to ``--out``."""
    import json

    from policy.ml import distributed

    d = distributed.init(args.device)
    device = distributed.device_for(d, args.device)
    try:
        size, gpu = args.size, device.type == "cuda"
        train_eps = corpus(64 if gpu else 6, 64)
        words = sorted({w["word"] for e in train_eps for w in (e.transcript or [])})
        vocab_dir = Path(args.out).with_suffix(".words")
        if d.is_main:
            save_word_tokenizer(vocab_dir, words)
        distributed.barrier(d)
        cfg = ModelConfig(backbone=str(vocab_dir), context=args.context, dropout=0.0,
                          grad_checkpointing=args.checkpointing)
        tcfg = TrainConfig(batch_size=args.batch * d.world, device=str(device),
                           log_every=10**9, loss_stride=0, fsdp=True)
        decoder = random_decoder(size, device, torch.float32)  # the same seed on every rank
        policy, prepared = build_policy(train_eps, cfg, decoder, device)
        r = time_training(policy, prepared, tcfg, device, warmup=2, steps=args.steps)
        peak = torch.tensor([r["peak_mem_gb"] or 0.0], device=device)
        if d.world > 1:
            torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        if d.is_main:
            name, one = peak_flops(device)
            r.update(gpus=d.world, per_gpu_batch=args.batch, peak_mem_gb=float(peak),
                     mfu=(r["achieved_tflops"] * 1e12 / (one * d.world)) if one else None,
                     grad_checkpointing=args.checkpointing, size=size, config=SIZES[size])
            Path(args.out).write_text(json.dumps(r))
    finally:
        distributed.destroy()


def _sharded_run(size: str, nproc: int, args: argparse.Namespace, folder: Path,
                 batch: int, checkpointing: bool) -> dict:
    import json

    from policy.ml import distributed

    out = folder / f"{size}-{nproc}.json"
    log = folder / f"{size}-{nproc}.log"
    worker = ["--worker", "--device", args.device, "--size", size, "--batch", batch,
              "--steps", args.steps or 10, "--context", args.context, "--out", out]
    if checkpointing:
        worker.append("--checkpointing")
    print(f"  {size} on {nproc} process(es), {batch} windows each ...", flush=True)
    distributed.launch("benchmarks.backbone", [str(a) for a in worker], nproc=nproc,
                       log_path=log)
    return json.loads(out.read_text())


def distributed_main(args: argparse.Namespace) -> dict:
    gpu = args.device != "cpu" and torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    args.device = device
    if not gpu:
        args.context = min(args.context, 32)
    nproc = args.nproc or (torch.cuda.device_count() if gpu else 2)
    size = args.size or ("1b" if gpu else "tiny")
    big = args.lora_size if args.lora_size not in (None, "none") else ("7b" if gpu else "tiny")
    batch = args.batch or (16 if gpu else 2)
    folder = Path(tempfile.mkdtemp(prefix="backbone-multi-"))
    results: dict = {"machine": machine_info(torch=torch.__version__, device=device),
                     "gpus": nproc, "size": size, "big_size": big}
    one = _sharded_run(size, 1, args, folder, batch, False)
    many = _sharded_run(size, nproc, args, folder, batch, False)
    results.update(one_gpu=one, all_gpus=many,
                   scaling_efficiency=many["tokens_per_s"] / (nproc * one["tokens_per_s"]))
    print(f"  scaling efficiency at {nproc}: {100 * results['scaling_efficiency']:.1f} %",
          flush=True)
    full = _sharded_run(big, nproc, args, folder, args.big_batch or (8 if gpu else 2), True)
    results["full_finetune"] = full
    results.update(params=full["params"], tokens_per_s=full["tokens_per_s"], mfu=full["mfu"],
                   peak_mem_gb=full["peak_mem_gb"])
    mfu = "n/a" if full["mfu"] is None else f"{100 * full['mfu']:.1f} %"
    print(f"  {big}: {full['params'] / 1e9:.2f} B params over {nproc}: "
          f"{full['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, "
          f"peak {full['peak_mem_gb']:.1f} GB per GPU", flush=True)
    out = write_results(f"backbone-{device}-multi", results, args.out)
    print(f"wrote {out}")
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--size", default=None, help="backbone for SFT and sampling: 1b (CUDA "
                    "default) or tiny (CPU default)")
    ap.add_argument("--lora-size", default=None, help="backbone for the LoRA step: 7b (CUDA "
                    "default), tiny, or none")
    ap.add_argument("--batch", type=int, default=None, help="training windows per step")
    ap.add_argument("--context", type=int, default=256, help="frames per training window")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps")
    ap.add_argument("--episodes", type=int, default=None, help="episodes to sample for")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-rows", type=int, default=None, help="episodes x k rows per pass")
    ap.add_argument("--skip-sampling", action="store_true")
    ap.add_argument("--compare-attention", action="store_true",
                    help="compile and compare attention paths on the CPU too (slow; CUDA does)")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip the compiled SFT measurement (CUDA)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--distributed", action="store_true",
                    help="sharded full fine-tuning over every GPU (see above)")
    ap.add_argument("--nproc", type=int, default=None, help="processes for --distributed")
    ap.add_argument("--big-batch", type=int, default=None,
                    help="windows per GPU for the 7b run of --distributed")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return {}
    if args.distributed:
        return distributed_main(args)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    size = args.size or ("1b" if gpu else "tiny")
    lora_size = args.lora_size or ("7b" if gpu else "tiny")
    batch = args.batch or (32 if gpu else 2)
    steps = args.steps or (10 if gpu else 2)
    n_sample = args.episodes or (1000 if gpu else 6)
    max_rows = args.max_rows or (2048 if gpu else 64)
    context = args.context if gpu else min(args.context, 32)

    train_eps = corpus(64 if gpu else 6, 64)
    words = sorted({w["word"] for e in train_eps for w in (e.transcript or [])})
    vocab_dir = tempfile.mkdtemp(prefix="backbone-words-")
    save_word_tokenizer(vocab_dir, words)  # the transcript's tokens; weights come from memory
    cfg = ModelConfig(backbone=vocab_dir, context=context, dropout=0.0)
    tcfg = TrainConfig(batch_size=batch, device=str(device), log_every=10**9, loss_stride=0,
                       compile_layers=False)  # eager first; compiled below
    results: dict = {"machine": machine_info(torch=torch.__version__, device=str(device)),
                     "size": size, "lora_size": lora_size, "config": SIZES[size]}

    print(f"{device}: {size} backbone, full fine-tuning ...", flush=True)
    decoder = random_decoder(size, device, torch.float32)
    policy, prepared = build_policy(train_eps, cfg, decoder, device)
    sft = time_training(policy, prepared, tcfg, device, warmup=3 if gpu else 1, steps=steps)
    results["sft"] = sft
    results.update(params=sft["params"], tokens_per_s=sft["tokens_per_s"], mfu=sft["mfu"],
                   peak_mem_gb=sft["peak_mem_gb"])
    mfu = "n/a" if sft["mfu"] is None else f"{100 * sft['mfu']:.1f} %"
    print(f"  {sft['params'] / 1e9:.2f} B params: {sft['tokens_per_s']:,.0f} tokens/s, "
          f"MFU {mfu}", flush=True)

    if (gpu or args.compare_attention) and not args.no_compile:  # decoder layers compiled
        try:  # what training does on CUDA (TrainConfig.compile_layers)
            compiled = time_training(policy, prepared,
                                     dataclasses.replace(tcfg, compile_layers=True), device,
                                     warmup=3, steps=steps)
            results["sft_compiled"] = compiled
            if compiled["tokens_per_s"] > sft["tokens_per_s"]:
                results.update(tokens_per_s=compiled["tokens_per_s"], mfu=compiled["mfu"],
                               peak_mem_gb=compiled["peak_mem_gb"], compiled=True)
            print(f"  compiled: {compiled['tokens_per_s']:,.0f} tokens/s, MFU "
                  f"{100 * (compiled['mfu'] or 0):.1f} %", flush=True)
        except Exception as exc:  # report, keep the eager figures
            results["sft_compiled"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"  compile failed: {results['sft_compiled']['error'][:300]}", flush=True)
        uncompile_layers(policy.model)  # sampling runs eager (its shapes change)
        torch.compiler.reset()

    if not args.skip_sampling:
        policy.model.eval()
        policy.model.lm.to(torch.bfloat16)  # sampling reads bf16 weights
        policy.model.requires_grad_(False)
        sample_eps = corpus(n_sample, min(n_sample, 1000))
        if gpu or args.compare_attention:  # the stock attention path against the decode path
            subset = sample_eps[: max(1, n_sample // 5)]
            lm = policy.model.lm
            lm.set_attn_implementation("sdpa")
            stock_out: list = []
            fast_out: list = []
            stock = time_sampling(policy, subset, args.k, max_rows, stock_out)
            lm.set_attn_implementation(DECODE_ATTENTION)
            fast = time_sampling(policy, subset, args.k, max_rows, fast_out)
            same = np.mean([float((a == b).all(-1).mean()) for a, b in zip(stock_out, fast_out)])
            results["attention"] = {
                "episodes": len(subset), "stock_sdpa_s": stock["sample_s"],
                "decode_s": fast["sample_s"],
                "speedup": stock["sample_s"] / max(fast["sample_s"], 1e-9),
                "identical_frames_fraction": float(same)}
            print(f"  decode attention vs stock on {len(subset)} episodes: "
                  f"{fast['sample_s']:.1f} s vs {stock['sample_s']:.1f} s", flush=True)
        results["sample"] = time_sampling(policy, sample_eps, args.k, max_rows)
        results["sample_s"] = results["sample"]["sample_s"]
        print(f"  sample {args.k} x {n_sample} episodes: {results['sample_s']:.1f} s "
              f"(+ {results['sample']['prepare_features_s']:.1f} s features)", flush=True)
    del policy, decoder, prepared
    if gpu:
        torch.cuda.empty_cache()

    print(f"{device}: the small default model on the same windows ...", flush=True)
    small_cfg = dataclasses.replace(ModelConfig(), context=context)
    small, small_prep = build_policy(train_eps, small_cfg, None, device)
    results["small_model_sft"] = time_training(small, small_prep, tcfg, device,
                                               warmup=3 if gpu else 1, steps=steps)
    del small, small_prep

    if lora_size != "none":
        print(f"{device}: {lora_size} backbone, LoRA ...", flush=True)
        lcfg = dataclasses.replace(cfg, lora_rank=16, lora_alpha=32.0, grad_checkpointing=True,
                                   backbone_dtype="bfloat16" if gpu else "float32")
        decoder = random_decoder(lora_size, device, torch.bfloat16 if gpu else torch.float32)
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        lpolicy, lprep = build_policy(train_eps, lcfg, decoder, device)
        lbatch = args.batch or (8 if gpu else 2)
        lora = time_training(lpolicy, lprep, dataclasses.replace(tcfg, batch_size=lbatch),
                             device, warmup=2 if gpu else 1, steps=max(2, steps // 2))
        results["lora"] = {**lora, "rank": 16, "grad_checkpointing": True,
                           "weights": "bfloat16" if gpu else "float32",
                           "config": SIZES[lora_size]}
        print(f"  {lora['params'] / 1e9:.2f} B params, {lora['trainable_params'] / 1e6:.1f} M "
              f"trained: {lora['step_s']:.2f} s/step, {lora['tokens_per_s']:,.0f} tokens/s, "
              f"peak {lora['peak_mem_gb'] or 0:.1f} GB", flush=True)

    out = write_results(f"backbone-{device.type}", results, args.out)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
