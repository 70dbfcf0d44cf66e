"""Deduplication workflows on vectors: explained results, deduplication against a reference set
(decontamination), an on-disk index of kept vectors extended batch after batch, and threshold
sweeps from one pass.

All of them are the same exact greedy rule as `tokvec.dedup_indices`: rows are visited in order
and a row is dropped when its similarity with an earlier *kept* row (or with any reference / index
row) is > threshold. Pairs above the threshold are found once in Rust (never an n x n matrix) and
resolved greedily in Rust (`_core.dedup_resolve`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokvec import _core
from tokvec.search import _matrix, _threshold

__all__ = ["DedupIndex", "DedupResult", "dedup", "dedup_sweep"]


@dataclass
class DedupResult:
    """The outcome of a greedy deduplication of n items.

    Attributes:
        kept: int64 indices of the kept items, ascending.
        dup_of: int64 (n,): for a removed item, the index of the item it duplicates (in this set,
            or in the reference / index set when `source` says so); -1 for kept items.
        score: float32 (n,): similarity with `dup_of`; NaN for kept items.
        source: int8 (n,): 0 when `dup_of` is an item of this set, 1 when it is a reference (or
            index) item, -1 for kept items.
        threshold: the threshold used.
        texts: the texts, when the result came from `Model.deduplicate(..., explain=True)`.
        reference_texts: the reference texts, when known.
    """

    kept: np.ndarray
    dup_of: np.ndarray
    score: np.ndarray
    source: np.ndarray
    threshold: float
    texts: list[str] | None = field(default=None, repr=False)
    reference_texts: list[str] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        """Number of items."""
        return int(self.dup_of.shape[0])

    @property
    def removed(self) -> np.ndarray:
        """int64 indices of the removed items, ascending."""
        return np.flatnonzero(self.dup_of >= 0)

    def kept_texts(self) -> list[str]:
        """The kept texts in input order (needs `texts`)."""
        if self.texts is None:
            raise ValueError("this result has no texts; use the indices in .kept")
        return [self.texts[i] for i in self.kept]

    def explain(self) -> list[dict[str, Any]]:
        """One dict per removed item: `index`, `duplicate_of`, `score`, `against` (`self` or
        `reference`) and, when texts are known, `text` and `kept_text`."""
        out = []
        for i in self.removed.tolist():
            j = int(self.dup_of[i])
            ref = bool(self.source[i] == 1)
            row: dict[str, Any] = {
                "index": i,
                "duplicate_of": j,
                "score": float(self.score[i]),
                "against": "reference" if ref else "self",
            }
            if self.texts is not None:
                row["text"] = self.texts[i]
                pool = self.reference_texts if ref else self.texts
                if pool is not None:
                    row["kept_text"] = pool[j]
            out.append(row)
        return out

    def summary(self) -> dict[str, Any]:
        """Counts and score statistics of the removed items."""
        rem = self.removed
        s = self.score[rem].astype(np.float64)
        out: dict[str, Any] = {
            "n": self.n,
            "kept": int(self.kept.shape[0]),
            "removed": int(rem.shape[0]),
            "removed_self": int((self.source == 0).sum()),
            "removed_reference": int((self.source == 1).sum()),
            "threshold": self.threshold,
        }
        if rem.size:
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
    approx: bool = False,
    neighbors: int = 32,
    ann_dtype: str = "i8",
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
        approx: candidate pairs from a usearch index (`tokvec.ann`: each item's `neighbors` nearest items,
            and nearest reference items) instead of the exact pair search; scores stay exact and the greedy
            pass is the same, but missed pairs are not seen (no item is removed without a true duplicate).
        neighbors: with approx, neighbours searched per item.
        ann_dtype: with approx, usearch's storage type ("i8", "f16" or "f32").

    Returns:
        a `DedupResult`.
    """
    e = _matrix(embeddings, "embeddings")
    if e.dtype != np.float32:
        raise TypeError("dedup with explanations takes float vectors; use tokvec.dedup_indices for packed bits")
    t = _threshold(threshold)
    n = e.shape[0]
    akw = {"neighbors": neighbors, "dtype": ann_dtype}
    if approx:
        from tokvec import ann
    if reference is None and self_dedup and not approx:
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
        ci, cj, cs = ann.approx_pairs_cross(r, e, t, **akw) if approx else _cross(r, e, t)
        parts = [(ci, cj + m, cs)]
    if self_dedup:
        pi, pj, ps = ann.approx_pairs(e, t, **akw) if approx else _pairs(e, t)
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
    ts = sorted({_threshold(t) for t in thresholds})
    if not ts:
        raise ValueError("thresholds is empty")
    i, j, s = _pairs(e, ts[0])
    out = []
    for t in ts:
        kept, _, _ = _resolve(e.shape[0], i, j, s, t)
        out.append(
            {
                "threshold": t,
                "kept": int(kept.shape[0]),
                "removed": int(e.shape[0] - kept.shape[0]),
                "pairs": int((s > t).sum()),
            }
        )
    return out


class DedupIndex:
    """The vectors kept so far by an incremental deduplication, stored as a safetensors file
    (tensor `embeddings` F32 [n, d]; metadata `threshold`, `model`, `count`).

    Deduplicating batch after batch against the index keeps exactly what one greedy pass over all
    batches concatenated would keep: index rows are earlier kept rows, so a new row is dropped when it
    is above the threshold with an index row or with an earlier kept row of its own batch.
    """

    def __init__(self, embeddings: np.ndarray, metadata: dict[str, str] | None = None) -> None:
        self.embeddings = np.ascontiguousarray(embeddings, np.float32)
        self.metadata = dict(metadata or {})

    @property
    def size(self) -> int:
        """Number of vectors in the index."""
        return int(self.embeddings.shape[0])

    @classmethod
    def load(cls, path: str | os.PathLike[str], dim: int | None = None) -> DedupIndex:
        """Opens an index file; a missing file gives an empty index of dimension `dim`.

        Raises:
            FormatError: the file is not a tokvec dedup index.
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
        E = np.frombuffer(f.tensor_bytes("embeddings"), dtype="<f4").reshape(shape)
        return cls(E, f.metadata())

    def dedup(self, embeddings: Any, threshold: float) -> DedupResult:
        """Deduplicates a batch against the index and within itself (does not add it)."""
        return dedup(embeddings, threshold, reference=self.embeddings)

    def add(self, embeddings: Any) -> None:
        """Appends vectors (normally the kept rows of a batch)."""
        e = np.ascontiguousarray(embeddings, np.float32)
        if e.ndim != 2 or (self.size and e.shape[1] != self.embeddings.shape[1]):
            raise ValueError(f"expected (n, {self.embeddings.shape[1]}) vectors, got {e.shape}")
        self.embeddings = np.concatenate([self.embeddings, e]) if self.size else e

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the index atomically (temporary file + rename)."""
        from tokvec.model import write_safetensors
        from tokvec.textio import write_atomic

        meta = {**self.metadata, "count": str(self.size), "format": "tokvec-dedup-index"}
        data = self.embeddings.astype("<f4", copy=False).tobytes()
        return write_atomic(
            path, lambda tmp: write_safetensors(tmp, {"embeddings": ("F32", list(self.embeddings.shape), data)}, meta)
        )


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
