"""Deduplication workflows: texts (identical texts first, then vectors), explained results,
deduplication against a reference set (decontamination), an on-disk index of kept vectors extended
batch after batch, and threshold sweeps from one pass.

All of them are the same exact greedy rule as `tokvec.dedup_indices`: items are visited in order
and an item is dropped when its similarity with an earlier *kept* item (or with any reference /
index item) is > threshold. Pairs above the threshold are found once in Rust (never an n x n
matrix) and resolved greedily in Rust (`_core.dedup_resolve`).

Texts (`plan_texts` + `resolve_texts`, used by `Model.deduplicate` and `tokvec dedup`) get an exact
pass first, as semhash does: a text identical to an earlier text (or to a reference text) is a
duplicate at every threshold, whatever its vector (texts of unknown tokens or emoji embed to the
zero vector), and an identical-text group costs O(group), not O(group^2) pairs. Only the first
occurrence of each text is embedded and goes through the vector pass, so a threshold of 1.0 means
"identical texts only". Empty texts (no characters, or whitespace only) are kept, each of them,
and counted, unless `drop_empty`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokvec import _core
from tokvec._io import other_model, write_safetensors
from tokvec._scratch import bounded_residency
from tokvec._validate import matrix as _matrix
from tokvec._validate import threshold as _threshold
from tokvec.search import Approx, approx_options, dedup_indices
from tokvec.textio import write_atomic

__all__ = ["DedupIndex", "DedupResult", "TextPlan", "dedup", "dedup_sweep", "plan_texts", "resolve_texts", "text_keys"]


# DedupResult.source values
KEPT, SELF, REFERENCE, EMPTY = -1, 0, 1, 2


@dataclass
class DedupResult:
    """The outcome of a greedy deduplication of n items.

    Attributes:
        kept: int64 indices of the kept items, ascending.
        dup_of: int64 (n,): for a removed item, the index of the kept item it duplicates (in this
            set, or in the reference / index set when `source` says so); -1 for kept items and
            dropped empty texts.
        score: float32 (n,): similarity with `dup_of` (1.0 for an identical text); NaN for kept
            items and dropped empty texts.
        source: int8 (n,): -1 kept, 0 when `dup_of` is an item of this set, 1 when it is a
            reference (or index) item, 2 for an empty text dropped by `drop_empty`.
        threshold: the threshold used.
        exact: bool (n,): the item was removed for an identical text (not by its vector).
        texts: the texts, when the result came from `Model.deduplicate(..., explain=True)`.
        reference_texts: the reference texts, when known.
        rows: the items' input row numbers (`tokvec dedup` sets them), used by `explain`; None
            means the item indices.
        reference_rows: the same for the reference items.
    """

    kept: np.ndarray
    dup_of: np.ndarray
    score: np.ndarray
    source: np.ndarray
    threshold: float
    exact: np.ndarray | None = field(default=None, repr=False)
    texts: list[str] | None = field(default=None, repr=False)
    reference_texts: list[str] | None = field(default=None, repr=False)
    rows: Sequence[int] | None = field(default=None, repr=False)
    reference_rows: Sequence[int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.exact is None:
            self.exact = np.zeros(self.dup_of.shape[0], bool)

    @property
    def n(self) -> int:
        """Number of items."""
        return int(self.dup_of.shape[0])

    @property
    def removed(self) -> np.ndarray:
        """int64 indices of the removed items, ascending."""
        return np.flatnonzero(self.source >= 0)

    def kept_texts(self) -> list[str]:
        """The kept texts in input order (needs `texts`)."""
        if self.texts is None:
            raise ValueError("this result has no texts; use the indices in .kept")
        return [self.texts[i] for i in self.kept]

    def explain(self) -> list[dict[str, Any]]:
        """One dict per removed item: `index` (its row number when `rows` is set), `duplicate_of`
        (the kept item's index or row; None for an empty text), `score` (None for an empty text),
        `against` (`self`, `reference` or `empty`), `match` (`text` for an identical text,
        `vector`, or `empty`) and, when texts are known, `text` and `kept_text`."""
        out = []
        exact = self.exact if self.exact is not None else np.zeros(self.n, bool)
        for i in self.removed.tolist():
            src = int(self.source[i])
            j = int(self.dup_of[i])
            ref = src == REFERENCE
            nums = self.reference_rows if ref else self.rows
            row: dict[str, Any] = {"index": i if self.rows is None else int(self.rows[i])}
            if src == EMPTY:
                row.update(duplicate_of=None, score=None, against="empty", match="empty")
            else:
                row.update(
                    duplicate_of=j if nums is None else int(nums[j]),
                    score=float(self.score[i]),
                    against="reference" if ref else "self",
                    match="text" if exact[i] else "vector",
                )
            if self.texts is not None:
                row["text"] = self.texts[i]
                pool = self.reference_texts if ref else self.texts
                if pool is not None and src != EMPTY:
                    row["kept_text"] = pool[j]
            out.append(row)
        return out

    def summary(self) -> dict[str, Any]:
        """Counts and score statistics of the removed items."""
        rem = self.removed
        exact = self.exact if self.exact is not None else np.zeros(self.n, bool)
        by_vector = rem[(self.source[rem] != EMPTY) & ~exact[rem]]
        s = self.score[by_vector].astype(np.float64)
        out: dict[str, Any] = {
            "n": self.n,
            "kept": int(self.kept.shape[0]),
            "removed": int(rem.shape[0]),
            "removed_self": int((self.source == SELF).sum()),
            "removed_reference": int((self.source == REFERENCE).sum()),
            "removed_identical": int(exact.sum()),
            "removed_empty": int((self.source == EMPTY).sum()),
            "threshold": self.threshold,
        }
        if by_vector.size:
            out.update(score_min=float(s.min()), score_mean=float(s.mean()), score_max=float(s.max()))
        return out


def _resolve(n: int, i: np.ndarray, j: np.ndarray, s: np.ndarray, t: float) -> tuple[np.ndarray, ...]:
    return _core.dedup_resolve(
        n, np.ascontiguousarray(i, np.int64), np.ascontiguousarray(j, np.int64), np.ascontiguousarray(s, np.float32), t
    )


def _pairs(e: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if e.shape[0] < 2:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0, np.float32)
    return _core.duplicate_pairs(e, t)


def _cross(a: np.ndarray, b: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if a.shape[0] == 0 or b.shape[0] == 0:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0, np.float32)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the reference vectors have {a.shape[1]} dimensions, the items {b.shape[1]}")
    return _core.duplicate_pairs_cross(a, b, t)


def dedup(
    embeddings: Any,
    threshold: float = 0.9,
    *,
    reference: Any = None,
    self_dedup: bool = True,
    approx: bool | Approx = False,
    nprobe: int | None = None,
    nlist: int | None = None,
    stats: dict[str, Any] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> DedupResult:
    """Greedy exact deduplication with an explanation for every removed item.

    Args:
        embeddings: (n, d) float vectors (L2-normalized for cosine), in priority order.
        threshold: in [-1, 1]; pairs with similarity > threshold are duplicates.
        reference: optional (m, d) vectors of a reference set (e.g. a test set): every item with a
            similarity > threshold to any reference vector is removed. The reference set itself is
            not deduplicated and is not part of the result.
        self_dedup: also remove items duplicating an earlier kept item of `embeddings` (default).
            False only removes reference matches (pure decontamination).
        approx: True (or an `Approx` holding the keywords below) for very large sets: each item meets only
            some of the earlier items instead of every one that could be above the threshold; scores stay exact
            and the greedy pass is the same, but missed pairs are not seen (no item is removed without a true
            duplicate). The partitioned search: the items are split into `nlist` lists by k-means on a sample,
            a kept item is stored in its 4 nearest lists, and an item meets the earlier kept items stored in
            its `nprobe` nearest lists (in Rust; deterministic; with nprobe = nlist the result is exact;
            docs/dedup.md has the costs). A reference set is still searched exactly.
        nprobe: with approx, lists probed per item (default 8, at most nlist; twice that once more than 3 items
            were removed per kept one, and more once the kept items' copies pass 2 GiB, see docs/dedup.md): more
            finds more duplicates and costs proportionally more.
        nlist: with approx, number of lists (default 2 sqrt(n), at most n).
        stats: with approx, a dict filled with what the run did: `nlist`, `nprobe`, `spill` (lists a
            kept item is stored in), `sample` (rows of the k-means), `block`, `kmeans_iterations`,
            `prescored` / `rescored` / `found` (pairs pre-scored in int8, re-scored exactly, above the
            threshold; a pair met in several lists counts each time), `largest_list`, and the seconds of
            each stage (`train_seconds`, `assign_seconds`, `search_seconds`).
        progress: with approx, a callable `progress(stage, done)` called (from this thread) as the run
            moves: stage 1 = k-means steps done (of at most 10), stage 2 = items resolved (of the items
            searched: those matching no reference item). An exception it raises stops the run.

    Returns:
        a `DedupResult`.
    """
    return _dedup(_matrix(embeddings, "embeddings"), threshold, reference=reference, self_dedup=self_dedup,
                  approx=approx, nprobe=nprobe, nlist=nlist, stats=stats, progress=progress)


def _dedup(e: np.ndarray, threshold: float, *, reference: Any, self_dedup: bool, approx: bool | Approx,
           nprobe: int | None, nlist: int | None, stats: dict[str, Any] | None,
           progress: Callable[[int, int], object] | None) -> DedupResult:
    """`dedup` of a matrix that `_matrix` has checked already: a caller that validated its vectors does not pay for
    a second finite check (a pass over every row: 6.4 GB at 10M texts)."""
    if e.dtype != np.float32:
        raise TypeError("dedup with explanations takes float vectors; use tokvec.dedup_indices for packed bits")
    t = _threshold(threshold)
    n = e.shape[0]
    a = approx_options(approx, nprobe=nprobe, nlist=nlist)
    if a is not None:
        return _dedup_ivf(e, t, reference, self_dedup, a, stats, progress)
    if reference is None and self_dedup:
        # the plain case: pairs found and resolved inside Rust, no pair list crosses into Python
        if n < 2:
            dup_of = np.full(n, -1, np.int64)
            score = np.full(n, np.nan, np.float32)
        else:
            _, dup_of, score = _core.dedup(e, t)
        source = np.where(dup_of < 0, -1, 0).astype(np.int8)
        kept = np.flatnonzero(dup_of < 0).astype(np.int64)
        return DedupResult(kept=kept, dup_of=dup_of, score=score, source=source, threshold=t)
    if reference is None:
        m = 0
        parts = []
    else:
        r = _matrix(reference, "reference")
        m = r.shape[0]
        if r.shape[0] and r.shape[1] != e.shape[1]:
            raise ValueError(f"the reference vectors have {r.shape[1]} dimensions, the items {e.shape[1]}")
        ci, cj, cs = _cross(r, e, t)
        parts = [(ci, cj + m, cs)]
    if self_dedup:
        pi, pj, ps = _pairs(e, t)
        parts.append((pi + m, pj + m, ps))
    if parts:
        i = np.concatenate([p[0] for p in parts])
        j = np.concatenate([p[1] for p in parts])
        s = np.concatenate([p[2] for p in parts])
    else:
        i = j = np.zeros(0, np.int64)
        s = np.zeros(0, np.float32)
    _, dup_of, score = _resolve(m + n, i, j, s, t)
    dup_of, score = dup_of[m:], score[m:]
    source = np.where(dup_of < 0, -1, np.where(dup_of < m, 1, 0)).astype(np.int8)
    dup_of = np.where(dup_of >= m, dup_of - m, dup_of)
    kept = np.flatnonzero(dup_of < 0).astype(np.int64)
    return DedupResult(kept=kept, dup_of=dup_of.astype(np.int64), score=score, source=source, threshold=t)


def _dedup_ivf(e: np.ndarray, t: float, reference: Any, self_dedup: bool, a: Approx,
               stats: dict[str, Any] | None, progress: Callable[[int, int], object] | None = None) -> DedupResult:
    """`dedup(..., approx=True)`: reference matches from the exact cross search, then the
    partitioned greedy pass (`_core.dedup_ivf`) over the items that match no reference item. That is the greedy
    rule over the reference followed by the items: reference items are always kept, so an item matching one is
    removed whatever the earlier items, and only the other items can be kept and remove later ones. (An item that
    matches both is reported against the reference.)"""
    n = e.shape[0]
    dup_of = np.full(n, -1, np.int64)
    score = np.full(n, np.nan, np.float32)
    source = np.full(n, KEPT, np.int8)
    rest = np.arange(n, dtype=np.int64)
    if reference is not None:
        r = _matrix(reference, "reference")
        ci, cj, cs = _cross(r, e, t)
        if ci.size:
            # each item's best reference item: the greedy pass over the cross pairs alone
            _, rd, rs = _resolve(r.shape[0] + n, ci, cj + r.shape[0], cs, t)
            hit = rd[r.shape[0]:] >= 0
            dup_of[hit], score[hit], source[hit] = rd[r.shape[0]:][hit], rs[r.shape[0]:][hit], REFERENCE
            rest = np.flatnonzero(~hit).astype(np.int64)
    if self_dedup:
        sub = e if rest.shape[0] == n else np.ascontiguousarray(e[rest])
        with bounded_residency(sub):
            _, d, sc, st = _core.dedup_ivf(sub, t, nlist=a.nlist, nprobe=a.nprobe, progress=progress)
        own = d >= 0
        dup_of[rest[own]], score[rest[own]], source[rest[own]] = rest[d[own]], sc[own], SELF
        if stats is not None:
            stats.update(st)
    kept = np.flatnonzero(source == KEPT).astype(np.int64)
    return DedupResult(kept=kept, dup_of=dup_of, score=score, source=source, threshold=t)


def dedup_sweep(embeddings: Any, thresholds: Any) -> list[dict[str, float | int]]:
    """How many items greedy deduplication keeps at each threshold, from one pass: the pairs are
    computed once at the lowest threshold and resolved greedily for each threshold (the result at
    each threshold is exactly that of `dedup_indices` at that threshold).

    Args:
        embeddings: (n, d) float vectors.
        thresholds: an iterable of thresholds in [-1, 1].

    Returns:
        one dict per threshold, ascending: `threshold`, `kept`, `removed`, `pairs` (pairs above it).
    """
    e = _matrix(embeddings, "embeddings")
    ts = _thresholds(thresholds)
    return _sweep(e.shape[0], *_pairs(e, ts[0]), ts)


def _thresholds(thresholds: Any) -> list[float]:
    ts = sorted({_threshold(t) for t in thresholds})
    if not ts:
        raise ValueError("thresholds is empty")
    return ts


def _sweep(n: int, i: np.ndarray, j: np.ndarray, s: np.ndarray, ts: list[float]) -> list[dict[str, float | int]]:
    """`dedup_sweep` from pairs found at (or below) the lowest threshold."""
    out = []
    for t in ts:
        kept, _, _ = _resolve(n, i, j, s, t)
        out.append({"threshold": t, "kept": int(kept.shape[0]), "removed": int(n - kept.shape[0]),
                    "pairs": int((s > t).sum())})
    return out


def text_keys(texts: Sequence[str]) -> list[bytes]:
    """The 16-byte BLAKE2b digest of each text's UTF-8 bytes: how identical texts are found in a
    reference set or an index without keeping the texts."""
    return [hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts]


def is_empty(text: str) -> bool:
    """Whether a text counts as empty: no characters, or whitespace only."""
    return not text or text.isspace()


@dataclass
class TextPlan:
    """The exact pass of a text deduplication (`plan_texts`): what identical texts decide, and
    which items still need a vector.

    Attributes:
        n: number of items.
        first: int64 (n,): the earlier item with the identical text, -1 if none (or if self
            deduplication is off).
        ref: int64 (n,): a reference item with the identical text, -1 if none.
        empty: bool (n,): the text is empty or whitespace only.
        vector_items: int64, ascending: the items that need a vector (neither empty, nor a copy,
            nor identical to a reference text), in the order of the vectors `resolve_texts` takes.
        self_dedup: duplicates within the items are removed.
        drop_empty: empty texts are removed.
    """

    n: int
    first: np.ndarray
    ref: np.ndarray
    empty: np.ndarray
    vector_items: np.ndarray
    self_dedup: bool = True
    drop_empty: bool = False


def plan_texts(
    texts: Sequence[str],
    *,
    reference_keys: Sequence[bytes] | None = None,
    self_dedup: bool = True,
    drop_empty: bool = False,
) -> TextPlan:
    """The exact pass: identical texts and empty texts, found in O(n) with a hash table.

    Args:
        texts: the items, in priority order.
        reference_keys: `text_keys` of a reference set (or an index), if any.
        self_dedup: an item identical to an earlier item is a duplicate of it.
        drop_empty: empty texts are removed instead of kept.

    Returns:
        a `TextPlan`; embed `[texts[i] for i in plan.vector_items]` and pass the vectors to
        `resolve_texts`.
    """
    n = len(texts)
    first = np.full(n, -1, np.int64)
    ref = np.full(n, -1, np.int64)
    empty = np.zeros(n, bool)
    refmap: dict[bytes, int] = {}
    if reference_keys:
        for r, k in enumerate(reference_keys):
            refmap.setdefault(k, r)
    seen: dict[str, int] = {}
    ref_of: dict[str, int] = {}
    vec: list[int] = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
        if is_empty(t):
            empty[i] = True
            continue
        if refmap:
            r = ref_of.get(t)
            if r is None:
                r = ref_of[t] = refmap.get(text_keys([t])[0], -1)
            if r >= 0:
                ref[i] = r
                continue
        if self_dedup:
            j = seen.setdefault(t, i)
            if j != i:
                first[i] = j
                continue
        vec.append(i)
    return TextPlan(n, first, ref, empty, np.array(vec, np.int64), self_dedup, drop_empty)


def resolve_texts(
    plan: TextPlan,
    vectors: Any,
    threshold: float = 0.9,
    *,
    reference: Any = None,
    bits: int | None = None,
    approx: Approx | None = None,
    stats: dict[str, Any] | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> DedupResult:
    """The vector pass over `plan.vector_items`, then the exact pass's decisions, as one result.

    Identical texts are duplicates at every threshold (score 1.0, `exact`); the vector pass runs
    below a threshold of 1.0 only, so 1.0 means identical texts only. A copy of a text that the
    vector pass removed is removed the same way (same vector, same kept item, same score). The kept
    set is that of the greedy rule over all items with identical texts counted as duplicates.

    Args:
        plan: from `plan_texts`.
        vectors: the vectors of `plan.vector_items` (L2-normalized float rows, or packed sign bits
            with `bits`).
        threshold: in [-1, 1].
        reference: the reference set's vectors (rows matching `reference_keys`), or None.
        bits: for packed sign bits, the number of meaningful bits.
        approx: compare each item with some of the earlier items only, searched as this says (see `dedup`);
            None: exact.
        stats: with approx, a dict filled with the run's statistics (see `dedup`).
        progress: with approx, called as the run moves (see `dedup`).

    Returns:
        a `DedupResult` over the plan's n items.
    """
    t = _threshold(threshold)
    n, v = plan.n, plan.vector_items
    dup_of = np.full(n, -1, np.int64)
    score = np.full(n, np.nan, np.float32)
    source = np.full(n, KEPT, np.int8)
    exact = np.zeros(n, bool)
    e = _matrix(vectors, "vectors") if len(v) else None
    if e is not None and e.shape[0] != len(v):
        raise ValueError(f"got {e.shape[0]} vectors for the plan's {len(v)} vector items")
    if e is not None and t < 1.0:
        if e.dtype == np.uint64:
            if reference is not None or approx is not None:
                raise ValueError("a reference set and approx=True need float vectors, not packed sign bits")
            _, d, sc = dedup_indices(e, t, bits=bits)
            src = np.where(d < 0, KEPT, SELF).astype(np.int8)
        else:
            r = _dedup(e, t, reference=reference, self_dedup=plan.self_dedup, approx=approx or False, nprobe=None,
                       nlist=None, stats=stats, progress=progress)
            d, sc, src = r.dup_of, r.score, r.source
        own = src == SELF
        d = d.copy()
        d[own] = v[d[own]]  # a vector item's index -> the item's; reference indices stay
        dup_of[v] = d
        score[v], source[v] = sc, src
    hit = plan.ref >= 0
    dup_of[hit], score[hit], source[hit], exact[hit] = plan.ref[hit], 1.0, REFERENCE, True
    if plan.drop_empty:
        source[plan.empty] = EMPTY
    c = np.flatnonzero(plan.first >= 0)
    if c.size:
        f = plan.first[c]
        kept_f = source[f] == KEPT
        dup_of[c] = np.where(kept_f, f, dup_of[f])
        score[c] = np.where(kept_f, np.float32(1.0), score[f])
        source[c] = np.where(kept_f, SELF, source[f])
        exact[c] = np.where(kept_f, True, exact[f])
    kept = np.flatnonzero(source == KEPT).astype(np.int64)
    return DedupResult(kept=kept, dup_of=dup_of, score=score, source=source, threshold=t, exact=exact)


def sweep_texts(
    plan: TextPlan, vectors: Any, thresholds: Any, *, pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
) -> list[dict[str, float | int]]:
    """`dedup_sweep` for texts: how many items `resolve_texts` keeps at each threshold, from one pass
    (identical texts removed at every threshold, empty texts as the plan says; no reference set).

    Args:
        plan: from `plan_texts`.
        vectors: the vectors of `plan.vector_items`.
        thresholds: thresholds in [-1, 1].
        pairs: the vector items' pairs (i, j, score) above a threshold at most the lowest one, if
            already found (e.g. for a report); otherwise they are found here.

    Returns:
        one dict per threshold, ascending: `threshold`, `kept`, `removed`, `pairs` (vector pairs
        above it among the vector items).
    """
    ts = _thresholds(thresholds)
    m = len(plan.vector_items)
    below = [x for x in ts if x < 1.0]  # at 1.0 only identical texts are duplicates
    rows: dict[float, dict[str, float | int]] = {}
    if below and m:
        e = _matrix(vectors, "vectors")
        rows = {r["threshold"]: r for r in _sweep(m, *(pairs if pairs is not None else _pairs(e, below[0])), below)}
    empties = 0 if plan.drop_empty else int(plan.empty.sum())
    out = []
    for x in ts:
        r = rows.get(x, {"kept": m, "pairs": 0})
        kept = int(r["kept"]) + empties
        out.append({"threshold": x, "kept": kept, "removed": plan.n - kept, "pairs": int(r["pairs"])})
    return out


class DedupIndex:
    """The vectors kept so far by an incremental deduplication, stored as a safetensors file:
    tensors `embeddings` F32 [n, d] (the kept items' unit vectors) and, when known, `text_keys` U8
    [n, 16] (`text_keys` of the kept texts, so identical texts are found across batches);
    metadata `format`, `count`, `threshold`, `model`, `model_fingerprint`, `dim`.

    Deduplicating batch after batch against the index keeps exactly what one greedy pass over all
    batches concatenated would keep: index rows are earlier kept rows, so a new row is dropped when it
    is above the threshold with (or identical to) an index row or an earlier kept row of its own
    batch. That holds only for the same model and threshold, which `check` verifies.
    """

    def __init__(self, embeddings: np.ndarray, metadata: dict[str, str] | None = None,
                 keys: Sequence[bytes] | None = None) -> None:
        self.embeddings = np.ascontiguousarray(embeddings, np.float32)
        self.metadata = dict(metadata or {})
        self.keys: list[bytes] | None = None if keys is None else list(keys)
        if self.keys is not None and len(self.keys) != self.size:
            raise ValueError(f"{len(self.keys)} text keys for {self.size} vectors")

    @property
    def size(self) -> int:
        """Number of vectors in the index."""
        return int(self.embeddings.shape[0])

    @classmethod
    def load(cls, path: str | os.PathLike[str], dim: int | None = None) -> DedupIndex:
        """Opens an index file; a missing file gives an empty index of dimension `dim`.

        Raises:
            FormatError: the file is not a tokvec dedup index, or its vectors have another dimension.
        """
        p = Path(path)
        if not p.exists():
            if dim is None:
                raise FileNotFoundError(f"{p}: no such index")
            return cls(np.zeros((0, dim), np.float32))
        f = _core.SafetensorsFile(p)
        info = f.tensors()
        if "embeddings" not in info or info["embeddings"][0] != "F32" or len(info["embeddings"][1]) != 2:
            raise _core.FormatError(f"{p}: not a tokvec dedup index (needs an F32 [n, d] tensor 'embeddings')")
        shape = info["embeddings"][1]
        if dim is not None and shape[1] != dim:
            raise _core.FormatError(f"{p}: index vectors have {shape[1]} dimensions, the model gives {dim}")
        keys = None
        if "text_keys" in info:
            kt, ks = info["text_keys"]
            if kt != "U8" or ks != [shape[0], 16]:
                raise _core.FormatError(f"{p}: tensor 'text_keys' must be U8 [{shape[0]}, 16], is {kt} {ks}")
            raw = f.tensor_bytes("text_keys")
            keys = [raw[i : i + 16] for i in range(0, len(raw), 16)]
        E = np.frombuffer(f.tensor_bytes("embeddings"), dtype="<f4").reshape(shape)
        return cls(E, f.metadata(), keys)

    def check(self, path: str | os.PathLike[str], *, fingerprint: str, threshold: float) -> None:
        """Refuses to extend an index made with another model or threshold (an empty new index
        passes).

        Args:
            path: the index file (for messages).
            fingerprint: `Model.fingerprint` of the model in use.
            threshold: the threshold in use.

        Raises:
            FormatError: naming what differs, or saying the index predates fingerprints.
        """
        if self.size == 0 and not self.metadata:
            return
        meta = self.metadata
        if "model_fingerprint" not in meta or self.keys is None:
            raise _core.FormatError(
                f"{path}: this index has no model fingerprint or text keys (it was written by an older tokvec), so "
                "tokvec cannot check it was built with this model; rebuild it (delete it and rerun the batches)"
            )
        diffs = []
        if (why := other_model(meta, fingerprint)) is not None:
            diffs.append(f"model (the index was {why})")
        try:
            old = float(meta.get("threshold", "nan"))
        except ValueError:
            old = math.nan
        if old != float(threshold):
            diffs.append(f"threshold (the index was built at {meta.get('threshold')}, this run uses {threshold:g})")
        if diffs:
            raise _core.FormatError(
                f"{path}: made with another " + " and another ".join(diffs)
                + "; use the same model and threshold, or start a new index"
            )

    def dedup(self, embeddings: Any, threshold: float) -> DedupResult:
        """Deduplicates a batch of vectors against the index and within itself (does not add it)."""
        return dedup(embeddings, threshold, reference=self.embeddings)

    def add(self, embeddings: Any, keys: Sequence[bytes] | None = None) -> None:
        """Appends vectors (normally the kept rows of a batch) and, when the index keeps them, their
        `text_keys`."""
        e = np.ascontiguousarray(embeddings, np.float32)
        if e.ndim != 2 or (self.size and e.shape[1] != self.embeddings.shape[1]):
            raise ValueError(f"expected (n, {self.embeddings.shape[1]}) vectors, got {e.shape}")
        if self.keys is not None:
            if keys is None or len(keys) != len(e):
                raise ValueError(f"this index keeps text keys: pass {len(e)} keys with the vectors")
            self.keys.extend(keys)
        self.embeddings = np.concatenate([self.embeddings, e]) if self.size else e

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the index atomically (temporary file + rename)."""
        return write_atomic(path, self.write)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Writes the index to `path` (not atomically: `save` does that)."""
        meta = {**self.metadata, "count": str(self.size), "format": "tokvec-dedup-index"}
        tensors = {"embeddings": ("F32", list(self.embeddings.shape), self.embeddings.astype("<f4", copy=False).tobytes())}
        if self.keys is not None:
            tensors["text_keys"] = ("U8", [self.size, 16], b"".join(self.keys))
        write_safetensors(Path(path), tensors, meta)


def parse_thresholds(spec: str) -> list[float]:
    """Parses `0.8,0.85,0.9` or `0.8:0.99:0.01` (start:stop:step, stop included) or `auto`."""
    if spec == "auto":
        return [round(0.80 + 0.02 * k, 2) for k in range(10)]
    try:
        if ":" in spec:
            a, b, st = (float(x) for x in spec.split(":"))
            if st <= 0 or b < a:
                raise ValueError
            k = math.floor((b - a) / st + 1e-9)
            return [round(a + st * q, 6) for q in range(k + 1)]
        return [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"bad threshold list {spec!r}: use auto, 0.8,0.9,0.95 or 0.8:0.99:0.01") from None
