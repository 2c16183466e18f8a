"""Speaker-side inputs: causal log-mel, words heard by each frame, text-encoder hook, video."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.ml import features as F


def test_log_mel_has_per_frame_windows_and_no_future_audio():
    rng = np.random.default_rng(0)
    sr, fps, t = 16000, 30, 20
    audio = rng.uniform(-0.5, 0.5, int(t / fps * sr)).astype(np.float32)
    mel = F.log_mel(audio, sr, t, fps, n_mels=10, per_frame=2)
    assert mel.shape == (t, 20)
    # Changing audio after frame 9's time (9 / 30 s) leaves frames 0..9 untouched.
    later = audio.copy()
    later[int(round(9 / fps * sr)) :] = 0.0
    mel2 = F.log_mel(later, sr, t, fps, n_mels=10, per_frame=2)
    assert torch.equal(mel[:10], mel2[:10])
    assert not torch.equal(mel[10:], mel2[10:])


def _waves() -> list[tuple[np.ndarray | torch.Tensor, int, int, float]]:
    """(waveform, sample rate, frames, fps): lengths, rates and frame rates that differ; audio
    shorter than the frames, longer than them, empty; no frames; a tensor; float64."""
    rng = np.random.default_rng(1)

    def wave(n: int) -> np.ndarray:
        return rng.uniform(-0.5, 0.5, n).astype(np.float32)

    return [
        (wave(16000), 16000, 30, 30.0),  # exactly the frames' length
        (wave(4000), 16000, 45, 30.0),  # shorter than the frames: silence after it
        (wave(12000), 8000, 20, 25.0),  # longer than the frames, another group
        (wave(7), 16000, 12, 30.0),  # a few samples
        (np.zeros(0, np.float32), 16000, 9, 30.0),  # no audio: log of the floor everywhere
        (torch.from_numpy(wave(9000)), 22050, 31, 30.0),  # n_fft 1024
        (wave(5000).astype(np.float64), 16000, 17, 30.0),  # converted to float32 as log_mel does
        (wave(3000), 8000, 0, 25.0),  # no frames
        (wave(30000), 16000, 40, 30.0),
        (wave(40000), 48000, 25, 30.0),  # n_fft 2048: a filter bank long enough for BLAS to
        #   split its sums across threads when few rows are computed together
    ]


@pytest.mark.parametrize("max_windows", [None, 1, 7, 64, 10**6])
def test_log_mel_batch_equals_log_mel_of_each_waveform(max_windows):
    items = _waves()
    opts = dict(n_mels=10, per_frame=2, window_s=0.032, fmax=6000.0)
    want = [F.log_mel(w, sr, t, fps, **opts) for w, sr, t, fps in items]
    got = F.log_mel_batch(*zip(*items), max_windows=max_windows, **opts)
    assert len(got) == len(items)
    for (w, sr, t, _), a, b in zip(items, want, got, strict=True):
        assert b.shape == (t, 20) and b.dtype == torch.float32 and b.device.type == "cpu"
        assert torch.equal(a, b), (sr, t, len(w))  # bit for bit on the CPU, however sliced
    assert torch.equal(got[4], torch.log(torch.zeros(9, 20) + F.LOG_FLOOR))  # silence only


def test_log_mel_batch_is_exact_with_more_threads():
    items = _waves()
    threads = torch.get_num_threads()
    torch.set_num_threads(8)  # more threads than rows per thread: BLAS may split the sums
    try:
        want = [F.log_mel(w, sr, t, fps, n_mels=12) for w, sr, t, fps in items]
        for max_windows in (5, 300):
            got = F.log_mel_batch(*zip(*items), n_mels=12, max_windows=max_windows)
            assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    finally:
        torch.set_num_threads(threads)


def test_log_mel_batch_with_three_windows_per_frame_and_no_waveforms():
    items = _waves()[:4]
    want = [F.log_mel(w, sr, t, fps, n_mels=6, per_frame=3) for w, sr, t, fps in items]
    got = F.log_mel_batch(*zip(*items), n_mels=6, per_frame=3, max_windows=50)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert F.log_mel_batch([], [], [], []) == []
    with pytest.raises(ValueError, match="2 waveforms but 1 sample rates"):
        F.log_mel_batch([np.zeros(5), np.zeros(5)], [16000], [1, 1], [30.0, 30.0])
    with pytest.raises(ValueError, match="max_windows"):
        F.log_mel_batch([np.zeros(5)], [16000], [1], [30.0], max_windows=0)


def test_mel_filters_cover_the_band_without_gaps():
    fb = F.mel_filterbank(16000, 512, 24, 8000.0)
    assert fb.shape == (257, 24)
    first, last = int(fb[:, 0].argmax()), int(fb[:, -1].argmax())
    inner = fb[first + 1 : last].sum(1)  # adjacent triangles sum to 1 between the end peaks
    assert torch.allclose(inner, torch.ones_like(inner), atol=1e-5)


def test_hashed_word_ids_are_stable_and_normalised():
    assert F.hashed_word_id("Grant.", 4096) == F.hashed_word_id("grant", 4096)
    # FNV-1a of b"grant" is fixed forever: a checkpoint's word ids must not change meaning
    h = 0x811C9DC5
    for b in b"grant":
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    assert F.hashed_word_id("grant", 4096) == 1 + h % 4095
    assert 1 <= F.hashed_word_id("anything", 16) < 16


def test_a_word_is_heard_from_its_end_until_the_next_word_ends_or_the_hold_passes():
    words = [{"word": "a", "start": 0.0, "end": 0.2}, {"word": "b", "start": 0.3, "end": 0.5}]
    idx = F.heard_word_index(words, n_frames=10, fps=10, hold_s=0.25)
    # t = 0.0 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9
    assert idx.tolist() == [-1, -1, 0, 0, 0, 1, 1, 1, -1, -1]


def test_text_features_use_hashed_ids_or_a_registered_encoder():
    words = [{"word": "good", "start": 0.0, "end": 0.1}]
    ids = F.text_features(words, 4, 10, encoder="hashed", vocab=64, dim=0, hold_s=1.0)
    good = F.hashed_word_id("good", 64)
    assert ids.tolist() == [0, good, good, good]
    F.register_text_encoder("test-ones", lambda ws: np.ones((len(ws), 3), np.float32))
    vec = F.text_features(words, 4, 10, encoder="test-ones", vocab=64, dim=3, hold_s=1.0)
    assert vec.shape == (4, 3) and vec[0].sum() == 0 and vec[1].sum() == 3
    with pytest.raises(KeyError, match="not registered"):
        F.text_features(words, 4, 10, encoder="missing", vocab=64, dim=3, hold_s=1.0)


def test_video_frames_are_resized_and_padded_to_the_sequence():
    frames = np.random.default_rng(0).integers(0, 255, (5, 3, 40, 48), dtype=np.uint8)
    out = F.video_frames(frames, 7, 16)
    assert out.shape == (7, 3, 16, 16) and out.dtype == torch.uint8
    assert torch.equal(out[5], out[4]) and torch.equal(out[6], out[4])
    with pytest.raises(ValueError, match="T, 3, H, W"):
        F.video_frames(np.zeros((5, 40, 48)), 5, 16)
