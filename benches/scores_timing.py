"""Best-of-5 timing of `_core.scores(q, c)` against numpy's `q @ c.T` on unit vectors.

Usage: python3 benches/scores_timing.py [path/to/_core.abi3.so ...]

Each given extension (e.g. one built from another branch) is timed in the same run; without
arguments, the `tokvec._core` on the import path. Threads are pinned to 2 for every library.
"""

import importlib.util
import os
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(var, "2")

import numpy as np

SHAPES = [(2_000, 20_000, 256), (1, 200_000, 256), (1_000, 1_000, 256)]


def load(path):
    spec = importlib.util.spec_from_file_location("tokvec._core", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def unit(n, d, rng):
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def best(f, *args, reps=5):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(*args)
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main():
    if len(sys.argv) > 1:
        cores = [(p, load(p)) for p in sys.argv[1:]]
    else:
        import tokvec._core as core

        cores = [(core.__file__, core)]
    rng = np.random.default_rng(0)
    for nq, nc, d in SHAPES:
        q, c = unit(nq, d, rng), unit(nc, d, rng)
        line = [f"{nq} x {nc} x {d}:", f"numpy {best(np.matmul, q, c.T):.1f} ms"]
        results = []
        for path, core in cores:
            results.append(core.scores(q, c))
            line.append(f"{os.path.basename(os.path.dirname(path)) or path} {best(core.scores, q, c):.1f} ms")
        same = all(np.array_equal(r.view(np.uint32), results[0].view(np.uint32)) for r in results)
        line.append("identical" if same else "DIFFERENT")
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
