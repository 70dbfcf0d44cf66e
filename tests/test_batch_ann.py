"""Approximate deduplication (usearch candidates, exact re-scoring, the exact path's greedy pass) on real Wikipedia
sentences: found pairs are exact pairs with bit-identical scores, recall of the exact pairs is high, and no item is
removed without a kept item above the threshold. Plus the Python and CLI entry points and their mistakes."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tokvec
import usearch  # noqa: F401 - tokvec.ann uses it; a test dependency, so a missing one fails here, loudly
from tokvec import _core
from tokvec.ann import approx_pairs, approx_pairs_cross, canonical_dot_pairs
from tokvec.cli import main
from tokvec.dedup import dedup
from tokvec.search import METHODS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SENTENCES = DATA / "wikipedia-sentences" / "sentences.tsv"
T = 0.9


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def wiki(model) -> tuple[list[str], np.ndarray]:
    """The first 20,000 Wikipedia sentences and their default-model embeddings."""
    texts = []
    with open(SENTENCES, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts.append(row["sentence"])
            if len(texts) == 20000:
                break
    return texts, model.embed(texts)


@pytest.mark.parametrize("d", [256, 100, 37, 1])
def test_canonical_dot_matches_the_core(wiki, d: int) -> None:
    X = np.ascontiguousarray(wiki[1][:3000, :d])
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    i, j, s = _core.duplicate_pairs(X, 0.5 if d > 1 else 0.999)
    assert len(i) > 1000
    c = canonical_dot_pairs(X, X, i, j)
    assert c.dtype == np.float32
    np.testing.assert_array_equal(c.view(np.int32), s.view(np.int32))  # bit-identical


def test_approx_recall_and_no_false_removal(wiki) -> None:
    _, E = wiki
    n = len(E)
    ei, ej, es = _core.duplicate_pairs(E, T)
    assert len(ei) > 500  # the set has real near-duplicates
    st: dict = {}
    ai, aj, as_ = approx_pairs(E, T, stats=st)
    assert st["pairs"] == len(ai) and st["candidates"] >= len(ai)
    exact = dict(zip((ei * n + ej).tolist(), es.tolist()))
    code = (ai * n + aj).tolist()
    # every found pair is an exact pair, with the exact path's score
    assert all(c in exact for c in code)
    assert [exact[c] for c in code] == as_.tolist()
    recall = len(code) / len(exact)
    assert recall >= 0.9, recall

    # the greedy pass of the exact path over the found pairs (what dedup_indices(approx=True) runs)
    kept, dup_of, score = _core.dedup_resolve(n, ai, aj, as_, T)
    ek, _, _ = tokvec.dedup_indices(E, T)
    removed = np.flatnonzero(dup_of >= 0)
    is_kept = np.zeros(n, bool)
    is_kept[kept] = True
    assert not is_kept[removed].any() and is_kept[dup_of[removed]].all()
    assert (dup_of[removed] < removed).all()
    # the kept item really is above the threshold (plain numpy dot, within float rounding)
    real = np.einsum("ij,ij->i", E[removed].astype(np.float64), E[dup_of[removed]].astype(np.float64))
    assert (real > T - 1e-5).all() and (score[removed] > T).all()
    exact_removed = np.setdiff1d(np.arange(n), ek)
    removed_recall = np.isin(exact_removed, removed).mean()
    assert removed_recall >= 0.9, removed_recall


def test_cross_pairs_subset_of_exact(wiki) -> None:
    _, E = wiki
    A, B = E[:5000], E[5000:12000]
    ci, cj, cs = _core.duplicate_pairs_cross(A, B, T)
    ai, aj, as_ = approx_pairs_cross(A, B, T)
    exact = dict(zip((ci * len(B) + cj).tolist(), cs.tolist()))
    code = (ai * len(B) + aj).tolist()
    assert code == sorted(code) and all(exact[c] == s for c, s in zip(code, as_.tolist()))
    assert len(code) >= 0.9 * len(exact)


def test_all_neighbours_equals_exact(model) -> None:
    """With as many neighbours as items, the candidates are all pairs: the result is the exact one."""
    with open(DATA / "stsb" / "sts-dev.tsv", encoding="utf-8", newline="") as f:
        texts = [r["sentence1"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:400]
    texts += texts[:50]  # exact copies at the end
    exact = model.deduplicate(texts, 0.8, return_indices=True)
    for dt in ("i8", "f16", "f32"):
        assert model.deduplicate(texts, 0.8, return_indices=True, approx=True, neighbors=len(texts),
                                 ann_dtype=dt, method="hnsw") == exact
    res = model.deduplicate(texts, 0.8, explain=True, approx=True, neighbors=len(texts), method="hnsw")
    ref = model.deduplicate(texts, 0.8, explain=True)
    np.testing.assert_array_equal(res.dup_of, ref.dup_of)
    np.testing.assert_array_equal(res.score, ref.score)
    # against a reference set too
    a = dedup(model.embed(texts[50:]), 0.8, reference=model.embed(texts[:50]), approx=True, neighbors=500,
              method="hnsw")
    b = dedup(model.embed(texts[50:]), 0.8, reference=model.embed(texts[:50]))
    np.testing.assert_array_equal(a.dup_of, b.dup_of)
    np.testing.assert_array_equal(a.source, b.source)


def test_approx_small_and_bad_inputs(model) -> None:
    E = model.embed(["one text", "another"])
    for n, method in itertools.product((0, 1), METHODS):
        kept, dup_of, _ = tokvec.dedup_indices(E[:n], T, approx=True, method=method)
        assert kept.tolist() == list(range(n)) and dup_of.tolist() == [-1] * n
    with pytest.raises(ValueError, match="neighbors"):
        tokvec.dedup_indices(E, T, approx=True, neighbors=0)
    with pytest.raises(ValueError, match="dtype"):
        tokvec.dedup_indices(E, T, approx=True, ann_dtype="f64")
    for method in METHODS:
        with pytest.raises(ValueError, match="float"):
            tokvec.dedup_indices(np.zeros((2, 4), np.uint64), T, approx=True, method=method)
    with pytest.raises(ValueError, match="normalized"):
        tokvec.dedup_indices(E * 100, T, approx=True, method="hnsw")
    big = E * 100  # inner products up to 10^4: f16 storage works, the result is the exact one
    exact = tokvec.dedup_indices(big, T)[0].tolist()
    assert tokvec.dedup_indices(big, T, approx=True, method="hnsw", ann_dtype="f16")[0].tolist() == exact
    b = tokvec.load(binary=True)
    with pytest.raises(ValueError, match="float model"):
        b.deduplicate(["a", "b"], approx=True)


def test_cli_dedup_approx(tmp_path: Path, capsys, wiki) -> None:
    texts = wiki[0][:3000]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out, rep = tmp_path / "kept.txt", tmp_path / "removed.jsonl"
    assert main(["dedup", str(src), "-o", str(out), "--report", str(rep), "--approx", "--approx-method", "hnsw",
                 "--json", "-q"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["approx"] is True and info["neighbors"] == 32 and info["ann_dtype"] == "i8"
    kept = out.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in rep.read_text(encoding="utf-8").splitlines()]
    assert len(kept) == info["kept"] and len(rows) == info["removed"] > 0
    assert all(r["score"] > T and r["kept_text"] in kept for r in rows)
    assert main(["dedup", str(src), "--threshold", "auto", "--approx"]) == 2
    assert "--approx does not apply" in capsys.readouterr().err
    assert main(["dedup", str(src), "--approx", "--neighbors", "0", "-o", str(out)]) == 2
    assert "--neighbors must be >= 1" in capsys.readouterr().err
