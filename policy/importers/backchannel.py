"""The project's own corpus layout: manifest.json + per-episode files (docs/corpus_format.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from rendering.layouts import UnknownLayoutError, get_layout

from .errors import ImportProblem
from .records import CorpusReader, EpisodeRecord, parse_npy, parse_wav
from .sources import Source

FORMAT_NAME = "backchannel-corpus"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _find_manifest(source: Source) -> str:
    if source.exists(MANIFEST):
        return ""
    # A zip of a folder holds "<folder>/manifest.json": accept exactly one such top folder.
    nested = [f for f in source.files() if PurePosixPath(f).parts[1:] == (MANIFEST,)]
    if len(nested) == 1:
        return PurePosixPath(nested[0]).parts[0] + "/"
    raise ImportProblem(source.root_label, MANIFEST, "manifest.json not found at the top level")


def _require(obj: dict, key: str, file: str, where: str, kind: type):
    if key not in obj:
        raise ImportProblem(file, f"{where}{key}", "required field missing")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        expected = kind.__name__.replace("str", "string").replace("int", "integer")
        raise ImportProblem(file, f"{where}{key}", f"must be a {expected}")
    return value


def read_backchannel(source: Source) -> CorpusReader:
    prefix = _find_manifest(source)
    mfile = source.label(prefix + MANIFEST)
    try:
        manifest = json.loads(source.read(prefix + MANIFEST, "manifest"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportProblem(mfile, "manifest", f"not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ImportProblem(mfile, "manifest", "must be a JSON object")
    fmt = _require(manifest, "format", mfile, "", str)
    if fmt != FORMAT_NAME:
        raise ImportProblem(mfile, "format", f"expected {FORMAT_NAME!r}, got {fmt!r}")
    version = _require(manifest, "version", mfile, "", int)
    if version != FORMAT_VERSION:
        raise ImportProblem(mfile, "version", f"this platform reads version {FORMAT_VERSION}")
    name = _require(manifest, "name", mfile, "", str)
    face_model = _require(manifest, "face_model", mfile, "", str)
    try:
        get_layout(face_model)
    except UnknownLayoutError as exc:
        raise ImportProblem(mfile, "face_model", str(exc.args[0])) from exc
    default_fps = manifest.get("fps")
    episodes = _require(manifest, "episodes", mfile, "", list)
    if not episodes:
        raise ImportProblem(mfile, "episodes", "the manifest lists no episodes")
    # Check the whole manifest before reading any array, so a typo in the last entry fails fast.
    for i, entry in enumerate(episodes):
        where = f"episodes[{i}]."
        if not isinstance(entry, dict):
            raise ImportProblem(mfile, f"episodes[{i}]", "must be an object")
        _require(entry, "key", mfile, where, str)
        _require(entry, "split", mfile, where, str)
        listener = _require(entry, "listener", mfile, where, str)
        if "fps" not in entry and default_fps is None:
            raise ImportProblem(mfile, f"{where}fps", "required field missing (no top-level fps)")
        for stream in ("listener", "reference", "speaker", "audio", "video"):
            rel = entry.get(stream)
            if rel is None:
                continue
            if not isinstance(rel, str):
                raise ImportProblem(mfile, f"{where}{stream}", "must be a path string")
            if not source.exists(prefix + rel):
                raise ImportProblem(mfile, f"{where}{stream}", f"file {rel!r} is not in the import")
        if not listener.endswith(".npy"):
            raise ImportProblem(mfile, f"{where}listener", "must be a .npy file")
        if entry.get("reference") is not None and not entry["reference"].endswith(".npy"):
            raise ImportProblem(mfile, f"{where}reference", "must be a .npy file")
        if "speaker_fps" in entry:
            fps = entry.get("fps", default_fps)
            if entry["speaker_fps"] != fps:
                raise ImportProblem(
                    mfile,
                    f"{where}speaker_fps",
                    f"speaker at {entry['speaker_fps']} fps but listener at {fps} fps",
                )
        meta = entry.get("meta", {})
        if not isinstance(meta, dict):
            raise ImportProblem(mfile, f"{where}meta", "must be an object")
    return CorpusReader(
        name=name,
        face_model=face_model,
        description=str(manifest.get("description", "")),
        source_format="backchannel",
        count=len(episodes),
        episodes=_iter_episodes(source, prefix, episodes, default_fps),
    )


def _iter_episodes(
    source: Source, prefix: str, entries: list[dict], default_fps: float | None
) -> Iterator[EpisodeRecord]:
    for entry in entries:
        lpath = prefix + entry["listener"]
        label = source.label(lpath)
        fps = entry.get("fps", default_fps)
        if not isinstance(fps, int | float) or isinstance(fps, bool) or not math.isfinite(fps):
            raise ImportProblem(label, "fps", f"must be a number, got {fps!r}")
        rec = EpisodeRecord(
            key=entry["key"],
            split=entry["split"],
            fps=float(fps),
            listener=parse_npy(source.read(lpath, "listener"), label, "listener"),
            label=label,
            meta=entry.get("meta", {}),
        )
        if entry.get("reference"):
            rpath = prefix + entry["reference"]
            rec.reference_label = source.label(rpath)
            rec.reference = parse_npy(
                source.read(rpath, "reference"), rec.reference_label, "reference"
            )
        if entry.get("speaker"):
            spath = prefix + entry["speaker"]
            rec.speaker = parse_npy(source.read(spath), source.label(spath), "speaker")
        if entry.get("audio"):
            apath = prefix + entry["audio"]
            alabel = source.label(apath)
            data = source.read(apath, "audio")
            if apath.endswith(".wav"):
                rec.audio, rec.audio_sample_rate = parse_wav(data, alabel, "audio")
            elif apath.endswith(".npy"):
                rec.audio = parse_npy(data, alabel, "audio")
                rec.audio_sample_rate = entry.get("audio_sample_rate")
                if rec.audio_sample_rate is None:
                    raise ImportProblem(alabel, "audio_sample_rate", "required with .npy audio")
            else:
                raise ImportProblem(alabel, "audio", "must be a .wav or .npy file")
        if entry.get("video"):
            vpath = prefix + entry["video"]
            rec.video = source.read(vpath, "video")
            rec.video_ext = PurePosixPath(vpath).suffix.lstrip(".").lower()
        transcript = entry.get("transcript")
        if isinstance(transcript, str):
            tpath = prefix + transcript
            try:
                transcript = json.loads(source.read(tpath, "transcript"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ImportProblem(
                    source.label(tpath), "transcript", f"not valid JSON ({exc})"
                ) from exc
        rec.transcript = transcript
        yield rec


def write_backchannel(
    out: Path,
    *,
    name: str,
    face_model: str,
    description: str,
    episodes: Iterable[EpisodeRecord],
    fps: float | None = None,
) -> int:
    """Write episodes in this format (the inverse of ``read_backchannel``). Returns the count."""
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    for rec in episodes:
        folder = f"episodes/{rec.key}"
        (out / folder).mkdir(parents=True, exist_ok=True)
        entry: dict = {"key": rec.key, "split": rec.split, "fps": rec.fps}
        np.save(out / folder / "listener.npy", rec.listener.astype(np.float32), allow_pickle=False)
        entry["listener"] = f"{folder}/listener.npy"
        if rec.reference is not None:
            np.save(out / folder / "reference.npy", rec.reference.astype(np.float32))
            entry["reference"] = f"{folder}/reference.npy"
        if rec.speaker is not None:
            np.save(out / folder / "speaker.npy", rec.speaker.astype(np.float32))
            entry["speaker"] = f"{folder}/speaker.npy"
        if rec.audio is not None:
            np.save(out / folder / "audio.npy", rec.audio.astype(np.float32))
            entry["audio"] = f"{folder}/audio.npy"
            entry["audio_sample_rate"] = rec.audio_sample_rate
        if rec.video is not None:
            (out / folder / f"speaker.{rec.video_ext}").write_bytes(rec.video)
            entry["video"] = f"{folder}/speaker.{rec.video_ext}"
        if rec.transcript is not None:
            (out / folder / "transcript.json").write_text(json.dumps(rec.transcript))
            entry["transcript"] = f"{folder}/transcript.json"
        if rec.meta:
            entry["meta"] = rec.meta
        entries.append(entry)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": name,
        "face_model": face_model,
        "description": description,
        "episodes": entries,
    }
    if fps is not None:
        manifest["fps"] = fps
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return len(entries)
