"""Quality control decisions, and immutable preference snapshots.

Quality control reads judgments and never changes them: its decisions about raters are
append-only rows (``QcDecision``), the latest of which is a rater's status; excluding a rater
turns ``annotation``'s switch (``enrollment_set_excluded``). A snapshot freezes a filtered set
of judgments as content-hashed files laid out as a Hugging Face dataset repository.
"""

from django.conf import settings
from django.db import models

from annotation.models import Campaign, Enrollment
from policy.models import Job


class RaterStatus(models.TextChoices):
    TRUSTED = "trusted"  # within every threshold
    FLAGGED = "flagged"  # past a warning threshold: kept, and shown to researchers for review
    EXCLUDED = "excluded"  # past an exclusion threshold: served nothing more, left out of exports


class DecisionSource(models.TextChoices):
    AUTO = "auto"  # quality control's thresholds
    OVERRIDE = "override"  # a researcher, with a reason


class QcDecision(models.Model):
    """A rater's status in a campaign from this moment on: why, and the figures it was read
    from. Never edited or deleted; the latest row per enrolment is the current status. A
    researcher's override is such a row too, and quality control does not decide again over it
    until the researcher clears it (a later override back to ``auto``)."""

    enrollment = models.ForeignKey(Enrollment, on_delete=models.PROTECT,
                                   related_name="qc_decisions")
    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT,
                                 related_name="qc_decisions")
    status = models.CharField(max_length=10, choices=RaterStatus.choices)
    source = models.CharField(max_length=10, choices=DecisionSource.choices,
                              default=DecisionSource.AUTO)
    reason = models.TextField(help_text="in words: which figure crossed which threshold")
    figures = models.JSONField(default=dict, help_text="the rater's QC figures at that moment")
    thresholds = models.JSONField(default=dict, help_text="the QC policy in force")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+",
                                   help_text="the researcher, for an override")
    judgments_seen = models.PositiveIntegerField(
        default=0, help_text="the rater's judgments the figures were computed from")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["enrollment", "-id"], name="qc_decision_latest"),
                   models.Index(fields=["campaign", "-id"], name="qc_decision_campaign")]

    def __str__(self) -> str:
        return f"{self.enrollment}: {self.status} ({self.source})"


class QcRun(Job):
    """Quality control over one campaign, run by a ``default`` worker after a batch of judgments
    or on demand: figures for every rater, item and the campaign, and new decisions where a
    status changes."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="qc_runs")
    judgments_seen = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True,
                               help_text="campaign figures: agreement, alpha, cycles, counts")

    def __str__(self) -> str:
        return f"QC of {self.campaign} #{self.pk} ({self.status})"


class Snapshot(Job):
    """An immutable, content-hashed set of judgments chosen by ``filters``, written by a
    ``default`` worker to a temporary folder and moved into place whole. ``filter_key`` is the
    hash of the normalised filters: one snapshot is made at a time for the same filters."""

    name = models.CharField(max_length=200, blank=True)
    filters = models.JSONField(help_text="campaigns, qc policy, time range, sources")
    filter_key = models.CharField(max_length=64, db_index=True)
    content_hash = models.CharField(max_length=64, blank=True, db_index=True,
                                    help_text="sha256 over the snapshot's files; set when done")
    path = models.CharField(max_length=300, blank=True,
                            help_text="folder under MEDIA_ROOT, set when done")
    counts = models.JSONField(default=dict, blank=True, help_text="rows per config and split")
    size_bytes = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            # the same filters are never being made twice at once
            models.UniqueConstraint(fields=["filter_key"],
                                    condition=models.Q(status__in=["queued", "running"]),
                                    name="one_snapshot_in_progress_per_filter"),
        ]

    def __str__(self) -> str:
        return f"snapshot #{self.pk} {self.content_hash[:12] or self.status}"
