"""What the judgments refer to, as the service hands it over: sorted-key ``Lookup`` tables
and the items' ``Members``, gathered in ``Refs``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# --- what the service hands over ---------------------------------------------------------------

class Lookup:
    """The rows of a reference table (episodes, candidates, clips, raters, campaigns) by integer
    key: sorted keys and one Arrow column per field. Chunks of judgments find their rows by
    binary search and take whole columns at once, so no Python object is made per judgment."""

    def __init__(self, keys: list[int] | np.ndarray, columns: dict[str, list | pa.Array],
                 types: dict[str, pa.DataType]) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.types = types
        self.columns = {name: pa.array(values, type=types[name]).take(pa.array(order))
                        for name, values in columns.items()}

    def __len__(self) -> int:
        return len(self.keys)

    def missing(self, keys: np.ndarray) -> np.ndarray:
        """The distinct keys not held."""
        wanted = np.unique(keys)
        if not len(self.keys):
            return wanted
        pos = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        return wanted[self.keys[pos] != wanted]

    def extend(self, other: Lookup) -> None:
        keys = np.concatenate([self.keys, other.keys])
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.columns = {name: pa.concat_arrays([col, other.columns[name]]).take(pa.array(order))
                        for name, col in self.columns.items()}

    def index(self, keys: np.ndarray) -> np.ndarray:
        """Row positions of ``keys`` (every one must be held)."""
        pos = np.searchsorted(self.keys, keys)
        if len(keys) and (pos.max() >= len(self.keys) or (self.keys[pos] != keys).any()):
            raise KeyError(f"not loaded: {self.missing(keys)[:5].tolist()}")
        return pos

    def take(self, name: str, pos: np.ndarray) -> pa.Array:
        return self.columns[name].take(pa.array(pos))


def flat_rows(start: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of consecutive runs (``start``, ``count``) one after the other, and the
    offsets where each run begins in them (one more than runs)."""
    offsets = np.zeros(len(count) + 1, dtype=np.int32)
    np.cumsum(count, out=offsets[1:])
    return np.repeat(start - offsets[:-1], count) + np.arange(offsets[-1]), offsets


class Members:
    """Items: their episode and speaker clip, and their candidates and clips in slot order
    (member rows sorted by item); an item is found by binary search."""

    def __init__(self, item_of: np.ndarray, candidates: np.ndarray, clips: np.ndarray,
                 items: np.ndarray, episodes: np.ndarray, speaker_clips: np.ndarray) -> None:
        self.item_of = np.asarray(item_of, dtype=np.int64)  # member rows, (item, slot) order
        self.candidate = np.asarray(candidates, dtype=np.int64)
        self.clip = np.asarray(clips, dtype=np.int64)
        self.items, self.start, self.count = np.unique(self.item_of, return_index=True,
                                                       return_counts=True)
        items = np.asarray(items, dtype=np.int64)
        order = np.argsort(items)
        at = order[np.minimum(np.searchsorted(items[order], self.items), max(len(items) - 1, 0))]
        if len(self.items) and (items[at] != self.items).any():
            raise KeyError("an item's episode was not loaded with its members")
        self.episode = np.asarray(episodes, dtype=np.int64)[at] if len(items) else at
        self.speaker_clip = np.asarray(speaker_clips, dtype=np.int64)[at] if len(items) else at

    @classmethod
    def empty(cls) -> Members:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, none, none, none, none)

    def missing(self, items: np.ndarray) -> np.ndarray:
        wanted = np.unique(items)
        if not len(self.items):
            return wanted
        pos = np.minimum(np.searchsorted(self.items, wanted), len(self.items) - 1)
        return wanted[self.items[pos] != wanted]

    def extend(self, other: Members) -> None:
        item_of = np.concatenate([self.item_of, other.item_of])
        order = np.argsort(item_of, kind="stable")  # keeps each item's slot order
        self.__init__(item_of[order], np.concatenate([self.candidate, other.candidate])[order],
                      np.concatenate([self.clip, other.clip])[order],
                      np.concatenate([self.items, other.items]),
                      np.concatenate([self.episode, other.episode]),
                      np.concatenate([self.speaker_clip, other.speaker_clip]))

    def position(self, items: np.ndarray) -> np.ndarray:
        """Where each (held) item is."""
        pos = np.searchsorted(self.items, items)
        if len(items) and (pos.max() >= len(self.items) or (self.items[pos] != items).any()):
            raise KeyError(f"items not loaded: {self.missing(items)[:5].tolist()}")
        return pos

    def rows(self, items: np.ndarray) -> np.ndarray:
        """The member rows of these (held) items, item after item."""
        pos = self.position(items)
        return flat_rows(self.start[pos], self.count[pos])[0]


@dataclass
class Refs:
    """Everything the rows refer to. Keys: campaign id; (campaign id << 32) | rater id;
    episode, candidate and clip ids."""

    campaigns: Lookup  # slug, protocol
    weights: dict[int, dict[str, float]]  # group scoring: campaign id -> weight per criterion
    raters: Lookup  # pseudonym, status
    episodes: Lookup  # dataset, key, fps, speaker_array, transcript, split
    candidates: Lookup  # source, version, version_sha256, seed, temperature, top_p, array
    clips: Lookup  # sha256, settings_sha256
    members: Members
    selected: frozenset[str] | None  # the sources the filters keep (None: all)


CAMPAIGN_TYPES = {"slug": pa.string(), "protocol": pa.string()}
RATER_TYPES = {"pseudonym": pa.string(), "status": pa.string()}
EPISODE_TYPES = {"dataset": pa.string(), "key": pa.string(), "fps": pa.float64(),
                 "speaker_array": pa.string(), "transcript": pa.string(), "split": pa.string()}
CANDIDATE_TYPES = {"source": pa.string(), "version": pa.string(),
                   "version_sha256": pa.string(), "seed": pa.int64(),
                   "temperature": pa.float64(), "top_p": pa.float64(), "array": pa.string()}
CLIP_TYPES = {"sha256": pa.string(), "settings_sha256": pa.string()}


def rater_key(campaign_ids: np.ndarray, rater_ids: np.ndarray) -> np.ndarray:
    return (np.asarray(campaign_ids, dtype=np.int64) << 32) | np.asarray(rater_ids,
                                                                        dtype=np.int64)
