"""Near-duplicate removal on 100k Wikipedia sentences at cosine threshold 0.9, embedding included.

All contenders embed with the same WordLlama l2_supercat 256 table and tokenizer (semhash through a model2vec
StaticModel built on it). The semantics the others are measured against is greedy in input order: a text is dropped
when its similarity with an earlier *kept* text is above the threshold (tokvec: ``> t``; semhash: ``>= t``; the
difference only matters for scores exactly at t). A blocked numpy implementation of that rule is the reference:
tokvec's kept set must equal it (checked outside the timed part, on tokvec's own embeddings so that only the
dedup step is compared). For the peers the kept count and the agreement with the reference are recorded in
``extra_info`` and printed at the end, not asserted: see benches/README.md for why they differ.
"""

from __future__ import annotations

import numpy as np
import pytest

GROUP = "dedup-100k (threshold 0.9, embedding included)"
THRESHOLD = 0.9


def duplicate_pairs_numpy(e: np.ndarray, t: float, row_block: int = 2_048, col_block: int = 16_384):
    """All pairs i < j with e[i] . e[j] > t, sorted by (i, j); blocked, never an n x n matrix."""
    n = e.shape[0]
    out_i, out_j = [], []
    for a in range(0, n, row_block):
        b = min(n, a + row_block)
        bi, bj = [], []
        for c0 in range(a, n, col_block):
            s = e[a:b] @ e[c0 : c0 + col_block].T
            i, j = np.nonzero(s > t)
            i += a
            j += c0
            keep = j > i
            bi.append(i[keep])
            bj.append(j[keep])
        i, j = np.concatenate(bi), np.concatenate(bj)
        order = np.lexsort((j, i))
        out_i.append(i[order])
        out_j.append(j[order])
    return np.concatenate(out_i), np.concatenate(out_j)


def greedy_kept(n: int, pi: np.ndarray, pj: np.ndarray) -> np.ndarray:
    """Greedy in input order over pairs sorted by i: when i is still kept, all its later partners are dropped.
    keep[i] is final when its pairs are reached, since every pair (k, i) has k < i and came earlier."""
    keep = np.ones(n, dtype=bool)
    if len(pi):
        starts = np.flatnonzero(np.r_[True, pi[1:] != pi[:-1]])
        ends = np.r_[starts[1:], len(pi)]
        for s, e in zip(starts, ends):
            if keep[pi[s]]:
                keep[pj[s:e]] = False
    return np.flatnonzero(keep)


def dedup_numpy(e: np.ndarray, t: float) -> np.ndarray:
    pi, pj = duplicate_pairs_numpy(np.ascontiguousarray(e, dtype=np.float32), t)
    return greedy_kept(e.shape[0], pi, pj)


def _compare(name: str, kept: np.ndarray, ref: np.ndarray, benchmark, note) -> None:
    a, b = set(kept.tolist()), set(ref.tolist())
    jaccard = len(a & b) / max(1, len(a | b))
    benchmark.extra_info.update(kept=len(a), reference_kept=len(b), jaccard_vs_reference=round(jaccard, 5))
    note(
        f"{name:<22s} kept {len(a):>7,d}  reference {len(b):>7,d}  only here {len(a - b):>6,d}  "
        f"only in reference {len(b - a):>6,d}  Jaccard {jaccard:.5f}"
    )


def _timed_dedup(benchmark, deduplicate, texts: list[str], rounds: int) -> np.ndarray:
    """Times `deduplicate(texts, threshold=THRESHOLD, return_indices=True)`, the call tokvec and WordLlama share."""
    out = benchmark.pedantic(
        deduplicate,
        args=(texts,),
        kwargs={"threshold": THRESHOLD, "return_indices": True},
        rounds=rounds,
        iterations=1,
    )
    return np.asarray(out)


@pytest.fixture(scope="module")
def reference_kept(reference_embed, texts) -> np.ndarray:
    """Greedy kept set on the numpy reference embeddings (HF tokenizer + numpy mean pooling)."""
    return dedup_numpy(reference_embed(texts), THRESHOLD)


@pytest.mark.benchmark(group=GROUP)
def test_dedup_tokvec(benchmark, record, note, tv_wordllama, texts, reference_kept):
    kept = _timed_dedup(benchmark, tv_wordllama.deduplicate, texts, rounds=3)
    record(len(texts))
    # Exactness of the dedup step: same rule, same vectors (tokvec's own), numpy as the judge.
    expected = dedup_numpy(tv_wordllama.embed(texts), THRESHOLD)
    assert np.array_equal(kept, expected), (
        f"tokvec kept {len(kept)}, reference {len(expected)}; "
        f"symmetric difference {len(set(kept.tolist()) ^ set(expected.tolist()))}"
    )
    _compare("tokvec", kept, reference_kept, benchmark, note)


@pytest.mark.benchmark(group=GROUP)
def test_dedup_numpy_reference(benchmark, record, reference_embed, texts, reference_kept):
    """What the rule costs in plain numpy: reference embedding (Python loop) plus blocked all-pairs."""
    kept = benchmark.pedantic(lambda: dedup_numpy(reference_embed(texts), THRESHOLD), rounds=1, iterations=1)
    record(len(texts))
    assert np.array_equal(kept, reference_kept)


@pytest.mark.benchmark(group=GROUP)
def test_dedup_wordllama(benchmark, record, note, wordllama_model, texts, reference_kept):
    dup = _timed_dedup(benchmark, wordllama_model.deduplicate, texts, rounds=1)
    record(len(texts))
    kept = np.setdiff1d(np.arange(len(texts)), dup.astype(np.int64))  # it returns the dropped ones
    _compare("wordllama", kept, reference_kept, benchmark, note)
    assert 0 < len(kept) <= len(texts)


def _semhash_kept(texts: list[str], model, backend: str) -> np.ndarray:
    from semhash import SemHash

    result = SemHash.from_records(texts, model=model, ann_backend=backend).self_deduplicate(threshold=THRESHOLD)
    first = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    return np.sort(np.fromiter((first[t] for t in result.selected), dtype=np.int64))


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("backend", ["basic", "usearch"], ids=["exact", "default-usearch"])
def test_dedup_semhash(benchmark, record, note, m2v_model, texts, reference_kept, backend):
    kept = benchmark.pedantic(_semhash_kept, args=(texts, m2v_model, backend), rounds=1, iterations=1)
    record(len(texts))
    _compare(f"semhash[{backend}]", kept, reference_kept, benchmark, note)
    assert 0 < len(kept) <= len(texts)
