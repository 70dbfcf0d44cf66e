"""`tokvec rank` (one query or a file of queries, through the Rust top-k) and k-means (`tokvec.kmeans`,
`Model.cluster`, `tokvec cluster`) on real text, against brute-force numpy references."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tokvec
from tokvec.cli import main
from tokvec.textio import read_all

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCIFACT = DATA / "scifact"


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return read_all(str(SCIFACT / "corpus.jsonl"), field="title")


# ------------------------------------------------------------------------------------------------ rank
def test_rank_one_query(capsys, model, titles: list[str]) -> None:
    q = "heart disease risk factors"
    assert main(["rank", q, str(SCIFACT / "corpus.jsonl"), "--field", "title", "-k", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    s = model.embed(titles) @ model.embed(q)
    want = np.argsort(-s, kind="stable")[:5]
    assert [int(line.split("\t")[1]) for line in lines] == want.tolist()
    for line, i in zip(lines, want):
        score, _, text = line.split("\t", 2)
        assert text == titles[i] and float(score) == pytest.approx(float(s[i]), abs=1e-4)


def test_rank_many_queries_json(tmp_path: Path, capsys, model, titles: list[str]) -> None:
    queries = read_all(str(SCIFACT / "queries.jsonl"))[:40]
    assert (
        main(
            [
                "rank",
                "--queries",
                str(SCIFACT / "queries.jsonl"),
                str(SCIFACT / "corpus.jsonl"),
                "--field",
                "title",
                "-k",
                "3",
                "--json",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    all_q = read_all(str(SCIFACT / "queries.jsonl"))
    assert len(rows) == len(all_q) and [r["query"] for r in rows[:40]] == queries
    S = model.embed(queries) @ model.embed(titles).T
    for r, srow in zip(rows[:40], S):
        idx = [h["index"] for h in r["results"]]
        # best first and the true top 3 (ties aside)
        assert idx == np.argsort(-srow, kind="stable")[:3].tolist() or np.allclose(
            np.sort(srow[idx])[::-1], np.sort(srow)[::-1][:3], atol=1e-5
        )


def test_rank_mistakes(capsys) -> None:
    assert main(["rank", "q", str(SCIFACT / "corpus.jsonl"), "-k", "0"]) == 2
    assert "-k must be >= 1" in capsys.readouterr().err
    assert main(["rank", str(SCIFACT / "corpus.jsonl")]) == 2
    assert "give either a QUERY or --queries" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ k-means
def lloyd_ref(X: np.ndarray, C: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Plain numpy Lloyd from given centers, until labels stop changing (tol=0)."""
    X64 = X.astype(np.float64)
    C = C.astype(np.float64)
    prev = None
    for _ in range(iters):
        d = (X64**2).sum(1)[:, None] - 2 * X64 @ C.T + (C**2).sum(1)[None, :]
        lab = d.argmin(1)
        if prev is not None and (lab == prev).all():
            break
        C = np.stack([X64[lab == c].mean(0) if (lab == c).any() else C[c] for c in range(len(C))])
        prev = lab
    d = (X64**2).sum(1)[:, None] - 2 * X64 @ C.T + (C**2).sum(1)[None, :]
    lab = d.argmin(1)
    return lab, C, float(np.maximum(d[np.arange(len(X)), lab], 0).sum())


@pytest.fixture(scope="module")
def wiki_vectors(model, wiki_sentences: list[str]) -> np.ndarray:
    return model.embed(wiki_sentences[:4000])


def test_kmeans_matches_numpy_lloyd(wiki_vectors: np.ndarray) -> None:
    X = wiki_vectors
    rng = np.random.default_rng(3)
    init = X[rng.choice(len(X), 20, replace=False)]
    r = tokvec.kmeans(X, 20, init=init, tol=0.0, max_iter=300)
    lab, C, inertia = lloyd_ref(X, init, 300)
    agree = (r.labels == lab).mean()
    assert agree > 0.99, agree
    assert r.inertia == pytest.approx(inertia, rel=1e-3)
    assert np.abs(r.centroids - C).max() < 1e-2 if agree == 1.0 else True


def test_kmeans_plus_plus_beats_random_and_is_deterministic(wiki_vectors: np.ndarray) -> None:
    X = wiki_vectors
    a = tokvec.kmeans(X, 30, n_init=2, seed=5)
    b = tokvec.kmeans(X, 30, n_init=2, seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia
    assert np.bincount(a.labels, minlength=30).min() > 0
    # the inertia is that of the returned labels and centroids
    d = ((X.astype(np.float64) - a.centroids[a.labels].astype(np.float64)) ** 2).sum()
    assert a.inertia == pytest.approx(d, rel=1e-4)
    # better than Lloyd from k random points (the same budget, one run)
    rng = np.random.default_rng(0)
    rand = tokvec.kmeans(X, 30, init=X[rng.choice(len(X), 30, replace=False)])
    assert a.inertia <= rand.inertia * 1.02


def test_kmeans_independent_of_thread_count(tmp_path: Path, wiki_vectors: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", wiki_vectors[:2000])
    code = (
        "import sys, numpy as np, tokvec; X = np.load(sys.argv[1]); r = tokvec.kmeans(X, 12, n_init=2, seed=9);"
        "np.save(sys.argv[2], r.labels); np.save(sys.argv[3], r.centroids)"
    )
    for t in ("1", "2", "4"):
        env = {**os.environ, "RAYON_NUM_THREADS": t}
        subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                str(tmp_path / "x.npy"),
                str(tmp_path / f"l{t}.npy"),
                str(tmp_path / f"c{t}.npy"),
            ],
            env=env,
            check=True,
        )
    for t in ("2", "4"):
        np.testing.assert_array_equal(np.load(tmp_path / "l1.npy"), np.load(tmp_path / f"l{t}.npy"))
        np.testing.assert_array_equal(np.load(tmp_path / "c1.npy"), np.load(tmp_path / f"c{t}.npy"))


@pytest.mark.parametrize(
    ("kw", "exc", "msg"),
    [
        ({"k": 0}, ValueError, "k must be an int >= 1"),
        ({"k": 10**6}, ValueError, "larger than the number of points"),
        ({"k": 3, "n_init": 0}, ValueError, "n_init must be"),
        ({"k": 3, "tol": -1.0}, ValueError, "tol must be"),
        ({"k": 3, "init": np.zeros((2, 4), np.float32)}, ValueError, "init must have shape"),
    ],
)
def test_kmeans_bad_arguments(kw, exc, msg) -> None:
    X = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    with pytest.raises(exc, match=msg):
        tokvec.kmeans(X, **kw)


def test_kmeans_nan_and_dtype() -> None:
    X = np.ones((10, 4), np.float32)
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tokvec.kmeans(X, 2)
    with pytest.raises(TypeError):
        tokvec.kmeans(np.ones((10, 4), np.int32), 2)


def test_model_cluster_and_cli(tmp_path: Path, capsys, model, titles: list[str]) -> None:
    docs = titles[:1500]
    r = model.cluster(docs, 8, seed=1)
    assert r.labels.shape == (1500,) and r.centroids.shape == (8, model.dim)
    src = tmp_path / "t.txt"
    src.write_text("".join(t + "\n" for t in docs), encoding="utf-8")
    assert (
        main(
            [
                "cluster",
                str(src),
                "-k",
                "8",
                "--seed",
                "1",
                "-o",
                str(tmp_path / "labels.txt"),
                "--centroids",
                str(tmp_path / "c.npy"),
                "--json",
                "-q",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    labels = [int(v) for v in (tmp_path / "labels.txt").read_text().split()]
    assert labels == r.labels.tolist() and info["inertia"] == pytest.approx(r.inertia)
    assert sum(info["sizes"]) == 1500
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), r.centroids)
    assert main(["cluster", str(src), "-k", "2000", "-o", str(tmp_path / "l.txt")]) == 2
    assert "more than the 1500 texts" in capsys.readouterr().err
