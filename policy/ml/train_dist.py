"""SFT as a program: what torchrun runs in each process, and the launcher the gpu worker calls.

    torchrun --standalone --nproc_per_node=2 -m policy.ml.train_dist \\
        --data DIR --config config.json --out policy.pt --result result.json --progress log.jsonl

It needs no Django and no database: the episodes come from ``--data``, a directory written by
:func:`export_episodes` (per split, ``<split>.npz`` with the arrays and ``<split>.json`` with the
rest). ``--config`` holds ``{"model": {...}, "train": {...}}`` (the dataclasses as dicts). Rank 0
writes the checkpoint (``--out``), one JSON line per logged step to ``--progress`` (step, total,
losses, wall time) and, at the end, ``--result`` (step, loss history, sha256, seconds, frames/s,
world size). Started without torchrun it trains in one process (world size 1, no process group).

:func:`train_with_torchrun` does all of it from Python: export, launch, relay the progress lines
to a callback while it trains, and read back a :class:`~policy.ml.train.TrainResult`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .config import ModelConfig, TrainConfig
from .data import EpisodeData, episode_from
from .train import ProgressFn, TrainResult, train

logger = logging.getLogger(__name__)

ARRAYS = ("speaker", "listener", "audio", "video")  # EpisodeData fields saved in the .npz
MODULE = "policy.ml.train_dist"


# --- episodes on disk ---------------------------------------------------------------------------


def export_episodes(episodes: Sequence[Any], directory: str | Path, split: str) -> Path:
    """Write episode-like objects (see ``data.episode_from``) for :func:`load_episodes`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    rows = []
    for i, obj in enumerate(episodes):
        ep = episode_from(obj)
        for name in ARRAYS:
            value = getattr(ep, name)
            if value is not None:
                arrays[f"{i}.{name}"] = np.asarray(value)
        rows.append({"key": ep.key, "fps": ep.fps, "sample_rate": ep.sample_rate,
                     "transcript": ep.transcript, "split": ep.split,
                     "video_path": ep.video_path, "video_sha": ep.video_sha,
                     "face_box": list(ep.face_box) if ep.face_box is not None else None})
    np.savez(directory / f"{split}.npz", **arrays)  # uncompressed: written and read once
    (directory / f"{split}.json").write_text(json.dumps(rows))
    return directory


def load_episodes(directory: str | Path, split: str) -> list[EpisodeData]:
    """The episodes :func:`export_episodes` wrote for ``split`` ([] when it wrote none)."""
    directory = Path(directory)
    meta = directory / f"{split}.json"
    if not meta.is_file():
        return []
    rows = json.loads(meta.read_text())
    with np.load(directory / f"{split}.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    return [EpisodeData(key=r["key"], fps=r["fps"], sample_rate=r["sample_rate"],
                        transcript=r["transcript"], split=r["split"],
                        video_path=r.get("video_path"), video_sha=r.get("video_sha") or "",
                        face_box=tuple(r["face_box"]) if r.get("face_box") else None,
                        **{name: arrays.get(f"{i}.{name}") for name in ARRAYS})
            for i, r in enumerate(rows)]


# --- one process of the run ---------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # a reader never sees half a file


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="directory written by export_episodes")
    ap.add_argument("--out", required=True, help="checkpoint to write (rank 0)")
    ap.add_argument("--config", help='JSON file: {"model": {...}, "train": {...}}; '
                                     "optional with --resume (the checkpoint's configs)")
    ap.add_argument("--resume", help="checkpoint to continue from")
    ap.add_argument("--stop-at-step", type=int)
    ap.add_argument("--progress", help="JSON lines, one per logged step (rank 0)")
    ap.add_argument("--result", help="JSON summary at the end (rank 0)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads per process (0: torch's default; torchrun sets 1)")
    args = ap.parse_args(argv)

    model_cfg = train_cfg = None
    if args.config:
        cfg = json.loads(Path(args.config).read_text())
        model_cfg = ModelConfig.from_dict(cfg["model"])
        train_cfg = TrainConfig.from_dict(cfg["train"])
    if args.threads:
        torch.set_num_threads(args.threads)
    device = train_cfg.device if train_cfg else None
    if device is None and args.resume:  # the checkpoint's configs: train where it trained
        from .checkpoint import load_checkpoint

        saved = load_checkpoint(args.resume).train_config
        device = saved.device if saved else None
    d = distributed.init(device or "auto")
    logging.basicConfig(level=logging.INFO if d.is_main else logging.WARNING,
                        format=f"%(asctime)s rank{d.rank} %(name)s: %(message)s")
    try:
        train_eps = load_episodes(args.data, "train")
        val_eps = load_episodes(args.data, "val")
        progress_path = Path(args.progress) if args.progress and d.is_main else None

        def progress(step: int, total: int, losses: dict[str, float]) -> None:
            with open(progress_path, "a") as f:  # one whole line per write
                f.write(json.dumps({"step": step, "total": total, "losses": losses,
                                    "time": time.time()}) + "\n")

        result = train(train_eps, model_cfg, train_cfg, val_episodes=val_eps or None,
                       checkpoint_path=args.out, resume_from=args.resume,
                       stop_at_step=args.stop_at_step,
                       progress=progress if progress_path is not None else None)
        if d.is_main and args.result:
            dev = result.policy.device
            _write_json(Path(args.result), {
                "max_memory_gb": (torch.cuda.max_memory_allocated(dev) / 1e9
                                  if dev.type == "cuda" else None),
                "step": result.step, "history": result.history,
                "checkpoint": str(result.checkpoint), "sha256": result.checkpoint_sha256,
                "tokenizer_round_trip": result.tokenizer_round_trip,
                "seconds": result.seconds, "frames_per_s": result.frames_per_s,
                "world_size": d.world, "backend": d.backend,
                "model_config": dataclasses.asdict(result.policy.cfg),
            })
    finally:
        distributed.destroy()
    return 0


# --- the launcher (the gpu worker's side) -------------------------------------------------------


class ProgressReader:
    """Relays new complete lines of a progress file to ``progress(step, total, losses)``."""

    def __init__(self, path: Path, progress: ProgressFn | None) -> None:
        self.path, self.progress, self.offset = path, progress, 0

    def __call__(self) -> None:
        if self.progress is None or not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
        self.offset += end
        for line in data[:end].splitlines():
            row = json.loads(line)
            self.progress(row["step"], row["total"], row["losses"])


def train_with_torchrun(train_episodes: Sequence[Any], model_config: ModelConfig | None,
                        train_config: TrainConfig | None, *, nproc: int,
                        checkpoint_path: str | Path, workdir: str | Path,
                        val_episodes: Sequence[Any] | None = None,
                        resume_from: str | Path | None = None,
                        progress: ProgressFn | None = None, poll_s: float = 2.0,
                        threads: int = 0) -> TrainResult:
    """:func:`policy.ml.train.train` in ``nproc`` processes under torchrun (one per GPU on a
    CUDA host, gloo processes on CPU); the same result, read back from rank 0's files.

    ``workdir`` receives the exported episodes, the config, the progress lines and the log of
    all ranks (``torchrun.log``, quoted in the error when the run fails).
    """
    from .checkpoint import load_policy
    from .device import pick_device

    work = Path(workdir)
    data = export_episodes(train_episodes, work / "data", "train")
    if val_episodes:
        export_episodes(val_episodes, data, "val")
    args = ["--data", data, "--out", checkpoint_path, "--progress", work / "progress.jsonl",
            "--result", work / "result.json"]
    if model_config is not None or train_config is not None:
        config = {"model": dataclasses.asdict(model_config or ModelConfig()),
                  "train": dataclasses.asdict(train_config or TrainConfig())}
        (work / "config.json").write_text(json.dumps(config))
        args += ["--config", work / "config.json"]
    if resume_from is not None:
        args += ["--resume", resume_from]
    if threads:
        args += ["--threads", threads]
    (work / "progress.jsonl").unlink(missing_ok=True)
    distributed.launch(MODULE, args, nproc=nproc, log_path=work / "torchrun.log",
                       poll=ProgressReader(work / "progress.jsonl", progress), poll_s=poll_s)
    out = json.loads((work / "result.json").read_text())
    device = (train_config.device if train_config else None) or "auto"
    policy = load_policy(checkpoint_path, expected_sha256=out["sha256"], device=pick_device(device))
    return TrainResult(policy=policy, step=out["step"], history=out["history"],
                       checkpoint=Path(checkpoint_path), checkpoint_sha256=out["sha256"],
                       tokenizer_round_trip=out["tokenizer_round_trip"], seconds=out["seconds"],
                       frames_per_s=out["frames_per_s"], world_size=out["world_size"])


if __name__ == "__main__":
    raise SystemExit(main())
