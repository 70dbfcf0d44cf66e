"""k-means on the same vectors: tokvec.kmeans vs WordLlama's kmeans_clustering (its `cluster` minus embedding).

Vectors: the default model's embeddings of the first N Wikipedia sentences of ../shared/data. Both get the same
restarts and iteration cap; the inertia printed for both is recomputed in float64 from the returned labels (sum of
squared distances to the label means), so the two are comparable whatever each library reports.

    python benches/kmeans_vs_wordllama.py 50000 50
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np
import tokvec
from wordllama.algorithms import kmeans_clustering

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def inertia_of(X: np.ndarray, labels: np.ndarray, k: int) -> float:
    X64 = X.astype(np.float64)
    total = 0.0
    for c in range(k):
        m = X64[labels == c]
        if len(m):
            total += float(((m - m.mean(0)) ** 2).sum())
    return total


def main() -> None:
    n, k = int(sys.argv[1]), int(sys.argv[2])
    n_init = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    with open(DATA / "wikipedia-sentences" / "sentences.tsv", encoding="utf-8", newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        texts = [row[1] for _, row in zip(range(n), r)]
    X = tokvec.load().embed(texts)
    t = time.perf_counter()
    res = tokvec.kmeans(X, k, n_init=n_init, max_iter=100, seed=0)
    t_tv = time.perf_counter() - t
    t = time.perf_counter()
    wl_labels, _ = kmeans_clustering(
        X, k, n_init=n_init, max_iterations=100, tolerance=1e-4, random_state=np.random.RandomState(0)
    )
    t_wl = time.perf_counter() - t
    wl = np.asarray(wl_labels)
    print(f"n={n} d={X.shape[1]} k={k} n_init={n_init}")
    print(f"tokvec.kmeans      {t_tv:8.2f} s  inertia {inertia_of(X, res.labels, k):.2f}  iterations {res.n_iter}")
    print(f"wordllama kmeans   {t_wl:8.2f} s  inertia {inertia_of(X, wl, k):.2f}")


if __name__ == "__main__":
    main()
