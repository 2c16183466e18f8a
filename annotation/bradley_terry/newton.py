"""The penalised negative log-likelihood at a point, its derivatives, and the damped Newton
method (each step solved by preconditioned conjugate gradients) that minimises it."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from .data import I_WON, J_WON, TIE, Comparisons


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
