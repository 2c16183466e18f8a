"""Serving clips to browsers through signed URLs, with byte ranges (video seeking)."""

from __future__ import annotations

import io
import logging
import re

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_http_methods

from rendering.blinding import OVERHEAD, Padding, read_range, segments, shared_size
from rendering.blobs import blob_name
from rendering.selectors import clip_get_servable, plain_poster
from rendering.signing import ClipTokenError, clip_token_read

logger = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TYPES = {"video": ("mp4", "video/mp4", "clip.mp4"), "poster": ("png", "image/png", "poster.png")}


@require_http_methods(["GET", "HEAD"])
def clip_media(request: HttpRequest, token: str) -> HttpResponse:
    try:
        public_id, part = clip_token_read(token)
    except ClipTokenError:
        raise Http404("no such clip") from None
    clip = clip_get_servable(public_id=public_id)
    if clip is None:
        raise Http404("no such clip")
    return clip_file_response(request, clip, part)


def clip_file_response(request: HttpRequest, clip, part: str,
                       padding: Padding | None = None) -> HttpResponse:
    """The clip's video or poster, honouring a byte range; for views that have already decided
    the requester may see it. With ``padding``, the requester's own copy (``blinding``)."""
    ext, content_type, filename = _TYPES[part]
    sha = clip.mp4_sha if part == "video" else clip.poster_sha
    name = blob_name(sha, ext)
    plain = plain_poster(sha) if padding is not None and part == "poster" else None
    try:
        if plain is not None:  # an exposure's poster: one whose bytes follow its size only
            stored, fh = len(plain), io.BytesIO(plain)
        else:
            stored = default_storage.size(name)
            fh = default_storage.open(name, "rb")
    except (FileNotFoundError, OSError):
        raise Http404("no such clip") from None
    if padding is not None and padding.size - stored < OVERHEAD[part]:
        # a stored size that disagrees with the clip's record: still a copy of its own
        logger.warning("clip %s: %s of %d bytes above the item's size %d", clip.pk, part,
                       stored, padding.size)
        padding = Padding(size=shared_size([stored], part), key=padding.key)
    pieces = segments(part, fh, stored, padding)
    size = sum(p.size for p in pieces)

    start, end = 0, size - 1
    status = 200
    header = request.headers.get("Range", "").strip()
    if header:
        m = _RANGE.match(header)
        if not m or (not m.group(1) and not m.group(2)):
            fh.close()
            return _unsatisfiable(size)
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # the last N bytes
            start = max(0, size - int(m.group(2)))
        if start >= size or start > end:
            fh.close()
            return _unsatisfiable(size)
        status = 206

    length = end - start + 1
    if request.method == "HEAD":
        fh.close()
        response = HttpResponse(status=status, content_type=content_type)
    else:
        response = StreamingHttpResponse(read_range(fh, pieces, start, length), status=status,
                                         content_type=content_type)
    response["Content-Length"] = str(length)
    if status == 206:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Accept-Ranges"] = "bytes"
    # Private: the URL is a capability for one person; no shared cache may keep it.
    response["Cache-Control"] = f"private, max-age={settings.CLIP_URL_MAX_AGE_S}, no-transform"
    response["Content-Disposition"] = f'inline; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    response["Referrer-Policy"] = "no-referrer"
    return response


def _unsatisfiable(size: int) -> HttpResponse:
    response = HttpResponse(status=416)
    response["Content-Range"] = f"bytes */{size}"
    return response
