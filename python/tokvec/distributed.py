"""Distributed deduplication: exact in two levels (Dask or any executor), or partitioned (IVF) on Dask or Ray Data.

Exact, in two levels (`dask_deduplicate`):

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

Partitioned (`dask_partitioned_dedup`, `ray_partitioned_dedup`): the single-machine `_core.dedup_ivf` split into
stages that are pure functions of arrays, so any engine can run them (docs/distributed.md):

1. embed each partition (workers);
2. the k-means centroids from the evenly spaced rows `t * n // sample` that `_core.dedup_ivf` samples, trained on
   the driver by the core's own k-means (`_core.ivf_train`), so they are the single-machine centroids bit for bit;
3. each row's `nprobe` nearest lists (`_core.ivf_assign`, workers), and one copy of the row (its vector, its global
   index and its lists) for each of them: the shuffle by list;
4. per list (workers): the pairs (i, j), i < j, i stored in the list (the list is among its first `spill`), j any
   row of the list, above the threshold, from the core's exact cross search (`_core.duplicate_pairs_cross`: the
   canonical scores, the stored row first as in `dedup_ivf`). A pair that meets in several lists is kept in one
   only: the first list of i's spill lists that j probes;
5. on the driver: the greedy resolution of all pairs (`_core.dedup_resolve`: highest score, lowest row on ties).

`dedup_ivf` sees a pair (i < j) iff one of the spill lists of i is among the probe lists of j, and resolves the
pairs above the threshold greedily with the same rule; so with the same settings the result (kept rows, dup_of,
scores) is that of `_core.dedup_ivf(all vectors, threshold, nlist=..., nprobe=..., spill=...)` bit for bit.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokvec import _core
from tokvec._embedder import UnitEmbedder
from tokvec._validate import threshold as _threshold
from tokvec.dedup import is_empty, text_keys
from tokvec.search import dedup_indices

__all__ = [
    "ListRows",
    "PartitionResult",
    "PartitionedDedup",
    "dask_deduplicate",
    "dask_partitioned_dedup",
    "embed_rows",
    "exact_pass",
    "global_pass",
    "ivf_plan",
    "list_pairs",
    "partition_dedup",
    "partition_keys",
    "ray_partitioned_dedup",
    "resolve_pairs",
    "route_rows",
    "sample_rows",
    "train_centroids",
]


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


def partition_dedup(
    model: UnitEmbedder, texts: Sequence[str], threshold: float, rows: Sequence[int] | None = None
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


# ---------------------------------------------------------------------------------------------------------------
# Partitioned (IVF) deduplication: the stages, engine-agnostic
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PartitionedDedup:
    """The result of a partitioned deduplication, over the global row order (as `_core.dedup_ivf` returns it)."""

    kept: np.ndarray  # global indices of the kept rows, ascending
    dup_of: np.ndarray  # (n,) the kept row each removed row duplicates, -1 for kept rows
    score: np.ndarray  # (n,) float32 canonical score of that pair, NaN for kept rows
    centroids: np.ndarray  # (nlist, d) the lists
    stats: dict[str, Any] = field(default_factory=dict)  # settings, counts and seconds per stage


@dataclass
class ListRows:
    """Row copies on their way to their lists (the shuffle's payload): for copy t, the list `lists[t]`, the
    row's global index `gid[t]`, its vector `vectors[t]` and its nearest lists `probes[t]` (nearest first)."""

    lists: np.ndarray  # (m,) uint32
    gid: np.ndarray  # (m,) int64
    vectors: np.ndarray  # (m, d) float32
    probes: np.ndarray  # (m, nprobe) uint32

    @staticmethod
    def concat(parts: Iterable[ListRows]) -> ListRows:
        parts = list(parts)
        return ListRows(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("lists", "gid", "vectors", "probes"))
        )


def ivf_plan(
    n: int,
    d: int,
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    spill: int | None = None,
    sample: int | None = None,
) -> dict[str, int]:
    """The settings `_core.dedup_ivf` takes for n rows of d columns (its defaults and clamps): nlist, nprobe,
    sample, spill. nprobe and spill are those of its first block, which every row uses here: a single machine
    keeps them while its lists' copies of the kept rows fit in 2 GiB (about 1.9M kept rows of 256 dimensions) and
    then stores fewer copies, unless they are given."""
    return dict(_core.ivf_settings(n, d, nlist=nlist, nprobe=nprobe, sample=sample, spill=spill))


def sample_rows(n: int, sample: int) -> np.ndarray:
    """The global rows the k-means trains on: row `t * n // sample` for t < sample, the evenly spaced rows of the
    core's k-means (`ivf::train`), so the driver trains on the very rows a single machine would."""
    return (np.arange(sample, dtype=np.uint64) * np.uint64(n) // np.uint64(max(sample, 1))).astype(np.int64)


def train_centroids(x: np.ndarray, nlist: int) -> np.ndarray:
    """Centroids from the sampled rows `x` (in sample order): the core's k-means with sample = all of them."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return _core.ivf_train(x, nlist, sample=len(x))


def route_rows(vectors: np.ndarray, offset: int, centroids: np.ndarray, nprobe: int, buckets: int) -> list[ListRows]:
    """Stage 3 on one partition (rows `offset ...` of the input): each row's `nprobe` nearest lists and one copy
    per list, split into `buckets` pieces (list l goes to piece l % buckets, one per group task)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    probes = _core.ivf_assign(vectors, np.ascontiguousarray(centroids, dtype=np.float32), nprobe)
    m = len(vectors)
    lists = probes.reshape(-1)
    rows = np.repeat(np.arange(m, dtype=np.int64), nprobe)
    out = []
    for b in range(buckets):
        sel = rows[lists % buckets == b] if buckets > 1 else rows
        lsel = lists[lists % buckets == b] if buckets > 1 else lists
        out.append(ListRows(lsel.astype(np.uint32), sel + offset, vectors[sel], probes[sel]))
    return out


#: Probing rows of a list scored at once in `list_pairs` (against the stored rows before them). Smaller blocks
#: score fewer pairs but call the core more often: on 100,000 sentences, one thread, blocks of 512 / 2,048 / whole
#: lists took 5.3 / 3.7 / 3.7 s for 0.44 / 0.64 / 0.69e9 pairs.
_PAIR_BLOCK = 2048


def list_pairs(rows: ListRows, threshold: float, spill: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Stage 4 on the copies of one or more lists: per list, the pairs (i, j), i < j global rows, i stored in the
    list (among its first `spill` lists), with canonical score dot(x_i, x_j) > threshold; a pair is reported by
    one list only (the first of i's spill lists that j probes). Returns (i, j, score, pairs scored)."""
    t = _threshold(threshold)
    order = np.lexsort((rows.gid, rows.lists))
    lists = rows.lists[order]
    bounds = np.flatnonzero(np.diff(lists.astype(np.int64))) + 1
    out_i, out_j, out_s = [], [], []
    scored = 0
    for seg in np.split(order, bounds):
        if len(seg) < 2:
            continue
        lst = int(rows.lists[seg[0]])
        gid, probes = rows.gid[seg], rows.probes[seg]
        stored = np.flatnonzero((probes[:, :spill] == lst).any(axis=1))
        if len(stored) == 0:
            continue
        vec = np.ascontiguousarray(rows.vectors[seg])
        xs = np.ascontiguousarray(vec[stored])
        # the rows are in global order: a block of rows only needs the stored rows before its end (i < j)
        for p0 in range(0, len(seg), _PAIR_BLOCK):
            p1 = min(p0 + _PAIR_BLOCK, len(seg))
            ns = int(np.searchsorted(stored, p1 - 1))
            if ns == 0:
                continue
            scored += ns * (p1 - p0)
            a, b, s = _core.duplicate_pairs_cross(xs[:ns], vec[p0:p1], t)
            b = b + p0
            keep = stored[a] < b
            a, b, s = stored[a[keep]], b[keep], s[keep]
            if len(a):
                # the list that reports the pair: i's first spill list among j's probes
                si, pj = probes[a, :spill], probes[b]
                hit = (si[:, :, None] == pj[:, None, :]).any(axis=2)
                mine = si[np.arange(len(a)), hit.argmax(axis=1)] == lst
                out_i.append(gid[a[mine]])
                out_j.append(gid[b[mine]])
                out_s.append(s[mine])
    z = np.zeros(0, np.int64)
    return (
        np.concatenate(out_i + [z]),
        np.concatenate(out_j + [z]),
        np.concatenate(out_s + [np.zeros(0, np.float32)]),
        scored,
    )


def resolve_pairs(
    n: int, pairs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, int]], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Stage 5 on the driver: the greedy resolution of every list's pairs (`_core.dedup_resolve`, the rule of the
    core's dedup). Returns (kept, dup_of, score, number of pairs)."""
    pairs = list(pairs)
    i = np.concatenate([p[0] for p in pairs] + [np.zeros(0, np.int64)])
    j = np.concatenate([p[1] for p in pairs] + [np.zeros(0, np.int64)])
    s = np.concatenate([p[2] for p in pairs] + [np.zeros(0, np.float32)])
    kept, dup_of, score = _core.dedup_resolve(n, i, j, s, _threshold(threshold))
    return kept, dup_of, score, len(i)


def _embed(model: UnitEmbedder, texts: Any) -> np.ndarray:
    """Stage 1 on one partition: unit vectors of its texts (a list, a pandas Series or any iterable)."""
    texts = texts.tolist() if hasattr(texts, "tolist") else list(texts)
    if not texts:
        return np.zeros((0, model.dim), np.float32)
    return model._unit_embed(texts)


def _take(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return vectors[rows]


def _pairs_of(
    pieces: Sequence[ListRows], threshold: float, spill: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """Stage 4 on one bucket's pieces, and the seconds the worker spent on it (the transfers aside)."""
    t = time.perf_counter()
    i, j, s, scored = list_pairs(ListRows.concat(pieces), threshold, spill)
    return i, j, s, scored, time.perf_counter() - t


def _empty(d: int, stats: dict[str, Any]) -> PartitionedDedup:
    z = np.zeros(0, np.int64)
    return PartitionedDedup(z, z, np.zeros(0, np.float32), np.zeros((0, d), np.float32), stats)


def dask_partitioned_dedup(
    client: Any,
    model: Any,
    partitions_or_bag: Any,
    threshold: float = 0.9,
    *,
    nprobe: int | None = None,
    nlist: int | None = None,
    spill: int | None = None,
    sample: int | None = None,
    column: str = "text",
    buckets: int | None = None,
) -> PartitionedDedup:
    """Partitioned (IVF) deduplication on a Dask cluster: the result of `_core.dedup_ivf` over all texts' vectors
    in order, with the same settings (see the module docs for the stages).

    Args:
        client: a `dask.distributed.Client`.
        model: a `tokvec.Model` (sent to workers by path; they re-open the memory-mapped files).
        partitions_or_bag: a list of lists of texts, a `dask.bag.Bag` of texts, or a `dask.dataframe` Series of
            texts or DataFrame with a `column` of texts; the global order is the partitions' order.
        threshold: in [-1, 1].
        nprobe, nlist, spill, sample: as `_core.dedup_ivf` (None: its defaults for the number of texts; nprobe and
            spill those of its first block, see `ivf_plan`).
        column: the text column of a DataFrame.
        buckets: group tasks of the shuffle (None: 4 per worker thread); each takes the lists l % buckets.

    Returns:
        a `PartitionedDedup`; `stats` has the settings, `pairs_scored`, `pairs_found`, the wall `*_seconds` per stage
        and `pairs_compute_seconds` (the group tasks' own time, summed over tasks).
    """
    from dask.distributed import wait

    t = _threshold(threshold)
    ivf_plan(1, model.dim, nlist=nlist, nprobe=nprobe, spill=spill, sample=sample)  # bad settings fail first
    t0 = time.perf_counter()
    if hasattr(partitions_or_bag, "to_delayed"):
        coll = partitions_or_bag
        if hasattr(coll, "columns"):  # a dask DataFrame
            coll = coll[column]
        parts_fut = client.compute(coll.to_delayed())
    else:
        # object arrays: Dask pickles a list element by element (4.5 s for 50,000 sentences here, 0.15 s as arrays)
        parts_fut = client.scatter([np.array(list(p), dtype=object) for p in partitions_or_bag], hash=False)
    model_fut = client.scatter(model, broadcast=True, hash=False)
    emb = [client.submit(_embed, model_fut, p, pure=False) for p in parts_fut]
    sizes = client.gather([client.submit(len, e, pure=False) for e in emb])
    t1 = time.perf_counter()
    n = int(sum(sizes))
    plan = ivf_plan(n, model.dim, nlist=nlist, nprobe=nprobe, spill=spill, sample=sample)
    stats: dict[str, Any] = {**plan, "n": n, "partitions": len(sizes), "embed_seconds": t1 - t0}
    if n == 0:
        return _empty(model.dim, stats)
    offsets = np.cumsum([0] + list(sizes))
    rows = sample_rows(n, plan["sample"])
    part = np.searchsorted(offsets, rows, side="right") - 1
    xs = client.gather(
        [client.submit(_take, emb[p], rows[part == p] - offsets[p], pure=False) for p in np.unique(part).tolist()]
    )
    centroids = train_centroids(np.concatenate(xs), plan["nlist"])
    t2 = time.perf_counter()
    stats["train_seconds"] = t2 - t1
    nb = buckets or 4 * max(1, sum(client.nthreads().values()))
    nb = max(1, min(nb, plan["nlist"]))
    c_fut = client.scatter(centroids, broadcast=True, hash=False)
    routed = [
        client.submit(route_rows, e, int(offsets[p]), c_fut, plan["nprobe"], nb, pure=False) for p, e in enumerate(emb)
    ]
    pieces = [[client.submit(operator.getitem, r, b, pure=False) for r in routed] for b in range(nb)]
    wait([x for row in pieces for x in row])
    t3 = time.perf_counter()
    stats["assign_seconds"] = t3 - t2
    found = client.gather([client.submit(_pairs_of, pieces[b], t, plan["spill"], pure=False) for b in range(nb)])
    t4 = time.perf_counter()
    stats["pairs_seconds"] = t4 - t3
    kept, dup_of, score, m = resolve_pairs(n, found, t)
    stats.update(
        pairs_scored=int(sum(f[3] for f in found)),
        pairs_compute_seconds=sum(f[4] for f in found),
        pairs_found=m,
        buckets=nb,
        resolve_seconds=time.perf_counter() - t4,
    )
    return PartitionedDedup(kept, dup_of, score, centroids, stats)


class _RayEmbed:
    """Ray actor of stage 1: unpickles the model (re-opens its files) once, then embeds batch after batch."""

    def __init__(self, model: UnitEmbedder, column: str, id_column: str):
        self.model, self.column, self.id_column = model, column, id_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"gid": np.asarray(batch[self.id_column], np.int64), "vector": _embed(self.model, batch[self.column])}


def _ray_route(batch: dict[str, np.ndarray], centroids: np.ndarray, nprobe: int) -> dict[str, np.ndarray]:
    (r,) = route_rows(batch["vector"], 0, centroids, nprobe, 1)
    return {"list": r.lists, "gid": batch["gid"][r.gid], "vector": r.vectors, "probes": r.probes}


def _ray_pairs(group: dict[str, np.ndarray], threshold: float, spill: int) -> dict[str, np.ndarray]:
    rows = ListRows(
        np.asarray(group["list"], np.uint32),
        np.asarray(group["gid"], np.int64),
        np.asarray(group["vector"], np.float32),
        np.asarray(group["probes"], np.uint32),
    )
    i, j, s, scored = list_pairs(rows, threshold, spill)
    # a first row (i = -1) carries the group's count of scored pairs, so that a group without pairs reports it too
    return {
        "i": np.concatenate([[-1], i]),
        "j": np.concatenate([[-1], j]),
        "score": np.concatenate([np.full(1, np.nan, np.float32), s]),
        "scored": np.concatenate([[scored], np.zeros(len(i), np.int64)]),
    }


def _take_sample(batch: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    sel = np.isin(batch["gid"], rows)
    return {"gid": batch["gid"][sel], "vector": batch["vector"][sel]}


def ray_partitioned_dedup(
    dataset_or_texts: Any,
    model: Any,
    threshold: float = 0.9,
    *,
    nprobe: int | None = None,
    nlist: int | None = None,
    spill: int | None = None,
    sample: int | None = None,
    column: str = "text",
    id_column: str = "id",
    workers: int | None = None,
    batch_size: int = 4096,
) -> PartitionedDedup:
    """Partitioned (IVF) deduplication on Ray Data (`map_batches` to embed and route, `groupby(list)` for the
    pairs): the result of `_core.dedup_ivf` over all texts' vectors in order, with the same settings.

    Args:
        dataset_or_texts: a list of texts (their order is the greedy order), or a `ray.data.Dataset` with a text
            `column` and an integer `id_column` numbering its rows 0 .. n-1 in the greedy order.
        model: a `tokvec.Model` (each embedding actor unpickles it once, by path).
        threshold: in [-1, 1].
        nprobe, nlist, spill, sample: as `_core.dedup_ivf` (None: its defaults for the number of texts; nprobe and
            spill those of its first block, see `ivf_plan`).
        workers: embedding actors (None: Ray's CPUs minus one, at least one: a slot stays free for reads).
        batch_size: rows per embedding batch.

    Returns:
        a `PartitionedDedup`, as `dask_partitioned_dedup`.
    """
    import ray

    t = _threshold(threshold)
    ivf_plan(1, model.dim, nlist=nlist, nprobe=nprobe, spill=spill, sample=sample)  # bad settings fail first
    if not ray.is_initialized():
        raise RuntimeError("ray_partitioned_dedup runs on a Ray cluster: call ray.init(...) first")
    t0 = time.perf_counter()
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 2)) - 1)
    if isinstance(dataset_or_texts, ray.data.Dataset):
        ds = dataset_or_texts
        names = ds.schema().names
        missing = [c for c in (column, id_column) if c not in names]
        if missing:
            raise ValueError(f"the dataset has no column {missing[0]!r} (its columns: {', '.join(names)})")
        n = ds.count()
    else:
        import pyarrow as pa

        texts = list(dataset_or_texts)
        n = len(texts)
        # blocks of at most one batch, and at least two per actor (one block can only feed one actor)
        step = max(1, min(batch_size, -(-n // (2 * workers))))
        ds = ray.data.from_arrow(
            [
                pa.table({id_column: np.arange(a, min(a + step, n)), column: texts[a : a + step]})
                for a in range(0, n, step)
            ]
            or [pa.table({id_column: [], column: []})]
        )
    if n == 0:
        return _empty(model.dim, {"n": 0, "embed_seconds": 0.0})
    emb = ds.map_batches(
        _RayEmbed,
        fn_constructor_args=(model, column, id_column),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
    ).materialize()
    lo, hi = emb.min("gid"), emb.max("gid")
    if (lo, hi) != (0, n - 1):
        raise ValueError(f"{id_column} must number the rows 0 .. n-1 (n = {n}) once each, got {lo} .. {hi}")
    t1 = time.perf_counter()
    plan = ivf_plan(n, model.dim, nlist=nlist, nprobe=nprobe, spill=spill, sample=sample)
    stats: dict[str, Any] = {**plan, "n": n, "workers": workers, "embed_seconds": t1 - t0}
    rows = sample_rows(n, plan["sample"])
    got = list(
        emb.map_batches(_take_sample, fn_args=(rows,), batch_format="numpy").iter_batches(
            batch_format="numpy", batch_size=None
        )
    )
    gid = np.concatenate([b["gid"] for b in got] + [np.zeros(0, np.int64)])
    if len(gid) != len(rows) or not np.array_equal(np.sort(gid), rows):
        raise ValueError(
            f"{id_column} must number the rows 0 .. n-1 (n = {n}) once each; the k-means sample "
            f"found {len(gid)} of its {len(rows)} rows"
        )
    x = np.concatenate([b["vector"] for b in got])[np.argsort(gid, kind="stable")]
    centroids = train_centroids(x, plan["nlist"])
    t2 = time.perf_counter()
    stats["train_seconds"] = t2 - t1
    routed = emb.map_batches(_ray_route, fn_args=(centroids, plan["nprobe"]), batch_format="numpy")
    found = routed.groupby("list").map_groups(_ray_pairs, fn_args=(t, plan["spill"]), batch_format="numpy")
    bi, bj, bs, scored = [], [], [], 0
    for b in found.iter_batches(batch_format="numpy", batch_size=None):
        ok = b["i"] >= 0
        bi.append(b["i"][ok])
        bj.append(b["j"][ok])
        bs.append(b["score"][ok])
        scored += int(b["scored"].sum())
    t3 = time.perf_counter()
    stats["assign_pairs_seconds"] = t3 - t2
    kept, dup_of, score, m = resolve_pairs(n, [(i, j, s, 0) for i, j, s in zip(bi, bj, bs)], t)
    stats.update(pairs_scored=scored, pairs_found=m, resolve_seconds=time.perf_counter() - t3)
    return PartitionedDedup(kept, dup_of, score, centroids, stats)
