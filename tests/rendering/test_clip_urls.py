"""Signed, short-lived clip URLs that reveal nothing about the candidate."""

import base64
import json

import numpy as np
import pytest
from django.core import signing

from rendering import blobs
from rendering.models import ClipStatus
from rendering.renderer import RenderSettings
from rendering.services import clip_render, clip_request
from rendering.signing import clip_token, clip_url

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.rendering.urls")]


@pytest.fixture
def clip():
    seq = np.zeros((10, 18), np.float32)
    c = clip_request(fps=30, sequence=seq, settings=RenderSettings(width=64, height=64),
                     enqueue=False)
    clip_render(clip_id=c.pk)
    c.refresh_from_db()
    assert c.status == ClipStatus.SUCCEEDED
    return c


def test_url_carries_only_an_opaque_id(clip):
    url = clip_url(clip)
    assert url.startswith("/clips/")
    for secret in (clip.content_hash, clip.sequence_sha, clip.mp4_sha, clip.poster_sha):
        assert secret not in url
    payload = clip_token(clip).split(":")[0]
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert data == {"c": clip.public_id.hex, "p": "v"}


def test_video_is_served_privately_with_its_type(client, clip):
    response = client.get(clip_url(clip))
    assert response.status_code == 200
    assert response["Content-Type"] == "video/mp4"
    assert response["Cache-Control"].startswith("private")
    assert response["Accept-Ranges"] == "bytes"
    assert b"".join(response.streaming_content) == blobs.read_blob(clip.mp4_sha, "mp4")
    poster = client.get(clip_url(clip, part="poster"))
    assert poster["Content-Type"] == "image/png"
    assert b"".join(poster.streaming_content) == blobs.read_blob(clip.poster_sha, "png")


def test_byte_ranges_for_seeking(client, clip):
    data = blobs.read_blob(clip.mp4_sha, "mp4")
    url = clip_url(clip)
    part = client.get(url, HTTP_RANGE="bytes=10-99")
    assert part.status_code == 206
    assert part["Content-Range"] == f"bytes 10-99/{len(data)}"
    assert b"".join(part.streaming_content) == data[10:100]
    tail = client.get(url, HTTP_RANGE="bytes=-16")
    assert b"".join(tail.streaming_content) == data[-16:]
    open_end = client.get(url, HTTP_RANGE=f"bytes={len(data) - 5}-")
    assert b"".join(open_end.streaming_content) == data[-5:]
    assert client.get(url, HTTP_RANGE=f"bytes={len(data)}-").status_code == 416
    assert client.get(url, HTTP_RANGE="items=1-2").status_code == 416
    head = client.head(url)
    assert head.status_code == 200 and head["Content-Length"] == str(len(data))


def test_expired_forged_and_unfinished_are_not_found(client, clip, settings):
    url = clip_url(clip)
    settings.CLIP_URL_MAX_AGE_S = -1  # every token is already too old
    assert client.get(url).status_code == 404
    settings.CLIP_URL_MAX_AGE_S = 900
    assert client.get(url).status_code == 200
    forged = signing.dumps({"c": clip.public_id.hex, "p": "v"}, salt="something else")
    assert client.get(f"/clips/{forged}/").status_code == 404
    assert client.get(url[:-3] + "xx/").status_code == 404
    clip.status = ClipStatus.RUNNING
    clip.save()
    assert client.get(url).status_code == 404
    assert client.post(url).status_code == 405
