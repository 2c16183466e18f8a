"""Storing corpora: every import path (command, admin upload, synthetic generator) ends here."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from policy.importers import CorpusReader, ImportProblem, open_source, read_corpus, validate_record
from policy.models import Dataset, Episode
from rendering import blobs
from rendering.layouts import get_layout

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
_SLUG_RE = re.compile(r"^[-a-zA-Z0-9_]{1,100}$")


@dataclass(frozen=True)
class ImportResult:
    dataset: Dataset
    created: int  # episodes new to the dataset
    existing: int  # episodes whose content was already there (nothing written)
    blobs_written: int
    seconds: float


def _episode_hash(fields: dict) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def dataset_import(
    *,
    path: Path,
    fmt: str,
    name: str | None = None,
    user: AbstractBaseUser | None = None,
    progress: ProgressFn | None = None,
    options: dict | None = None,
) -> ImportResult:
    """Import a corpus from a folder or zip. All or nothing: on any problem the database and
    media storage are left exactly as they were and ``ImportProblem`` names file, field, reason."""
    with open_source(Path(path)) as source:
        reader = read_corpus(source, fmt, **(options or {}))
        return dataset_store(reader=reader, name=name, user=user, progress=progress)


def dataset_store(
    *,
    reader: CorpusReader,
    name: str | None = None,
    user: AbstractBaseUser | None = None,
    progress: ProgressFn | None = None,
) -> ImportResult:
    started = time.perf_counter()
    name = name or reader.name
    if not _SLUG_RE.match(name):
        raise ImportProblem("dataset", "name", f"{name!r} must be letters, digits, - or _")
    layout = get_layout(reader.face_model)
    dataset = Dataset.objects.filter(name=name).first()
    if dataset is not None and dataset.face_model != layout.name:
        raise ImportProblem(
            "dataset",
            "face_model",
            f"dataset {name!r} uses {dataset.face_model!r}, the import uses {layout.name!r}",
        )
    known_hashes: set[str] = set()
    known_keys: set[str] = set()
    if dataset is not None:
        for key, content_hash in dataset.episodes.values_list("key", "content_hash"):
            known_keys.add(key)
            known_hashes.add(content_hash)

    written: list[tuple[str, str]] = []  # blobs this import created, removed again on failure
    rows: list[Episode] = []
    existing = 0
    try:
        for done, rec in enumerate(reader.episodes, start=1):
            rec = validate_record(rec, layout)
            payloads: dict[str, tuple[bytes, str]] = {
                "listener": (blobs.array_bytes(rec.listener), "npy")
            }
            if rec.reference is not None:
                payloads["reference"] = (blobs.array_bytes(rec.reference), "npy")
            if rec.speaker is not None:
                payloads["speaker"] = (blobs.array_bytes(rec.speaker), "npy")
            if rec.audio is not None:
                payloads["audio"] = (blobs.array_bytes(rec.audio), "npy")
            if rec.audio_features is not None:
                payloads["audio_features"] = (blobs.array_bytes(rec.audio_features), "npy")
            if rec.video is not None:
                payloads["video"] = (rec.video, rec.video_ext)
            shas = {k: blobs.sha256_bytes(data) for k, (data, _) in payloads.items()}
            content_hash = _episode_hash(
                {
                    "key": rec.key,
                    "split": rec.split,
                    "fps": rec.fps,
                    "n_frames": int(rec.listener.shape[0]),
                    "streams": shas,
                    "audio_sample_rate": rec.audio_sample_rate,
                    "video_ext": rec.video_ext,
                    "transcript": rec.transcript,
                    "meta": rec.meta,
                }
            )
            if content_hash in known_hashes:
                existing += 1
            else:
                if rec.key in known_keys:
                    raise ImportProblem(
                        rec.label,
                        "key",
                        f"episode {rec.key!r} already exists in {name!r} with different content",
                    )
                for stream, (data, ext) in payloads.items():
                    sha, created = blobs.put_blob(data, ext, sha=shas[stream])
                    if created:
                        written.append((sha, ext))
                rows.append(
                    Episode(
                        key=rec.key,
                        split=rec.split,
                        fps=rec.fps,
                        n_frames=int(rec.listener.shape[0]),
                        content_hash=content_hash,
                        listener_sha=shas["listener"],
                        reference_sha=shas.get("reference", ""),
                        speaker_sha=shas.get("speaker", ""),
                        audio_sha=shas.get("audio", ""),
                        audio_sample_rate=rec.audio_sample_rate if rec.audio is not None else None,
                        audio_features_sha=shas.get("audio_features", ""),
                        video_sha=shas.get("video", ""),
                        video_ext=rec.video_ext if rec.video is not None else "",
                        transcript=rec.transcript,
                        meta=rec.meta,
                    )
                )
                known_hashes.add(content_hash)
                known_keys.add(rec.key)
            if progress is not None:
                progress(done, reader.count)
        if dataset is None and not rows:
            raise ImportProblem("dataset", "episodes", "the import holds no episodes")
        with transaction.atomic():
            if dataset is None:
                dataset = Dataset.objects.create(
                    name=name,
                    face_model=layout.name,
                    description=reader.description,
                    source_format=reader.source_format,
                    created_by=user,
                )
            for row in rows:
                row.dataset = dataset
            Episode.objects.bulk_create(rows, batch_size=500)
    except IntegrityError as exc:
        _remove(written)
        raise ImportProblem(
            "dataset", name, f"changed during the import, try again ({exc})"
        ) from exc
    except BaseException:
        _remove(written)
        raise
    seconds = time.perf_counter() - started
    logger.info(
        "dataset %s: %d episodes created, %d already present, %d blobs written in %.2fs",
        name,
        len(rows),
        existing,
        len(written),
        seconds,
    )
    return ImportResult(dataset, len(rows), existing, len(written), seconds)


def _remove(written: list[tuple[str, str]]) -> None:
    for sha, ext in written:
        blobs.delete_blob(sha, ext)
