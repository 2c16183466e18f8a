"""The synthetic dyadic corpus as a dataset (see docs/synthetic_corpus.md).

``mixed`` (a share in [0, 1]) and ``mixed_kinds`` pass through to ``policy.synthetic``: that share
of the listeners break the social rules, and each of them keeps its rule-following listener as the
episode's reference stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from policy.importers import CorpusReader, EpisodeRecord
from policy.importers.backchannel import write_backchannel
from policy.services.datasets import ImportResult, ProgressFn, dataset_store
from policy.synthetic import MIXED_KINDS, SyntheticEpisode, check_mixed, generate_corpus
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
        reference=ep.reference,
    )


def synthetic_records(
    *, episodes: int, seed: int, mixed: float = 0.0, mixed_kinds: Sequence[str] | None = None
) -> Iterator[EpisodeRecord]:
    corpus = generate_corpus(episodes, seed, mixed=mixed, mixed_kinds=mixed_kinds)
    return (_record(ep) for ep in corpus)


def synthetic_description(
    episodes: int, seed: int, mixed: float = 0.0, mixed_kinds: Sequence[str] | None = None
) -> str:
    text = f"Synthetic dyadic corpus: {episodes} episodes, seed {seed}"
    if mixed > 0:
        kinds = ", ".join(mixed_kinds or MIXED_KINDS)
        text += f", {mixed:g} of the listeners breaking the rules ({kinds})"
    return text + " (docs/synthetic_corpus.md)"


def synthetic_corpus_create(
    *,
    episodes: int,
    seed: int,
    name: str,
    mixed: float = 0.0,
    mixed_kinds: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
) -> ImportResult:
    """Generate and store a synthetic dataset through the same path as every import."""
    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    check_mixed(mixed, mixed_kinds)
    reader = CorpusReader(
        name=name,
        face_model=BUILTIN.name,
        description=synthetic_description(episodes, seed, mixed, mixed_kinds),
        source_format="synthetic",
        count=episodes,
        episodes=synthetic_records(
            episodes=episodes, seed=seed, mixed=mixed, mixed_kinds=mixed_kinds
        ),
    )
    return dataset_store(reader=reader, progress=progress)


def synthetic_corpus_write(
    *,
    episodes: int,
    seed: int,
    name: str,
    out: Path,
    mixed: float = 0.0,
    mixed_kinds: Sequence[str] | None = None,
) -> int:
    """Write the synthetic corpus as files in the project's own layout (docs/corpus_format.md)."""
    check_mixed(mixed, mixed_kinds)
    return write_backchannel(
        out,
        name=name,
        face_model=BUILTIN.name,
        description=synthetic_description(episodes, seed, mixed, mixed_kinds),
        episodes=synthetic_records(
            episodes=episodes, seed=seed, mixed=mixed, mixed_kinds=mixed_kinds
        ),
    )
