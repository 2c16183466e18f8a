"""Face-model layouts: the named dimensions of an expression sequence.

A layout says what each column of a ``(T, D)`` float32 expression sequence means, which columns
are expression and which are pose (head rotation, jaw), and the documented range of each column.
Rigs (``rendering.rigs``) implement layouts; corpora, policies and metrics only need the layout.

This module is pure Python + NumPy so that every app (and ``policy/ml``) may import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Group = Literal["expression", "head", "jaw"]


class UnknownLayoutError(KeyError):
    """Raised when a layout name is not registered."""


@dataclass(frozen=True)
class Dim:
    name: str
    group: Group
    low: float  # documented lower bound; values below are clipped by renderers (and recorded)
    high: float  # documented upper bound
    description: str = ""


@dataclass(frozen=True)
class FaceModelLayout:
    name: str
    description: str
    dims: tuple[Dim, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [d.name for d in self.dims]
        if len(set(names)) != len(names):
            raise ValueError(f"layout {self.name!r} has duplicate dimension names")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})

    @property
    def width(self) -> int:
        return len(self.dims)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"layout {self.name!r} has no dimension {name!r}") from None

    def indices(self, *groups: Group) -> np.ndarray:
        return np.array([i for i, d in enumerate(self.dims) if d.group in groups], dtype=np.int64)

    @property
    def expression_indices(self) -> np.ndarray:
        return self.indices("expression")

    @property
    def pose_indices(self) -> np.ndarray:
        return self.indices("head", "jaw")

    @property
    def low(self) -> np.ndarray:
        return np.array([d.low for d in self.dims], dtype=np.float32)

    @property
    def high(self) -> np.ndarray:
        return np.array([d.high for d in self.dims], dtype=np.float32)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "width": self.width,
            "dims": [
                {"name": d.name, "group": d.group, "low": d.low, "high": d.high} for d in self.dims
            ],
        }


_REGISTRY: dict[str, FaceModelLayout] = {}


def register_layout(layout: FaceModelLayout) -> FaceModelLayout:
    if layout.name in _REGISTRY and _REGISTRY[layout.name] != layout:
        raise ValueError(f"a different layout named {layout.name!r} is already registered")
    _REGISTRY[layout.name] = layout
    return layout


def get_layout(name: str) -> FaceModelLayout:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownLayoutError(f"unknown face model layout {name!r} (known: {known})") from None


def layout_names() -> list[str]:
    return sorted(_REGISTRY)


# --- builtin: the generated identity-neutral face -------------------------------------------
# Expression units are activations in [0, 1] (1 = full strength, as on the rig's stills sheet).
# Head rotation is in radians (pitch: nod down is positive), jaw opening in radians.
_BUILTIN_UNITS: tuple[tuple[str, str], ...] = (
    ("brow_inner_raise", "inner brows up (AU1)"),
    ("brow_outer_raise", "outer brows up (AU2)"),
    ("brow_lower", "brows down and together (AU4)"),
    ("eye_blink", "eyelids closed (AU45)"),
    ("eye_widen", "upper lids raised (AU5)"),
    ("cheek_raise", "cheeks up, eyes narrowed (AU6)"),
    ("nose_wrinkle", "nose wrinkled (AU9)"),
    ("upper_lip_raise", "upper lip up (AU10)"),
    ("smile_left", "left lip corner up and back (AU12, left)"),
    ("smile_right", "right lip corner up and back (AU12, right)"),
    ("mouth_corner_depress", "lip corners down (AU15)"),
    ("lip_stretch", "lips stretched sideways (AU20)"),
    ("lip_press", "lips pressed together (AU24)"),
    ("lip_pucker", "lips pushed forward (AU18)"),
)

BUILTIN = register_layout(
    FaceModelLayout(
        name="builtin",
        description=(
            "The generated identity-neutral head: 14 expression units in [0, 1], "
            "3-DoF head rotation and jaw opening in radians."
        ),
        dims=tuple(Dim(n, "expression", 0.0, 1.0, d) for n, d in _BUILTIN_UNITS)
        + (
            Dim("head_pitch", "head", -0.6, 0.6, "nod: positive tilts the head down"),
            Dim("head_yaw", "head", -0.8, 0.8, "turn: positive to the face's left"),
            Dim("head_roll", "head", -0.5, 0.5, "tilt: positive to the face's left shoulder"),
            Dim("jaw_open", "jaw", 0.0, 0.6, "jaw rotation opening the mouth"),
        ),
    )
)

# --- flame56: FLAME via DECA / EMOCA, the L2L and RealTalk benchmark layout ------------------
# 50 expression coefficients (roughly unit variance), then axis-angle head rotation (3) and jaw (3).
FLAME56 = register_layout(
    FaceModelLayout(
        name="flame56",
        description=(
            "FLAME: 50 expression coefficients, 3 head rotation + 3 jaw (axis-angle, radians); "
            "the 56-d layout of the Learning-to-Listen and RealTalk benchmarks."
        ),
        dims=tuple(Dim(f"exp_{i:02d}", "expression", -4.0, 4.0) for i in range(50))
        + tuple(Dim(f"head_r{a}", "head", -1.2, 1.2) for a in "xyz")
        + tuple(Dim(f"jaw_r{a}", "jaw", -0.6, 0.8) for a in "xyz"),
    )
)
