"""The corpus and the quality measure of the deduplication benches (benches/scale.py; the figures of docs/dedup.md).

`texts(n)`: the first n sentences of ../shared/data/wikipedia-sentences/sentences.tsv; past its 320,000 sentences,
lightly perturbed copies of random sentences (`perturb`: one of a word dropped, two neighbouring words swapped,
lower-cased, a word repeated), all shuffled with a fixed seed. For n <= 320,000 it is a prefix of `texts(320000)`,
so the vectors of a larger run can be sliced.

`sampled_residual`: the duplicates an approximate deduplication left in, from random rows whose exact pairs with
every row come from the exact cross kernel.

(This file also held a usearch HNSW bench; the HNSW path is gone, docs/dedup.md says why. Its name stays because
other benches import `texts` from it.)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tokvec import _core

SENTENCES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikipedia-sentences" / "sentences.tsv"


def perturb(s: str, rng: np.random.Generator) -> str:
    w = s.split()
    if len(w) < 3:
        return s.lower()
    op = int(rng.integers(0, 4))
    k = int(rng.integers(0, len(w) - 1))
    if op == 0:
        del w[k]
    elif op == 1:
        w[k], w[k + 1] = w[k + 1], w[k]
    elif op == 2:
        return s.lower()
    else:
        w.insert(k, w[k])
    return " ".join(w)


def texts(n: int, seed: int = 0) -> list[str]:
    with open(SENTENCES, encoding="utf-8", newline="") as f:
        base = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    if n <= len(base):
        return base[:n]
    rng = np.random.default_rng(seed)
    src = rng.integers(0, len(base), n - len(base))
    out = base + [perturb(base[i], rng) for i in src.tolist()]
    return [out[i] for i in rng.permutation(n).tolist()]


def sampled_residual(E: np.ndarray, is_kept: np.ndarray, t: float, sample: int,
                     seed: int = 1) -> tuple[dict, np.ndarray, np.ndarray]:
    """Duplicates a deduplication left in, from `sample` random rows whose exact pairs above `t` with every row
    come from the exact cross kernel: `sampled_kept` (sampled rows kept) and `sampled_kept_with_duplicate_left`
    (those with an exact pair above `t` with an earlier kept row). Also returns the sampled exact pairs (lo, hi)."""
    n = len(E)
    rng = np.random.default_rng(seed)
    R = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    ri, rj, _ = _core.duplicate_pairs_cross(np.ascontiguousarray(E[R]), E, t)
    ri = R[ri]
    off = ri != rj
    ri, rj = ri[off], rj[off]
    lo, hi = np.minimum(ri, rj), np.maximum(ri, rj)
    left = np.zeros(n, bool)
    earlier = (rj < ri) & is_kept[rj] & is_kept[ri]
    left[ri[earlier]] = True
    ks = R[is_kept[R]]
    return {"sampled_kept": len(ks), "sampled_kept_with_duplicate_left": int(left[ks].sum())}, lo, hi
