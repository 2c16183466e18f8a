"""Checkpoints: safe loading, identity checks, same samples after a round trip, exact resume."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from policy.ml.checkpoint import file_sha256, load_checkpoint, load_policy, save_checkpoint
from policy.ml.errors import CheckpointError, ChecksumMismatchError, TokenizerMismatchError
from policy.ml.tokenizer import ActionTokenizer
from policy.ml.train import train

from .conftest import tiny_configs


def test_save_load_gives_identical_samples_for_the_same_seed(tmp_path, tiny_result, episodes):
    path = tmp_path / "p.pt"
    sha = save_checkpoint(path, policy=tiny_result.policy, train_config=None, step=6)
    assert sha == file_sha256(path)
    loaded = load_policy(path, expected_sha256=sha, tokenizer=tiny_result.policy.tokenizer)
    before = tiny_result.policy.sample(episodes[6:8], k=3, seed=11)
    after = loaded.sample(episodes[6:8], k=3, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    other_seed = loaded.sample(episodes[6:8], k=3, seed=12)
    assert not np.array_equal(after[0], other_seed[0])


def test_a_changed_file_or_another_tokenizer_is_refused(tmp_path, tiny_result):
    path = tmp_path / "p.pt"
    sha = save_checkpoint(path, policy=tiny_result.policy, train_config=None, step=0)
    with pytest.raises(ChecksumMismatchError, match="expected 0000"):
        load_checkpoint(path, expected_sha256="0" * 64)
    edges = tiny_result.policy.tokenizer.edges.clone()
    edges[0] *= 1.5
    with pytest.raises(TokenizerMismatchError, match="different values"):
        load_checkpoint(path, tokenizer=ActionTokenizer(edges, "builtin"))
    with pytest.raises(TokenizerMismatchError):
        load_checkpoint(path, tokenizer="f" * 64)
    fingerprint = tiny_result.policy.tokenizer.fingerprint()
    assert load_checkpoint(path, expected_sha256=sha.upper(), tokenizer=fingerprint).step == 0


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_files_that_are_not_plain_checkpoints_are_refused(tmp_path):
    class Payload:  # unpickling this would run code of the file's choosing
        def __reduce__(self):
            return (print, ("unpickled!",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "backchannel-listener-policy", "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint(evil)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a backchannel-listener-policy"):
        load_checkpoint(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(pickle.dumps([1, 2]) + b"junk")
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_ends_exactly_where_uninterrupted_training_ends(tmp_path, episodes):
    model_cfg, train_cfg = tiny_configs(max_steps=8, checkpoint_every=0)
    data = episodes[:4]
    calls: list[tuple[int, int]] = []
    whole = train(data, model_cfg, train_cfg, checkpoint_path=tmp_path / "whole.pt",
                  progress=lambda step, total, losses: calls.append((step, total)))
    first = train(data, model_cfg, train_cfg, checkpoint_path=tmp_path / "part.pt",
                  stop_at_step=3)
    assert first.step == 3 and load_checkpoint(tmp_path / "part.pt").step == 3
    rest = train(data, checkpoint_path=tmp_path / "part.pt", resume_from=tmp_path / "part.pt")
    assert rest.step == 8
    a, b = whole.policy.model.state_dict(), rest.policy.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in rest.history]
    assert whole.checkpoint_sha256 == rest.checkpoint_sha256  # the very same bytes
    assert calls == [(s, 8) for s in range(1, 9)]
    assert set(whole.history[-1]) >= {"loss", "ce_expression", "ce_pose", "smooth", "lr"}


def test_resume_refuses_a_different_config(tmp_path, episodes):
    model_cfg, train_cfg = tiny_configs(max_steps=2)
    train(episodes[:2], model_cfg, train_cfg, checkpoint_path=tmp_path / "c.pt")
    _, other = tiny_configs(max_steps=3)
    with pytest.raises(ValueError, match="differs from the checkpoint"):
        train(episodes[:2], model_cfg, other, resume_from=tmp_path / "c.pt")


def test_resume_may_change_the_device_and_the_logging(tmp_path, episodes):
    model_cfg, train_cfg = tiny_configs(max_steps=3)
    train(episodes[:2], model_cfg, train_cfg, checkpoint_path=tmp_path / "c.pt", stop_at_step=1)
    _, elsewhere = tiny_configs(max_steps=3, log_every=2, device="cpu")
    assert train(episodes[:2], model_cfg, elsewhere, resume_from=tmp_path / "c.pt").step == 3
