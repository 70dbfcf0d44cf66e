"""Atheris harness over tokvec's Python API.

    python fuzz/python/fuzz_api.py -max_total_time=300 [-runs=N] [corpus_dir]

Each input drives one of:

- `Model.embed` / `similarity` / `rank` on random texts: lone surrogates, NUL, control characters, long strings,
  non-str items (must raise TypeError or ValueError, never crash);
- `tokvec.topk` and `tokvec.duplicate_pairs` / `dedup_indices` on random numpy arrays: any dtype (float16/32/64,
  ints, bool, complex, object), shapes (0-d to 3-d, empty), strides (transposed, sliced, negative), NaN/inf, any k
  and threshold; results are checked against numpy where the input is valid.

Allowed outcomes: a result, or TypeError / ValueError / IndexError (FormatError and TokenizerError are ValueErrors;
IndexError is a token id past the table in `embed_ids`). Anything else (PanicException, SystemError, MemoryError,
a crash) is a finding.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np
    import tokvec

MODEL = tokvec.load()
BMODEL = tokvec.load(binary=True)
# IndexError: a token id past the table in embed_ids (a documented, specific error)
ALLOWED = (TypeError, ValueError, IndexError)
DTYPES = [np.float32, np.float64, np.float16, np.int8, np.int32, np.int64, np.uint8, np.bool_, np.complex64, object]


def _text(fdp: atheris.FuzzedDataProvider) -> object:
    kind = fdp.ConsumeIntInRange(0, 9)
    if kind == 0:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 64))  # may hold lone surrogates
    if kind == 1:
        return "\x00" * fdp.ConsumeIntInRange(0, 8) + fdp.ConsumeUnicodeNoSurrogates(16)
    if kind == 2:
        return chr(0xD800 + fdp.ConsumeIntInRange(0, 0x7FF)) + "abc"
    if kind == 3:
        return fdp.ConsumeUnicodeNoSurrogates(8) * fdp.ConsumeIntInRange(0, 20_000)
    if kind == 4:
        return fdp.ConsumeBytes(8)  # not a str
    if kind == 5:
        return None
    return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200))


def _array(fdp: atheris.FuzzedDataProvider) -> np.ndarray:
    dt = DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)]
    ndim = fdp.ConsumeIntInRange(0, 3)
    shape = tuple(fdp.ConsumeIntInRange(0, 12) for _ in range(ndim))
    n = int(np.prod(shape)) if shape else 1
    vals = [fdp.ConsumeFloat() if fdp.ConsumeBool() else fdp.ConsumeIntInRange(-3, 3) / 3 for _ in range(n)]
    with np.errstate(all="ignore"):
        a = np.array(vals, dtype=np.float64).reshape(shape)
        a = a.astype(dt) if dt is not object else a.astype(object)
    view = fdp.ConsumeIntInRange(0, 4)
    if view == 1 and a.ndim == 2:
        a = a.T
    elif view == 2 and a.ndim >= 1:
        a = a[::2]
    elif view == 3 and a.ndim >= 1:
        a = a[::-1]
    elif view == 4 and a.ndim == 2:
        a = a[:, ::2]
    return a


def _check_topk(q: np.ndarray, c: np.ndarray, k: int) -> None:
    s, i = tokvec.topk(q, c, k=k)
    q2 = np.asarray(q, np.float32).reshape(-1, c.shape[-1]) if q.ndim == 1 else np.asarray(q, np.float32)
    ref = q2.astype(np.float64) @ np.asarray(c, np.float64).T
    kk = min(k, c.shape[0])
    assert s.shape[-1] == kk and i.shape[-1] == kk, (s.shape, i.shape, kk)
    got = np.take_along_axis(ref, i.reshape(ref.shape[0], kk).astype(np.int64), axis=1)
    best = -np.sort(-ref, axis=1)[:, :kk]
    np.testing.assert_allclose(got, best, rtol=1e-4, atol=1e-4 * (1 + np.abs(best).max(initial=0)))


def test_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    op = fdp.ConsumeIntInRange(0, 5)
    try:
        if op == 0:
            texts = [_text(fdp) for _ in range(fdp.ConsumeIntInRange(0, 6))]
            e = MODEL.embed(texts)
            assert e.shape == (len(texts), MODEL.dim) and np.isfinite(e).all()
        elif op == 1:
            BMODEL.embed([_text(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))])
        elif op == 2:
            a, b = _text(fdp), _text(fdp)
            s = MODEL.similarity(a, b)
            assert -1.0001 <= s <= 1.0001
            MODEL.rank(a, [b, a])
        elif op == 3:
            q, c = _array(fdp), _array(fdp)
            k = fdp.ConsumeIntInRange(-1, 20)
            valid = (
                q.dtype.kind == "f"
                and c.dtype.kind == "f"
                and c.ndim == 2
                and q.ndim in (1, 2)
                and k >= 1
                and c.shape[1] > 0
                and q.shape[-1] == c.shape[1]
                and np.isfinite(q).all()
                and np.isfinite(c).all()
                and np.abs(c).max(initial=0) < 1e15
                and np.abs(q).max(initial=0) < 1e15
            )
            if valid:
                _check_topk(q, c, k)
            else:
                tokvec.topk(q, c, k=k)
        elif op == 4:
            e = _array(fdp)
            t = fdp.ConsumeFloat() if fdp.ConsumeBool() else fdp.ConsumeIntInRange(-10, 10) / 10
            pairs = tokvec.duplicate_pairs(e, t)
            kept = tokvec.dedup_indices(e, t)
            del pairs, kept
        else:
            ids = np.array([fdp.ConsumeIntInRange(0, 2**32 - 1) for _ in range(fdp.ConsumeIntInRange(0, 8))], np.uint64)
            off = np.array(
                sorted(fdp.ConsumeIntInRange(0, len(ids)) for _ in range(fdp.ConsumeIntInRange(0, 3))), np.int64
            )
            MODEL.embed_ids(ids, off)
    except ALLOWED:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
