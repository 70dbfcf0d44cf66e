"""tokvec's embeddings equal a plain numpy reference (Python `tokenizers` → drop special ids → rows → mean → L2),
for every model layout and table dtype, for the real MiniLM checkpoint, and for every pooling option; the Rust
tokenizer gives the Python tokenizer's ids; SIMD equals scalar; save → load round-trips; binary packs signs."""

from __future__ import annotations

import numpy as np
import pytest
import tokvec
from conftest import DETECTED, DTYPES, FORMATS, TOKENIZER_KINDS
from tokvec.formats import resolve
from tokvec.model import Model
from tokvec.tokenizer import load_tokenizer

ATOL = 1e-5


def check_close(got: np.ndarray, want: np.ndarray, *, atol: float = ATOL, rtol: float = 0.0) -> None:
    assert got.dtype == np.float32
    assert got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want)
    bad = err > atol + rtol * np.abs(want)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        pytest.fail(
            f"{bad.sum()} values differ; first at [{i}, {j}]: {got[i, j]} vs {want[i, j]} (max err {err.max()})"
        )


def build_scalar(path, **kw) -> Model:
    """The same model as `tokvec.load(path, **kw)`, pooled with the scalar reference kernels."""
    r = resolve(path)
    tok = load_tokenizer(r.tokenizer, add_special_tokens=r.add_special_tokens)
    opts = {"dim": None, "binary": False, "normalize": None, "max_length": None, **kw}
    return Model._build(r, tok, scalar=True, **opts)


# ------------------------------------------------------------------------------------------ every layout × dtype
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_embeddings_match_reference(make_model, sample_sentences, fmt, dtype):
    mf = make_model(fmt, dtype)
    m = tokvec.load(mf.path)
    assert m.format == DETECTED[fmt]
    assert m.dim == mf.ref.table.shape[1]
    assert m._core.dtype == dtype
    check_close(m.embed(sample_sentences), mf.ref.embed(sample_sentences))


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
@pytest.mark.parametrize("fmt", ["tokvec", "model2vec", "transformer"])
def test_every_tokenizer_kind(make_model, sample_sentences, stsb_sentences, fmt, kind):
    mf = make_model(fmt, "F16", tokenizer=kind)
    m = tokvec.load(mf.path)
    texts = sample_sentences + stsb_sentences[:300]
    check_close(m.embed(texts), mf.ref.embed(texts))


@pytest.mark.parametrize(("weights", "mapping"), [(False, False), (True, False), (False, True), (True, True)])
def test_model2vec_weights_and_mapping(make_model, sample_sentences, weights, mapping):
    mf = make_model("model2vec", "F32", weights=weights, mapping=mapping)
    m = tokvec.load(mf.path)
    assert m.vocab_size == mf.ref.tokenizer.get_vocab_size(with_added_tokens=True)
    check_close(m.embed(sample_sentences), mf.ref.embed(sample_sentences))


def test_model2vec_drops_unknown_tokens_others_keep_them(make_model):
    # "[UNK]" is a plain vocabulary entry of the WordLevel tokenizer: model2vec drops it, a bare table pools it
    texts = ["zqxv blorft the", "zqxv", "the"]
    m2v, table = make_model("model2vec", "F32"), make_model("table", "F32", tokenizer="wordlevel")
    unk = m2v.ref.tokenizer.token_to_id("[UNK]")
    assert m2v.ref.ids(texts)[0][:2] == [unk, unk]
    e = tokvec.load(m2v.path).embed(texts)
    np.testing.assert_array_equal(e[0], e[2])
    np.testing.assert_array_equal(e[1], np.zeros(e.shape[1], np.float32))
    e = tokvec.load(table.path).embed(texts)
    assert np.abs(e[0] - e[2]).max() > 1e-3
    check_close(e, table.ref.embed(texts))


def test_model2vec_config_normalize_false(make_model, sample_sentences):
    mf = make_model("model2vec", "F32", normalize=False)
    m = tokvec.load(mf.path)
    assert m.normalize is False
    check_close(m.embed(sample_sentences), mf.ref.embed(sample_sentences), rtol=1e-6)
    mn = tokvec.load(mf.path, normalize=True)
    check_close(mn.embed(sample_sentences), mf.ref.embed(sample_sentences, normalize=True))


def test_tokvec_add_special_tokens_and_skip_ids(make_model, sample_sentences):
    # special tokens added by the post-processor are encoded but never pooled
    mf = make_model("tokvec", "F32", tokenizer="wordpiece", add_special_tokens=True)
    m = tokvec.load(mf.path)
    ids = m.encode_ids(sample_sentences[:20])
    cls_id, sep_id = mf.ref.tokenizer.token_to_id("[CLS]"), mf.ref.tokenizer.token_to_id("[SEP]")
    assert all(x[0] == cls_id and x[-1] == sep_id for x in ids)
    check_close(m.embed(sample_sentences), mf.ref.embed(sample_sentences))
    # an explicit skip list replaces the special-token set: here "the" and "," are skipped, specials pooled
    tok = mf.ref.tokenizer
    skip = [tok.token_to_id("the"), tok.token_to_id(",")]
    mf2 = make_model("tokvec", "F32", tokenizer="wordpiece", add_special_tokens=True, skip_ids=skip)
    assert mf2.ref.skip == frozenset(skip)
    check_close(tokvec.load(mf2.path).embed(sample_sentences), mf2.ref.embed(sample_sentences))


# ------------------------------------------------------------------------------------------ real checkpoints
def test_minilm_checkpoint(minilm, sample_sentences, stsb_sentences):
    m = tokvec.load(minilm.path)
    assert (m.format, m.dim, m.vocab_size) == ("transformer", 384, 30522)
    texts = sample_sentences + stsb_sentences[::5]
    check_close(m.embed(texts), minilm.ref.embed(texts))
    # the checkpoint's tokenizer.json truncates to 128 tokens and pads: tokvec switches both off
    long_text = " ".join(sample_sentences[:20])
    assert len(minilm.ref.ids([long_text])[0]) > 128
    check_close(m.embed([long_text]), minilm.ref.embed([long_text]))
    assert m.encode_ids([long_text]) == minilm.ref.ids([long_text])


def test_wordllama_table(wordllama_model, sample_sentences, stsb_sentences):
    m = tokvec.load(wordllama_model.path)
    assert m.format == "wordllama"
    texts = sample_sentences + stsb_sentences[::5]
    check_close(m.embed(texts), wordllama_model.ref.embed(texts))
    assert m.encode_ids(texts) == wordllama_model.ref.ids(texts)


# ------------------------------------------------------------------------------------------ pooling options
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 7, 64, 65])
def test_dim_truncation(make_model, sample_sentences, dtype, dim):
    mf = make_model("table", dtype)
    m = tokvec.load(mf.path, dim=dim)
    assert m.dim == dim
    check_close(m.embed(sample_sentences), mf.ref.embed(sample_sentences, dim=dim))


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize_false(make_model, sample_sentences, dtype):
    mf = make_model("transformer", dtype)
    m = tokvec.load(mf.path, normalize=False)
    assert m.normalize is False
    check_close(m.embed(sample_sentences), mf.ref.embed(sample_sentences, normalize=False), rtol=1e-6)


@pytest.mark.parametrize("max_length", [1, 2, 5, 16])
@pytest.mark.parametrize("fmt", ["tokvec", "model2vec", "wordllama"])
def test_max_length(make_model, sample_sentences, fmt, max_length):
    mf = make_model(fmt, "F16")
    m = tokvec.load(mf.path, max_length=max_length)
    check_close(m.embed(sample_sentences), mf.ref.embed(sample_sentences, max_length=max_length))


def test_all_options_together(minilm, sample_sentences):
    m = tokvec.load(minilm.path, dim=100, normalize=False, max_length=8)
    want = minilm.ref.embed(sample_sentences, dim=100, normalize=False, max_length=8)
    check_close(m.embed(sample_sentences), want, rtol=1e-6)


# ------------------------------------------------------------------------------------------ token ids
@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_encode_ids_equal_python_tokenizer(make_model, sample_sentences, stsb_sentences, kind):
    mf = make_model("table", "F16", tokenizer=kind)
    m = tokvec.load(mf.path)
    texts = sample_sentences + stsb_sentences
    assert m.encode_ids(texts) == mf.ref.ids(texts)


def test_encode_ids_minilm(minilm, sample_sentences, stsb_sentences):
    m = tokvec.load(minilm.path)
    texts = sample_sentences + stsb_sentences
    assert m.encode_ids(texts) == minilm.ref.ids(texts)


def test_encode_ids_diverse_text(make_model, minilm, diverse_texts):
    assert len(diverse_texts) > 1000
    m = tokvec.load(minilm.path)
    assert m.encode_ids(diverse_texts) == minilm.ref.ids(diverse_texts)
    check_close(m.embed(diverse_texts), minilm.ref.embed(diverse_texts))
    for kind in TOKENIZER_KINDS:
        mf = make_model("tokvec", "F16", tokenizer=kind)
        mk = tokvec.load(mf.path)
        assert mk.encode_ids(diverse_texts) == mf.ref.ids(diverse_texts), kind
        check_close(mk.embed(diverse_texts), mf.ref.embed(diverse_texts))


def test_encode_ids_diverse_text_wordllama(wordllama_model, diverse_texts):
    m = tokvec.load(wordllama_model.path)
    assert m.encode_ids(diverse_texts) == wordllama_model.ref.ids(diverse_texts)
    check_close(m.embed(diverse_texts), wordllama_model.ref.embed(diverse_texts))


def test_encode_ids_with_special_tokens(make_model, sample_sentences, stsb_sentences):
    mf = make_model("tokvec", "F16", tokenizer="unigram", add_special_tokens=True)
    m = tokvec.load(mf.path)
    texts = sample_sentences + stsb_sentences
    got = m.encode_ids(texts)
    assert got == mf.ref.ids(texts)
    assert all(x[-1] == mf.ref.tokenizer.token_to_id("</s>") for x in got)


def test_embed_ids_equals_embed(minilm, sample_sentences):
    m = tokvec.load(minilm.path)
    ids = m.encode_ids(sample_sentences)
    flat = np.array([t for x in ids for t in x], np.uint32)
    offsets = np.cumsum([0] + [len(x) for x in ids]).astype(np.uint64)
    np.testing.assert_array_equal(m.embed_ids(flat, offsets), m.embed(sample_sentences))


# ------------------------------------------------------------------------------------------ SIMD vs scalar
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["model2vec", "transformer"])
def test_simd_equals_scalar(make_model, sample_sentences, fmt, dtype):
    mf = make_model(fmt, dtype, cols=131)  # not a multiple of any vector width: exercises the tails
    fast = tokvec.load(mf.path).embed(sample_sentences)
    slow = build_scalar(mf.path).embed(sample_sentences)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)
    check_close(slow, mf.ref.embed(sample_sentences))


@pytest.mark.parametrize("dim", [17, 100])
def test_simd_equals_scalar_options(make_model, sample_sentences, dim):
    mf = make_model("tokvec", "BF16", cols=131)
    fast = tokvec.load(mf.path, dim=dim, normalize=False, max_length=9).embed(sample_sentences)
    slow = build_scalar(mf.path, dim=dim, normalize=False, max_length=9).embed(sample_sentences)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)


def test_simd_equals_scalar_minilm(minilm, sample_sentences):
    fast = tokvec.load(minilm.path).embed(sample_sentences)
    slow = build_scalar(minilm.path).embed(sample_sentences)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------ save → load
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_save_load_roundtrip(make_model, sample_sentences, tmp_path, fmt, dtype):
    mf = make_model(fmt, dtype)
    m = tokvec.load(mf.path)
    out = m.save(tmp_path / "saved")
    m2 = tokvec.load(out)
    assert m2.format == "tokvec"
    assert (m2.dim, m2.normalize, m2._core.dtype) == (m.dim, m.normalize, m._core.dtype)
    np.testing.assert_array_equal(m2.embed(sample_sentences), m.embed(sample_sentences))
    assert m2.encode_ids(sample_sentences) == m.encode_ids(sample_sentences)


def test_save_load_roundtrip_with_options(minilm, sample_sentences, tmp_path):
    m = tokvec.load(minilm.path, dim=128, normalize=False)
    m2 = tokvec.load(m.save(tmp_path / "small"))
    assert (m2.dim, m2.normalize, m2._core.cols) == (128, False, 128)
    np.testing.assert_array_equal(m2.embed(sample_sentences), m.embed(sample_sentences))
    # a saved folder saved again is byte-identical in its tensors
    m3 = tokvec.load(m2.save(tmp_path / "again"))
    a = tokvec.SafetensorsFile(tmp_path / "small" / "model.safetensors")
    b = tokvec.SafetensorsFile(tmp_path / "again" / "model.safetensors")
    assert a.tensors() == b.tensors()
    assert a.tensor_bytes("embeddings") == b.tensor_bytes("embeddings")
    np.testing.assert_array_equal(m3.embed(sample_sentences), m.embed(sample_sentences))


def test_save_into_existing_folder_refused(minilm, tmp_path):
    m = tokvec.load(minilm.path, dim=8)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="full"):
        m.save(tmp_path / "full")
    (tmp_path / "empty").mkdir()
    m.save(tmp_path / "empty")  # an empty folder is fine
    assert (tmp_path / "empty" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------ binary
def pack_reference(v: np.ndarray) -> np.ndarray:
    """Bit j of a row in word j // 64, bit j % 64 (little-endian words), padding bits zero."""
    n, d = v.shape
    words = -(-d // 64)
    bits = np.zeros((n, words * 64), dtype=bool)
    bits[:, :d] = v > 0
    return np.packbits(bits, axis=1, bitorder="little").view("<u8")


@pytest.mark.parametrize("dim", [None, 64, 100, 3])
@pytest.mark.parametrize("dtype", ["F16", "BF16", "I8"])
def test_binary_bits(make_model, sample_sentences, dtype, dim):
    mf = make_model("tokvec", dtype, cols=131)
    mb = tokvec.load(mf.path, binary=True, dim=dim)
    d = dim or 131
    got = mb.embed(sample_sentences)
    assert got.dtype == np.uint64 and got.shape == (len(sample_sentences), -(-d // 64))
    ref = mf.ref.embed(sample_sentences, dim=d)
    want = pack_reference(ref)
    clear = np.abs(ref) > 1e-5  # a sign that float rounding could flip is not compared
    clear_words = pack_reference(np.where(clear, 1.0, -1.0))
    np.testing.assert_array_equal(got & clear_words, want & clear_words)
    # and exactly the signs of tokvec's own float embeddings
    floats = tokvec.load(mf.path, dim=dim).embed(sample_sentences)
    np.testing.assert_array_equal(got, pack_reference(floats))
    # a single text gives one row of words
    np.testing.assert_array_equal(mb.embed(sample_sentences[3]), got[3])


def test_binary_empty_text_is_all_zero_bits(minilm):
    mb = tokvec.load(minilm.path, binary=True)
    got = mb.embed(["", "[CLS] [SEP]", "a cat"])
    assert got.shape == (3, 6)
    assert not got[0].any() and not got[1].any() and got[2].any()
