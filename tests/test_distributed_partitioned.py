"""The partitioned (IVF) deduplication split into stages (tokvec.distributed) gives the single-machine
`_core.dedup_ivf` result bit for bit: in-process, on a Dask LocalCluster with two worker processes and on a local
Ray cluster, over real Wikipedia sentences mixed with lightly edited copies."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tokvec
from conftest import with_near_copies
from tokvec import _core
from tokvec.distributed import (
    ListRows,
    ivf_plan,
    list_pairs,
    resolve_pairs,
    route_rows,
    sample_rows,
    train_centroids,
)

T = 0.9


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def corpus(wiki_sentences: list[str]) -> list[str]:
    """30,000 texts: 24,000 Wikipedia sentences spread over the file, 5,000 edited copies, 1,000 exact repeats."""
    rng = np.random.default_rng(17)
    base = [wiki_sentences[i] for i in np.sort(rng.choice(len(wiki_sentences), 24_000, replace=False))]
    return with_near_copies(base, rng, 5_000, 1_000)


@pytest.fixture(scope="module")
def vectors(model: tokvec.Model, corpus: list[str]) -> np.ndarray:
    return model._unit_embed(corpus)


def single(E: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kept, dup_of, score, _ = _core.dedup_ivf(E, T, **kw)
    return kept, dup_of, score


def assert_same(got, want) -> None:
    kept, dup_of, score = got
    np.testing.assert_array_equal(kept, want[0])
    np.testing.assert_array_equal(dup_of, want[1])
    np.testing.assert_array_equal(score.view(np.uint32), want[2].view(np.uint32))


def staged(E: np.ndarray, parts: int, buckets: int, **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stages run in this process over `parts` partitions, the shuffle into `buckets` group tasks."""
    n = len(E)
    plan = ivf_plan(n, E.shape[1], **kw)
    C = train_centroids(E[sample_rows(n, plan["sample"])], plan["nlist"])
    np.testing.assert_array_equal(C, _core.ivf_train(E, plan["nlist"], sample=kw.get("sample")))
    cuts = np.linspace(0, n, parts + 1).astype(int)
    routed = [route_rows(E[a:b], a, C, plan["nprobe"], buckets) for a, b in itertools.pairwise(cuts)]
    found = [list_pairs(ListRows.concat(r[b] for r in routed), T, plan["spill"]) for b in range(buckets)]
    kept, dup_of, score, _ = resolve_pairs(n, found, T)
    return kept, dup_of, score


def test_core_hooks(vectors: np.ndarray) -> None:
    E = vectors[:5000]
    plan = _core.ivf_settings(len(E), E.shape[1])
    assert plan == {"nlist": 141, "nprobe": 8, "sample": 4096, "spill": 4}
    C = _core.ivf_train(E, 141)
    assert C.shape == (141, E.shape[1]) and C.dtype == np.float32
    # the centroids a run trains, given back, give the same result; so do the sampled rows alone
    assert_same(single(E, centroids=C), single(E))
    np.testing.assert_array_equal(
        _core.ivf_train(np.ascontiguousarray(E[sample_rows(5000, 4096)]), 141, sample=4096), C
    )
    P = _core.ivf_assign(E, C, 8)
    assert P.shape == (5000, 8) and P.dtype == np.uint32
    # nearest first: each row's home list is the one with the highest score (ties aside)
    home = np.argmax(_core.scores(E, C), axis=1)
    assert (P[:, 0] == home).mean() > 0.99
    np.testing.assert_array_equal(_core.ivf_assign(E, C, 3), P[:, :3])
    assert _core.ivf_assign(E[:0], C, 2).shape == (0, 2)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda E, C: _core.ivf_assign(E, C, 0), "k must be >= 1"),
        (lambda E, C: _core.ivf_assign(E, C, 11), r"k must be at most the number of centroids \(10\)"),
        (lambda E, C: _core.ivf_assign(E, C[:, :5], 2), "centroids have 5 columns but vectors have 256"),
        (lambda E, C: _core.ivf_assign(E, C[:0], 1), "needs at least one centroid"),
        (lambda E, C: _core.ivf_assign(E, np.full_like(C, np.nan), 1), "centroids: row 0 contains NaN"),
        (lambda E, C: _core.ivf_train(E[:0], 4), "k-means needs at least one row"),
        (lambda E, C: _core.ivf_train(E, 0), "nlist must be >= 1"),
        (lambda E, C: _core.dedup_ivf(E, T, centroids=C, nlist=5), r"nlist \(5\) differs from the number of"),
        (lambda E, C: _core.dedup_ivf(E[:5], T, centroids=C), "10 lists for 5 rows"),
        (lambda E, C: _core.dedup_ivf(E, T, centroids=np.full_like(C, np.inf)), "centroids: row 0"),
        (lambda E, C: _core.ivf_settings(10, 256, nprobe=5, nlist=4), r"nprobe: must be at most nlist \(4\)"),
    ],
)
def test_core_hooks_reject_bad_arguments(vectors: np.ndarray, call, match: str) -> None:
    E = vectors[:200]
    C = _core.ivf_train(E, 10)
    with pytest.raises(ValueError, match=match):
        call(E, C)


def test_stages_equal_single_machine(vectors: np.ndarray) -> None:
    E = vectors
    want = single(E)
    assert want[0].size < len(E) - 4000  # the edited copies and repeats are found
    for parts, buckets in ((1, 1), (7, 3), (16, 64)):
        assert_same(staged(E, parts, buckets), want)
    kw = {"nlist": 60, "nprobe": 3, "spill": 2, "sample": 2000}
    assert_same(staged(E, 5, 4, **kw), single(E, **kw))


def test_stages_with_every_list_probed_equal_exact(vectors: np.ndarray) -> None:
    E = vectors[:3000]
    kw = {"nlist": 12, "nprobe": 12, "spill": 12}
    assert_same(staged(E, 3, 5, **kw), _core.dedup(E, T))
    # and a pair is reported by one list only, even when both rows are stored in every list
    plan = ivf_plan(len(E), E.shape[1], **kw)
    C = train_centroids(E[sample_rows(len(E), plan["sample"])], plan["nlist"])
    (rows,) = route_rows(E, 0, C, 12, 1)
    i, j, _, scored = list_pairs(rows, T, 12)
    assert len(set(zip(i.tolist(), j.tolist()))) == len(i) == len(_core.duplicate_pairs(E, T)[0])
    # every row is stored in and probes each of the 12 lists: all pairs i < j of each list, and not much more
    n = len(E)
    assert 12 * n * (n - 1) // 2 <= scored < 12 * n * n


def test_dask_cluster(model: tokvec.Model, corpus: list[str], vectors: np.ndarray) -> None:
    import dask.bag as db
    import dask.dataframe as dd
    import pandas as pd
    from dask import distributed
    from tokvec.distributed import dask_partitioned_dedup

    want = single(vectors)
    small = corpus[:2000]
    kw = {"nlist": 20, "nprobe": 4, "spill": 2}
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
        distributed.Client(lc) as client,
    ):
        assert len(set(client.run(lambda: __import__("os").getpid()).values())) == 2
        parts = [corpus[i : i + 3000] for i in range(0, len(corpus), 3000)]
        r = dask_partitioned_dedup(client, model, parts, T)
        assert_same((r.kept, r.dup_of, r.score), want)
        assert r.stats["nlist"] == 346 and r.stats["pairs_found"] >= len(corpus) - len(want[0])
        bag = db.from_sequence(small, npartitions=5)
        r = dask_partitioned_dedup(client, model, bag, T, **kw)
        assert_same((r.kept, r.dup_of, r.score), single(vectors[:2000], **kw))
        frame = dd.from_pandas(pd.DataFrame({"id": np.arange(2000), "text": small}), npartitions=3)
        r = dask_partitioned_dedup(client, model, frame, T, **kw)
        assert_same((r.kept, r.dup_of, r.score), single(vectors[:2000], **kw))
        # empty partitions are rows of nothing
        r = dask_partitioned_dedup(client, model, [small[:700], [], small[700:]], T, **kw)
        assert_same((r.kept, r.dup_of, r.score), single(vectors[:2000], **kw))
        assert dask_partitioned_dedup(client, model, [[], []], T).kept.size == 0
        with pytest.raises(ValueError, match="spill must be >= 1"):
            dask_partitioned_dedup(client, model, parts, T, spill=0)


# Ray 2.60's DataContext() warns about its own defaults of deprecated fields
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
def test_ray_local(model: tokvec.Model, corpus: list[str], vectors: np.ndarray) -> None:
    import ray
    from tokvec.distributed import ray_partitioned_dedup

    want = single(vectors)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        r = ray_partitioned_dedup(corpus, model, T, workers=2)
        print(r.stats)
        assert_same((r.kept, r.dup_of, r.score), want)
        # a Dataset with its own id column, in another block order than the ids
        import pyarrow as pa

        kw = {"nlist": 20, "nprobe": 4, "spill": 2}
        ids = np.arange(2000)[::-1].copy()
        ds = ray.data.from_arrow(
            [pa.table({"id": ids[a : a + 500], "text": corpus[:2000][::-1][a : a + 500]}) for a in range(0, 2000, 500)]
        )
        r = ray_partitioned_dedup(ds, model, T, workers=2, **kw)
        assert_same((r.kept, r.dup_of, r.score), single(vectors[:2000], **kw))
        bad = ray.data.from_arrow(
            [pa.table({"id": np.arange(a + 1, a + 1001), "text": corpus[a : a + 1000]}) for a in (0, 1000)]
        )
        with pytest.raises(ValueError, match="id must number the rows 0 .. n-1"):
            ray_partitioned_dedup(bad, model, T, workers=2, **kw)
        with pytest.raises(ValueError, match="the dataset has no column 'sentence'"):
            ray_partitioned_dedup(bad, model, T, column="sentence")
        with pytest.raises(ValueError, match=r"nprobe: must be at most nlist \(4\)"):
            ray_partitioned_dedup(bad, model, T, nlist=4, nprobe=5)
    finally:
        ray.shutdown()


def test_import_tokvec_pulls_neither_engine() -> None:
    import subprocess
    import sys

    code = "import sys, tokvec, tokvec.distributed; print(sorted({'ray', 'dask'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
