"""The VLA: shapes, causality with a bounded look-ahead, the key/value cache, learning."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from policy.ml.config import ModelConfig, TrainConfig
from policy.ml.data import EpisodeData, make_batch, window_index
from policy.ml.features import register_text_encoder
from policy.ml.model import VLA
from policy.ml.train import Trainer, sft_loss

from .conftest import TINY_MODEL


def _batch(b: int, t: int, d: int = 18, cfg: ModelConfig = TINY_MODEL, video: bool = False,
           text_dim: int = 0) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {
        "speaker": torch.randn(b, t, d, generator=g),
        "mel": torch.randn(b, t, cfg.n_mels * cfg.mel_per_frame, generator=g),
        "mel_mask": torch.tensor([True] * (b - 1) + [False]),
        "text": (torch.randint(0, cfg.text_vocab, (b, t), generator=g) if not text_dim
                 else torch.randn(b, t, text_dim, generator=g)),
        "prev": torch.rand(b, t, d, generator=g) * 2 - 1,
        "prev_valid": torch.ones(b, t, dtype=torch.bool),
    }
    if video:
        batch["video"] = torch.randint(0, 255, (b, t, 3, cfg.video_size, cfg.video_size),
                                       dtype=torch.uint8, generator=g)
        batch["video_mask"] = torch.ones(b, dtype=torch.bool)
    return batch


def test_logits_have_one_head_per_frame_of_the_chunk_dimension_and_bin():
    model = VLA(TINY_MODEL, 18).eval()
    logits = model(_batch(2, 10))
    assert logits.shape == (2, 10, TINY_MODEL.chunk, 18, 256)
    assert model(_batch(2, 10), heads_at=torch.tensor([1, 4])).shape == (2, 2, 3, 18, 256)


def test_optional_video_and_registered_text_encoder_change_the_inputs_not_the_outputs():
    register_text_encoder("test-vectors", lambda ws: np.ones((len(ws), 5), np.float32))
    cfg = dataclasses.replace(TINY_MODEL, use_video=True, video_size=16,
                              text_encoder="test-vectors", text_dim=5)
    model = VLA(cfg, 56).eval()
    logits = model(_batch(2, 6, d=56, cfg=cfg, video=True, text_dim=5))
    assert logits.shape == (2, 6, cfg.chunk, 56, 256)
    assert model.flops_per_frame() > 0


def test_position_t_never_sees_later_inputs():
    model = VLA(TINY_MODEL, 18).eval()
    base = _batch(1, 12)
    later = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in base.items()}
    for name in ("speaker", "mel", "prev"):
        later[name][:, 7:] += 5.0
    later["text"][:, 7:] = 1
    a, b = model(base), model(later)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-5)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def test_speaker_input_reaches_at_most_the_lookahead_into_the_future(episodes):
    """End to end through feature preparation: frame t's answer changes only with speaker
    frames up to t + look-ahead (here 0.3 s = 9 frames)."""
    from policy.ml.policy import Policy
    from policy.ml.tokenizer import ActionTokenizer

    ep = episodes[0]
    cfg = dataclasses.replace(TINY_MODEL, context=64, lookahead_s=0.3)
    tok = ActionTokenizer.fit(ep.listener, layout="builtin")
    policy = Policy(VLA(cfg, 18).eval(), tok, cfg)
    changed = EpisodeData(**{**ep.__dict__, "speaker": ep.speaker.copy(), "audio": None,
                             "transcript": None})
    plain = EpisodeData(**{**changed.__dict__, "speaker": ep.speaker.copy()})
    changed.speaker[30:] += 0.5  # frames 30 and later differ
    logits = []
    for e in (plain, changed):
        _, [prep] = policy.prepare([e], need_listener=True)
        batch = make_batch([prep], torch.tensor([[0, 0]]), cfg)
        logits.append(policy.model(batch))
    assert torch.allclose(logits[0][:, :21], logits[1][:, :21], atol=1e-5)  # 20 + 9 < 30
    assert not torch.allclose(logits[0][:, 21], logits[1][:, 21], atol=1e-4)  # 21 + 9 = 30


def test_the_cache_gives_the_same_logits_as_one_full_pass_also_past_the_window():
    cfg = dataclasses.replace(TINY_MODEL, context=8)
    model = VLA(cfg, 18).eval()
    batch = _batch(2, 20, cfg=cfg)
    full = model(batch)  # 20 > context: the sliding window mask
    cache, outs, start = model.new_cache(), [], 0
    for stop in (1, 4, 7, 10, 13, 16, 19, 20):
        pos = torch.arange(start, stop)
        step = {k: (v[:, pos] if torch.is_tensor(v) and v.ndim > 1 else v)
                for k, v in batch.items()}
        outs.append(model(step, pos=pos, cache=cache))
        start = stop
    assert torch.allclose(torch.cat(outs, dim=1), full, atol=1e-4)
    assert cache.k[0].shape[2] <= cfg.context  # trimmed to the window


def test_overfits_one_small_batch(episodes):
    """Cross-entropy on one fixed batch falls below 30 % of its start within 200 steps."""
    from policy.ml.train import train

    cfg = dataclasses.replace(TINY_MODEL, dropout=0.0)
    tcfg = TrainConfig(max_steps=1, batch_size=4, device="cpu", listener_drop=0.0,
                       listener_noise=0.0, smooth_weight=0.0)
    policy = train(episodes[:2], cfg, tcfg).policy
    _, prep = policy.prepare(episodes[:2], need_listener=True)
    trainer = Trainer(policy, tcfg, prep, [], torch.device("cpu"))
    picks = window_index(prep, cfg.context)[torch.tensor([0, 40, 80, 120])]
    batch = make_batch(prep, picks, cfg)
    at = torch.arange(cfg.context)
    opt = torch.optim.AdamW(policy.model.parameters(), lr=1e-2)
    policy.model.train()
    losses = []
    for _ in range(200):
        logits = policy.model(batch, heads_at=at)
        loss, _ = sft_loss(logits, batch["targets"], batch["target_mask"], trainer.centers,
                           trainer.expression, trainer.pose, tcfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


def test_fused_and_plain_gaussian_heads_agree():
    """The float32 fast path (one contraction) equals the plain form used under bf16."""
    model = VLA(TINY_MODEL, 18).eval()
    batch = _batch(2, 6)
    with torch.no_grad():
        model.head.bias.data[..., :] = torch.randn(model.head.bias.shape) * 3  # sharp peaks
        model.fused_gaussian = True
        fused = model(batch)
        model.fused_gaussian = False
        plain = model(batch)
    # float32 rounding of terms near 1e4 moves a logit by ~1e-3: probabilities agree to 2e-3
    assert torch.allclose(torch.softmax(fused, -1), torch.softmax(plain, -1), atol=2e-3)
    assert fused.softmax(-1).max() > 0.5  # the test has peaked distributions to compare
