"""Campaigns made from a small synthetic corpus, with clips marked rendered (tiny files) so
scheduling tests do not wait for the renderer; the browser test renders for real."""

from __future__ import annotations

import io
import json
from contextlib import contextmanager

import numpy as np
import pytest
from django.contrib.auth import get_user_model

from annotation.models import Campaign
from annotation.services.campaigns import (
    campaign_clip_ids,
    campaign_create,
    campaign_set_status,
    invite_create,
)
from annotation.services.enrollment import invite_accept
from policy.models import Dataset
from policy.oracle import EpisodeContext, wrong_response
from policy.services.candidates import candidate_store_array, candidates_ground_truth
from policy.services.synthetic import synthetic_corpus_create
from rendering import blobs
from rendering.models import Clip, ClipStatus

SOURCES = [{"kind": "ground_truth"}, {"kind": "baseline", "name": "jitter"},
           {"kind": "baseline", "name": "mistimed"}]


def make_corpus(episodes: int = 6, seed: int = 11) -> Dataset:
    dataset = synthetic_corpus_create(episodes=episodes, seed=seed, name=f"syn-{seed}").dataset
    eps = list(dataset.episodes.all())
    candidates_ground_truth(episodes=eps)
    rng = np.random.default_rng(seed)
    for ep in eps:
        gt = blobs.load_array(ep.listener_sha)
        ctx = EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=ep.n_frames)
        for kind in ("jitter", "mistimed"):
            candidate_store_array(episode=ep, baseline=kind,
                                  array=wrong_response(gt, ctx, kind, rng))
    return dataset


def fake_render(campaign: Campaign) -> None:
    """Mark every clip the campaign needs as rendered, with small stand-in files."""
    mp4, _ = blobs.put_blob(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "mp4")
    png, _ = blobs.put_blob(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, "png")
    Clip.objects.filter(pk__in=campaign_clip_ids(campaign)).update(
        status=ClipStatus.SUCCEEDED, mp4_sha=mp4, poster_sha=png, progress=100.0)


def make_campaign(dataset: Dataset | None = None, *, slug: str = "study", start: bool = True,
                  **kw) -> Campaign:
    dataset = dataset or make_corpus()
    options = {"name": "Study", "slug": slug, "dataset": dataset, "sources": SOURCES,
               "episodes": list(dataset.episodes.order_by("key")), "overlap": 2,
               "gold_rate": 0.0, "catch_rate": 0.0, "repeat_rate": 0.0, **kw}
    campaign = campaign_create(**options).campaign
    fake_render(campaign)
    if start:
        campaign_set_status(campaign=campaign, status="active")
    campaign.refresh_from_db()
    return campaign


def enrol(campaign: Campaign, n: int = 1) -> list:
    invite = invite_create(campaign=campaign)
    return [invite_accept(token=invite.token).rater for _ in range(n)]


@pytest.fixture(autouse=True)
def _throttle_counts(settings) -> None:
    """Each test counts in a cache of its own (local memory, as by default): the invite
    throttle's counts of one test, or of the suite's many raters joining from 127.0.0.1, never
    reach another."""
    import uuid

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": f"test-{uuid.uuid4().hex}"}}


@pytest.fixture(params=["local-memory", "redis"])
def cache_kind(request, settings):
    """Runs a test with each cache the project runs with: local memory (the default) and Redis
    (production's), each test with keys of its own."""
    import os
    import uuid

    if request.param == "redis":
        url = os.environ.get("CELERY_BROKER_URL", "")
        if not url.startswith("redis://"):
            pytest.fail("the Redis cache test needs Redis: use ./scripts/test")
        settings.CACHES = {"default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url,
            "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}}
    else:
        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                       "LOCATION": f"test-{uuid.uuid4().hex}"}}
    return request.param


@pytest.fixture
def corpus(db) -> Dataset:
    return make_corpus()


@pytest.fixture
def researcher(db):
    from annotation.roles import RESEARCHER, role_add

    user = get_user_model().objects.create_user("res", password="pw-res-1234")
    role_add(user, RESEARCHER)
    return user


@pytest.fixture(params=["db-functions", "portable"])
def both_rating_paths(request, settings):
    """Runs a test twice: through the PostgreSQL functions and through the portable statements
    (what SQLite uses), so the two stay the same."""
    settings.RATING_DB_FUNCTIONS = request.param == "db-functions"
    return request.param


class WsgiReply:
    def __init__(self, status: str, headers: list[tuple[str, str]], content: bytes,
                 door: str) -> None:
        self.status_code = int(status.split()[0])
        self.headers = {k.lower(): v for k, v in headers}
        self.content = content
        self.door = door  # "fast-path" or "django": which door answered

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]

    def json(self):
        return json.loads(self.content)


class WsgiClient:
    """Requests through the project's WSGI application (config/wsgi.py: the rating fast path in
    front of Django), in process; the subset of Django's test client the rating tests use."""

    def __init__(self, **defaults: str) -> None:
        self.defaults = defaults

    def post(self, path: str, data=None, content_type: str = "application/json",
             **extra: str) -> WsgiReply:
        from config.wsgi import application

        body = b"" if data is None else data if isinstance(data, bytes) else (
            data if isinstance(data, str) else json.dumps(data)).encode()
        environ = {
            "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
            "SERVER_NAME": "testserver", "SERVER_PORT": "80", "HTTP_HOST": "testserver",
            "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(), "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
            "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
            **self.defaults, **extra,
        }
        got: list = []
        with keep_test_connection(), fast_path_watched() as answered:
            chunks = application(environ, lambda status, headers, exc=None: got.extend(
                [status, headers]))
            content = b"".join(chunks)
            if hasattr(chunks, "close"):
                chunks.close()
        return WsgiReply(got[0], got[1], content, "fast-path" if answered else "django")


@contextmanager
def fast_path_watched():
    """A list that gets the call's name whenever the rating fast path answers inside."""
    from annotation.fastpath import RatingFastPath

    calls: list[str] = []
    answer = RatingFastPath.__dict__["_answer"]
    RatingFastPath._answer = staticmethod(
        lambda rater, call, arg, body: calls.append(call) or answer.__func__(rater, call, arg,
                                                                             body))
    try:
        yield calls
    finally:
        RatingFastPath._answer = answer


@contextmanager
def keep_test_connection():
    """As Django's test client does around a request: the request signals do not close the
    connection that holds the test's transaction."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def rater_auth(campaign, user) -> str:
    """The ``Authorization`` header the rate page sends for this rater in this campaign."""
    from annotation.models import Enrollment
    from annotation.services.enrollment import rater_token_make

    return "Rater " + rater_token_make(
        enrollment=Enrollment.objects.get(campaign=campaign, rater=user))


RATING_VIEWS = {"NextApi": "next", "HeartbeatApi": "heartbeat", "JudgmentApi": "judgment"}


class DoorClient:
    """A client with the rate page's credential that checks, on every request, which door
    answered it: the REST views (``api``) or the fast path in front of Django (``fast-path``).
    A request meant for the other door says so (``door="django"``: the fast path leaves it to
    Django, whose REST view answers)."""

    def __init__(self, door: str, auth: str) -> None:
        from django.test import Client

        self.door = door
        self.defaults = {"HTTP_AUTHORIZATION": auth}
        self.client = Client(**self.defaults) if door == "api" else WsgiClient(**self.defaults)

    def post(self, path: str, data=None, content_type: str = "application/json", *,
             door: str | None = None, **extra):
        reply = self.client.post(path, data, content_type=content_type, **extra)
        expected = door or self.door
        if self.door == "api" or expected == "django":
            # a REST view answered (Django's test client tells which; through the WSGI
            # application the fast path must not have)
            if self.door == "api":
                view = getattr(reply.resolver_match, "func", None)
                assert getattr(view, "view_class", None).__name__ in RATING_VIEWS, (
                    path, reply.status_code)
            else:
                assert reply.door == "django", (path, reply.status_code)
        else:
            assert reply.door == "fast-path", (path, reply.status_code, reply.content[:200])
        return reply


def token_client(campaign, user, door: str = "api") -> DoorClient:
    """A client with the rate page's credential (the rater token, no session): Django's test
    client, where the REST views answer, or the WSGI application, where the fast path does;
    each request checks which door answered."""
    return DoorClient(door, rater_auth(campaign, user))


@pytest.fixture
def fast_path_calls(monkeypatch) -> list[str]:
    """The rating calls the fast path answers during the test (next, heartbeat, judgment)."""
    from annotation.fastpath import RatingFastPath

    calls: list[str] = []
    answer = RatingFastPath._answer
    monkeypatch.setattr(RatingFastPath, "_answer", staticmethod(
        lambda rater, call, arg, body: calls.append(call) or answer(rater, call, arg, body)))
    return calls


@pytest.fixture(params=["api", "fast-path"])
def rating_door(request):
    """Runs a test twice: the rater token's requests through Django's test client (the REST
    views) and through the WSGI application, where the fast path answers them."""
    return request.param


@pytest.fixture
def project_server(transactional_db):
    """The project's WSGI application (config/wsgi.py: the rating fast path in front of
    Django) served from a thread on a free port, as gunicorn serves it, static files as
    runserver serves them; its base URL."""
    import threading

    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    from config.wsgi import application

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), Quiet, allow_reuse_address=False)
    server.set_app(StaticFilesHandler(application))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
