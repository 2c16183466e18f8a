"""Campaigns made from a small synthetic corpus, with clips marked rendered (tiny files) so
scheduling tests do not wait for the renderer; the browser test renders for real."""

from __future__ import annotations

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
