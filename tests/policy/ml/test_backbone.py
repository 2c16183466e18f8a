"""The policy on a language-model backbone, with tiny randomly initialised Llama and Qwen2
decoders saved as real model directories: shapes, causality, the cache, learning, seeds,
checkpoints (full and LoRA), and directories that must be refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.ml.backbone import BackboneMismatchError, BackboneVLA, save_random_backbone, word_tokens
from policy.ml.checkpoint import load_policy
from policy.ml.config import ModelConfig, TrainConfig
from policy.ml.critic import Critic, CriticConfig
from policy.ml.data import make_batch, window_index
from policy.ml.hf import ModelDirError
from policy.ml.train import Trainer, sft_loss, train

TINY_LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=4096)
TRAIN = TrainConfig(max_steps=4, batch_size=4, warmup_steps=1, log_every=1, device="cpu", seed=1)


def _words(episodes) -> list[str]:
    return sorted({w["word"] for e in episodes for w in (e.transcript or [])})


@pytest.fixture(scope="module")
def llama(tmp_path_factory, episodes) -> Path:
    return save_random_backbone(tmp_path_factory.mktemp("llama"), family="llama",
                                words=_words(episodes), **TINY_LM)


@pytest.fixture(scope="module")
def config(llama) -> ModelConfig:
    return ModelConfig(backbone=str(llama), chunk=3, context=24, bin_head_dim=8, n_mels=8,
                       dropout=0.0, text_slots=3)


def _batch(b: int, t: int, cfg: ModelConfig, d: int = 18, vocab: int = 30) -> dict:
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, vocab, (b, t, cfg.text_slots), generator=g)
    text[torch.rand(b, t, cfg.text_slots, generator=g) < 0.7] = 0  # most frames hear nothing
    return {
        "speaker": torch.randn(b, t, d, generator=g),
        "mel": torch.randn(b, t, cfg.n_mels * cfg.mel_per_frame, generator=g),
        "mel_mask": torch.ones(b, dtype=torch.bool),
        "text": text,
        "prev": torch.rand(b, t, d, generator=g) * 2 - 1,
        "prev_valid": torch.ones(b, t, dtype=torch.bool),
    }


def _model(cfg: ModelConfig) -> BackboneVLA:
    torch.manual_seed(0)
    return BackboneVLA(cfg, 18).eval()


def test_logits_per_frame_chunk_dimension_and_bin(config):
    model = _model(config)
    assert model(_batch(2, 10, config)).shape == (2, 10, config.chunk, 18, config.n_bins)
    out = model(_batch(2, 10, config), heads_at=torch.tensor([2, 9]))
    assert out.shape == (2, 2, config.chunk, 18, config.n_bins)
    assert model.flops_per_frame() > 2 * model.n_params()  # every weight, more than one token


def test_a_frame_never_sees_later_inputs_nor_words_heard_later(config):
    model = _model(config)
    base = _batch(1, 15, config)
    later = {k: v.clone() for k, v in base.items()}
    later["speaker"][:, 7:] += 3.0
    later["prev"][:, 7:] -= 1.0
    later["text"][:, 7:] = 5  # a word heard at frame 7 and after
    a, b = model(base), model(later)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-5)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def test_words_reach_the_frames_after_they_are_heard(config):
    model = _model(config)
    base = _batch(1, 12, config)
    base["text"].zero_()
    heard = {k: v.clone() for k, v in base.items()}
    heard["text"][0, 4, 0] = 7  # heard at frame 4: in the slots before frame 6 (chunk 3)
    a, b = model(base), model(heard)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)
    assert not torch.allclose(a[:, 6], b[:, 6], atol=1e-4)


def test_the_cache_gives_the_logits_of_one_full_pass(config):
    model = _model(config)
    batch = _batch(2, 19, config)
    full = model(batch)
    cache, outs, start = model.new_cache(), [], 0
    for stop in (1, 4, 7, 10, 13, 16, 19):  # the sampler's steps: up to each chunk's first frame
        pos = torch.arange(start, stop)
        step = {k: (v[:, pos] if v.ndim > 1 else v) for k, v in batch.items()}
        outs.append(model(step, pos=pos, cache=cache))
        start = stop
    assert torch.allclose(torch.cat(outs, dim=1), full, atol=1e-4)


def test_one_pass_over_a_long_window_sees_what_the_trimmed_cache_sees(config):
    """DPO scores whole sequences in one pass: past ``context`` frames its mask keeps what the
    sampler's cache keeps, so the two factorise the same distribution."""
    cfg = dataclasses.replace(config, context=7)
    model = _model(cfg)
    batch = _batch(2, 25, cfg)
    full = model(batch)
    cache, outs, start = model.new_cache(), [], 0
    for stop in range(1, 26, cfg.chunk):  # 1, 4, 7, ...: each step ends at a chunk start
        pos = torch.arange(start, stop)
        step = {k: (v[:, pos] if v.ndim > 1 else v) for k, v in batch.items()}
        outs.append(model(step, pos=pos, cache=cache))
        start = stop
    heads = torch.arange(0, 25, cfg.chunk)  # where sampling and DPO read the heads
    assert torch.allclose(torch.cat(outs, dim=1)[:, heads], full[:, heads], atol=1e-4)
    unmasked = _model(dataclasses.replace(cfg, context=64))(batch)
    assert not torch.allclose(unmasked[:, heads[-1]], full[:, heads[-1]], atol=1e-3)


@pytest.mark.parametrize("capacity", [7, 20, None])  # grows; moves back often; as planned
def test_the_window_buffers_give_what_a_growing_cache_gives(config, capacity):
    """Each layer's window lives in a fixed buffer that moves back to its front (or grows) when
    full: the steps' logits are those of one masked pass, whatever the buffer's size."""
    from policy.ml.backbone import BackboneCache

    cfg = dataclasses.replace(config, context=7)
    model = _model(cfg)
    batch = _batch(2, 40, cfg)
    full = model(batch)
    cache = model.new_cache() if capacity is None else BackboneCache(capacity)
    outs, start = [], 0
    for stop in range(1, 41, cfg.chunk):
        pos = torch.arange(start, stop)
        step = {k: (v[:, pos] if v.ndim > 1 else v) for k, v in batch.items()}
        outs.append(model(step, pos=pos, cache=cache))
        start = stop
    heads = torch.arange(0, 40, cfg.chunk)
    assert torch.allclose(torch.cat(outs, dim=1)[:, heads], full[:, heads], atol=1e-4)
    layer = cache.kv.layers[0]
    assert layer.keys.shape[2] == len(cache.frames) <= layer.capacity
    if capacity == 7:
        assert layer.capacity > 7  # it had to grow


def test_the_cache_keeps_the_attention_window(config):
    cfg = dataclasses.replace(config, context=6)
    model = _model(cfg)
    batch = _batch(1, 30, cfg)
    cache, start = model.new_cache(), 0
    for stop in range(1, 31, cfg.chunk):
        pos = torch.arange(start, stop)
        model({k: (v[:, pos] if v.ndim > 1 else v) for k, v in batch.items()}, pos=pos,
              cache=cache)
        start = stop
    assert int(cache.frames.min()) > start - 1 - cfg.context - cfg.chunk
    assert cache.kv.layers[0].keys.shape[2] == len(cache.frames)


def test_word_tokens_are_placed_at_the_frame_each_word_ends_and_spill_over_in_order():
    class Tok:
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[len(t), len(t) + 100, len(t) + 200][: len(t) - 2]
                                  for t in texts]}

    words = [{"word": "abcd", "start": 0.0, "end": 0.1},  # 3 tokens, heard at frame 3
             {"word": "ab", "start": 0.1, "end": 0.1},  # 1 token, same frame
             {"word": "abc", "start": 0.2, "end": 0.5}]  # 2 tokens, frame 15
    ids = word_tokens(words, 20, 30.0, Tok(), 2)
    assert ids.shape == (20, 2)
    assert ids[3].tolist() == [6, 106] and ids[4].tolist() == [206, 4]  # +1: 0 means none
    assert ids[15].tolist() == [5, 105]
    assert int((ids > 0).sum()) == 6


def test_trains_and_overfits_one_batch(config, episodes):
    policy = train(episodes[:2], config, dataclasses.replace(TRAIN, max_steps=1)).policy
    assert policy.cfg.backbone_sha256  # the weights it was trained on are recorded
    tcfg = dataclasses.replace(TRAIN, listener_drop=0.0, listener_noise=0.0, smooth_weight=0.0)
    _, prep = policy.prepare(episodes[:2], need_listener=True)
    assert prep[0].text is not None and prep[0].text.shape[1] == config.text_slots
    trainer = Trainer(policy, tcfg, prep, [], torch.device("cpu"))
    picks = window_index(prep, config.context)[torch.tensor([0, 30, 60, 90])]
    batch = make_batch(prep, picks, config)
    opt = torch.optim.AdamW(policy.model.parameters(), lr=3e-3)
    policy.model.train()
    losses = []
    for _ in range(80):
        logits = policy.model(batch)
        loss, _ = sft_loss(logits, batch["targets"], batch["target_mask"], trainer.centers,
                           trainer.expression, trainer.pose, tcfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


@pytest.fixture(scope="module")
def full_run(config, episodes, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "full.pt"
    return train(episodes[:3], config, TRAIN, checkpoint_path=path), path


def test_same_seed_same_samples_other_seed_others(full_run, episodes):
    policy = full_run[0].policy
    a = policy.sample(episodes[3:5], k=3, seed=4)
    b = policy.sample(episodes[3:5], k=3, seed=4)
    c = policy.sample(episodes[3:5], k=3, seed=5)
    assert [x.shape for x in a] == [(3, e.n_frames, 18) for e in episodes[3:5]]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_checkpoint_round_trip_samples_the_same(full_run, episodes):
    result, path = full_run
    loaded = load_policy(path)
    a = result.policy.sample(episodes[3:4], k=2)
    b = loaded.sample(episodes[3:4], k=2)
    assert np.array_equal(a[0], b[0])
    assert loaded.cfg.backbone_sha256 == result.policy.cfg.backbone_sha256


def test_lora_checkpoint_holds_the_adapters_only_and_loads_them(config, episodes, tmp_path):
    cfg = dataclasses.replace(config, lora_rank=4, lora_alpha=8.0)
    path = tmp_path / "lora.pt"
    result = train(episodes[:3], cfg, TRAIN, checkpoint_path=path)
    weights = torch.load(path, weights_only=True)["model"]
    lm_keys = [k for k in weights if k.startswith("lm.")]
    assert lm_keys and all("lora_" in k for k in lm_keys)  # no frozen backbone weight
    frozen = [n for n, p in result.policy.model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("lm.") and "lora_" not in n for n in frozen)
    # The adapters learnt something (B starts at zero) and come back on load.
    b_key = next(k for k in lm_keys if "lora_B" in k)
    assert float(weights[b_key].abs().sum()) > 0
    loaded = load_policy(path)
    assert torch.equal(dict(loaded.model.state_dict())[b_key], weights[b_key])
    a = result.policy.sample(episodes[3:4], k=2)
    b = loaded.sample(episodes[3:4], k=2)
    assert np.array_equal(a[0], b[0])


def test_a_checkpoint_refuses_a_backbone_with_other_weights(full_run, episodes, tmp_path):
    result, path = full_run
    moved = tmp_path / "same-name-other-weights"
    save_random_backbone(moved, words=_words(episodes), seed=9, **TINY_LM)
    state = torch.load(path, weights_only=True)
    state["model_config"]["backbone"] = str(moved)
    other = tmp_path / "other.pt"
    torch.save(state, other)
    with pytest.raises(BackboneMismatchError, match="trained on"):
        load_policy(other)


def test_a_qwen2_backbone_works_the_same(episodes, tmp_path):
    path = save_random_backbone(tmp_path / "qwen", family="qwen2", words=_words(episodes),
                                **TINY_LM)
    cfg = ModelConfig(backbone=str(path), chunk=3, context=24, bin_head_dim=8, n_mels=8,
                      text_slots=2)
    result = train(episodes[:2], cfg, dataclasses.replace(TRAIN, max_steps=2))
    out = result.policy.sample(episodes[2:3], k=2)
    assert out[0].shape == (2, episodes[2].n_frames, 18) and np.isfinite(out[0]).all()


def test_the_critic_reads_the_same_inputs_without_the_language_model(config, episodes):
    from policy.ml.data import raw_features

    small = config.without_backbone()
    assert not small.backbone and small.chunk == config.chunk
    critic = Critic(small, 18, CriticConfig(d_model=16, n_layers=1, n_heads=2))
    assert isinstance(critic.text_in, torch.nn.Embedding)  # words as hashed ids
    words = raw_features(episodes[0], small)["text"]
    assert words.shape == (episodes[0].n_frames,) and int(words.max()) < small.text_vocab
    tokens = raw_features(episodes[0], config)["text"]  # the policy's: the backbone's tokens
    assert tokens.shape == (episodes[0].n_frames, config.text_slots)


@pytest.mark.parametrize("case", ["missing", "no-config", "unsupported", "pickle"])
def test_bad_model_directories_are_refused_by_name_and_reason(case, tmp_path, episodes):
    path = tmp_path / "model"
    if case != "missing":
        path.mkdir()
    if case == "unsupported":
        (path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        (path / "model.safetensors").write_bytes(b"")
    if case == "pickle":
        (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
        torch.save({"w": torch.zeros(1)}, path / "pytorch_model.bin")
    reason = {"missing": "does not exist", "no-config": "config.json",
              "unsupported": "gpt2", "pickle": "safetensors"}[case]
    cfg = ModelConfig(backbone=str(path), chunk=3, context=24)
    with pytest.raises(ModelDirError, match=reason) as err:
        train(episodes[:2], cfg, TRAIN)
    assert str(path) in str(err.value)


def test_speaker_video_files_reach_the_policy_through_stored_encoder_features(
        config, episodes, tmp_path, monkeypatch):
    """Episodes that carry their video as a file: a tiny DINOv2 encodes the decoded frames
    once per episode into the feature store, and the policy trains and samples on them."""
    from policy.ml import video
    from tests.policy.ml.test_video import colour_video, tiny_dinov2_dir

    monkeypatch.setattr(video, "_DEFAULT_ROOT", [lambda: tmp_path / "features"])
    clip = colour_video(tmp_path / "speaker.mp4")
    eps = [dataclasses.replace(e, video_path=str(clip), face_box=(0, 0, 16, 16))
           for e in episodes[:2]]
    encoder_dir = tiny_dinov2_dir(tmp_path / "dino")
    cfg = dataclasses.replace(config, use_video=True, vision_encoder=str(encoder_dir))
    calls = []
    real = video.VisionEncoder.encode
    monkeypatch.setattr(video.VisionEncoder, "encode",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    result = train(eps, cfg, dataclasses.replace(TRAIN, max_steps=2))
    assert result.policy.cfg.vision_sha256 and result.policy.cfg.vision_dim > 0
    assert calls and list((tmp_path / "features").rglob("*.npy"))
    _, prep = result.policy.prepare(eps)
    assert prep[0].video.shape == (eps[0].n_frames, result.policy.cfg.vision_dim)
    n = len(calls)
    out = result.policy.sample(eps, k=2)  # prepares again: features come from the store
    assert len(calls) == n and out[0].shape == (2, eps[0].n_frames, 18)


def test_dpo_scores_a_sampled_sequence_through_the_lora_adapters(config, episodes):
    """Sequence log-probabilities (DPO's input) from the backbone: finite, higher for the
    policy's own greedy answer than for a shuffled one, gradients only on trained weights."""
    from policy.ml.preference import sequence_logprob

    cfg = dataclasses.replace(config, lora_rank=4)
    policy = train(episodes[:2], cfg, dataclasses.replace(TRAIN, max_steps=2)).policy
    _, prep = policy.prepare(episodes[2:3])
    greedy = policy.tokenizer.encode(torch.as_tensor(
        policy.sample(episodes[2:3], k=1, temperature=0)[0][0]))
    shuffled = greedy[torch.randperm(len(greedy), generator=torch.Generator().manual_seed(0))]
    policy.model.train()
    logp, n = sequence_logprob(policy.model, prep * 2, [greedy, shuffled],
                               tokenizer=policy.tokenizer)
    assert torch.isfinite(logp).all() and int(n[0]) == greedy.numel()
    assert logp[0] > logp[1]
    logp.sum().backward()
    grads = {name for name, p in policy.model.named_parameters() if p.grad is not None}
    assert any("lora_" in g for g in grads)
    assert not any(name.startswith("lm.") and "lora_" not in name for name in grads)
