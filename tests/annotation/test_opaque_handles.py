"""What raters are handed names rows without telling their numbers (the platform's volume)."""

from __future__ import annotations

import re
import uuid

import pytest
from django.core import signing
from django.urls import reverse

from annotation.models import Enrollment, Judgment
from annotation.opaque import judgment_ref, open_ids, seal_ids
from annotation.services.enrollment import rater_token_make, rater_token_read
from tests.annotation.conftest import enrol, make_campaign, token_client


def test_sealed_ids_round_trip_and_two_seals_share_nothing():
    a, b = seal_ids(7, 12), seal_ids(7, 12)
    assert a != b and open_ids(a, 2) == open_ids(b, 2) == (7, 12)
    for bad in ("", "abc", a[:-2], a + "AA", "!!!!"):
        with pytest.raises(ValueError):
            open_ids(bad, 2)


@pytest.mark.django_db
def test_the_rater_token_and_the_judgment_reference_carry_no_row_numbers(rating_door):
    # given: a rater whose account and campaign have small, guessable numbers
    campaign = make_campaign()
    (user,) = enrol(campaign)
    enrollment = Enrollment.objects.get(campaign=campaign, rater=user)
    token = rater_token_make(enrollment=enrollment)
    # then: the token's readable part (before the timestamp) shows neither number ...
    value = token.rsplit(":", 2)[0]
    assert not re.search(rf"(^|\D){user.pk}\.{campaign.pk}(\D|$)", value)
    assert rater_token_make(enrollment=enrollment) != token  # ... nor repeats itself
    assert rater_token_read(token) == (user.pk, campaign.pk)
    # a token with its sealed part changed is refused
    forged = ("A" if value[0] != "A" else "B") + token[1:]
    with pytest.raises(signing.BadSignature):
        rater_token_read(forged)
    # when: the rater answers, through either door
    c = token_client(campaign, user, rating_door)
    lease = c.post(reverse("annotation:api-next", args=[campaign.slug])).json()[
        "assignments"][0]
    reply = c.post(reverse("annotation:api-judgment", args=[lease["id"]]),
                   {"idempotency_key": str(uuid.uuid4()), "choice": "tie", "decision_ms": 5})
    # then: the reply names the judgment by an opaque reference, not its number
    stored = Judgment.objects.get(assignment__token=lease["id"])
    assert reply.status_code == 201
    assert reply.json()["judgment"] == judgment_ref(stored.pk) != stored.pk
    assert not str(reply.json()["judgment"]).isdigit()
