"""Every write to a campaign: making it, changing its settings, its status, deleting it;
invites; the candidates it waits for.

The API, the researcher pages, the admin and the commands all write through these functions,
so each refuses the same things with the same words (``CampaignError``: the field and why).
What each setting may be and when it may change is in ``campaign_settings``; what items a new
campaign gets, in ``campaign_items``.

A campaign asked for before its candidates exist is made all the same: ``campaign_create``
records it in draft with the candidate jobs it waits for (``CampaignSampling``), and the worker
that finishes the last job builds the items (``campaign_items.campaign_sampling_settle``,
through ``annotation.receivers``). It can start once they are built and their clips rendered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from annotation.models import (
    Assignment,
    AssignmentStatus,
    Campaign,
    CampaignSampling,
    CampaignStatus,
    Invite,
    Item,
    ItemMember,
    Judgment,
    Protocol,
    SamplingStatus,
)
from annotation.services.campaign_items import (
    CampaignBuild,
    campaign_items_build,
    campaign_sampling_advance,
    campaign_sampling_progress,
    campaign_sampling_retry,
    campaign_sampling_settle,
    sampling_plan,
    sampling_start,
    source_filter,
)
from annotation.services.campaign_settings import (
    BUILD_FIELDS,
    FIXED,
    INT_MAX,
    SETTINGS,
    CampaignError,
    CampaignInUse,
    field_fixed_reason,
    refuse,
    settings_check,
)
from annotation.services.scheduling import campaign_leases_end
from policy.models import Dataset, Episode, JobStatus
from policy.services.candidates import candidates_ground_truth
from rendering.models import Clip, ClipStatus

__all__ = [
    "CampaignBuild", "CampaignError", "CampaignInUse", "campaign_clip_ids",
    "campaign_clip_progress", "campaign_create", "campaign_delete", "campaign_delete_check",
    "campaign_sampling_advance", "campaign_sampling_progress", "campaign_sampling_retry",
    "campaign_sampling_settle", "campaign_set_status", "campaign_start_refusal",
    "campaign_update", "campaign_update_check", "invite_create",
]

logger = logging.getLogger(__name__)

# Settings ``campaign_create`` takes as keyword options (the rest are its named parameters;
# researchers are added after, by ``campaign_update``).
_CREATE_OPTIONS = frozenset(SETTINGS) - {
    "name", "sources", "protocol", "group_size", "overlap", "target_items", "per_rater_limit",
    "gold_rate", "catch_rate", "repeat_rate", "researchers"}


def _defaults() -> dict[str, object]:
    """The model's default for every setting that has a column."""
    return {f: Campaign._meta.get_field(f).get_default() for f in SETTINGS
            if f != "researchers"}


def _is_slug(text: str) -> bool:
    try:
        validate_slug(text)
    except ValidationError:
        return False
    return True


@transaction.atomic
def campaign_create(
    *,
    name: str,
    slug: str,
    dataset: Dataset,
    sources: list[dict],
    created_by=None,
    split: str = "test",
    episodes: list[Episode] | None = None,
    protocol: str = Protocol.PAIRWISE,
    group_size: int = 5,
    overlap: int = 3,
    target_items: int = 100,
    per_rater_limit: int = 50,
    gold_rate: float = 0.1,
    catch_rate: float = 0.05,
    repeat_rate: float = 0.05,
    seed: int = 0,
    **options: object,
) -> CampaignBuild:
    """Make a campaign in draft with its items and queue the clips they need.

    Episodes come from ``episodes`` or the dataset's ``split`` (``campaign_items_build`` says
    which items they give). Every setting is checked as ``campaign_update`` checks a change
    (``campaign_settings``); nothing is stored if any is wrong (``CampaignError``).

    Where a source lacks candidates (``sampling_plan``), the campaign is made without items and
    the candidate jobs that make them are queued on the ``gpu`` workers once this commits; the
    returned build lists them, and the items come when they finish.
    """
    for key in options:
        if key in FIXED:
            raise refuse(key, "is set by the platform, not when a campaign is made (a new "
                              "campaign is a draft)")
        if key not in _CREATE_OPTIONS:
            raise refuse(key, "unknown campaign option")
    given = {"name": name, "sources": sources, "protocol": protocol, "group_size": group_size,
             "overlap": overlap, "target_items": target_items,
             "per_rater_limit": per_rater_limit, "gold_rate": gold_rate,
             "catch_rate": catch_rate, "repeat_rate": repeat_rate, **options}
    settings_check({**_defaults(), **given}, changed=given)
    for source in sources:
        source_filter(source, dataset)  # CampaignError naming the bad source
    if not isinstance(slug, str) or len(slug) > 100 or not _is_slug(slug):
        raise refuse("slug", "must be at most 100 letters, digits, - or _")
    if Campaign.objects.filter(slug=slug).exists():
        raise refuse("slug", f"a campaign named {slug!r} exists already")
    if episodes is None:
        episodes = list(dataset.episodes.filter(split=split).order_by("key"))
    if not episodes:
        raise refuse("episodes", f"the {split!r} split of {dataset.name} is empty")
    campaign = Campaign.objects.create(
        name=name, slug=slug, dataset=dataset, sources=sources, created_by=created_by,
        protocol=protocol, group_size=group_size, overlap=overlap, target_items=target_items,
        per_rater_limit=per_rater_limit, gold_rate=gold_rate, catch_rate=catch_rate,
        repeat_rate=repeat_rate, **options,
    )
    if any(s["kind"] == "ground_truth" for s in sources):
        # The episode's own listener: nothing to sample, so stored now where it is missing.
        candidates_ground_truth(episodes=episodes)
    plan = sampling_plan(campaign=campaign, episodes=episodes, seed=seed)
    if plan is None:
        return campaign_items_build(campaign=campaign, episodes=episodes, seed=seed)
    return sampling_start(campaign=campaign, plan=plan, seed=seed, user=created_by)


def campaign_clip_ids(campaign: Campaign) -> set[int]:
    """Every clip the campaign's items need: candidates' and speakers'."""
    ids = set(ItemMember.objects.filter(item__campaign=campaign).values_list("clip_id", flat=True))
    ids |= set(Item.objects.filter(campaign=campaign).values_list("speaker_clip_id", flat=True))
    return ids


def campaign_clip_progress(campaign: Campaign) -> tuple[int, int, int]:
    """(succeeded, failed, total) over the clips the campaign's items need."""
    statuses = list(Clip.objects.filter(pk__in=campaign_clip_ids(campaign))
                    .values_list("status", flat=True))
    return (statuses.count(ClipStatus.SUCCEEDED), statuses.count(ClipStatus.FAILED),
            len(statuses))


# Where each status may go: a draft starts or is dropped, a running campaign pauses, resumes
# or ends; closed is for good.
TRANSITIONS: dict[str, frozenset[str]] = {
    CampaignStatus.DRAFT: frozenset({CampaignStatus.ACTIVE, CampaignStatus.CLOSED}),
    CampaignStatus.ACTIVE: frozenset({CampaignStatus.PAUSED, CampaignStatus.CLOSED}),
    CampaignStatus.PAUSED: frozenset({CampaignStatus.ACTIVE, CampaignStatus.CLOSED}),
    CampaignStatus.CLOSED: frozenset(),
}


def _locked(campaign: Campaign) -> Campaign:
    """The campaign's row, read again and locked against other status changes and edits (NO
    KEY: storing a lease or a judgment that refers to it is not held up)."""
    row = Campaign.objects.select_for_update(no_key=True).filter(pk=campaign.pk).first()
    if row is None:
        raise CampaignError(f"campaign {campaign.slug!r} no longer exists")
    return row


def campaign_start_refusal(campaign: Campaign) -> str:
    """Why the campaign cannot serve raters yet, or '' if it can: its candidates are being
    sampled (or failed to be), it has no items, or clips are not rendered."""
    sampling = CampaignSampling.objects.filter(campaign=campaign).first()
    if sampling is not None and sampling.status == SamplingStatus.SAMPLING:
        jobs = list(sampling.jobs.values_list("status", flat=True))
        return (f"candidates are still being sampled ({jobs.count(JobStatus.SUCCEEDED)} of "
                f"{len(jobs)} jobs done); the items are built when they are")
    if sampling is not None and sampling.status == SamplingStatus.FAILED:
        return f"{sampling.error} (retry it on the campaign's page)"
    done, failed, total = campaign_clip_progress(campaign)
    if total == 0:
        return "the campaign has no items"
    if done < total:
        return (f"{total - done} of {total} clips are not rendered yet"
                + (f" ({failed} failed; retry them in the admin)" if failed else ""))
    return ""


@transaction.atomic
def campaign_set_status(*, campaign: Campaign, status: str) -> Campaign:
    """Start, pause, resume or close a campaign (``TRANSITIONS``). It starts only when every
    clip is rendered; closing it ends its live leases. Asking for the status it has already
    changes nothing."""
    if status not in CampaignStatus.values:
        raise refuse("status", f"expected one of {', '.join(CampaignStatus.values)}")
    campaign = _locked(campaign)
    if status == campaign.status:
        return campaign
    if campaign.status == CampaignStatus.CLOSED:
        raise refuse("status", "a closed campaign stays closed")
    if status not in TRANSITIONS[campaign.status]:
        allowed = " or ".join(sorted(TRANSITIONS[campaign.status]))
        raise refuse("status", f"a campaign that is {campaign.status} can become {allowed}, "
                               f"not {status}")
    if status == CampaignStatus.ACTIVE and (reason := campaign_start_refusal(campaign)):
        raise refuse("status", reason)
    before, campaign.status = campaign.status, status
    campaign.save(update_fields=["status"])
    ended = 0
    if status == CampaignStatus.CLOSED:
        # In the same transaction: a heartbeat or an answer that waits for a lease's lock finds
        # it ended. (Pausing leaves them to run out: heartbeats no longer extend them.)
        ended = campaign_leases_end(campaign_id=campaign.pk)
    logger.info("campaign %s: %s -> %s (%d live leases ended)", campaign.slug, before, status,
                ended)
    return campaign


def _user_ids(value: object) -> set[int]:
    """The ids of ``researchers``: users or their ids, every one an existing account."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise refuse("researchers", "must be a list of users")
    ids: set[int] = set()
    for user in value:
        if isinstance(user, AbstractBaseUser):
            ids.add(user.pk)
        elif isinstance(user, int) and not isinstance(user, bool):
            ids.add(user)
        else:
            raise refuse("researchers", f"must be a list of users, got {user!r}")
    if get_user_model().objects.filter(pk__in=ids).count() != len(ids):
        raise refuse("researchers", "names a user that does not exist")
    return ids


def _differs(campaign: Campaign, field: str, value: object) -> bool:
    if field == "researchers":
        return value != set(campaign.researchers.values_list("pk", flat=True))
    current = getattr(campaign, field)
    if isinstance(current, bool) != isinstance(value, bool):
        return True  # 1 == True in Python; as settings they are different values
    return current != value


def campaign_update_check(*, campaign: Campaign, fields: dict[str, object]
                          ) -> dict[str, object]:
    """The entries of ``fields`` that differ from the campaign's settings, once each is known
    to be allowed to change now and its new value allowed; ``CampaignError`` names the first
    that is not. ``campaign_update`` calls it under the row lock; forms call it first, to show
    a refusal by its field."""
    for key in fields:
        if key in FIXED or key not in SETTINGS:
            raise refuse(key, FIXED.get(key, "is not a campaign setting"))
    if "researchers" in fields:
        fields = {**fields, "researchers": _user_ids(fields["researchers"])}
    changes = {k: v for k, v in fields.items() if _differs(campaign, k, v)}
    if not changes:
        return {}
    has_items = any(k in BUILD_FIELDS for k in changes) and campaign.items.exists()
    for key in changes:
        reason = field_fixed_reason(key, status=campaign.status, has_items=has_items)
        if reason:
            raise refuse(key, reason)
    design = [k for k in changes if k in BUILD_FIELDS]
    if design and CampaignSampling.objects.filter(campaign=campaign).exists():
        raise refuse(design[0], "candidates are sampled for the campaign's items, which are "
                                "built from it, so it is fixed (make a new campaign for "
                                "another design)")
    columns = [k for k in changes if k != "researchers"]
    current = {f: getattr(campaign, f) for f in SETTINGS if f != "researchers"}
    settings_check({**current, **changes}, changed=columns)
    for source in changes.get("sources", []):
        source_filter(source, campaign.dataset)
    return changes


@transaction.atomic
def campaign_update(*, campaign: Campaign, **fields: object) -> Campaign:
    """Change a campaign's settings (``campaign_settings.SETTINGS``); ``researchers`` is the
    full list of users it is shared with (users or ids). Only values that differ are written,
    and none if any is refused (``CampaignError``). Status changes go through
    ``campaign_set_status``."""
    # The row lock orders this after a concurrent status change or edit, so the rules judge
    # the status and the items the change is written against.
    campaign = _locked(campaign)
    changes = campaign_update_check(campaign=campaign, fields=fields)
    columns = {k: v for k, v in changes.items() if k != "researchers"}
    for key, value in columns.items():
        setattr(campaign, key, value)
    if columns:
        campaign.save(update_fields=list(columns))
    if "researchers" in changes:
        campaign.researchers.set(changes["researchers"])
    if changes:
        logger.info("campaign %s: changed %s", campaign.slug, ", ".join(sorted(changes)))
    return campaign


def campaign_delete_check(*, campaign: Campaign) -> None:
    """``CampaignInUse`` if the campaign may not be deleted now: its judgments are kept for good
    (close it instead), and one serving raters, or with items on raters' screens, is paused
    first and deleted when their leases have run out."""
    if campaign.status == CampaignStatus.ACTIVE:
        raise CampaignInUse("status: the campaign is serving raters; pause or close it before "
                            "deleting it", field="status", code="active")
    n = Judgment.objects.filter(campaign=campaign).count()
    if n:
        raise CampaignInUse(f"judgments: the campaign has {n}; judgments are kept for good, so "
                            "close the campaign instead of deleting it", field="judgments",
                            code="has_judgments")
    live = Assignment.objects.filter(campaign=campaign, status=AssignmentStatus.ACTIVE,
                                     expires_at__gt=timezone.now()).count()
    if live:
        raise CampaignInUse(f"assignments: {live} items are on raters' screens; delete the "
                            "campaign when their leases have run out (at most "
                            f"{campaign.lease_seconds} s)", field="assignments",
                            code="live_leases")


@transaction.atomic
def campaign_delete(*, campaign: Campaign) -> None:
    """Delete a campaign with its items, invites and enrolments, if ``campaign_delete_check``
    allows. Deleting one that is gone already does nothing."""
    # FOR UPDATE, not NO KEY UPDATE: it conflicts with the key-share lock that storing a lease
    # or a judgment takes on the campaign row, so none lands between the check and the delete.
    row = Campaign.objects.select_for_update().filter(pk=campaign.pk).first()
    if row is None:
        return
    campaign_delete_check(campaign=row)
    try:
        row.delete()
    except ProtectedError:
        # Rows of a kind the check does not know protect it; the delete is refused whole.
        raise CampaignInUse("campaign: other records still refer to it; close it instead",
                            code="protected") from None
    logger.info("campaign %s deleted", campaign.slug)


def invite_create(*, campaign: Campaign, created_by=None, label: str = "",
                  max_uses: int | None = None, expires_at: datetime | None = None) -> Invite:
    if max_uses is not None and not (
            isinstance(max_uses, int) and not isinstance(max_uses, bool)
            and 1 <= max_uses <= INT_MAX):
        raise refuse("max_uses", f"must be a whole number 1..{INT_MAX} (or none: unlimited), "
                                 f"got {max_uses!r}")
    if expires_at is not None and expires_at <= timezone.now():
        raise refuse("expires_at", "must be in the future")
    return Invite.objects.create(campaign=campaign, created_by=created_by, label=label,
                                 max_uses=max_uses, expires_at=expires_at)
