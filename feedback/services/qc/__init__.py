"""Quality control of a campaign's raters: figures, decisions, overrides and runs.

A run (``QcRun``, on the ``default`` queue) loads the campaign's judgments into arrays
(``qc_load``: a handful of ``values_list`` queries, no row objects), computes every figure with
the pure functions of ``feedback.qc`` and decides each rater's status. A decision is an
append-only ``QcDecision`` row with the reason in words, the rater's figures and the thresholds
in force; a row is written only when a rater's status changes (or for a researcher's override),
so a second run over the same judgments writes nothing. ``excluded`` turns annotation's switch
(``enrollment_set_excluded``: the rater is served nothing more, their live leases end, nothing
they answered is touched); leaving ``excluded`` turns it back.

Runs start from the beat (``qc_runs_due``, every minute: active campaigns with ``batch`` new
judgments since their last run), from the page and API (``qc_run_create``) and from
``manage.py run_qc`` (in process).

Rules (thresholds: ``settings.FEEDBACK_QC``, defaults in ``feedback.qc.Thresholds``). A rater
with fewer than ``min_answers`` judgments is not judged (status ``trusted``, source ``pending``:
nothing has been found against them yet); each rule applies once its own minimum is reached.

* gold accuracy (gold items passed, from ``Judgment.qc``), once ``min_gold`` (10) are answered:
  flagged below ``gold_accuracy_flag`` (0.8), excluded below ``gold_accuracy_exclude`` (0.7);
* catch accuracy ("about the same" on identical clips): flagged below ``catch_accuracy_flag``
  (0.8) once ``min_catch`` (3) are answered, excluded below ``catch_accuracy_exclude`` (0.5)
  once ``min_catch_exclude`` (6) are;
* repeat consistency (hidden repeats answered the same way), once ``min_repeats`` (3): flagged
  below ``repeat_consistency_flag`` (0.6);
* side bias (left among the decisive left / right presses, two-sided ``scipy.stats.binomtest``
  against 1/2), once ``min_decisive`` (10): flagged when p < ``side_bias_p`` (0.001) and the
  pressed side's share > ``side_bias_share`` (0.8);
* decision time: an answer is too fast when ``decision_ms`` is under ``fast_fraction`` (0.1) of
  the clip's length (the episode's ``n_frames / fps``); flagged when more than
  ``fast_share_flag`` (0.3) of at least ``min_answers`` timed answers are;
* leave-one-out agreement (the rater's label against the unique majority of the item's other
  answers, at least two), over ``min_regular`` (10) scored items: flagged below
  ``loo_agreement_flag`` (0.5);
* reliability (MACE-style EM over (rater, item, label), jointly with the items' labels), over
  ``min_regular`` (10) comparisons: flagged below ``reliability_flag`` (0.5), excluded below
  ``reliability_exclude`` (0.15).

Any exclusion rule makes the rater ``excluded``, else any warning rule ``flagged``, else
``trusted``; the reason lists every rule that held. ``batch`` (200) is not a rule: it is how many
new judgments start a run. Labels are a / b / no preference (a tie or "both bad"); group answers
count as the pairs they imply (``feedback.qc.group_comparisons``) and their scores give an
ordinal alpha. A researcher's override (``qc_override``) is a row too, with the reason; quality
control never decides over it until it is cleared (status ``auto``).
"""

from .decide import (
    MAX_REASON,
    OVERRIDE_STATUSES,
    latest_decisions,
    latest_status,
    qc_decide,
    qc_override,
)
from .execute import ProgressFn, qc_run_execute
from .figures import PENDING, Figures, quality_page, rater_table
from .load import Loaded, qc_compute, qc_load
from .runs import (
    STALE_AFTER,
    latest_run,
    qc_run_claim,
    qc_run_create,
    qc_runs_due,
    run_summary,
)
from .thresholds import QcError, qc_thresholds

__all__ = [
    "Figures",
    "Loaded",
    "MAX_REASON",
    "OVERRIDE_STATUSES",
    "PENDING",
    "ProgressFn",
    "QcError",
    "STALE_AFTER",
    "latest_decisions",
    "latest_run",
    "latest_status",
    "qc_compute",
    "qc_decide",
    "qc_load",
    "qc_override",
    "qc_run_claim",
    "qc_run_create",
    "qc_run_execute",
    "qc_runs_due",
    "qc_thresholds",
    "quality_page",
    "rater_table",
    "run_summary",
]
