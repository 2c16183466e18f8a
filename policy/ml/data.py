"""Episodes as the policy sees them, their checks, their features, and training windows.

The training data interface is plain Python + NumPy (:class:`EpisodeData`); anything with the same
attributes (``policy.synthetic.SyntheticEpisode``, ``policy.importers.records.EpisodeRecord``)
converts with :func:`episode_from`. Features are computed once per episode
(:func:`prepare_episode`, or :func:`prepare_episodes` for many at once, their log-mel together on
a GPU) and training windows are slices of them (:func:`make_batch`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rendering.layouts import get_layout

from .backbone import text_tokenizer, word_tokens
from .config import ModelConfig
from .errors import EmptySplitError, PolicyDataError
from .features import log_mel, log_mel_batch, text_features, video_frames
from .tokenizer import ActionTokenizer


@dataclass
class EpisodeData:
    key: str
    speaker: np.ndarray  # (T, D) float32 in the policy's layout
    listener: np.ndarray | None  # (T, D) float32 ground truth; None when only sampling
    fps: float
    audio: np.ndarray | None = None  # (N,) float32 mono waveform
    sample_rate: int | None = None  # of audio
    transcript: list[dict] | None = None  # [{"word", "start", "end"}] in seconds
    video: np.ndarray | None = None  # (T, 3, H, W) uint8 speaker frames
    split: str = "train"
    meta: dict = field(default_factory=dict)
    reference: np.ndarray | None = None  # (T, D) the rule-following listener, where the corpus
    #   keeps one beside a mixed-quality ground truth: held-out L2 / FD are measured against it
    video_path: str | None = None  # the speaker video as a file, decoded where the policy needs
    #   frames (``video`` holds frames already decoded)
    video_sha: str = ""  # sha256 of that file, when known (the feature store's key)
    face_box: tuple[int, int, int, int] | None = None  # (x, y, w, h) crop, in source pixels

    @property
    def n_frames(self) -> int:
        return int(self.speaker.shape[0])


def episode_from(obj: Any) -> EpisodeData:
    """Convert anything episode-like (synthetic episode, import record) to :class:`EpisodeData`."""
    if isinstance(obj, EpisodeData):
        return obj
    video = getattr(obj, "video", None)
    return EpisodeData(
        key=str(obj.key),
        speaker=obj.speaker,
        listener=getattr(obj, "listener", None),
        fps=float(obj.fps),
        audio=getattr(obj, "audio", None),
        sample_rate=getattr(obj, "audio_sample_rate", None) or getattr(obj, "sample_rate", None),
        transcript=getattr(obj, "transcript", None),
        video=video if isinstance(video, np.ndarray) else None,  # files are decoded upstream
        split=str(getattr(obj, "split", "train")),
        meta=dict(getattr(obj, "meta", None) or {}),
        reference=getattr(obj, "reference", None),
        video_path=getattr(obj, "video_path", None),
        video_sha=str(getattr(obj, "video_sha", "") or ""),
        face_box=getattr(obj, "face_box", None),
    )


def check_episodes(episodes: Iterable[Any], cfg: ModelConfig, *, split: str,
                   need_listener: bool) -> list[EpisodeData]:
    """Convert and check every episode against the config; raise naming the first bad one."""
    out = [episode_from(e) for e in episodes]
    if not out:
        raise EmptySplitError(f"the {split} split has no episodes")
    width = get_layout(cfg.layout).width
    for ep in out:
        where = f"episode {ep.key!r} ({split} split)"
        if ep.speaker is None:
            raise PolicyDataError(f"{where}: field 'speaker' is missing; the policy needs the "
                                  "speaker's coefficients")
        arrays = [("speaker", ep.speaker)] + ([("listener", ep.listener)]
                                              if ep.listener is not None else [])
        if need_listener and ep.listener is None:
            raise PolicyDataError(f"{where}: field 'listener' is missing; training and "
                                  "evaluation need the ground truth")
        for name, a in arrays:
            if a.ndim != 2 or a.shape[1] != width:
                raise PolicyDataError(
                    f"{where}: field {name!r} has shape {tuple(a.shape)}, expected (T, {width}) "
                    f"for layout {cfg.layout!r}")
            if not np.isfinite(a).all():
                raise PolicyDataError(f"{where}: field {name!r} contains NaN or infinity")
        if ep.listener is not None and len(ep.listener) != len(ep.speaker):
            raise PolicyDataError(f"{where}: listener has {len(ep.listener)} frames, speaker "
                                  f"{len(ep.speaker)}")
        if abs(ep.fps - cfg.fps) > 1e-6:
            raise PolicyDataError(f"{where}: field 'fps' is {ep.fps}, the policy runs at "
                                  f"{cfg.fps} fps (resample the corpus or set ModelConfig.fps)")
        if ep.audio is not None and not ep.sample_rate:
            raise PolicyDataError(f"{where}: field 'audio' has no sample rate")
    return out


# --- features --------------------------------------------------------------------------------


@dataclass
class Prepared:
    """One episode's model inputs, speaker side already shifted by the look-ahead."""

    key: str
    n_frames: int
    speaker: torch.Tensor  # (T, D) float32, standardised
    mel: torch.Tensor | None  # (T, M) float32, standardised
    text: torch.Tensor | None  # (T,) int64 ids or (T, E) float32; with a backbone (T, W) int64
    #   of its token ids + 1 heard at each frame (0: none)
    video: torch.Tensor | None  # (T, 3, S, S) uint8
    listener_ids: torch.Tensor | None  # (T, D) int64 action tokens
    listener_in: torch.Tensor | None  # (T, D) float32 decoded tokens in [-1, 1] units


def _has_mel(ep: EpisodeData, cfg: ModelConfig) -> bool:
    return bool(cfg.use_audio and ep.audio is not None and len(ep.audio))


def mel_options(cfg: ModelConfig) -> dict[str, Any]:
    """The log-mel settings of ``cfg`` as :func:`policy.ml.features.log_mel` takes them."""
    return {"n_mels": cfg.n_mels, "per_frame": cfg.mel_per_frame, "window_s": cfg.mel_window_s,
            "fmax": cfg.mel_fmax}


def raw_features(ep: EpisodeData, cfg: ModelConfig) -> dict[str, torch.Tensor | None]:
    """Unshifted, unstandardised speaker-side features of one episode."""
    mel = None
    if _has_mel(ep, cfg):
        mel = log_mel(ep.audio, int(ep.sample_rate), ep.n_frames, ep.fps,
                      **mel_options(cfg))  # (T, M)
    return _raw_with_mel(ep, cfg, mel)


def raw_features_batch(episodes: Sequence[EpisodeData], cfg: ModelConfig, *,
                       device: torch.device | str | None = None,
                       ) -> list[dict[str, torch.Tensor | None]]:
    """:func:`raw_features` of many episodes: their log-mel computed together on ``device``
    (:func:`policy.ml.features.log_mel_batch`: on the CPU bit for bit the per-episode values),
    the other features per episode as there."""
    audible = [ep for ep in episodes if _has_mel(ep, cfg)]

    def mels() -> list[torch.Tensor]:  # (T_i, M) each
        return log_mel_batch([ep.audio for ep in audible], [int(ep.sample_rate) for ep in audible],
                             [ep.n_frames for ep in audible], [ep.fps for ep in audible],
                             device=device, **mel_options(cfg))

    # The log-mel (the GPU's work and the copies to it, or the CPU's kernels, which release
    # the interpreter) in a thread; the other features, Python mostly, meanwhile here.
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(mels)
        raws = [_raw_with_mel(ep, cfg, None) for ep in episodes]
        done = iter(pending.result())
    for ep, raw in zip(episodes, raws, strict=True):
        if _has_mel(ep, cfg):
            raw["mel"] = next(done)
    return raws


def _raw_with_mel(ep: EpisodeData, cfg: ModelConfig,
                  mel: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """The raw features of ``ep`` around its log-mel ``mel`` (T, M), computed apart."""
    t = ep.n_frames
    text = None
    if cfg.use_text and ep.transcript is not None and cfg.backbone:
        text = word_tokens(ep.transcript, t, ep.fps, text_tokenizer(cfg), cfg.text_slots)
    elif cfg.use_text and ep.transcript is not None:
        text = text_features(ep.transcript, t, ep.fps, encoder=cfg.text_encoder,
                             vocab=cfg.text_vocab, dim=cfg.text_dim, hold_s=cfg.text_hold_s)
    video = video_input(ep, cfg) if cfg.use_video else None
    return {"speaker": torch.as_tensor(ep.speaker, dtype=torch.float32), "mel": mel,
            "text": text, "video": video}


@functools.lru_cache(maxsize=2)
def _vision_encoder(spec: str, sha256: str) -> Any:
    from .video import load_vision_encoder

    encoder = load_vision_encoder(spec)
    if sha256 and encoder.sha256 != sha256:
        raise PolicyDataError(f"vision encoder {spec}: its weights ({encoder.sha256[:12]}) are not "
                              f"the ones this policy was trained with ({sha256[:12]})")
    return encoder


def video_input(ep: EpisodeData, cfg: ModelConfig) -> torch.Tensor | None:
    """The episode's speaker video as the policy reads it, unshifted: ``(T, 3, S, S)`` uint8
    frames for the small conv net, or ``(T, E)`` float16 features of the pretrained encoder
    (from the feature store when computed before). None without a video."""
    if ep.video is None and not ep.video_path:
        return None
    t = ep.n_frames
    if not cfg.vision_encoder:
        if ep.video is not None:
            return video_frames(ep.video, t, cfg.video_size)
        from .video import decode_video

        return decode_video(ep.video_path, fps=ep.fps, n_frames=t, size=cfg.video_size,
                            box=ep.face_box)
    encoder = _vision_encoder(cfg.vision_encoder, cfg.vision_sha256)
    if ep.video is not None:
        feats = encoder.encode(video_frames(ep.video, t, encoder.image_size)).numpy()
    else:
        from .video import default_feature_store, features_for

        feats = features_for(ep.video_path, ep.video_sha or None, encoder, ep.fps, t,
                             ep.face_box, default_feature_store())
    return torch.from_numpy(np.asarray(feats, dtype=np.float32)).to(torch.float16)


def fit_input_stats(raws: Sequence[dict], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Per-channel mean and std of speaker coefficients and log-mel over the training split."""
    spk = torch.cat([r["speaker"] for r in raws])  # (N, D)
    mels = [r["mel"] for r in raws if r["mel"] is not None]
    m = cfg.n_mels * cfg.mel_per_frame
    mel = torch.cat(mels) if mels else torch.zeros(1, m)  # (N, M)
    return {
        "speaker_mean": spk.mean(0), "speaker_std": spk.std(0).clamp_min(1e-3),
        "mel_mean": mel.mean(0), "mel_std": (mel.std(0) if len(mel) > 1
                                             else torch.ones(m)).clamp_min(1e-3),
    }


NOISE_SHRINK = 0.1  # weight of the identity in the copula correlation: keeps it well conditioned


def fit_noise_coupling(listeners: Sequence[np.ndarray], tokenizer: ActionTokenizer,
                       lag: int) -> torch.Tensor:
    """(D, D) Cholesky factor of the correlation of ``lag``-frame changes of the listener.

    The heads give each dimension its own distribution; drawing them with independent noise
    makes units that move together in people (left and right smile, cheeks with the smile) drift
    apart, which shows as a wrong covariance (FD) and as grimaces. Sampling draws correlated
    normals through this factor instead (a Gaussian copula), ``lag`` = the chunk, which is how
    far one draw reaches. Constant dimensions stay independent; the correlation is shrunk towards
    the identity by NOISE_SHRINK.
    """
    steps = []
    for x in listeners:
        z = tokenizer.normalise(torch.as_tensor(x, dtype=torch.float64)).numpy()  # (T, D)
        if len(z) > lag:
            steps.append(z[lag:] - z[:-lag])
    d = tokenizer.width
    corr = np.eye(d)
    if steps:
        delta = np.concatenate(steps)  # (N, D)
        ok = delta.std(0) > 1e-9
        if ok.sum() > 1:
            corr[np.ix_(ok, ok)] = np.corrcoef(delta[:, ok], rowvar=False)
    corr = (1 - NOISE_SHRINK) * corr + NOISE_SHRINK * np.eye(d)
    return torch.from_numpy(np.linalg.cholesky(corr)).float()


def _shift(x: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    """Row t of the result is row t + frames of x; rows past the end are zeros."""
    if x is None or frames == 0:
        return x
    return torch.cat([x[frames:], torch.zeros_like(x[: min(frames, len(x))])])


def prepare_episode(ep: EpisodeData, cfg: ModelConfig, stats: dict[str, torch.Tensor],
                    tokenizer: ActionTokenizer, raw: dict | None = None) -> Prepared:
    raw = raw or raw_features(ep, cfg)
    la = cfg.lookahead_frames
    speaker = (raw["speaker"] - stats["speaker_mean"]) / stats["speaker_std"]
    mel = raw["mel"]
    if mel is not None:
        mel = (mel - stats["mel_mean"]) / stats["mel_std"]
    ids = listener_in = None
    if ep.listener is not None:
        ids = tokenizer.encode(torch.as_tensor(ep.listener, dtype=torch.float32))  # (T, D)
        listener_in = tokenizer.normalise(tokenizer.decode(ids))  # what sampling feeds back
    return Prepared(key=ep.key, n_frames=ep.n_frames, speaker=_shift(speaker, la),
                    mel=_shift(mel, la), text=_shift(raw["text"], la),
                    video=_shift(raw["video"], la), listener_ids=ids, listener_in=listener_in)


def prepare_episodes(episodes: Sequence[EpisodeData], cfg: ModelConfig,
                     stats: dict[str, torch.Tensor], tokenizer: ActionTokenizer, *,
                     device: torch.device | str | None = None) -> list[Prepared]:
    """:func:`prepare_episode` of many episodes, their log-mel computed together on ``device``
    (see :func:`raw_features_batch`); the results are CPU tensors, as there."""
    raws = raw_features_batch(episodes, cfg, device=device)
    prepared = []
    for i, ep in enumerate(episodes):
        prepared.append(prepare_episode(ep, cfg, stats, tokenizer, raws[i]))
        raws[i] = {}  # the standardised copy replaces the raw features: peak memory ~1x
    return prepared


def pad_stack(parts: Sequence[torch.Tensor | None], length: int,
              ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(E, length, ...) zero-padded stack of (T_i, ...) tensors (None where every part is
    None), and the (E,) mask of the parts present."""
    present = torch.tensor([p is not None for p in parts])
    like = next((p for p in parts if p is not None), None)
    if like is None:
        return None, present
    out = torch.zeros((len(parts), length, *like.shape[1:]), dtype=like.dtype)
    for i, p in enumerate(parts):
        if p is not None:
            out[i, : len(p)] = p
    return out, present


# --- training windows ------------------------------------------------------------------------


def window_index(prepared: Sequence[Prepared], length: int) -> torch.Tensor:
    """(W, 2) int64 rows of (episode, start): every window start of every episode."""
    rows = [(i, s) for i, p in enumerate(prepared) for s in range(max(1, p.n_frames - length + 1))]
    return torch.tensor(rows, dtype=torch.int64)


class WindowStore:
    """All prepared episodes in flat tensors (on the training device), cut into windows by
    index arithmetic: one gather per field and batch instead of a Python loop over windows.

    Every episode is followed by ``context + chunk`` padding rows, so a window or a chunk that
    runs past its episode's end reads padding (masked), never the next episode.
    """

    def __init__(self, prepared: Sequence[Prepared], cfg: ModelConfig,
                 device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        pad = cfg.context + cfg.chunk
        sizes = [p.n_frames + pad for p in prepared]
        self.offsets = torch.tensor([0] + sizes[:-1]).cumsum(0)  # (E,) first row of each episode
        n = sum(sizes)
        real = torch.zeros(n, dtype=torch.bool)  # (N,) row holds a frame of its episode
        pos = torch.zeros(n, dtype=torch.long)  # (N,) frame index within its episode
        for p, o, size in zip(prepared, self.offsets.tolist(), sizes, strict=True):
            real[o : o + p.n_frames] = True
            pos[o : o + size] = torch.arange(size)

        def flat(name: str, per_episode: bool = False) -> tuple[torch.Tensor | None,
                                                                 torch.Tensor | None]:
            parts = [getattr(p, name) for p in prepared]
            like = next((x for x in parts if x is not None), None)
            if like is None:
                return None, None
            out = torch.zeros((n, *like.shape[1:]), dtype=like.dtype)
            present = torch.zeros(n, dtype=torch.bool)
            for x, o in zip(parts, self.offsets.tolist(), strict=True):
                if x is not None:
                    out[o : o + len(x)] = x
                    present[o : o + len(x) + pad] = True
            return out.to(device), present.to(device)

        self.speaker, _ = flat("speaker")  # (N, D)
        self.mel, self.mel_present = flat("mel")  # (N, M), (N,)
        self.text, _ = flat("text")  # (N,) or (N, E)
        self.video, self.video_present = flat("video")  # (N, 3, S, S)
        self.ids, _ = flat("listener_ids")  # (N, D)
        self.listener_in, _ = flat("listener_in")  # (N, D)
        self.real, self.pos = real.to(device), pos.to(device)
        self.device = device

    def batch(self, picks: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Training windows for rows ``picks`` (B, 2) of (episode, start).

        Position i of a window (frame s + i) sees speaker features of frame s + i + look-ahead,
        the listener's decoded action of frame s + i - 1 (``prev``; a learned start vector
        before the episode), and is trained to predict frames s + i .. s + i + chunk - 1.
        """
        length, chunk = self.cfg.context, self.cfg.chunk
        picks = picks.to(self.device)
        first = self.offsets.to(self.device)[picks[:, 0]] + picks[:, 1]  # (B,) global row
        rows = first[:, None] + torch.arange(length, device=self.device)[None]  # (B, L)
        prev_rows = (rows - 1).clamp(min=0)  # (B, L); row -1 only for frame 0 (masked)
        prev_valid = self.real[prev_rows] & (self.pos[rows] >= 1)  # (B, L)
        tgt = rows[..., None] + torch.arange(chunk, device=self.device)  # (B, L, C)
        return {
            "speaker": self.speaker[rows],  # (B, L, D)
            "mel": self.mel[rows] if self.mel is not None else None,  # (B, L, M)
            "mel_mask": self.mel_present[first] if self.mel is not None else None,  # (B,)
            "text": self.text[rows] if self.text is not None else None,  # (B, L) | (B, L, E)
            "video": self.video[rows] if self.video is not None else None,  # (B, L, 3, S, S)
            "video_mask": self.video_present[first] if self.video is not None else None,
            "prev": self.listener_in[prev_rows] * prev_valid[..., None],  # (B, L, D)
            "prev_valid": prev_valid,
            "targets": self.ids[tgt],  # (B, L, C, D)
            "target_mask": self.real[tgt],  # (B, L, C)
        }


def make_batch(prepared: Sequence[Prepared], picks: torch.Tensor,
               cfg: ModelConfig) -> dict[str, torch.Tensor | None]:
    """Training windows for rows ``picks`` (B, 2) of (episode, start); see WindowStore.batch.
    (Training keeps one WindowStore; this builds one per call, for one-off batches.)"""
    return WindowStore(prepared, cfg).batch(picks)
