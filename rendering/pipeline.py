"""From arrays to finished files: render → (subtitles) → encode, and the speaker transcode.

Plain Python on top of ``renderer`` and ``encode``; the Django services call these with data
they loaded from blobs, and so do the commands, the benchmark and the tests. Every function
writes to the path it is given and removes it again if anything fails.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rendering.encode import (
    SubtitleBurner,
    VideoWriter,
    decode_frames,
    png_bytes,
    transcript_cues,
    write_wav,
)
from rendering.renderer import FaceRenderer, RenderSettings
from rendering.rigs.base import ClipRecord, Rig, sanitize_coefficients

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (frames done, frames in total)


@dataclass
class ClipOutput:
    mp4_path: Path
    poster_png: bytes
    n_frames: int
    clipped: ClipRecord | None
    seconds: float


@dataclass(frozen=True)
class SpeakerMedia:
    """What a speaker clip carries besides the picture: all optional."""

    audio: np.ndarray | None = None  # (N,) mono waveform in [-1, 1]
    sample_rate: int | None = None
    transcript: Sequence[dict] | None = None  # [{"word", "start", "end"}, …] in seconds

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


class RendererCache:
    """Renderers kept per process, keyed by rig and settings: a worker renders clip after clip
    without setting up GL again. Small, because each holds a GL context and buffers."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[tuple, FaceRenderer] = OrderedDict()

    def get(self, rig: Rig, settings: RenderSettings, *, platform: str | None = None,
            tiles: int | None = None) -> FaceRenderer:
        key = (rig.fingerprint, repr(sorted(settings.as_dict().items())), platform, tiles)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        renderer = FaceRenderer(rig, settings, platform=platform, tiles=tiles)
        self._items[key] = renderer
        while len(self._items) > self.size:
            _, old = self._items.popitem(last=False)
            old.close()
        return renderer

    def clear(self) -> None:
        while self._items:
            self._items.popitem()[1].close()


renderers = RendererCache()


def poster_index(n_frames: int) -> int:
    return n_frames // 2


def _audio_file(tmp: Path, media: SpeakerMedia | None) -> Path | None:
    if media is None or media.audio is None:
        return None
    path = tmp / "audio.wav"
    write_wav(path, media.audio, int(media.sample_rate or 0))
    return path


def _burner(media: SpeakerMedia | None, settings: RenderSettings, fps: float):
    if media is None or not media.transcript:
        return None
    cues = transcript_cues(media.transcript)
    if not cues:
        return None
    return SubtitleBurner(cues, width=settings.width, height=settings.height, fps=fps)


def render_clip(
    *,
    rig: Rig,
    coeffs: np.ndarray,
    fps: float,
    settings: RenderSettings,
    out_path: str | Path,
    media: SpeakerMedia | None = None,
    renderer: FaceRenderer | None = None,
    progress: Progress | None = None,
    encoder_threads: int = 0,
) -> ClipOutput:
    """Render an expression sequence on ``rig`` into an MP4 at ``out_path`` and a poster.

    Out-of-range values are clipped and reported in ``ClipOutput.clipped``; NaN/inf, wrong
    widths and empty sequences raise ``CoefficientError`` before anything is written.
    """
    t0 = time.perf_counter()
    clean, record = sanitize_coefficients(coeffs, rig.layout)
    renderer = renderer or renderers.get(rig, settings)
    n = len(clean)
    poster_at = poster_index(n)
    poster = None
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="render-") as tmp:
        audio = _audio_file(Path(tmp), media)
        burner = _burner(media, settings, fps)
        with VideoWriter(out_path, width=settings.width, height=settings.height, fps=fps,
                         crf=settings.crf, preset=settings.preset, threads=encoder_threads,
                         audio_path=audio, duration=n / fps) as writer:
            done = 0
            for batch in renderer.render_batches(clean):
                if done <= poster_at < done + len(batch):
                    poster = png_bytes(batch[poster_at - done])  # before subtitles
                if burner is not None:
                    burner.burn(batch, done)
                writer.write(batch)
                done += len(batch)
                if progress is not None:
                    progress(done, n)
    seconds = time.perf_counter() - t0
    logger.info("rendered %d frames (%dx%d) in %.2f s", n, settings.width, settings.height,
                seconds)
    return ClipOutput(out_path, poster, n, record if record.clipped else None, seconds)


def transcode_clip(
    *,
    video_path: str | Path,
    fps: float,
    settings: RenderSettings,
    out_path: str | Path,
    media: SpeakerMedia | None = None,
    max_frames: int | None = None,
    progress: Progress | None = None,
    encoder_threads: int = 0,
) -> ClipOutput:
    """The speaker's own video in the clip format: resized into the clip's frame, at the
    sequence's fps, with the episode's audio (or the video's own) and subtitles burned in."""
    t0 = time.perf_counter()
    out_path = Path(out_path)
    frames_seen = 0
    # The length is unknown until the end: keep a thinning sample of frames (at most 64, every
    # ``stride``-th), enough to take the poster from the middle without holding the video.
    samples: list[tuple[int, np.ndarray]] = []
    stride = 1
    with tempfile.TemporaryDirectory(prefix="transcode-") as tmp:
        audio = _audio_file(Path(tmp), media)
        burner = _burner(media, settings, fps)
        with VideoWriter(out_path, width=settings.width, height=settings.height, fps=fps,
                         crf=settings.crf, preset=settings.preset, threads=encoder_threads,
                         audio_path=audio,
                         audio_from_input=None if audio else video_path) as writer:
            for batch in decode_frames(video_path, width=settings.width, height=settings.height,
                                       fps=fps, background=settings.background,
                                       max_frames=max_frames):
                for k in range(len(batch)):
                    if (frames_seen + k) % stride == 0:
                        samples.append((frames_seen + k, batch[k, ..., :3].copy()))
                if len(samples) > 64:
                    stride *= 2
                    samples = [(i, f) for i, f in samples if i % stride == 0]
                if burner is not None:
                    burner.burn(batch, frames_seen)
                writer.write(batch)
                frames_seen += len(batch)
                if progress is not None:
                    progress(frames_seen, max_frames or frames_seen)
    middle = poster_index(frames_seen)
    poster = png_bytes(min(samples, key=lambda item: abs(item[0] - middle))[1])
    return ClipOutput(out_path, poster, frames_seen, None, time.perf_counter() - t0)


def side_by_side(
    *,
    panels: Sequence[tuple[str, Rig, np.ndarray, RenderSettings]],
    fps: float,
    out_path: str | Path,
    media: SpeakerMedia | None = None,
    speaker_video: str | Path | None = None,
    speaker_label: str = "speaker",
    progress: Progress | None = None,
) -> ClipOutput:
    """One MP4 with panels next to each other, each labelled at the top: the speaker first
    (its video when given, else the first panel) and then the candidates, in lockstep, with the
    episode's audio and the transcript burned in across the whole width.

    ``panels`` are ``(label, rig, coefficients, settings)``; all settings must share one frame
    size. The clip lasts as long as the longest panel; shorter ones hold their last frame.
    """
    from PIL import Image, ImageDraw, ImageFont

    from rendering.encode import font_path

    if not panels and speaker_video is None:
        raise ValueError("side_by_side: nothing to show")
    sizes = {(s.width, s.height) for _, _, _, s in panels}
    if len(sizes) > 1:
        raise ValueError(f"side_by_side: panels differ in size {sorted(sizes)}")
    width, height = sizes.pop() if sizes else (256, 256)
    t0 = time.perf_counter()
    cleaned = [(label, rig, sanitize_coefficients(c, rig.layout, name=label)[0], s)
               for label, rig, c, s in panels]
    n_frames = max([len(c) for _, _, c, _ in cleaned] or [0])
    labels = ([speaker_label] if speaker_video is not None else []) + [p[0] for p in cleaned]
    n_panels = len(labels)
    label_h = max(14, round(height * 0.09))
    label_h += label_h % 2  # H.264 in yuv420p needs even sizes
    total_w, total_h = width * n_panels, height + label_h
    total_w += total_w % 2
    strip = Image.new("RGB", (total_w, label_h), (245, 245, 245))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.truetype(font_path(), max(9, round(label_h * 0.6)))
    for i, label in enumerate(labels):
        draw.text((i * width + width / 2, label_h / 2), label, font=font, fill=(30, 30, 30),
                  anchor="mm")
    strip_arr = np.asarray(strip)
    background = cleaned[0][3].background if cleaned else (0.0, 0.0, 0.0)

    # Each panel as a stream of single frames, so they can be advanced in lockstep.
    def renderer_stream(rig, coeffs, settings):
        # Panels may share one renderer, whose read-back buffer the next batch overwrites:
        # copy each batch as soon as it arrives.
        r = renderers.get(rig, settings)
        for batch in r.render_batches(coeffs):
            yield from batch[..., :3].copy()

    streams = []
    if speaker_video is not None:
        def video_stream():
            for batch in decode_frames(speaker_video, width=width, height=height, fps=fps,
                                       background=background, max_frames=n_frames or None):
                for frame in batch:
                    yield frame[..., :3]
        streams.append(video_stream())
        if not n_frames:
            raise ValueError("side_by_side: a speaker video needs at least one candidate")
    streams += [renderer_stream(rig, c, s) for _, rig, c, s in cleaned]
    last: list[np.ndarray | None] = [None] * n_panels
    out_path = Path(out_path)
    poster = None
    with tempfile.TemporaryDirectory(prefix="preview-") as tmp:
        audio = _audio_file(Path(tmp), media)
        burner = None
        if media is not None and media.transcript:
            cues = transcript_cues(media.transcript)
            burner = SubtitleBurner(cues, width=total_w, height=total_h, fps=fps) if cues else None
        with VideoWriter(out_path, width=total_w, height=total_h, fps=fps, audio_path=audio,
                         crf=18, preset="veryfast", duration=n_frames / fps) as writer:
            frame = np.zeros((1, total_h, total_w, 4), np.uint8)
            frame[..., 3] = 255
            frame[0, :label_h, :, :3] = strip_arr
            for t in range(n_frames):
                for i, stream in enumerate(streams):
                    img = next(stream, None)
                    if img is not None:
                        last[i] = img
                    if last[i] is not None:
                        frame[0, label_h:, i * width:(i + 1) * width, :3] = last[i]
                if t == poster_index(n_frames):
                    poster = png_bytes(frame[0])
                if burner is not None:
                    burner.burn(frame, t)
                writer.write(frame)  # the next frame overwrites every panel, subtitles too
                if progress is not None:
                    progress(t + 1, n_frames)
    return ClipOutput(out_path, poster, n_frames, None, time.perf_counter() - t0)
