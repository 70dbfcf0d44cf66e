"""`Model.count_tokens` against the Hugging Face `tokenizers` package running the model's own tokenizer.json (an
implementation apart from the core's encoder), on real text: the bundled model with tokvec's fast encoder and
without, a cap (`max_length`) that must not lower the count, and a model whose config asks for special tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tokvec
from tokvec.formats import DEFAULT_MODEL_DIR

tokenizers = pytest.importorskip("tokenizers")

EDGES = [
    "",
    "   ",
    "Größe naïve café 東京 🙂",
    "[CLS] special tokens written in the text [SEP] [UNK] [PAD]",
    "word " * 1000,  # past the 128 tokens of tokenizer.json's own truncation, which tokvec does not apply
]


def hf_counts(tokenizer_json: Path, texts: list[str], add_special_tokens: bool) -> np.ndarray:
    tok = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    # the bundled tokenizer.json pads and truncates to 128; the count is of the text's own tokens
    tok.no_padding()
    tok.no_truncation()
    return np.array([len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=add_special_tokens)])


@pytest.fixture(scope="module")
def texts(sample_sentences: list[str], diverse_texts: list[str]) -> list[str]:
    return [*sample_sentences, *diverse_texts, *EDGES]


@pytest.mark.parametrize("fast", [True, False])
def test_counts_are_the_tokenizers(texts: list[str], fast: bool) -> None:
    m = tokvec.load(fast_tokenizer=fast)
    got = m.count_tokens(texts)
    assert got.dtype == np.int64 and got.shape == (len(texts),)
    want = hf_counts(DEFAULT_MODEL_DIR / "tokenizer.json", texts, add_special_tokens=False)
    np.testing.assert_array_equal(got, want)
    assert got[-1] == 1000 and got[-len(EDGES)] == 0  # the empty text


def test_a_cap_and_a_truncated_dim_do_not_change_the_count(texts: list[str]) -> None:
    want = hf_counts(DEFAULT_MODEL_DIR / "tokenizer.json", texts, add_special_tokens=False)
    np.testing.assert_array_equal(tokvec.load(max_length=4, dim=64).count_tokens(texts), want)


def test_special_tokens_the_model_adds_are_counted(texts: list[str], tmp_path: Path) -> None:
    folder = tokvec.load().save(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["add_special_tokens"] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    got = tokvec.load(folder).count_tokens(texts)
    want = hf_counts(folder / "tokenizer.json", texts, add_special_tokens=True)
    np.testing.assert_array_equal(got, want)
    assert got[-len(EDGES)] == 2  # [CLS] [SEP] around the empty text


def test_empty_list_and_wrong_types() -> None:
    m = tokvec.load()
    got = m.count_tokens([])
    assert got.dtype == np.int64 and got.shape == (0,)
    with pytest.raises(TypeError, match="wrap it in a list"):
        m.count_tokens("a single text")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        m.count_tokens(["a", 3])
