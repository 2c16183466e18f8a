"""The listener policy on a pretrained language model (``ModelConfig.backbone``).

The small transformer of :mod:`policy.ml.model` is trained from scratch and reads words as hashed
ids. Here a Hugging Face causal language model (Llama or Qwen family, loaded from a local
directory, safetensors only) mixes the frames instead, and the transcript reaches it as real text
tokens of its own vocabulary:

* every frame is one position, its embedding the sum of the speaker's coefficients, log-mel audio,
  video features (small conv net or a frozen DINOv2 / SigLIP, :mod:`policy.ml.video`) and the
  listener's previous action -- the same inputs, shifted by the same look-ahead, as the small
  model's;
* before every ``chunk``-th frame come ``text_slots`` word positions: the tokens of the words
  heard (ended) during the frames since the previous such block, in order, the empty slots a
  learned "silence" vector. The sequence is ``[slots][chunk frames][slots][chunk frames] ...``:
  words placed by time among the frames, with static shapes;
* the decoder's last hidden state at each frame position feeds the shared per-dimension bin heads
  (:class:`policy.ml.model.ActionHeads`): a position predicts a chunk of frames at once, in
  parallel, as OpenVLA-OFT decodes action chunks;
* sampling feeds the step's tokens through the model's own key/value cache, trimmed to the
  attention window of ``context`` frames.

The backbone is fine-tuned fully (float32 weights under bf16 autocast) or through LoRA adapters
(``lora_rank``; its weights then frozen, in bfloat16 if asked). A checkpoint holds only what was
trained -- the adapters, not the frozen weights -- and records the backbone's hash: loading it
against a directory with other weights is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .errors import PolicyDataError
from .hf import ModelDirError, check_model_dir, load_pretrained, model_dir_sha256, resolve_model_dir
from .model import VLA, ActionHeads, video_input

# Decoder families whose layers take ``inputs_embeds`` and ``position_ids`` with rotary positions.
BACKBONES = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class BackboneMismatchError(PolicyDataError):
    """A checkpoint or config names a backbone whose weights differ from the directory's."""


def build_model(cfg: ModelConfig, width: int) -> nn.Module:
    """The policy network a config describes: the small transformer or the backbone policy."""
    return BackboneVLA(cfg, width) if cfg.backbone else VLA(cfg, width)


def pin_pretrained(cfg: ModelConfig) -> ModelConfig:
    """The config with its backbone's and vision encoder's hashes (and feature width) recorded,
    as training starts: later loads then refuse a directory whose weights changed."""
    changes: dict[str, Any] = {}
    if cfg.backbone and not cfg.backbone_sha256:
        path = resolve_model_dir(cfg.backbone)
        check_model_dir(path, kinds=BACKBONES)
        changes["backbone_sha256"] = model_dir_sha256(path)
    if cfg.use_video and cfg.vision_encoder and not cfg.vision_sha256:
        from .video import load_vision_encoder  # the vision side is optional

        enc = load_vision_encoder(cfg.vision_encoder)
        changes.update(vision_sha256=enc.sha256, vision_dim=enc.dim)
    return dataclasses.replace(cfg, **changes) if changes else cfg


# --- words as the backbone's own tokens ----------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a bad directory
        raise ModelDirError(f"{path}: its tokenizer cannot be loaded ({exc}); a backbone that "
                            "reads the transcript needs tokenizer files beside the weights"
                            ) from exc


def text_tokenizer(cfg: ModelConfig) -> Any:
    return _tokenizer(str(resolve_model_dir(cfg.backbone)))


def word_tokens(transcript: list[dict] | None, n_frames: int, fps: float, tokenizer: Any,
                per_frame: int) -> torch.Tensor:
    """(n_frames, per_frame) int64: token id + 1 of the words heard at each frame, 0 = none.

    A word is heard at the first frame at or after its end time (as the small model's words).
    A frame holds at most ``per_frame`` tokens; more spill over to the next frames, in order.
    """
    out = np.zeros((n_frames, per_frame), dtype=np.int64)
    words = sorted(transcript or [], key=lambda w: float(w["end"]))
    if not words or n_frames == 0:
        return torch.from_numpy(out)
    encoded = tokenizer([" " + str(w["word"]).strip() for w in words],
                        add_special_tokens=False)["input_ids"]
    frame, used = 0, 0
    for word, ids in zip(words, encoded, strict=True):
        heard = min(n_frames - 1, max(0, math.ceil(float(word["end"]) * fps - 1e-6)))
        if heard > frame:
            frame, used = heard, 0
        for token in ids:
            if used == per_frame:
                frame, used = frame + 1, 0
            if frame >= n_frames:
                return torch.from_numpy(out)
            out[frame, used] = token + 1
            used += 1
    return torch.from_numpy(out)


# --- the model -----------------------------------------------------------------------------------


DECODE_ATTENTION = "backchannel_decode"  # the attention the backbone runs with (see below)


def _decode_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any
                      ) -> tuple[torch.Tensor, None]:
    """The decoder's attention, with one fast path for closed-loop sampling on a GPU.

    A sampling step feeds a few tokens after a long cache: every cached token is visible and the
    new ones are causal among themselves -- the lower-right causal pattern. The stock path
    builds an explicit mask for it, which rules out the flash kernel and, with grouped key/value
    heads, copies the whole cache once per head group every layer and step. Here that pattern
    goes to the flash kernel as it is (PyTorch's ``causal_lower_right``), grouped heads and all.
    The policy never pads a row, so the mask holds nothing else. Everything else (training,
    one-token steps, the CPU) is the stock SDPA path.
    """
    from torch.nn.attention.bias import causal_lower_right
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    if not query.is_cuda or q_len == 1 or q_len == kv_len or kwargs.get("dropout", 0.0):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    out = F.scaled_dot_product_attention(query, key, value,
                                         attn_mask=causal_lower_right(q_len, kv_len),
                                         scale=kwargs.get("scaling"), enable_gqa=groups > 1)
    return out.transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=1)
def _register_decode_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, _decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


@functools.lru_cache(maxsize=1)
def _window_layer_class() -> type:
    """The cache layer the backbone samples with (transformers is imported lazily)."""
    from transformers.cache_utils import DynamicLayer

    class WindowLayer(DynamicLayer):
        """A decoder layer's keys and values in a preallocated buffer: ``keys`` and ``values``
        are views of its span ``[lo, hi)``. A step writes after ``hi`` and forgetting the oldest
        tokens moves ``lo``: no copy per step, where the stock layer concatenates the whole
        cache every step (34 GB a step for 2,048 rows of a 1 B model's window). When the end is
        reached the span moves back to the front, once per ``slack`` tokens. The keys stay in
        position order, contiguous per head, so the attention kernels see what they saw."""

        def __init__(self, capacity: int) -> None:
            super().__init__()
            self.capacity, self.lo, self.hi = capacity, 0, 0

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor
                                ) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            b, h, _, d = key_states.shape
            self._k = key_states.new_empty(b, h, self.capacity, d)
            self._v = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])
            self.is_initialized = True
            self._expose()

        def _expose(self) -> None:
            self.keys = self._k[:, :, self.lo : self.hi]
            self.values = self._v[:, :, self.lo : self.hi]

        def forget(self, n: int) -> None:
            """Drop the ``n`` oldest tokens."""
            self.lo = min(self.lo + n, self.hi)
            self._expose()

        def _make_room(self, n: int) -> None:
            kept = self.hi - self.lo
            if kept + n > self.capacity:  # a longer step than planned for: a larger buffer
                self.capacity = (kept + n) * 5 // 4
                k, v = self._k[:, :, self.lo : self.hi], self._v[:, :, self.lo : self.hi]
                self.lazy_initialization(k, v)
                self._k[:, :, :kept], self._v[:, :, :kept] = k, v
            else:  # move the span to the front in pieces no longer than the gap: no overlap
                for s in range(0, kept, self.lo):
                    e = min(s + self.lo, kept)
                    self._k[:, :, s:e] = self._k[:, :, self.lo + s : self.lo + e]
                    self._v[:, :, s:e] = self._v[:, :, self.lo + s : self.lo + e]
            self.lo, self.hi = 0, kept

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self.hi + n > self.capacity:
                self._make_room(n)
            self._k[:, :, self.hi : self.hi + n] = key_states
            self._v[:, :, self.hi : self.hi + n] = value_states
            self.hi += n
            self._expose()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.hi - self.lo if self.is_initialized else 0

    return WindowLayer


class BackboneCache:
    """The decoder's key/value cache and the frame each cached token belongs to.

    Each layer keeps its window in a fixed buffer of ``capacity`` tokens (grown if a step needs
    more): what the attention window holds plus room to append before moving back."""

    def __init__(self, capacity: int = 1024) -> None:
        from transformers import DynamicCache

        self.kv = DynamicCache()  # its layers, made as the decoder first writes them: ours
        self.kv.layer_class_to_replicate = functools.partial(_window_layer_class(), capacity)
        self.frames: torch.Tensor | None = None  # (S,) on the host

    def keep_after(self, frame: int) -> None:
        """Forget the cached tokens of frames <= ``frame`` (they left the attention window)."""
        if self.frames is None:
            return
        drop = int((self.frames <= frame).sum())  # tokens are in frame order; a host tensor
        if drop:
            for layer in self.kv.layers:
                layer.forget(drop)
            self.frames = self.frames[drop:]


def load_backbone(cfg: ModelConfig) -> nn.Module:
    """The decoder of ``cfg.backbone`` (without its language-model head), checked against the
    recorded hash, in ``cfg.backbone_dtype``."""
    from transformers import AutoModel

    path = resolve_model_dir(cfg.backbone)
    check_model_dir(path, kinds=BACKBONES)
    sha = model_dir_sha256(path)
    if cfg.backbone_sha256 and sha != cfg.backbone_sha256:
        raise BackboneMismatchError(
            f"backbone {path} has weights {sha[:12]}, but this policy was trained on "
            f"{cfg.backbone_sha256[:12]}: load it with the directory it was trained on")
    dtype = torch.bfloat16 if cfg.backbone_dtype == "bfloat16" else torch.float32
    return load_pretrained(AutoModel, path, kinds=BACKBONES, dtype=dtype)


class BackboneVLA(ActionHeads, nn.Module):
    """Same interface as :class:`policy.ml.model.VLA`: ``forward(batch, pos, cache, heads_at)``
    gives bin logits at frame positions, ``new_cache()`` a cache for closed-loop sampling."""

    def __init__(self, cfg: ModelConfig, width: int, decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg, self.width = cfg, width
        lm = decoder if decoder is not None else load_backbone(cfg)
        d = int(lm.config.hidden_size)
        self.vocab = int(lm.config.vocab_size)
        if cfg.lora_rank:
            from peft import LoraConfig, get_peft_model

            lm = get_peft_model(lm, LoraConfig(
                r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules=list(LORA_TARGETS), bias="none"))
        if cfg.grad_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        _register_decode_attention()
        lm.set_attn_implementation(DECODE_ATTENTION)
        self.lm = lm
        m = cfg.n_mels * cfg.mel_per_frame
        self.speaker_in = nn.Linear(width, d)
        self.audio_in = nn.Linear(m, d) if cfg.use_audio else None
        self.video_in = video_input(cfg, d)
        self.listener_in = nn.Linear(width, d)
        self.start = nn.Parameter(torch.zeros(d))  # stands in for the action before frame 0
        self.silence = nn.Parameter(torch.zeros(d))  # an empty word slot
        self._init_heads(d)
        for name, p in self.named_parameters():
            if not name.startswith("lm.") and p.ndim >= 2 and name != "bin_b":
                nn.init.normal_(p, std=0.02)
        with torch.no_grad():  # the slots start where the decoder's own embeddings live
            self.silence.normal_(0.0, float(self._embeddings().weight.float().std()))
        # Weights a checkpoint leaves out: the frozen backbone (under LoRA).
        self._frozen = {n for n, p in self.named_parameters() if not p.requires_grad}

    # --- what the trainer and the critic ask of a policy network ------------------------------
    @property
    def text_in(self) -> nn.Module | None:
        return self._embeddings() if self.cfg.use_text else None

    def _embeddings(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    def new_cache(self) -> BackboneCache:
        cfg = self.cfg
        block = cfg.chunk + cfg.text_slots  # tokens of a step: a block of slots, a chunk
        window = cfg.context + cfg.chunk + (-(-cfg.context // cfg.chunk) + 2) * cfg.text_slots
        return BackboneCache(window + max(window // 4, 2 * block))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        full = super().state_dict(*args, **kwargs)
        return OrderedDict((k, v) for k, v in full.items() if k[len(prefix):] not in self._frozen)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if k not in self._frozen]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"backbone policy weights do not fit: missing {missing[:5]}, "
                               f"unexpected {list(result.unexpected_keys)[:5]}")
        return result

    # --- the sequence ---------------------------------------------------------------------------
    def embed_frames(self, batch: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """Sum of the input embeddings of each frame: (B, T, d)."""
        x = self.speaker_in(batch["speaker"])  # (B, T, D) -> (B, T, d)
        if self.audio_in is not None and batch.get("mel") is not None:
            x = x + self.audio_in(batch["mel"]) * batch["mel_mask"].to(x.dtype)[:, None, None]
        if self.video_in is not None and batch.get("video") is not None:
            b, t = batch["video"].shape[:2]
            feats = self.video_in(batch["video"].flatten(0, 1)).view(b, t, -1)  # (B, T, d)
            x = x + feats * batch["video_mask"].to(x.dtype)[:, None, None]
        prev = self.listener_in(batch["prev"])  # (B, T, D) -> (B, T, d)
        x = x + torch.where(batch["prev_valid"][..., None], prev, self.start)
        return F.dropout(x, self.cfg.dropout, self.training)

    def embed_slots(self, text: torch.Tensor | None, starts: torch.Tensor, b: int
                    ) -> torch.Tensor:
        """(B, N, W, d) word-slot embeddings of the blocks beginning at window frames ``starts``
        (N,): the tokens heard during the chunk of frames ending at each start, in order."""
        cfg, n = self.cfg, len(starts)
        w = cfg.text_slots
        empty = self.silence.expand(b, n, w, -1)
        if text is None or self.text_in is None:
            return empty
        frames = starts[:, None] - cfg.chunk + 1 + torch.arange(cfg.chunk, device=starts.device)
        ids = text[:, frames.clamp(min=0)] * (frames >= 0)[None, :, :, None]  # (B, N, C, Wf)
        ids = ids.flatten(2)  # (B, N, C * Wf), 0 = no token
        order = torch.sort((ids == 0).to(torch.int8), dim=-1, stable=True).indices
        ids = ids.gather(-1, order)[..., :w]  # heard tokens first, in order; (B, N, <= W)
        if ids.shape[-1] < w:
            ids = F.pad(ids, (0, w - ids.shape[-1]))
        words = self._embeddings()((ids - 1).clamp(min=0, max=self.vocab - 1)).to(empty.dtype)
        return torch.where((ids > 0)[..., None], words, empty)

    def forward(self, batch: dict[str, torch.Tensor | None], pos: torch.Tensor | None = None,
                cache: BackboneCache | None = None, heads_at: torch.Tensor | None = None,
                ) -> torch.Tensor:
        """Bin logits (B, T', chunk, D, n_bins) at frame positions ``heads_at`` (default: all).

        ``pos`` (T,) are the frames of the window (default 0 .. T - 1, contiguous); a block of
        word slots goes before every frame that is a multiple of ``chunk``. With a cache the
        tokens extend the cached ones, and the cache keeps ``context`` frames.
        """
        cfg = self.cfg
        frames = self.embed_frames(batch)  # (B, T, d)
        b, t, d = frames.shape
        dev = frames.device
        # The layout is index arithmetic on a few hundred frame numbers: done on the host, it
        # costs the GPU nothing and waits for nothing (the sampler passes ``pos`` on the host;
        # one on the GPU is read back, which waits for the queued work).
        host = torch.arange(t) if pos is None else pos.cpu()
        layout = self._layout(host)
        on_dev = {k: v.to(dev, non_blocking=True) for k, v in layout.items()}
        slots = self.embed_slots(batch.get("text"), on_dev["starts"], b)  # (B, N, W, d)
        frame_at, slot_at = on_dev["frame_at"], on_dev["slot_at"]
        dtype = next(self.lm.parameters()).dtype
        seq = frames.new_empty(b, t + len(slot_at), d, dtype=dtype)
        seq[:, frame_at] = frames.to(dtype)
        seq[:, slot_at] = slots.reshape(b, len(slot_at), d).to(dtype)
        kv = mask = None
        if cache is not None:
            cache.keep_after(int(host.max()) - cfg.context)
            kv = cache.kv
        elif int(host.max() - host.min()) >= cfg.context:
            mask = self._window_mask(on_dev["frame"], dtype)[None, None].expand(
                b, 1, -1, -1)
        out = self.lm(inputs_embeds=seq, attention_mask=mask,
                      position_ids=on_dev["position"][None].expand(b, -1),
                      past_key_values=kv, use_cache=cache is not None)
        if cache is not None:
            frame = layout["frame"]  # on the host
            cache.frames = frame if cache.frames is None else torch.cat([cache.frames, frame])
        hidden = out.last_hidden_state[:, frame_at].to(frames.dtype)  # (B, T, d)
        return self.read_heads(hidden, batch, heads_at)

    def _layout(self, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        """Where the frames ``pos`` (T,) and their word slots sit in the sequence: ``starts``
        (N,) the window frames that open a block, ``frame_at`` (T,) and ``slot_at`` (N * W,)
        their sequence indices, and per token its absolute ``position`` and its ``frame``."""
        c, w = self.cfg.chunk, self.cfg.text_slots
        is_start = pos % c == 0
        starts = torch.nonzero(is_start).flatten()
        frame_at = torch.arange(len(pos)) + w * is_start.long().cumsum(0)
        offsets = torch.arange(w)
        slot_at = (frame_at[starts][:, None] - w + offsets).flatten()
        length = len(pos) + len(slot_at)
        position = torch.empty(length, dtype=torch.long)
        position[frame_at] = pos + w * (pos.div(c, rounding_mode="floor") + 1)
        block = pos[starts] + w * pos[starts].div(c, rounding_mode="floor")
        position[slot_at] = (block[:, None] + offsets).flatten()
        frame = torch.empty(length, dtype=torch.long)
        frame[frame_at] = pos
        frame[slot_at] = pos[starts].repeat_interleave(w)
        return {"starts": starts, "frame_at": frame_at, "slot_at": slot_at,
                "position": position, "frame": frame}

    def _window_mask(self, token_frame: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(L, L) additive mask of one pass over a window longer than ``context`` frames: a
        token sees the earlier tokens the sampler's trimmed cache holds at its step -- those of
        frames after (the step's last frame) - context, a step ending at a block's first frame.
        """
        c = self.cfg.chunk
        step_end = (token_frame + c - 1).div(c, rounding_mode="floor") * c  # (L,)
        idx = torch.arange(len(token_frame), device=token_frame.device)
        seen = (idx[None, :] <= idx[:, None]) & (
            token_frame[None, :] > step_end[:, None] - self.cfg.context)
        return torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill(
            ~seen, torch.finfo(dtype).min)

    # --- accounting, for the benchmark ----------------------------------------------------------
    def flops_per_frame(self, training: bool = True, head_fraction: float = 1.0) -> float:
        """Model FLOPs per frame: 2 per multiply-add of every weight each of the frame's
        ``(chunk + text_slots) / chunk`` tokens passes through, attention over the window
        (PaLM's 6N + 12 L H T convention), the heads as they run. Training counts 3x the
        forward for trained weights and 2x for frozen ones (their input gradients only)."""
        cfg = self.cfg
        tokens = (cfg.chunk + cfg.text_slots) / cfg.chunk
        lm_cfg = self.lm.config
        emb = self._embeddings().weight
        frozen = trained = 0
        for name, p in self.named_parameters():
            if p.ndim < 2 or p is emb or name.endswith(("bin_w", "head.weight")):
                continue
            if name.startswith("lm."):
                if p.requires_grad:
                    trained += p.numel()
                else:
                    frozen += p.numel()
        own = sum(p.numel() for n, p in self.named_parameters()
                  if p.ndim >= 2 and not n.startswith("lm.") and n not in ("bin_w", "head.weight"))
        bins = cfg.chunk * self.width * (cfg.bin_head_dim + 2) * cfg.n_bins
        heads = head_fraction * (self.head.weight.numel() + bins)
        window = cfg.context * tokens
        attention = 2 * int(lm_cfg.num_hidden_layers) * int(lm_cfg.hidden_size) * window
        lm_forward = tokens * (2 * (frozen + trained) + 2 * attention)
        if not training:
            return float(lm_forward + 2 * (own + heads))
        lm_train = tokens * (3 * 2 * trained + 2 * 2 * frozen + 3 * 2 * attention)
        return float(lm_train + 3 * 2 * (own + heads))


# --- tiny and benchmark-sized backbones from a configuration ---------------------------------


def save_word_tokenizer(path: str | Path, words: Iterable[str]) -> None:
    """A word-level tokenizer over ``words`` (plus an unknown token) saved as a Hugging Face
    fast tokenizer: what a randomly initialised backbone reads transcripts with."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    unknown = "<unk>"
    vocab = {unknown: 0}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unknown))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unknown)
    fast.save_pretrained(str(path))


def save_random_backbone(path: str | Path, *, family: str = "llama", words: Iterable[str] = (),
                         seed: int = 0, **sizes: Any) -> Path:
    """A randomly initialised causal LM of the given family and sizes (``hidden_size``,
    ``num_hidden_layers``, ...), saved as safetensors with a word-level tokenizer: tests and
    benchmarks use the real architecture without downloading weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if family not in BACKBONES:
        raise ValueError(f"family must be one of {sorted(BACKBONES)}")
    path = Path(path)
    words = list(words)
    sizes.setdefault("vocab_size", max(32, len(set(w.lower() for w in words)) + 1))
    config = AutoConfig.for_model(family, **sizes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(path), safe_serialization=True)
    save_word_tokenizer(path, words)
    return path
