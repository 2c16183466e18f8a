"""Pretrained Hugging Face models from local directories: checks, a content hash, loading.

Used by the vision encoders (``video``) and by the language-model backbones. Nothing is ever
downloaded: a model is a directory on this machine, laid out as ``save_pretrained`` writes it
(``config.json`` and safetensors weights), given as an absolute path or as a name under
``POLICY_MODEL_DIR``. Pickle weights (``pytorch_model.bin``, ``*.pt`` …) are refused: unpickling
a file from elsewhere can run code (DESIGN.md, Data rules).

Every error is a :class:`ModelDirError` that names the directory and the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import PolicyDataError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# Weights written with pickle: refused, with a message that says why (only safetensors load).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# A safetensors header is a JSON table of tensor names, dtypes, shapes and offsets; a real one is
# kilobytes to a few megabytes. Anything larger is a file that only looks like safetensors.
MAX_HEADER_BYTES = 100 * 1024**2
ENV_MODEL_DIR = "POLICY_MODEL_DIR"
# from_pretrained keywords that load_pretrained sets itself: a caller may not loosen them.
_FIXED_KEYWORDS = frozenset({"local_files_only", "use_safetensors", "output_loading_info",
                             "dtype", "torch_dtype", "ignore_mismatched_sizes", "weights_only"})


class ModelDirError(PolicyDataError):
    """A model directory that cannot be used: missing, unreadable, unsupported or pickled."""


def _fail(path: Path, reason: str) -> ModelDirError:
    return ModelDirError(f"model directory {path}: {reason}")


def _read_json(path: Path, file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"{file.name} cannot be read as JSON ({exc})") from exc


def _check_safetensors_header(path: Path, file: Path) -> None:
    """Read only the header (8 bytes of length + JSON), so a 14 GB file costs a few kilobytes."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            ok = 2 <= n <= min(MAX_HEADER_BYTES, size - 8)
            header = json.loads(fh.read(n)) if ok else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise _fail(path, f"{file.name} is not a safetensors file (its header cannot be read)")


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model directory, with their index when sharded (sorted)."""
    path = Path(path)
    single, index = path / WEIGHTS, path / WEIGHTS_INDEX
    if single.is_file():
        return [single]
    if index.is_file():
        table = _read_json(path, index)
        weight_map = table.get("weight_map") if isinstance(table, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise _fail(path, f"{WEIGHTS_INDEX} has no 'weight_map' of tensor -> shard file")
        shards = sorted({str(v) for v in weight_map.values()})
        bad = [s for s in shards if Path(s).name != s or not s.endswith(".safetensors")]
        if bad:
            raise _fail(path, f"{WEIGHTS_INDEX} names shards that are not safetensors files "
                              f"in the directory: {bad[:3]}")
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise _fail(path, f"{len(missing)} of {len(shards)} shards named in {WEIGHTS_INDEX} "
                              f"are missing: {', '.join(missing[:5])}")
        return [index, *(path / s for s in shards)]
    pickled = sorted(p.name for p in path.iterdir()
                     if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise _fail(path, f"holds only pickle weights ({', '.join(pickled[:3])}); only "
                          "safetensors are loaded, since unpickling a file can run code. Convert "
                          "them on a trusted machine (save_pretrained(dir, "
                          "safe_serialization=True)) and copy the result here")
    raise _fail(path, f"has no weights: expected {WEIGHTS} or {WEIGHTS_INDEX} with its shards")


def check_model_dir(path: str | os.PathLike, *, kinds: Mapping[str, str]) -> dict:
    """Check a model directory before anything is loaded; returns its parsed ``config.json``.

    ``kinds`` maps each supported ``model_type`` to a human name (used in the error that lists
    them). Checked: the directory exists, ``config.json`` parses and names a supported
    ``model_type``, the weights are safetensors (one file, or an index with every shard
    present) whose headers read.
    """
    path = Path(path)
    if not path.exists():
        raise _fail(path, "does not exist")
    if not path.is_dir():
        raise _fail(path, "is not a directory")
    config_file = path / CONFIG
    if not config_file.is_file():
        raise _fail(path, f"has no {CONFIG} (expected a directory written by save_pretrained)")
    config = _read_json(path, config_file)
    if not isinstance(config, dict):
        raise _fail(path, f"{CONFIG} holds {type(config).__name__}, expected a JSON object")
    model_type = config.get("model_type")
    if model_type not in kinds:
        supported = ", ".join(f"{k} ({v})" for k, v in kinds.items())
        raise _fail(path, f"model_type {model_type!r} in {CONFIG} is not supported here; "
                          f"supported: {supported}")
    for file in weight_files(path):
        if file.name != WEIGHTS_INDEX:
            _check_safetensors_header(path, file)
    return config


# --- content hash --------------------------------------------------------------------------

# (resolved path, size, mtime_ns) -> sha256 of the file: reloading an unchanged 14 GB model
# directory in the same process does not read it again.
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGEST_LOCK = threading.Lock()


def file_sha256(file: str | os.PathLike) -> str:
    """sha256 of a file's bytes, cached in this process by (path, size, mtime)."""
    file = Path(file)
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    with _DIGEST_LOCK:
        cached = _FILE_DIGESTS.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _DIGEST_LOCK:
        _FILE_DIGESTS[key] = digest
    return digest


def model_dir_sha256(path: str | os.PathLike) -> str:
    """sha256 over the names and contents of ``config.json`` and the safetensors files (with
    the shard index). Other files (tokenizer, README) do not change it."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise _fail(path, f"has no {CONFIG}")
    files = sorted([path / CONFIG, *weight_files(path)], key=lambda p: p.name)
    h = hashlib.sha256()
    for file in files:
        h.update(f"{file.name}\0{file_sha256(file)}\n".encode())
    return h.hexdigest()


# --- where models live ---------------------------------------------------------------------


def resolve_model_dir(name: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Path:
    """An absolute path as it is; anything else is a name under ``root`` (default: the
    ``POLICY_MODEL_DIR`` environment variable), and may not climb out of it."""
    given = Path(name).expanduser()
    if given.is_absolute():
        return given
    base = str(root) if root is not None else os.environ.get(ENV_MODEL_DIR, "")
    if not base:
        raise _fail(given, f"is not an absolute path and {ENV_MODEL_DIR} is not set (set it to "
                           "the directory that holds the models, or give an absolute path)")
    base_path = Path(base).expanduser().resolve()
    resolved = (base_path / given).resolve()
    if not resolved.is_relative_to(base_path):
        raise _fail(given, f"names a directory outside {ENV_MODEL_DIR} ({base_path})")
    return resolved


# --- loading -------------------------------------------------------------------------------


def load_pretrained(cls: Any, path: str | os.PathLike, *, kinds: Mapping[str, str],
                    dtype: Any = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on a checked local directory, safetensors only, offline.

    ``dtype``: a ``torch.dtype`` to load in; None keeps what the directory's config says (its
    ``dtype``, else float32). Other keywords go to ``from_pretrained`` (e.g.
    ``attn_implementation``). A weights file that lacks some of the model's tensors is an error,
    not a silent random initialisation of them; tensors the model does not use (the text tower
    of a full SigLIP directory loaded as its vision tower) are ignored.
    """
    path = Path(path)
    fixed = _FIXED_KEYWORDS & kwargs.keys()
    if fixed:
        raise TypeError(f"load_pretrained sets {sorted(fixed)} itself")
    check_model_dir(path, kinds=kinds)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: unused tensors are checked below
    try:
        model, info = cls.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, dtype=dtype,
            output_loading_info=True, **kwargs)
    except Exception as exc:  # any loader failure means this directory cannot be used
        raise _fail(path, f"loading it as {getattr(cls, '__name__', cls)} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise _fail(path, f"the weights lack {len(missing)} tensors of "
                          f"{type(model).__name__} (e.g. {', '.join(missing[:5])}); they would "
                          "be randomly initialised")
    mismatched = list(info.get("mismatched_keys") or ())
    errors = list(info.get("error_msgs") or ())
    if mismatched or errors:
        raise _fail(path, f"the weights do not fit {type(model).__name__}: "
                          f"{(mismatched or errors)[:3]}")
    return model
