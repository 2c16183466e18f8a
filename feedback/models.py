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


# --- retraining rounds ---------------------------------------------------------------------------


class RoundStep(models.TextChoices):
    """A round's steps, in the order they run."""

    SNAPSHOT = "snapshot"  # freeze the campaigns' judgments (default queue)
    CRITIC = "critic"  # reward-model ensemble on the snapshot (gpu)
    OPTIMISE = "optimise"  # preference optimisation from the parent (gpu)
    EVALUATE = "evaluate"  # metrics, critic and oracle win-rates against the parent (gpu)
    REGISTER = "register"  # the candidate PolicyVersion, in one transaction (default)
    PROMOTE = "promote"  # automatic when the gates pass, else an admin's click (default)
    CANDIDATES = "candidates"  # samples of the promoted version and the next campaign (gpu)


ROUND_STEPS = [s.value for s in RoundStep]


class RoundStatus(models.TextChoices):
    QUEUED = "queued"  # asked for; its first step waits for a worker
    RUNNING = "running"  # a step is queued or running
    WAITING = "waiting"  # registered a candidate; waits for an admin to promote it or not
    SUCCEEDED = "succeeded"  # every step done
    FAILED = "failed"  # a step failed; resumable from that step
    CANCELLED = "cancelled"  # stopped by an admin; nothing further runs


class StepState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class Round(models.Model):
    """One pass around the loop, from the promoted version of a lineage.

    The row is the round's whole state: the current step and its state (claimed by the
    conditional update ``queued -> running``, like every job), a heartbeat the running step
    renews, each step's record (``steps``: progress, times, attempts), the log and the curves
    the page draws. Each step writes its files under ``MEDIA_ROOT/rounds/<id>/`` and checkpoints
    as it goes, so a step whose worker died is claimed again and resumes where it stopped;
    registering the version is one transaction, so a round never leaves half a version.
    """

    lineage = models.SlugField(max_length=100, default="main")
    parent = models.ForeignKey("policy.PolicyVersion", on_delete=models.PROTECT,
                               related_name="rounds_from")
    campaigns = models.ManyToManyField(Campaign, related_name="rounds")
    config = models.JSONField(default=dict, help_text="method, critic, optimiser, gates, next "
                                                      "campaign (see feedback/services/rounds)")
    trigger = models.CharField(max_length=12, default="admin",
                               help_text="admin / api / command / schedule")
    status = models.CharField(max_length=10, choices=RoundStatus.choices,
                              default=RoundStatus.QUEUED)
    step = models.CharField(max_length=12, choices=RoundStep.choices, default=RoundStep.SNAPSHOT)
    step_state = models.CharField(max_length=8, choices=StepState.choices,
                                  default=StepState.QUEUED)
    heartbeat_at = models.DateTimeField(null=True, blank=True,
                                        help_text="renewed while a step runs")
    steps = models.JSONField(default=dict, blank=True,
                             help_text="{step: {progress, started_at, finished_at, seconds, "
                                       "attempts}}")
    progress = models.FloatField(default=0.0, help_text="percent, over all steps")
    snapshot = models.ForeignKey("feedback.Snapshot", null=True, blank=True,
                                 on_delete=models.PROTECT, related_name="rounds")
    critic_sha = models.CharField(max_length=64, blank=True)
    checkpoint_sha = models.CharField(max_length=64, blank=True,
                                      help_text="the optimised policy, before registration")
    output_version = models.ForeignKey("policy.PolicyVersion", null=True, blank=True,
                                       on_delete=models.PROTECT, related_name="rounds_made")
    next_campaign = models.ForeignKey(Campaign, null=True, blank=True,
                                      on_delete=models.SET_NULL, related_name="+")
    report = models.JSONField(default=dict, blank=True,
                              help_text="critic report, evaluation, gates")
    curves = models.JSONField(default=dict, blank=True,
                              help_text="{name: [[step, value], …]} drawn on the page")
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    judgments_at_start = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # one round at a time per lineage: two would both start from the same parent
            models.UniqueConstraint(fields=["lineage"],
                                    condition=models.Q(status__in=["queued", "running",
                                                                   "waiting"]),
                                    name="one_open_round_per_lineage"),
        ]

    def __str__(self) -> str:
        return f"round #{self.pk} ({self.lineage}, {self.status})"


class RoundSchedule(models.Model):
    """Start a round by itself once a campaign has gathered ``every_judgments`` new trusted
    judgments since the last round that read it (checked by Celery beat)."""

    campaign = models.OneToOneField(Campaign, on_delete=models.CASCADE,
                                    related_name="round_schedule")
    every_judgments = models.PositiveIntegerField(default=500)
    config = models.JSONField(default=dict, blank=True, help_text="the rounds' config")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"every {self.every_judgments} judgments of {self.campaign}"


class VersionAction(models.TextChoices):
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class Promotion(models.Model):
    """A change of a lineage's promoted version: who, when, from which to which. Never edited."""

    lineage = models.SlugField(max_length=100)
    action = models.CharField(max_length=10, choices=VersionAction.choices)
    version = models.ForeignKey("policy.PolicyVersion", on_delete=models.PROTECT,
                                related_name="promotions")
    previous = models.ForeignKey("policy.PolicyVersion", null=True, blank=True,
                                 on_delete=models.PROTECT, related_name="+")
    round = models.ForeignKey(Round, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="promotions")
    automatic = models.BooleanField(default=False, help_text="the round's gates passed")
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                           on_delete=models.SET_NULL, related_name="+")
    at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.action} {self.version} ({self.lineage})"
