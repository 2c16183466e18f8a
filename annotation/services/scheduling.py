"""Serving items: leases with a heartbeat, probes mixed in, the active order, expiry.

Invariant: for every regular item, judgments + live leases <= the campaign's overlap. Leasing
locks the item row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so raters never queue behind each
other) and re-counts its live leases in a fresh statement while holding the lock; a submission
increments the item's judgment count under the same lock. A lease is live while ``expires_at``
is in the future; every heartbeat moves it ``lease_seconds`` ahead, so an abandoned page loses
its items within that time (no fixed day-long locks).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from annotation.models import (
    Assignment,
    AssignmentStatus,
    Campaign,
    CampaignStatus,
    Enrollment,
    Item,
    Probe,
)

logger = logging.getLogger(__name__)

PREFETCH = 2  # live leases per rater: the item on screen and the one being preloaded
_PICK_TRIES = 4  # items tried when a locked candidate turns out to be full
_rng = random.SystemRandom()


class LeaseError(Exception):
    """A request about a lease that cannot be granted; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class NextResult:
    enrollment: Enrollment
    assignments: list[Assignment] = field(default_factory=list)
    state: str = "rating"  # rating | finished | blocked | paused | consent
    done: int = 0
    quota: int = 0


def _live(q: Q | None = None) -> Q:
    now = timezone.now()
    cond = Q(status=AssignmentStatus.ACTIVE, expires_at__gt=now)
    return cond & q if q is not None else cond


def enrollment_for(*, rater, campaign_slug: str) -> Enrollment:
    enrollment = (Enrollment.objects.select_related("campaign")
                  .filter(campaign__slug=campaign_slug, rater=rater).first())
    if enrollment is None:
        raise LeaseError(404, "not_enrolled", "you are not enrolled in this campaign; open the "
                                              "invite link you were given")
    return enrollment


def assignments_next(*, rater, campaign_slug: str) -> NextResult:
    """The rater's live leases in the campaign, topped up to ``PREFETCH``.

    Two tabs of the same rater get the same leases; a rater who closed the page and comes back
    within the lease time finds the item they were on.
    """
    enrollment = enrollment_for(rater=rater, campaign_slug=campaign_slug)
    campaign = enrollment.campaign
    result = NextResult(enrollment=enrollment, done=enrollment.n_judgments,
                        quota=campaign.per_rater_limit)
    if campaign.consent_text and enrollment.consented_at is None:
        result.state = "consent"
        return result
    if enrollment.blocked:
        result.state = "blocked"
        return result
    if campaign.status != CampaignStatus.ACTIVE:
        result.state = "paused" if campaign.status != CampaignStatus.CLOSED else "finished"
        return result
    live = list(Assignment.objects.filter(_live(Q(rater=rater, campaign=campaign)))
                .order_by("leased_at", "id"))
    room = campaign.per_rater_limit - enrollment.n_judgments - len(live)
    while len(live) < PREFETCH and room > 0:
        new = _lease_one(campaign, rater, regular_only=not live and enrollment.n_judgments == 0)
        if new is None:
            break
        live.append(new)
        room -= 1
    result.assignments = live
    if not live:
        result.state = "finished"
        if enrollment.finished_at is None:
            Enrollment.objects.filter(pk=enrollment.pk, finished_at=None).update(
                finished_at=timezone.now())
    return result


def _lease_one(campaign: Campaign, rater, *, regular_only: bool) -> Assignment | None:
    """One new lease: a probe at the campaign's rates, otherwise the next regular item.

    A rater's first item is always a regular one (a probe first would tell them what probes
    look like). Probes are served only while regular items remain.
    """
    draw = _rng.random()
    probe = None
    if not regular_only:
        if draw < campaign.gold_rate:
            probe = Probe.GOLD
        elif draw < campaign.gold_rate + campaign.catch_rate:
            probe = Probe.CATCH
        elif draw < campaign.gold_rate + campaign.catch_rate + campaign.repeat_rate:
            probe = Probe.REPEAT
    for _ in range(3):  # a unique-constraint race with the rater's other tab: try again
        try:
            with transaction.atomic():
                regular = _lease_regular(campaign, rater)
                if regular is None or probe is None:
                    return regular
                # A probe takes the regular item's place: release it again within this
                # transaction, so it goes back to the pool untouched.
                probed = _lease_probe(campaign, rater, probe)
                if probed is None:
                    return regular
                regular.delete()
                return probed
        except IntegrityError:
            continue
    return None


def _new_lease(campaign: Campaign, item: Item, rater, *, probe: str = Probe.NONE,
               order: list[int] | None = None, repeat_of: Assignment | None = None
               ) -> Assignment:
    now = timezone.now()
    if order is None:
        order = list(range(item.size))
        _rng.shuffle(order)
    return Assignment.objects.create(
        campaign=campaign, item=item, rater=rater, probe=probe, repeat_of=repeat_of,
        order=order, leased_at=now, heartbeat_at=now,
        expires_at=now + timedelta(seconds=campaign.lease_seconds),
    )


def _lease_regular(campaign: Campaign, rater) -> Assignment | None:
    mine = Assignment.objects.filter(
        item=OuterRef("pk"), rater=rater,
        status__in=[AssignmentStatus.ACTIVE, AssignmentStatus.SUBMITTED],
    ).exclude(probe=Probe.REPEAT)
    open_items = (
        Item.objects.filter(campaign=campaign, probe=Probe.NONE,
                            n_judgments__lt=campaign.overlap)
        .exclude(Exists(mine))
    )
    if campaign.active_order:
        open_items = open_items.order_by("-priority", "n_judgments", "shuffle")
    else:
        open_items = open_items.order_by("n_judgments", "shuffle")
    skip = connection.features.has_select_for_update_skip_locked
    seen: list[int] = []
    for _ in range(_PICK_TRIES):
        qs = open_items.exclude(pk__in=seen) if seen else open_items
        item = qs.select_for_update(skip_locked=skip, of=("self",)).first()
        if item is None:
            return None
        # Re-count in a new statement while holding the item's lock: leases granted by
        # transactions that committed after this one's first statement are seen here.
        fresh = Item.objects.filter(pk=item.pk).values_list("n_judgments", flat=True).first()
        live = Assignment.objects.filter(_live(Q(item_id=item.pk))).exclude(
            probe=Probe.REPEAT).count()
        if fresh is not None and fresh + live < campaign.overlap:
            return _new_lease(campaign, item, rater)
        seen.append(item.pk)
    return None


def _lease_probe(campaign: Campaign, rater, probe: str) -> Assignment | None:
    if probe == Probe.REPEAT:
        # One of the rater's own answered regular items, not repeated yet, sides swapped.
        repeated = Assignment.objects.filter(rater=rater, campaign=campaign,
                                             probe=Probe.REPEAT).values("repeat_of_id")
        earlier = (Assignment.objects
                   .filter(rater=rater, campaign=campaign, probe=Probe.NONE,
                           status=AssignmentStatus.SUBMITTED)
                   .exclude(pk__in=repeated).select_related("item").order_by("?").first())
        if earlier is None:
            return None
        return _new_lease(campaign, earlier.item, rater, probe=Probe.REPEAT,
                          order=list(reversed(earlier.order)), repeat_of=earlier)
    seen = Assignment.objects.filter(item=OuterRef("pk"), rater=rater)
    item = (Item.objects.filter(campaign=campaign, probe=probe).exclude(Exists(seen))
            .order_by("?").first())
    if item is None:
        return None
    return _new_lease(campaign, item, rater, probe=probe)


def assignment_heartbeat(*, rater, token: str) -> datetime:
    """Keep the rater's leases in this campaign alive; returns the new expiry."""
    assignment = _own_live_assignment(rater=rater, token=token)
    now = timezone.now()
    expires = now + timedelta(seconds=assignment.campaign.lease_seconds)
    Assignment.objects.filter(_live(Q(rater=rater, campaign_id=assignment.campaign_id))).update(
        heartbeat_at=now, expires_at=expires)
    return expires


def _own_live_assignment(*, rater, token: str, lock: bool = False) -> Assignment:
    qs = Assignment.objects.select_related("campaign", "item")
    if lock:
        qs = qs.select_for_update(of=("self",))
    assignment = qs.filter(token=token).first()
    if assignment is None:
        raise LeaseError(404, "no_such_assignment", "no such assignment")
    if assignment.rater_id != rater.pk:
        raise LeaseError(403, "not_your_lease", "this item is leased to someone else")
    if assignment.status == AssignmentStatus.SUBMITTED:
        raise LeaseError(409, "already_answered", "this item has already been answered")
    if assignment.status == AssignmentStatus.EXPIRED or assignment.expires_at <= timezone.now():
        raise LeaseError(410, "lease_expired", "the lease on this item expired; load the next "
                                               "item")
    return assignment


def assignments_expire(*, now: datetime | None = None) -> int:
    """Mark leases whose time ran out as expired (their items are already servable again)."""
    now = now or timezone.now()
    n = Assignment.objects.filter(status=AssignmentStatus.ACTIVE, expires_at__lte=now).update(
        status=AssignmentStatus.EXPIRED)
    if n:
        logger.info("%d abandoned leases expired", n)
    return n


