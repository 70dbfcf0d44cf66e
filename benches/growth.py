"""How deduplication time grows with n: exact, partitioned, faiss IVF and semhash at each size, one JSON line each.

    python benches/growth.py --out growth.jsonl                     # 100k, 320k, 1M, 3M, 10M
    python benches/growth.py --sizes 100000,320000 --out g.jsonl --cap 600
    python benches/growth.py --plot growth.jsonl docs/scale.png      # the figure of benches/README.md

Texts as benches/ann_dedup.py (Wikipedia sentences, past 320,000 perturbed copies), threshold 0.9, vectors of the
bundled default model embedded once per size (`--cache-dir` keeps them; the timed dedup of exact, partitioned and
faiss starts from the vectors, as in benches/scale.py):
- exact: `tokvec.dedup(E, 0.9)`;
- partitioned: `tokvec.dedup(E, 0.9, approx=True)` with its defaults;
- faiss: `IndexIVFFlat` with tokvec's number of lists, 8 probes, `range_search`, the pairs re-scored and resolved by
  the same greedy pass (benches/scale.py's `faiss_dedup`);
- semhash (0.5, its default usearch backend) on the texts, with the tokvec model as its encoder
  (`SemHash.from_records(texts, model=m)`): its time includes embedding, about 1 % of it.
Each method runs at the next size only while its time there, projected from the last size (n^2 for exact, n^1.5 for
the others), stays under `--cap` seconds; a skipped size gets a line with the projection. Every line has the kept
count and the sampled residual-duplicate rate of benches/ann_dedup.py (2,000 kept rows against every kept row); lines
after exact also the share of exact's removals.
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
from tokvec.dedup import dedup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann_dedup import sampled_residual, texts
from scale import faiss_dedup

T = 0.9
#: how each method's time is projected to the next size
GROWTH = {"exact": 2.0, "partitioned": 1.5, "faiss IVFFlat": 1.5, "semhash": 1.5}


def vectors(m: tokvec.Model, tx: list[str], cache_dir: Path | None) -> np.ndarray:
    path = None if cache_dir is None else cache_dir / f"growth-{len(tx)}.npy"
    if path is not None and path.exists():
        E = np.load(path)
        if E.shape == (len(tx), m.dim):
            return E
    E = m.embed(tx, batch_size=250_000)
    if path is not None:
        np.save(path, E)
    return E


def semhash_kept(tx: list[str], m: tokvec.Model) -> np.ndarray:
    from semhash import SemHash

    selected = SemHash.from_records(tx, model=m).self_deduplicate(threshold=T).selected
    first: dict[str, int] = {}
    for i, t in enumerate(tx):
        first.setdefault(t, i)
    return np.sort(np.fromiter((first[t] for t in selected), np.int64))


def run(sizes: list[int], out: Path, cap: float, cache_dir: Path | None, methods: list[str]) -> None:
    m = tokvec.load()
    last: dict[str, tuple[int, float]] = {}
    with open(out, "a", encoding="utf-8") as fh:

        def emit(row: dict[str, Any]) -> None:
            line = json.dumps(row)
            print(line, flush=True)
            fh.write(line + "\n")
            fh.flush()

        for n in sizes:
            tx = texts(n)
            E = vectors(m, tx, cache_dir)
            exact_kept = None
            for name in methods:
                if name in last:
                    n0, s0 = last[name]
                    projected = s0 * (n / n0) ** GROWTH[name]
                    if projected > cap:
                        emit({"n": n, "method": name, "skipped": True, "projected_seconds": round(projected)})
                        continue
                t0 = time.perf_counter()
                extra: dict[str, Any] = {}
                if name == "exact":
                    kept = dedup(E, T).kept
                elif name == "partitioned":
                    st: dict[str, Any] = {}
                    kept = dedup(E, T, approx=True, stats=st).kept
                    extra = {"nlist": st["nlist"], "nprobe": st["nprobe"], "spill": st["spill"]}
                    nlist = st["nlist"]
                elif name == "faiss IVFFlat":
                    kept, _ = faiss_dedup(E, T, nlist, 8, min(39 * nlist, n))
                    extra = {"nlist": nlist, "nprobe": 8}
                else:
                    kept = semhash_kept(tx, m)
                dt = time.perf_counter() - t0
                last[name] = (n, dt)
                is_kept = np.zeros(n, bool)
                is_kept[kept] = True
                row: dict[str, Any] = {"n": n, "method": name, "seconds": round(dt, 1), "kept": len(kept), **extra}
                if name == "exact":
                    exact_kept = is_kept
                elif exact_kept is not None:
                    removed = ~exact_kept
                    row["removed_share"] = round(float((~is_kept & removed).sum() / max(removed.sum(), 1)), 4)
                # sampled among the kept rows, against the kept rows only (a removed row cannot hold a duplicate in)
                Ek = np.ascontiguousarray(E[np.sort(kept)])
                res, _, _ = sampled_residual(Ek, np.ones(len(Ek), bool), T, 2000)
                row["sampled_residual"] = round(
                    res["sampled_kept_with_duplicate_left"] / max(res["sampled_kept"], 1), 4
                )
                emit(row)
            del E


def plot(src: Path, dst: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, style in zip(GROWTH, ("o-", "s-", "^-", "d-")):
        done = sorted((r["n"], r["seconds"]) for r in rows if r["method"] == name and not r.get("skipped"))
        proj = sorted((r["n"], r["projected_seconds"]) for r in rows if r["method"] == name and r.get("skipped"))
        if done:
            (line,) = ax.plot(*zip(*done), style, label=name)
            if proj:
                ax.plot(*zip(done[-1], *proj), ":", color=line.get_color(), alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("texts (Wikipedia sentences + perturbed copies)")
    ax.set_ylabel("seconds (dedup at 0.9, 2 cores)")
    ax.set_title("Deduplication time by size (dotted: projected, not run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,320000,1000000,3000000,10000000")
    ap.add_argument("--methods", default=",".join(GROWTH))
    ap.add_argument("--out", type=Path, default=Path("growth.jsonl"), help="JSON lines, appended")
    ap.add_argument("--cap", type=float, default=1800, help="seconds a method may take at one size (projected)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="keeps each size's vectors as .npy")
    ap.add_argument("--plot", nargs=2, type=Path, metavar=("JSONL", "PNG"), help="only draw the figure")
    a = ap.parse_args()
    if a.plot:
        plot(*a.plot)
        return
    methods = [x for x in a.methods.split(",") if x]
    unknown = set(methods) - set(GROWTH)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; known: {list(GROWTH)}")
    if "faiss IVFFlat" in methods and "partitioned" not in methods:
        raise SystemExit("faiss IVFFlat takes tokvec's number of lists: run partitioned too")
    run([int(x) for x in a.sizes.split(",")], a.out, a.cap, a.cache_dir, methods)


if __name__ == "__main__":
    main()
