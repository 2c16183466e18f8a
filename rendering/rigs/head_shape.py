"""The builtin head's shape: a signed distance function, rays on a face-weighted grid, and the
small geometry helpers the rig is built from. All lengths in centimetres; the face looks down
+z, +x is the face's left, y is up, 0 at eye level. See ``rendering.rigs.builtin``.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------------
# Shape: the signed distance function
# ---------------------------------------------------------------------------------------------

EYE_X = 3.2  # eye centres at (±EYE_X, EYE_Y, EYE_Z)
EYE_Y = 0.05
EYE_Z = 6.3
LID_RADIUS = 1.52  # closed-lid surface around the eye centre
EYEBALL_RADII = (1.5, 1.38, 1.38)  # wider than tall: fills the eye corners
EYE_INNER_X = 1.95  # inner and outer eye corners (|x|)
EYE_OUTER_X = 4.4
MOUTH_Y = -7.25  # where the lips meet at the midline
MOUTH_CORNER_X = 2.45
THETA_GAIN = 3.0  # how much denser the grid is on the face than at the back of the head
PHI_GAIN = 2.6  # … and between chin and brow than on the crown and neck
RAY_CENTER = np.array([0.0, -1.5, -0.5])  # rays to the upper head start here …
RAY_CENTER_LOW = np.array([0.0, -9.5, -2.0])  # … and slide down to here for the jaw and neck
# The jaw turns about an axis parallel to x through the middle of the ramus (where the combined
# rotation and forward glide of a real jaw has its centre) and glides forward as it opens.
JAW_PIVOT = np.array([0.0, -4.2, 0.0])
JAW_GLIDE = 2.5  # cm forward per radian of opening
HEAD_PIVOT = np.array([0.0, -5.0, -1.8])  # roughly the top of the spine


def ellipsoid(p: np.ndarray, c, r) -> np.ndarray:
    """Approximate signed distance to an ellipsoid (exact on the axes, good enough to blend)."""
    q = (p - np.asarray(c)) / np.asarray(r)
    k0 = np.linalg.norm(q, axis=-1)
    k1 = np.linalg.norm(q / np.asarray(r), axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def round_cone(p: np.ndarray, a, b, ra: float, rb: float) -> np.ndarray:
    """Distance to a capsule whose radius goes from ``ra`` at ``a`` to ``rb`` at ``b``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1) - (ra + (rb - ra) * t)


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    return -smin(-a, -b, k)


def head_sdf(p: np.ndarray) -> np.ndarray:
    """Signed distance (cm, negative inside) of the closed-eyed, closed-mouthed head at ``p``."""
    d = ellipsoid(p, (0, 2.0, -1.2), (7.6, 9.4, 9.6))  # cranium
    d = smin(d, ellipsoid(p, (0, -3.0, 2.6), (6.6, 5.6, 6.3)), 2.0)  # mid-face
    d = smin(d, ellipsoid(p, (0, -7.6, 2.6), (5.4, 4.6, 6.2)), 2.0)  # jaw
    d = smin(d, ellipsoid(p, (0, -10.35, 6.6), (2.4, 1.8, 2.0)), 1.6)  # chin
    d = smin(d, ellipsoid(p, (0, -24.0, -2.0), (5.0, 17.0, 5.4)), 2.5)  # neck
    d = smin(d, ellipsoid(p, (0, 2.4, 6.6), (5.7, 1.7, 2.3)), 1.0)  # brow ridge
    for s in (-1.0, 1.0):
        d = smin(d, ellipsoid(p, (s * 3.6, -2.9, 6.0), (2.5, 2.1, 2.5)), 1.2)  # cheek
        d = smin(d, ellipsoid(p, (s * 7.15, -0.9, -1.3), (1.1, 3.0, 1.9)), 0.6)  # ear
    d = smin(d, ellipsoid(p, (0, -6.3, 6.4), (3.4, 2.6, 2.9)), 1.8)  # muzzle
    # Nose: bridge to tip, tip, wings.
    d = smin(d, round_cone(p, (0, 0.6, 8.35), (0, -3.5, 10.55), 0.62, 0.95), 0.7)
    d = smin(d, ellipsoid(p, (0, -3.65, 10.65), (1.05, 1.0, 1.05)), 0.45)
    for s in (-1.0, 1.0):
        d = smin(d, ellipsoid(p, (s * 1.2, -4.1, 9.25), (0.72, 0.62, 0.75)), 0.7)
    # Eye sockets, then the lids over the eyeballs.
    for s in (-1.0, 1.0):
        d = smax(d, -ellipsoid(p, (s * 3.2, 0.35, 8.65), (2.15, 1.55, 1.75)), 0.8)
    for s in (-1.0, 1.0):
        d = smin(d, np.linalg.norm(p - (s * EYE_X, EYE_Y, EYE_Z), axis=-1) - LID_RADIUS, 0.45)
    # Sculpted brows: a low ridge over each eye, a little lower at the outer end.
    for s in (-1.0, 1.0):
        d = smin(d, round_cone(p, (s * 1.6, 2.35, 8.45), (s * 4.9, 1.9, 7.3), 0.42, 0.3), 0.5)
    # Lips.
    d = smin(d, ellipsoid(p, (0, -6.6, 8.75), (2.45, 0.72, 0.95)), 0.35)
    d = smin(d, ellipsoid(p, (0, -7.95, 8.55), (2.15, 0.78, 0.95)), 0.35)
    return d


# ---------------------------------------------------------------------------------------------
# Mesh: rays on a face-weighted grid
# ---------------------------------------------------------------------------------------------


def warped(n: int, lo: float, hi: float, peak: float, width: float, gain: float,
            endpoint: bool) -> np.ndarray:
    """``n`` samples of [lo, hi] spaced inversely to a density that peaks at ``peak``."""
    fine = np.linspace(lo, hi, 4097)
    density = 1.0 + gain * np.exp(-(((fine - peak) / width) ** 2))
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
    cdf /= cdf[-1]
    u = np.linspace(0.0, 1.0, n + (0 if endpoint else 1))[: n]
    return np.interp(u, cdf, fine)


def directions(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit ray directions for azimuth ``theta`` (0 = +z, +x positive) and elevation ``phi``."""
    theta, phi = np.broadcast_arrays(theta, phi)
    cp = np.cos(phi)
    return np.stack([cp * np.sin(theta), np.sin(phi), cp * np.cos(theta)], axis=-1)


def ray_origins(dirs: np.ndarray) -> np.ndarray:
    """Where each ray starts: rays pointing down start lower, inside the jaw and neck, so the
    surface points of consecutive rows stay in order across the chin and down the neck."""
    s = smoothstep(-0.6, -0.97, dirs[:, 1])  # by the sine of the elevation
    return RAY_CENTER + s[:, None] * (RAY_CENTER_LOW - RAY_CENTER)


def cast(dirs: np.ndarray, t_max: float = 45.0, step: float = 0.2) -> np.ndarray:
    """Outermost surface point along each ray (coarse march + bisection)."""
    origin = ray_origins(dirs)
    ts = np.arange(0.2, t_max, step)
    d = head_sdf(origin[:, None, :] + dirs[:, None, :] * ts[None, :, None])  # (R, S)
    inside = d < 0
    last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)  # last sample inside
    lo, hi = ts[last], ts[np.minimum(last + 1, len(ts) - 1)]
    for _ in range(30):
        mid = (lo + hi) / 2
        m_inside = head_sdf(origin + dirs * mid[:, None]) < 0
        lo, hi = np.where(m_inside, mid, lo), np.where(m_inside, hi, mid)
    return origin + dirs * ((lo + hi) / 2)[:, None]


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def gauss(q: np.ndarray, center, sigma) -> np.ndarray:
    return np.exp(-0.5 * np.sum(((q - np.asarray(center)) / np.asarray(sigma)) ** 2, axis=-1))


def rot_x(points: np.ndarray, pivot: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate points about the x-parallel axis through ``pivot``; positive angle moves +z to −y."""
    r = points - pivot
    c, s = np.cos(angle), np.sin(angle)
    y = c * r[:, 1] - s * r[:, 2]
    z = s * r[:, 1] + c * r[:, 2]
    return np.stack([r[:, 0], y, z], axis=1) + pivot


def uv_sphere(n_lon: int, n_lat: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere with poles on ±z, faces counter-clockwise seen from outside."""
    return uv_cap(n_lon, np.linspace(0, np.pi, n_lat + 1)[1:-1], close=True)


def uv_cap(n_lon: int, rings: np.ndarray, *, close: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Part of a unit sphere around the +z pole: rings at the given angles from +z (radians);
    ``close`` adds the −z pole. Faces are counter-clockwise seen from outside."""
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    la, lo = np.meshgrid(np.asarray(rings, float), lon, indexing="ij")
    ring = np.stack([np.sin(la) * np.cos(lo), np.sin(la) * np.sin(lo), np.cos(la)], -1)
    verts = [[[0.0, 0.0, 1.0]], ring.reshape(-1, 3)]
    n_rings = len(rings)
    faces = [[0, 1 + j, 1 + (j + 1) % n_lon] for j in range(n_lon)]
    for i in range(n_rings - 1):
        for j in range(n_lon):
            a, b = 1 + i * n_lon + j, 1 + i * n_lon + (j + 1) % n_lon
            faces += [[a, a + n_lon, b + n_lon], [a, b + n_lon, b]]
    if close:
        last = 1 + n_rings * n_lon
        verts.append([[0.0, 0.0, -1.0]])
        base = 1 + (n_rings - 1) * n_lon
        faces += [[last, base + (j + 1) % n_lon, base + j] for j in range(n_lon)]
    return np.concatenate(verts), np.asarray(faces)
