"""Training runs and the policy-version registry. torch is imported inside the functions that
need it, so web processes and the admin never load it (a worker imports it in its task)."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from policy.models import (
    Dataset,
    JobStatus,
    PolicyVersion,
    RunKind,
    TrainingRun,
    VersionStatus,
)
from policy.selectors import dataset_split, episode_arrays
from rendering import blobs

logger = logging.getLogger(__name__)

PRESETS = ("demo", "default", "backbone")  # policy.ml.presets
DEFAULT_EVAL_EPISODES = 64


class TrainingError(ValueError):
    """A run that cannot start or finish, with a reason a person can act on."""


def _configs(config: dict) -> tuple[Any, Any]:
    """The run's model and SFT configs: its preset with its overrides; a backbone or vision
    encoder directory is checked (exists, supported, safetensors) before anything is stored."""
    from policy.ml.backbone import BACKBONES
    from policy.ml.errors import PolicyDataError
    from policy.ml.hf import check_model_dir, resolve_model_dir
    from policy.ml.presets import PresetError, preset_configs

    model, train = config.get("model", {}), config.get("train", {})
    if not isinstance(model, dict) or not isinstance(train, dict):
        raise TrainingError("config.model and config.train must be JSON objects")
    try:
        model_cfg, train_cfg = preset_configs(config.get("preset", "demo"), model, train)
        if model_cfg.backbone:
            check_model_dir(resolve_model_dir(model_cfg.backbone), kinds=BACKBONES)
        if model_cfg.use_video and model_cfg.vision_encoder:  # checked, not loaded, here
            from policy.ml.video import VISION_KINDS

            check_model_dir(resolve_model_dir(model_cfg.vision_encoder), kinds=VISION_KINDS)
    except (PresetError, PolicyDataError) as exc:
        raise TrainingError(str(exc)) from exc
    return model_cfg, train_cfg


def _check_distributed(config: dict) -> None:
    want, nproc = config.get("distributed", "auto"), config.get("nproc")
    if want not in (True, False, "auto"):
        raise TrainingError(f"config.distributed must be true, false or 'auto', got {want!r}")
    if nproc is not None and (type(nproc) is not int or nproc < 1):
        raise TrainingError(f"config.nproc must be a positive integer, got {nproc!r}")


def _processes(config: dict, train_cfg: Any) -> int:
    """Training processes for a run, 0 meaning "in this process" (no torchrun).

    ``distributed``: "auto" (default) launches torchrun with one process per GPU when the run
    trains on CUDA and the worker sees more than one (or with ``nproc`` processes when the
    config names it); true always launches torchrun, with ``nproc`` processes (default one per
    GPU; a CPU run uses gloo); false never does.
    """
    import torch

    _check_distributed(config)
    want, nproc = config.get("distributed", "auto"), config.get("nproc")
    cuda = train_cfg.device == "auto" or train_cfg.device.startswith("cuda")
    gpus = torch.cuda.device_count() if cuda else 0  # NVML: no CUDA context in this process
    if want is False or (want == "auto" and nproc is None and gpus < 2):
        return 0
    nproc = nproc or gpus or 1
    if gpus and nproc > gpus:
        raise TrainingError(f"config.nproc is {nproc} but this worker sees {gpus} GPU(s)")
    return nproc


@transaction.atomic
def training_run_request(
    *,
    dataset: Dataset,
    version_name: str,
    config: dict | None = None,
    user: AbstractBaseUser | None = None,
    enqueue: bool = True,
) -> TrainingRun:
    """Record an SFT run; with ``enqueue`` a ``gpu`` worker picks it up after commit."""
    from policy.tasks import train_policy_task

    if PolicyVersion.objects.filter(name=version_name).exists():
        raise TrainingError(f"a policy version named {version_name!r} already exists")
    config = dict(config or {"preset": "demo"})
    _configs(config)  # a bad preset, override or model directory stores nothing
    _check_distributed(config)
    run = TrainingRun.objects.create(
        kind=RunKind.SFT, dataset=dataset, config=config, version_name=version_name, created_by=user
    )
    if enqueue:
        transaction.on_commit(lambda: train_policy_task.delay(run.pk))
    return run


def training_run_execute(*, run_id: int, progress_hook: Any = None) -> PolicyVersion | None:
    """Claim a queued run and train it; a second call finds it claimed and returns None."""
    claimed = TrainingRun.objects.filter(pk=run_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, started_at=timezone.now(), progress=0.0
    )
    if not claimed:
        logger.info("training run %s: not queued, nothing to do", run_id)
        return None
    run = TrainingRun.objects.select_related("dataset").get(pk=run_id)
    try:
        version = _train(run, progress_hook)
    except Exception as exc:
        logger.exception("training run %s failed", run_id)
        TrainingRun.objects.filter(pk=run_id).update(
            status=JobStatus.FAILED, finished_at=timezone.now(), error=str(exc) or repr(exc)
        )
        if isinstance(exc, TrainingError | ValueError):
            return None
        raise
    return version


def _train(run: TrainingRun, progress_hook: Any) -> PolicyVersion:
    from policy.ml.checkpoint import file_sha256
    from policy.ml.train import train

    model_cfg, train_cfg = _configs(run.config)
    dataset = run.dataset
    if dataset.face_model != model_cfg.layout:
        model_cfg = dataclasses.replace(model_cfg, layout=dataset.face_model)
    log: list[str] = []
    t0 = time.perf_counter()
    train_eps = episode_arrays(dataset_split(dataset, "train"))
    val_eps = episode_arrays(dataset_split(dataset, "val"))
    if not train_eps:
        raise TrainingError(f"dataset {dataset.name!r} has no episodes in its train split")
    log.append(
        f"loaded {len(train_eps)} train / {len(val_eps)} val episodes "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    curve: list[list[float]] = []

    def progress(step: int, total: int, losses: dict[str, float]) -> None:
        curve.append([step, round(float(losses.get("loss", float("nan"))), 5)])
        TrainingRun.objects.filter(pk=run.pk).update(
            progress=round(95.0 * step / max(total, 1), 1), loss_curve=curve
        )
        if progress_hook is not None:
            progress_hook(step, total, losses)

    nproc = _processes(run.config, train_cfg)
    with tempfile.TemporaryDirectory(prefix=f"run{run.pk}-") as tmp:
        path = Path(tmp) / ("policy.shards" if train_cfg.fsdp else "policy.pt")
        if nproc:  # torchrun: rank 0 writes the checkpoint and progress lines, relayed here
            from policy.ml.train_dist import train_with_torchrun

            logger.info("training run %s: torchrun with %d processes", run.pk, nproc)
            result = train_with_torchrun(
                train_eps,
                model_cfg,
                train_cfg,
                nproc=nproc,
                val_episodes=val_eps or None,
                checkpoint_path=path,
                workdir=tmp,
                progress=progress,
            )
        else:
            result = train(
                train_eps,
                model_cfg,
                train_cfg,
                val_episodes=val_eps or None,
                checkpoint_path=path,
                progress=progress,
            )
        if train_cfg.fsdp:  # shards from every process: one file for the registry
            path = _consolidate(path, train_cfg, result.step)
        sha = file_sha256(path)
        blobs.put_blob(path.read_bytes(), "pt", sha=sha)
    where = f", {nproc} processes under torchrun" if nproc else ""
    log.append(
        f"trained {result.step} steps in {result.seconds:.1f}s "
        f"({result.frames_per_s:.0f} frames/s{where}); checkpoint {sha[:12]}"
    )

    TrainingRun.objects.filter(pk=run.pk).update(progress=96.0, log="\n".join(log))
    metrics = _evaluate(result.policy, dataset, run.config.get("eval_episodes"))
    log.append(f"evaluated on {metrics.get('n_episodes', 0)} test episodes")

    tokenizer = result.policy.tokenizer
    same = PolicyVersion.objects.filter(checkpoint_sha=sha).first()
    if same is not None:
        # Deterministic training on the same data and config gave the very same bytes.
        log.append(f"checkpoint identical to version {same.name}: no new version registered")
        TrainingRun.objects.filter(pk=run.pk).update(
            status=JobStatus.SUCCEEDED,
            progress=100.0,
            output_version=same,
            finished_at=timezone.now(),
            log="\n".join(log),
        )
        return same
    with transaction.atomic():
        version = PolicyVersion.objects.create(
            name=run.version_name or f"{dataset.name}-sft-{run.pk}",
            checkpoint_sha=sha,
            config=_version_config(result.policy.cfg, train_cfg),
            tokenizer={
                "layout": tokenizer.layout,
                "n_bins": tokenizer.n_bins,
                "fingerprint": tokenizer.fingerprint(),
                "round_trip": result.tokenizer_round_trip,
            },
            parent=run.parent_version,
            dataset=dataset,
            training_data={
                "dataset": dataset.name,
                "splits": {"train": len(train_eps), "val": len(val_eps)},
                "episode_keys_hash": _keys_hash([e.key for e in train_eps]),
            },
            metrics=metrics,
        )
        TrainingRun.objects.filter(pk=run.pk).update(
            status=JobStatus.SUCCEEDED,
            progress=100.0,
            output_version=version,
            finished_at=timezone.now(),
            log="\n".join(log),
        )
    logger.info("training run %s: version %s (%s)", run.pk, version.name, sha[:12])
    return version


def _consolidate(shards: Path, train_cfg: Any, step: int) -> Path:
    """A sharded checkpoint as one file (weights, configs, tokenizer; no optimiser state): what
    a version stores and every sampler loads."""
    from policy.ml.checkpoint import load_policy, save_checkpoint

    whole = load_policy(shards)  # the shards gathered in this process
    out = shards.with_name("policy.pt")
    save_checkpoint(out, policy=whole, train_config=train_cfg, step=step)
    return out


def _version_config(model_cfg: Any, train_cfg: Any) -> dict:
    """What a version records of its configs: the model's as trained (with the hashes of a
    backbone and a vision encoder pinned at the start), and the backbone by name and hash."""
    config = {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg)}
    if model_cfg.backbone:
        config["backbone"] = {"name": model_cfg.backbone, "sha256": model_cfg.backbone_sha256,
                              "lora_rank": model_cfg.lora_rank}
    if model_cfg.use_video and model_cfg.vision_encoder:
        config["vision_encoder"] = {"name": model_cfg.vision_encoder,
                                    "sha256": model_cfg.vision_sha256}
    return config


def _keys_hash(keys: list[str]) -> str:
    return blobs.sha256_bytes("\n".join(sorted(keys)).encode())


def oracle_for(dataset: Dataset):
    """The synthetic corpus's oracle as ``oracle(candidate, episode) -> float``, or None for
    corpora whose episodes do not record the rules' inputs."""
    from policy.oracle import EpisodeContext, oracle_score

    sample = dataset.episodes.values_list("meta", flat=True).first() or {}
    if dataset.face_model != "builtin" or "sentences" not in sample:
        return None

    def oracle(candidate, episode) -> float:
        ctx = EpisodeContext.from_meta(episode.meta, fps=episode.fps, n_frames=len(candidate))
        return oracle_score(candidate, ctx).total

    return oracle


def _evaluate(policy: Any, dataset: Dataset, limit: int | None) -> dict:
    from policy.ml.evaluate import evaluate

    test_eps = episode_arrays(dataset_split(dataset, "test", limit or DEFAULT_EVAL_EPISODES))
    if not test_eps:
        return {"note": "no test split: not evaluated"}
    train_eps = episode_arrays(dataset_split(dataset, "train"))
    return _json_safe(evaluate(policy, test_eps, train_eps, oracle=oracle_for(dataset)))


def policy_version_evaluate(*, version: PolicyVersion, limit: int | None = None) -> dict:
    metrics = _evaluate(load_version_policy(version), version.dataset, limit)
    PolicyVersion.objects.filter(pk=version.pk).update(metrics=metrics)
    return metrics


def load_version_policy(version: PolicyVersion, device: str = "auto") -> Any:
    """The version's policy, its checkpoint checked against the recorded sha256."""
    from policy.ml.checkpoint import load_policy
    from policy.ml.device import pick_device

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.pt"
        path.write_bytes(blobs.read_blob(version.checkpoint_sha, "pt"))
        return load_policy(
            path,
            expected_sha256=version.checkpoint_sha,
            tokenizer=version.tokenizer.get("fingerprint"),
            device=pick_device(device),
        )


@transaction.atomic
def policy_version_promote(*, version: PolicyVersion) -> PolicyVersion:
    """Make ``version`` its lineage's promoted policy; the one before it is retired."""
    locked = PolicyVersion.objects.select_for_update().get(pk=version.pk)
    if locked.status == VersionStatus.RETIRED:
        raise TrainingError(f"{locked.name} is retired; train or restore a new version")
    PolicyVersion.objects.filter(lineage=locked.lineage, status=VersionStatus.PROMOTED).exclude(
        pk=locked.pk
    ).update(status=VersionStatus.RETIRED)
    locked.status = VersionStatus.PROMOTED
    locked.save(update_fields=["status"])
    return locked


@transaction.atomic
def policy_version_retire(*, version: PolicyVersion) -> PolicyVersion:
    PolicyVersion.objects.filter(pk=version.pk).update(status=VersionStatus.RETIRED)
    version.refresh_from_db()
    return version


def _json_safe(value: Any) -> Any:
    import math

    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
