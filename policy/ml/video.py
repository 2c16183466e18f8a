"""Speaker video for the policy: decoding, pretrained vision encoders, a store of their features.

- :func:`decode_video` turns a video file into ``(T, 3, H, W)`` uint8 frames at the policy's
  frame rate with ffmpeg (imageio-ffmpeg's build, in a subprocess): frame ``t`` is what is on
  screen at time ``t / fps``, optionally cropped to the speaker's face and resized to a square.
- :class:`VisionEncoder` is a frozen pretrained image model (DINOv2, or SigLIP's vision tower)
  loaded from a local directory through :mod:`policy.ml.hf`; it maps frames to one vector each.
  ``"conv"`` (:data:`CONV`) names the alternative: the policy's own small conv net
  (``model.VideoEncoder``), trained with it on raw frames, for which nothing is precomputed.
- :class:`FeatureStore` keeps per-frame features by content hash (video bytes, encoder weights,
  frame rate, image size, face box), so a video is encoded once per encoder however often it is
  asked for; :func:`features_for` decodes and encodes only on a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .device import autocast, pick_device
from .errors import PolicyDataError
from .hf import (
    ModelDirError,
    check_model_dir,
    file_sha256,
    load_pretrained,
    model_dir_sha256,
    resolve_model_dir,
)

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # (x, y, width, height) in pixels of the source frame

MAX_FPS = 240.0  # above this a "frame rate" is a mistake, not a video
MAX_SIDE = 8192  # widest output frame (after crop and resize); an 8K source fits
MAX_DECODE_BYTES = 4 * 1024**3  # decode_video refuses to hold more frames than this at once
PROBE_TIMEOUT_S = 120  # reading the first frame of any sane file takes well under a second

# --- decoding ------------------------------------------------------------------------------


def ffmpeg_exe() -> str:
    """imageio-ffmpeg's static ffmpeg (set IMAGEIO_FFMPEG_EXE to use another)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_rate(fps: float, *, where: str = "video") -> Fraction:
    """The frame rate as ffmpeg is given it: an exact fraction (29.97 -> 30000/1001)."""
    if (isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps)
            or not 0 < fps <= MAX_FPS):
        raise PolicyDataError(f"{where}: fps must be a number in (0, {MAX_FPS:g}], got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def box_ints(box: Sequence[Any], *, where: str) -> Box:
    """``box`` as four ints ``(x, y, w, h)`` with a positive width and height."""
    if (not isinstance(box, Sequence) or isinstance(box, str) or len(box) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool)
                       and math.isfinite(v) and float(v).is_integer() for v in box)):
        raise PolicyDataError(f"{where}: face box must be four whole numbers (x, y, w, h) in "
                              f"pixels, got {box!r}")
    x, y, w, h = (int(v) for v in box)
    if w < 1 or h < 1:
        raise PolicyDataError(f"{where}: face box (x={x}, y={y}, w={w}, h={h}) must have a "
                              "positive width and height")
    return x, y, w, h


def check_box(box: Sequence[Any], width: int, height: int, *, where: str) -> Box:
    """``box`` as four ints ``(x, y, w, h)`` lying inside a ``width`` x ``height`` frame."""
    x, y, w, h = box_ints(box, where=where)
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise PolicyDataError(f"{where}: face box (x={x}, y={y}, w={w}, h={h}) does not lie "
                              f"inside the {width}x{height} frame")
    return x, y, w, h


def _check_file(path: Path) -> None:
    if not path.exists():
        raise PolicyDataError(f"video {path}: file not found")
    if not path.is_file():
        raise PolicyDataError(f"video {path}: not a file")
    if path.stat().st_size == 0:
        raise PolicyDataError(f"video {path}: file is empty (0 bytes)")


def _last_line(text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


_PPM_HEADER = re.compile(rb"^P6\s+(\d+)\s+(\d+)\s+(\d+)\s")


def probe_frame_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of the video's frames as displayed (after the file's rotation, which
    ffmpeg applies when decoding), read from its first decoded frame."""
    path = Path(path)
    _check_file(path)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(path),
           "-map", "0:v:0", "-frames:v", "1", "-f", "image2pipe", "-c:v", "ppm", "pipe:1"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PolicyDataError(f"video {path}: ffmpeg did not read its first frame within "
                              f"{PROBE_TIMEOUT_S} s") from exc
    if b"matches no streams" in proc.stderr:
        raise PolicyDataError(f"video {path}: the file holds no video stream")
    if proc.returncode != 0:
        raise PolicyDataError(f"video {path}: not a video ffmpeg can read "
                              f"({_last_line(proc.stderr) or f'exit status {proc.returncode}'})")
    m = _PPM_HEADER.match(proc.stdout)
    if not m:
        raise PolicyDataError(f"video {path}: the video has no frames")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class _Plan:
    """One decode: ffmpeg's arguments and the size of the frames it writes."""

    path: Path
    filters: str
    width: int
    height: int

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3

    def command(self, max_frames: int | None) -> list[str]:
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(self.path),
               "-map", "0:v:0", "-an", "-sn", "-dn", "-vf", self.filters]
        if max_frames is not None:
            cmd += ["-frames:v", str(int(max_frames))]
        return cmd + ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]


def _plan(path: str | os.PathLike, *, fps: float, size: int | None,
          box: Sequence[Any] | None) -> _Plan:
    path = Path(path)
    rate = ffmpeg_rate(fps, where=f"video {path}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                             or not 1 <= size <= MAX_SIDE):
        raise PolicyDataError(f"video {path}: size must be an int in [1, {MAX_SIDE}], "
                              f"got {size!r}")
    src_w, src_h = probe_frame_size(path)
    # fps first (round=up: output frame t takes the last source frame shown at or before
    # t / fps, i.e. what is on screen then), then RGB, so the crop is exact to the pixel
    # rather than to the 2x2 chroma blocks of yuv420p.
    filters = [f"fps={rate.numerator}/{rate.denominator}:round=up", "format=rgb24"]
    out_w, out_h = src_w, src_h
    if box is not None:
        x, y, w, h = check_box(box, src_w, src_h, where=f"video {path}")
        filters.append(f"crop={w}:{h}:{x}:{y}:exact=1")
        out_w, out_h = w, h
    if size is not None:
        # Square, like features.video_frames: a non-square region is squeezed, not padded.
        filters.append(f"scale={size}:{size}:flags=area")
        out_w = out_h = size
    if out_w > MAX_SIDE or out_h > MAX_SIDE:
        raise PolicyDataError(f"video {path}: frames of {out_w}x{out_h} exceed {MAX_SIDE} "
                              "pixels a side; pass size or a face box")
    return _Plan(path=path, filters=",".join(filters), width=out_w, height=out_h)


def _read_into(stream: Any, buf: bytearray) -> int:
    """Fill ``buf`` from ``stream``; the number of bytes read (short only at the end)."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _frames(plan: _Plan, batch: int, max_frames: int | None = None) -> Iterator[torch.Tensor]:
    """Run the plan; ``(n, 3, H, W)`` uint8 batches of at most ``batch`` frames."""
    fb = plan.frame_bytes
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(plan.command(max_frames), stdout=subprocess.PIPE, stderr=errors)
        produced = 0
        try:
            while True:
                buf = bytearray(fb * batch)
                got = _read_into(proc.stdout, buf)
                n = got // fb
                if n:
                    produced += n
                    hwc = torch.frombuffer(buf, dtype=torch.uint8)[: n * fb]
                    yield hwc.view(n, plan.height, plan.width, 3).permute(0, 3, 1, 2).contiguous()
                if got < len(buf):
                    break
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # the consumer stopped early, or failed
                proc.kill()
                proc.wait()
            proc.stdout.close()
        errors.seek(0)
        message = _last_line(errors.read())
    if rc != 0:
        raise PolicyDataError(f"video {plan.path}: ffmpeg failed while decoding "
                              f"({message or f'exit status {rc}'})")
    if produced == 0:
        raise PolicyDataError(f"video {plan.path}: the video has no frames")


def iter_video(path: str | os.PathLike, *, fps: float, size: int | None = None,
               box: Sequence[Any] | None = None, batch: int = 64,
               max_frames: int | None = None) -> Iterator[torch.Tensor]:
    """:func:`decode_video` as a stream of ``(n, 3, H, W)`` uint8 batches, the whole video
    (or its first ``max_frames`` frames) without holding it in memory."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    yield from _frames(_plan(path, fps=fps, size=size, box=box), batch, max_frames)


def decode_video(path: str | os.PathLike, *, fps: float, n_frames: int | None = None,
                 size: int | None = None, box: Sequence[Any] | None = None,
                 max_bytes: int = MAX_DECODE_BYTES) -> torch.Tensor:
    """A video file as ``(T, 3, H, W)`` uint8 RGB frames at ``fps``.

    Frame ``t`` is what is on screen at time ``t / fps`` (the frame rate of the file does not
    matter). ``box = (x, y, w, h)`` crops every frame to that region, in pixels of the frame as
    displayed; ``size`` then resizes to ``size`` x ``size`` (area filter). With ``n_frames`` the
    result has exactly that many frames: a shorter video repeats its last frame, a longer one is
    cut. More than ``max_bytes`` of frames is refused rather than allocated.
    Raises :class:`PolicyDataError` naming the file for a missing, empty or unreadable file, a
    file without video, and a video without frames.
    """
    if n_frames is not None and (isinstance(n_frames, bool) or not isinstance(n_frames, int)
                                 or n_frames < 1):
        raise PolicyDataError(f"video {path}: n_frames must be a positive int, got {n_frames!r}")
    plan = _plan(path, fps=fps, size=size, box=box)
    limit = max_bytes // plan.frame_bytes  # frames that fit in max_bytes
    what = f"{plan.width}x{plan.height} frames"
    if n_frames is not None and n_frames > limit:
        raise PolicyDataError(f"video {plan.path}: {n_frames} {what} take "
                              f"{n_frames * plan.frame_bytes / 2**30:.1f} GiB, more than the "
                              f"{max_bytes / 2**30:.1f} GiB allowed; pass a smaller size or a box")
    if limit < 1:
        raise PolicyDataError(f"video {plan.path}: one of its {what} takes more than the "
                              f"{max_bytes} bytes allowed; pass a smaller size or a box")
    if n_frames is not None:
        video = torch.empty((n_frames, 3, plan.height, plan.width), dtype=torch.uint8)
        got = 0
        for part in _frames(plan, batch=min(n_frames, 256), max_frames=n_frames):
            video[got : got + len(part)] = part
            got += len(part)
        if got < n_frames:  # the video is shorter: hold its last frame
            video[got:] = video[got - 1]
        return video  # (n_frames, 3, H, W)
    # Read one frame past the limit to tell "exactly at the limit" from "longer than it".
    parts = list(_frames(plan, batch=min(limit + 1, 256), max_frames=limit + 1))
    if sum(len(p) for p in parts) > limit:
        raise PolicyDataError(f"video {plan.path}: longer than {limit} {what} "
                              f"({max_bytes / 2**30:.1f} GiB); pass n_frames, a smaller size "
                              "or a box")
    return torch.cat(parts) if len(parts) > 1 else parts[0]  # (T, 3, H, W)


# --- vision encoders -----------------------------------------------------------------------

CONV = "conv"  # the policy's own conv net on raw frames (model.VideoEncoder): nothing to load
VISION_KINDS = {  # model_type in config.json -> what it is
    "dinov2": "DINOv2",
    "siglip_vision_model": "SigLIP vision tower",
    "siglip": "SigLIP (its vision tower is used)",
}
PREPROCESSOR = "preprocessor_config.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's normalisation when the directory gives none
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)  # SigLIP's: pixels to [-1, 1]
SIGLIP_STD = (0.5, 0.5, 0.5)


def _preprocessor(path: Path) -> dict:
    file = path / PREPROCESSOR
    if not file.is_file():
        return {}
    try:
        pre = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"model directory {path}: {PREPROCESSOR} cannot be read as JSON "
                            f"({exc})") from exc
    if not isinstance(pre, dict):
        raise ModelDirError(f"model directory {path}: {PREPROCESSOR} is not a JSON object")
    return pre


def _triple(path: Path, pre: dict, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    value = pre.get(name, default)
    if isinstance(value, int | float):
        value = [value] * 3
    if (not isinstance(value, list | tuple) or len(value) != 3
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in value)):
        raise ModelDirError(f"model directory {path}: {PREPROCESSOR} field {name!r} must be "
                            f"three numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _square(path: Path, value: Any, name: str) -> int | None:
    """A preprocessor size (``224`` or ``{"height": 224, "width": 224}``) as one side."""
    if isinstance(value, dict):
        if "height" not in value and "width" not in value:
            return None  # {"shortest_edge": …} is a resize rule, not the model's input size
        value = (value.get("height"), value.get("width"))
    else:
        value = (value, value)
    h, w = value
    if not (isinstance(h, int) and isinstance(w, int) and h == w and h > 0):
        raise ModelDirError(f"model directory {path}: {PREPROCESSOR} field {name!r} must be a "
                            f"square size, got {value!r}")
    return h


class VisionEncoder:
    """A frozen pretrained image model: ``(N, 3, S, S)`` uint8 frames -> ``(N, dim)`` float32.

    Pooled output: DINOv2's CLS token after its final layer norm, SigLIP's attention-pooled
    vector (both are ``pooler_output``). Normalisation as the directory's
    ``preprocessor_config.json`` says, else the model family's own. ``sha256`` covers the
    weights, the normalisation, the input size and the pooling: everything that changes the
    features.
    """

    def __init__(self, model: torch.nn.Module, *, kind: str, name: str, image_size: int,
                 mean: Sequence[float], std: Sequence[float], scale: float,
                 weights_sha256: str, device: torch.device) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.kind = kind  # "dinov2" or "siglip"
        self.name = name  # the model directory's name, for messages and logs
        self.image_size = int(image_size)  # frames must be image_size x image_size
        self.dim = int(model.config.hidden_size)  # width of one feature vector
        self.device = device
        self.scale = float(scale)  # uint8 -> [0, 1]
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        recipe = {"weights": weights_sha256, "kind": kind, "image_size": self.image_size,
                  "mean": list(mean), "std": list(std), "scale": self.scale,
                  "pool": "pooler_output"}
        self.sha256 = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dir(cls, path: str | os.PathLike, *, device: str | torch.device = "auto",
                 ) -> VisionEncoder:
        """Load a DINOv2 or SigLIP directory (``model_type`` dinov2, siglip_vision_model, or
        a full siglip model, of which the vision tower is kept)."""
        path = Path(path)
        config = check_model_dir(path, kinds=VISION_KINDS)
        pre = _preprocessor(path)
        if config["model_type"] == "dinov2":
            from transformers import Dinov2Model

            kind, model_cls, mean, std = "dinov2", Dinov2Model, IMAGENET_MEAN, IMAGENET_STD
        else:
            from transformers import SiglipVisionModel

            kind, model_cls, mean, std = "siglip", SiglipVisionModel, SIGLIP_MEAN, SIGLIP_STD
        # fp32 weights; on CUDA the forward pass runs under bf16 autocast.
        model = load_pretrained(model_cls, path, kinds=VISION_KINDS, dtype=torch.float32)
        if pre.get("do_normalize", True):
            mean = _triple(path, pre, "image_mean", mean)
            std = _triple(path, pre, "image_std", std)
            if min(std) <= 0:
                raise ModelDirError(f"model directory {path}: {PREPROCESSOR} field 'image_std' "
                                    f"must be positive, got {std}")
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        scale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
        image_size = int(model.config.image_size)
        if kind == "dinov2":
            # DINOv2 interpolates its position embeddings, and its processor feeds a centre crop
            # (224 for the released models, whose config says 518): that crop is its input size.
            crop = _square(path, pre["crop_size"], "crop_size") if pre.get("crop_size") else None
            resize = _square(path, pre["size"], "size") if pre.get("size") else None
            image_size = crop or resize or image_size
        return cls(model, kind=kind, name=path.name, image_size=image_size, mean=mean, std=std,
                   scale=scale, weights_sha256=model_dir_sha256(path),
                   device=pick_device(str(device)))

    def encode(self, frames: torch.Tensor | np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """``(N, 3, S, S)`` uint8 frames, ``S == image_size`` -> ``(N, dim)`` float32 on the CPU."""
        x = torch.as_tensor(frames)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise PolicyDataError(f"vision encoder {self.name}: frames must be uint8 "
                                  f"(N, 3, S, S), got {x.dtype} {tuple(x.shape)}")
        s = self.image_size
        if x.shape[2] != s or x.shape[3] != s:
            raise PolicyDataError(
                f"vision encoder {self.name} takes {s}x{s} frames, got {x.shape[3]}x{x.shape[2]}"
                f"; decode at the encoder's size (size={s})")
        out = torch.empty(len(x), self.dim, dtype=torch.float32)  # (N, dim)
        with torch.no_grad(), autocast(self.device, enabled=True):
            for i in range(0, len(x), batch_size):
                b = x[i : i + batch_size].to(self.device, non_blocking=True)  # (b, 3, S, S)
                b = (b.float() * self.scale - self._mean) / self._std
                res = self.model(pixel_values=b)
                pooled = res.pooler_output  # (b, dim)
                if pooled is None:  # a SigLIP tower saved without its pooling head
                    pooled = res.last_hidden_state.mean(1)  # (b, P, dim) -> (b, dim)
                out[i : i + len(b)] = pooled.float().cpu()
        return out


def load_vision_encoder(spec: str, *, device: str | torch.device = "auto",
                        root: str | os.PathLike | None = None) -> VisionEncoder | None:
    """``"conv"``: None (the policy's own conv net reads raw frames); otherwise a model
    directory, an absolute path or a name under ``root`` / ``POLICY_MODEL_DIR``."""
    if spec == CONV:
        return None
    return VisionEncoder.from_dir(resolve_model_dir(spec, root=root), device=device)


# --- feature store -------------------------------------------------------------------------

FEATURE_FORMAT = 1  # bump when decoding changes what a key's features are


def feature_key(*, video_sha: str, encoder_sha: str, fps: float, image_size: int,
                box: Sequence[Any] | None) -> str:
    """sha256 naming the features of one video under one encoder, rate, size and crop."""
    rate = ffmpeg_rate(fps)  # 25 and 25.0 (and 29.97 and 30000/1001) decode alike
    recipe = {"format": FEATURE_FORMAT, "video": video_sha, "encoder": encoder_sha,
              "fps": f"{rate.numerator}/{rate.denominator}", "image_size": int(image_size),
              "box": list(box_ints(box, where="feature key")) if box is not None else None}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


class FeatureStore:
    """Per-frame features ``(T, dim)`` under ``root/ab/<key>.npy``, float16, written atomically
    (temporary file + rename), so a crash never leaves a half-written file under a key. A cache:
    deleting the folder loses nothing that cannot be computed again."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a sha256 hex digest: {key!r}")
        return self.root / key[:2] / f"{key}.npy"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> np.ndarray | None:
        """The features stored under ``key`` as float32 ``(T, dim)``, or None."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:  # unreadable: computed again and replaced
            log.warning("feature file %s cannot be read (%s); it will be computed again",
                        path, exc)
            return None
        if array.ndim != 2:
            log.warning("feature file %s has shape %s, expected (T, dim); it will be computed "
                        "again", path, array.shape)
            return None
        return array.astype(np.float32)

    def put(self, key: str, array: np.ndarray) -> Path:
        """Store ``(T, dim)`` features under ``key`` (as float16); returns the file's path."""
        with np.errstate(over="ignore"):  # overflow is checked just below, with a message
            half = np.ascontiguousarray(array, dtype=np.float16)
        if half.ndim != 2:
            raise ValueError(f"features must be (T, dim), got shape {half.shape}")
        if not np.isfinite(half).all():
            raise PolicyDataError(f"features for key {key[:12]} are not finite in float16 "
                                  f"(largest magnitude {np.abs(array).max():.3g})")
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, half, allow_pickle=False)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


_DEFAULT_ROOT: list[Callable[[], str | os.PathLike]] = []  # set by the application


def set_default_feature_dir(root: Callable[[], str | os.PathLike]) -> None:
    """Where :func:`default_feature_store` keeps features in this process: ``root()`` is read
    each time (the application's settings may change under its tests)."""
    _DEFAULT_ROOT[:] = [root]


def default_feature_store() -> FeatureStore:
    """The process's feature store: the directory the application set, else
    ``POLICY_FEATURE_DIR``, else a folder in the user's cache."""
    if _DEFAULT_ROOT:
        return FeatureStore(_DEFAULT_ROOT[0]())
    root = os.environ.get("POLICY_FEATURE_DIR") or Path.home() / ".cache" / "backchannel-features"
    return FeatureStore(root)


def fit_length(features: np.ndarray, n_frames: int | None) -> np.ndarray:
    """``(T, dim)`` cut or padded (repeating the last row) to ``(n_frames, dim)``."""
    if n_frames is None or len(features) == n_frames:
        return features
    if len(features) > n_frames:
        return features[:n_frames]
    pad = np.repeat(features[-1:], n_frames - len(features), axis=0)
    return np.concatenate([features, pad])


def features_for(video_path: str | os.PathLike, video_sha: str | None, encoder: VisionEncoder,
                 fps: float, n_frames: int | None, box: Sequence[Any] | None,
                 store: FeatureStore, *, batch_size: int = 64) -> np.ndarray:
    """Per-frame features ``(n_frames, dim)`` float32 of a video, from the store when there.

    On a miss the whole video is decoded at ``fps`` (cropped to ``box``, at the encoder's size)
    and encoded in batches, and the features are stored; ``n_frames`` then cuts or pads the
    result (the stored array covers the whole video, so any length can be served from it).
    Computed and stored features are the same numbers (both rounded to float16).
    ``video_sha`` is the sha256 of the file's bytes (computed when None).
    """
    key = feature_key(video_sha=video_sha or file_sha256(video_path), encoder_sha=encoder.sha256,
                      fps=fps, image_size=encoder.image_size, box=box)
    features = store.get(key)
    if features is None:
        started = time.perf_counter()
        parts = [encoder.encode(chunk, batch_size=batch_size)  # (n, dim) each
                 for chunk in iter_video(video_path, fps=fps, size=encoder.image_size, box=box,
                                         batch=batch_size)]
        computed = torch.cat(parts).numpy()  # (T, dim)
        store.put(key, computed)
        features = computed.astype(np.float16).astype(np.float32)
        log.info("video %s: %d frames encoded with %s in %.1f s (key %s)", Path(video_path).name,
                 len(features), encoder.name, time.perf_counter() - started, key[:12])
    return fit_length(features, n_frames)
