"""Action tokenizer: each dimension quantised into uniform bins between its 1st and 99th percentile.

This is the RT-2 / OpenVLA action tokenisation applied per frame and per dimension of a face-model
layout. Values outside the fitted range are clipped into the end bins, so the round-trip error is
at most half a bin inside the range and grows with the distance outside it; :meth:`round_trip_error`
reports both. The fitted edges travel with every checkpoint as a plain tensor.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

MIN_HALF_RANGE = 1e-4  # a constant dimension still gets a (tiny) non-empty range


class ActionTokenizer:
    def __init__(self, edges: torch.Tensor, layout: str) -> None:
        edges = torch.as_tensor(edges, dtype=torch.float32).cpu().contiguous()
        if edges.ndim != 2 or edges.shape[1] < 3:
            raise ValueError(f"edges must be (D, n_bins + 1) with n_bins >= 2, got {edges.shape}")
        if not bool((edges[:, 1:] > edges[:, :-1]).all()):
            raise ValueError("edges must increase along each dimension")
        self.edges = edges  # (D, n_bins + 1)
        self.layout = layout

    # --- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(cls, frames: np.ndarray, *, n_bins: int = 256, layout: str = "builtin",
            percentiles: tuple[float, float] = (1.0, 99.0)) -> ActionTokenizer:
        """Fit on training frames ``(N, D)`` (all listener frames of the training split)."""
        frames = np.asarray(frames, dtype=np.float64)
        if frames.ndim != 2 or len(frames) == 0:
            raise ValueError(f"need (N, D) frames with N > 0, got shape {frames.shape}")
        low, high = np.percentile(frames, percentiles, axis=0)  # (D,), (D,)
        mid = (low + high) / 2
        half = np.maximum((high - low) / 2, MIN_HALF_RANGE)
        low, high = mid - half, mid + half
        steps = np.linspace(0.0, 1.0, n_bins + 1)  # (n_bins + 1,)
        edges = low[:, None] + (high - low)[:, None] * steps[None, :]  # (D, n_bins + 1)
        return cls(torch.from_numpy(edges.astype(np.float32)), layout)

    # --- properties --------------------------------------------------------------------------
    @property
    def n_bins(self) -> int:
        return self.edges.shape[1] - 1

    @property
    def width(self) -> int:
        return self.edges.shape[0]

    @property
    def low(self) -> torch.Tensor:
        return self.edges[:, 0]  # (D,)

    @property
    def high(self) -> torch.Tensor:
        return self.edges[:, -1]  # (D,)

    @property
    def centers(self) -> torch.Tensor:
        return (self.edges[:, 1:] + self.edges[:, :-1]) / 2  # (D, n_bins)

    # --- encode / decode ---------------------------------------------------------------------
    def encode(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Values ``(..., D)`` -> bin ids ``(..., D)`` (int64), clipping out-of-range values."""
        is_np = isinstance(x, np.ndarray)
        t = torch.as_tensor(x, dtype=torch.float32)
        low, high = self.low.to(t.device), self.high.to(t.device)
        scaled = (t - low) / (high - low) * self.n_bins
        ids = scaled.floor().clamp(0, self.n_bins - 1).long()
        return ids.numpy() if is_np else ids

    def decode(self, ids: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Bin ids ``(..., D)`` -> bin-centre values ``(..., D)`` (float32)."""
        is_np = isinstance(ids, np.ndarray)
        t = torch.as_tensor(ids).long()
        low, high = self.low.to(t.device), self.high.to(t.device)
        values = low + (t.float() + 0.5) * (high - low) / self.n_bins
        return values.numpy() if is_np else values

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Values ``(..., D)`` -> roughly [-1, 1] over the fitted range (model input scale)."""
        low, high = self.low.to(x.device), self.high.to(x.device)
        return (x - low) / (high - low) * 2 - 1

    def round_trip_error(self, x: np.ndarray) -> dict[str, float]:
        """How far ``decode(encode(x))`` lands from ``x`` ``(N, D)``, in the layout's units.

        ``max_in_range`` is bounded by half a bin; ``max_abs`` includes clipped outliers, whose
        share is ``clipped_fraction`` (about 2 % by construction on the training data).
        """
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.width)
        err = np.abs(self.decode(self.encode(x)) - x)  # (N, D)
        inside = (x >= self.low.numpy()) & (x <= self.high.numpy())
        return {
            "mae": float(err.mean()),
            "rmse": float(np.sqrt((err**2).mean())),
            "max_abs": float(err.max()),
            "max_in_range": float(err[inside].max()) if inside.any() else 0.0,
            "half_bin_max": float(((self.high - self.low) / self.n_bins / 2).max()),
            "clipped_fraction": float(1.0 - inside.mean()),
        }

    # --- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"edges": self.edges.clone(), "layout": self.layout}

    @classmethod
    def from_state_dict(cls, state: dict) -> ActionTokenizer:
        return cls(state["edges"], state["layout"])

    def fingerprint(self) -> str:
        """sha256 of the layout name and the exact float32 edges: equal iff same tokens."""
        h = hashlib.sha256(self.layout.encode())
        h.update(np.asarray(self.edges.shape, dtype=np.int64).tobytes())
        h.update(self.edges.numpy().astype("<f4").tobytes())
        return h.hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActionTokenizer) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return (f"ActionTokenizer(layout={self.layout!r}, width={self.width}, "
                f"n_bins={self.n_bins}, fingerprint={self.fingerprint()[:12]})")
