"""One cosine: every float score a `Model` gives (rank, topk, filter, similarity, key) is the core's canonical
score, `_core.scores`, the value `tokvec.topk` and the dedup engine compute. So `rank` orders docs exactly as
`topk` does (exact duplicates tie and keep input order, near-ties fall the same way), `filter` keeps exactly the
docs the dedup engine finds above the same threshold, and `similarity` and `key` return those same values. The token
explorer (`most_similar_tokens`, `analogy`) scores and orders tokens as `topk` does over the core-normalized rows, and
`split` merges the pair of segments the canonical score puts first."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tokvec
from conftest import naive_split
from tokvec import _core


def bits(x: object) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def query(stsb_sentences: list[str]) -> str:
    return stsb_sentences[11]


@pytest.fixture(scope="module")
def docs(wiki_sentences: list[str]) -> list[str]:
    """2,000 real sentences; 400 copies of some with the words after the first shuffled (the same tokens summed in
    another order: vectors a few units in the last place apart, so near-ties); 60 exact repeats (ties). Each added
    text is at a random later place."""
    rng = np.random.default_rng(5)
    out = [wiki_sentences[i] for i in rng.choice(len(wiki_sentences), 2000, replace=False)]
    for src in rng.choice(2000, 400, replace=False).tolist():
        w = out[src].split(" ")
        rest = w[1:]
        rng.shuffle(rest)
        out.insert(int(rng.integers(src + 1, len(out) + 1)), " ".join([w[0], *rest]))
    for src in rng.choice(2000, 60, replace=False).tolist():
        out.insert(int(rng.integers(src + 1, len(out) + 1)), out[src])
    return out


@pytest.fixture(scope="module")
def canonical(model: tokvec.Model, query: str, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(query row, doc rows) as the scoring methods embed them: unit vectors."""
    return model.embed([query], norm=True), model.embed(docs, norm=True)


def test_rank_orders_and_scores_as_topk(model, query, docs, canonical) -> None:
    q, e = canonical
    s, idx = tokvec.topk(q[0], e, len(docs))  # best first, ties by the lower index
    got = model.rank(query, docs)
    assert [d for d, _ in got] == [docs[i] for i in idx.tolist()]
    np.testing.assert_array_equal(bits([v for _, v in got]), bits(s))
    # the exact duplicates tie, and near-ties (one unit in the last place apart) occur among different texts
    ranked = [docs[i] for i in idx.tolist()]
    same = np.array([a == b for a, b in itertools.pairwise(ranked)])
    assert sum(same) >= 50
    assert (s[:-1][same] == s[1:][same]).all()
    ulps = bits(s[:-1]).astype(np.int64) - bits(s[1:]).astype(np.int64)
    near = ~same & (np.abs(ulps) <= 1) & (s[:-1] > 0)
    assert near.sum() >= 50, "the data should hold near-ties between different texts"
    # Model.topk (the core's blocked top-k for 64 docs and more, a stable sort of the scores below) agrees
    for k in (1, 10, 500):
        assert model.topk(query, docs, k) == ranked[:k]
        assert model.topk(query, docs[:40], k) == [d for d, _ in model.rank(query, docs[:40])][:k]


def test_rank_unsorted_scores_are_the_canonical_scores(model, query, docs, canonical) -> None:
    q, e = canonical
    got = model.rank(query, docs, sort=False)
    assert [d for d, _ in got] == docs
    np.testing.assert_array_equal(bits([v for _, v in got]), bits(_core.scores(q, e)[0]))


def test_filter_keeps_what_dedup_finds_above_the_threshold(model, query, docs, canonical) -> None:
    q, e = canonical
    s = np.sort(_core.scores(q, e)[0])[::-1]
    # thresholds on a doc's own score, and the float64 numbers just below and above it that round to it in float32
    ts = [0.3, 0.5]
    for v in s[[3, 20, 100, 400]].astype(np.float64).tolist():
        ts += [v, np.nextafter(v, -1.0), np.nextafter(v, 2.0)]
    for t in ts:
        _, j, _ = _core.duplicate_pairs_cross(q, e, t)
        assert model.filter(query, docs, t) == [docs[i] for i in j.tolist()], t
        # and the docs whose topk score is above it
        ts_, idx = tokvec.topk(q[0], e, len(docs))
        above = sorted(idx[ts_ > np.float32(t)].tolist())
        assert model.filter(query, docs, t) == [docs[i] for i in above], t


def test_similarity_is_the_canonical_score(model, query, docs, canonical) -> None:
    q, e = canonical
    m = _core.scores(e[:50], e[50:120])
    np.testing.assert_array_equal(bits(model.similarity(docs[:50], docs[50:120])), bits(m))
    np.testing.assert_array_equal(bits(model.similarity(query, docs[:300])), bits(_core.scores(q, e[:300])))
    np.testing.assert_array_equal(bits(model.similarity(docs[:300], query)), bits(_core.scores(e[:300], q)))
    want = _core.scores(q, e[:300])[0]
    for i in range(300):
        assert bits(model.similarity(query, docs[i])) == bits(want[i]), i


def test_key_is_the_canonical_score(model, query, docs, canonical) -> None:
    q, e = canonical
    key = model.key(query)
    want = _core.scores(q, e)[0]
    np.testing.assert_array_equal(bits([key(d) for d in docs]), bits(want))
    # so sorting by the key (stable, also with reverse) is rank's order
    assert sorted(docs, key=key, reverse=True) == [d for d, _ in model.rank(query, docs)]
    assert max(docs, key=key) == model.topk(query, docs, 1)[0]


# ------------------------------------------------------------------------------------------ the token explorer
@pytest.fixture(scope="module")
def unit_rows(model: tokvec.Model) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(ids the explorer searches, their rows as unit vectors normalized by the core, id -> token): every token of
    the vocabulary but the model's skipped ids, each row read as the model pools a one-token text."""
    vocab = {i: t for t, i in model.tokenizer.get_vocab(with_added_tokens=True).items() if i < model.vocab_size}
    ids = np.array(sorted(set(vocab) - set(model._skip_ids)), np.int64)
    assert model.normalize  # so the model's vectors are unit rows normalized by the core
    return ids, model.embed_ids(ids, np.arange(len(ids) + 1)), vocab


def unit(v: np.ndarray) -> np.ndarray:
    out = np.array(v, np.float32, ndmin=2)
    _core.normalize_rows(out)
    return out[0]


def neighbours(unit_rows, q: np.ndarray, exclude: list[int], k: int) -> list[tuple[str, float]]:
    """The k best tokens of `tokvec.topk` over the unit rows (ties: the lower id), `exclude` left out."""
    ids, rows, vocab = unit_rows
    s, idx = tokvec.topk(q, rows, k + len(exclude))
    return [(vocab[int(ids[j])], float(v)) for v, j in zip(s, idx.tolist()) if int(ids[j]) not in exclude][:k]


def assert_same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [t for t, _ in got] == [t for t, _ in want]
    np.testing.assert_array_equal(bits([v for _, v in got]), bits([v for _, v in want]))


def test_most_similar_tokens_scores_and_orders_as_topk(model, unit_rows) -> None:
    ids, rows, _ = unit_rows
    picked = np.random.default_rng(3).choice(len(ids), 40, replace=False).tolist()
    picked += [int(np.searchsorted(ids, model.tokenizer.token_to_id(w))) for w in ("king", "paris", "dog", "the")]
    for p in picked:
        i = int(ids[p])
        got = model.most_similar_tokens(i, 200)
        want = neighbours(unit_rows, rows[p], [i], 200)
        assert_same(got, want)
        # and each score is `_core.scores` of the query row with that token's row
        pos = np.searchsorted(ids, [model.tokenizer.token_to_id(t) for t, _ in got])
        np.testing.assert_array_equal(bits([v for _, v in got]), bits(_core.scores(rows[p : p + 1], rows[pos])[0]))


def test_most_similar_tokens_orders_near_ties_as_topk(model, unit_rows) -> None:
    # the query halfway between two unit rows has the same cosine with both, up to rounding: the two tokens mostly
    # come first, their float32 scores equal or one unit in the last place apart, in topk's order
    ids, rows, vocab = unit_rows
    rng = np.random.default_rng(11)
    close = 0
    for p, q in rng.choice(len(ids), (200, 2)).tolist():
        if p == q:
            continue
        v = rows[p] + rows[q]
        got = model.most_similar_tokens(v, 5)
        assert_same(got, neighbours(unit_rows, unit(v), [], 5))
        s0, s1 = bits([got[0][1], got[1][1]]).tolist()
        close += {t for t, _ in got[:2]} == {vocab[int(ids[p])], vocab[int(ids[q])]} and abs(s0 - s1) <= 1
    assert close >= 30


def test_most_similar_tokens_of_a_vector_and_analogy_score_as_topk(model, unit_rows, stsb_sentences) -> None:
    ids, rows, _ = unit_rows
    for text in stsb_sentences[:30]:
        v = model.embed([text])[0] * np.float32(3.0)  # not a unit vector: the explorer normalizes it
        assert_same(model.most_similar_tokens(v, 100), neighbours(unit_rows, unit(v), [], 100))
    for a, b, c in [("king", "man", "woman"), ("paris", "france", "germany"), ("walking", "walk", "swim")]:
        abc = [model.tokenizer.token_to_id(w) for w in (a, b, c)]
        ua, ub, uc = (rows[np.searchsorted(ids, i)] for i in abc)
        assert_same(model.analogy(a, b, c, 100), neighbours(unit_rows, unit(ua - ub + uc), abc, 100))


# ------------------------------------------------------------------------------------------ semantic chunking
def test_split_merges_near_ties_as_the_canonical_score_orders_them(model, wiki_sentences) -> None:
    # lines that are word shuffles of one sentence: the same tokens summed in another order, so neighbouring
    # segments score near-ties, and which pair merges first decides the chunks. The split must follow the core's
    # canonical score (`conftest.naive_split` scores with `_core.scores`), as every other score in tokvec does.
    rng = np.random.default_rng(3)
    cases = 0
    for sentence in wiki_sentences[:400:20]:
        words = sentence.split(" ")
        lines = [sentence] + [" ".join(rng.permutation(words).tolist()) for _ in range(7)]
        text = "\n".join(lines) + "\n"
        for target in (2 * len(sentence) + 2, 3 * len(sentence) + 3, 4 * len(sentence) + 5):
            assert model.split(text, target_size=target) == naive_split(model, text, target), (sentence, target)
            cases += 1
    assert cases == 60
