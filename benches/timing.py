"""The timing rule of the benchmark scripts: the best of `repeat` runs (the least disturbed by other work on a shared
machine), with the last run's result."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def best(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """(fastest wall-clock seconds of `repeat` calls of `fn`, the result of the last call)."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    t = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out
