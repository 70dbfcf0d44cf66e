"""`tokvec rank --index`: a partitioned search index of the input, built and saved on the first run and loaded on
later ones, checked against the texts and the model it was built from; and the metadata an `Index` keeps with it
(`Index.save(metadata=)`, `Index.metadata`, `texts_digest`). Real SciFact titles and queries, the bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tokvec
from tokvec.cli import main
from tokvec.index import Index, default_nprobe, texts_digest
from tokvec.textio import read_all

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPUS = DATA / "scifact" / "corpus.jsonl"
QUERIES = DATA / "scifact" / "queries.jsonl"
K = 5


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return read_all(str(CORPUS), field="title")


@pytest.fixture(scope="module")
def queries() -> list[str]:
    return read_all(str(QUERIES))[:60]


def rank_json(capsys, *args: str) -> list[dict]:
    assert (
        main(["rank", "--queries", str(QUERIES), str(CORPUS), "--field", "title", "-k", str(K), "--json", *args]) == 0
    )
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def hits(blocks: list[dict], n: int) -> list[list[tuple[int, float]]]:
    return [[(h["index"], h["score"]) for h in b["results"]] for b in blocks[:n]]


def test_built_once_then_loaded(tmp_path: Path, capsys, model, titles, queries) -> None:
    path = tmp_path / "titles.index.safetensors"
    built = rank_json(capsys, "--index", str(path))
    assert path.exists()
    ix = Index.load(path)
    # the index is the partitioned index of the input's vectors, and says what it was built from
    assert len(ix) == len(titles) and not ix.exact
    np.testing.assert_array_equal(np.asarray(ix.vectors), model.embed(titles))
    assert ix.metadata == {
        "model": "default",
        "model_fingerprint": model.fingerprint,
        "texts_digest": texts_digest(titles),
    }
    # the results are its search at the default nprobe, on the 60 first queries
    s, i = ix.search(model.embed(queries), K)
    assert hits(built, len(queries)) == [[(int(a), round(float(b), 6)) for a, b in zip(r, q)] for r, q in zip(i, s)]
    # a second run reads the saved index (the file is left as it was) and gives the same results
    stamp = path.stat().st_mtime_ns, path.stat().st_ino
    assert rank_json(capsys, "--index", str(path)) == built
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp
    # every list probed: exactly the ranking without an index
    exact = rank_json(capsys)
    assert rank_json(capsys, "--index", str(path), "--nprobe", str(ix.nlist)) == exact
    # fewer probes find fewer of the exact hits, never other scores for the hits they find
    few = rank_json(capsys, "--index", str(path), "--nprobe", "1")
    exact_score = {(b["query_index"], h["index"]): h["score"] for b in exact for h in b["results"]}
    full = {
        (b["query_index"], h["index"]): h["score"]
        for b in rank_json(capsys, "--index", str(path), "--nprobe", str(ix.nlist), "-k", "50")
        for h in b["results"]
    }
    found = [(b["query_index"], h["index"], h["score"]) for b in few for h in b["results"]]
    assert 0 < sum((q, r) in exact_score for q, r, _ in found) < len(exact_score)
    assert all(full.get((q, r), s) == s for q, r, s in found)
    assert default_nprobe(ix.nlist) < ix.nlist


def test_other_texts_or_model_are_refused(tmp_path: Path, capsys, titles) -> None:
    path = tmp_path / "ix.safetensors"
    rank_json(capsys, "--index", str(path))
    before = path.read_bytes()
    # the same file, another field: other texts
    code = main(["rank", "aspirin", str(CORPUS), "--field", "text", "--index", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: built from other texts ({len(titles)}" in err and "delete it to rebuild" in err
    # another model: the default truncated to 128 dimensions
    code = main(["rank", "aspirin", str(CORPUS), "--field", "title", "--dim", "128", "--index", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: built with another model" in err
    # -o is not written when the index is refused, and the index is untouched
    out = tmp_path / "top.jsonl"
    code = main(["rank", "aspirin", str(CORPUS), "--field", "text", "--index", str(path), "-o", str(out)])
    assert code == 2 and not out.exists() and path.read_bytes() == before


def test_an_index_without_its_record_is_refused(tmp_path: Path, capsys, model, titles) -> None:
    path = Index(model.embed(titles)).save(tmp_path / "api.safetensors")
    code = main(["rank", "aspirin", str(CORPUS), "--field", "title", "--index", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: this index does not record the model and texts" in err


def test_mistakes(tmp_path: Path, capsys) -> None:
    path = tmp_path / "ix.safetensors"
    rank_json(capsys, "--index", str(path))
    nlist = Index.load(path).nlist
    cases = [
        (["--nprobe", "3"], "--nprobe applies to a search index"),
        (["--index", str(path), "--nprobe", "0"], "--nprobe must be >= 1"),
        (["--index", str(path), "--nprobe", str(nlist + 1)], f"at most the index's {nlist} lists"),
        (["--index", str(tmp_path / "ix.npy")], "ix.npy"),
        (["--index", str(CORPUS)], str(CORPUS)),
    ]
    for extra, msg in cases:
        code = main(["rank", "aspirin", str(CORPUS), "--field", "title", *extra])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and err.count("\n") == 1, (extra, err)
    # an exact index takes no --nprobe
    exact = tmp_path / "exact.safetensors"
    Index(np.eye(4, dtype=np.float32), exact=True).save(exact, {"model_fingerprint": "x", "texts_digest": "y"})
    code = main(["rank", "aspirin", str(CORPUS), "--field", "title", "--index", str(exact)])
    assert code == 2 and "built with another model" in capsys.readouterr().err
    # no texts: nothing to index, and no file is left behind
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["rank", "aspirin", str(empty), "--index", str(tmp_path / "none.safetensors")])
    assert code == 2 and "has no texts to index" in capsys.readouterr().err
    assert not (tmp_path / "none.safetensors").exists()


def test_metadata_round_trip_and_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    E = rng.standard_normal((300, 16)).astype(np.float32)
    ix = Index(E)
    assert ix.metadata == {}
    ix.save(tmp_path / "a.safetensors", {"source": "docs.jsonl", "note": "ünïcode"})
    assert Index.load(tmp_path / "a.safetensors").metadata == {"source": "docs.jsonl", "note": "ünïcode"}
    # saved again without metadata: it keeps what it has
    assert ix.metadata == {"source": "docs.jsonl", "note": "ünïcode"}
    ix.save(tmp_path / "b.safetensors")
    assert Index.load(tmp_path / "b.safetensors").metadata == ix.metadata
    for bad, exc, msg in [
        ({"count": "3"}, ValueError, "metadata key 'count' is the index's own"),
        ({"format": "x"}, ValueError, "metadata key 'format'"),
        ({"n": 3}, TypeError, "metadata must map str to str; entry 'n': 3"),
        ([("a", "b")], TypeError, "metadata must be a dict"),
    ]:
        with pytest.raises(exc, match=msg):
            ix.save(tmp_path / "c.safetensors", bad)
        assert not (tmp_path / "c.safetensors").exists()


def test_texts_digest() -> None:
    base = texts_digest(["ab", "c"])
    assert len(base) == 32 and base == texts_digest(iter(["ab", "c"]))
    others = [["a", "bc"], ["c", "ab"], ["ab", "c", ""], ["ab"], ["abc"], ["ab", "ç"]]
    assert len({base, *(texts_digest(t) for t in others)}) == len(others) + 1
    # a lone surrogate does not break it, and the chunking does not change it
    assert texts_digest(["\ud800"]) != texts_digest(["?"])
    many = [str(i) for i in range(200_000)]
    assert texts_digest(many) != texts_digest(many[:-1] + ["x"])
