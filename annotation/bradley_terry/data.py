"""Judgments in: checking the index, weight and cluster arrays, de-duplicating them to one row
per unordered pair, and the win rates between groups that those rows give."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Outcome columns of a de-duplicated row (i < j).
I_WON, J_WON, TIE = 0, 1, 2


def _indices(name: str, values: object) -> np.ndarray:
    arr = np.asarray(values if values is not None else [])
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of player indices, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer player indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if (bad := np.flatnonzero(arr < 0)).size:
        raise ValueError(f"{name}: player indices must be >= 0; position {bad[0]} holds "
                         f"{arr[bad[0]]}")
    return arr


def _weights(name: str, values: object, n: int) -> np.ndarray:
    if values is None:
        return np.ones(n)
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected {n} weights (one per judgment), got shape "
                         f"{arr.shape}")
    if (bad := np.flatnonzero(~np.isfinite(arr) | (arr < 0))).size:
        raise ValueError(f"{name}: weights must be finite and >= 0; position {bad[0]} holds "
                         f"{arr[bad[0]]}")
    return arr


def _clusters(name: str, values: object, n: int) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.shape != (n,) or (n and arr.dtype.kind not in "iu"):
        raise ValueError(f"{name}: expected {n} integer cluster ids (one per judgment), got "
                         f"shape {arr.shape}, dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class Comparisons:
    """Judgments de-duplicated to one row per unordered pair ``i[r] < j[r]``.

    ``counts[r]`` holds the weighted number of judgments in which i won, j won, and that were
    ties (columns ``I_WON``, ``J_WON``, ``TIE``). ``cell``, ``weight`` and ``cluster`` keep, per
    input judgment (decisive ones first, then ties), its row·3 + outcome, its weight and its
    cluster (compacted to 0..C-1; ``None``: every judgment is its own): what the intervals
    need to resample or sum scores."""

    n_players: int
    i: np.ndarray  # (R,) int64, ascending
    j: np.ndarray  # (R,) int64, i < j
    counts: np.ndarray  # (R, 3) float64
    cell: np.ndarray  # (N,) int64
    weight: np.ndarray  # (N,) float64
    cluster: np.ndarray | None  # (N,) int64 or None
    n_clusters: int
    n_decisive: int
    n_ties: int

    @property
    def n_judgments(self) -> int:
        return self.n_decisive + self.n_ties

    def player_counts(self, *, ties: bool = True) -> np.ndarray:
        """Judgments (unweighted) each player took part in; (P,) int64."""
        raw = np.bincount(self.cell, minlength=3 * len(self.i)).reshape(-1, 3)
        per_row = raw[:, :2].sum(1) + (raw[:, TIE] if ties else 0)
        return (np.bincount(self.i, per_row, minlength=self.n_players)
                + np.bincount(self.j, per_row, minlength=self.n_players)).astype(np.int64)


def _unique_pairs(lo: np.ndarray, hi: np.ndarray, n_players: int
                  ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The distinct (lo, hi) pairs in (lo, hi) order, and each input's row among them.

    Up to 65,536 players, two stable passes of numpy's radix sort on 16-bit keys (hi, then
    lo) order a million pairs several times faster than a comparison sort of 64-bit keys."""
    if len(lo) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return (empty, empty), empty
    if n_players <= 1 << 16:
        order = np.argsort(hi.astype(np.uint16), kind="stable")
        order = order[np.argsort(lo.astype(np.uint16)[order], kind="stable")]
    else:
        order = np.argsort(lo * np.int64(n_players) + hi)
    slo, shi = lo[order], hi[order]
    new = np.empty(len(order), dtype=bool)
    new[0] = True
    np.not_equal(slo[1:], slo[:-1], out=new[1:])
    new[1:] |= shi[1:] != shi[:-1]
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return (slo[new], shi[new]), inverse


def comparisons(winners: object, losers: object, tie_a: object = None, tie_b: object = None,
                *, weights: object = None, tie_weights: object = None, clusters: object = None,
                tie_clusters: object = None, n_players: int | None = None) -> Comparisons:
    """De-duplicate judgments: ``winners[k]`` beat ``losers[k]``; ``tie_a[k]`` tied with
    ``tie_b[k]``. Weights (≥ 0, one per judgment) default to 1; clusters group judgments that
    are not independent (a group answer's derived pairs) for the intervals. Raises
    ``ValueError`` naming the argument and position of the first bad value."""
    w_idx, l_idx = _indices("winners", winners), _indices("losers", losers)
    a_idx, b_idx = _indices("tie_a", tie_a), _indices("tie_b", tie_b)
    if len(w_idx) != len(l_idx):
        raise ValueError(f"winners and losers differ in length: {len(w_idx)} vs {len(l_idx)}")
    if len(a_idx) != len(b_idx):
        raise ValueError(f"tie_a and tie_b differ in length: {len(a_idx)} vs {len(b_idx)}")
    nd, nt = len(w_idx), len(a_idx)
    wd = _weights("weights", weights, nd)
    wt = _weights("tie_weights", tie_weights, nt)
    cd = _clusters("clusters", clusters, nd)
    ct = _clusters("tie_clusters", tie_clusters, nt)
    if (cd is not None or ct is not None) and ((cd is None and nd) or (ct is None and nt)):
        raise ValueError("clusters and tie_clusters: give both or neither")
    a = np.concatenate([w_idx, a_idx])
    b = np.concatenate([l_idx, b_idx])
    top = int(max(a.max(), b.max())) + 1 if len(a) else 0
    if n_players is None:
        n_players = top
    elif not isinstance(n_players, int | np.integer) or n_players < top:
        raise ValueError(f"n_players: {n_players} is less than the largest index + 1 ({top})")
    if (same := np.flatnonzero(a == b)).size:
        k = int(same[0])
        where = f"winners/losers position {k}" if k < nd else f"tie_a/tie_b position {k - nd}"
        raise ValueError(f"{where}: player {a[k]} is compared with itself")
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    outcome = np.empty(nd + nt, dtype=np.int64)
    outcome[:nd] = np.where(w_idx == lo[:nd], I_WON, J_WON)
    outcome[nd:] = TIE
    # One row per unordered pair, rows ordered by (i, j): the CSR layout the fit uses.
    rows, inverse = _unique_pairs(lo, hi, n_players)
    cell = inverse * 3 + outcome
    weight = np.concatenate([wd, wt])
    counts = np.bincount(cell, weight, minlength=3 * len(rows[0])).reshape(-1, 3)
    cluster, n_clusters = None, nd + nt
    if cd is not None or ct is not None:
        none = np.zeros(0, dtype=np.int64)
        ids = np.concatenate([cd if cd is not None else none, ct if ct is not None else none])
        uniq, cluster = np.unique(ids, return_inverse=True)
        cluster, n_clusters = cluster.reshape(-1), len(uniq)
    return Comparisons(n_players=int(n_players), i=rows[0], j=rows[1], counts=counts,
                       cell=cell, weight=weight, cluster=cluster, n_clusters=n_clusters,
                       n_decisive=nd, n_ties=nt)


@dataclass(frozen=True, eq=False)
class WinRates:
    """Between groups of players (sources): ``wins[a, b]`` weighted judgments a player of a
    beat one of b, ``ties[a, b]`` ties between them, ``rate[a, b]`` = wins[a, b] / (wins[a, b] +
    wins[b, a]), the share of decisive judgments a won (NaN where there are none, and on the
    diagonal: judgments within a group are left out)."""

    rate: np.ndarray  # (G, G)
    wins: np.ndarray  # (G, G)
    ties: np.ndarray  # (G, G), symmetric


def win_rates(data: Comparisons, groups: object = None, n_groups: int | None = None
              ) -> WinRates:
    """Win rates between groups (``groups[k]``: player k's group; default each player its
    own)."""
    g = (np.arange(data.n_players) if groups is None else np.asarray(groups, dtype=np.int64))
    if g.shape != (data.n_players,):
        raise ValueError(f"groups: expected one group per player ({data.n_players}), got shape "
                         f"{g.shape}")
    n = int(n_groups if n_groups is not None else (g.max() + 1 if len(g) else 0))
    gi, gj = g[data.i], g[data.j]
    keep = gi != gj
    gi, gj, c = gi[keep], gj[keep], data.counts[keep]
    wins = (np.bincount(gi * n + gj, c[:, I_WON], minlength=n * n)
            + np.bincount(gj * n + gi, c[:, J_WON], minlength=n * n)).reshape(n, n)
    ties = np.bincount(gi * n + gj, c[:, TIE], minlength=n * n).reshape(n, n)
    ties = ties + ties.T
    decisive = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(decisive > 0, wins / decisive, np.nan)
    return WinRates(rate=rate, wins=wins, ties=ties)
