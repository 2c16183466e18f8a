"""Video features of a dataset: the service, the gpu-queue task, the command and the selector
(a tiny random DINOv2 saved as safetensors; a speaker video made with ffmpeg)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command

from config.queues import Queue
from policy.ml import video as V
from policy.models import Dataset, Episode
from policy.selectors import episode_arrays
from policy.services.video_features import dataset_video_features, feature_store
from policy.tasks import compute_video_features_task
from rendering import blobs
from rendering.layouts import get_layout
from tests.conftest import media_files
from tests.policy.ml.test_video import colour_video, tiny_dinov2_dir

FACE_BOX = [32, 8, 24, 24]  # x, y, w, h: inside the right half of the 64x48 frames


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return tiny_dinov2_dir(tmp_path_factory.mktemp("models") / "dinov2-tiny")


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory) -> bytes:
    return colour_video(tmp_path_factory.mktemp("video") / "speaker.mp4").read_bytes()


def _episode(dataset: Dataset, key: str, n_frames: int, **fields) -> Episode:
    listener = np.zeros((n_frames, get_layout("builtin").width), np.float32)
    listener_sha, _ = blobs.put_array(listener)
    return Episode.objects.create(
        dataset=dataset,
        key=key,
        fps=10,
        n_frames=n_frames,
        content_hash=blobs.sha256_bytes(key.encode()),
        listener_sha=listener_sha,
        **fields,
    )


@pytest.fixture
def dataset(db, video_bytes) -> Dataset:
    """Two episodes: one with a 2 s speaker video and a face box, one without video."""
    ds = Dataset.objects.create(name="vid", face_model="builtin", source_format="test")
    sha, _ = blobs.put_blob(video_bytes, "mp4")
    _episode(ds, "a-video", 20, video_sha=sha, video_ext="mp4", meta={"face_box": FACE_BOX})
    _episode(ds, "b-silent", 12)
    return ds


@pytest.fixture
def encode_calls(monkeypatch) -> list[int]:
    """The number of frames of every call to VisionEncoder.encode."""
    calls: list[int] = []
    real = V.VisionEncoder.encode

    def counting(self, frames, batch_size=64):
        calls.append(len(frames))
        return real(self, frames, batch_size=batch_size)

    monkeypatch.setattr(V.VisionEncoder, "encode", counting)
    return calls


def test_the_service_computes_missing_features_once(dataset, encoder_dir, settings, encode_calls):
    # given
    progress: list[tuple[int, int]] = []
    # when
    first = dataset_video_features(
        dataset, str(encoder_dir), device="cpu", progress=lambda *a: progress.append(a)
    )
    files = media_files()
    second = dataset_video_features(dataset, str(encoder_dir), device="cpu")
    # then
    assert first == {"computed": 1, "cached": 0, "without_video": 1, "failed": 0, "errors": []}
    assert second == {"computed": 0, "cached": 1, "without_video": 1, "failed": 0, "errors": []}
    assert sum(encode_calls) == 20 and progress == [(1, 1)]
    assert media_files() == files
    stored = [f for f in files if f.startswith("features/")]
    assert len(stored) == 1 and stored[0].endswith(".npy")
    assert feature_store().root == Path(settings.MEDIA_ROOT) / "features"


def test_features_are_those_of_the_face_box_at_the_episode_rate(dataset, encoder_dir):
    # when
    dataset_video_features(dataset, str(encoder_dir), device="cpu")
    # then: the stored features are the encoder's output on the cropped frames
    ep = dataset.episodes.get(key="a-video")
    encoder = V.VisionEncoder.from_dir(encoder_dir, device="cpu")
    key = V.feature_key(
        video_sha=ep.video_sha,
        encoder_sha=encoder.sha256,
        fps=10,
        image_size=encoder.image_size,
        box=FACE_BOX,
    )
    stored = feature_store().get(key)
    arrays = episode_arrays([ep])[0]
    frames = V.decode_video(arrays.video_path, fps=10, n_frames=20, size=28, box=FACE_BOX)
    expected = encoder.encode(frames).numpy()
    assert stored.shape == (20, 32)
    assert np.allclose(stored, expected, atol=1e-2)
    uncropped = encoder.encode(V.decode_video(arrays.video_path, fps=10, size=28)).numpy()
    assert not np.allclose(stored, uncropped, atol=1e-2)


def test_the_task_called_twice_leaves_the_same_state(dataset, encoder_dir, encode_calls):
    # when: the task runs, then runs again (a redelivery)
    compute_video_features_task(dataset.pk, str(encoder_dir))
    after_first, calls = media_files(), sum(encode_calls)
    compute_video_features_task(dataset.pk, str(encoder_dir))
    # then
    assert calls == 20 and sum(encode_calls) == 20
    assert media_files() == after_first
    assert any(f.startswith("features/") for f in after_first)
    assert compute_video_features_task.queue == Queue.GPU
    assert compute_video_features_task.acks_late is True
    assert 0 < compute_video_features_task.soft_time_limit < compute_video_features_task.time_limit


def test_the_task_for_a_deleted_dataset_does_nothing(db, encoder_dir):
    before = media_files()
    compute_video_features_task(10**6, str(encoder_dir))
    assert media_files() == before


def test_a_model_name_is_looked_up_in_policy_model_dir(dataset, encoder_dir, settings, tmp_path):
    # given
    settings.POLICY_MODEL_DIR = str(encoder_dir.parent)
    settings.POLICY_FEATURE_DIR = str(tmp_path / "elsewhere")
    # when
    counts = dataset_video_features(dataset, encoder_dir.name, device="cpu")
    # then
    assert counts["computed"] == 1
    assert len(list((tmp_path / "elsewhere").rglob("*.npy"))) == 1
    assert not any(f.startswith("features/") for f in media_files())


def test_another_encoder_adds_its_own_features(dataset, encoder_dir, tmp_path, encode_calls):
    other = tiny_dinov2_dir(tmp_path / "dinov2-other", seed=9)
    dataset_video_features(dataset, str(encoder_dir), device="cpu")
    counts = dataset_video_features(dataset, str(other), device="cpu")
    assert counts["computed"] == 1 and sum(encode_calls) == 40
    assert len([f for f in media_files() if f.startswith("features/")]) == 2


def test_an_unusable_video_fails_its_episode_only(dataset, encoder_dir):
    # given: a stored "video" that is not one, and a face box outside the frame
    sha, _ = blobs.put_blob(b"not a video" * 100, "mp4")
    _episode(dataset, "c-broken", 10, video_sha=sha, video_ext="mp4")
    good = dataset.episodes.get(key="a-video")
    _episode(
        dataset,
        "d-bad-box",
        20,
        video_sha=good.video_sha,
        video_ext="mp4",
        meta={"face_box": [60, 0, 10, 10]},
    )
    _episode(
        dataset,
        "e-odd-box",
        20,
        video_sha=good.video_sha,
        video_ext="mp4",
        meta={"face_box": "face"},
    )
    # when
    counts = dataset_video_features(dataset, str(encoder_dir), device="cpu")
    # then
    assert (counts["computed"], counts["failed"], counts["without_video"]) == (1, 3, 1)
    broken, bad_box, odd_box = counts["errors"]
    assert "episode 'c-broken'" in broken and "not a video ffmpeg can read" in broken
    assert "episode 'd-bad-box'" in bad_box and "does not lie inside the 64x48 frame" in bad_box
    assert "episode 'e-odd-box'" in odd_box and "face box must be four whole numbers" in odd_box


def test_the_command_runs_here_or_queues(
    dataset, encoder_dir, capsys, monkeypatch, django_capture_on_commit_callbacks
):
    # runs here
    call_command(
        "video_features", "vid", "--encoder", str(encoder_dir), "--device", "cpu", "--no-progress"
    )
    assert (
        "1 computed, 0 already stored, 1 episodes without video, 0 failed"
        in capsys.readouterr().out
    )
    # queues after commit
    sent: list[tuple] = []
    monkeypatch.setattr(compute_video_features_task, "delay", lambda *args: sent.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        call_command("video_features", "vid", "--encoder", "dinov2-tiny", "--queue")
    assert sent == [(dataset.pk, "dinov2-tiny")]
    assert "queued on the gpu queue" in capsys.readouterr().out
    # errors people can act on
    with pytest.raises(CommandError, match="no dataset named 'nope'"):
        call_command("video_features", "nope", "--encoder", str(encoder_dir))
    missing = encoder_dir.parent / "absent"
    with pytest.raises(CommandError, match=f"model directory {missing}: does not exist"):
        call_command("video_features", "vid", "--encoder", str(missing), "--no-progress")


def test_episode_arrays_carry_the_video_path_and_face_box(dataset):
    with_video, without = episode_arrays(dataset.episodes.order_by("key"))
    assert with_video.face_box == tuple(FACE_BOX)
    assert Path(with_video.video_path).read_bytes()[4:8] == b"ftyp"  # the stored MP4 itself
    assert (without.video_path, without.face_box) == (None, None)
    frames = V.decode_video(with_video.video_path, fps=10, box=with_video.face_box, size=8)
    assert frames.shape == (20, 3, 8, 8) and frames.dtype == torch.uint8
