"""Soak test: embeds, ranks and deduplicates continuously, sampling RSS and tracemalloc, and fails on growth.

    python scripts/soak.py --minutes 10 --out soak/          # writes soak/soak.csv and soak/soak.png

Each round loads nothing new: it embeds a batch of texts (float and binary), ranks a query against them, takes
top-k with `tokvec.topk`, finds duplicate pairs and deduplicates, and re-embeds pre-tokenized ids; every few rounds it
also loads a model and drops it (to catch leaks in load/free). Texts come from `../shared/data` when present (the
wikipedia sentences), else are generated. After the warm-up (the first `--warmup` fraction of the run), RSS must
not grow by more than `--tolerance-mb` MB (and tracemalloc's Python-side memory by more than a tenth of it):
the exit code is 1 when it does, 0 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import random
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import tokvec

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def texts(n: int, seed: int) -> list[str]:
    """`n` real sentences if the shared data is there, else synthetic ones (with some non-ASCII and empties)."""
    rng = random.Random(seed)
    pool: list[str] = []
    for f in [DATA / "wikipedia-sentences" / "sentences.tsv"]:
        if not f.is_file():
            continue
        with open(f, encoding="utf-8", errors="replace") as fh:
            for i, line in enumerate(fh):
                if i >= 50_000:
                    break
                pool.append(line.rstrip("\n").split("\t")[-1][:400])
    if not pool:
        words = ["alpha", "beta", "gamma", "delta", "naïve", "café", "東京", "😀", "x" * 50, ""]
        pool = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 30))) for _ in range(20_000)]
    return [rng.choice(pool) for _ in range(n)]


def round_(model: tokvec.Model, bmodel: tokvec.Model, batch: list[str], rng: random.Random) -> None:
    e = model.embed(batch)
    bmodel.embed(batch[:200])
    model.rank(batch[0], batch[:500])
    model.topk(batch[1], batch, k=10)
    tokvec.topk(e[:64], e, k=10)
    tokvec.duplicate_pairs(e[:1500], 0.9)
    model.deduplicate(batch[:1500], threshold=0.9)
    ids = rng.sample(range(model.vocab_size), 64)
    model.embed_ids(np.array(ids, np.uint32), np.array([0, 32, 64], np.uint64))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path("soak"))
    ap.add_argument("--batch", type=int, default=4000)
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of the run ignored for growth (default 0.2)")
    ap.add_argument("--tolerance-mb", type=float, default=20.0, help="allowed RSS growth after warm-up")
    ap.add_argument("--model", default=None, help="model path (default: the bundled model)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    all_texts = texts(50_000, 0)
    tracemalloc.start()
    model = tokvec.load(args.model)
    bmodel = tokvec.load(args.model, binary=True)
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    rows: list[tuple[float, int, float, float]] = []
    n = 0
    while time.monotonic() < end:
        start = rng.randrange(0, len(all_texts) - args.batch)
        round_(model, bmodel, all_texts[start : start + args.batch], rng)
        n += 1
        if n % 10 == 0:  # a load and a drop, to catch leaks in model construction and teardown
            m = tokvec.load(args.model)
            m.embed(all_texts[:10])
            del m
        gc.collect()
        cur, _peak = tracemalloc.get_traced_memory()
        rows.append((time.monotonic() - t0, n, rss_mb(), cur / 2**20))
    tracemalloc.stop()
    with open(args.out / "soak.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "rounds", "rss_mb", "tracemalloc_mb"])
        w.writerows([(f"{t:.2f}", r, f"{m:.2f}", f"{p:.3f}") for t, r, m, p in rows])
    if not rows:
        print("no round finished", file=sys.stderr)
        return 1
    warm = [r for r in rows if r[0] >= rows[-1][0] * args.warmup] or rows
    # Compare medians of the first and last tenth after warm-up: robust to one-sample spikes.
    k = max(1, len(warm) // 10)
    rss_start = float(np.median([r[2] for r in warm[:k]]))
    rss_end = float(np.median([r[2] for r in warm[-k:]]))
    py_start = float(np.median([r[3] for r in warm[:k]]))
    py_end = float(np.median([r[3] for r in warm[-k:]]))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot([r[0] for r in rows], [r[2] for r in rows], label="RSS (MB)")
        ax.plot([r[0] for r in rows], [r[3] for r in rows], label="tracemalloc (MB)")
        ax.axvline(warm[0][0], color="grey", ls="--", label="end of warm-up")
        ax.set_xlabel("seconds")
        ax.set_ylabel("MB")
        ax.set_title(f"tokvec soak: {n} rounds, RSS {rss_start:.1f} -> {rss_end:.1f} MB after warm-up")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out / "soak.png", dpi=100)
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
    grew = rss_end - rss_start > args.tolerance_mb or py_end - py_start > args.tolerance_mb / 10
    print(
        f"rounds={n} seconds={rows[-1][0]:.0f} rss_peak_mb={max(r[2] for r in rows):.1f} "
        f"rss_warm_mb={rss_start:.1f} rss_end_mb={rss_end:.1f} py_warm_mb={py_start:.2f} py_end_mb={py_end:.2f} "
        f"{'GROWTH' if grew else 'ok'}"
    )
    return 1 if grew else 0


if __name__ == "__main__":
    sys.exit(main())
