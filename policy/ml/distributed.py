"""Data-parallel training over several GPUs (or CPU processes): the one layer every trainer uses.

    torchrun --standalone --nproc_per_node=N -m policy.ml.train_dist --data DIR --out CKPT ...

``torchrun`` starts N processes and tells each its place (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR / MASTER_PORT); :func:`init` reads them and joins the process group: NCCL when the run
trains on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU. A process started without
torchrun is world size 1 with no process group: the same code as before this layer existed.

What stays the same for any world size, for the same global batch (``TrainConfig.batch_size``):

* the examples. Every process draws the whole global batch from the same seeded generator (the
  trainer's window picks, noise and hiding draws) and keeps its contiguous shard of rows
  (:func:`shard`). This plays the part of ``DistributedSampler``: the SFT loop samples windows with
  replacement from a generator whose state the checkpoint keeps, so "draw the global batch, take
  my rows" keeps exact resume and makes the global batch independent of the world size.
* the update. A loss that is a mean over masked tokens is normalised by the GLOBAL count (the
  processes all-reduce their counts first) and scaled by the world size, so DDP's gradient
  average is the gradient of the world-size-1 loss on the whole batch, even when the masks give
  the shards different numbers of tokens.
* so the loss curve and the weights, up to floating-point summation order (tested on CPU with
  gloo: 2 processes against 1). Dropout masks are drawn per process (``step_seed``), so with
  dropout > 0 the runs agree in distribution, not in value.

Rank 0 alone writes checkpoints, progress and logs; every rank reads a checkpoint to resume.
:func:`launch` runs torchrun as a child process (the Celery ``gpu`` worker's path) with the
multicast features of NCCL / symmetric memory / NVSHMEM switched off (``NO_MULTICAST_ENV``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

# NVLink SHARP / multicast stay off: they need fabric-manager support the lent hosts lack, and a
# plain ring or tree all-reduce is what a model this small needs anyway.
NO_MULTICAST_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
REPO_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the `policy` package


class DistributedError(ValueError):
    """A launch or a world size that cannot work, with what to change."""


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run."""

    rank: int = 0  # 0 .. world - 1; rank 0 writes checkpoints, progress and logs
    world: int = 1  # processes in the run (one per GPU)
    local_rank: int = 0  # rank on this host: the GPU index on CUDA
    backend: str | None = None  # "nccl" / "gloo" while a process group is up; None: no group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None


SINGLE = Dist()  # a process on its own: world size 1, no process group


def env_ranks(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world, local_rank)`` from torchrun's environment; None outside torchrun."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        raw = env.get(name)
        try:
            values[name] = int(raw) if raw is not None else None
        except ValueError:
            raise DistributedError(f"environment variable {name}={raw!r} is not an integer "
                                   "(launch with torchrun)") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1:
        raise DistributedError(f"WORLD_SIZE={world}: a run needs at least one process")
    if rank is None:
        raise DistributedError("WORLD_SIZE is set but RANK is not (launch with torchrun, which "
                               "sets both)")
    if not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is outside 0 .. {world - 1} (WORLD_SIZE={world})")
    local = rank if local is None else local
    if not 0 <= local <= rank:
        raise DistributedError(f"LOCAL_RANK={local} does not fit RANK={rank}")
    return rank, world, local


def _wants_cuda(device: str) -> bool:
    if device == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


def init(device: str = "auto", timeout_s: float = 600.0) -> Dist:
    """Join the process group torchrun describes (a no-op outside torchrun: world size 1).

    ``device`` is the run's ``TrainConfig.device``: CUDA means NCCL and GPU ``LOCAL_RANK``, CPU
    means gloo. ``timeout_s`` bounds how long a collective waits for a missing process.
    """
    ranks = env_ranks()
    if ranks is None:
        return SINGLE
    if dist.is_initialized():
        return current()
    for name, value in NO_MULTICAST_ENV.items():  # read by NCCL when the group starts
        os.environ.setdefault(name, value)
    rank, world, local = ranks
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DistributedError(f"{' and '.join(missing)} not set (launch with torchrun)")
    timeout = timedelta(seconds=timeout_s)
    if _wants_cuda(device):
        if not torch.cuda.is_available():
            raise DistributedError(f"device {device!r} asked for, but CUDA is not available")
        n = torch.cuda.device_count()
        if local >= n:
            raise DistributedError(f"LOCAL_RANK={local} but only {n} GPU(s) are visible: launch "
                                   f"with --nproc_per_node <= {n}")
        gpu = torch.device("cuda", local)
        torch.cuda.set_device(gpu)
        dist.init_process_group("nccl", rank=rank, world_size=world, timeout=timeout,
                                device_id=gpu)
        return Dist(rank, world, local, "nccl")
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    return Dist(rank, world, local, "gloo")


def current() -> Dist:
    """This process's place: from the live process group, else :data:`SINGLE`."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    rank = dist.get_rank()
    return Dist(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)),
                str(dist.get_backend()))


def is_main() -> bool:
    return current().is_main


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(d: Dist, name: str) -> torch.device:
    """The device this process trains on: its own GPU under NCCL, the CPU under gloo."""
    if d.backend == "nccl":
        return torch.device("cuda", d.local_rank)
    if d.backend == "gloo":
        if name != "auto" and _wants_cuda(name):
            raise DistributedError(f"device {name!r} under a gloo process group: gloo runs here "
                                   "train on the CPU; use device 'cpu', or NCCL for GPUs")
        return torch.device("cpu")
    return torch.device("cuda" if _wants_cuda(name) else name)


def check_batch(batch_size: int, world: int) -> None:
    """The global batch must split evenly, else the shards would weigh examples unequally."""
    if world < 1:
        raise DistributedError(f"world size {world}: a run needs at least one process")
    if batch_size < world or batch_size % world:
        raise DistributedError(
            f"batch_size {batch_size} (the global batch) does not split evenly over {world} "
            f"processes: make it a multiple of {world}, or launch fewer processes")


def shard(n: int, d: Dist) -> slice:
    """This process's contiguous rows of an ``n``-row global batch."""
    per = n // d.world
    return slice(d.rank * per, (d.rank + 1) * per)


def step_seed(seed: int, step: int, rank: int) -> int:
    """A seed for the global generators (dropout) of one step on one process: distinct masks per
    process, and a resumed run re-creates them without saving every process's generator."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def wrap(model: nn.Module, d: Dist, *, find_unused: bool = False, fsdp: bool = False
         ) -> nn.Module:
    """The module to run the training forward pass through: DDP under a process group (its
    backward all-reduces and averages the gradients), the model itself otherwise. With
    ``fsdp`` the model is sharded in place instead (``policy.ml.sharded``; its gradients are
    reduce-scattered and averaged the same way).

    ``find_unused``: some parameters get no gradient (an input encoder whose input the data
    lacks); DDP must then look for them every step.
    """
    if not d.active:
        return model
    if fsdp:
        from .sharded import shard

        return shard(model, cuda=d.backend == "nccl")
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[d.local_rank] if d.backend == "nccl" else None,
        broadcast_buffers=False,  # the buffers are fitted statistics, equal on every rank
        find_unused_parameters=find_unused,
        gradient_as_bucket_view=True,  # gradients live in the all-reduce buckets: no copy
    )


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """``t`` summed over the processes, in place (unchanged without a group)."""
    if d.active and d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(d: Dist) -> None:
    if not d.active:
        return
    if d.backend == "nccl":
        dist.barrier(device_ids=[d.local_rank])
    else:
        dist.barrier()


def broadcast_object(obj: Any, d: Dist, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (small picklable things: a sha, a path)."""
    if not d.active or d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# --- launching ---------------------------------------------------------------------------------


def torchrun_command(module: str, args: Sequence[str], nproc: int) -> list[str]:
    """``python -m torch.distributed.run`` (torchrun, with this interpreter) on one host."""
    if nproc < 1:
        raise DistributedError(f"nproc {nproc}: launch at least one process")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", module, *[str(a) for a in args]]


def launch_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(NO_MULTICAST_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def launch(module: str, args: Sequence[str], *, nproc: int, log_path: str | Path,
           env: Mapping[str, str] | None = None, poll: Callable[[], None] | None = None,
           poll_s: float = 2.0, torchrun: bool = True) -> float:
    """Run ``module`` in ``nproc`` processes under torchrun and wait; return the wall seconds.

    stdout and stderr of all ranks go to ``log_path``. ``poll()`` runs every ``poll_s`` seconds
    while it trains and once at the end (the gpu worker reads rank 0's progress file there).
    If this call is interrupted (a Celery time limit, Ctrl-C), the whole process group of the
    launch is terminated, so no orphaned rank holds a GPU. A failed run raises
    :class:`DistributedError` with the tail of the log. ``torchrun=False`` runs one plain
    process instead (world size 1 without a process group, for comparisons).
    """
    cmd = (torchrun_command(module, args, nproc) if torchrun
           else [sys.executable, "-m", module, *[str(a) for a in args]])
    log_path = Path(log_path)
    t0 = time.perf_counter()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=launch_env(env), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                if poll is not None:
                    poll()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=poll_s)
        finally:
            if proc.poll() is None:  # interrupted: stop every rank, then the launcher
                _stop(proc)
    if poll is not None:
        poll()
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise DistributedError(f"{' '.join(cmd[2:6])} ... exited with status {proc.returncode}; "
                               f"last lines of {log_path}:\n{tail}")
    return time.perf_counter() - t0


def _stop(proc: subprocess.Popen, grace_s: float = 40.0) -> None:
    # torchrun forwards SIGTERM to its ranks (each in a session of its own) and waits up to
    # 30 s for them before it kills them: give it that long before SIGKILL.
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # the launch's own session: torchrun and its ranks
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
