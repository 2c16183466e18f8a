"""The files of a snapshot: a folder laid out as a Hugging Face dataset repository.

    README.md                                      the dataset card: YAML ``configs:`` and prose
    data/<config>/<split>-NNNNN-of-NNNNN.parquet   the rows, in row groups
    arrays/<sha256>.npy                            every listener and speaker sequence referred to

This module reads no database. ``feedback.services.snapshots`` loads what judgments refer to
(``Refs``: campaigns, raters, episodes, candidates, clips as sorted-key ``Lookup`` tables, and
``Members``, the items' candidates) and streams the judgments in id order, a ``Chunk`` of Arrow
columns at a time; here a chunk becomes the rows of ``judgments``, ``pairs`` and ``unpaired``
by whole-column operations (binary search, take), with no Python object per judgment, then row
groups of fixed size (``ConfigWriter``). Also the card (``card_text``), the content hash
(``content_hash``) and the archives a folder is downloaded as. Everything written is a function
of the rows alone (fixed row order and row-group sizes, no clock, no host name), so the same
judgments give the same bytes and the same hash.
"""

from .archive import tar_gz_stream, zip_stream
from .card import card_text
from .files import array_link, array_path, array_put, folder_copy, folder_remove, snapshot_files
from .hashing import content_hash
from .refs import (
    CAMPAIGN_TYPES,
    CANDIDATE_TYPES,
    CLIP_TYPES,
    EPISODE_TYPES,
    RATER_TYPES,
    Lookup,
    Members,
    Refs,
    rater_key,
)
from .rows import (
    ROW_TYPES,
    Chunk,
    ints,
    judgments_table,
    preference_picks,
    preference_tables,
    rows_table,
)
from .schema import CONFIGS, PLAYBACK, episode_split
from .writer import ConfigWriter

__all__ = [
    "CAMPAIGN_TYPES",
    "CANDIDATE_TYPES",
    "CLIP_TYPES",
    "CONFIGS",
    "EPISODE_TYPES",
    "PLAYBACK",
    "RATER_TYPES",
    "ROW_TYPES",
    "Chunk",
    "ConfigWriter",
    "Lookup",
    "Members",
    "Refs",
    "array_link",
    "array_path",
    "array_put",
    "card_text",
    "content_hash",
    "episode_split",
    "folder_copy",
    "folder_remove",
    "ints",
    "judgments_table",
    "preference_picks",
    "preference_tables",
    "rater_key",
    "rows_table",
    "snapshot_files",
    "tar_gz_stream",
    "zip_stream",
]
