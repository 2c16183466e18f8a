"""Where the policy runs and in which precision: shared by training, sampling and checkpoints.

It imports nothing of ``policy.ml``, so every other module may import it (the import graph of
``policy.ml`` stays acyclic; tests/policy/ml/test_imports.py checks it).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when this process sees a GPU, else the CPU; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; on the CPU (or disabled) full fp32."""
    if device.type == "cuda" and enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()
