"""Speaker video: decoding at the policy's rate, local model directories, vision encoders, the
feature store. Videos are made here with the same ffmpeg; models are tiny random DINOv2 and
SigLIP configurations saved as safetensors (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from policy.ml import hf
from policy.ml import video as V
from policy.ml.errors import PolicyDataError
from policy.ml.hf import ModelDirError

# --- helpers (also used by tests/policy/test_video_features.py) ------------------------------

SRC_FPS, SRC_FRAMES, WIDTH, HEIGHT = 10, 20, 64, 48
TOLERANCE = 8  # levels per channel lost to RGB -> YUV -> RGB


def frame_colour(k: int) -> tuple[int, int, int]:
    """The solid colour of source frame ``k``: 30 levels apart from its neighbours' in red."""
    return (10 + 12 * k) % 256, 240 - 10 * k, 200 if k % 2 else 40


def write_video(path: Path, frames: np.ndarray, fps: float) -> Path:
    """``(N, H, W, 3)`` uint8 frames as an H.264 MP4 (yuv420p, what corpora hold)."""
    n, h, w, _ = frames.shape
    subprocess.run(
        [V.ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
         "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-qp", "0",
         "-pix_fmt", "yuv420p", str(path)],
        input=np.ascontiguousarray(frames).tobytes(), check=True, timeout=60)
    return path


def colour_video(path: Path, n: int = SRC_FRAMES, fps: float = SRC_FPS) -> Path:
    """A video whose frame k is solid ``frame_colour(k)`` except a right half of 255 - that."""
    frames = np.zeros((n, HEIGHT, WIDTH, 3), np.uint8)
    for k in range(n):
        frames[k] = frame_colour(k)
        frames[k, :, WIDTH // 2 :] = 255 - np.array(frame_colour(k))
    return write_video(path, frames, fps)


def frame_index(rgb: torch.Tensor) -> int:
    """Which source frame an (3,) colour came from (the nearest of the palette)."""
    palette = torch.tensor([frame_colour(k) for k in range(SRC_FRAMES)], dtype=torch.float32)
    return int((palette - rgb.float()).abs().sum(1).argmin())


def tiny_dinov2_dir(path: Path, *, seed: int = 0, image_size: int = 28) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, image_size=image_size, patch_size=14)
    Dinov2Model(cfg).save_pretrained(path, safe_serialization=True)
    return path


def tiny_siglip_vision_dir(path: Path, *, seed: int = 0, full: bool = False) -> Path:
    from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, image_size=32, patch_size=16)
    if full:
        text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 64, "vocab_size": 64, "bos_token_id": 1, "eos_token_id": 2,
                "pad_token_id": 0}
        model = SiglipModel(SiglipConfig(vision_config=vision.to_dict(), text_config=text))
    else:
        model = SiglipVisionModel(vision)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"dinov2": tiny_dinov2_dir(root / "dinov2-tiny"),
            "siglip": tiny_siglip_vision_dir(root / "siglip-tiny"),
            "siglip_full": tiny_siglip_vision_dir(root / "siglip-full", full=True)}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return colour_video(tmp_path_factory.mktemp("video") / "speaker.mp4")


# --- decoding ------------------------------------------------------------------------------


def test_frame_t_is_what_is_on_screen_at_t_over_fps(clip):
    # when: 10 fps decoded at 4 fps (drops frames) and at 25 fps (repeats them)
    slow = V.decode_video(clip, fps=4)
    fast = V.decode_video(clip, fps=25)
    # then: 2 s of video, frame t shows source frame floor(t * 10 / fps)
    assert slow.shape == (8, 3, HEIGHT, WIDTH) and slow.dtype == torch.uint8
    assert [frame_index(f[:, 10, 10]) for f in slow] == [int(t * 10 / 4) for t in range(8)]
    assert len(fast) == 50
    assert [frame_index(f[:, 10, 10]) for f in fast] == [int(t * 10 / 25) for t in range(50)]
    # and the colours survive the codec
    expected = torch.tensor(frame_colour(5), dtype=torch.int16)
    assert (slow[2, :, 10, 10].to(torch.int16) - expected).abs().max() <= TOLERANCE


def test_face_box_crops_in_source_pixels_and_size_resizes_square(clip):
    # given: frame k is colour c on the left half and 255 - c on the right half
    right = (WIDTH // 2 + 8, 8, 16, 24)  # x, y, w, h: inside the right half
    # when
    v = V.decode_video(clip, fps=10, box=right, size=8)
    full = V.decode_video(clip, fps=10, box=right)
    # then
    assert v.shape == (SRC_FRAMES, 3, 8, 8) and full.shape == (SRC_FRAMES, 3, 24, 16)
    for k in (0, 7, 19):
        want = 255 - torch.tensor(frame_colour(k), dtype=torch.int16)
        assert (v[k].to(torch.int16) - want[:, None, None]).abs().max() <= TOLERANCE
    left = V.decode_video(clip, fps=10, box=(4, 4, 20, 20), size=8)
    assert frame_index(left[3, :, 4, 4]) == 3


def test_n_frames_pads_with_the_last_frame_and_cuts(clip):
    long = V.decode_video(clip, fps=4, n_frames=12)
    short = V.decode_video(clip, fps=4, n_frames=3)
    whole = V.decode_video(clip, fps=4)
    assert long.shape[0] == 12 and torch.equal(long[:8], whole)
    assert all(torch.equal(long[t], whole[-1]) for t in range(8, 12))
    assert torch.equal(short, whole[:3])


def test_unusable_files_name_the_path_and_the_reason(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    audio = tmp_path / "voice.m4a"
    subprocess.run([V.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "sine=d=0.5",
                    str(audio)], check=True, timeout=60)
    no_frames = tmp_path / "zero.y4m"  # a valid stream header and no frame after it
    no_frames.write_bytes(b"YUV4MPEG2 W32 H32 F10:1 Ip A1:1 C420jpeg\n")
    cases = [(tmp_path / "missing.mp4", "file not found"), (empty, "file is empty"),
             (text, "not a video ffmpeg can read"), (audio, "holds no video stream"),
             (no_frames, "has no frames"), (tmp_path, "not a file")]
    for path, reason in cases:
        with pytest.raises(PolicyDataError, match=reason) as err:
            V.decode_video(path, fps=25)
        assert str(path) in str(err.value)


def test_bad_requests_are_refused_before_decoding(clip):
    cases = [({"box": (60, 0, 10, 10)}, "does not lie inside the 64x48 frame"),
             ({"box": (0, 0, 0, 8)}, "positive width and height"),
             ({"box": (0, 0, 8)}, "four whole numbers"),
             ({"box": (0.5, 0, 8, 8)}, "four whole numbers"),
             ({"size": 0}, "size must be an int"), ({"size": 10**5}, "size must be an int"),
             ({"fps": 0}, "fps must be"), ({"fps": float("nan")}, "fps must be"),
             ({"n_frames": 0}, "n_frames must be a positive int")]
    for kwargs, message in cases:
        with pytest.raises(PolicyDataError, match=message) as err:
            V.decode_video(clip, **{"fps": 10, **kwargs})
        assert str(clip) in str(err.value)


def test_absurd_sizes_are_refused_rather_than_allocated(clip):
    frame = WIDTH * HEIGHT * 3
    with pytest.raises(PolicyDataError, match="more than the"):
        V.decode_video(clip, fps=10, n_frames=10**9)
    with pytest.raises(PolicyDataError, match=r"longer than 5 64x48 frames"):
        V.decode_video(clip, fps=10, max_bytes=5 * frame)
    with pytest.raises(PolicyDataError, match="one of its 64x48 frames"):
        V.decode_video(clip, fps=10, max_bytes=frame - 1)
    assert len(V.decode_video(clip, fps=10, max_bytes=SRC_FRAMES * frame)) == SRC_FRAMES


def test_iter_video_streams_the_same_frames_in_batches(clip):
    batches = list(V.iter_video(clip, fps=25, size=8, batch=16))
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat(batches), V.decode_video(clip, fps=25, size=8))


# --- model directories ---------------------------------------------------------------------


def test_model_dir_errors_name_the_path_and_the_reason(tmp_path, models):
    kinds = V.VISION_KINDS
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    bad_type = tmp_path / "bert"
    bad_type.mkdir()
    (bad_type / "config.json").write_text(json.dumps({"model_type": "bert"}))
    broken_json = tmp_path / "broken"
    broken_json.mkdir()
    (broken_json / "config.json").write_text("{not json")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    sharded = tmp_path / "sharded"
    tiny_dinov2_dir(sharded).joinpath("model.safetensors").unlink()
    from transformers import Dinov2Model

    Dinov2Model.from_pretrained(models["dinov2"]).save_pretrained(
        sharded, safe_serialization=True, max_shard_size="20KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[1].unlink()
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    (garbage / "model.safetensors").write_bytes(b"\xff" * 64)
    cases = [(tmp_path / "absent", "does not exist"),
             (no_config, "has no config.json"),
             (broken_json, "config.json cannot be read as JSON"),
             (bad_type, "model_type 'bert' .* supported: dinov2 \\(DINOv2\\), siglip_vision_model"),
             (pickled, "only pickle weights \\(pytorch_model.bin\\); only safetensors are loaded"),
             (no_weights, "has no weights"),
             (sharded, f"1 of {len(shards)} shards .* missing: {shards[1].name}"),
             (garbage, "model.safetensors is not a safetensors file")]
    for path, reason in cases:
        with pytest.raises(ModelDirError, match=reason) as err:
            hf.check_model_dir(path, kinds=kinds)
        assert str(path) in str(err.value)
        assert isinstance(err.value, PolicyDataError)


def test_check_model_dir_returns_the_config_of_a_sharded_directory(tmp_path, models):
    from transformers import Dinov2Model

    Dinov2Model.from_pretrained(models["dinov2"]).save_pretrained(
        tmp_path, safe_serialization=True, max_shard_size="20KB")
    config = hf.check_model_dir(tmp_path, kinds={"dinov2": "DINOv2"})
    assert config["model_type"] == "dinov2" and config["hidden_size"] == 32
    assert (tmp_path / "model.safetensors.index.json").is_file()
    enc = V.VisionEncoder.from_dir(tmp_path, device="cpu")
    ref = V.VisionEncoder.from_dir(models["dinov2"], device="cpu")
    frames = torch.randint(0, 256, (3, 3, 28, 28), dtype=torch.uint8)
    assert torch.allclose(enc.encode(frames), ref.encode(frames), atol=1e-5)


def test_weights_missing_a_tensor_are_an_error_not_a_random_init(tmp_path, models):
    from transformers import Dinov2Model

    # given: the tiny DINOv2 with one tensor left out of its weights
    (tmp_path / "config.json").write_bytes((models["dinov2"] / "config.json").read_bytes())
    tensors = load_file(models["dinov2"] / "model.safetensors")
    dropped = sorted(tensors)[3]
    del tensors[dropped]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    # when / then
    with pytest.raises(ModelDirError, match=f"lack 1 tensors .*{dropped}") as err:
        hf.load_pretrained(Dinov2Model, tmp_path, kinds={"dinov2": "DINOv2"})
    assert str(tmp_path) in str(err.value)
    # another model's weights: nothing fits
    (tmp_path / "model.safetensors").write_bytes(
        (models["siglip"] / "model.safetensors").read_bytes())
    with pytest.raises(ModelDirError, match=r"lack \d+ tensors of Dinov2Model"):
        hf.load_pretrained(Dinov2Model, tmp_path, kinds={"dinov2": "DINOv2"})
    # a tensor of the wrong shape: the loader's own error, wrapped with the path
    tensors = load_file(models["dinov2"] / "model.safetensors")
    tensors["layernorm.weight"] = torch.ones(3)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelDirError, match="loading it as Dinov2Model failed") as err:
        hf.load_pretrained(Dinov2Model, tmp_path, kinds={"dinov2": "DINOv2"})
    assert str(tmp_path) in str(err.value)


def test_load_pretrained_keeps_the_safety_keywords_and_honours_dtype(models):
    from transformers import Dinov2Model

    model = hf.load_pretrained(Dinov2Model, models["dinov2"], kinds={"dinov2": "DINOv2"},
                               dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="local_files_only"):
        hf.load_pretrained(Dinov2Model, models["dinov2"], kinds={"dinov2": "DINOv2"},
                           local_files_only=False)


def test_model_dir_sha256_covers_config_and_weights_and_is_cached_by_size_and_mtime(tmp_path):
    # given
    d = tiny_dinov2_dir(tmp_path / "m", seed=1)
    first = hf.model_dir_sha256(d)
    (d / "README.md").write_text("notes do not change it")
    assert hf.model_dir_sha256(d) == first
    weights = d / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    # when: the bytes change but size and mtime are put back, the cached digest is used
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert hf.model_dir_sha256(d) == first
    # then: a new mtime reads the file again
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert hf.model_dir_sha256(d) != first
    other = tiny_dinov2_dir(tmp_path / "other", seed=2)
    assert hf.model_dir_sha256(other) != first


def test_resolve_model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICY_MODEL_DIR", str(tmp_path))
    assert hf.resolve_model_dir("/abs/model") == Path("/abs/model")
    assert hf.resolve_model_dir("dinov2-small") == tmp_path.resolve() / "dinov2-small"
    assert hf.resolve_model_dir("org/model", root=tmp_path / "x") == (
        tmp_path.resolve() / "x" / "org" / "model")
    with pytest.raises(ModelDirError, match="outside POLICY_MODEL_DIR"):
        hf.resolve_model_dir("../elsewhere")
    monkeypatch.delenv("POLICY_MODEL_DIR")
    with pytest.raises(ModelDirError, match="dinov2-small: is not an absolute path and "
                                            "POLICY_MODEL_DIR is not set"):
        hf.resolve_model_dir("dinov2-small")


# --- vision encoders -----------------------------------------------------------------------


@pytest.mark.parametrize("which, kind, size", [("dinov2", "dinov2", 28), ("siglip", "siglip", 32),
                                               ("siglip_full", "siglip", 32)])
def test_encoders_load_and_map_frames_to_one_vector_each(models, clip, which, kind, size):
    # when
    enc = V.VisionEncoder.from_dir(models[which], device="cpu")
    frames = V.decode_video(clip, fps=4, size=enc.image_size)  # (8, 3, S, S)
    out = enc.encode(frames, batch_size=3)
    # then
    assert (enc.kind, enc.dim, enc.image_size, enc.name) == (kind, 32, size, models[which].name)
    assert out.shape == (8, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, enc.encode(frames, batch_size=3))  # same frames, same features
    assert torch.allclose(out, enc.encode(frames, batch_size=8), atol=1e-5)
    assert not torch.allclose(out[0], out[1])  # different frames, different features
    assert not any(p.requires_grad for p in enc.model.parameters())
    assert enc.encode(frames[:0]).shape == (0, 32)
    assert len(enc.sha256) == 64


def test_frames_of_another_size_are_refused_naming_both_sizes(models, clip):
    enc = V.VisionEncoder.from_dir(models["dinov2"], device="cpu")
    with pytest.raises(PolicyDataError, match="takes 28x28 frames, got 32x32"):
        enc.encode(V.decode_video(clip, fps=4, size=32))
    with pytest.raises(PolicyDataError, match="frames must be uint8"):
        enc.encode(torch.zeros(2, 3, 28, 28))


def test_dinov2_pools_the_cls_token_of_imagenet_normalised_frames(models):
    enc = V.VisionEncoder.from_dir(models["dinov2"], device="cpu")
    frames = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    mean = torch.tensor(V.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(V.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        res = enc.model(pixel_values=(frames.float() / 255 - mean) / std)
    expected = res.last_hidden_state[:, 0]  # the CLS token, after the final layer norm
    assert torch.allclose(enc.encode(frames), expected, atol=1e-5)


def test_the_preprocessor_config_sets_normalisation_and_input_size(tmp_path, models):
    # given: the same weights with a preprocessor that says SigLIP-like 0.5 / 0.5 and crop 14
    d = tmp_path / "dino-pre"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        (d / name).write_bytes((models["dinov2"] / name).read_bytes())
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
         "size": {"shortest_edge": 16}, "crop_size": {"height": 14, "width": 14}}))
    # when
    enc = V.VisionEncoder.from_dir(d, device="cpu")
    plain = V.VisionEncoder.from_dir(models["dinov2"], device="cpu")
    # then
    assert enc.image_size == 14 and plain.image_size == 28
    assert enc.sha256 != plain.sha256
    frames = torch.randint(0, 256, (2, 3, 14, 14), dtype=torch.uint8)
    with torch.no_grad():
        expected = enc.model(pixel_values=frames.float() / 127.5 - 1).pooler_output
    assert torch.allclose(enc.encode(frames), expected, atol=1e-5)
    (d / "preprocessor_config.json").write_text(json.dumps({"image_std": [1, 2]}))
    with pytest.raises(ModelDirError, match="'image_std' must be three numbers"):
        V.VisionEncoder.from_dir(d, device="cpu")


def test_the_conv_encoder_loads_nothing(models, tmp_path):
    assert V.load_vision_encoder(V.CONV) is None
    enc = V.load_vision_encoder("siglip-tiny", root=models["siglip"].parent, device="cpu")
    assert enc is not None and enc.kind == "siglip"
    with pytest.raises(ModelDirError, match="does not exist"):
        V.load_vision_encoder("nothing-here", root=tmp_path)


# --- feature store -------------------------------------------------------------------------


class CountingEncoder:
    """A VisionEncoder that counts the frames it is asked to encode."""

    def __init__(self, encoder: V.VisionEncoder) -> None:
        self.inner, self.frames = encoder, 0
        self.dim, self.image_size, self.name = encoder.dim, encoder.image_size, encoder.name
        self.sha256 = encoder.sha256

    def encode(self, frames: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        self.frames += len(frames)
        return self.inner.encode(frames, batch_size=batch_size)


def test_features_are_computed_once_per_video_encoder_rate_and_box(tmp_path, models, clip):
    # given
    store = V.FeatureStore(tmp_path / "features")
    dino = CountingEncoder(V.VisionEncoder.from_dir(models["dinov2"], device="cpu"))
    sha = V.file_sha256(clip)
    # when: asked twice
    first = V.features_for(clip, sha, dino, 4, 8, None, store)
    computed = dino.frames
    second = V.features_for(clip, sha, dino, 4, 8, None, store)
    # then: the second call encodes nothing and returns the same numbers
    assert computed == 8 and dino.frames == 8
    assert first.shape == (8, 32) and first.dtype == np.float32
    assert np.array_equal(first, second)
    expected = dino.inner.encode(V.decode_video(clip, fps=4, size=28)).numpy()
    assert np.allclose(first, expected, atol=1e-2)  # stored as float16
    files = sorted(p for p in store.root.rglob("*") if p.is_file())
    assert len(files) == 1 and np.load(files[0]).dtype == np.float16
    # a length other than the video's is served from the same file: cut or padded
    assert np.array_equal(V.features_for(clip, sha, dino, 4, 3, None, store), first[:3])
    padded = V.features_for(clip, sha, dino, 4, 11, None, store)
    assert np.array_equal(padded[:8], first) and np.array_equal(padded[10], first[7])
    assert dino.frames == 8
    assert np.array_equal(V.features_for(clip, None, dino, 4, 8, None, store), first)
    # another encoder, rate or box: another key, computed once more
    siglip = CountingEncoder(V.VisionEncoder.from_dir(models["siglip"], device="cpu"))
    V.features_for(clip, sha, siglip, 4, 8, None, store)
    V.features_for(clip, sha, dino, 5, 10, None, store)
    V.features_for(clip, sha, dino, 4, 8, (32, 0, 32, 32), store)
    assert siglip.frames == 8 and dino.frames == 8 + 10 + 8
    keys = {V.feature_key(video_sha=sha, encoder_sha=e.sha256, fps=f, image_size=e.image_size,
                          box=b)
            for e, f, b in [(dino, 4, None), (siglip, 4, None), (dino, 5, None),
                            (dino, 4, (32, 0, 32, 32))]}
    assert len(keys) == 4 and all(k in store for k in keys)
    assert len([p for p in store.root.rglob("*") if p.is_file()]) == 4
    assert V.feature_key(video_sha=sha, encoder_sha=dino.sha256, fps=4.0, image_size=28,
                         box=None) == V.feature_key(video_sha=sha, encoder_sha=dino.sha256,
                                                    fps=4, image_size=28, box=None)


def test_feature_store_writes_atomically_and_reads_back(tmp_path):
    store = V.FeatureStore(tmp_path)
    key = "ab" + "0" * 62
    assert store.get(key) is None and key not in store
    features = np.linspace(-3, 3, 40, dtype=np.float32).reshape(10, 4)
    path = store.put(key, features)
    assert path == tmp_path / "ab" / f"{key}.npy"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    assert np.allclose(store.get(key), features, atol=1e-2) and store.get(key).dtype == np.float32
    path.write_bytes(b"truncated")  # unreadable: a miss, computed again
    assert store.get(key) is None
    with pytest.raises(PolicyDataError, match="not finite in float16"):
        store.put(key, np.full((2, 2), 1e6, dtype=np.float32))
    with pytest.raises(ValueError, match="not a sha256"):
        store.get("../../etc/passwd")
