"""Distributed deduplication in two levels, with Dask or any executor.

1. Per partition (on workers): embed, greedy-dedup locally; return the kept rows' local indices,
   every dropped row's local dropper, and the kept rows' vectors (nothing else crosses the wire;
   the model travels as a path, see `Model.__reduce__`).
2. Global pass (on the client): greedy dedup over the survivors of all partitions, in global order.

Level 2 alone is not exact: a row dropped locally by a row that the global pass then drops may have
to come back (with rows a < b < c, a ~ b, b ~ c, a !~ c, a in another partition than b and c, the
exact greedy keeps a and c; the local pass drops c because of b). So the global pass repeats until a
fixpoint: every row dropped locally whose dropper did not survive globally is fetched (its vector
re-embedded on a worker) and joins the candidates. At the fixpoint every row outside the candidates
is dropped by an earlier globally kept row, and the result equals the single-machine exact greedy
(`tokvec.dedup_indices` over all rows in order). Usually one or two rounds suffice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokvec.search import _threshold, dedup_indices

__all__ = ["PartitionResult", "dask_deduplicate", "embed_rows", "global_pass", "partition_dedup"]


@dataclass
class PartitionResult:
    """What a worker sends back for one partition."""

    n: int
    kept: np.ndarray  # local indices, ascending
    dup_of: np.ndarray  # local dropper of each row, -1 for kept rows
    vectors: np.ndarray  # embeddings of the kept rows


def partition_dedup(model: Any, texts: Sequence[str], threshold: float) -> PartitionResult:
    """Level 1: embeds one partition and deduplicates it locally (runs on a worker)."""
    texts = list(texts)
    if not texts:
        return PartitionResult(0, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, model.dim), np.float32))
    E = model.embed(texts)
    kept, dup_of, _ = dedup_indices(E, threshold)
    return PartitionResult(len(texts), kept, dup_of, E[kept])


def embed_rows(model: Any, texts: Sequence[str], rows: Sequence[int]) -> np.ndarray:
    """The embeddings of some rows of a partition (runs on a worker)."""
    texts = list(texts)
    return model.embed([texts[int(i)] for i in rows])


def global_pass(
    parts: Sequence[PartitionResult], threshold: float, fetch: Callable[[int, np.ndarray], np.ndarray]
) -> tuple[np.ndarray, int]:
    """Level 2: the exact greedy over all partitions' rows from their local results.

    Args:
        parts: the partitions' results, in global order.
        threshold: the threshold of level 1.
        fetch: `fetch(p, local_rows)` returns the vectors of rows of partition p (called only for
            rows whose local dropper was dropped globally).

    Returns:
        (global indices of the kept rows, ascending; number of rounds).
    """
    t = _threshold(threshold)
    offsets = np.cumsum([0] + [p.n for p in parts])
    cand: dict[int, np.ndarray] = {}
    for p, r in enumerate(parts):
        for i, v in zip(r.kept.tolist(), r.vectors):
            cand[int(offsets[p]) + i] = v
    rounds = 0
    dim = next((r.vectors.shape[1] for r in parts if r.vectors.ndim == 2), 1)
    while True:
        rounds += 1
        order = np.array(sorted(cand), np.int64)
        X = np.stack([cand[g] for g in order.tolist()]) if len(order) else np.zeros((0, dim), np.float32)
        kept_local, _, _ = dedup_indices(X, t)
        kept = order[kept_local]
        kept_set = set(kept.tolist())
        added = 0
        for p, r in enumerate(parts):
            off = int(offsets[p])
            rows = np.flatnonzero(r.dup_of >= 0)
            orphans = [j for j in rows.tolist() if off + j not in cand and off + int(r.dup_of[j]) not in kept_set]
            if orphans:
                vecs = fetch(p, np.array(orphans, np.int64))
                for j, v in zip(orphans, vecs):
                    cand[off + j] = v
                added += len(orphans)
        if added == 0:
            return kept, rounds


def dask_deduplicate(client: Any, model: Any, partitions: Any, threshold: float = 0.9) -> tuple[np.ndarray, int]:
    """Two-level exact deduplication on a Dask cluster.

    Args:
        client: a `dask.distributed.Client`.
        model: a `tokvec.Model` (sent to workers by path; they re-open the memory-mapped files).
        partitions: a list of lists of texts, or a `dask.bag.Bag` (one partition per bag partition).
        threshold: in [-1, 1].

    Returns:
        (global indices of the kept texts, ascending, as `Model.deduplicate(..., return_indices=True)`
        over all texts in order; number of global rounds).
    """
    t = _threshold(threshold)
    if hasattr(partitions, "to_delayed"):
        parts_fut = client.compute(partitions.to_delayed())
    else:
        # hash=False: content-hashed keys are shared between calls with the same data, and one call releasing
        # them can cancel the other's tasks ("lost dependencies")
        parts_fut = client.scatter([list(p) for p in partitions], hash=False)
    model_fut = client.scatter(model, broadcast=True, hash=False)
    results = client.gather([client.submit(partition_dedup, model_fut, p, t, pure=False) for p in parts_fut])

    def fetch(p: int, rows: np.ndarray) -> np.ndarray:
        return client.submit(embed_rows, model_fut, parts_fut[p], rows, pure=False).result()

    return global_pass(results, t, fetch)
