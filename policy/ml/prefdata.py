"""Human comparisons as the critic and the preference optimisers read them (plain Python + NumPy).

A :class:`Comparison` is one judged pair of listener sequences for one speaker episode, on one
head: ``overall`` (the pairwise question, or the weighted group score) or one criterion (a group
judgment's 1-5 scores on that criterion). ``outcome`` is ``"a"`` when ``a`` was preferred,
``"b"`` when ``b`` was, ``"tie"`` when the rater could not tell; both-bad answers carry no
preference between the two and are not comparisons. ``strength`` is how much better (1 slightly,
2 clearly, 3 much; 1 where it was not asked or for ties).

:func:`read_snapshot` reads a snapshot folder (``feedback.export``'s layout) into comparisons;
the speaker's side (audio, transcript, coefficients) comes from the corpus, by episode key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CRITERIA = ("empathy", "appropriateness", "engagement", "naturalness")
HEADS = (*CRITERIA, "overall")  # the critic's outputs, in this order
OUTCOMES = ("a", "b", "tie")


@dataclass
class Comparison:
    episode: str  # episode key (the speaker context)
    a: np.ndarray  # (T, D) float32 listener sequence
    b: np.ndarray  # (T, D) float32
    outcome: str  # "a" / "b" / "tie"
    strength: int = 1  # 1..3
    head: str = "overall"  # one of HEADS
    split: str = "train"  # "train" / "test": the episode's hash split in the snapshot
    item: str = ""  # judgments of one item share it (human agreement is read over items)
    rater: str = ""
    a_source: str = ""  # ground_truth / policy:<version> / baseline:<name>
    b_source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if not 1 <= int(self.strength) <= 3:
            raise ValueError(f"strength must be 1..3, got {self.strength}")
        if self.a.shape != self.b.shape or self.a.ndim != 2:
            raise ValueError(f"a and b must be (T, D) arrays of one shape, got {self.a.shape} "
                             f"and {self.b.shape}")

    @property
    def chosen(self) -> np.ndarray:
        """The preferred sequence (``a`` for ties)."""
        return self.b if self.outcome == "b" else self.a

    @property
    def rejected(self) -> np.ndarray:
        return self.a if self.outcome == "b" else self.b


def preferences(comparisons: Iterable[Comparison], *, head: str = "overall",
                split: str | None = None) -> list[Comparison]:
    """The decided (non-tie) comparisons on ``head``, of ``split`` when given: what DPO reads."""
    return [c for c in comparisons if c.head == head and c.outcome != "tie"
            and (split is None or c.split == split)]


def random_labels(comparisons: Sequence[Comparison], seed: int) -> list[Comparison]:
    """The same comparisons with each decided outcome replaced by a fair coin (the ablation's
    control: preference optimisation on labels that carry no information)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in comparisons:
        outcome = c.outcome if c.outcome == "tie" else ("a" if rng.random() < 0.5 else "b")
        out.append(Comparison(**{**c.__dict__, "outcome": outcome}))
    return out


# --- snapshot folders ---------------------------------------------------------------------------


def _table(root: Path, config: str):
    import pyarrow.parquet as pq

    folder = root / "data" / config
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return None
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f) for f in files])


class SnapshotReadError(ValueError):
    pass


def read_snapshot(root: str | Path, *, weights: dict[str, float] | None = None,
                  ) -> tuple[list[Comparison], dict[str, dict]]:
    """Every comparison in a snapshot folder, and per episode key its prompt
    ``{"dataset", "fps", "speaker_array", "transcript"}``.

    Overall comparisons come from the ``pairs`` config (ties kept, both-bad left out; a group
    judgment's pairs are already there with the weighted score difference as margin, which is
    mapped to a strength of 1-3). Criterion comparisons come from group judgments' per-criterion
    scores in the ``judgments`` config: every two slots whose scores differ on a criterion make
    one comparison (strength = the difference, at most 3), equal scores a tie.
    """
    root = Path(root)
    if not (root / "data").is_dir():
        raise SnapshotReadError(f"{root}: not a snapshot folder (no data/ inside)")
    arrays: dict[str, np.ndarray] = {}

    def array(ref: str) -> np.ndarray:
        """A sequence by its reference: the path inside the snapshot (``arrays/<sha>.npy``)."""
        sha = ref
        if sha not in arrays:
            path = root / ref if "/" in ref else root / "arrays" / f"{ref}.npy"
            if ".." in Path(ref).parts:
                raise SnapshotReadError(f"{root}: array reference {ref!r} leaves the snapshot")
            if not path.is_file():
                raise SnapshotReadError(f"{root}: array {sha} is referred to but missing")
            a = np.load(path, allow_pickle=False)
            if a.ndim != 2 or not np.isfinite(a).all():
                raise SnapshotReadError(f"{path}: expected a finite (T, D) array, got shape "
                                        f"{a.shape}")
            arrays[sha] = a.astype(np.float32, copy=False)
        return arrays[sha]

    out: list[Comparison] = []
    prompts: dict[str, dict] = {}
    pairs = _table(root, "pairs")
    if pairs is not None:
        for row in pairs.to_pylist():
            outcome_raw = row["outcome"]
            if outcome_raw == "both_bad":
                continue
            prompt = row["prompt"]
            prompts.setdefault(prompt["episode_key"], _prompt(prompt))
            margin = float(row["margin"] or 0.0)
            if outcome_raw == "tie" or (outcome_raw is None and margin == 0.0):
                outcome, strength = "tie", 1
            else:
                outcome = "a"  # chosen is a
                strength = (int(row["strength"]) if row.get("strength")
                            else int(np.clip(round(margin), 1, 3)))
            out.append(Comparison(
                episode=prompt["episode_key"], a=array(row["chosen"]["array"]),
                b=array(row["rejected"]["array"]), outcome=outcome, strength=strength,
                head="overall", split=row["episode_split"] or "train",
                item=f"{row['campaign']}:{row['item_id']}", rater=row["rater"] or "",
                a_source=row["chosen_source"] or "", b_source=row["rejected_source"] or ""))
    judgments = _table(root, "judgments")
    if judgments is not None:
        cols = ["protocol", "probe", "campaign", "item_id", "episode_key", "episode_split",
                "candidate_arrays", "candidate_sources", "rater",
                *[f"score_{c}" for c in CRITERIA]]
        for row in judgments.select(cols).to_pylist():
            if row["protocol"] != "group" or row["probe"] not in (None, "none"):
                continue
            arrs, srcs = row["candidate_arrays"], row["candidate_sources"]
            for crit in CRITERIA:
                scores = row[f"score_{crit}"]
                if not scores:
                    continue
                for i in range(len(arrs)):
                    for j in range(i + 1, len(arrs)):
                        if scores[i] is None or scores[j] is None:
                            continue
                        d = int(scores[i]) - int(scores[j])
                        hi, lo = (i, j) if d >= 0 else (j, i)
                        out.append(Comparison(
                            episode=row["episode_key"], a=array(arrs[hi]), b=array(arrs[lo]),
                            outcome="tie" if d == 0 else "a", strength=min(3, max(1, abs(d))),
                            head=crit, split=row["episode_split"] or "train",
                            item=f"{row['campaign']}:{row['item_id']}", rater=row["rater"] or "",
                            a_source=srcs[hi] or "", b_source=srcs[lo] or ""))
    if not out:
        raise SnapshotReadError(f"{root}: the snapshot holds no comparisons")
    return out, prompts


def _prompt(p: dict) -> dict:
    transcript = p.get("transcript")
    if isinstance(transcript, str):
        try:
            transcript = json.loads(transcript)
        except ValueError:
            transcript = None
    return {"dataset": p.get("dataset"), "fps": p.get("fps"),
            "speaker_array": p.get("speaker_array"), "transcript": transcript}
