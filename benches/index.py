"""`tokvec.Index` against faiss on Wikipedia text: queries/s and recall@10.

    python benches/index.py 200000                   # 200k indexed sentences, 2,000 query sentences
    python benches/index.py 318000 --nprobe 8 16 32  # the probes to compare
    python benches/index.py 10000000 --corpus passages --cache /tmp/passages-10m.npy --repeat 2

Corpus (`--corpus`), embedded with the bundled default model (`tokvec.load()`):
- `sentences`: the first N sentences of ../shared/data/wikipedia-sentences/sentences.tsv (N <= 318,000);
- `passages`: N two-sentence passages, each two sentences drawn at random (fixed seed) from those before the queries'
  sentences, so N can go past the file (10M passages are 10M distinct texts: a collision of two draws of 318,000^2
  pairs is rare).
`--cache FILE.npy` keeps the embedded corpus: written once in blocks into a memory map, reused (memory-mapped) when
its shape is (N, dim). Queries: the last `--queries` sentences of the file (other articles).

Compared, on the same vectors and queries, one search call over all queries at a time, best of `--repeat` runs:
- exact: `tokvec.Index(exact=True)` (`tokvec.topk`) against faiss's exhaustive inner-product search (`faiss.knn`, the
  kernel of `IndexFlatIP.search`, called on the vectors in place: `IndexFlatIP.add` would copy them, 10 GB at 10M);
- partitioned, for every nprobe and the default: `tokvec.Index` against faiss `IndexIVFFlat` (inner product) with the
  same nlist, its k-means trained on as many rows as tokvec's (64 per list, `max_points_per_centroid`). One engine
  at a time: the tokvec index is dropped before faiss builds its own (faiss's holds a copy of the vectors).
Recall@10 is against tokvec's exact top-10. Reported: one JSON line per configuration (build seconds, the memory the
index added, search seconds, queries/s, recall@10).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import time
from pathlib import Path

import faiss
import numpy as np
import tokvec
from timing import best

SENTENCES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikipedia-sentences" / "sentences.tsv"
K = 10
#: rows per list tokvec's k-means trains on (`default_sample` in rust/index.rs); faiss gets the same
TRAIN_ROWS_PER_LIST = 64
#: texts embedded per call when filling the cache (bounds the token ids in memory)
BLOCK = 250_000


def sentences() -> list[str]:
    with open(SENTENCES, encoding="utf-8", newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        return [row[1] for row in r]


def passages(pool: list[str], a: int, b: int, seed: int = 0) -> list[str]:
    """Passages a..b of the stream of seed `seed` (the same passage i whatever block it is drawn in)."""
    rng = np.random.default_rng([seed, a])
    ij = rng.integers(0, len(pool), (b - a, 2)).tolist()
    return [f"{pool[i]} {pool[j]}" for i, j in ij]


def corpus(m: tokvec.Model, texts: list[str], a: argparse.Namespace) -> np.ndarray:
    """The (n, dim) corpus vectors, from the cache when it has the right shape."""
    pool = texts[: -a.queries]
    if a.corpus == "sentences":
        if a.n > len(pool):
            raise SystemExit(f"--corpus sentences: n must be at most {len(pool)}")

        def block(lo: int, hi: int) -> list[str]:
            return pool[lo:hi]

    else:

        def block(lo: int, hi: int) -> list[str]:
            return passages(pool, lo, hi)

    shape = (a.n, m.dim)
    if a.cache is not None and a.cache.exists():
        E = np.load(a.cache, mmap_mode="r")
        if E.shape == shape and E.dtype == np.float32:
            return E
        raise SystemExit(f"{a.cache}: holds {E.dtype} {E.shape}, not float32 {shape}; remove it or name another")
    if a.cache is None:
        E = np.empty(shape, np.float32)
    else:
        E = np.lib.format.open_memmap(a.cache, mode="w+", dtype=np.float32, shape=shape)
    t0 = time.perf_counter()
    for lo in range(0, a.n, BLOCK):
        hi = min(a.n, lo + BLOCK)
        E[lo:hi] = m.embed(block(lo, hi))
    print(json.dumps({"embedded": a.n, "corpus": a.corpus, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    if a.cache is not None:
        E.flush()
        del E
        return np.load(a.cache, mmap_mode="r")
    return E


def anon_bytes() -> int:
    """This process's anonymous resident memory (what an index holds, as opposed to mapped file pages)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist())) / exact.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, help="indexed texts")
    ap.add_argument("--corpus", choices=("sentences", "passages"), default="sentences")
    ap.add_argument("--cache", type=Path, help="a .npy file that keeps the embedded corpus between runs")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-faiss-ivf", action="store_true", help="skip faiss IndexIVFFlat (its build at 10M is long)")
    a = ap.parse_args()
    texts = sentences()
    m = tokvec.load()
    E = corpus(m, texts, a)
    Q = m.embed(texts[-a.queries :])
    nq = len(Q)

    def line(**kw) -> None:
        print(
            json.dumps({"n": a.n, "corpus": a.corpus, "queries": nq, "threads": faiss.omp_get_max_threads(), **kw}),
            flush=True,
        )

    t, ex = best(lambda: tokvec.Index(E, exact=True).search(Q, K), a.repeat)
    line(engine="tokvec", kind="exact", search_s=round(t, 4), qps=round(nq / t))
    t, (_, fi) = best(lambda: faiss.knn(Q, E, K, metric=faiss.METRIC_INNER_PRODUCT), a.repeat)
    line(
        engine="faiss knn (IndexFlatIP)",
        kind="exact",
        search_s=round(t, 4),
        qps=round(nq / t),
        recall=recall(fi, ex[1]),
    )

    def run(engine: str, build_s: float, index_bytes: int, search, probes: list[int]) -> None:
        for p in probes:
            t, (_, found) = best(lambda p=p: search(p), a.repeat)
            line(
                engine=engine,
                kind="ivf",
                nlist=nlist,
                nprobe=p,
                build_s=round(build_s, 2),
                index_mb=round(index_bytes / 2**20),
                search_s=round(t, 4),
                qps=round(nq / t),
                recall=round(recall(found, ex[1]), 4),
            )

    gc.collect()
    before = anon_bytes()
    t0 = time.perf_counter()
    ix = tokvec.Index(E)
    build = time.perf_counter() - t0
    nlist = ix.nlist
    dflt = tokvec.index.default_nprobe(nlist)
    probes = sorted({p for p in a.nprobe if p <= nlist} | {dflt})
    run("tokvec", build, anon_bytes() - before, lambda p, ix=ix: ix.search(Q, K, nprobe=p), probes)
    del ix
    gc.collect()
    if a.no_faiss_ivf:
        return

    before = anon_bytes()
    quant = faiss.IndexFlatIP(E.shape[1])
    ivf = faiss.IndexIVFFlat(quant, E.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.max_points_per_centroid = TRAIN_ROWS_PER_LIST
    t0 = time.perf_counter()
    ivf.train(E)
    ivf.add(E)
    fbuild = time.perf_counter() - t0

    def faiss_search(p: int) -> tuple[np.ndarray, np.ndarray]:
        ivf.nprobe = p
        return ivf.search(Q, K)

    run("faiss IndexIVFFlat", fbuild, anon_bytes() - before, faiss_search, probes)


if __name__ == "__main__":
    main()
