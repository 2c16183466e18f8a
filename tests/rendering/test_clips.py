"""Clips and render jobs: requested once by content, rendered once, failures recorded."""

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from config.celery import app as celery_app
from rendering import blobs
from rendering.encode import EncodeError
from rendering.models import Clip, ClipKind, ClipStatus
from rendering.renderer import SPEAKER_BLUE, RenderSettings
from rendering.services import (
    ClipRequestError,
    SpeakerInputs,
    clip_render,
    clip_request,
    clip_retry,
    clips_requeue_stale,
)
from tests.conftest import media_files, require_real_services
from tests.rendering.conftest import wobble
from tests.rendering.media import has_audio, make_video, probe, tone, words
from tests.workers import start_worker, stop, wait_until_finished, worker_env

ROOT = Path(__file__).resolve().parents[2]
SMALL = RenderSettings(width=96, height=96)


def sequence(n: int = 12, seed: int = 0) -> np.ndarray:
    from rendering.layouts import BUILTIN

    return wobble(BUILTIN, n=n, seed=seed)


@pytest.mark.django_db
def test_request_is_deduplicated_by_content(django_capture_on_commit_callbacks):
    # given / when: the same inputs twice
    with django_capture_on_commit_callbacks(execute=False) as first:
        a = clip_request(fps=30, sequence=sequence(), settings=SMALL)
    with django_capture_on_commit_callbacks(execute=False) as second:
        b = clip_request(fps=30, sequence=sequence().copy(), settings=SMALL)
    # then: one clip, one job
    assert a.pk == b.pk and a.status == ClipStatus.QUEUED
    assert len(first) == 1 and len(second) == 0
    assert Clip.objects.count() == 1
    assert blobs.blob_exists(a.sequence_sha, "npy")
    # anything that changes the pixels is another clip
    c = clip_request(fps=25, sequence=sequence(), settings=SMALL)
    d = clip_request(fps=30, sequence=sequence(), settings=SMALL.replace(crf=30))
    e = clip_request(fps=30, sequence=sequence(seed=1), settings=SMALL)
    assert len({a.content_hash, c.content_hash, d.content_hash, e.content_hash}) == 4


@pytest.mark.django_db
def test_render_task_renders_once_and_a_rerun_is_a_noop():
    clip = clip_request(fps=30, sequence=sequence(), settings=SMALL, enqueue=False)
    # when: the task body runs twice (a redelivery)
    clip_render(clip_id=clip.pk)
    clip.refresh_from_db()
    files = media_files()
    state = (clip.status, clip.mp4_sha, clip.poster_sha, clip.finished_at, clip.attempts)
    clip_render(clip_id=clip.pk)
    clip.refresh_from_db()
    # then
    assert clip.status == ClipStatus.SUCCEEDED and clip.progress == 100.0
    assert (clip.status, clip.mp4_sha, clip.poster_sha, clip.finished_at, clip.attempts) == state
    assert media_files() == files
    assert clip.n_frames == 12 and clip.mp4_bytes > 0 and clip.error == ""
    assert blobs.read_blob(clip.poster_sha, "png").startswith(b"\x89PNG")
    assert blobs.read_blob(clip.mp4_sha, "mp4")[4:8] == b"ftyp"


@pytest.mark.django_db
def test_only_the_missing_file_is_rendered_again(django_capture_on_commit_callbacks):
    clip = clip_request(fps=30, sequence=sequence(), settings=SMALL, enqueue=False)
    clip_render(clip_id=clip.pk)
    clip.refresh_from_db()
    mp4_path = Path(django_settings.MEDIA_ROOT) / blobs.blob_name(clip.mp4_sha, "mp4")
    mp4_mtime = mp4_path.stat().st_mtime_ns
    blobs.delete_blob(clip.poster_sha, "png")
    # when: asked again, the clip goes back to the queue and the worker restores the poster
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        again = clip_request(fps=30, sequence=sequence(), settings=SMALL)
    assert again.pk == clip.pk and again.status == ClipStatus.QUEUED and len(callbacks) == 1
    clip_render(clip_id=clip.pk)
    clip.refresh_from_db()
    # then
    assert clip.status == ClipStatus.SUCCEEDED
    assert blobs.blob_exists(clip.poster_sha, "png")
    from PIL import Image

    poster = Image.open(Path(django_settings.MEDIA_ROOT) / blobs.blob_name(clip.poster_sha, "png"))
    assert poster.size == (96, 96)  # taken from the stored video's middle frame
    assert mp4_path.stat().st_mtime_ns == mp4_mtime  # the video was not written again


@pytest.mark.django_db
def test_failed_render_is_recorded_stores_nothing_and_can_be_retried(monkeypatch,
                                                                     django_capture_on_commit_callbacks):
    clip = clip_request(fps=30, sequence=sequence(), settings=SMALL, enqueue=False)
    stored = media_files()

    def broken(**kwargs):
        raise EncodeError("ffmpeg exited with status 1: disk full")

    monkeypatch.setattr("rendering.services.render_clip", broken)
    clip_render(clip_id=clip.pk)
    clip.refresh_from_db()
    assert clip.status == ClipStatus.FAILED
    assert "disk full" in clip.error
    assert clip.mp4_sha == "" and media_files() == stored
    # retry
    monkeypatch.undo()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert clip_retry(clip_id=clip.pk)
    assert len(callbacks) == 1
    clip_render(clip_id=clip.pk)
    clip.refresh_from_db()
    assert clip.status == ClipStatus.SUCCEEDED and clip.attempts == 2


@pytest.mark.django_db
def test_clipped_values_are_recorded_on_the_clip():
    seq = sequence()
    seq[2, 0] = 40.0
    seq[3, 14] = -7.0  # head_pitch
    clip = clip_request(fps=30, sequence=seq, settings=SMALL, enqueue=False)
    assert clip.clipped["n_values"] == 2
    clip_render(clip_id=clip.pk)
    clip.refresh_from_db()
    assert set(clip.clipped["dims"]) == {"brow_inner_raise", "head_pitch"}
    assert clip.clipped["dims"]["head_pitch"]["min"] == -7.0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sequence": np.full((4, 18), np.nan, np.float32)}, "NaN or infinite"),
        ({"sequence": np.zeros((4, 56), np.float32)}, "has 18 dimensions"),
        ({"sequence": np.zeros((0, 18), np.float32)}, "zero frames"),
        ({"sequence": np.zeros((4, 18), np.float32), "fps": 0}, "fps"),
        ({"sequence": np.zeros((4, 18), np.float32), "face_model": "nope"}, "unknown face model"),
        ({"sequence": np.zeros((4, 56), np.float32), "face_model": "flame56"},
         "FLAME_MODEL_PATH"),
        ({}, "expression sequence"),
        ({"sequence_sha": "0" * 64}, "cannot read"),
        ({"sequence": np.zeros((4, 18), np.float32), "settings": {"width": 7}}, "even integer"),
        ({"sequence": np.zeros((4, 18), np.float32),
          "speaker": SpeakerInputs(transcript=words(1))}, "only for clips of kind"),
        ({"sequence": np.zeros((4, 18), np.float32), "kind": "speaker",
          "speaker": SpeakerInputs(transcript=[{"word": "x"}])}, r"transcript\[0\]"),
    ],
)
def test_bad_requests_are_refused_and_store_nothing(kwargs, message, settings):
    settings.FLAME_MODEL_PATH = ""
    kwargs = {"fps": 30, **kwargs}
    with pytest.raises(ClipRequestError, match=message):
        clip_request(**kwargs)
    assert Clip.objects.count() == 0
    assert media_files() == set()


@pytest.mark.django_db
def test_speaker_clip_rendered_in_the_speaker_colour_with_audio_and_subtitles():
    audio_sha, _ = blobs.put_array(tone(0.5))
    speaker = SpeakerInputs(audio_sha=audio_sha, sample_rate=16000, transcript=words(2))
    clip = clip_request(fps=30, sequence=sequence(15), settings=SMALL, kind=ClipKind.SPEAKER,
                        speaker=speaker, enqueue=False)
    assert tuple(clip.settings["face_color"]) == SPEAKER_BLUE
    assert clip.media["audio_sha"] == audio_sha and len(clip.media["transcript"]) == 2
    clip_render(clip_id=clip.pk)
    clip.refresh_from_db()
    assert clip.status == ClipStatus.SUCCEEDED, clip.error
    path = Path(django_settings.MEDIA_ROOT) / blobs.blob_name(clip.mp4_sha, "mp4")
    assert has_audio(probe(path))
    bad = SpeakerInputs(audio_sha="f" * 64, sample_rate=16000)
    with pytest.raises(ClipRequestError, match="no stored audio"):
        clip_request(fps=30, sequence=sequence(15), kind=ClipKind.SPEAKER, speaker=bad)


@pytest.mark.django_db
def test_speaker_clip_from_the_episodes_own_video(tmp_path):
    video = make_video(tmp_path / "v.mp4", seconds=0.6)
    video_sha, _ = blobs.put_blob(video.read_bytes(), "mp4")
    clip = clip_request(fps=30, settings=SMALL, kind=ClipKind.SPEAKER,
                        speaker=SpeakerInputs(video_sha=video_sha, video_ext="mp4"),
                        enqueue=False)
    clip_render(clip_id=clip.pk)
    clip.refresh_from_db()
    assert clip.status == ClipStatus.SUCCEEDED, clip.error
    assert 17 <= clip.n_frames <= 19
    with pytest.raises(ClipRequestError, match="takes no expression sequence"):
        clip_request(fps=30, sequence=sequence(), kind=ClipKind.SPEAKER,
                     speaker=SpeakerInputs(video_sha=video_sha, video_ext="mp4"))


@pytest.mark.django_db
def test_broken_speaker_video_fails_the_job_with_a_clear_error(tmp_path):
    video_sha, _ = blobs.put_blob(b"\x00\x00\x00\x18ftypmp42 broken", "mp4")
    clip = clip_request(fps=30, settings=SMALL, kind=ClipKind.SPEAKER,
                        speaker=SpeakerInputs(video_sha=video_sha, video_ext="mp4"),
                        enqueue=False)
    before = media_files()
    clip_render(clip_id=clip.pk)
    clip.refresh_from_db()
    assert clip.status == ClipStatus.FAILED
    assert "could not decode" in clip.error
    assert media_files() == before


@pytest.mark.django_db
def test_admin_shows_progress_and_failures(client):
    User = get_user_model()
    User.objects.create_superuser("root", password="pw-root-123")
    client.login(username="root", password="pw-root-123")
    ok = clip_request(fps=30, sequence=sequence(), settings=SMALL, enqueue=False)
    clip_render(clip_id=ok.pk)
    failed = clip_request(fps=30, sequence=sequence(seed=5), settings=SMALL, enqueue=False)
    Clip.objects.filter(pk=failed.pk).update(status=ClipStatus.FAILED,
                                             error="ffmpeg exited with status 1: boom")
    response = client.get("/admin/rendering/clip/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "succeeded" in body and "ffmpeg exited with status 1: boom" in body
    assert "<progress" in body
    assert client.get(f"/admin/rendering/clip/{ok.pk}/change/").status_code == 200


def render_worker():
    """A Celery worker on an emptied render queue, started here: (its environment, itself)."""
    require_real_services()
    with celery_app.connection_for_write() as conn:
        conn.default_channel.queue_purge("render")
    env = worker_env(dict(os.environ), PYOPENGL_PLATFORM="osmesa")
    return env, start_worker("render", env)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_renders_from_the_render_queue():
    """A Celery worker on the render queue, started here, renders a clip requested here."""
    _, worker = render_worker()
    try:
        clip = clip_request(fps=30, sequence=sequence(), settings=SMALL)
        wait_until_finished(clip, worker, (ClipStatus.SUCCEEDED, ClipStatus.FAILED), timeout=120)
    finally:
        output = stop(worker)
    assert clip.status == ClipStatus.SUCCEEDED, output[-3000:]
    assert "rendering.tasks.render_clip_task" in output



@pytest.mark.django_db
def test_only_clips_whose_worker_fell_silent_are_queued_again(django_capture_on_commit_callbacks):
    # given: three running clips: one with a fresh heartbeat, one silent, one claimed before
    # heartbeats existed and started long ago
    now = timezone.now()
    live, silent, old = (clip_request(fps=30, sequence=sequence(seed=s), settings=SMALL,
                                      enqueue=False) for s in range(3))
    Clip.objects.filter(pk=live.pk).update(status=ClipStatus.RUNNING, started_at=now
                                           - timedelta(hours=1), heartbeat_at=now)
    Clip.objects.filter(pk=silent.pk).update(status=ClipStatus.RUNNING, started_at=now,
                                             heartbeat_at=now - timedelta(minutes=3))
    Clip.objects.filter(pk=old.pk).update(status=ClipStatus.RUNNING, started_at=now
                                          - timedelta(minutes=3), heartbeat_at=None)
    # when
    with django_capture_on_commit_callbacks(execute=False) as sent:
        requeued = clips_requeue_stale(silent_for=timedelta(minutes=2))
    # then: the two silent ones are queued again, with a task each; the live one runs on
    assert requeued == 2 and len(sent) == 2
    states = dict(Clip.objects.filter(pk__in=[live.pk, silent.pk, old.pk])
                  .values_list("pk", "status"))
    assert states == {live.pk: ClipStatus.RUNNING, silent.pk: ClipStatus.QUEUED,
                      old.pk: ClipStatus.QUEUED}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_render_whose_worker_is_killed_is_queued_again_and_finishes_once():
    """kill -9 of the worker mid-render: the clip's heartbeat stops, the reaper queues it again
    and a new worker renders it, without waiting for the broker's visibility timeout."""
    env, worker = render_worker()
    try:
        clip = clip_request(fps=30, sequence=sequence(n=900), settings=SMALL)

        def rendering() -> bool:
            clip.refresh_from_db()
            return clip.status == ClipStatus.RUNNING and clip.progress > 0

        deadline = time.monotonic() + 120
        while not rendering() and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.05)
        assert rendering(), stop(worker)[-3000:]
        assert clip.heartbeat_at is not None
        os.kill(worker.pid, signal.SIGKILL)  # mid-render, no goodbye
        worker.wait(30)
        time.sleep(1.5)
        clip.refresh_from_db()
        assert clip.status == ClipStatus.RUNNING  # nobody is rendering it now
        # when: the beat job runs with a short silence allowance, and a worker comes back
        assert clips_requeue_stale(silent_for=timedelta(seconds=1)) == 1
        worker = start_worker("render", env)
        wait_until_finished(clip, worker, (ClipStatus.SUCCEEDED, ClipStatus.FAILED), timeout=180)
    finally:
        output = stop(worker)
    # then
    assert clip.status == ClipStatus.SUCCEEDED and clip.attempts == 2, output[-3000:]
    assert blobs.read_blob(clip.mp4_sha, "mp4")[4:8] == b"ftyp"
