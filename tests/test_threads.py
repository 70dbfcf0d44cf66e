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
    want = {
        "dedup": m.deduplicate(near_dup_corpus, 0.9, return_indices=True),
        "dedup_b": mb.deduplicate(near_dup_corpus, 0.8, return_indices=True),
        "topk": tokvec.topk(e[:200], e, 10),
        "topk_b": tokvec.topk(b[:200], b, 10, bits=256),
        "pairs": tokvec.duplicate_pairs(e, 0.8, as_arrays=True),
        "model_topk": m.topk(texts[0], texts[:1500], k=20),
    }

    def work(i: int) -> dict[str, Any]:
        return {
            "dedup": m.deduplicate(near_dup_corpus, 0.9, return_indices=True),
            "dedup_b": mb.deduplicate(near_dup_corpus, 0.8, return_indices=True),
            "topk": tokvec.topk(e[:200], e, 10),
            "topk_b": tokvec.topk(b[:200], b, 10, bits=256),
            "pairs": tokvec.duplicate_pairs(e, 0.8, as_arrays=True),
            "model_topk": m.topk(texts[0], texts[:1500], k=20),
        }

    for res in run_threads(work):
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
