"""Fixtures of the policy app's Django tests: the synthetic corpus and a tiny trained version.

Django and the policy app are imported inside the fixtures: the pure tests under ml/ also run
without pytest-django."""

from __future__ import annotations

import dataclasses

import pytest

TINY = {
    "preset": "demo",
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2},
    "train": {"max_steps": 4, "batch_size": 4, "log_every": 1, "warmup_steps": 1},
    "eval_episodes": 3,
}


@pytest.fixture
def corpus(db):
    from policy.services.synthetic import synthetic_corpus_create

    return synthetic_corpus_create(episodes=24, seed=5, name="syn").dataset


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> bytes:
    """One tiny policy trained once for the session, on the same episodes as ``corpus``."""
    from policy.ml.demo import DEMO_MODEL, DEMO_TRAIN
    from policy.ml.train import train
    from policy.synthetic import generate_corpus

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    episodes = [e for e in generate_corpus(24, 5) if e.split == "train"]
    model = dataclasses.replace(DEMO_MODEL, **TINY["model"])
    train_cfg = dataclasses.replace(DEMO_TRAIN, **TINY["train"])
    train(episodes, model, train_cfg, checkpoint_path=path)
    return path.read_bytes()


@pytest.fixture
def version(corpus, tiny_checkpoint):
    """A registered version without a training run (most tests only need the checkpoint)."""
    from policy.ml.checkpoint import load_checkpoint
    from policy.models import PolicyVersion
    from rendering import blobs

    sha, _ = blobs.put_blob(tiny_checkpoint, "pt")
    tokenizer = load_checkpoint(blobs.default_storage.path(blobs.blob_name(sha, "pt"))).tokenizer
    return PolicyVersion.objects.create(
        name="tiny",
        checkpoint_sha=sha,
        config=TINY,
        dataset=corpus,
        tokenizer={
            "layout": tokenizer.layout,
            "n_bins": tokenizer.n_bins,
            "fingerprint": tokenizer.fingerprint(),
        },
    )
