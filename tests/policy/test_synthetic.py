"""The synthetic corpus generator: determinism, formats, and that the social rules hold."""

from __future__ import annotations

import functools
import json
from collections import Counter

import numpy as np
import pytest

from policy.synthetic import (
    BLINK_DURATION_RANGE_S,
    EPISODE_RANGE_S,
    GENERATOR_NAME,
    NOD_MIN_PAUSE_S,
    REST_TONE_MAX,
    SENTENCE_PAUSE_RANGE_S,
    WORD_DURATION_RANGE_S,
    SyntheticEpisode,
    episode_split,
    generate_corpus,
    generate_episode,
)
from rendering.layouts import BUILTIN

SEED = 1234
IX = {name: BUILTIN.index(name) for name in BUILTIN.names}


@functools.cache
def corpus(n: int = 120) -> tuple[SyntheticEpisode, ...]:
    return tuple(generate_corpus(n, SEED))


def frames(ep: SyntheticEpisode, t0: float, t1: float) -> slice:
    return slice(max(0, round(t0 * ep.fps)), min(len(ep.listener), round(t1 * ep.fps) + 1))


def smile(x: np.ndarray) -> np.ndarray:
    return x[:, [IX["smile_left"], IX["smile_right"]]].mean(1)


def concern(x: np.ndarray) -> np.ndarray:
    return x[:, [IX["brow_inner_raise"], IX["brow_lower"], IX["mouth_corner_depress"]]].mean(1)


def test_same_seed_and_index_give_byte_identical_episodes() -> None:
    a, b = generate_episode(7, 3), generate_episode(7, 3)
    for name in ("speaker", "listener", "audio"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    assert (a.key, a.split, a.transcript, a.meta) == (b.key, b.split, b.transcript, b.meta)


def test_other_index_or_seed_gives_another_episode() -> None:
    base = generate_episode(7, 3)
    for other in (generate_episode(7, 4), generate_episode(8, 3)):
        assert other.listener.shape != base.listener.shape or not np.array_equal(
            other.listener, base.listener
        )


def test_corpus_yields_the_episodes_generate_episode_makes() -> None:
    for i, ep in enumerate(generate_corpus(3, 11)):
        again = generate_episode(11, i)
        assert ep.key == again.key == f"syn-s11-{i:05d}"
        assert ep.listener.tobytes() == again.listener.tobytes()
        assert ep.audio.tobytes() == again.audio.tobytes()


def test_shapes_dtypes_and_ranges() -> None:
    low, high = BUILTIN.low, BUILTIN.high
    for ep in corpus():
        t = len(ep.listener)
        duration = t / ep.fps
        assert EPISODE_RANGE_S[0] - 1e-9 <= duration <= EPISODE_RANGE_S[1] + 1e-9
        assert ep.fps == 30 and ep.audio_sample_rate == 16000
        for x in (ep.speaker, ep.listener):
            assert x.shape == (t, BUILTIN.width) and x.dtype == np.float32
            assert np.isfinite(x).all()
            assert (x >= low).all() and (x <= high).all()
        assert ep.audio.shape == (round(t / ep.fps * ep.audio_sample_rate),)
        assert ep.audio.dtype == np.float32 and np.isfinite(ep.audio).all()
        assert np.abs(ep.audio).max() <= 1.0


def test_other_frame_and_sample_rates_keep_lengths_consistent() -> None:
    ep = generate_episode(5, 0, fps=25, sample_rate=8000)
    t = len(ep.listener)
    assert ep.fps == 25 and ep.speaker.shape == (t, BUILTIN.width)
    assert ep.audio.shape == (round(t / 25 * 8000),)


def test_keys_are_unique_and_splits_roughly_80_10_10() -> None:
    keys = {ep.key for ep in corpus()}
    assert len(keys) == len(corpus())
    counts = Counter(episode_split(SEED, i) for i in range(1000))
    assert 0.75 <= counts["train"] / 1000 <= 0.85
    assert 0.06 <= counts["val"] / 1000 <= 0.14
    assert 0.06 <= counts["test"] / 1000 <= 0.14
    assert all(ep.split == episode_split(SEED, i) for i, ep in enumerate(corpus()))


def test_meta_is_json_and_documents_the_episode() -> None:
    for ep in corpus(20):
        meta = json.loads(json.dumps(ep.meta))
        assert meta["generator"] == {
            "name": GENERATOR_NAME,
            "version": 1,
            "seed": SEED,
            "index": int(ep.key.rsplit("-", 1)[1]),
        }
        assert 2 <= len(meta["sentences"]) <= 4
        assert {s["sentiment"] for s in meta["sentences"]} <= {"positive", "negative", "neutral"}
        assert any(s["sentiment"] != "neutral" for s in meta["sentences"])
        profile = meta["listener_profile"]
        assert 0.3 <= profile["lag_s"] <= 0.9 and profile["gain"] > 0


def test_transcript_words_are_ordered_inside_the_episode_and_spell_the_sentences() -> None:
    for ep in corpus():
        duration = len(ep.listener) / ep.fps
        words = ep.transcript
        starts = np.array([w["start"] for w in words])
        ends = np.array([w["end"] for w in words])
        assert starts[0] >= 0 and ends[-1] <= duration
        assert (ends > starts).all() and (starts[1:] >= ends[:-1]).all()
        lengths = ends - starts
        assert lengths.min() >= WORD_DURATION_RANGE_S[0] - 1e-9
        assert lengths.max() <= WORD_DURATION_RANGE_S[1] + 1e-9
        text = " ".join(s["text"].rstrip(".").lower() for s in ep.meta["sentences"])
        assert text == " ".join(w["word"] for w in words)


def test_pauses_lie_between_words_and_sentences_are_separated_by_them() -> None:
    for ep in corpus():
        sentences = ep.meta["sentences"]
        pauses = [tuple(p) for p in ep.meta["pauses"]]
        for a, b in zip(sentences[:-1], sentences[1:]):
            gap = b["start"] - a["end"]
            assert SENTENCE_PAUSE_RANGE_S[0] - 1e-9 <= gap <= SENTENCE_PAUSE_RANGE_S[1] + 1e-9
            assert (a["end"], b["start"]) in pauses
        for start, end in pauses:
            assert not any(w["start"] < end and w["end"] > start for w in ep.transcript)


def test_audio_is_loud_inside_words_and_near_silent_in_pauses() -> None:
    for ep in corpus(30):
        sr = ep.audio_sample_rate
        inside = np.concatenate(
            [ep.audio[round(w["start"] * sr) : round(w["end"] * sr)] for w in ep.transcript]
        )
        pauses = ep.meta["pauses"]
        quiet = np.concatenate(
            [ep.audio[round((s + 0.05) * sr) : round((e - 0.05) * sr)] for s, e in pauses]
        )
        rms_in, rms_quiet = np.sqrt((inside**2).mean()), np.sqrt((quiet**2).mean())
        assert rms_in > 20 * rms_quiet


def test_audio_is_voiced_at_the_speakers_pitch() -> None:
    ep = corpus()[0]
    sr = ep.audio_sample_rate
    word = max(ep.transcript, key=lambda w: w["end"] - w["start"])
    seg = ep.audio[round(word["start"] * sr) : round(word["end"] * sr)].astype(np.float64)
    seg -= seg.mean()
    ac = np.correlate(seg, seg, "full")[len(seg) - 1 :]
    lag = int(np.argmax(ac[sr // 300 : sr // 80])) + sr // 300  # search 80-300 Hz
    assert 70 <= sr / lag <= 300


def test_speaker_jaw_follows_the_speech_envelope() -> None:
    for ep in corpus(10):
        hop = ep.audio_sample_rate // ep.fps
        n = len(ep.listener)
        rms = np.sqrt((ep.audio[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(1))
        jaw = ep.speaker[:, IX["jaw_open"]]
        assert np.corrcoef(rms, jaw)[0, 1] > 0.7


def test_listener_smiles_at_good_news_and_shows_concern_at_bad_news() -> None:
    by = {"positive": [], "negative": [], "neutral": []}
    for ep in corpus():
        for s in ep.meta["sentences"]:
            # From the slowest onset to the shortest hold: every profile is fully responding.
            w = frames(ep, s["start"] + 1.4, s["end"] + 0.4)
            x = ep.listener[w]
            by[s["sentiment"]].append((smile(x).mean(), concern(x).mean()))
    pos, neg, neu = (np.array(by[k]) for k in ("positive", "negative", "neutral"))
    assert pos[:, 0].min() > 0.25 and pos[:, 1].max() < 0.08
    assert neg[:, 1].min() > 0.2 and neg[:, 0].max() < 0.08
    # stillness while the speaker is neutral
    assert neu.max() < REST_TONE_MAX + 0.03


def test_listener_responds_after_the_profiles_lag_and_holds_after_the_sentence() -> None:
    checked = 0
    for ep in corpus():
        p = ep.meta["listener_profile"]
        first = ep.meta["sentences"][0]  # nothing earlier to respond to
        if first["sentiment"] == "neutral":
            continue
        signal = smile(ep.listener) if first["sentiment"] == "positive" else concern(ep.listener)
        base, peak = signal[0], signal.max()
        onset = np.flatnonzero(signal > base + 0.5 * (peak - base))[0] / ep.fps
        expected = first["start"] + p["lag_s"] + p["rise_s"] / 2
        assert abs(onset - expected) < 0.1
        held = signal[frames(ep, first["end"] + 0.9 * p["hold_s"], first["end"] + p["hold_s"])]
        assert held.min() > base + 0.8 * (peak - base) or len(ep.meta["sentences"]) > 1
        checked += 1
    assert checked > 20


def test_responses_rise_and_fall_smoothly() -> None:
    # The steepest admissible change is the fastest rise (0.25 s) of the strongest smile (~0.89):
    # smoothstep's peak slope 1.5 / rise gives ~0.18 per frame at 30 fps. A step of even the
    # weakest response (~0.3) would show as a first and a second difference of ~0.3.
    for ep in corpus():
        x = ep.listener[:, [IX["smile_left"], IX["smile_right"], IX["brow_inner_raise"]]]
        assert np.abs(np.diff(x, axis=0)).max() < 0.2
        assert np.abs(np.diff(x, 2, axis=0)).max() < 0.2


def test_listener_nods_at_pauses_and_not_elsewhere() -> None:
    ratios = []
    for ep in corpus():
        pitch = ep.listener[:, IX["head_pitch"]].astype(np.float64)
        k = 19
        trend = np.convolve(np.pad(pitch, k // 2, mode="edge"), np.ones(k) / k, mode="valid")
        energy = (pitch - trend) ** 2
        near = np.zeros(len(pitch), dtype=bool)
        for start, end in ep.meta["pauses"]:
            if end - start >= NOD_MIN_PAUSE_S:
                near[frames(ep, start, start + 1.6)] = True
        assert near.any()
        ratios.append(energy[near].mean() / max(energy[~near].mean(), 1e-12))
    assert np.median(ratios) > 20


def test_blinks_are_brief_and_spontaneous() -> None:
    for ep in corpus():
        closed = np.concatenate([[0], (ep.listener[:, IX["eye_blink"]] > 0.5).astype(int), [0]])
        edges = np.flatnonzero(np.diff(closed))
        runs = (edges[1::2] - edges[0::2]) / ep.fps
        duration = len(ep.listener) / ep.fps
        assert len(runs) >= 1
        assert runs.max() <= BLINK_DURATION_RANGE_S[1]
        assert 60 * len(runs) / duration <= 45  # per minute


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="seed"):
        generate_episode(-1, 0)
    with pytest.raises(ValueError, match="index"):
        generate_episode(0, -3)
    with pytest.raises(ValueError, match="fps"):
        generate_episode(0, 0, fps=0)
    with pytest.raises(ValueError, match="n_episodes"):
        list(generate_corpus(-1, 0))
