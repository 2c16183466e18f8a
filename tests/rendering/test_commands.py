"""manage.py render_clip and preview_side_by_side."""

import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from rendering.encode import write_wav
from rendering.models import Clip, ClipStatus
from tests.conftest import media_files
from tests.rendering.conftest import wobble
from tests.rendering.media import has_audio, make_video, probe, tone, video_stream, words


@pytest.fixture
def seq_file(tmp_path, rig):
    path = tmp_path / "listener.npy"
    np.save(path, wobble(rig.layout, n=15))
    return path


@pytest.mark.django_db
def test_render_clip_renders_and_copies_out(seq_file, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    call_command("render_clip", str(seq_file), "--size", "64", "--out", str(out),
                 "--no-progress")
    clip = Clip.objects.get()
    assert clip.status == ClipStatus.SUCCEEDED and clip.n_frames == 15
    assert video_stream(probe(out))["width"] == 64
    assert "15 frames" in capsys.readouterr().out
    # again: the same clip, nothing new
    call_command("render_clip", str(seq_file), "--size", "64", "--no-progress")
    assert Clip.objects.count() == 1


@pytest.mark.django_db
def test_render_clip_speaker_with_audio_and_transcript(seq_file, tmp_path):
    wav = tmp_path / "speech.wav"
    write_wav(wav, tone(0.5), 16000)
    transcript = tmp_path / "words.json"
    transcript.write_text(json.dumps(words(2)))
    out = tmp_path / "speaker.mp4"
    call_command("render_clip", str(seq_file), "--speaker", "--audio", str(wav),
                 "--transcript", str(transcript), "--size", "64", "--out", str(out),
                 "--no-progress")
    assert Clip.objects.get().kind == "speaker"
    assert has_audio(probe(out))


@pytest.mark.django_db
def test_render_clip_refuses_bad_input_and_stores_nothing(tmp_path):
    bad = tmp_path / "bad.npy"
    x = np.zeros((5, 18), np.float32)
    x[1, 1] = np.inf
    np.save(bad, x)
    with pytest.raises(CommandError, match="NaN or infinite"):
        call_command("render_clip", str(bad), "--no-progress")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(CommandError, match="not a readable .npy"):
        call_command("render_clip", str(tmp_path / "junk.npy"), "--no-progress")
    assert Clip.objects.count() == 0 and media_files() == set()


def test_preview_side_by_side(seq_file, tmp_path, rig):
    other = tmp_path / "other.npy"
    np.save(other, wobble(rig.layout, n=15, seed=4))
    wav = tmp_path / "speech.wav"
    write_wav(wav, tone(0.5), 16000)
    transcript = tmp_path / "words.json"
    transcript.write_text(json.dumps(words(2)))
    out = tmp_path / "preview.mp4"
    call_command("preview_side_by_side", "--speaker", str(seq_file),
                 "--candidate", f"sft={seq_file}", "--candidate", f"dpo={other}",
                 "--audio", str(wav), "--transcript", str(transcript), "--size", "64",
                 "--out", str(out), "--no-progress")
    info = probe(out)
    assert video_stream(info)["width"] == 3 * 64
    assert has_audio(info)
    with pytest.raises(CommandError, match="at least one --candidate"):
        call_command("preview_side_by_side", "--out", str(out))
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((3, 18), np.nan, np.float32))
    with pytest.raises(CommandError, match="NaN"):
        call_command("preview_side_by_side", "--candidate", f"x={nan}", "--out",
                     str(tmp_path / "p2.mp4"), "--no-progress")
    assert not (tmp_path / "p2.mp4").exists()


@pytest.mark.django_db
def test_render_clip_transcodes_a_speaker_video(tmp_path):
    video = make_video(tmp_path / "speaker.mp4", seconds=0.5)
    out = tmp_path / "clip.mp4"
    call_command("render_clip", "--video", str(video), "--size", "64", "--out", str(out),
                 "--no-progress")
    clip = Clip.objects.get()
    assert (clip.kind, clip.status) == ("speaker", ClipStatus.SUCCEEDED)
    info = probe(out)
    assert video_stream(info)["width"] == 64 and has_audio(info)
