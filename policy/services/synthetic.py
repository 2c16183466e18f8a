"""The synthetic dyadic corpus as a dataset (see docs/synthetic_corpus.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from policy.importers import CorpusReader, EpisodeRecord
from policy.importers.backchannel import write_backchannel
from policy.services.datasets import ImportResult, ProgressFn, dataset_store
from policy.synthetic import SyntheticEpisode, generate_corpus
from rendering.layouts import BUILTIN


def _record(ep: SyntheticEpisode) -> EpisodeRecord:
    return EpisodeRecord(
        key=ep.key,
        split=ep.split,
        fps=float(ep.fps),
        listener=ep.listener,
        label=f"synthetic:{ep.key}",
        speaker=ep.speaker,
        audio=ep.audio,
        audio_sample_rate=ep.audio_sample_rate,
        transcript=ep.transcript,
        meta=ep.meta,
    )


def synthetic_records(*, episodes: int, seed: int) -> Iterator[EpisodeRecord]:
    return (_record(ep) for ep in generate_corpus(episodes, seed))


def synthetic_description(episodes: int, seed: int) -> str:
    return f"Synthetic dyadic corpus: {episodes} episodes, seed {seed} (docs/synthetic_corpus.md)"


def synthetic_corpus_create(
    *, episodes: int, seed: int, name: str, progress: ProgressFn | None = None
) -> ImportResult:
    """Generate and store a synthetic dataset through the same path as every import."""
    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    reader = CorpusReader(
        name=name,
        face_model=BUILTIN.name,
        description=synthetic_description(episodes, seed),
        source_format="synthetic",
        count=episodes,
        episodes=synthetic_records(episodes=episodes, seed=seed),
    )
    return dataset_store(reader=reader, progress=progress)


def synthetic_corpus_write(*, episodes: int, seed: int, name: str, out: Path) -> int:
    """Write the synthetic corpus as files in the project's own layout (docs/corpus_format.md)."""
    return write_backchannel(
        out,
        name=name,
        face_model=BUILTIN.name,
        description=synthetic_description(episodes, seed),
        episodes=synthetic_records(episodes=episodes, seed=seed),
    )
