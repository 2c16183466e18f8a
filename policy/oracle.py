"""The rule-based oracle: how well does a listener sequence follow the synthetic corpus's rules?

The oracle never sees a ground truth. It reads the episode's context (sentence times and sentiment,
pause times) and scores any candidate ``(T, 18)`` builtin-layout sequence on three criteria, each in
[0, 1], with tolerances wide enough for every listener profile the generator draws (lags, gains,
hold and decay times). Formulas, constants and weights are documented in
``docs/synthetic_corpus.md``; the rule parameters are imported from ``policy.synthetic`` so the two
cannot disagree. Simulated raters choose between candidates by this score.

``wrong_response`` makes the classic mistakes (wrong valence, a frozen face, jitter, bad timing)
from a ground truth; the oracle must rank the ground truth above each of them.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from policy.synthetic import (
    CONCERN_UNITS,
    DECAY_RANGE_S,
    HOLD_RANGE_S,
    LAG_RANGE_S,
    NOD_AMP_RANGE,
    NOD_CYCLES_RANGE,
    NOD_FREQ_RANGE_HZ,
    NOD_LAG_RANGE_S,
    NOD_MIN_PAUSE_S,
    RISE_RANGE_S,
    SENTIMENTS,
    WRONG_KINDS,
    affect_envelopes,
    wrong_listener,
)
from rendering.layouts import BUILTIN

# total = weighted mean of the three criteria; the sub-weights split timing and naturalness.
WEIGHTS = {"appropriateness": 0.4, "timing": 0.3, "naturalness": 0.3}
TIMING_WEIGHTS = {"band": 0.35, "onsets": 0.35, "nods": 0.3}
NATURALNESS_WEIGHTS = {"smoothness": 0.35, "liveliness": 0.25, "blinks": 0.2, "range": 0.2}

AFFECT_FLOOR = 0.08  # window mean at or below: affect absent (rest tone <= 0.04 plus micro-motion)
AFFECT_FULL = 0.22  # window mean at or above: affect fully shown (lowest-gain plateau is ~0.28)
MIN_WINDOW_S = 0.2  # shortest sentence window the appropriateness check averages over
BAND_TOLERANCE = 0.12  # slack around the admissible response band, in normalised units
BAND_DILATION_S = 0.1  # the band is also widened this much in time
PEAK_FLOOR = 0.1  # a candidate's affect is normalised by max(peak - floor, this)
TIMING_SLACK_S = 0.25  # denominator slack: 0.25 s of full response, so tiny totals are not ratios
ONSET_LOOKBACK_S = 1.5  # how far before a sentence an early (anticipating) onset is looked for
ONSET_TOLERANCE_S = 0.1  # slack around the admissible half-rise window
ONSET_FALLOFF_S = 0.5  # an onset this far outside the admissible window scores 0
NOD_BANDPASS_S = (0.1, 0.6)  # short and long moving averages whose difference isolates nods
NOD_WINDOW_PAD_S = 0.3  # the long average spreads a nod by about this much
NOD_PTP_FULL = 0.5 * NOD_AMP_RANGE[0]  # band-passed peak-to-peak (rad) that counts as a full nod
NOD_ENERGY_SLACK = 0.003  # rad RMS of band-passed pitch tolerated outside nod windows
SMOOTH_OK, SMOOTH_BAD = 0.008, 0.04  # mean RMS second difference per frame, per unit of range
LIVELY_FULL = 0.05  # summed std over time per unit of range of a face that is clearly alive
BLINK_RATE_RANGE = (6.0, 45.0)  # plausible spontaneous blinks per minute
BLINK_MAX_CLOSURE_S = 0.5  # longer closures are not blinks
RANGE_EXCESS_BAD = 0.005  # mean out-of-range excess per unit of range that scores 0

_IX = {name: BUILTIN.index(name) for name in BUILTIN.names}
_SMILE = [_IX["smile_left"], _IX["smile_right"]]
_CONCERN = [_IX[n] for n in CONCERN_UNITS]
# Units no rule uses: a listener who wrinkles the nose or stretches the lips is not "still".
_OTHER = [_IX[n] for n in ("brow_outer_raise", "eye_widen", "nose_wrinkle", "upper_lip_raise",
                           "lip_stretch", "lip_pucker")]
_NOT_BLINK = np.array([i for i in range(BUILTIN.width) if i != _IX["eye_blink"]])
_LOW = BUILTIN.low.astype(np.float64)
_HIGH = BUILTIN.high.astype(np.float64)
_SPAN = _HIGH - _LOW


@dataclass(frozen=True)
class EpisodeContext:
    """What the oracle knows about an episode: frame grid, sentences and pauses (seconds)."""

    fps: float
    n_frames: int
    sentences: tuple  # ((start, end, sentiment), ...), sentiment in positive | negative | neutral
    pauses: tuple  # ((start, end), ...)

    def __post_init__(self) -> None:
        # Normalise to tuples of plain numbers: the context is hashed to cache its rule bands.
        try:
            sentences = tuple((float(a), float(b), str(c)) for a, b, c in self.sentences)
            pauses = tuple((float(a), float(b)) for a, b in self.pauses)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sentences must be (start, end, sentiment) and pauses (start, end) "
                             f"in seconds ({exc})") from None
        object.__setattr__(self, "sentences", sentences)
        object.__setattr__(self, "pauses", pauses)
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps!r}")
        if self.n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {self.n_frames!r}")
        if not self.sentences:
            raise ValueError("an episode context needs at least one sentence")
        for i, (start, end, sentiment) in enumerate(self.sentences):
            if not (math.isfinite(start) and math.isfinite(end) and end > start):
                raise ValueError(f"sentence {i}: need finite start < end, got {start!r}, {end!r}")
            if sentiment not in SENTIMENTS:
                raise ValueError(f"sentence {i}: sentiment must be one of {SENTIMENTS}, "
                                 f"got {sentiment!r}")
        for i, (start, end) in enumerate(self.pauses):
            if not (math.isfinite(start) and math.isfinite(end) and end >= start):
                raise ValueError(f"pause {i}: need finite start <= end, got {start!r}, {end!r}")

    @classmethod
    def from_meta(cls, meta: Mapping, *, fps: float, n_frames: int) -> EpisodeContext:
        """Build from an episode's meta (``sentences``, optional ``pauses``).

        Without ``pauses`` the gaps between sentences are taken as the pauses.
        """
        if not isinstance(meta, Mapping) or not meta.get("sentences"):
            raise ValueError("episode meta has no 'sentences' (a list of {text, start, end, "
                             "sentiment}); the oracle cannot score without them")
        sentences = []
        for i, s in enumerate(meta["sentences"]):
            try:
                sentences.append((float(s["start"]), float(s["end"]), str(s["sentiment"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"meta['sentences'][{i}] needs numeric 'start' and 'end' and a "
                                 f"'sentiment' ({type(exc).__name__}: {exc})") from None
        if meta.get("pauses") is None:
            ordered = sorted(sentences)
            raw = [(a[1], b[0]) for a, b in itertools.pairwise(ordered) if b[0] > a[1]]
        else:
            raw = meta["pauses"]
        try:
            pauses = tuple((float(p[0]), float(p[1])) for p in raw)
        except (IndexError, TypeError, ValueError) as exc:
            raise ValueError(f"meta['pauses'] must be [[start, end], ...] in seconds ({exc})") \
                from None
        return cls(fps=float(fps), n_frames=int(n_frames), sentences=tuple(sentences),
                   pauses=pauses)


@dataclass(frozen=True)
class OracleScore:
    appropriateness: float
    timing: float
    naturalness: float
    total: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Rules:
    """Everything about an episode the scores need that does not depend on the candidate."""

    windows: np.ndarray  # (K, 3) int: first frame, end frame, sentiment code (0 pos, 1 neg, 2 neu)
    pos_band: np.ndarray  # (2, T): low and high admissible positive response, normalised
    neg_band: np.ndarray  # (2, T)
    onsets: tuple  # ((channel, search_from, earliest, latest), ...) in frames; 0 smile, 1 concern
    nod_windows: tuple  # ((first_frame, end_frame), ...) where a nod must appear
    nod_allowed: np.ndarray  # (T,) bool: frames where nodding is welcome


def _frames(t0: float, t1: float, fps: float, n: int) -> tuple[int, int]:
    return max(0, math.ceil(t0 * fps)), min(n, math.floor(t1 * fps) + 1)


def _sliding(x: np.ndarray, k: int, reduce: np.ufunc) -> np.ndarray:
    """Running max / min over +-k frames along the last axis (edges padded)."""
    if k <= 0:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(k, k)], mode="edge")
    return reduce.reduce(np.lib.stride_tricks.sliding_window_view(padded, 2 * k + 1, -1), -1)


@functools.lru_cache(maxsize=512)
def _rules(ctx: EpisodeContext) -> _Rules:
    fps, n = ctx.fps, ctx.n_frames
    lag_max, rise_max, hold_min = LAG_RANGE_S[1], RISE_RANGE_S[1], HOLD_RANGE_S[0]
    windows = []
    for start, end, sentiment in ctx.sentences:
        # Every profile has reached full strength after the slowest lag and rise, and still holds
        # at the shortest hold after the sentence ends.
        w1 = end + hold_min
        w0 = min(start + lag_max + rise_max, w1 - MIN_WINDOW_S)
        i0, i1 = _frames(w0, w1, fps, n)
        if i1 > i0:
            windows.append((i0, i1, SENTIMENTS.index(sentiment)))
    # The admissible band: the envelope of the rule's response over every corner of the profile
    # ranges (the response is monotone in each parameter at any instant), plus the middle.
    grid = [(lag, rise, hold, decay)
            for lag in (LAG_RANGE_S[0], sum(LAG_RANGE_S) / 2, LAG_RANGE_S[1])
            for rise in RISE_RANGE_S for hold in HOLD_RANGE_S for decay in DECAY_RANGE_S]
    p = np.array(grid)[:, :, None]  # (C, 4, 1)
    t = np.arange(n) / fps
    pos, neg = affect_envelopes(ctx.sentences, t, p[:, 0], p[:, 1], p[:, 2], p[:, 3])  # (C, T)
    k = round(BAND_DILATION_S * fps)
    pos_band = np.stack([_sliding(pos.min(0), k, np.minimum), _sliding(pos.max(0), k, np.maximum)])
    neg_band = np.stack([_sliding(neg.min(0), k, np.minimum), _sliding(neg.max(0), k, np.maximum)])
    onsets = []
    for start, _end, sentiment in ctx.sentences:
        if sentiment == "neutral":
            continue
        channel = 0 if sentiment == "positive" else 1
        hi = (pos_band if channel == 0 else neg_band)[1]
        cue = min(math.floor(start * fps), n - 1)
        if hi[cue] > 0.05:
            continue  # the same affect may still be on from an earlier sentence: no onset to see
        # Look back from the sentence start to where the rules last allowed this affect.
        on_before = np.flatnonzero(hi[:cue] > 0.05)
        look = max(math.ceil((start - ONSET_LOOKBACK_S) * fps),
                   int(on_before[-1]) + 1 if len(on_before) else 0, 0)
        # Half strength is reached half-way through the rise, after the lag.
        earliest = (start + LAG_RANGE_S[0] + RISE_RANGE_S[0] / 2 - ONSET_TOLERANCE_S) * fps
        latest = (start + LAG_RANGE_S[1] + RISE_RANGE_S[1] / 2 + ONSET_TOLERANCE_S) * fps
        if latest < n:
            onsets.append((channel, look, earliest, latest))
    nod_end = NOD_LAG_RANGE_S[1] + NOD_CYCLES_RANGE[1] / NOD_FREQ_RANGE_HZ[0] + NOD_WINDOW_PAD_S
    nod_windows, allowed = [], np.zeros(n, dtype=bool)
    for start, end in ctx.pauses:
        i0, i1 = _frames(start + NOD_LAG_RANGE_S[0] - NOD_WINDOW_PAD_S, start + nod_end, fps, n)
        allowed[i0:i1] = True
        if end - start >= NOD_MIN_PAUSE_S and i1 > i0:
            nod_windows.append((i0, i1))
    win = np.array(windows, dtype=np.intp).reshape(-1, 3)
    for a in (win, pos_band, neg_band, allowed):
        a.flags.writeable = False  # cached and shared between calls
    return _Rules(win, pos_band, neg_band, tuple(onsets), tuple(nod_windows), allowed)


def _checked(seq: np.ndarray, ctx: EpisodeContext, what: str) -> np.ndarray:
    arr = np.asarray(seq)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (T, {BUILTIN.width}) array in the builtin layout, "
                         f"got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} has zero frames")
    if arr.shape[1] != BUILTIN.width:
        raise ValueError(f"{what} has {arr.shape[1]} dims per frame; the builtin layout has "
                         f"{BUILTIN.width}")
    if arr.shape[0] != ctx.n_frames:
        raise ValueError(f"{what} has {arr.shape[0]} frames but the episode has {ctx.n_frames}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    x = arr.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        frame, dim = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{what} contains NaN or infinite values (first at frame {frame}, "
                         f"dim {BUILTIN.dims[dim].name!r})")
    return x


def _appropriateness(smile: np.ndarray, concern: np.ndarray, other: np.ndarray,
                     rules: _Rules) -> float:
    """Mean over sentences of how clearly the right affect, and only it, is shown in the window."""
    if not len(rules.windows):
        return 1.0
    i0, i1, code = rules.windows.T
    c = np.cumsum(np.column_stack([smile, concern, other]), axis=0)  # (T, 8)
    c = np.vstack([np.zeros((1, c.shape[1])), c])
    means = (c[i1] - c[i0]) / (i1 - i0)[:, None]  # (K, 8) window means
    # 0 at the floor, 1 when fully shown; "other" is the strongest unrelated unit.
    level = np.clip((means - AFFECT_FLOOR) / (AFFECT_FULL - AFFECT_FLOOR), 0.0, 1.0)
    s, k, o = level[:, 0], level[:, 1], level[:, 2:].max(1)
    shown = np.choose(code, [s * (1 - k), k * (1 - s), (1 - s) * (1 - k)])
    return float((shown * (1 - o)).mean())


def _moving_average(x: np.ndarray, k: int) -> np.ndarray:
    """Centred running mean over an odd window, edges padded with the end values."""
    k = max(1, k | 1)
    h = k // 2
    padded = np.concatenate([np.full(h, x[0]), x, np.full(h, x[-1])])
    return np.convolve(padded, np.full(k, 1.0 / k), mode="valid")


def _normalised(signal: np.ndarray) -> np.ndarray:
    """Affect in units of the candidate's own peak: timing is judged independently of the gain."""
    peak = float(_moving_average(signal, 5).max())
    return np.clip((signal - AFFECT_FLOOR) / max(peak - AFFECT_FLOOR, PEAK_FLOOR), 0.0, 1.0)


def _band_timing(xs: tuple[np.ndarray, np.ndarray], rules: _Rules, fps: float) -> float:
    """1 - (response outside the admissible band) / (response expected or shown)."""
    violation = total = 0.0
    for x, (lo, hi) in zip(xs, (rules.pos_band, rules.neg_band), strict=True):
        d = np.maximum(np.maximum(lo - BAND_TOLERANCE - x, x - hi - BAND_TOLERANCE), 0.0)
        violation += float(d.sum())
        total += float(np.maximum(hi, x).sum())
    return 1.0 - violation / (total + TIMING_SLACK_S * fps)


def _onset_timing(xs: tuple[np.ndarray, np.ndarray], rules: _Rules, fps: float) -> float:
    """Per affective sentence, when the response first reaches half strength vs. the human range.

    Already at half strength when the search starts counts as anticipating; never reaching it
    by the end of the window counts as missing (score 0).
    """
    scores = []
    for channel, look, earliest, latest in rules.onsets:
        x = xs[channel]
        end = min(math.floor(latest + ONSET_FALLOFF_S * fps) + 1, len(x))
        above = np.flatnonzero(x[look:end] >= 0.5)
        if not len(above):
            scores.append(0.0)
            continue
        onset = look + int(above[0])
        miss = max(earliest - onset, onset - latest, 0.0) / (ONSET_FALLOFF_S * fps)
        scores.append(1.0 - min(miss, 1.0))
    return float(np.mean(scores)) if scores else 1.0


def _nod_timing(pitch: np.ndarray, rules: _Rules, fps: float) -> float:
    short, long = (round(s * fps) for s in NOD_BANDPASS_S)
    bp = _moving_average(pitch, short) - _moving_average(pitch, long)
    recall = [min(float(np.ptp(bp[i0:i1])) / NOD_PTP_FULL, 1.0) for i0, i1 in rules.nod_windows]
    energy = bp**2
    slack = len(bp) * NOD_ENERGY_SLACK**2
    precision = (float(energy[rules.nod_allowed].sum()) + slack) / (float(energy.sum()) + slack)
    return 0.5 * (float(np.mean(recall)) if recall else 1.0) + 0.5 * precision


def _blink_score(blink: np.ndarray, fps: float) -> float:
    closed = np.concatenate([[False], blink > 0.5, [False]])
    edges = np.flatnonzero(np.diff(closed.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]  # closure runs [start, end) in frames
    # Hysteresis: a closure is a new blink only if the lid reopened below 0.2 since the last one,
    # so noise around 0.5 is not a burst of blinks.
    reopened = np.concatenate([[0], np.cumsum(blink < 0.2)])
    count = int(len(starts) > 0) + int(np.count_nonzero(np.diff(reopened[starts]) > 0))
    run = ends - starts
    long_frames = int(run[run > BLINK_MAX_CLOSURE_S * fps].sum())
    minutes = len(blink) / fps / 60.0
    lo = max(1, math.floor(minutes * BLINK_RATE_RANGE[0]))
    hi = math.ceil(minutes * BLINK_RATE_RANGE[1])
    miss = max(lo - count, count - hi, 0)
    return (1.0 - min(miss / 2.0, 1.0)) * (1.0 - min(4.0 * long_frames / len(blink), 1.0))


def _naturalness(x: np.ndarray, fps: float) -> float:
    body = x[:, _NOT_BLINK] / _SPAN[_NOT_BLINK]  # blinks are legitimately fast: judged apart
    jitter = float(np.sqrt((np.diff(body, 2, axis=0) ** 2).mean(0)).mean()) if len(x) > 2 else 0.0
    smooth = 1.0 - float(np.clip((jitter - SMOOTH_OK) / (SMOOTH_BAD - SMOOTH_OK), 0.0, 1.0))
    lively = min(float(body.std(0).sum()) / LIVELY_FULL, 1.0)
    blinks = _blink_score(x[:, _IX["eye_blink"]], fps)
    excess = float(((np.maximum(_LOW - x, 0.0) + np.maximum(x - _HIGH, 0.0)) / _SPAN).mean())
    in_range = 1.0 - min(excess / RANGE_EXCESS_BAD, 1.0)
    w = NATURALNESS_WEIGHTS
    return (w["smoothness"] * smooth + w["liveliness"] * lively + w["blinks"] * blinks
            + w["range"] * in_range)


def oracle_score(candidate: np.ndarray, context: EpisodeContext) -> OracleScore:
    """Score a ``(T, 18)`` builtin-layout listener sequence by the rules alone."""
    x = _checked(candidate, context, "candidate")
    rules = _rules(context)
    smile = x[:, _SMILE].mean(1)
    concern = x[:, _CONCERN].mean(1)
    appropriateness = _appropriateness(smile, concern, x[:, _OTHER], rules)
    xs = (_normalised(smile), _normalised(concern))
    tw = TIMING_WEIGHTS
    timing = (tw["band"] * _band_timing(xs, rules, context.fps)
              + tw["onsets"] * _onset_timing(xs, rules, context.fps)
              + tw["nods"] * _nod_timing(x[:, _IX["head_pitch"]], rules, context.fps))
    naturalness = _naturalness(x, context.fps)
    parts = [float(np.clip(v, 0.0, 1.0)) for v in (appropriateness, timing, naturalness)]
    total = sum(w * v for w, v in zip(WEIGHTS.values(), parts, strict=True))
    return OracleScore(*parts, total=float(np.clip(total, 0.0, 1.0)))


def wrong_response(listener: np.ndarray, context: EpisodeContext, kind: str,
                   rng: np.random.Generator) -> np.ndarray:
    """A plausible-looking but wrong listener made from a ground truth (see WRONG_KINDS).

    The mistakes themselves live in ``policy.synthetic.wrong_listener``, which the mixed corpus
    also uses; this checks the listener against the episode first.
    """
    if kind not in WRONG_KINDS:
        raise ValueError(f"unknown wrong-response kind {kind!r}; expected one of {WRONG_KINDS}")
    return wrong_listener(_checked(listener, context, "listener"), context.fps, kind, rng)
