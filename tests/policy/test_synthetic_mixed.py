"""The mixed synthetic corpus: a share of listeners break the rules, the rest are untouched."""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest

from policy.oracle import WRONG_KINDS, EpisodeContext, oracle_score, wrong_response
from policy.synthetic import (
    LATE_DELAY_RANGE_S,
    LISTENER_FAULTS,
    MIXED_KINDS,
    REST_TONE_MAX,
    SyntheticEpisode,
    generate_corpus,
    generate_episode,
    wrong_listener,
)
from rendering.layouts import BUILTIN

SEED = 21
SHARE = 0.3
IX = {name: BUILTIN.index(name) for name in BUILTIN.names}


@functools.cache
def clean(n: int = 300) -> tuple[SyntheticEpisode, ...]:
    return tuple(generate_corpus(n, SEED))


@functools.cache
def mixed(n: int = 300, share: float = SHARE, kinds: tuple[str, ...] | None = None
          ) -> tuple[SyntheticEpisode, ...]:
    return tuple(generate_corpus(n, SEED, mixed=share, mixed_kinds=kinds))


def same_bytes(a: SyntheticEpisode, b: SyntheticEpisode) -> bool:
    return all(getattr(a, k).tobytes() == getattr(b, k).tobytes()
               for k in ("listener", "speaker", "audio")) and (a.key, a.split, a.transcript) == (
        b.key, b.split, b.transcript)


def score(x: np.ndarray, ep: SyntheticEpisode) -> float:
    ctx = EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=len(x))
    return oracle_score(x, ctx).total


def test_option_off_is_the_clean_corpus_byte_for_byte() -> None:
    for i in range(8):
        base = generate_episode(SEED, i)
        off = generate_episode(SEED, i, mixed=0.0, mixed_kinds=("late",))
        assert same_bytes(base, off)
        assert off.meta == base.meta and "listener_quality" not in off.meta
        assert off.reference is None and base.reference is None


def test_share_of_rule_breaking_episodes_is_close_to_the_one_asked() -> None:
    kinds = Counter(ep.meta["listener_quality"]["kind"] for ep in mixed())
    broken = sum(v for k, v in kinds.items() if k != "clean")
    assert abs(broken / 300 - SHARE) < 0.07  # 3 binomial standard deviations
    assert set(kinds) == {"clean", *MIXED_KINDS}  # every default kind is drawn
    assert all(v >= 10 for k, v in kinds.items())


def test_clean_episodes_of_a_mixed_corpus_are_the_clean_corpus_episodes() -> None:
    for a, b in zip(mixed(), clean(), strict=True):
        quality = a.meta["listener_quality"]
        assert quality["mixed_share"] == SHARE and quality["mixed_kinds"] == list(MIXED_KINDS)
        assert {k: v for k, v in a.meta.items() if k != "listener_quality"} == b.meta
        if quality["kind"] == "clean":
            assert same_bytes(a, b) and a.reference is None
        else:
            # then: only the listener changed; the rule-following one is kept as the reference
            assert a.reference is not None
            assert a.reference.tobytes() == b.listener.tobytes()
            assert a.speaker.tobytes() == b.speaker.tobytes()
            assert a.audio.tobytes() == b.audio.tobytes()
            assert a.listener.shape == b.listener.shape and a.listener.dtype == np.float32
            assert not np.array_equal(a.listener, b.listener)


def test_rule_breaking_listeners_score_lower_than_their_reference() -> None:
    by_kind: dict[str, list[float]] = {}
    gaps = []
    for ep in mixed():
        kind = ep.meta["listener_quality"]["kind"]
        if kind == "clean":
            continue
        own, ref = score(ep.listener, ep), score(ep.reference, ep)
        assert own < ref, (ep.key, kind, own, ref)
        gaps.append(ref - own)
        by_kind.setdefault(kind, []).append(own)
    # A wrapped mistiming can land a response near its own cue: rarely, the loss is small.
    assert np.mean(np.array(gaps) > 0.1) > 0.95
    assert max(np.mean(v) for v in by_kind.values()) < 0.85


def test_a_larger_share_keeps_every_episode_broken_at_a_smaller_one_with_its_kind() -> None:
    small, large = mixed(60, 0.2), mixed(60, 0.6)
    for a, b in zip(small, large, strict=True):
        ka, kb = a.meta["listener_quality"]["kind"], b.meta["listener_quality"]["kind"]
        if ka != "clean":
            assert kb == ka and a.listener.tobytes() == b.listener.tobytes()
    assert sum(e.meta["listener_quality"]["kind"] != "clean" for e in large) > sum(
        e.meta["listener_quality"]["kind"] != "clean" for e in small)


@pytest.mark.parametrize("kind", LISTENER_FAULTS)
def test_each_kind_breaks_the_rules_deterministically(kind: str) -> None:
    eps = mixed(6, 1.0, (kind,))
    for ep, base in zip(eps, clean(6), strict=True):
        assert ep.meta["listener_quality"]["kind"] == kind
        again = generate_episode(SEED, int(ep.meta["generator"]["index"]), mixed=1.0,
                                 mixed_kinds=(kind,))
        assert again.listener.tobytes() == ep.listener.tobytes()
        assert score(ep.listener, ep) < score(base.listener, base) - 0.1
        lo, hi = BUILTIN.low, BUILTIN.high
        assert (ep.listener >= lo).all() and (ep.listener <= hi).all()


def test_distracted_listener_ignores_the_speaker_but_stays_alive() -> None:
    for ep in mixed(6, 1.0, ("distracted",)):
        x, ref = ep.listener, ep.reference
        smile = x[:, [IX["smile_left"], IX["smile_right"]]].mean(1)
        assert smile.max() < REST_TONE_MAX + 0.03  # no affect at all
        assert ref[:, IX["smile_left"]].max() > 0.15 or ref[:, IX["brow_inner_raise"]].max() > 0.15
        # the same person's idle face: blinks and head drift as in the reference
        np.testing.assert_array_equal(x[:, IX["eye_blink"]], ref[:, IX["eye_blink"]])
        np.testing.assert_array_equal(x[:, IX["head_yaw"]], ref[:, IX["head_yaw"]])


def test_late_listener_reacts_after_the_human_lag_by_the_recorded_delay() -> None:
    for ep in mixed(6, 1.0, ("late",)):
        delay = ep.meta["listener_quality"]["delay_s"]
        assert LATE_DELAY_RANGE_S[0] <= delay <= LATE_DELAY_RANGE_S[1]
        affect = ep.listener[:, [IX["smile_left"], IX["brow_inner_raise"]]].max(1)
        ref_affect = ep.reference[:, [IX["smile_left"], IX["brow_inner_raise"]]].max(1)
        first = np.flatnonzero(affect > 0.15)
        ref_first = np.flatnonzero(ref_affect > 0.15)
        if len(first) and len(ref_first):
            assert (first[0] - ref_first[0]) / ep.fps > 0.6 * delay


def test_reused_wrong_kinds_are_the_oracles_wrong_responses() -> None:
    ep = clean(1)[0]
    ctx = EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=len(ep.listener))
    for kind in WRONG_KINDS:
        a = wrong_response(ep.listener, ctx, kind, np.random.default_rng(4))
        b = wrong_listener(ep.listener, ep.fps, kind, np.random.default_rng(4))
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("share, kinds, message", [
    (-0.1, None, "mixed must be"),
    (1.5, None, "mixed must be"),
    (float("nan"), None, "mixed must be"),
    (True, None, "mixed must be"),
    ("0.3", None, "mixed must be"),
    (0.3, ("smirk",), "mixed_kinds"),
    (0.3, (), "mixed_kinds"),
    (0.3, ("late", "late"), "mixed_kinds"),
    (0.3, "late", "mixed_kinds"),
])
def test_invalid_options_are_refused(share: object, kinds: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_episode(SEED, 0, mixed=share, mixed_kinds=kinds)
    with pytest.raises(ValueError, match=message):
        generate_corpus(3, SEED, mixed=share, mixed_kinds=kinds)  # before any episode is made
