"""Simulated judging of a policy's samples, as a campaign would gather it: items are pairs of
candidates of one speaker clip (the policy's samples and the recorded listener), each judged by
``overlap`` raters of a mixed population, sides shown at random; the raters decide from the
oracle (``annotation.simulated_judge``). Quality control then runs on the answers
(``feedback.qc``, the same figures and thresholds as the platform) and the comparisons of
trusted raters are kept. Pure: no database."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from annotation.simulated_judge import SimulatedJudge
from feedback import qc
from policy.ml.prefdata import Comparison
from policy.oracle import EpisodeContext, oracle_score

POPULATION = {"careful": 0.6, "noisy": 0.2, "left-biased": 0.1, "random": 0.1}


def oracle_total(candidate: np.ndarray, episode) -> float:
    ctx = EpisodeContext.from_meta(episode.meta, fps=episode.fps, n_frames=len(candidate))
    return oracle_score(candidate, ctx).total


def hash_split(key: str, test_fraction: float) -> str:
    """The snapshot's split rule: a fixed share of episodes in test, by a hash of the name."""
    h = hashlib.sha256(f"synthetic/{key}".encode()).digest()
    return "test" if int.from_bytes(h[:8], "big") / 2.0**64 < test_fraction else "train"


@dataclass
class Judging:
    comparisons: list[Comparison]  # trusted raters' comparisons (ties kept, both-bad left out)
    judgments: int  # answers given, every rater
    raters: dict  # kind -> {"n": raters, "excluded": n, "flagged": n}
    excluded_judgments: int
    seconds: dict  # {"simulate": s, "qc": s}


def judge(pools: Mapping[str, list[tuple[str, np.ndarray]]], episodes: Mapping, *,
          judgments: int, overlap: int = 3, raters: int = 40,
          population: Mapping[str, float] = POPULATION, test_fraction: float = 0.1,
          seed: int = 0) -> Judging:
    """``pools[episode key]`` = [(source label, (T, D) candidate), ...]; about ``judgments``
    answers over random pairs of each pool, ``overlap`` raters per pair."""
    import time

    t0 = time.perf_counter()
    rng = random.Random(seed)
    kinds = [k for k, share in population.items() for _ in range(round(share * raters))]
    judges = [SimulatedJudge(kind, random.Random(seed * 1000 + i)) for i, kind in
              enumerate(kinds)]
    scores = {key: [oracle_total(c, episodes[key]) for _, c in pool]
              for key, pool in pools.items()}
    keys = sorted(pools)
    rows = []  # (rater, item, episode, i, j, choice, strength, order)
    item = 0
    while len(rows) < judgments:
        key = keys[item % len(keys)]
        i, j = rng.sample(range(len(pools[key])), 2)
        for r in rng.sample(range(len(judges)), min(overlap, len(judges))):
            left_first = rng.random() < 0.5  # the slot shown on the left
            a, b = (i, j) if left_first else (j, i)
            choice, strength = judges[r].choice(scores[key][a], scores[key][b])
            rows.append((r, item, key, i, j, choice, strength, left_first))
        item += 1
    rows = rows[:judgments]
    simulate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    status = _qc(rows, len(judges), keys)
    qc_s = time.perf_counter() - t0
    summary: dict = {}
    for r, kind in enumerate(kinds):
        s = summary.setdefault(kind, {"n": 0, "excluded": 0, "flagged": 0})
        s["n"] += 1
        if status[r] in ("excluded", "flagged"):
            s[status[r]] += 1
    comps, dropped = [], 0
    for r, item_id, key, i, j, choice, strength, left_first in rows:
        if status[r] != "trusted":
            dropped += 1
            continue
        if choice == "both_bad":
            continue
        if choice == "tie":
            outcome = "tie"
        else:  # in slot terms: slot i is "a"
            pressed_slot_i = (choice == "left") == left_first
            outcome = "a" if pressed_slot_i else "b"
        (sa, ca), (sb, cb) = pools[key][i], pools[key][j]
        comps.append(Comparison(episode=key, a=ca, b=cb, outcome=outcome,
                                strength=int(strength or 1), split=hash_split(key, test_fraction),
                                item=str(item_id), rater=str(r), a_source=sa, b_source=sb))
    return Judging(comps, len(rows), summary, dropped, {"simulate": simulate_s, "qc": qc_s})


def _qc(rows: Sequence[tuple], n_raters: int, keys: list[str]) -> list[str]:
    """Each rater's status under the platform's quality control (no probes here: side bias,
    agreement with the others and the reliability estimate decide)."""
    n = len(rows)
    rater = np.array([r[0] for r in rows])
    item = np.array([r[1] for r in rows])
    choice_code = {"left": qc.LEFT, "right": qc.RIGHT, "tie": qc.TIE, "both_bad": qc.BOTH_BAD}
    choice = np.array([choice_code[r[5]] for r in rows], dtype=np.int8)
    label = np.full(n, qc.NOPREF, dtype=np.int64)
    for idx, r in enumerate(rows):
        if r[5] in ("left", "right"):
            label[idx] = qc.A if (r[5] == "left") == r[7] else qc.B
    units, unit_index = np.unique(item, return_inverse=True)
    first = {}
    index = {k: n for n, k in enumerate(keys)}
    for r in rows:
        first.setdefault(r[1], (index[r[2]], r[3], r[4]))
    unit_episode = np.array([first[u][0] for u in units])
    unit_cands = np.array([[first[u][0] * 100 + first[u][1], first[u][0] * 100 + first[u][2]]
                           for u in units])
    data = qc.QcData(
        n_raters=n_raters, rater=rater, probe=np.zeros(n, dtype=np.int8),
        passed=np.full(n, np.nan), choice=choice,
        decision_ms=np.full(n, 3000.0), clip_ms=np.full(n, 8000.0),
        c_rater=rater, c_unit=unit_index, c_label=label,
        unit_episode=unit_episode, unit_cands=unit_cands, unit_item=units)
    th = qc.Thresholds()
    result = qc.compute(data, th)
    out = []
    for i in range(n_raters):
        status = qc.rater_decision(qc.rater_row(result.raters, i), th)[0]
        out.append(status or "trusted")  # None: too few answers to judge yet, kept
    return out


def kinds_of(comparisons: Sequence[Comparison]) -> Counter:
    return Counter(c.outcome for c in comparisons)
