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
#: Smallest nearest/second-nearest distance gap that cannot be a rounding call: the canonical float32 dot of these
#: unit vectors is within 1e-7 of float64 (7e-8 measured with `topk` on the wiki vectors), so a squared distance is
#: within ~3e-7 and a gap between two within ~6e-7.
GAP = 2e-6


def sq_dists(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of every row of X to every row of C, in float64."""
    X64, C64 = X.astype(np.float64), C.astype(np.float64)
    return np.maximum((X64**2).sum(1)[:, None] - 2 * X64 @ C64.T + (C64**2).sum(1)[None, :], 0)


def assign_gap(d: np.ndarray) -> float:
    """The smallest gap between a point's nearest and second-nearest center: where it is well above float rounding,
    no assignment can flip between numpy's float64 and the Rust float32 distances."""
    two = np.partition(d, 1, axis=1)[:, :2]
    return float((two[:, 1] - two[:, 0]).min())


def lloyd_ref(X: np.ndarray, C: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Plain numpy Lloyd from given centers, until labels stop changing (tol=0). Returns labels, centers, inertia
    and the smallest assignment gap seen on the way (see `assign_gap`)."""
    X64 = X.astype(np.float64)
    C = C.astype(np.float64)
    prev = None
    gap = np.inf
    for _ in range(iters):
        d = sq_dists(X64, C)
        gap = min(gap, assign_gap(d))
        lab = d.argmin(1)
        if prev is not None and (lab == prev).all():
            break
        C = np.stack([X64[lab == c].mean(0) if (lab == c).any() else C[c] for c in range(len(C))])
        prev = lab
    d = sq_dists(X64, C)
    lab = d.argmin(1)
    return lab, C, float(d[np.arange(len(X)), lab].sum()), gap


def check_lloyd_fixed_point(X: np.ndarray, r: tokvec.KMeansResult, converged: bool) -> None:
    """Checks a k-means result against numpy alone: every point is labelled with its nearest returned centroid, the
    inertia is the sum of those squared distances, and (once converged) every centroid is the mean of its points."""
    d = sq_dists(X, r.centroids)
    assert assign_gap(d) > GAP, "a point is equidistant (within rounding) from two centroids: pick other data"
    np.testing.assert_array_equal(r.labels, d.argmin(1))
    assert r.inertia == pytest.approx(float(d.min(1).sum()), rel=1e-5)
    if converged:
        k = len(r.centroids)
        assert np.bincount(r.labels, minlength=k).min() > 0
        means = np.stack([X[r.labels == c].astype(np.float64).mean(0) for c in range(k)])
        np.testing.assert_allclose(r.centroids, means, atol=1e-5)


@pytest.fixture(scope="module")
def wiki_vectors(model, wiki_sentences: list[str]) -> np.ndarray:
    return model.embed(wiki_sentences[:4000])


def test_kmeans_matches_numpy_lloyd(wiki_vectors: np.ndarray) -> None:
    X = wiki_vectors
    rng = np.random.default_rng(3)
    init = X[rng.choice(len(X), 20, replace=False)]
    r = tokvec.kmeans(X, 20, init=init, tol=0.0, max_iter=300)
    lab, C, inertia, gap = lloyd_ref(X, init, 300)
    # no assignment of the reference run is a rounding call (the smallest gap of this run is 4.4e-6; other seeds
    # come closer), so both take the same path: labels equal, centroids equal to float32 rounding
    assert gap > GAP, gap
    np.testing.assert_array_equal(r.labels, lab)
    np.testing.assert_allclose(r.centroids, C, atol=1e-5)
    assert r.inertia == pytest.approx(inertia, rel=1e-5)
    check_lloyd_fixed_point(X, r, converged=True)


def blobs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """5 large and 25 small tight, far-apart Gaussian blobs in 16-D (labels = blob). The best 30-clustering is the
    blobs themselves; seeding that picks points uniformly (~89% land in a large blob) leaves small blobs without a
    center, and Lloyd cannot move a center across the empty space to them."""
    sizes = [800] * 5 + [20] * 25
    centers = rng.standard_normal((30, 16))
    truth = np.repeat(np.arange(30), sizes)
    X = centers[truth] + 0.002 * rng.standard_normal((len(truth), 16))
    return X.astype(np.float32), truth


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the labellings a and b split the points the same way (cluster names aside)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_plus_plus_finds_the_blobs_and_is_deterministic(wiki_vectors: np.ndarray) -> None:
    X = wiki_vectors
    a = tokvec.kmeans(X, 30, n_init=2, seed=5)
    b = tokvec.kmeans(X, 30, n_init=2, seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia
    check_lloyd_fixed_point(X, a, converged=False)
    # D^2 seeding finds every blob, whatever the seed; the optimum's inertia is the blobs' own spread
    rng = np.random.default_rng(11)
    B, truth = blobs(rng)
    opt = sum(float(((B[truth == c] - B[truth == c].mean(0)) ** 2).sum()) for c in range(30))
    for seed in range(3):
        r = tokvec.kmeans(B, 30, n_init=1, seed=seed)
        assert same_partition(r.labels, truth), f"seed {seed}: {len(set(zip(r.labels.tolist(), truth.tolist())))}"
        # 1%: the float32 |x|^2 - 2x.c + |c|^2 of points ~4 from the origin is ~1e-6 off per point (a missed blob would
        # add ~600)
        assert r.inertia == pytest.approx(opt, rel=1e-2)
    # the data discriminates: Lloyd from 30 uniformly drawn points (what a broken seeding would give) misses blobs
    rand = tokvec.kmeans(B, 30, init=B[rng.choice(len(B), 30, replace=False)])
    assert not same_partition(rand.labels, truth) and rand.inertia > 10 * opt


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
    # clustered on the unit vectors of the texts: checked against numpy's own normalisation and distances
    E = model.embed(docs).astype(np.float64)
    U = E / np.linalg.norm(E, axis=1, keepdims=True)
    check_lloyd_fixed_point(U, r, converged=False)
    check_lloyd_fixed_point(U, model.cluster(docs, 8, seed=1, tol=0.0, max_iter=1000), converged=True)
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
