"""Serving items: leases with a heartbeat, probes mixed in, the active order, expiry.

Invariant: for every regular item, judgments + live leases <= the campaign's overlap. Leasing
picks the first item in the serving order whose judgments and live leases leave room (so that
items held by other raters' leases are passed over in the same statement, however many raters
there are), locks its row (``FOR NO KEY UPDATE SKIP LOCKED`` on PostgreSQL, so raters never queue
behind each other) and re-counts its live leases in a fresh statement while holding the lock; a
submission increments the item's judgment count under the same lock. A lease is live while
``expires_at`` is in the future; every heartbeat moves it ``lease_seconds`` ahead, so an
abandoned page loses its items within that time (no fixed day-long locks), but never past
``LEASE_MAX_AGE_S`` after it was granted, so a page that heartbeats and never answers loses them
too (``rules.lease_expiry``).

A rater holds at most ``PREFETCH`` live leases. One whose leases keep ending unanswered is given
no new item for a while (``rules.cool_down_left``, ``LEASE_LAPSES_BEFORE_COOL_DOWN``,
``LEASE_COOL_DOWN_S``); one who holds nothing after a top-up is told why (``rules.idle_state``):
finished, cooling down, or waiting while the items left are held by others.

Two paths do this work: on PostgreSQL, the functions in ``annotation/sql`` (one call for next
and heartbeat, two for an answer: its lease's context, then the store; a round trip there costs
more than the statements); elsewhere, and with
``RATING_DB_FUNCTIONS`` off, the portable statements below, step by step in the same order. Both
ask ``annotation.rules`` for every decision (whether a rater is served, the probe kinds, the lease
checks) and read rows by column name.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from annotation import rules
from annotation.models import (
    Assignment,
    AssignmentStatus,
    Enrollment,
    Item,
    Probe,
)
from annotation.rules import LeaseError, refusal

__all__ = ["LeaseError", "NextResult", "Seat", "assignment_heartbeat", "assignments_expire",
           "assignments_next", "campaign_leases_end", "enrollment_for", "rater_leases_end",
           "seat_top_up"]

logger = logging.getLogger(__name__)

PREFETCH = 2  # live leases per rater: the item on screen and the one being preloaded
_PICK_TRIES = 4  # items tried when a locked candidate turns out to be full
_rng = random.SystemRandom()


def db_functions() -> bool:
    """Whether the rating calls use the database functions in ``annotation/sql`` (PostgreSQL,
    unless ``RATING_DB_FUNCTIONS`` is off) instead of the portable statements."""
    return connection.vendor == "postgresql" and settings.RATING_DB_FUNCTIONS


def fetch_row(cursor) -> dict | None:
    """The statement's first row by column name (a column added to a function's result moves
    no other field)."""
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([c[0] for c in cursor.description], row))


@dataclass
class Seat:
    """A rater's place in one campaign: the enrolment's counters and the campaign's rules that
    serving needs, read in one statement (the rating calls are the hottest path of the site).
    The field names are the column names of ``annotation_seat`` and ``SEAT_COLUMNS``."""

    enrollment_id: int
    rater_id: int
    n_judgments: int
    probes_failed: int
    blocked: bool
    excluded: bool
    consented: bool
    finished: bool
    campaign_id: int
    campaign_status: str
    needs_consent: bool
    per_rater_limit: int
    overlap: int
    active_order: bool
    gold_rate: float
    catch_rate: float
    repeat_rate: float
    lease_seconds: int
    warn_after: int
    block_after: int
    completion_code: str
    completion_url: str
    rater_active: bool  # the account may still sign in (admins can switch it off)
    # The rater's lapses (leases that ended unanswered, no answer since) and when the latest
    # ended: read by ``annotation_seat`` and ``_SEAT_BY_SLUG`` only. A read made for an answer
    # leaves them out: an answer ends any cool-down.
    lapses: int = 0
    lapsed_at: datetime | None = None

    @property
    def rates(self) -> rules.ProbeRates:
        return rules.ProbeRates(self.gold_rate, self.catch_rate, self.repeat_rate)

    @property
    def state(self) -> str:
        """Why no items are served to the seat, or ``rating`` (raises if the account is off)."""
        return rules.serving_state(
            rater_active=self.rater_active, needs_consent=self.needs_consent,
            consented=self.consented, blocked=self.blocked, excluded=self.excluded,
            campaign_status=self.campaign_status)


_BOOLEANS = {f.name for f in fields(Seat) if f.type == "bool"}
_OPTIONAL = {f.name for f in fields(Seat) if f.default is not MISSING}


def seat_from(row: dict) -> Seat:
    """The seat in a row holding its columns by name (others ignored; those with a default may
    be missing); SQLite's booleans are integers, its times text."""
    seat = Seat(**{f.name: bool(row[f.name]) if f.name in _BOOLEANS else row[f.name]
                   for f in fields(Seat) if f.name in row or f.name not in _OPTIONAL})
    if seat.lapsed_at is not None:
        seat.lapsed_at = db_datetime(seat.lapsed_at)
    return seat


# The seat's columns for the portable statements (``annotation_seat`` reads the same).
SEAT_COLUMNS = (
    "e.id AS enrollment_id, e.rater_id AS rater_id, e.n_judgments AS n_judgments, "
    "e.probes_failed AS probes_failed, e.blocked AS blocked, e.excluded AS excluded, "
    "e.consented_at IS NOT NULL AS consented, e.finished_at IS NOT NULL AS finished, "
    "c.id AS campaign_id, c.status AS campaign_status, "
    "c.consent_text <> '' AS needs_consent, c.per_rater_limit AS per_rater_limit, "
    "c.overlap AS overlap, c.active_order AS active_order, c.gold_rate AS gold_rate, "
    "c.catch_rate AS catch_rate, c.repeat_rate AS repeat_rate, "
    "c.lease_seconds AS lease_seconds, c.warn_after AS warn_after, "
    "c.block_after AS block_after, c.completion_code AS completion_code, "
    "c.completion_url AS completion_url, u.is_active AS rater_active"
)

# The rater's lapses in the campaign (``annotation_seat`` reads the same): leases that ended
# unanswered, with no answer of theirs since. Parameters: the submitted status, now.
_LAPSED = (
    "FROM annotation_assignment x WHERE x.rater_id = e.rater_id "
    "AND x.campaign_id = e.campaign_id AND x.status <> %s AND x.expires_at <= %s "
    "AND NOT EXISTS (SELECT 1 FROM annotation_judgment j WHERE j.rater_id = e.rater_id "
    "AND j.campaign_id = e.campaign_id AND j.created_at >= x.expires_at)"
)
_SEAT_BY_SLUG = (  # built from constants only; every value is a parameter
    "SELECT " + SEAT_COLUMNS + ", (SELECT COUNT(*) " + _LAPSED + ") AS lapses, "  # noqa: S608
    "(SELECT MAX(x.expires_at) " + _LAPSED + ") AS lapsed_at FROM annotation_enrollment e "
    "JOIN annotation_campaign c ON c.id = e.campaign_id JOIN auth_user u ON u.id = e.rater_id "
    "WHERE c.slug = %s AND e.rater_id = %s"
)


@dataclass
class NextResult:
    seat: Seat
    assignments: list[Assignment] = field(default_factory=list)
    # rating | finished | blocked | paused | consent (rules.serving_state) | waiting |
    # cool_down (rules.idle_state)
    state: str = "rating"
    retry_after: int = 0  # waiting, cool_down: seconds after which asking again may serve

    @property
    def done(self) -> int:
        return self.seat.n_judgments

    @property
    def quota(self) -> int:
        return self.seat.per_rater_limit

    @property
    def warned(self) -> bool:
        """Failed enough probes to be told to watch more carefully (but not blocked)."""
        return rules.warned(probes_failed=self.seat.probes_failed,
                            warn_after=self.seat.warn_after, blocked=self.seat.blocked)


def enrollment_for(*, rater, campaign_slug: str) -> Enrollment:
    enrollment = (Enrollment.objects.select_related("campaign")
                  .filter(campaign__slug=campaign_slug, rater=rater).first())
    if enrollment is None:
        raise refusal("not_enrolled")
    return enrollment


def db_json(value):
    """A JSON value read by a raw statement (Django has psycopg hand ``jsonb`` over as text)."""
    return json.loads(value) if isinstance(value, str) else value


def db_datetime(value) -> datetime:
    """A datetime read by a raw statement: aware already on PostgreSQL, text on SQLite."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def db_uuid(value: uuid.UUID | str):
    """A UUID as the database stores it (native on PostgreSQL, 32 hex digits on SQLite)."""
    value = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    return value if connection.features.has_native_uuid_field else value.hex


def db_now(now: datetime | None = None):
    return connection.ops.adapt_datetimefield_value(now or timezone.now())


_LIVE_LEASES = (
    'SELECT a.id, a.token, a.item_id, a.probe, a.repeat_of_id, a."order", a.leased_at, '
    "a.expires_at FROM annotation_assignment a WHERE a.rater_id = %s AND a.campaign_id = %s "
    "AND a.status = %s AND a.expires_at > %s ORDER BY a.leased_at, a.id"
)


def leases_from(seat: Seat, rows: list[dict]) -> list[Assignment]:
    """Live leases from rows holding the columns of ``annotation_top_up``'s result by name."""
    return [Assignment(id=x["id"], token=uuid.UUID(str(x["token"])), campaign_id=seat.campaign_id,
                       item_id=x["item_id"], rater_id=seat.rater_id, probe=x["probe"],
                       repeat_of_id=x["repeat_of_id"], order=db_json(x["order"]),
                       status=AssignmentStatus.ACTIVE, leased_at=db_datetime(x["leased_at"]),
                       heartbeat_at=db_datetime(x["leased_at"]),
                       expires_at=db_datetime(x["expires_at"]))
            for x in rows]


def _fetch_all(cursor) -> list[dict]:
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _live_leases(seat: Seat) -> list[Assignment]:
    with connection.cursor() as cursor:
        cursor.execute(_LIVE_LEASES, [seat.rater_id, seat.campaign_id, AssignmentStatus.ACTIVE,
                                      db_now()])
        return leases_from(seat, _fetch_all(cursor))


def new_lease_expiry(seat: Seat, now: datetime) -> datetime:
    """When a lease granted now expires (``lease_seconds``, at most ``LEASE_MAX_AGE_S``)."""
    return rules.lease_expiry(now=now, leased_at=now, lease_seconds=seat.lease_seconds,
                              max_age_s=settings.LEASE_MAX_AGE_S)


def _top_up_in_db(seat: Seat, probes: list[str], target: int) -> list[Assignment]:
    """Leases up to ``target`` and the live list, in one call; ``probes``: the probe drawn for
    each lease it may grant."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM annotation_top_up(%s, %s, %s, %s, %s, %s, %s, %s, %s)", [
            seat.campaign_id, seat.rater_id, seat.overlap, seat.active_order, target,
            seat.per_rater_limit - seat.n_judgments, now, new_lease_expiry(seat, now), probes])
        return leases_from(seat, _fetch_all(cursor))


def assignments_next(*, rater, campaign_slug: str, campaign_id: int | None = None
                     ) -> NextResult:
    """The rater's live leases in the campaign, topped up to ``PREFETCH``.

    Two tabs of the same rater get the same leases; a rater who closed the page and comes back
    within the lease time finds the item they were on. ``campaign_id``, when given (the rater's
    API token names it), must be the slug's.
    """
    with connection.cursor() as cursor:
        if db_functions():
            cursor.execute("SELECT * FROM annotation_seat(%s, %s)", [campaign_slug, rater.pk])
        else:
            now = db_now()
            cursor.execute(_SEAT_BY_SLUG, [AssignmentStatus.SUBMITTED, now,
                                           AssignmentStatus.SUBMITTED, now, campaign_slug,
                                           rater.pk])
        row = fetch_row(cursor)
    if row is None or (campaign_id is not None and row["campaign_id"] != campaign_id):
        raise refusal("not_enrolled")
    return seat_top_up(seat_from(row))


def probe_numbers() -> list[float]:
    """Uniform numbers, one for each lease a top-up may grant, that ``rules.probe_draws`` turns
    into probe kinds."""
    return [_rng.random() for _ in range(PREFETCH)]


def seat_probe_draws(seat: Seat) -> list[str]:
    """The probe kind for each lease a top-up of this seat may grant."""
    return rules.probe_draws(seat.rates, probe_numbers(), answered=seat.n_judgments)


# A regular item that still has room under the overlap and that the rater has not answered:
# something is left for them, held by others' leases if the top-up found nothing (or by a lease
# of theirs that ran out and is not released yet).
_OPEN_ITEM = (
    "SELECT 1 FROM annotation_item i WHERE i.campaign_id = %s AND i.probe = %s "
    "AND i.n_judgments < %s AND NOT EXISTS (SELECT 1 FROM annotation_assignment m "
    "WHERE m.item_id = i.id AND m.rater_id = %s AND m.status = %s AND m.probe <> %s) LIMIT 1"
)
WAIT_RETRY_S = 60  # a rater waiting for items held by others asks again this often, at most


def _open_item(seat: Seat) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(_OPEN_ITEM, [seat.campaign_id, Probe.NONE, seat.overlap, seat.rater_id,
                                    AssignmentStatus.SUBMITTED, Probe.REPEAT])
        return cursor.fetchone() is not None


def seat_cool_down(seat: Seat) -> int:
    """Seconds before the seat's rater is given a new item again (0: now)."""
    return rules.cool_down_left(lapses=seat.lapses, lapsed_at=seat.lapsed_at,
                                now=timezone.now(),
                                limit=settings.LEASE_LAPSES_BEFORE_COOL_DOWN,
                                cool_down_s=settings.LEASE_COOL_DOWN_S)


def seat_result(seat: Seat, live: list[Assignment], *, cool_down: int = 0) -> NextResult:
    """What the rater gets next, given their live leases after a top-up (``cool_down``: the
    seconds left of theirs, when the top-up granted nothing for it)."""
    result = NextResult(seat=seat, assignments=live)
    if live:
        return result
    quota_left = seat.per_rater_limit - seat.n_judgments
    result.state = rules.idle_state(quota_left=quota_left,
                                    open_items=quota_left > 0 and _open_item(seat),
                                    cool_down_s=cool_down)
    if result.state == "finished":
        if not seat.finished:
            Enrollment.objects.filter(pk=seat.enrollment_id, finished_at=None).update(
                finished_at=timezone.now())
    elif result.state == "cool_down":
        result.retry_after = cool_down
    else:  # waiting: a lease held elsewhere and abandoned runs out within lease_seconds
        result.retry_after = max(1, min(seat.lease_seconds, WAIT_RETRY_S))
    return result


def seat_top_up(seat: Seat) -> NextResult:
    """The seat's live leases topped up to ``PREFETCH`` (or why none are served). In a
    cool-down the rater keeps the leases they hold and is given none."""
    state = seat.state
    if state != "rating":
        return NextResult(seat=seat, state=state)
    cool_down = seat_cool_down(seat)
    target = 0 if cool_down else PREFETCH
    draws = seat_probe_draws(seat)
    if db_functions():
        return seat_result(seat, _top_up_in_db(seat, draws, target), cool_down=cool_down)
    live = _live_leases(seat)
    room = seat.per_rater_limit - seat.n_judgments - len(live)
    for probe in draws:
        if len(live) >= target or room <= 0:
            break
        new = _lease_one(seat, probe=probe)
        if new is None:
            break
        live.append(new)
        room -= 1
    return seat_result(seat, live, cool_down=cool_down)


def seat_stop_serving(seat: Seat, *, block: bool) -> None:
    """The rater is served nothing more in this campaign: their live leases end now and, with
    ``block``, the enrolment is marked blocked."""
    with transaction.atomic():
        if block:
            Enrollment.objects.filter(pk=seat.enrollment_id).update(blocked=True)
        leases_end(rater_id=seat.rater_id, campaign_id=seat.campaign_id)
    if block:
        seat.blocked = True


def leases_end(*, rater_id: int, campaign_id: int) -> int:
    """End a rater's live leases in a campaign now, so that their items go to others at once."""
    return Assignment.objects.filter(rater_id=rater_id, campaign_id=campaign_id,
                                     status=AssignmentStatus.ACTIVE).update(
        status=AssignmentStatus.EXPIRED)


def rater_leases_end(*, rater_id: int) -> int:
    """End every live lease of a rater, in every campaign (the account was switched off): their
    items go to others at once instead of when the leases run out."""
    return Assignment.objects.filter(rater_id=rater_id,
                                     status=AssignmentStatus.ACTIVE).update(
        status=AssignmentStatus.EXPIRED)


def campaign_leases_end(*, campaign_id: int) -> int:
    """End every live lease in a campaign now (it was closed): no heartbeat keeps them, and an
    answer that waited for a lease's lock finds it ended."""
    return Assignment.objects.filter(campaign_id=campaign_id,
                                     status=AssignmentStatus.ACTIVE).update(
        status=AssignmentStatus.EXPIRED)


def _lease_one(seat: Seat, *, probe: str) -> Assignment | None:  # portable path
    """One new lease: the probe asked for ('' for none) if one can be served, otherwise the
    next regular item. Probes are served only while regular items remain."""
    # One transaction holds the picked item's lock until the lease is written; inside a
    # caller's transaction no savepoint of its own (a caller that must outlive a failure here
    # makes one, as ``judgments._top_up`` does).
    with transaction.atomic(savepoint=False):
        # A probe takes a regular item's place, so it is served only while the rater could
        # have had a regular one.
        if probe and _pick(seat, lock=False) is not None:
            probed = _lease_probe(seat, probe)
            if probed is not None:
                return probed
        return _lease_regular(seat)


# The statements that pick an item and lease it, in SQL rather than built by the ORM: they are
# the hottest of the rating path, and building them took longer than running them. Portable
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
_ORDER = {True: " ORDER BY i.priority DESC, i.n_judgments, i.shuffle LIMIT 1",
          False: " ORDER BY i.n_judgments, i.shuffle LIMIT 1"}  # by campaign.active_order
# A new lease, written only if the item still has room: its judgments and live leases are
# counted by this statement, a fresh snapshot taken while the pick's lock is held, so leases
# granted by transactions that committed after the pick's snapshot are seen. A second tab of
# the same rater that leased the item a moment earlier makes it write nothing.
_LEASE = (
    'INSERT INTO annotation_assignment (token, campaign_id, item_id, rater_id, probe, '
    'repeat_of_id, "order", status, leased_at, heartbeat_at, expires_at) '
    "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s WHERE %s OR (SELECT i.n_judgments + "
    "(SELECT COUNT(*) FROM annotation_assignment l WHERE l.item_id = i.id AND l.status = %s "
    "AND l.expires_at > %s AND l.probe <> %s) FROM annotation_item i WHERE i.id = %s) < %s "
    "ON CONFLICT DO NOTHING RETURNING id"
)


def _live_params(now) -> list:
    return [AssignmentStatus.ACTIVE, now, Probe.REPEAT]


def _pick(seat: Seat, *, lock: bool, skip: list[int] | None = None) -> tuple[int, int] | None:
    """(id, size) of the regular item to serve this rater next, in the serving order: one
    they have not seen, whose judgments and live leases (as of this statement's snapshot)
    leave room under the overlap. With ``lock`` its row is locked, skipping rows that other
    leasers hold, so raters never queue behind each other."""
    sql = _PICK
    params = [seat.campaign_id, Probe.NONE, seat.overlap, seat.rater_id, AssignmentStatus.ACTIVE,
              AssignmentStatus.SUBMITTED, Probe.REPEAT, *_live_params(db_now()), seat.overlap]
    if skip:
        sql += " AND i.id NOT IN (" + ", ".join(["%s"] * len(skip)) + ")"
        params += skip
    sql += _ORDER[seat.active_order]
    if lock and connection.features.has_select_for_update:
        # NO KEY: excludes other leasers and a submission's count, not commit-time checks of
        # rows that merely reference the item.
        sql += (" FOR NO KEY UPDATE" if connection.features.has_select_for_no_key_update
                else " FOR UPDATE")
        if connection.features.has_select_for_update_skip_locked:
            sql += " SKIP LOCKED"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return (row[0], row[1]) if row else None


def _new_lease(seat: Seat, item_id: int, size: int, *, probe: str = Probe.NONE,
               order: list[int] | None = None, repeat_of_id: int | None = None
               ) -> Assignment | None:
    """Lease the item to the seat's rater: regular items only while they have room under the
    overlap; None when they have not (or the rater's other tab took it)."""
    now = timezone.now()
    if order is None:
        order = list(range(size))
        _rng.shuffle(order)
    token = uuid.uuid4()
    expires = new_lease_expiry(seat, now)
    now_db = db_now(now)
    with connection.cursor() as cursor:
        cursor.execute(_LEASE, [
            db_uuid(token), seat.campaign_id, item_id, seat.rater_id, probe, repeat_of_id,
            connection.ops.adapt_json_value(order, None), AssignmentStatus.ACTIVE, now_db,
            now_db, db_now(expires),
            probe != Probe.NONE,  # probes are not part of the overlap
            *_live_params(now_db), item_id, seat.overlap,
        ])
        row = cursor.fetchone()
    if row is None:
        return None
    return Assignment(id=row[0], token=token, campaign_id=seat.campaign_id, item_id=item_id,
                      rater_id=seat.rater_id, probe=probe, repeat_of_id=repeat_of_id,
                      order=order, status=AssignmentStatus.ACTIVE, leased_at=now,
                      heartbeat_at=now, expires_at=expires)


def _lease_regular(seat: Seat) -> Assignment | None:
    seen: list[int] = []
    for _ in range(_PICK_TRIES):
        picked = _pick(seat, lock=True, skip=seen)
        if picked is None:
            return None
        new = _new_lease(seat, picked[0], picked[1])
        if new is not None:
            return new
        seen.append(picked[0])
    return None


def _lease_probe(seat: Seat, probe: str) -> Assignment | None:
    if probe == Probe.REPEAT:
        # One of the rater's own answered regular items, not repeated yet, sides swapped.
        mine = Assignment.objects.filter(rater_id=seat.rater_id, campaign_id=seat.campaign_id)
        repeated = mine.filter(probe=Probe.REPEAT).values("repeat_of_id")
        earlier = (mine.filter(probe=Probe.NONE, status=AssignmentStatus.SUBMITTED)
                   .exclude(pk__in=repeated).only("pk", "item_id", "order").order_by("?")
                   .first())
        if earlier is None:
            return None
        return _new_lease(seat, earlier.item_id, len(earlier.order), probe=Probe.REPEAT,
                          order=list(reversed(earlier.order)), repeat_of_id=earlier.pk)
    # A probe item the rater holds or answered (a lease that ran out unanswered does not
    # count, as for regular items); the same conditions as ``one_live_exposure_per_rater``,
    # so PostgreSQL answers it from that index.
    seen = (Assignment.objects.filter(item=OuterRef("pk"), rater_id=seat.rater_id)
            .exclude(probe=Probe.REPEAT).exclude(status=AssignmentStatus.EXPIRED))
    item = (Item.objects.filter(campaign_id=seat.campaign_id, probe=probe).exclude(Exists(seen))
            .only("pk", "size").order_by("?").first())
    if item is None:
        return None
    return _new_lease(seat, item.pk, item.size, probe=probe)


_LEASE_STATE = (
    "SELECT a.id AS lease_id, a.rater_id AS lease_rater_id, a.status AS lease_status, "
    "a.expires_at AS expires_at, a.campaign_id AS campaign_id, "
    "c.status AS campaign_status, c.lease_seconds AS lease_seconds, u.is_active AS rater_active "
    "FROM annotation_assignment a JOIN annotation_campaign c ON c.id = a.campaign_id "
    "JOIN auth_user u ON u.id = a.rater_id WHERE a.token = %s"
)
_LIVE_GRANTS = (
    "SELECT id, leased_at FROM annotation_assignment "
    "WHERE rater_id = %s AND campaign_id = %s AND status = %s AND expires_at > %s"
)
_EXTEND = (
    "UPDATE annotation_assignment SET heartbeat_at = %s, expires_at = %s "
    "WHERE id = %s AND status = %s AND expires_at > %s"
)


def assignment_heartbeat(*, rater, token: str, campaign_id: int | None = None) -> datetime:
    """Keep the rater's leases in this campaign alive; returns this lease's new expiry.

    Each live lease moves ``lease_seconds`` ahead, but no further than ``LEASE_MAX_AGE_S`` after
    it was granted. ``campaign_id``, when given (the rater's API token names it), must be the
    lease's.
    """
    max_age = settings.LEASE_MAX_AGE_S
    if db_functions():
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM annotation_heartbeat(%s, %s, %s, %s, %s)",
                           [db_uuid(token), rater.pk, campaign_id, timezone.now(), max_age])
            row = fetch_row(cursor)
        _heartbeat_refusal(rater, row, campaign_id)
        return row["expires"]
    with connection.cursor() as cursor:
        cursor.execute(_LEASE_STATE, [db_uuid(token)])
        row = fetch_row(cursor)
        if row is not None:
            row["lease_expired"] = db_datetime(row["expires_at"]) <= timezone.now()
        _heartbeat_refusal(rater, row, campaign_id)
        now = timezone.now()
        now_db = db_now(now)
        # Each lease's own limit: a rater holds PREFETCH leases at most, one statement each.
        cursor.execute(_LIVE_GRANTS, [rater.pk, row["campaign_id"], AssignmentStatus.ACTIVE,
                                      now_db])
        expires = None
        for lease_id, leased_at in cursor.fetchall():
            until = rules.lease_expiry(now=now, leased_at=db_datetime(leased_at),
                                       lease_seconds=row["lease_seconds"], max_age_s=max_age)
            cursor.execute(_EXTEND, [now_db, db_now(until), lease_id, AssignmentStatus.ACTIVE,
                                     now_db])
            if lease_id == row["lease_id"]:
                expires = until
    if expires is None:  # it ran out between the two reads
        raise refusal("lease_expired")
    return expires


def _heartbeat_refusal(rater, row: dict | None, campaign_id: int | None) -> None:
    """Raises the refusal for a heartbeat on this lease state, if any."""
    if row is None or (campaign_id is not None and row["campaign_id"] != campaign_id):
        raise refusal("no_such_assignment")
    code = rules.heartbeat_refusal(rater_id=rater.pk, lease_rater_id=row["lease_rater_id"],
                                   rater_active=bool(row["rater_active"]),
                                   status=row["lease_status"],
                                   expired=bool(row["lease_expired"]),
                                   campaign_status=row["campaign_status"])
    if code is not None:
        raise refusal(code)


def assignments_expire(*, now: datetime | None = None) -> int:
    """Mark leases whose time ran out as expired (their items are already servable again)."""
    now = now or timezone.now()
    n = Assignment.objects.filter(status=AssignmentStatus.ACTIVE, expires_at__lte=now).update(
        status=AssignmentStatus.EXPIRED)
    if n:
        logger.info("%d abandoned leases expired", n)
    return n


