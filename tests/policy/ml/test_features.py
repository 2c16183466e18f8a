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
