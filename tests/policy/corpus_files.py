"""Small corpora written by the tests: the project's own layout and the L2L layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rendering.layouts import BUILTIN


def write_backchannel_corpus(
    root: Path,
    *,
    n: int = 3,
    frames: int = 60,
    fps: int = 30,
    seed: int = 0,
    name: str = "tiny",
    reference: bool = False,
) -> dict:
    """A valid corpus folder with ``n`` episodes; returns the manifest (already written).
    With ``reference`` every episode also has a reference listener stream."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    episodes = []
    for i in range(n):
        key = f"ep-{i:03d}"
        folder = root / "episodes" / key
        folder.mkdir(parents=True)
        listener = rng.uniform(0, 1, (frames, BUILTIN.width)).astype(np.float32)
        speaker = rng.uniform(0, 1, (frames, BUILTIN.width)).astype(np.float32)
        audio = rng.uniform(-0.5, 0.5, frames * 16000 // fps).astype(np.float32)
        np.save(folder / "listener.npy", listener)
        np.save(folder / "speaker.npy", speaker)
        np.save(folder / "audio.npy", audio)
        words = [
            {"word": "hello", "start": 0.1, "end": 0.4},
            {"word": "there", "start": 0.5, "end": 0.9},
        ]
        (folder / "transcript.json").write_text(json.dumps(words))
        extra = {}
        if reference:
            np.save(folder / "reference.npy", (0.5 * listener).astype(np.float32))
            extra["reference"] = f"episodes/{key}/reference.npy"
        episodes.append(
            {
                **extra,
                "key": key,
                "split": ["train", "val", "test"][i % 3],
                "listener": f"episodes/{key}/listener.npy",
                "speaker": f"episodes/{key}/speaker.npy",
                "audio": f"episodes/{key}/audio.npy",
                "audio_sample_rate": 16000,
                "transcript": f"episodes/{key}/transcript.json",
                "meta": {"note": f"episode {i}"},
            }
        )
    manifest = {
        "format": "backchannel-corpus",
        "version": 1,
        "name": name,
        "face_model": "builtin",
        "fps": fps,
        "episodes": episodes,
    }
    write_manifest(root, manifest)
    return manifest


def write_manifest(root: Path, manifest: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))


def write_l2l_folder(
    folder: Path, *, n: int = 4, frames: int = 64, seed: int = 0, files_dtype: str = "U"
) -> dict[str, np.ndarray]:
    """One ``<channel>/<split>`` folder of the Learning-to-Listen release, same shapes/names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for p in (0, 1):
        arrays[f"p{p}_list_faces"] = rng.normal(0, 1, (n, frames, 184)).astype(np.float32)
        arrays[f"p{p}_speak_faces"] = rng.normal(0, 1, (n, frames, 184)).astype(np.float32)
        arrays[f"p{p}_speak_audio"] = rng.normal(0, 1, (n, 4 * frames, 128)).astype(np.float32)
        ids = np.array(
            [[[f"video{p}_{i}", str(i * frames + t), "0"] for t in range(frames)] for i in range(n)]
        )
        arrays[f"p{p}_speak_files"] = ids.astype(object) if files_dtype == "O" else ids
    for stem, array in arrays.items():
        np.save(folder / f"{stem}_clean_deca.npy", array, allow_pickle=array.dtype == object)
    return arrays
