"""The thresholds in force, and the error a quality-control request that cannot be done
raises."""

from __future__ import annotations

from django.conf import settings

from feedback import qc


class QcError(ValueError):
    """A quality-control request that cannot be done as asked; the message names the field."""


def qc_thresholds() -> qc.Thresholds:
    """The thresholds in force (``settings.FEEDBACK_QC``); a bad value raises ``QcError``
    naming its key."""
    try:
        return qc.Thresholds.from_mapping(getattr(settings, "FEEDBACK_QC", {}))
    except ValueError as exc:
        raise QcError(str(exc)) from None
