"""Short-lived signed URLs for clips.

The token is ``django.core.signing`` over ``{"c": <public id>, "p": "v" | "p"}`` with a
timestamp: it carries only the clip's random public id and which file (video or poster), so
neither the URL nor the file name says anything about the candidate, its policy or the episode.
Tokens expire after ``CLIP_URL_MAX_AGE_S`` seconds.
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.urls import reverse

from rendering.models import Clip

SALT = "rendering.clip-url"
PARTS = {"video": "v", "poster": "p"}


class ClipTokenError(Exception):
    """The token is forged, damaged or expired."""


def clip_token(clip: Clip, *, part: str = "video") -> str:
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    return signing.dumps({"c": clip.public_id.hex, "p": PARTS[part]}, salt=SALT, compress=False)


def clip_url(clip: Clip, *, part: str = "video") -> str:
    """The path of a signed URL for the clip's video or poster (prefix the host yourself)."""
    return reverse("rendering:clip-media", kwargs={"token": clip_token(clip, part=part)})


def clip_token_read(token: str, *, max_age: int | None = None) -> tuple[str, str]:
    """``(public id hex, part)`` from a valid, unexpired token; ``ClipTokenError`` otherwise."""
    age = settings.CLIP_URL_MAX_AGE_S if max_age is None else max_age
    try:
        data = signing.loads(token, salt=SALT, max_age=age)
    except signing.SignatureExpired as exc:
        raise ClipTokenError("expired") from exc
    except signing.BadSignature as exc:
        raise ClipTokenError("invalid") from exc
    if not isinstance(data, dict) or data.get("p") not in PARTS.values() or not isinstance(
        data.get("c"), str
    ):
        raise ClipTokenError("invalid")
    part = next(k for k, v in PARTS.items() if v == data["p"])
    return data["c"], part
