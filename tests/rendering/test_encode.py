"""Encoding: browser-friendly MP4s, audio and subtitles for speakers, nothing half-written."""

import numpy as np
import pytest

from rendering.encode import (
    EncodeError,
    MediaInputError,
    SubtitleBurner,
    VideoWriter,
    read_audio,
    transcript_cues,
    write_wav,
)
from rendering.pipeline import SpeakerMedia, render_clip, side_by_side, transcode_clip
from rendering.renderer import SPEAKER_BLUE, RenderSettings
from rendering.rigs import CoefficientError
from tests.rendering.conftest import wobble
from tests.rendering.media import faststart, has_audio, make_video, probe, tone, video_stream, words

SMALL = RenderSettings(width=128, height=128)


def test_candidate_clip_is_h264_yuv420p_cfr_faststart_with_poster(rig, renderer, tmp_path):
    out = tmp_path / "c.mp4"
    result = render_clip(rig=rig, coeffs=wobble(rig.layout, n=30), fps=30, settings=SMALL,
                         out_path=out, renderer=renderer)
    info = probe(out)
    v = video_stream(info)
    assert (v["codec_name"], v["pix_fmt"], v["width"], v["height"]) == ("h264", "yuv420p", 128, 128)
    assert v["r_frame_rate"] == v["avg_frame_rate"] == "30/1"
    assert int(v["nb_read_frames"]) == 30
    assert not has_audio(info)
    assert faststart(out)
    assert result.poster_png.startswith(b"\x89PNG")
    assert result.clipped is None


def test_clipped_values_are_reported(rig, renderer, tmp_path):
    seq = wobble(rig.layout, n=10)
    seq[3, 0] = 1e9
    result = render_clip(rig=rig, coeffs=seq, fps=25, settings=SMALL,
                         out_path=tmp_path / "c.mp4", renderer=renderer)
    assert result.clipped.n_values == 1
    assert result.clipped.dims["brow_inner_raise"]["max"] == 1e9


@pytest.mark.parametrize(
    ("bad", "message"),
    [("nan", "NaN or infinite"), ("width", "has 18 dimensions"), ("empty", "zero frames")],
)
def test_bad_sequences_write_no_file(rig, renderer, tmp_path, bad, message):
    seq = wobble(rig.layout, n=10)
    if bad == "nan":
        seq[5, 2] = np.nan
    elif bad == "width":
        seq = seq[:, :-1]
    else:
        seq = seq[:0]
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(CoefficientError, match=message):
        render_clip(rig=rig, coeffs=seq, fps=30, settings=SMALL, out_path=folder / "c.mp4",
                    renderer=renderer)
    assert list(folder.iterdir()) == []


def test_speaker_clip_has_the_audio_and_burned_subtitles(rig, tmp_path):
    settings = SMALL.replace(face_color=SPEAKER_BLUE)
    seq = np.zeros((45, rig.layout.width), np.float32)
    media = SpeakerMedia(audio=tone(1.5), sample_rate=16000, transcript=words(4))
    out = tmp_path / "s.mp4"
    render_clip(rig=rig, coeffs=seq, fps=30, settings=settings, out_path=out, media=media)
    info = probe(out)
    assert has_audio(info)
    assert float(info["format"]["duration"]) == pytest.approx(1.5, abs=0.1)
    silent = tmp_path / "plain.mp4"
    render_clip(rig=rig, coeffs=seq, fps=30, settings=settings, out_path=silent)
    from rendering.encode import decode_frames

    with_subs = next(decode_frames(out, width=128, height=128, fps=30, max_frames=6))
    without = next(decode_frames(silent, width=128, height=128, fps=30, max_frames=6))
    bottom = np.abs(with_subs[5, 100:].astype(int) - without[5, 100:].astype(int)).max()
    top = np.abs(with_subs[5, :60].astype(int) - without[5, :60].astype(int)).max()
    assert bottom > 100  # white text with an outline
    assert top < 30  # compression noise only


def test_transcode_of_the_speakers_own_video(tmp_path):
    video = make_video(tmp_path / "speaker.mp4", seconds=1.0, fps=25)
    out = tmp_path / "t.mp4"
    result = transcode_clip(video_path=video, fps=30, settings=SMALL, out_path=out,
                            media=SpeakerMedia(transcript=words(3)))
    info = probe(out)
    v = video_stream(info)
    assert (v["width"], v["height"], v["r_frame_rate"]) == (128, 128, "30/1")
    assert 29 <= int(v["nb_read_frames"]) <= 31
    assert has_audio(info)  # the video's own sound, since no separate audio was given
    assert result.poster_png.startswith(b"\x89PNG")


def test_unreadable_video_is_a_clear_error_and_writes_nothing(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really")
    out = tmp_path / "t.mp4"
    with pytest.raises(MediaInputError, match="broken.mp4"):
        transcode_clip(video_path=bad, fps=30, settings=SMALL, out_path=out)
    assert not out.exists()


def test_failed_encoder_leaves_no_file(tmp_path):
    out = tmp_path / "x.mp4"
    with (pytest.raises(EncodeError, match="ffmpeg"),
          VideoWriter(out, width=64, height=64, fps=30, preset="no-such-preset") as w):
        for _ in range(50):
            w.write(np.zeros((4, 64, 64, 4), np.uint8))
    assert not out.exists()
    with (pytest.raises(EncodeError, match="uint8"),
          VideoWriter(out, width=64, height=64, fps=30) as w):
        w.write(np.zeros((1, 32, 32, 4), np.uint8))
    assert not out.exists()


def test_side_by_side_preview(rig, tmp_path):
    seq = wobble(rig.layout, n=20)
    out = tmp_path / "p.mp4"
    result = side_by_side(
        panels=[("speaker", rig, seq, SMALL.replace(face_color=SPEAKER_BLUE)),
                ("A", rig, seq[::-1].copy(), SMALL), ("B", rig, seq[:12], SMALL)],
        fps=30, out_path=out, media=SpeakerMedia(audio=tone(0.7), sample_rate=16000,
                                                 transcript=words(2)))
    info = probe(out)
    v = video_stream(info)
    assert v["width"] == 3 * 128 and v["height"] > 128
    assert int(v["nb_read_frames"]) == 20 == result.n_frames
    assert has_audio(info)


def test_transcript_cues_group_words_and_refuse_bad_times():
    cues = transcript_cues(words(10, step=0.3), max_words=4)
    assert [len(c.text.split()) for c in cues] == [4, 4, 2]
    assert cues[0].start == 0.0 and cues[0].end <= cues[1].start
    gap = [{"word": "a", "start": 0, "end": 0.2}, {"word": "b", "start": 2.0, "end": 2.2}]
    assert len(transcript_cues(gap)) == 2
    with pytest.raises(MediaInputError, match=r"transcript\[0\]"):
        transcript_cues([{"word": "x", "start": 1.0, "end": 0.5}])
    with pytest.raises(MediaInputError, match=r"transcript\[0\]"):
        transcript_cues([{"text": "x"}])


def test_subtitle_burner_draws_only_while_a_cue_is_active():
    burner = SubtitleBurner(transcript_cues(words(2, step=0.5)), width=96, height=96, fps=10)
    frames = np.zeros((30, 96, 96, 4), np.uint8)
    burner.burn(frames, 0)
    drawn = frames[..., :3].reshape(30, -1).max(axis=1)
    assert drawn[0] > 200 and drawn[8] > 200  # words at 0.0–0.4 s and 0.5–0.9 s (+ hold)
    assert drawn[25] == 0  # after the last cue


def test_wav_round_trip_and_bad_audio(tmp_path):
    path = tmp_path / "a.wav"
    duration = write_wav(path, tone(0.5), 16000)
    samples, rate = read_audio(path)
    assert rate == 16000 and duration == pytest.approx(0.5)
    np.testing.assert_allclose(samples, tone(0.5), atol=1e-3)
    with pytest.raises(MediaInputError, match="NaN"):
        write_wav(path, np.array([0.0, np.nan], np.float32), 16000)
    with pytest.raises(MediaInputError, match="sample rate"):
        write_wav(path, tone(0.1), 12)
    with pytest.raises(MediaInputError, match="not a readable WAV"):
        (tmp_path / "b.wav").write_bytes(b"RIFFjunk")
        read_audio(tmp_path / "b.wav")


def test_subtitle_that_wraps_onto_lines_of_different_widths_is_drawn():
    # Centred lines of unequal width give fractional text bounds in Pillow 12.
    text = ["well", "that", "is", "really", "quite", "wonderful", "news", "for", "you"]
    cue = [{"word": w, "start": 0.1 * i, "end": 0.1 * i + 0.08} for i, w in enumerate(text)]
    burner = SubtitleBurner(transcript_cues(cue), width=96, height=96, fps=10)
    frames = np.zeros((10, 96, 96, 4), np.uint8)
    burner.burn(frames, 0)
    assert frames[..., :3].max() > 200
