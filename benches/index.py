"""`tokvec.Index` against faiss on Wikipedia sentences: queries/s and recall@10.

    python benches/index.py 200000                   # 200k indexed sentences, 2,000 query sentences
    python benches/index.py 319000 --nprobe 8 16 32  # the probes to compare

Vectors: the first N sentences of ../shared/data/wikipedia-sentences/sentences.tsv, embedded with the bundled
default model (`tokvec.load()`); queries: the last `--queries` sentences of the file (other articles). Compared, each
on the same vectors and queries, one search call over all queries at a time:
- exact: `tokvec.Index(exact=True)` (`tokvec.topk`) against faiss `IndexFlatIP`;
- partitioned, for every nprobe: `tokvec.Index` against faiss `IndexIVFFlat` (inner product) with the same nlist,
  trained on the same vectors (faiss' own k-means; tokvec's lists come from its spherical k-means on a sample).
Recall@10 is against tokvec's exact top-10. Reported: one JSON line per configuration (build seconds, search
seconds, queries/s, recall@10), best of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import faiss
import numpy as np
import tokvec
from timing import best

SENTENCES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikipedia-sentences" / "sentences.tsv"
K = 10


def sentences() -> list[str]:
    with open(SENTENCES, encoding="utf-8", newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        return [row[1] for row in r]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist())) / exact.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, help="indexed sentences")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    texts = sentences()
    if a.n + a.queries > len(texts):
        raise SystemExit(f"n + queries must be at most {len(texts)}")
    m = tokvec.load()
    E, Q = m.embed(texts[: a.n]), m.embed(texts[-a.queries :])
    nq = len(Q)

    def line(**kw) -> None:
        print(json.dumps({"n": a.n, "queries": nq, "threads": faiss.omp_get_max_threads(), **kw}), flush=True)

    t, ex = best(lambda: tokvec.Index(E, exact=True).search(Q, K), a.repeat)
    line(engine="tokvec", kind="exact", search_s=round(t, 4), qps=round(nq / t))
    flat = faiss.IndexFlatIP(E.shape[1])
    flat.add(E)
    t, (_, fi) = best(lambda: flat.search(Q, K), a.repeat)
    line(engine="faiss IndexFlatIP", kind="exact", search_s=round(t, 4), qps=round(nq / t), recall=recall(fi, ex[1]))

    t0 = time.perf_counter()
    ix = tokvec.Index(E)
    build = time.perf_counter() - t0
    nlist = ix.nlist
    quant = faiss.IndexFlatIP(E.shape[1])
    ivf = faiss.IndexIVFFlat(quant, E.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    ivf.train(E)
    ivf.add(E)
    fbuild = time.perf_counter() - t0

    def faiss_search(p: int) -> tuple[np.ndarray, np.ndarray]:
        ivf.nprobe = p
        return ivf.search(Q, K)

    engines = (("tokvec", build, lambda p: ix.search(Q, K, nprobe=p)), ("faiss IndexIVFFlat", fbuild, faiss_search))
    for p in a.nprobe:
        if p > nlist:
            continue
        for engine, build_s, search in engines:
            t, (_, found) = best(lambda search=search, p=p: search(p), a.repeat)
            line(
                engine=engine,
                kind="ivf",
                nlist=nlist,
                nprobe=p,
                build_s=round(build_s, 2),
                search_s=round(t, 4),
                qps=round(nq / t),
                recall=round(recall(found, ex[1]), 4),
            )


if __name__ == "__main__":
    main()
