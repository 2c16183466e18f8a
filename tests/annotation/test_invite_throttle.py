"""Invite links make accounts for people who open them signed out: how many is throttled per
client address and per link, in the cache the sign-in throttle counts in. Past a limit the link
answers 429 and makes nothing; reopening it (the same crowd participant, a signed-in account)
makes no account and is never refused."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from annotation.models import Enrollment, Invite
from annotation.services import throttle
from annotation.services.campaigns import invite_create
from tests.annotation.conftest import make_campaign

WINDOW_S = 3600


@pytest.fixture
def throttle_cache(cache_kind, settings):
    """The throttle's counts in each cache (``cache_kind``), with this file's limits."""
    settings.INVITE_MAX_ACCOUNTS_PER_ADDRESS = 3
    settings.INVITE_MAX_ACCOUNTS_PER_LINK_PER_WINDOW = 5
    settings.INVITE_WINDOW_S = WINDOW_S
    settings.SIGN_IN_PROXIES = 0
    return cache_kind


@pytest.fixture
def clock(monkeypatch):
    """The throttle's clock, moved by hand (``clock.now += seconds``)."""

    class Clock:
        now = 1_000_000 * WINDOW_S + 10.0  # just after a window began

    monkeypatch.setattr(throttle, "_now", lambda: Clock.now)
    return Clock


@pytest.fixture
def campaign(corpus):
    return make_campaign(corpus)


def _open(url: str, address: str, client: Client | None = None, **data):
    """The Start button of the invite page, pressed from ``address``."""
    return (client or Client()).post(url, data, REMOTE_ADDR=address)


def _made() -> tuple[int, int]:
    """(accounts, enrolments)."""
    return get_user_model().objects.count(), Enrollment.objects.count()


def test_one_address_makes_accounts_up_to_its_limit_then_is_refused_and_nothing_is_made(
        campaign, throttle_cache, clock):
    # given: a link, and three accounts made through it from one address
    invite = invite_create(campaign=campaign)
    url = reverse("annotation:invite", args=[invite.token])
    assert [_open(url, "10.0.0.1").status_code for _ in range(3)] == [302] * 3
    before = _made()

    # when: a fourth from the same address
    refused = _open(url, "10.0.0.1")

    # then: refused with the reason and when to come back, and nothing made or used
    assert refused.status_code == 429
    assert b"Too many new accounts have been made from your network address" in refused.content
    assert 0 < int(refused["Retry-After"]) <= WINDOW_S
    assert "_auth_user_id" not in refused.client.session
    assert _made() == before
    assert Invite.objects.get(pk=invite.pk).uses == 3
    # another address is not held back, and the window's end frees this one
    assert _open(url, "10.0.0.2").status_code == 302
    clock.now += WINDOW_S
    assert _open(url, "10.0.0.1").status_code == 302
    assert _made() == (before[0] + 2, before[1] + 2)


def test_one_link_makes_accounts_up_to_its_limit_per_window(campaign, throttle_cache, clock):
    # given: a link that made five accounts, each from its own address
    invite = invite_create(campaign=campaign)
    url = reverse("annotation:invite", args=[invite.token])
    assert [_open(url, f"10.0.1.{n}").status_code for n in range(5)] == [302] * 5
    before = _made()

    # when: a sixth, from an address of its own
    refused = _open(url, "10.0.1.99")

    # then
    assert refused.status_code == 429
    assert b"This invite link has taken as many new raters as it can" in refused.content
    assert _made() == before
    # another link of the campaign is counted apart, and this one takes raters again in the
    # next window
    other = reverse("annotation:invite", args=[invite_create(campaign=campaign).token])
    assert _open(other, "10.0.1.99").status_code == 302
    clock.now += WINDOW_S
    assert _open(url, "10.0.1.99").status_code == 302


def test_reopening_the_link_makes_no_account_and_is_never_refused(corpus, throttle_cache, clock,
                                                                  settings):
    # given: a crowd study whose link may make one account per address
    settings.INVITE_MAX_ACCOUNTS_PER_ADDRESS = 1
    campaign = make_campaign(corpus, crowd_param="PROLIFIC_PID")
    url = reverse("annotation:invite", args=[invite_create(campaign=campaign).token])
    first = Client()
    assert _open(url, "10.0.2.1", first, PROLIFIC_PID="abc123").status_code == 302
    researcher = get_user_model().objects.create_user("someone", password="pw-someone-1234")
    before = _made()

    # when: the same participant opens it again (another browser, and the same one), and an
    # account that exists already opens it signed in, all from that address
    again = _open(url, "10.0.2.1", PROLIFIC_PID="abc123")
    same_tab = _open(url, "10.0.2.1", first, PROLIFIC_PID="abc123")
    signed_in = Client()
    signed_in.force_login(researcher)
    joined = _open(url, "10.0.2.1", signed_in)

    # then: each is let in, and only the signed-in account's enrolment is new
    assert [r.status_code for r in (again, same_tab, joined)] == [302, 302, 302]
    assert _made() == (before[0], before[1] + 1)
    assert Enrollment.objects.filter(campaign=campaign, rater=researcher).exists()
    # while a new participant from the address is refused: the one account was counted once
    refused = _open(url, "10.0.2.1", PROLIFIC_PID="def456")
    assert refused.status_code == 429
    assert _made() == (before[0], before[1] + 1)


def test_behind_a_proxy_the_address_is_the_one_the_proxy_saw(campaign, throttle_cache, clock,
                                                             settings):
    # given: one proxy in front, which appends the address it saw
    settings.SIGN_IN_PROXIES = 1
    settings.INVITE_MAX_ACCOUNTS_PER_ADDRESS = 2
    url = reverse("annotation:invite", args=[invite_create(campaign=campaign).token])
    for n in range(2):  # a client that writes an address of its own each time
        assert Client().post(url, REMOTE_ADDR="10.9.9.9",
                             HTTP_X_FORWARDED_FOR=f"192.0.2.{n}, 198.51.100.7").status_code == 302

    # then: counted by the address the proxy saw, not by what the client wrote
    assert Client().post(url, REMOTE_ADDR="10.9.9.9",
                         HTTP_X_FORWARDED_FOR="192.0.2.77, 198.51.100.7").status_code == 429
    assert Client().post(url, REMOTE_ADDR="10.9.9.9",
                         HTTP_X_FORWARDED_FOR="198.51.100.8").status_code == 302
