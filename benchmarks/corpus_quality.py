"""What a mixed-quality corpus leaves to learn: the oracle score of the ground truth and of the demo
SFT policy, on the clean synthetic corpus and on one where a share of the listeners break the rules.

    python -m benchmarks.corpus_quality                   # 400 episodes, seed 0, mixed 0.3
    python -m benchmarks.corpus_quality --episodes 300 --mixed 0.5 --steps 200

For each corpus: the oracle's mean total for the recorded ground truth (every episode, and the test
split) and for the demo policy (``policy.ml.demo``: ``DEMO_MODEL`` / ``DEMO_TRAIN`` on CPU, K = 4
samples per test episode), with L2 and FD against the rule-following target (``evaluate``
measures against an episode's reference when it has one). Both corpora share their speakers and
splits (the mixed option changes only the listeners), so the two policies answer the same test
episodes. Per rule-breaking kind, the mean oracle total of the recorded listeners.
Results: benchmarks/results/corpus-quality.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections import defaultdict

import numpy as np
import torch

from benchmarks.common import machine_info, write_results
from policy.ml.data import EpisodeData, episode_from
from policy.ml.demo import DEMO_MODEL, DEMO_SAMPLE, DEMO_TRAIN, train_small_demo_policy
from policy.ml.evaluate import evaluate
from policy.oracle import EpisodeContext, oracle_score
from policy.synthetic import MIXED_KINDS, generate_corpus

logger = logging.getLogger(__name__)


def _oracle(candidate: np.ndarray, episode: EpisodeData) -> float:
    ctx = EpisodeContext.from_meta(episode.meta, fps=episode.fps, n_frames=len(candidate))
    return oracle_score(candidate, ctx).total


def _kind(ep: EpisodeData) -> str:
    return ep.meta.get("listener_quality", {}).get("kind", "clean")


def measure(name: str, episodes: list[EpisodeData], steps: int) -> dict:
    train = [e for e in episodes if e.split == "train"]
    test = [e for e in episodes if e.split == "test"]
    gt_all = [_oracle(e.listener, e) for e in episodes]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for ep, score in zip(episodes, gt_all, strict=True):
        by_kind[_kind(ep)].append(score)
    t0 = time.perf_counter()
    result = train_small_demo_policy(train, max_steps=steps)
    train_s = time.perf_counter() - t0
    report = evaluate(result.policy, test, train, sample_config=DEMO_SAMPLE, oracle=_oracle,
                      baselines=("ground_truth",))
    pol, gt = report["sources"]["policy"], report["sources"]["ground_truth"]
    out = {
        "episodes": len(episodes),
        "train_episodes": len(train),
        "test_episodes": len(test),
        "rule_breaking_share": float(np.mean([_kind(e) != "clean" for e in episodes])),
        "test_with_reference": report["n_reference"],
        "ground_truth_oracle_all": float(np.mean(gt_all)),
        "ground_truth_oracle_test": gt["oracle"],
        "ground_truth_l2_vs_target": gt["l2"],
        "ground_truth_fd_vs_target": gt["fd"],
        "policy_oracle_test": pol["oracle"],
        "policy_l2_vs_target": pol["l2"],
        "policy_fd_vs_target": pol["fd"],
        "policy_pfd_vs_target": pol["pfd"],
        "oracle_by_kind": {k: {"episodes": len(v), "mean": float(np.mean(v)),
                               "min": float(np.min(v))} for k, v in sorted(by_kind.items())},
        "train_seconds": train_s,
        "train_steps": result.step,
        "final_loss": result.history[-1]["loss"] if result.history else None,
    }
    logger.info("%s: %s", name, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed", type=float, default=0.3)
    parser.add_argument("--kinds", nargs="+", default=list(MIXED_KINDS))
    parser.add_argument("--steps", type=int, default=DEMO_TRAIN.max_steps)
    parser.add_argument("--out", help="default benchmarks/results/corpus-quality.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    corpora = {
        "clean": [episode_from(e) for e in generate_corpus(args.episodes, args.seed)],
        f"mixed {args.mixed:g}": [
            episode_from(e) for e in generate_corpus(args.episodes, args.seed, mixed=args.mixed,
                                                     mixed_kinds=tuple(args.kinds))],
    }
    results = {name: measure(name, eps, args.steps) for name, eps in corpora.items()}

    print(f"\n{args.episodes} episodes, seed {args.seed}; demo policy, {args.steps} CPU steps, "
          f"K = {DEMO_SAMPLE.k}; oracle totals, L2 / FD against the rule-following target")
    print(f"{'corpus':<11} {'GT all':>7} {'GT test':>8} {'SFT test':>9} {'SFT L2':>8} "
          f"{'SFT FD':>7} {'GT L2':>7}")
    for name, r in results.items():
        print(f"{name:<11} {r['ground_truth_oracle_all']:>7.3f} "
              f"{r['ground_truth_oracle_test']:>8.3f} {r['policy_oracle_test']:>9.3f} "
              f"{r['policy_l2_vs_target']:>8.4f} {r['policy_fd_vs_target']:>7.3f} "
              f"{r['ground_truth_l2_vs_target']:>7.4f}")
    mixed = results[f"mixed {args.mixed:g}"]
    print("\nmixed corpus, recorded listeners by kind (all episodes):")
    for kind, k in mixed["oracle_by_kind"].items():
        print(f"  {kind:<13} {k['episodes']:>4} episodes  oracle {k['mean']:.3f} "
              f"(min {k['min']:.3f})")
    clean = results["clean"]
    summary = {
        "sft_mixed_minus_clean_ground_truth": mixed["policy_oracle_test"]
        - clean["ground_truth_oracle_test"],
        "sft_mixed_minus_sft_clean": mixed["policy_oracle_test"] - clean["policy_oracle_test"],
    }
    print(f"\nSFT on mixed - clean ground truth: "
          f"{summary['sft_mixed_minus_clean_ground_truth']:+.3f}; "
          f"SFT on mixed - SFT on clean: {summary['sft_mixed_minus_sft_clean']:+.3f}")
    data = {
        "machine": machine_info(torch=torch.__version__, threads=torch.get_num_threads()),
        "inputs": {"episodes": args.episodes, "seed": args.seed, "mixed": args.mixed,
                   "kinds": args.kinds, "steps": args.steps, "k": DEMO_SAMPLE.k,
                   "model": dataclasses.asdict(DEMO_MODEL)},
        "corpora": results,
        "summary": summary,
        "seconds": time.perf_counter() - started,
    }
    path = write_results("corpus-quality", data, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
