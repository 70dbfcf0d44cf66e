"""`Model.save(path, format=...)`: tokvec, model2vec and sentence-transformers folders, read back by tokvec and, for
model2vec, by model2vec itself; and model2vec folders loaded with model2vec's own defaults (normalize, max_length).

Texts are real: all 3,000 STS-B dev sentences, and long texts made of consecutive STS-B sentences (over 512 tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tokvec
from conftest import ModelFiles, plain_tokenizer, special_ids, unk_id
from model2vec import StaticModel
from safetensors.numpy import load_file
from tokvec import _core


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def sentences(stsb_dev: list[tuple[str, str, float]]) -> list[str]:
    """All 3,000 STS-B dev sentences."""
    return [s for a, b, _ in stsb_dev for s in (a, b)]


@pytest.fixture(scope="module")
def long_texts(sentences: list[str]) -> list[str]:
    """Three texts of 600-1,500 default-model tokens, each consecutive STS-B sentences joined by spaces."""
    tok = tokvec.load().tokenizer
    out: list[str] = []
    i = 0
    for target in (600, 900, 1500):
        parts: list[str] = []
        while len(tok.encode(" ".join(parts), add_special_tokens=False).ids) < target:
            parts.append(sentences[i])
            i += 1
        out.append(" ".join(parts))
    return out


@pytest.fixture(scope="module")
def default_m2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tokvec.load().save(tmp_path_factory.mktemp("m2v") / "default", format="model2vec")


# ------------------------------------------------------------------------------------------------------ model2vec
def test_model2vec_export_of_the_default_model(default_m2v, sentences):
    """The bundled model (30,522 x 256 F16, SIF weights) as a model2vec folder: model2vec embeds all 3,000 STS-B
    dev sentences as tokvec does, and tokvec reads the folder back bit for bit."""
    src = tokvec.load()
    cfg = json.loads((default_m2v / "config.json").read_text())
    assert cfg["model_type"] == "model2vec" and cfg["normalize"] is True and cfg["max_length"] is None
    assert cfg["hidden_dim"] == 256 and cfg["embedding_dtype"] == "float16" and cfg["license"] == "Apache-2.0"
    tensors = load_file(str(default_m2v / "model.safetensors"))
    assert tensors["embeddings"].dtype == np.float16 and tensors["embeddings"].shape == (30522, 256)
    assert tensors["weights"].dtype == np.float32 and "mapping" not in tensors
    assert {"LICENSE", "NOTICE"} <= {p.name for p in default_m2v.iterdir()}

    want = src.embed(sentences)
    back = tokvec.load(default_m2v)
    assert back.format == "model2vec" and (back.embed(sentences) == want).all()

    sm = StaticModel.from_pretrained(default_m2v)
    assert sm.normalize is True and sm.max_length is None and sm.weights is not None
    cos = cosines(want, sm.encode(sentences))
    assert cos.min() >= 0.9999, (cos.min(), cos.mean())


@pytest.mark.parametrize(
    ("fmt", "dtype", "kind", "options"),
    [
        ("model2vec", "F16", "wordpiece", {}),  # weights and a mapping (vocabulary quantization)
        ("model2vec", "BF16", "wordpiece", {"weights": False}),  # BF16 is widened to F32 for model2vec
        ("transformer", "F16", "bpe", {}),  # rows padded past the vocabulary: cut to one row per token
        ("sentence-transformers", "F32", "unigram", {"normalize": False}),
    ],
)
def test_model2vec_export_of_made_models(make_model, sentences, fmt, dtype, kind, options, tmp_path):
    mf: ModelFiles = make_model(fmt, dtype, tokenizer=kind, **options)
    src = tokvec.load(mf.path)
    out = src.save(tmp_path / "m2v", format="model2vec")
    want = src.embed(sentences)
    assert (tokvec.load(out).embed(sentences) == want).all()
    sm = StaticModel.from_pretrained(out)
    assert sm.normalize == src.normalize
    got = sm.encode(sentences)
    nonzero = np.linalg.norm(want, axis=1) > 0
    assert (np.linalg.norm(got, axis=1) > 0).tolist() == nonzero.tolist()
    assert cosines(want[nonzero], got[nonzero]).min() >= 0.9999


def test_model2vec_folder_embeds_as_model2vec_does(make_model, sentences):
    """A model2vec folder (weights, mapping, F16) read by tokvec gives model2vec's own vectors."""
    mf = make_model("model2vec", "F16", tokenizer="wordpiece")
    got = tokvec.load(mf.path).embed(sentences)
    want = StaticModel.from_pretrained(mf.path).encode(sentences)
    nonzero = np.linalg.norm(want, axis=1) > 0
    assert (np.linalg.norm(got, axis=1) > 0).tolist() == nonzero.tolist()
    assert cosines(got[nonzero], want[nonzero]).min() >= 0.9999


# ------------------------------------------------------------------------------ model2vec's defaults on loading
def _with_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of the model2vec folder `src` with config keys changed (None: the key removed)."""
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_model2vec_max_length_default(default_m2v, long_texts, sentences, tmp_path):
    """Without a `max_length` key (the published potion configs have none) model2vec cuts texts at 512 tokens, and
    so does tokvec; short texts are untouched."""
    folder = _with_config(default_m2v, tmp_path / "potion-like", max_length=None)
    m = tokvec.load(folder)
    sm = StaticModel.from_pretrained(folder)
    assert m._max_length == 512 == sm.max_length
    got, want = m.embed(long_texts), sm.encode(long_texts)
    assert cosines(got, want).min() >= 0.9999
    uncapped = tokvec.load(folder, max_length=None).embed(long_texts)
    assert cosines(uncapped, want).max() < 0.999  # the cap changes these texts
    assert cosines(m.embed(sentences[:500]), sm.encode(sentences[:500])).min() >= 0.9999


@pytest.mark.parametrize("max_length", [64, "null"])
def test_model2vec_config_max_length(default_m2v, long_texts, tmp_path, max_length):
    folder = default_m2v
    if max_length != "null":
        folder = _with_config(default_m2v, tmp_path / "capped", max_length=max_length)
    m, sm = tokvec.load(folder), StaticModel.from_pretrained(folder)
    assert m._max_length == sm.max_length == (None if max_length == "null" else max_length)
    assert cosines(m.embed(long_texts), sm.encode(long_texts)).min() >= 0.9999


def test_model2vec_normalize_default(default_m2v, sentences, tmp_path):
    """A config without `normalize`: model2vec does not normalize, nor does tokvec."""
    folder = _with_config(default_m2v, tmp_path / "raw", normalize=None)
    m, sm = tokvec.load(folder), StaticModel.from_pretrained(folder)
    assert m.normalize is False and sm.normalize is False
    got, want = m.embed(sentences[:500]), sm.encode(sentences[:500]).astype(np.float32)
    assert np.allclose(np.linalg.norm(got, axis=1), np.linalg.norm(want, axis=1), rtol=1e-3)
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0)


# --------------------------------------------------------------------------------------------- sentence-transformers
def _static_embedding(folder: Path, texts: list[str]) -> np.ndarray:
    """What sentence-transformers computes for a StaticEmbedding folder: `encode_batch(add_special_tokens=False)`,
    the mean of the rows of all ids (torch's EmbeddingBag, mode="mean"), then Normalize if modules.json lists it."""
    table = load_file(str(folder / "0_StaticEmbedding" / "model.safetensors"))["embedding.weight"].astype(np.float64)
    tok = plain_tokenizer((folder / "0_StaticEmbedding" / "tokenizer.json").read_text(encoding="utf-8"))
    out = np.zeros((len(texts), table.shape[1]))
    for i, enc in enumerate(tok.encode_batch(texts, add_special_tokens=False)):
        if enc.ids:
            out[i] = table[enc.ids].mean(0)
    if any(m["type"].endswith("Normalize") for m in json.loads((folder / "modules.json").read_text())):
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def test_sentence_transformers_export_of_the_default_model(sentences, tmp_path):
    """The SIF weights go into the rows (F32): the stored rows are exactly weight x row, tokvec reads the folder
    back equal to the last float32 bit or so (a fused multiply-add in the source's kernel rounds once where the
    stored product rounded before), and sentence-transformers' pooling gives the same vectors."""
    src = tokvec.load()
    out = src.save(tmp_path / "st", format="sentence-transformers")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["sentence_transformers.models.StaticEmbedding",
                                            "sentence_transformers.models.Normalize"]
    assert (out / "1_Normalize").is_dir() and (out / "0_StaticEmbedding" / "tokenizer.json").is_file()
    cfg = json.loads((out / "config_sentence_transformers.json").read_text())
    assert cfg["similarity_fn_name"] == "cosine" and "times the id's weight" in cfg["tokvec"]["rows"]

    rows = load_file(str(out / "0_StaticEmbedding" / "model.safetensors"))["embedding.weight"]
    f = _core.SafetensorsFile(src._resolved.safetensors)
    table = np.frombuffer(f.tensor_bytes("embeddings"), "<f2").reshape(30522, 256).astype(np.float32)
    weights = np.frombuffer(f.tensor_bytes("weights"), "<f4")
    assert rows.dtype == np.float32 and (rows == table * weights[:, None]).all()

    want = src.embed(sentences)
    back = tokvec.load(out)
    assert back.format == "sentence-transformers" and back.normalize
    got = back.embed(sentences)
    assert np.abs(got - want).max() <= 1e-6 and cosines(got, want).min() >= 0.999999

    tok = src.tokenizer
    skipped = set(src._skip_ids)
    plain = [i for i, t in enumerate(sentences) if not set(tok.encode(t, add_special_tokens=False).ids) & skipped]
    assert len(plain) > 2900
    st = _static_embedding(out, [sentences[i] for i in plain])
    assert cosines(st, want[plain]).min() >= 0.99999


@pytest.mark.parametrize(
    ("fmt", "dtype", "kind", "options"),
    [
        ("tokvec", "F16", "wordpiece", {"normalize": False}),
        ("model2vec", "BF16", "wordpiece", {"weights": False}),  # a mapping, expanded to one row per token id
        ("wordllama", "I8", "bpe", {}),
    ],
)
def test_sentence_transformers_export_reads_back_bit_identical(make_model, sentences, tmp_path, fmt, dtype, kind,
                                                              options):
    """Without weights the rows are the source's values (widened to F32 exactly): tokvec reads the folder back bit
    for bit, normalization included (a Normalize module only when the source normalizes)."""
    mf = make_model(fmt, dtype, tokenizer=kind, **options)
    src = tokvec.load(mf.path)
    out = src.save(tmp_path / "st", format="sentence-transformers")
    back = tokvec.load(out)
    assert back.normalize == src.normalize == (out / "1_Normalize").is_dir()
    assert (back.embed(sentences) == src.embed(sentences)).all()


# --------------------------------------------------------------------------------------------------------- tokvec
def test_tokvec_save_keeps_the_token_cap(default_m2v, long_texts, tmp_path):
    """A model loaded with a cap (a model2vec folder's 512 by default, or max_length=) keeps it when saved."""
    folder = _with_config(default_m2v, tmp_path / "potion-like", max_length=None)
    for kw, cap in (({}, 512), ({"max_length": 100}, 100)):
        m = tokvec.load(folder, **kw)
        out = m.save(tmp_path / f"tv-{cap}")
        assert json.loads((out / "config.json").read_text())["max_length"] == cap
        back = tokvec.load(out)
        assert back._max_length == cap and (back.embed(long_texts) == m.embed(long_texts)).all()


def test_save_rejects_an_unknown_format(tmp_path):
    with pytest.raises(ValueError, match=r"format must be one of 'tokvec', 'model2vec', 'sentence-transformers', "
                                         r"got 'onnx'"):
        tokvec.load().save(tmp_path / "x", format="onnx")
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


def test_unknown_token_dropping_is_model2vec_s(make_model):
    """tokvec drops a model2vec folder's unknown token (a plain vocabulary entry here, not a special token), as
    model2vec does; the conftest wordlevel tokenizer makes that token common."""
    mf = make_model("model2vec", "F32", tokenizer="wordlevel")
    tok = mf.ref.tokenizer
    u = unk_id(tok)
    assert u is not None and u not in special_ids(tok)
    texts = ["qwertyuiop zxcvbnm the", "the of and"]
    got = tokvec.load(mf.path).embed(texts)
    want = StaticModel.from_pretrained(mf.path).encode(texts)
    assert cosines(got, want).min() >= 0.9999
