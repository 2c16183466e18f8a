"""Reads for clips."""

from __future__ import annotations

import uuid
from functools import lru_cache

from django.core.files.storage import default_storage

from rendering.blobs import blob_name
from rendering.models import Clip, ClipStatus
from rendering.mp4_samples import Plan, plan


def clip_get_servable(*, public_id: uuid.UUID | str) -> Clip | None:
    """A finished clip by its public id, or None. Only finished clips are ever served."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        return None
    return Clip.objects.filter(public_id=public_id, status=ClipStatus.SUCCEEDED).first()


def clip_stored_size(clip: Clip, part: str) -> int:
    """Bytes of a finished clip's stored ``video``, or of its ``poster`` as exposures get it
    (``plain_poster``); 0 when the file is missing."""
    if part == "video" and clip.mp4_bytes:
        return int(clip.mp4_bytes)
    if part == "poster" and clip.poster_sha:
        plain = plain_poster(clip.poster_sha)
        if plain is not None:
            return len(plain)
    sha, ext = (clip.mp4_sha, "mp4") if part == "video" else (clip.poster_sha, "png")
    try:
        return int(default_storage.size(blob_name(sha, ext)))
    except (FileNotFoundError, OSError):
        return 0


@lru_cache(maxsize=1024)
def _video_plan(sha: str) -> Plan | None:
    name = blob_name(sha, "mp4")
    try:
        with default_storage.open(name, "rb") as fh:
            return plan(fh, default_storage.size(name))
    except (FileNotFoundError, OSError):
        return None


def clip_video_plan(clip: Clip) -> Plan | None:
    """How a finished clip's video is remuxed to constant-size samples (None: it is not);
    kept per content hash, as stored files never change."""
    return _video_plan(clip.mp4_sha) if clip.mp4_sha else None


@lru_cache(maxsize=64)
def plain_poster(sha: str) -> bytes | None:
    """A stored poster re-encoded without compression (RGB, stored deflate blocks): its size and
    its data chunks follow its width and height only, not what it shows."""
    import io

    from PIL import Image

    try:
        with default_storage.open(blob_name(sha, "png"), "rb") as fh:
            image = Image.open(fh)
            image.load()
    except (FileNotFoundError, OSError):
        return None
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG", compress_level=0)
    return out.getvalue()
