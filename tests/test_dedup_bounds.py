"""Greedy deduplication of packed sign bits through the binding, on real sentences: rows are resolved block by
block (8192 rows a block), and the result must equal a brute-force numpy greedy pass over all pairs, scores
included, bit for bit."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tokvec
from tokvec import _core

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SENTENCES = DATA / "wikipedia-sentences" / "sentences.tsv"


def _sentences(n: int) -> list[str]:
    with open(SENTENCES, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        return [r[1] for _, r in zip(range(n), rows)]


def greedy_ref(signs: np.ndarray, t: float):
    """All pairs (blocked ±1 products: exact integers, then the same f32 division as the kernel), then the greedy
    pass in input order: row j goes to the kept i < j with the highest score above t, the lowest i on ties."""
    n, bits = signs.shape
    ii, jj, ss = [], [], []
    for a in range(0, n, 2048):
        s = (signs[a : a + 2048] @ signs.T) / np.float32(bits)
        i, j = np.nonzero(s > t)
        keep = j > i + a
        ii.append(i[keep] + a)
        jj.append(j[keep])
        ss.append(s[i[keep], j[keep]])
    i, j, s = np.concatenate(ii), np.concatenate(jj), np.concatenate(ss)
    order = np.lexsort((i, j))
    i, j, s = i[order], j[order], s[order]
    kept = np.ones(n, dtype=bool)
    dup_of = np.full(n, -1, dtype=np.int64)
    score = np.full(n, np.nan, dtype=np.float32)
    starts = np.flatnonzero(np.r_[True, j[1:] != j[:-1]]) if len(j) else np.zeros(0, dtype=np.int64)
    for a, b in zip(starts, np.r_[starts[1:], len(j)]):
        live = kept[i[a:b]]
        if live.any():
            cand_i, cand_s = i[a:b][live], s[a:b][live]
            k = np.flatnonzero(cand_s == cand_s.max())[0]
            kept[j[a]] = False
            dup_of[j[a]] = cand_i[k]
            score[j[a]] = cand_s[k]
    return np.flatnonzero(kept), dup_of, score


@pytest.mark.parametrize("threshold", [0.2, 0.5])
def test_binary_dedup_across_blocks_equals_brute_force(threshold: float) -> None:
    n = 20_000  # three blocks
    e = tokvec.load().encode(_sentences(n))
    assert e.shape == (n, 256)
    packed = np.ascontiguousarray(np.packbits(e > 0, axis=1, bitorder="little").view(np.uint64))
    signs = np.where(e > 0, np.float32(1), np.float32(-1))
    kept, dup_of, score = _core.dedup_binary(packed, threshold, 256)
    want_kept, want_dup, want_score = greedy_ref(signs, threshold)
    assert 0 < len(want_kept) < n
    np.testing.assert_array_equal(kept, want_kept)
    np.testing.assert_array_equal(dup_of, want_dup)
    np.testing.assert_array_equal(score.view(np.uint32), want_score.view(np.uint32))
