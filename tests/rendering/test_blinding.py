"""Per-exposure copies of media files: padded to a shared size, still playable, never alike."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from rendering.blinding import (
    OVERHEAD,
    QUANTUM,
    Padding,
    exposure_key,
    read_range,
    segments,
    shared_size,
    video_padding,
)
from rendering.encode import VideoWriter, decode_frames, png_bytes
from rendering.mp4_samples import plan


def encode(path, frames: np.ndarray, fps: float = 10.0) -> bytes:
    n, h, w, _ = frames.shape
    with VideoWriter(path, width=w, height=h, fps=fps) as out:
        out.write(np.ascontiguousarray(frames))
    return path.read_bytes()


def decoded(path) -> np.ndarray:
    return np.concatenate(list(decode_frames(path, width=32, height=32, fps=10.0)))


def frames(seed: int, n: int = 12, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    return np.concatenate([rgb, np.full((n, size, size, 1), 255, np.uint8)], axis=-1)


def served(part: str, data: bytes, padding: Padding | None) -> bytes:
    fh = io.BytesIO(data)
    pieces = segments(part, fh, len(data), padding)
    total = sum(p.size for p in pieces)
    return b"".join(read_range(io.BytesIO(data), pieces, 0, total))


def boxes(data: bytes) -> list[tuple[bytes, int]]:
    out, at = [], 0
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        if size == 1:
            size = struct.unpack(">Q", data[at + 8:at + 16])[0]
        out.append((kind, size))
        at += size
    assert at == len(data)
    return out


def test_a_padded_video_has_the_shared_size_and_plays_the_same_frames(tmp_path):
    # given: a real encoded clip and a larger one it is shown with
    small = encode(tmp_path / "a.mp4", frames(0) // 8)
    large = encode(tmp_path / "b.mp4", frames(1))
    assert len(large) > len(small)
    size = shared_size([len(small), len(large)], "video")
    assert size % QUANTUM == 0 and size >= len(large) + OVERHEAD["video"]
    # when
    copies = {name: served("video", data, Padding(size, exposure_key("s", name, 0, "video")))
              for name, data in (("a", small), ("b", large))}
    # then: both are exactly that size, the mdat box grew (the layout is the stored one) ...
    assert {len(c) for c in copies.values()} == {size}
    assert [k for k, _ in boxes(copies["a"])] == [k for k, _ in boxes(small)]
    assert boxes(copies["a"])[-1] == (b"mdat", boxes(small)[-1][1] + size - len(small))
    # ... and a decoder reads the same frames from the copy as from the stored file
    (tmp_path / "copy.mp4").write_bytes(copies["a"])
    before, after = decoded(tmp_path / "a.mp4"), decoded(tmp_path / "copy.mp4")
    assert before.shape == after.shape and np.array_equal(before, after)


def test_every_exposure_gets_its_own_bytes_and_a_reload_gets_the_same(tmp_path):
    data = encode(tmp_path / "a.mp4", frames(0))
    size = shared_size([len(data)], "video")
    one = served("video", data, Padding(size, exposure_key("s", "lease-1", 0, "video")))
    again = served("video", data, Padding(size, exposure_key("s", "lease-1", 0, "video")))
    other_side = served("video", data, Padding(size, exposure_key("s", "lease-1", 1, "video")))
    other_lease = served("video", data, Padding(size, exposure_key("s", "lease-2", 0, "video")))
    other_secret = served("video", data, Padding(size, exposure_key("t", "lease-1", 0, "video")))
    assert one == again
    assert len({one, other_side, other_lease, other_secret, data}) == 5


def test_a_padded_poster_is_a_valid_png_with_the_same_pixels():
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    size = shared_size([len(data), len(data) + 5000], "poster")
    copy = served("poster", data, Padding(size, exposure_key("s", "x", 0, "poster")))
    assert len(copy) == size and copy.endswith(data[-12:])  # IEND stays last
    image = Image.open(io.BytesIO(copy))
    image.load()  # checks every chunk's CRC
    assert np.array_equal(np.asarray(image.convert("RGB")), rgb)


@pytest.mark.parametrize("start,length", [(0, 1), (5, 100), (0, None), (-200, None), (7, 4096)])
def test_byte_ranges_are_slices_of_the_whole_copy(tmp_path, start, length):
    data = encode(tmp_path / "a.mp4", frames(2))
    padding = Padding(shared_size([len(data)], "video"), exposure_key("s", "x", 0, "video"))
    whole = served("video", data, padding)
    start = start % len(whole)
    length = len(whole) - start if length is None else length
    pieces = segments("video", io.BytesIO(data), len(data), padding)
    part = b"".join(read_range(io.BytesIO(data), pieces, start, length, chunk=1000))
    assert part == whole[start:start + length]


def test_a_file_not_ending_in_mdat_gets_a_free_box_and_a_short_size_is_refused():
    data = struct.pack(">I4s", 16, b"ftyp") + b"isom" * 2 + struct.pack(">I4s", 8, b"moov")
    size = shared_size([len(data)], "video")
    copy = served("video", data, Padding(size, b"k"))
    assert boxes(copy) == [(b"ftyp", 16), (b"moov", 8), (b"free", size - len(data))]
    with pytest.raises(ValueError, match="cannot be served"):
        segments("video", io.BytesIO(data), len(data), Padding(len(data) + 3, b"k"))


def test_rendered_clips_are_served_with_the_same_sample_table_and_play_the_same(tmp_path):
    # given: two encodes of one length whose frames cost very different numbers of bytes
    quiet = encode(tmp_path / "q.mp4", frames(0, n=20) // 16)
    lively = encode(tmp_path / "l.mp4", frames(1, n=20))
    plans = [plan(io.BytesIO(d), len(d)) for d in (quiet, lively)]
    assert all(p is not None for p in plans) and plans[0].sizes != plans[1].sizes
    # when: each is served in an exposure of the item they make together
    copies = []
    for i, data in enumerate((quiet, lively)):
        padding = video_padding(plans, [len(quiet), len(lively)],
                                exposure_key("s", "lease", i, "video"))
        copies.append(served("video", data, padding))
    # then: same size, same layout, and one sample size in both tables ...
    assert len(copies[0]) == len(copies[1]) and len(copies[0]) % QUANTUM == 0
    assert [k for k, _ in boxes(copies[0])] == [k for k, _ in boxes(copies[1])]
    tables = [stsz(c) for c in copies]
    assert tables[0] == tables[1] and tables[0][1] == 20 and tables[0][0] > 0
    assert copies[0] != copies[1]
    # ... and a decoder reads from each copy the frames of its stored file
    for name, copy in (("q", copies[0]), ("l", copies[1])):
        (tmp_path / f"{name}-copy.mp4").write_bytes(copy)
        assert np.array_equal(decoded(tmp_path / f"{name}.mp4"),
                              decoded(tmp_path / f"{name}-copy.mp4"))


def stsz(data: bytes) -> tuple[int, int]:
    """(fixed sample size, sample count) of the first sample table in an MP4."""
    at = data.find(b"stsz")
    return struct.unpack(">II", data[at + 8:at + 16])
