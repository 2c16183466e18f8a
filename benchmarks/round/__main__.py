"""A retraining round on simulated human preferences, its ablation, and a second round.

    python -m benchmarks.round                      # CPU: 400 episodes, 2,000 judgments
    python -m benchmarks.round --device cuda        # 2,000 episodes, 10,000 judgments
    python -m benchmarks.round --quick              # a smoke run (minutes on a CPU)

The scenario, all in one process and without a database (the platform's own round runs the
same library code as steps of a ``Round``; ``tests/feedback/test_rounds.py`` runs it there):

1. a synthetic corpus where a share of the listeners break the social rules (``--mixed``), and an
   SFT parent trained on it (it imitates the mix);
2. judging: the parent's samples and the recorded listener of each training speaker clip, in
   pairs, each judged by three raters of a mixed population (careful, noisy, left-biased,
   random) deciding from the oracle; quality control (``feedback.qc``) keeps trusted raters;
3. the round: a critic ensemble on the comparisons, then preference optimisation from the
   parent, then evaluation against the parent on held-out speaker clips -- timed per step;
4. the ablation, every variant from the same parent and comparisons: SFT only (the parent),
   SFT on the preferred responses, DPO, DPO + imitation, critic-guided (GRPO-style) and DPO on
   random labels; each against the parent under the oracle (win-rate of its samples over the
   parent's), with L2, FD and P-FD against the rule-following reference, as ratios;
5. a second round: the round's version is sampled on the same training clips, judged anew, and
   optimised again (from an optimised policy: a quarter of the learning rate, validated twice
   as often, unless ``--second-lr``); its win-rate over the first round's version.

Writes benchmarks/results/round-<device>.json (or ``--out``) after every stage, marked
``"complete": false`` until the end. The SFT parent, the round's critic and its version are kept
under ``--cache``; ``--resume`` with a partial result of the same settings keeps what it measured
and runs only the rest (a run cut short by a time limit goes on from where it stopped).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine_info, write_results
from benchmarks.round.judging import POPULATION, judge, oracle_total
from policy.ml.compare import compare_policies
from policy.ml.config import ModelConfig, TrainConfig
from policy.ml.critic import CriticConfig, train_critic
from policy.ml.data import episode_from
from policy.ml.demo import DEMO_MODEL, DEMO_TRAIN
from policy.ml.device import pick_device
from policy.ml.prefdata import random_labels
from policy.ml.preference import PreferenceConfig, optimise
from policy.ml.train import train
from policy.synthetic import generate_corpus

logger = logging.getLogger("benchmarks.round")

VARIANTS = ("sft_chosen", "dpo", "dpo_imitation", "critic", "dpo_random")
ROUND_METHOD = "dpo_imitation"  # the round's own method (the platform's default)
GOALS = {"best_win_rate": 0.65, "max_ratio": 1.10, "random_max_win_rate": 0.52,
         "round_s_cuda": 600.0}

SIZES = {
    "cpu": {"episodes": 400, "judgments": 2000, "sft": "demo", "sft_steps": 600,
            "critic": {"d_model": 32, "n_layers": 1, "n_heads": 2, "members": 4,
                       "epochs": 3.0, "batch_size": 32},
            "optimise": {"max_steps": 60, "batch_size": 8, "val_every": 20, "val_k": 2,
                         "val_limit": 12, "k": 4, "lr": 3e-4},
            "critic_method": {"max_steps": 30, "batch_size": 4},
            "eval_episodes": 30, "eval_k": 4},
    "cuda": {"episodes": 1500, "judgments": 10000, "sft": "default", "sft_steps": 2000,
             "critic": {"d_model": 128, "n_layers": 3, "n_heads": 4, "members": 4,
                        "epochs": 4.0, "batch_size": 64},
             "optimise": {"max_steps": 300, "batch_size": 16, "val_every": 50, "val_k": 2,
                          "val_limit": 32, "k": 8, "lr": 2e-4},
             "critic_method": {"max_steps": 120, "batch_size": 8},
             "eval_episodes": 120, "eval_k": 4},
    "quick": {"episodes": 80, "judgments": 300, "sft": "demo", "sft_steps": 60,
              "critic": {"d_model": 32, "n_layers": 1, "n_heads": 2, "members": 4,
                         "epochs": 2.0, "batch_size": 32},
              "optimise": {"max_steps": 12, "batch_size": 4, "val_every": 6, "val_k": 1,
                           "val_limit": 4, "k": 2},
              "eval_episodes": 6, "eval_k": 2},
}


def _oracle(candidate: np.ndarray, episode) -> float:
    return oracle_total(candidate, episode)


CACHE = Path("var/benchmarks/round")


def _parent(train_eps, val_eps, size: dict, device: str, key: str, cache: Path = CACHE):
    """The SFT parent, trained once per corpus and settings and kept under ``cache`` (training
    is deterministic, so a cached parent is the one this run would train)."""
    from policy.ml.checkpoint import load_policy

    model, tcfg = ((DEMO_MODEL, DEMO_TRAIN) if size["sft"] == "demo"
                   else (ModelConfig(), TrainConfig()))
    tcfg = dataclasses.replace(tcfg, max_steps=size["sft_steps"], device=device,
                               log_every=max(1, size["sft_steps"] // 10))
    path = cache / f"parent-{key}-{size['sft']}-{size['sft_steps']}-{device}.pt"
    if path.exists():
        logger.info("SFT parent from %s", path)
        return load_policy(path, device=pick_device(device))
    path.parent.mkdir(parents=True, exist_ok=True)
    return train(train_eps, model, tcfg, val_episodes=val_eps[:16] or None,
                 checkpoint_path=path).policy


def _critic(comps, by_key, parent, ccfg, cache: Path, key: str):
    """The round's critic ensemble and its report, kept under ``cache`` like the parent."""
    import json

    from policy.ml.critic import CriticEnsemble, CriticResult

    path, meta = cache / f"critic-{key}.pt", cache / f"critic-{key}.json"
    if path.exists() and meta.exists():
        logger.info("critic from %s", path)
        saved = json.loads(meta.read_text())
        return CriticResult(ensemble=CriticEnsemble.load(path, device=ccfg.device),
                            report=saved["report"], seconds=saved["seconds"])
    result = train_critic(comps, by_key, model_config=parent.cfg, tokenizer=parent.tokenizer,
                          input_stats=parent.model.input_stats(), config=ccfg)
    cache.mkdir(parents=True, exist_ok=True)
    result.ensemble.save(path)
    meta.write_text(json.dumps({"report": result.report, "seconds": result.seconds}))
    return result


def _pools(policy, episodes, k: int, seed: int) -> dict:
    """Each speaker clip's candidates: ``k`` samples of ``policy`` and the recorded listener."""
    samples = policy.sample(episodes, k=k, seed=seed)
    return {e.key: [(f"policy:{seed}", c) for c in cands] + [("ground_truth", e.listener)]
            for e, cands in zip(episodes, samples, strict=True)}


def _optimise(parent, method: str, comps, episodes, val_eps, scorer, size, device, seed):
    labels = random_labels(comps, seed) if method == "dpo_random" else comps
    if method in ("critic", "imitation_critic_best"):  # they sample on every episode given
        episodes = {c.episode: episodes[c.episode] for c in comps if c.split == "train"}
    extra = size.get("critic_method", {}) if method in ("critic", "imitation_critic_best") \
        else {}
    cfg = PreferenceConfig.from_dict({**size["optimise"], **extra, "method": (
        "dpo" if method == "dpo_random" else method), "device": device, "seed": seed})
    t0 = time.perf_counter()
    result = optimise(parent, config=cfg, comparisons=labels, episodes=episodes,
                      val_episodes=val_eps, scorer=scorer)
    return result, time.perf_counter() - t0


def _prior(path: str | None, size: dict, args) -> dict:
    """A partial result to go on from, when it was run with the same settings."""
    if not path:
        return {}
    import json

    prior = json.loads(Path(path).read_text())
    same = (prior.get("sizes") == json.loads(json.dumps(size))
            and prior.get("corpus_settings", {"mixed": args.mixed, "seed": args.seed})
            == {"mixed": args.mixed, "seed": args.seed})
    if not same:
        raise SystemExit(f"--resume {path}: it was run with other settings")
    return prior


def _row(ev: dict) -> dict:
    return {"win_rate_vs_parent": ev.get("oracle_win_rate"),
            "critic_win_rate": ev.get("critic_win_rate"),
            "l2_ratio": ev.get("l2_ratio"), "fd_ratio": ev.get("fd_ratio"),
            "pfd_ratio": ev.get("pfd_ratio"),
            "oracle": ev["new"].get("oracle"), "parent_oracle": ev["parent"].get("oracle")}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.round")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--judgments", type=int)
    p.add_argument("--episodes", type=int)
    p.add_argument("--mixed", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--no-second-round", action="store_true")
    p.add_argument("--lr", type=float, help="the optimiser's peak learning rate")
    p.add_argument("--steps", type=int, help="the optimiser's steps")
    p.add_argument("--second-lr", type=float, help="the second round's peak learning rate "
                   "(default: a quarter of the first's: it starts from an optimised policy)")
    p.add_argument("--out")
    p.add_argument("--cache", default=str(CACHE),
                   help="where the SFT parent and the round's critic are kept for a rerun")
    p.add_argument("--resume", help="a partial result of the same settings: what it measured "
                   "is kept and only the rest is run")
    args = p.parse_args(argv)
    cache = Path(args.cache)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = pick_device(args.device)
    size = dict(SIZES["quick" if args.quick else device.type])
    size["judgments"] = args.judgments or size["judgments"]
    size["episodes"] = args.episodes or size["episodes"]
    dev = device.type
    name = f"round-{dev}" + ("-quick" if args.quick else "")
    if args.lr is not None:
        size["optimise"] = {**size["optimise"], "lr": args.lr}
    if args.steps is not None:
        size["optimise"] = {**size["optimise"], "max_steps": args.steps}
    torch.manual_seed(args.seed)

    def partial(**fields) -> None:  # what is known so far, in case the run is cut short
        write_results(name, {"device": dev, "complete": False, "sizes": size,
                             "corpus_settings": {"mixed": args.mixed, "seed": args.seed},
                             **fields}, args.out)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def step(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)
        logger.info("%s: %.1fs", name, timings[name])

    t0 = time.perf_counter()
    corpus = [episode_from(e) for e in generate_corpus(size["episodes"], args.seed,
                                                       mixed=args.mixed)]
    train_eps = [e for e in corpus if e.split == "train"]
    val_eps = [e for e in corpus if e.split == "val"]
    test_eps = [e for e in corpus if e.split == "test"][: size["eval_episodes"]]
    step("corpus", t0)
    t0 = time.perf_counter()
    key = f"{size['episodes']}-{args.seed}-{args.mixed}"
    parent = _parent(train_eps, val_eps, size, dev, key, cache)
    step("sft_parent", t0)
    by_key = {e.key: e for e in corpus}
    prior = _prior(args.resume, size, args)

    # --- round 1: judgments, QC, critic, optimisation, evaluation -----------------------------
    n_clips = max(1, min(len(train_eps), size["judgments"] // 6))
    clips = train_eps[:n_clips]
    t0 = time.perf_counter()
    pools = _pools(parent, clips, 4, args.seed)
    step("candidates", t0)
    judged = judge(pools, by_key, judgments=size["judgments"], seed=args.seed)
    timings["simulate_judgments"] = round(judged.seconds["simulate"], 2)
    steps_s = {"qc": round(judged.seconds["qc"], 2)}
    comps = judged.comparisons
    ccfg = CriticConfig.from_dict({**size["critic"], "device": dev, "seed": args.seed})
    critic = _critic(comps, by_key, parent, ccfg, cache, f"{key}-{size['judgments']}-{dev}")
    steps_s["critic"] = round(critic.seconds, 2)
    scorer = critic.ensemble.score
    val = val_eps[: size["optimise"]["val_limit"]]
    round_path = cache / f"round-{key}-{size['judgments']}-{dev}.pt"
    if prior.get("round") and round_path.exists():
        from policy.ml.checkpoint import load_policy

        steps_s, ev_row = prior["steps_s"], prior["round"]
        first = load_policy(round_path, device=device)
        ablation = prior["ablation"]
        logger.info("round 1 from %s and %s", args.resume, round_path)
    else:
        from policy.ml.checkpoint import save_checkpoint

        result, seconds = _optimise(parent, ROUND_METHOD, comps, by_key, val, scorer, size,
                                    dev, args.seed)
        steps_s["optimise"] = round(seconds, 2)
        t0 = time.perf_counter()
        ev = compare_policies(result.policy, parent, test_eps, oracle=_oracle, scorer=scorer,
                              k=size["eval_k"], seed=args.seed + 1)
        steps_s["evaluate"] = round(time.perf_counter() - t0, 2)
        ev_row = _row(ev)
        first = result.policy
        save_checkpoint(round_path, policy=first, train_config=None, step=result.best_step or 0)
        ablation = {"sft": {"win_rate_vs_parent": 0.5, "critic_win_rate": 0.5, "l2_ratio": 1.0,
                            "fd_ratio": 1.0, "pfd_ratio": 1.0, "oracle": ev_row["parent_oracle"],
                            "parent_oracle": ev_row["parent_oracle"]},
                    ROUND_METHOD: {**ev_row, "optimise_s": steps_s["optimise"],
                                   "best_step": result.best_step,
                                   "used_parent": result.used_parent}}
    total_s = round(sum(steps_s.values()), 2)
    logger.info("round (%s): %.1fs %s -> oracle win-rate %s", ROUND_METHOD, total_s, steps_s,
                ev_row["win_rate_vs_parent"])
    known = {"judgments": judged.judgments, "steps_s": steps_s, "total_s": total_s,
             "round": ev_row, "ablation": ablation, "timings_s": timings}
    partial(**known)

    # --- round 2: on-policy candidates from round 1's version ------------------------------------
    second = prior.get("second_round")
    if second is None and not args.no_second_round:
        t0 = time.perf_counter()
        pools2 = _pools(first, clips, 4, args.seed + 7)
        judged2 = judge(pools2, by_key, judgments=size["judgments"], seed=args.seed + 7)
        critic2 = train_critic(judged2.comparisons, by_key, model_config=first.cfg,
                               tokenizer=first.tokenizer, input_stats=first.model.input_stats(),
                               config=dataclasses.replace(ccfg, seed=args.seed + 7))
        lr2 = args.second_lr or size["optimise"].get("lr", 1e-4) / 4
        size2 = {**size, "optimise": {**size["optimise"], "lr": lr2, "val_every": max(
            1, size["optimise"]["val_every"] // 2)}}
        res2, _ = _optimise(first, ROUND_METHOD, judged2.comparisons, by_key, val,
                            critic2.ensemble.score, size2, dev, args.seed + 7)
        e2 = compare_policies(res2.policy, first, test_eps, oracle=_oracle,
                              scorer=critic2.ensemble.score, k=size["eval_k"],
                              seed=args.seed + 1)
        second = {**_row(e2), "seconds": round(time.perf_counter() - t0, 2),
                  "judgments": judged2.judgments, "best_step": res2.best_step,
                  "used_parent": res2.used_parent, "optimise": size2["optimise"]}
        logger.info("second round: %s", second)
        partial(**known, second_round=second)

    # --- the ablation --------------------------------------------------------------------------
    for method in args.variants.split(","):
        if method in ablation or not method:
            continue
        res, sec = _optimise(parent, method, comps, by_key, val, scorer, size, dev, args.seed)
        e = compare_policies(res.policy, parent, test_eps, oracle=_oracle, scorer=scorer,
                             k=size["eval_k"], seed=args.seed + 1)
        ablation[method] = {**_row(e), "optimise_s": round(sec, 2),
                            "best_step": res.best_step, "used_parent": res.used_parent}
        logger.info("variant %s: %s", method, ablation[method])
        partial(**known, second_round=second)

    pairs = [a for m, a in ablation.items() if m not in ("sft", "dpo_random")]
    best = max(pairs, key=lambda r: r["win_rate_vs_parent"] or 0)
    out = {
        "device": dev,
        "card": torch.cuda.get_device_name(0) if dev == "cuda" else None,
        "judgments": judged.judgments,
        "steps_s": steps_s,
        "total_s": total_s,
        "ablation": ablation,
        "second_round_win_rate_vs_first": second["win_rate_vs_parent"] if second else None,
        "second_round": second,
        "round": ev_row,
        "round_method": ROUND_METHOD,
        "goals": {
            "best_variant": next(m for m, a in ablation.items() if a is best),
            "best_beats_parent_65": (best["win_rate_vs_parent"] or 0) >= GOALS["best_win_rate"],
            "best_l2_fd_within_10pct": best["l2_ratio"] <= GOALS["max_ratio"]
            and best["fd_ratio"] <= GOALS["max_ratio"],
            "random_labels_do_not_help": ablation.get("dpo_random", {}).get(
                "win_rate_vs_parent", 0) <= GOALS["random_max_win_rate"],
            "dpo_beats_sft_on_preferred": ablation.get("dpo", {}).get("win_rate_vs_parent", 0)
            > ablation.get("sft_chosen", {}).get("win_rate_vs_parent", 1),
            "second_round_improves": bool(second and second["win_rate_vs_parent"] > 0.5),
            "round_under_10_min": total_s < GOALS["round_s_cuda"] if dev == "cuda" else None,
        },
        "judging": {"comparisons_kept": len(comps), "excluded_judgments":
                    judged.excluded_judgments, "raters": judged.raters,
                    "population": POPULATION, "overlap": 3, "clips": n_clips},
        "critic": {k: critic.report.get(k) for k in ("heldout", "human", "over_ceiling",
                                                     "train")},
        "corpus": {"episodes": len(corpus), "mixed": args.mixed, "seed": args.seed,
                   "train": len(train_eps), "test_evaluated": len(test_eps),
                   "ground_truth_oracle_test": float(np.mean([
                       oracle_total(e.listener, e) for e in test_eps])),
                   "reference_oracle_test": float(np.mean([
                       oracle_total(e.reference if e.reference is not None else e.listener, e)
                       for e in test_eps]))},
        "sizes": size,
        "corpus_settings": {"mixed": args.mixed, "seed": args.seed},
        "timings_s": timings,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine_info(torch=torch.__version__, threads=torch.get_num_threads()),
    }
    out["complete"] = True
    path = write_results(name, out, args.out)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
