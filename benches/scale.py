"""Exact against partitioned (`approx=True`) deduplication, and faiss IVF, at a given size.

    python benches/scale.py 100000
    python benches/scale.py 320000 --nprobe 8,4,16 --cache /tmp/e320k.npy
    python benches/scale.py 1000000 --skip-exact          # partitioned and faiss only
    python benches/scale.py 1000000 --exact-cache /tmp/k1m.npy --skip-faiss   # exact's kept set from an earlier run
    python benches/scale.py 1000000 --vectors /tmp/passages-10m.npy   # the first 1M rows of another corpus

Texts and embeddings as benches/ann_dedup.py (`texts()`: Wikipedia sentences, past 320,000 perturbed copies;
the bundled default model), embedded once (`--cache` keeps the vectors in a .npy file for the next run). `--vectors
FILE.npy` takes the first N rows of a file instead, e.g. the two-sentence passages of benches/index.py (`--corpus
passages --cache FILE.npy`), a corpus of mostly distinct texts.

Each run reports (one JSON line per method on stderr as it finishes, all of them on stdout at the end): seconds,
rows kept, the share of the rows exact removes that the run removes too (`removed_share`), rows kept only by the
run / only by exact, and the sampled residual-duplicate rate of benches/ann_dedup.py (`sampled_residual`: sampled
kept rows that still have an earlier kept row above the threshold). faiss (when importable): `IndexIVFFlat` with
the inner product, the same number of lists trained on evenly spaced rows (39 per list, as faiss asks), `range_search` at the
threshold, the pairs re-scored with the canonical dot (`_core.dot_pairs`) and resolved by the same greedy pass
(`_core.dedup_resolve`), so it is comparable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tokvec
from tokvec import _core
from tokvec.dedup import dedup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann_dedup import sampled_residual, texts


def embed(n: int, cache: str | None, vectors: str | None = None) -> np.ndarray:
    if vectors:
        V = np.load(vectors, mmap_mode="r")
        if V.shape[0] < n:
            raise SystemExit(f"{vectors} has {V.shape[0]} rows, fewer than {n}")
        return np.ascontiguousarray(V[:n], np.float32)
    if cache and Path(cache).exists():
        E = np.load(cache)
        if E.shape[0] == n:
            return E
    E = tokvec.load().embed(texts(n))
    if cache:
        np.save(cache, E)
    return E


def faiss_dedup(E: np.ndarray, t: float, nlist: int, nprobe: int, sample: int) -> tuple[np.ndarray, dict[str, Any]]:
    import faiss

    n, d = E.shape
    t0 = time.perf_counter()
    q = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(q, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rows = (np.arange(sample, dtype=np.int64) * n) // sample
    index.train(np.ascontiguousarray(E[rows]))
    index.add(E)
    index.nprobe = nprobe
    t1 = time.perf_counter()
    lims, _, I = index.range_search(E, t)
    t2 = time.perf_counter()
    qi = np.repeat(np.arange(n, dtype=np.int64), np.diff(lims).astype(np.int64))
    I = I.astype(np.int64)
    keep = qi != I
    lo, hi = np.minimum(qi[keep], I[keep]), np.maximum(qi[keep], I[keep])
    code = np.unique(lo * n + hi)
    i, j = code // n, code % n
    s = _core.dot_pairs(E, E, i, j)
    above = s > np.float32(t)
    kept, _, _ = _core.dedup_resolve(n, i[above], j[above], s[above], t)
    t3 = time.perf_counter()
    return kept, {
        "index_seconds": round(t1 - t0, 1),
        "search_seconds": round(t2 - t1, 1),
        "rescore_resolve_seconds": round(t3 - t2, 1),
        "candidates": int(code.shape[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--nprobe", default="default,4,16",
                    help="partitioned runs: comma-separated nprobe values, `default` for dedup's own choice")
    ap.add_argument("--nlist", type=int, default=None, help="lists (default: tokvec's default for n)")
    ap.add_argument("--faiss-nprobe", type=int, default=8)
    ap.add_argument("--skip-exact", action="store_true")
    ap.add_argument("--skip-faiss", action="store_true")
    ap.add_argument("--sample", type=int, default=2000, help="rows sampled for the residual-duplicate rate")
    ap.add_argument("--cache", default=None, help=".npy file holding the embeddings between runs")
    ap.add_argument("--exact-cache", default=None, help=".npy file holding exact's kept mask between runs")
    ap.add_argument("--vectors", default=None, help=".npy file whose first n rows are the vectors (no embedding)")
    a = ap.parse_args()
    t = a.threshold
    t0 = time.perf_counter()
    E = embed(a.n, a.cache, a.vectors)
    n = E.shape[0]
    head = {"n": n, "threshold": t, "embed_seconds": round(time.perf_counter() - t0, 1), "cpu": tokvec.CPU_FEATURES}
    print(json.dumps(head), file=sys.stderr, flush=True)
    runs: list[dict[str, Any]] = []
    exact_kept = None

    def report(name: str, seconds: float, kept: np.ndarray, **extra: Any) -> None:
        is_kept = np.zeros(n, bool)
        is_kept[kept] = True
        row: dict[str, Any] = {"method": name, "seconds": round(seconds, 1), "kept": int(kept.shape[0]), **extra}
        if exact_kept is not None:
            rem_exact = ~exact_kept
            row["removed_share"] = round(float((~is_kept & rem_exact).sum() / max(rem_exact.sum(), 1)), 4)
            row["kept_only_here"] = int((is_kept & rem_exact).sum())
            row["kept_only_exact"] = int((exact_kept & ~is_kept).sum())
        res, _, _ = sampled_residual(E, is_kept, t, a.sample)
        row.update(
            res, sampled_residual=round(res["sampled_kept_with_duplicate_left"] / max(res["sampled_kept"], 1), 4)
        )
        runs.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    if a.exact_cache and Path(a.exact_cache).exists():
        exact_kept = np.load(a.exact_cache)
    elif not a.skip_exact:
        t1 = time.perf_counter()
        r = dedup(E, t)
        dt = time.perf_counter() - t1
        exact_kept = np.zeros(n, bool)
        exact_kept[r.kept] = True
        report("exact", dt, r.kept)
        if a.exact_cache:
            np.save(a.exact_cache, exact_kept)
    nlist = None
    for p in [None if x.strip() == "default" else int(x) for x in a.nprobe.split(",") if x.strip()]:
        st: dict[str, Any] = {}
        t1 = time.perf_counter()
        r = dedup(E, t, approx=True, nprobe=p, nlist=a.nlist, stats=st)
        dt = time.perf_counter() - t1
        nlist = st["nlist"]
        sample = st["sample"]
        st = {k: round(v, 2) if isinstance(v, float) else v for k, v in st.items()}
        report(f"ivf nprobe={p or 'default'}", dt, r.kept, stats=st)
    if not a.skip_faiss and nlist is not None:
        try:
            import faiss  # noqa: F401
        except ImportError:
            print("faiss is not importable: skipped", file=sys.stderr)
        else:
            t1 = time.perf_counter()
            # faiss asks for 39 training rows per list
            kept, st = faiss_dedup(E, t, nlist, a.faiss_nprobe, min(max(sample, 39 * nlist), n))
            report(f"faiss IVFFlat nlist={nlist} nprobe={a.faiss_nprobe}", time.perf_counter() - t1, kept, **st)
    print(json.dumps({**head, "runs": runs}))


if __name__ == "__main__":
    main()
