"""What a rater's answer means, and when a rater is served: every rating decision, written once.

Pure Python, no database: the two rating paths (the PostgreSQL functions under ``annotation/sql``
and the portable statements that SQLite runs) both read what they need, ask these functions,
and then do only mechanics (locks, lease liveness, the overlap invariant, inserts, counters,
the top-up). Quality control in ``feedback`` decides about raters from the judgments these rules
stored and tells the rating path through ``Enrollment`` columns, never a rule of its own.

In this module:

* refusals: every code a rating call can answer with, its HTTP status and its words;
* the shape of an answer (``answer_shape``), what needs neither its lease nor its campaign;
* the lease checks (``lease_refusal``, ``heartbeat_refusal``) and what a failed store means
  (``store_refusal``);
* what an answer means in the item's terms (``answer_meaning``): the side pressed mapped to the
  item's slot, group scores put in slot order, refused when the answer does not fit its
  campaign;
* probe verdicts (``probe_verdict``): gold, catch, hidden repeats, the weighted best candidate
  of a group (``group_best``) and the pairs a group answer implies (``group_pairs``);
* the probe kind drawn for a lease (``probe_kind``, ``probe_draws``);
* warn and block (``warned``, ``blocks``) and whether a rater is served (``serving_state``);
* how long a lease lives (``lease_expiry``), the cool-down of a rater whose leases keep running
  out unanswered (``cool_down_left``), why a served rater holds nothing (``idle_state``) and
  whether a finished rater is given the completion code (``completion_earned``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from annotation.models import CRITERIA, AssignmentStatus, CampaignStatus, Probe, Protocol

CHOICES = ("left", "right", "tie", "both_bad")
MAX_PLAYBACK_BYTES = 64 * 1024
MAX_EVENTS = 2000
MAX_MS = 24 * 3600 * 1000


# --- refusals --------------------------------------------------------------------------------

class LeaseError(Exception):
    """A rating call that cannot be granted; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


REFUSALS = {
    "no_such_assignment": (404, "no such assignment"),
    "not_your_lease": (403, "this item is leased to someone else"),
    "already_answered": (409, "this item has already been answered"),
    "lease_expired": (410, "the lease on this item expired; load the next item"),
    "key_reused": (409, "idempotency_key: already used for another item"),
    "account_disabled": (403, "this account has been switched off"),
    "not_enrolled": (404, "you are not enrolled in this campaign; open the invite link you "
                          "were given"),
    "campaign_closed": (409, "this campaign is closed: it takes no more answers"),
    "campaign_paused": (409, "this campaign is paused: its items are not kept for you; come "
                             "back when it resumes"),
}


def refusal(code: str) -> LeaseError:
    """The refusal named ``code``."""
    status, message = REFUSALS[code]
    return LeaseError(status, code, message)


def invalid(message: str) -> LeaseError:
    return LeaseError(400, "invalid", message)


def unstorable() -> LeaseError:
    return invalid("the answer holds characters that cannot be stored (a NUL or a lone surrogate)")


# The refusals of an answer that does not fit its lease's campaign.
MISFITS = {
    "scores_for_pairwise": "scores: this campaign is pairwise; send a choice",
    "choice": f"choice: expected one of {', '.join(CHOICES)}",
    "strength_not_asked": "strength: this campaign does not ask for strength",
    "strength_side": "strength: only for a left or right choice",
    "reasons": "reasons: expected a list of this campaign's reason tags",
    "choice_for_group": "choice: this campaign scores groups; send scores",
    "scores_count": "scores: expected a list of {} score sets, one per clip shown",
}


def misfit(key: str, size: int | None = None) -> LeaseError:
    return invalid(MISFITS[key].format(size))


# --- the lease -------------------------------------------------------------------------------

def lease_refusal(*, rater_id: int, lease_rater_id: int, rater_active: bool, status: str,
                  expired: bool, campaign_status: str) -> str | None:
    """Why a lease cannot take an answer from this rater (a refusal code), or None.
    ``expired``: its time ran out by the database's clock. A closed campaign takes nothing more,
    whatever its leases say (closing ends them, so their own state would only say "expired").
    A paused campaign's live leases still take their answers: the rater was on the item."""
    if not rater_active:
        return "account_disabled"
    if lease_rater_id != rater_id:
        return "not_your_lease"
    if campaign_status == CampaignStatus.CLOSED:
        return "campaign_closed"
    return _not_live(status=status, expired=expired)


def heartbeat_refusal(*, rater_id: int, lease_rater_id: int, rater_active: bool, status: str,
                      expired: bool, campaign_status: str) -> str | None:
    """Why a lease cannot be kept alive (a refusal code), or None: the answer's checks, and a
    campaign that is not serving. A paused campaign's leases are not extended, so they run out
    within ``lease_seconds`` and their items wait, unheld, for the campaign to resume."""
    code = lease_refusal(rater_id=rater_id, lease_rater_id=lease_rater_id,
                         rater_active=rater_active, status=status, expired=expired,
                         campaign_status=campaign_status)
    if code is None and campaign_status != CampaignStatus.ACTIVE:
        return "campaign_paused"
    return code


def _not_live(*, status: str, expired: bool) -> str | None:
    if status == AssignmentStatus.SUBMITTED:
        return "already_answered"
    if status == AssignmentStatus.EXPIRED or expired:
        return "lease_expired"
    return None


def store_refusal(*, key_taken: bool, status: str, expired: bool, campaign_status: str) -> str:
    """Why an answer that passed the checks was not stored after all: its lease was answered
    or ran out while the answer waited for its lock (or its campaign was closed, which ends its
    leases), or its key belongs to another lease. ``campaign_status``: as read after the
    lock."""
    if campaign_status == CampaignStatus.CLOSED:
        return "campaign_closed"
    code = _not_live(status=status, expired=expired)
    if code is None and not key_taken:
        raise AssertionError("an answer was neither stored nor refused")
    return code or "key_reused"


# --- the answer's shape ----------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """An answer whose shape is checked (what needs neither the lease nor its campaign)."""

    choice: str | None
    strength: int | None
    reasons: list[str]
    scores: list[dict[str, int]] | None  # in the order shown
    decision_ms: int
    viewing_ms: int
    playback: dict


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def playback_kept(playback: object) -> dict:
    """The playback evidence as stored. An event log too long to keep is cut to its first and
    last events (``events_cut`` says how many went) rather than refused: losing a rater's
    answer over its evidence would be worse. Anything else out of shape is refused."""
    if playback is None:
        return {}
    if not isinstance(playback, dict):
        raise invalid("playback: expected an object")
    events = playback.get("events", [])
    if not isinstance(events, list):
        raise invalid("playback.events: expected a list of events")
    try:
        size = len(json.dumps(playback, allow_nan=False))
    except ValueError:
        raise invalid("playback: numbers must be finite") from None
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
        raise invalid(f"playback: {size} bytes without its events, at most {MAX_PLAYBACK_BYTES}")
    return cut


def answer_shape(*, choice: object, strength: object, reasons: object, scores: object,
                 decision_ms: object, viewing_ms: object, playback: object) -> Answer:
    """The answer if its shape is right (a known choice, strength 1 to 3, a list of tags, score
    sets of the criteria); raises a 400 otherwise, whatever its lease."""
    for name, value in (("decision_ms", decision_ms), ("viewing_ms", viewing_ms)):
        if not _int(value) or not 0 <= value <= MAX_MS:  # type: ignore[operator]
            raise invalid(f"{name}: expected milliseconds between 0 and {MAX_MS}")
    if choice is not None and choice not in CHOICES:
        raise invalid(f"{MISFITS['choice']}, got {choice!r}")
    if strength is not None and (not _int(strength) or not 1 <= strength <= 3):  # type: ignore
        raise invalid(f"strength: expected 1, 2 or 3, got {strength!r}")
    reasons = reasons or []
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise misfit("reasons")
    if scores is not None:
        if not isinstance(scores, list):
            raise invalid("scores: expected a list of score sets, one per clip shown")
        for position, entry in enumerate(scores):
            if not isinstance(entry, dict) or set(entry) != set(CRITERIA):
                raise invalid(f"scores[{position}]: expected the criteria {', '.join(CRITERIA)}")
            for name, value in entry.items():
                if not _int(value) or not 1 <= value <= 5:
                    raise invalid(f"scores[{position}].{name}: expected an integer 1..5, "
                                  f"got {value!r}")
        scores = [{c: entry[c] for c in CRITERIA} for entry in scores]
    return Answer(choice, strength, sorted(set(reasons)), scores,  # type: ignore[arg-type]
                  decision_ms, viewing_ms, playback_kept(playback))  # type: ignore[arg-type]


# --- what the answer means -------------------------------------------------------------------

@dataclass(frozen=True)
class Meaning:
    """An answer in the item's terms, as stored."""

    choice: str  # as pressed ('' for group scores)
    outcome: str  # pairwise: a / b / tie / both_bad ('' for group scores)
    strength: int | None
    reasons: list[str]
    scores: list[dict[str, int]] | None  # group: per item slot


@dataclass(frozen=True)
class Rules:
    """What deciding about one answer needs of its campaign."""

    protocol: str
    ask_strength: bool
    reason_tags: list[str]
    weights: dict[str, float]


def answer_meaning(answer: Answer, *, rules: Rules, order: list[int]) -> Meaning:
    """The answer in the item's terms (``order``: shown position -> item slot); raises a 400
    if it does not fit the campaign."""
    if rules.protocol == Protocol.PAIRWISE:
        if answer.scores is not None:
            raise misfit("scores_for_pairwise")
        if answer.choice is None:
            raise misfit("choice")
        if answer.strength is not None:
            if not rules.ask_strength:
                raise misfit("strength_not_asked")
            if answer.choice not in ("left", "right"):
                raise misfit("strength_side")
        if any(r not in rules.reason_tags for r in answer.reasons):
            raise misfit("reasons")
        outcome = answer.choice
        if answer.choice in ("left", "right"):
            slot = order[0 if answer.choice == "left" else 1]  # the item slot on that side
            outcome = "a" if slot == 0 else "b"
        return Meaning(answer.choice, outcome, answer.strength, answer.reasons, None)
    if answer.choice is not None:
        raise misfit("choice_for_group")
    size = len(order)  # one position per slot of the item
    if answer.scores is None or len(answer.scores) != size:
        raise misfit("scores_count", size)
    by_slot: list[dict[str, int]] = [{}] * size
    for position, entry in enumerate(answer.scores):
        by_slot[order[position]] = entry
    # strength and reasons belong to pairwise answers
    return Meaning("", "", None, [], by_slot)


# --- probes ----------------------------------------------------------------------------------

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


def group_pairs(scores: list[dict[str, int]] | None, weights: dict[str, float]
                ) -> list[tuple[int, int, float]]:
    """Every ordered pair a group answer implies, as (better slot, worse slot, margin) by the
    weighted score; the first pair is best vs worst."""
    if not scores:
        return []
    value = _group_values(scores, weights)
    ranked = sorted(range(len(value)), key=lambda i: -value[i])
    pairs = [(i, j, value[i] - value[j]) for i in ranked for j in ranked
             if value[i] - value[j] > 0 and not math.isclose(value[i], value[j])]
    best, worst = ranked[0], ranked[-1]
    pairs.sort(key=lambda p: (p[0] != best or p[1] != worst, -p[2]))
    return pairs


@dataclass(frozen=True)
class FirstAnswer:
    """What a hidden repeat is compared with: the rater's first answer to the item."""

    outcome: str
    scores: list[dict[str, int]] | None


def probe_verdict(probe: str, meaning: Meaning, *, rules: Rules,
                  first: FirstAnswer | None = None) -> dict:
    """The probe's verdict, stored as the judgment's ``qc`` ({} for a regular item). Gold items
    have the ground truth in slot 0; a catch item shows the same clip twice (a tie is right);
    a hidden repeat of a pairwise item passes with the same outcome again, of a group item
    when the candidates it scores best (weighted) include one the first answer scored best."""
    if probe == Probe.GOLD:
        return {"probe": "gold", "passed": meaning.outcome == "a"}
    if probe == Probe.CATCH:
        return {"probe": "catch", "passed": meaning.outcome == "tie"}
    if probe == Probe.REPEAT:
        if rules.protocol == Protocol.GROUP:
            before = group_best(first.scores, rules.weights) if first else []
            now = group_best(meaning.scores, rules.weights)
            return {"probe": "repeat", "passed": bool(set(before) & set(now)),
                    "first": before, "best": now}
        return {"probe": "repeat", "passed": first is not None and first.outcome == meaning.outcome,
                "first": first.outcome if first else None}
    return {}


def probe_counts(qc: dict) -> tuple[int, int]:
    """(passed, failed): what the verdict adds to the rater's probe counters."""
    if "passed" not in qc:
        return 0, 0
    return (1, 0) if qc["passed"] else (0, 1)


@dataclass(frozen=True)
class ProbeRates:
    gold: float
    catch: float
    repeat: float


def probe_kind(rates: ProbeRates, u: float) -> str:
    """The probe kind a uniform number ``u`` in [0, 1) draws at the campaign's rates, or '' for
    a regular item."""
    if u < rates.gold:
        return Probe.GOLD
    if u < rates.gold + rates.catch:
        return Probe.CATCH
    if u < rates.gold + rates.catch + rates.repeat:
        return Probe.REPEAT
    return ""


def probe_draws(rates: ProbeRates, numbers: list[float], *, answered: int) -> list[str]:
    """For each lease a top-up may grant (one uniform number each), the probe drawn for it ('' for
    a regular item). A rater's first item is always a regular one (a probe first would tell them
    what probes look like)."""
    draws = [probe_kind(rates, u) for u in numbers]
    if answered == 0 and draws:
        draws[0] = ""
    return draws


# --- the rater -------------------------------------------------------------------------------

def blocks(*, probes_failed: int, block_after: int) -> bool:
    """Whether a rater with this many failed probes is blocked (served nothing more)."""
    return probes_failed >= block_after


def warned(*, probes_failed: int, warn_after: int, blocked: bool) -> bool:
    """Whether the rater is told to watch more carefully (failed enough probes, not blocked)."""
    return probes_failed >= warn_after and not blocked


def serving_state(*, rater_active: bool, needs_consent: bool, consented: bool, blocked: bool,
                  excluded: bool, campaign_status: str) -> str:
    """Why no items are served to a rater, or ``rating``: consent | blocked | paused | finished
    (a rater who is served may still get none: ``idle_state``).
    Raters excluded by quality control are told they are finished, as blocked raters are told
    they are blocked (the probes they failed were theirs to see; a review of their work is not).
    """
    if not rater_active:
        raise refusal("account_disabled")
    if needs_consent and not consented:
        return "consent"
    if blocked:
        return "blocked"
    if campaign_status != CampaignStatus.ACTIVE:
        return "paused" if campaign_status != CampaignStatus.CLOSED else "finished"
    if excluded:
        return "finished"
    return "rating"


# --- leases that are held and not answered ------------------------------------------------------

def lease_expiry(*, now: datetime, leased_at: datetime, lease_seconds: int,
                 max_age_s: int) -> datetime:
    """When a lease granted at ``leased_at`` and kept alive at ``now`` expires: ``lease_seconds``
    ahead, but never later than ``max_age_s`` after it was granted, so that a page which
    heartbeats and never answers cannot hold an item for ever. (The database functions compute
    the same with ``least``.)"""
    return min(now + timedelta(seconds=lease_seconds), leased_at + timedelta(seconds=max_age_s))


def cool_down_left(*, lapses: int, lapsed_at: datetime | None, now: datetime, limit: int,
                   cool_down_s: int) -> int:
    """Seconds before a rater is given a new item again (0: now), from their lapses in the
    campaign: leases that ended without an answer (ran out, or were ended), with no answer of
    theirs since. From ``limit`` lapses on, no new item until ``cool_down_s`` after the latest.

    An honest rater answers, and any answer clears the count; a few pages closed or left in a
    background tab stay under the limit. A client that takes items, heartbeats and never answers
    reaches it after ``limit / PREFETCH`` rounds of leases that each ran to their maximum age,
    and then holds nothing for ``cool_down_s`` after each further round. ``limit`` 0: never."""
    if limit <= 0 or lapses < limit or lapsed_at is None:
        return 0
    left = (lapsed_at + timedelta(seconds=cool_down_s) - now).total_seconds()
    return max(0, math.ceil(left))


def idle_state(*, quota_left: int, open_items: bool, cool_down_s: int) -> str:
    """Why a rater who is served holds no lease after a top-up:

    * ``finished``: nothing is left for them: they answered their quota, or no item has room
      that they have not answered;
    * ``cool_down``: items are left, but their leases kept running out unanswered
      (``cool_down_left`` seconds, ``cool_down_s``);
    * ``waiting``: every item left for them is held, for now, by other raters' leases (or a
      lease of theirs that ran out is not released yet): some come back when those run out,
      so they are asked to try again, and are not told the campaign is finished."""
    if quota_left <= 0 or not open_items:
        return "finished"
    if cool_down_s > 0:
        return "cool_down"
    return "waiting"


def completion_earned(*, answered: int) -> bool:
    """Whether a finished rater is given the completion code (and the link back to the crowd
    platform). A campaign asks each rater for the items it has for them, up to
    ``per_rater_limit``: a finished rater who answered at least one did what was asked, however
    few items were left. One who answered none was given nothing to do (every item was taken by
    the time they came) and gets no code for it."""
    return answered > 0
