"""The background work the Celery faults interrupt: a small render (queue ``render``) and a
retraining round of a tiny policy on this machine's CPU (its optimisation step on ``gpu``)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

ROUND_LINEAGE = "faults"
# A round small enough for two busy cores; optimisation long enough (and checkpointed often
# enough) to be killed half-way and resume.
ROUND_CONFIG = {
    "min_pairs": 5,
    "test_fraction": 0.2,
    "critic": {"d_model": 16, "n_layers": 1, "n_heads": 2, "members": 2, "epochs": 2.0,
               "batch_size": 8, "log_every": 1},
    "optimise": {"max_steps": 60, "batch_size": 4, "val_every": 30, "val_k": 1,
                 "checkpoint_every": 1, "chance_alpha": 0.0},
    "val_episodes": 2,
    "eval_episodes": 2,
    "eval_k": 1,
    "next_campaign": {"create": False},
}
# Frames of the render the worker is killed in: a few seconds of work on one core.
RENDER_FRAMES = 240


def render_request(seed: int):
    """A new clip (its own content hash) queued for the worker; returns the row."""
    import numpy as np

    from rendering.layouts import BUILTIN
    from rendering.renderer import RenderSettings
    from rendering.services import clip_request

    rng = np.random.default_rng(seed)
    t = np.arange(RENDER_FRAMES)[:, None] / 30.0
    phase = rng.uniform(0, 2 * np.pi, BUILTIN.width)
    mid, half = (BUILTIN.low + BUILTIN.high) / 2, (BUILTIN.high - BUILTIN.low) / 2
    seq = (mid + 0.5 * half * np.sin(2 * np.pi * 0.7 * t + phase)).astype(np.float32)
    return clip_request(fps=30, sequence=seq, settings=RenderSettings(width=128, height=128))


def prepare_round(*, seed: int) -> dict:
    """A promoted tiny policy of lineage ``faults`` on the benchmark's corpus, and a small
    campaign comparing its samples with the ground truth and a frozen face, answered by three
    raters through the rating services. Returns the campaign's slug and sizes."""
    from annotation.models import Campaign
    from annotation.services.campaigns import (
        campaign_clip_ids,
        campaign_create,
        campaign_set_status,
        invite_create,
    )
    from annotation.services.enrollment import invite_accept
    from annotation.services.judgments import judgment_submit
    from annotation.services.scheduling import assignments_next
    from feedback.services.rounds import version_promote
    from policy.ml.checkpoint import load_checkpoint
    from policy.ml.demo import DEMO_MODEL, DEMO_TRAIN
    from policy.ml.train import train
    from policy.models import Dataset, PolicyVersion
    from policy.services.candidates import candidates_generate
    from policy.synthetic import generate_corpus
    from rendering import blobs
    from rendering.models import Clip, ClipStatus

    t0 = time.perf_counter()
    dataset = Dataset.objects.get(name="bench")
    tiny = {"model": {"d_model": 16, "n_layers": 1, "n_heads": 2},
            "train": {"max_steps": 4, "batch_size": 4, "log_every": 1, "warmup_steps": 1}}
    path = Path(blobs.default_storage.path("faults-tiny.pt"))
    path.parent.mkdir(parents=True, exist_ok=True)
    train([e for e in generate_corpus(24, seed + 5) if e.split == "train"],
          dataclasses.replace(DEMO_MODEL, **tiny["model"]),
          dataclasses.replace(DEMO_TRAIN, **tiny["train"]), checkpoint_path=path)
    sha, _ = blobs.put_blob(path.read_bytes(), "pt")
    tok = load_checkpoint(path).tokenizer
    parent = PolicyVersion.objects.create(
        name="faults-tiny", lineage=ROUND_LINEAGE, checkpoint_sha=sha,
        config={"preset": "demo", **tiny}, dataset=dataset,
        tokenizer={"layout": tok.layout, "n_bins": tok.n_bins, "fingerprint": tok.fingerprint()})
    version_promote(version=parent)
    episodes = list(dataset.episodes.filter(split="train").order_by("key")[:8])
    candidates_generate(version=parent, episodes=episodes, k=2, ground_truth=True)
    campaign = campaign_create(
        name="Faults, round", slug="faults-round", dataset=dataset,
        sources=[{"kind": "policy", "version": parent.name, "samples": 2},
                 {"kind": "ground_truth"}, {"kind": "baseline", "name": "frozen"}],
        episodes=episodes, overlap=2, gold_rate=0, catch_rate=0, repeat_rate=0,
        reason_tags=["timing"]).campaign
    mp4, _ = blobs.put_blob(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "mp4")
    png, _ = blobs.put_blob(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, "png")
    Clip.objects.filter(pk__in=campaign_clip_ids(campaign)).update(
        status=ClipStatus.SUCCEEDED, mp4_sha=mp4, poster_sha=png, progress=100.0)
    campaign_set_status(campaign=campaign, status="active")
    invite = invite_create(campaign=campaign)
    n = 0
    for _ in range(3):
        rater = invite_accept(token=invite.token).rater
        for _ in range(200):
            leases = assignments_next(rater=rater, campaign_slug=campaign.slug).assignments
            if not leases:
                break
            choice = ("left", "right", "left", "tie")[n % 4]
            judgment_submit(rater=rater, token=str(leases[0].token),
                            idempotency_key=uuid.uuid4(), choice=choice,
                            strength=2 if choice != "tie" else None, decision_ms=900 + n,
                            viewing_ms=2000, playback={"plays": 1, "events": []})
            n += 1
    campaign = Campaign.objects.get(pk=campaign.pk)
    return {"round_campaign": campaign.slug, "round_campaign_judgments": n,
            "round_setup_s": round(time.perf_counter() - t0, 1)}


def round_begin(slug: str):
    from annotation.models import Campaign
    from feedback.services.rounds import round_start

    return round_start(campaigns=[Campaign.objects.get(slug=slug)], config=ROUND_CONFIG,
                       lineage=ROUND_LINEAGE)
