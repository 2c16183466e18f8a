"""Evaluation metrics of listener sequences (pure NumPy).

Notation: X is a ground-truth listener sequence (T, D), X^ a prediction (T, D), S the speaker
(T, D_s), and Y^_1 .. Y^_K the K predictions for one speaker. The formulas follow the evaluation
code of the listener-generation literature (Learning to Listen, CVPR 2022, and its successors for
L2 / FD / P-FD / variance / SI-diversity; the REACT challenge, 2023-2024, for FRDiv / FRVar /
FRSyn). Each function says which.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FD_EPS = 1e-6  # added to covariance diagonals: a short window makes Sigma singular


def l2(pred: np.ndarray, gt: np.ndarray, dims: np.ndarray | None = None) -> float:
    """Mean squared error: mean over t, d of (X^_td - X_td)^2, on the given dimensions.

    Reported separately for expression and pose dimensions (Learning to Listen).
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if dims is not None:
        pred, gt = pred[..., dims], gt[..., dims]
    return float(((pred - gt) ** 2).mean())


def _gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    mu = x.mean(0)
    sigma = np.cov(x, rowvar=False, bias=False) if len(x) > 1 else np.zeros((x.shape[1],) * 2)
    return mu, np.atleast_2d(sigma)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = FD_EPS) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with S_i = sigma_i + eps I.

    Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the inner matrix is symmetric PSD, so
    both roots come from an eigendecomposition (no SciPy, no complex parts to discard).
    """
    eye = np.eye(len(mu1))
    s1, s2 = sigma1 + eps * eye, sigma2 + eps * eye
    r1 = _sqrtm_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * cross)


def fd(pred: np.ndarray, gt: np.ndarray, dims: np.ndarray | None = None, *,
       eps: float = FD_EPS) -> float:
    """Fréchet distance between Gaussian fits of the frames of one prediction and its ground truth.

    FD = ||mu^ - mu||^2 + Tr(S^ + S - 2 (S^ S)^(1/2)), mean and (unbiased) covariance over time
    of each sequence; computed per sequence and then averaged by the caller (L2L-family code).
    """
    if dims is not None:
        pred, gt = np.asarray(pred)[..., dims], np.asarray(gt)[..., dims]
    return frechet_distance(*_gaussian(pred), *_gaussian(gt), eps=eps)


def paired_fd(pred: np.ndarray, gt: np.ndarray, speaker: np.ndarray, *,
              eps: float = FD_EPS) -> float:
    """P-FD: FD over concatenated frames [S_t ; X^_t] vs [S_t ; X_t]: synchrony with the speaker."""
    s = np.asarray(speaker, np.float64)
    return fd(np.concatenate([s, pred], axis=-1), np.concatenate([s, gt], axis=-1), eps=eps)


def variance(pred: np.ndarray) -> float:
    """Mean over d of Var_t(X^_d) (population variance); compare with the ground truth's."""
    return float(np.asarray(pred, np.float64).var(axis=-2).mean())


# --- SI-diversity ----------------------------------------------------------------------------


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, iters: int = 50) -> np.ndarray:
    """(k, D) centroids by Lloyd's algorithm from a k-means++ start (deterministic per seed)."""
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    k = min(k, len(np.unique(x, axis=0)))
    centers = [x[rng.integers(len(x))]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        centers.append(x[rng.choice(len(x), p=d2 / d2.sum())])
        d2 = np.minimum(d2, ((x - centers[-1]) ** 2).sum(1))
    c = np.array(centers)
    for _ in range(iters):
        labels = assign(x, c)
        new = np.array([x[labels == j].mean(0) if (labels == j).any() else c[j]
                        for j in range(len(c))])
        if np.allclose(new, c):
            break
        c = new
    return c


def assign(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(N,) index of the nearest centroid of each row of x (N, D)."""
    x = np.asarray(x, np.float64)
    d2 = (x**2).sum(1)[:, None] - 2 * x @ centers.T + (centers**2).sum(1)[None, :]
    return d2.argmin(1)


def entropy_bits(labels: np.ndarray, k: int) -> float:
    """-sum_j p_j log2 p_j of the label histogram (empty clusters contribute 0)."""
    p = np.bincount(np.asarray(labels), minlength=k) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def si_diversity(pred_frames: np.ndarray, centers: np.ndarray) -> float:
    """SI-diversity: entropy (bits) of the k-means cluster histogram of predicted frames.

    The clusters are fitted on ground-truth frames (``kmeans``; k = 40 for expression, 20 for
    pose in Learning to Listen); predicted frames (N, D) are assigned to the nearest centroid.
    Higher means the predictions visit more of the ground truth's modes.
    """
    return entropy_bits(assign(np.asarray(pred_frames).reshape(-1, centers.shape[1]), centers),
                        len(centers))


# --- REACT: diversity and synchrony of K responses -------------------------------------------


def frdiv(candidates: Sequence[np.ndarray]) -> float:
    """FRDiv of one speaker: sum over k != k' of ||Y^_k - Y^_k'||^2 / (K (K - 1) T D).

    ``candidates`` (K, T, D); average over speakers is left to the caller (REACT 2023/2024).
    """
    y = np.asarray(candidates, np.float64).reshape(len(candidates), -1)  # (K, T * D)
    k, n = y.shape
    if k < 2:
        return 0.0
    dist = sum(((y - y[j]) ** 2).sum() for j in range(k))  # over all ordered pairs; exact 0
    return float(dist / (k * (k - 1) * n))  # for identical samples, unlike the Gram-matrix form


def frvar(candidates: Sequence[np.ndarray]) -> float:
    """FRVar: mean over samples and dimensions of Var_t(Y^) (REACT's FRVar, population variance)."""
    return float(np.asarray(candidates, np.float64).var(axis=-2).mean())


def tlcc_lag(pred: np.ndarray, speaker: np.ndarray, max_lag: int) -> int:
    """Lag (frames) of peak time-lagged cross-correlation between listener and speaker.

    For each lag l in [-max_lag, max_lag], r(l) = mean over dimensions of the Pearson correlation
    of X^_{t+l} with S_t over the frames where both exist (dimensions constant over that overlap
    are skipped); positive l means the listener follows the speaker. Returns the first
    argmax_l r(l) (REACT's TLCC; FRSyn averages |lag|). All lags at once: overlap sums from
    cumulative sums, the cross products from one FFT per dimension.
    """
    x = np.asarray(pred, np.float64)
    s = np.asarray(speaker, np.float64)
    x, s = x - x.mean(0), s - s.mean(0)  # (T, D); centring keeps the sums well conditioned
    t = len(x)
    lags = np.arange(-max_lag, max_lag + 1)  # (L,)
    lags = lags[t - np.abs(lags) >= 3]
    n = 1 << int(np.ceil(np.log2(2 * t)))
    cross = np.fft.irfft(np.fft.rfft(x, n, axis=0) * np.conj(np.fft.rfft(s, n, axis=0)), n,
                         axis=0)  # (n, D): cross[l] = sum_u x[u + l] s[u], negative l wrap
    sab = cross[lags % n]  # (L, D)

    def csum(z: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((1, z.shape[1])), np.cumsum(z, axis=0)])  # (T + 1, D)

    cx, cxx, cs, css = csum(x), csum(x * x), csum(s), csum(s * s)
    pos = np.maximum(lags, 0)[:, None]  # overlap: x[a0:a1] with s[b0:b1]
    neg = np.maximum(-lags, 0)[:, None]
    a0, a1 = pos, t - neg
    b0, b1 = neg, t - pos
    m = (t - np.abs(lags))[:, None].astype(np.float64)  # (L, 1) overlap length
    sa = cx[a1[:, 0]] - cx[a0[:, 0]]  # (L, D)
    saa = cxx[a1[:, 0]] - cxx[a0[:, 0]]
    sb = cs[b1[:, 0]] - cs[b0[:, 0]]
    sbb = css[b1[:, 0]] - css[b0[:, 0]]
    cov = sab - sa * sb / m
    var = np.clip(saa - sa * sa / m, 0.0, None) * np.clip(sbb - sb * sb / m, 0.0, None)
    ok = var > 1e-18 * m * m
    r = np.where(ok, cov / np.sqrt(np.where(ok, var, 1.0)), 0.0)
    counts = ok.sum(1)
    mean_r = np.where(counts > 0, r.sum(1) / np.maximum(counts, 1), -np.inf)  # (L,)
    if not np.isfinite(mean_r).any():
        return 0
    return int(lags[int(np.argmax(mean_r))])


def frsyn(preds: Sequence[np.ndarray], speakers: Sequence[np.ndarray], max_lag: int) -> float:
    """FRSyn: mean over predictions of |lag of peak cross-correlation| with their speaker (frames).

    REACT uses a +-2 s lag range (``max_lag = 2 * fps - 1``). Lower is more synchronous.
    """
    lags = [abs(tlcc_lag(p, s, max_lag)) for p, s in zip(preds, speakers, strict=True)]
    return float(np.mean(lags)) if lags else float("nan")
