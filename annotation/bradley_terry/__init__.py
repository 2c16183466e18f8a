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

from .data import Comparisons, comparisons, win_rates
from .fitting import Fit, fit, fit_comparisons, log_likelihood
from .intervals import Intervals, bootstrap, sandwich
from .simulation import simulate

__all__ = [
    "Comparisons",
    "Fit",
    "Intervals",
    "bootstrap",
    "comparisons",
    "fit",
    "fit_comparisons",
    "log_likelihood",
    "sandwich",
    "simulate",
    "win_rates",
]
