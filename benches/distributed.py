"""Partitioned (IVF) deduplication on Dask and Ray Data vs the single-machine run, on one machine.

    python benches/distributed.py 200000                 # Dask LocalCluster (2 workers) and local Ray
    python benches/distributed.py 50000 --engines dask

Texts: the first 80 % of N from ../shared/data/wikipedia-sentences/sentences.tsv plus 20 % lightly perturbed copies
of random ones (benches/ann_dedup.py's `perturb`), shuffled with a fixed seed. Embeddings: the bundled default
model (`tokvec.load()`).

Reported (one JSON line, then a summary): the single-machine embedding and `_core.dedup_ivf` times (all threads);
per engine, the seconds of each stage (embed, k-means sample + training on the driver, assign + shuffle, pairs per
list, greedy resolution on the driver), the throughput per worker (texts/s embedded, pairs/s scored) with one
core-thread per worker, and whether kept rows, dup_of and scores equal the single-machine result bit for bit.
Also the two ways of shipping a row to its lists: its vector (4 d bytes) or its text re-embedded by the list's
worker (the text's bytes, but nprobe embeddings per row): bytes per copy and the embedding time it would add.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

# this file's name would shadow the `distributed` package (Dask's) if its folder stayed on the path
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_spec = importlib.util.spec_from_file_location("ann_dedup", HERE / "ann_dedup.py")
ann_dedup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ann_dedup)
SENTENCES, perturb = ann_dedup.SENTENCES, ann_dedup.perturb

import tokvec
from tokvec import _core
from tokvec.distributed import ivf_plan, route_rows, sample_rows, train_centroids

# one core-thread per worker: the figures are per worker, and two workers share this machine's cores
WORKER_ENV = {"RAYON_NUM_THREADS": "1"}


def texts_with_copies(n: int, seed: int = 0) -> list[str]:
    with open(SENTENCES, encoding="utf-8", newline="") as f:
        base = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    k = min(len(base), n - n // 5)
    rng = np.random.default_rng(seed)
    out = base[:k] + [perturb(base[i], rng) for i in rng.integers(0, k, n - k).tolist()]
    return [out[i] for i in rng.permutation(n).tolist()]


def same(r, want) -> bool:
    return bool(
        np.array_equal(r.kept, want[0])
        and np.array_equal(r.dup_of, want[1])
        and np.array_equal(r.score.view(np.uint32), want[2].view(np.uint32))
    )


def per_worker(st: dict, workers: int) -> dict:
    pair_s = st.get("pairs_seconds", st.get("assign_pairs_seconds"))
    out = {
        "embed_texts_per_s_per_worker": round(st["n"] / st["embed_seconds"] / workers),
        "pairs_scored_per_s_per_worker": round(st["pairs_scored"] / pair_s / workers),
    }
    if "pairs_compute_seconds" in st:  # the group tasks' own time, without waiting for their inputs
        out["pairs_scored_per_task_second"] = round(st["pairs_scored"] / st["pairs_compute_seconds"])
    return out


def shipping(model: tokvec.Model, texts: list[str], E: np.ndarray, nprobe: int) -> dict:
    """What a row copy costs in the shuffle: a vector, or a text plus an embedding on the list's worker."""
    m = 20_000
    sub = texts[:m]
    t = time.perf_counter()
    model._unit_embed(sub)
    embed_us = (time.perf_counter() - t) / m * 1e6  # all threads of this process
    text_bytes = sum(len(s.encode()) for s in sub) / m
    plan = ivf_plan(*E.shape)
    C = train_centroids(E[sample_rows(len(E), plan["sample"])], plan["nlist"])
    (rows,) = route_rows(E[:m], 0, C, nprobe, 1)
    t = time.perf_counter()
    blob = pickle.dumps(rows, protocol=5)
    pickle.loads(blob)
    pickle_us = (time.perf_counter() - t) / len(rows.gid) * 1e6
    return {
        "text_bytes_mean": round(text_bytes, 1),
        "vector_copy_bytes": round(len(blob) / len(rows.gid), 1),
        "embed_us_per_text": round(embed_us, 2),
        "reembed_us_per_row": round(embed_us * nprobe, 1),
        "vector_pickle_roundtrip_us_per_copy": round(pickle_us, 3),
    }


def run_dask(model, texts, want, parts: int, workers: int, kw: dict) -> dict:
    from dask import distributed
    from tokvec.distributed import dask_partitioned_dedup

    with (
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, env=WORKER_ENV
        ) as lc,
        distributed.Client(lc) as client,
    ):
        step = -(-len(texts) // parts)
        chunks = [texts[i : i + step] for i in range(0, len(texts), step)]
        dask_partitioned_dedup(client, model, [c[:2000] for c in chunks[:2]], 0.9)  # workers warm (model opened)
        t = time.perf_counter()
        r = dask_partitioned_dedup(client, model, chunks, kw["threshold"], **kw["ivf"])
        wall = time.perf_counter() - t
    return {"wall_seconds": round(wall, 2), "equal": same(r, want), **r.stats, **per_worker(r.stats, workers)}


def run_ray(model, texts, want, workers: int, kw: dict) -> dict:
    import ray
    from tokvec.distributed import ray_partitioned_dedup

    ray.init(num_cpus=workers + 1, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": WORKER_ENV})
    try:
        ray_partitioned_dedup(texts[:4000], model, 0.9, workers=workers)  # warm-up: actors and workers start
        t = time.perf_counter()
        r = ray_partitioned_dedup(texts, model, kw["threshold"], workers=workers, **kw["ivf"])
        wall = time.perf_counter() - t
    finally:
        ray.shutdown()
    st = {**r.stats, "pairs_seconds": r.stats["assign_pairs_seconds"]}
    return {"wall_seconds": round(wall, 2), "equal": same(r, want), **r.stats, **per_worker(st, workers)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=200_000)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=20)
    ap.add_argument("--engines", default="dask,ray")
    ap.add_argument("--nprobe", type=int)
    ap.add_argument("--nlist", type=int)
    a = ap.parse_args()
    model = tokvec.load()
    texts = texts_with_copies(a.n)
    t = time.perf_counter()
    E = model._unit_embed(texts)
    embed_s = time.perf_counter() - t
    ivf = {"nprobe": a.nprobe, "nlist": a.nlist}
    t = time.perf_counter()
    kept, dup_of, score, st = _core.dedup_ivf(E, a.threshold, **ivf)
    ivf_s = time.perf_counter() - t
    want = (kept, dup_of, score)
    out = {
        "n": a.n,
        "threshold": a.threshold,
        "cpus": os.cpu_count(),
        "single": {
            "embed_seconds": round(embed_s, 2),
            "dedup_ivf_seconds": round(ivf_s, 2),
            "total_seconds": round(embed_s + ivf_s, 2),
            "kept": int(kept.size),
            **st,
        },
        "shipping": shipping(model, texts, E, st["nprobe"]),
    }
    kw = {"threshold": a.threshold, "ivf": ivf}
    if "dask" in a.engines:
        out["dask"] = run_dask(model, texts, want, a.partitions, a.workers, kw)
    if "ray" in a.engines:
        out["ray"] = run_ray(model, texts, want, a.workers, kw)
    print(json.dumps(out))
    s = out["single"]
    print(
        f"single machine ({os.cpu_count()} threads): embed {s['embed_seconds']} s + dedup_ivf "
        f"{s['dedup_ivf_seconds']} s = {s['total_seconds']} s, kept {s['kept']} of {a.n}"
    )
    for eng in ("dask", "ray"):
        if eng in out:
            r = out[eng]
            stages = ", ".join(f"{k.removesuffix('_seconds')} {r[k]:.2f}" for k in r if k.endswith("_seconds"))
            print(
                f"{eng}: {r['wall_seconds']} s ({stages}); per worker {r['embed_texts_per_s_per_worker']} texts/s "
                f"embedded, {r['pairs_scored_per_s_per_worker']} pairs/s scored; equal: {r['equal']}"
            )


if __name__ == "__main__":
    main()
