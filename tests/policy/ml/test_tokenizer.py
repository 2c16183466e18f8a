"""The action tokenizer: percentile range, 256 bins, round trip, identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.ml.tokenizer import ActionTokenizer


def _fitted() -> tuple[ActionTokenizer, np.ndarray]:
    x = np.stack([np.linspace(0.0, 1.0, 10001), np.linspace(-2.0, 2.0, 10001)], axis=1)
    return ActionTokenizer.fit(x, n_bins=256, layout="test"), x


def test_fit_places_256_bins_between_the_1st_and_99th_percentile():
    tok, _ = _fitted()
    assert tok.edges.shape == (2, 257)
    assert tok.low.tolist() == pytest.approx([0.01, -1.96], abs=1e-6)
    assert tok.high.tolist() == pytest.approx([0.99, 1.96], abs=1e-6)


def test_encode_clips_to_the_end_bins_and_decode_gives_bin_centres():
    tok, _ = _fitted()
    ids = tok.encode(np.array([[0.01, -1.96], [0.99, 1.96], [-5.0, 5.0], [0.5, 0.0],
                               [0.499, -0.01]]))
    # the middle edge belongs to the upper bin
    assert ids.tolist() == [[0, 0], [255, 255], [0, 255], [128, 128], [127, 127]]
    width = (0.99 - 0.01) / 256
    assert tok.decode(np.array([[0, 0]]))[0, 0] == pytest.approx(0.01 + width / 2, abs=1e-6)
    assert isinstance(tok.encode(torch.zeros(3, 2)), torch.Tensor)


def test_round_trip_error_is_at_most_half_a_bin_inside_the_range():
    tok, x = _fitted()
    report = tok.round_trip_error(x)
    assert report["max_in_range"] <= report["half_bin_max"] + 1e-6
    assert report["clipped_fraction"] == pytest.approx(0.02, abs=0.001)
    # the tails: -2 lands in bin 0, whose centre is 0.04 + half a bin (3.92 / 512) away
    assert report["max_abs"] == pytest.approx(0.04 + 3.92 / 512, abs=1e-4)


def test_a_constant_dimension_still_round_trips():
    tok = ActionTokenizer.fit(np.full((100, 1), 0.3), layout="test")
    assert tok.round_trip_error(np.full((5, 1), 0.3))["max_abs"] < 1e-4


def test_fingerprint_and_state_dict_identify_the_bins():
    tok, x = _fitted()
    again = ActionTokenizer.from_state_dict(tok.state_dict())
    assert again == tok and again.fingerprint() == tok.fingerprint()
    other = ActionTokenizer.fit(x * 1.001, layout="test")
    assert other.fingerprint() != tok.fingerprint()
    assert ActionTokenizer(tok.edges, "other").fingerprint() != tok.fingerprint()


def test_edges_must_increase():
    with pytest.raises(ValueError, match="increase"):
        ActionTokenizer(torch.zeros(1, 5), "test")
