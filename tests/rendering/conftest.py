import os

# Before anything imports OpenGL: CI has no GPU.
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("LP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def rig():
    from rendering.rigs import get_rig

    return get_rig("builtin")


@pytest.fixture(scope="session")
def renderer(rig):
    """One 128² renderer for the whole session (setting up GL is the slow part)."""
    from rendering.renderer import FaceRenderer, RenderSettings

    r = FaceRenderer(rig, RenderSettings(width=128, height=128), tiles=8)
    yield r
    r.close()


def pose(layout, **values) -> np.ndarray:
    v = np.zeros(layout.width, np.float32)
    for name, value in values.items():
        v[layout.index(name)] = value
    return v


def wobble(layout, n: int = 24, seed: int = 0) -> np.ndarray:
    """A smooth in-range sequence touching every dimension."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None] / 30.0
    phase = rng.uniform(0, 2 * np.pi, layout.width)
    mid, half = (layout.low + layout.high) / 2, (layout.high - layout.low) / 2
    return (mid + 0.5 * half * np.sin(2 * np.pi * 0.7 * t + phase)).astype(np.float32)
