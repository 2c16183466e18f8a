"""The face-rig interface and the input checks every rig shares.

A rig turns an expression sequence ``(T, D)`` in its layout into meshes. The renderer's hot path
asks for positions *and* normals of a whole batch of frames at once (``mesh_batch``); rigs keep
that cheap by storing their expression blendshapes together with *normal deltas* (the change of
each vertex normal per unit of activation, see ``LinearBasis``), so a batch costs one matrix
product plus the rotations of jaw and head, never a per-frame pass over the faces.

Nothing here imports Django: the renderer and the benchmark run without it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from rendering.layouts import FaceModelLayout


class RigError(ValueError):
    """A rig could not be built or loaded (missing or malformed model file)."""


class CoefficientError(ValueError):
    """An expression sequence cannot be rendered; the message says which field and why."""


@dataclass(frozen=True)
class ClipRecord:
    """What ``sanitize_coefficients`` clipped: per dimension, how many values were outside the
    documented range and the most extreme value seen on each side."""

    n_frames: int
    dims: dict[str, dict[str, float | int]] = field(default_factory=dict)

    @property
    def clipped(self) -> bool:
        return bool(self.dims)

    @property
    def n_values(self) -> int:
        return int(sum(d["count"] for d in self.dims.values()))

    def as_dict(self) -> dict:
        return {"n_frames": self.n_frames, "n_values": self.n_values, "dims": self.dims}


def sanitize_coefficients(
    coeffs: np.ndarray, layout: FaceModelLayout, *, name: str = "coefficients"
) -> tuple[np.ndarray, ClipRecord]:
    """Check an expression sequence against a layout and clip it to the documented range.

    Refuses (``CoefficientError``) what cannot be rendered: not 2-D, zero frames, the wrong width,
    NaN or infinite values. Values outside a dimension's ``[low, high]`` are clipped and counted
    in the returned record, so a clip can say that it does not show exactly what was asked.
    """
    array = np.asarray(coeffs)
    if array.dtype.kind not in "fiu":
        raise CoefficientError(f"{name}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise CoefficientError(
            f"{name}: expected a (frames, {layout.width}) array, got shape {array.shape}"
        )
    n_frames, width = array.shape
    if n_frames == 0:
        raise CoefficientError(f"{name}: the sequence has zero frames")
    if width != layout.width:
        raise CoefficientError(
            f"{name}: face model {layout.name!r} has {layout.width} dimensions "
            f"({', '.join(layout.names[:3])}, …), the sequence has {width}"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        frame, dim = (int(i) for i in np.argwhere(~finite)[0])
        bad = int((~finite).sum())
        raise CoefficientError(
            f"{name}: {bad} value(s) are NaN or infinite, first at frame {frame}, "
            f"dimension {layout.names[dim]!r} ({array[frame, dim]})"
        )
    low, high = layout.low, layout.high
    below, above = array < low, array > high
    dims: dict[str, dict[str, float | int]] = {}
    for d in np.flatnonzero(below.any(axis=0) | above.any(axis=0)):
        column = array[:, d]
        dims[layout.names[d]] = {
            "count": int(below[:, d].sum() + above[:, d].sum()),
            "min": float(column.min()),
            "max": float(column.max()),
            "low": float(low[d]),
            "high": float(high[d]),
        }
    if dims:
        array = np.clip(array, low, high)
    return array, ClipRecord(n_frames=n_frames, dims=dims)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals of one mesh, ``(V, 3)`` → ``(V, 3)`` unit vectors (float64
    internally: this runs when a rig is built, not per frame)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    face_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # (F, 3), |n| = 2·area
    normals = np.zeros_like(v)
    for k in range(3):
        np.add.at(normals, f[:, k], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.where(length > 0, length, 1.0)


@dataclass
class LinearBasis:
    """Expression blendshapes with normal deltas, packed for one matrix product per batch.

    ``matrix`` is ``(1 + K, V * 6)``: row 0 the rest pose (positions and normals interleaved per
    vertex as ``x y z nx ny nz``), row ``1 + k`` the change per unit of expression ``k``. Normals
    blended this way are exact at each unit's zero and full strength and a close, smooth
    approximation in between and for mixtures (the shader re-normalises them).
    """

    matrix: np.ndarray  # (1 + K, V * 6) float32

    @classmethod
    def build(
        cls,
        rest: np.ndarray,  # (V, 3)
        deltas: np.ndarray,  # (K, V, 3) position change per unit of each expression dim
        faces: np.ndarray,  # (F, 3)
        *,
        step: float = 1.0,  # activation at which each normal delta is measured
    ) -> LinearBasis:
        n_rest = vertex_normals(rest, faces)
        rows = [np.concatenate([rest, n_rest], axis=1)]
        for delta in deltas:
            n_plus = vertex_normals(rest + step * delta, faces)
            n_minus = vertex_normals(rest - step * delta, faces)
            rows.append(np.concatenate([delta, (n_plus - n_minus) / (2 * step)], axis=1))
        matrix = np.stack([r.reshape(-1) for r in rows]).astype(np.float32)
        return cls(matrix=matrix)

    @property
    def n_vertices(self) -> int:
        return self.matrix.shape[1] // 6

    def evaluate(self, expression: np.ndarray) -> np.ndarray:
        """``(B, K)`` activations → ``(B, V, 6)`` positions and (unnormalised) normals."""
        b = expression.shape[0]
        weights = np.empty((b, self.matrix.shape[0]), dtype=np.float32)
        weights[:, 0] = 1.0
        weights[:, 1:] = expression
        return (weights @ self.matrix).reshape(b, -1, 6)


def rotation_matrices(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues: ``(B, 3)`` axis-angle vectors → ``(B, 3, 3)`` rotation matrices."""
    aa = np.asarray(axis_angle, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=1)  # (B,)
    safe = np.where(angle > 1e-12, angle, 1.0)
    k = aa / safe[:, None]
    kx, ky, kz = k[:, 0], k[:, 1], k[:, 2]
    zero = np.zeros_like(kx)
    cross = np.stack(
        [np.stack([zero, -kz, ky], -1), np.stack([kz, zero, -kx], -1),
         np.stack([-ky, kx, zero], -1)],
        axis=1,
    )  # (B, 3, 3)
    s, c = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    eye = np.eye(3)[None]
    r = eye + s * cross + (1 - c) * (cross @ cross)
    r[angle <= 1e-12] = np.eye(3)
    return r


def euler_head(pitch: np.ndarray, yaw: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Head rotation ``R = R_yaw · R_pitch · R_roll`` as ``(B, 3, 3)``, in the builtin layout's
    conventions (camera looks down −z at a face looking down +z; +x is the face's left):
    positive pitch nods the face down, positive yaw turns it to its left, positive roll tilts the
    top of the head to its left shoulder."""
    b = len(pitch)
    r = np.zeros((3, b, 3, 3))
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    cr, sr = np.cos(-roll), np.sin(-roll)
    one, zero = np.ones(b), np.zeros(b)
    r[0] = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1),
                     np.stack([zero, sp, cp], -1)], axis=1)  # about x: +z → −y
    r[1] = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1),
                     np.stack([-sy, zero, cy], -1)], axis=1)  # about y: +z → +x
    r[2] = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1),
                     np.stack([zero, zero, one], -1)], axis=1)  # about z: +y → +x
    return r[1] @ r[0] @ r[2]


@dataclass(frozen=True)
class Framing:
    """Where the fixed orthographic camera looks: the centre of the frame and half its height
    (the frame is square around the head at rest), in the rig's units."""

    center: tuple[float, float, float]
    half_extent: float
    depth: float  # distance from the centre to the near plane; everything within ±depth is drawn


class Rig(ABC):
    """A face model: a layout (named dims) and ``mesh(coeffs) -> vertices``."""

    name: str
    layout: FaceModelLayout
    faces: np.ndarray  # (F, 3) uint32, counter-clockwise seen from outside
    colors: np.ndarray  # (V, 3) float32 albedo; multiplied by the face colour where skin is 1
    skin: np.ndarray  # (V,) float32: 1 on skin (recoloured per clip kind), 0 on eyes, mouth
    ao: np.ndarray  # (V,) float32 baked ambient occlusion, 1 = fully open
    framing: Framing

    @property
    def n_vertices(self) -> int:
        return int(self.colors.shape[0])

    @abstractmethod
    def mesh_batch(self, coeffs: np.ndarray) -> np.ndarray:
        """``(B, D)`` float32 coefficients (already sanitised) → ``(B, V, 6)`` float32:
        positions and unnormalised normals per vertex. The renderer's hot path."""

    def mesh(self, coeffs: np.ndarray) -> np.ndarray:
        """Vertices for one frame ``(D,)`` → ``(V, 3)`` or a sequence ``(T, D)`` → ``(T, V, 3)``.
        Values outside the layout's range are clipped; NaN, inf and wrong widths are refused."""
        array = np.asarray(coeffs, dtype=np.float32)
        single = array.ndim == 1
        clean, _ = sanitize_coefficients(array[None] if single else array, self.layout)
        out = self.mesh_batch(clean)[..., :3]
        return out[0] if single else out

    def rest_vertices(self) -> np.ndarray:
        return self.mesh(np.zeros(self.layout.width, dtype=np.float32))

    @property
    def fingerprint(self) -> str:
        """A hash of everything that decides how this rig looks; part of every clip's address,
        so changing the rig's geometry can never be served from clips of the old one."""
        if not hasattr(self, "_fingerprint"):
            h = hashlib.sha256()
            h.update(self.name.encode())
            for part in self._fingerprint_parts():
                arr = np.ascontiguousarray(part)
                h.update(str(arr.dtype).encode() + str(arr.shape).encode())
                h.update(arr.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @abstractmethod
    def _fingerprint_parts(self) -> list[np.ndarray]: ...

    def regions(self) -> dict[str, np.ndarray]:
        """Named boolean vertex masks (``mouth``, ``brows``, ``eyes`` …) where the rig knows
        them; used by the snapshot tests and the stills sheet. Empty by default."""
        return {}
