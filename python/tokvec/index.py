"""`Index`: top-k search over a fixed set of vectors, for ranking jobs over many documents.

A partitioned index splits the vectors into `nlist` k-means lists (the lists of partitioned deduplication) and
scans, for each query, the rows of its `nprobe` nearest lists, with the engine of `tokvec.topk`: an int8 pre-score
with a proven error bound, then the exact canonical score of every candidate. So every score it returns is the exact
one (bit-identical to `tokvec.topk`), and with `nprobe = nlist` the result is `tokvec.topk`'s; fewer probes trade
recall for speed. `exact=True` keeps no lists and searches every row with `tokvec.topk`.

An index is saved as one safetensors file (tensors `vectors` F32 [n, d], and for a partitioned index `centroids` F32
[nlist, d] and `labels` U32 [n], the home list of every row; metadata `format` = "tokvec-index", `count`, `dim`,
`nlist`, and the caller's own entries); `Index.load` memory-maps the vectors.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tokvec import _core
from tokvec._io import read_float32, read_tensor, write_safetensors
from tokvec._validate import int_at_least, matrix, nonfinite_row, positive_int_or_none
from tokvec.search import topk
from tokvec.textio import write_atomic

__all__ = ["Index", "default_nprobe", "texts_digest"]

#: `format` metadata of a saved index.
FORMAT = "tokvec-index"
#: Metadata keys a saved index sets itself (the caller's `metadata` may not use them).
_OWN_KEYS = frozenset({"format", "count", "dim", "nlist"})
#: Texts hashed per step by `texts_digest` (bounds the joined copy).
_DIGEST_CHUNK = 65_536


def default_nprobe(nlist: int) -> int:
    """Lists a query scans by default: 2.5 sqrt(nlist), at least 16 (at most nlist). The fraction of the rows scanned
    falls as the index grows, and the recall stays near 0.95: measured on Wikipedia text with the default model
    (query sentences of other articles; docs/python.md), 0.950-0.968 of the exact top-10 from 283 lists (20,000
    sentences: 42 probes) to 6,325 lists (10M two-sentence passages: 199 probes)."""
    return min(nlist, max(16, round(2.5 * math.sqrt(nlist))))


def _floats(x: Any, name: str) -> np.ndarray:
    """A 2-D float array as C-contiguous float32 (packed sign bits are refused: an index holds float vectors)."""
    arr = matrix(x, name)
    if arr.dtype != np.float32:
        raise TypeError(f"{name} must be float vectors; an Index does not take packed uint64 sign bits")
    return arr


class Index:
    """Top-k search over a fixed set of vectors (inner product; cosine for L2-normalized rows).

    Args:
        vectors: (n, d) float array, n >= 1. The index keeps a reference (float32 input is not copied): do not
            modify the array afterwards.
        nlist: number of k-means lists (default 2 sqrt(n), at most n); not with `exact=True`.
        exact: keep no lists; every search scans every row (`tokvec.topk`).

    Raises:
        TypeError / ValueError: a bad argument (checked before any work).
    """

    def __init__(self, vectors: Any, *, nlist: int | None = None, exact: bool = False) -> None:
        if not isinstance(exact, bool):
            raise TypeError(f"exact must be True or False, got {exact!r}")
        nlist = positive_int_or_none(nlist, "nlist")
        if exact and nlist is not None:
            raise ValueError("nlist applies to a partitioned index; pass exact=False or leave nlist out")
        v = _floats(vectors, "vectors")
        if v.shape[0] == 0:
            raise ValueError("vectors has no rows; an index needs at least one")
        self._start(v, None if exact else _core.IvfIndex(v, nlist=nlist), {})

    def _start(self, v: np.ndarray, core: _core.IvfIndex | None, metadata: dict[str, str]) -> None:
        # the rows are kept as parts (the given or loaded rows, then the blocks `add` appended), replaced as a whole
        # tuple, so a search reads one consistent view while another thread adds: the core then holds more rows
        # than the view, and searches the view's
        self._parts: tuple[np.ndarray, ...] = (v,)
        self._core = core
        self._metadata = metadata
        self._adding = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # pickled (to send an index to worker processes): the rows as one array and the lists as `save` writes
        # them; unpickling repacks the lists' codes, as `load` does
        with self._adding:
            parts = self._parts
            lists = None if self._core is None else (self._core.centroids, self._core.labels)
        v = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return {"vectors": np.asarray(v), "lists": lists, "metadata": dict(self._metadata)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        v, lists = state["vectors"], state["lists"]
        core = None if lists is None else _core.IvfIndex(v, centroids=lists[0], labels=lists[1])
        self._start(v, core, state["metadata"])

    @classmethod
    def from_texts(cls, model: Any, texts: Iterable[str], **kwargs: Any) -> Index:
        """Embeds `texts` with `model` (a `tokvec.Model`) and indexes them; `kwargs` go to `Index`. Row i is
        text i."""
        if isinstance(texts, str):
            raise TypeError("texts must be an iterable of str, not a single str")
        return cls(model.embed(list(texts)), **kwargs)

    def __len__(self) -> int:
        return _rows(self._parts)

    def __repr__(self) -> str:
        kind = "exact" if self._core is None else f"nlist={self._core.nlist}"
        return f"Index(n={len(self)}, dim={self.dim}, {kind})"

    @property
    def dim(self) -> int:
        """Columns of every vector."""
        return int(self._parts[0].shape[1])

    @property
    def exact(self) -> bool:
        """Whether every search scans every row."""
        return self._core is None

    @property
    def nlist(self) -> int | None:
        """Number of lists (None for an exact index)."""
        return None if self._core is None else int(self._core.nlist)

    @property
    def metadata(self) -> dict[str, str]:
        """The caller's metadata given to `save` (or read by `load`); a copy."""
        return dict(self._metadata)

    @property
    def vectors(self) -> np.ndarray:
        """The indexed vectors, float32 (n, d), row i being index i: the array given (memory-mapped for a loaded
        index); once `add` has grown the index, a concatenated copy."""
        parts = self._parts
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def search(self, queries: Any, k: int = 10, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `k` rows with the highest inner product for every query, as `tokvec.topk`.

        Args:
            queries: (nq, d) float array, or (d,) for one query.
            k: neighbours per query; clipped to the index size.
            nprobe: lists scanned per query (1..nlist; default `default_nprobe(nlist)`); nlist gives exactly
                `tokvec.topk(queries, vectors, k)`. Not for an exact index.

        Returns:
            (scores float32, indices int64), each (nq, min(k, n)) — or (min(k, n),) for a 1-D query — best first,
            ties broken by the lower index; each score is the exact one. Slots the probed lists cannot fill (fewer
            than k rows in them) hold -inf and -1.

        Raises:
            TypeError / ValueError: a bad argument (checked before any work).
        """
        single = np.ndim(queries) == 1
        q = _floats(np.reshape(queries, (1, -1)) if single else queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have {q.shape[1]} columns but the index holds vectors of {self.dim}")
        k = int_at_least(k, "k")
        nprobe = positive_int_or_none(nprobe, "nprobe")
        parts = self._parts
        if self._core is None:
            if nprobe is not None:
                raise ValueError("nprobe applies to a partitioned index; this one is exact (it scans every row)")
            s, i = _topk_parts(q, parts, k)
        else:
            nlist = self._core.nlist
            if nprobe is not None and nprobe > nlist:
                raise ValueError(f"nprobe must be at most nlist ({nlist}), got {nprobe}")
            p = default_nprobe(nlist) if nprobe is None else nprobe
            kk = min(k, _rows(parts))
            if q.shape[0] == 0:
                s, i = np.zeros((0, kk), np.float32), np.zeros((0, kk), np.int64)
            else:
                s, i = self._core.search(q, kk, p, list(parts))
        return (s[0], i[0]) if single else (s, i)

    def add(self, vectors: Any) -> None:
        """Appends vectors (copied); their indices continue after the existing ones. In a partitioned index each new
        row joins its nearest existing list (the lists are not retrained). The cost is the new rows': the existing
        rows are neither copied nor read (a loaded index stays memory-mapped) and only the new rows are packed.
        Searches may run in other threads meanwhile (they see the rows of before or after the add, never a mix);
        adds from several threads take turns.

        Raises:
            TypeError / ValueError: a bad argument (checked before any work; the index is unchanged).
        """
        v = _floats(vectors, "vectors")
        if v.shape[1] != self.dim:
            raise ValueError(f"vectors have {v.shape[1]} columns but the index holds vectors of {self.dim}")
        if v.shape[0] == 0:
            return
        v = v.copy()
        with self._adding:
            if self._core is not None:
                self._core.add(v)
            else:
                _check_finite(v)
            self._parts = _merge_added((*self._parts, v))

    def save(self, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
        """Writes the index as one safetensors file, atomically (a temporary file renamed over `path`).

        Args:
            path: the file.
            metadata: str -> str entries to keep with the index (what it was built from, say); `load` gives them
                back as `Index.metadata`. The keys format, count, dim and nlist are the index's own.

        Returns:
            the path written.

        Raises:
            TypeError / ValueError: metadata that is not str -> str, or uses one of the index's own keys.
        """
        extra = self._metadata if metadata is None else _user_metadata(metadata)
        with self._adding:  # the rows and the lists of one moment
            parts = self._parts
            lists = None if self._core is None else (self._core.centroids, self._core.labels)
        n = _rows(parts)
        tensors = {"vectors": ("F32", [n, self.dim], [_raw(p) for p in parts])}
        meta = {**extra, "format": FORMAT, "count": str(n), "dim": str(self.dim)}
        if lists is not None:
            c, lab = lists
            tensors["centroids"] = ("F32", list(c.shape), _raw(c))
            tensors["labels"] = ("U32", [len(lab)], _raw(lab))
            meta["nlist"] = str(c.shape[0])
        out = write_atomic(path, lambda tmp: write_safetensors(tmp, tensors, meta))
        self._metadata = dict(extra)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = True) -> Index:
        """Opens an index written by `save`.

        Args:
            path: the file.
            mmap: memory-map the vectors (read-only, paged in as searches read them) instead of reading them.

        Raises:
            FileNotFoundError: no such file.
            FormatError: the file is not a valid tokvec index (the message names it and what is wrong).
        """
        p = Path(path)
        f = _core.SafetensorsFile(p)
        meta, info = f.metadata(), f.tensors()
        if meta.get("format") != FORMAT:
            raise _core.FormatError(f"{p}: not a tokvec index (its metadata has no format={FORMAT!r})")

        def need(name: str, dtype: str, ndim: int) -> list[int]:
            if name not in info:
                raise _core.FormatError(f"{p}: tensor {name!r} is missing")
            dt, shape = info[name]
            if dt != dtype or len(shape) != ndim:
                raise _core.FormatError(
                    f"{p}: tensor {name!r} must be {dtype} with {ndim} dimension(s), is {dt} {shape}"
                )
            return list(shape)

        n, d = need("vectors", "F32", 2)
        if n == 0 or d == 0:
            raise _core.FormatError(f"{p}: tensor 'vectors' is empty ({n} x {d})")
        partitioned = "centroids" in info or "labels" in info
        if partitioned:
            nlist, dc = need("centroids", "F32", 2)
            if dc != d or nlist == 0 or need("labels", "U32", 1) != [n]:
                raise _core.FormatError(
                    f"{p}: tensors 'centroids' {info['centroids'][1]} and 'labels' {info['labels'][1]} do not fit "
                    f"{n} vectors of {d} columns"
                )
        vectors = _mapped(p, n, d) if mmap else read_float32(f, "vectors")
        core = None
        try:
            if partitioned:  # the core checks every row as it packs the lists
                labels = np.ascontiguousarray(read_tensor(f, "labels"), np.uint32)
                core = _core.IvfIndex(vectors, centroids=read_float32(f, "centroids"), labels=labels)
            else:
                _check_finite(vectors)
        except ValueError as e:
            raise _core.FormatError(f"{p}: {e}") from None
        ix = cls.__new__(cls)
        ix._start(vectors, core, {k: v for k, v in meta.items() if k not in _OWN_KEYS})
        return ix


def texts_digest(texts: Iterable[str]) -> str:
    """A hex digest (BLAKE2b, 128 bits) of a sequence of texts, order included: what a saved index can record of the
    texts it was built from, so that a later run can tell whether it is given the same ones. Texts are hashed with
    their lengths, so no two different sequences join into the same bytes."""
    h = hashlib.blake2b(digest_size=16)
    it = iter(texts)
    while chunk := list(itertools.islice(it, _DIGEST_CHUNK)):
        h.update(np.fromiter(map(len, chunk), np.int64, len(chunk)).tobytes())
        h.update("".join(chunk).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _user_metadata(metadata: Any) -> dict[str, str]:
    """`metadata` as a str -> str dict without the index's own keys (TypeError / ValueError naming the bad entry)."""
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict of str to str, got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str; entry {k!r}: {v!r} does not")
        if k in _OWN_KEYS:
            raise ValueError(f"metadata key {k!r} is the index's own (format, count, dim, nlist); pick another name")
    return dict(metadata)


def _check_finite(v: np.ndarray) -> None:
    """ValueError naming the first row of `v` with NaN or infinity."""
    r = nonfinite_row(v)
    if r is not None:
        raise ValueError(f"vectors: row {r} contains NaN or infinity")


def _rows(parts: tuple[np.ndarray, ...]) -> int:
    """Rows in all the parts of an index's rows."""
    return sum(int(p.shape[0]) for p in parts)


def _merge_added(parts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """`parts` with the added blocks (all but the first) merged while the last holds at least half the rows of the one
    before: the blocks stay O(log n) many (a search finds a row's block by bisection), each added row is copied
    O(log n) times in all, and the first part (the given or loaded rows, maybe 10 GB memory-mapped) is never
    copied."""
    parts = list(parts)
    while len(parts) > 2 and 2 * parts[-1].shape[0] >= parts[-2].shape[0]:
        last = parts.pop()
        parts[-1] = np.concatenate([parts[-1], last])
    return tuple(parts)


def _topk_parts(q: np.ndarray, parts: tuple[np.ndarray, ...], k: int) -> tuple[np.ndarray, np.ndarray]:
    """`tokvec.topk(q, concatenation of parts, k)` without the concatenation: each part's top k, merged (best score
    first, ties by the lower index, as topk orders them; the top k of the whole is made of each part's top k)."""
    if len(parts) == 1:
        return topk(q, parts[0], k)
    ss, ii, start = [], [], 0
    for p in parts:
        s, i = topk(q, p, k)
        ss.append(s)
        ii.append(i + start)
        start += p.shape[0]
    s, i = np.concatenate(ss, axis=1), np.concatenate(ii, axis=1)
    order = np.lexsort((i, -s), axis=1)[:, : min(k, start)]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def _raw(a: np.ndarray) -> Any:
    """The little-endian bytes of an array (a memoryview that `write_safetensors` writes as bytes), without a copy
    when it is C-contiguous already."""
    a = np.ascontiguousarray(a, a.dtype.newbyteorder("<"))
    return memoryview(a.reshape(-1)).cast("B")


def _mapped(p: Path, n: int, d: int) -> np.ndarray:
    """Tensor `vectors` of a safetensors file whose header the core has validated (offsets inside the file), as a
    read-only memory map at the byte range the core reports."""
    start, _ = _core.Table(p, "vectors", "safetensors").byte_range
    return np.memmap(p, dtype="<f4", mode="r", offset=start, shape=(n, d))
