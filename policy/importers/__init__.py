"""Corpus importers: each turns a source (folder or zip) into validated ``EpisodeRecord``s.

The service ``policy.services.datasets.dataset_import`` stores them; the management command
``import_dataset`` and the admin upload both call that service.
"""

from .backchannel import read_backchannel
from .errors import ImportProblem
from .l2l import read_l2l
from .records import CorpusReader, EpisodeRecord, validate_record
from .sources import Source, open_source

READERS = {"backchannel": read_backchannel, "l2l": read_l2l}


def read_corpus(source: Source, fmt: str, **options: object) -> CorpusReader:
    try:
        reader = READERS[fmt]
    except KeyError:
        raise ImportProblem(source.root_label, "format", f"unknown format {fmt!r}") from None
    return reader(source, **options)


__all__ = [
    "READERS",
    "CorpusReader",
    "EpisodeRecord",
    "ImportProblem",
    "Source",
    "open_source",
    "read_corpus",
    "validate_record",
]
