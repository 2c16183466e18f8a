"""Many raters at once against a live server on PostgreSQL: the lease invariants hold."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.db.models import Count, F, Q
from django.urls import reverse

from annotation.models import Assignment, Item, Judgment, Probe
from annotation.services.campaigns import invite_create
from annotation.simulation import HttpTransport, Rater
from tests.annotation.conftest import make_campaign, make_corpus
from tests.conftest import require_real_services

# Each test runs through the database functions and through the portable statements.
pytestmark = pytest.mark.usefixtures("both_rating_paths")

RATERS = 50
DEADLINE_S = 90  # every rater stops by then, whatever happens


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("door", ["session", "rater-token"])
def test_fifty_raters_with_abandons_and_retries(door, request, fast_path_calls, settings):
    """``session``: the raters sign in with the session cookie and the CSRF token, and Django
    answers (the REST views); ``rater-token``: as the rate page, with its token, against the
    project's WSGI application, where the fast path answers."""
    require_real_services()
    settings.INVITE_MAX_ACCOUNTS_PER_ADDRESS = RATERS  # every rater joins from 127.0.0.1
    base_url = (request.getfixturevalue("live_server").url if door == "session"
                else request.getfixturevalue("project_server"))

    # given a campaign with probes and short leases, so abandoned items come back quickly
    campaign = make_campaign(make_corpus(episodes=12, seed=21), overlap=3, lease_seconds=3,
                             per_rater_limit=12, gold_rate=0.1, catch_rate=0.1, repeat_rate=0.1)
    invite = reverse("annotation:invite", args=[invite_create(campaign=campaign).token])
    tokens_seen: list[tuple[int, str]] = []  # (rater index, lease) for forged submissions
    lock = threading.Lock()
    log = Counter()
    replays: list[tuple[int, int]] = []
    stop_at = time.monotonic() + DEADLINE_S

    def rater(index: int) -> None:
        rng = random.Random(index)
        sim = Rater("careful", rng)
        client = HttpTransport(base_url, token=door == "rater-token")
        try:
            client.join(invite)
            while time.monotonic() < stop_at:
                res = client.next(campaign.slug)
                assert res.status_code == 200, res.text
                data = res.json()
                if data["state"] != "rating":
                    log[data["state"]] += 1
                    return
                lease = data["assignments"][0]["id"]
                with lock:
                    tokens_seen.append((index, lease))
                    victim = rng.choice(tokens_seen)
                if rng.random() < 0.1:  # closes the tab: leases run out by themselves
                    log["abandoned"] += 1
                    return
                if victim[0] != index and rng.random() < 0.2:  # a forged submission
                    forged = client.submit(victim[1], sim.answer(victim[1]))
                    log[f"forged {forged.status_code}"] += 1
                client.heartbeat(lease)
                body = sim.answer(lease)
                res = client.submit(lease, body)
                log[f"submit {res.status_code}"] += 1
                if res.status_code == 201 and rng.random() < 0.3:  # response lost: retry
                    again = client.submit(lease, body)
                    log[f"retry {again.status_code}"] += 1
                    replays.append((res.json()["judgment"], again.json()["judgment"]))
        finally:
            client.close()
            connection.close()  # this thread's own connection (the simulated eyes)

    with ThreadPoolExecutor(max_workers=RATERS) as pool:
        for f in [pool.submit(rater, i) for i in range(RATERS)]:
            f.result()

    # then: the fast path answered the page's calls, and only those
    if door == "rater-token":
        answers = sum(v for k, v in log.items() if k.split()[0] in ("forged", "submit", "retry"))
        assert fast_path_calls.count("judgment") == answers, (Counter(fast_path_calls), log)
    else:
        assert not fast_path_calls
    # every forged submission was refused, every retry found its own judgment
    assert log["submit 201"] > 50, log
    assert set(k for k in log if k.startswith("forged")) <= {"forged 403", "forged 409",
                                                             "forged 410"}, log
    assert log["forged 403"] > 0 and log["abandoned"] > 0 and replays, log
    assert all(first == again for first, again in replays)
    assert log["retry 200"] == len(replays)
    # no item has more judgments than the overlap allows, and its counter agrees (a hidden
    # repeat is a second look by the same rater and is not part of the overlap)
    for item in Item.objects.filter(campaign=campaign, probe=Probe.NONE).annotate(
            n=Count("judgments", filter=~Q(judgments__probe=Probe.REPEAT))):
        assert item.n <= campaign.overlap
        assert item.n == item.n_judgments
    # nobody answered the same item twice (hidden repeats aside)
    pairs = Counter(Judgment.objects.exclude(probe=Probe.REPEAT).values_list("rater", "item"))
    assert max(pairs.values()) == 1
    for j in Judgment.objects.filter(probe=Probe.REPEAT):
        assert pairs[(j.rater_id, j.item_id)] == 1
    # every judgment came from its own lease, while it was live
    assert not Judgment.objects.exclude(rater=F("assignment__rater")).exists()
    assert not Judgment.objects.filter(created_at__gt=F("assignment__expires_at")).exists()
    assert Judgment.objects.count() == log["submit 201"]
    assert Judgment.objects.values("idempotency_key").distinct().count() == \
        Judgment.objects.count()
    assert not Assignment.objects.filter(status="submitted", judgment__isnull=True).exists()
