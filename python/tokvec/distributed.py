"""Distributed deduplication in two levels, with Dask or any executor.

0. Exact pass (texts): every worker sends the 16-byte `text_keys` of its partition's texts and which
   are empty; the client finds identical texts across all partitions (first occurrence wins) as
   `Model.deduplicate` does, and tells each worker which of its texts need a vector.
1. Per partition (on workers): embed those texts, greedy-dedup locally; return the kept rows' local
   indices, every dropped row's local dropper, and the kept rows' vectors (nothing else crosses the
   wire; the model travels as a path, see `Model.__reduce__`).
2. Global pass (on the client): greedy dedup over the survivors of all partitions, in global order.

Level 2 alone is not exact: a row dropped locally by a row that the global pass then drops may have
to come back (with rows a < b < c, a ~ b, b ~ c, a !~ c, a in another partition than b and c, the
exact greedy keeps a and c; the local pass drops c because of b). So the global pass repeats until a
fixpoint: every row dropped locally whose dropper did not survive globally is fetched (its vector
re-embedded on a worker) and joins the candidates. At the fixpoint every row outside the candidates
is dropped by an earlier globally kept row, and the result equals the single-machine exact greedy
(`Model.deduplicate` over all texts in order). Usually one or two rounds suffice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokvec._embedder import UnitEmbedder
from tokvec._validate import threshold as _threshold
from tokvec.dedup import is_empty, text_keys
from tokvec.search import dedup_indices

__all__ = ["PartitionResult", "dask_deduplicate", "embed_rows", "exact_pass", "global_pass", "partition_dedup",
           "partition_keys"]


@dataclass
class PartitionResult:
    """What a worker sends back for one partition."""

    n: int
    kept: np.ndarray  # local indices, ascending
    dup_of: np.ndarray  # local dropper of each row, -1 for kept rows
    vectors: np.ndarray  # embeddings of the kept rows


def partition_keys(texts: Sequence[str]) -> tuple[list[bytes], np.ndarray]:
    """Level 0: the text keys of one partition and which texts are empty (runs on a worker)."""
    texts = list(texts)
    return text_keys(texts), np.array([is_empty(t) for t in texts], bool)


def partition_dedup(model: UnitEmbedder, texts: Sequence[str], threshold: float, rows: Sequence[int] | None = None
                    ) -> PartitionResult:
    """Level 1: embeds one partition's rows (all, or `rows`: the texts that need a vector) and
    deduplicates them locally (runs on a worker). Indices in the result count those rows only."""
    texts = list(texts)
    if rows is not None:
        texts = [texts[int(i)] for i in rows]
    if not texts:
        return PartitionResult(0, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, model.dim), np.float32))
    E = model._unit_embed(texts)
    kept, dup_of, _ = dedup_indices(E, threshold)
    return PartitionResult(len(texts), kept, dup_of, E[kept])


def embed_rows(model: UnitEmbedder, texts: Sequence[str], rows: Sequence[int]) -> np.ndarray:
    """The unit vectors of some rows of a partition (runs on a worker)."""
    texts = list(texts)
    return model._unit_embed([texts[int(i)] for i in rows])


def exact_pass(keys: Sequence[tuple[Sequence[bytes], np.ndarray]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Level 0 on the client: from each partition's (text keys, empty flags), the local rows that need a
    vector (the first occurrence of each non-empty text over all partitions, in global order) and the
    local rows of empty texts (kept, as `Model.deduplicate` keeps them)."""
    seen: set[bytes] = set()
    vec, empty = [], []
    for ks, em in keys:
        rows = []
        for i, k in enumerate(ks):
            if not em[i] and k not in seen:
                seen.add(k)
                rows.append(i)
        vec.append(np.array(rows, np.int64))
        empty.append(np.flatnonzero(em).astype(np.int64))
    return vec, empty


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
    keys = client.gather([client.submit(partition_keys, p, pure=False) for p in parts_fut])
    vec, empty = exact_pass(keys)
    offsets = np.cumsum([0] + [len(k) for k, _ in keys])
    if t >= 1.0:  # identical texts only, as Model.deduplicate
        kept_v = np.arange(sum(len(v) for v in vec))
        rounds = 0
    else:
        results = client.gather(
            [client.submit(partition_dedup, model_fut, p, t, vec[i], pure=False) for i, p in enumerate(parts_fut)]
        )

        def fetch(p: int, rows: np.ndarray) -> np.ndarray:
            return client.submit(embed_rows, model_fut, parts_fut[p], vec[p][rows], pure=False).result()

        kept_v, rounds = global_pass(results, t, fetch)
    vec_global = np.concatenate([offsets[p] + v for p, v in enumerate(vec)] + [np.zeros(0, np.int64)])
    empties = np.concatenate([offsets[p] + e for p, e in enumerate(empty)] + [np.zeros(0, np.int64)])
    return np.sort(np.concatenate([vec_global[kept_v], empties])).astype(np.int64), rounds
