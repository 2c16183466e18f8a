"""Writes for clips: request a clip (deduplicated by content hash), render it in a worker.

Callers pass arrays, blob hashes and plain data (fps, audio hash and rate, transcript words,
speaker video hash) — never rows of other apps — so this app depends on nothing above it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from hashlib import sha256
from pathlib import Path

import numpy as np
from django.conf import settings as django_settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from rendering import blobs
from rendering.encode import EncodeError, MediaInputError, decode_frames, png_bytes, transcript_cues
from rendering.models import Clip, ClipKind, ClipStatus
from rendering.pipeline import (
    SpeakerMedia,
    poster_index,
    render_clip,
    renderers,
    transcode_clip,
)
from rendering.renderer import CLAY, SPEAKER_BLUE, RenderError, RenderSettings, select_gl_platform
from rendering.rigs import CoefficientError, RigError, get_rig, sanitize_coefficients

logger = logging.getLogger(__name__)

HASH_SCHEME = 2  # bump when the meaning of the hashed fields changes (2: fixed GOP, no B)
VIDEO_EXTENSIONS = ("mp4", "webm", "mov", "avi", "mkv")
_PROGRESS_STEP = 5.0  # percent between progress writes
_HEARTBEAT_S = 10.0  # at most this long between writes while frames are rendered (a heartbeat:
#   settings.CLIP_SILENT_S later, a running clip is taken to have lost its worker)


class ClipRequestError(ValueError):
    """A clip cannot be requested as asked; the message names the field and the reason."""


@dataclass(frozen=True)
class SpeakerInputs:
    """The episode's media for a speaker clip, as blob hashes and plain data."""

    audio_sha: str = ""  # (N,) float32 mono waveform .npy
    sample_rate: int | None = None
    transcript: list[dict] | None = None  # [{"word", "start", "end"}, …] in seconds
    video_sha: str = ""  # the speaker's own video, if any
    video_ext: str = ""

    def as_dict(self) -> dict:
        out: dict = {}
        if self.audio_sha:
            out["audio_sha"] = self.audio_sha
            out["sample_rate"] = int(self.sample_rate or 0)
        if self.transcript:
            transcript_cues(self.transcript)  # MediaInputError naming the bad word
            out["transcript"] = [
                {"word": str(w["word"]), "start": float(w["start"]), "end": float(w["end"])}
                for w in self.transcript
            ]
        if self.video_sha:
            out["video_sha"] = self.video_sha
            out["video_ext"] = self.video_ext
        return out


@dataclass
class _Request:
    kind: str
    face_model: str
    rig_fingerprint: str
    sequence_sha: str
    fps: float
    settings: RenderSettings
    media: dict = field(default_factory=dict)

    def content_hash(self) -> str:
        payload = {
            "scheme": HASH_SCHEME,
            "kind": self.kind,
            "face_model": self.face_model,
            "rig": self.rig_fingerprint,
            "sequence": self.sequence_sha,
            "fps": repr(float(self.fps)),
            "settings": self.settings.as_dict(),
            "media": self.media,
        }
        return sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
                      ).hexdigest()


def speaker_settings(settings: RenderSettings | None) -> RenderSettings:
    """Speakers are drawn in their own colour unless the caller chose one other than the
    candidates' clay."""
    settings = settings or RenderSettings()
    if settings.face_color == CLAY:
        settings = settings.replace(face_color=SPEAKER_BLUE)
    return settings


def _validated(
    *, face_model: str, fps: float, sequence: np.ndarray | None, sequence_sha: str,
    settings: RenderSettings | dict | None, kind: str, speaker: SpeakerInputs | None,
) -> tuple[_Request, np.ndarray | None, dict | None]:
    if kind not in ClipKind.values:
        raise ClipRequestError(f"kind: expected one of {', '.join(ClipKind.values)}, got {kind!r}")
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise ClipRequestError(f"fps: expected a number, got {fps!r}") from None
    if not np.isfinite(fps) or not 1.0 <= fps <= 240.0:
        raise ClipRequestError(f"fps: must be between 1 and 240, got {fps}")
    try:
        if isinstance(settings, dict):
            settings = RenderSettings.from_dict(settings)
    except (TypeError, ValueError) as exc:
        raise ClipRequestError(str(exc)) from exc
    if kind == ClipKind.SPEAKER:
        settings = speaker_settings(settings)
    settings = settings or RenderSettings()

    try:
        media = (speaker or SpeakerInputs()).as_dict()
    except (MediaInputError, TypeError, ValueError) as exc:
        raise ClipRequestError(str(exc)) from exc
    if media and kind != ClipKind.SPEAKER:
        raise ClipRequestError("speaker inputs are only for clips of kind 'speaker'")
    if "audio_sha" in media:
        if not blobs.blob_exists(media["audio_sha"], "npy"):
            raise ClipRequestError(f"audio_sha: no stored audio {media['audio_sha']}")
        if not 4000 <= media["sample_rate"] <= 192000:
            raise ClipRequestError(f"sample_rate: must be 4000..192000 Hz, got "
                                   f"{media['sample_rate']}")
    if "video_sha" in media:
        if media["video_ext"] not in VIDEO_EXTENSIONS:
            raise ClipRequestError(f"video_ext: expected one of {', '.join(VIDEO_EXTENSIONS)}, "
                                   f"got {media['video_ext']!r}")
        if not blobs.blob_exists(media["video_sha"], media["video_ext"]):
            raise ClipRequestError(f"video_sha: no stored video {media['video_sha']}")

    if "video_sha" in media:
        if sequence is not None or sequence_sha:
            raise ClipRequestError("a speaker clip from video takes no expression sequence")
        return (_Request(kind, "", "", "", fps, settings, media), None, None)
    if sequence is None and not sequence_sha:
        raise ClipRequestError("sequence: an expression sequence (or its blob hash) is required")
    try:
        rig = get_rig(face_model)
    except RigError as exc:
        raise ClipRequestError(f"face_model: {exc}") from exc
    if sequence is None:
        try:
            sequence = blobs.load_array(sequence_sha)
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise ClipRequestError(f"sequence_sha: cannot read {sequence_sha}: {exc}") from exc
    try:
        _, clip_record = sanitize_coefficients(sequence, rig.layout, name="sequence")
    except CoefficientError as exc:
        raise ClipRequestError(str(exc)) from exc
    # The clip is addressed by the sequence as asked (float32), not as clipped.
    array = np.ascontiguousarray(sequence, dtype=np.float32)
    sha = blobs.sha256_bytes(blobs.array_bytes(array))  # canonical, whatever was stored
    record = clip_record.as_dict() if clip_record.clipped else None
    req = _Request(kind, face_model, rig.fingerprint, sha, fps, settings, media)
    return req, array, record


@transaction.atomic
def clip_request(
    *,
    face_model: str = "builtin",
    fps: float,
    sequence: np.ndarray | None = None,
    sequence_sha: str = "",
    settings: RenderSettings | dict | None = None,
    kind: str = ClipKind.CANDIDATE,
    speaker: SpeakerInputs | None = None,
    enqueue: bool = True,
) -> Clip:
    """The clip for these inputs: the existing one, or a new queued render job.

    Bad input raises ``ClipRequestError`` and stores nothing. A failed clip asked for again is
    queued again; a finished clip whose files went missing is queued to restore them. The
    render task is enqueued after the transaction commits.
    """
    req, array, record = _validated(
        face_model=face_model, fps=fps, sequence=sequence, sequence_sha=sequence_sha,
        settings=settings, kind=kind, speaker=speaker,
    )
    content_hash = req.content_hash()
    clip = Clip.objects.select_for_update().filter(content_hash=content_hash).first()
    requeue = False
    if clip is None:
        if array is not None:
            blobs.put_array(array)
        try:
            with transaction.atomic():
                clip = Clip.objects.create(
                    content_hash=content_hash, kind=req.kind, face_model=req.face_model,
                    rig_fingerprint=req.rig_fingerprint, sequence_sha=req.sequence_sha,
                    fps=req.fps, n_frames=len(array) if array is not None else 0,
                    settings=req.settings.as_dict(), media=req.media, clipped=record,
                )
        except IntegrityError:  # someone else created it a moment ago
            clip = Clip.objects.select_for_update().get(content_hash=content_hash)
        else:
            requeue = True
    elif clip.status == ClipStatus.FAILED or (
        clip.status == ClipStatus.SUCCEEDED and not _files_present(clip)
    ):
        clip.status, clip.error, clip.progress = ClipStatus.QUEUED, "", 0.0
        clip.save(update_fields=["status", "error", "progress"])
        requeue = True
    if requeue and enqueue:
        _enqueue(clip.pk)
    return clip


def _enqueue(clip_id: int) -> None:
    from rendering.tasks import render_clip_task

    transaction.on_commit(lambda: render_clip_task.delay(clip_id))


def _files_present(clip: Clip) -> bool:
    return bool(clip.mp4_sha and clip.poster_sha and blobs.blob_exists(clip.mp4_sha, "mp4")
                and blobs.blob_exists(clip.poster_sha, "png"))


@transaction.atomic
def clip_retry(*, clip_id: int) -> bool:
    """Queue a failed clip again. Returns False if it was not failed."""
    n = Clip.objects.filter(pk=clip_id, status=ClipStatus.FAILED).update(
        status=ClipStatus.QUEUED, error="", progress=0.0)
    if n:
        _enqueue(clip_id)
    return bool(n)


@transaction.atomic
def clips_requeue_stale(*, silent_for: timedelta) -> int:
    """Put back clips whose worker vanished: running, and no sign of life (a heartbeat, or the
    start for a clip claimed before heartbeats) for ``silent_for``. The worker that rendered
    it, if it was only slow, finishes the same content-addressed files; the new task renders
    again whatever is missing."""
    cutoff = timezone.now() - silent_for
    ids = list(Clip.objects.select_for_update(skip_locked=True)
               .filter(status=ClipStatus.RUNNING)
               .filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at=None, started_at__lt=cutoff))
               .values_list("pk", flat=True))
    Clip.objects.filter(pk__in=ids).update(status=ClipStatus.QUEUED, progress=0.0,
                                           heartbeat_at=None)
    for pk in ids:
        _enqueue(pk)
    if ids:
        logger.warning("clips %s: no sign of their worker for %s, queued again", ids, silent_for)
    return len(ids)


# --- the worker side --------------------------------------------------------------------------

_EXPECTED_ERRORS = (CoefficientError, RigError, MediaInputError, EncodeError, RenderError,
                    ClipRequestError, FileNotFoundError)


def clip_render(*, clip_id: int, progress: Callable[[int, int], None] | None = None) -> None:
    """Claim a queued clip and render whatever of it is missing.

    A second call (a redelivery, a retry) finds the clip no longer queued and does nothing. The
    MP4 is encoded into a temporary folder and stored under its hash only once complete; a
    failure stores nothing and records the reason on the row.
    """
    now = timezone.now()
    claimed = Clip.objects.filter(pk=clip_id, status=ClipStatus.QUEUED).update(
        status=ClipStatus.RUNNING, started_at=now, heartbeat_at=now, finished_at=None,
        progress=0.0, error="", attempts=F("attempts") + 1,
    )
    if not claimed:
        logger.info("clip %s: not queued (gone or taken), nothing to do", clip_id)
        return
    clip = Clip.objects.get(pk=clip_id)
    try:
        fields = _render_missing(clip, progress)
    except _EXPECTED_ERRORS as exc:
        logger.warning("clip %s failed: %s", clip_id, exc)
        _finish(clip_id, status=ClipStatus.FAILED, error=str(exc))
        return
    except Exception as exc:
        logger.exception("clip %s crashed", clip_id)
        _finish(clip_id, status=ClipStatus.FAILED, error=f"internal error: {exc!r}")
        raise
    _finish(clip_id, status=ClipStatus.SUCCEEDED, progress=100.0, **fields)


def _render_missing(clip: Clip, report: Callable[[int, int], None] | None) -> dict:
    have_mp4 = bool(clip.mp4_sha) and blobs.blob_exists(clip.mp4_sha, "mp4")
    have_poster = bool(clip.poster_sha) and blobs.blob_exists(clip.poster_sha, "png")
    if have_mp4 and have_poster:
        logger.info("clip %s: files already stored", clip.pk)
        return {}
    settings = RenderSettings.from_dict(clip.settings)
    select_gl_platform(getattr(django_settings, "RENDER_GL_PLATFORM", "") or None)
    if have_mp4:  # only the poster is missing: take it from the stored video
        poster = _poster_from_video(clip, settings)
        sha, _ = blobs.put_blob(poster, "png")
        return {"poster_sha": sha}

    last = [0.0, time.monotonic()]  # percent and time of the last write

    def progress(done: int, total: int) -> None:
        if report is not None:
            report(done, total)
        percent = 100.0 * done / max(total, 1)
        now = time.monotonic()
        if percent - last[0] >= _PROGRESS_STEP or now - last[1] >= _HEARTBEAT_S:
            last[0], last[1] = percent, now
            Clip.objects.filter(pk=clip.pk, status=ClipStatus.RUNNING).update(
                progress=min(percent, 99.0), heartbeat_at=timezone.now())

    media = clip.media or {}
    speaker = None
    if media.get("audio_sha") or media.get("transcript"):
        audio = blobs.load_array(media["audio_sha"]) if media.get("audio_sha") else None
        speaker = SpeakerMedia(audio=audio, sample_rate=media.get("sample_rate"),
                               transcript=media.get("transcript"))
    with tempfile.TemporaryDirectory(prefix=f"clip-{clip.pk}-") as tmp:
        out = Path(tmp) / "clip.mp4"
        if media.get("video_sha"):
            with _local_blob(media["video_sha"], media["video_ext"]) as video:
                result = transcode_clip(video_path=video, fps=clip.fps, settings=settings,
                                        out_path=out, media=speaker, progress=progress)
        else:
            rig = get_rig(clip.face_model)
            if rig.fingerprint != clip.rig_fingerprint:
                raise RigError(
                    f"the {clip.face_model} face model changed since this clip was requested "
                    "(its geometry hash differs); request the clip again"
                )
            coeffs = blobs.load_array(clip.sequence_sha)
            renderer = renderers.get(rig, settings)
            result = render_clip(rig=rig, coeffs=coeffs, fps=clip.fps, settings=settings,
                                 out_path=out, media=speaker, renderer=renderer,
                                 progress=progress)
        data = out.read_bytes()
    mp4_sha, _ = blobs.put_blob(data, "mp4")
    poster_sha = clip.poster_sha if have_poster else blobs.put_blob(result.poster_png, "png")[0]
    return {
        "mp4_sha": mp4_sha,
        "poster_sha": poster_sha,
        "mp4_bytes": len(data),
        "n_frames": result.n_frames,
        "clipped": result.clipped.as_dict() if result.clipped else None,
        "render_seconds": round(result.seconds, 3),
    }


def _poster_from_video(clip: Clip, settings: RenderSettings) -> bytes:
    index = poster_index(clip.n_frames or 1)
    with _local_blob(clip.mp4_sha, "mp4") as path:
        frame = None
        seen = 0
        for batch in decode_frames(path, width=settings.width, height=settings.height,
                                   fps=clip.fps, max_frames=index + 1):
            for f in batch:
                frame = f
                seen += 1
        if frame is None:
            raise EncodeError(f"clip {clip.pk}: the stored video has no frames")
    return png_bytes(frame)


class _local_blob:
    """A stored blob as a local file path: in place on the file system, else a temporary copy."""

    def __init__(self, sha: str, ext: str) -> None:
        self.sha, self.ext, self._tmp = sha, ext, None

    def __enter__(self) -> Path:
        from django.core.files.storage import default_storage

        name = blobs.blob_name(self.sha, self.ext)
        if not default_storage.exists(name):
            raise FileNotFoundError(f"stored {self.ext} {self.sha} is missing")
        try:
            return Path(default_storage.path(name))
        except NotImplementedError:
            self._tmp = tempfile.NamedTemporaryFile(suffix=f".{self.ext}")
            self._tmp.write(blobs.read_blob(self.sha, self.ext))
            self._tmp.flush()
            return Path(self._tmp.name)

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.close()


def _finish(clip_id: int, **fields: object) -> None:
    Clip.objects.filter(pk=clip_id).update(finished_at=timezone.now(), **fields)
