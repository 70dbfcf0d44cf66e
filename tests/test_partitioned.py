"""Partitioned deduplication (`tokvec.dedup(..., approx=True)`, `_core.dedup_ivf`) on real Wikipedia
sentences and lightly edited copies of them, embedded with the bundled default model: with every list probed it is
exact deduplication bit for bit; with few probes every found pair has the exact canonical score and every removal a
kept, earlier item above the threshold; at the default knob it removes nearly all that exact removes; the result
does not depend on the thread count; and the entry points (Python, Model.deduplicate, CLI) and their mistakes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tokvec
from conftest import near_copy
from test_interrupt import run_and_signal
from tokvec import _core, cli
from tokvec.cli import main
from tokvec.dedup import REFERENCE, SELF, dedup, plan_texts, resolve_texts
from tokvec.search import Approx

T = 0.9


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.int32)


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def corpus(wiki_sentences: list[str]) -> list[str]:
    """20,000 texts: 15,000 Wikipedia sentences and 5,000 edited copies of random ones, shuffled (fixed seed)."""
    rng = np.random.default_rng(11)
    base = wiki_sentences[:15000]
    copies = [near_copy(base[i], rng) for i in rng.integers(0, len(base), 5000).tolist()]
    out = base + copies
    return [out[i] for i in rng.permutation(len(out)).tolist()]


@pytest.fixture(scope="module")
def E(model, corpus) -> np.ndarray:
    return model.embed(corpus)


def removed(dup_of: np.ndarray) -> np.ndarray:
    return np.flatnonzero(dup_of >= 0)


def check_removals(E: np.ndarray, dup_of: np.ndarray, score: np.ndarray, t: float) -> None:
    """Every removed item has an earlier kept item with the exact canonical score above t; kept items have NaN."""
    rem = removed(dup_of)
    kept = dup_of < 0
    assert kept[dup_of[rem]].all() and (dup_of[rem] < rem).all()
    want = _core.dot_pairs(E, E, dup_of[rem], rem)
    np.testing.assert_array_equal(bits(score[rem]), bits(want))
    assert (score[rem] > np.float32(t)).all()
    assert np.isnan(score[kept]).all()


def test_every_list_probed_is_exact_bit_for_bit(E) -> None:
    X = np.ascontiguousarray(E[:6000])
    for t in (0.9, 0.8):
        kept, dup_of, score = _core.dedup(X, t)
        assert len(kept) < len(X) - 100  # real duplicates
        for nlist, block in ((1, None), (24, None), (24, 1000), (77, 64)):
            k2, d2, s2, st = _core.dedup_ivf(X, t, nlist=nlist, nprobe=nlist, block=block)
            np.testing.assert_array_equal(k2, kept)
            np.testing.assert_array_equal(d2, dup_of)
            np.testing.assert_array_equal(bits(s2), bits(score))
            assert st["nlist"] == st["nprobe"] == nlist and st["found"] >= len(X) - len(kept)
    r = dedup(X, 0.9, approx=True, nlist=30, nprobe=30)
    e = dedup(X, 0.9)
    np.testing.assert_array_equal(r.dup_of, e.dup_of)
    np.testing.assert_array_equal(bits(r.score), bits(e.score))
    np.testing.assert_array_equal(r.source, e.source)


def test_few_probes_find_exact_pairs_only(E) -> None:
    st: dict = {}
    r = dedup(E, T, approx=True, nprobe=1, stats=st)
    check_removals(E, r.dup_of, r.score, T)
    assert set(st) >= {
        "nlist",
        "nprobe",
        "sample",
        "block",
        "prescored",
        "rescored",
        "found",
        "train_seconds",
        "assign_seconds",
        "search_seconds",
        "largest_list",
        "kmeans_iterations",
    }
    n = len(E)
    assert st["nprobe"] == 1 and st["nlist"] == round(2 * n**0.5)
    # one probe meets a small share of the pairs exact deduplication meets
    assert st["prescored"] < n * n / 20
    assert st["found"] <= st["rescored"] <= st["prescored"]
    assert len(r.removed) > 0.8 * (n - len(_core.dedup(E, T)[0]))


def test_default_knob_removes_nearly_all_exact_removes(E) -> None:
    st: dict = {}
    r = dedup(E, T, approx=True, stats=st)
    check_removals(E, r.dup_of, r.score, T)
    exact = dedup(E, T)
    ex = set(exact.removed.tolist())
    share = len(ex & set(r.removed.tolist())) / len(ex)
    assert len(ex) > 3000 and share >= 0.99, share
    assert st["nprobe"] == 8 and st["spill"] == 4 and st["prescored"] < len(E) ** 2 / 8
    # one list per kept row instead of four: fewer pairs met (a subset) and, on these texts, fewer of exact's removals
    _, d1, _, one = _core.dedup_ivf(E, T, nprobe=8, spill=1)
    assert one["spill"] == 1 and one["prescored"] < st["prescored"]
    assert len(ex & set(removed(d1).tolist())) <= len(ex & set(r.removed.tolist()))


SCRIPT = """
import sys
import numpy as np
from tokvec import _core
E = np.load(sys.argv[1])
k, d, s, st = _core.dedup_ivf(E, 0.9, nprobe=3, block=2000)
np.savez(sys.argv[2], k=k, d=d, s=s, counts=np.array([st["prescored"], st["rescored"], st["found"]]))
"""


def test_same_result_with_one_and_two_threads(E, tmp_path: Path) -> None:
    src = tmp_path / "e.npy"
    np.save(src, E[:12000])
    got = []
    for threads in ("1", "2"):
        out = tmp_path / f"out-{threads}.npz"
        env = {**os.environ, "RAYON_NUM_THREADS": threads}
        r = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(src), str(out)], env=env, capture_output=True, text=True, check=False
        )
        assert r.returncode == 0, r.stderr
        with np.load(out) as z:
            got.append({k: z[k] for k in z.files})
    for k in ("k", "d", "counts"):
        np.testing.assert_array_equal(got[0][k], got[1][k])
    np.testing.assert_array_equal(bits(got[0]["s"]), bits(got[1]["s"]))


def test_identical_and_degenerate_inputs(model, corpus) -> None:
    v = model.embed(corpus[:1])
    same = np.ascontiguousarray(np.repeat(v, 10000, axis=0))
    k, d, s, st = _core.dedup_ivf(same, T)
    assert k.tolist() == [0] and (d[1:] == 0).all()
    np.testing.assert_array_equal(
        bits(s[1:]), bits(np.full(9999, _core.dot_pairs(v, v, np.zeros(1, np.int64), np.zeros(1, np.int64))[0]))
    )
    # identical texts go through the text pass: one kept, the rest removed as identical
    res = model.deduplicate([corpus[0]] * 10000, T, explain=True, approx=True)
    assert res.kept.tolist() == [0] and res.exact[1:].all()
    for n in (0, 1):
        k, d, s, st = _core.dedup_ivf(np.zeros((n, 256), np.float32), T)
        assert k.tolist() == list(range(n)) and d.tolist() == [-1] * n
        assert dedup(np.zeros((n, 256), np.float32), T, approx=True).kept.tolist() == list(range(n))
    # zero vectors (texts of unknown tokens) score 0 with everything: no duplicates above 0.9
    k, _, _, st = _core.dedup_ivf(np.zeros((500, 256), np.float32), T)
    assert len(k) == 500 and st["found"] == 0
    # more lists asked for than rows: one list per row at most
    k, _, _, st = _core.dedup_ivf(np.ascontiguousarray(same[:3]), T, nlist=50, nprobe=50)
    assert k.tolist() == [0] and st["nlist"] == st["nprobe"] == 3


def test_reference_set(E) -> None:
    ref, items = np.ascontiguousarray(E[:2000]), np.ascontiguousarray(E[2000:6000])
    exact = dedup(items, T, reference=ref)
    assert (exact.source == REFERENCE).sum() > 0 and (exact.source == SELF).sum() > 0
    a = dedup(items, T, reference=ref, approx=True, nlist=20, nprobe=20)
    # the same kept set; an item that matches both a reference item and an earlier item is reported against the
    # reference
    np.testing.assert_array_equal(a.kept, exact.kept)
    assert ((a.source == REFERENCE) >= (exact.source == REFERENCE)).all()
    same = a.source == exact.source
    np.testing.assert_array_equal(a.dup_of[same], exact.dup_of[same])
    np.testing.assert_array_equal(bits(a.score[same]), bits(exact.score[same]))
    b = dedup(items, T, reference=ref, approx=True, self_dedup=False)
    np.testing.assert_array_equal(b.kept, dedup(items, T, reference=ref, self_dedup=False).kept)


def test_texts_entry_points(model, corpus) -> None:
    texts = corpus[:3000] + corpus[:200]  # exact copies at the end
    plan = plan_texts(texts)
    vecs = model.embed([texts[i] for i in plan.vector_items.tolist()])
    st: dict = {}
    a = resolve_texts(plan, vecs, T, approx=Approx(nprobe=4), stats=st)
    assert st["nprobe"] == 4
    b = model.deduplicate(texts, T, explain=True, approx=True, nprobe=4)
    np.testing.assert_array_equal(a.dup_of, b.dup_of)
    assert b.exact[3000:].all()
    full = model.deduplicate(texts, T, return_indices=True, approx=True, nlist=10, nprobe=10)
    assert full == model.deduplicate(texts, T, return_indices=True)


def test_bad_arguments(E) -> None:
    X = np.ascontiguousarray(E[:100])
    for kw, name in (
        ({"nprobe": 0}, "nprobe"),
        ({"nlist": 0}, "nlist"),
        ({"nlist": -3}, "nlist"),
        ({"sample": 0}, "sample"),
        ({"block": 0}, "block"),
    ):
        with pytest.raises(ValueError, match=name):
            _core.dedup_ivf(X, T, **kw)
    with pytest.raises(ValueError, match=r"nprobe: must be at most nlist \(4\), got 5"):
        _core.dedup_ivf(X, T, nlist=4, nprobe=5)
    with pytest.raises(ValueError, match="threshold"):
        _core.dedup_ivf(X, float("nan"))
    bad = X.copy()
    bad[7, 3] = np.inf
    with pytest.raises(ValueError, match="embeddings"):
        _core.dedup_ivf(bad, T)
    with pytest.raises(ValueError, match="nprobe"):
        dedup(X, T, approx=True, nprobe=0)
    with pytest.raises(ValueError, match="nlist"):
        dedup(X, T, approx=True, nlist=2.5)


def test_cli(tmp_path: Path, capsys, corpus) -> None:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(corpus[:3000]) + "\n", encoding="utf-8")
    out, rep = tmp_path / "kept.txt", tmp_path / "removed.jsonl"
    assert (
        main(["dedup", str(src), "-o", str(out), "--report", str(rep), "--approx", "--nprobe", "4", "--json", "-q"])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["approx"] is True and info["approx_method"] == "ivf" and info["ivf"]["nprobe"] == 4
    kept = out.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in rep.read_text(encoding="utf-8").splitlines()]
    assert len(kept) == info["kept"] and len(rows) == info["removed"] > 0
    assert all(r["score"] > T and r["kept_text"] in kept for r in rows)
    assert main(["dedup", str(src), "--approx", "--nprobe", "0", "-o", str(out)]) == 2
    assert "--nprobe must be >= 1" in capsys.readouterr().err
    assert main(["dedup", str(src), "--approx", "--nlist", "3", "--nprobe", "4", "-o", str(out)]) == 2
    assert "--nprobe must be at most --nlist (3)" in capsys.readouterr().err


def test_cli_picks_the_partitioned_search_for_large_inputs(tmp_path: Path, capsys, monkeypatch, model, corpus) -> None:
    rng = np.random.default_rng(5)
    texts = corpus[:3000] + [near_copy(t, rng) for t in corpus[:300]]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "kept.txt"
    monkeypatch.setattr(cli, "AUTO_APPROX_TEXTS", 1000)  # instead of embedding 500,000 texts

    def run(*flags: str) -> tuple[dict, str, list[str]]:
        assert main(["dedup", str(src), "-o", str(out), "--json", *flags]) == 0
        cap = capsys.readouterr()
        return json.loads(cap.out), cap.err, out.read_text(encoding="utf-8").splitlines()

    info, err, kept = run()
    assert info["approx"] is True and info["approx_method"] == "ivf" and info["ivf"]["nprobe"] == 8
    assert "texts to compare: the partitioned search" in err and "--exact" in err
    want = model.deduplicate(texts, T, approx=True)
    assert kept == want
    info, err, kept = run("--exact")
    assert info["approx"] is False and "partitioned" not in err
    assert kept == model.deduplicate(texts, T)
    # a sweep is exact: it stays exact without being told
    info, err, _ = run("--sweep", "0.8,0.9")
    assert info["approx"] is False and "partitioned" not in err
    _, err, _ = run("-q")
    assert err == ""
    monkeypatch.setattr(cli, "AUTO_APPROX_TEXTS", 10**6)
    info, err, _ = run()
    assert info["approx"] is False and "partitioned" not in err
    assert main(["dedup", str(src), "-o", str(out), "--approx", "--exact"]) == 2
    assert "either --approx or --exact" in capsys.readouterr().err


def test_ctrl_c_stops_the_kernel() -> None:
    # every list probed: all-pairs work on the 400,000 random vectors of test_interrupt, far longer than the wait
    r = run_and_signal("tokvec.dedup.dedup(E, 0.9, approx=True, nlist=64, nprobe=64)", signal.SIGINT)
    assert "kernel finished" not in r.stdout, "the call ended before the signal; make its input larger"
    assert r.returncode == -signal.SIGINT, (r.returncode, r.stderr)
    assert r.stderr.rstrip().endswith("KeyboardInterrupt"), r.stderr
    assert "_core.dedup_ivf(" in r.stderr, r.stderr


def test_dedup_indices_uses_the_partitioned_search(E) -> None:
    X = np.ascontiguousarray(E[:5000])
    kept, dup_of, score = tokvec.dedup_indices(X, T, approx=True, nprobe=2)
    r = dedup(X, T, approx=True, nprobe=2)
    np.testing.assert_array_equal(kept, r.kept)
    np.testing.assert_array_equal(dup_of, r.dup_of)
    np.testing.assert_array_equal(score.view(np.uint32), r.score.view(np.uint32))
    # every list probed: the exact result, bit for bit
    full = tokvec.dedup_indices(X, T, approx=Approx(nlist=16, nprobe=16))
    for a, b in zip(full, tokvec.dedup_indices(X, T)):
        np.testing.assert_array_equal(a.view(np.uint32) if a.dtype == np.float32 else a,
                                      b.view(np.uint32) if b.dtype == np.float32 else b)


def test_bad_search_options_fail_before_any_text_is_embedded(model) -> None:
    # the options are checked first: a doc that cannot be embedded (not a str) is never reached
    docs = ["a text", 42]
    for kw, name in (({"nprobe": 0}, "nprobe"), ({"nlist": 3, "nprobe": 4}, "nprobe")):
        with pytest.raises(ValueError, match=name):
            model.deduplicate(docs, T, approx=True, **kw)
    with pytest.raises(TypeError):
        model.deduplicate(docs, T, approx=True)


def test_small_inputs_and_what_approx_refuses(tmp_path: Path, capsys, model) -> None:
    E = model.embed(["one text", "another"])
    for n in (0, 1):
        kept, dup_of, _ = tokvec.dedup_indices(E[:n], T, approx=True)
        assert kept.tolist() == list(range(n)) and dup_of.tolist() == [-1] * n
    with pytest.raises(ValueError, match="float vectors"):
        tokvec.dedup_indices(np.zeros((2, 4), np.uint64), T, approx=True)
    with pytest.raises(ValueError, match="float model"):
        tokvec.load(binary=True).deduplicate(["a", "b"], approx=True)
    src = tmp_path / "in.txt"
    src.write_text("one text\nanother\n", encoding="utf-8")
    assert main(["dedup", str(src), "--threshold", "auto", "--approx"]) == 2
    assert "--approx does not apply" in capsys.readouterr().err


def test_the_partitioned_search_is_the_only_approximate_one(tmp_path: Path, capsys, model) -> None:
    """The usearch HNSW search (method="hnsw", neighbors, ann_dtype) lost to the partitioned one at every size
    measured (docs/dedup.md) and is gone: its keywords and flags are refused, not silently ignored."""
    X = model.embed(["one text", "another", "a third"])
    for kw in ({"method": "hnsw"}, {"neighbors": 32}, {"ann_dtype": "i8"}):
        (key,) = kw
        for fn, args in ((dedup, (X, T)), (tokvec.dedup_indices, (X, T)), (model.deduplicate, (["a", "b"], T))):
            with pytest.raises(TypeError, match=key):
                fn(*args, approx=True, **kw)
        with pytest.raises(TypeError, match=key):
            Approx(**kw)
    src = tmp_path / "in.txt"
    src.write_text("one text\nanother\n", encoding="utf-8")
    for flags in (["--approx-method", "hnsw"], ["--neighbors", "32"], ["--ann-dtype", "i8"]):
        with pytest.raises(SystemExit) as stop:  # argparse's own error for an unknown flag
            main(["dedup", str(src), "--approx", *flags])
        assert stop.value.code == 2
        assert f"unrecognized arguments: {' '.join(flags)}" in capsys.readouterr().err
