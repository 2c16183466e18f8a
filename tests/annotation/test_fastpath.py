"""The rating fast path in front of Django: it answers the rate page's requests exactly as the
REST views do, and leaves every other request to Django."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation.fastpath import _ROUTE, RatingFastPath
from annotation.models import Assignment, Judgment
from tests.annotation.conftest import (
    WsgiClient,
    enrol,
    keep_test_connection,
    make_campaign,
    rater_auth,
    token_client,
)


@pytest.fixture
def campaign(corpus):
    return make_campaign(corpus, gold_rate=0, catch_rate=0, repeat_rate=0, overlap=3)


def test_the_routes_are_the_api_urls():
    token = uuid.uuid4()
    for name, args, call in [("annotation:api-next", ["my-study_2"], None),
                             ("annotation:api-heartbeat", [token], "heartbeat"),
                             ("annotation:api-judgment", [token], "judgment")]:
        match = _ROUTE.match(reverse(name, args=args))
        assert match is not None, name
        assert match["call"] == call and match["slug"] in (None, "my-study_2")
    assert _ROUTE.match(reverse("annotation:api-consent", args=["s"])) is None
    assert _ROUTE.match(f"/api/assignments/{str(token).upper()}/judgment/") is None


def test_every_answer_is_the_apis_whichever_door(campaign, rating_door, both_rating_paths):
    # given: two raters, one lease each; every request below is sent through the door
    user, other = enrol(campaign, 2)
    me = token_client(campaign, user, rating_door)
    them = token_client(campaign, other, rating_door)
    leases = me.post(reverse("annotation:api-next", args=[campaign.slug])).json()["assignments"]
    theirs = them.post(reverse("annotation:api-next", args=[campaign.slug])).json()[
        "assignments"][0]["id"]
    url = reverse("annotation:api-judgment", args=[leases[0]["id"]])
    key = str(uuid.uuid4())

    def answer(body, client=me, content_type="application/json", to=url, door=None):
        return client.post(to, body, content_type=content_type, door=door)

    # when/then: malformed answers, wrong leases
    refusals = [
        (answer({"idempotency_key": key, "choice": "sideways", "decision_ms": 5}), 400,
         "invalid"),
        (answer({"idempotency_key": key, "decision_ms": 5}), 400, "invalid"),
        (answer({"choice": "left", "decision_ms": 5}), 400, "invalid"),
        (answer(["a", "list"]), 400, "invalid"),
        # bodies that are not JSON as DRF's parser reads it go to Django (the parser's words)
        (answer("not json", door="django"), 400, None),
        (answer('{"idempotency_key": "' + key + '", "choice": "left", "decision_ms": NaN}',
                door="django"), 400, None),
        # (the rating calls read every body as JSON, whatever its declared type)
        (answer("choice=left", content_type="application/x-www-form-urlencoded",
                door="django"), 400, None),
        (answer({"idempotency_key": key, "choice": "left", "decision_ms": 5}, client=them), 403,
         "not_your_lease"),
        (answer({"idempotency_key": key, "choice": "left", "decision_ms": 5},
                to=reverse("annotation:api-judgment", args=[uuid.uuid4()])), 404,
         "no_such_assignment"),
        (me.post(reverse("annotation:api-heartbeat", args=[theirs])), 403, "not_your_lease"),
        (me.post(reverse("annotation:api-next", args=["nope"])), 404, "not_enrolled"),
    ]
    for reply, status, code in refusals:
        assert reply.status_code == status, (status, reply.content)
        assert reply.json()["detail"]
        if code:
            assert reply.json()["error"] == code
    assert not Judgment.objects.exists()

    # an answer, its retry, another key for the same lease, and a lease that ran out
    ok = answer({"idempotency_key": key, "choice": "left", "strength": 2, "decision_ms": 5})
    retry = answer({"idempotency_key": key, "choice": "left", "strength": 2, "decision_ms": 5})
    again = answer({"idempotency_key": str(uuid.uuid4()), "choice": "tie", "decision_ms": 5})
    assert (ok.status_code, retry.status_code, again.status_code) == (201, 200, 409)
    assert retry.json()["judgment"] == ok.json()["judgment"] and not retry.json()["stored"]
    assert ok.json()["next"]["assignments"][0]["id"] == leases[1]["id"]
    assert again.json()["error"] == "already_answered"
    Assignment.objects.filter(token=leases[1]["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    late = answer({"idempotency_key": str(uuid.uuid4()), "choice": "tie", "decision_ms": 5},
                  to=reverse("annotation:api-judgment", args=[leases[1]["id"]]))
    assert late.status_code == 410 and late.json()["error"] == "lease_expired"
    beat = me.post(reverse("annotation:api-heartbeat", args=[leases[0]["id"]]))
    assert beat.status_code == 409
    assert Judgment.objects.count() == 1


def test_its_replies_carry_the_headers_djangos_do(campaign):
    (user,) = enrol(campaign)
    auth = rater_auth(campaign, user)
    lease = Client(HTTP_AUTHORIZATION=auth).post(
        reverse("annotation:api-next", args=[campaign.slug])).json()["assignments"][0]["id"]
    url = reverse("annotation:api-heartbeat", args=[lease])
    api = Client(HTTP_AUTHORIZATION=auth).post(url)
    fast = WsgiClient(HTTP_AUTHORIZATION=auth).post(url)
    assert fast.door == "fast-path"
    assert api.status_code == fast.status_code == 200
    for name in ("Content-Type", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy",
                 "Cross-Origin-Opener-Policy"):
        assert fast[name] == api[name], name
    assert fast.json().keys() == api.json().keys()
    assert "Vary" not in fast.headers and "Vary" not in api


def test_everything_else_goes_to_django(campaign, settings):
    (user,) = enrol(campaign)
    auth = rater_auth(campaign, user)
    lease = Client(HTTP_AUTHORIZATION=auth).post(
        reverse("annotation:api-next", args=[campaign.slug])).json()["assignments"][0]["id"]
    heartbeat = reverse("annotation:api-heartbeat", args=[lease])
    judgment = reverse("annotation:api-judgment", args=[lease])
    passed: list[str] = []

    def django(environ, start_response):
        passed.append(environ["PATH_INFO"])
        assert environ["wsgi.input"].read() == body  # the body is still there for Django
        start_response("299 Django", [])
        return [b""]

    app = RatingFastPath(django)

    def send(path, *, method="POST", data=b"", **extra) -> str:
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "",
                   "HTTP_HOST": "testserver", "wsgi.url_scheme": "http",
                   "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(data)),
                   "wsgi.input": io.BytesIO(data), "HTTP_AUTHORIZATION": auth, **extra}
        environ = {k: v for k, v in environ.items() if v is not None}
        got = []
        with keep_test_connection():
            app(environ, lambda status, headers, exc=None: got.append(status))
        return got[0]

    body = b""
    assert send(heartbeat, method="GET").startswith("299")
    assert send(heartbeat, HTTP_AUTHORIZATION="").startswith("299")  # the session's
    assert send(heartbeat, HTTP_AUTHORIZATION=auth + "x").startswith("299")  # forged
    assert send(reverse("annotation:api-campaigns")).startswith("299")
    assert send(heartbeat, HTTP_HOST="evil.example").startswith("299")
    body = b'{"choice": "left"}'
    assert send(judgment, data=body, CONTENT_TYPE="text/plain").startswith("299")
    body = b"{not json"
    assert send(judgment, data=body).startswith("299")
    body = b"\xef\xbb\xbf{}"  # a byte-order mark, which DRF's parser refuses
    assert send(judgment, data=body).startswith("299")
    body = '{"choice": "gauche"}'.encode("latin-1")
    assert send(judgment, data=body, CONTENT_TYPE="application/json; charset=latin-1"
                ).startswith("299")
    body = b"[" * 100_000  # deeper than the parser goes
    assert send(judgment, data=body).startswith("299")
    body = b""
    assert send(heartbeat + "\n").startswith("299")
    environ_without_host = {"HTTP_HOST": None}
    assert send(heartbeat, **environ_without_host).startswith("299")
    body = b'{"decision_ms": 1}' + b" " * 100
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 50
    assert send(judgment, data=body).startswith("299")
    settings.SECURE_SSL_REDIRECT = True
    body = b""
    assert send(heartbeat).startswith("299")
    assert send(heartbeat, **{"wsgi.url_scheme": "https"}).startswith("200")
    settings.RATING_FAST_PATH = False
    assert RatingFastPath(django)({"REQUEST_METHOD": "POST", "PATH_INFO": heartbeat,
                                   "HTTP_AUTHORIZATION": auth, "wsgi.input": io.BytesIO()},
                                  lambda *a: None) == [b""]
    assert len(passed) == 15
    assert not Judgment.objects.exists()


def test_a_body_over_the_limit_is_refused_whichever_door(campaign, rating_door, settings):
    (user,) = enrol(campaign)
    me = token_client(campaign, user, rating_door)
    lease = me.post(reverse("annotation:api-next", args=[campaign.slug])).json()[
        "assignments"][0]["id"]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    res = me.post(reverse("annotation:api-judgment", args=[lease]),
                  {"idempotency_key": str(uuid.uuid4()), "choice": "left", "decision_ms": 5,
                   "playback": {"note": "x" * 2000}}, content_type="application/json",
                  door="django")  # the fast path leaves a body over the limit to Django
    assert res.status_code == 413 and "at most 1000" in res.json()["detail"], res.content
    assert not Judgment.objects.exists()


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


_ANSWER = '{"idempotency_key": "' + str(uuid.uuid4()) + '", "choice": "left", "decision_ms": 5, '


@pytest.mark.parametrize("body", [
    "[" * 100_000,
    _ANSWER + '"playback": ' + _nested(100_000) + "}",
    _ANSWER + '"playback": {"a": ' + _nested(100) + "}}",  # parses, but deeper than answers go
], ids=["brackets", "past-the-parser", "past-the-limit"])
def test_a_deeply_nested_answer_is_a_400_on_both_doors(campaign, rating_door, body):
    # given: a rater with a lease
    (user,) = enrol(campaign)
    me = token_client(campaign, user, rating_door)
    lease = me.post(reverse("annotation:api-next", args=[campaign.slug])).json()[
        "assignments"][0]["id"]
    # when: the answer nests past the limit (the fast path leaves it to Django)
    reply = me.post(reverse("annotation:api-judgment", args=[lease]), body, door="django")
    # then: refused by name, nothing stored
    assert reply.status_code == 400, reply.content[:300]
    assert reply.json()["error"] == "invalid"
    assert "nested" in reply.json()["detail"]
    assert not Judgment.objects.exists()


def test_a_deeply_nested_campaign_is_a_400(researcher):
    c = Client()
    c.force_login(researcher)
    for body in ("[" * 100_000, '{"name": "x", "sources": ' + _nested(100) + "}"):
        reply = c.post(reverse("annotation:api-campaigns"), body,
                       content_type="application/json")
        assert reply.status_code == 400, reply.content[:300]
        assert reply.json()["error"] == "invalid" and "nested" in reply.json()["detail"]


def test_its_replies_are_not_stored_by_caches_as_djangos_are(campaign):
    (user,) = enrol(campaign)
    auth = rater_auth(campaign, user)
    lease = Client(HTTP_AUTHORIZATION=auth).post(
        reverse("annotation:api-next", args=[campaign.slug])).json()["assignments"][0]["id"]
    url = reverse("annotation:api-heartbeat", args=[lease])
    api = Client(HTTP_AUTHORIZATION=auth).post(url)
    fast = WsgiClient(HTTP_AUTHORIZATION=auth).post(url)
    assert fast.door == "fast-path"
    assert "no-store" in fast["Cache-Control"] and "no-store" in api["Cache-Control"]
    assert fast["Cache-Control"] == api["Cache-Control"]
