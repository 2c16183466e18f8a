"""The steps of a round. Each reads what the steps before it left (the row, the files under
``round_folder``) and may run again after its worker died: it finds its own checkpoints and
goes on from them. torch is imported inside the steps that need it."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from django.db import transaction

from feedback.models import Round, RoundStatus, RoundStep, StepState
from feedback.services.snapshots import (
    SnapshotError,
    snapshot_folder,
    snapshot_make,
    snapshot_request,
)
from policy.models import Dataset, Episode, JobStatus, PolicyVersion
from policy.selectors import episode_arrays
from rendering import blobs

from .config import RoundError
from .lifecycle import version_promote
from .runner import StepContext

# --- reading the corpus and the snapshot ---------------------------------------------------------


def episode_data(episodes: Iterable[Episode]) -> list:
    from policy.ml.data import episode_from

    return [episode_from(e) for e in episode_arrays(episodes)]


def episodes_by_key(dataset: Dataset, keys: Iterable[str]) -> dict:
    keys = sorted(set(keys))
    rows = list(dataset.episodes.filter(key__in=keys).order_by("key"))
    found = {e.key for e in rows}
    missing = [k for k in keys if k not in found]
    if missing:
        raise RoundError(f"the snapshot refers to episodes {', '.join(missing[:5])} that "
                         f"{dataset.name} no longer has")
    return {e.key: e for e in episode_data(rows)}


def comparisons(rnd: Round) -> list:
    from policy.ml.prefdata import read_snapshot

    folder = snapshot_folder(rnd.snapshot) if rnd.snapshot_id else None
    if folder is None:
        raise RoundError("the round's snapshot is not there (was it deleted?)")
    return read_snapshot(folder)[0]


def decided_pairs(comps: list, split: str = "train") -> int:
    return sum(1 for c in comps if c.head == "overall" and c.outcome != "tie"
               and c.split == split)


def load_policy(version: PolicyVersion, device: str):
    from policy.services.training import load_version_policy

    return load_version_policy(version, device=device)


def _set(rnd: Round, **fields: Any) -> None:
    Round.objects.filter(pk=rnd.pk).update(**fields)
    for k, v in fields.items():
        setattr(rnd, k, v)


def _report(rnd: Round, key: str, value: Any) -> None:
    from policy.services.training import _json_safe

    rnd.refresh_from_db(fields=["report"])
    _set(rnd, report={**rnd.report, key: _json_safe(value)})


# --- the steps -----------------------------------------------------------------------------------


def step_snapshot(rnd: Round, ctx: StepContext) -> None:
    cfg = rnd.config
    snap = rnd.snapshot
    if snap is None or snap.status != JobStatus.SUCCEEDED:
        filters = {"campaigns": sorted(rnd.campaigns.values_list("slug", flat=True)),
                   "qc": cfg["qc"], "test_fraction": cfg["test_fraction"]}
        try:
            snap = snapshot_request(filters=filters, user=None, name=f"round {rnd.pk}",
                                    enqueue=False)
        except SnapshotError as exc:
            raise RoundError(f"snapshot: {exc}") from None
        _set(rnd, snapshot=snap)
        if snap.status == JobStatus.QUEUED:
            snapshot_make(snapshot_id=snap.pk, progress=ctx.fraction_hook(0.0, 0.9))
        snap.refresh_from_db()
        if snap.status != JobStatus.SUCCEEDED:
            raise RoundError(f"snapshot #{snap.pk} is {snap.status}"
                             + (f": {snap.error}" if snap.error else
                                " (made by another worker: resume the round when it is done)"))
    comps = comparisons(rnd)
    n, need = decided_pairs(comps), int(cfg["min_pairs"])
    ties = sum(1 for c in comps if c.head == "overall" and c.outcome == "tie")
    ctx.log(f"snapshot {snap.content_hash[:12]}: {n} decided pairs to train on, "
            f"{decided_pairs(comps, 'test')} held out, {ties} ties")
    if n < need:
        raise RoundError(f"the snapshot has {n} decided pairs in its train split; a round "
                         f"needs at least {need} (gather more judgments, or lower min_pairs)")
    _report(rnd, "snapshot", {"content_hash": snap.content_hash, "pairs_train": n,
                              "pairs_test": decided_pairs(comps, "test"), "ties": ties,
                              "comparisons": len(comps)})


def _curve(history: list[dict], key: str = "loss", step_key: str = "step") -> list:
    return [[h[step_key], round(float(h[key]), 5)] for h in history
            if h.get(key) is not None and h.get(step_key) is not None]


def step_critic(rnd: Round, ctx: StepContext) -> None:
    from policy.ml.critic import CriticConfig, train_critic

    cfg = rnd.config
    parent = load_policy(rnd.parent, cfg["device"])
    comps = comparisons(rnd)
    eps = episodes_by_key(rnd.parent.dataset, (c.episode for c in comps))
    ccfg = CriticConfig.from_dict({"device": cfg["device"], **cfg["critic"]})
    losses: list = []

    def progress(done: int, total: int, info: dict | None = None) -> None:
        if info and info.get("loss") is not None:
            losses.append([len(losses), round(float(info["loss"]), 5)])
            ctx.progress(0.95 * done / max(total, 1), curves={"critic_loss": losses})
        else:
            ctx.progress(0.95 * done / max(total, 1))

    result = train_critic(comps, eps, model_config=parent.cfg, tokenizer=parent.tokenizer,
                          input_stats=parent.model.input_stats(), config=ccfg,
                          progress=progress, checkpoint_dir=ctx.folder / "critic")
    sha = result.ensemble.save(ctx.folder / "critic.pt")
    _set(rnd, critic_sha=sha)
    _report(rnd, "critic", {**result.report, "sha256": sha,
                            "config": dataclasses.asdict(ccfg)})
    held = result.report.get("heldout", {})
    ctx.log(f"critic {sha[:12]}: {ccfg.members} members; held-out accuracy "
            f"{_fmt(held)}; human agreement {_fmt(result.report.get('human', {}))}")


def _fmt(block: dict) -> str:
    acc = block.get("overall", {}).get("accuracy")
    return "n/a" if acc is None else f"{acc:.2f}"


def val_episodes(dataset: Dataset, limit: int) -> list:
    return episode_data(dataset.episodes.filter(split="val").order_by("key")[:limit])


def step_optimise(rnd: Round, ctx: StepContext) -> None:
    from policy.ml.checkpoint import file_sha256, save_checkpoint
    from policy.ml.preference import PreferenceConfig, optimise

    cfg = rnd.config
    method = cfg["method"]
    parent = load_policy(rnd.parent, cfg["device"])
    comps = [c for c in comparisons(rnd) if c.head == "overall"]
    dataset = rnd.parent.dataset
    eps = episodes_by_key(dataset, (c.episode for c in comps))
    scorer = None
    if method in ("critic", "imitation_critic_best"):  # they sample on every episode given
        scorer = critic_scorer(ctx.folder / "critic.pt", cfg["device"])
        trained = {c.episode for c in comps if c.split == "train"}
        eps = {k: e for k, e in eps.items() if k in trained}
    pcfg = PreferenceConfig.from_dict({**cfg["optimise"], "method": method,
                                       "device": cfg["device"]})
    path = ctx.folder / "optimise.pt"
    history: list = []

    def progress(step: int, total: int, info: dict | None = None) -> None:
        info = info or {}
        if info.get("loss") is not None:
            history.append([step, round(float(info["loss"]), 5)])
        ctx.progress(0.95 * step / max(total, 1), curves={"optimise_loss": history})

    result = optimise(parent, config=pcfg, comparisons=comps, episodes=eps,
                      val_episodes=val_episodes(dataset, int(cfg["val_episodes"])),
                      scorer=scorer, checkpoint_path=path,
                      resume_from=path if path.exists() else None, progress=progress)
    if result.used_parent:
        later = result.evals[1:]
        last = later[-1] if later else {}
        if later and all(e.get("within_bounds") for e in later):
            raise RoundError(
                "no optimisation step predicted the snapshot's held-out pairs better than "
                f"chance (last accuracy {_num(last.get('val_acc'))}, "
                f"{_num(last.get('val_acc_z'))} standard errors above 0.5; needed "
                f"{_num(pcfg.chance_z())}): the labels taught nothing to register")
        raise RoundError(
            "no optimisation step stayed within the guards (last: L2 ratio "
            f"{_num(last.get('l2_ratio'))}, FD ratio {_num(last.get('fd_ratio'))}; bounds "
            f"{pcfg.max_l2_ratio} and {pcfg.max_fd_ratio}): nothing better than the parent to "
            "register")
    final = ctx.folder / "policy.pt"
    save_checkpoint(final, policy=result.policy, train_config=None,
                    step=result.best_step or 0, history=result.history)
    sha = file_sha256(final)
    blobs.put_blob(final.read_bytes(), "pt", sha=sha)
    curves = {"optimise_loss": _curve(result.history)}
    for key in ("l2_ratio", "fd_ratio"):
        curves[f"val_{key}"] = _curve(result.evals, key)
    _set(rnd, checkpoint_sha=sha)
    ctx.progress(1.0, force=True, curves=curves)
    _report(rnd, "optimise", {"method": method, "config": dataclasses.asdict(pcfg),
                              "best_step": result.best_step,
                              "used_parent": result.used_parent,
                              "stopped_early": result.stopped_early,
                              "evals": result.evals[-20:], "checkpoint_sha256": sha})
    ctx.log(f"optimised ({method}): "
            + ("no step passed the guards: the parent's weights" if result.used_parent
               else f"best step {result.best_step}")
            + (", stopped early by the guards" if result.stopped_early else "")
            + f"; checkpoint {sha[:12]}")


def critic_scorer(path: Path, device: str) -> Callable:
    from policy.ml.critic import CriticEnsemble
    from policy.ml.device import pick_device

    if not path.exists():
        raise RoundError("the critic step has not left its ensemble (critic.pt); resume the "
                         "round from the critic step")
    return CriticEnsemble.load(path, pick_device(device)).score


def _policy_from_file(path: Path, sha: str, device: str):
    from policy.ml.checkpoint import load_policy
    from policy.ml.device import pick_device

    return load_policy(path, expected_sha256=sha, device=pick_device(device))


def step_evaluate(rnd: Round, ctx: StepContext) -> None:
    from policy.ml.compare import compare_policies
    from policy.services.training import oracle_for

    cfg = rnd.config
    dataset = rnd.parent.dataset
    parent = load_policy(rnd.parent, cfg["device"])
    path = ctx.folder / "policy.pt"
    if not path.exists():
        path.write_bytes(blobs.read_blob(rnd.checkpoint_sha, "pt"))
    new = _policy_from_file(path, rnd.checkpoint_sha, cfg["device"])
    trained_on = {c.episode for c in comparisons(rnd) if c.split == "train"}
    test = [e for e in dataset.episodes.filter(split="test").order_by("key")
            if e.key not in trained_on][: int(cfg["eval_episodes"])]
    if not test:
        raise RoundError(f"{dataset.name} has no held-out test episodes to evaluate on")
    scorer = critic_scorer(ctx.folder / "critic.pt", cfg["device"])
    result = compare_policies(new, parent, episode_data(test), oracle=oracle_for(dataset),
                              scorer=scorer, k=int(cfg["eval_k"]), seed=rnd.pk,
                              progress=ctx.fraction_hook(0.0, 0.95))
    result["gates"] = gates_check(result, cfg["gates"])
    _report(rnd, "evaluation", result)
    ctx.log("evaluated on {n} held-out episodes: critic win-rate {c}, oracle win-rate {o}, "
            "L2 ratio {l2}, FD ratio {fd}".format(
                n=result["n_episodes"], c=_pct(result.get("critic_win_rate")),
                o=_pct(result.get("oracle_win_rate")), l2=_num(result.get("l2_ratio")),
                fd=_num(result.get("fd_ratio"))))


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def gates_check(result: dict, gates: dict) -> dict:
    """Each gate: the figure, the bound and whether it passed (a figure that could not be
    measured, e.g. the oracle of a real corpus, is left out)."""
    rows = {}
    for key, bound, ok in (
            ("oracle_win_rate", gates["min_oracle_win_rate"], lambda v, b: v >= b),
            ("critic_win_rate", gates["min_critic_win_rate"], lambda v, b: v >= b),
            ("l2_ratio", gates["max_l2_ratio"], lambda v, b: v <= b),
            ("fd_ratio", gates["max_fd_ratio"], lambda v, b: v <= b)):
        value = result.get(key)
        if value is not None:
            rows[key] = {"value": value, "bound": bound, "passed": bool(ok(value, bound))}
    return {"rows": rows, "passed": bool(rows) and all(r["passed"] for r in rows.values())}


def _version_name(rnd: Round) -> str:
    base = re.sub(r"-r\d+$", "", rnd.parent.name)[:80]
    return f"{base}-r{rnd.pk}"


def step_register(rnd: Round, ctx: StepContext) -> None:
    if rnd.output_version_id is not None:
        return
    cfg, parent = rnd.config, rnd.parent
    report = rnd.report
    with transaction.atomic():
        version = PolicyVersion.objects.filter(checkpoint_sha=rnd.checkpoint_sha).first()
        if version is None:
            version = PolicyVersion.objects.create(
                name=_version_name(rnd), lineage=rnd.lineage, checkpoint_sha=rnd.checkpoint_sha,
                config={**parent.config, "preference": report.get("optimise", {}).get("config"),
                        "critic": report.get("critic", {}).get("config"), "round": cfg},
                tokenizer=parent.tokenizer, parent=parent, dataset=parent.dataset,
                training_data={"round": rnd.pk, "method": cfg["method"],
                               "snapshot": report.get("snapshot", {}).get("content_hash"),
                               "critic_sha256": rnd.critic_sha,
                               "pairs": report.get("snapshot", {}).get("pairs_train"),
                               "parent": parent.name},
                metrics=report.get("evaluation", {}).get("new", {}))
        Round.objects.filter(pk=rnd.pk).update(output_version=version)
    ctx.log(f"registered {version.name} (candidate)")


def step_promote(rnd: Round, ctx: StepContext) -> None:
    gates = rnd.report.get("evaluation", {}).get("gates", {})
    version = rnd.output_version
    if rnd.config["auto_promote"] and gates.get("passed"):
        version_promote(version=version, rnd=rnd, automatic=True)
        ctx.log(f"every gate passed: {version.name} promoted automatically")
        return
    why = ("automatic promotion is off" if not rnd.config["auto_promote"]
           else "a gate did not pass: " + ", ".join(
               k for k, r in gates.get("rows", {}).items() if not r["passed"]))
    Round.objects.filter(pk=rnd.pk).update(status=RoundStatus.WAITING,
                                           step_state=StepState.DONE)
    ctx.log(f"waiting for an admin to promote {version.name} or keep {rnd.parent.name} ({why})")


def step_candidates(rnd: Round, ctx: StepContext) -> None:
    from annotation.models import Campaign
    from annotation.services.campaigns import campaign_create
    from policy.services.candidate_jobs import candidate_job_create, candidate_job_run

    nxt = rnd.config["next_campaign"]
    version, parent = rnd.output_version, rnd.parent
    dataset = version.dataset
    episodes = list(dataset.episodes.filter(split=nxt["split"]).order_by("key")[: nxt["limit"]])
    if not episodes:
        raise RoundError(f"the {nxt['split']} split of {dataset.name} is empty")
    runs = [(version, nxt["samples"], nxt["ground_truth"])]
    if nxt["parent_samples"]:
        runs.append((parent, nxt["parent_samples"], False))
    for i, (v, k, gt) in enumerate(runs):
        job = candidate_job_create(version=v, episodes=episodes, k=k, seed=rnd.pk,
                                   ground_truth=gt, enqueue=False)
        candidate_job_run(job_id=job.pk, progress=ctx.fraction_hook(
            0.9 * i / len(runs), 0.9 * (i + 1) / len(runs)))
        job.refresh_from_db()
        if job.status != JobStatus.SUCCEEDED:
            raise RoundError(f"sampling {v.name} failed: {job.error}")
    slug = f"round-{rnd.pk}"
    campaign = Campaign.objects.filter(slug=slug).first()
    if campaign is None:
        sources = [{"kind": "policy", "version": version.name, "samples": nxt["samples"]}]
        if nxt["parent_samples"]:
            sources.append({"kind": "policy", "version": parent.name,
                            "samples": nxt["parent_samples"]})
        if nxt["ground_truth"]:
            sources.append({"kind": "ground_truth"})
        first = rnd.campaigns.order_by("pk").first()
        extra = {}
        if first is not None:
            extra = {"instructions": first.instructions, "protocol": first.protocol,
                     "reason_tags": first.reason_tags, "group_size": first.group_size,
                     "criteria_weights": first.criteria_weights}
        build = campaign_create(
            name=f"Round {rnd.pk}: {version.name}", slug=slug, dataset=dataset,
            sources=sources, created_by=rnd.created_by, episodes=episodes,
            overlap=nxt["overlap"], per_rater_limit=nxt["per_rater_limit"], seed=rnd.pk,
            **{k: v for k, v in extra.items() if v not in (None, "")})
        campaign = build.campaign
    Round.objects.filter(pk=rnd.pk).update(next_campaign=campaign)
    ctx.log(f"next campaign {campaign.slug}: a draft; its clips are being rendered, start it "
            "from its page when they are done")


STEP_FUNCS: dict[str, Callable[[Round, StepContext], None]] = {
    RoundStep.SNAPSHOT: step_snapshot,
    RoundStep.CRITIC: step_critic,
    RoundStep.OPTIMISE: step_optimise,
    RoundStep.EVALUATE: step_evaluate,
    RoundStep.REGISTER: step_register,
    RoundStep.PROMOTE: step_promote,
    RoundStep.CANDIDATES: step_candidates,
}
