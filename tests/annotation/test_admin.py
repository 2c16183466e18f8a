"""The campaign admin writes through the campaign services: its change form, its status actions
and its delete page refuse what the services refuse, and say so."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from annotation.models import Campaign, Judgment
from annotation.services.campaigns import campaign_create, campaign_set_status
from tests.annotation.conftest import SOURCES, enrol, fake_render, make_campaign


@pytest.fixture
def admin_client(db) -> Client:
    user = get_user_model().objects.create_superuser("root", password="pw-root-123")
    client = Client()
    client.force_login(user)
    return client


def change_url(campaign: Campaign) -> str:
    return reverse("admin:annotation_campaign_change", args=[campaign.pk])


def form_data(client: Client, campaign: Campaign, **changes: object) -> dict:
    """The change form as the browser would send it, with ``changes`` typed in."""
    page = client.get(change_url(campaign))
    assert page.status_code == 200
    form = page.context["adminform"].form
    data: dict = {}
    for name in form.fields:
        value = form[name].value()
        if isinstance(value, bool):
            if value:
                data[name] = "on"
        else:
            data[name] = "" if value is None else value
    for formset in page.context["inline_admin_formsets"]:
        mgmt = formset.formset.management_form
        data.update({f"{mgmt.prefix}-{k}": v for k, v in mgmt.initial.items()})
    for name, value in changes.items():
        if value is None:
            data.pop(name, None)  # an unticked box
        else:
            data[name] = value
    return data


def stored(campaign: Campaign) -> dict:
    return Campaign.objects.filter(pk=campaign.pk).values().get()


def said(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def answer_one(campaign: Campaign) -> None:
    (user,) = enrol(campaign)
    c = Client()
    c.force_login(user)
    lease = c.post(reverse("annotation:api-next", args=[campaign.slug])).json()[
        "assignments"][0]
    assert c.post(reverse("annotation:api-judgment", args=[lease["id"]]),
                  {"idempotency_key": str(uuid.uuid4()), "choice": "left", "decision_ms": 5},
                  content_type="application/json").status_code == 201


def test_change_form_saves_through_the_service_and_status_is_read_only(corpus, admin_client):
    # given a draft campaign
    campaign = make_campaign(corpus, start=False)
    # when the admin changes its instructions and a rate, and tries to set the status
    data = form_data(admin_client, campaign, instructions="Watch both faces.", gold_rate="0.2",
                     status="active")
    res = admin_client.post(change_url(campaign), data)
    # then the settings are saved, the status is not (it is not a field of the form)
    assert res.status_code == 302, res.context["adminform"].form.errors
    row = stored(campaign)
    assert (row["instructions"], row["gold_rate"], row["status"]) == (
        "Watch both faces.", 0.2, "draft")
    assert "status" not in admin_client.get(change_url(campaign)).context["adminform"].form.fields


@pytest.mark.parametrize("changes, field, message", [
    ({"gold_rate": "0.9"}, "gold_rate", "gold_rate: must be a fraction between 0 and 0.5"),
    ({"gold_rate": "0.5", "catch_rate": "0.5"}, "gold_rate", "must be below 1"),
    ({"per_rater_limit": "0"}, "per_rater_limit", "per_rater_limit: must be a whole number"),
    ({"warn_after": "9"}, "warn_after", "warn_after &lt;= block_after"),
    ({"criteria_weights": '{"beauty": 1}'}, "criteria_weights", "&#x27;beauty&#x27;=1 is not"),
    ({"criteria_weights": '{"empathy": true}'}, "criteria_weights", "=True is not a known"),
    ({"reason_tags": '["timing", "timing"]'}, "reason_tags", "a tag is listed twice"),
    ({"crowd_param": "PID?x"}, "crowd_param", "crowd_param: must be at most 40 letters"),
    ({"lease_seconds": "0"}, "lease_seconds", "lease_seconds: must be a whole number 1..3600"),
])
def test_change_form_refuses_bad_values_by_their_field(corpus, admin_client, changes, field,
                                                       message):
    # given a draft campaign
    campaign = make_campaign(corpus, start=False)
    before = stored(campaign)
    # when a refused value comes with a good one
    res = admin_client.post(change_url(campaign), form_data(
        admin_client, campaign, instructions="Changed.", **changes))
    # then the form comes back with the reason by the field, and nothing was saved
    assert res.status_code == 200
    assert field in res.context["adminform"].form.errors
    assert message in res.content.decode()
    assert stored(campaign) == before
    assert not LogEntry.objects.exists()


@pytest.mark.parametrize("text", [
    "[" * 100_000,  # past the interpreter's recursion limit
    '["timing", ' + "[" * 100 + "]" * 100 + "]",  # parses, but deeper than settings go
], ids=["past-the-parser", "past-the-limit"])
@pytest.mark.parametrize("field", ["reason_tags", "criteria_weights", "render_settings"])
def test_change_form_refuses_deeply_nested_json_by_its_field(corpus, admin_client, field, text):
    # given a draft campaign without items, so every JSON setting is open
    campaign = make_campaign(corpus, start=False)
    campaign.items.all().delete()
    before = stored(campaign)
    # when a JSON setting nests past the limit
    res = admin_client.post(change_url(campaign), form_data(
        admin_client, campaign, instructions="Changed.", **{field: text}))
    # then the form comes back with the reason by the field, and nothing was saved
    assert res.status_code == 200
    assert res.context["adminform"].form.errors[field] == [
        "Enter valid JSON (nested at most 64 levels)."]
    assert stored(campaign) == before
    assert not LogEntry.objects.exists()


def test_settings_fixed_now_are_read_only(corpus, admin_client):
    # given a campaign serving raters
    campaign = make_campaign(corpus)
    # then what its items were built from and what its answers record are shown, not edited
    fields = admin_client.get(change_url(campaign)).context["adminform"].form.fields
    for fixed in ("sources", "protocol", "overlap", "target_items", "consent_text",
                  "reason_tags", "ask_strength", "criteria_weights", "status"):
        assert fixed not in fields
    assert {"instructions", "per_rater_limit", "gold_rate", "name"} <= set(fields)
    # and a value sent for one anyway is ignored
    res = admin_client.post(change_url(campaign), form_data(
        admin_client, campaign, consent_text="New terms.", per_rater_limit="7"))
    assert res.status_code == 302
    assert (stored(campaign)["consent_text"], stored(campaign)["per_rater_limit"]) == ("", 7)


def test_a_refusal_at_save_keeps_nothing_and_says_why(corpus, admin_client, monkeypatch):
    """The form is checked without the row lock; if the campaign changes before the save (here:
    the form's check is skipped), the service's refusal is shown and nothing is kept."""
    import annotation.admin

    campaign = make_campaign(corpus, start=False)
    before = stored(campaign)
    data = form_data(admin_client, campaign, instructions="Changed.", gold_rate="0.9")
    monkeypatch.setattr(annotation.admin, "campaign_update_check", lambda **kw: {})
    res = admin_client.post(change_url(campaign), data)
    assert res.status_code == 302 and res["Location"] == change_url(campaign)
    assert any("Nothing was changed: gold_rate: must be a fraction" in m for m in said(res))
    assert stored(campaign) == before
    assert not LogEntry.objects.exists()


def test_status_actions_start_only_when_clips_are_rendered(corpus, admin_client):
    # given a draft campaign whose clips are not rendered
    campaign = campaign_create(name="s", slug="s", dataset=corpus, sources=SOURCES,
                               episodes=list(corpus.episodes.all())).campaign
    changelist = reverse("admin:annotation_campaign_changelist")

    def act(action: str):
        return admin_client.post(changelist, {"action": action,
                                              "_selected_action": [campaign.pk]})

    # when the admin starts it: refused, with the reason
    res = act("start")
    assert res.status_code == 302
    assert any("s: status:" in m and "clips are not rendered yet" in m for m in said(res))
    assert stored(campaign)["status"] == "draft"
    # once rendered it starts, pauses and closes
    fake_render(campaign)
    assert "1 campaign(s) serving raters." in said(act("start"))
    assert stored(campaign)["status"] == "active"
    act("pause")
    assert stored(campaign)["status"] == "paused"
    act("close")
    assert stored(campaign)["status"] == "closed"
    res = act("start")
    assert any("a closed campaign stays closed" in m for m in said(res))
    assert stored(campaign)["status"] == "closed"


def test_bulk_delete_is_not_offered(corpus, admin_client):
    make_campaign(corpus)
    page = admin_client.get(reverse("admin:annotation_campaign_changelist"))
    actions = [value for value, _ in page.context["action_form"].fields["action"].choices]
    assert "delete_selected" not in actions and {"start", "pause", "close"} <= set(actions)


def test_delete_is_refused_with_judgments(corpus, admin_client):
    # given a closed campaign with a judgment
    campaign = make_campaign(corpus)
    answer_one(campaign)
    campaign_set_status(campaign=campaign, status="closed")
    url = reverse("admin:annotation_campaign_delete", args=[campaign.pk])
    # when the admin asks to delete it (the page, then the confirmation)
    for res in (admin_client.get(url), admin_client.post(url, {"post": "yes"})):
        # then it is refused, back on its page, with the reason
        assert res.status_code == 302 and res["Location"] == change_url(campaign)
        assert any("judgments: the campaign has 1" in m for m in said(res))
    assert Campaign.objects.filter(pk=campaign.pk).exists() and Judgment.objects.count() == 1


def test_delete_a_draft(corpus, admin_client):
    campaign = make_campaign(corpus, start=False)
    url = reverse("admin:annotation_campaign_delete", args=[campaign.pk])
    assert admin_client.get(url).status_code == 200  # the confirmation page
    res = admin_client.post(url, {"post": "yes"})
    assert res.status_code == 302
    assert not Campaign.objects.exists()


def test_a_refusal_at_delete_keeps_the_campaign_and_the_log_clean(corpus, admin_client,
                                                                  monkeypatch):
    """If the campaign changes between the page's check and the delete (here: the page's check
    is skipped), the service refuses, the admin says why and logs no deletion."""
    import annotation.admin

    campaign = make_campaign(corpus)  # serving raters
    monkeypatch.setattr(annotation.admin, "campaign_delete_check", lambda **kw: None)
    url = reverse("admin:annotation_campaign_delete", args=[campaign.pk])
    res = admin_client.post(url, {"post": "yes"})
    assert res.status_code == 302 and res["Location"] == change_url(campaign)
    assert any("the campaign is serving raters" in m for m in said(res))
    assert Campaign.objects.filter(pk=campaign.pk).exists()
    assert not LogEntry.objects.exists()
