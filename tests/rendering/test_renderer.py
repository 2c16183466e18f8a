"""Snapshot tests: frames differ where the expression says and nowhere else; pixels repeat."""

import numpy as np
import pytest

from rendering.renderer import FaceRenderer, RenderError, RenderSettings, select_gl_platform
from tests.rendering.conftest import pose, wobble

CHANGED = 16  # a pixel counts as changed above this difference (0..255) in any channel


def pixel(renderer, x: float, y: float) -> tuple[int, int]:
    """(row, column) of world point (x, y) in a frame: the camera is orthographic."""
    f, s = renderer.rig.framing, renderer.settings
    half_w = f.half_extent * s.width / s.height
    col = (x - f.center[0]) / half_w * s.width / 2 + s.width / 2
    row = (f.center[1] + f.half_extent - y) / (2 * f.half_extent) * s.height
    return int(round(row)), int(round(col))


def box(renderer, x0, x1, y0, y1) -> tuple[slice, slice]:
    r1, c0 = pixel(renderer, x0, y0)
    r0, c1 = pixel(renderer, x1, y1)
    return slice(max(r0, 0), max(r1, 0)), slice(max(c0, 0), max(c1, 0))


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) > CHANGED


@pytest.fixture(scope="module")
def snapshots(rig, renderer):
    layout = rig.layout
    poses = {
        "neutral": pose(layout),
        "smile": pose(layout, smile_left=1.0, smile_right=1.0),
        "frown": pose(layout, brow_lower=1.0, mouth_corner_depress=1.0),
        "jaw": pose(layout, jaw_open=0.35),
    }
    frames = renderer.render(np.stack(list(poses.values())))
    return dict(zip(poses, frames))


def test_neutral_face_is_drawn_in_the_frame(renderer, snapshots):
    frame = snapshots["neutral"]
    background = np.round(np.array(renderer.settings.background) * 255)
    head = np.abs(frame.astype(float) - background).max(axis=-1) > 8
    assert 0.25 < head.mean() < 0.75
    assert not head[:, :3].any() and not head[:, -3:].any()  # framed with a margin
    assert not head[:2].any()


def test_smile_changes_the_lower_face_and_nothing_above_the_eyes(renderer, snapshots):
    diff = changed(snapshots["neutral"], snapshots["smile"])
    lower = box(renderer, -6.5, 6.5, -11.5, -2.5)
    assert diff[lower].sum() > 40
    assert not diff[box(renderer, -13, 13, 0.5, 14)].any()  # eyes, brows, forehead, crown
    assert not diff[:, : pixel(renderer, -8.5, 0)[1]].any()  # background beside the head
    assert diff.sum() == diff[lower].sum()


def test_frown_changes_brows_and_mouth_and_nothing_else(renderer, snapshots):
    diff = changed(snapshots["neutral"], snapshots["frown"])
    brows = box(renderer, -6, 6, -1.0, 4.5)
    mouth = box(renderer, -5, 5, -11.5, -5.5)
    assert diff[brows].sum() > 20
    assert diff[mouth].sum() > 20
    assert not diff[box(renderer, -13, 13, 6.0, 14)].any()  # upper forehead and crown
    assert not diff[box(renderer, -13, 13, -14, -12.5)].any()  # neck
    assert diff.sum() == diff[brows].sum() + diff[mouth].sum()


def test_jaw_opens_the_mouth_and_leaves_the_upper_face(renderer, snapshots):
    diff = changed(snapshots["neutral"], snapshots["jaw"])
    assert diff[box(renderer, -4, 4, -11, -6.5)].sum() > 100
    assert not diff[box(renderer, -13, 13, -2.0, 14)].any()
    # An open mouth is a dark opening.
    mouth = box(renderer, -1.5, 1.5, -9.5, -7.8)
    assert snapshots["jaw"][mouth].mean() < snapshots["neutral"][mouth].mean() - 60


def _mouth_line(renderer, frame) -> tuple[float, float]:
    """Rows of the darkest pixel of the mouth line at its centre and near its corners."""
    rows, cols = box(renderer, -2.6, 2.6, -8.5, -6.0)
    grey = frame[rows, cols].astype(float).mean(axis=-1)
    dark = np.argmin(grey, axis=0) + rows.start
    n = len(dark)
    centre = dark[n // 2 - 1: n // 2 + 2].mean()
    corners = np.concatenate([dark[1:4], dark[-4:-1]]).mean()
    return centre, corners


def test_a_smile_reads_as_a_smile_and_a_frown_as_a_frown(renderer, snapshots):
    # Image rows grow downward: corners above the centre (smaller rows) curve up.
    centre, corners = _mouth_line(renderer, snapshots["smile"])
    assert corners < centre - 1.5
    centre, corners = _mouth_line(renderer, snapshots["frown"])
    assert corners > centre + 1.0
    centre, corners = _mouth_line(renderer, snapshots["neutral"])
    assert abs(corners - centre) <= 1.5


def test_the_same_input_renders_the_same_pixels_twice(rig, renderer):
    seq = wobble(rig.layout, n=19)  # not a multiple of the tiles: a partial last batch
    first = renderer.render(seq)
    second = renderer.render(seq)
    assert first.shape == (19, 128, 128, 3)
    assert np.array_equal(first, second)


def test_tiling_does_not_change_the_picture(rig, renderer):
    seq = wobble(rig.layout, n=6, seed=3)
    with FaceRenderer(rig, renderer.settings, tiles=1) as single:
        one_by_one = single.render(seq)
    tiled = renderer.render(seq)
    differ = changed(one_by_one, tiled)
    assert differ.mean() < 0.002  # at most a few edge pixels from rounding


def test_frames_come_out_in_order(rig, renderer):
    seq = np.stack([pose(rig.layout, jaw_open=a) for a in np.linspace(0, 0.5, 12)])
    frames = renderer.render(seq)
    mouth = box(renderer, -1.5, 1.5, -10, -7.6)
    darkness = [-f[mouth].mean() for f in frames]
    assert np.all(np.diff(darkness) >= -1.0)
    assert darkness[-1] > darkness[0] + 40


def test_speaker_colour_differs_from_the_candidate_clay(rig):
    from rendering.renderer import SPEAKER_BLUE

    with FaceRenderer(rig, RenderSettings(width=64, height=64, face_color=SPEAKER_BLUE),
                      tiles=1) as blue:
        frame = blue.render(pose(rig.layout)[None])[0]
    cheek = frame[40, 20:44].astype(float)
    assert cheek[:, 2].mean() > cheek[:, 0].mean() + 15  # bluish skin


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"width": 255}, "even integer"), ({"msaa": 3}, "msaa"), ({"crf": 99}, "crf"),
     ({"face_color": (2, 0, 0)}, "face_color")],
)
def test_bad_render_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        RenderSettings(**changes)


def test_unknown_gl_platform_is_refused():
    with pytest.raises(RenderError, match="unsupported GL platform"):
        select_gl_platform("vulkan")
    with pytest.raises(RenderError, match="already loaded"):
        select_gl_platform("egl")  # this process runs OSMesa
