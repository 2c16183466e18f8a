"""Storing answers: exactly once per lease, whatever the browser retries.

A submission names its lease (the assignment token) and carries an idempotency key made by the
browser when the rater answered. The same key again returns the stored judgment unchanged (a
retry after a lost response); a different key for an answered lease is refused, as is a key
already used for another lease. The assignment row is locked for the whole check-and-insert, and
the database keeps one judgment per assignment and per key whatever happens in between.

Both paths take the same three steps: read the lease's context (``annotation_lease_context`` on
PostgreSQL, ``_CONTEXT`` with the lease locked elsewhere); decide with ``annotation.rules``
(the lease checks, the answer's meaning, the probe's verdict, whether it blocks the rater, the
next probes); store, mechanics only (``annotation_answer`` on PostgreSQL, ``_store`` elsewhere).
On PostgreSQL the read takes no lock: what the rules read of a lease (its item, probe, sides, the
first answer a repeat is compared with) never changes once written, and what does change (its
status and time, the rater's counters) is checked again under the lock by ``annotation_answer``.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction
from django.utils import timezone

from annotation import rules
from annotation.models import AssignmentStatus, Enrollment, Judgment, Probe, criteria_weights_read
from annotation.rules import CHOICES, LeaseError, refusal
from annotation.services.scheduling import (
    PREFETCH,
    SEAT_COLUMNS,
    NextResult,
    Seat,
    db_datetime,
    db_functions,
    db_json,
    db_now,
    db_uuid,
    fetch_row,
    leases_from,
    seat_from,
    seat_probe_draws,
    seat_result,
    seat_stop_serving,
    seat_top_up,
)

logger = logging.getLogger(__name__)


@dataclass
class Submitted:
    judgment: Judgment
    created: bool  # False: a retry of an answer already stored
    next: NextResult | None = None  # the rater's leases topped up, when asked for


@dataclass
class _Context:
    """What deciding about an answer needs: the lease, its campaign's rules, the first answer a
    hidden repeat is compared with, and the place of the lease's rater in the campaign."""

    lease_id: int
    lease_rater_id: int
    lease_status: str
    lease_expired: bool
    item_id: int
    probe: str
    repeat_of_id: int | None
    order: list[int]
    rules: rules.Rules
    first: rules.FirstAnswer | None
    seat: Seat
    expires_at: datetime | None = None  # the portable path's (it reads the clock itself)

    @classmethod
    def from_row(cls, row: dict) -> _Context:
        outcome = row["first_outcome"]
        return cls(
            row["lease_id"], row["lease_rater_id"], row["lease_status"],
            bool(row["lease_expired"]), row["item_id"], row["probe"], row["repeat_of_id"],
            db_json(row["order"]),
            rules.Rules(row["protocol"], bool(row["ask_strength"]),
                        db_json(row["reason_tags"]) or [],
                        criteria_weights_read(db_json(row["criteria_weights"]))),
            None if outcome is None else rules.FirstAnswer(outcome,
                                                           db_json(row["first_scores"])),
            seat_from(row), db_datetime(row["expires_at"]) if "expires_at" in row else None)


@dataclass
class _Decision:
    """An answer with its meaning and verdict, ready to store."""

    meaning: rules.Meaning
    qc: dict
    passed: int
    failed: int
    block: bool  # this answer's failed probe blocks the rater
    probes: list[str] | None  # the next leases' probe kinds; None: no top-up


# The portable path's read of the context (``annotation_lease_context`` reads the same).
_CONTEXT = (  # built from constants only; every value is a parameter
    "SELECT a.id AS lease_id, a.rater_id AS lease_rater_id, a.status AS lease_status, "  # noqa: S608
    "a.expires_at AS expires_at, a.item_id AS item_id, a.probe AS probe, "
    'a.repeat_of_id AS repeat_of_id, a."order" AS "order", c.protocol AS protocol, '
    "c.ask_strength AS ask_strength, c.reason_tags AS reason_tags, "
    "c.criteria_weights AS criteria_weights, f.outcome AS first_outcome, "
    "f.scores AS first_scores, " + SEAT_COLUMNS +
    " FROM annotation_assignment a JOIN annotation_campaign c ON c.id = a.campaign_id "
    "JOIN annotation_enrollment e ON e.campaign_id = a.campaign_id AND e.rater_id = a.rater_id "
    "JOIN auth_user u ON u.id = a.rater_id "
    "LEFT JOIN annotation_judgment f ON f.assignment_id = a.repeat_of_id WHERE a.token = %s"
)


def _context(token: str, campaign_id: int | None) -> _Context:
    """The lease's context: on PostgreSQL one function call without a lock; elsewhere the
    portable read with the lease locked (inside the caller's transaction)."""
    if db_functions():
        sql = "SELECT * FROM annotation_lease_context(%s)"
    else:
        sql = _CONTEXT
        if connection.features.has_select_for_update_of:
            # NO KEY: rows that merely reference the lease (checked at commit) are not held up.
            sql += (" FOR NO KEY UPDATE OF a" if connection.features.has_select_for_no_key_update
                    else " FOR UPDATE OF a")
    with connection.cursor() as cursor:
        cursor.execute(sql, [db_uuid(token)])
        row = fetch_row(cursor)
    if row is None:
        raise refusal("no_such_assignment")
    if "lease_expired" not in row:
        row["lease_expired"] = db_datetime(row["expires_at"]) <= timezone.now()
    context = _Context.from_row(row)
    if campaign_id is not None and context.seat.campaign_id != campaign_id:
        raise refusal("no_such_assignment")
    return context


def _stored_before(rater, context: _Context, key: uuid.UUID) -> Judgment | None:
    """Raises if the lease cannot take an answer from this rater, unless this is a retry of the
    answer it took (then that judgment)."""
    code = rules.lease_refusal(rater_id=rater.pk, lease_rater_id=context.lease_rater_id,
                               rater_active=context.seat.rater_active,
                               status=context.lease_status, expired=context.lease_expired,
                               campaign_status=context.seat.campaign_status)
    if code is None:
        return None
    if code in ("already_answered", "lease_expired", "campaign_closed"):
        stored = Judgment.objects.filter(idempotency_key=key, rater_id=rater.pk,
                                         assignment_id=context.lease_id).first()
        if stored is not None:
            return stored
    raise refusal(code)


def _decide(context: _Context, answer: rules.Answer, *, top_up: bool) -> _Decision:
    """Everything the rules say about this answer to this lease (400 if it does not fit)."""
    meaning = rules.answer_meaning(answer, rules=context.rules, order=context.order)
    qc = rules.probe_verdict(context.probe, meaning, rules=context.rules, first=context.first)
    passed, failed = rules.probe_counts(qc)
    seat = context.seat
    block = bool(failed) and not seat.blocked and rules.blocks(
        probes_failed=seat.probes_failed + failed, block_after=seat.block_after)
    probes = None
    if top_up and db_functions():  # (the portable path tops up on its own, after the store)
        seat_after = _counted(seat, failed=failed, block=block)
        if seat_after.state == "rating":
            probes = seat_probe_draws(seat_after)
    return _Decision(meaning, qc, passed, failed, block, probes)


def _counted(seat: Seat, *, failed: int, block: bool) -> Seat:
    """The seat as the answer leaves it (by the counters read before it)."""
    return replace(seat, n_judgments=seat.n_judgments + 1,
                   probes_failed=seat.probes_failed + failed, blocked=seat.blocked or block)


def judgment_submit(
    *,
    rater,
    token: str,
    idempotency_key: uuid.UUID | str,
    choice: str | None = None,
    strength: int | None = None,
    reasons: list[str] | None = None,
    scores: list[dict] | None = None,
    decision_ms: int,
    viewing_ms: int = 0,
    playback: dict | None = None,
    campaign_id: int | None = None,
    top_up: bool = False,
) -> Submitted:
    """Store the rater's answer to one lease, exactly once.

    With ``top_up`` the rater's leases are topped up once the answer is stored (a failure there
    never costs the answer) and returned as ``next``: the page needs no separate call for its
    next item. ``campaign_id``, when given (the rater's API token names it), must be the
    lease's.

    The answer's shape is checked before anything is looked up (a malformed answer is 400
    whatever its lease); then the lease, then the answer against the lease's campaign.

    Raises ``LeaseError`` with the status to answer: 400 malformed, 403 another rater's lease
    or a switched-off account, 404 unknown lease, 409 answered already (with another key), key
    reused or the campaign closed, 410 lease expired.
    """
    try:
        key = uuid.UUID(str(idempotency_key))
    except ValueError:
        raise rules.invalid("idempotency_key: expected a UUID") from None
    answer = rules.answer_shape(choice=choice, strength=strength, reasons=reasons, scores=scores,
                                decision_ms=decision_ms, viewing_ms=viewing_ms,
                                playback=playback)
    if db_functions():
        return _submit_in_db(rater, token, campaign_id, key, answer, top_up=top_up)
    try:
        with transaction.atomic():
            context = _context(token, campaign_id)
            stored = _stored_before(rater, context, key)
            if stored is not None:  # a retry of the stored answer
                _counters_again(context.seat)
                return Submitted(stored, created=False, next=_top_up(context.seat, top_up))
            decision = _decide(context, answer, top_up=top_up)
            judgment = _judgment(context, key, answer, decision)
            _store(context, judgment, decision)
    except DataError:  # text the database cannot hold: nothing stored
        raise rules.unstorable() from None
    return _after(rater, context.seat, judgment, decision, leases=None, top_up=top_up)


def _after(rater, seat: Seat, judgment: Judgment, decision: _Decision, *,
           leases: list | None, top_up: bool) -> Submitted:
    """The reply once the answer is stored (``seat`` holds the counters as it left them).

    If the counters say otherwise than the rules decided from the earlier read (the same
    rater's answer in another tab counted in between), the rules win: a rater they block is
    blocked now and their leases end."""
    if decision.block:
        logger.warning("rater %s blocked in campaign %s after %d failed probes", rater.pk,
                       seat.campaign_id, seat.probes_failed)
        seat_stop_serving(seat, block=False)  # the preloaded item goes to others at once
    elif not seat.blocked and decision.failed and rules.blocks(
            probes_failed=seat.probes_failed, block_after=seat.block_after):
        seat_stop_serving(seat, block=True)
        leases = None
    if not top_up:
        return Submitted(judgment, created=True)
    if leases is not None and seat.state != "rating":  # served by a read that is stale now
        seat_stop_serving(seat, block=False)
        leases = None
    if leases is None:  # not served (says why), or the top-up failed, or the portable path
        return Submitted(judgment, created=True, next=_top_up(seat, True))
    return Submitted(judgment, created=True, next=seat_result(seat, leases_from(seat, leases)))


def _counters_again(seat: Seat) -> None:
    """The rater's counters as the stored answer left them: the lease's read joined them from a
    snapshot taken before it waited for the lease's lock."""
    row = (Enrollment.objects.filter(pk=seat.enrollment_id)
           .values_list("n_judgments", "probes_failed", "blocked").first())
    if row is not None:
        seat.n_judgments, seat.probes_failed, seat.blocked = row


def _judgment(context: _Context, key: uuid.UUID, answer: rules.Answer,
              decision: _Decision) -> Judgment:
    meaning = decision.meaning
    return Judgment(
        idempotency_key=key, assignment_id=context.lease_id,
        campaign_id=context.seat.campaign_id, item_id=context.item_id,
        rater_id=context.lease_rater_id, probe=context.probe, order=context.order,
        choice=meaning.choice, outcome=meaning.outcome, strength=meaning.strength,
        reasons=meaning.reasons, scores=meaning.scores, decision_ms=answer.decision_ms,
        viewing_ms=answer.viewing_ms, playback=answer.playback, qc=decision.qc,
        created_at=timezone.now())


def _json(value):
    return None if value is None else connection.ops.adapt_json_value(value, None)


def _submit_in_db(rater, token: str, campaign_id: int | None, key: uuid.UUID,
                  answer: rules.Answer, *, top_up: bool) -> Submitted:
    """Two calls: ``annotation_lease_context`` (read, no lock), the rules, then
    ``annotation_answer`` (lock, check liveness, count, store and, when the rules serve the
    rater, lease the next items)."""
    context = _context(token, campaign_id)
    stored = _stored_before(rater, context, key)
    if stored is not None:
        _counters_again(context.seat)
        return Submitted(stored, created=False, next=_top_up(context.seat, top_up))
    decision = _decide(context, answer, top_up=top_up)
    judgment = _judgment(context, key, answer, decision)
    meaning = decision.meaning
    try:
        # One statement, its own transaction; inside a caller's transaction a savepoint, so a
        # refused statement does not end the caller's.
        with (transaction.atomic() if connection.in_atomic_block else nullcontext(),
              connection.cursor() as cursor):
            cursor.execute(
                "SELECT * FROM annotation_answer(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s, %s, %s, %s)",
                [db_uuid(token), rater.pk, key, meaning.choice, meaning.outcome,
                 meaning.strength, _json(meaning.reasons), _json(meaning.scores),
                 _json(decision.qc), decision.passed, decision.failed, decision.block,
                 answer.decision_ms, answer.viewing_ms, _json(answer.playback),
                 judgment.created_at, PREFETCH, decision.probes, settings.LEASE_MAX_AGE_S])
            row = fetch_row(cursor)
    except IntegrityError:
        # Only the key can collide: another lease's answer took it a moment earlier.
        raise refusal("key_reused") from None
    except DataError:  # text the database cannot hold (NUL, a lone surrogate): nothing stored
        raise rules.unstorable() from None
    result = row["result"]
    seat = context.seat
    if result == "gone":  # the lease went between the two calls (its campaign was deleted)
        raise refusal("no_such_assignment")
    if result == "stored_before":  # the same answer, sent twice at once
        seat.n_judgments, seat.probes_failed = row["n_judgments"], row["probes_failed"]
        seat.blocked = bool(row["blocked"])
        return Submitted(Judgment.objects.get(pk=row["judgment_id"]), created=False,
                         next=_top_up(seat, top_up))
    if result != "stored":
        raise refusal(rules.store_refusal(key_taken=result == "key_taken",
                                          status=row["lease_status"] or "",
                                          expired=bool(row["lease_expired"]),
                                          campaign_status=row["campaign_status"] or ""))
    judgment.pk = row["judgment_id"]
    seat.n_judgments, seat.probes_failed = row["n_judgments"], row["probes_failed"]
    seat.blocked = bool(row["blocked"])
    leases = db_json(row["leases"]) if decision.probes is not None else None
    return _after(rater, seat, judgment, decision, leases=leases, top_up=top_up)


_COUNT_ON_ITEM = "UPDATE annotation_item SET n_judgments = n_judgments + 1 WHERE id = %s"
_INSERT = (
    "INSERT INTO annotation_judgment (idempotency_key, assignment_id, campaign_id, item_id, "
    'rater_id, probe, "order", choice, outcome, strength, reasons, scores, decision_ms, '
    "viewing_ms, playback, qc, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)
_ANSWERED = "UPDATE annotation_assignment SET status = %s WHERE id = %s"
_COUNT_ON_RATER = (
    "UPDATE annotation_enrollment SET n_judgments = n_judgments + 1, "
    "probes_passed = probes_passed + %s, probes_failed = probes_failed + %s, "
    "blocked = (blocked OR %s) WHERE id = %s RETURNING n_judgments, probes_failed, blocked"
)


def _store(context: _Context, judgment: Judgment, decision: _Decision) -> None:
    """The portable mechanics, statement by statement, inside the caller's transaction (lease
    locked); ``context.seat`` gets the counters as the answer left them."""
    with connection.cursor() as cursor:
        if context.probe == Probe.NONE:
            # Count the answer on the item, which takes the item's lock (leasing holds it
            # while counting live leases), and only then look at the clock: a lease that a
            # concurrent leaser already saw as expired is refused here (and the count rolled
            # back), so judgments + live leases never exceed the overlap.
            cursor.execute(_COUNT_ON_ITEM, [context.item_id])
            if context.expires_at <= timezone.now():
                raise refusal("lease_expired")
        try:
            # No savepoint: a refused insert ends the whole transaction (the count above too).
            cursor.execute(_INSERT, [
                db_uuid(judgment.idempotency_key), context.lease_id, context.seat.campaign_id,
                context.item_id, context.lease_rater_id, context.probe, _json(context.order),
                judgment.choice, judgment.outcome, judgment.strength, _json(judgment.reasons),
                _json(judgment.scores), judgment.decision_ms, judgment.viewing_ms,
                _json(judgment.playback), _json(judgment.qc), db_now(judgment.created_at)])
        except IntegrityError:
            # The lease is locked and live, so only the key can collide: it was used for
            # another lease (the same lease's retry was answered above).
            raise refusal("key_reused") from None
        judgment.pk = cursor.fetchone()[0]
        cursor.execute(_ANSWERED, [AssignmentStatus.SUBMITTED, context.lease_id])
        cursor.execute(_COUNT_ON_RATER, [decision.passed, decision.failed, decision.block,
                                         context.seat.enrollment_id])
        n, n_failed, blocked = cursor.fetchone()
    seat = context.seat
    seat.n_judgments, seat.probes_failed, seat.blocked = n, n_failed, bool(blocked)


def _top_up(seat: Seat, wanted: bool) -> NextResult | None:
    """The rater's leases topped up after an answer (stored already: a failure here is logged
    and the page asks for its next items on its own)."""
    if not wanted:
        return None
    try:
        # A savepoint only inside a caller's transaction (a retry's): its own statements
        # are atomic where they need to be.
        with transaction.atomic() if connection.in_atomic_block else nullcontext():
            return seat_top_up(seat)
    except DatabaseError:
        logger.exception("topping up rater %s's leases in campaign %s failed", seat.rater_id,
                         seat.campaign_id)
        return None


__all__ = ["CHOICES", "LeaseError", "Submitted", "judgment_submit"]
