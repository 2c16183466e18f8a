"""Every HTML page carries the Content-Security-Policy; the rate page is kept by no cache."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.annotation.conftest import enrol, make_campaign, make_corpus


@pytest.fixture
def researcher(db):
    from django.contrib.auth import get_user_model

    from annotation.roles import RESEARCHER, role_add

    user = get_user_model().objects.create_user("res", password="pw-res-1234")
    role_add(user, RESEARCHER)
    return user


@pytest.fixture
def campaign(researcher):
    return make_campaign(make_corpus(), overlap=3, created_by=researcher)


def _policy(reply) -> dict[str, str]:
    return {d.split()[0]: d.partition(" ")[2] for d in
            reply["Content-Security-Policy"].split("; ")}


def test_every_html_page_carries_the_content_security_policy(campaign, researcher):
    # given: a researcher and an enrolled rater, each signed in
    (rater,) = enrol(campaign)
    research, rate = Client(), Client()
    research.force_login(researcher)
    rate.force_login(rater)
    pages = [
        (research, reverse("annotation:campaigns")),
        (research, reverse("annotation:campaign", args=[campaign.slug])),
        (research, reverse("feedback:quality", args=[campaign.slug])),
        (rate, reverse("annotation:rate", args=[campaign.slug])),
        (Client(), reverse("admin:login")),
        (Client(), reverse("annotation:sign-in")),
    ]
    for client, url in pages:
        # when
        reply = client.get(url)
        # then: scripts only from the site, no framing, no plugins
        assert reply.status_code == 200, url
        assert reply["Content-Type"].startswith("text/html"), url
        policy = _policy(reply)
        assert policy["default-src"] == "'self'", url
        assert policy["script-src"] == "'self'", url
        assert policy["frame-ancestors"] == "'none'", url
        assert policy["object-src"] == "'none'", url
        assert policy["img-src"] == "'self' data:" and policy["media-src"] == "'self' blob:"
        assert policy["base-uri"] == "'self'" and policy["form-action"] == "'self'"
        assert b"<script>" not in reply.content, url  # nothing inline the policy would block


def test_json_replies_carry_no_page_policy(campaign):
    (rater,) = enrol(campaign)
    c = Client()
    c.force_login(rater)
    reply = c.post(reverse("annotation:api-next", args=[campaign.slug]))
    assert reply.status_code == 200 and "Content-Security-Policy" not in reply


def test_the_rate_page_is_kept_by_no_cache(campaign):
    (rater,) = enrol(campaign)
    c = Client()
    c.force_login(rater)
    reply = c.get(reverse("annotation:rate", args=[campaign.slug]))
    assert reply.status_code == 200
    assert "no-store" in reply["Cache-Control"]
    assert "private" in reply["Cache-Control"]
