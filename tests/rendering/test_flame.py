"""FLAME: a small model file of the real structure, made here; the loader admits arrays only."""

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from rendering.layouts import FLAME56
from rendering.rigs import RigError, get_rig
from rendering.rigs.flame import FlameRig, flame_rig
from rendering.rigs.pickle_safe import UnsafePickleError, load_arrays


class _FakeChumpy:
    """Pickles like chumpy.ch.Ch: module 'chumpy.ch', state = __dict__ holding 'x'."""

    def __init__(self, x):
        self.x = x
        self.dterms = ("x",)


def _pickle_with_fake_chumpy(obj, protocol):
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")
    cls = type("Ch", (_FakeChumpy,), {"__module__": "chumpy.ch"})
    ch.Ch = cls
    chumpy.ch = ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch
    try:
        wrapped = {k: cls(v) if k in ("v_template", "shapedirs", "weights") else v
                   for k, v in obj.items()}
        return pickle.dumps(wrapped, protocol=protocol)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def small_flame_model(seed: int = 0) -> dict:
    """A 'head' of 162 vertices (an icosphere) with FLAME's keys, shapes and conventions."""
    import trimesh

    rng = np.random.default_rng(seed)
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    v = np.array(sphere.vertices, dtype=np.float64)  # a plain array, not trimesh's subclass
    n = len(v)
    jaw = v[:, 1] < -0.03  # lower part hangs on the jaw joint
    weights = np.zeros((n, 5))
    weights[:, 0] = 1.0
    weights[jaw, 0], weights[jaw, 2] = 0.0, 1.0
    joints = np.array([[0, 0, 0], [0, -0.02, -0.01], [0, -0.03, -0.02], [0.03, 0.02, 0.06],
                       [-0.03, 0.02, 0.06]])
    # Each joint regressed from its nearest 3 vertices.
    jreg = np.zeros((5, n))
    for j, p in enumerate(joints):
        idx = np.argsort(np.linalg.norm(v - p, axis=1))[:3]
        jreg[j, idx] = 1 / 3
    return {
        "v_template": v,
        "f": np.array(sphere.faces, dtype=np.uint32),
        "shapedirs": rng.normal(0, 1e-3, (n, 3, 400)),
        "posedirs": rng.normal(0, 1e-4, (n, 3, 36)),
        "J_regressor": scipy.sparse.csc_matrix(jreg),
        "weights": weights,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": joints,
        "bs_style": "lbs",
    }


@pytest.fixture
def flame_file(tmp_path) -> Path:
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(_pickle_with_fake_chumpy(small_flame_model(), protocol=2))
    return path


@pytest.mark.parametrize("protocol", [0, 2])
def test_flame_rig_loads_a_file_with_sparse_and_chumpy_containers(tmp_path, protocol):
    path = tmp_path / f"model-{protocol}.pkl"
    model = small_flame_model()
    path.write_bytes(_pickle_with_fake_chumpy(model, protocol=protocol))
    rig = FlameRig(path)
    assert rig.layout is FLAME56
    assert rig.n_vertices == len(model["v_template"])
    # At zero pose and expression the mesh is the template (mean shape).
    np.testing.assert_allclose(rig.rest_vertices(), model["v_template"], atol=1e-6)


def test_flame_expression_is_linear_and_the_jaw_rotates_only_its_vertices(flame_file):
    rig = flame_rig(flame_file)
    model = small_flame_model()
    v0 = model["v_template"]
    x = np.zeros(56, np.float32)
    x[0] = 1.0
    np.testing.assert_allclose(rig.mesh(x), v0 + model["shapedirs"][:, :, 300], atol=1e-5)
    x = np.zeros(56, np.float32)
    x[53] = 0.3  # jaw about x
    moved = np.linalg.norm(rig.mesh(x) - v0, axis=1)
    jaw = v0[:, 1] < -0.03
    assert moved[jaw].min() > 1e-3
    assert moved[~jaw].max() < 1e-3  # only pose correctives there
    x = np.zeros(56, np.float32)
    x[51] = 0.5  # head about y: everything turns
    assert np.linalg.norm(rig.mesh(x) - v0, axis=1).mean() > 0.02


def test_flame_rig_renders(flame_file):
    from rendering.renderer import FaceRenderer, RenderSettings

    rig = flame_rig(flame_file)
    with FaceRenderer(rig, RenderSettings(width=64, height=64), tiles=2) as r:
        frames = r.render(np.zeros((3, 56), np.float32))
    background = np.array(RenderSettings().background) * 255
    covered = np.abs(frames[0].astype(float) - background).sum(axis=-1) > 30
    assert 0.1 < covered.mean() < 0.9


def test_get_rig_reads_flame_model_path_from_settings(settings, flame_file):
    settings.FLAME_MODEL_PATH = str(flame_file)
    assert get_rig("flame56").n_vertices == 162
    settings.FLAME_MODEL_PATH = ""
    with pytest.raises(RigError, match="set FLAME_MODEL_PATH"):
        get_rig("flame56")


# --- bad files ----------------------------------------------------------------------------------


def test_missing_flame_file(tmp_path):
    with pytest.raises(RigError, match="not found"):
        flame_rig(tmp_path / "nope.pkl")


def test_garbage_flame_file(tmp_path):
    path = tmp_path / "garbage.pkl"
    path.write_bytes(b"\x80\x02not really a pickle at all")
    with pytest.raises(RigError, match="cannot read the FLAME model"):
        flame_rig(path)


def test_flame_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    model = small_flame_model()
    model["v_template"] = Evil()
    path.write_bytes(pickle.dumps(model, protocol=2))
    with pytest.raises(RigError, match="refusing global"):
        flame_rig(path)
    assert not marker.exists()


def test_restricted_unpickler_admits_arrays_and_nothing_else():
    import datetime

    ok = load_arrays(pickle.dumps({"a": np.arange(3), "b": np.float32(2.0)}))
    assert ok["a"].tolist() == [0, 1, 2]
    with pytest.raises(UnsafePickleError, match="datetime"):
        load_arrays(pickle.dumps({"a": datetime.date(2020, 1, 1)}))
    with pytest.raises(pickle.UnpicklingError, match="dict of arrays"):
        load_arrays(pickle.dumps([1, 2, 3]))


def test_flame_file_missing_a_key(tmp_path):
    model = small_flame_model()
    del model["posedirs"]
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(model, protocol=2))
    with pytest.raises(RigError, match="missing key.*posedirs"):
        flame_rig(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("weights", np.ones((162, 4)), r"weights has shape \(162, 4\)"),
        ("shapedirs", np.zeros((162, 3, 100)), "shapedirs has shape"),
        ("f", np.array([[0, 1, 9999]]), "f refers to vertices"),
        ("v_template", np.full((162, 3), np.nan), "v_template contains NaN"),
    ],
)
def test_malformed_flame_file(tmp_path, key, value, message):
    model = small_flame_model()
    model[key] = value
    path = tmp_path / f"bad-{key}.pkl"
    path.write_bytes(pickle.dumps(model, protocol=2))
    with pytest.raises(RigError, match=message):
        flame_rig(path)
