"""In process, with Django's test client: the SQL statements of each rating call, and what a
request costs before the view does any work (the framework's floor)."""

from __future__ import annotations

import random
import time
import uuid

from benchmarks.rating.fixtures import SLUG
from benchmarks.rating.load import ENDPOINTS, pct


def sql_per_call(cycles: int = 30) -> dict:
    """Statements per call with the Django test client (the whole request, as the rate page
    makes it: rater token, the next items carried by each answer's reply), counted over
    ``cycles`` judgments of one rater, with one example of each, and the median in-process
    time per call (no HTTP, no concurrency)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from annotation.models import Enrollment
    from annotation.services.enrollment import rater_token_make

    enrollment = Enrollment.objects.filter(campaign__slug=SLUG).order_by("pk").first()
    client = Client(HTTP_HOST="127.0.0.1",
                    HTTP_AUTHORIZATION="Rater " + rater_token_make(enrollment=enrollment))
    counts: dict[str, list[int]] = {e: [] for e in ENDPOINTS}
    times: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
    # each statement's own time (wall, in the client: the round trip and PostgreSQL's work)
    statement_times: dict[str, list[list[float]]] = {e: [] for e in ENDPOINTS}
    examples: dict[tuple[str, int], list[str]] = {}  # one per (call, statement count)
    rng = random.Random(0)

    def call(endpoint: str, path: str, body: dict | None = None):
        spent: list[float] = []

        def timed(execute, sql, params, many, context):
            t0 = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                spent.append(time.perf_counter() - t0)

        with CaptureQueriesContext(connection) as ctx, connection.execute_wrapper(timed):
            t0 = time.perf_counter()
            res = client.post(path, body, content_type="application/json")
            times[endpoint].append(time.perf_counter() - t0)
        assert 200 <= res.status_code < 300, (endpoint, res.status_code, res.content[:200])
        counts[endpoint].append(len(ctx.captured_queries))
        statement_times[endpoint].append(spent)
        sqls = [q["sql"] for q in ctx.captured_queries]
        key = (endpoint, len(sqls))
        if key not in examples or "RANDOM()" in " ".join(examples[key]):
            examples[key] = sqls  # preferably one without a probe (those are drawn at random)
        return res

    body = call("next", f"/api/rate/{SLUG}/next/").json()
    for i in range(cycles):
        token = body["assignments"][0]["id"]
        call("heartbeat", f"/api/assignments/{token}/heartbeat/")
        body = call("judgment", f"/api/assignments/{token}/judgment/",
                    {"idempotency_key": str(uuid.uuid4()), "decision_ms": 1000,
                     "choice": rng.choice(("left", "right", "tie", "both_bad"))}).json()["next"]
        if i == 4:  # warmed up: measure from here
            times = {e: [] for e in ENDPOINTS}
            statement_times = {e: [] for e in ENDPOINTS}
    # The next call alone (the page makes it once, when it opens).
    for _ in range(10):
        call("next", f"/api/rate/{SLUG}/next/")
    return {e: {"statements_min": min(v), "statements_max": max(v),
                "statements_mean": round(sum(v) / len(v), 2),
                "in_process_p50_ms": round(pct([t * 1000 for t in times[e]], 0.5), 2),
                # the median time of each statement, in order (an answer: the lease's context,
                # then the store)
                "statement_p50_ms": _statement_medians(statement_times[e]),
                "example": [q[:140] for q in examples[(e, max(set(v), key=v.count))]]}
            for e, v in counts.items()}


def _statement_medians(rows: list[list[float]]) -> list[float]:
    width = max((len(r) for r in rows), default=0)
    return [round(pct([r[i] * 1000 for r in rows if len(r) > i], 0.5), 3) for i in range(width)]


def framework_floor(rounds: int = 6, n: int = 40) -> dict:
    """What a request costs before the view does anything, in process (best of ``rounds``):
    the middleware and DRF with the rater token; with the session and the user (two queries)
    instead; and anonymous plain Django, for scale."""
    from django.test import Client

    from annotation.models import Enrollment
    from annotation.services.enrollment import rater_token_make

    enrollment = Enrollment.objects.filter(campaign__slug=SLUG).order_by("pk").first()
    out = {}
    # The do-nothing views are in the URLconf of this process, as of the server's
    # (DJANGO_SETTINGS_MODULE is benchmarks.rating_settings).
    signed_in = Client(HTTP_HOST="127.0.0.1")
    signed_in.force_login(enrollment.rater)
    token = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION="Rater " + rater_token_make(
        enrollment=enrollment))
    cases = {"drf_rater_token_ms": (token, "/bench/floor/rater/"),
             "drf_signed_in_ms": (signed_in, "/bench/floor/drf/"),
             "django_signed_in_ms": (signed_in, "/bench/floor/plain/"),
             "django_anonymous_ms": (Client(HTTP_HOST="127.0.0.1"), "/bench/floor/plain/")}
    for key, (client, url) in cases.items():
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(n):
                client.post(url)
            best = min(best, (time.perf_counter() - t0) / n)
        out[key] = round(best * 1000, 2)
    return out

