"""tokvec inside the tools its users already run, each run for real on real text: `Model.encode` (the
sentence-transformers / model2vec signature, checked against model2vec's own `StaticModel`), semhash's
deduplication with a tokvec model against `Model.deduplicate`, LangChain's `InMemoryVectorStore` with
`TokvecEmbeddings`, and the names tokvec shares with WordLlama, run against WordLlama's own class on the same
table. docs/integrations.md states what these tests check."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tokvec
from conftest import DATA, STSB_DIR, near_copy, read_tsv, with_near_copies, wordllama_tokenizer_file
from tokvec import _core

TOL = 1e-5


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def stsb_texts() -> list[str]:
    """STS-B dev sentences in file order (3,000, some repeated in the data itself)."""
    return [s for r in read_tsv(STSB_DIR / "sts-dev.tsv") for s in (r["sentence1"], r["sentence2"])]


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def clear_margin(vectors: np.ndarray, thresholds: list[float]) -> float:
    """The smallest distance of a pair's cosine (float64, over distinct vectors) from any threshold: above float32
    rounding, two implementations of the same rule cannot decide a pair differently."""
    e = vectors.astype(np.float64)
    s = (e @ e.T)[np.triu_indices(len(e), 1)]
    return float(min(np.abs(s - t).min() for t in thresholds))


# --------------------------------------------------------------------------------------------------- import cost
def test_import_tokvec_imports_no_integration():
    code = (
        "import sys, tokvec\n"
        "tokvec.load().encode(['a text'])\n"
        "roots = {'langchain', 'langchain_core', 'semhash', 'model2vec', 'vicinity', 'wordllama', 'torch'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in roots or m.startswith('tokvec.integrations')))\n"
    )
    src = str(Path(tokvec.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# --------------------------------------------------------------------------------------------------- encode
def test_encode_shapes_and_values(model, stsb_texts):
    texts = stsb_texts[:500]
    e = model.encode(texts)
    assert e.dtype == np.float32 and e.shape == (500, model.dim)
    assert np.array_equal(e, model.embed(texts))
    one = model.encode(texts[0])
    assert one.shape == (model.dim,) and np.array_equal(one, e[0])
    assert model.encode([]).shape == (0, model.dim)
    assert model.encode(iter(texts[:3])).shape == (3, model.dim)
    assert model.get_sentence_embedding_dimension() == model.dim == 256
    for bs in (1, 7, 499, 500, 10_000):
        assert np.array_equal(model.encode(texts, batch_size=bs), e)
    # every keyword that leaves the result as sentence-transformers / model2vec would compute it
    same = model.encode(
        texts, show_progress_bar=None, convert_to_numpy=True, convert_to_tensor=False, device="cpu",
        precision="float32", output_value="sentence_embedding", prompt_name=None, prompt="", truncate_dim=model.dim,
        max_length=None, task=None, pool=None, chunk_size=64, use_multiprocessing=True,
        multiprocessing_threshold=10_000, normalize=True,
    )
    assert np.array_equal(same, e)


def test_encode_normalize(model, stsb_texts):
    texts = stsb_texts[:300] + ["", "   "]
    raw_model = tokvec.load(normalize=False)
    raw = model.encode(texts, normalize_embeddings=False)
    # raw pooled means: the same bits as the model loaded with normalize=False (a second core over the same file)
    assert np.array_equal(raw, raw_model.encode(texts))
    assert np.array_equal(raw, model.encode(texts, normalize=False))  # model2vec's name
    assert np.array_equal(raw, model.embed(texts, norm=False))  # WordLlama's name
    norms = np.linalg.norm(raw[:300], axis=1)
    assert norms.min() > 0 and np.abs(norms - 1).max() > 0.1
    # normalized: bit for bit the normalized model, from either model
    unit = raw.copy()
    _core.normalize_rows(unit)
    assert np.array_equal(unit, model.encode(texts))
    assert np.array_equal(unit, raw_model.encode(texts, normalize_embeddings=True))
    assert np.array_equal(unit, raw_model.embed(texts, norm=True))
    assert not raw[-2:].any() and not unit[-2:].any()  # empty texts stay the zero vector
    # a private copy of the file has no second view to pool from: refused, with the way out
    with pytest.raises(ValueError, match=r"mmap=False.*tokvec.load\(\.\.\., normalize=False\)"):
        tokvec.load(mmap=False).encode(texts, normalize_embeddings=False)
    assert np.array_equal(tokvec.load(mmap=False, normalize=False).encode(texts), raw)


def test_encode_binary_model_gives_signs(stsb_texts):
    b = tokvec.load(binary=True)
    texts = stsb_texts[:200]
    e = b.encode(texts)
    assert e.dtype == np.float32 and e.shape == (200, b.dim)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    # the dot product of the unpacked rows is the binary model's (Hamming) similarity
    np.testing.assert_allclose(e @ e.T, b.similarity(texts, texts), atol=1e-6)
    signs = b.encode(texts, normalize_embeddings=False)
    assert set(np.unique(signs).tolist()) == {-1.0, 1.0}
    bits = np.unpackbits(b.embed(texts).view(np.uint8), axis=1, bitorder="little")[:, : b.dim]
    assert np.array_equal(signs > 0, bits == 1)


def test_encode_progress_bar(model, stsb_texts, capsys):
    e = model.encode(stsb_texts, show_progress_bar=True, batch_size=1000)
    err = capsys.readouterr().err
    assert "encode" in err and f"{len(stsb_texts)}/{len(stsb_texts)}" in err
    assert np.array_equal(e, model.encode(stsb_texts))
    model.encode(stsb_texts)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"device": "cuda"}, ValueError, r"device='cuda': tokvec embeds on the CPU"),
        ({"device": "mps"}, ValueError, r"device='mps'"),
        ({"precision": "int8"}, ValueError, r"precision='int8': encode returns float32 only"),
        ({"precision": "ubinary"}, ValueError, r"binary=True"),
        ({"output_value": "token_embeddings"}, ValueError, r"only 'sentence_embedding'"),
        ({"output_value": None}, ValueError, r"output_value=None"),
        ({"prompt": "query: "}, ValueError, r"prompt='query: '.*take no prompt"),
        ({"prompt_name": "query"}, ValueError, r"no prompts"),
        ({"truncate_dim": 64}, ValueError, r"tokvec.load\(\.\.\., dim=64\)"),
        ({"max_length": 16}, ValueError, r"tokvec.load\(\.\.\., max_length=16\)"),
        ({"task": "query"}, ValueError, r"no task-specific modules"),
        ({"pool": object()}, ValueError, r"pool=None"),
        ({"normalize": True, "normalize_embeddings": False}, ValueError, r"disagree"),
        ({"normalize_embeddings": 1}, TypeError, r"normalize_embeddings must be a bool or None, got int"),
        ({"normalize": "yes"}, TypeError, r"normalize must be a bool or None, got str"),
        ({"batch_size": 0}, ValueError, r"batch_size must be a positive int"),
        ({"show_progress_bar": "yes"}, TypeError, r"show_progress_bar must be a bool or None"),
        ({"convert_to_numpy": None}, TypeError, r"convert_to_numpy must be a bool"),
        ({"convert_to_tensor": 1}, TypeError, r"convert_to_tensor must be a bool"),
        ({"chunk_size": 1.5}, TypeError, r"chunk_size must be an int or None"),
        ({"use_multiprocessing": None}, TypeError, r"use_multiprocessing must be a bool"),
        ({"normalise": True}, TypeError, r"unexpected keyword argument 'normalise'"),
    ],
)
def test_encode_refuses_what_would_change_the_result(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        model.encode(["a text"], **kwargs)


def test_encode_bad_sentences(model):
    with pytest.raises(TypeError, match=r"sentences must be str or a list of str, got bytes"):
        model.encode(b"bytes")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str, got int"):
        model.encode(["a", 2])
    with pytest.raises(TypeError, match=r"sentences must be a list of str, got None"):
        model.encode(None)


def test_encode_torch_tensors(model, stsb_texts):
    texts = stsb_texts[:20]
    if importlib.util.find_spec("torch") is None:
        for kw in ({"convert_to_tensor": True}, {"convert_to_numpy": False}):
            with pytest.raises(ImportError, match=r"torch is not installed.*torch.from_numpy"):
                model.encode(texts, **kw)
        return
    import torch

    t = model.encode(texts, convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), model.encode(texts))
    rows = model.encode(texts, convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == 20 and all(isinstance(r, torch.Tensor) for r in rows)


# --------------------------------------------------------------------------------------------------- model2vec
@pytest.mark.parametrize("config_normalize", [True, False])
def test_encode_matches_model2vec_static_model(make_model, stsb_texts, monkeypatch, config_normalize):
    """model2vec's own StaticModel and tokvec on the same model2vec folder (weights and a token mapping):
    `encode` gives the same vectors for each normalize setting. Both cap model2vec folders at 512 tokens by default;
    here both pool every token (max_length=None on each side)."""
    from model2vec import StaticModel

    no_network(monkeypatch)
    mf = make_model("model2vec", "F32", normalize=config_normalize)
    sm = StaticModel.from_pretrained(mf.path, max_length=None)
    m = tokvec.load(mf.path, max_length=None)
    assert m.normalize == sm.normalize == config_normalize
    texts = stsb_texts[:400]
    for value in (None, True, False):
        want = sm.encode(texts, normalize=value)
        np.testing.assert_allclose(m.encode(texts, normalize=value), want, atol=TOL, rtol=1e-5)
        np.testing.assert_allclose(m.encode(texts, normalize_embeddings=value), want, atol=TOL, rtol=1e-5)
    assert m.encode(texts[0]).shape == sm.encode(texts[0]).shape == (m.dim,)
    # model2vec ignores keywords it does not know; the ones it has are accepted here with its meaning
    np.testing.assert_allclose(
        m.encode(texts, show_progress_bar=False, batch_size=64, use_multiprocessing=False, max_length=None),
        sm.encode(texts, show_progress_bar=False, batch_size=64, use_multiprocessing=False), atol=TOL, rtol=1e-5,
    )


# --------------------------------------------------------------------------------------------------- semhash
@pytest.fixture(scope="module")
def dup_texts(stsb_texts) -> list[str]:
    """STS-B dev sentences (90 of them already repeated in the data) plus edited copies of 300 and exact copies of
    100 more, shuffled with a fixed seed: 3,400 texts with real near and exact duplicates."""
    return with_near_copies(stsb_texts, np.random.default_rng(11), 300, 100)


SEMHASH_THRESHOLDS = [0.8, 0.9]


@pytest.fixture(scope="module")
def dup_margin(model, dup_texts) -> float:
    return clear_margin(model.encode(list(dict.fromkeys(dup_texts))), SEMHASH_THRESHOLDS)


@pytest.mark.parametrize("threshold", SEMHASH_THRESHOLDS)
def test_semhash_self_deduplicate_keeps_what_deduplicate_keeps(model, dup_texts, dup_margin, threshold):
    """semhash 0.5 groups identical records, then keeps a record unless an earlier *kept* one scores
    >= threshold; Model.deduplicate drops identical texts, then a text whose score with an earlier kept one is
    > threshold. Away from ties (no pair within float rounding of the threshold) that is one rule: the same
    records are kept, and every removed record points to the same kept record."""
    from semhash import SemHash

    assert dup_margin > 1e-6, "a pair is within float rounding of a threshold: pick another"
    res = SemHash.from_records(dup_texts, model=model, ann_backend="basic").self_deduplicate(threshold)
    kept = model.deduplicate(dup_texts, threshold)
    assert 2000 < len(kept) < len(dup_texts) - 400  # real duplicates, exact and near
    assert res.selected == kept
    # the records as dicts, with fields beyond the deduplicated column
    records = [{"id": i, "text": t, "source": "sts-dev"} for i, t in enumerate(dup_texts)]
    rres = SemHash.from_records(records, columns=["text"], model=model, ann_backend="basic").self_deduplicate(threshold)
    ex = model.deduplicate(dup_texts, threshold, explain=True)
    assert [r["id"] for r in rres.selected] == ex.kept.tolist()
    assert rres.selected[0] is records[ex.kept[0]]  # semhash returns the records themselves
    got = {d.record["id"]: (d.duplicate_of["id"], d.score) for d in rres.filtered}
    assert sorted(got) == np.flatnonzero(ex.dup_of >= 0).tolist()
    for i, (j, score) in got.items():
        # identical texts: tokvec points to the first occurrence, semhash to its group's first record
        assert j == ex.dup_of[i]
        assert abs(score - ex.score[i]) < 1e-6


def test_semhash_empty_texts(model, stsb_texts):
    """The corner where the rules differ: semhash groups identical records, empty ones too, so it keeps one copy of
    each empty text; Model.deduplicate keeps every empty text (none is a duplicate of another), or with
    drop_empty=True none. Texts that embed to the zero vector (unknown tokens only) match nothing in both."""
    from semhash import SemHash

    texts = stsb_texts[:40] + ["", "  ", "", "\t", "  ", "🙂", "🙃", "🙂"] + stsb_texts[:5]
    assert not model.encode(["🙂", "🙃"]).any()
    selected = SemHash.from_records(texts, model=model, ann_backend="basic").self_deduplicate(0.9).selected
    kept = model.deduplicate(texts, 0.9)
    assert kept.count("") == 2 and kept.count("  ") == 2 and "\t" in kept
    assert selected == [t for i, t in enumerate(kept) if t.strip() or t not in kept[:i]]
    assert model.deduplicate(texts, 0.9, drop_empty=True) == [t for t in selected if t.strip()]
    assert selected.count("🙂") == 1 and "🙃" in selected


def test_semhash_two_columns_equal_dedup_of_joined_vectors(model):
    """Records with two text columns: semhash joins each record's column vectors (unit each) and compares the
    joined vectors by cosine, i.e. the mean of the two columns' cosines. tokvec.dedup_indices on the same joined
    unit vectors keeps the same records."""
    from semhash import SemHash

    rows = read_tsv(STSB_DIR / "sts-dev.tsv")
    pairs = [(r["sentence1"], r["sentence2"]) for r in rows]
    rng = np.random.default_rng(5)
    # near copies (first sentence edited, or both) and exact copies of some pairs, shuffled in
    extra = [(near_copy(a, rng), b) for a, b in pairs[:200]] + [(near_copy(a, rng), near_copy(b, rng)) for a, b in
                                                                 pairs[200:300]] + pairs[300:360]
    allp = pairs + extra
    allp = [allp[i] for i in rng.permutation(len(allp))]
    records = [{"sentence1": a, "sentence2": b, "row": i} for i, (a, b) in enumerate(allp)]
    joined = np.hstack([model.encode([a for a, _ in allp]), model.encode([b for _, b in allp])]) / np.sqrt(2)
    joined = joined.astype(np.float32)
    assert clear_margin(joined, [0.9]) > 1e-6
    kept, _, _ = tokvec.dedup_indices(joined, 0.9)
    res = SemHash.from_records(
        records, columns=["sentence1", "sentence2"], model=model, ann_backend="basic"
    ).self_deduplicate(0.9)
    assert 300 < len(allp) - len(kept) < 400  # the 360 copies (and a few pairs alike in the data)
    assert [r["row"] for r in res.selected] == kept.tolist()


# --------------------------------------------------------------------------------------------------- LangChain
@pytest.fixture(scope="module")
def scifact() -> list[tuple[str, str]]:
    """(doc_id, title) of every SciFact corpus document."""
    with open(DATA / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        return [(str(d["_id"]), d["title"]) for d in map(json.loads, f)]


def test_langchain_in_memory_vector_store(model, scifact):
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import InMemoryVectorStore
    from tokvec.integrations.langchain import TokvecEmbeddings

    emb = TokvecEmbeddings(model)
    assert isinstance(emb, Embeddings)
    titles = [t for _, t in scifact]
    store = InMemoryVectorStore(emb)
    store.add_documents([Document(page_content=t, metadata={"doc_id": i}) for i, t in scifact])
    queries = {
        "how to measure the complexity and the fit of Bayesian models": "Bayesian measures of model complexity and fit",
        "targeting the A20 protein reduces tumour growth and the survival of glioma stem cells":
            "Targeting A20 Decreases Glioma Stem Cell Survival and Tumor Growth",
    }
    for q, title in queries.items():
        hits = store.similarity_search_with_score(q, k=5)
        assert hits[0][0].page_content == title
        assert hits[0][0].metadata["doc_id"] == next(i for i, t in scifact if t == title)
        # the store's ranking and scores are tokvec's own (rank: the exact cosine of every title)
        ranked = model.rank(q, titles)[:6]
        assert min(a[1] - b[1] for a, b in itertools.pairwise(ranked)) > 1e-6, "a near tie: pick another query"
        assert [d.page_content for d, _ in hits] == [t for t, _ in ranked[:5]]
        np.testing.assert_allclose([s for _, s in hits], [s for _, s in ranked[:5]], atol=1e-6)
        # the async pair gives the same
        ahits = asyncio.run(store.asimilarity_search(q, k=5))
        assert [d.page_content for d in ahits] == [d.page_content for d, _ in hits]


def test_langchain_embeddings_interface(model, stsb_texts):
    from tokvec.integrations.langchain import TokvecEmbeddings

    texts = stsb_texts[:50]
    emb = TokvecEmbeddings()  # the bundled default model
    docs = emb.embed_documents(texts)
    assert isinstance(docs, list) and len(docs) == 50 and all(isinstance(v, list) for v in docs)
    assert all(isinstance(x, float) for x in docs[0]) and len(docs[0]) == model.dim
    assert np.array_equal(np.asarray(docs, np.float32), model.encode(texts))
    assert emb.embed_query(texts[0]) == docs[0]
    assert asyncio.run(emb.aembed_documents(texts)) == docs
    assert asyncio.run(emb.aembed_query(texts[0])) == docs[0]
    # a path, and a raw model: vectors are unit length whatever the model's config says
    raw = TokvecEmbeddings(tokvec.load(normalize=False))
    assert raw.embed_documents(texts) == docs
    path = Path(tokvec.__file__).parent / "models" / "default"
    assert TokvecEmbeddings(path).embed_documents(texts) == docs
    assert TokvecEmbeddings(str(path)).embed_query(texts[1]) == docs[1]
    # a binary model: signs as unit floats, whose dot product is its Hamming similarity
    b = tokvec.load(binary=True)
    bv = np.asarray(TokvecEmbeddings(b).embed_documents(texts[:10]))
    np.testing.assert_allclose(bv @ bv.T, b.similarity(texts[:10], texts[:10]), atol=1e-6)
    with pytest.raises(TypeError, match=r"model must be a tokvec.Model, a model path or None.*got int"):
        TokvecEmbeddings(3)
    with pytest.raises(TypeError, match=r"text must be str, got list"):
        emb.embed_query(["a"])
    with pytest.raises(FileNotFoundError):
        TokvecEmbeddings("/nonexistent/model")
    assert "TokvecEmbeddings(Model(" in repr(emb)


# --------------------------------------------------------------------------------------------------- WordLlama
@pytest.fixture(scope="module")
def wordllama(wordllama_model):
    """WordLlama's own inference class and tokvec on the same l2_supercat table (the file and tokenizer JSON
    shipped in the `wordllama` wheel, built as WordLlama.load builds it, without its download step)."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    from wordllama.inference import WordLlamaInference

    logging.getLogger("wordllama").setLevel(logging.WARNING)
    f = wordllama_model.path
    tok = wordllama_tokenizer_file(f)
    table = load_file(str(f))["embedding.weight"]

    def build(binary: bool = False) -> WordLlamaInference:
        return WordLlamaInference(table, Tokenizer.from_file(str(tok)), binary=binary)

    return build, tokvec.load(f)


@pytest.fixture(scope="module")
def wl_docs(near_dup_corpus) -> list[str]:
    return near_dup_corpus


def test_wordllama_embed_keywords(wordllama, stsb_texts):
    build, m = wordllama
    wl = build()
    texts = stsb_texts[:300]
    # WordLlama's embed defaults to norm=False (raw means); tokvec's follows the model, here normalized
    np.testing.assert_allclose(m.embed(texts, norm=False), wl.embed(texts), atol=TOL, rtol=1e-5)
    np.testing.assert_allclose(m.embed(texts, norm=True), wl.embed(texts, norm=True), atol=TOL)
    np.testing.assert_allclose(m.embed(texts), wl.embed(texts, norm=True), atol=TOL)
    np.testing.assert_allclose(m.embed(texts, batch_size=7), wl.embed(texts, norm=True, batch_size=7), atol=TOL)
    as_list = m.embed(texts[:3], return_np=False)
    assert isinstance(as_list, list) and isinstance(as_list[0], list) and isinstance(as_list[0][0], float)
    np.testing.assert_allclose(as_list, wl.embed(texts[:3], norm=True, return_np=False), atol=TOL)
    # a single str: WordLlama gives (1, dim), tokvec (dim,) as sentence-transformers and model2vec do
    assert wl.embed(texts[0]).shape == (1, m.dim) and m.embed(texts[0]).shape == (m.dim,)
    # similarity(text1, text2): a float, the cosine
    assert isinstance(m.similarity(texts[0], texts[1]), float)
    assert abs(m.similarity(texts[0], texts[1]) - wl.similarity(texts[0], texts[1])) < TOL


def test_wordllama_rank_topk_key_filter(wordllama, wl_docs, sample_sentences):
    build, m = wordllama
    wl = build()
    docs = wl_docs  # with exact repeats: equal scores
    for q in sample_sentences[:5]:
        want = wl.rank(q, docs)
        got = m.rank(q, docs)
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=TOL)
        # best first; ties (the exact repeats) keep input order in both
        assert [d for d, _ in got] == [d for d, _ in want]
        assert m.rank(q, docs, False, 16) == m.rank(q, docs, sort=False)  # WordLlama's positional sort, batch_size
        assert [d for d, _ in m.rank(q, docs, False)] == [d for d, _ in wl.rank(q, docs, False)] == docs
        assert m.topk(q, docs, k=5) == wl.topk(q, docs, k=5)
        # the key is the similarity in both: max is the best match, reverse=True sorts best first
        assert max(docs, key=m.key(q)) == max(docs, key=wl.key(q)) == got[0][0]
        assert min(docs, key=m.key(q)) == min(docs, key=wl.key(q)) == got[-1][0]
        assert sorted(docs, key=m.key(q), reverse=True) == sorted(docs, key=wl.key(q), reverse=True)
        # filter: score > threshold, input order, in both
        s = np.array([sc for _, sc in m.rank(q, docs, sort=False)])
        t = float(np.quantile(s, 0.8))
        t += 1e-4 if np.abs(s - t).min() < 1e-5 else 0.0
        assert m.filter(q, docs, t) == wl.filter(q, docs, t) == [d for d, v in zip(docs, s) if v > t]
    # tokvec clips k to the docs; WordLlama asserts len(docs) > k
    assert len(m.topk(sample_sentences[0], docs[:3], k=5)) == 3


def test_wordllama_deduplicate(wordllama, wl_docs):
    build, m = wordllama
    wl = build()
    docs = wl_docs
    e = m.embed(docs)
    assert clear_margin(e, [0.9, 0.95]) > 1e-5
    for t in (0.9, 0.95):
        removed = wl.deduplicate(docs, t, return_indices=True)
        kept = m.deduplicate(docs, t, return_indices=True)
        # same type, opposite sets: WordLlama lists the removed docs, tokvec the kept ones
        assert isinstance(removed, list) and all(type(i) is int for i in removed) and removed == sorted(removed)
        assert isinstance(kept, list) and all(type(i) is int for i in kept) and kept == sorted(kept)
        assert sorted(set(range(len(docs))) - set(kept)) == removed  # this corpus has no chains (below)
        assert m.deduplicate(docs, t) == wl.deduplicate(docs, t) == [docs[i] for i in kept]
        assert m.deduplicate(docs, t, batch_size=100) == m.deduplicate(docs, t)


def test_wordllama_deduplicate_chains(wordllama, sample_sentences):
    """Where the rules differ: WordLlama removes a doc when any earlier doc (in its block of 5,000) is above the
    threshold, even one it removed; tokvec (and semhash) compare with the earlier *kept* docs only. A chain
    a ~ b ~ c with a and c apart: WordLlama removes b and c, tokvec removes b only."""
    build, m = wordllama
    wl = build()
    t = 0.95
    chains = []
    for s in sample_sentences:
        w = s.split()
        trio = [s, " ".join(w[1:]), " ".join(w[2:])]  # the first word dropped, then the second
        sim = m.similarity(trio, trio)
        if min(sim[0, 1], sim[1, 2]) > t + 1e-4 and sim[0, 2] < t - 1e-4:
            chains.append(trio)
    assert len(chains) >= 3
    for trio in chains:
        assert wl.deduplicate(trio, t, return_indices=True) == [1, 2]
        assert m.deduplicate(trio, t, return_indices=True) == [0, 2]


def test_wordllama_binary(wordllama, wordllama_model, wl_docs):
    """Binary models: the same sign bits and the same Hamming similarity; the bits are packed in another order
    (WordLlama: the first value in each byte's high bit; tokvec: in its low bit), so packed words differ."""
    build, _ = wordllama
    wlb = build(binary=True)
    mb = tokvec.load(wordllama_model.path, binary=True)
    docs = wl_docs[:100]
    x, y = wlb.embed(docs), mb.embed(docs)
    assert x.dtype == y.dtype == np.uint64 and x.shape == y.shape == (100, 4)
    bx = np.unpackbits(x.view(np.uint8), axis=1, bitorder="big")
    by = np.unpackbits(y.view(np.uint8), axis=1, bitorder="little")
    assert np.array_equal(bx, by)
    assert not np.array_equal(x, y)
    np.testing.assert_allclose(mb.similarity(docs, docs), wlb.vector_similarity(x, x), atol=1e-6)
    assert mb.rank(docs[0], docs) == [(d, pytest.approx(s, abs=1e-6)) for d, s in wlb.rank(docs[0], docs)]


def test_wordllama_cluster_and_split_differ_by_name(wordllama, wl_docs):
    """cluster: WordLlama returns (labels list, inertia) and names its options max_iterations/tolerance/...;
    tokvec returns a KMeansResult and refuses those names with a message naming its own. split: WordLlama's
    smoothing options are not tokvec's; target_size is the same bound in characters."""
    build, m = wordllama
    wl = build()
    labels, inertia = wl.cluster(wl_docs, 5, random_state=1)  # (0 is taken for "no seed" there)
    assert isinstance(labels, list) and len(labels) == len(wl_docs) and isinstance(inertia, float)
    res = m.cluster(wl_docs, 5, seed=0)
    assert isinstance(res, tokvec.KMeansResult) and res.labels.shape == (len(wl_docs),)
    for name, instead in (("max_iterations", "max_iter"), ("tolerance", "tol"), ("random_state", "seed"),
                          ("min_iterations", "none")):
        with pytest.raises(TypeError, match=rf"WordLlama's keyword '{name}'.*\({instead}"):
            m.cluster(wl_docs, 5, **{name: 1})
    text = "\n".join(wl_docs[:60])
    for chunks in (wl.split(text, target_size=400), m.split(text, target_size=400)):
        assert chunks and max(len(c) for c in chunks) <= 400
    assert "".join(m.split(text, target_size=400)) == text
    with pytest.raises(TypeError, match="window_size"):
        m.split(text, target_size=400, window_size=3)
