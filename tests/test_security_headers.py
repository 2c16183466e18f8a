"""Every HTML page carries the Content-Security-Policy and holds nothing it would block; the rate
page and every rater call are kept by no cache."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.test import Client
from django.urls import reverse

from tests.annotation.conftest import enrol, make_campaign, make_corpus, rater_auth


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


def test_every_rater_call_is_kept_by_no_cache(campaign):
    # given: a rater who must agree to the terms first, with the session and the rate page's
    # token
    from annotation.models import Enrollment

    campaign.consent_text = "Answers are kept for research."
    campaign.save(update_fields=["consent_text"])
    (rater,) = enrol(campaign)
    session, token = Client(), Client(HTTP_AUTHORIZATION=rater_auth(campaign, rater))
    session.force_login(rater)
    consent = reverse("annotation:api-consent", args=[campaign.slug])
    rate = reverse("annotation:api-next", args=[campaign.slug])
    # when: every rater call is made, answered or refused
    replies = {"consent": session.post(consent)}
    lease = token.post(rate).json()["assignments"][0]["id"]
    beat = reverse("annotation:api-heartbeat", args=[lease])
    judgment = reverse("annotation:api-judgment", args=[lease])
    replies |= {
        "next": token.post(rate),
        "heartbeat": token.post(beat),
        "judgment": token.post(judgment, {"idempotency_key": str(uuid.uuid4()),
                                          "choice": "left", "decision_ms": 900},
                               content_type="application/json"),
        "consent, signed out": Client().post(consent),
        "forged token": Client(HTTP_AUTHORIZATION="Rater forged").post(beat),
        "malformed answer": token.post(judgment, "{", content_type="application/json"),
        "unknown lease": token.post(reverse("annotation:api-heartbeat", args=[uuid.uuid4()])),
    }
    # then: no cache keeps any reply
    assert [r.status_code for r in replies.values()] == [204, 200, 200, 201, 403, 401, 400, 404]
    for name, reply in replies.items():
        assert "no-store" in reply.get("Cache-Control", ""), name
    assert Enrollment.objects.get(rater=rater).consented_at is not None


# What a Content-Security-Policy without 'unsafe-inline' in script-src blocks: a <script> with
# a body (a data block, type application/json, is not run), an on* attribute, a javascript: URL.
_BLOCKED = [
    re.compile(r"<script\b(?![^>]*\bsrc=)(?![^>]*\btype=[\"']?application/(?:ld\+)?json)[^>]*>",
               re.IGNORECASE),
    re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.IGNORECASE),
    re.compile(r"\b(?:href|src|action|formaction)\s*=\s*[\"']?\s*javascript:", re.IGNORECASE),
]


def _project_templates() -> list[Path]:
    root = Path(settings.BASE_DIR)
    return sorted(path for app in apps.get_app_configs()
                  if Path(app.path).is_relative_to(root) and ".venv" not in Path(app.path).parts
                  for path in (Path(app.path) / "templates").rglob("*.html"))


def test_no_template_holds_a_script_the_policy_would_block():
    # given: every template of the project's apps (the pages the policy covers)
    templates = _project_templates()
    assert Path(settings.BASE_DIR, "annotation/templates/annotation/rate.html") in templates
    # when: they are searched for inline script
    found = [f"{path.relative_to(settings.BASE_DIR)}:{text.count(chr(10), 0, m.start()) + 1}: "
             f"{m.group(0)[:80]}"
             for path in templates for text in [path.read_text()]
             for pattern in _BLOCKED for m in pattern.finditer(text)]
    # then: there is none (a button that asks first carries data-confirm: static site.js)
    assert found == []


def test_the_patterns_find_what_the_policy_blocks():
    def found(html: str) -> bool:
        return any(p.search(html) for p in _BLOCKED)

    assert found("<script>alert(1)</script>")
    assert found('<button name="a" onclick="return confirm(\'x\')">')
    assert found('<a href="javascript:void(0)">')
    assert not found('<script src="/static/annotation/site.js" defer></script>')
    assert not found('<script id="rate-config" type="application/json">{}</script>')
    assert not found('<button data-confirm="Delete?">Delete</button>')


def test_a_button_that_asks_first_still_asks_under_the_policy(transactional_db, live_server,
                                                               monkeypatch):
    """In Chromium: the campaign page's delete button asks before it acts (data-confirm, read by
    the static site.js), and the page runs nothing the policy refuses."""
    import os

    from django.contrib.auth import get_user_model
    from django.db import connections
    from playwright.sync_api import sync_playwright

    from annotation.models import Campaign
    from annotation.roles import RESEARCHER, role_add
    from rendering import services as rendering_services

    # given: a researcher signed in on a draft campaign's page (clips are not queued: no worker)
    monkeypatch.setattr(rendering_services, "_enqueue", lambda clip_id: None)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # the ORM between browser steps
    researcher = get_user_model().objects.create_user("res", password="pw-res-1234")
    role_add(researcher, RESEARCHER)
    campaign = make_campaign(make_corpus(), start=False, created_by=researcher)
    client = Client()
    client.force_login(researcher)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    asked: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            context = browser.new_context()
            context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie,
                                  "url": live_server.url}])
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # (a refused script is a console error; a missing favicon is not this test's)
            page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith(
                "Failed to load resource") and errors.append(msg.text))
            reply = page.goto(live_server.url + reverse("annotation:campaign",
                                                        args=[campaign.slug]))
            assert "script-src 'self'" in reply.headers["content-security-policy"]
            page.click("details summary")
            delete = page.get_by_role("button", name=f"Delete {campaign.slug}")

            # when: the question is answered "Cancel"
            def dismiss(dialog) -> None:
                asked.append(dialog.message)
                dialog.dismiss()

            page.once("dialog", dismiss)
            delete.click()
            page.wait_for_timeout(300)  # a submit the click failed to stop would be under way
            # then: it was asked, and the campaign stands
            assert asked == [f"Delete campaign {campaign.slug} with its items, invite links "
                             "and enrolments?"]
            assert Campaign.objects.filter(pk=campaign.pk).exists()

            # when: it is answered "OK", then: the campaign is deleted
            page.once("dialog", lambda dialog: dialog.accept())
            with page.expect_navigation():
                delete.click()
            assert page.url.endswith(reverse("annotation:campaigns"))
            assert not Campaign.objects.filter(pk=campaign.pk).exists()
            assert errors == []
        finally:
            browser.close()
            # With Playwright's event loop running, Django keeps this thread's connections
            # apart from the usual ones; close those here, or they outlive the test database.
            connections.close_all()
