"""Retraining rounds: snapshot -> critic -> preference optimisation -> evaluation -> a candidate
version -> promotion -> candidates and the next campaign.

``round_start`` is the one way in (the admin's action, the API, ``start_round`` and the
schedule call it). Each step is a job on its resource's queue (``runner``), resumable from its
checkpoints; ``lifecycle`` holds what an admin does to a round and to a lineage's promoted
version (promote, keep the parent, roll back), each recorded as a ``Promotion`` row.
"""

from .config import DEFAULTS, METHODS, RoundError, round_config_clean
from .lifecycle import (
    ROUND_ACTIONS,
    promoted_version,
    round_cancel,
    round_decline,
    round_promote,
    round_resume,
    round_start,
    rounds_due,
    version_promote,
    version_rollback,
)
from .runner import round_folder, round_reap_stale, round_run_here, round_step_run

__all__ = [
    "ROUND_ACTIONS",
    "DEFAULTS",
    "METHODS",
    "RoundError",
    "promoted_version",
    "round_cancel",
    "round_config_clean",
    "round_decline",
    "round_folder",
    "round_promote",
    "round_reap_stale",
    "round_resume",
    "round_run_here",
    "round_start",
    "round_step_run",
    "rounds_due",
    "version_promote",
    "version_rollback",
]
