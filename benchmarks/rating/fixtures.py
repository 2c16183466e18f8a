"""The measured platform: the benchmark's environment and database, a synthetic corpus with one
large campaign and an earlier, fully answered round, the reset before each run, and the check
of the campaign after it."""

from __future__ import annotations

import os
import time
from pathlib import Path

DB_NAME = "backchannel_bench"
SLUG = "bench"
SECRET = "benchmark-only-not-secret"  # noqa: S105
# Candidates per episode: the ground truth and these made-up wrong answers (name -> kind);
# every pair of them is an item: 8 candidates, 28 items per episode.
BASELINES = {"jitter-a": "jitter", "jitter-b": "jitter", "mistimed-a": "mistimed",
             "mistimed-b": "mistimed", "frozen": "frozen", "valence": "valence_swap",
             "jitter-c": "jitter"}


def environment(media_root: str) -> dict[str, str]:
    """Sets (and returns) the environment of this process and of the servers it starts."""
    url = os.environ.get("BENCH_DATABASE_URL",
                         f"postgres://postgres@127.0.0.1:5432/{DB_NAME}")
    env = {
        "DATABASE_URL": url,
        "SECRET_KEY": SECRET,
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "STATIC_MANIFEST": "0",
        "MEDIA_ROOT": media_root,
        "STATIC_ROOT": str(Path(media_root).parent / "static"),
        "CELERY_BROKER_URL": os.environ.get("BENCH_CELERY_BROKER_URL",
                                            "redis://127.0.0.1:6379/15"),
        "LOG_LEVEL": "WARNING",
        # every simulated rater joins through one link from this machine
        "INVITE_MAX_ACCOUNTS_PER_ADDRESS": "0", "INVITE_MAX_ACCOUNTS_PER_LINK_PER_WINDOW": "0",
        "DJANGO_SETTINGS_MODULE": "benchmarks.rating_settings",
    }
    os.environ.update(env)
    Path(env["STATIC_ROOT"]).mkdir(parents=True, exist_ok=True)
    return env


def build_campaign(*, episodes: int, items: int, seed: int, overlap: int = 3) -> dict:
    """A synthetic corpus and one active pairwise campaign over it; returns its sizes."""
    import numpy as np

    import rendering.services
    from annotation.models import Campaign, Item, Probe
    from annotation.services.campaigns import (
        campaign_clip_ids,
        campaign_create,
        campaign_set_status,
        invite_create,
    )
    from policy.oracle import EpisodeContext, wrong_response
    from policy.services.candidates import candidate_store_array, candidates_ground_truth
    from policy.services.synthetic import synthetic_corpus_create
    from rendering import blobs
    from rendering.models import Clip, ClipStatus

    rendering.services._enqueue = lambda clip_id: None  # no renderer here: clips faked below
    t0 = time.perf_counter()
    dataset = synthetic_corpus_create(episodes=episodes, seed=seed, name="bench").dataset
    eps = list(dataset.episodes.order_by("key"))
    candidates_ground_truth(episodes=eps)
    rng = np.random.default_rng(seed)
    for ep in eps:
        gt = blobs.load_array(ep.listener_sha)
        ctx = EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=ep.n_frames)
        for name, kind in BASELINES.items():
            candidate_store_array(episode=ep, baseline=name,
                                  array=wrong_response(gt, ctx, kind, rng))
    corpus_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    sources = [{"kind": "ground_truth"}] + [{"kind": "baseline", "name": n} for n in BASELINES]
    build = campaign_create(
        name="Benchmark", slug=SLUG, dataset=dataset, sources=sources, episodes=eps,
        overlap=overlap, target_items=items, per_rater_limit=1_000_000, lease_seconds=90,
        gold_rate=0.1, catch_rate=0.05, repeat_rate=0.05, seed=seed,
        consent_text="I agree to take part in this benchmark.",
        # Load-generator raters answer at random: they would fail probes and be blocked.
        warn_after=32_000, block_after=32_000,
    )
    campaign = build.campaign
    mp4, _ = blobs.put_blob(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "mp4")
    png, _ = blobs.put_blob(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, "png")
    ids = campaign_clip_ids(campaign)
    Clip.objects.filter(pk__in=ids).update(status=ClipStatus.SUCCEEDED, mp4_sha=mp4,
                                           poster_sha=png, progress=100.0)
    campaign_set_status(campaign=campaign, status="active")
    invite = invite_create(campaign=campaign, label="benchmark")
    campaign_s = time.perf_counter() - t0
    campaign = Campaign.objects.get(pk=campaign.pk)
    return {
        "episodes": len(eps),
        "candidates_per_episode": 1 + len(BASELINES),
        "items": Item.objects.filter(campaign=campaign, probe=Probe.NONE).count(),
        "gold_items": build.gold,
        "catch_items": build.catch,
        "overlap": campaign.overlap,
        "rates": {"gold": campaign.gold_rate, "catch": campaign.catch_rate,
                  "repeat": campaign.repeat_rate},
        "lease_seconds": campaign.lease_seconds,
        "clips": len(ids),
        "corpus_s": round(corpus_s, 1),
        "campaign_s": round(campaign_s, 1),
        "invite": invite.token,
    }


def build_history(*, seed: int) -> dict:
    """An earlier, closed campaign over the same corpus with every item answered by three of the
    raters, written in bulk: the lease and judgment tables of a platform that has run campaigns
    before. On a nearly empty lease table PostgreSQL plans the rating functions' lookups as
    whole-table scans and keeps those plans for the connection until statistics are retaken;
    a run starting from one measured that, not a platform at work."""
    from django.db import connection

    from annotation.models import Campaign, CampaignStatus, Enrollment
    from annotation.services.campaigns import campaign_create, campaign_set_status

    t0 = time.perf_counter()
    bench = Campaign.objects.get(slug=SLUG)
    items = bench.items.count()
    earlier = campaign_create(
        name="Benchmark, earlier round", slug=f"{SLUG}-earlier", dataset=bench.dataset,
        sources=bench.sources, episodes=list(bench.dataset.episodes.order_by("key")),
        overlap=bench.overlap, target_items=items, seed=seed + 1, gold_rate=0, catch_rate=0,
        repeat_rate=0).campaign
    campaign_set_status(campaign=earlier, status=CampaignStatus.CLOSED)
    raters = list(Enrollment.objects.filter(campaign=bench).order_by("rater_id")
                  .values_list("rater_id", flat=True))
    with connection.cursor() as cursor:
        # Item k is answered by raters k, k + 1 and k + 2 (mod the number of raters).
        cursor.execute(
            'INSERT INTO annotation_assignment (token, campaign_id, item_id, rater_id, probe, '
            '"order", status, leased_at, heartbeat_at, expires_at) '
            "SELECT gen_random_uuid(), %s, i.id, (%s::int[])[1 + (i.k + j) %% %s], 'none', "
            "'[0, 1]', 'submitted', now() - interval '1 day', now() - interval '1 day', "
            "now() - interval '1 day' + interval '90 seconds' "
            "FROM (SELECT id, row_number() OVER (ORDER BY id) AS k FROM annotation_item "
            "      WHERE campaign_id = %s) i, generate_series(0, %s - 1) j",
            [earlier.pk, raters, len(raters), earlier.pk, bench.overlap])
        cursor.execute(
            'INSERT INTO annotation_judgment (idempotency_key, assignment_id, campaign_id, '
            'item_id, rater_id, probe, "order", choice, outcome, strength, reasons, decision_ms, '
            "viewing_ms, playback, qc, created_at) "
            "SELECT gen_random_uuid(), a.id, a.campaign_id, a.item_id, a.rater_id, 'none', "
            "a.\"order\", 'left', 'a', NULL, '[]', 2000, 9000, '{}', '{}', a.expires_at "
            "FROM annotation_assignment a WHERE a.campaign_id = %s",
            [earlier.pk])
        cursor.execute("UPDATE annotation_item SET n_judgments = %s WHERE campaign_id = %s",
                       [bench.overlap, earlier.pk])
        cursor.execute("SELECT count(*) FROM annotation_judgment WHERE campaign_id = %s",
                       [earlier.pk])
        answered = cursor.fetchone()[0]
    connection.close()
    return {"earlier_round_judgments": answered,
            "earlier_round_s": round(time.perf_counter() - t0, 1)}


def drop_history() -> None:
    """Remove the earlier round's leases and judgments (the next reset vacuums the tables)."""
    from annotation.models import Assignment, Judgment

    earlier = f"{SLUG}-earlier"
    Judgment.objects.filter(campaign__slug=earlier).delete()
    Assignment.objects.filter(campaign__slug=earlier).delete()


def reset_campaign() -> None:
    """Forget every lease and judgment: each run starts from the same state."""
    from django.db import connection

    from annotation.models import Assignment, Campaign, Enrollment, Item, Judgment

    campaign = Campaign.objects.get(slug=SLUG)
    Judgment.objects.filter(campaign=campaign).delete()
    Assignment.objects.filter(campaign=campaign).delete()
    Item.objects.filter(campaign=campaign).update(n_judgments=0)
    Enrollment.objects.filter(campaign=campaign).update(
        n_judgments=0, probes_passed=0, probes_failed=0, blocked=False, finished_at=None)
    with connection.cursor() as cursor:
        for model in (Judgment, Assignment, Item, Enrollment):
            cursor.execute(f"VACUUM {model._meta.db_table}")
    connection.close()


def analyze() -> None:
    """Fresh planner statistics, as autovacuum keeps them in a running campaign. Taken once
    the warm-up has made leases and judgments: statistics of the emptied tables would make
    PostgreSQL count live leases through the wrong index."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("ANALYZE annotation_assignment, annotation_judgment, annotation_item, "
                     "annotation_enrollment")



def campaign_check() -> dict:
    """The overlap invariant and exactly-once, read back from the database after a run."""
    from django.db.models import Count, F, Q

    from annotation.models import Assignment, AssignmentStatus, Campaign, Item, Judgment, Probe

    campaign = Campaign.objects.get(slug=SLUG)
    regular = Judgment.objects.filter(campaign=campaign, probe=Probe.NONE)
    # (a hidden repeat is a second look by the same rater, not part of the overlap)
    over = (Item.objects.filter(campaign=campaign, probe=Probe.NONE)
            .annotate(j=Count("judgments", filter=~Q(judgments__probe=Probe.REPEAT)))
            .filter(j__gt=campaign.overlap).count())
    mismatched = (Item.objects.filter(campaign=campaign, probe=Probe.NONE)
                  .annotate(j=Count("judgments", filter=Q(judgments__probe=Probe.NONE)))
                  .exclude(j=F("n_judgments")).count())
    return {
        "judgments": Judgment.objects.filter(campaign=campaign).count(),
        "regular_judgments": regular.count(),
        "probe_judgments": Judgment.objects.filter(campaign=campaign).exclude(
            probe=Probe.NONE).count(),
        "items_over_overlap": over,
        "items_count_mismatch": mismatched,
        "submitted_without_judgment": Assignment.objects.filter(
            campaign=campaign, status=AssignmentStatus.SUBMITTED, judgment__isnull=True).count(),
    }

