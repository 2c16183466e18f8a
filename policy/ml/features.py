"""Speaker-side inputs aligned to video frames: log-mel audio, transcript words, video frames.

Every feature of frame ``t`` describes the speaker *up to* the frame's time ``t / fps``: the audio
windows end there and a word appears only once it has been fully spoken. Look-ahead is added later,
in one place (:func:`policy.ml.data.prepare_episode`), by shifting all speaker-side features.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

LOG_FLOOR = 1e-8  # added to mel power before the log: silence maps to log(1e-8), not -inf

# --- audio ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmax: float) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters, equally spaced on the HTK mel scale."""
    fmax = min(fmax, sample_rate / 2)

    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    points = mel_to_hz(torch.linspace(0.0, float(hz_to_mel(torch.tensor(fmax))), n_mels + 2,
                                      dtype=torch.float64))  # (n_mels + 2,) Hz
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    lo, mid, hi = points[:-2], points[1:-1], points[2:]  # (n_mels,) each
    rising = (freqs[:, None] - lo[None]) / (mid - lo)[None]  # (F, n_mels)
    falling = (hi[None] - freqs[:, None]) / (hi - mid)[None]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def log_mel(audio: np.ndarray | torch.Tensor, sample_rate: int, n_frames: int, fps: float, *,
            n_mels: int = 40, per_frame: int = 2, window_s: float = 0.032,
            fmax: float = 8000.0) -> torch.Tensor:
    """Log-mel features of a mono waveform, ``per_frame`` causal windows per video frame.

    Window ``j`` of frame ``t`` covers the ``n_fft`` samples ending at time
    ``(t - 1 + (j + 1) / per_frame) / fps``, so the last one ends exactly at the frame's time.
    Samples outside the waveform count as silence. Returns ``(n_frames, per_frame * n_mels)``.
    """
    wave = torch.as_tensor(audio, dtype=torch.float32).flatten()  # (N,)
    n_fft = 2 ** max(4, math.ceil(math.log2(max(window_s * sample_rate, 16))))
    sub = torch.arange(n_frames * per_frame, dtype=torch.float64)  # window index, (F,)
    ends_s = (sub + 1) / (per_frame * fps) - 1.0 / fps  # (F,) seconds
    ends = torch.round(ends_s * sample_rate).long()  # (F,) sample index (exclusive)
    # Window f covers padded[ends[f] : ends[f] + n_fft]: pad the waveform with silence on both
    # sides far enough that every index is inside (no clamp over F x n_fft indices).
    left = n_fft + max(0, -int(ends.min()))
    right = max(n_fft, int(ends.max()) + 1 - len(wave))
    padded = torch.cat([torch.zeros(left), wave, torch.zeros(right)])
    idx = (ends + (left - n_fft))[:, None] + torch.arange(n_fft)[None, :]  # (F, n_fft)
    frames = padded[idx] * torch.hann_window(n_fft, periodic=True)[None, :]  # (F, n_fft)
    power = torch.fft.rfft(frames, dim=-1).abs() ** 2  # (F, n_fft // 2 + 1)
    mel = power @ mel_filterbank(int(sample_rate), n_fft, n_mels, float(fmax))  # (F, n_mels)
    return torch.log(mel + LOG_FLOOR).reshape(n_frames, per_frame * n_mels)


# --- words -----------------------------------------------------------------------------------

_WORD = re.compile(r"[^\w']+")


def normalise_word(word: str) -> str:
    return _WORD.sub("", word.lower())


def hashed_word_id(word: str, vocab: int) -> int:
    """Stable bucket in [1, vocab) for a word (FNV-1a over UTF-8); 0 means 'no word'.

    Python's ``hash`` is salted per process, so a fixed hash is needed for checkpoints to mean
    the same thing tomorrow. Collisions are harmless at this vocabulary size for a small corpus.
    """
    h = 0x811C9DC5
    for byte in normalise_word(word).encode("utf-8"):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return 1 + h % (vocab - 1)


def heard_word_index(transcript: list[dict], n_frames: int, fps: float,
                     hold_s: float) -> np.ndarray:
    """(n_frames,) index into ``transcript`` of the last word heard by each frame, or -1.

    A word is heard from its end time on, until the next word ends or ``hold_s`` has passed.
    """
    if not transcript:
        return np.full(n_frames, -1, dtype=np.int64)
    ends = np.array([float(w["end"]) for w in transcript])
    order = np.argsort(ends, kind="stable")
    t = np.arange(n_frames) / fps  # (T,) seconds
    pos = np.searchsorted(ends[order], t, side="right") - 1  # (T,) into sorted ends
    idx = np.where(pos >= 0, order[np.clip(pos, 0, None)], -1)
    stale = (pos >= 0) & (t - ends[np.clip(idx, 0, None)] >= hold_s)
    return np.where(stale, -1, idx)


TextEncoderFn = Callable[[list[str]], np.ndarray]
_TEXT_ENCODERS: dict[str, TextEncoderFn] = {}


def register_text_encoder(name: str, fn: TextEncoderFn) -> None:
    """Make a locally available text encoder usable as ``ModelConfig.text_encoder = name``.

    ``fn(words)`` returns ``(len(words), text_dim)`` float32 vectors, e.g. the mean-pooled hidden
    states of a pretrained model loaded from local files. The policy projects them linearly; the
    checkpoint records only the name, so the same encoder must be registered when it is loaded.
    """
    if name == "hashed":
        raise ValueError("'hashed' is the built-in tokenizer and cannot be replaced")
    _TEXT_ENCODERS[name] = fn


def text_encoder(name: str) -> TextEncoderFn:
    try:
        return _TEXT_ENCODERS[name]
    except KeyError:
        raise KeyError(f"text encoder {name!r} is not registered in this process "
                       f"(registered: {sorted(_TEXT_ENCODERS) or 'none'})") from None


def text_features(transcript: list[dict] | None, n_frames: int, fps: float, *, encoder: str,
                  vocab: int, dim: int, hold_s: float) -> torch.Tensor:
    """Per-frame word input: ``(T,)`` int64 ids for "hashed", else ``(T, dim)`` float32 vectors."""
    idx = heard_word_index(transcript or [], n_frames, fps, hold_s)  # (T,)
    words = [str(w["word"]) for w in transcript or []]
    if encoder == "hashed":
        table = np.array([0] + [hashed_word_id(w, vocab) for w in words], dtype=np.int64)
        return torch.from_numpy(table[idx + 1])  # idx -1 -> id 0
    vectors = np.zeros((len(words) + 1, dim), dtype=np.float32)  # row 0: no word
    if words:
        enc = np.asarray(text_encoder(encoder)(words), dtype=np.float32)
        if enc.shape != (len(words), dim):
            raise ValueError(f"text encoder {encoder!r} returned {enc.shape}, "
                             f"expected {(len(words), dim)}")
        vectors[1:] = enc
    return torch.from_numpy(vectors[idx + 1])


# --- video ---------------------------------------------------------------------------------


def video_frames(frames: np.ndarray | torch.Tensor, n_frames: int, size: int) -> torch.Tensor:
    """Speaker video ``(T, 3, H, W)`` (uint8, or float in [0, 1]) -> ``(T, 3, size, size)`` uint8.

    Frames are area-resized; a video with fewer frames than the sequence repeats its last frame.
    """
    v = torch.as_tensor(frames)
    if v.ndim != 4 or v.shape[1] != 3:
        raise ValueError(f"video frames must be (T, 3, H, W), got {tuple(v.shape)}")
    v = v.float() if v.dtype == torch.uint8 else v.float() * 255.0
    v = F.interpolate(v, size=(size, size), mode="area")  # (T', 3, size, size)
    if len(v) < n_frames:
        v = torch.cat([v, v[-1:].expand(n_frames - len(v), -1, -1, -1)])
    return v[:n_frames].round().clamp(0, 255).to(torch.uint8)
