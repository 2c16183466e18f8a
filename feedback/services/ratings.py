"""Ratings of candidates and of their sources from campaigns' judgments: Bradley–Terry with ties.

One model for both protocols (``annotation.bradley_terry``, Davidson's model; the active order
uses the same fit):

* a pairwise answer is one comparison: "a" or "b" a win, "tie" a tie; "both bad" says nothing
  about order and is left out;
* a group answer (K candidates scored on the four criteria) is folded in as every pair it
  implies, by the campaign's criterion weights (``annotation.rules.group_pairs``): the better
  scored beats the worse, and two candidates scored the same tie. Each derived pair counts 1.
  A ranking model (Plackett–Luce) would read a group answer whole, but equal scores are common
  on a 1–5 scale and Plackett–Luce with ties needs a tie model over rankings of its own; the
  derived pairs keep one likelihood, one tie parameter and one scale for both protocols. The
  pairs of one answer are not independent, so the intervals treat them as one cluster (the
  sandwich sums their scores, the bootstrap resamples answers, not pairs).

Only regular items count (probe "none": gold, catch and repeat items test raters, they are not
data). With ``exclude_excluded`` the answers of raters whose latest quality-control decision
(``feedback.models.QcDecision``, per enrolment) is "excluded" are left out; raters without a
decision count.

Candidates are rated against the candidates they were compared with (those of the same
episode): their strengths compare within an episode only (each episode's mean is 0). Sources
(``policy:<version>``, ``ground_truth``, ``baseline:<name>``, as ``annotation.services.ordering.
source_label``) are rated from the comparisons between candidates of different sources.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
from django.db.models import Max

from annotation import bradley_terry as bt
from annotation.models import Campaign, ItemMember, Judgment, Probe
from annotation.rules import group_pairs
from annotation.services.ordering import source_label
from feedback.models import QcDecision, RaterStatus
from policy.models import Candidate

logger = logging.getLogger(__name__)

LEVEL = 0.95  # the intervals' coverage
BOOTSTRAP_SEED = 0  # the same data and rounds give the same intervals


class WinRate(NamedTuple):
    """``matrix[a][b]``: the share of decisive judgments between sources a and b that a won
    (None where they never met decisively, and on the diagonal)."""

    labels: list[str]
    matrix: list[list[float | None]]


@dataclass(frozen=True)
class RatingsResult:
    """Ratings in natural-log strength (a difference d means P(win) = 1 / (1 + e^(−d)) without
    ties), strongest first. Each row: ``id`` (candidates) or ``label`` (sources), ``strength``,
    ``lo`` and ``hi`` (the interval at ``level``; None for a player with no judgments) and
    ``n`` (comparisons it took part in; a group answer gives one per pair it implies)."""

    candidates: list[dict]
    sources: list[dict]
    win_rate: WinRate
    nu: float  # the tie parameter of the sources' fit (0: no ties)
    nu_interval: tuple[float, float]
    candidate_nu: float  # the tie parameter of the candidates' fit
    pair_counts: list[list[int]]  # comparisons between sources, in win_rate's order
    judgments: int  # answers used (pairwise and group)
    comparisons: int  # comparisons fitted for candidates (group answers expanded)
    left_out: int  # answers of excluded raters left out
    interval: str  # "sandwich" or "bootstrap"
    level: float
    rounds: int
    converged: bool

    def as_dict(self) -> dict:
        out = asdict(self)
        out["win_rate"] = {"labels": self.win_rate.labels, "matrix": self.win_rate.matrix}
        return out


def _campaign_ids(campaigns: list) -> list[int]:
    ids = []
    for c in campaigns:
        if isinstance(c, Campaign):
            ids.append(c.pk)
        elif isinstance(c, int) and not isinstance(c, bool):
            ids.append(c)
        else:
            raise ValueError(f"campaigns: expected Campaign rows or ids, got {c!r}")
    return ids


def excluded_raters(campaign_ids: list[int]) -> set[tuple[int, int]]:
    """(campaign id, rater id) of the enrolments whose latest QC decision is "excluded"."""
    latest = (QcDecision.objects.filter(campaign_id__in=campaign_ids).order_by()
              .values("enrollment_id").annotate(last=Max("id")).values("last"))
    return set(QcDecision.objects.filter(pk__in=latest, status=RaterStatus.EXCLUDED)
               .values_list("enrollment__campaign_id", "enrollment__rater_id"))


@dataclass
class _Comparisons:
    """Comparisons between candidate ids, each with the judgment it came from."""

    winners: list[int]
    losers: list[int]
    won_in: list[int]
    tie_a: list[int]
    tie_b: list[int]
    tied_in: list[int]


def _read(campaign_ids: list[int], exclude_excluded: bool
          ) -> tuple[_Comparisons, dict[int, Candidate], int, int]:
    weights = {c.pk: c.weights for c in Campaign.objects.filter(pk__in=campaign_ids)}
    members: dict[int, list[int]] = defaultdict(list)
    regular = ItemMember.objects.filter(item__campaign_id__in=campaign_ids,
                                        item__probe=Probe.NONE)
    for item_id, candidate_id in regular.order_by("item_id", "slot").values_list(
            "item_id", "candidate_id"):
        members[item_id].append(candidate_id)
    candidates = {c.pk: c for c in Candidate.objects.filter(
        pk__in=regular.values("candidate_id")).select_related("policy_version", "episode")}
    excluded = excluded_raters(campaign_ids) if exclude_excluded else set()
    out = _Comparisons([], [], [], [], [], [])
    used = left_out = 0
    rows = (Judgment.objects.filter(campaign_id__in=campaign_ids, probe=Probe.NONE)
            .order_by("id").values_list("id", "campaign_id", "rater_id", "item_id", "outcome",
                                        "scores"))
    for jid, cid, rid, item_id, outcome, scores in rows.iterator(chunk_size=5000):
        if (cid, rid) in excluded:
            left_out += 1
            continue
        slots = members.get(item_id)
        if not slots or len(slots) < 2:
            continue
        if scores:
            if len(scores) != len(slots):
                logger.warning("judgment #%s: %d score sets for %d candidates; left out",
                               jid, len(scores), len(slots))
                continue
            ordered = set()
            for better, worse, _margin in group_pairs(scores, weights[cid]):
                ordered.add(frozenset((better, worse)))
                out.winners.append(slots[better])
                out.losers.append(slots[worse])
                out.won_in.append(jid)
            for x in range(len(slots)):
                for y in range(x + 1, len(slots)):
                    if frozenset((x, y)) not in ordered:
                        out.tie_a.append(slots[x])
                        out.tie_b.append(slots[y])
                        out.tied_in.append(jid)
        elif outcome in ("a", "b"):
            won = 0 if outcome == "a" else 1
            out.winners.append(slots[won])
            out.losers.append(slots[1 - won])
            out.won_in.append(jid)
        elif outcome == "tie":
            out.tie_a.append(slots[0])
            out.tie_b.append(slots[1])
            out.tied_in.append(jid)
        else:
            continue  # "both bad": no order
        used += 1
    return out, candidates, used, left_out


def _fit(index: dict[int, int], n_players: int, comps: _Comparisons,
         rounds: int) -> tuple[bt.Fit, bt.Intervals, np.ndarray]:
    """Fit over players ``index[candidate id]``; comparisons between the same player (two
    candidates of one source) are left out."""
    def arrays(a: list[int], b: list[int], judgment: list[int]):
        ia = np.fromiter((index[x] for x in a), dtype=np.int64, count=len(a))
        ib = np.fromiter((index[x] for x in b), dtype=np.int64, count=len(b))
        keep = ia != ib
        return ia[keep], ib[keep], np.asarray(judgment, dtype=np.int64)[keep]

    w, lo, jw = arrays(comps.winners, comps.losers, comps.won_in)
    ta, tb, jt = arrays(comps.tie_a, comps.tie_b, comps.tied_in)
    data = bt.comparisons(w, lo, ta, tb, clusters=jw, tie_clusters=jt, n_players=n_players)
    fitted = bt.fit_comparisons(data)
    intervals = (bt.bootstrap(fitted, rounds=rounds, seed=BOOTSTRAP_SEED, level=LEVEL)
                 if rounds else bt.sandwich(fitted, level=LEVEL))
    return fitted, intervals, data.player_counts()


def _rows(key: str, names: list, fitted: bt.Fit, intervals: bt.Intervals, counts: np.ndarray,
          extra: list[dict] | None = None) -> list[dict]:
    rows = []
    for k, name in enumerate(names):
        n = int(counts[k])
        row = {key: name, "strength": float(fitted.strengths[k]),
               "lo": float(intervals.lo[k]) if n else None,
               "hi": float(intervals.hi[k]) if n else None, "n": n}
        if extra:
            row.update(extra[k])
        rows.append(row)
    rows.sort(key=lambda r: -r["strength"])
    return rows


def campaign_ratings(*, campaigns: list, exclude_excluded: bool = True,
                     rounds: int = 0) -> RatingsResult:
    """Ratings over the candidates and the sources of ``campaigns`` (rows or ids), with
    sandwich intervals, or bootstrap intervals over ``rounds`` refits when ``rounds`` > 0."""
    if not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds: expected an integer >= 0, got {rounds!r}")
    ids = _campaign_ids(campaigns)
    t0 = time.perf_counter()
    comps, candidates, used, left_out = _read(ids, exclude_excluded)
    t_read = time.perf_counter() - t0

    cand_ids = sorted(candidates)
    cand_index = {c: k for k, c in enumerate(cand_ids)}
    cand_fit, cand_int, cand_n = _fit(cand_index, len(cand_ids), comps, rounds)
    labels_of = {c: source_label(candidates[c]) for c in cand_ids}
    source_names = sorted(set(labels_of.values()))
    source_pos = {s: k for k, s in enumerate(source_names)}
    by_source = {c: source_pos[labels_of[c]] for c in cand_ids}
    src_fit, src_int, src_n = _fit(by_source, len(source_names), comps, rounds)

    cand_rows = _rows("id", cand_ids, cand_fit, cand_int, cand_n, extra=[
        {"source": labels_of[c], "episode": candidates[c].episode.key} for c in cand_ids])
    src_rows = _rows("label", source_names, src_fit, src_int, src_n)

    # The win-rate matrix between sources, strongest first; counted from the candidates'
    # comparisons grouped by source (judgments between samples of one source left out).
    data = src_fit.data
    rates = bt.win_rates(data)
    order = [source_pos[r["label"]] for r in src_rows]
    matrix = [[None if math.isnan(rates.rate[a, b]) else float(rates.rate[a, b])
               for b in order] for a in order]
    met = rates.wins + rates.wins.T + rates.ties
    pair_counts = [[int(round(met[a, b])) for b in order] for a in order]
    logger.info("ratings of campaigns %s: %d answers (%d left out), %d candidates, %d sources; "
                "read %.2f s, fitted %.2f s (%s)", ids, used, left_out, len(cand_ids),
                len(source_names), t_read, time.perf_counter() - t0 - t_read,
                "bootstrap" if rounds else "sandwich")
    return RatingsResult(
        candidates=cand_rows, sources=src_rows,
        win_rate=WinRate([source_names[k] for k in order], matrix),
        nu=float(src_fit.nu), nu_interval=(float(src_int.nu_lo), float(src_int.nu_hi)),
        candidate_nu=float(cand_fit.nu), pair_counts=pair_counts, judgments=used,
        comparisons=cand_fit.data.n_judgments, left_out=left_out,
        interval="bootstrap" if rounds else "sandwich", level=LEVEL, rounds=rounds,
        converged=cand_fit.converged and src_fit.converged)
