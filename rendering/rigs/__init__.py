"""Face rigs behind one interface (``rendering.rigs.base.Rig``): a layout and a mesh per frame.

``get_rig(name)`` takes a face-model layout name (``builtin``, ``flame56``) and returns the rig
that draws it. The FLAME rig reads ``FLAME_MODEL_PATH`` (the Django setting when Django is
configured, else the environment) unless a path is given.
"""

from __future__ import annotations

import os

from rendering.layouts import get_layout
from rendering.rigs.base import (
    ClipRecord,
    CoefficientError,
    Framing,
    Rig,
    RigError,
    sanitize_coefficients,
)

__all__ = [
    "ClipRecord",
    "CoefficientError",
    "Framing",
    "Rig",
    "RigError",
    "get_rig",
    "rig_names",
    "sanitize_coefficients",
]


def rig_names() -> list[str]:
    return ["builtin", "flame56"]


def _flame_path() -> str:
    try:
        from django.conf import settings

        if settings.configured:
            return getattr(settings, "FLAME_MODEL_PATH", "") or ""
    except ImportError:  # pragma: no cover - Django is always installed in this project
        pass
    return os.environ.get("FLAME_MODEL_PATH", "")


def get_rig(name: str, *, flame_path: str | None = None) -> Rig:
    """The rig for a face-model layout name. Raises ``RigError`` for unknown names and for a
    missing or malformed FLAME file."""
    if name == "builtin":
        from rendering.rigs.builtin import builtin_rig

        return builtin_rig()
    if name == "flame56":
        from rendering.rigs.flame import flame_rig

        path = flame_path or _flame_path()
        if not path:
            raise RigError("the flame56 face model needs a FLAME model file: set FLAME_MODEL_PATH")
        return flame_rig(path)
    try:
        get_layout(name)
    except KeyError:
        raise RigError(f"unknown face model {name!r} (known: {', '.join(rig_names())})") from None
    raise RigError(f"no rig draws the face model {name!r} (rigs: {', '.join(rig_names())})")
