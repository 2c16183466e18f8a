"""Speaker-side inputs aligned to video frames: log-mel audio, transcript words, video frames.

Every feature of frame ``t`` describes the speaker *up to* the frame's time ``t / fps``: the audio
windows end there and a word appears only once it has been fully spoken. Look-ahead is added later,
in one place (:func:`policy.ml.data.prepare_episode`), by shifting all speaker-side features.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence

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


def _n_fft(sample_rate: int, window_s: float) -> int:
    """FFT size: the window length in samples, rounded up to a power of two (at least 16)."""
    return 2 ** max(4, math.ceil(math.log2(max(window_s * sample_rate, 16))))


def _window_ends(n_windows: int, sample_rate: int, fps: float, per_frame: int) -> torch.Tensor:
    """(n_windows,) int64 sample index (exclusive) at which each causal window ends.

    Window ``j`` of frame ``t`` (index ``t * per_frame + j``) ends at time
    ``(t - 1 + (j + 1) / per_frame) / fps``. Element ``k`` depends on ``k`` alone, so the ends of
    a shorter episode are a prefix of a longer one's.
    """
    sub = torch.arange(n_windows, dtype=torch.float64)  # window index, (W,)
    ends_s = (sub + 1) / (per_frame * fps) - 1.0 / fps  # (W,) seconds
    return torch.round(ends_s * sample_rate).long()  # (W,)


def _padding(ends: torch.Tensor, n_samples: int, n_fft: int) -> tuple[int, int]:
    """Silence to add (left, right) to a waveform of ``n_samples`` so that every window
    ``padded[ends[k] + left - n_fft : ends[k] + left]`` lies inside it (no clamp over W x n_fft
    indices). ``ends`` is non-decreasing, as :func:`_window_ends` makes it."""
    if not len(ends):
        return n_fft, n_fft
    return n_fft + max(0, -int(ends[0])), max(n_fft, int(ends[-1]) + 1 - n_samples)


@functools.lru_cache(maxsize=16)
def _re_im_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmax: float) -> torch.Tensor:
    """(2 * (n_fft // 2 + 1), n_mels): :func:`mel_filterbank` with every row twice, for the real
    and the imaginary part of each bin as ``view_as_real`` lays them out, so that the squared parts
    times this bank are the mel power (re^2 + im^2 summed inside the matmul)."""
    return mel_filterbank(sample_rate, n_fft, n_mels, fmax).repeat_interleave(2, dim=0)


MEL_MATMUL_ROWS = 256  # rows per filter-bank matmul on the CPU, see _project


def _project(squares: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``squares @ filters``, on the CPU in products of exactly MEL_MATMUL_ROWS rows (the last
    one zero-padded).

    BLAS sums a row's products in an order that depends on the shape of the whole product (with
    few rows and a long filter bank it splits the sum across threads; one row is a
    matrix-vector product): equal shapes make a window's value independent of how many windows
    are computed with it, which is what lets :func:`log_mel_batch` equal :func:`log_mel` bit for
    bit. A GPU makes no such promise and does one product.
    """
    if squares.device.type != "cpu":
        return squares @ filters
    rows = MEL_MATMUL_ROWS
    out = squares.new_empty(len(squares), filters.shape[1])  # (W, n_mels)
    for i in range(0, len(squares), rows):
        block = squares[i : i + rows]  # (<= rows, K)
        if len(block) < rows:
            block = torch.cat([block, block.new_zeros(rows - len(block), block.shape[1])])
        out[i : i + rows] = (block @ filters)[: len(squares) - i]
    return out


def _log_mel_windows(buffer: torch.Tensor, starts: torch.Tensor, n_fft: int,
                     filters: torch.Tensor) -> torch.Tensor:
    """(W, n_mels) log mel power of the Hann-windowed ``buffer[starts[k] : starts[k] + n_fft]``,
    ``filters`` from :func:`_re_im_filterbank`.

    Windows are rows of a strided view of the buffer, copied by one row gather (no W x n_fft
    index tensor); the power's sum re^2 + im^2 happens in the filter-bank matmul, which on the
    CPU is several times faster than ``abs() ** 2`` of the complex spectrum. On the CPU a row's
    value does not depend on the other rows computed with it (the FFT works row by row and
    :func:`_project` fixes the matmul's shape), so any slicing of the windows gives the same bits.
    """
    if not len(starts):  # no frames (an FFT of no rows is an error)
        return torch.zeros(0, filters.shape[1], device=buffer.device)
    frames = torch.index_select(buffer.unfold(0, n_fft, 1), 0, starts)  # (W, n_fft)
    frames *= torch.hann_window(n_fft, periodic=True, device=buffer.device)[None, :]
    spec = torch.view_as_real(torch.fft.rfft(frames, dim=-1))  # (W, n_fft // 2 + 1, 2) re, im
    squares = spec.flatten(1).square()  # (W, 2 * (n_fft // 2 + 1))
    return torch.log(_project(squares, filters) + LOG_FLOOR)  # (W, n_mels)


def log_mel(audio: np.ndarray | torch.Tensor, sample_rate: int, n_frames: int, fps: float, *,
            n_mels: int = 40, per_frame: int = 2, window_s: float = 0.032,
            fmax: float = 8000.0) -> torch.Tensor:
    """Log-mel features of a mono waveform, ``per_frame`` causal windows per video frame.

    Window ``j`` of frame ``t`` covers the ``n_fft`` samples ending at time
    ``(t - 1 + (j + 1) / per_frame) / fps``, so the last one ends exactly at the frame's time.
    Samples outside the waveform count as silence. Returns ``(n_frames, per_frame * n_mels)``.
    (:func:`log_mel_batch` computes the same for many waveforms at once.)
    """
    wave = torch.as_tensor(audio, dtype=torch.float32).flatten()  # (N,)
    n_fft = _n_fft(sample_rate, window_s)
    ends = _window_ends(n_frames * per_frame, sample_rate, fps, per_frame)  # (F,)
    left, right = _padding(ends, len(wave), n_fft)
    padded = torch.cat([torch.zeros(left), wave, torch.zeros(right)])
    filters = _re_im_filterbank(int(sample_rate), n_fft, n_mels, float(fmax))  # (2 * bins, M)
    mel = _log_mel_windows(padded, ends + (left - n_fft), n_fft, filters)  # (F, n_mels)
    return mel.reshape(n_frames, per_frame * n_mels)


# Windows per slice of log_mel_batch. On the CPU small slices stay in cache (2**12 windows of 512
# samples: 8 MB of frames; larger ones run slower); a GPU wants large ones (2**17: 256 MB).
MEL_MAX_WINDOWS = {"cpu": 2**12, "cuda": 2**17}


def log_mel_batch(waves: Sequence[np.ndarray | torch.Tensor], sample_rates: Sequence[int],
                  n_frames: Sequence[int], fps: Sequence[float], *, n_mels: int = 40,
                  per_frame: int = 2, window_s: float = 0.032, fmax: float = 8000.0,
                  device: torch.device | str | None = None,
                  max_windows: int | None = None) -> list[torch.Tensor]:
    """:func:`log_mel` of many waveforms at once, computed on ``device`` (the CPU by default).

    Returns one ``(n_frames[i], per_frame * n_mels)`` float32 CPU tensor per waveform. Waveforms
    are grouped by (sample rate, fps), which fix the FFT size, the window ends and the filter bank.
    Within a group, consecutive waveforms are padded as :func:`log_mel` pads them and laid end to
    end in one buffer, as many as hold at most ``max_windows`` windows (or one longer waveform);
    that buffer goes to ``device`` and its windows are gathered, Hann-weighted, transformed and
    projected in slices of at most ``max_windows`` (default: MEL_MAX_WINDOWS for the device), so
    memory stays bounded: about ``12 * max_windows * n_fft`` bytes for frames and spectrum.
    On a GPU one slice replaces hundreds of small per-episode calls.

    On the CPU the result equals :func:`log_mel` bit for bit, however the waveforms fall into
    slices (the same operations on the same rows). On CUDA, cuFFT and cuBLAS round differently:
    the log values agree with the CPU's within about 1e-5 relative / 1e-4 absolute (with full
    float32 matmuls, torch's default; TF32 would be coarser), and their last bits may depend on
    the slice a window falls in.
    """
    n = len(waves)
    if not (len(sample_rates) == len(n_frames) == len(fps) == n):
        raise ValueError(f"log_mel_batch: {n} waveforms but {len(sample_rates)} sample rates, "
                         f"{len(n_frames)} frame counts and {len(fps)} frame rates")
    device = torch.device(device or "cpu")
    if max_windows is None:
        max_windows = MEL_MAX_WINDOWS.get(device.type, MEL_MAX_WINDOWS["cuda"])
    if max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}")
    out: list[torch.Tensor | None] = [None] * n
    groups: dict[tuple[int, float], list[int]] = {}
    for i in range(n):
        groups.setdefault((int(sample_rates[i]), float(fps[i])), []).append(i)
    for (sr, rate), members in groups.items():
        n_fft = _n_fft(sr, window_s)
        filters = _re_im_filterbank(sr, n_fft, n_mels, float(fmax)).to(device)  # (2 * bins, M)
        counts = [int(n_frames[i]) * per_frame for i in members]  # windows per waveform
        ends = _window_ends(max(counts), sr, rate, per_frame)  # (W_max,) shared prefixes
        for chunk in _chunks(counts, max_windows):  # positions in members
            mels = _log_mel_chunk([waves[members[j]] for j in chunk], [counts[j] for j in chunk],
                                  ends, n_fft, filters, max_windows)
            for j, mel in zip(chunk, mels, strict=True):
                out[members[j]] = mel.reshape(int(n_frames[members[j]]), per_frame * n_mels)
    return out  # type: ignore[return-value]  # every index belongs to one group


def _chunks(counts: Sequence[int], limit: int) -> list[list[int]]:
    """Consecutive runs of indices into ``counts`` summing to at most ``limit`` (a single count
    over the limit makes a run of its own)."""
    runs: list[list[int]] = []
    total = 0
    for i, c in enumerate(counts):
        if not runs or total + c > limit:
            runs.append([])
            total = 0
        runs[-1].append(i)
        total += c
    return runs


def _log_mel_chunk(waves: Sequence[np.ndarray | torch.Tensor], counts: Sequence[int],
                   ends: torch.Tensor, n_fft: int, filters: torch.Tensor,
                   max_windows: int) -> list[torch.Tensor]:
    """(counts[i], n_mels) CPU log-mel of each waveform of one (sample rate, fps) group: the
    padded waveforms end to end in one buffer on ``filters``' device, windows in slices."""
    device = filters.device
    flat = [torch.as_tensor(w, dtype=torch.float32).flatten() for w in waves]  # (N_i,) each
    pads = [_padding(ends[:c], len(w), n_fft) for w, c in zip(flat, counts, strict=True)]
    starts: list[torch.Tensor] = []
    places: list[int] = []  # where each waveform begins in the buffer
    offset = 0
    for w, c, (left, right) in zip(flat, counts, pads, strict=True):
        starts.append(ends[:c] + (offset + left - n_fft))  # (c,) first sample of each window
        places.append(offset + left)
        offset += left + len(w) + right
    # (offset,) the padded waveforms end to end. On a GPU each waveform is copied straight to
    # its place in a zeroed buffer: no host copy of the whole (fresh host memory is slow to
    # touch on a virtual machine), and the copies do not wait for the GPU.
    buffer = torch.zeros(offset, device=device)
    for w, at in zip(flat, places, strict=True):
        buffer[at : at + len(w)].copy_(w, non_blocking=device.type != "cpu")
    all_starts = torch.cat(starts).to(device)  # (W,)
    mel = torch.empty(len(all_starts), filters.shape[1])  # (W, n_mels) on the CPU
    for s in range(0, len(all_starts), max_windows):
        mel[s : s + max_windows] = _log_mel_windows(buffer, all_starts[s : s + max_windows],
                                                    n_fft, filters)
    return list(mel.split(list(counts)))


# --- words -----------------------------------------------------------------------------------

_WORD = re.compile(r"[^\w']+")


def normalise_word(word: str) -> str:
    return _WORD.sub("", word.lower())


@functools.lru_cache(maxsize=1 << 16)
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
