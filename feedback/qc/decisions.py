"""From a rater's figures to a status: the thresholds (:class:`Thresholds`), the figures as
JSON-ready rows, and the rules (:func:`rater_decision`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from .data import _round

_SHARES = ("_flag", "_exclude", "_share", "_p")  # thresholds that are shares or probabilities


@dataclass(frozen=True)
class Thresholds:
    """When quality control flags or excludes a rater (``settings.FEEDBACK_QC``; the table is
    in ``feedback/services/qc/__init__.py``). A rule is applied only once its own minimum count is
    reached, and no rule before ``min_answers``."""

    batch: int = 200  # not a rule: new judgments in a campaign that start a run (the beat)
    min_answers: int = 20  # no decision about a rater with fewer judgments
    min_gold: int = 10  # gold items answered before gold accuracy counts
    gold_accuracy_flag: float = 0.8
    gold_accuracy_exclude: float = 0.7  # common tools' rule: >= 0.7 after 10 gold items
    min_catch: int = 3  # catch items answered before catch accuracy flags
    catch_accuracy_flag: float = 0.8
    min_catch_exclude: int = 6  # ... and before it excludes
    catch_accuracy_exclude: float = 0.5
    min_repeats: int = 3  # hidden repeats answered before consistency counts
    repeat_consistency_flag: float = 0.6
    min_decisive: int = 10  # left/right presses before side bias counts
    side_bias_p: float = 0.001  # two-sided binomial test against 1/2 ...
    side_bias_share: float = 0.8  # ... and the pressed side's share above this
    fast_fraction: float = 0.1  # an answer is too fast below this fraction of the clip's length
    fast_share_flag: float = 0.3  # flagged when more answers than this are too fast
    min_regular: int = 10  # regular comparisons before agreement and reliability count
    loo_agreement_flag: float = 0.5  # agreement with the others' majority
    reliability_flag: float = 0.5
    reliability_exclude: float = 0.15  # answers barely tied to the items: mostly noise

    @classmethod
    def from_mapping(cls, values: Mapping[str, object] | None) -> Thresholds:
        """Thresholds from a settings dict: unknown keys and values of the wrong kind are
        refused with the key's name (``ValueError``); missing keys keep their defaults."""
        values = dict(values or {})
        known = {f.name: f for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ValueError(f"FEEDBACK_QC: unknown key {key!r}; known keys: "
                                 f"{', '.join(sorted(known))}")
        out: dict[str, object] = {}
        for key, value in values.items():
            want = type(getattr(cls, key))
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < 0:
                raise ValueError(f"FEEDBACK_QC[{key!r}]: expected a number >= 0, got {value!r}")
            if want is int and not float(value).is_integer():
                raise ValueError(f"FEEDBACK_QC[{key!r}]: expected a whole number, got {value!r}")
            if want is float and key.endswith(_SHARES) and value > 1:
                raise ValueError(f"FEEDBACK_QC[{key!r}]: expected a share in [0, 1], got "
                                 f"{value!r}")
            out[key] = want(value)
        return cls(**out)

    def as_dict(self) -> dict[str, float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Every per-rater figure, in the order tables show them.
RATER_FIGURES = (
    "n_judgments", "gold_n", "gold_passed", "gold_accuracy", "catch_n", "catch_passed",
    "catch_accuracy", "repeat_n", "repeat_passed", "repeat_consistency", "decisive_n", "left_n",
    "left_share", "side_p", "timed_n", "fast_n", "fast_share", "time_ratio_p10",
    "time_ratio_p50", "time_ratio_p90", "regular_n", "loo_n", "loo_agreement", "reliability",
)
COUNT_FIGURES = ("n_judgments", "gold_n", "gold_passed", "catch_n", "catch_passed", "repeat_n",
                 "repeat_passed", "decisive_n", "left_n", "timed_n", "fast_n", "regular_n",
                 "loo_n")


def rater_row(raters: Mapping[str, np.ndarray], i: int) -> dict[str, float | int | None]:
    """One rater's figures as JSON-ready values (counts as ints, shares rounded, None for a
    figure without data)."""
    row: dict[str, float | int | None] = {}
    for name in RATER_FIGURES:
        x = float(raters[name][i])
        if name in COUNT_FIGURES:
            row[name] = int(x) if math.isfinite(x) else 0
        elif name == "side_p":
            row[name] = None if not math.isfinite(x) else float(f"{x:.3g}")
        else:
            row[name] = _round(x)
    return row


def empty_row() -> dict[str, float | int | None]:
    """The figures of a rater without judgments."""
    return {name: 0 if name in COUNT_FIGURES else None for name in RATER_FIGURES}


def rater_decision(fig: Mapping[str, float | int | None], th: Thresholds
                   ) -> tuple[str | None, str]:
    """(status, reason in words) for one rater's figures (a :func:`rater_row`): ``excluded``
    when an exclusion rule holds, else ``flagged`` when a warning rule holds, else
    ``trusted``; None before ``min_answers`` (not judged yet)."""
    n = int(fig.get("n_judgments") or 0)
    if n < th.min_answers:
        return None, f"not judged yet: {n} answers of the {th.min_answers} needed"
    excluded: list[str] = []
    flagged: list[str] = []

    def get(name: str) -> float | None:
        x = fig.get(name)
        return None if x is None else float(x)

    gold, gold_n = get("gold_accuracy"), int(fig.get("gold_n") or 0)
    if gold is not None and gold_n >= th.min_gold:
        text = f"gold accuracy {gold:.2f} over {gold_n} gold items"
        if gold < th.gold_accuracy_exclude:
            excluded.append(f"{text}, below {th.gold_accuracy_exclude:.2f}")
        elif gold < th.gold_accuracy_flag:
            flagged.append(f"{text}, below {th.gold_accuracy_flag:.2f}")
    catch, catch_n = get("catch_accuracy"), int(fig.get("catch_n") or 0)
    if catch is not None:
        failed = catch_n - int(fig.get("catch_passed") or 0)
        text = f"{failed} of {catch_n} catch items failed (accuracy {catch:.2f})"
        if catch_n >= th.min_catch_exclude and catch < th.catch_accuracy_exclude:
            excluded.append(f"{text}, below {th.catch_accuracy_exclude:.2f}")
        elif catch_n >= th.min_catch and catch < th.catch_accuracy_flag:
            flagged.append(f"{text}, below {th.catch_accuracy_flag:.2f}")
    rep, rep_n = get("repeat_consistency"), int(fig.get("repeat_n") or 0)
    if rep is not None and rep_n >= th.min_repeats and rep < th.repeat_consistency_flag:
        flagged.append(f"answered {rep:.2f} of {rep_n} hidden repeats the same way, below "
                       f"{th.repeat_consistency_flag:.2f}")
    share, p, dec_n = get("left_share"), get("side_p"), int(fig.get("decisive_n") or 0)
    if share is not None and p is not None and dec_n >= th.min_decisive:
        side, s = ("left", share) if share >= 0.5 else ("right", 1.0 - share)
        if p < th.side_bias_p and s > th.side_bias_share:
            flagged.append(f"pressed {side} in {s:.0%} of {dec_n} decisive answers (binomial "
                           f"p = {p:.1e} < {th.side_bias_p:g}, share above "
                           f"{th.side_bias_share:.0%})")
    fast, timed = get("fast_share"), int(fig.get("timed_n") or 0)
    if fast is not None and timed >= th.min_answers and fast > th.fast_share_flag:
        flagged.append(f"{fast:.0%} of {timed} answers decided in under "
                       f"{th.fast_fraction:.0%} of the clip's length (more than "
                       f"{th.fast_share_flag:.0%})")
    loo, loo_n = get("loo_agreement"), int(fig.get("loo_n") or 0)
    if loo is not None and loo_n >= th.min_regular and loo < th.loo_agreement_flag:
        flagged.append(f"agreed with the others' majority on {loo:.2f} of {loo_n} items, below "
                       f"{th.loo_agreement_flag:.2f}")
    rel, reg_n = get("reliability"), int(fig.get("regular_n") or 0)
    if rel is not None and reg_n >= th.min_regular:
        text = f"reliability {rel:.2f} over {reg_n} comparisons"
        if rel < th.reliability_exclude:
            excluded.append(f"{text}, below {th.reliability_exclude:.2f}")
        elif rel < th.reliability_flag:
            flagged.append(f"{text}, below {th.reliability_flag:.2f}")
    if excluded:
        return "excluded", "; ".join(excluded + flagged)
    if flagged:
        return "flagged", "; ".join(flagged)
    return "trusted", f"within every threshold ({n} answers)"
