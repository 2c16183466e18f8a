"""The static sampling engine: the loop engine's candidates, bit for bit, from fixed shapes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from policy.ml.config import SampleConfig
from policy.ml.data import EpisodeData, fit_noise_coupling
from policy.ml.fastsample import STATIC_CUDA_ROWS, episode_seed, sample_group_static, sampling_noise
from policy.ml.model import VLA
from policy.ml.policy import Policy
from policy.ml.sample import _sample_group, rows_per_pass, sample_engine, sample_prepared
from policy.ml.tokenizer import ActionTokenizer

from .conftest import TINY_MODEL

# Window 8 frames, chunks of 3: episodes of 11 frames and more slide the window.
CFG = dataclasses.replace(TINY_MODEL, context=8, chunk=3, dropout=0.0, use_video=True,
                          video_size=16, video_channels=4)
LENGTHS = (61, 40, 17, 11, 4, 3, 2, 1)  # longer than the window ... shorter than one chunk


@pytest.fixture(scope="module")
def policy(episodes: list[EpisodeData]) -> Policy:
    tok = ActionTokenizer.fit(np.concatenate([e.listener for e in episodes]), layout="builtin")
    torch.manual_seed(0)
    model = VLA(CFG, tok.width).eval()
    model.noise_chol.copy_(fit_noise_coupling([e.listener for e in episodes], tok, CFG.chunk))
    return Policy(model, tok, CFG)


@pytest.fixture(scope="module")
def inputs(episodes: list[EpisodeData]) -> list[EpisodeData]:
    """Cut episodes with audio, transcript and video; one without audio, one without video."""
    rng = np.random.default_rng(0)
    out = []
    for i, t in enumerate(LENGTHS):
        ep = episodes[i % len(episodes)]
        video = rng.integers(0, 256, (t, 3, 24, 24), dtype=np.uint8)
        out.append(dataclasses.replace(
            ep, key=f"cut-{i}", speaker=ep.speaker[:t], listener=None,
            video=None if i == 2 else video, audio=None if i == 3 else ep.audio))
    return out


def _both(policy: Policy, inputs: list[EpisodeData], cfg: SampleConfig,
          ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    _, prepared = policy.prepare(inputs)
    loop = _sample_group(policy.model, policy.tokenizer, prepared, cfg)
    static = sample_group_static(policy.model, policy.tokenizer, prepared, cfg)
    return loop, static


@pytest.mark.parametrize("cfg", [
    SampleConfig(k=3, seed=1),
    SampleConfig(k=2, seed=2, temperature=0.0),
    SampleConfig(k=2, seed=3, top_p=0.6),
    SampleConfig(k=2, seed=4, noise="frame", couple_dims=False),
    SampleConfig(k=2, seed=5, noise="frame", temperature=0.7, top_p=0.9),
], ids=["chunk-coupled", "greedy", "top-p", "frame-independent", "frame-cooled-top-p"])
def test_the_static_engine_draws_the_loop_engines_candidates_bit_for_bit(policy, inputs, cfg):
    # given: audio (one episode without), hashed words and video (one without) in the inputs
    _, prepared = policy.prepare(inputs)
    assert all(p.mel is not None and p.text is not None for p in prepared if p.key != "cut-3")
    assert prepared[2].video is None and prepared[0].video is not None
    # when
    loop, static = _both(policy, inputs, cfg)
    # then
    assert [s.shape for s in static] == [(cfg.k, t, 18) for t in LENGTHS]
    assert all(s.dtype == np.float32 for s in static)
    for i, (a, b) in enumerate(zip(loop, static, strict=True)):
        assert np.array_equal(a, b), f"episode of {LENGTHS[i]} frames differs"
    if cfg.temperature > 0:  # the draws do vary: the test compares something
        assert not np.array_equal(static[0][0], static[0][1])


def test_dispatch_by_engine_over_several_passes_and_the_same_seed_twice(policy, inputs):
    # given
    cfg = SampleConfig(k=2, seed=7, max_rows=5)  # two episodes a pass: four passes
    _, prepared = policy.prepare(inputs)
    # when
    loop = sample_prepared(policy.model, policy.tokenizer, prepared,
                           dataclasses.replace(cfg, engine="loop"))
    static = sample_prepared(policy.model, policy.tokenizer, prepared,
                             dataclasses.replace(cfg, engine="static"))
    again = policy.sample(inputs, cfg, engine="static")
    other_seed = policy.sample(inputs[:1], cfg, engine="static", seed=8)
    # then
    assert all(np.array_equal(a, b) for a, b in zip(loop, static, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(static, again, strict=True))
    assert not np.array_equal(static[0], other_seed[0])
    assert policy.model.training is False


def test_the_ring_read_as_it_lies_gives_the_logits_of_a_full_pass(policy, inputs):
    """The CUDA graph's layout (every slot, masked; no reordering) on the CPU: the same
    attention as one pass over the whole sequence, to rounding."""
    model, cfg = policy.model, CFG
    _, [prep] = policy.prepare(inputs[:1])
    t = prep.n_frames
    g = torch.Generator().manual_seed(0)
    batch = {"speaker": prep.speaker[None], "mel": prep.mel[None], "text": prep.text[None],
             "video": prep.video[None], "mel_mask": torch.tensor([True]),
             "video_mask": torch.tensor([True]),
             "prev": torch.rand(1, t, 18, generator=g) * 2 - 1,
             "prev_valid": (torch.arange(t) >= 1)[None]}
    with torch.no_grad():
        full = model(batch)  # (1, T, C, D, K), sliding-window mask over all T frames
        ring, steps = model.new_ring("cpu"), [torch.tensor([0])]
        steps += [torch.arange(s - cfg.chunk + 1, s + 1) for s in range(cfg.chunk, t, cfg.chunk)]
        for pos in steps:
            part = {k: (v[:, pos] if v.ndim > 1 else v) for k, v in batch.items()}
            x = model.forward_static(part, pos, ring)  # (1, 1, d)
            last = {"prev": part["prev"][:, -1:], "prev_valid": part["prev_valid"][:, -1:]}
            logits = model.read_heads(x, last, None)  # (1, 1, C, D, K)
            torch.testing.assert_close(logits[:, 0], full[:, int(pos[-1])], rtol=1e-5, atol=1e-4)
    assert ring.k[0].shape == (1, cfg.n_heads, cfg.context - 1 + cfg.chunk,
                               cfg.d_model // cfg.n_heads)
    assert int(ring.pos.max()) == steps[-1][-1]


def test_sampling_noise_is_the_per_episode_recipe(policy, inputs):
    """Batched over episodes, the uniforms are still those of each episode's own generator:
    normals, coupled, one per chunk (or frame), the normal CDF, zeros past the end."""
    _, prepared = policy.prepare(inputs)
    chol, chunk, length = policy.model.noise_chol, CFG.chunk, 64
    for cfg in (SampleConfig(k=3, seed=9), SampleConfig(k=2, noise="frame", couple_dims=False)):
        u = sampling_noise(prepared, cfg, chunk, chol, length)
        want = torch.zeros(len(prepared), cfg.k, length, 18)
        for i, p in enumerate(prepared):
            g = torch.Generator().manual_seed(episode_seed(cfg.seed, p.key))
            n = -(-p.n_frames // chunk) if cfg.noise == "chunk" else p.n_frames
            z = torch.randn((cfg.k, n, 18), generator=g)
            if cfg.couple_dims:
                z = z @ chol.T
            if cfg.noise == "chunk":
                z = z.repeat_interleave(chunk, dim=1)[:, : p.n_frames]
            want[i, :, : p.n_frames] = 0.5 * (1 + torch.erf(z / 2**0.5))
        assert torch.equal(u, want.flatten(0, 1).clamp(0.0, 1.0 - 1e-7))


def test_engines_are_named_checked_and_chosen_by_device():
    with pytest.raises(ValueError, match="engine must be one of 'auto', 'loop', 'static'"):
        SampleConfig(engine="graph")
    with pytest.raises(ValueError, match="max_rows"):
        SampleConfig(max_rows=0)
    cpu_model = VLA(CFG, 18)
    assert sample_engine(cpu_model, SampleConfig()) == "loop"  # auto: the loop on the CPU
    assert sample_engine(cpu_model, SampleConfig(engine="static")) == "static"
    with pytest.raises(ValueError, match="engine='loop'"):
        sample_engine(torch.nn.Linear(2, 2), SampleConfig(engine="static"))
    assert sample_engine(torch.nn.Linear(2, 2), SampleConfig()) == "loop"
    # pass sizes: 2048 rows by default, many more for the static engine on CUDA, else as asked
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert rows_per_pass(SampleConfig(), "static", cpu) == 2048
    assert rows_per_pass(SampleConfig(), "loop", cuda) == 2048
    assert rows_per_pass(SampleConfig(), "static", cuda) == STATIC_CUDA_ROWS == 16384
    assert rows_per_pass(SampleConfig(max_rows=64), "static", cuda) == 64
    with pytest.raises(ValueError, match="CUDA graph"):
        sample_group_static(cpu_model.eval(), ActionTokenizer.fit(np.zeros((4, 18))), [],
                            SampleConfig(), graph=True)
