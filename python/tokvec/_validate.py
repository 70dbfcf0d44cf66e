"""Argument checks shared by every public entry point (search, deduplication, clustering, splitting, the token
explorer, `Model`): one implementation of each, so the same mistake gets the same message everywhere. Imports
nothing of tokvec.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tokvec import _scratch

#: rows checked at a time by `nonfinite_row` (a bounded temporary, and a mapped matrix's pages released as it goes).
_FINITE_ROWS = 1 << 16


def nonfinite_row(arr: np.ndarray) -> int | None:
    """The first row of a 2-D float array with NaN or infinity, or None. Checked `_FINITE_ROWS` rows at a time: no
    temporary the size of the array (2.5 GB of booleans for 10M x 256), and the pages of a mapped matrix released
    after each step, so a check of a file larger than memory does not map all of it."""
    for a in range(0, arr.shape[0], _FINITE_ROWS):
        bad = ~np.isfinite(arr[a : a + _FINITE_ROWS]).all(axis=1)
        if bad.any():
            return a + int(np.argmax(bad))
        _scratch.release(arr)
    return None


def matrix(x: Any, name: str) -> np.ndarray:
    """Validates a 2-D float or uint64 array and returns it C-contiguous (float32 or uint64)."""
    if x is None:
        raise TypeError(f"{name} must be a 2-D numpy array, got None")
    arr = np.asarray(x)
    if arr.dtype == np.uint64:
        pass
    elif arr.dtype.kind == "f":
        if arr.dtype != np.float32:
            if arr.size and not np.isfinite(arr).all():
                raise ValueError(f"{name} contains NaN or infinity")
            big = float(np.abs(arr).max()) if arr.size else 0.0
            if big > float(np.finfo(np.float32).max):
                raise ValueError(f"{name} contains NaN or infinity once cast to float32 (|value| up to {big:.3g})")
        arr = arr.astype(np.float32, copy=False)
    else:
        raise TypeError(
            f"{name} must be a float array (float16/32/64) or packed uint64 sign bits, got dtype {arr.dtype}"
        )
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 columns; vectors need at least one dimension")
    if arr.dtype == np.float32 and arr.size and nonfinite_row(arr) is not None:
        raise ValueError(f"{name} contains NaN or infinity")
    return np.ascontiguousarray(arr)


def threshold(t: Any) -> float:
    """A similarity threshold: a real number in [-1, 1]."""
    if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)):
        raise TypeError(f"threshold must be a number in [-1, 1], got {type(t).__name__}")
    t = float(t)
    if not (-1.0 <= t <= 1.0) or math.isnan(t):
        raise ValueError(f"threshold must be in [-1, 1] (a cosine similarity), got {t}")
    return t


def is_int(v: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def int_at_least(v: Any, name: str, lo: int = 1, note: str = "") -> int:
    """An integer >= lo (numpy integers too, bools refused); `note` is added to the message after the bound."""
    if not is_int(v) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}{note}, got {v!r}")
    return int(v)


def positive_int_or_none(v: Any, name: str) -> int | None:
    """None, or an integer >= 1."""
    if v is None:
        return None
    if not is_int(v) or v < 1:
        raise ValueError(f"{name} must be a positive int or None, got {v!r}")
    return int(v)
