"""An account switched off (``User.is_active`` false) lets go of the items it holds at once, and
every rating call made with its rater token is refused: through both rating paths (the
PostgreSQL functions and the portable statements) and both doors (the REST views and the fast
path in front of Django)."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation.models import Assignment, AssignmentStatus, Campaign, Judgment
from tests.annotation.conftest import enrol, make_campaign, token_client


@pytest.fixture
def campaign(corpus):
    return make_campaign(corpus, overlap=1)


def _leases(client, campaign: Campaign) -> list[str]:
    reply = client.post(reverse("annotation:api-next", args=[campaign.slug]))
    assert reply.status_code == 200, reply.content
    return [lease["id"] for lease in reply.json()["assignments"]]


def _live(rater) -> set[str]:
    return {str(t) for t in Assignment.objects.filter(
        rater=rater, status=AssignmentStatus.ACTIVE).values_list("token", flat=True)}


def _rows(rater) -> list[tuple]:
    return list(Assignment.objects.filter(rater=rater).order_by("pk")
                .values_list("token", "status", "expires_at", "heartbeat_at"))


def test_a_switched_off_account_lets_go_of_its_items_and_every_call_is_refused(
        campaign, rating_door, both_rating_paths):
    # given: a rater holding two leases, unanswered; saving the account while it is on ends
    # nothing
    rater, other = enrol(campaign, 2)
    me = token_client(campaign, rater, rating_door)
    first, second = _leases(me, campaign)
    rater.save()
    assert _live(rater) == {first, second}

    # when: an administrator switches the account off
    rater.is_active = False
    rater.save()

    # then: its leases ended now (not when they run out) ...
    assert _live(rater) == set()
    ended = _rows(rater)
    # ... and every call with its token is refused with the reason, changing nothing
    for reply in [
        me.post(reverse("annotation:api-heartbeat", args=[first])),
        me.post(reverse("annotation:api-judgment", args=[second]),
                {"idempotency_key": str(uuid.uuid4()), "choice": "left", "decision_ms": 900}),
        me.post(reverse("annotation:api-next", args=[campaign.slug])),
    ]:
        assert reply.status_code == 403, reply.content
        assert reply.json() == {"error": "account_disabled",
                                "detail": "this account has been switched off"}
        assert "no-store" in reply["Cache-Control"]
    assert _rows(rater) == ended
    assert not Judgment.objects.exists()
    # the items it held are served to another rater (overlap 1: no one else could have them)
    held = set(Assignment.objects.filter(token__in=[first, second])
               .values_list("item_id", flat=True))
    theirs = _leases(token_client(campaign, other, rating_door), campaign)
    assert set(Assignment.objects.filter(token__in=theirs).values_list("item_id", flat=True)) \
        == held


def test_switching_an_account_off_in_the_admin_ends_its_leases(campaign):
    # given: a rater holding leases, and an administrator on the account's admin page
    (rater,) = enrol(campaign)
    leases = set(_leases(token_client(campaign, rater), campaign))
    assert _live(rater) == leases
    admin = Client()
    admin.force_login(get_user_model().objects.create_superuser("root", password="pw-root-1"))
    url = reverse("admin:auth_user_change", args=[rater.pk])
    assert admin.get(url).status_code == 200
    joined = timezone.localtime(rater.date_joined)

    # when: "Active" is unticked and the form saved
    reply = admin.post(url, {"username": rater.username, "first_name": "", "last_name": "",
                             "email": "", "date_joined_0": joined.date().isoformat(),
                             "date_joined_1": joined.time().isoformat(timespec="seconds")})

    # then: the account is off and holds nothing
    assert reply.status_code == 302, reply.context and reply.context["adminform"].form.errors
    rater.refresh_from_db()
    assert not rater.is_active
    assert _live(rater) == set()
