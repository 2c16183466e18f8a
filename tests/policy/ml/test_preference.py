"""Preference optimisation: sequence log-probabilities, DPO, critic-guided GRPO, guards, resume."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from policy.ml.checkpoint import load_checkpoint
from policy.ml.config import SampleConfig
from policy.ml.data import EpisodeData
from policy.ml.prefdata import Comparison
from policy.ml.preference import PreferenceConfig, _Run, optimise, sequence_logprob
from policy.ml.sample import sample_prepared
from policy.oracle import EpisodeContext, wrong_response

SHORT = 33  # frames per test episode: two attention windows of the tiny model (context 16)


def shorten(ep: EpisodeData, n: int) -> EpisodeData:
    """The first ``n`` frames of an episode, with its audio and words."""
    seconds = n / ep.fps
    return dataclasses.replace(
        ep, speaker=ep.speaker[:n], listener=ep.listener[:n],
        audio=ep.audio[: round(seconds * ep.sample_rate)],
        transcript=[w for w in ep.transcript if w["start"] < seconds])


@pytest.fixture(autouse=True)
def _one_thread():
    # These batches are a few rows of 33 frames: on a busy two-core box, two threads spend more
    # time meeting than working (a DPO step takes ~10x longer), as sample.py notes for sampling.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def short(episodes: list[EpisodeData]) -> list[EpisodeData]:
    return [shorten(e, SHORT) for e in episodes]


def clear_comparisons(eps: list[EpisodeData], test_from: int) -> list[Comparison]:
    """Ground truth preferred to a corrupted copy of it (frozen, or jittered every frame);
    episodes from index ``test_from`` on are held out. (A valence swap is no clear preference
    in one second of listening: the listener has hardly reacted yet.)"""
    rng = np.random.default_rng(0)
    out = []
    for i, e in enumerate(eps):
        ctx = EpisodeContext.from_meta(e.meta, fps=e.fps, n_frames=e.n_frames)
        bad = wrong_response(e.listener, ctx, "frozen" if i % 2 else "jitter", rng)
        out.append(Comparison(episode=e.key, a=bad, b=e.listener, outcome="b",
                              split="test" if i >= test_from else "train"))
    return out


def config(**kw) -> PreferenceConfig:
    base = dict(lr=1e-3, warmup=0, max_steps=4, batch_size=4, val_every=2, val_k=2,
                log_every=1, device="cpu", max_l2_ratio=10.0, max_fd_ratio=10.0, seed=1)
    return PreferenceConfig(**{**base, **kw})


def distance_scorer(eps: list[EpisodeData]):
    """A toy critic ensemble of two heads: the closer to the ground truth, the better."""
    truth = {e.key: e.listener for e in eps}

    def score(prepared, candidates):
        mse = np.array([((c - truth[p.key]) ** 2).mean()
                        for p, c in zip(prepared, candidates, strict=True)])  # (N,)
        mean = np.stack([-mse, -2 * mse], axis=1)  # (N, 2): a criterion and "overall"
        return mean, 0.1 * np.abs(mean)

    return score


def weights(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- sequence log-probabilities ---------------------------------------------------------------


def test_sequence_logprob_equals_a_direct_computation_position_by_position(tiny_result,
                                                                           episodes):
    # given: two episodes of different lengths, both longer than the attention window, neither
    # a whole number of chunks (so the batch pads and the last chunks are partial)
    policy = tiny_result.policy
    model, cfg = policy.model.eval(), policy.cfg
    _, prepared = policy.prepare([shorten(episodes[6], 40), shorten(episodes[7], 29)],
                                 need_listener=True)
    # when
    with torch.no_grad():
        batched, n_tokens = sequence_logprob(model, prepared, tokenizer=policy.tokenizer)
        alone = torch.cat([sequence_logprob(model, [p])[0] for p in prepared])
    # then: each chunk start s scored on its own, from at most `context` frames ending at s
    direct = []
    for p in prepared:
        total = 0.0
        for s in range(0, p.n_frames, cfg.chunk):
            pos = torch.arange(max(0, s - cfg.context + 1), s + 1)
            inputs = {"speaker": p.speaker[pos][None], "mel": p.mel[pos][None],
                      "mel_mask": torch.tensor([True]), "text": p.text[pos][None],
                      "prev": p.listener_in[(pos - 1).clamp(min=0)][None],
                      "prev_valid": (pos >= 1)[None]}
            with torch.no_grad():
                logits = model(inputs, pos=pos, heads_at=torch.tensor([len(pos) - 1]))[0, 0]
            n = min(cfg.chunk, p.n_frames - s)
            logp = torch.log_softmax(logits[:n].double(), -1)  # (n, D, K)
            total += float(logp.gather(-1, p.listener_ids[s : s + n, :, None])[..., 0].sum())
        direct.append(total)
    assert torch.allclose(batched, torch.tensor(direct, dtype=torch.float64), rtol=1e-5,
                          atol=1e-3)
    assert torch.allclose(batched, alone, rtol=1e-6, atol=1e-4)  # padding changes nothing
    assert n_tokens.tolist() == [40 * 18, 29 * 18]
    assert abs(float(batched[0] - batched[1])) > 1.0  # the two sequences differ


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sequence_logprob_scores_the_bins_sampling_draws_from(tiny_result, episodes,
                                                              temperature):
    # given: the distributions sampling reads (its heads at every chunk start), recorded
    policy = tiny_result.policy
    model, tok, chunk = policy.model, policy.tokenizer, policy.cfg.chunk
    _, prepared = policy.prepare([shorten(episodes[8], 35)])
    seen: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    try:
        values = sample_prepared(model, tok, prepared,
                                 SampleConfig(k=2, seed=5, temperature=temperature))[0]
    finally:
        hook.remove()
    ids = tok.encode(torch.from_numpy(values))  # (K, T, D): the drawn bins
    assert len(seen) == -(-35 // chunk)
    expected = torch.zeros(2, dtype=torch.float64)
    for step, logits in enumerate(seen):  # (K, 1, C, D, bins) at frame s = step * chunk
        s = step * chunk
        n = min(chunk, 35 - s)
        logp = torch.log_softmax(logits[:, 0, :n].double() / temperature, -1)
        expected += logp.gather(-1, ids[:, s : s + n, :, None])[..., 0].sum((1, 2))
    # when
    model.eval()
    with torch.no_grad():
        got, _ = sequence_logprob(model, prepared * 2, list(ids), tokenizer=tok,
                                  temperature=temperature)
    # then
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-3)
    assert abs(float(got[0] - got[1])) > 1e-3  # two different samples, two different scores


# --- DPO ----------------------------------------------------------------------------------------


def test_dpo_starts_at_log_2_and_learns_a_clear_preference(tiny_result, short):
    # given: ground truth preferred to corrupted copies; two episodes held out for validation
    parent = tiny_result.policy
    before = weights(parent)
    comps = clear_comparisons(short[:6], test_from=4)
    train = [c for c in comps if c.split == "train"]
    # when (two held-out pairs: perfect accuracy is 1.41 standard errors above chance, which a
    # test at 0.3 over two evaluations accepts)
    result = optimise(parent, config=config(method="dpo", chance_alpha=0.3), comparisons=comps,
                      episodes={e.key: e for e in short}, val_episodes=short[8:10])
    # then: at step 0 the policy is the reference, every log-ratio is 0 and the loss log 2
    first = result.history[0]
    assert first["step"] == 1 and first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["margin"] == pytest.approx(0.0, abs=1e-6)
    # the chosen-vs-rejected log-ratio rises and the reward accuracy passes 0.5 on training
    # pairs, and on the held-out ones
    by_key = {e.key: e for e in short}
    _, prepared = parent.prepare([by_key[c.episode] for c in train])
    tok = parent.tokenizer
    ids = [tok.encode(torch.as_tensor(x)) for x in [c.chosen for c in train]
           + [c.rejected for c in train]]
    with torch.no_grad():
        pi, _ = sequence_logprob(result.policy.model.eval(), prepared * 2, ids, tokenizer=tok)
        ref, _ = sequence_logprob(parent.model.eval(), prepared * 2, ids, tokenizer=tok)
    b = len(train)
    ratio = (pi[:b] - ref[:b]) - (pi[b:] - ref[b:])
    assert float(ratio.mean()) > 1.0 and float((ratio > 0).double().mean()) > 0.5
    assert result.history[-1]["dpo_acc"] > 0.5
    assert result.evals[0]["val_acc"] == 0.5  # all rewards 0 at the parent: ties count half
    best = next(e for e in result.evals if e["step"] == result.best_step)
    assert best["val_acc"] > 0.5 and best["score_kind"] == "val_acc" and best["above_chance"]
    assert best["val_acc_z"] == pytest.approx((best["val_acc"] - 0.5) / math.sqrt(0.25 / 2))
    assert result.evals[1]["above_chance"] == (result.evals[1]["val_acc_z"] >= 1.036)
    assert not result.used_parent and not result.stopped_early
    # the reference (the parent) is untouched
    assert same(before, weights(parent))
    assert all(p.requires_grad for p in parent.model.parameters())
    assert not same(before, weights(result.policy))


def test_dpo_keeps_the_parent_when_held_out_preferences_are_not_predicted(tiny_result, short):
    # given: training labels that contradict the held-out ones (the corrupted copy preferred)
    comps = clear_comparisons(short[:8], test_from=4)
    flipped = [dataclasses.replace(c, outcome="a") if c.split == "train" else c for c in comps]
    # when
    result = optimise(tiny_result.policy, config=config(method="dpo"),
                      comparisons=flipped, episodes={e.key: e for e in short},
                      val_episodes=short[8:10])
    # then: it fits its training labels, its held-out accuracy stays at or below chance, so no
    # checkpoint is kept, however close to the parent it stays
    assert result.history[-1]["dpo_acc"] > 0.5
    later = result.evals[1:]
    assert later and all(e["within_bounds"] and e["val_acc"] <= 0.5 for e in later)
    assert not any(e["above_chance"] for e in later)
    assert result.used_parent and result.policy is tiny_result.policy
    # chance_alpha = 0 turns the test off (for snapshots with a handful of held-out pairs)
    off = optimise(tiny_result.policy, config=config(method="dpo", chance_alpha=0.0),
                   comparisons=flipped, episodes={e.key: e for e in short},
                   val_episodes=short[8:10])
    assert not off.used_parent and all(e["above_chance"] for e in off.evals)


# --- critic-guided --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["critic", "imitation_critic_best"])
def test_the_critic_methods_raise_the_scorers_reward(tiny_result, short, method):
    # given: a toy critic that rewards closeness to the ground truth
    scorer = distance_scorer(short)
    cfg = config(method=method, batch_size=2, k=4, lr=3e-3)
    # when
    result = optimise(tiny_result.policy, config=cfg, episodes={e.key: e for e in short[:4]},
                      val_episodes=short[8:10], scorer=scorer)
    # then: the validation samples score better than the parent's (same draws, same seed)
    rewards = [e["val_reward"] for e in result.evals]
    assert rewards[-1] > rewards[0] and result.evals[-1]["score_kind"] == "val_reward"
    assert result.history[-1]["reward"] > result.history[0]["reward"]
    if method == "critic":
        # at step 0 the policy is the reference: the KL estimate is exactly 0, then it grows
        assert result.history[0]["kl"] == 0.0
        assert result.history[-1]["kl"] > 0.0


# --- guards -------------------------------------------------------------------------------------


def test_guards_stop_early_and_return_the_parent_when_nothing_stays_in_bounds(tiny_result,
                                                                            short):
    # given: a bound no policy meets (half the parent's own L2)
    comps = clear_comparisons(short[:4], test_from=4)
    cfg = config(method="sft_chosen", max_l2_ratio=0.5, val_every=1, patience=2, max_steps=10)
    # when
    result = optimise(tiny_result.policy, config=cfg, comparisons=comps,
                      episodes={e.key: e for e in short}, val_episodes=short[8:9])
    # then
    assert result.stopped_early and result.step == 2
    assert result.used_parent and result.best_step is None
    assert result.policy is tiny_result.policy
    assert [e["within_bounds"] for e in result.evals] == [False, False, False]
    assert result.parent_metrics["l2_ratio"] == 1.0 and result.evals[1]["l2_ratio"] > 0.5


def test_the_best_evaluation_within_bounds_is_kept(tiny_result, short, monkeypatch):
    # given: scripted evaluations -- a better score out of bounds must not win
    script = iter([(1.0, 0.1), (1.05, 0.5), (1.3, 0.9), (1.02, 0.4), (1.2, 0.95), (1.2, 0.99)])
    kept: dict[int, dict] = {}

    def evaluate(self):
        ratio, score = next(script)
        kept[self.step] = weights(self.policy)
        return {"step": self.step, "l2": ratio, "fd": 1.0, "smooth": 1.0, "l2_ratio": ratio,
                "fd_ratio": 1.0, "smooth_ratio": 1.0, "score": score, "score_kind": "scripted",
                "within_bounds": ratio <= self.cfg.max_l2_ratio, "above_chance": True}

    monkeypatch.setattr(_Run, "evaluate", evaluate)
    comps = clear_comparisons(short[:4], test_from=4)
    cfg = config(method="sft_chosen", val_every=1, patience=2, max_steps=8, batch_size=2,
                 max_l2_ratio=1.1)
    # when
    result = optimise(tiny_result.policy, config=cfg, comparisons=comps,
                      episodes={e.key: e for e in short}, val_episodes=short[8:9])
    # then: steps 1 (0.5, in) 2 (0.9, out) 3 (0.4, in) 4 (out) 5 (out: patience spent)
    assert result.best_step == 1 and not result.used_parent
    assert result.stopped_early and result.step == 5
    assert same(weights(result.policy), kept[1]) and not same(kept[1], kept[3])


# --- checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dpo_imitation", "critic"])
def test_an_interrupted_run_resumes_exactly(tmp_path, tiny_result, short, method):
    # given
    parent = tiny_result.policy
    comps = clear_comparisons(short[:6], test_from=4)
    kw = dict(comparisons=comps, episodes={e.key: e for e in short}, val_episodes=short[8:9],
              scorer=distance_scorer(short))
    cfg = config(method=method, max_steps=4, batch_size=2, k=2, label_smoothing=0.1,
                 checkpoint_every=1, chance_alpha=0.0)  # two held-out pairs: no chance test
    # when: one run straight through, one stopped at step 2 and resumed
    whole = optimise(parent, config=cfg, checkpoint_path=tmp_path / "whole.pt", **kw)
    part = optimise(parent, config=cfg, checkpoint_path=tmp_path / "part.pt", stop_at_step=2,
                    **kw)
    assert part.step == 2 and load_checkpoint(tmp_path / "part.pt").step == 2
    resumed = optimise(parent, config=dataclasses.replace(cfg, checkpoint_every=0),
                       checkpoint_path=tmp_path / "part.pt", resume_from=tmp_path / "part.pt",
                       **kw)
    # then
    a, b = load_checkpoint(tmp_path / "whole.pt").state, load_checkpoint(tmp_path / "part.pt").state
    assert resumed.step == whole.step == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    assert resumed.history == whole.history and resumed.evals == whole.evals
    assert resumed.best_step == whole.best_step
    assert same(weights(resumed.policy), weights(whole.policy))
    assert not same(weights(whole.policy), weights(parent))
    # a checkpoint continues only the run it belongs to
    with pytest.raises(ValueError, match="differs from the checkpoint"):
        optimise(parent, config=dataclasses.replace(cfg, lr=5e-3),
                 resume_from=tmp_path / "part.pt", **kw)
    other = copy.deepcopy(parent)
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match="another parent"):
        optimise(other, config=cfg, resume_from=tmp_path / "part.pt", **kw)


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_refused_naming_the_reason(tiny_result, short):
    parent = tiny_result.policy
    eps = {e.key: e for e in short}
    good = clear_comparisons(short[:2], test_from=2)
    cfg = config(method="dpo")

    def run(comps=good, *, episodes=eps, val=short[8:9], **kw):
        return optimise(parent, config=kw.pop("cfg", cfg), comparisons=comps, episodes=episodes,
                        val_episodes=val, **kw)

    ties = [dataclasses.replace(c, outcome="tie") for c in good]
    with pytest.raises(ValueError, match="needs decided comparisons"):
        run(ties)
    with pytest.raises(ValueError, match="needs decided comparisons"):
        run(None, cfg=config(method="sft_chosen"))
    with pytest.raises(ValueError, match="not among the given episodes"):
        run([dataclasses.replace(good[0], episode="nowhere")])
    narrow = np.zeros((SHORT, 10), np.float32)
    with pytest.raises(ValueError, match=r"shape \(33, 10\).*\(33, 18\)"):
        run([dataclasses.replace(good[0], a=narrow, b=narrow)])
    spoiled = good[0].a.copy()
    spoiled[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        run([dataclasses.replace(good[0], a=spoiled)])
    with pytest.raises(ValueError, match="test split"):
        run([dataclasses.replace(c, split="test") for c in good])
    with pytest.raises(ValueError, match="needs a scorer"):
        run(cfg=config(method="critic"))
    with pytest.raises(ValueError, match="validation episodes"):
        run(val=[])
    no_truth = dataclasses.replace(short[8], listener=None, reference=None)
    with pytest.raises(ValueError, match="neither a reference nor a listener"):
        run(val=[no_truth])
    with pytest.raises(ValueError, match="scorer must return"):
        run(cfg=config(method="critic", batch_size=1, k=2), episodes={short[0].key: short[0]},
            scorer=lambda prepared, cands: (np.zeros((1, 5)), np.zeros((1, 5))))
    with pytest.raises(ValueError, match="method must be one of"):
        PreferenceConfig(method="ppo")
    with pytest.raises(ValueError, match="unknown keys"):
        PreferenceConfig.from_dict({"method": "dpo", "betta": 0.2})
    assert PreferenceConfig.from_dict(dataclasses.asdict(cfg)) == cfg
