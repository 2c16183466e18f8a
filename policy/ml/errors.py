"""Errors of ``policy.ml``: each names the episode, file or field, and what it expected."""

from __future__ import annotations


class PolicyDataError(ValueError):
    """Episodes the policy cannot use: wrong layout or width, wrong frame rate, empty split."""


class EmptySplitError(PolicyDataError):
    """A split (train / val / test) that should hold episodes holds none."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as asked."""


class ChecksumMismatchError(CheckpointError):
    """The checkpoint's sha256 differs from the one recorded for it."""


class TokenizerMismatchError(CheckpointError):
    """The checkpoint was trained with a different action tokenizer than the one requested."""
