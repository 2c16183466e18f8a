"""Accounts that take items, heartbeat and never answer cannot hold them for ever: a lease ends
``LEASE_MAX_AGE_S`` after it was granted whatever its heartbeats, and a rater whose leases keep
running out unanswered is given nothing new for a while. An honest rater who finds every item
left held by others is told to wait, not that the campaign is finished, and is shown no
completion code. Through both rating paths (the PostgreSQL functions and the portable
statements) and both doors (the REST views and the fast path in front of Django)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from annotation.models import Assignment, AssignmentStatus, Enrollment, Item, Judgment, Probe
from annotation.services.scheduling import PREFETCH, assignments_expire
from tests.annotation.conftest import enrol, make_campaign, make_corpus, token_client

pytestmark = pytest.mark.usefixtures("both_rating_paths")


def _next(client, campaign) -> dict:
    reply = client.post(reverse("annotation:api-next", args=[campaign.slug]))
    assert reply.status_code == 200, reply.content
    return reply.json()


def _beat(client, lease: str):
    return client.post(reverse("annotation:api-heartbeat", args=[lease]))


def _answer(client, lease: str):
    return client.post(reverse("annotation:api-judgment", args=[lease]),
                       {"idempotency_key": str(uuid.uuid4()), "choice": "left",
                        "decision_ms": 900})


def _ids(body: dict) -> list[str]:
    return [lease["id"] for lease in body["assignments"]]


def _lapse(rater, tokens: list[str] | None = None) -> None:
    """The rater's live leases (or those named) run out now, unanswered (after any answer
    already stored)."""
    now = timezone.now()
    leases = Assignment.objects.filter(rater=rater, status=AssignmentStatus.ACTIVE,
                                       expires_at__gt=now)
    if tokens is not None:
        leases = leases.filter(token__in=tokens)
    leases.update(expires_at=now)


def _granted_earlier(rater, seconds: float, *, expiry_too: bool = False) -> None:
    """The rater's leases as if granted ``seconds`` earlier (and, with ``expiry_too``, last
    extended that much earlier as well)."""
    back = timedelta(seconds=seconds)
    moved = {"leased_at": F("leased_at") - back, "heartbeat_at": F("heartbeat_at") - back}
    if expiry_too:
        moved["expires_at"] = F("expires_at") - back
    Assignment.objects.filter(rater=rater).update(**moved)


def _item_of(lease: str) -> int:
    return Assignment.objects.get(token=lease).item_id


# -- a lease's lifetime ---------------------------------------------------------------------------

def test_heartbeats_do_not_keep_a_lease_past_its_maximum_age(corpus, rating_door, settings):
    # given: leases of 90 s kept alive by heartbeats, at most 600 s from their grant; a rater
    # whose page has heartbeated for 590 s without answering
    settings.LEASE_MAX_AGE_S = 600
    campaign = make_campaign(corpus, overlap=1, lease_seconds=90)
    squatter, honest = enrol(campaign, 2)
    me = token_client(campaign, squatter, rating_door)
    first, second = _ids(_next(me, campaign))
    _granted_earlier(squatter, 590)

    # when: it heartbeats again
    beat = _beat(me, first)

    # then: the leases are extended to their maximum age, not 90 s ahead
    assert beat.status_code == 200, beat.content
    for lease in Assignment.objects.filter(rater=squatter):
        assert lease.expires_at == lease.leased_at + timedelta(seconds=600)

    # when: that age has passed
    _granted_earlier(squatter, 20, expiry_too=True)
    beat = _beat(me, second)
    late = _answer(me, first)

    # then: the leases are over: no heartbeat revives them, no answer is taken, and their
    # items go to the next rater who asks
    assert (beat.status_code, beat.json()["error"]) == (410, "lease_expired")
    assert (late.status_code, late.json()["error"]) == (410, "lease_expired")
    assert not Judgment.objects.exists()
    served = _ids(_next(token_client(campaign, honest, rating_door), campaign))
    assert {_item_of(t) for t in served} == {_item_of(first), _item_of(second)}


def test_a_lease_is_granted_for_no_longer_than_the_maximum_age(corpus, rating_door, settings):
    # given: leases of 90 s, at most 30 s from their grant
    settings.LEASE_MAX_AGE_S = 30
    campaign = make_campaign(corpus, overlap=1, lease_seconds=90)
    (rater,) = enrol(campaign)
    me = token_client(campaign, rater, rating_door)

    # when: leases are granted by the next call and by an answer's top-up
    first, _ = _ids(_next(me, campaign))
    answered = _answer(me, first)
    assert answered.status_code == 201, answered.content

    # then: every lease granted ends 30 s after its grant
    leases = Assignment.objects.filter(rater=rater)
    assert leases.count() == PREFETCH + 1
    for lease in leases.exclude(status=AssignmentStatus.SUBMITTED):
        assert lease.expires_at == lease.leased_at + timedelta(seconds=30)


# -- leases that keep running out -----------------------------------------------------------------

def test_a_rater_whose_leases_keep_running_out_unanswered_is_given_nothing_for_a_while(
        corpus, rating_door, settings):
    # given: a cool-down of ten minutes after four lapses; a rater whose pages took items and
    # let them run out twice, without answering (the reaper ended some of them)
    settings.LEASE_LAPSES_BEFORE_COOL_DOWN = 4
    settings.LEASE_COOL_DOWN_S = 600
    campaign = make_campaign(corpus, overlap=3)
    squatter, honest = enrol(campaign, 2)
    me = token_client(campaign, squatter, rating_door)
    for _ in range(2):
        assert len(_ids(_next(me, campaign))) == PREFETCH
        _lapse(squatter)
        assignments_expire()
    leases = Assignment.objects.count()

    # when: it asks for items again
    body = _next(me, campaign)

    # then: none, the reason, and when to come back; no lease was written
    assert (body["state"], body["assignments"]) == ("cool_down", [])
    assert 0 < body["retry_after"] <= 600
    assert "ran out without an answer" in body["detail"]
    assert (body["completion_code"], body["completion_url"]) == ("", "")
    assert Assignment.objects.count() == leases
    assert Enrollment.objects.get(rater=squatter).finished_at is None
    # another rater is served as before
    assert _next(token_client(campaign, honest, rating_door), campaign)["state"] == "rating"

    # when: the cool-down has passed (the lapses are ten minutes older)
    Assignment.objects.filter(rater=squatter).update(
        expires_at=F("expires_at") - timedelta(seconds=600))

    # then: it is served again
    again = _next(me, campaign)
    assert again["state"] == "rating" and len(again["assignments"]) == PREFETCH


def test_an_answer_clears_the_lapses_and_a_cool_down_keeps_the_leases_held(
        corpus, rating_door, settings):
    # given: a cool-down after three lapses; a rater whose first two leases ran out, then who
    # answered an item, and whose two leases then ran out again
    settings.LEASE_LAPSES_BEFORE_COOL_DOWN = 3
    settings.LEASE_COOL_DOWN_S = 600
    campaign = make_campaign(corpus, overlap=3)
    (rater,) = enrol(campaign)
    me = token_client(campaign, rater, rating_door)
    _next(me, campaign)
    _lapse(rater)
    lease = _ids(_next(me, campaign))[0]
    assert _answer(me, lease).status_code == 201
    _lapse(rater)

    # when: it asks again (two lapses since its answer: under the limit)
    body = _next(me, campaign)

    # then: it is served
    assert body["state"] == "rating" and len(body["assignments"]) == PREFETCH

    # when: one of those runs out too (three lapses since the answer)
    kept, dropped = _ids(body)
    _lapse(rater, [dropped])
    cooling = _next(me, campaign)

    # then: it keeps the lease it holds and is given no new one ...
    assert cooling["state"] == "rating" and _ids(cooling) == [kept]
    assert Assignment.objects.filter(rater=rater, status=AssignmentStatus.ACTIVE,
                                     expires_at__gt=timezone.now()).count() == 1
    # ... until it answers it: the answer ends the cool-down
    answered = _answer(me, kept)
    assert answered.status_code == 201, answered.content
    assert answered.json()["next"]["state"] == "rating"
    assert len(answered.json()["next"]["assignments"]) == PREFETCH


# -- every item left is held by someone else ------------------------------------------------------

def test_an_honest_rater_is_told_to_wait_while_others_hold_the_items_left(db, rating_door):
    # given: three items, one answer each, all three held by two other raters' leases
    campaign = make_campaign(make_corpus(episodes=1, seed=5), overlap=1,
                             completion_code="C0DE42",
                             completion_url="https://crowd.example/done")
    assert Item.objects.filter(campaign=campaign, probe=Probe.NONE).count() == 3
    holder, late_holder, honest, newcomer = enrol(campaign, 4)
    held = _ids(_next(token_client(campaign, holder, rating_door), campaign))
    (last,) = _ids(_next(token_client(campaign, late_holder, rating_door), campaign))
    me = token_client(campaign, honest, rating_door)

    # when: the honest rater asks for items
    body = _next(me, campaign)

    # then: none for now, and it is told so: no completion code, not finished
    assert (body["state"], body["assignments"]) == ("waiting", [])
    assert (body["completion_code"], body["completion_url"]) == ("", "")
    assert 0 < body["retry_after"] <= campaign.lease_seconds
    assert "someone else" in body["detail"]
    assert Enrollment.objects.get(rater=honest).finished_at is None

    # when: one holder's lease runs out, it gets that item; answering it, with the other two
    # items still held, it is again told to wait
    _lapse(late_holder)
    (mine,) = _ids(_next(me, campaign))
    assert _item_of(mine) == _item_of(last)
    answered = _answer(me, mine)
    assert answered.status_code == 201, answered.content
    after = answered.json()["next"]
    assert (after["state"], after["assignments"], after["completion_code"]) == (
        "waiting", [], "")

    # when: the holder answers its items, nothing is left
    holder_client = token_client(campaign, holder, rating_door)
    for lease in held:
        assert _answer(holder_client, lease).status_code == 201

    # then: the rater who answered is finished and shown the code and the link back ...
    done = _next(me, campaign)
    assert (done["state"], done["completion_code"]) == ("finished", "C0DE42")
    assert done["completion_url"] == "https://crowd.example/done"
    assert done["detail"] == "You have answered every item we have for you."
    # ... and one who came too late to answer anything is finished without them
    none_left = _next(token_client(campaign, newcomer, rating_door), campaign)
    assert (none_left["state"], none_left["assignments"]) == ("finished", [])
    assert (none_left["completion_code"], none_left["completion_url"]) == ("", "")
    assert "no items left for you" in none_left["detail"]
