"""The rater page in a real browser: Debian's Chromium driven by Playwright, against the live
server and PostgreSQL, with clips rendered for real (H.264 MP4 that Chromium must decode).

One rater opens an invite, reads the instructions, agrees, watches and answers three items:
by keyboard, by keyboard with the connection lost (and a response lost on the way back), and by
mouse; a reload in between finds the item that was on screen. Every answer is checked in the
database, once.

    SCREENSHOT_TO=docs/rater_page.png ./scripts/test tests/annotation/test_rater_page.py

also writes the screenshots in docs/ (laptop size, and ``*_phone.png`` at phone size).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Before anything imports OpenGL: CI has no GPU.
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("LP_NUM_THREADS", "1")

import pytest  # noqa: E402
from django.db import connections  # noqa: E402
from django.urls import reverse  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from annotation.models import Enrollment, Judgment  # noqa: E402
from annotation.services.campaigns import (  # noqa: E402
    campaign_create,
    campaign_set_status,
    invite_create,
)
from rendering.models import Clip, ClipStatus  # noqa: E402
from tests.annotation.conftest import SOURCES, make_corpus  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking"]
INSTRUCTIONS = ("Watch the speaker, then the two listening faces.\n\n"
                "Choose the listener whose nods and smiles fit what the speaker says.")
CONSENT = "Your answers are stored without your name and used for research only."
REASONS = ["timing", "expression", "too much", "too little"]
# Seed 5, episode 0 is one of the shortest synthetic episodes (6 s): every item is watched
# to the end in real time, three times.
CORPUS_SEED = 5
SLUG = "faces"
WATCH_TIMEOUT_MS = 45_000  # a 6 s clip; generous for a loaded machine
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def campaign(transactional_db, monkeypatch):
    """A started pairwise campaign of one episode (three items) with really rendered clips."""
    from rendering import services as rendering_services

    queued: list[int] = []
    # Render here, in this process, instead of through the broker (no worker runs).
    monkeypatch.setattr(rendering_services, "_enqueue", queued.append)
    dataset = make_corpus(episodes=1, seed=CORPUS_SEED)
    campaign = campaign_create(
        name="Listening faces", slug=SLUG, dataset=dataset, sources=SOURCES,
        episodes=list(dataset.episodes.all()), overlap=1, per_rater_limit=3,
        gold_rate=0.0, catch_rate=0.0, repeat_rate=0.0, ask_strength=True,
        reason_tags=REASONS, instructions=INSTRUCTIONS, consent_text=CONSENT,
    ).campaign
    for clip_id in queued:
        rendering_services.clip_render(clip_id=clip_id)
    clips = Clip.objects.filter(pk__in=queued)
    assert [c.status for c in clips] == [ClipStatus.SUCCEEDED] * 4, [c.error for c in clips]
    campaign_set_status(campaign=campaign, status="active")
    return campaign


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls between browser
    # steps are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"),
            args=CHROMIUM_ARGS)
        yield browser
        browser.close()
        # With Playwright's event loop running, Django keeps this thread's connections apart
        # from the usual ones; close those here, or they outlive the test database.
        connections.close_all()


def _open(context) -> tuple:
    """A new page, and the script errors it will have (failed requests are expected here:
    offline, a dropped response)."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith(
        "Failed to load resource") and errors.append(msg.text))
    return page, errors


def _screenshot_path(suffix: str = "") -> Path | None:
    target = os.environ.get("SCREENSHOT_TO")
    if not target:
        return None
    path = Path(target)
    return path.with_name(f"{path.stem}{suffix}{path.suffix}")


def _pending(page) -> list:
    return json.loads(page.evaluate(f"localStorage.getItem('bc-pending-{SLUG}') || '[]'"))


VIDEO_STATE = """() => [...document.querySelectorAll("#stage video")].map((v) => ({
  at: v.currentTime, paused: v.paused, ended: v.ended, ready: v.readyState,
  network: v.networkState, error: v.error && v.error.message,
  frames: v.getVideoPlaybackQuality().totalVideoFrames}))"""


def _wait_until_unlocked(page) -> None:
    """The answers unlock once the speaker clip has ended: this waits for it in real time."""
    try:
        expect(page.locator('.choice[data-choice="right"]')).to_be_enabled(
            timeout=WATCH_TIMEOUT_MS)
    except AssertionError as exc:
        raise AssertionError(f"the answers never unlocked; play button "
                             f"{page.inner_text('#play')!r}, videos "
                             f"{page.evaluate(VIDEO_STATE)}") from exc
    expect(page.locator("#watch-hint")).to_be_hidden()


def _watch_to_the_end(page) -> None:
    """Space plays."""
    expect(page.locator('.choice[data-choice="left"]')).to_be_disabled()
    page.keyboard.press(" ")
    _wait_until_unlocked(page)


def _in_view(page, viewport: dict, *selectors: str) -> None:
    """Each element wholly inside the window, as it is, without scrolling; nothing sideways."""
    for selector in selectors:
        box = page.locator(selector).bounding_box()
        assert box is not None, f"{selector} is not shown"
        assert (box["x"] >= 0 and box["y"] >= 0
                and box["x"] + box["width"] <= viewport["width"] + 0.5
                and box["y"] + box["height"] <= viewport["height"] + 0.5), (selector, box)
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]


ON_SCREEN = ("#speaker-slot video", "#candidates figure:nth-child(1) video",
             "#candidates figure:nth-child(2) video", '.choice[data-choice="left"]',
             '.choice[data-choice="both_bad"]', '#strength button[data-strength="1"]',
             '#strength button[data-strength="3"]', "#reasons")


def _speaker_evidence(j: Judgment) -> None:
    pb = j.playback
    seen = {(e["e"], e["v"]) for e in pb["events"]}
    assert ("play", 0) in seen and ("ended", 0) in seen, pb["events"]
    assert pb["plays"] >= 1 and pb["pauses"] == 0  # the pause at the end is not the rater's
    # One quality entry per video on screen, each with frames really decoded (H.264 played).
    assert len(pb["quality"]) == 3
    assert all(q and q["total"] > 0 for q in pb["quality"]), pb["quality"]
    assert j.decision_ms > 0 and j.viewing_ms > j.decision_ms


def _outcome(j: Judgment) -> str:
    if j.choice in ("left", "right"):
        slot = j.order[0 if j.choice == "left" else 1]
        return "a" if slot == 0 else "b"
    return j.choice


def test_a_rater_watches_and_votes_in_chromium(project_server, campaign, browser,
                                               fast_path_calls):
    # The project's WSGI application, as gunicorn serves it: the fast path answers the page.
    invite = invite_create(campaign=campaign, label="browser")
    context = browser.new_context(viewport=LAPTOP)
    page, page_errors = _open(context)

    # -- the invite: instructions, consent, start ------------------------------------------
    page.goto(project_server + reverse("annotation:invite", args=[invite.token]))
    expect(page.locator("#instructions")).to_contain_text("nods and smiles")
    expect(page.locator(".consent")).to_contain_text("without your name")
    page.click("#start")  # not agreed yet
    expect(page.locator(".error")).to_contain_text("tick the box")
    page.check("#consent")
    page.click("#start")
    page.wait_for_url("**" + reverse("annotation:rate", args=[campaign.slug]))
    enrollment = Enrollment.objects.get(campaign=campaign)
    assert enrollment.consented_at is not None
    rater = enrollment.rater

    # -- the instructions open by themselves on the first visit; Esc closes them ----------
    help_dialog = page.locator("#help")
    expect(help_dialog).to_be_visible()
    expect(help_dialog).to_contain_text("nods and smiles")
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()
    page.keyboard.press("?")
    expect(help_dialog).to_be_visible()
    page.keyboard.press("?")
    expect(help_dialog).to_be_hidden()
    expect(page.locator("#progress-text")).to_have_text("0 / 3")
    expect(page.locator("#candidates video")).to_have_count(2)

    # -- item 1, by keyboard: 1 (left), then 2 (clearly) ----------------------------------
    _watch_to_the_end(page)
    # The speaker's sound (AAC) was decoded too (a Chromium-only counter).
    assert page.evaluate("document.querySelector('#speaker-slot video')"
                         ".webkitAudioDecodedByteCount") > 0
    expect(page.locator("#strength")).to_be_hidden()
    page.keyboard.press("1")
    expect(page.locator("#strength")).to_be_visible()
    expect(page.locator('.choice[data-choice="left"]')).to_have_class("choice picked")
    _in_view(page, LAPTOP, *ON_SCREEN)
    if (shot := _screenshot_path()) is not None:
        page.screenshot(path=str(shot))
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/" in r.url else None)
    with page.expect_response(lambda r: r.url.endswith("/judgment/")) as answered:
        page.keyboard.press("2")
    # The answer's reply carries the next items: no second call before the next item shows,
    # and the rater token, not the session, authenticates the call.
    assert answered.value.request.headers["authorization"].startswith("Rater ")
    assert "judgment" in fast_path_calls and "next" in fast_path_calls
    on_screen = answered.value.json()["next"]["assignments"][0]["id"]
    expect(page.locator("#progress-text")).to_have_text("1 / 3")
    assert [u for u in asked if u.endswith("/next/")] == []
    (first,) = Judgment.objects.all()
    assert first.rater == rater and first.campaign == campaign
    assert (first.choice, first.strength, first.reasons) == ("left", 2, [])
    assert first.outcome == _outcome(first)
    _speaker_evidence(first)
    assert _pending(page) == []

    # -- a reload finds the item that was on screen, and the progress ---------------------
    with page.expect_response(lambda r: r.url.endswith("/next/")) as reloaded:
        page.reload()
    assert reloaded.value.json()["assignments"][0]["id"] == on_screen
    expect(page.locator("#progress-text")).to_have_text("1 / 3")
    expect(help_dialog).to_be_hidden()  # once per visit

    # -- item 2: the connection drops before the answer -----------------------------------
    _watch_to_the_end(page)
    context.set_offline(True)
    page.keyboard.press("3")  # about the same: no strength asked
    expect(page.locator("#banner")).to_contain_text("Connection lost")
    (waiting,) = _pending(page)
    assert waiting["token"] == on_screen
    assert Judgment.objects.count() == 1
    # Back online, the first try reaches the server but its response is lost: the page must
    # send the same answer again, and the server must keep one.
    posts: list[tuple[str, int | None]] = []
    state = {"online": False, "drop": 1}

    def judgment_route(route):
        key = json.loads(route.request.post_data)["idempotency_key"]
        if state["online"] and state["drop"]:
            state["drop"] -= 1
            response = route.fetch()
            posts.append((key, response.status))
            route.abort("connectionreset")
        else:
            posts.append((key, None))
            route.continue_()

    page.route("**/api/assignments/*/judgment/", judgment_route)
    state["online"] = True
    context.set_offline(False)
    expect(page.locator("#progress-text")).to_have_text("2 / 3", timeout=30_000)
    expect(page.locator("#banner")).to_be_hidden()
    page.unroute("**/api/assignments/*/judgment/")
    assert [k for k, _ in posts] == [waiting["body"]["idempotency_key"]] * len(posts)
    assert posts[0][1] == 201 and len(posts) >= 2
    assert Judgment.objects.count() == 2
    second = Judgment.objects.get(assignment__token=on_screen)
    assert str(second.idempotency_key) == waiting["body"]["idempotency_key"]
    assert (second.choice, second.outcome, second.strength) == ("tie", "tie", None)
    _speaker_evidence(second)
    assert _pending(page) == []

    # -- item 3, by mouse, with a reason ---------------------------------------------------
    page.click("#play")
    _wait_until_unlocked(page)
    page.get_by_label("timing").check()
    page.click('.choice[data-choice="right"]')
    page.click('#strength button[data-strength="1"]')
    expect(page.locator("#done-title")).to_have_text("Thank you!")
    expect(page.locator("#completion-code")).to_have_text(campaign.completion_code)
    third = Judgment.objects.exclude(pk__in=[first.pk, second.pk]).get()
    assert (third.choice, third.strength, third.reasons) == ("right", 1, ["timing"])
    assert third.outcome == _outcome(third)
    _speaker_evidence(third)
    assert Judgment.objects.filter(rater=rater).count() == 3
    assert page_errors == []
    context.close()


def test_the_rater_page_fits_a_phone(live_server, campaign, browser):
    """On a phone: the speaker, both candidates and the answers on one screen, no sideways
    scrolling; tapping plays and answers."""
    invite = invite_create(campaign=campaign)
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page, page_errors = _open(context)
    page.goto(live_server.url + reverse("annotation:invite", args=[invite.token]))
    page.check("#consent")
    page.tap("#start")
    page.tap("#help-close")
    expect(page.locator("#help")).to_be_hidden()
    expect(page.locator("#candidates video")).to_have_count(2)
    page.tap("#play")
    _wait_until_unlocked(page)
    expect(page.locator("#strength")).to_be_hidden()
    page.tap('.choice[data-choice="left"]')
    expect(page.locator("#strength")).to_be_visible()
    _in_view(page, PHONE, *ON_SCREEN)
    if (shot := _screenshot_path("_phone")) is not None:
        page.screenshot(path=str(shot))
    page.tap('#strength button[data-strength="3"]')
    expect(page.locator("#progress-text")).to_have_text("1 / 3")
    (judgment,) = Judgment.objects.all()
    assert (judgment.choice, judgment.strength) == ("left", 3)
    _speaker_evidence(judgment)
    assert page_errors == []
    context.close()


def test_a_rater_whose_items_are_all_held_elsewhere_is_asked_to_wait_then_served(
        project_server, browser):
    """Every item left is on another rater's screen: the page says so and shows no completion
    code, then, asking again by itself, shows the item that came back."""
    from datetime import timedelta

    from django.utils import timezone

    from annotation.models import Assignment
    from annotation.services.scheduling import assignments_next
    from tests.annotation.conftest import enrol, make_campaign

    # given: three items, one answer each, all held by two other raters (their leases kept
    # alive for the test's length); leases of 3 s, so the page asks again every 3 s
    campaign = make_campaign(make_corpus(episodes=1, seed=CORPUS_SEED), slug="held",
                             overlap=1, lease_seconds=3)
    holders = enrol(campaign, 2)
    for holder in holders:
        assert assignments_next(rater=holder, campaign_slug=campaign.slug).assignments
    Assignment.objects.filter(rater__in=holders).update(
        expires_at=timezone.now() + timedelta(hours=1))
    invite = invite_create(campaign=campaign)
    context = browser.new_context(viewport=LAPTOP)
    page, page_errors = _open(context)

    # when: an honest rater joins
    page.goto(project_server + reverse("annotation:invite", args=[invite.token]))
    page.click("#start")
    page.wait_for_url("**" + reverse("annotation:rate", args=[campaign.slug]))

    # then: it is asked to wait, with no completion code and no item
    expect(page.locator("#done-title")).to_have_text("Please wait a moment")
    expect(page.locator("#done-text")).to_contain_text("being rated by someone else")
    expect(page.locator("#completion")).to_be_hidden()
    expect(page.locator("#completion-link")).to_be_hidden()
    expect(page.locator("#stage")).to_be_hidden()
    assert Enrollment.objects.exclude(rater__in=holders).get(
        campaign=campaign).finished_at is None

    # when: one holder's lease runs out
    Assignment.objects.filter(rater=holders[1]).update(expires_at=timezone.now())

    # then: the page, asking again by itself, shows that item
    expect(page.locator("#stage")).to_be_visible(timeout=30_000)
    expect(page.locator("#done")).to_be_hidden()
    expect(page.locator("#candidates video")).to_have_count(2)
    assert page_errors == []
    context.close()
