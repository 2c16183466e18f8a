"""Serving items: leases with a heartbeat, probes mixed in, the active order, expiry.

Invariant: for every regular item, judgments + live leases <= the campaign's overlap. Leasing
picks the first item in the serving order whose judgments and live leases leave room (so that
items held by other raters' leases are passed over in the same statement, however many raters
there are), locks its row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so raters never queue
behind each other) and re-counts its live leases in a fresh statement while holding the lock; a
submission increments the item's judgment count under the same lock. A lease is live while
``expires_at`` is in the future; every heartbeat moves it ``lease_seconds`` ahead, so an
abandoned page loses its items within that time (no fixed day-long locks).
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
                # A probe takes a regular item's place, so it is served only while the rater
                # could have had a regular one.
                if probe is not None and _pick(campaign, rater, lock=False) is not None:
                    probed = _lease_probe(campaign, rater, probe)
                    if probed is not None:
                        return probed
                return _lease_regular(campaign, rater)
        except IntegrityError:
            continue
    return None


def _new_lease(campaign: Campaign, item_id: int, size: int, rater, *,
               probe: str = Probe.NONE, order: list[int] | None = None,
               repeat_of: Assignment | None = None) -> Assignment:
    now = timezone.now()
    if order is None:
        order = list(range(size))
        _rng.shuffle(order)
    return Assignment.objects.create(
        campaign=campaign, item_id=item_id, rater=rater, probe=probe, repeat_of=repeat_of,
        order=order, leased_at=now, heartbeat_at=now,
        expires_at=now + timedelta(seconds=campaign.lease_seconds),
    )


# The two statements that pick an item, in SQL rather than built by the ORM: they are the
# hottest of the rating path, and building them took longer than running them. Portable
# (PostgreSQL and SQLite); every value is a parameter.
_PICK = (
    "SELECT i.id, i.size FROM annotation_item i "
    "WHERE i.campaign_id = %s AND i.probe = %s AND i.n_judgments < %s "
    "AND NOT EXISTS (SELECT 1 FROM annotation_assignment m WHERE m.item_id = i.id "
    "AND m.rater_id = %s AND m.status IN (%s, %s) AND m.probe <> %s) "
    # live leases, hidden repeats aside (they are not part of the overlap)
    "AND (SELECT COUNT(*) FROM annotation_assignment l WHERE l.item_id = i.id "
    "AND l.status = %s AND l.expires_at > %s AND l.probe <> %s) < %s - i.n_judgments"
)
_ROOM = (
    "SELECT i.n_judgments + (SELECT COUNT(*) FROM annotation_assignment l "
    "WHERE l.item_id = i.id AND l.status = %s AND l.expires_at > %s AND l.probe <> %s) "
    "FROM annotation_item i WHERE i.id = %s"
)
_ORDER = {True: " ORDER BY i.priority DESC, i.n_judgments, i.shuffle LIMIT 1",
          False: " ORDER BY i.n_judgments, i.shuffle LIMIT 1"}  # by campaign.active_order


def _live_params() -> list:
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    return [AssignmentStatus.ACTIVE, now, Probe.REPEAT]


def _pick(campaign: Campaign, rater, *, lock: bool, skip: list[int] | None = None
          ) -> tuple[int, int] | None:
    """(id, size) of the regular item to serve this rater next, in the serving order: one
    they have not seen, whose judgments and live leases (as of this statement's snapshot)
    leave room under the overlap. With ``lock`` its row is locked, skipping rows that other
    leasers hold, so raters never queue behind each other."""
    sql = _PICK
    params = [campaign.pk, Probe.NONE, campaign.overlap, rater.pk, AssignmentStatus.ACTIVE,
              AssignmentStatus.SUBMITTED, Probe.REPEAT, *_live_params(), campaign.overlap]
    if skip:
        sql += " AND i.id NOT IN (" + ", ".join(["%s"] * len(skip)) + ")"
        params += skip
    sql += _ORDER[bool(campaign.active_order)]
    if lock and connection.features.has_select_for_update:
        sql += " FOR UPDATE"
        if connection.features.has_select_for_update_skip_locked:
            sql += " SKIP LOCKED"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return (row[0], row[1]) if row else None


def _room(campaign: Campaign, item_id: int) -> bool:
    """Whether the item's judgments and live leases leave room under the overlap, counted in
    a statement of its own (a fresh snapshot)."""
    with connection.cursor() as cursor:
        cursor.execute(_ROOM, [*_live_params(), item_id])
        row = cursor.fetchone()
    return row is not None and row[0] < campaign.overlap


def _lease_regular(campaign: Campaign, rater) -> Assignment | None:
    seen: list[int] = []
    for _ in range(_PICK_TRIES):
        picked = _pick(campaign, rater, lock=True, skip=seen)
        if picked is None:
            return None
        # Re-count in a new statement while holding the item's lock: leases granted by
        # transactions that committed after the pick's snapshot are seen here (the pick
        # counted live leases too, so it is rarely wrong).
        if _room(campaign, picked[0]):
            return _new_lease(campaign, picked[0], picked[1], rater)
        seen.append(picked[0])
    return None


def _lease_probe(campaign: Campaign, rater, probe: str) -> Assignment | None:
    if probe == Probe.REPEAT:
        # One of the rater's own answered regular items, not repeated yet, sides swapped.
        repeated = Assignment.objects.filter(rater=rater, campaign=campaign,
                                             probe=Probe.REPEAT).values("repeat_of_id")
        earlier = (Assignment.objects
                   .filter(rater=rater, campaign=campaign, probe=Probe.NONE,
                           status=AssignmentStatus.SUBMITTED)
                   .exclude(pk__in=repeated).order_by("?").first())
        if earlier is None:
            return None
        return _new_lease(campaign, earlier.item_id, len(earlier.order), rater,
                          probe=Probe.REPEAT,
                          order=list(reversed(earlier.order)), repeat_of=earlier)
    seen = Assignment.objects.filter(item=OuterRef("pk"), rater=rater)
    item = (Item.objects.filter(campaign=campaign, probe=probe).exclude(Exists(seen))
            .only("pk", "size").order_by("?").first())
    if item is None:
        return None
    return _new_lease(campaign, item.pk, item.size, rater, probe=probe)


def assignment_heartbeat(*, rater, token: str) -> datetime:
    """Keep the rater's leases in this campaign alive; returns the new expiry."""
    row = (Assignment.objects.filter(token=token)
           .values_list("rater_id", "status", "expires_at", "campaign_id",
                        "campaign__lease_seconds").first())
    if row is None:
        raise LeaseError(404, "no_such_assignment", "no such assignment")
    rater_id, status, expires_at, campaign_id, lease_seconds = row
    _check_lease(rater, rater_id, status, expires_at)
    now = timezone.now()
    expires = now + timedelta(seconds=lease_seconds)
    Assignment.objects.filter(_live(Q(rater=rater, campaign_id=campaign_id))).update(
        heartbeat_at=now, expires_at=expires)
    return expires


def _check_lease(rater, rater_id: int, status: str, expires_at: datetime) -> None:
    if rater_id != rater.pk:
        raise LeaseError(403, "not_your_lease", "this item is leased to someone else")
    if status == AssignmentStatus.SUBMITTED:
        raise LeaseError(409, "already_answered", "this item has already been answered")
    if status == AssignmentStatus.EXPIRED or expires_at <= timezone.now():
        raise LeaseError(410, "lease_expired", "the lease on this item expired; load the next "
                                               "item")


def _own_live_assignment(*, rater, token: str, lock: bool = False) -> Assignment:
    qs = Assignment.objects.select_related("campaign")
    if lock:
        qs = qs.select_for_update(of=("self",))
    assignment = qs.filter(token=token).first()
    if assignment is None:
        raise LeaseError(404, "no_such_assignment", "no such assignment")
    _check_lease(rater, assignment.rater_id, assignment.status, assignment.expires_at)
    return assignment


def assignments_expire(*, now: datetime | None = None) -> int:
    """Mark leases whose time ran out as expired (their items are already servable again)."""
    now = now or timezone.now()
    n = Assignment.objects.filter(status=AssignmentStatus.ACTIVE, expires_at__lte=now).update(
        status=AssignmentStatus.EXPIRED)
    if n:
        logger.info("%d abandoned leases expired", n)
    return n


