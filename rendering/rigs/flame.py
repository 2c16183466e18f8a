"""The FLAME rig: a user-supplied FLAME model file, shape fixed to the mean.

Expression is linear (the 50 first expression directions, ``shapedirs[..., 300:350]``); head and
jaw act through FLAME's linear blend skinning with pose correctives (``posedirs``), exactly as in
the reference implementation, with the neck and eyes left at rest. Joints are regressed from
the expressed mesh (they move slightly with expression, as in FLAME).

The file is read with ``pickle_safe``: arrays in, no code. Every problem with it is a
``RigError`` that names the file and the key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from rendering.layouts import FLAME56, FaceModelLayout
from rendering.rigs.base import Framing, LinearBasis, Rig, RigError, rotation_matrices
from rendering.rigs.pickle_safe import load_arrays, to_array

N_SHAPE_DIRS = 300  # FLAME's shapedirs hold 300 identity directions, then the expression ones
N_EXPRESSION = 50
REQUIRED = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
MAX_FILE_BYTES = 512 * 1024**2


def _load(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise RigError(f"FLAME model file not found: {path} (set FLAME_MODEL_PATH)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise RigError(f"{path}: {size} bytes is too large for a FLAME model file")
    try:
        raw = load_arrays(path.read_bytes())
    except Exception as exc:  # refused globals, truncation, not a pickle
        raise RigError(f"{path}: cannot read the FLAME model: {exc}") from exc
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise RigError(f"{path}: missing key(s) {', '.join(missing)}")
    arrays = {}
    for key in REQUIRED:
        try:
            arr = to_array(raw[key], key=key)
        except ValueError as exc:
            raise RigError(f"{path}: {exc}") from exc
        if arr.dtype.kind not in "fiu":
            raise RigError(f"{path}: {key} is not numeric (dtype {arr.dtype})")
        if not np.isfinite(arr).all():
            raise RigError(f"{path}: {key} contains NaN or infinite values")
        arrays[key] = arr
    return arrays


def _check_shapes(path: Path, a: dict[str, np.ndarray]) -> None:
    def fail(key: str, expected: str) -> None:
        raise RigError(f"{path}: {key} has shape {a[key].shape}, expected {expected}")

    v = a["v_template"]
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 4:
        fail("v_template", "(V, 3)")
    n_v = v.shape[0]
    if a["shapedirs"].ndim != 3 or a["shapedirs"].shape[:2] != (n_v, 3):
        fail("shapedirs", f"({n_v}, 3, K)")
    if a["shapedirs"].shape[2] < N_SHAPE_DIRS + N_EXPRESSION:
        fail("shapedirs", f"({n_v}, 3, ≥{N_SHAPE_DIRS + N_EXPRESSION}): 300 identity then "
                          "expression directions")
    kt = a["kintree_table"]
    if kt.ndim != 2 or kt.shape[0] != 2:
        fail("kintree_table", "(2, J)")
    n_j = kt.shape[1]
    if n_j != 5:
        fail("kintree_table", "(2, 5): global, neck, jaw, left eye, right eye")
    if a["J_regressor"].shape != (n_j, n_v):
        fail("J_regressor", f"({n_j}, {n_v})")
    if a["weights"].shape != (n_v, n_j):
        fail("weights", f"({n_v}, {n_j})")
    n_pose = 9 * (n_j - 1)
    pd = a["posedirs"]
    if pd.shape not in ((n_v, 3, n_pose), (n_v * 3, n_pose)):
        fail("posedirs", f"({n_v}, 3, {n_pose})")
    f = a["f"]
    if f.ndim != 2 or f.shape[1] != 3 or f.size == 0:
        fail("f", "(F, 3)")
    if f.min() < 0 or f.max() >= n_v:
        raise RigError(f"{path}: f refers to vertices outside 0..{n_v - 1}")


class FlameRig(Rig):
    """FLAME in the ``flame56`` layout: 50 expression, head rotation (3), jaw (3)."""

    name = "flame56"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        a = _load(self.path)
        _check_shapes(self.path, a)
        self.layout: FaceModelLayout = FLAME56
        v = a["v_template"].astype(np.float64)
        n_v = len(v)
        self.faces = a["f"].astype(np.uint32)
        expdirs = a["shapedirs"][:, :, N_SHAPE_DIRS: N_SHAPE_DIRS + N_EXPRESSION]
        expdirs = np.ascontiguousarray(expdirs.transpose(2, 0, 1), dtype=np.float64)  # (50, V, 3)
        self._basis = LinearBasis.build(v, expdirs, self.faces)
        self._posedirs = a["posedirs"].reshape(n_v * 3, -1).T.astype(np.float32)  # (36, V*3)
        jreg = a["J_regressor"].astype(np.float64)
        self._j_rest = (jreg @ v).astype(np.float32)  # (5, 3)
        self._j_dirs = np.einsum("jv,kvc->kjc", jreg, expdirs).astype(np.float32)  # (50, 5, 3)
        self._weights = a["weights"].astype(np.float32)  # (V, 5)
        parents = a["kintree_table"][0].astype(np.int64)
        parents[0] = -1
        if any(not 0 <= p < i for i, p in enumerate(parents[1:], start=1)):
            raise RigError(f"{self.path}: kintree_table parents must precede their children")
        self._parents = parents
        self.colors = np.ones((n_v, 3), np.float32)
        self.skin = np.ones(n_v, np.float32)
        self.ao = np.ones(n_v, np.float32)
        lo, hi = v.min(axis=0), v.max(axis=0)
        size = float(max(hi[0] - lo[0], hi[1] - lo[1]))
        self.framing = Framing(center=tuple(float(c) for c in (lo + hi) / 2),
                               half_extent=0.56 * size, depth=2.0 * size)
        self._digest = hashlib.sha256(
            b"".join(np.ascontiguousarray(x).tobytes() for x in (
                self._basis.matrix, self._posedirs, self._j_rest, self._j_dirs, self._weights,
                self._parents, self.faces))
        ).hexdigest()

    def mesh_batch(self, coeffs: np.ndarray) -> np.ndarray:
        coeffs = np.asarray(coeffs, dtype=np.float32)
        b = len(coeffs)
        expr = coeffs[:, :N_EXPRESSION]
        out = self._basis.evaluate(expr)  # (B, V, 6): expressed positions and normals
        joints = self._j_rest[None] + np.einsum("bk,kjc->bjc", expr, self._j_dirs)  # (B, 5, 3)
        n_j = len(self._parents)
        pose = np.zeros((b, n_j, 3), np.float64)
        pose[:, 0] = coeffs[:, 50:53]  # global (head)
        pose[:, 2] = coeffs[:, 53:56]  # jaw; neck and eyes stay at rest
        rot = rotation_matrices(pose.reshape(-1, 3)).reshape(b, n_j, 3, 3)
        feature = (rot[:, 1:] - np.eye(3)).reshape(b, -1).astype(np.float32)  # (B, 36)
        out[..., :3] += (feature @ self._posedirs).reshape(b, -1, 3)
        # World transform of each joint, then relative to its rest position.
        world = np.zeros((b, n_j, 4, 4), np.float64)
        for j in range(n_j):
            local = np.zeros((b, 4, 4))
            local[:, :3, :3] = rot[:, j]
            p = self._parents[j]
            local[:, :3, 3] = joints[:, j] - (joints[:, p] if p >= 0 else 0.0)
            local[:, 3, 3] = 1.0
            world[:, j] = local if p < 0 else world[:, p] @ local
        rel = world.copy()
        rel[:, :, :3, 3] -= np.einsum("bjik,bjk->bji", world[:, :, :3, :3], joints)
        blend = (self._weights[None] @ rel.reshape(b, n_j, 16).astype(np.float32)).reshape(
            b, -1, 4, 4)  # (B, V, 4, 4)
        lin = blend[..., :3, :3]
        pos = np.einsum("bvij,bvj->bvi", lin, out[..., :3]) + blend[..., :3, 3]
        nrm = np.einsum("bvij,bvj->bvi", lin, out[..., 3:])
        out[..., :3] = pos
        out[..., 3:] = nrm
        return out

    def _fingerprint_parts(self) -> list[np.ndarray]:
        return [np.frombuffer(bytes.fromhex(self._digest), np.uint8),
                np.asarray(self.framing.center)]


_CACHE: dict[tuple, FlameRig] = {}


def flame_rig(path: str | Path) -> FlameRig:
    """The FLAME rig for ``path``, loaded once per process (reloaded if the file changes)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        raise RigError(f"FLAME model file not found: {p} (set FLAME_MODEL_PATH)") from None
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = FlameRig(p)
    return _CACHE[key]
