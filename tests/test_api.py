"""The public API's semantics, checked against brute-force numpy on real sentences: shapes and dtypes, similarity,
rank / topk / filter / key / deduplicate, the array-level `tokvec.topk` / `duplicate_pairs` / `dedup_indices`
(float and packed binary), and the bundled default model's quality on STS-B dev."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import tokvec

TOL = 1e-5


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def bmodel() -> tokvec.Model:
    return tokvec.load(binary=True)


@pytest.fixture(scope="module")
def corpus_emb(model, near_dup_corpus) -> np.ndarray:
    return model.embed(near_dup_corpus)


# ------------------------------------------------------------------------------------------ brute-force references
def hamming_sim(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """1 - 2 h / bits for packed uint64 rows (float64 matrix)."""
    ua = np.unpackbits(a.view(np.uint8), axis=1, bitorder="little")[:, :bits].astype(np.int64)
    ub = np.unpackbits(b.view(np.uint8), axis=1, bitorder="little")[:, :bits].astype(np.int64)
    h = ua @ (1 - ub).T + (1 - ua) @ ub.T
    return 1.0 - 2.0 * h / bits


def greedy_dedup(sim: np.ndarray, t: float) -> tuple[list[int], list[int]]:
    """The greedy reference: item i is dropped when its similarity with an earlier KEPT item is > t.

    Returns (kept, margins): margins are |s - t| of every comparison that decided something, so a test can check
    that float rounding cannot change the outcome."""
    kept: list[int] = []
    margins: list[float] = []
    for i in range(sim.shape[0]):
        s = sim[i, kept]
        margins.extend(np.abs(s - t).tolist())
        if not (s > t).any():
            kept.append(i)
    return kept, margins


def check_topk(scores: np.ndarray, idx: np.ndarray, sim_row: np.ndarray, k: int) -> None:
    """`idx`/`scores` are a correct top-k of `sim_row` (ties aside): right scores, best first, nothing better left."""
    assert idx.shape == scores.shape == (k,)
    assert len(set(idx.tolist())) == k
    np.testing.assert_allclose(scores, sim_row[idx], atol=TOL, rtol=0)
    assert (np.diff(scores) <= TOL).all(), "not best first"
    rest = np.setdiff1d(np.arange(sim_row.size), idx)
    if rest.size:
        assert sim_row[rest].max() <= scores.min() + TOL
    # where the reference has no near-tie, the indices are exactly its stable order
    order = np.argsort(-sim_row, kind="stable")[:k]
    srt = np.sort(sim_row)[::-1]
    for r in range(k):
        gap_prev = srt[r - 1] - srt[r] if r > 0 else np.inf
        gap_next = srt[r] - srt[r + 1] if r + 1 < srt.size else np.inf
        if min(gap_prev, gap_next) > TOL:
            assert idx[r] == order[r]


# ------------------------------------------------------------------------------------------ embed
def test_public_names():
    for name in tokvec.__all__:
        assert hasattr(tokvec, name), name
    assert isinstance(tokvec.__version__, str) and tokvec.__version__


def test_embed_shapes_and_dtypes(model, sample_sentences):
    e = model.embed(sample_sentences[:10])
    assert e.shape == (10, 256) and e.dtype == np.float32 and e.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    one = model.embed(sample_sentences[0])
    assert one.shape == (256,) and one.dtype == np.float32
    np.testing.assert_array_equal(one, e[0])
    empty = model.embed([])
    assert empty.shape == (0, 256) and empty.dtype == np.float32
    z = model.embed("")
    assert z.shape == (256,) and not z.any()
    # any iterable of str, numpy string arrays included
    np.testing.assert_array_equal(model.embed(tuple(sample_sentences[:10])), e)
    np.testing.assert_array_equal(model.embed(s for s in sample_sentences[:10]), e)
    np.testing.assert_array_equal(model.embed(np.array(sample_sentences[:10])), e)


def test_embed_binary_shapes(bmodel, model, sample_sentences):
    b = bmodel.embed(sample_sentences[:10])
    assert b.shape == (10, 4) and b.dtype == np.uint64
    assert bmodel.embed(sample_sentences[0]).shape == (4,)
    assert bmodel.embed([]).shape == (0, 4)
    assert not bmodel.embed("").any()
    assert bmodel.binary and not model.binary and bmodel.dim == 256


def test_model_properties(model):
    assert (model.format, model.dim, model.vocab_size, model.normalize) == ("tokvec", 256, 30522, True)
    r = repr(model)
    assert "tokvec" in r and "dim=256" in r and "F16" in r
    assert model.tokenizer.encode("hello world", add_special_tokens=False).tokens == ["hello", "world"]


def test_empty_text_and_only_specials_embed_to_zero(model):
    e = model.embed(["", "   ", "[CLS] [SEP] [PAD]", "word"])
    assert not e[:3].any()
    assert abs(np.linalg.norm(e[3]) - 1) < 1e-5
    assert model.similarity("", "word") == 0.0


# ------------------------------------------------------------------------------------------ similarity and ranking
def test_similarity(model, sample_sentences):
    a, b = sample_sentences[:7], sample_sentences[7:20]
    ea, eb = model.embed(a), model.embed(b)
    s = model.similarity(a, b)
    assert s.shape == (7, 13) and s.dtype == np.float32
    np.testing.assert_allclose(s, ea.astype(np.float64) @ eb.T, atol=TOL)
    one = model.similarity(a[0], b[0])
    assert isinstance(one, float)
    assert abs(one - float(ea[0] @ eb[0])) < TOL
    np.testing.assert_allclose(model.similarity(a[0], b), s[:1], atol=TOL)
    assert abs(model.similarity(a[0], a[0]) - 1.0) < TOL
    np.testing.assert_allclose(model.similarity(a, a), model.similarity(a, a).T, atol=TOL)


def test_similarity_binary_is_hamming(bmodel, sample_sentences):
    a, b = sample_sentences[:7], sample_sentences[7:20]
    want = hamming_sim(bmodel.embed(a), bmodel.embed(b), 256)
    np.testing.assert_allclose(bmodel.similarity(a, b), want, atol=1e-6)
    assert bmodel.similarity(a[0], a[0]) == 1.0


def test_rank(model, near_dup_corpus, corpus_emb, sample_sentences):
    q = sample_sentences[0]
    s = corpus_emb.astype(np.float64) @ model.embed(q)
    ranked = model.rank(q, near_dup_corpus)
    assert len(ranked) == len(near_dup_corpus)
    got_scores = np.array([x[1] for x in ranked])
    assert (np.diff(got_scores) <= 0).all()
    assert sorted(x[0] for x in ranked) == sorted(near_dup_corpus)
    score_of = dict(zip(near_dup_corpus, s))
    np.testing.assert_allclose(got_scores, [score_of[d] for d, _ in ranked], atol=TOL)
    # sort=False keeps input order
    unsorted = model.rank(q, near_dup_corpus, sort=False)
    assert [d for d, _ in unsorted] == near_dup_corpus
    np.testing.assert_allclose([v for _, v in unsorted], s, atol=TOL)
    assert model.rank(q, []) == []


def test_rank_is_stable_on_ties(model):
    docs = ["a red car", "the blue sky", "a red car", "green grass", "the blue sky"]
    ranked = model.rank("blue sky", docs)
    # equal texts have equal scores and keep their input order: check by identity of positions
    order = [d for d, _ in ranked]
    assert order.index("the blue sky") == 0 and order[1] == "the blue sky"
    q = model.embed("blue sky")
    s = model.embed(docs) @ q
    assert ranked[0][1] == ranked[1][1] == pytest.approx(float(s[1]), abs=TOL)
    # identical texts at every position (BLAS gemv handles tail rows on another code path, which can change the
    # last bit) still score exactly the same, in rank and filter
    many = ["x y z"] * 7 + ["the blue sky"] * 13 + ["other text"] * 3 + ["the blue sky"] * 2
    scores = {}
    for d, v in model.rank("blue sky", many, sort=False):
        scores.setdefault(d, set()).add(v)
    assert all(len(v) == 1 for v in scores.values()), scores
    # one text against many: the same exact scores as rank, either way round
    sim = model.similarity("blue sky", many)
    assert sim.shape == (1, len(many)) and sim.dtype == np.float32
    assert sim[0].tolist() == [v for _, v in model.rank("blue sky", many, sort=False)]
    assert model.similarity(many, "blue sky")[:, 0].tolist() == sim[0].tolist()
    tie = next(iter(scores["the blue sky"]))
    assert model.filter("blue sky", many, threshold=tie) == []  # strictly above: all or none of the repeats
    assert model.filter("blue sky", many, threshold=tie - 1e-6) == ["the blue sky"] * 15


@pytest.mark.parametrize("n_docs", [10, 63, 64, 470])  # < 64 docs: numpy path; >= 64: the search kernel
@pytest.mark.parametrize("k", [1, 5, 1000])
def test_model_topk(model, near_dup_corpus, corpus_emb, sample_sentences, n_docs, k):
    docs, e = near_dup_corpus[:n_docs], corpus_emb[:n_docs]
    q = sample_sentences[1]
    s = e.astype(np.float64) @ model.embed(q)
    got = model.topk(q, docs, k=k)
    kk = min(k, n_docs)
    assert len(got) == kk
    score_of = dict(zip(docs, s))
    got_s = np.array([score_of[d] for d in got])
    assert (np.diff(got_s) <= TOL).all()
    remaining = sorted((score_of[d] for d in docs), reverse=True)
    np.testing.assert_allclose(got_s, remaining[:kk], atol=TOL)
    assert model.topk(q, [], k=3) == []


def test_model_topk_binary(bmodel, near_dup_corpus, sample_sentences):
    docs = near_dup_corpus[:200]
    q = sample_sentences[2]
    s = hamming_sim(bmodel.embed([q]), bmodel.embed(docs), 256)[0]
    got = bmodel.topk(q, docs, k=10)
    score_of = dict(zip(docs, s))
    np.testing.assert_allclose([score_of[d] for d in got], np.sort(s)[::-1][:10], atol=1e-6)


def test_filter(model, near_dup_corpus, corpus_emb, sample_sentences):
    q = sample_sentences[3]
    s = corpus_emb.astype(np.float64) @ model.embed(q)
    for t in (-1.0, 0.0, 0.3, float(np.quantile(s, 0.9)) + 1e-4, 1.0):
        want = [d for d, v in zip(near_dup_corpus, s) if v > t + TOL]
        maybe = {d for d, v in zip(near_dup_corpus, s) if abs(v - t) <= TOL}
        got = model.filter(q, near_dup_corpus, threshold=t)
        assert [d for d in got if d not in maybe] == want  # input order, near-threshold items aside
    assert model.filter(q, near_dup_corpus, threshold=1.0) == []
    assert model.filter(q, [], threshold=0.5) == []


def test_key(model, near_dup_corpus, corpus_emb, sample_sentences):
    q = sample_sentences[4]
    docs = near_dup_corpus[:120]
    s = corpus_emb[:120].astype(np.float64) @ model.embed(q)
    key = model.key(q)
    score_of = dict(zip(docs, s))
    # the key is the similarity (as WordLlama's): max is the best match, reverse=True sorts best first
    got = sorted(docs, key=key, reverse=True)
    assert (np.diff([score_of[d] for d in got]) <= TOL).all()
    assert score_of[max(docs, key=key)] >= s.max() - TOL
    assert score_of[min(docs, key=key)] <= s.min() + TOL
    assert abs(key(docs[0]) - score_of[docs[0]]) < TOL
    assert key(docs[0]) == key(docs[0]) == model.similarity(q, docs[0])
    assert model.key(q, norm=False)(docs[0]) == key(docs[0])  # WordLlama's keyword, no effect on the cosine
    with pytest.raises(TypeError, match="query must be str"):
        model.key(["a query"])
    with pytest.raises(TypeError, match="the key takes a str, got int"):
        key(3)
    with pytest.raises(TypeError, match="norm must be a bool"):
        model.key(q, norm="yes")


# ------------------------------------------------------------------------------------------ deduplicate
@pytest.mark.parametrize("threshold", [0.8, 0.9, 0.95])
def test_deduplicate_equals_greedy_reference(model, near_dup_corpus, corpus_emb, threshold):
    sim = corpus_emb.astype(np.float64) @ corpus_emb.T.astype(np.float64)
    kept, margins = greedy_dedup(sim, threshold)
    assert min(margins) > 1e-6, "pick another threshold: a decision is within float rounding of it"
    assert 0 < len(kept) < len(near_dup_corpus) - 20  # the corpus has real near-duplicates
    assert model.deduplicate(near_dup_corpus, threshold, return_indices=True) == kept
    assert model.deduplicate(near_dup_corpus, threshold) == [near_dup_corpus[i] for i in kept]


def test_deduplicate_greedy_not_transitive(model):
    # b is close to a, c close to b but not to a: greedy keeps a and c (b was dropped, so it cannot drop c)
    e = model.embed(["a", "b", "c"])  # only to get the dimension
    x = np.zeros((3, e.shape[1]), np.float32)
    x[0, 0] = 1.0
    x[1, :2] = [np.cos(0.35), np.sin(0.35)]
    x[2, :2] = [np.cos(0.7), np.sin(0.7)]
    t = float(np.cos(0.5))
    kept, dup_of, score = tokvec.dedup_indices(x, t)
    assert kept.tolist() == [0, 2]
    assert dup_of.tolist() == [-1, 0, -1]
    assert np.isnan(score[0]) and np.isnan(score[2]) and abs(score[1] - np.cos(0.35)) < TOL


def test_deduplicate_edge_cases(model):
    assert model.deduplicate([]) == []
    assert model.deduplicate(["only one"], return_indices=True) == [0]
    assert model.deduplicate(["same text", "same text", "same text"], 0.99) == ["same text"]
    # threshold 1.0: only a text's repeats can pass it (float32 rounding puts the similarity of identical vectors up
    # to a few ulps above 1; measured 1.0000002), every distinct text is kept; -1: everything after the first
    # non-empty text dropped
    docs = ["one sentence here", "another one here", "one sentence here"]
    assert model.deduplicate(docs, 1.0, return_indices=True) in ([0, 1, 2], [0, 1])
    assert model.deduplicate(docs[:2], 1.0, return_indices=True) == [0, 1]
    assert model.deduplicate(docs, -1.0, return_indices=True) == [0]
    # zero vectors (empty texts) have similarity 0 with everything
    assert model.deduplicate(["", "", "x"], 0.5, return_indices=True) == [0, 1, 2]


def test_dedup_indices_details(corpus_emb):
    t = 0.9
    kept, dup_of, score = tokvec.dedup_indices(corpus_emb, t)
    sim = corpus_emb.astype(np.float64) @ corpus_emb.T
    want, _ = greedy_dedup(sim, t)
    assert kept.dtype == np.int64 and dup_of.dtype == np.int64 and score.dtype == np.float32
    assert kept.tolist() == want
    n = len(corpus_emb)
    assert dup_of.shape == score.shape == (n,)
    ks = set(want)
    for i in range(n):
        if i in ks:
            assert dup_of[i] == -1 and np.isnan(score[i])
        else:
            j = dup_of[i]
            assert j in ks and j < i and score[i] > t
            assert abs(score[i] - sim[i, j]) < TOL


def test_deduplicate_binary(bmodel, near_dup_corpus):
    b = bmodel.embed(near_dup_corpus)
    sim = hamming_sim(b, b, 256)
    t = 0.8  # 1 - 2h/256 is never exactly 0.8
    kept, _ = greedy_dedup(sim, t)
    assert len(kept) < len(near_dup_corpus)
    assert bmodel.deduplicate(near_dup_corpus, t, return_indices=True) == kept
    k2, dup_of, score = tokvec.dedup_indices(b, t, bits=256)
    assert k2.tolist() == kept
    dropped = np.flatnonzero(dup_of >= 0)
    np.testing.assert_allclose(score[dropped], sim[dropped, dup_of[dropped]], atol=1e-6)


# ------------------------------------------------------------------------------------------ array-level search
@pytest.mark.parametrize("k", [1, 10, 470, 10_000])
def test_topk_matches_brute_force(corpus_emb, model, sample_sentences, k):
    q = model.embed(sample_sentences[:40])
    c = corpus_emb
    s, i = tokvec.topk(q, c, k)
    kk = min(k, len(c))
    assert s.shape == i.shape == (40, kk)
    assert s.dtype == np.float32 and i.dtype == np.int64
    sim = q.astype(np.float64) @ c.T.astype(np.float64)
    for r in range(40):
        check_topk(s[r], i[r], sim[r], kk)


def test_topk_self_query_finds_itself(corpus_emb):
    s, i = tokvec.topk(corpus_emb, corpus_emb, 1)
    sim = corpus_emb.astype(np.float64) @ corpus_emb.T
    # every row's best match scores 1 (itself or an exact repeat of it)
    np.testing.assert_allclose(s[:, 0], 1.0, atol=TOL)
    np.testing.assert_allclose(sim[np.arange(len(i)), i[:, 0]], 1.0, atol=TOL)


def test_topk_one_dimensional_query(corpus_emb):
    q = corpus_emb[5]
    s, i = tokvec.topk(q, corpus_emb, 7)
    assert s.shape == i.shape == (7,)
    s2, i2 = tokvec.topk(q[None, :], corpus_emb, 7)
    np.testing.assert_array_equal(s, s2[0])
    np.testing.assert_array_equal(i, i2[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_topk_other_float_dtypes(corpus_emb, dtype):
    q, c = corpus_emb[:25].astype(dtype), corpus_emb.astype(dtype)
    s, i = tokvec.topk(q, c, 10)
    assert s.dtype == np.float32
    q32, c32 = q.astype(np.float32), c.astype(np.float32)
    sim = q32.astype(np.float64) @ c32.T.astype(np.float64)
    for r in range(25):
        check_topk(s[r], i[r], sim[r], 10)


def test_topk_unnormalized_is_inner_product():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((9, 37)).astype(np.float32) * 3
    c = rng.standard_normal((300, 37)).astype(np.float32) * 3
    s, i = tokvec.topk(q, c, 12)
    sim = q.astype(np.float64) @ c.T.astype(np.float64)
    for r in range(9):
        check_topk(s[r] / 10, i[r], sim[r] / 10, 12)  # scores up to ~60: compare at relative 1e-5 scale


def test_topk_empty_inputs(corpus_emb):
    s, i = tokvec.topk(np.zeros((0, 256), np.float32), corpus_emb, 5)
    assert s.shape == i.shape == (0, 5)
    s, i = tokvec.topk(corpus_emb[:3], np.zeros((0, 256), np.float32), 5)
    assert s.shape == i.shape == (3, 0)


@pytest.mark.parametrize("bits", [256, 200])
def test_topk_binary(bmodel, near_dup_corpus, sample_sentences, bits):
    c = bmodel.embed(near_dup_corpus)
    q = bmodel.embed(sample_sentences[:30])
    if bits != 256:  # fewer meaningful bits: clear the rest, as a model with dim=bits would
        mask = np.array([~np.uint64(0)] * 3 + [np.uint64((1 << (bits - 192)) - 1)], np.uint64)
        c, q = c & mask, q & mask
    s, i = tokvec.topk(q, c, 15, bits=bits)
    sim = hamming_sim(q, c, bits)
    assert s.dtype == np.float32 and s.shape == (30, 15)
    for r in range(30):
        check_topk(s[r], i[r], sim[r], 15)


@pytest.mark.parametrize("threshold", [0.75, 0.9])
def test_duplicate_pairs_matches_brute_force(corpus_emb, threshold):
    sim = corpus_emb.astype(np.float64) @ corpus_emb.T.astype(np.float64)
    iu, ju = np.triu_indices(len(corpus_emb), 1)
    sv = sim[iu, ju]
    want = {(int(a), int(b)) for a, b, v in zip(iu, ju, sv) if v > threshold + TOL}
    maybe = {(int(a), int(b)) for a, b, v in zip(iu, ju, sv) if abs(v - threshold) <= TOL}
    pairs = tokvec.duplicate_pairs(corpus_emb, threshold)
    got = [(i, j) for i, j, _ in pairs]
    assert got == sorted(got), "sorted by (i, j)"
    assert all(i < j for i, j in got)
    assert {p for p in got if p not in maybe} == want
    assert len(want) > 50  # the corpus has real near-duplicates
    for i, j, v in pairs:
        assert abs(v - sim[i, j]) < TOL
    i, j, s = tokvec.duplicate_pairs(corpus_emb, threshold, as_arrays=True)
    assert i.dtype == j.dtype == np.int64 and s.dtype == np.float32
    assert list(zip(i.tolist(), j.tolist())) == got


def test_duplicate_pairs_small_inputs():
    assert tokvec.duplicate_pairs(np.zeros((0, 4), np.float32), 0.5) == []
    assert tokvec.duplicate_pairs(np.ones((1, 4), np.float32), 0.5) == []
    x = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    assert tokvec.duplicate_pairs(x, 0.5) == [(0, 1, 1.0)]
    assert [p[:2] for p in tokvec.duplicate_pairs(x, -1.0)] == [(0, 1), (0, 2), (1, 2)]


def test_duplicate_pairs_binary(bmodel, near_dup_corpus):
    b = bmodel.embed(near_dup_corpus)
    sim = hamming_sim(b, b, 256)
    t = 0.8
    iu, ju = np.triu_indices(len(b), 1)
    want = [(int(x), int(y)) for x, y in zip(iu, ju) if sim[x, y] > t]
    pairs = tokvec.duplicate_pairs(b, t, bits=256)
    assert [(i, j) for i, j, _ in pairs] == want
    np.testing.assert_allclose([v for *_, v in pairs], [sim[i, j] for i, j in want], atol=1e-6)


# ------------------------------------------------------------------------------------------ the default model
def test_default_model_loads_offline(monkeypatch, sample_sentences):
    def no_network(*a, **k):
        raise AssertionError("tokvec.load() tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    m = tokvec.load()
    assert m.dim == 256 and m.format == "tokvec"
    e = m.embed(sample_sentences[:5])
    assert np.isfinite(e).all()


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv = np.unique(x, return_inverse=True)
    return (np.bincount(inv, weights=ranks) / np.bincount(inv))[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def test_default_model_stsb_dev(model, stsb_dev):
    a = model.embed([p[0] for p in stsb_dev])
    b = model.embed([p[1] for p in stsb_dev])
    cos = (a * b).sum(axis=1)
    gold = np.array([p[2] for p in stsb_dev])
    rho = spearman(cos, gold)
    assert rho > 0.5, rho
    # pairs rated near-paraphrases score higher than unrelated ones, on average
    assert cos[gold >= 4].mean() > cos[gold <= 1].mean() + 0.2
    # similarity() agrees with the embeddings
    np.testing.assert_allclose([model.similarity(x, y) for x, y, _ in stsb_dev[:50]], cos[:50], atol=TOL)


def test_rankdata_reference():
    np.testing.assert_array_equal(rankdata(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    assert spearman(np.arange(10.0), np.arange(10.0) ** 3) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ search at larger sizes
# The kernels work in blocks and prune with bounds; sizes and dimensions that are not multiples of the block or the
# vector width, and outputs with many pairs, are where such code goes wrong.
def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("d", [1, 3, 17, 100, 384])
def test_topk_random_sizes(d):
    rng = np.random.default_rng(d)
    c = unit_rows(rng, 5003, d)
    q = np.concatenate([unit_rows(rng, 61, d), c[:3]])  # some queries are corpus rows
    sim = q.astype(np.float64) @ c.T.astype(np.float64)
    for k in (1, 10, 129):
        s, i = tokvec.topk(q, c, k)
        assert s.shape == (64, k)
        for r in range(64):
            check_topk(s[r], i[r], sim[r], k)


@pytest.fixture(scope="module")
def big_corpus(model, wiki_sentences) -> np.ndarray:
    """4,000 consecutive Wikipedia sentences (template articles: many real near-duplicates) and edited copies."""
    base = wiki_sentences[50_000:53_500]
    copies = [" ".join(s.split()[1:]) for s in base[:500]]
    return model.embed(base + copies)


@pytest.mark.parametrize("threshold", [0.7, 0.9, 0.97])
def test_duplicate_pairs_large(big_corpus, threshold):
    e = big_corpus
    sim = e.astype(np.float64) @ e.T.astype(np.float64)
    iu, ju = np.triu_indices(len(e), 1)
    sv = sim[iu, ju]
    sure = sv > threshold + TOL
    near = np.abs(sv - threshold) <= TOL
    i, j, s = tokvec.duplicate_pairs(e, threshold, as_arrays=True)
    got = set(zip(i.tolist(), j.tolist()))
    want = set(zip(iu[sure].tolist(), ju[sure].tolist()))
    allowed = want | set(zip(iu[near].tolist(), ju[near].tolist()))
    assert want <= got <= allowed, (len(want - got), len(got - allowed))
    order = np.lexsort((j, i))
    np.testing.assert_array_equal(order, np.arange(len(i)))
    np.testing.assert_allclose(s, sim[i, j], atol=TOL)


def test_duplicate_pairs_dense_output():
    # 3-D unit vectors: tens of thousands of pairs above 0.9
    e = unit_rows(np.random.default_rng(5), 1500, 3)
    sim = e.astype(np.float64) @ e.T.astype(np.float64)
    iu, ju = np.triu_indices(len(e), 1)
    sv = sim[iu, ju]
    i, j, s = tokvec.duplicate_pairs(e, 0.9, as_arrays=True)
    np.testing.assert_allclose(s, sim[i, j], atol=TOL)
    got = set(zip(i.tolist(), j.tolist()))
    sure = set(zip(iu[sv > 0.9 + TOL].tolist(), ju[sv > 0.9 + TOL].tolist()))
    allowed = set(zip(iu[sv > 0.9 - TOL].tolist(), ju[sv > 0.9 - TOL].tolist()))
    assert len(sure) > 20_000
    assert sure <= got <= allowed


@pytest.mark.parametrize("threshold", [0.8, 0.9, 0.95])
def test_dedup_large(big_corpus, threshold):
    e = big_corpus
    sim = e.astype(np.float64) @ e.T.astype(np.float64)
    want, margins = greedy_dedup(sim, threshold)
    # every decision of the reference is further than float rounding from the threshold (the smallest margin on this
    # corpus is 1.4e-4, at 0.8), so the kept set is exact: any difference is a bug, not rounding
    assert min(margins) > TOL, "pick another threshold: a decision is within float rounding of it"
    kept, dup_of, score = tokvec.dedup_indices(e, threshold)
    assert kept.tolist() == want
    ks = kept.tolist()
    assert (sim[np.ix_(ks, ks)] - np.eye(len(ks)) * 2 <= threshold + TOL).all(), "two kept items are duplicates"
    dropped = np.flatnonzero(dup_of >= 0)
    assert len(dropped) + len(ks) == len(e)
    assert (dup_of[dropped] < dropped).all() and np.isin(dup_of[dropped], kept).all()
    assert (score[dropped] > threshold).all()
    np.testing.assert_allclose(score[dropped], sim[dropped, dup_of[dropped]], atol=TOL)


@pytest.mark.parametrize("bits", [1, 64, 100, 384])
def test_binary_search_random_sizes(bits):
    rng = np.random.default_rng(bits)
    words = -(-bits // 64)
    raw = rng.integers(0, 2**63, size=(2001, words), dtype=np.int64).view(np.uint64) * np.uint64(2) + rng.integers(
        0, 2, size=(2001, words), dtype=np.int64
    ).view(np.uint64)
    if bits % 64:
        raw[:, -1] &= np.uint64((1 << (bits % 64)) - 1)
    # plant near-duplicates: copies with a few flipped bits
    raw[1000:1100] = raw[:100]
    for r in range(1000, 1100):
        b = int(rng.integers(bits))
        raw[r, b // 64] ^= np.uint64(1) << np.uint64(b % 64)
    sim = hamming_sim(raw, raw, bits)
    s, i = tokvec.topk(raw[:50], raw, 7, bits=bits)
    for r in range(50):
        check_topk(s[r], i[r], sim[r], 7)
    t = 0.5 if bits < 64 else 0.9
    pi, pj, ps = tokvec.duplicate_pairs(raw, t, bits=bits, as_arrays=True)
    iu, ju = np.triu_indices(len(raw), 1)
    m = sim[iu, ju] > t
    np.testing.assert_array_equal(pi, iu[m])
    np.testing.assert_array_equal(pj, ju[m])
    np.testing.assert_allclose(ps, sim[iu, ju][m], atol=1e-6)
    kept, _, _ = tokvec.dedup_indices(raw, t, bits=bits)
    assert kept.tolist() == greedy_dedup(sim, t)[0]
