"""What every importer produces, and the checks every episode passes before anything is stored."""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from rendering.layouts import FaceModelLayout

from .errors import ImportProblem

SPLITS = ("train", "val", "test")
VIDEO_EXTENSIONS = ("mp4", "webm", "mov", "mkv", "avi")
# Audio may run a little longer or shorter than the frames (rounding, codec padding).
AUDIO_LENGTH_TOLERANCE_S = 0.25


@dataclass
class EpisodeRecord:
    key: str
    split: str
    fps: float
    listener: np.ndarray  # (T, D) float32 in the dataset's layout
    label: str  # how errors name this episode's main file
    speaker: np.ndarray | None = None  # (T, D) float32
    audio: np.ndarray | None = None  # (N,) float32 mono waveform
    audio_sample_rate: int | None = None
    audio_features: np.ndarray | None = None  # (F, C) float32, e.g. L2L mel
    video: bytes | None = None
    video_ext: str = ""
    transcript: list[dict] | None = None
    meta: dict = field(default_factory=dict)
    reference: np.ndarray | None = None  # (T, D) float32 rule-following listener, where kept
    reference_label: str = ""  # the reference's own file, for errors (default: ``label``)


@dataclass
class CorpusReader:
    """A parsed import: dataset-level facts plus an iterator over episodes."""

    name: str
    face_model: str
    description: str
    source_format: str
    count: int
    episodes: Iterator[EpisodeRecord]


def parse_npy(data: bytes, file: str, field: str) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ImportProblem(file, field, "pickled object arrays are not accepted") from exc
        raise ImportProblem(file, field, f"not a valid .npy file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise ImportProblem(file, field, f"not a valid .npy file ({exc})") from exc
    if not isinstance(array, np.ndarray):
        raise ImportProblem(file, field, "expected a single .npy array")
    return array


def parse_wav(data: bytes, file: str, field: str) -> tuple[np.ndarray, int]:
    try:
        with wave.open(io.BytesIO(data)) as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ImportProblem(file, field, f"not a valid WAV file ({exc})") from exc
    if width != 2:
        raise ImportProblem(file, field, f"expected 16-bit PCM, got {8 * width}-bit")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if len(samples) % channels:
        raise ImportProblem(file, field, "truncated sample data")
    return samples.reshape(-1, channels).mean(axis=1), rate


def _check_float_array(array: np.ndarray, file: str, field: str, ndim: int) -> np.ndarray:
    if array.dtype.kind not in "fiu":
        raise ImportProblem(file, field, f"expected numbers, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ImportProblem(file, field, f"expected {ndim} dimensions, got shape {array.shape}")
    if array.shape[0] == 0:
        raise ImportProblem(file, field, "has zero frames")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        value = array[tuple(bad)]
        where = "frame " + str(int(bad[0])) + (f", dim {int(bad[1])}" if ndim > 1 else "")
        raise ImportProblem(file, field, f"contains {value} at {where}")
    return array


def validate_record(rec: EpisodeRecord, layout: FaceModelLayout) -> EpisodeRecord:
    """Check one episode completely; returns it with arrays as contiguous float32."""
    if not rec.key or len(rec.key) > 200:
        raise ImportProblem(rec.label, "key", "must be 1 to 200 characters")
    if rec.split not in SPLITS:
        raise ImportProblem(rec.label, "split", f"must be one of {', '.join(SPLITS)}")
    if not (isinstance(rec.fps, int | float) and math.isfinite(rec.fps) and 0 < rec.fps <= 1000):
        raise ImportProblem(rec.label, "fps", f"must be a positive number, got {rec.fps!r}")

    rec.listener = _check_float_array(rec.listener, rec.label, "listener", 2)
    n_frames, width = rec.listener.shape
    if width != layout.width:
        raise ImportProblem(
            rec.label,
            "listener",
            f"width {width} does not match layout {layout.name!r} ({layout.width} dims)",
        )
    if rec.speaker is not None:
        rec.speaker = _check_float_array(rec.speaker, rec.label, "speaker", 2)
        if rec.speaker.shape[1] != layout.width:
            raise ImportProblem(
                rec.label,
                "speaker",
                f"width {rec.speaker.shape[1]} does not match layout {layout.name!r} "
                f"({layout.width} dims)",
            )
        if rec.speaker.shape[0] != n_frames:
            raise ImportProblem(
                rec.label,
                "speaker",
                f"{rec.speaker.shape[0]} frames but the listener has {n_frames}",
            )
    if rec.reference is not None:
        file = rec.reference_label or rec.label
        rec.reference = _check_float_array(rec.reference, file, "reference", 2)
        if rec.reference.shape != rec.listener.shape:
            raise ImportProblem(
                file,
                "reference",
                f"shape {rec.reference.shape} but the listener has {rec.listener.shape}; the "
                "reference is another listener for the same frames",
            )
    duration = n_frames / rec.fps
    if rec.audio is not None:
        rec.audio = _check_float_array(rec.audio, rec.label, "audio", 1)
        sr = rec.audio_sample_rate
        if not isinstance(sr, int) or not 1000 <= sr <= 192_000:
            raise ImportProblem(rec.label, "audio_sample_rate", f"must be 1000–192000, got {sr!r}")
        audio_s = len(rec.audio) / sr
        if abs(audio_s - duration) > AUDIO_LENGTH_TOLERANCE_S:
            raise ImportProblem(
                rec.label,
                "audio",
                f"lasts {audio_s:.3f} s but the listener lasts {duration:.3f} s",
            )
    if rec.audio_features is not None:
        rec.audio_features = _check_float_array(rec.audio_features, rec.label, "audio", 2)
    if rec.video is not None and rec.video_ext not in VIDEO_EXTENSIONS:
        raise ImportProblem(rec.label, "video", f"extension must be one of {VIDEO_EXTENSIONS}")
    if rec.transcript is not None:
        rec.transcript = _check_transcript(rec.transcript, rec.label, duration)
    return rec


def _check_transcript(words: object, file: str, duration: float) -> list[dict]:
    if not isinstance(words, list):
        raise ImportProblem(file, "transcript", "must be a list of {word, start, end}")
    clean: list[dict] = []
    previous = 0.0
    for i, item in enumerate(words):
        where = f"transcript[{i}]"
        if not isinstance(item, dict):
            raise ImportProblem(file, where, "must be an object with word, start, end")
        for key in ("word", "start", "end"):
            if key not in item:
                raise ImportProblem(file, f"{where}.{key}", "required field missing")
        word, start, end = item["word"], item["start"], item["end"]
        if not isinstance(word, str) or not word.strip():
            raise ImportProblem(file, f"{where}.word", "must be a non-empty string")
        for key, value in (("start", start), ("end", end)):
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ImportProblem(file, f"{where}.{key}", f"must be a number, got {value!r}")
        if not 0 <= start <= end <= duration + AUDIO_LENGTH_TOLERANCE_S:
            raise ImportProblem(
                file, where, f"times must satisfy 0 <= start <= end <= {duration:.3f} s"
            )
        if start < previous:
            raise ImportProblem(file, where, "words must be ordered by start time")
        previous = start
        clean.append({"word": word, "start": float(start), "end": float(end)})
    return clean
