"""Episode checks with clear errors, and training windows aligned as sampling sees them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from policy.ml.config import ModelConfig
from policy.ml.data import (
    EpisodeData,
    check_episodes,
    episode_from,
    fit_input_stats,
    make_batch,
    prepare_episode,
    prepare_episodes,
    raw_features,
    raw_features_batch,
    window_index,
)
from policy.ml.errors import EmptySplitError, PolicyDataError
from policy.ml.tokenizer import ActionTokenizer
from policy.synthetic import generate_episode

CFG = ModelConfig(chunk=3, context=8, lookahead_s=0.1, fps=30.0, n_mels=4)  # look-ahead 3 frames


def _episode(t: int = 20, d: int = 18, key: str = "ep") -> EpisodeData:
    ramp = np.arange(t, dtype=np.float32)[:, None] * np.ones((1, d), np.float32)
    return EpisodeData(key=key, speaker=ramp * 2.0, listener=ramp / t, fps=30.0)


def test_wrong_width_names_the_episode_field_and_layout():
    ep = _episode(d=56, key="syn-3")
    with pytest.raises(PolicyDataError, match=r"episode 'syn-3'.*'speaker'.*\(T, 18\).*'builtin'"):
        check_episodes([ep], CFG, split="train", need_listener=True)
    flame = dataclasses.replace(CFG, layout="flame56")
    with pytest.raises(PolicyDataError, match=r"\(T, 56\) for layout 'flame56'"):
        check_episodes([_episode()], flame, split="train", need_listener=True)


def test_other_bad_episodes_are_refused_with_the_reason():
    with pytest.raises(EmptySplitError, match="train split has no episodes"):
        check_episodes([], CFG, split="train", need_listener=True)
    with pytest.raises(PolicyDataError, match="fps"):
        check_episodes([dataclasses.replace(_episode(), fps=25.0)], CFG, split="test",
                       need_listener=True)
    with pytest.raises(PolicyDataError, match="'listener' is missing"):
        check_episodes([dataclasses.replace(_episode(), listener=None)], CFG, split="train",
                       need_listener=True)
    bad = _episode()
    bad.listener[3, 2] = np.nan
    with pytest.raises(PolicyDataError, match="NaN"):
        check_episodes([bad], CFG, split="train", need_listener=True)
    with pytest.raises(PolicyDataError, match="frames"):
        check_episodes([dataclasses.replace(_episode(), listener=_episode(t=5).listener)], CFG,
                       split="train", need_listener=True)
    # sampling needs no listener
    assert check_episodes([dataclasses.replace(_episode(), listener=None)], CFG, split="input",
                          need_listener=False)


def test_windows_pair_lookahead_speaker_previous_action_and_next_chunk():
    ep = _episode(t=20)
    tok = ActionTokenizer.fit(ep.listener, layout="builtin")
    raw = raw_features(ep, CFG)
    stats = fit_input_stats([raw], CFG)
    prep = prepare_episode(ep, CFG, stats, tok, raw)
    assert len(window_index([prep], CFG.context)) == 20 - 8 + 1
    batch = make_batch([prep], torch.tensor([[0, 0], [0, 5], [0, 12]]), CFG)
    assert batch["speaker"].shape == (3, 8, 18)
    assert batch["targets"].shape == (3, 8, 3, 18)
    la = CFG.lookahead_frames
    assert la == 3
    spk = (torch.as_tensor(ep.speaker) - stats["speaker_mean"]) / stats["speaker_std"]
    # position i of the window starting at 5 is frame 5 + i: speaker of frame 5 + i + 3
    assert torch.allclose(batch["speaker"][1, 0], spk[8])
    # past the end of the episode the speaker input is zeros
    assert torch.equal(batch["speaker"][2, 6], torch.zeros(18))  # frame 18 + 3 > 19
    # the previous action: frame 5 + i - 1, none before frame 0
    assert not batch["prev_valid"][0, 0] and batch["prev_valid"][0, 1]
    assert torch.allclose(batch["prev"][1, 0], prep.listener_in[4])
    # targets: frames 5 + i + j, masked past the end
    assert torch.equal(batch["targets"][1, 2, 1], prep.listener_ids[8])
    assert batch["target_mask"][2, 7].tolist() == [True, False, False]  # frames 19, 20, 21
    assert batch["mel"] is None  # no audio in this episode


def _mixed_episodes() -> list[EpisodeData]:
    """Synthetic episodes at two sample rates, one without audio, one with an empty waveform,
    one with audio shorter than its frames and one without a listener."""
    eps = [episode_from(generate_episode(5, i, sample_rate=8000 if i % 3 == 0 else 16000))
           for i in range(7)]
    eps[1] = dataclasses.replace(eps[1], audio=None, sample_rate=None)
    eps[2] = dataclasses.replace(eps[2], audio=eps[2].audio[:0])
    eps[4] = dataclasses.replace(eps[4], audio=eps[4].audio[: len(eps[4].audio) // 3])
    eps[5] = dataclasses.replace(eps[5], listener=None)
    return eps


def _assert_same(a, b) -> None:
    if a is None or b is None:
        assert a is None and b is None
    else:
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("use_audio", [True, False])
def test_prepare_episodes_equals_prepare_episode_of_each(use_audio):
    eps = _mixed_episodes()
    cfg = dataclasses.replace(CFG, n_mels=8, use_audio=use_audio)
    tok = ActionTokenizer.fit(np.concatenate([e.listener for e in eps if e.listener is not None]),
                              layout="builtin")
    raws = [raw_features(e, cfg) for e in eps]
    batched = raw_features_batch(eps, cfg)
    for r, b in zip(raws, batched, strict=True):
        assert r.keys() == b.keys()
        for name in r:
            _assert_same(r[name], b[name])
    assert (raws[0]["mel"] is not None) == use_audio
    assert raws[1]["mel"] is None and raws[2]["mel"] is None  # no audio, empty audio
    stats = fit_input_stats(raws, cfg)
    want = [prepare_episode(e, cfg, stats, tok) for e in eps]
    got = prepare_episodes(eps, cfg, stats, tok, device="cpu")
    for w, g in zip(want, got, strict=True):
        assert (w.key, w.n_frames) == (g.key, g.n_frames)
        for name in ("speaker", "mel", "text", "video", "listener_ids", "listener_in"):
            _assert_same(getattr(w, name), getattr(g, name))
    assert got[5].listener_ids is None and got[0].text is not None
