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

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from annotation.models import CRITERIA
from annotation.rules import group_pairs

SCHEMA_VERSION = 1
ROW_GROUP_ROWS = 20_000  # rows per Parquet row group: what writer and reader hold at once
SHARD_ROWS = 1_000_000  # rows per Parquet file; a multiple of ROW_GROUP_ROWS
ARRAYS = "arrays"
_COPY_BUFFER = 1 << 20


def array_path(sha: str) -> str:
    """Where a sequence lives inside the snapshot (relative to its root)."""
    return f"{ARRAYS}/{sha}.npy"


def episode_split(dataset: str, key: str, test_fraction: float) -> str:
    """``test`` for a fixed fraction of episodes, by a hash of the episode's name alone: every
    judgment of one episode lands in the same split, in every snapshot."""
    h = hashlib.sha256(f"{dataset}/{key}".encode()).digest()
    return "test" if int.from_bytes(h[:8], "big") / 2.0**64 < test_fraction else "train"


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


# --- columns -----------------------------------------------------------------------------------

_REF = pa.struct([("candidate_id", pa.int64()), ("source", pa.string()), ("array", pa.string())])
_PROMPT = pa.struct([("dataset", pa.string()), ("episode_key", pa.string()), ("fps", pa.float64()),
                     ("speaker_array", pa.string()), ("transcript", pa.string())])
_INTS = pa.list_(pa.int64())
_STRS = pa.list_(pa.string())
_FLOATS = pa.list_(pa.float64())
PLAYBACK = ("plays", "pauses", "seeks", "replays", "stalls", "holds")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str


def _schema(columns: list[Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.type) for c in columns])


_RATER = [
    Column("rater", pa.string(), "the rater's pseudonym in that campaign (never an account id)"),
    Column("rater_status", pa.string(), "trusted / flagged / excluded / blocked when the "
                                        "snapshot was made"),
]
JUDGMENTS = [
    Column("judgment_id", pa.int64(), "the judgment"),
    Column("campaign", pa.string(), "campaign slug"),
    Column("protocol", pa.string(), "pairwise / group"),
    Column("item_id", pa.int64(), "what was judged; several judgments share an item"),
    Column("probe", pa.string(), "none (data) / gold / catch / repeat"),
    Column("qc_passed", pa.bool_(), "the probe's verdict (null for regular items)"),
    Column("dataset", pa.string(), "corpus"),
    Column("episode_key", pa.string(), "the speaker segment"),
    Column("episode_split", pa.string(), "train / test: the episode's hash split"),
    Column("speaker_array", pa.string(), "the speaker's sequence in arrays/ (null if none)"),
    Column("speaker_clip_sha256", pa.string(), "the speaker clip shown"),
    Column("render_settings_sha256", pa.string(), "sha256 of the candidate clips' render "
                                                  "settings (canonical JSON)"),
    Column("candidate_ids", _INTS, "the item's candidates, in slot order (slot 0 = a)"),
    Column("candidate_sources", _STRS, "ground_truth / policy:<version> / baseline:<name>"),
    Column("candidate_versions", _STRS, "policy version name (null for other sources)"),
    Column("candidate_version_sha256", _STRS, "sha256 of the version's checkpoint"),
    Column("candidate_seeds", _INTS, "sampling seed"),
    Column("candidate_temperatures", _FLOATS, "sampling temperature"),
    Column("candidate_top_ps", _FLOATS, "nucleus sampling top-p"),
    Column("candidate_arrays", _STRS, "each candidate's (T, D) float32 sequence in arrays/"),
    Column("candidate_clip_sha256", _STRS, "content hash of each candidate's clip"),
    *_RATER,
    Column("order_shown", pa.list_(pa.int8()), "screen position -> slot (left first)"),
    Column("choice", pa.string(), "pairwise: left / right / tie / both_bad, as pressed"),
    Column("outcome", pa.string(), "pairwise: a / b / tie / both_bad, in slot terms"),
    Column("strength", pa.int8(), "pairwise: 1 slightly, 2 clearly, 3 much better"),
    Column("reasons", _STRS, "reason tags ticked"),
    *[Column(f"score_{c}", pa.list_(pa.int8()), f"group: {c} 1-5 per slot") for c in CRITERIA],
    Column("decision_ms", pa.int32(), "from voting unlocked to the answer"),
    Column("viewing_ms", pa.int32(), "from shown to the answer"),
    *[Column(f"playback_{p}", pa.int32(), f"{p} the page counted (null: not sent as a count)")
      for p in PLAYBACK],
    Column("judged_at", pa.timestamp("us", tz="UTC"), "when the answer was stored"),
]
_PREFERENCE_HEAD = [
    Column("judgment_id", pa.int64(), "the judgment the row comes from"),
    Column("item_id", pa.int64(), "group rows by it to combine judgments of one item"),
    Column("campaign", pa.string(), "campaign slug"),
    Column("protocol", pa.string(), "pairwise / group"),
    Column("prompt", _PROMPT, "the speaker context: episode, speaker sequence, transcript"),
]
PAIRS = [
    *_PREFERENCE_HEAD,
    Column("chosen", _REF, "the preferred candidate (slot a in tie / both_bad rows)"),
    Column("rejected", _REF, "the other candidate (slot b in tie / both_bad rows)"),
    Column("margin", pa.float64(), "strength 1-3 (1 where not asked); group: weighted score "
                                   "difference; 0 for ties and both-bad"),
    Column("chosen_source", pa.string(), "source of chosen"),
    Column("rejected_source", pa.string(), "source of rejected"),
    Column("outcome", pa.string(), "pairwise: a / b / tie / both_bad (null for group rows)"),
    Column("strength", pa.int8(), "pairwise strength as answered"),
    Column("episode_split", pa.string(), "train / test: the episode's hash split"),
    *_RATER,
]
UNPAIRED = [
    *_PREFERENCE_HEAD,
    Column("completion", _REF, "one candidate"),
    Column("label", pa.bool_(), "true: the winner of its judgment; false: the loser, or "
                                "either side of a both-bad answer"),
    Column("completion_source", pa.string(), "source of completion"),
    *_RATER,
]
RATINGS = [
    Column("player", pa.string(), "a source label (split sources) or a candidate id "
                                  "(split candidates)"),
    Column("source", pa.string(), "the player's source label"),
    Column("episode_key", pa.string(), "candidates: the episode (strengths compare within "
                                       "one episode); null for sources"),
    Column("strength", pa.float64(), "Bradley-Terry log-strength, ties by Davidson's model"),
    Column("lo", pa.float64(), "95 % sandwich interval, low (null without comparisons)"),
    Column("hi", pa.float64(), "95 % interval, high"),
    Column("n", pa.int64(), "judgments the player took part in"),
]
RATERS = [
    Column("campaign", pa.string(), "campaign slug"),
    Column("rater", pa.string(), "pseudonym"),
    Column("n_judgments", pa.int64(), "judgments the rater gave"),
    Column("status", pa.string(), "trusted / flagged / excluded"),
    Column("status_source", pa.string(), "auto (thresholds) / override (a researcher) / "
                                          "pending (no decision yet)"),
    Column("reason", pa.string(), "why, in words"),
    Column("figures", pa.string(), "the QC figures (JSON, keys sorted)"),
]
CONFIGS: dict[str, list[Column]] = {"judgments": JUDGMENTS, "pairs": PAIRS,
                                    "unpaired": UNPAIRED, "ratings": RATINGS, "raters": RATERS}


def _count(value: object) -> int | None:
    """A playback counter as sent by the page; anything not a count is left out."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value) if 0 <= value < 2**31 else None


def _timestamps(strings: pa.Array, type_: pa.DataType) -> pa.Array:
    """Times as the database prints them: with a zone (PostgreSQL), or naive UTC (SQLite)."""
    try:
        return strings.cast(type_)
    except pa.ArrowInvalid:
        return strings.cast(pa.timestamp(type_.unit)).cast(type_)


def ints(column: pa.Array) -> np.ndarray:
    return column.cast(pa.int64()).to_numpy()


def decoded(texts: pa.Array, decode: Callable[[str], object], type_: pa.DataType) -> pa.Array:
    """A column of text (JSON, mostly) decoded once per distinct value: sides shown, reason
    tags, probe verdicts and playback counters take a few hundred values over a million
    judgments. Null stays null."""
    codes = texts.dictionary_encode()
    values = pa.array([decode(t) for t in codes.dictionary.to_pylist()], type=type_)
    return values.take(codes.indices)


def _blank_null(strings: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings)


def _passed(text: str) -> bool | None:
    qc = json.loads(text)
    passed = qc.get("passed") if isinstance(qc, dict) else None
    return passed if isinstance(passed, bool) else None


def _playback(text: str) -> list[int | None]:
    """The counters, joined with commas by the query (``PLAYBACK`` order; blank: absent)."""
    parts = text.split(",")
    if len(parts) != len(PLAYBACK):  # a counter that was not a number, with a comma in it
        return [None] * len(PLAYBACK)
    return [_count(v) if v else None for v in parts]


def _scores(crit: str) -> Callable[[str], list | None]:
    def decode(text: str) -> list | None:
        slots = json.loads(text)
        return [s.get(crit) if isinstance(s, dict) else None for s in slots] if isinstance(
            slots, list) else None
    return decode


_OUTCOME_CODE = {"a": 0, "b": 1, "tie": 2, "both_bad": 3}
# The judgment columns a chunk holds (``feedback.services.snapshots`` reads them so); JSON and
# times as text, decoded here.
ROW_TYPES = {"id": pa.int64(), "campaign_id": pa.int64(), "item_id": pa.int64(),
             "rater_id": pa.int64(), "probe": pa.string(), "order": pa.string(),
             "choice": pa.string(), "outcome": pa.string(), "strength": pa.int8(),
             "reasons": pa.string(), "scores": pa.string(), "decision_ms": pa.int32(),
             "viewing_ms": pa.int32(), "qc": pa.string(), "created_at": pa.string(),
             "playback": pa.string()}
TIE, BOTH_BAD = "tie", "both_bad"


@dataclass
class Chunk:
    """One chunk of judgments, columnar: the database columns (``c``, Arrow arrays of
    ``ROW_TYPES``, JSON as text) and where each row's campaign, rater, episode and members
    are in ``Refs``."""

    c: dict[str, pa.Array]
    refs: Refs
    camp: np.ndarray = field(init=False)
    who: np.ndarray = field(init=False)
    ep: np.ndarray = field(init=False)
    start: np.ndarray = field(init=False)  # first member row of the row's item
    count: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        c, r = self.c, self.refs
        self.n = len(c["id"])
        self.ids = ints(c["id"])
        self.item_ids = ints(c["item_id"])
        self.campaign_ids = campaign_ids = ints(c["campaign_id"])
        self.camp = r.campaigns.index(campaign_ids)
        self.who = r.raters.index(rater_key(campaign_ids, ints(c["rater_id"])))
        at = r.members.position(self.item_ids)
        self.start, self.count = r.members.start[at], r.members.count[at]
        self.ep = r.episodes.index(r.members.episode[at])
        self.speaker_clip = r.members.speaker_clip[at]
        self.strength = c["strength"].cast(pa.int8())
        self.outcome = _blank_null(c["outcome"])
        self.probe = c["probe"]

    def candidate(self, member_rows: np.ndarray) -> np.ndarray:
        """Row positions in ``refs.candidates`` of these member rows."""
        return self.refs.candidates.index(self.refs.members.candidate[member_rows])


def judgments_table(k: Chunk) -> pa.Table:
    """The ``judgments`` rows of one chunk."""
    c, r = k.c, k.refs
    flat, offsets = flat_rows(k.start, k.count)  # the rows' member rows, and where each starts
    cand = k.candidate(flat)
    clip = r.clips.index(r.members.clip[flat])
    offsets_arr = pa.array(offsets)

    def per_candidate(values: pa.Array) -> pa.Array:
        return pa.ListArray.from_arrays(offsets_arr, values)

    out = {
        "judgment_id": pa.array(k.ids),
        "campaign": r.campaigns.take("slug", k.camp),
        "protocol": r.campaigns.take("protocol", k.camp),
        "item_id": pa.array(k.item_ids),
        "probe": k.probe,
        "qc_passed": decoded(c["qc"], _passed, pa.bool_()),
        "dataset": r.episodes.take("dataset", k.ep),
        "episode_key": r.episodes.take("key", k.ep),
        "episode_split": r.episodes.take("split", k.ep),
        "speaker_array": r.episodes.take("speaker_array", k.ep),
        "speaker_clip_sha256": r.clips.take("sha256", r.clips.index(k.speaker_clip)),
        "render_settings_sha256": r.clips.take("settings_sha256", clip[offsets[:-1]]),
        "candidate_ids": per_candidate(pa.array(r.members.candidate[flat])),
        "candidate_sources": per_candidate(r.candidates.take("source", cand)),
        "candidate_versions": per_candidate(r.candidates.take("version", cand)),
        "candidate_version_sha256": per_candidate(r.candidates.take("version_sha256", cand)),
        "candidate_seeds": per_candidate(r.candidates.take("seed", cand)),
        "candidate_temperatures": per_candidate(r.candidates.take("temperature", cand)),
        "candidate_top_ps": per_candidate(r.candidates.take("top_p", cand)),
        "candidate_arrays": per_candidate(r.candidates.take("array", cand)),
        "candidate_clip_sha256": per_candidate(r.clips.take("sha256", clip)),
        "rater": r.raters.take("pseudonym", k.who),
        "rater_status": r.raters.take("status", k.who),
        "order_shown": decoded(c["order"], json.loads, pa.list_(pa.int8())),
        "choice": _blank_null(c["choice"]),
        "outcome": k.outcome,
        "strength": k.strength,
        "reasons": decoded(c["reasons"], json.loads, pa.list_(pa.string())),
        "decision_ms": c["decision_ms"].cast(pa.int32()),
        "viewing_ms": c["viewing_ms"].cast(pa.int32()),
        "judged_at": _timestamps(c["created_at"], pa.timestamp("us", tz="UTC")),
    }
    for crit in CRITERIA:
        out[f"score_{crit}"] = decoded(c["scores"], _scores(crit), pa.list_(pa.int8()))
    counters = decoded(c["playback"], _playback, pa.list_(pa.int32()))
    for i, p in enumerate(PLAYBACK):
        out[f"playback_{p}"] = pc.list_element(counters, i) if len(counters) else pa.nulls(
            0, pa.int32())
    return _assemble(JUDGMENTS, out)


@dataclass
class Picks:
    """What one chunk gives ``pairs``: per pair its row in the chunk, the chosen and rejected
    member rows, the margin and the split."""

    row: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    margin: np.ndarray
    split: np.ndarray  # train / test / tie / both_bad


def preference_picks(k: Chunk) -> Picks:
    """The rules of ``pairs`` (written in the card, ``RULES``): regular items only; a decisive
    pairwise answer is one pair (winner, loser) in its episode's split, a tie goes to split
    ``tie``, a both-bad answer to ``both_bad`` (slot a as chosen, margin 0); a group answer
    gives its best-vs-worst pair (``annotation.rules.group_pairs`` with the campaign's weights)
    among the slots the source filter keeps, or a ``tie`` row when they all score the same."""
    c, r = k.c, k.refs
    regular = pc.equal(k.probe, "none").to_numpy(zero_copy_only=False)
    group = np.asarray(pc.equal(r.campaigns.columns["protocol"], "group"))[k.camp] if len(
        r.campaigns) else np.zeros(k.n, dtype=bool)
    code = decoded(c["outcome"], lambda o: _OUTCOME_CODE.get(o, -1), pa.int8()).to_numpy(
        zero_copy_only=False)
    episode_split = np.asarray(r.episodes.take("split", k.ep).to_numpy(zero_copy_only=False),
                               dtype=object)
    rows = np.nonzero(regular & ~group & (code >= 0))[0]
    win = (code[rows] == 1).astype(np.int64)  # the slot that won: b when outcome is b
    decisive = code[rows] <= 1
    strength = np.asarray(k.strength.take(pa.array(rows)).fill_null(1).to_numpy(
        zero_copy_only=False), dtype=np.float64)
    split = np.where(decisive, episode_split[rows],
                     np.where(code[rows] == 2, TIE, BOTH_BAD)).astype(object)
    parts = [(rows, k.start[rows] + win, k.start[rows] + 1 - win,
              np.where(decisive, strength, 0.0), split)]
    scored = np.nonzero(regular & group)[0]
    if len(scored):
        parts.append(_group_picks(k, scored, episode_split))
    row, chosen, rejected, margin, split = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = np.argsort(row, kind="stable")
    return Picks(row[order], chosen[order], rejected[order], margin[order],
                 split[order].astype(object))


def _group_picks(k: Chunk, rows: np.ndarray, episode_split: np.ndarray) -> tuple:
    c, r = k.c, k.refs
    out: list[tuple[int, int, int, float, str]] = []
    for j in rows.tolist():
        text = c["scores"][j].as_py()
        scores = json.loads(text) if text else None
        first, size = int(k.start[j]), int(k.count[j])
        members = np.arange(first, first + size)
        if r.selected is not None:
            labels = r.candidates.take("source", k.candidate(members)).to_pylist()
            slots = [s for s in range(size) if labels[s] in r.selected]
        else:
            slots = list(range(size))
        if not scores or len(scores) != size or len(slots) < 2:
            continue
        ranked = group_pairs([scores[s] for s in slots], r.weights[int(k.campaign_ids[j])])
        if ranked:
            best, worst, margin = ranked[0]
            out.append((j, first + slots[best], first + slots[worst], float(margin),
                        episode_split[j]))
        else:
            out.append((j, first + slots[0], first + slots[-1], 0.0, TIE))
    if not out:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                np.zeros(0), np.zeros(0, dtype=object))
    j, ch, rj, m, s = zip(*out, strict=True)
    return (np.array(j, np.int64), np.array(ch, np.int64), np.array(rj, np.int64),
            np.array(m, np.float64), np.array(s, dtype=object))


def _head(k: Chunk, rows: np.ndarray) -> dict[str, pa.Array]:
    r = k.refs
    ep, take = k.ep[rows], pa.array(rows)
    prompt = pa.StructArray.from_arrays(
        [r.episodes.take(name, ep) for name in ("dataset", "key", "fps", "speaker_array",
                                                 "transcript")], fields=list(_PROMPT))
    return {"judgment_id": pa.array(k.ids[rows]), "item_id": pa.array(k.item_ids[rows]),
            "campaign": r.campaigns.take("slug", k.camp[rows]),
            "protocol": r.campaigns.take("protocol", k.camp[rows]), "prompt": prompt,
            "episode_split": r.episodes.take("split", ep),
            "rater": r.raters.take("pseudonym", k.who[rows]),
            "rater_status": r.raters.take("status", k.who[rows]), "_take": take}


def _ref(k: Chunk, member_rows: np.ndarray) -> tuple[pa.StructArray, pa.Array]:
    r = k.refs
    cand = k.candidate(member_rows)
    source = r.candidates.take("source", cand)
    return pa.StructArray.from_arrays(
        [pa.array(r.members.candidate[member_rows]), source, r.candidates.take("array", cand)],
        fields=list(_REF)), source


def preference_tables(k: Chunk, picks: Picks) -> tuple[dict[str, pa.Table],
                                                        dict[str, pa.Table]]:
    """The ``pairs`` and ``unpaired`` rows of one chunk, by split."""
    pairs: dict[str, pa.Table] = {}
    for split in sorted(set(picks.split.tolist())):
        sel = np.nonzero(picks.split == split)[0]
        rows = picks.row[sel]
        cols = _head(k, rows)
        take = cols.pop("_take")
        cols["chosen"], cols["chosen_source"] = _ref(k, picks.chosen[sel])
        cols["rejected"], cols["rejected_source"] = _ref(k, picks.rejected[sel])
        cols["margin"] = pa.array(picks.margin[sel], type=pa.float64())
        cols["outcome"] = k.outcome.take(take)
        cols["strength"] = k.strength.take(take)
        pairs[split] = _assemble(PAIRS, cols)
    # unpaired: the winner (true) and the loser (false) of each decisive pair, both sides of a
    # both-bad answer (false); in judgment order, the winner first
    keep = picks.split != TIE
    rows, chosen, rejected = picks.row[keep], picks.chosen[keep], picks.rejected[keep]
    good = picks.split[keep] != BOTH_BAD
    row = np.repeat(rows, 2)
    member = np.stack([chosen, rejected], axis=1).reshape(-1)
    label = np.stack([good, np.zeros_like(good)], axis=1).reshape(-1)
    episode_split = np.asarray(k.refs.episodes.take("split", k.ep[row]).to_numpy(
        zero_copy_only=False), dtype=object)
    unpaired: dict[str, pa.Table] = {}
    for split in sorted(set(episode_split.tolist())):
        sel = np.nonzero(episode_split == split)[0]
        cols = _head(k, row[sel])
        del cols["_take"], cols["episode_split"]  # the split is the file's
        cols["completion"], cols["completion_source"] = _ref(k, member[sel])
        cols["label"] = pa.array(label[sel], type=pa.bool_())
        unpaired[split] = _assemble(UNPAIRED, cols)
    return pairs, unpaired


def _assemble(columns: list[Column], arrays: dict[str, pa.Array]) -> pa.Table:
    return pa.Table.from_arrays([arrays[c.name] for c in columns], schema=_schema(columns))


def rows_table(config: str, rows: list[dict]) -> pa.Table:
    """A small config (``ratings``, ``raters``) from its rows."""
    columns = CONFIGS[config]
    return _assemble(columns, {c.name: pa.array([r.get(c.name) for r in rows], type=c.type)
                               for c in columns})


# --- Parquet -----------------------------------------------------------------------------------

class _Split:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        self.shards: list[Path] = []
        self.writer: pq.ParquetWriter | None = None


class ConfigWriter:
    """The Parquet files of one config: per split, shards of ``shard_rows`` rows written a row
    group of ``row_group_rows`` at a time as the chunks come, so memory holds one row group.
    Row groups are cut at fixed row counts, whatever the chunks were (the Parquet writer's
    pages do not depend on how a table is chunked): the bytes depend on the rows only.
    ``close`` names the shards ``<split>-NNNNN-of-NNNNN.parquet``."""

    def __init__(self, root: Path, config: str, *, row_group_rows: int = ROW_GROUP_ROWS,
                 shard_rows: int = SHARD_ROWS) -> None:
        if shard_rows % row_group_rows:
            raise ValueError("shard_rows must be a multiple of row_group_rows")
        self.folder = root / "data" / config
        self.schema = _schema(CONFIGS[config])
        self.row_group_rows, self.shard_rows = row_group_rows, shard_rows
        self.splits: dict[str, _Split] = {}

    def write(self, split: str, table: pa.Table) -> None:
        if not table.num_rows:
            return
        s = self.splits.setdefault(split, _Split())
        s.tables.append(table)
        s.buffered += table.num_rows
        while s.buffered >= self.row_group_rows:
            self._flush(split, s, self.row_group_rows)

    def _flush(self, split: str, s: _Split, n: int) -> None:
        whole = pa.concat_tables(s.tables) if s.tables else self.schema.empty_table()
        head, rest = whole.slice(0, n), whole.slice(n)
        s.tables = [rest] if rest.num_rows else []
        s.buffered -= n
        if s.writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{split}-{len(s.shards):05d}.parquet.part"
            s.shards.append(path)
            s.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        if not n:  # an empty config: the file holds the columns and no row group
            return
        s.writer.write_table(head, row_group_size=n)
        s.rows += n
        if s.rows % self.shard_rows == 0:
            s.writer.close()
            s.writer = None
        del head, whole
        pa.default_memory_pool().release_unused()  # keep the process's memory flat

    def close(self) -> dict[str, int]:
        """Write what is left and name the files; rows per split. A config without rows gets
        one empty ``train`` file, so that it loads (with its columns) like the others."""
        if not self.splits:
            self.splits["train"] = _Split()
        for split, s in self.splits.items():
            if s.buffered or not s.shards:
                self._flush(split, s, s.buffered)
            if s.writer is not None:
                s.writer.close()
                s.writer = None
            for i, path in enumerate(s.shards):
                path.rename(self.folder / f"{split}-{i:05d}-of-{len(s.shards):05d}.parquet")
        return {split: s.rows for split, s in sorted(self.splits.items())}

    def abort(self) -> None:
        """Close open files (the folder is removed by the caller)."""
        for s in self.splits.values():
            if s.writer is not None:
                s.writer.close()
                s.writer = None


# --- arrays, hash, archives --------------------------------------------------------------------

def array_link(root: Path, sha: str, source: Path) -> None:
    """Put one stored sequence into ``arrays/`` as a hard link to the stored file (blobs are
    written once, by rename, and never changed), or a copy across file systems. Raises
    ``FileNotFoundError`` when it is not stored."""
    dest = root / array_path(sha)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copyfile(source, dest)


def array_put(root: Path, sha: str, source: IO[bytes]) -> None:
    """Copy one stored sequence into ``arrays/`` from a stream (storages that are not local
    files)."""
    dest = root / array_path(sha)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        shutil.copyfileobj(source, out, _COPY_BUFFER)


def snapshot_files(root: Path) -> list[str]:
    """The snapshot's files, relative, in the order the hash and the archives take them."""
    out = []
    for folder, _, names in os.walk(root):
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        out += [name if rel == "." else f"{rel}/{name}" for name in names]
    return sorted(out)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_COPY_BUFFER):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(root: Path) -> tuple[str, int]:
    """(hash, bytes): the sha256 of the ``sha256sum`` listing of every file, by relative path
    in byte order ("<sha256>  <path>\\n" per file), which anyone can recompute (see the card).
    A sequence's sha256 is its name: the blob store writes each under the hash of its bytes,
    once, by rename (``rendering.blobs``), so a million sequences are not read again here."""
    listing = hashlib.sha256()
    size = 0
    for rel in snapshot_files(root):
        path = root / rel
        name = rel.removeprefix(f"{ARRAYS}/").removesuffix(".npy")
        digest = name if rel == array_path(name) and len(name) == 64 else file_sha256(path)
        listing.update(f"{digest}  {rel}\n".encode())
        size += path.stat().st_size
    return listing.hexdigest(), size


def tar_gz_stream(root: Path, prefix: str) -> Iterator[bytes]:
    """The folder as a .tar.gz, produced as it is sent (one file buffer at a time). Dates are
    zero and owners blank, so one folder always gives the same archive."""
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip framing, mtime 0
    for rel in snapshot_files(root):
        path = root / rel
        info = tarfile.TarInfo(f"{prefix}/{rel}")
        info.size = path.stat().st_size
        info.mode = 0o644
        yield gz.compress(info.tobuf(format=tarfile.PAX_FORMAT))
        with open(path, "rb") as fh:
            while chunk := fh.read(_COPY_BUFFER):
                yield gz.compress(chunk)
        yield gz.compress(b"\0" * (-info.size % tarfile.BLOCKSIZE))
    yield gz.compress(b"\0" * (2 * tarfile.BLOCKSIZE))  # end of archive
    yield gz.flush()


class _Sink:
    """A write-only stream whose bytes are taken away as they come (for ``zipfile``)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def zip_stream(root: Path, prefix: str) -> Iterator[bytes]:
    """The folder as a .zip, produced as it is sent. Parquet files are compressed already, so
    members are stored (a zip reader then seeks straight into them)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for rel in snapshot_files(root):
            info = zipfile.ZipInfo(f"{prefix}/{rel}", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with open(root / rel, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while chunk := src.read(_COPY_BUFFER):
                    dst.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


def folder_copy(src: Path, dest: Path, *, link_arrays: bool = True) -> None:
    """Copy a finished snapshot to ``dest`` (made, or empty). The sequences under ``arrays/``
    are hard links where the file system allows (they are named by their hash and never
    written again; a million small files copy slowly), unless ``link_arrays`` is off."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    made: set[Path] = set()
    for rel in snapshot_files(src):
        target = dest / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        if link_arrays and rel.startswith(f"{ARRAYS}/"):
            try:
                os.link(src / rel, target)
                continue
            except OSError:
                pass
        shutil.copyfile(src / rel, target)


def folder_remove(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


# --- the card ----------------------------------------------------------------------------------

RULES = """\
* **judgments**: one row per judgment the filters keep, probes included (`probe`,
  `qc_passed`), in judgment id order, with its full lineage. One split, `train`; the
  `episode_split` column tells the episode's hash split.
* **pairs** (TRL's preference type: `prompt`, `chosen`, `rejected`, with a `margin` for reward
  models): only judgments of regular items (`probe = none`; gold, catch and hidden-repeat
  answers check raters and are left out). **One row per decisive judgment**: an item judged by
  three raters gives up to three rows, disagreeing ones included, as reward-model trainers
  expect; `item_id` lets you aggregate (for example keep items whose majority agrees).
  Pairwise: the winner is `chosen`, `margin` = strength (1 slightly, 2 clearly, 3 much better;
  1 where the campaign did not ask). Ties go to split `tie` and both-bad answers to split
  `both_bad`, with `margin` 0 and `chosen` = slot a. Group scoring: the best-vs-worst pair by
  the campaign's weighted mean score (`annotation.rules.group_pairs`), `margin` = the weighted
  score difference; a group scored all alike is a `tie` row.
* **train / test**: by episode, never by judgment: an episode is in `test` when the first
  8 bytes of sha256("<dataset>/<episode key>"), read as a fraction of 2^64, fall below the
  test fraction. No test episode has a row in `train`, in any snapshot.
* **unpaired** (TRL's unpaired type for KTO / BCO: `prompt`, `completion`, `label`): from the
  same judgments, the winner of a decisive answer with `label` true and the loser with false;
  both candidates of a both-bad answer with false; ties give no row. Same train / test split.
* **ratings**: the platform's Bradley-Terry ratings (with ties) of the sources (split
  `sources`) and candidates (split `candidates`), fitted once over the regular judgments of all
  the snapshot's campaigns together (excluded raters left out unless `qc` is `all`; not
  narrowed by time range; with a source filter, only those sources' rows).
* **raters**: every rater of the campaigns, by pseudonym, with quality control's figures,
  status and reason.
* **arrays/**: every candidate's listener sequence and every episode's speaker sequence that
  a row refers to, as `.npy` float32 `(T, D)` named by the sha256 of their bytes.
"""


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a YAML scalar


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "10M<n<100M"


def card_yaml(counts: dict[str, dict[str, int]], *, license: str, pretty_name: str) -> str:
    """The card's YAML header: what ``datasets.load_dataset(DIR, config)`` reads."""
    lines = ["---", f"license: {_yaml_str(license)}", f"pretty_name: {_yaml_str(pretty_name)}",
             "size_categories:", f"- {_yaml_str(_size_category(counts['judgments']['train']))}",
             "annotations_creators:", "- crowdsourced", "task_categories:", "- other", "tags:",
             "- human-feedback", "- preference", "- listener-generation", "- 3dmm", "configs:"]
    for config in ("pairs", *[c for c in CONFIGS if c != "pairs"]):
        lines += [f"- config_name: {config}"] + (["  default: true"] if config == "pairs" else [])
        lines.append("  data_files:")
        for split in counts[config]:
            lines += [f"  - split: {split}", f"    path: data/{config}/{split}-*.parquet"]
    return "\n".join([*lines, "---", ""])


def _table_md(header: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def card_text(meta: dict) -> str:
    """README.md of a snapshot. ``meta`` (made by the service, plain data only): counts,
    arrays, filters, campaigns, qc, agreement, versions, license."""
    counts = meta["counts"]
    filters = meta["filters"]
    parts = [card_yaml(counts, license=meta["license"], pretty_name=meta["pretty_name"]),
             f"# {meta['pretty_name']}", "",
             "Human judgments of generated listener facial-expression sequences (3DMM "
             "coefficients rendered on one identity-neutral face), with the sequences "
             "themselves. A frozen, content-addressed snapshot: the folder's name is the sha256 "
             "of its files (see *Checking the hash*).", "",
             f"Schema version {SCHEMA_VERSION}. Face layout: `{meta['face_model']}`.", "",
             "## Contents", "",
             _table_md(["config", "split", "rows"],
                       [[c, s, n] for c, splits in counts.items() for s, n in splits.items()]),
             "", f"Arrays: {meta['arrays']} `.npy` files under `arrays/`.", "",
             "## Filters", "", "```json", json.dumps(filters, indent=2, sort_keys=True), "```",
             "", "* `qc`: `trusted` keeps only raters whose status is trusted (quality control "
             "found nothing against them, or no decision yet) and who are neither excluded "
             "nor blocked by failed probes; `all` keeps every rater, excluded ones included, "
             "and the `rater_status` column lets you filter.",
             "* `since` / `until`: when the judgment was stored (UTC; `until` excluded).",
             "* `sources`: a judgment is kept when at least two of its item's candidates come "
             "from these sources; group pairs are taken among those only. Empty: all.",
             f"* `test_fraction`: {filters['test_fraction']} of episodes are in `test`.", "",
             "## Campaigns", ""]
    for camp in meta["campaigns"]:
        parts += [f"### {camp['slug']}", "", "```json",
                  json.dumps(camp, indent=2, sort_keys=True), "```", ""]
    agreement = meta.get("agreement")
    parts += ["## Agreement", "",
              "Among regular pairwise judgments kept here: the chance that two judgments of "
              "the same item give the same outcome (a / b / tie / both_bad), over items judged "
              "at least twice.", "",
              (f"{agreement['rate']:.4f} over {agreement['item_pairs']} pairs of judgments "
               f"of {agreement['items']} items." if agreement and agreement["item_pairs"]
               else "Not available: no item was judged twice."), "",
              "## Quality control", "", meta["qc_text"], "",
              "## How rows are made", "", RULES,
              "## Lineage", "",
              "Every row names its episode, candidates and their sources; the policy versions "
              "behind them:", "",
              _table_md(["version", "checkpoint sha256", "parent", "lineage", "dataset"],
                        [[v["name"], v["sha256"], v["parent"] or "", v["lineage"], v["dataset"]]
                         for v in meta["versions"]]) if meta["versions"] else "(none)", "",
              "## Columns", ""]
    for config, columns in CONFIGS.items():
        parts += [f"### {config}", "",
                  _table_md(["column", "type", "meaning"],
                            [[f"`{c.name}`", f"`{c.type}`", c.doc] for c in columns]), ""]
    parts += ["## Loading", "", "```python", "import datasets",
              'pairs = datasets.load_dataset("DIR", "pairs")  # train / test / tie / both_bad',
              'judgments = datasets.load_dataset("DIR", "judgments", split="train")', "",
              "import pyarrow.dataset as ds",
              'train = ds.dataset("DIR/data/pairs", format="parquet")'
              '.to_table(filter=ds.field("episode_split") == "train")  # or one file', "",
              "import numpy as np",
              'row = pairs["train"][0]',
              'chosen = np.load("DIR/" + row["chosen"]["array"])  # (T, D) float32',
              'speaker = np.load("DIR/" + row["prompt"]["speaker_array"])', "```", "",
              "## Checking the hash", "",
              "The folder's name is the sha256 of the `sha256sum` listing of its files, sorted "
              "by path:", "", "```sh",
              "cd DIR && find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs sha256sum "
              "| sha256sum", "```", "",
              "## Licence", "",
              f"`{meta['license']}`. The speaker data keep their corpus's own licence; raters "
              "appear only under pseudonyms that say nothing about their accounts.", ""]
    return "\n".join(parts)
