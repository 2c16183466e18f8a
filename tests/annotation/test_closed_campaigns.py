"""A campaign that is not active keeps no leases alive, and a closed one takes no more answers:
through both rating paths (the PostgreSQL functions and the portable statements) and both doors
(the REST views and the fast path in front of Django)."""

from __future__ import annotations

import uuid

import pytest
from django.urls import reverse

from annotation.models import Assignment, AssignmentStatus, Campaign, Judgment
from annotation.services import judgments
from annotation.services.campaigns import campaign_set_status
from annotation.services.judgments import judgment_submit
from tests.annotation.conftest import enrol, make_campaign, token_client


@pytest.fixture
def campaign(corpus):
    return make_campaign(corpus, overlap=3)


def _leases(client, campaign: Campaign) -> list[dict]:
    reply = client.post(reverse("annotation:api-next", args=[campaign.slug]))
    assert reply.status_code == 200, reply.content
    return reply.json()["assignments"]


def _answer(client, lease: str, key: str | None = None):
    return client.post(reverse("annotation:api-judgment", args=[lease]),
                       {"idempotency_key": key or str(uuid.uuid4()), "choice": "left",
                        "decision_ms": 900})


def _beat(client, lease: str):
    return client.post(reverse("annotation:api-heartbeat", args=[lease]))


def _expiry(lease: str):
    return Assignment.objects.get(token=lease).expires_at


def test_closing_ends_the_leases_and_refuses_heartbeats_and_answers(
        campaign, rating_door, both_rating_paths):
    # given: a rater holding two leases, one of them answered
    (rater,) = enrol(campaign)
    me = token_client(campaign, rater, rating_door)
    first, second = (lease["id"] for lease in _leases(me, campaign))
    key = str(uuid.uuid4())
    assert _answer(me, first, key).status_code == 201

    # when: the campaign is closed
    campaign_set_status(campaign=campaign, status="closed")

    # then: its live leases ended, and the rater's calls are refused with the reason
    assert Assignment.objects.get(token=second).status == AssignmentStatus.EXPIRED
    assert not Assignment.objects.filter(campaign=campaign,
                                         status=AssignmentStatus.ACTIVE).exists()
    beat = _beat(me, second)
    late = _answer(me, second)
    assert (beat.status_code, beat.json()["error"]) == (409, "campaign_closed")
    assert (late.status_code, late.json()["error"]) == (409, "campaign_closed")
    assert late.json()["detail"] == "this campaign is closed: it takes no more answers"
    assert Judgment.objects.filter(campaign=campaign).count() == 1
    # a retry of the answer stored before the close still gets it back (a lost response)
    retry = _answer(me, first, key)
    assert (retry.status_code, retry.json()["stored"]) == (200, False)
    # and nothing more is served
    after = me.post(reverse("annotation:api-next", args=[campaign.slug])).json()
    assert (after["state"], after["assignments"]) == ("finished", [])
    assert Judgment.objects.filter(campaign=campaign).count() == 1


def test_a_live_lease_of_a_closed_campaign_is_neither_extended_nor_answered(
        campaign, rating_door, both_rating_paths):
    # given: a lease that is still live although its campaign is closed (granted by a top-up
    # that raced the close, say): the campaign, not the lease, refuses
    (rater,) = enrol(campaign)
    me = token_client(campaign, rater, rating_door)
    lease = _leases(me, campaign)[0]["id"]
    expiry = _expiry(lease)
    Campaign.objects.filter(pk=campaign.pk).update(status="closed")

    # when
    beat = _beat(me, lease)
    answer = _answer(me, lease)

    # then
    assert (beat.status_code, beat.json()["error"]) == (409, "campaign_closed")
    assert (answer.status_code, answer.json()["error"]) == (409, "campaign_closed")
    assert _expiry(lease) == expiry
    assert not Judgment.objects.exists()


def test_an_answer_that_was_read_before_the_close_is_refused_when_stored(campaign, settings):
    # given: the database functions' two calls, and the campaign closed between them (the
    # lease's context read while it was open)
    settings.RATING_DB_FUNCTIONS = True
    (rater,) = enrol(campaign)
    lease = _leases(token_client(campaign, rater), campaign)[0]["id"]
    decide = judgments._decide

    def decide_then_close(*args, **kwargs):
        decision = decide(*args, **kwargs)
        campaign_set_status(campaign=campaign, status="closed")
        return decision

    # when
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(judgments, "_decide", decide_then_close)
        with pytest.raises(judgments.LeaseError) as refused:
            judgment_submit(rater=rater, token=lease, idempotency_key=uuid.uuid4(),
                            choice="left", decision_ms=900, top_up=True)

    # then
    assert refused.value.code == "campaign_closed"
    assert not Judgment.objects.exists()


def test_a_paused_campaign_lets_its_leases_run_out(campaign, rating_door, both_rating_paths):
    # given: a rater holding two leases
    (rater,) = enrol(campaign)
    me = token_client(campaign, rater, rating_door)
    first, second = (lease["id"] for lease in _leases(me, campaign))
    expiry = _expiry(second)

    # when: the campaign is paused
    campaign_set_status(campaign=campaign, status="paused")

    # then: heartbeats no longer extend the leases (they run out within lease_seconds)...
    beat = _beat(me, second)
    assert (beat.status_code, beat.json()["error"]) == (409, "campaign_paused")
    assert _expiry(second) == expiry
    # ... the item on screen may still be answered while its lease lasts, and nothing new is
    # served
    answered = _answer(me, first)
    assert answered.status_code == 201, answered.content
    assert answered.json()["next"]["state"] == "paused"
    assert answered.json()["next"]["assignments"] == []
    after = me.post(reverse("annotation:api-next", args=[campaign.slug])).json()
    assert (after["state"], after["assignments"]) == ("paused", [])

    # when: it resumes, the rater is served and kept again
    campaign_set_status(campaign=campaign, status="active")
    served = _leases(me, campaign)
    assert served
    assert _beat(me, served[0]["id"]).status_code == 200
