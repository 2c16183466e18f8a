import numpy as np
import pytest

from rendering.layouts import BUILTIN
from rendering.rigs import CoefficientError, RigError, get_rig, sanitize_coefficients
from tests.rendering.conftest import pose


def test_builtin_rig_implements_the_builtin_layout(rig):
    assert rig.layout is BUILTIN
    assert rig.layout.width == 18
    units = [d.name for d in rig.layout.dims if d.group == "expression"]
    assert len(units) == 14
    assert 2_000 < rig.n_vertices < 10_000  # a few thousand vertices
    assert rig.faces.max() < rig.n_vertices


def test_mesh_shapes_for_a_frame_and_a_sequence(rig):
    one = rig.mesh(np.zeros(18, np.float32))
    many = rig.mesh(np.zeros((5, 18), np.float32))
    assert one.shape == (rig.n_vertices, 3)
    assert many.shape == (5, rig.n_vertices, 3)
    np.testing.assert_allclose(many[3], one)


def test_every_unit_moves_the_face_and_only_where_it_should(rig):
    rest = rig.rest_vertices()
    regions = rig.regions()
    expected = {
        "brow_inner_raise": "brows", "brow_outer_raise": "brows", "brow_lower": "brows",
        "eye_blink": "eyes", "eye_widen": "eyes",
        "smile_left": "lower_face", "smile_right": "lower_face",
        "mouth_corner_depress": "mouth",
        "lip_stretch": "mouth", "lip_press": "mouth", "lip_pucker": "mouth",
        "jaw_open": "lower_face",
    }
    for dim in rig.layout.dims:
        moved = np.linalg.norm(rig.mesh(pose(rig.layout, **{dim.name: dim.high})) - rest, axis=1)
        assert moved.max() > 0.2, f"{dim.name} barely moves anything"
        if dim.name in expected:
            region = np.any([regions[r] for r in expected[dim.name].split()], axis=0)
            inside, outside = moved[region].max(), moved[~region].max()
            assert inside > 3 * outside or outside < 0.05, (dim.name, inside, outside)


def test_smile_lifts_the_mouth_corners_and_a_frown_lowers_them(rig):
    layout = rig.layout
    rest = rig.rest_vertices()
    mouth = rig.regions()["mouth"] & (np.abs(rest[:, 1] + 7.2) < 0.4) & (rest[:, 2] > 7.5)
    corners = mouth & (np.abs(rest[:, 0]) > 2.0)
    centre = mouth & (np.abs(rest[:, 0]) < 0.5)

    def lift(**units):
        v = rig.mesh(pose(layout, **units))
        return (v[corners, 1].mean() - rest[corners, 1].mean()) - (
            v[centre, 1].mean() - rest[centre, 1].mean())

    assert lift(smile_left=1, smile_right=1) > 0.5
    assert lift(mouth_corner_depress=1) < -0.4
    assert abs(lift(eye_blink=1)) < 0.01


def test_jaw_opens_downward_and_head_rotations_follow_the_layout_conventions(rig):
    layout = rig.layout
    rest = rig.rest_vertices()
    upper_lip = np.argmin(np.linalg.norm(rest[: rig.n_vertices // 2] - (0, -6.7, 9.4), axis=1))
    lower_lip = np.argmin(np.linalg.norm(rest - (0, -8.0, 9.3), axis=1))
    chin = np.argmin(np.where(rest[:, 2] > 5, rest[:, 1], np.inf))  # lowest point in front
    opened = rig.mesh(pose(layout, jaw_open=0.4))
    gap_before = rest[upper_lip, 1] - rest[lower_lip, 1]
    gap_after = opened[upper_lip, 1] - opened[lower_lip, 1]
    assert gap_after > gap_before + 2.5  # the mouth opens by centimetres
    assert opened[chin, 1] < rest[chin, 1] - 1.0
    nose = np.argmax(rest[:, 2])
    assert rig.mesh(pose(layout, head_pitch=0.3))[nose, 1] < rest[nose, 1] - 1.0  # nods down
    assert rig.mesh(pose(layout, head_yaw=0.3))[nose, 0] > rest[nose, 0] + 1.0  # face's left
    top = np.argmax(rest[:, 1])
    assert rig.mesh(pose(layout, head_roll=0.3))[top, 0] > rest[top, 0] + 1.0


def test_rig_fingerprint_is_stable(rig):
    assert len(rig.fingerprint) == 64
    assert rig.fingerprint == get_rig("builtin").fingerprint


# --- bad input ---------------------------------------------------------------------------------


def test_sanitize_refuses_nan_and_inf_naming_frame_and_dimension():
    x = np.zeros((10, 18), np.float32)
    x[4, BUILTIN.index("jaw_open")] = np.nan
    with pytest.raises(CoefficientError, match=r"frame 4, dimension 'jaw_open'"):
        sanitize_coefficients(x, BUILTIN)
    x[4] = 0
    x[7, 0] = np.inf
    with pytest.raises(CoefficientError, match="NaN or infinite"):
        sanitize_coefficients(x, BUILTIN)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((10, 17), np.float32), "has 18 dimensions"),
        (np.zeros((0, 18), np.float32), "zero frames"),
        (np.zeros(18, np.float32), r"expected a \(frames, 18\) array"),
        (np.array([["a"] * 18]), "numeric"),
    ],
)
def test_sanitize_refuses_wrong_shapes(array, message):
    with pytest.raises(CoefficientError, match=message):
        sanitize_coefficients(array, BUILTIN)


def test_sanitize_clips_absurd_magnitudes_and_records_them():
    x = np.zeros((6, 18), np.float32)
    x[1, BUILTIN.index("smile_left")] = 1e6
    x[2, BUILTIN.index("smile_left")] = -3
    x[3, BUILTIN.index("head_yaw")] = 9.0
    clean, record = sanitize_coefficients(x, BUILTIN)
    assert clean[1, BUILTIN.index("smile_left")] == 1.0
    assert clean[2, BUILTIN.index("smile_left")] == 0.0
    assert clean[3, BUILTIN.index("head_yaw")] == pytest.approx(0.8)
    assert record.clipped and record.n_values == 3
    assert record.dims["smile_left"] == {"count": 2, "min": -3.0, "max": 1e6, "low": 0.0,
                                         "high": 1.0}
    assert set(record.as_dict()["dims"]) == {"smile_left", "head_yaw"}
    in_range, record = sanitize_coefficients(np.full((3, 18), 0.2, np.float32), BUILTIN)
    assert not record.clipped


def test_mesh_clips_out_of_range_values(rig):
    wild = rig.mesh(pose(rig.layout, smile_left=50.0))
    full = rig.mesh(pose(rig.layout, smile_left=1.0))
    np.testing.assert_allclose(wild, full)


def test_unknown_face_model_is_a_clear_error():
    with pytest.raises(RigError, match="unknown face model 'nope'"):
        get_rig("nope")
