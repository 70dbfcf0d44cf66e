"""Models pickle by path (small pickles, identical embeddings after unpickling), and a real Dask cluster
(two worker processes) runs embedding and the two-level deduplication, which keeps exactly what the
single-machine greedy keeps."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tokvec
from tokvec.distributed import PartitionResult, global_pass, partition_dedup


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


def test_pickle_is_small_and_identical(model, sample_sentences: list[str], wordllama_model) -> None:
    for m in (model, tokvec.load(wordllama_model.path, dim=64), tokvec.load(binary=True)):
        blob = pickle.dumps(m)
        assert len(blob) < 1024, len(blob)  # paths and options, never the table
        m2 = pickle.loads(blob)
        assert repr(m2) == repr(m)
        np.testing.assert_array_equal(m2.embed(sample_sentences), m.embed(sample_sentences))


def test_unpicklable_without_path(make_model) -> None:
    from tokvec.formats import resolve
    from tokvec.model import Model
    from tokvec.tokenizer import load_tokenizer

    files = make_model("tokvec")
    r = resolve(files.path)
    m = Model._build(
        r,
        load_tokenizer(r.tokenizer, add_special_tokens=r.add_special_tokens),
        dim=None,
        binary=False,
        normalize=None,
        max_length=None,
    )
    with pytest.raises(TypeError, match="only models made by tokvec.load"):
        pickle.dumps(m)


def _chain_vectors() -> np.ndarray:
    """a ~ b (0.95), b ~ c (0.95), a !~ c: the case where per-partition dedup alone is wrong."""
    ang = np.deg2rad(18.2)  # cos = 0.95; a-c is 36.4 degrees, cos = 0.805
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(ang), np.sin(ang), 0.0])
    c = np.array([np.cos(2 * ang), np.sin(2 * ang), 0.0])
    d = np.array([0.0, 0.0, 1.0])
    return np.stack([a, d, b, c]).astype(np.float32)


def test_global_pass_handles_orphans() -> None:
    X = _chain_vectors()
    parts_rows = [[0, 1], [2, 3]]  # a, d | b, c
    single = tokvec.dedup_indices(X, 0.9)[0].tolist()
    assert single == [0, 1, 3]  # a, d, c kept: b is a duplicate of a, c is not a duplicate of a

    class M:
        dim = 3

        def _unit_embed(self, rows):
            return X[np.array(rows, np.int64)]

    res = [partition_dedup(M(), rows, 0.9) for rows in parts_rows]
    # locally, partition 2 drops c because of b
    assert res[1].kept.tolist() == [0]
    naive = sorted([0, 1] + [2 + int(i) for i in res[1].kept])
    assert tokvec.dedup_indices(X[naive], 0.9)[0].size != len(single)  # survivors-only is not exact
    kept, rounds = global_pass(res, 0.9, lambda p, rows: X[np.array(parts_rows[p])[rows]])
    assert kept.tolist() == single and rounds == 2


def test_global_pass_empty_partitions() -> None:
    empty = PartitionResult(0, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.float32))
    kept, _ = global_pass([empty, empty], 0.9, lambda p, r: np.zeros((0, 3), np.float32))
    assert kept.tolist() == []


def test_dask_cluster_embed_and_two_level_dedup(model, near_dup_corpus: list[str], wiki_sentences) -> None:
    import dask.bag as db
    from dask import distributed
    from tokvec.distributed import dask_deduplicate

    # real near-duplicates spread over partitions, plus template sentences from Wikipedia
    # identical texts across partitions, zero-vector texts and empty texts are decided as Model.deduplicate does
    texts = near_dup_corpus + wiki_sentences[:1500] + near_dup_corpus[::3] + ["😀", "", "😀", " ", "🎉"] * 3
    parts = [texts[i : i + 300] for i in range(0, len(texts), 300)]
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
        distributed.Client(lc) as client,
    ):
        # embeddings computed on workers (the model pickled by path) equal local ones
        futs = [client.submit(model.embed, p) for p in parts]
        remote = np.concatenate(client.gather(futs))
        np.testing.assert_array_equal(remote, model.embed(texts))
        pids = client.run(lambda: __import__("os").getpid())
        assert len(set(pids.values())) == 2
        for t in (0.85, 0.9, 1.0):
            want = model.deduplicate(texts, t, return_indices=True)
            kept, rounds = dask_deduplicate(client, model, parts, t)
            assert kept.tolist() == want and rounds >= (t < 1.0)  # at 1.0 only identical texts: no vector pass
        bag = db.from_sequence(texts, npartitions=5)
        kept, _ = dask_deduplicate(client, model, bag, 0.9)
        assert kept.tolist() == model.deduplicate(texts, 0.9, return_indices=True)
