"""A chunk of judgments (Arrow columns) into the rows of ``judgments``, ``pairs`` and
``unpaired`` by whole-column operations, and the small configs from their rows."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from annotation.models import CRITERIA
from annotation.rules import group_pairs

from .refs import Refs, flat_rows, rater_key
from .schema import _PROMPT, _REF, CONFIGS, JUDGMENTS, PAIRS, PLAYBACK, UNPAIRED, Column, _schema


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
