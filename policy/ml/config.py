"""Configurations of the listener policy: model, SFT training and sampling.

Each config is a plain ``@dataclass`` so that it travels in a checkpoint as a dict
(:func:`dataclasses.asdict`) and comes back with :meth:`from_dict`, which rejects unknown keys
instead of silently dropping them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

MAX_LOOKAHEAD_S = 0.5  # the closed-loop contract: never more speaker future than this

_C = TypeVar("_C")


def _from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}")
    return cls(**data)


@dataclass
class ModelConfig:
    # --- the action space ---
    layout: str = "builtin"  # face-model layout (rendering.layouts) of speaker and listener
    fps: float = 30.0  # frame rate the policy runs at; every episode must have this rate
    n_bins: int = 256  # action tokens per dimension, between the 1st and 99th percentile
    chunk: int = 4  # frames predicted per step (133 ms at 30 fps)
    context: int = 64  # frames of attention context; also the training window length
    lookahead_s: float = 0.3  # speaker input seen beyond the frame being predicted (<= 0.5 s)
    # --- the transformer over time ---
    d_model: int = 128  # width of the residual stream
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads; d_model must be divisible by it
    mlp_ratio: int = 4  # hidden width of each MLP = mlp_ratio * d_model
    bin_head_dim: int = 32  # per (frame, dimension) feature fed to that dimension's bin head
    dropout: float = 0.1  # on attention weights, residual branches and input embeddings
    # --- speaker audio ---
    use_audio: bool = True  # log-mel of the speaker's waveform, when the episode has one
    n_mels: int = 40  # mel bands
    mel_per_frame: int = 2  # mel frames per video frame, stacked into one input vector
    mel_window_s: float = 0.032  # analysis window (512 samples at 16 kHz)
    mel_fmax: float = 8000.0  # top of the mel filter bank (capped at Nyquist)
    # --- speaker words ---
    use_text: bool = True  # transcript words aligned to frames, when the episode has them
    text_encoder: str = "hashed"  # "hashed" (shipped) or a name given to register_text_encoder
    text_vocab: int = 4096  # hashed word buckets (id 0 = no word)
    text_dim: int = 0  # width of a registered encoder's vectors; 0 for "hashed"
    text_hold_s: float = 1.0  # a heard word stays on the frames for this long after it ends
    # --- speaker video (optional) ---
    use_video: bool = False  # a small conv encoder over (T, 3, H, W) frames, when present
    video_size: int = 32  # frames are resized to video_size x video_size before the encoder
    video_channels: int = 16  # channels of the first conv layer (doubled twice)
    vision_encoder: str = ""  # a pretrained DINOv2 or SigLIP directory (policy.ml.video): frames
    #   become its frozen features, computed once per episode; "" = the small conv net above
    vision_sha256: str = ""  # of that directory's weights, recorded when training starts
    vision_dim: int = 0  # width of its features (set from the directory)
    # --- a pretrained language model as the backbone (policy.ml.backbone) ---
    backbone: str = ""  # a local Hugging Face causal LM directory (Llama or Qwen family): a name
    #   under POLICY_MODEL_DIR or an absolute path; "" = the small transformer above
    backbone_sha256: str = ""  # of its weights, recorded at training: a checkpoint refuses others
    backbone_dtype: str = "float32"  # "bfloat16" halves the memory of a frozen (LoRA) backbone
    lora_rank: int = 0  # 0: fine-tune every backbone weight; > 0: LoRA adapters of this rank
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    grad_checkpointing: bool = False  # recompute the backbone's activations in the backward
    text_slots: int = 4  # word-token positions before each chunk of frames (backbone only)

    def __post_init__(self) -> None:
        if not 0.0 <= self.lookahead_s <= MAX_LOOKAHEAD_S:
            raise ValueError(f"lookahead_s must be in [0, {MAX_LOOKAHEAD_S}], "
                             f"got {self.lookahead_s}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model / n_heads must be an even integer (rotary embeddings)")
        if self.chunk < 1 or self.context < self.chunk:
            raise ValueError(f"need 1 <= chunk <= context, got {self.chunk}, {self.context}")
        if self.n_bins < 2:
            raise ValueError("n_bins must be at least 2")
        if self.text_encoder != "hashed" and self.text_dim <= 0:
            raise ValueError("a registered text encoder needs text_dim > 0")
        if self.backbone_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"backbone_dtype must be float32 or bfloat16, "
                             f"got {self.backbone_dtype!r}")
        if self.lora_rank < 0 or self.text_slots < 1:
            raise ValueError("lora_rank must be >= 0 and text_slots >= 1")
        if self.backbone_dtype == "bfloat16" and self.backbone and not self.lora_rank:
            raise ValueError("a bfloat16 backbone must be frozen: set lora_rank (full "
                             "fine-tuning keeps float32 weights under bf16 autocast)")

    @property
    def lookahead_frames(self) -> int:
        return int(round(self.lookahead_s * self.fps))

    def without_backbone(self) -> ModelConfig:
        """The same inputs for a small network of its own (the critic): words as hashed ids,
        no language model."""
        return dataclasses.replace(self, backbone="", backbone_sha256="", lora_rank=0,
                                   backbone_dtype="float32", grad_checkpointing=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)


@dataclass
class TrainConfig:
    max_steps: int = 2000  # optimiser steps; the cosine schedule ends here
    batch_size: int = 64  # training windows per step (64 frames each by default)
    lr: float = 2e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    weight_decay: float = 0.05  # AdamW decay on matrices; none on biases, norms, embeddings
    beta1: float = 0.9
    beta2: float = 0.95  # nanoGPT's choice for small batches
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    expression_weight: float = 1.0  # weight of the token cross-entropy on expression dims
    pose_weight: float = 1.0  # weight of the token cross-entropy on head and jaw dims
    smooth_weight: float = 1.0  # weight of the acceleration penalty on decoded expected values
    loss_stride: int = 1  # read the heads (and the loss) at every n-th window position; 0 means
    #   every chunk-th, from a random offset: the chunks then tile the window as in sampling, at
    #   1/chunk of the cost of the 256-bin heads (the cheap choice on CPU)
    listener_noise: float = 0.02  # std of noise on the past-listener input (in [-1, 1] units)
    listener_drop: float = 0.1  # probability of hiding a window's past-listener input
    seed: int = 0  # windows, dropout and initialisation
    log_every: int = 10  # steps between progress callbacks
    eval_every: int = 0  # steps between validation losses (0: only at the end, if val given)
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end)
    device: str = "auto"  # "auto" picks CUDA when available, else CPU
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    fsdp: bool = False  # under torchrun: shard weights, gradients and AdamW state over the
    #   processes (policy.ml.sharded) instead of replicating them; checkpoints become directories
    compile_layers: bool = True  # on CUDA, each decoder layer of a backbone policy compiled
    #   (torch.compile): ~1.4x the eager SFT throughput of a 1 B backbone (benchmarks.backbone)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)


@dataclass
class SampleConfig:
    k: int = 4  # candidates per episode, sampled together in one batched pass
    temperature: float = 1.0  # softmax temperature; 0 takes the most likely bin. Below 1 the
    #   closed loop lags (it keeps choosing "as before"): responses come late and too weak
    top_p: float = 1.0  # nucleus: keep the smallest set of bins with this much probability
    seed: int = 0  # with the episode key, fixes every random draw
    noise: str = "chunk"  # "chunk": one draw per (candidate, dim, chunk) shared by the chunk's
    #   frames, so a chunk moves coherently instead of jittering bin to bin; "frame": per frame
    couple_dims: bool = True  # correlate the draws across dimensions (the copula fitted at
    #   training, see data.fit_noise_coupling); False: independent dimensions
    max_rows: int | None = None  # episodes x k rows per pass (bounds memory on long corpora);
    #   None: 2048, or 16384 for the static engine on CUDA (policy.ml.sample.rows_per_pass)
    engine: str = "auto"  # "loop": the growing key/value cache; "static": fixed shapes, the step
    #   replayed from a CUDA graph on CUDA (policy.ml.fastsample); "auto": static on CUDA, loop
    #   on the CPU. Same draws: bit for bit on the CPU, up to bf16 rounding on CUDA

    ENGINES = ("auto", "loop", "static")  # not a field: no annotation

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.temperature < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if self.noise not in ("chunk", "frame"):
            raise ValueError(f"noise must be 'chunk' or 'frame', got {self.noise!r}")
        if self.engine not in self.ENGINES:
            raise ValueError(f"engine must be one of {', '.join(map(repr, self.ENGINES))}, "
                             f"got {self.engine!r}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 (or None for the default), "
                             f"got {self.max_rows}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleConfig:
        return _from_dict(cls, data)
