"""Signing in at /accounts/login/ (researchers and raters, staff or not), signing out, and the
throttle on failed sign-ins that this form and the admin's share."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from annotation.services import throttle

PASSWORD = "pw-res-1234"  # the ``researcher`` fixture's


@pytest.fixture
def throttle_cache(cache_kind, settings):
    """The throttle's counts in each cache (``cache_kind``), with this file's limits."""
    settings.SIGN_IN_MAX_FAILURES = 5
    settings.SIGN_IN_MAX_FAILURES_PER_ADDRESS = 20
    settings.SIGN_IN_WINDOW_S = 900
    settings.SIGN_IN_PROXIES = 0
    return cache_kind


@pytest.fixture
def clock(monkeypatch):
    """The throttle's clock, moved by hand (``clock.now += seconds``)."""

    class Clock:
        now = 1_000_000 * 900.0  # the start of a window

    monkeypatch.setattr(throttle, "_now", lambda: Clock.now)
    return Clock


def _sign_in(client: Client, username: str, password: str, url: str | None = None, **extra):
    return client.post(url or reverse("annotation:sign-in"),
                       {"username": username, "password": password}, **extra)


def test_a_researcher_who_is_not_staff_signs_in_and_reaches_the_campaigns(researcher,
                                                                          throttle_cache):
    # given: a researcher without the admin's staff flag, sent to sign in by the campaigns page
    assert not researcher.is_staff
    client = Client()
    sent = client.get(reverse("annotation:campaigns"))
    assert sent.status_code == 302
    assert sent["Location"] == f"{reverse('annotation:sign-in')}?next=/campaigns/"
    page = client.get(sent["Location"])
    assert page.status_code == 200 and b'name="password"' in page.content

    # when
    reply = client.post(sent["Location"], {"username": "res", "password": PASSWORD,
                                           "next": "/campaigns/"})

    # then
    assert (reply.status_code, reply["Location"]) == (302, "/campaigns/")
    assert client.get("/campaigns/").status_code == 200
    # and signing out (POST) ends the session
    assert client.get(reverse("annotation:sign-out")).status_code == 405
    assert client.post(reverse("annotation:sign-out")).status_code == 302
    assert client.get("/campaigns/").status_code == 302


def test_pages_outside_the_admin_send_people_to_the_sites_form(researcher, throttle_cache):
    client = Client()
    # the rater page (login_required reads LOGIN_URL)
    rate = client.get(reverse("annotation:rate", args=["study"]))
    assert rate["Location"].startswith(reverse("annotation:sign-in") + "?next=")
    # a page that still names the admin's form, for a page outside the admin
    bounced = client.get(reverse("admin:login") + "?next=/campaigns/x/quality/")
    assert bounced.status_code == 302
    assert bounced["Location"] == f"{reverse('annotation:sign-in')}?next=/campaigns/x/quality/"
    # the admin's own pages keep the admin's form
    assert client.get(reverse("admin:login") + "?next=/admin/").status_code == 200
    assert client.get(reverse("admin:login")).status_code == 200


@pytest.mark.parametrize("form", ["site", "admin"])
def test_thirty_wrong_passwords_do_not_all_get_a_normal_answer(researcher, throttle_cache, clock,
                                                               form):
    # given
    client = Client()
    url = reverse("annotation:sign-in") if form == "site" else reverse("admin:login")

    # when: thirty wrong passwords for one account
    replies = [_sign_in(client, "res", f"wrong-{n}", url) for n in range(30)]

    # then: the first five are checked, the rest refused with a reason and when to come back
    assert [r.status_code for r in replies] == [200] * 5 + [429] * 25
    refused = replies[-1]
    assert b"Too many failed sign-ins" in refused.content
    assert 0 < int(refused["Retry-After"]) <= 900
    # the right password too, while the window lasts (it is not even checked)
    assert _sign_in(client, "res", PASSWORD, url).status_code == 429
    assert "_auth_user_id" not in client.session


def test_the_right_password_works_once_the_window_passed(researcher, throttle_cache, clock):
    # given: an account throttled
    client = Client()
    for n in range(5):
        assert _sign_in(client, "res", f"wrong-{n}").status_code == 200
    assert _sign_in(client, "res", PASSWORD).status_code == 429

    # when: the window passes
    clock.now += 900

    # then
    reply = _sign_in(client, "res", PASSWORD)
    assert reply.status_code == 302
    assert client.get("/campaigns/").status_code == 200


def test_the_count_is_per_username_and_per_address(researcher, throttle_cache, clock):
    other = get_user_model().objects.create_user("other", password="pw-other-1234")
    assert other.pk
    client = Client()
    # the name's own count: failures under another name (or its other spelling) are the name's
    for n in range(5):
        _sign_in(client, "RES", f"wrong-{n}", REMOTE_ADDR="10.0.0.1")
    assert _sign_in(client, "res", PASSWORD, REMOTE_ADDR="10.0.0.2").status_code == 429
    assert _sign_in(client, "other", "pw-other-1234", REMOTE_ADDR="10.0.0.2").status_code == 302
    # one address trying many names is stopped at the address's limit
    for n in range(15):
        _sign_in(Client(), f"name-{n}", "wrong", REMOTE_ADDR="10.0.0.1")
    assert _sign_in(Client(), "other", "pw-other-1234", REMOTE_ADDR="10.0.0.1").status_code == 429
    assert _sign_in(Client(), "other", "pw-other-1234", REMOTE_ADDR="10.0.0.3").status_code == 302


def test_a_right_password_clears_the_names_failures(researcher, throttle_cache, clock):
    client = Client()
    for round_ in range(3):  # 4 failures, then the right password: never throttled
        for n in range(4):
            assert _sign_in(client, "res", f"wrong-{round_}-{n}").status_code == 200
        assert _sign_in(client, "res", PASSWORD).status_code == 302


def test_behind_proxies_the_address_is_the_one_the_outermost_proxy_saw(researcher,
                                                                         throttle_cache, clock,
                                                                         settings):
    # given: one proxy in front, which appends the address it saw
    settings.SIGN_IN_PROXIES = 1
    settings.SIGN_IN_MAX_FAILURES_PER_ADDRESS = 3
    for n in range(3):  # a client that writes a different address of its own each time
        _sign_in(Client(), f"name-{n}", "wrong", REMOTE_ADDR="10.9.9.9",
                 HTTP_X_FORWARDED_FOR=f"192.0.2.{n}, 198.51.100.7")
    # then: counted by the address the proxy saw, not the one the client wrote
    assert _sign_in(Client(), "res", PASSWORD, REMOTE_ADDR="10.9.9.9",
                    HTTP_X_FORWARDED_FOR="192.0.2.77, 198.51.100.7").status_code == 429
    assert _sign_in(Client(), "res", PASSWORD, REMOTE_ADDR="10.9.9.9",
                    HTTP_X_FORWARDED_FOR="198.51.100.8").status_code == 302
