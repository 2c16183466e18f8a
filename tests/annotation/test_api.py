import json
import re
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from annotation.models import Assignment, Enrollment, Invite, Judgment
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
    assert Judgment.objects.get(pk=res.json()["judgment"]).rater == user
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
    assert forged.post(heartbeat).status_code == 401
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
    expired = good.post(heartbeat)
    assert expired.status_code == 401 and "reload" in expired.json()["detail"]
    assert not Judgment.objects.exists()
