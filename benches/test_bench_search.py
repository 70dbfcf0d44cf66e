"""Exact top-10 by inner product: 1,000 queries over 200k (and, with --run-slow, 1M) x 256 float32 vectors.

The vectors are L2-normalized and clustered (1,000 random centres plus noise, fixed seed), so neighbour lists are
not decided by noise alone. tokvec.topk is compared with faiss IndexFlatIP (the index is built outside the timed
part) and with a blocked numpy matmul + argpartition. All three must return the same neighbour sets; ties at the
10th place are allowed to differ.
"""

from __future__ import annotations

import numpy as np
import pytest

D = 256
NQ = 1_000
K = 10
SEED = 20_240_601
SIZES = [
    pytest.param(200_000, id="200k"),
    pytest.param(1_000_000, id="1M", marks=pytest.mark.slow),
]


def _clustered(rng: np.random.Generator, centres: np.ndarray, n: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        x = centres[rng.integers(len(centres), size=b - a)]
        x += rng.standard_normal((b - a, centres.shape[1]), dtype=np.float32) * np.float32(1.0 / np.sqrt(D))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[a:b] = x
    return out


def numpy_topk(q: np.ndarray, c: np.ndarray, k: int, block: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
    """Blocked exact top-k: one (nq x block) score matrix at a time, argpartition, merge with the running best."""
    nq = q.shape[0]
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, k), dtype=np.int64)
    rows = np.arange(nq)[:, None]
    for a in range(0, c.shape[0], block):
        s = q @ c[a : a + block].T
        kk = min(k, s.shape[1])
        part = np.argpartition(s, -kk, axis=1)[:, -kk:]
        cand_s = np.concatenate([best_s, s[rows, part]], axis=1)
        cand_i = np.concatenate([best_i, part + a], axis=1)
        keep = np.argpartition(cand_s, -k, axis=1)[:, -k:]
        best_s, best_i = cand_s[rows, keep], cand_i[rows, keep]
    order = np.argsort(-best_s, axis=1, kind="stable")
    return best_s[rows, order], best_i[rows, order]


@pytest.fixture(scope="module", params=SIZES)
def dataset(request):
    """(n, queries, corpus, numpy reference result). Module scope with params makes pytest run all tests of one
    size before generating the next, so only one corpus (1M x 256 float32 is 1 GB) is in memory at a time."""
    n = request.param
    rng = np.random.default_rng(SEED)
    centres = rng.standard_normal((1_000, D), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    corpus = _clustered(rng, centres, n)
    queries = _clustered(rng, centres, NQ)
    return n, queries, corpus, numpy_topk(queries, corpus, K)


def _group(n: int) -> str:
    return f"topk-{n // 1000}k (1000 queries, k=10, 256-d f32)"


def assert_same_neighbours(ref: tuple[np.ndarray, np.ndarray], got_s: np.ndarray, got_i: np.ndarray, tol=1e-5):
    ref_s, ref_i = ref
    assert got_i.shape == ref_i.shape
    np.testing.assert_allclose(np.sort(got_s, axis=1), np.sort(ref_s, axis=1), atol=tol)
    differ = [r for r in range(len(ref_i)) if set(ref_i[r].tolist()) != set(got_i[r].tolist())]
    for r in differ:  # only a tie at the k-th score may swap members
        kth = ref_s[r].min()
        swapped = set(ref_i[r].tolist()) ^ set(got_i[r].tolist())
        pos = {int(i): float(s) for i, s in zip(ref_i[r], ref_s[r])} | {
            int(i): float(s) for i, s in zip(got_i[r], got_s[r])
        }
        assert all(abs(pos[i] - kth) <= tol for i in swapped), f"query {r}: neighbour sets differ beyond ties"


def test_topk_tokvec(benchmark, record, tokvec_mod, dataset):
    n, q, c, ref = dataset
    benchmark.group = _group(n)
    s, i = benchmark.pedantic(tokvec_mod.topk, args=(q, c), kwargs={"k": K}, rounds=3, iterations=1, warmup_rounds=1)
    record(NQ, "queries")
    assert s.dtype == np.float32 and i.dtype == np.int64 and i.shape == (NQ, K)
    assert np.all(np.diff(s, axis=1) <= 0)  # best first
    assert_same_neighbours(ref, s, i)


def test_topk_faiss(benchmark, record, dataset):
    faiss = pytest.importorskip("faiss")
    faiss.omp_set_num_threads(2)
    n, q, c, ref = dataset
    benchmark.group = _group(n)
    index = faiss.IndexFlatIP(D)
    index.add(c)  # a copy into the index; not timed
    s, i = benchmark.pedantic(index.search, args=(q, K), rounds=3, iterations=1, warmup_rounds=1)
    record(NQ, "queries")
    assert_same_neighbours(ref, s, i)


def test_topk_numpy(benchmark, record, dataset):
    n, q, c, ref = dataset
    benchmark.group = _group(n)
    s, i = benchmark.pedantic(numpy_topk, args=(q, c, K), rounds=2, iterations=1)
    record(NQ, "queries")
    assert_same_neighbours(ref, s, i)
