"""The whole batch job at scale: `tokvec dedup IN -o KEPT.jsonl --json` on N texts, embedding included, in a child
process whose time, peak RSS (and its anonymous / file-map parts, sampled from /proc) are measured; then the sampled
residual-duplicate rate of its kept set.

    python benches/scale_cli.py 10000000 --workdir /tmp/tv10m
    python benches/scale_cli.py 1000000 --workdir /tmp/tv1m --exact     # also `--exact` (the exact search)

Texts: benches/ann_dedup.py `texts(n)` (Wikipedia sentences, past 320,000 perturbed copies, shuffled), written
once to WORKDIR/in-N.txt. The run: the CLI picks the partitioned search past 500,000 texts and puts vectors above
2 GiB in a scratch file (`tokvec._scratch`; TMPDIR=WORKDIR here). Residual: `--sample` random rows, their exact
kept rows and their exact pairs above the threshold with every kept row (the texts embedded again into
WORKDIR/vectors-N.npy, a map; exact cross kernel): the share of them with an earlier kept row above the threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tokvec
from tokvec import _core

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann_dedup import texts


def status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                k, _, v = line.partition(b":")
                if k in (b"VmRSS", b"RssAnon", b"RssFile", b"VmHWM"):
                    out[k.decode()] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def run(cmd: list[str], env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            for k, v in status(p.pid).items():
                peak[k] = max(peak[k], v)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = p.communicate()
    done.set()
    t.join()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed ({p.returncode}): {err[-2000:]}")
    info = json.loads(out.strip().splitlines()[-1])
    gib = {f"peak_{k}_gib": round(v / 2**30, 2) for k, v in peak.items()}
    return {"wall_seconds": round(wall, 1), **gib, "summary": info, "stderr": err.strip().splitlines()[-3:]}


def residual(T: list[str], kept_rows: np.ndarray, workdir: Path, t: float, sample: int) -> dict:
    """Of `sample` random kept rows, how many have an earlier kept row above `t` (exact cross kernel against the
    kept rows: only those count)."""
    n = len(T)
    path = workdir / f"vectors-{n}.npy"
    m = tokvec.load()
    if not path.exists():
        E = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, m.dim))
        for a in range(0, n, 200_000):
            E[a : a + 200_000] = m.embed(T[a : a + 200_000])
        E.flush()
        del E
    E = np.load(path, mmap_mode="r")
    kept_rows = np.sort(kept_rows)
    K = np.ascontiguousarray(E[kept_rows])
    rng = np.random.default_rng(1)
    pick = np.sort(rng.choice(len(kept_rows), size=min(sample, len(kept_rows)), replace=False))
    qi, kj, _ = _core.duplicate_pairs_cross(np.ascontiguousarray(K[pick]), K, t)
    left = np.zeros(len(pick), bool)
    left[qi[kj < pick[qi]]] = True
    return {"sampled_kept": len(pick), "sampled_kept_with_duplicate_left": int(left.sum()),
            "rate": round(float(left.mean()), 5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--exact", action="store_true", help="run with --exact too")
    ap.add_argument("--flags", default="", help="more flags for the default run, e.g. '--nprobe 16'")
    ap.add_argument("--sample", type=int, default=4000, help="kept rows sampled for the residual rate")
    ap.add_argument("--only-residual", action="store_true", help="the residual of an earlier run's kept file")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"in-{args.n}.txt"
    T = texts(args.n)
    if not src.exists():
        with open(src, "w", encoding="utf-8") as f:
            f.writelines(s.replace("\n", " ") + "\n" for s in T)
    env = {**os.environ, "TMPDIR": str(work)}
    report: dict = {"n": args.n, "threshold": args.threshold, "cores": os.cpu_count()}
    name = "default" if not args.flags else "default" + args.flags.replace(" ", "")
    modes = [(name, args.flags.split())] + ([("exact", ["--exact"])] if args.exact else [])
    for name, extra in modes:
        out = work / f"kept-{name}-{args.n}.jsonl"
        cmd = [sys.executable, "-m", "tokvec", "dedup", str(src), "-o", str(out), "--json", "-q",
               "--threshold", str(args.threshold), *extra]
        r = {} if args.only_residual else run(cmd, env)
        with open(out, encoding="utf-8") as f:
            kept = np.array([json.loads(line)["index"] for line in f], np.int64)
        r["kept"] = len(kept)
        r["residual"] = residual(T, kept, work, args.threshold, args.sample)
        report[name] = r
        print(json.dumps({name: r}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
