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
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from typing import NamedTuple

import numpy as np
from django.db.models import Case, F, IntegerField, JSONField, Max, Value, When

from annotation import bradley_terry as bt
from annotation.models import Campaign, ItemMember, Judgment, Probe, Protocol
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


CHUNK = 20_000  # judgments turned into arrays at a time (the only rows held as tuples)
_OUTCOMES = {"a": 0, "b": 1, "tie": 2}  # coded by the database; "both bad" and blank: -1
_TIE = _OUTCOMES["tie"]


def _chunks(rows: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    """``rows`` (a streamed ``values_list``) ``size`` tuples at a time."""
    it = iter(rows)
    while part := list(islice(it, size)):
        yield part


@dataclass
class _Comparisons:
    """Comparisons between candidate ids, each with the judgment it came from, in the order
    of the judgments (a group answer's pairs in ``group_pairs``' order, then its ties)."""

    winners: np.ndarray  # (D,) candidate ids
    losers: np.ndarray  # (D,)
    won_in: np.ndarray  # (D,) judgment ids
    tie_a: np.ndarray  # (T,)
    tie_b: np.ndarray  # (T,)
    tied_in: np.ndarray  # (T,)


class _Members(NamedTuple):
    """The regular items' candidates: ``cands[k, p]`` the candidate at position p (slot order)
    of item ``ids[k]`` (-1 past ``size[k]``)."""

    ids: np.ndarray  # (I,) sorted
    cands: np.ndarray  # (I, S)
    size: np.ndarray  # (I,)


def _members(regular) -> _Members:
    rows = regular.order_by("item_id", "slot").values_list("item_id", "candidate_id")
    parts = [np.array(p, dtype=np.int64) for p in _chunks(rows.iterator(chunk_size=CHUNK), CHUNK)]
    pairs = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
    ids, start, size = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    cands = np.full((len(ids), max(int(size.max(initial=0)), 2)), -1, dtype=np.int64)
    position = np.arange(len(pairs)) - np.repeat(start, size)  # rank within the item
    cands[np.repeat(np.arange(len(ids)), size), position] = pairs[:, 1]
    return _Members(ids, cands, size)


def _in_row_order(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """(row, a, b, judgment) pieces of one chunk as (a, b, judgment) in the chunk's row order;
    the sort is stable, so the pairs of one group answer keep their own order."""
    row, *cols = (np.concatenate(c) for c in zip(*parts, strict=True))
    if len(parts) > 1:
        order = np.argsort(row, kind="stable")
        cols = [c[order] for c in cols]
    return tuple(cols)


def _concat(chunks: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    if not chunks:
        return tuple(np.zeros(0, dtype=np.int64) for _ in range(3))
    return tuple(np.concatenate(c) for c in zip(*chunks, strict=True))


def _read(campaign_ids: list[int], exclude_excluded: bool
          ) -> tuple[_Comparisons, dict[int, Candidate], int, int]:
    """The comparisons of the campaigns' regular judgments, read a chunk at a time into
    arrays: outcomes coded by the database, a group answer's scores read only for group
    campaigns (their pairs come from ``group_pairs``, one answer at a time)."""
    campaigns = {c.pk: c for c in Campaign.objects.filter(pk__in=campaign_ids)}
    group_ids = [pk for pk, c in campaigns.items() if c.protocol == Protocol.GROUP]
    regular = ItemMember.objects.filter(item__campaign_id__in=campaign_ids,
                                        item__probe=Probe.NONE)
    members = _members(regular)
    # Only what the labels and rows read: an episode's transcript or a version's config would
    # be held once per candidate.
    candidates = {c.pk: c for c in Candidate.objects.filter(
        pk__in=regular.values("candidate_id")).select_related("policy_version", "episode")
        .only("source", "baseline", "policy_version__name", "episode__key")}
    excluded = excluded_raters(campaign_ids) if exclude_excluded else set()
    # (campaign, rater) as one integer, to test a whole chunk at once
    excluded_keys = np.array(sorted((c << 32) + r for c, r in excluded), dtype=np.int64)

    columns = ["id", "campaign_id", "rater_id", "item_id", "outcome_code"]
    rows = (Judgment.objects.filter(campaign_id__in=campaign_ids, probe=Probe.NONE)
            .order_by("id")
            .annotate(outcome_code=Case(*[When(outcome=o, then=Value(k))
                                          for o, k in _OUTCOMES.items()],
                                        default=Value(-1), output_field=IntegerField())))
    if group_ids:
        rows = rows.annotate(group_scores=Case(When(campaign_id__in=group_ids, then=F("scores")),
                                               default=Value(None), output_field=JSONField()))
        columns.append("group_scores")
    rows = rows.values_list(*columns)

    wins: list[tuple[np.ndarray, ...]] = []  # (winner, loser, judgment) per chunk
    ties: list[tuple[np.ndarray, ...]] = []  # (a, b, judgment) per chunk
    used = left_out = 0
    for part in _chunks(rows.iterator(chunk_size=CHUNK), CHUNK):
        table = np.array([r[:5] for r in part] if group_ids else part,
                         dtype=np.int64).reshape(-1, 5)
        jid, cid, rid, item_id, code = table.T
        out = np.isin((cid << 32) + rid, excluded_keys)
        left_out += int(out.sum())
        if not len(members.ids):
            continue  # no regular item with candidates: nothing to compare
        pos = np.minimum(np.searchsorted(members.ids, item_id), len(members.ids) - 1)
        ok = ~out & (members.ids[pos] == item_id) & (members.size[pos] >= 2)
        cands = members.cands[pos]  # (n, S) the item's candidates in slot order
        scored = np.zeros(len(part), dtype=bool)
        if group_ids:
            scored = np.fromiter((bool(r[5]) for r in part), dtype=bool, count=len(part))
        # Pairwise answers: "a" / "b" a win of slot 0 / 1, "tie" a tie; "both bad" no order.
        won = ok & ~scored & (code >= 0) & (code < _TIE)
        tied = ok & ~scored & (code == _TIE)
        used += int(won.sum() + tied.sum())
        r = np.flatnonzero(won)
        first = code[r] == 0
        c_wins = [(r, np.where(first, cands[r, 0], cands[r, 1]),
                   np.where(first, cands[r, 1], cands[r, 0]), jid[r])]
        r = np.flatnonzero(tied)
        c_ties = [(r, cands[r, 0], cands[r, 1], jid[r])]
        # Group answers: every pair they imply, one answer at a time.
        g_wins: list[tuple[int, int, int, int]] = []
        g_ties: list[tuple[int, int, int, int]] = []
        for k in np.flatnonzero(ok & scored).tolist():
            scores, j = part[k][5], int(jid[k])
            slots = cands[k, :members.size[pos[k]]].tolist()
            if len(scores) != len(slots):
                logger.warning("judgment #%s: %d score sets for %d candidates; left out",
                               j, len(scores), len(slots))
                continue
            ordered = set()
            for better, worse, _margin in group_pairs(scores, campaigns[int(cid[k])].weights):
                ordered.add(frozenset((better, worse)))
                g_wins.append((k, slots[better], slots[worse], j))
            for x in range(len(slots)):
                for y in range(x + 1, len(slots)):
                    if frozenset((x, y)) not in ordered:
                        g_ties.append((k, slots[x], slots[y], j))
            used += 1
        if g_wins:
            c_wins.append(tuple(np.array(g_wins, dtype=np.int64).reshape(-1, 4).T))
        if g_ties:
            c_ties.append(tuple(np.array(g_ties, dtype=np.int64).reshape(-1, 4).T))
        wins.append(_in_row_order(c_wins))
        ties.append(_in_row_order(c_ties))
    w, lo, jw = _concat(wins)
    ta, tb, jt = _concat(ties)
    return _Comparisons(w, lo, jw, ta, tb, jt), candidates, used, left_out


def _fit(index: dict[int, int], n_players: int, comps: _Comparisons,
         rounds: int) -> tuple[bt.Fit, bt.Intervals, np.ndarray]:
    """Fit over players ``index[candidate id]``; comparisons between the same player (two
    candidates of one source) are left out."""
    keys = np.fromiter(index, dtype=np.int64, count=len(index))
    values = np.fromiter(index.values(), dtype=np.int64, count=len(index))
    order = np.argsort(keys)
    keys, values = keys[order], values[order]

    def arrays(a: np.ndarray, b: np.ndarray, judgment: np.ndarray):
        ia = values[np.searchsorted(keys, a)]
        ib = values[np.searchsorted(keys, b)]
        keep = ia != ib
        return ia[keep], ib[keep], judgment[keep]

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
