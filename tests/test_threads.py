"""Determinism under concurrency: results do not depend on how many Python threads call a model at once, on how a
batch is split, or on the size of the Rust thread pool (RAYON_NUM_THREADS, checked in a subprocess). Every
comparison is bit-exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tokvec

N_THREADS = 8


@pytest.fixture(scope="module")
def texts(wiki_sentences, stsb_sentences) -> list[str]:
    rng = np.random.default_rng(11)
    idx = rng.choice(len(wiki_sentences), size=3000, replace=False)
    return [wiki_sentences[i] for i in idx] + stsb_sentences[:1000] + ["", "a", "[CLS]"]


@pytest.fixture(scope="module")
def models(minilm, make_model) -> dict[str, tokvec.Model]:
    m2v = make_model("model2vec", "BF16", tokenizer="wordpiece")
    return {
        "default": tokvec.load(),
        "minilm": tokvec.load(minilm.path),
        "model2vec-bf16": tokvec.load(m2v.path),
        "binary": tokvec.load(binary=True),
    }


def run_threads(work: Callable[[int], Any], n: int = N_THREADS) -> list[Any]:
    """Runs `work(i)` in n threads started together; re-raises the first error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# ------------------------------------------------------------------------------------------ Python threads
def test_threads_embed_identical(models, texts):
    names = sorted(models)
    want = {name: models[name].embed(texts) for name in names}

    def work(i: int) -> dict[str, np.ndarray]:
        out = {}
        for r in range(3):
            name = names[(i + r) % len(names)]
            out[f"{name}/{r}"] = models[name].embed(texts)
        return out

    for res in run_threads(work):
        for key, got in res.items():
            name = key.split("/")[0]
            assert got.dtype == want[name].dtype
            np.testing.assert_array_equal(got, want[name], err_msg=key)


def test_threads_encode_and_rank_identical(models, texts):
    m = models["default"]
    queries = texts[:N_THREADS]
    docs = texts[100:1100]
    want_ids = m.encode_ids(texts)
    want_rank = {q: m.rank(q, docs) for q in queries}
    want_sim = m.similarity(texts[:50], texts[50:300])

    def work(i: int) -> tuple[Any, Any, Any]:
        return m.encode_ids(texts), m.rank(queries[i], docs), m.similarity(texts[:50], texts[50:300])

    for i, (ids, ranked, sim) in enumerate(run_threads(work)):
        assert ids == want_ids
        assert ranked == want_rank[queries[i]]
        np.testing.assert_array_equal(sim, want_sim)


def test_threads_raw_encode_builds_one_view(texts):
    """encode(normalize_embeddings=False) on a normalizing model builds its raw core on first use; threads that
    race to build it all get the raw model's bits, and the normalized vectors are unchanged meanwhile."""
    m = tokvec.load()
    want_raw = tokvec.load(normalize=False).encode(texts)
    want = m.encode(texts)

    def work(i: int) -> np.ndarray:
        return m.encode(texts, normalize_embeddings=i % 2 == 0, batch_size=500 + i)

    for i, got in enumerate(run_threads(work)):
        np.testing.assert_array_equal(got, want if i % 2 == 0 else want_raw)


def test_threads_search_identical(models, texts, near_dup_corpus):
    m, mb = models["default"], models["binary"]
    e = m.embed(texts[:1500])
    b = mb.embed(texts[:1500])

    def searches(_: int = 0) -> dict[str, Any]:
        return {
            "dedup": m.deduplicate(near_dup_corpus, 0.9, return_indices=True),
            "dedup_b": mb.deduplicate(near_dup_corpus, 0.8, return_indices=True),
            "topk": tokvec.topk(e[:200], e, 10),
            "topk_b": tokvec.topk(b[:200], b, 10, bits=256),
            "pairs": tokvec.duplicate_pairs(e, 0.8, as_arrays=True),
            "model_topk": m.topk(texts[0], texts[:1500], k=20),
        }

    want = searches()
    for res in run_threads(searches):
        assert res["dedup"] == want["dedup"] and res["dedup_b"] == want["dedup_b"]
        assert res["model_topk"] == want["model_topk"]
        for key in ("topk", "topk_b", "pairs"):
            for got, exp in zip(res[key], want[key]):
                np.testing.assert_array_equal(got, exp, err_msg=key)


def test_threads_with_different_inputs(models, texts):
    # each thread embeds its own slice while the others run: every slice equals its single-thread result
    m = models["minilm"]
    chunks = [texts[i::N_THREADS] for i in range(N_THREADS)]
    want = [m.embed(c) for c in chunks]
    got = run_threads(lambda i: m.embed(chunks[i]))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------------------------------ batch splits
@pytest.mark.parametrize("name", ["default", "minilm", "model2vec-bf16", "binary"])
@pytest.mark.parametrize("chunk", [1, 7, 16, 100, 1333])
def test_batch_split_identical(models, texts, name, chunk):
    m = models[name]
    sub = texts if chunk >= 16 else texts[:400]
    whole = m.embed(sub)
    parts = np.concatenate([m.embed(sub[i : i + chunk]) for i in range(0, len(sub), chunk)])
    np.testing.assert_array_equal(parts, whole)


def test_single_text_equals_batch_row(models, texts):
    m = models["default"]
    whole = m.embed(texts[:50])
    for i in range(50):
        np.testing.assert_array_equal(m.embed(texts[i]), whole[i])


# ------------------------------------------------------------------------------------------ rayon pool size
SCRIPT = r"""
import json, sys
import numpy as np
import tokvec
spec = json.load(open(sys.argv[1]))
texts = spec["texts"]
out = {}
for name, path in spec["models"].items():
    out[name] = tokvec.load(path).embed(texts)
out["binary"] = tokvec.load(spec["models"]["default"], binary=True).embed(texts)
if spec["search"]:
    e = out["default"]
    s, i = tokvec.topk(e[:300], e, 10)
    out["topk_s"], out["topk_i"] = s, i
    out["pairs_i"], out["pairs_j"], out["pairs_s"] = tokvec.duplicate_pairs(e, 0.8, as_arrays=True)
    kept, dup_of, score = tokvec.dedup_indices(e, 0.9)
    out["kept"], out["dup_of"], out["dup_score"] = kept, dup_of, score
    b = out["binary"]
    out["topk_b_s"], out["topk_b_i"] = tokvec.topk(b[:300], b, 10, bits=256)
np.savez(sys.argv[2], **out)
"""


def _run_pool(tmp_path: Path, threads: str, spec: dict[str, Any]) -> dict[str, np.ndarray]:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    out = tmp_path / f"out-{threads}.npz"
    env = {**os.environ, "RAYON_NUM_THREADS": threads}
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(spec_file), str(out)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def _spec(texts, minilm, make_model, search: bool) -> dict[str, Any]:
    m2v = make_model("model2vec", "I8", tokenizer="bpe")
    return {
        "texts": texts,
        "models": {
            "default": str(tokvec.formats.DEFAULT_MODEL_DIR),
            "minilm": str(minilm.path),
            "model2vec": str(m2v.path),
        },
        "search": search,
    }


@pytest.mark.parametrize("threads", ["1", "5"])
def test_rayon_thread_count_embed(tmp_path, texts, minilm, make_model, threads):
    spec = _spec(texts, minilm, make_model, search=False)
    got = _run_pool(tmp_path, threads, spec)
    for name, path in spec["models"].items():
        np.testing.assert_array_equal(got[name], tokvec.load(path).embed(texts), err_msg=name)
    np.testing.assert_array_equal(got["binary"], tokvec.load(binary=True).embed(texts))


@pytest.mark.parametrize("threads", ["1", "5"])
def test_rayon_thread_count_search(tmp_path, texts, minilm, make_model, threads):
    spec = _spec(texts, minilm, make_model, search=True)
    got = _run_pool(tmp_path, threads, spec)
    e = tokvec.load().embed(texts)
    b = tokvec.load(binary=True).embed(texts)
    s, i = tokvec.topk(e[:300], e, 10)
    pi, pj, ps = tokvec.duplicate_pairs(e, 0.8, as_arrays=True)
    kept, dup_of, score = tokvec.dedup_indices(e, 0.9)
    sb, ib = tokvec.topk(b[:300], b, 10, bits=256)
    want = {
        "topk_s": s,
        "topk_i": i,
        "pairs_i": pi,
        "pairs_j": pj,
        "pairs_s": ps,
        "kept": kept,
        "dup_of": dup_of,
        "dup_score": score,
        "topk_b_s": sb,
        "topk_b_i": ib,
    }
    for k, w in want.items():
        np.testing.assert_array_equal(got[k], w, err_msg=k)


# ------------------------------------------------------------------------------------------ inputs written meanwhile
# The search and k-means kernels read the caller's numpy buffer in place (no copy: a corpus can be most of the RAM)
# with the GIL released, so another Python thread can write into it during the call. That is the caller's race, and
# the result is then unspecified, but it must stay memory-safe: no crash, no panic, only clean Python exceptions
# (the up-front NaN/inf checks may see a written value), and every returned index in range. Run in a subprocess so
# a crash is reported as a failure of this test instead of killing the test run.
RACE_SCRIPT = r"""
import json, sys, threading, time
import numpy as np
import tokvec
from tokvec import _core

base = np.load(sys.argv[1])
iters = int(sys.argv[2])
n, d = base.shape
sys.setswitchinterval(1e-5)  # hand the GIL over often, so writes land while a kernel runs
SPECIAL = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 0.0, 1e-45, 1.0], np.float32)
# row numbers out of range, for the index arrays of dot_pairs
BAD_ROWS = np.array([-1, n, n + 1, 2**40, -(2**63), 2**63 - 1], np.int64)
holder = {"arr": base.copy(), "gen": 0, "rows": ()}
stop = threading.Event()


def benign(gen):
    # every fourth call, the writers write only small finite values into `a` and leave the row numbers alone: such a
    # call must run to the end (no input check can refuse it), so every run shows kernels finishing under writes,
    # not only refusing; the other calls meet special values and bad row numbers too
    return gen % 4 == 0


def writer(seed):
    # after each new array, wait a random few milliseconds (past the kernels' up-front NaN/inf checks, often), then
    # write until the next array: benign values, special ones (NaN, inf, huge, denormal) and whole huge rows
    rng = np.random.default_rng(seed)
    gen = -1
    while not stop.is_set():
        if holder["gen"] == gen:
            time.sleep(0)
            continue
        # the array is taken once per call (it is set before the call's number), so a writer still busy with the
        # previous call never writes special values into a benign call's array
        gen, arr = holder["gen"], holder["arr"]
        time.sleep(rng.uniform(0, 0.004))
        while holder["gen"] == gen and not stop.is_set():
            rows = rng.integers(0, arr.shape[0], 4)
            cols = rng.integers(0, arr.shape[1], 4)
            if benign(gen):
                arr[rows, cols] = rng.standard_normal(4).astype(np.float32) * 0.1
                continue
            kind = rng.integers(3)
            if kind == 0:
                arr[rows, cols] = rng.standard_normal(4).astype(np.float32)
            elif kind == 1:
                arr[rows, cols] = SPECIAL[rng.integers(0, len(SPECIAL), 4)]
            else:
                arr[rows[0]] = rng.standard_normal(arr.shape[1]).astype(np.float32) * 1e30
            for idx in holder["rows"] if holder["gen"] == gen else ():
                idx[rng.integers(0, len(idx), 4)] = BAD_ROWS[rng.integers(0, len(BAD_ROWS), 4)]


def in_range(a, lo, hi):
    a = np.asarray(a)
    assert a.size == 0 or (a.min() >= lo and a.max() < hi), (a.min(), a.max(), lo, hi)


def run_topk(a):
    s, i = tokvec.topk(a[:50], a, 10)
    assert i.shape == s.shape == (50, 10)
    in_range(i, 0, n)


def run_pairs(a):
    i, j, s = tokvec.duplicate_pairs(a, 0.8, as_arrays=True)
    assert len(i) == len(j) == len(s)
    in_range(i, 0, n)
    in_range(j, 0, n)
    assert (i < j).all()


def run_dedup(a):
    kept, dup_of, score = _core.dedup(a, 0.9)
    assert dup_of.shape == score.shape == (n,)
    in_range(kept, 0, n)
    in_range(dup_of, -1, n)
    assert (np.diff(kept) > 0).all()


def run_kmeans(a):
    r = tokvec.kmeans(a, 8, n_init=1, max_iter=20, seed=1)
    assert r.labels.shape == (n,) and r.centroids.shape == (8, d)
    in_range(r.labels, 0, 8)


def run_normalize(a):
    _core.normalize_rows(a)


def run_scores(a):
    m = _core.scores(a[:40], a)
    assert m.shape == (40, n)


PAIR_ROWS = np.random.default_rng(0).integers(0, n, (2, 200_000))


def run_dot_pairs(a):
    # the row numbers are read in place too, and written meanwhile (except in the benign calls)
    i, j = PAIR_ROWS.copy()
    holder["rows"] = () if benign(holder["gen"]) else (i, j)
    try:
        assert _core.dot_pairs(a, a, i, j).shape == (200_000,)
    finally:
        holder["rows"] = ()


JOBS = {"topk": run_topk, "duplicate_pairs": run_pairs, "dedup": run_dedup, "kmeans": run_kmeans,
        "normalize_rows": run_normalize, "scores": run_scores, "dot_pairs": run_dot_pairs}
JOBS = {name: JOBS[name] for name in sys.argv[3].split(",")}
summary = {name: {"ok": 0, "benign_ok": 0, "benign_calls": 0, "errors": {}} for name in JOBS}
threads = [threading.Thread(target=writer, args=(s,), daemon=True) for s in range(3)]
for t in threads:
    t.start()
calls = 0
try:
    for _ in range(iters):
        for name, job in JOBS.items():
            calls += 1
            holder["arr"] = arr = base.copy()
            holder["gen"] += 1
            calm = benign(holder["gen"])
            summary[name]["benign_calls"] += calm
            try:
                job(arr)
                summary[name]["ok"] += 1
                summary[name]["benign_ok"] += calm
            except Exception as e:  # a panic (PanicException is a BaseException) is not caught: it fails the run
                key = type(e).__name__ + ": " + str(e)[:60]
                summary[name]["errors"][key] = summary[name]["errors"].get(key, 0) + 1
except BaseException:
    print(f"failed at call {calls}", file=sys.stderr)
    raise
finally:
    stop.set()
    for t in threads:
        t.join()
print(json.dumps(summary))
"""


@pytest.fixture(scope="module")
def race_input(tmp_path_factory, models, texts) -> Path:
    x = tmp_path_factory.mktemp("race") / "x.npy"
    np.save(x, models["default"].embed(texts[:2000]))
    return x


@pytest.mark.parametrize("job", ["topk", "duplicate_pairs", "dedup", "kmeans", "normalize_rows", "scores", "dot_pairs"])
def test_inputs_written_by_other_threads_during_the_call(race_input, job):
    r = subprocess.run(
        [sys.executable, "-c", RACE_SCRIPT, str(race_input), "300", job],
        check=False,
        capture_output=True,
        text=True,
        timeout=550,  # a hang guard under pytest-timeout's 600 s
    )
    assert "PanicException" not in r.stderr, f"a Rust panic reached Python\n{r.stderr[-3000:]}"
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr[-3000:]}"
    res = json.loads(r.stdout)[job]
    # only the documented input errors: a value written meanwhile can fail the NaN/inf/size checks
    assert all(key.startswith("ValueError: ") for key in res["errors"]), res["errors"]
    # the calls that met only small finite writes all ran to the end
    assert res["benign_calls"] > 0 and res["benign_ok"] == res["benign_calls"], res


# ------------------------------------------------------------------------------------------ mixed work, lifetimes
def test_threads_mixed_embed_rank_dedup_identical(models, texts, near_dup_corpus):
    # 8 threads at once, each doing a different kind of work (embedding, ranking, deduplicating, searching) on
    # the same shared models: every result equals the one-thread result.
    m, mb = models["default"], models["binary"]
    docs = texts[:1200]
    e = m.embed(docs)
    jobs: list[Callable[[], Any]] = [
        lambda: m.embed(texts),
        lambda: m.rank(texts[5], docs),
        lambda: m.deduplicate(near_dup_corpus, 0.9, return_indices=True),
        lambda: mb.embed(texts),
        lambda: tokvec.duplicate_pairs(e, 0.8, as_arrays=True),
        lambda: models["minilm"].embed(texts),
        lambda: mb.deduplicate(near_dup_corpus, 0.8, return_indices=True),
        lambda: tokvec.topk(e[:100], e, 7),
    ]
    want = [job() for job in jobs]

    def same(a: Any, b: Any) -> None:
        if isinstance(a, tuple):
            for x, y in zip(a, b, strict=True):
                same(x, y)
        elif isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b

    for _ in range(2):
        got = run_threads(lambda i: [jobs[(i + r) % len(jobs)]() for r in range(3)])
        for i, res in enumerate(got):
            for r, g in enumerate(res):
                same(g, want[(i + r) % len(jobs)])


def _drop_while_in_use(texts: list[str], want: np.ndarray) -> None:
    import gc
    import weakref

    holder = {"m": tokvec.load()}
    refs: list[Any] = [holder["m"]] * 7
    gone = weakref.ref(holder["m"])
    barrier = threading.Barrier(8)
    results: list[Any] = [None] * 7
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            m = refs[i]
            barrier.wait()
            out = [m.embed(texts[:500]) for _ in range(3)]
            del m
            refs[i] = None
            results[i] = out
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(7)]
    for t in threads:
        t.start()
    barrier.wait()
    del holder["m"]
    gc.collect()
    for t in threads:
        t.join()
    assert not errors, errors
    for out in results:
        for got in out:
            np.testing.assert_array_equal(got, want)
    gc.collect()
    assert gone() is None, "the model outlived its last reference"


def test_model_dropped_by_one_thread_while_others_use_it(texts):
    # The main thread drops its reference (and collects) while 7 threads embed with their own; the last worker to
    # finish drops the last reference, so the model (and its memory map) is freed on a worker thread while others
    # may still be returning. Every result is right, the model is freed, and a fresh load of the same files works.
    want = tokvec.load().embed(texts[:500])
    for _ in range(5):
        _drop_while_in_use(texts, want)
    np.testing.assert_array_equal(tokvec.load().embed(texts[:500]), want)
