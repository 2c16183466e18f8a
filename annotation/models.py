"""Campaigns, their items, leases (assignments) and the raw, append-only judgments.

A campaign turns candidates into *items* (a pair, or a group of K for group scoring). Raters are
*enrolled* in a campaign (through an invite link or a crowd-platform entry); each time an item is
shown to a rater it is an *assignment*: a lease in the database with a heartbeat while the clips
play and an expiry when the page is abandoned. A *judgment* answers exactly one assignment; it is
never edited or deleted.
"""

import secrets
import uuid

from django.conf import settings
from django.db import models

from policy.models import Candidate, CandidateJob, Dataset, Episode
from rendering.models import Clip


class Protocol(models.TextChoices):
    PAIRWISE = "pairwise"  # two candidates: left / right / tie / both bad (+ strength, reasons)
    GROUP = "group"  # K candidates, each scored 1-5 on the four criteria


class CampaignStatus(models.TextChoices):
    DRAFT = "draft"  # being prepared: items and clips are made, nobody is served
    ACTIVE = "active"  # serving raters
    PAUSED = "paused"  # nobody is served; leases run out, judgments already sent are kept
    CLOSED = "closed"  # finished for good: its leases end, no more answers are taken


CRITERIA = ("empathy", "appropriateness", "engagement", "naturalness")
DEFAULT_WEIGHTS = {c: 1.0 for c in CRITERIA}


def criteria_weights_read(stored: object) -> dict[str, float]:
    """A campaign's weight per criterion: the stored ones that are numbers, the default for the
    rest."""
    stored = stored if isinstance(stored, dict) else {}
    return {c: float(w) if isinstance(w, int | float) and not isinstance(w, bool) else d
            for c, d in DEFAULT_WEIGHTS.items() for w in [stored.get(c)]}


DEFAULT_REASONS = ["timing", "wrong emotion", "too still", "too busy", "unnatural motion"]


def _code() -> str:
    return secrets.token_hex(4).upper()


def _invite_token() -> str:
    return secrets.token_urlsafe(24)


class Campaign(models.Model):
    """A rating study: which episodes, which candidate sources, which protocol, how many answers."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="campaigns")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="campaigns_created",
    )
    researchers = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="campaigns_shared",
        help_text="researchers who may see and change this campaign besides its creator",
    )
    status = models.CharField(
        max_length=8, choices=CampaignStatus.choices, default=CampaignStatus.DRAFT
    )
    # What is compared.
    sources = models.JSONField(
        help_text='candidate sources: [{"kind": "policy", "version": "name"}, '
                  '{"kind": "ground_truth"}, {"kind": "baseline", "name": "mirror"}]'
    )
    protocol = models.CharField(max_length=10, choices=Protocol.choices,
                                default=Protocol.PAIRWISE)
    group_size = models.PositiveSmallIntegerField(default=5, help_text="K for group scoring")
    criteria_weights = models.JSONField(default=dict, blank=True,
                                        help_text="group scoring: weight per criterion")
    ask_strength = models.BooleanField(default=True, help_text="pairwise: 3 levels of strength")
    reason_tags = models.JSONField(default=list, blank=True, help_text="optional reason tags")
    # How much is asked.
    overlap = models.PositiveSmallIntegerField(default=3, help_text="judgments per item")
    target_items = models.PositiveIntegerField(default=100, help_text="items to make at most")
    per_rater_limit = models.PositiveIntegerField(
        default=50, help_text="items one rater answers at most (probes included)"
    )
    lease_seconds = models.PositiveIntegerField(
        default=90, help_text="a lease expires this long after its last heartbeat"
    )
    active_order = models.BooleanField(
        default=True, help_text="serve first the items whose outcome is least certain"
    )
    # Quality control: probe rates are fractions of the items served.
    gold_rate = models.FloatField(default=0.1, help_text="ground truth vs a clearly wrong answer")
    catch_rate = models.FloatField(default=0.05, help_text="identical clips; expects a tie")
    repeat_rate = models.FloatField(default=0.05, help_text="own earlier items, sides swapped")
    warn_after = models.PositiveSmallIntegerField(default=2, help_text="failed probes")
    block_after = models.PositiveSmallIntegerField(default=5, help_text="failed probes")
    # What raters read.
    instructions = models.TextField(blank=True)
    consent_text = models.TextField(blank=True)
    # Crowd platforms pass a participant id in the URL and take a completion code back.
    crowd_param = models.CharField(
        max_length=40, blank=True, help_text="URL parameter carrying the participant id, "
                                             "e.g. PROLIFIC_PID; blank: no crowd entry")
    completion_code = models.CharField(max_length=40, default=_code, blank=True)
    completion_url = models.URLField(blank=True, help_text="where finished raters are sent")
    render_settings = models.JSONField(default=dict, blank=True)
    # Bookkeeping for the active order: the last judgment the priorities were computed from.
    prioritised_upto = models.BigIntegerField(default=0)
    ratings = models.JSONField(default=dict, blank=True,
                               help_text="current Bradley-Terry ratings per source")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    @property
    def weights(self) -> dict[str, float]:
        return criteria_weights_read(self.criteria_weights)


class SamplingStatus(models.TextChoices):
    SAMPLING = "sampling"  # candidate jobs queued or running; the items are built after them
    FAILED = "failed"  # a job failed, or the items could not be built: ``error`` says which
    DONE = "done"  # every job succeeded and the items were built


class CampaignSampling(models.Model):
    """What a campaign made before its candidates existed waits for: candidate jobs on the
    ``gpu`` workers. When the last one succeeds, the worker that ran it builds the campaign's
    items from the episodes and seed kept here (``campaign_sampling_settle``)."""

    campaign = models.OneToOneField(Campaign, on_delete=models.CASCADE, related_name="sampling")
    status = models.CharField(max_length=8, choices=SamplingStatus.choices,
                              default=SamplingStatus.SAMPLING)
    # A retried job replaces the failed one here; the failed row stays in the job list.
    jobs = models.ManyToManyField(CandidateJob, related_name="+")
    episode_ids = models.JSONField(default=list, help_text="what the items are built from, "
                                                           "in the build's order")
    seed = models.BigIntegerField(default=0, help_text="the build's seed")
    error = models.TextField(blank=True)
    built = models.JSONField(default=dict, blank=True,
                             help_text="what the build made: items, gold, catch, clips, skipped")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"sampling for {self.campaign} ({self.status})"


class Probe(models.TextChoices):
    NONE = "none"  # a regular item: its answers are the data
    GOLD = "gold"  # ground truth vs a clearly wrong answer: the ground truth must win
    CATCH = "catch"  # the same clip twice: expects "tie"
    REPEAT = "repeat"  # a rater's own earlier item again, sides swapped (assignments only)


class Item(models.Model):
    """What one rater judges once: a pair or a group of candidates for the same speaker clip."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="items")
    episode = models.ForeignKey(Episode, on_delete=models.PROTECT, related_name="+")
    probe = models.CharField(max_length=8, choices=Probe.choices, default=Probe.NONE)
    speaker_clip = models.ForeignKey(Clip, on_delete=models.PROTECT, related_name="+")
    size = models.PositiveSmallIntegerField(help_text="number of candidates")
    n_judgments = models.PositiveIntegerField(default=0)
    priority = models.FloatField(default=1.0, help_text="higher is served first")
    shuffle = models.PositiveIntegerField(help_text="random tie-breaker for serving order")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["campaign", "probe", "-priority", "n_judgments", "shuffle"],
                         name="item_serving_order"),
        ]

    def __str__(self) -> str:
        return f"item #{self.pk} ({self.probe})"


class ItemMember(models.Model):
    """One candidate of an item, in the item's canonical order (slot 0 is "a")."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="members")
    slot = models.PositiveSmallIntegerField()
    candidate = models.ForeignKey(Candidate, on_delete=models.PROTECT, related_name="+")
    clip = models.ForeignKey(Clip, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["slot"]
        constraints = [
            models.UniqueConstraint(fields=["item", "slot"], name="item_member_slot_unique")
        ]

    def __str__(self) -> str:
        return f"item #{self.item_id} slot {self.slot}"


class Invite(models.Model):
    """A link that enrols whoever opens it as a rater of one campaign."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="invites")
    token = models.CharField(max_length=64, unique=True, default=_invite_token)
    label = models.CharField(max_length=100, blank=True)
    max_uses = models.PositiveIntegerField(null=True, blank=True, help_text="blank: unlimited")
    uses = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"invite to {self.campaign} ({self.label or self.pk})"


class Enrollment(models.Model):
    """A rater's membership of a campaign, with consent, crowd identity and probe record."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="enrollments")
    rater = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                              related_name="enrollments")
    # Pseudonymous id for exports: says nothing about the account.
    pseudonym = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    invite = models.ForeignKey(Invite, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="enrollments")
    external_id = models.CharField(max_length=200, blank=True,
                                   help_text="crowd participant id (for paying people)")
    external_study = models.CharField(max_length=200, blank=True)
    external_session = models.CharField(max_length=200, blank=True)
    consented_at = models.DateTimeField(null=True, blank=True)
    n_judgments = models.PositiveIntegerField(default=0)
    probes_passed = models.PositiveIntegerField(default=0)
    probes_failed = models.PositiveIntegerField(default=0)
    blocked = models.BooleanField(default=False, help_text="failed too many probes: not served")
    # Quality control (the feedback app) sets this from its own append-only records: the rating
    # path reads it and serves nothing more (annotation.rules.serving_state).
    excluded = models.BooleanField(default=False,
                                   help_text="excluded by quality control: not served")
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "rater"], name="one_enrollment_per_rater"),
        ]

    def __str__(self) -> str:
        return f"{self.rater} in {self.campaign}"


class AssignmentStatus(models.TextChoices):
    ACTIVE = "active"  # leased; valid while expires_at is in the future
    SUBMITTED = "submitted"  # answered by exactly one judgment
    EXPIRED = "expired"  # abandoned: no heartbeat before expires_at (set by the reaper)


class Assignment(models.Model):
    """One exposure of an item to a rater: a lease with a heartbeat.

    ``token`` is the only handle the browser gets; ``order`` is the permutation shown (position
    -> item slot), drawn anew for every exposure.
    """

    token = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="assignments")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="assignments")
    # Indexed by ``assignment_rater_live``, which starts with it.
    rater = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                              related_name="assignments", db_index=False)
    probe = models.CharField(max_length=8, choices=Probe.choices, default=Probe.NONE)
    repeat_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    order = models.JSONField(help_text="shown position -> item slot")
    status = models.CharField(max_length=10, choices=AssignmentStatus.choices,
                              default=AssignmentStatus.ACTIVE)
    leased_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        # No index holds ``expires_at``: a heartbeat then rewrites no index entry (PostgreSQL
        # keeps the new row version on its page, see migration 0004), and heartbeats are the
        # most frequent write. Live leases of an item are counted through
        # ``assignment_live_item``, which is keyed by item (migration 0007); expired ones are
        # found among the active rows.
        indexes = [
            models.Index(fields=["rater", "campaign", "status"], name="assignment_rater_live"),
            models.Index(fields=["item"], condition=models.Q(status="active"),
                         name="assignment_live_item"),
        ]
        constraints = [
            # A rater sees an item once, except as a hidden repeat.
            models.UniqueConstraint(
                fields=["item", "rater"], condition=~models.Q(probe="repeat") & ~models.Q(
                    status="expired"),
                name="one_live_exposure_per_rater",
            ),
        ]

    def __str__(self) -> str:
        return f"assignment {self.token} ({self.status})"


class Judgment(models.Model):
    """A rater's answer to one assignment: append-only, stored exactly once.

    ``outcome`` is in the item's canonical terms (``a`` = slot 0 won); ``choice`` is what was
    pressed on the screen (``left``/``right``/``tie``/``both_bad``), with ``order`` the sides shown.
    """

    idempotency_key = models.UUIDField(unique=True)
    assignment = models.OneToOneField(Assignment, on_delete=models.PROTECT,
                                      related_name="judgment")
    # Indexed by ``judgment_campaign_order``, which starts with it.
    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="judgments",
                                 db_index=False)
    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="judgments")
    rater = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                              related_name="judgments")
    probe = models.CharField(max_length=8, choices=Probe.choices, default=Probe.NONE)
    order = models.JSONField(help_text="shown position -> item slot")
    choice = models.CharField(max_length=10, blank=True, help_text="pairwise: as pressed")
    outcome = models.CharField(max_length=10, blank=True,
                               help_text="pairwise: a / b / tie / both_bad")
    strength = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1..3")
    reasons = models.JSONField(default=list, blank=True)
    scores = models.JSONField(
        null=True, blank=True,
        help_text="group: per item slot, {criterion: 1..5}, listed in slot order",
    )
    decision_ms = models.PositiveIntegerField(help_text="from voting unlocked to the answer")
    viewing_ms = models.PositiveIntegerField(default=0, help_text="from shown to the answer")
    playback = models.JSONField(default=dict, blank=True,
                                help_text="plays, pauses, seeks, stalls, dropped frames")
    qc = models.JSONField(default=dict, blank=True, help_text="probe result and flags")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["campaign", "id"], name="judgment_campaign_order")]

    def __str__(self) -> str:
        return f"judgment #{self.pk} on item #{self.item_id}"
