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
    fit_input_stats,
    make_batch,
    prepare_episode,
    raw_features,
    window_index,
)
from policy.ml.errors import EmptySplitError, PolicyDataError
from policy.ml.tokenizer import ActionTokenizer

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
