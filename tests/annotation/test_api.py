import json
import re
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from annotation.models import Assignment, Enrollment, Invite, Judgment
from annotation.opaque import judgment_ref
from annotation.roles import ADMIN, role_add
from annotation.services.campaigns import invite_create
from policy.models import Candidate, PolicyVersion
from tests.annotation.conftest import SOURCES, WsgiClient, enrol, make_campaign, token_client


def client_for(user) -> Client:
    c = Client(enforce_csrf_checks=False)
    c.force_login(user)
    return c


@pytest.fixture
def campaign(corpus):
    return make_campaign(corpus, gold_rate=0.2, catch_rate=0.2, overlap=3)


def test_rater_payload_names_no_source_candidate_or_episode(campaign):
    (user,) = enrol(campaign)
    c = client_for(user)
    seen = set()
    for _ in range(12):
        res = c.post(reverse("annotation:api-next", args=[campaign.slug]))
        assert res.status_code == 200
        body = res.json()
        text = json.dumps(body)
        for leak in ("ground_truth", "baseline", "jitter", "mistimed", "wrong", "policy",
                     "probe", "gold", "catch", "syn-"):
            assert leak not in text.lower(), leak
        lease = body["assignments"][0]
        urls = [lease["speaker"]["video"]] + [x["video"] for x in lease["clips"]]
        assert len(set(urls)) == len(urls)  # even the identical clips of a catch trial
        seen.update(urls)
        r = c.post(reverse("annotation:api-judgment", args=[lease["id"]]),
                   {"idempotency_key": str(uuid.uuid4()), "choice": "tie", "decision_ms": 5},
                   content_type="application/json")
        assert r.status_code == 201
    candidate_ids = {str(pk) for pk in Candidate.objects.values_list("pk", flat=True)}
    assert not any(re.search(rf"/{pk}/", u) for u in seen for pk in candidate_ids)


def test_media_is_served_only_to_the_rater_holding_the_lease(campaign):
    user, other = enrol(campaign, 2)
    body = client_for(user).post(reverse("annotation:api-next", args=[campaign.slug])).json()
    url = body["assignments"][0]["clips"][0]["video"]
    res = client_for(user).get(url, HTTP_RANGE="bytes=0-9")
    assert res.status_code == 206
    assert client_for(other).get(url).status_code == 404
    assert Client().get(url).status_code == 404
    assert client_for(user).get(url[:-6] + "xxxxx/").status_code == 404
    token = url.split("/")[-3]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert client_for(user).get(url.replace(token, forged)).status_code == 404


def test_api_answers_every_bad_request_with_a_clear_4xx(campaign):
    user, other = enrol(campaign, 2)
    c = client_for(user)
    lease = c.post(reverse("annotation:api-next", args=[campaign.slug])).json()["assignments"][0]
    url = reverse("annotation:api-judgment", args=[lease["id"]])
    key = str(uuid.uuid4())
    cases = [
        (c, {"idempotency_key": key, "choice": "sideways", "decision_ms": 5}, 400),
        (c, {"idempotency_key": key, "decision_ms": 5}, 400),  # pairwise without a choice
        (c, {"choice": "left", "decision_ms": 5}, 400),
        (c, "not json", 400),
        (client_for(other), {"idempotency_key": key, "choice": "left", "decision_ms": 5}, 403),
    ]
    for client, body, status in cases:
        res = client.post(url, body if isinstance(body, dict) else body,
                          content_type="application/json")
        assert res.status_code == status, (body, res.content)
        assert res.json()["detail"]
    assert not Judgment.objects.exists()
    ok = c.post(url, {"idempotency_key": key, "choice": "left", "decision_ms": 5},
                content_type="application/json")
    retry = c.post(url, {"idempotency_key": key, "choice": "left", "decision_ms": 5},
                   content_type="application/json")
    assert (ok.status_code, retry.status_code) == (201, 200)
    assert (retry.json()["stored"], retry.json()["judgment"]) == (False, ok.json()["judgment"])
    assert Judgment.objects.count() == 1
    bad = uuid.uuid4()
    assert c.post(reverse("annotation:api-heartbeat", args=[bad])).status_code == 404
    assert c.post(reverse("annotation:api-next", args=["nope"])).status_code == 404
    anonymous = Client().post(reverse("annotation:api-next", args=[campaign.slug]))
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == "Rater"


def test_csrf_is_required_for_session_clients(campaign):
    (user,) = enrol(campaign)
    c = Client(enforce_csrf_checks=True)
    c.force_login(user)
    assert c.post(reverse("annotation:api-next", args=[campaign.slug])).status_code == 403


def test_campaign_api_is_scoped_to_the_researcher(corpus, researcher):
    mine = make_campaign(corpus, slug="mine", created_by=researcher)
    theirs = make_campaign(corpus, slug="theirs")
    (rater,) = enrol(mine)
    c = client_for(researcher)
    assert [x["slug"] for x in c.get(reverse("annotation:api-campaigns")).json()] == ["mine"]
    assert c.get(reverse("annotation:api-campaign", args=[theirs.slug])).status_code == 404
    assert c.get(reverse("annotation:api-campaign-progress", args=["mine"])).json()["items"] > 0
    assert client_for(rater).get(reverse("annotation:api-campaigns")).status_code == 403
    assert client_for(rater).get(reverse("annotation:campaign", args=["mine"])).status_code == 403
    boss = get_user_model().objects.create_user("boss")
    role_add(boss, ADMIN)
    assert len(client_for(boss).get(reverse("annotation:api-campaigns")).json()) == 2


def test_campaign_crud_through_the_api(corpus, researcher):
    c = client_for(researcher)
    body = {"name": "API study", "slug": "api-study", "dataset": corpus.name,
            "sources": SOURCES, "split": "train", "overlap": 2}
    if not corpus.episodes.filter(split="train").exists():
        body["split"] = corpus.episodes.first().split
    res = c.post(reverse("annotation:api-campaigns"), body, content_type="application/json")
    assert res.status_code == 201, res.content
    assert res.json()["built"]["items"] > 0
    res = c.patch(reverse("annotation:api-campaign", args=["api-study"]),
                  {"instructions": "Watch closely."}, content_type="application/json")
    assert res.json()["instructions"] == "Watch closely."
    res = c.patch(reverse("annotation:api-campaign", args=["api-study"]), {"block_after": 9},
                  content_type="application/json")
    assert res.json()["block_after"] == 9
    res = c.patch(reverse("annotation:api-campaign", args=["api-study"]), {"overlap": 9},
                  content_type="application/json")
    assert res.status_code == 400 and "overlap" in res.json()["detail"]
    res = c.post(reverse("annotation:api-campaign-status", args=["api-study"]),
                 {"status": "active"}, content_type="application/json")
    assert res.status_code == 400 and "not rendered" in res.json()["detail"]
    res = c.post(reverse("annotation:api-campaign-invites", args=["api-study"]),
                 {"label": "pilot", "max_uses": 5}, content_type="application/json")
    assert res.status_code == 201 and "/rate/invite/" in res.json()["url"]
    assert c.delete(reverse("annotation:api-campaign", args=["api-study"])).status_code == 204
    bad = {**body, "sources": [{"kind": "policy", "version": "missing"}], "slug": "x"}
    res = c.post(reverse("annotation:api-campaigns"), bad, content_type="application/json")
    assert res.status_code == 400 and "missing" in res.json()["detail"]
    assert not PolicyVersion.objects.exists()


def test_openapi_schema_and_docs(researcher):
    c = client_for(researcher)
    schema = c.get(reverse("annotation:api-schema"), HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    assert "/api/assignments/{token}/judgment/" in paths
    assert "/api/rate/{slug}/next/" in paths
    assert c.get(reverse("annotation:api-docs")).status_code == 200


def test_invite_page_enrols_logs_in_and_records_consent(corpus):
    campaign = make_campaign(corpus, consent_text="I agree to take part.",
                             instructions="Watch both faces.")
    invite = invite_create(campaign=campaign, max_uses=1)
    url = reverse("annotation:invite", args=[invite.token])
    c = Client()
    page = c.get(url)
    assert b"Watch both faces." in page.content and b"I agree" in page.content
    assert c.post(url).status_code == 400  # consent box not ticked
    res = c.post(url, {"consent": "1"})
    assert res.status_code == 302 and res["Location"] == f"/rate/{campaign.slug}/"
    assert c.get(res["Location"]).status_code == 200
    e = Enrollment.objects.get()
    assert e.consented_at is not None
    assert Invite.objects.get().uses == 1
    assert Client().post(url, {"consent": "1"}).status_code == 400  # used up
    assert Client().get(reverse("annotation:invite", args=["forged"])).status_code == 404


def test_crowd_entry_resumes_the_same_participant_and_shows_the_code(corpus):
    campaign = make_campaign(corpus, crowd_param="PROLIFIC_PID", per_rater_limit=1,
                             completion_code="C0DE42")
    invite = invite_create(campaign=campaign)
    url = reverse("annotation:invite", args=[invite.token])
    assert Client().post(url).status_code == 400  # no participant id
    for _ in range(2):
        c = Client()
        c.post(url, {"PROLIFIC_PID": "abc123", "STUDY_ID": "s1"})
    e = Enrollment.objects.get()
    assert (e.external_id, e.external_study) == ("abc123", "s1")
    api = reverse("annotation:api-next", args=[campaign.slug])
    lease = c.post(api).json()["assignments"][0]
    c.post(reverse("annotation:api-judgment", args=[lease["id"]]),
           {"idempotency_key": str(uuid.uuid4()), "choice": "left", "decision_ms": 5},
           content_type="application/json")
    done = c.post(api).json()
    assert done["state"] == "finished" and done["completion_code"] == "C0DE42"


def test_researcher_pages(corpus, researcher):
    campaign = make_campaign(corpus, created_by=researcher)
    c = client_for(researcher)
    assert c.get(reverse("annotation:campaigns")).status_code == 200
    page = c.get(reverse("annotation:campaign", args=[campaign.slug]))
    assert page.status_code == 200 and b"Invite links" in page.content
    res = c.post(reverse("annotation:campaign", args=[campaign.slug]),
                 {"action": "invite", "label": "lab"})
    assert res.status_code == 302 and Invite.objects.filter(label="lab").exists()
    assert c.get(reverse("annotation:campaign-new")).status_code == 200
    res = c.post(reverse("annotation:campaign-new"), {
        "name": "Form study", "slug": "form-study", "dataset": corpus.name,
        "split": corpus.episodes.first().split, "sources": ["ground_truth", "baseline:jitter"],
        "samples": 1, "protocol": "pairwise", "group_size": 5, "overlap": 3,
        "target_items": 10, "per_rater_limit": 10, "gold_rate": 0.1, "catch_rate": 0.05,
        "repeat_rate": 0.05})
    assert res.status_code == 302, res.content.decode()[:2000]
    assert c.get(reverse("admin:annotation_campaign_changelist")).status_code in (200, 302)


def test_two_tabs_get_the_same_item_and_only_the_first_answer_counts(campaign):
    (user,) = enrol(campaign)
    tab_a, tab_b = client_for(user), client_for(user)
    next_url = reverse("annotation:api-next", args=[campaign.slug])
    a = tab_a.post(next_url).json()["assignments"][0]["id"]
    b = tab_b.post(next_url).json()["assignments"][0]["id"]
    assert a == b
    url = reverse("annotation:api-judgment", args=[a])
    first = tab_a.post(url, {"idempotency_key": str(uuid.uuid4()), "choice": "left",
                             "decision_ms": 5}, content_type="application/json")
    second = tab_b.post(url, {"idempotency_key": str(uuid.uuid4()), "choice": "right",
                              "decision_ms": 5}, content_type="application/json")
    assert (first.status_code, second.status_code) == (201, 409)
    assert second.json()["error"] == "already_answered"
    assert Judgment.objects.get().choice == "left"
    assert tab_b.post(next_url).json()["assignments"][0]["id"] != a


def test_campaign_page_draws_the_ratings(corpus, researcher):
    from django.core.management import call_command

    from annotation.services.ordering import campaign_reprioritise

    campaign = make_campaign(corpus, created_by=researcher)
    call_command("simulate_raters", "--campaign", campaign.slug, "--raters", "2",
                 "--no-progress")
    campaign_reprioritise(campaign_id=campaign.pk)
    page = client_for(researcher).get(reverse("annotation:campaign", args=[campaign.slug]))
    assert page.content.count(b"<svg") >= 1 and b"ground_truth" in page.content


def test_judgments_of_one_minute_are_drawn_from_zero(corpus, researcher):
    from django.core.management import call_command

    # given: every judgment in the same minute (a quick demo run)
    campaign = make_campaign(corpus, created_by=researcher)
    call_command("simulate_raters", "--campaign", campaign.slug, "--raters", "2", "--items",
                 "5", "--no-progress")
    Judgment.objects.filter(campaign=campaign).update(
        created_at=datetime(2025, 5, 1, 12, 30, 15, tzinfo=UTC))
    # when
    page = client_for(researcher).get(reverse("annotation:campaign", args=[campaign.slug]))
    # then: one visible mark, at 10 on an axis from 0
    found = re.search(r'<svg[^>]*aria-label="judgments over time.*?</svg>',
                      page.content.decode(), re.S)
    assert found is not None
    svg = ET.fromstring(found.group(0))  # noqa: S314 (the page's own SVG, not outside input)
    ns = "{http://www.w3.org/2000/svg}"
    frame = {k: float(svg.find(f"{ns}rect").get(k)) for k in ("x", "y", "width", "height")}
    top, bottom = frame["y"], frame["y"] + frame["height"]
    (dot,) = svg.findall(f"{ns}circle")
    assert float(dot.get("r")) > 0 and dot.find(f"{ns}title").text == "judgments: 10"
    assert frame["x"] < float(dot.get("cx")) < frame["x"] + frame["width"]  # not on the edge
    assert float(dot.get("cy")) == pytest.approx(top)  # the highest value
    (stem,) = svg.findall(f"{ns}line")
    assert float(stem.get("y1")) == pytest.approx(bottom)  # drawn up from 0
    assert float(stem.get("y2")) == pytest.approx(top)
    labels = {t.text: float(t.get("y")) for t in svg.findall(f"{ns}text")}
    assert labels["0.00"] == bottom and "10.00" in labels  # the axis runs from 0 to 10


def test_the_rater_token_stands_for_the_session_on_the_rating_calls(campaign, rating_door):
    # given: a client with the page's token and no session (no cookie, no CSRF token)
    (user,) = enrol(campaign)
    c = token_client(campaign, user, rating_door)
    # when: a full item
    body = c.post(reverse("annotation:api-next", args=[campaign.slug])).json()
    lease = body["assignments"][0]
    assert c.post(reverse("annotation:api-heartbeat", args=[lease["id"]])).status_code == 200
    res = c.post(reverse("annotation:api-judgment", args=[lease["id"]]),
                 {"idempotency_key": str(uuid.uuid4()), "choice": "tie", "decision_ms": 5},
                 content_type="application/json")
    # then: stored as this rater, and the reply carries the next items (the one preloaded
    # first)
    assert res.status_code == 201
    stored = Judgment.objects.get(assignment__token=lease["id"])
    assert stored.rater == user and res.json()["judgment"] == judgment_ref(stored.pk)
    carried = res.json()["next"]
    assert carried["state"] == "rating" and carried["done"] == 1
    assert carried["assignments"][0]["id"] == body["assignments"][1]["id"]


def test_a_forged_expired_or_foreign_rater_token_is_refused(campaign, corpus, monkeypatch,
                                                            rating_door):
    import annotation.services.enrollment as enrollment_services

    (user,) = enrol(campaign)
    good = token_client(campaign, user, rating_door)
    door = Client if rating_door == "api" else WsgiClient
    lease = good.post(reverse("annotation:api-next", args=[campaign.slug])).json()[
        "assignments"][0]
    heartbeat = reverse("annotation:api-heartbeat", args=[lease["id"]])
    token = good.defaults["HTTP_AUTHORIZATION"]
    forged = door(HTTP_AUTHORIZATION=token[:-1] + ("A" if token[-1] != "A" else "B"))
    refused = forged.post(heartbeat)
    assert refused.status_code == 401
    if rating_door != "api":  # through the WSGI application a forged token is Django's to refuse
        assert refused.door == "django"
    # The same rater enrolled in another campaign: that campaign's token cannot touch this
    # campaign's leases or items.
    other = make_campaign(corpus, slug="other", overlap=3)
    Enrollment.objects.create(campaign=other, rater=user)
    foreign = token_client(other, user, rating_door)
    expires = Assignment.objects.get(token=lease["id"]).expires_at
    assert foreign.post(heartbeat).status_code == 404
    assert Assignment.objects.get(token=lease["id"]).expires_at == expires  # nothing extended
    assert foreign.post(reverse("annotation:api-next", args=[campaign.slug])).status_code == 404
    answer = foreign.post(reverse("annotation:api-judgment", args=[lease["id"]]),
                          {"idempotency_key": str(uuid.uuid4()), "choice": "tie",
                           "decision_ms": 5}, content_type="application/json")
    assert answer.status_code == 404
    # A token older than its life: 401, and the page reloads for a fresh one.
    later = enrollment_services.time.time() + enrollment_services.RATER_TOKEN_MAX_AGE_S + 1
    monkeypatch.setattr(enrollment_services.time, "time", lambda: later)
    expired = good.post(heartbeat, door="django")  # the fast path leaves it to Django
    assert expired.status_code == 401 and "reload" in expired.json()["detail"]
    assert not Judgment.objects.exists()


# -- campaign writes go through the services -----------------------------------------------------

def _stored(campaign) -> dict:
    from annotation.models import Campaign

    return Campaign.objects.filter(pk=campaign.pk).values().get()


def _answer_one(campaign) -> None:
    (user,) = enrol(campaign)
    c = client_for(user)
    lease = c.post(reverse("annotation:api-next", args=[campaign.slug])).json()[
        "assignments"][0]
    assert c.post(reverse("annotation:api-judgment", args=[lease["id"]]),
                  {"idempotency_key": str(uuid.uuid4()), "choice": "left", "decision_ms": 5},
                  content_type="application/json").status_code == 201


@pytest.mark.parametrize("body, field, reason", [
    ({"gold_rate": 0.9}, "gold_rate", "less than or equal to 0.5"),
    ({"gold_rate": 0.5, "catch_rate": 0.5}, "gold_rate", "must be below 1"),
    ({"per_rater_limit": 0}, "per_rater_limit", "greater than or equal to 1"),
    ({"warn_after": 9}, "warn_after", "warn_after <= block_after"),
    ({"criteria_weights": {"beauty": 1}}, "criteria_weights", "'beauty'=1.0 is not a known"),
    ({"criteria_weights": {"empathy": 0, "appropriateness": 0, "engagement": 0,
                           "naturalness": 0}}, "criteria_weights", "at least one criterion"),
    ({"reason_tags": ["timing", "timing"]}, "reason_tags", "a tag is listed twice"),
    ({"overlap": 9}, "overlap", "items are built from it"),
    ({"protocol": "group"}, "protocol", "items are built from it"),
    ({"sources": [{"kind": "ground_truth"}]}, "sources", "items are built from it"),
    ({"status": "active"}, "status", "changes through the status actions"),
    ({"slug": "renamed"}, "slug", "cannot be changed after the campaign is made"),
    ({"dataset": "other"}, "dataset", "cannot be changed after the campaign is made"),
    ({"colour": "red"}, "colour", "is not a setting this API changes"),
])
def test_a_refused_patch_names_the_field_and_changes_nothing(corpus, researcher, body, field,
                                                             reason):
    # given a draft campaign with items
    campaign = make_campaign(corpus, start=False, created_by=researcher)
    before = _stored(campaign)
    # when a good change comes with a refused one
    res = client_for(researcher).patch(reverse("annotation:api-campaign", args=[campaign.slug]),
                                       {"instructions": "Watch closely.", **body},
                                       content_type="application/json")
    # then 400, with the field and the reason; nothing was written
    assert res.status_code == 400, res.content
    assert res.json()["field"] == field
    assert res.json()["detail"].startswith(f"{field}: ") and reason in res.json()["detail"]
    assert _stored(campaign) == before


def test_patch_while_serving_changes_how_it_runs_not_what_answers_mean(corpus, researcher):
    campaign = make_campaign(corpus, created_by=researcher)  # active
    url = reverse("annotation:api-campaign", args=[campaign.slug])
    c = client_for(researcher)
    res = c.patch(url, {"consent_text": "New terms."}, content_type="application/json")
    assert res.status_code == 400 and res.json()["field"] == "consent_text"
    assert "only while the campaign is a draft (it is active)" in res.json()["detail"]
    res = c.patch(url, {"per_rater_limit": 30, "gold_rate": 0.2},
                  content_type="application/json")
    assert res.status_code == 200 and res.json()["per_rater_limit"] == 30
    assert (_stored(campaign)["per_rater_limit"], _stored(campaign)["gold_rate"]) == (30, 0.2)


def test_status_api_allows_only_the_allowed_changes(corpus, researcher):
    from annotation.services.campaigns import campaign_create

    # given a draft whose clips are not rendered
    campaign = campaign_create(name="s", slug="s", dataset=corpus, sources=SOURCES,
                               created_by=researcher,
                               episodes=list(corpus.episodes.all())).campaign
    url = reverse("annotation:api-campaign-status", args=[campaign.slug])
    c = client_for(researcher)
    for status, reason in [("active", "clips are not rendered yet"),
                           ("paused", "that is draft can become active or closed, not paused"),
                           ("running", "expected one of")]:
        res = c.post(url, {"status": status}, content_type="application/json")
        assert res.status_code == 400 and res.json()["field"] == "status"
        assert reason in res.json()["detail"]
    assert _stored(campaign)["status"] == "draft"


def test_delete_api_refuses_with_the_reason(corpus, researcher):
    from annotation.services.campaigns import campaign_set_status

    campaign = make_campaign(corpus, created_by=researcher)
    url = reverse("annotation:api-campaign", args=[campaign.slug])
    c = client_for(researcher)
    res = c.delete(url)
    assert res.status_code == 409 and res.json()["error"] == "active"
    _answer_one(campaign)
    campaign_set_status(campaign=campaign, status="closed")
    res = c.delete(url)
    assert res.status_code == 409 and res.json()["error"] == "has_judgments"
    assert res.json()["field"] == "judgments" and "close the campaign" in res.json()["detail"]
    assert c.get(url).status_code == 200 and Judgment.objects.count() == 1


def test_campaign_page_edits_settings_through_the_service(corpus, researcher):
    campaign = make_campaign(corpus, created_by=researcher)  # active
    url = reverse("annotation:campaign", args=[campaign.slug])
    c = client_for(researcher)
    form = c.get(url).context["settings_form"]
    data = {"action": "settings"}
    for name in form.fields:
        value = form[name].value()
        if value is True:
            data[name] = "on"
        elif value is not False:
            data[name] = "" if value is None else value
    # what answers record is shown, not editable, once raters are served
    assert form.fields["consent_text"].disabled and form.fields["reason_tags"].disabled
    # a refused value: the page again, the reason by the field, nothing saved
    before = _stored(campaign)
    res = c.post(url, {**data, "instructions": "Changed.", "gold_rate": "0.5",
                       "catch_rate": "0.5"})
    assert res.status_code == 400
    assert res.context["settings_form"].errors["gold_rate"] == [
        "gold_rate: gold_rate + catch_rate + repeat_rate must be below 1, got 1"]
    assert _stored(campaign) == before
    # a good one is saved
    res = c.post(url, {**data, "instructions": "Changed.", "per_rater_limit": "12"})
    assert res.status_code == 302
    assert (_stored(campaign)["instructions"], _stored(campaign)["per_rater_limit"]) == (
        "Changed.", 12)


def test_campaign_page_deletes_only_what_may_go(corpus, researcher):
    from django.contrib.messages import get_messages

    from annotation.models import Campaign
    from annotation.services.campaigns import campaign_set_status

    c = client_for(researcher)
    kept = make_campaign(corpus, slug="kept", created_by=researcher)
    _answer_one(kept)
    campaign_set_status(campaign=kept, status="paused")
    res = c.post(reverse("annotation:campaign", args=["kept"]), {"action": "delete"})
    assert res.status_code == 302 and res["Location"] == reverse("annotation:campaign",
                                                                 args=["kept"])
    assert any("judgments: the campaign has 1" in str(m)
               for m in get_messages(res.wsgi_request))
    draft = make_campaign(corpus, slug="draft", created_by=researcher, start=False)
    res = c.post(reverse("annotation:campaign", args=[draft.slug]), {"action": "delete"})
    assert res.status_code == 302 and res["Location"] == reverse("annotation:campaigns")
    assert list(Campaign.objects.values_list("slug", flat=True)) == ["kept"]


def test_campaign_page_edits_group_weights(corpus, researcher):
    from annotation.models import CRITERIA

    campaign = make_campaign(corpus, created_by=researcher, protocol="group", group_size=3,
                             start=False)
    url = reverse("annotation:campaign", args=[campaign.slug])
    c = client_for(researcher)
    form = c.get(url).context["settings_form"]
    data = {"action": "settings", **{k: v for k in form.fields
                                     if (v := form[k].value()) is not None and v is not False}}
    zero = {f"weight_{k}": "0" for k in CRITERIA}
    res = c.post(url, {**data, **zero})
    assert res.status_code == 400
    assert "at least one criterion" in res.context["settings_form"].errors["weight_empathy"][0]
    res = c.post(url, {**data, "weight_empathy": "2"})
    assert res.status_code == 302
    assert _stored(campaign)["criteria_weights"] == {
        "empathy": 2.0, "appropriateness": 1.0, "engagement": 1.0, "naturalness": 1.0}


# -- duplicate sources and integers beyond their columns ----------------------------------------

def test_the_api_refuses_a_source_listed_twice(corpus, researcher):
    from annotation.models import Campaign

    body = {"name": "Dup", "slug": "dup", "dataset": corpus.name,
            "split": corpus.episodes.first().split,
            "sources": [{"kind": "ground_truth"}, {"kind": "baseline", "name": "jitter"},
                        {"kind": "ground_truth"}]}
    res = client_for(researcher).post(reverse("annotation:api-campaigns"), body,
                                      content_type="application/json")
    assert res.status_code == 400, res.content
    assert res.json()["field"] == "sources"
    assert "sources[2]" in res.json()["detail"] and "repeats sources[0]" in res.json()["detail"]
    assert not Campaign.objects.exists()


def test_the_campaign_form_refuses_a_source_listed_twice(corpus, researcher):
    from annotation.models import Campaign

    res = client_for(researcher).post(reverse("annotation:campaign-new"), {
        "name": "Form study", "slug": "form-study", "dataset": corpus.name,
        "split": corpus.episodes.first().split, "sources": ["ground_truth", "ground_truth"],
        "samples": 1, "protocol": "pairwise", "group_size": 5, "overlap": 3,
        "target_items": 10, "per_rater_limit": 10, "gold_rate": 0.1, "catch_rate": 0.05,
        "repeat_rate": 0.05})
    assert res.status_code != 302
    assert "repeats sources[0]" in res.content.decode()
    assert not Campaign.objects.exists()


_HUGE_CREATE = ["per_rater_limit", "overlap", "target_items", "group_size", "lease_seconds",
                "warn_after", "block_after"]


@pytest.mark.parametrize("field", _HUGE_CREATE)
def test_the_api_refuses_an_integer_beyond_its_column_on_create(corpus, researcher, field):
    from annotation.models import Campaign

    body = {"name": "Big", "slug": "big", "dataset": corpus.name, "sources": SOURCES,
            "split": corpus.episodes.first().split, field: 2**31}
    res = client_for(researcher).post(reverse("annotation:api-campaigns"), body,
                                      content_type="application/json")
    assert res.status_code == 400, res.content
    assert res.json()["field"] == field and res.json()["detail"].startswith(f"{field}: ")
    assert not Campaign.objects.exists()


@pytest.mark.parametrize("field", _HUGE_CREATE)
def test_the_api_refuses_an_integer_beyond_its_column_on_patch(corpus, researcher, field):
    campaign = make_campaign(corpus, start=False, created_by=researcher)
    before = _stored(campaign)
    res = client_for(researcher).patch(reverse("annotation:api-campaign", args=[campaign.slug]),
                                       {field: 2**31}, content_type="application/json")
    assert res.status_code == 400, res.content
    assert res.json()["field"] == field
    assert _stored(campaign) == before


def test_the_api_and_the_page_refuse_an_invite_beyond_its_column(corpus, researcher):
    campaign = make_campaign(corpus, start=False, created_by=researcher)
    c = client_for(researcher)
    res = c.post(reverse("annotation:api-campaign-invites", args=[campaign.slug]),
                 {"max_uses": 2**31}, content_type="application/json")
    assert res.status_code == 400, res.content
    assert res.json()["field"] == "max_uses"
    res = c.post(reverse("annotation:campaign", args=[campaign.slug]),
                 {"action": "invite", "label": "big", "max_uses": str(2**31)})
    assert res.status_code == 302
    assert not Invite.objects.exists()


@pytest.mark.parametrize("field", ["per_rater_limit", "warn_after", "block_after"])
def test_the_settings_form_refuses_an_integer_beyond_its_column(corpus, researcher, field):
    campaign = make_campaign(corpus, start=False, created_by=researcher)
    url = reverse("annotation:campaign", args=[campaign.slug])
    c = client_for(researcher)
    form = c.get(url).context["settings_form"]
    data = {"action": "settings"}
    for name in form.fields:
        value = form[name].value()
        if value is True:
            data[name] = "on"
        elif value is not False:
            data[name] = "" if value is None else value
    before = _stored(campaign)
    res = c.post(url, {**data, field: str(2**31)})
    assert res.status_code == 400
    assert res.context["settings_form"].errors[field]
    assert _stored(campaign) == before


def test_the_campaign_form_refuses_an_integer_beyond_its_column(corpus, researcher):
    from annotation.models import Campaign

    res = client_for(researcher).post(reverse("annotation:campaign-new"), {
        "name": "Form study", "slug": "form-study", "dataset": corpus.name,
        "split": corpus.episodes.first().split, "sources": ["ground_truth", "baseline:jitter"],
        "samples": 1, "protocol": "pairwise", "group_size": 5, "overlap": 3,
        "target_items": 2**31, "per_rater_limit": 2**31, "gold_rate": 0.1,
        "catch_rate": 0.05, "repeat_rate": 0.05})
    assert res.status_code != 302
    assert res.context["form"].errors["per_rater_limit"]
    assert not Campaign.objects.exists()
