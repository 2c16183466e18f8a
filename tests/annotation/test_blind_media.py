"""Blindness through bytes: what a rater downloads says nothing about which source made a clip.

The campaign's clips are real encodes whose stored sizes follow their motion, as rendered clips
do (the jittery baseline makes the largest files). A classifier that tells the sides of an item
apart from the stored files' size, duration, bitrate and container fields is nearly always
right; on the files raters are served it does no better than chance, and no served file is
byte-identical to another -- not the two sides of a catch trial, not a hidden repeat, not a gold
item's ground truth the rater saw before in a regular item.

Nor does the sample table inside the container: rendered clips are served with one sample size
for every frame of every clip of the item (``rendering.mp4_samples``).
"""

from __future__ import annotations

import hashlib
import struct
import uuid

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import Assignment, ItemMember
from annotation.services.campaigns import campaign_clip_ids
from rendering import blobs
from rendering.encode import VideoWriter, png_bytes
from rendering.models import Clip
from tests.annotation.conftest import enrol, make_campaign, make_corpus

pytestmark = pytest.mark.django_db
CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"udta", b"dinf"}
SIZE, FPS = 24, 10.0
# what a script reads without watching (the sample table's sum is tried on its own too)
FEATURES = ("size", "duration", "bitrate", "width", "height", "layout", "samples")


def client_for(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def render_real(campaign, tmp_path) -> None:
    """Encode every clip of the campaign from its sequence: one block of colour per
    coefficient, so frame-to-frame motion costs bytes as it does in a rendering."""
    for clip in Clip.objects.filter(pk__in=campaign_clip_ids(campaign)):
        seq = (blobs.load_array(clip.sequence_sha) if clip.sequence_sha
               else np.zeros((20, 16), np.float32))[:40]
        z = np.asarray(seq, np.float32).reshape(len(seq), -1)[:, :16]
        z = (z - z.mean()) / (z.std() + 1e-6)
        blocks = np.clip(128 + 60 * z, 0, 255).astype(np.uint8).reshape(len(z), 4, 4)
        frames = np.kron(blocks, np.ones((SIZE // 4, SIZE // 4), np.uint8))
        rgba = np.stack([frames, frames[:, ::-1], frames.transpose(0, 2, 1),
                         np.full_like(frames, 255)], axis=-1)
        path = tmp_path / f"{clip.pk}.mp4"
        with VideoWriter(path, width=SIZE, height=SIZE, fps=FPS) as out:
            out.write(np.ascontiguousarray(rgba))
        mp4, _ = blobs.put_blob(path.read_bytes(), "mp4")
        png, _ = blobs.put_blob(png_bytes(rgba[0]), "png")
        Clip.objects.filter(pk=clip.pk).update(mp4_sha=mp4, poster_sha=png,
                                               mp4_bytes=path.stat().st_size)


def mp4_fields(data: bytes) -> dict[str, float]:
    """What a script reads without watching: size, duration, bitrate and container fields
    (box layout, movie and track headers, the sum of the sample table)."""
    fields: dict[str, float] = {"size": len(data)}
    layout = []

    def walk(at: int, end: int, depth: int) -> None:
        while at + 8 <= end:
            size, kind = struct.unpack(">I4s", data[at:at + 8])
            head = 8
            if size == 1:
                size, head = struct.unpack(">Q", data[at + 8:at + 16])[0], 16
            elif size == 0:
                size = end - at
            layout.append(f"{depth}{kind.decode('latin-1')}")
            body = data[at + head:at + size]
            if kind == b"mvhd":
                version = body[0]
                scale, duration = (struct.unpack(">IQ", body[20:32]) if version
                                   else struct.unpack(">II", body[12:20]))
                fields["duration"] = duration / max(scale, 1)
            elif kind == b"tkhd":
                fields["width"], fields["height"] = (v / 65536 for v in
                                                     struct.unpack(">II", body[-8:]))
            elif kind == b"stsz":  # the sample table: each frame's encoded size
                count = struct.unpack(">I", body[8:12])[0]
                fixed = struct.unpack(">I", body[4:8])[0]
                fields["samples"] = fixed * count if fixed else sum(
                    struct.unpack(f">{count}I", body[12:12 + 4 * count]))
            if kind in CONTAINERS:
                walk(at + head, at + size, depth + 1)
            at += max(size, 8)

    walk(0, len(data), 0)
    fields["bitrate"] = fields["size"] / max(fields.get("duration", 0.0), 1e-9)
    fields["layout"] = int(hashlib.sha256(" ".join(layout).encode()).hexdigest()[:8], 16)
    return fields


def mp4_features(data: bytes, names=FEATURES) -> list[float]:
    fields = mp4_fields(data)
    return [fields.get(k, 0.0) for k in names]


def png_data_bytes(data: bytes) -> int:
    """The length of a PNG's compressed image data (its IDAT chunks)."""
    at, total = 8, 0
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        total += length if kind == b"IDAT" else 0
        at += 12 + length
    return total


def side_accuracy(pairs: list[tuple[list[float], list[float], int]]) -> float:
    """Train on half the items, test on the rest: a decision stump on the difference of one
    feature between the sides says which side holds the jittery source (1: side b); equal
    features are a coin toss (half a point)."""
    train, test = pairs[::2], pairs[1::2]

    def score(rows, f: int, sign: float) -> float:
        points = 0.0
        for a, b, label in rows:
            d = sign * (b[f] - a[f])
            points += 0.5 if d == 0 else float((d > 0) == bool(label))
        return points / len(rows)

    f, sign = max(((f, s) for f in range(len(pairs[0][0])) for s in (1.0, -1.0)),
                  key=lambda fs: score(train, *fs))
    return score(test, f, sign)


def rate_everything(tmp_path) -> tuple[object, list[dict]]:
    """A campaign with catch trials, hidden repeats and gold items over real encodes; two
    raters rate everything they are given and download every file of each lease."""
    campaign = make_campaign(make_corpus(episodes=8), overlap=2, catch_rate=0.2,
                             repeat_rate=0.3, gold_rate=0.2)
    render_real(campaign, tmp_path)
    served: list[dict] = []
    for user in enrol(campaign, 2):
        c = client_for(user)
        for _ in range(80):
            body = c.post(reverse("annotation:api-next", args=[campaign.slug])).json()
            if not body.get("assignments"):
                break
            lease = body["assignments"][0]
            a = Assignment.objects.select_related("item").get(token=uuid.UUID(lease["id"]))
            files = [(-1, lease["speaker"])] + list(enumerate(lease["clips"]))
            for position, urls in files:
                got = {part: c.get(urls[part]) for part in ("video", "poster")}
                assert all(r.status_code == 200 for r in got.values())
                served.append({"assignment": a, "position": position,
                               **{part: b"".join(r.streaming_content)
                                  for part, r in got.items()},
                               "length": int(got["video"]["Content-Length"])})
            r = c.post(reverse("annotation:api-judgment", args=[lease["id"]]),
                       {"idempotency_key": str(uuid.uuid4()), "choice": "tie",
                        "decision_ms": 900}, content_type="application/json")
            assert r.status_code == 201
    return campaign, served


def member(s: dict) -> ItemMember:
    a = s["assignment"]
    return ItemMember.objects.select_related("candidate", "clip").get(
        item_id=a.item_id, slot=a.order[s["position"]])


def side_pairs(served: list[dict], names=FEATURES) -> tuple[list, list]:
    """For every exposure of an item with the jittery source on one side: the features of
    both sides' stored files and of both served files, and which side holds it."""
    by_exposure: dict[int, dict[int, dict]] = {}
    for s in served:
        if s["position"] >= 0:
            by_exposure.setdefault(s["assignment"].pk, {})[s["position"]] = s
    stored_pairs, served_pairs = [], []
    for sides in by_exposure.values():
        a, b = sides[0], sides[1]
        labels = [member(s).candidate.baseline == "jitter" for s in (a, b)]
        if sum(labels) != 1:
            continue  # the question is which side holds the jittery source
        raw = [mp4_features(blobs.read_blob(member(s).clip.mp4_sha, "mp4"), names)
               for s in (a, b)]
        stored_pairs.append((raw[0], raw[1], int(labels[1])))
        served_pairs.append((mp4_features(a["video"], names), mp4_features(b["video"], names),
                             int(labels[1])))
    return stored_pairs, served_pairs


def test_a_classifier_on_the_served_files_tells_sources_apart_no_better_than_chance(tmp_path):
    # given, when
    campaign, served = rate_everything(tmp_path)
    # then: every file served is unique to its exposure, in video and poster alike
    assert len(served) > 100
    for part in ("video", "poster"):
        digests = [hashlib.sha256(s[part]).hexdigest() for s in served]
        assert len(set(digests)) == len(digests), part
    # (the probes that a hash comparison would give away were among them)
    shown = {s["assignment"].probe for s in served} | {s["assignment"].item.probe
                                                        for s in served}
    assert {"catch", "repeat", "gold", "none"} <= shown
    # the two sides of every exposure are the same size, as video and as poster
    sides: dict[int, list[dict]] = {}
    for s in served:
        if s["position"] >= 0:
            sides.setdefault(s["assignment"].pk, []).append(s)
    for pair in sides.values():
        assert len({(s["length"], len(s["video"]), len(s["poster"])) for s in pair}) == 1
        # and the posters' image data is the same length (it follows the size of the image)
        assert len({png_data_bytes(s["poster"]) for s in pair}) == 1
    # and a classifier on sizes and container fields cannot tell which side is which
    stored_pairs, served_pairs = side_pairs(served)
    assert len(served_pairs) >= 20
    assert all(a == b for a, b, _ in served_pairs)  # identical features on both sides
    assert side_accuracy(stored_pairs) >= 0.9  # the stored files give the source away ...
    assert side_accuracy(served_pairs) == 0.5  # ... the served ones do not


def test_the_sample_table_tells_sources_apart_no_better_than_chance(tmp_path):
    # given, when
    _, served = rate_everything(tmp_path)
    # then: summed from the stored tables, the frames' sizes give the source away; the served
    # tables say one size for every frame of every clip of the item
    stored_pairs, served_pairs = side_pairs(served, names=("samples",))
    assert side_accuracy(stored_pairs) >= 0.9
    assert side_accuracy(served_pairs) == 0.5
    assert all(a == b for a, b, _ in served_pairs)
