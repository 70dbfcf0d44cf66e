"""The canonical score as a function: `_core.scores` (every pair) and `_core.dot_pairs` (given pairs)
return the very values `_core.topk` reports, bit for bit, and reject what topk rejects. Also the
norm bound that keeps those scores finite, applied to `kmeans` (whose squared distances would
otherwise overflow to inf - inf)."""

from __future__ import annotations

import numpy as np
import pytest
import tokvec
from tokvec import _core


@pytest.fixture(scope="module")
def vectors(wiki_sentences: list[str]) -> np.ndarray:
    return tokvec.load().embed(wiki_sentences[:3000])


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def test_scores_are_topk_scores_bit_for_bit(vectors: np.ndarray) -> None:
    q, c = vectors[:40], vectors[40:]
    s, idx = _core.topk(q, c, 10)
    m = _core.scores(q, c)
    assert m.shape == (len(q), len(c))
    assert m.dtype == np.float32
    np.testing.assert_array_equal(bits(np.take_along_axis(m, idx, axis=1)), bits(s))
    # the matrix's own best 10 (score descending, then index ascending) is topk's answer
    cols = np.broadcast_to(np.arange(len(c)), m.shape)
    np.testing.assert_array_equal(np.lexsort((cols, -m), axis=1)[:, :10], idx)
    exact = q.astype(np.float64) @ c.astype(np.float64).T
    assert np.abs(m - exact).max() < 1e-5


def test_dot_pairs_are_the_matrix_entries(vectors: np.ndarray) -> None:
    a, b = vectors[:300], vectors[300:]
    m = _core.scores(a, b)
    rng = np.random.default_rng(7)
    i = rng.integers(0, len(a), 5000)
    j = rng.integers(0, len(b), 5000)
    np.testing.assert_array_equal(bits(_core.dot_pairs(a, b, i, j)), bits(m[i, j]))
    # the pairs topk returns, scored one by one, are topk's scores
    s, idx = _core.topk(a, b, 5)
    rows = np.repeat(np.arange(len(a)), 5)
    np.testing.assert_array_equal(bits(_core.dot_pairs(a, b, rows, idx.ravel())), bits(s.ravel()))
    empty = np.zeros(0, np.int64)
    assert _core.dot_pairs(a, b, empty, empty).shape == (0,)


def test_unnormalized_rows_score_as_in_topk() -> None:
    rng = np.random.default_rng(1)
    q = (rng.standard_normal((7, 33)) * 50).astype(np.float32)
    c = (rng.standard_normal((500, 33)) * 1e-3).astype(np.float32)
    s, idx = _core.topk(q, c, 3)
    np.testing.assert_array_equal(bits(np.take_along_axis(_core.scores(q, c), idx, axis=1)), bits(s))


def _rows(n: int = 6, d: int = 8) -> np.ndarray:
    return np.random.default_rng(2).standard_normal((n, d)).astype(np.float32)


def _with(x: np.ndarray, row: int, value: float) -> np.ndarray:
    y = x.copy()
    y[row, 1] = value
    return y


@pytest.mark.parametrize(
    ("q", "c", "msg"),
    [
        (_with(_rows(), 3, np.nan), _rows(), r"^q: row 3 contains NaN or infinity"),
        (_rows(), _with(_rows(), 2, np.inf), r"^c: row 2 contains NaN or infinity"),
        (_rows(), _with(_rows(), 4, 1e20), r"^c: row 4 .*norm is above 1e18"),
        (_rows(), _rows().astype(np.float64), r"^c must be a 2-d float32 array, got a 2-d float64 array"),
        (_rows()[0], _rows(), r"^q must be a 2-d float32 array, got a 1-d float32 array"),
        ([[1.0, 2.0]], _rows(2, 2), r"^q must be a 2-d float32 array, got list"),
        (_rows(6, 16)[:, ::2], _rows(), r"^q must be C-contiguous"),
        (_rows(6, 7), _rows(), r"q and c: the arrays have 7 and 8 columns"),
        (np.zeros((3, 0), np.float32), np.zeros((2, 0), np.float32), r"^q: the dimension must be at least 1"),
    ],
)
def test_scores_reject_bad_input(q, c, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        _core.scores(q, c)


@pytest.mark.parametrize(
    ("q", "c"),
    [(_with(_rows(), 3, np.nan), _rows()), (_rows(), _with(_rows(), 2, np.inf)), (_rows(), _with(_rows(), 4, 1e20))],
)
def test_topk_rejects_the_same_rows(q: np.ndarray, c: np.ndarray) -> None:
    with pytest.raises(ValueError, match="contains NaN or infinity, or its norm is above 1e18"):
        _core.topk(q, c, 2)


@pytest.mark.parametrize(
    ("a", "b", "i", "j", "msg"),
    [
        (_rows(), _rows(4), [0, 6], [0, 1], r"^i: entry 1 is 6, outside 0\.\.6 \(the rows of a\)"),
        (_rows(), _rows(4), [0, 1], [-1, 1], r"^j: entry 0 is -1, outside 0\.\.4 \(the rows of b\)"),
        (_rows(), _rows(4), [0, 1], [0], r"^j: has 1 entries and i has 2"),
        (_with(_rows(), 5, np.nan), _rows(4), [0], [0], r"^a: row 5 contains NaN"),
        (_rows(), _with(_rows(4), 0, -1e20), [0], [0], r"^b: row 0 .*norm is above 1e18"),
        (_rows(), _rows(4, 9), [0], [0], r"a and b: the arrays have 8 and 9 columns"),
        (_rows(), _rows(4), np.array([0], np.int32), [0], r"^i must be a 1-d int64 array, got a 1-d int32 array"),
        (_rows(), _rows(4), [0], np.zeros((1, 1), np.int64), r"^j must be a 1-d int64 array, got a 2-d int64 array"),
        (_rows(), _rows(4), [0], np.arange(4)[::2], r"^j must be C-contiguous"),
        (_rows().astype(np.float16), _rows(4), [0], [0], r"^a must be a 2-d float32 array, got a 2-d float16 array"),
    ],
)
def test_dot_pairs_reject_bad_input(a, b, i, j, msg: str) -> None:
    i = np.asarray(i, np.int64) if isinstance(i, list) else i
    j = np.asarray(j, np.int64) if isinstance(j, list) else j
    with pytest.raises(ValueError, match=msg):
        _core.dot_pairs(a, b, i, j)


def test_kmeans_rejects_values_whose_squares_overflow() -> None:
    x = _rows(20, 4)
    # 1e20 ** 2 overflows float32: every distance to that point's center was inf - inf = NaN,
    # clamped to 0, and the result silently wrong
    with pytest.raises(ValueError, match=r"^x: row 5 contains NaN or infinity, or its norm is above 1e18"):
        tokvec.kmeans(_with(x, 5, 1e20), 3)
    with pytest.raises(ValueError, match=r"^x: row 5 .*norm is above 1e18"):
        _core.kmeans(_with(x, 5, -3e19), 3)
    init = _with(x[:3], 1, 1e20)
    with pytest.raises(ValueError, match=r"^init: row 1 .*norm is above 1e18"):
        tokvec.kmeans(x, 3, init=init)
    # large but bounded values still cluster
    big = np.concatenate([np.full((5, 4), 1e16, np.float32), np.full((5, 4), -1e16, np.float32)])
    r = tokvec.kmeans(big, 2, seed=1)
    assert len(set(r.labels[:5])) == 1
    assert len(set(r.labels[5:])) == 1
    assert r.labels[0] != r.labels[5]
    assert np.isfinite(r.inertia)
