"""Data-parallel SFT: throughput per world size, scaling efficiency, loss curves against one.

    python -m benchmarks.multi_gpu                   # CUDA: world sizes 1 .. visible GPUs; else CPU
    python -m benchmarks.multi_gpu --device cuda     # one H100: world size 1, about 70 s
    python -m benchmarks.multi_gpu --device cpu      # gloo processes on CPU cores, world sizes 1, 2

Every run is its own program, launched the way the gpu worker launches one
(``policy.ml.distributed.launch`` -> torchrun -> ``policy.ml.train_dist``), on the same synthetic
episodes (exported once) and the same global batch: world size N makes the same updates as world
size 1, each process on 1/N of every batch (strong scaling). The reference is one plain process
(``python -m policy.ml.train_dist`` without torchrun: no process group, the in-process path);
torchrun at world size 1 adds DDP on a group of one (NCCL on CUDA), which shows its overhead.

* Throughput: frames (window positions) per second between the logged step ``--timed-from`` and
  the last one, from rank 0's progress lines (written after the losses are read, so the devices
  have finished those steps). Start-up, data preparation and the first steps are not in it.
* Scaling efficiency at N = throughput(N) / (N x throughput(plain)); the goal is >= 90 % at 2.
* Loss curves every ``--log-every`` steps; the largest |loss(N) - loss(plain)| over the curve and
  the largest |weight(N) - weight(plain)| at the end. fp32 on CPU agrees to ~1e-6; bf16 on
  CUDA drifts further (other summation orders, rounded anew).

Models: on CUDA the default ``ModelConfig`` (1.8 M parameters) and ``TrainConfig`` (bf16, heads at
every position), global batch 1024 windows of 64 frames; on CPU ``DEMO_MODEL`` / ``DEMO_TRAIN``,
global batch 16, each process ``--threads`` threads (default 1: N processes on N cores; these are
CPU / gloo figures, not GPU ones). Dropout is off: its masks are drawn per process, so with it the
curves would agree in distribution only.

Results: benchmarks/results/multi_gpu-<cpu|cuda>.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.common import machine_info, write_results
from benchmarks.policy import corpus
from policy.ml.checkpoint import load_checkpoint
from policy.ml.config import ModelConfig, TrainConfig
from policy.ml.demo import DEMO_MODEL, DEMO_TRAIN
from policy.ml.distributed import NO_MULTICAST_ENV, launch
from policy.ml.train_dist import MODULE, export_episodes


def configs(device: str, batch: int, steps: int, log_every: int) -> tuple[ModelConfig,
                                                                          TrainConfig]:
    if device == "cuda":
        model, train = ModelConfig(dropout=0.0), TrainConfig(device="cuda")
    else:
        model, train = dataclasses.replace(DEMO_MODEL, dropout=0.0), DEMO_TRAIN
    return model, dataclasses.replace(train, batch_size=batch, max_steps=steps,
                                      warmup_steps=max(1, steps // 10), log_every=log_every,
                                      eval_every=0, checkpoint_every=0)


def run_once(work: Path, data: Path, config: Path, label: str, nproc: int, torchrun: bool,
             threads: int) -> dict:
    out = work / label
    out.mkdir()
    args = ["--data", data, "--config", config, "--out", out / "policy.pt",
            "--progress", out / "progress.jsonl", "--result", out / "result.json"]
    if threads:
        args += ["--threads", threads]
    wall = launch(MODULE, args, nproc=nproc, log_path=out / "log.txt", torchrun=torchrun,
                  poll_s=0.5)
    result = json.loads((out / "result.json").read_text())
    lines = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()]
    result.update(label=label, nproc=nproc, torchrun=torchrun, wall_s=wall, progress=lines,
                  params={k: v for k, v in load_checkpoint(out / "policy.pt").state["model"]
                          .items()})
    return result


def throughput(run: dict, timed_from: int, frames_per_step: int) -> dict:
    rows = [r for r in run["progress"] if r["step"] >= timed_from]
    if len(rows) < 2:
        raise SystemExit(f"{run['label']}: fewer than two logged steps from step {timed_from}; "
                         "raise --steps or lower --timed-from")
    steps = rows[-1]["step"] - rows[0]["step"]
    seconds = rows[-1]["time"] - rows[0]["time"]
    return {"steps_timed": steps, "seconds": seconds, "frames_per_s": steps * frames_per_step
            / seconds, "steps_per_s": steps / seconds}


def compare(run: dict, ref: dict) -> dict:
    a = {h["step"]: h["loss"] for h in run["history"]}
    b = {h["step"]: h["loss"] for h in ref["history"]}
    steps = sorted(set(a) & set(b))
    diffs = [abs(a[s] - b[s]) for s in steps]
    weights = max(float((run["params"][k].float() - ref["params"][k].float()).abs().max())
                  for k in ref["params"] if ref["params"][k].is_floating_point())
    return {"steps_compared": len(steps), "max_abs_loss_diff": max(diffs),
            "max_rel_loss_diff": max(d / abs(b[s]) for d, s in zip(diffs, steps)),
            "max_abs_weight_diff": weights}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--world-sizes", type=int, nargs="+",
                    help="torchrun world sizes (default 1 .. GPUs on CUDA, 1 2 on CPU)")
    ap.add_argument("--batch-size", type=int, help="global batch in windows (1024 CUDA, 16 CPU)")
    ap.add_argument("--steps", type=int, help="optimiser steps per run (60 CUDA, 30 CPU)")
    ap.add_argument("--log-every", type=int, help="steps between loss points (5 CUDA, 2 CPU)")
    ap.add_argument("--timed-from", type=int, help="first step of the timing (20 CUDA, 6 CPU)")
    ap.add_argument("--episodes", type=int, help="training episodes (64 CUDA, 16 CPU)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process (CPU runs)")
    ap.add_argument("--fp32", action="store_true",
                    help="no bf16 autocast on CUDA: curves then agree to fp32 rounding")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    gpu = device == "cuda"
    gpus = torch.cuda.device_count() if gpu else 0
    sizes = args.world_sizes or (list(range(1, gpus + 1)) if gpu else [1, 2])
    if gpu and max(sizes) > gpus:
        raise SystemExit(f"world size {max(sizes)} asked for, {gpus} GPU(s) visible")
    batch = args.batch_size or (1024 if gpu else 16)
    steps = args.steps or (60 if gpu else 30)
    log_every = args.log_every or (5 if gpu else 2)
    timed_from = args.timed_from or (20 if gpu else 6)
    threads = 0 if gpu else args.threads
    model_cfg, train_cfg = configs(device, batch, steps, log_every)
    if args.fp32:
        train_cfg = dataclasses.replace(train_cfg, amp=False)
    frames_per_step = batch * model_cfg.context

    results: dict = {
        "machine": machine_info(torch=torch.__version__, device=device, gpus_visible=gpus),
        "backend": "nccl" if gpu else "gloo",
        "note": ("CUDA: one process per GPU, NCCL" if gpu else
                 f"CPU / gloo: each process is {threads} CPU thread(s), not a GPU; these "
                 "figures show the data-parallel layer's overhead, not GPU scaling"),
        "env": NO_MULTICAST_ENV,
        "model_config": dataclasses.asdict(model_cfg), "train_config":
            dataclasses.asdict(train_cfg),
        "global_batch": batch, "frames_per_step": frames_per_step, "steps": steps,
        "timed_from_step": timed_from, "threads_per_process": threads or None,
    }
    with tempfile.TemporaryDirectory(prefix="multi-gpu-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        episodes = corpus(args.episodes or (64 if gpu else 16), 64)
        data = export_episodes(episodes, work / "data", "train")
        results["episodes"] = len(episodes)
        results["corpus_s"] = time.perf_counter() - t0
        config = work / "config.json"
        config.write_text(json.dumps({"model": dataclasses.asdict(model_cfg),
                                      "train": dataclasses.asdict(train_cfg)}))
        plan = [("plain", 1, False)] + [(f"torchrun-{n}", n, True) for n in sizes]
        runs = []
        for label, n, torchrun in plan:
            print(f"{device}: {label} ({n} process{'es' if n > 1 else ''}) ...", flush=True)
            runs.append(run_once(work, data, config, label, n, torchrun, threads))
    ref = runs[0]
    base = throughput(ref, timed_from, frames_per_step)["frames_per_s"]
    one = next((r for r in runs if r["torchrun"] and r["nproc"] == 1), None)
    rows = []
    for r in runs:
        t = throughput(r, timed_from, frames_per_step)
        row = {"label": r["label"], "world_size": r["world_size"], "backend": r["backend"],
               **t, "scaling_efficiency": t["frames_per_s"] / (r["nproc"] * base),
               "wall_s": r["wall_s"], "train_s": r["seconds"],
               "max_memory_gb": r.get("max_memory_gb"),
               "loss_curve": [[h["step"], h["loss"]] for h in r["history"]]}
        if one is not None and r["torchrun"]:
            one_t = throughput(one, timed_from, frames_per_step)["frames_per_s"]
            row["efficiency_vs_torchrun_1"] = t["frames_per_s"] / (r["nproc"] * one_t)
        if r is not ref:
            row["vs_plain"] = compare(r, ref)
        rows.append(row)
    results["runs"] = rows

    print(f"\n{results['note']}")
    print(f"global batch {batch} windows x {model_cfg.context} frames, {steps} steps, timed from "
          f"step {timed_from}\n")
    print(f"{'run':<14}{'world':>6}{'frames/s':>12}{'efficiency':>12}{'max |dloss|':>14}"
          f"{'max |dw|':>12}")
    for row in rows:
        cmp = row.get("vs_plain", {})
        dl = f"{cmp['max_abs_loss_diff']:.2e}" if cmp else "ref"
        dw = f"{cmp['max_abs_weight_diff']:.2e}" if cmp else "ref"
        print(f"{row['label']:<14}{row['world_size']:>6}{row['frames_per_s']:>12,.0f}"
              f"{100 * row['scaling_efficiency']:>11.1f}%{dl:>14}{dw:>12}")
    out = write_results(f"multi_gpu-{device}", results, args.out)
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    os.environ.update(NO_MULTICAST_ENV)
    main()
