"""Approximate (usearch) vs exact deduplication on Wikipedia sentences: time and recall.

    python benches/ann_dedup.py 320000                  # the 320k sentences, exact run too
    python benches/ann_dedup.py 1000000 --exact dedup   # + perturbed copies up to 1M texts; exact greedy run only

Texts: the first N sentences of ../shared/data/wikipedia-sentences/sentences.tsv; past its 320,000 sentences,
lightly perturbed copies of random sentences (one of: a word dropped, two neighbouring words swapped, lower-cased,
a word repeated), all shuffled with a fixed seed. Embeddings: the bundled default model (`tokvec.load()`).

Reported (one JSON line): approximate timings (index build, search, exact re-scoring, greedy pass), and
- with the exact runs: their times, the recall of the exact pairs above the threshold (with `--exact all`), the
  share of the items exact removes that the approximate run removes too, and the kept-set differences;
- always, from `--sample` random rows whose exact pairs with every row are found by the exact cross kernel:
  the sampled pair recall, and the share of sampled kept rows that still have an exact duplicate among the earlier
  kept rows (duplicates the approximate run left in).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import tokvec
from tokvec import _core
from tokvec.ann import approx_pairs

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--neighbors", type=int, default=32)
    ap.add_argument("--dtype", default="i8")
    ap.add_argument("--exact", choices=["all", "dedup", "none"], default="all",
                    help="exact runs to compare with: all pairs and greedy dedup, greedy dedup only, none")
    ap.add_argument("--sample", type=int, default=2000)
    a = ap.parse_args()
    t = a.threshold
    T = texts(a.n)
    m = tokvec.load()
    t0 = time.perf_counter()
    E = m.embed(T)
    out: dict = {"n": len(T), "threshold": t, "neighbors": a.neighbors, "dtype": a.dtype,
                 "embed_seconds": round(time.perf_counter() - t0, 1), "cpu": tokvec.CPU_FEATURES}
    n = len(E)
    st: dict = {}
    t0 = time.perf_counter()
    ai, aj, as_ = approx_pairs(E, t, neighbors=a.neighbors, dtype=a.dtype, stats=st)
    t1 = time.perf_counter()
    kept, _, _ = _core.dedup_resolve(n, ai, aj, as_, t)
    t2 = time.perf_counter()
    out.update(approx_seconds=round(t2 - t0, 1), **st, resolve_seconds=round(t2 - t1, 2), approx_kept=len(kept))
    print(json.dumps(out), file=sys.stderr, flush=True)
    is_kept = np.zeros(n, bool)
    is_kept[kept] = True

    res, lo, hi = sampled_residual(E, is_kept, t, a.sample)
    found = np.isin(lo * n + hi, ai * n + aj)
    out["sampled_exact_pairs"] = len(lo)
    out["sampled_pair_recall"] = round(float(found.mean()), 4) if len(lo) else None
    out.update(res)
    print(json.dumps(out), file=sys.stderr, flush=True)

    if a.exact == "all":
        t0 = time.perf_counter()
        ei, ej, _ = _core.duplicate_pairs(E, t)
        out.update(exact_pairs_seconds=round(time.perf_counter() - t0, 1), exact_pairs=len(ei), approx_pairs=len(ai),
                   pair_recall=round(float(np.isin(ei * n + ej, ai * n + aj).mean()), 4) if len(ei) else None)
    if a.exact != "none":
        t1 = time.perf_counter()
        ek, _, _ = _core.dedup(E, t)
        t2 = time.perf_counter()
        ke = np.zeros(n, bool)
        ke[ek] = True
        out.update(exact_dedup_seconds=round(t2 - t1, 1), exact_kept=len(ek),
                   removed_recall=round(float((~is_kept & ~ke).sum() / max((~ke).sum(), 1)), 4),
                   kept_only_approx=int((is_kept & ~ke).sum()), kept_only_exact=int((ke & ~is_kept).sum()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
