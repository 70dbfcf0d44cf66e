"""Similarity search on the user's own vectors: exact top-k, all pairs above a threshold, greedy
deduplication. float32 vectors use inner products (cosine for L2-normalized rows); packed uint64
sign bits (from `binary=True` models) use `1 - 2 * hamming / bits`. All work runs in the Rust core
with the GIL released.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tokvec import _core
from tokvec._scratch import bounded_residency
from tokvec._validate import int_at_least, is_int, matrix, positive_int_or_none
from tokvec._validate import threshold as check_threshold

__all__ = ["Approx", "approx_options", "dedup_indices", "duplicate_pairs", "topk"]


@dataclass(frozen=True)
class Approx:
    """How `approx=True` searches (the keywords of `dedup`), checked when made, so a bad value fails before any
    work: the partitioned search of the core (k-means lists; `nprobe` lists probed of `nlist`)."""

    nprobe: int | None = None
    nlist: int | None = None

    def __post_init__(self) -> None:
        nprobe, nlist = positive_int_or_none(self.nprobe, "nprobe"), positive_int_or_none(self.nlist, "nlist")
        if nprobe is not None and nlist is not None and nprobe > nlist:
            raise ValueError(f"nprobe must be at most nlist ({nlist}), got {nprobe}")
        object.__setattr__(self, "nprobe", nprobe)
        object.__setattr__(self, "nlist", nlist)


def approx_options(approx: bool | Approx, **kw: Any) -> Approx | None:
    """`approx` as an `Approx` (None for an exact run): True takes the keywords `kw` of `Approx`."""
    if isinstance(approx, Approx):
        return approx
    return Approx(**kw) if approx else None


def _bits(arr: np.ndarray, bits: int | None) -> int:
    words = arr.shape[1]
    if bits is None:
        return 64 * words
    if not is_int(bits) or not (64 * (words - 1) < bits <= 64 * words):
        raise ValueError(f"bits must be in ({64 * (words - 1)}, {64 * words}] for {words} uint64 words, got {bits!r}")
    return int(bits)


def topk(queries: Any, corpus: Any, k: int = 10, *, bits: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine for L2-normalized rows) for every query.

    The full query × corpus matrix is never built: the corpus is scanned in cache-sized blocks
    with a bounded heap per query.

    Args:
        queries: (nq, d) float array, or (d,) for one query; or packed uint64 sign bits (nq, words).
        corpus: (nc, d) array of the same kind.
        k: neighbours per query; clipped to the corpus size.
        bits: for uint64 inputs, the number of meaningful bits (default 64 × words).

    Returns:
        (scores float32, indices int64), each (nq, min(k, nc)) — or (min(k, nc),) for a 1-D query —
        best first, ties broken by the lower index.

    Raises:
        TypeError: wrong dtype or argument type.
        ValueError: wrong shape, mismatched dimensions, k < 1, NaN/inf values.
    """
    single = np.ndim(queries) == 1
    q = matrix(np.reshape(queries, (1, -1)) if single else queries, "queries")
    c = matrix(corpus, "corpus")
    if q.dtype != c.dtype:
        raise TypeError(f"queries ({q.dtype}) and corpus ({c.dtype}) must be the same kind of vectors")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} columns but corpus has {c.shape[1]}")
    kk = min(int_at_least(k, "k"), c.shape[0])
    if kk == 0 or q.shape[0] == 0:
        s, i = np.zeros((q.shape[0], kk), np.float32), np.zeros((q.shape[0], kk), np.int64)
    elif q.dtype == np.uint64:
        s, i = _core.topk_binary(q, c, kk, _bits(c, bits))
    else:
        s, i = _core.topk(q, c, kk)
    return (s[0], i[0]) if single else (s, i)


def duplicate_pairs(
    embeddings: Any, threshold: float = 0.9, *, bits: int | None = None, as_arrays: bool = False
) -> list[tuple[int, int, float]] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, score) with i < j and score > threshold, sorted by (i, j).

    Exact: blocked all-pairs in Rust with pruning that never drops a pair above the threshold;
    never builds an n × n matrix.

    Args:
        embeddings: (n, d) float array (rows L2-normalized for cosine), or packed uint64 sign bits.
        threshold: in [-1, 1].
        bits: for uint64 inputs, the number of meaningful bits.
        as_arrays: return three arrays (i int64, j int64, score float32) instead of a list of tuples.

    Returns:
        list of (i, j, score), or the three arrays.
    """
    e = matrix(embeddings, "embeddings")
    t = check_threshold(threshold)
    if e.shape[0] < 2:
        i = j = np.zeros(0, np.int64)
        s = np.zeros(0, np.float32)
    elif e.dtype == np.uint64:
        i, j, s = _core.duplicate_pairs_binary(e, t, _bits(e, bits))
    else:
        i, j, s = _core.duplicate_pairs(e, t)
    if as_arrays:
        return i, j, s
    return list(zip(i.tolist(), j.tolist(), s.tolist()))


def dedup_indices(
    embeddings: Any,
    threshold: float = 0.9,
    *,
    bits: int | None = None,
    approx: bool | Approx = False,
    nprobe: int | None = None,
    nlist: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy deduplication in input order: item i is dropped when its similarity with an earlier
    *kept* item is > threshold.

    Args:
        embeddings: (n, d) float array or packed uint64 sign bits.
        threshold: in [-1, 1].
        bits: for uint64 inputs, the number of meaningful bits.
        approx: True (or an `Approx`) for very large sets: each item meets only some of the earlier items
            (the kept items stored in the `nprobe` nearest of `nlist` k-means lists, in the core). Scores are
            exact and the greedy pass is the same: every removed item is above the threshold with a kept item,
            but pairs the search does not meet are not seen. Float vectors only; `tokvec.dedup.dedup` documents
            the knobs and their cost.
        nprobe: with approx, lists probed per item (default 8; 16 once more than 3 items were removed per
            kept one).
        nlist: with approx, number of lists (default 2 sqrt(n)).

    Returns:
        (kept int64 indices ascending, dup_of int64 [n] — the kept item each dropped item
        duplicates, -1 for kept items —, score float32 [n], NaN for kept items).
    """
    e = matrix(embeddings, "embeddings")
    t = check_threshold(threshold)
    a = approx_options(approx, nprobe=nprobe, nlist=nlist)
    n = e.shape[0]
    if a is not None and e.dtype == np.uint64:
        raise ValueError("approx=True takes float vectors, not packed sign bits")
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if n == 1:
        return np.zeros(1, np.int64), np.full(1, -1, np.int64), np.full(1, np.nan, np.float32)
    if e.dtype == np.uint64:
        return _core.dedup_binary(e, t, _bits(e, bits))
    if a is not None:
        with bounded_residency(e):
            kept, dup_of, score, _ = _core.dedup_ivf(e, t, nlist=a.nlist, nprobe=a.nprobe)
        return kept, dup_of, score
    return _core.dedup(e, t)
