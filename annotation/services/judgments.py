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
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from annotation.models import (
    CRITERIA,
    Assignment,
    AssignmentStatus,
    Enrollment,
    Item,
    Judgment,
    Probe,
    Protocol,
)
from annotation.services.scheduling import LeaseError, _own_live_assignment

logger = logging.getLogger(__name__)

CHOICES = ("left", "right", "tie", "both_bad")
MAX_PLAYBACK_BYTES = 64 * 1024
MAX_EVENTS = 2000
MAX_MS = 24 * 3600 * 1000


@dataclass
class Submitted:
    judgment: Judgment
    created: bool  # False: a retry of an answer already stored


def _bad(message: str) -> LeaseError:
    return LeaseError(400, "invalid", message)


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


def _pairwise(assignment: Assignment, choice: object, strength: object, reasons: object
              ) -> tuple[str, str, int | None, list[str]]:
    campaign = assignment.campaign
    if choice not in CHOICES:
        raise _bad(f"choice: expected one of {', '.join(CHOICES)}, got {choice!r}")
    if strength is not None:
        if not campaign.ask_strength:
            raise _bad("strength: this campaign does not ask for strength")
        if choice not in ("left", "right"):
            raise _bad("strength: only for a left or right choice")
        if not isinstance(strength, int) or isinstance(strength, bool) or not 1 <= strength <= 3:
            raise _bad(f"strength: expected 1, 2 or 3, got {strength!r}")
    reasons = reasons or []
    if not isinstance(reasons, list) or any(r not in (campaign.reason_tags or [])
                                            for r in reasons):
        raise _bad("reasons: expected a list of this campaign's reason tags")
    if choice in ("left", "right"):
        slot = assignment.order[0 if choice == "left" else 1]  # the item slot on that side
        outcome = "a" if slot == 0 else "b"
    else:
        outcome = choice
    return choice, outcome, strength, sorted(set(reasons))


def _group(assignment: Assignment, scores: object) -> list[dict[str, int]]:
    """Scores arrive in the order shown; they are stored in the item's slot order."""
    size = len(assignment.order)  # one position per slot of the item
    if not isinstance(scores, list) or len(scores) != size:
        raise _bad(f"scores: expected a list of {size} score sets, one per clip shown")
    by_slot: list[dict[str, int] | None] = [None] * size
    for position, entry in enumerate(scores):
        if not isinstance(entry, dict) or set(entry) != set(CRITERIA):
            raise _bad(f"scores[{position}]: expected the criteria {', '.join(CRITERIA)}")
        for name, value in entry.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
                raise _bad(f"scores[{position}].{name}: expected an integer 1..5, got {value!r}")
        by_slot[assignment.order[position]] = {c: entry[c] for c in CRITERIA}
    return by_slot  # type: ignore[return-value]


def _qc(assignment: Assignment, outcome: str) -> dict:
    """The probe's verdict: gold items have the ground truth in slot 0."""
    if assignment.probe == Probe.GOLD:
        return {"probe": "gold", "passed": outcome == "a"}
    if assignment.probe == Probe.CATCH:
        return {"probe": "catch", "passed": outcome == "tie"}
    if assignment.probe == Probe.REPEAT:
        first = Judgment.objects.filter(assignment_id=assignment.repeat_of_id).values_list(
            "outcome", flat=True).first()
        return {"probe": "repeat", "passed": first == outcome, "first": first}
    return {}


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
) -> Submitted:
    """Store the rater's answer to one lease, exactly once.

    Raises ``LeaseError`` with the status to answer: 400 malformed, 403 another rater's lease,
    404 unknown lease, 409 answered already (with another key) or key reused, 410 lease expired.
    """
    try:
        key = uuid.UUID(str(idempotency_key))
    except ValueError:
        raise _bad("idempotency_key: expected a UUID") from None
    for name, value in (("decision_ms", decision_ms), ("viewing_ms", viewing_ms)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_MS:
            raise _bad(f"{name}: expected milliseconds between 0 and {MAX_MS}")
    playback = _check_playback(playback)

    with transaction.atomic():
        try:
            assignment = _own_live_assignment(rater=rater, token=token, lock=True)
        except LeaseError as exc:
            if exc.status not in (409, 410):
                raise
            # An answered (or since expired) lease: a retry of the stored answer succeeds.
            stored = Judgment.objects.filter(idempotency_key=key, rater=rater).first()
            if stored is not None and str(stored.assignment.token) == str(token):
                return Submitted(stored, created=False)
            raise
        if assignment.probe == Probe.NONE:
            # Count the answer on the item, which takes the item's lock (leasing holds it while
            # counting live leases), and only then look at the clock: a lease that a concurrent
            # leaser already saw as expired is refused here (and the count rolled back), so
            # judgments + live leases never exceed the overlap.
            Item.objects.filter(pk=assignment.item_id).update(n_judgments=F("n_judgments") + 1)
            if assignment.expires_at <= timezone.now():
                raise LeaseError(410, "lease_expired", "the lease on this item expired; load "
                                                       "the next item")
        campaign = assignment.campaign
        fields: dict = {"scores": None, "choice": "", "outcome": "", "strength": None,
                        "reasons": []}
        if campaign.protocol == Protocol.PAIRWISE:
            if scores is not None:
                raise _bad("scores: this campaign is pairwise; send a choice")
            c, outcome, s, r = _pairwise(assignment, choice, strength, reasons)
            fields.update(choice=c, outcome=outcome, strength=s, reasons=r)
        else:
            if choice is not None:
                raise _bad("choice: this campaign scores groups; send scores")
            fields["scores"] = _group(assignment, scores)
        qc = _qc(assignment, fields["outcome"])
        try:
            # No savepoint: a refused insert ends the whole transaction (the count above too).
            with transaction.atomic(savepoint=False):
                judgment = Judgment.objects.create(
                    idempotency_key=key, assignment=assignment, campaign=campaign,
                    item_id=assignment.item_id, rater=rater, probe=assignment.probe,
                    order=assignment.order, decision_ms=decision_ms, viewing_ms=viewing_ms,
                    playback=playback, qc=qc, **fields,
                )
        except IntegrityError:
            # The assignment is locked and live, so only the key can collide: it was used
            # for another lease (the same lease's retry was answered above).
            raise LeaseError(409, "key_reused",
                             "idempotency_key: already used for another item") from None
        Assignment.objects.filter(pk=assignment.pk).update(status=AssignmentStatus.SUBMITTED)
        _count(campaign, rater, qc)
    return Submitted(judgment, created=True)


def _count(campaign, rater, qc: dict) -> None:
    updates: dict = {"n_judgments": F("n_judgments") + 1}
    if "passed" in qc:
        field = "probes_passed" if qc["passed"] else "probes_failed"
        updates[field] = F(field) + 1
    Enrollment.objects.filter(campaign=campaign, rater=rater).update(**updates)
    if qc and not qc["passed"]:
        failed = Enrollment.objects.filter(campaign=campaign, rater=rater).values_list(
            "probes_failed", flat=True).first() or 0
        if failed >= campaign.block_after:
            Enrollment.objects.filter(campaign=campaign, rater=rater).update(blocked=True)
            logger.warning("rater %s blocked in campaign %s after %d failed probes",
                           rater.pk, campaign.slug, failed)


def group_pairs(judgment: Judgment, weights: dict[str, float]) -> list[tuple[int, int, float]]:
    """Every ordered pair a group judgment implies, as (better slot, worse slot, margin) by the
    weighted score; the first pair is best vs worst."""
    if not judgment.scores:
        return []
    total = sum(weights.values()) or 1.0
    value = [sum(weights[c] * s[c] for c in CRITERIA) / total for s in judgment.scores]
    ranked = sorted(range(len(value)), key=lambda i: -value[i])
    pairs = [(i, j, value[i] - value[j]) for i in ranked for j in ranked
             if value[i] - value[j] > 0 and not math.isclose(value[i], value[j])]
    best, worst = ranked[0], ranked[-1]
    pairs.sort(key=lambda p: (p[0] != best or p[1] != worst, -p[2]))
    return pairs

