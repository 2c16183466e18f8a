"""The layout of a snapshot folder and the columns of its configs (name, Arrow type, meaning:
the card's column tables are made from them)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

from annotation.models import CRITERIA

SCHEMA_VERSION = 1
ROW_GROUP_ROWS = 20_000  # rows per Parquet row group: what writer and reader hold at once
SHARD_ROWS = 1_000_000  # rows per Parquet file; a multiple of ROW_GROUP_ROWS
ARRAYS = "arrays"


def array_path(sha: str) -> str:
    """Where a sequence lives inside the snapshot (relative to its root)."""
    return f"{ARRAYS}/{sha}.npy"


def episode_split(dataset: str, key: str, test_fraction: float) -> str:
    """``test`` for a fixed fraction of episodes, by a hash of the episode's name alone: every
    judgment of one episode lands in the same split, in every snapshot."""
    h = hashlib.sha256(f"{dataset}/{key}".encode()).digest()
    return "test" if int.from_bytes(h[:8], "big") / 2.0**64 < test_fraction else "train"


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
