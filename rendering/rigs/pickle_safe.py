"""A restricted unpickler for FLAME model files: arrays and nothing else.

FLAME's ``generic_model.pkl`` is a Python 2 pickle of a dict whose values are NumPy arrays,
``scipy.sparse`` matrices (the joint regressor) and ``chumpy.Ch`` objects wrapping arrays. A plain
``pickle.load`` of a file from outside would run whatever code the file names; this loader only
admits the globals that rebuild NumPy arrays and dtypes, and stands in inert placeholder classes
for the sparse and chumpy containers, whose state (plain arrays) is then read out without
importing chumpy or calling any of their methods. Any other global is refused.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global this loader does not admit."""


class _Placeholder:
    """Stands in for a container class from the file; keeps only its pickled state."""

    _source = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        self._state = state


class SparsePlaceholder(_Placeholder):
    _source = "scipy.sparse"


class ChumpyPlaceholder(_Placeholder):
    _source = "chumpy"


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"refusing codec {encoding!r}")
    return text.encode("latin1")


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor``, restricted to our placeholders on ``object``."""
    if not (isinstance(cls, type) and issubclass(cls, _Placeholder)) or base is not object:
        raise UnsafePickleError(f"refusing to reconstruct {cls!r} on {base!r}")
    obj = cls.__new__(cls)
    if state is not None:
        obj.__setstate__(state)
    return obj


def _numpy_global(module: str, name: str) -> Any:
    from numpy._core import multiarray  # numpy >= 2; the old path is an alias

    if name == "_reconstruct":
        return multiarray._reconstruct
    if name == "scalar":
        return multiarray.scalar
    if name == "ndarray":
        return np.ndarray
    if name == "dtype":
        return np.dtype
    raise UnsafePickleError(f"refusing global {module}.{name}")


class ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct", "scalar", "ndarray", "dtype"
        ):
            return _numpy_global(module, name)
        if module == "_codecs" and name == "encode":
            return _latin1_encode  # how Python 3 writes bytes into protocol-2 pickles
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return _reconstructor
        if module in ("__builtin__", "builtins") and name == "object":
            return object
        if module.startswith("scipy.sparse") and name in (
            "csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"
        ):
            return type(name, (SparsePlaceholder,), {"_format": name[:3]})
        if module.startswith("chumpy"):
            return type(name, (ChumpyPlaceholder,), {})
        raise UnsafePickleError(f"refusing global {module}.{name}")


def to_array(value: Any, *, key: str) -> np.ndarray:
    """A loaded value as a dense NumPy array (sparse and chumpy containers unwrapped)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, ChumpyPlaceholder):
        state = getattr(value, "_state", None)
        x = state.get("x") if isinstance(state, dict) else None
        if isinstance(x, np.ndarray):
            return x
        raise ValueError(f"{key}: a chumpy object without a plain array value")
    if isinstance(value, SparsePlaceholder):
        state = getattr(value, "_state", None) or {}
        if not isinstance(state, dict):
            raise ValueError(f"{key}: unreadable sparse matrix")
        shape = tuple(state.get("_shape") or state.get("shape") or ())
        fmt = getattr(value, "_format", "csc")
        try:
            data = np.asarray(state["data"], dtype=np.float64)
            if fmt == "coo":
                rows, cols = np.asarray(state["row"]), np.asarray(state["col"])
            else:
                indices, indptr = np.asarray(state["indices"]), np.asarray(state["indptr"])
                major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
                rows, cols = (indices, major) if fmt == "csc" else (major, indices)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{key}: unreadable sparse matrix ({exc})") from exc
        if len(shape) != 2:
            raise ValueError(f"{key}: sparse matrix without a 2-D shape")
        dense = np.zeros(shape, dtype=np.float64)
        np.add.at(dense, (rows, cols), data)
        return dense
    if isinstance(value, list | tuple):
        return np.asarray(value)
    raise ValueError(f"{key}: expected an array, got {type(value).__name__}")


def load_arrays(data: bytes) -> dict[str, Any]:
    """Unpickle ``data`` (a dict) with the restricted loader. Python 2 pickles need latin-1
    for their byte strings, which is what FLAME's files are."""
    try:
        obj = ArrayOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated, not a pickle, …
        raise pickle.UnpicklingError(f"not a readable pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"expected a dict of arrays, got {type(obj).__name__}")
    return obj
