"""The rater's three calls (next, heartbeat, judgment) as data in, (status, body) out.

Two front doors answer them with these functions, so both answer alike: the REST views in
``annotation.apis`` (any client, the session or the rater token, content negotiation, the
browsable API) and ``annotation.fastpath``, which serves the rate page's own requests in front of
Django. Neither adds rules of its own.
"""

from __future__ import annotations

from annotation import rules
from annotation.opaque import judgment_ref
from annotation.selectors import assignments_payload
from annotation.services.judgments import judgment_submit
from annotation.services.scheduling import (
    LeaseError,
    NextResult,
    assignment_heartbeat,
    assignments_next,
)
from annotation.services.throttle import wait_words

Reply = tuple[int, dict]

WARNING = ("Some of your recent answers did not match the checks built into this study. "
           "Please watch each clip to the end before answering.")
ANSWER_FIELDS = ("idempotency_key", "choice", "strength", "reasons", "scores", "decision_ms",
                 "viewing_ms", "playback")


def error(status: int, code: str, message: str) -> Reply:
    return status, {"error": code, "detail": message}


def refused(exc: LeaseError) -> Reply:
    return error(exc.status, exc.code, exc.message)


# What the page says for each state it shows no item in (``detail``).
DETAILS = {
    "finished": "You have answered every item we have for you.",
    "finished_unearned": "There are no items left for you in this study, so there is nothing "
                         "to complete. Thank you for your interest.",
    "waiting": "Every item left is being rated by someone else right now, and some usually "
               "come back within a few minutes. This page will try again by itself.",
    "cool_down": "Several items you were given ran out without an answer, so no new items are "
                 "given to you for {}. Please come back then, and answer each item you are "
                 "shown.",
    "blocked": "We have enough answers from you for this study.",
    "paused": "This study is paused. Please come back later.",
    "consent": "Please open your invite link again to agree to the terms.",
}


def next_body(result: NextResult) -> dict:
    """The next call's reply: the items, or why there are none (``state``, ``detail``), when
    to ask again (``retry_after``: waiting, cool_down) and, for a rater who finished after
    answering, the completion code."""
    earned = result.state == "finished" and rules.completion_earned(answered=result.done)
    detail = ""
    if result.state == "finished":
        detail = DETAILS["finished" if earned else "finished_unearned"]
    elif result.state == "cool_down":
        detail = DETAILS["cool_down"].format(wait_words(result.retry_after))
    elif result.state != "rating":
        detail = DETAILS.get(result.state, "")
    return {
        "state": result.state,
        "detail": detail,
        "retry_after": result.retry_after,
        "done": result.done,
        "quota": result.quota,
        "warning": WARNING if result.warned else "",
        "completion_code": result.seat.completion_code if earned else "",
        "completion_url": result.seat.completion_url if earned else "",
        "assignments": assignments_payload(result.assignments),
    }


def call_next(rater, slug: str, campaign_id: int | None) -> Reply:
    """The items to rate now (leased). ``campaign_id``: the campaign a rater token is bound to
    (None for a session)."""
    try:
        result = assignments_next(rater=rater, campaign_slug=slug, campaign_id=campaign_id)
    except LeaseError as exc:
        return refused(exc)
    return 200, next_body(result)


def call_heartbeat(rater, token: str, campaign_id: int | None) -> Reply:
    try:
        expires = assignment_heartbeat(rater=rater, token=token, campaign_id=campaign_id)
    except LeaseError as exc:
        return refused(exc)
    return 200, {"expires_at": expires}


def call_judgment(rater, token: str, body: object, campaign_id: int | None) -> Reply:
    """Store the answer (exactly once); the reply carries the rater's next items."""
    if not isinstance(body, dict):
        return error(400, "invalid", "expected a JSON object")
    for name in ("idempotency_key", "decision_ms"):
        if body.get(name) is None:
            return error(400, "invalid", f"{name}: this field is required")
    answer = {k: body[k] for k in ANSWER_FIELDS if body.get(k) is not None}
    try:
        submitted = judgment_submit(rater=rater, token=token, top_up=True,
                                    campaign_id=campaign_id, **answer)
    except LeaseError as exc:
        return refused(exc)
    out = {"stored": submitted.created, "judgment": judgment_ref(submitted.judgment.pk)}
    if submitted.next is not None:
        out["next"] = next_body(submitted.next)
    return (201 if submitted.created else 200), out
