"""Quality-control figures over judgments held in NumPy arrays: pure, no Django, no database.

``feedback.services.qc`` loads a campaign's judgments into a :class:`QcData` and calls
:func:`compute`; the benchmark (``benchmarks/feedback/qc.py``) calls the same function on
simulated arrays. Every figure is computed for all raters, items and comparisons at once (NumPy
gathers, sorts and ``bincount``); the few Python loops run over a group's slot pairs, the
criteria, EM iterations or chunks of episodes, never over judgments.

Terms:

* a **comparison** is one rater's answer about one *unit*. On a pairwise campaign a unit is a
  regular item and its label the judgment's outcome; on a group campaign each judgment implies
  one comparison per pair of slots, by the weighted mean score (the rule of
  ``annotation.rules.group_pairs``), and a unit is (item, slot pair);
* labels are ``A`` (slot 0 / the first of the pair preferred), ``B``, and ``NOPREF``: a tie or
  "both bad" (neither is preferred; Chatbot Arena counts both bad as a tie as well);
* probes (gold, catch, hidden repeats) are judged by ``annotation.rules.probe_verdict`` when the
  answer arrives; here they are only counted. They never enter the comparisons.

Per rater: gold and catch accuracy, repeat consistency, side bias (two-sided binomial test of
left against right among the decisive presses), decision time against the clip's length,
agreement with the leave-one-out majority, and a reliability estimated jointly with the items
(:func:`reliability_em`, MACE-style). Per unit and campaign: raw pairwise agreement,
Krippendorff's alpha (nominal for preference labels, ordinal for 1-5 scores) and the 3-cycles
of each episode's majority preferences.
"""

from .agreement import krippendorff_alpha, loo_agreement, pairwise_agreement, preference_cycles
from .data import (
    BOTH_BAD,
    HUMAN_CEILING,
    LABELS,
    LEFT,
    N_LABELS,
    NOPREF,
    PROBE_CATCH,
    PROBE_GOLD,
    PROBE_NONE,
    PROBE_REPEAT,
    RIGHT,
    SCORE_DOMAIN,
    TIE,
    A,
    B,
    QcData,
    QcResult,
    group_comparisons,
    keep_raters,
    unit_counts,
    value_counts,
)
from .decisions import (
    COUNT_FIGURES,
    RATER_FIGURES,
    Thresholds,
    empty_row,
    rater_decision,
    rater_row,
)
from .figures import campaign_figures, compute, rater_figures
from .probes import binomial_band, decision_speed, probe_figures, side_bias
from .reliability import reliability_em

__all__ = [
    "A",
    "B",
    "BOTH_BAD",
    "COUNT_FIGURES",
    "HUMAN_CEILING",
    "LABELS",
    "LEFT",
    "NOPREF",
    "N_LABELS",
    "PROBE_CATCH",
    "PROBE_GOLD",
    "PROBE_NONE",
    "PROBE_REPEAT",
    "QcData",
    "QcResult",
    "RATER_FIGURES",
    "RIGHT",
    "SCORE_DOMAIN",
    "TIE",
    "Thresholds",
    "binomial_band",
    "campaign_figures",
    "compute",
    "decision_speed",
    "empty_row",
    "group_comparisons",
    "keep_raters",
    "krippendorff_alpha",
    "loo_agreement",
    "pairwise_agreement",
    "preference_cycles",
    "probe_figures",
    "rater_decision",
    "rater_figures",
    "rater_row",
    "reliability_em",
    "side_bias",
    "unit_counts",
    "value_counts",
]
