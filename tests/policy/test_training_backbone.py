"""Training runs with the ``backbone`` preset: a tiny randomly initialised Llama directory under
``POLICY_MODEL_DIR``, picked by name; bad directories are refused before anything is stored."""

import json

import pytest
import torch

from policy.ml.backbone import save_random_backbone
from policy.ml.hf import model_dir_sha256
from policy.models import JobStatus, PolicyVersion, TrainingRun
from policy.services.training import (
    TrainingError,
    load_version_policy,
    training_run_execute,
    training_run_request,
)

pytestmark = pytest.mark.django_db

TINY_LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2)


def _config(name: str) -> dict:
    return {"preset": "backbone",
            "model": {"backbone": name, "backbone_dtype": "float32", "context": 24,
                      "bin_head_dim": 8, "grad_checkpointing": False},
            "train": {"max_steps": 3, "batch_size": 4, "log_every": 1, "warmup_steps": 1,
                      "device": "cpu"},
            "eval_episodes": 2}


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICY_MODEL_DIR", str(tmp_path))
    save_random_backbone(tmp_path / "tiny-llama", words=["yes", "no", "so", "well"], **TINY_LM)
    return tmp_path / "tiny-llama"


def test_a_backbone_run_records_the_backbone_by_name_and_hash(corpus, model_dir):
    run = training_run_request(dataset=corpus, version_name="bb", config=_config("tiny-llama"),
                               enqueue=False)
    version = training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED, run.error
    assert version.config["backbone"] == {"name": "tiny-llama",
                                          "sha256": model_dir_sha256(model_dir),
                                          "lora_rank": 16}
    assert version.config["model"]["backbone_sha256"] == model_dir_sha256(model_dir)
    policy = load_version_policy(version, device="cpu")
    assert policy.model.n_trainable() < policy.model.n_params()  # LoRA: the backbone is frozen
    assert any("lora_" in name for name, p in policy.model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("case, reason", [
    ("absent", "does not exist"), ("unnamed", "needs model.backbone"),
    ("unsupported", "gpt2"), ("pickle", "safetensors"),
])
def test_a_bad_backbone_is_refused_and_nothing_is_stored(corpus, tmp_path, monkeypatch, case,
                                                          reason):
    monkeypatch.setenv("POLICY_MODEL_DIR", str(tmp_path))
    bad = tmp_path / "bad"
    if case in ("unsupported", "pickle"):
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps(
            {"model_type": "gpt2" if case == "unsupported" else "llama"}))
        torch.save({"w": torch.zeros(1)}, bad / "pytorch_model.bin")
    config = _config("" if case == "unnamed" else "bad")
    with pytest.raises(TrainingError, match=reason):
        training_run_request(dataset=corpus, version_name="x", config=config, enqueue=False)
    assert not TrainingRun.objects.exists() and not PolicyVersion.objects.exists()


def test_a_sharded_full_fine_tuning_run_registers_one_checkpoint_file(corpus, model_dir):
    """Two gloo processes under torchrun shard the backbone (fsdp); the version stores the
    shards gathered into one file that loads and samples in one process."""
    config = _config("tiny-llama")
    config["model"].update(lora_rank=0)  # full fine-tuning: every weight trained and sharded
    config["train"].update(fsdp=True)
    config.update(distributed=True, nproc=2)
    run = training_run_request(dataset=corpus, version_name="fsdp", config=config,
                               enqueue=False)
    version = training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == JobStatus.SUCCEEDED, run.error
    assert "2 processes under torchrun" in run.log
    policy = load_version_policy(version, device="cpu")
    assert policy.model.n_trainable() == policy.model.n_params()
    episode = corpus.episodes.order_by("key").first()
    from policy.selectors import episode_arrays

    out = policy.sample(episode_arrays([episode]), k=2)
    assert out[0].shape[0] == 2 and out[0].shape[1] == episode.n_frames


def test_a_bad_vision_encoder_is_refused_when_the_run_is_requested(corpus, model_dir):
    config = _config("tiny-llama")
    config["model"].update(use_video=True, vision_encoder="no-such-encoder", vision_dim=8)
    with pytest.raises(TrainingError, match="does not exist"):
        training_run_request(dataset=corpus, version_name="v", config=config, enqueue=False)
    assert not TrainingRun.objects.exists()
