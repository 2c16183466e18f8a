"""Bradley–Terry ratings from pairwise judgments, with ties (Davidson 1970). NumPy and SciPy only.

The model
---------
Player k has a log-strength θₖ (πₖ = e^θₖ). For a judgment between i and j, Davidson's model gives

    P(i ≻ j) = πᵢ / D,   P(j ≻ i) = πⱼ / D,   P(tie) = ν·√(πᵢπⱼ) / D,   D = πᵢ + πⱼ + ν·√(πᵢπⱼ),

with one tie parameter ν ≥ 0 for everyone (ν = 0 is the plain Bradley–Terry model). Dividing by
√(πᵢπⱼ) and writing h = (θᵢ − θⱼ)/2, D' = eʰ + e⁻ʰ + ν: every quantity below depends on a pair
only through h, and on ν through λ = log ν. A tie is its own outcome, not half a win each way
(the FastChat / arena-rank shortcut, which biases strengths toward the middle when ties are
frequent). "Both bad" says nothing about order: callers leave it out.

The fit
-------
Judgments are first de-duplicated to one row per unordered pair (i < j) with the weighted count
of each outcome (i won, j won, tie): a million judgments of a few sources become a handful of
rows, and every later pass is over rows, not judgments. The penalised negative log-likelihood

    f(θ, λ) = −Σ_rows [ wᵢ·h − wⱼ·h + t·λ − n·log D' ] + (ridge / 2)·(‖θ‖² + λ²)

is convex in (θ, λ) (log D' is a log-sum-exp of linear functions), so Newton's method with a
backtracking line search converges to the one optimum, quadratically near the end; it starts
from each player's log-odds of winning and ν from the share of ties, four steps on a million
judgments. The Hessian
in θ is a weighted graph Laplacian (one edge per row) plus the ridge, bordered by one row and
column for λ; each Newton system is solved by conjugate gradients with a Jacobi preconditioner,
the Laplacian applied through a sparse matrix of the upper triangle built once from the sorted
rows. On a well-mixed comparison graph (an expander) the preconditioned system is close to the
identity and a solve takes a few products.

The prior (``ridge``)
---------------------
A Gaussian prior N(0, 1/ridge) on each log-strength (and on log ν). The default, 0.01
(a standard deviation of 10 in log-strength), moves an estimate backed by a few judgments by far
less than its uncertainty, but keeps an unbeaten player (whose maximum-likelihood strength is
infinite) and an unseen one (strength 0) finite, and keeps ν finite when every judgment is a
tie. It also fixes the scale: the likelihood sees only differences, and at the optimum the
prior's gradient makes the strengths of each connected group of players sum to zero. Players
never compared, directly or through others, with another group are rated only within their
own group (each group has mean 0): their strengths are not comparable across groups.
``ridge=0`` gives the plain maximum-likelihood estimate where it exists (every group strongly
connected by wins).

Intervals
---------
* ``sandwich``: the robust covariance H⁻¹·B·H⁻¹, H the Hessian of f at the optimum and B the sum
  of the outer products of the judgments' scores (or of clusters' summed scores: a group
  answer's derived pairs are one cluster), normal intervals. Exact (dense) up to
  ``dense_limit`` players; above it, the diagonal approximation Bₖₖ / Hₖₖ², which on a
  well-mixed graph of many judgments per player is close (use ``bootstrap`` there when it
  matters).
* ``bootstrap``: percentile intervals over ``rounds`` fits on resampled data. A round draws the
  judgments (or clusters) with replacement, which re-weights the de-duplicated rows by a
  multinomial draw, and refits from the full fit (two or three Newton steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.stats import norm

RIDGE = 0.01  # precision of the Gaussian prior on each log-strength and on log ν (sd 10)
DENSE_LIMIT = 2000  # players up to which the sandwich covariance is computed exactly

# Outcome columns of a de-duplicated row (i < j).
I_WON, J_WON, TIE = 0, 1, 2


# --- input -----------------------------------------------------------------------------------

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


# --- the fit ---------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Fit:
    """A fitted model. ``strengths`` are log-strengths θ (mean 0 within each connected group of
    players); ``loglik`` is the total weighted log-likelihood of the judgments fitted, prior
    left out; ``n`` counts those judgments (the plain model fits the decisive ones only)."""

    strengths: np.ndarray  # (P,) float64
    nu: float  # Davidson's tie parameter; 0 for the plain model or when there are no ties
    loglik: float
    n: int
    iterations: int  # Newton steps
    converged: bool
    model: str  # "davidson" or "plain"
    ridge: float
    data: Comparisons = field(repr=False)


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    # einsum's own loop: a threaded BLAS dot of a million numbers can cost more in waking its
    # threads than in arithmetic when the cores are busy
    return float(np.einsum("i,i->", x, y))


def _norm(x: np.ndarray) -> float:
    return float(np.sqrt(_dot(x, x)))


class _Problem:
    """The fixed part of a fit: the rows' pairs, the upper triangle of the comparison graph as
    a CSR matrix whose values are rewritten at each Newton step, and its connected groups."""

    def __init__(self, data: Comparisons) -> None:
        p, r = data.n_players, len(data.i)
        self.p, self.i, self.j = p, data.i, data.j
        per_row = np.bincount(data.i, minlength=p)
        indptr = np.zeros(p + 1, dtype=np.int64)
        np.cumsum(per_row, out=indptr[1:])
        self.seen = per_row > 0  # players with rows as i, whose rows start at ``starts``
        self.starts = indptr[:-1][self.seen]
        self.upper = sparse.csr_matrix((np.ones(r), data.j, indptr), shape=(p, p))
        self.n_groups, self.group = connected_components(self.upper, directed=False)
        self.group_size = np.bincount(self.group, minlength=self.n_groups).astype(np.float64)

    def by_i(self, x: np.ndarray) -> np.ndarray:
        """Σ of a per-row value over each player's rows as i (rows are sorted by i)."""
        out = np.zeros(self.p)
        if len(x):
            out[self.seen] = np.add.reduceat(x, self.starts)
        return out

    def by_j(self, x: np.ndarray) -> np.ndarray:
        return np.bincount(self.j, x, minlength=self.p)

    def centre(self, theta: np.ndarray) -> np.ndarray:
        """θ with each connected group's mean removed (the subspace the optimum lives in)."""
        mean = np.bincount(self.group, theta, minlength=self.n_groups) / self.group_size
        return theta - mean[self.group]

    def centre_with_lam(self, v: np.ndarray) -> np.ndarray:
        """``centre`` on the θ part of (θ, λ); λ is left as it is."""
        return np.append(self.centre(v[:self.p]), v[self.p])


class _Weights:
    """Row sums the likelihood needs: a = wins(i) − wins(j), n = judgments, t = ties. With
    ``ties`` and no tie in the data the model is the plain one (ν = 0), unless ``keep_nu``
    (a given ν > 0 still lowers the decisive outcomes' probabilities)."""

    def __init__(self, counts: np.ndarray, ties: bool, *, keep_nu: bool = False) -> None:
        self.ties = bool(ties and (keep_nu or counts[:, TIE].sum() > 0))
        self.a = counts[:, I_WON] - counts[:, J_WON]
        self.n = counts[:, I_WON] + counts[:, J_WON]
        if self.ties:
            self.n += counts[:, TIE]
        self.t = float(counts[:, TIE].sum()) if self.ties else 0.0


class _State:
    """f and the per-row quantities at one point (θ, λ). With h = (θᵢ − θⱼ)/2 and
    u = e^(−|h|): D' = e^|h|·z, z = 1 + u² + ν·u, so nothing overflows."""

    __slots__ = ("theta", "lam", "nu", "f", "ll", "half", "logd", "sign", "u", "u2", "z",
                 "kernel")

    def __init__(self, problem: _Problem | Comparisons, w: _Weights, theta: np.ndarray,
                 lam: float, ridge: float) -> None:
        self.theta, self.lam = theta, lam
        self.nu = float(np.exp(lam)) if w.ties else 0.0
        half = theta[problem.i]  # (R,)
        half -= theta[problem.j]
        half *= 0.5
        self.half, self.sign = half, np.sign(half)
        logd = np.abs(half)
        self.u = np.exp(-logd)
        self.u2 = self.u * self.u
        self.z = self.u2 + 1.0
        if self.nu:
            self.z += self.nu * self.u
        logd += np.log(self.z)
        self.logd = logd  # log D' per row
        self.kernel = None
        self._objective(w, ridge)

    def _objective(self, w: _Weights, ridge: float) -> None:
        lam = self.lam
        self.ll = _dot(w.a, self.half) - _dot(w.n, self.logd) + (w.t * lam if w.ties else 0.0)
        self.f = -self.ll + 0.5 * ridge * (_dot(self.theta, self.theta)
                                           + (lam * lam if w.ties else 0.0))

    def reweighed(self, w: _Weights, ridge: float) -> _State:
        """The same point under other weights (a bootstrap round): only the sums change."""
        other = object.__new__(_State)
        for name in self.__slots__:
            setattr(other, name, getattr(self, name))
        other._objective(w, ridge)
        return other


def _kernel(s: _State) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-row derivatives of log D' for one judgment, which depend on the point only (not on
    the counts, so a bootstrap round reuses the full fit's): q = P(i won) − P(j won), the
    curvature in θᵢ − θⱼ, P(tie), and the mixed curvature in θᵢ − θⱼ and λ."""
    if s.kernel is None:
        inv_z = 1.0 / s.z
        q = (1.0 - s.u2) * inv_z
        q *= s.sign
        curv = (1.0 + s.u2) * inv_z  # P(i won) + P(j won)
        curv -= q * q
        curv *= 0.25
        pt = mixed = None
        if s.nu:
            pt = s.nu * s.u * inv_z
            mixed = q * pt
            mixed *= -0.5
        s.kernel = (q, curv, pt, mixed)
    return s.kernel


def _derivatives(problem: _Problem, w: _Weights, s: _State, ridge: float):
    """Gradient of f and the Hessian's parts: per-row edge weights, diagonal, λ border."""
    q, curv, pt, mixed = _kernel(s)
    gd = w.n * q
    gd -= w.a
    gd *= 0.5  # ∂f/∂(θᵢ − θⱼ) per row
    g = problem.by_i(gd) - problem.by_j(gd) + ridge * s.theta
    edge = w.n * curv  # ∂²f/∂(θᵢ − θⱼ)² per row, ≥ 0
    diag = problem.by_i(edge) + problem.by_j(edge) + ridge
    if not w.ties:
        return g, edge, diag, None, None, None
    if pt is None:  # ν = 0 exactly (underflow): no tie is possible
        pt = mixed = np.zeros_like(q)
    npt = w.n * pt
    g_lam = -(w.t - float(npt.sum())) + ridge * s.lam
    hdl = w.n * mixed  # ∂²f/∂(θᵢ − θⱼ)∂λ per row
    border = problem.by_i(hdl) - problem.by_j(hdl)
    h_ll = float(npt.sum()) - _dot(npt, pt) + ridge
    return g, edge, diag, g_lam, border, h_ll


def _hessian_product(problem: _Problem, edge: np.ndarray, diag: np.ndarray,
                     border: np.ndarray | None, h_ll: float | None):
    problem.upper.data[:] = edge
    upper, lower, p = problem.upper, problem.upper.T, problem.p

    def product(v: np.ndarray) -> np.ndarray:
        vt = v[:p]
        out = diag * vt - upper @ vt - lower @ vt
        if border is None:
            return out
        return np.append(out + border * v[p], _dot(border, vt) + h_ll * v[p])

    return product


def _conjugate_gradients(product, rhs: np.ndarray, precondition: np.ndarray, project,
                         rtol: float, max_iter: int) -> np.ndarray:
    """Preconditioned CG on the subspace ``project`` maps onto (each group's mean removed):
    the Hessian maps that subspace to itself, and there it is well conditioned even when the
    ridge is tiny."""
    x = np.zeros_like(rhs)
    res = project(rhs)
    target = rtol * _norm(res)
    if target == 0.0:
        return x
    zz = project(res / precondition)
    d = zz.copy()
    rz = _dot(res, zz)
    for _ in range(max_iter):
        hd = product(d)
        curvature = _dot(d, hd)
        if curvature <= 0.0:
            break
        step = rz / curvature
        x += step * d
        res -= step * hd
        if _norm(res) <= target:
            break
        zz = project(res / precondition)
        rz_new = _dot(res, zz)
        d = zz + (rz_new / rz) * d
        rz = rz_new
    return x


def _newton(problem: _Problem, w: _Weights, theta: np.ndarray, lam: float, *, ridge: float,
            tol: float, max_iter: int, start: _State | None = None, evaluate_last: bool = True
            ) -> tuple[np.ndarray, float, float, int, bool]:
    """Damped Newton from (θ, λ) (or from ``start``, a state already computed there); returns
    θ, λ, the log-likelihood (NaN when ``evaluate_last`` is off and the last step was not
    evaluated), the steps taken and whether it converged."""
    p = problem.p
    s = start or _State(problem, w, problem.centre(theta), lam, ridge)
    if len(problem.i) == 0:
        return s.theta, s.lam, s.ll, 0, True
    # Stop when the Newton decrement says f is within tol·(judgments) of its minimum.
    eps = tol * max(1.0, float(w.n.sum()))
    g0 = None
    project = problem.centre if not w.ties else problem.centre_with_lam
    for it in range(1, max_iter + 1):
        g, edge, diag, g_lam, border, h_ll = _derivatives(problem, w, s, ridge)
        grad = g if g_lam is None else np.append(g, g_lam)
        norm_g = _norm(problem.centre(g)) + abs(g_lam or 0.0)
        g0 = g0 or max(norm_g, 1e-300)
        precondition = np.where(diag > 0, diag, 1.0)
        if border is not None:
            precondition = np.append(precondition, h_ll if h_ll > 0 else 1.0)
        # Inexact Newton: solve loosely far from the optimum, tightly near it.
        rtol = min(0.1, norm_g / g0, max(norm_g, 1e-12))
        step = _conjugate_gradients(_hessian_product(problem, edge, diag, border, h_ll),
                                    -grad, precondition, project, max(rtol, 1e-12),
                                    max_iter=max(50, min(2 * (p + 1), 1000)))
        d_theta, d_lam = step[:p], (step[p] if border is not None else 0.0)
        slope = _dot(grad, step)  # −(Newton decrement)² < 0
        if -slope <= 2 * eps:
            # within tolerance: the full step is as good as Newton gets; take it and stop
            theta, lam = s.theta + d_theta, s.lam + d_lam
            if not evaluate_last:
                return theta, lam, float("nan"), it, True
            return theta, lam, _State(problem, w, theta, lam, ridge).ll, it, True
        t = 1.0
        for _ in range(40):
            with np.errstate(over="ignore", invalid="ignore"):
                trial = _State(problem, w, s.theta + t * d_theta, s.lam + t * d_lam, ridge)
            if np.isfinite(trial.f) and trial.f <= s.f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            # no descent along the step (rounding): the last iterate
            return s.theta, s.lam, s.ll, it, False
        s = trial
    return s.theta, s.lam, s.ll, max_iter, False


def _initial_theta(problem: _Problem, counts: np.ndarray) -> np.ndarray:
    """Each player's log-odds of winning a decisive judgment (one win and one loss added):
    the strength against an average opponent, which Newton then corrects in a few steps
    (from 0 it needs two or three more on a wide spread of strengths)."""
    won = problem.by_i(counts[:, I_WON]) + problem.by_j(counts[:, J_WON])
    lost = problem.by_i(counts[:, J_WON]) + problem.by_j(counts[:, I_WON])
    return problem.centre(np.log1p(won) - np.log1p(lost))


def _initial_lam(counts: np.ndarray) -> float:
    """log ν from the share of ties, as if every pair were evenly matched: τ = ν / (2 + ν)."""
    total = float(counts.sum())
    tau = (float(counts[:, TIE].sum()) + 0.5) / (total + 1.0)
    return float(np.log(2 * tau / (1 - tau)))


def fit_comparisons(data: Comparisons, *, ties: bool = True, ridge: float = RIDGE,
                    tol: float = 1e-10, max_iter: int = 100,
                    init: np.ndarray | None = None) -> Fit:
    """Fit Davidson's model (``ties=True``; with no ties in the data it is the plain model
    and ν = 0) or the plain Bradley–Terry model on the decisive judgments (``ties=False``)."""
    if not (ridge >= 0 and np.isfinite(ridge)):
        raise ValueError(f"ridge: expected a finite number >= 0, got {ridge}")
    problem = _Problem(data)
    return _fit(problem, data, data.counts, ties=ties, ridge=ridge, tol=tol,
                max_iter=max_iter, theta=init, lam=None)


def _fit(problem: _Problem, data: Comparisons, counts: np.ndarray, *, ties: bool,
         ridge: float, tol: float, max_iter: int, theta: np.ndarray | None,
         lam: float | None) -> Fit:
    w = _Weights(counts, ties)
    theta = (_initial_theta(problem, counts) if theta is None
             else np.asarray(theta, np.float64))
    lam = (_initial_lam(counts) if lam is None or not np.isfinite(lam) else lam) if w.ties \
        else 0.0
    theta, lam, ll, iterations, converged = _newton(problem, w, theta, lam, ridge=ridge,
                                                    tol=tol, max_iter=max_iter)
    return Fit(strengths=problem.centre(theta), nu=float(np.exp(lam)) if w.ties else 0.0,
               loglik=ll, n=data.n_judgments if ties else data.n_decisive,
               iterations=iterations, converged=converged,
               model="davidson" if ties else "plain", ridge=ridge, data=data)


def fit(winners: object, losers: object, tie_a: object = None, tie_b: object = None, *,
        weights: object = None, tie_weights: object = None, clusters: object = None,
        tie_clusters: object = None, n_players: int | None = None, ties: bool = True,
        ridge: float = RIDGE, tol: float = 1e-10, max_iter: int = 100) -> Fit:
    """Fit from index arrays (see ``comparisons`` for the arguments, ``fit_comparisons`` for
    the model)."""
    data = comparisons(winners, losers, tie_a, tie_b, weights=weights, tie_weights=tie_weights,
                       clusters=clusters, tie_clusters=tie_clusters, n_players=n_players)
    return fit_comparisons(data, ties=ties, ridge=ridge, tol=tol, max_iter=max_iter)


def log_likelihood(data: Comparisons, strengths: np.ndarray, nu: float | None = None) -> float:
    """Total weighted log-likelihood of ``strengths``: the plain model over the decisive
    judgments when ``nu`` is None, Davidson's with this ν over all of them otherwise (−inf if
    ν = 0 and there are ties)."""
    theta = np.asarray(strengths, dtype=np.float64)
    if theta.shape != (data.n_players,):
        raise ValueError(f"strengths: expected shape ({data.n_players},), got {theta.shape}")
    if nu is None:
        return _State(data, _Weights(data.counts, False), theta, 0.0, 0.0).ll
    if not nu >= 0:
        raise ValueError(f"nu: expected a number >= 0, got {nu}")
    if nu == 0:
        return -np.inf if data.counts[:, TIE].sum() > 0 else log_likelihood(data, theta)
    return _State(data, _Weights(data.counts, True, keep_nu=True), theta, float(np.log(nu)),
                  0.0).ll


# --- intervals -------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Intervals:
    """Two-sided intervals at ``level`` for each log-strength and for ν."""

    lo: np.ndarray  # (P,)
    hi: np.ndarray  # (P,)
    nu_lo: float
    nu_hi: float
    level: float
    method: str  # "sandwich" or "bootstrap"
    rounds: int = 0


def _at_optimum(fitted: Fit) -> tuple[_Problem, _Weights, _State]:
    problem = _Problem(fitted.data)
    w = _Weights(fitted.data.counts, fitted.model == "davidson" and fitted.nu > 0)
    lam = float(np.log(fitted.nu)) if w.ties else 0.0
    return problem, w, _State(problem, w, fitted.strengths, lam, fitted.ridge)


def sandwich(fitted: Fit, *, level: float = 0.95, dense_limit: int = DENSE_LIMIT) -> Intervals:
    """Normal intervals from the robust covariance H⁻¹·B·H⁻¹ (scores summed per cluster when
    the data has clusters)."""
    data = fitted.data
    problem, w, s = _at_optimum(fitted)
    p, with_lam = data.n_players, w.ties
    g, edge, diag, _, border, h_ll = _derivatives(problem, w, s, fitted.ridge)
    # Each judgment's score: ∂ log-likelihood / ∂(θᵢ − θⱼ) and / ∂λ, by its outcome.
    q, _, pt, _ = _kernel(s)
    row, outcome = data.cell // 3, data.cell % 3
    keep = outcome != TIE if not with_lam else np.ones(len(row), dtype=bool)
    row, outcome, wk = row[keep], outcome[keep], data.weight[keep]
    sd = np.where(outcome == I_WON, 0.5, np.where(outcome == J_WON, -0.5, 0.0)) - 0.5 * q[row]
    cl = (data.cluster[keep] if data.cluster is not None
          else np.arange(len(data.cell))[keep])
    cols = [data.i[row], data.j[row]]
    vals = [wk * sd, -wk * sd]
    if with_lam:
        cols.append(np.full(len(row), p))
        vals.append(wk * ((outcome == TIE) - pt[row]))
    m = p + (1 if with_lam else 0)
    scores = sparse.csr_matrix((np.concatenate(vals), (np.tile(cl, len(cols)),
                                                       np.concatenate(cols))),
                               shape=(max(data.n_clusters, 1), m))
    if m <= dense_limit:
        hess = np.zeros((m, m))
        hess[data.i, data.j] -= edge
        hess[data.j, data.i] -= edge
        hess[np.arange(p), np.arange(p)] += diag
        if with_lam:
            hess[:p, p] = hess[p, :p] = border
            hess[p, p] = h_ll
        inv = np.linalg.inv(hess) if m else hess
        meat = (scores.T @ scores).toarray()
        var = np.sum((inv @ meat) * inv, axis=1)  # diag(H⁻¹ B H⁻¹), H⁻¹ symmetric
    else:
        meat_diag = np.asarray(scores.multiply(scores).sum(axis=0)).reshape(-1)
        h_diag = np.append(diag, h_ll) if with_lam else diag
        var = meat_diag / h_diag ** 2
    se = np.sqrt(np.clip(var, 0.0, None))
    zq = float(norm.ppf(0.5 + level / 2))
    lo, hi = fitted.strengths - zq * se[:p], fitted.strengths + zq * se[:p]
    nu_lo = nu_hi = fitted.nu
    if with_lam:
        lam = np.log(fitted.nu)
        nu_lo, nu_hi = float(np.exp(lam - zq * se[p])), float(np.exp(lam + zq * se[p]))
    return Intervals(lo=lo, hi=hi, nu_lo=nu_lo, nu_hi=nu_hi, level=level, method="sandwich")


def bootstrap(fitted: Fit, *, rounds: int = 100, seed: int = 0, level: float = 0.95,
              tol: float = 1e-6) -> Intervals:
    """Percentile intervals over ``rounds`` refits on data resampled with replacement
    (judgments, or clusters when the data has them), each refit started at ``fitted``.
    A round stops at a looser ``tol`` than a fit: its error is then a few thousandths of a
    log-strength, far inside the spread between rounds."""
    if rounds < 1:
        raise ValueError(f"rounds: expected >= 1, got {rounds}")
    data = fitted.data
    problem = _Problem(data)
    rng = np.random.default_rng(seed)
    ties = fitted.model == "davidson" and fitted.nu > 0
    lam0 = float(np.log(fitted.nu)) if ties else 0.0
    # Every round starts at the full fit: the per-row probabilities there are computed once.
    base = _State(problem, _Weights(data.counts, ties), fitted.strengths, lam0, fitted.ridge)
    _kernel(base)
    thetas = np.empty((rounds, data.n_players))
    nus = np.zeros(rounds)
    size = 3 * len(data.i)
    for k in range(rounds):
        times = np.bincount(rng.integers(0, max(data.n_clusters, 1), data.n_clusters),
                            minlength=data.n_clusters).astype(np.float64)
        if data.cluster is not None:
            times = times[data.cluster]
        counts = np.bincount(data.cell, data.weight * times, minlength=size).reshape(-1, 3)
        w = _Weights(counts, ties, keep_nu=ties)
        theta, lam, _, _, _ = _newton(problem, w, fitted.strengths, lam0, ridge=fitted.ridge,
                                      tol=tol, max_iter=50, start=base.reweighed(w, fitted.ridge),
                                      evaluate_last=False)
        thetas[k] = problem.centre(theta)
        nus[k] = np.exp(lam) if ties else 0.0
    tails = [50 * (1 - level), 50 * (1 + level)]
    lo, hi = np.percentile(thetas, tails, axis=0)
    nu_lo, nu_hi = np.percentile(nus, tails)
    return Intervals(lo=lo, hi=hi, nu_lo=float(nu_lo), nu_hi=float(nu_hi), level=level,
                     method="bootstrap", rounds=rounds)


# --- summaries and simulation ----------------------------------------------------------------

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


def simulate(strengths: np.ndarray, n: int, *, nu: float = 0.0,
             rng: np.random.Generator | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` judgments between uniformly drawn pairs of distinct players under Davidson's
    model: (winners, losers, tie_a, tie_b)."""
    rng = rng or np.random.default_rng()
    theta = np.asarray(strengths, dtype=np.float64)
    p = len(theta)
    if p < 2:
        raise ValueError("simulate: needs at least two players")
    a = rng.integers(0, p, n)
    b = (a + rng.integers(1, p, n)) % p  # never a itself
    pi_a, pi_b = np.exp(theta[a] / 2 - theta[b] / 2), np.exp(theta[b] / 2 - theta[a] / 2)
    total = pi_a + pi_b + nu
    draw = rng.random(n) * total
    a_won, b_won = draw < pi_a, (draw >= pi_a) & (draw < pi_a + pi_b)
    tie = ~(a_won | b_won)
    winners = np.where(a_won, a, b)[~tie]
    losers = np.where(a_won, b, a)[~tie]
    return winners, losers, a[tie], b[tie]
