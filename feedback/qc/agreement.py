"""How far raters agree: raw pairwise agreement, agreement with the leave-one-out majority,
Krippendorff's alpha and the 3-cycles of each episode's majority preferences."""

from __future__ import annotations

import math

import numpy as np

from .data import A, B, _count, _share


def pairwise_agreement(counts: np.ndarray) -> dict[str, np.ndarray | float | None]:
    """Raw agreement: of every two answers to the same unit, the share that agree. Per unit
    (nan under two answers) and pooled over the campaign (pairs of answers weigh equally).
    ``decisive``: the same over the answers that prefer one side, the figure comparable with
    the human ceiling (people who both chose a side)."""
    n = counts.sum(1)
    same = (counts * (counts - 1)).sum(1).astype(np.float64)
    pairs = (n * (n - 1)).astype(np.float64)
    d = counts[:, :2]
    nd = d.sum(1)
    same_d = (d * (d - 1)).sum(1).astype(np.float64)
    pairs_d = (nd * (nd - 1)).astype(np.float64)
    return {
        "per_unit": _share(same, pairs),
        "agreement": float(same.sum() / pairs.sum()) if pairs.sum() else None,
        "agreement_decisive": float(same_d.sum() / pairs_d.sum()) if pairs_d.sum() else None,
        "pairs": float(pairs.sum() / 2),
    }


def loo_agreement(rater: np.ndarray, unit: np.ndarray, label: np.ndarray,
                  counts: np.ndarray, n_raters: int) -> tuple[np.ndarray, np.ndarray]:
    """Per rater: (comparisons scored, comparisons agreeing with the majority of the others).
    A comparison is scored when its unit has at least two other answers and their most frequent
    label is unique."""
    rows = np.arange(len(label))
    others = counts[unit].astype(np.int32)  # (M, 3): the unit's answers ...
    others[rows, label] -= 1  # ... less this one
    top = others.max(1)
    unique = (others == top[:, None]).sum(1) == 1
    scored = (others.sum(1) >= 2) & unique
    agree = scored & (others[rows, label] == top)
    return _count(rater, n_raters, scored), _count(rater, n_raters, agree)


def krippendorff_alpha(counts: np.ndarray, *, level: str, domain) -> float | None:
    """Krippendorff's alpha of (U, V) value counts by the ``krippendorff`` package, at the
    given level of measurement: pass it always (the package's default, ``interval``, is wrong
    for preference labels and for 1-5 scores). None when no unit has two answers or every
    answer is the same value (alpha is undefined)."""
    import krippendorff

    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise ValueError(f"level: expected nominal, ordinal, interval or ratio, got {level!r}")
    kept = counts[counts.sum(1) >= 2]  # units with one answer carry no pairs
    if not len(kept):
        return None
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            value = krippendorff.alpha(value_counts=kept, value_domain=list(domain),
                                       level_of_measurement=level)
    except ValueError:
        return None
    return float(value) if math.isfinite(value) else None


def preference_cycles(unit_episode: np.ndarray, unit_cands: np.ndarray,
                      counts: np.ndarray, *, chunk_cells: int = 20_000_000) -> dict:
    """Intransitive triads of each episode's majority preferences.

    Units comparing the same two candidates of an episode are pooled; the candidate more raters
    preferred gets an edge to the other (an even split gives none). In each episode's directed
    graph a 3-cycle (x > y > z > x) is counted once; ``triads`` counts the triples whose three
    pairs all have an edge, so ``cycle_share`` is the share of those that are intransitive."""
    margin = (counts[:, A] - counts[:, B]).astype(np.int64)
    keep = margin != 0
    if not keep.any():
        return {"cycles": 0, "triads": 0, "cycle_share": None, "episodes": 0,
                "episodes_with_cycles": 0, "worst_episodes": []}
    ep = unit_episode[keep].astype(np.int64)
    ca, cb = unit_cands[keep, 0].astype(np.int64), unit_cands[keep, 1].astype(np.int64)
    m = margin[keep]
    lo, hi = np.minimum(ca, cb), np.maximum(ca, cb)
    m_lo = np.where(ca == lo, m, -m)  # margin in favour of the lower candidate id
    # Pool the units of each (episode, candidate, candidate).
    order = np.lexsort((hi, lo, ep))
    ep, lo, hi, m_lo = ep[order], lo[order], hi[order], m_lo[order]
    new = np.ones(len(ep), dtype=bool)
    new[1:] = (ep[1:] != ep[:-1]) | (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    group = np.cumsum(new) - 1
    pooled = np.bincount(group, weights=m_lo)
    p_ep, p_lo, p_hi = ep[new], lo[new], hi[new]
    edge = pooled != 0
    p_ep, p_lo, p_hi, pooled = p_ep[edge], p_lo[edge], p_hi[edge], pooled[edge]
    src = np.where(pooled > 0, p_lo, p_hi)
    dst = np.where(pooled > 0, p_hi, p_lo)
    # Each episode's candidates numbered 0, 1, ... (a node key is episode * base + candidate).
    base = int(max(src.max(), dst.max())) + 1
    node_keys = np.unique(np.concatenate([p_ep * base + src, p_ep * base + dst]))
    episodes, first, per = np.unique(node_keys // base, return_index=True, return_counts=True)
    local = np.arange(len(node_keys)) - np.repeat(first, per)
    size = int(per.max())
    s_loc = local[np.searchsorted(node_keys, p_ep * base + src)]
    d_loc = local[np.searchsorted(node_keys, p_ep * base + dst)]
    e_idx = np.searchsorted(episodes, p_ep)
    cycles = np.zeros(len(episodes))
    triads = np.zeros(len(episodes))
    step = max(1, chunk_cells // (size * size))
    for start in range(0, len(episodes), step):  # bounded memory: (chunk, size, size)
        stop = min(start + step, len(episodes))
        sel = (e_idx >= start) & (e_idx < stop)
        adj = np.zeros((stop - start, size, size), dtype=np.float32)
        adj[e_idx[sel] - start, s_loc[sel], d_loc[sel]] = 1.0
        cycles[start:stop] = ((adj @ adj) * adj.transpose(0, 2, 1)).sum((1, 2)) / 3.0
        und = adj + adj.transpose(0, 2, 1)
        triads[start:stop] = ((und @ und) * und).sum((1, 2)) / 6.0
    n_cycles, n_triads = int(round(cycles.sum())), int(round(triads.sum()))
    worst = np.argsort(-cycles, kind="stable")[:10]
    return {
        "cycles": n_cycles,
        "triads": n_triads,
        "cycle_share": round(n_cycles / n_triads, 4) if n_triads else None,
        "episodes": int((triads > 0).sum()),
        "episodes_with_cycles": int((cycles > 0).sum()),
        "worst_episodes": [[int(episodes[i]), int(round(cycles[i]))] for i in worst
                           if cycles[i] > 0],
    }

