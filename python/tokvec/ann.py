"""Approximate duplicate search for very large sets, on the usearch HNSW index (`pip install 'tokvec[ann]'`): the
`method="hnsw"` of `tokvec.dedup.dedup(..., approx=True)` (its default, "ivf", is the partitioned search of the core,
`_core.dedup_ivf`, which needs no extra package), and `tokvec.dedup_indices(..., approx=True)`.

The exact path (`tokvec.dedup_indices`, `_core.duplicate_pairs`) scores every pair that could be above the
threshold, so its cost grows with n². Here each vector only meets its `neighbors` nearest vectors found by a
usearch index (inner-product metric):

1. build a usearch `Index` over the vectors (`dtype` f32, f16 or i8: how usearch stores them);
2. search every vector's `neighbors` nearest neighbours (itself excluded);
3. re-score every candidate pair exactly with the *canonical* dot product of the Rust core (`_core.dot_pairs`,
   the function behind every score of tokvec), so a found pair has the very score the exact path gives it; keep
   the pairs above the threshold;
4. resolve them with the same greedy pass as the exact path (`_core.dedup_resolve`, in Rust).

What this guarantees and what it does not:

- No false removal: every removed item is removed because of a pair whose exact score is above the
  threshold with an item that is kept. usearch's own (approximate, quantized) distances never decide anything.
- Missed pairs: a duplicate pair that the index does not return is not seen. The greedy result is then the
  exact greedy result *of the pairs found*, which can differ from the exact run both ways: a missed pair keeps
  an item that exact removes, and that kept item may in turn remove a later item that exact keeps. So the kept
  set is neither a superset nor a subset of the exact one in general; measured differences are in README.md
  ("Deduplication").
- usearch builds its graph with several threads, so the candidates (and, rarely, the result) can change from
  one run to the next; with `threads=1` a run is repeatable.

Performance notes: usearch's i8 storage (vectors scaled by 127) is the default: on the default model's vectors
of 20,000 Wikipedia sentences it found 1,245 of the 1,246 pairs above 0.9 in 7.7 s, against 1,246 in 10.2 s
for f16 and 23.4 s for f32 (2 busy cores), and the exact re-scoring makes the storage precision irrelevant to
the scores. Non-normalized vectors need f16 or f32 (i8 clips components outside [-1, 1], so it is refused).
The index build and search dominate the time (README.md, "Deduplication"); the re-scoring runs in the core,
in parallel, without gathering the rows.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from tokvec import _core
from tokvec._validate import int_at_least

__all__ = ["DTYPES", "approx_dedup", "approx_pairs", "approx_pairs_cross", "canonical_dot_pairs"]

#: usearch storage types accepted by `dtype=`.
DTYPES = ("f32", "f16", "i8")


def _usearch() -> Any:
    try:
        from usearch.index import Index
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "approximate deduplication needs usearch: pip install 'tokvec[ann]' (or pip install usearch)"
        ) from None
    return Index


def _threads(threads: int | None) -> int:
    if threads is not None:
        return int_at_least(threads, "threads", 0, " (0: all cores)")
    # the same knob as the Rust core's rayon pool
    env = os.environ.get("RAYON_NUM_THREADS", "")
    return int(env) if env.isdigit() else 0


def _check(neighbors: Any, dtype: Any) -> int:
    n = int_at_least(neighbors, "neighbors")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return n


def canonical_dot_pairs(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The core's canonical f32 dot product `a[i[p]] . b[j[p]]` for every pair p (`_core.dot_pairs`), bit-identical
    to the scores of `tokvec.duplicate_pairs` / `tokvec.topk`.

    Args:
        a: float32 (na, d).
        b: float32 (nb, d).
        i: integer (m,) rows of `a`.
        j: integer (m,) rows of `b`.

    Returns:
        float32 (m,).
    """
    return _core.dot_pairs(
        np.ascontiguousarray(a, np.float32),
        np.ascontiguousarray(b, np.float32),
        np.ascontiguousarray(i, np.int64),
        np.ascontiguousarray(j, np.int64),
    )


def _index(vectors: np.ndarray, dtype: str, threads: int, connectivity: int | None, expansion_add: int | None,
           expansion_search: int | None) -> Any:
    Index = _usearch()
    kw: dict[str, Any] = {}
    if connectivity is not None:
        kw["connectivity"] = connectivity
    if expansion_add is not None:
        kw["expansion_add"] = expansion_add
    if expansion_search is not None:
        kw["expansion_search"] = expansion_search
    index = Index(ndim=vectors.shape[1], metric="ip", dtype=dtype, **kw)
    index.add(np.arange(vectors.shape[0], dtype=np.uint64), vectors, threads=threads)
    return index


def _search(index: Any, queries: np.ndarray, k: int, threads: int, n_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(query row, index row) of every neighbour found, as two int64 arrays."""
    m = index.search(queries, k, threads=threads)
    keys = np.asarray(m.keys).reshape(queries.shape[0], -1)
    counts = np.asarray(m.counts).reshape(-1)
    valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
    keys = keys.astype(np.int64, copy=False)  # missing slots hold a sentinel: masked out here
    valid &= (keys >= 0) & (keys < n_index)
    q = np.broadcast_to(np.arange(queries.shape[0], dtype=np.int64)[:, None], keys.shape)
    return q[valid], keys[valid]


def _stats(stats: dict[str, Any] | None, t0: float, t1: float, t2: float, candidates: int, pairs: int) -> None:
    if stats is not None:
        stats.update(index_seconds=round(t1 - t0, 3), search_seconds=round(t2 - t1, 3),
                     rescore_seconds=round(time.perf_counter() - t2, 3), candidates=candidates, pairs=pairs)


def _neighbours(
    base: np.ndarray,
    queries: np.ndarray,
    kk: int,
    dtype: str,
    threads: int | None,
    connectivity: int | None,
    expansion_add: int | None,
    expansion_search: int | None,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Indexes `base`, searches the `kk` nearest rows of `base` for every row of `queries` and frees the index.

    Returns (query row, base row) int64 of the found pairs and the times (start, index built, search done).
    """
    t0 = time.perf_counter()
    _usearch()  # the same inputs need the same extra, whatever their size
    if dtype == "i8" and base.size and float(np.abs(base).max()) > 1.0:
        # usearch maps [-1, 1] to [-127, 127] and clips the rest: the graph would be built on wrong vectors
        raise ValueError("dtype='i8' needs components in [-1, 1] (L2-normalized vectors); use dtype='f16' or 'f32'")
    nb, nq = base.shape[0], queries.shape[0]
    if kk >= nb:
        # as many neighbours as rows: every pair is a candidate. HNSW's graph search does not promise to return every
        # row even then (near-identical rows crowd each other out), so the pairs are listed instead of searched.
        q = np.repeat(np.arange(nq, dtype=np.int64), nb)
        c = np.tile(np.arange(nb, dtype=np.int64), nq)
        return q, c, (t0, t0, time.perf_counter())
    th = _threads(threads)
    es = max(kk, expansion_search or 0) if expansion_search is not None or kk > 64 else None
    index = _index(base, dtype, th, connectivity, expansion_add, es)
    t1 = time.perf_counter()
    q, c = _search(index, queries, kk, th, base.shape[0])
    del index
    return q, c, (t0, t1, time.perf_counter())


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = np.zeros(0, np.int64)
    return z, z.copy(), np.zeros(0, np.float32)


def approx_pairs(e: np.ndarray, threshold: float, **kw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, score), i < j, score > threshold, among each row's `neighbors` nearest rows in a usearch
    index; scores are exact (canonical dot). A subset of `tokvec.duplicate_pairs(e, threshold)`.

    Args:
        e: float32 (n, d), C-contiguous, finite (validated by the caller).
        threshold: pairs with score > threshold are kept.
        **kw: the index settings, keyword-only:
            neighbors: neighbours searched per row (itself excluded), default 32.
            dtype: usearch storage, "i8" (default), "f16" or "f32".
            threads: usearch threads; None (default) uses RAYON_NUM_THREADS when set, else all cores (0).
            connectivity, expansion_add, expansion_search: usearch HNSW settings (None: usearch's defaults;
                expansion_search is raised to at least neighbors + 1). expansion_add defaults to 64 instead of
                usearch's 128: on 100k Wikipedia sentences it built the index 1.3x faster with the same recall.
            stats: when given, a dict filled with `index_seconds`, `search_seconds`, `rescore_seconds`,
                `candidates` (distinct pairs re-scored) and `pairs` (kept).

    Returns:
        (i int64, j int64, score float32), sorted by (i, j).
    """
    return _approx(e, None, threshold, **kw)


def approx_pairs_cross(
    a: np.ndarray, b: np.ndarray, threshold: float, **kw: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i row of `a`, j row of `b`, score) with score > threshold among each row of `b`'s `neighbors`
    nearest rows of `a` (index over `a`); exact scores. A subset of `_core.duplicate_pairs_cross(a, b, t)`.
    The keywords are `approx_pairs`'.

    Returns:
        (i int64, j int64, score float32), sorted by (i, j).
    """
    return _approx(a, b, threshold, **kw)


def _approx(
    a: np.ndarray,
    b: np.ndarray | None,
    threshold: float,
    *,
    neighbors: int = 32,
    dtype: str = "i8",
    threads: int | None = None,
    connectivity: int | None = None,
    expansion_add: int | None = 64,
    expansion_search: int | None = None,
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`approx_pairs` (b None: the rows of `a` among themselves) and `approx_pairs_cross`."""
    k = _check(neighbors, dtype)
    hnsw = (dtype, threads, connectivity, expansion_add, expansion_search)
    if b is None:
        n = a.shape[0]
        if n < 2:
            return _empty()
        q, c, (t0, t1, t2) = _neighbours(a, a, min(k + 1, n), *hnsw)  # +1: a row normally finds itself first
        keep = q != c
        lo, hi = np.minimum(q[keep], c[keep]), np.maximum(q[keep], c[keep])
        code = np.unique(lo * n + hi)  # each unordered pair once, sorted by (i, j)
        i, j = code // n, code % n
        s = canonical_dot_pairs(a, a, i, j)
    else:
        if a.shape[0] == 0 or b.shape[0] == 0:
            return _empty()
        qb, ia, (t0, t1, t2) = _neighbours(a, b, min(k, a.shape[0]), *hnsw)
        code = np.unique(ia * b.shape[0] + qb)
        i, j = code // b.shape[0], code % b.shape[0]
        s = canonical_dot_pairs(a, b, i, j)
    above = s > np.float32(threshold)
    _stats(stats, t0, t1, t2, int(code.shape[0]), int(above.sum()))
    return i[above], j[above], s[above]


def approx_dedup(e: np.ndarray, threshold: float, **kw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy deduplication in input order over the pairs of `approx_pairs` (same keywords), resolved by the
    exact path's greedy pass (`_core.dedup_resolve`).

    Returns:
        (kept int64 ascending, dup_of int64 (n,), -1 for kept rows, score float32 (n,), NaN for kept rows).
    """
    i, j, s = approx_pairs(e, threshold, **kw)
    return _core.dedup_resolve(e.shape[0], i, j, s, threshold)
