"""The dataset card (README.md): the YAML header ``datasets`` reads, and the prose."""

from __future__ import annotations

import json

from .schema import CONFIGS, SCHEMA_VERSION

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
