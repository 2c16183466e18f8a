"""Video encoding and decoding with ffmpeg (a subprocess, frames piped raw).

Every clip is H.264 in MP4, ``yuv420p``, constant frame rate, ``+faststart`` (the index at the
front, so a browser starts playing before the file has arrived), keyframes every second for
seeking: what every current browser plays. The encoder runs in its own process, so encoding
overlaps rendering on a second core; on one core it costs what x264 costs.

Also here: WAV writing for the episode's audio, subtitle burning (words with times → cues drawn
into the frames, in a font that ships with pyrender so the pixels do not depend on the
machine's fonts), posters, and decoding a speaker video into frames of the clip's size.

No Django here.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np


class EncodeError(RuntimeError):
    """ffmpeg failed or is missing; the message carries the end of its error output."""


class MediaInputError(ValueError):
    """Audio, transcript or video input that cannot be used; says which and why."""


@lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """``FFMPEG_BINARY``, else the static build shipped by imageio-ffmpeg (it starts about
    0.1 s faster per clip than a distribution's shared build), else ``ffmpeg`` on the PATH."""
    path = os.environ.get("FFMPEG_BINARY")
    if not path:
        try:
            import imageio_ffmpeg

            path = imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError):
            path = shutil.which("ffmpeg")
    if not path:
        raise EncodeError("ffmpeg not found (install it or set FFMPEG_BINARY)")
    return path


@lru_cache(maxsize=1)
def ffmpeg_version() -> str:
    try:
        out = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except (OSError, EncodeError):
        return "unavailable"
    return out.splitlines()[0] if out else "unknown"


def _rate(fps: float) -> str:
    if not np.isfinite(fps) or not 1.0 <= fps <= 240.0:
        raise MediaInputError(f"fps must be between 1 and 240, got {fps!r}")
    frac = Fraction(fps).limit_denominator(1001)
    return f"{frac.numerator}/{frac.denominator}"


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:].strip()


class VideoWriter:
    """Raw RGBA frames in (``write``), an MP4 file out (``close``).

    Use as a context manager: if the block raises, ffmpeg is stopped and the partial file
    removed, so a failed encode never leaves a file behind.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        fps: float,
        crf: int = 20,
        preset: str = "veryfast",
        threads: int = 0,
        audio_path: str | Path | None = None,
        audio_from_input: str | Path | None = None,
        duration: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.frames_written = 0
        self._frame_bytes = self.width * self.height * 4
        rate = _rate(fps)
        keyint = max(1, round(fps))
        cmd = [
            ffmpeg_binary(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgba", "-s", f"{self.width}x{self.height}",
            "-framerate", rate, "-i", "pipe:0",
        ]
        audio_map: list[str] = []
        if audio_path is not None:
            cmd += ["-i", str(audio_path)]
            audio_map = ["-map", "1:a:0"]
        elif audio_from_input is not None:
            cmd += ["-i", str(audio_from_input)]
            audio_map = ["-map", "1:a:0?"]  # the input's own audio, if it has any
        cmd += ["-map", "0:v:0", *audio_map,
                "-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)),
                # Frames arrive with regular time stamps at ``rate`` (raw input, or decoded
                # through the fps filter), so the stream is constant-rate; ``-r`` pins it.
                "-pix_fmt", "yuv420p", "-r", rate,
                "-g", str(keyint), "-threads", str(int(threads)),
                # No encoder decision that follows the content reaches the container: no
                # B-frames (no composition offsets) and key frames only every ``keyint`` (no
                # scene cuts), so two clips of the same length have the same sample tables
                # but for the sizes, which serving equalises (rendering.blinding).
                "-bf", "0", "-sc_threshold", "0"]
        if audio_map:
            # Pad short audio with silence and stop at the end of the video: exactly, when the
            # caller knows the length (-shortest overshoots by the muxer's queue).
            cmd += ["-c:a", "aac", "-b:a", "128k", "-ac", "1", "-af", "apad"]
            cmd += ["-t", f"{duration:.6f}"] if duration else ["-shortest"]
        cmd += ["-movflags", "+faststart", "-f", "mp4", str(self.path)]
        # ffmpeg's messages go to a file, not a pipe nobody drains while frames are written.
        self._stderr = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in close/abort
            prefix="ffmpeg-", suffix=".log", delete=False)
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=self._stderr)
        except OSError as exc:
            self._cleanup_log()
            raise EncodeError(f"could not start ffmpeg: {exc}") from exc
        # A larger pipe (Linux: F_SETPIPE_SZ) means far fewer wake-ups of ffmpeg per frame,
        # which matters when both share one core. Best effort.
        with contextlib.suppress(OSError, AttributeError):
            import fcntl

            fcntl.fcntl(self._proc.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)

    def write(self, frames: np.ndarray) -> None:
        """Append frames: ``(n, height, width, 4)`` or ``(height, width, 4)`` uint8 RGBA."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 4):
            raise EncodeError(
                f"frames must be uint8 (n, {self.height}, {self.width}, 4), got "
                f"{frames.dtype} {frames.shape}"
            )
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frames)).cast("B"))
        except (BrokenPipeError, ValueError) as exc:
            self._proc.wait()
            raise EncodeError(f"ffmpeg stopped while encoding: {_tail(Path(self._stderr.name))}"
                              ) from exc
        self.frames_written += len(frames)

    def close(self) -> None:
        if self._proc.stdin and not self._proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        rc = self._proc.wait()
        log = _tail(Path(self._stderr.name))
        self._cleanup_log()
        if rc != 0:
            self.path.unlink(missing_ok=True)
            raise EncodeError(f"ffmpeg exited with status {rc}: {log}")
        if self.frames_written == 0:
            self.path.unlink(missing_ok=True)
            raise EncodeError("no frames were written")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            if self._proc.stdin:
                self._proc.stdin.close()
        except OSError:
            pass
        self._proc.wait()
        self._cleanup_log()
        self.path.unlink(missing_ok=True)

    def _cleanup_log(self) -> None:
        try:
            self._stderr.close()
        finally:
            Path(self._stderr.name).unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --- audio ------------------------------------------------------------------------------------


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> float:
    """Write mono 16-bit PCM; returns the duration in seconds. Multi-channel input is mixed
    down; values are clipped to [-1, 1]."""
    samples = np.asarray(samples)
    if samples.dtype.kind not in "fiu":
        raise MediaInputError(f"audio: expected numbers, got dtype {samples.dtype}")
    if samples.ndim == 2:
        # (N, C) channels last, or (C, N) with few channels first
        samples = samples.mean(axis=1) if samples.shape[1] <= 8 else samples.mean(axis=0)
    if samples.ndim != 1 or samples.size == 0:
        raise MediaInputError(f"audio: expected a non-empty 1-D waveform, got {samples.shape}")
    if not isinstance(sample_rate, int | np.integer) or not 4000 <= int(sample_rate) <= 192000:
        raise MediaInputError(f"audio: sample rate must be 4000..192000 Hz, got {sample_rate!r}")
    if samples.dtype.kind in "iu":
        scale = float(np.iinfo(samples.dtype).max)
        samples = samples.astype(np.float32) / scale
    if not np.isfinite(samples).all():
        raise MediaInputError("audio: the waveform contains NaN or infinite values")
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(int(sample_rate))
        wav.writeframes(pcm.tobytes())
    return len(pcm) / int(sample_rate)


def read_audio(path: str | Path) -> tuple[np.ndarray, int | None]:
    """A waveform from a ``.wav`` (PCM 8/16/32-bit) or ``.npy`` file; the sample rate is None
    for ``.npy`` (the caller must know it)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False), None
        except (OSError, ValueError) as exc:
            raise MediaInputError(f"{path.name}: not a readable .npy file ({exc})") from exc
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise MediaInputError(f"{path.name}: not a readable WAV file ({exc})") from exc
    dtype = {1: np.uint8, 2: "<i2", 4: "<i4"}.get(width)
    if dtype is None:
        raise MediaInputError(f"{path.name}: unsupported sample width {width} bytes")
    data = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    if width == 1:
        data = (data - 128.0) / 128.0
    else:
        data /= float(2 ** (8 * width - 1))
    return data.reshape(-1, channels).mean(axis=1), rate


# --- subtitles --------------------------------------------------------------------------------

def font_path(weight: str = "Semibold") -> str:
    import pyrender

    path = Path(pyrender.__file__).resolve().parent / "fonts" / f"OpenSans-{weight}.ttf"
    if not path.is_file():
        raise EncodeError(f"font not found: {path}")
    return str(path)


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str


def transcript_cues(words: Sequence[dict], *, max_words: int = 7, max_s: float = 3.0,
                    gap_s: float = 0.6, hold_s: float = 0.4) -> list[Cue]:
    """Group timed words (``{"word", "start", "end"}``) into subtitle cues: a new cue after
    ``max_words`` words, ``max_s`` seconds, or a pause longer than ``gap_s``. Each cue stays
    ``hold_s`` after its last word unless the next one starts earlier."""
    clean = []
    for i, w in enumerate(words or []):
        try:
            text, start, end = str(w["word"]).strip(), float(w["start"]), float(w["end"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MediaInputError(f"transcript[{i}]: expected word, start, end ({exc})") from exc
        if not (np.isfinite(start) and np.isfinite(end)) or end < start or start < 0:
            raise MediaInputError(f"transcript[{i}]: bad times start={start} end={end}")
        if text:
            clean.append((start, end, text))
    clean.sort(key=lambda t: t[0])
    cues: list[Cue] = []
    group: list[tuple[float, float, str]] = []
    for item in clean:
        if group and (len(group) >= max_words or item[1] - group[0][0] > max_s
                      or item[0] - group[-1][1] > gap_s):
            cues.append(Cue(group[0][0], group[-1][1], " ".join(g[2] for g in group)))
            group = []
        group.append(item)
    if group:
        cues.append(Cue(group[0][0], group[-1][1], " ".join(g[2] for g in group)))
    held = []
    for i, cue in enumerate(cues):
        limit = cues[i + 1].start if i + 1 < len(cues) else cue.end + hold_s
        held.append(Cue(cue.start, max(cue.end, min(cue.end + hold_s, limit)), cue.text))
    return held


class SubtitleBurner:
    """Draws cues into RGBA frames in place: white text with a dark outline, bottom centred."""

    def __init__(self, cues: Sequence[Cue], *, width: int, height: int, fps: float) -> None:
        self.cues = list(cues)
        self.width, self.height, self.fps = width, height, fps
        self._size = max(10, round(height * 0.055))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, int, int]] = {}
        self._starts = np.array([c.start for c in self.cues])

    def _sprite(self, index: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        if index not in self._cache:
            from PIL import Image, ImageDraw, ImageFont

            font = ImageFont.truetype(font_path(), self._size)
            text = self._wrap(self.cues[index].text, font)
            stroke = max(1, self._size // 8)
            probe = ImageDraw.Draw(Image.new("L", (1, 1)))
            box = probe.multiline_textbbox((0, 0), text, font=font, stroke_width=stroke,
                                           align="center")
            # Centred lines of different widths give fractional bounds: whole pixels outward.
            box = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
            w, h = box[2] - box[0] + 2, box[3] - box[1] + 2
            img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
            ImageDraw.Draw(img).multiline_text(
                (-box[0] + 1, -box[1] + 1), text, font=font, fill=(255, 255, 255, 255),
                stroke_width=stroke, stroke_fill=(20, 20, 20, 255), align="center")
            rgba = np.asarray(img, dtype=np.float32)
            w = min(w, self.width)
            h = min(h, self.height)
            x0 = (self.width - w) // 2
            y0 = max(0, self.height - h - round(self.height * 0.04))
            self._cache[index] = (rgba[:h, :w, :3], rgba[:h, :w, 3:4] / 255.0, x0, y0)
        return self._cache[index]

    def _wrap(self, text: str, font) -> str:
        lines, line = [], ""
        for word in text.split():
            trial = f"{line} {word}".strip()
            if line and font.getlength(trial) > self.width * 0.92:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
        return "\n".join(lines)

    def cue_at(self, t: float) -> int | None:
        i = int(np.searchsorted(self._starts, t, side="right")) - 1
        if i >= 0 and t < self.cues[i].end:
            return i
        return None

    def burn(self, frames: np.ndarray, first_index: int) -> None:
        """``frames`` ``(n, H, W, 4)`` uint8, the first being frame ``first_index`` of the clip."""
        for k in range(len(frames)):
            cue = self.cue_at((first_index + k) / self.fps)
            if cue is None:
                continue
            rgb, alpha, x0, y0 = self._sprite(cue)
            h, w = alpha.shape[:2]
            region = frames[k, y0: y0 + h, x0: x0 + w, :3]
            blended = region * (1.0 - alpha) + rgb * alpha
            region[...] = (blended + 0.5).astype(np.uint8)


# --- posters and decoding ---------------------------------------------------------------------


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[..., :3])).save(buf, format="PNG")
    return buf.getvalue()


def probe_duration(path: str | Path) -> float | None:
    """Duration of a media file in seconds by asking ffmpeg to read it through; ``None`` if it
    cannot be read."""
    proc = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-nostdin", "-i", str(path), "-f", "null", "-"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    if proc.returncode != 0:
        return None
    last = None
    for line in proc.stderr.splitlines():
        if "time=" in line:
            last = line.rsplit("time=", 1)[1].split()[0]
    if not last:
        return None
    hours, minutes, seconds = last.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def decode_frames(
    path: str | Path, *, width: int, height: int, fps: float,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0), max_frames: int | None = None,
    batch: int = 16,
) -> Iterator[np.ndarray]:
    """Decode a video into ``(n, height, width, 4)`` RGBA batches at ``fps``, scaled to fit
    and padded (letterboxed) with ``background``. Raises ``MediaInputError`` when ffmpeg
    cannot read the file."""
    color = "0x" + "".join(f"{round(c * 255):02x}" for c in background)
    vf = (f"fps={_rate(fps)},scale={width}:{height}:force_original_aspect_ratio=decrease,"
          f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color={color},format=rgba")
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
           "-an", "-vf", vf]
    if max_frames is not None:
        cmd += ["-frames:v", str(int(max_frames))]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgba", "pipe:1"]
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in the finally below
        prefix="ffmpeg-dec-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
    frame_bytes = width * height * 4
    produced = 0
    try:
        while True:
            data = proc.stdout.read(frame_bytes * batch)
            if not data:
                break
            n = len(data) // frame_bytes
            if n:
                produced += n
                yield np.frombuffer(data[: n * frame_bytes], np.uint8).reshape(
                    n, height, width, 4).copy()
            if len(data) < frame_bytes * batch:
                break
        rc = proc.wait()
        if rc != 0 or produced == 0:
            raise MediaInputError(
                f"video {Path(path).name}: ffmpeg could not decode it"
                f"{': ' + _tail(Path(log.name)) if _tail(Path(log.name)) else ''}"
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        Path(log.name).unlink(missing_ok=True)
