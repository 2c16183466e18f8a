"""Storing answers: exactly once per lease, whatever the browser retries.

A submission names its lease (the assignment token) and carries an idempotency key made by the
browser when the rater answered. The same key again returns the stored judgment unchanged (a
retry after a lost response); a different key for an answered lease is refused, as is a key
already used for another lease. The assignment row is locked for the whole check-and-insert, and
the database keeps one judgment per assignment and per key whatever happens in between.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime

from django.db import DatabaseError, DataError, IntegrityError, connection, transaction
from django.utils import timezone

from annotation.models import (
    CRITERIA,
    AssignmentStatus,
    Enrollment,
    Judgment,
    Probe,
    Protocol,
    criteria_weights_read,
)
from annotation.services.scheduling import (
    PREFETCH,
    SEAT_COLUMNS,
    SEAT_WIDTH,
    LeaseError,
    NextResult,
    Seat,
    check_lease,
    db_datetime,
    db_functions,
    db_json,
    db_now,
    db_uuid,
    leases_from_rows,
    probe_numbers,
    refusal,
    seat_from_row,
    seat_result,
    seat_top_up,
)

logger = logging.getLogger(__name__)

CHOICES = ("left", "right", "tie", "both_bad")
MAX_PLAYBACK_BYTES = 64 * 1024
MAX_EVENTS = 2000
MAX_MS = 24 * 3600 * 1000


@dataclass
class Submitted:
    judgment: Judgment
    created: bool  # False: a retry of an answer already stored
    next: NextResult | None = None  # the rater's leases topped up, when asked for


def _bad(message: str) -> LeaseError:
    return LeaseError(400, "invalid", message)


def _unstorable() -> LeaseError:
    return _bad("the answer holds characters that cannot be stored (a NUL or a lone surrogate)")


def _check_playback(playback: object) -> dict:
    """The playback evidence as stored. An event log too long to keep is cut to its first and
    last events (``events_cut`` says how many went) rather than refused: losing a rater's
    answer over its evidence would be worse. Anything else out of shape is refused."""
    if playback is None:
        return {}
    if not isinstance(playback, dict):
        raise _bad("playback: expected an object")
    events = playback.get("events", [])
    if not isinstance(events, list):
        raise _bad("playback.events: expected a list of events")
    try:
        size = len(json.dumps(playback, allow_nan=False))
    except ValueError:
        raise _bad("playback: numbers must be finite") from None
    keep = min(len(events), MAX_EVENTS)
    cut = playback
    while True:
        if keep < len(events):
            tail = events[len(events) - keep // 2:] if keep // 2 else []
            cut = {**playback, "events": events[: keep - keep // 2] + tail,
                   "events_cut": len(events) - keep}
            size = len(json.dumps(cut))
        if size <= MAX_PLAYBACK_BYTES or keep == 0:
            break
        keep //= 2
    if size > MAX_PLAYBACK_BYTES:
        raise _bad(f"playback: {size} bytes without its events, at most {MAX_PLAYBACK_BYTES}")
    return cut


@dataclass
class _Lease:
    """The answered lease and what checking an answer needs of its campaign and rater, read
    and locked in one statement (the portable path; ``annotation_answer`` does this itself)."""

    id: int
    token: str
    rater_id: int
    status: str
    expires_at: datetime
    item_id: int
    probe: str
    repeat_of_id: int | None
    order: list[int]
    protocol: str
    ask_strength: bool
    reason_tags: list[str]
    block_after: int
    weights: dict[str, float]
    seat: Seat


_LEASE_FOR_ANSWER = (  # built from constants only; every value is a parameter
    'SELECT a.id, a.rater_id, a.status, a.expires_at, a.item_id, a.probe, a.repeat_of_id, '  # noqa: S608
    'a."order", c.protocol, c.ask_strength, c.reason_tags, c.block_after, c.criteria_weights, '
    + SEAT_COLUMNS +
    " FROM annotation_assignment a JOIN annotation_campaign c ON c.id = a.campaign_id "
    "JOIN annotation_enrollment e ON e.campaign_id = a.campaign_id AND e.rater_id = a.rater_id "
    "JOIN auth_user u ON u.id = a.rater_id WHERE a.token = %s"
)


def _lease_for_answer(token: str, campaign_id: int | None) -> _Lease:
    """The lease, locked (portable path; ``annotation_answer`` reads it on PostgreSQL)."""
    sql = _LEASE_FOR_ANSWER
    if connection.features.has_select_for_update_of:
        # NO KEY: rows that merely reference the lease (checked at commit) are not held up.
        sql += (" FOR NO KEY UPDATE OF a" if connection.features.has_select_for_no_key_update
                else " FOR UPDATE OF a")
    with connection.cursor() as cursor:
        cursor.execute(sql, [db_uuid(token)])
        row = cursor.fetchone()
    if row is None:
        raise refusal("no_such_assignment")
    seat = seat_from_row(row[13:13 + SEAT_WIDTH])
    if campaign_id is not None and seat.pk != campaign_id:
        raise refusal("no_such_assignment")
    return _Lease(row[0], token, row[1], row[2], db_datetime(row[3]), row[4], row[5], row[6],
                  db_json(row[7]), row[8], bool(row[9]), db_json(row[10]) or [], row[11],
                  criteria_weights_read(db_json(row[12])), seat)


# The refusals of an answer that does not fit its lease's campaign: the same words on both paths
# (``annotation_answer`` names them by these keys).
_MISFITS = {
    "scores_for_pairwise": "scores: this campaign is pairwise; send a choice",
    "choice": f"choice: expected one of {', '.join(CHOICES)}",
    "strength_not_asked": "strength: this campaign does not ask for strength",
    "strength_side": "strength: only for a left or right choice",
    "reasons": "reasons: expected a list of this campaign's reason tags",
    "choice_for_group": "choice: this campaign scores groups; send scores",
    "scores_count": "scores: expected a list of {} score sets, one per clip shown",
}


def _misfit(key: str, size: int | None = None) -> LeaseError:
    return _bad(_MISFITS[key].format(size))


@dataclass
class _Answer:
    """An answer whose shape is checked (what needs neither the lease nor its campaign)."""

    choice: str | None
    strength: int | None
    reasons: list[str]
    scores: list[dict[str, int]] | None  # in the order shown
    decision_ms: int
    viewing_ms: int
    playback: dict


def _shape(choice: object, strength: object, reasons: object, scores: object,
           decision_ms: object, viewing_ms: object, playback: object) -> _Answer:
    for name, value in (("decision_ms", decision_ms), ("viewing_ms", viewing_ms)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_MS:
            raise _bad(f"{name}: expected milliseconds between 0 and {MAX_MS}")
    if choice is not None and choice not in CHOICES:
        raise _bad(f"{_MISFITS['choice']}, got {choice!r}")
    if strength is not None and (not isinstance(strength, int) or isinstance(strength, bool)
                                 or not 1 <= strength <= 3):
        raise _bad(f"strength: expected 1, 2 or 3, got {strength!r}")
    reasons = reasons or []
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise _misfit("reasons")
    if scores is not None:
        if not isinstance(scores, list):
            raise _bad("scores: expected a list of score sets, one per clip shown")
        for position, entry in enumerate(scores):
            if not isinstance(entry, dict) or set(entry) != set(CRITERIA):
                raise _bad(f"scores[{position}]: expected the criteria {', '.join(CRITERIA)}")
            for name, value in entry.items():
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
                    raise _bad(f"scores[{position}].{name}: expected an integer 1..5, "
                               f"got {value!r}")
        scores = [{c: entry[c] for c in CRITERIA} for entry in scores]
    return _Answer(choice, strength, sorted(set(reasons)), scores, decision_ms, viewing_ms,
                   _check_playback(playback))


def _pairwise(lease: _Lease, answer: _Answer) -> str:
    """The outcome in the item's terms; raises if the answer does not fit the campaign."""
    if answer.scores is not None:
        raise _misfit("scores_for_pairwise")
    if answer.choice is None:
        raise _misfit("choice")
    if answer.strength is not None:
        if not lease.ask_strength:
            raise _misfit("strength_not_asked")
        if answer.choice not in ("left", "right"):
            raise _misfit("strength_side")
    if any(r not in lease.reason_tags for r in answer.reasons):
        raise _misfit("reasons")
    if answer.choice in ("left", "right"):
        slot = lease.order[0 if answer.choice == "left" else 1]  # the item slot on that side
        return "a" if slot == 0 else "b"
    return answer.choice


def _group(lease: _Lease, answer: _Answer) -> list[dict[str, int]]:
    """Scores arrive in the order shown; they are stored in the item's slot order."""
    if answer.choice is not None:
        raise _misfit("choice_for_group")
    size = len(lease.order)  # one position per slot of the item
    if answer.scores is None or len(answer.scores) != size:
        raise _misfit("scores_count", size)
    by_slot: list[dict[str, int] | None] = [None] * size
    for position, entry in enumerate(answer.scores):
        by_slot[lease.order[position]] = entry
    return by_slot  # type: ignore[return-value]


def _qc(lease: _Lease, outcome: str, scores: list[dict[str, int]] | None) -> dict:
    """The probe's verdict: gold items have the ground truth in slot 0; a hidden repeat of a
    pairwise item passes with the same outcome again, of a group item when the candidates it
    scores best (weighted) include one the first answer scored best."""
    if lease.probe == Probe.GOLD:
        return {"probe": "gold", "passed": outcome == "a"}
    if lease.probe == Probe.CATCH:
        return {"probe": "catch", "passed": outcome == "tie"}
    if lease.probe == Probe.REPEAT:
        first = Judgment.objects.filter(assignment_id=lease.repeat_of_id).values_list(
            "outcome", "scores").first()
        if lease.protocol == Protocol.GROUP:
            before = group_best(first[1], lease.weights) if first else []
            now = group_best(scores, lease.weights)
            return {"probe": "repeat", "passed": bool(set(before) & set(now)),
                    "first": before, "best": now}
        return {"probe": "repeat", "passed": first is not None and first[0] == outcome,
                "first": first[0] if first else None}
    return {}


_COUNT_ON_ITEM = "UPDATE annotation_item SET n_judgments = n_judgments + 1 WHERE id = %s"
_INSERT = (
    "INSERT INTO annotation_judgment (idempotency_key, assignment_id, campaign_id, item_id, "
    'rater_id, probe, "order", choice, outcome, strength, reasons, scores, decision_ms, '
    "viewing_ms, playback, qc, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)
_ANSWERED = "UPDATE annotation_assignment SET status = %s WHERE id = %s"
# The rater's counters; blocked once failed probes reach the campaign's limit (the right-hand
# sides read the row as it was before this update).
_COUNT_ON_RATER = (
    "UPDATE annotation_enrollment SET n_judgments = n_judgments + 1, "
    "probes_passed = probes_passed + %s, probes_failed = probes_failed + %s, "
    "blocked = (blocked OR probes_failed + %s >= %s) WHERE id = %s "
    "RETURNING n_judgments, probes_failed, blocked"
)


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
    or a switched-off account, 404 unknown lease, 409 answered already (with another key) or key
    reused, 410 lease expired.
    """
    try:
        key = uuid.UUID(str(idempotency_key))
    except ValueError:
        raise _bad("idempotency_key: expected a UUID") from None
    answer = _shape(choice, strength, reasons, scores, decision_ms, viewing_ms, playback)
    if db_functions():
        return _submit_in_db(rater, token, campaign_id, key, answer, top_up=top_up)
    try:
        with transaction.atomic():
            lease = _lease_for_answer(token, campaign_id)
            stored = _refused_or_stored_before(rater, lease, key)
            if stored is not None:  # a retry of the stored answer
                _counters_again(lease.seat)
                return Submitted(stored, created=False, next=_top_up(lease.seat, top_up))
            judgment = _judgment(lease, key, answer)
            was_blocked = lease.seat.blocked
            _store(lease, judgment)
    except DataError:  # text the database cannot hold: nothing stored
        raise _unstorable() from None
    _log_blocked(rater, lease.seat, was_blocked)
    return Submitted(judgment, created=True, next=_top_up(lease.seat, top_up))


def _counters_again(seat: Seat) -> None:
    """The rater's counters as the stored answer left them: the lease's read joined them from a
    snapshot taken before it waited for the lease's lock (``annotation_answer`` does the same)."""
    row = (Enrollment.objects.filter(pk=seat.enrollment_id)
           .values_list("n_judgments", "probes_failed", "blocked").first())
    if row is not None:
        seat.n_judgments, seat.probes_failed, seat.blocked = row


def _log_blocked(rater, seat: Seat, was_blocked: bool) -> None:
    if seat.blocked and not was_blocked:
        logger.warning("rater %s blocked in campaign %s after %d failed probes",
                       rater.pk, seat.pk, seat.probes_failed)


def _refused_or_stored_before(rater, lease: _Lease, key: uuid.UUID) -> Judgment | None:
    """Raises if the lease cannot take an answer, unless this is a retry of the answer it took
    (then that judgment)."""
    if not lease.seat.rater_active:
        raise refusal("account_disabled")
    try:
        check_lease(rater, lease.rater_id, lease.status, lease.expires_at)
    except LeaseError as exc:
        if exc.status not in (409, 410):
            raise
        # An answered (or since expired) lease: a retry of the stored answer succeeds.
        stored = Judgment.objects.filter(idempotency_key=key, rater_id=rater.pk,
                                         assignment_id=lease.id).first()
        if stored is None:
            raise
        return stored
    return None


def _judgment(lease: _Lease, key: uuid.UUID, answer: _Answer) -> Judgment:
    """The judgment the answer makes, checked against the lease (400 if it does not fit),
    unsaved."""
    fields: dict = {"scores": None, "choice": "", "outcome": "", "strength": None,
                    "reasons": []}
    if lease.protocol == Protocol.PAIRWISE:
        fields.update(choice=answer.choice, outcome=_pairwise(lease, answer),
                      strength=answer.strength, reasons=answer.reasons)
    else:
        fields["scores"] = _group(lease, answer)
    return Judgment(
        idempotency_key=key, assignment_id=lease.id, campaign_id=lease.seat.pk,
        item_id=lease.item_id, rater_id=lease.rater_id, probe=lease.probe, order=lease.order,
        decision_ms=answer.decision_ms, viewing_ms=answer.viewing_ms, playback=answer.playback,
        qc=_qc(lease, fields["outcome"], fields["scores"]), created_at=timezone.now(), **fields)


def _probe_counts(qc: dict) -> tuple[int, int]:
    passed = bool(qc.get("passed"))
    return int(passed), int("passed" in qc and not passed)


def _json_params(judgment: Judgment) -> list:
    js = connection.ops.adapt_json_value
    return [js(judgment.reasons, None),
            None if judgment.scores is None else js(judgment.scores, None),
            js(judgment.playback, None), js(judgment.qc, None)]


_ANSWER_COLUMNS = 11  # annotation_answer's columns before the seat's (migration 0005)


def _submit_in_db(rater, token: str, campaign_id: int | None, key: uuid.UUID, answer: _Answer,
                  *, top_up: bool) -> Submitted:
    """One call to ``annotation_answer`` (migration 0005): lock the lease, check it and the
    answer against it, count, store and, with ``top_up`` and a rater who may go on, lease the
    next items."""
    js = connection.ops.adapt_json_value
    now = timezone.now()
    try:
        # One statement, its own transaction; inside a caller's transaction a savepoint, so a
        # refused statement does not end the caller's.
        with (transaction.atomic() if connection.in_atomic_block else nullcontext(),
              connection.cursor() as cursor):
            cursor.execute(
                "SELECT * FROM annotation_answer(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s)",
                [db_uuid(token), rater.pk, campaign_id, key, answer.choice, answer.strength,
                 js(answer.reasons, None),
                 None if answer.scores is None else js(answer.scores, None),
                 answer.decision_ms, answer.viewing_ms, js(answer.playback, None), now, top_up,
                 PREFETCH, probe_numbers()])
            row = cursor.fetchone()
    except IntegrityError:
        # Only the key can collide: another lease's answer took it a moment earlier.
        raise refusal("key_reused") from None
    except DataError:  # text the database cannot hold (NUL, a lone surrogate): nothing stored
        raise _unstorable() from None
    (code, judgment_id, outcome, scores, qc, order, probe, item_id, assignment_id,
     was_blocked, leases) = row[:_ANSWER_COLUMNS]
    if code.startswith("invalid:"):
        _, misfit, *size = code.split(":")
        raise _misfit(misfit, *(int(n) for n in size))
    if code not in ("stored", "stored_before"):
        raise refusal(code)
    seat = seat_from_row(row[_ANSWER_COLUMNS:_ANSWER_COLUMNS + SEAT_WIDTH])
    if code == "stored_before":  # a retry of the stored answer (or the same, sent twice)
        return Submitted(Judgment.objects.get(pk=judgment_id), created=False,
                         next=_top_up(seat, top_up))
    judgment = Judgment(
        pk=judgment_id, idempotency_key=key, assignment_id=assignment_id, campaign_id=seat.pk,
        item_id=item_id, rater_id=rater.pk, probe=probe, order=db_json(order),
        choice=answer.choice or "", outcome=outcome,
        strength=answer.strength if answer.choice else None,  # pairwise only, as stored
        reasons=answer.reasons if answer.choice else [], scores=db_json(scores),
        decision_ms=answer.decision_ms, viewing_ms=answer.viewing_ms,
        playback=answer.playback, qc=db_json(qc), created_at=now)
    _log_blocked(rater, seat, was_blocked)
    if not top_up:
        return Submitted(judgment, created=True)
    if leases is None:  # not served (says why, without leasing), or the top-up failed
        return Submitted(judgment, created=True, next=_top_up(seat, True))
    rows = [(x["id"], x["token"], x["item_id"], x["probe"], x["repeat_of_id"], x["order"],
             x["leased_at"], x["expires_at"]) for x in db_json(leases)]
    return Submitted(judgment, created=True, next=seat_result(seat, leases_from_rows(seat, rows)))


def _store(lease: _Lease, judgment: Judgment) -> None:
    """The same, statement by statement, inside the caller's transaction (lease locked)."""
    with connection.cursor() as cursor:
        if lease.probe == Probe.NONE:
            # Count the answer on the item, which takes the item's lock (leasing holds it
            # while counting live leases), and only then look at the clock: a lease that a
            # concurrent leaser already saw as expired is refused here (and the count rolled
            # back), so judgments + live leases never exceed the overlap.
            cursor.execute(_COUNT_ON_ITEM, [lease.item_id])
            if lease.expires_at <= timezone.now():
                raise refusal("lease_expired")
        reasons, scores, playback, qc = _json_params(judgment)
        try:
            # No savepoint: a refused insert ends the whole transaction (the count above too).
            cursor.execute(_INSERT, [
                db_uuid(judgment.idempotency_key), lease.id, lease.seat.pk, lease.item_id,
                lease.rater_id, lease.probe, connection.ops.adapt_json_value(lease.order, None),
                judgment.choice, judgment.outcome, judgment.strength, reasons, scores,
                judgment.decision_ms, judgment.viewing_ms, playback, qc,
                db_now(judgment.created_at)])
        except IntegrityError:
            # The lease is locked and live, so only the key can collide: it was used for
            # another lease (the same lease's retry was answered above).
            raise refusal("key_reused") from None
        judgment.pk = cursor.fetchone()[0]
        cursor.execute(_ANSWERED, [AssignmentStatus.SUBMITTED, lease.id])
        passed, failed = _probe_counts(judgment.qc)
        cursor.execute(_COUNT_ON_RATER, [passed, failed, failed, lease.block_after,
                                         lease.seat.enrollment_id])
        n, n_failed, blocked = cursor.fetchone()
    lease.seat.n_judgments, lease.seat.probes_failed = n, n_failed
    lease.seat.blocked = bool(blocked)


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
                         seat.pk)
        return None


def _group_values(scores: list[dict[str, int]], weights: dict[str, float]) -> list[float]:
    """Each slot's weighted mean score."""
    total = sum(weights.values()) or 1.0
    return [sum(weights[c] * s[c] for c in CRITERIA) / total for s in scores]


def group_best(scores: list[dict[str, int]] | None, weights: dict[str, float]) -> list[int]:
    """The slots a group answer scores best (weighted; more than one when they tie)."""
    if not scores:
        return []
    value = _group_values(scores, weights)
    top = max(value)
    return [i for i, v in enumerate(value) if math.isclose(v, top)]


def group_pairs(judgment: Judgment, weights: dict[str, float]) -> list[tuple[int, int, float]]:
    """Every ordered pair a group judgment implies, as (better slot, worse slot, margin) by the
    weighted score; the first pair is best vs worst."""
    if not judgment.scores:
        return []
    value = _group_values(judgment.scores, weights)
    ranked = sorted(range(len(value)), key=lambda i: -value[i])
    pairs = [(i, j, value[i] - value[j]) for i in ranked for j in ranked
             if value[i] - value[j] > 0 and not math.isclose(value[i], value[j])]
    best, worst = ranked[0], ranked[-1]
    pairs.sort(key=lambda p: (p[0] != best or p[1] != worst, -p[2]))
    return pairs

