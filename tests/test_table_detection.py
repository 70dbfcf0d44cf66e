"""`tokvec.load` and `tokvec.extract` find a checkpoint's input embedding table by one rule
(`tokvec.formats.detect_table`): an output projection (`lm_head.weight`) is never taken for the input table by
itself, by either entry point; naming it (table= / key=) reads it, and both read the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tokvec
from safetensors.numpy import save_file
from tokenizers import Tokenizer
from tokvec import FormatError


def _checkpoint(folder: Path, tensors: dict[str, np.ndarray], tok: str) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text(tok, encoding="utf-8")
    return folder


def _rows(model_dir: Path) -> np.ndarray:
    return tokvec.load(model_dir, normalize=False)._tensor("embeddings")


@pytest.fixture(scope="module")
def wordpiece(tokenizer_json: dict[str, str]) -> tuple[str, int]:
    tok = tokenizer_json["wordpiece"]
    return tok, Tokenizer.from_str(tok).get_vocab_size(with_added_tokens=True)


@pytest.mark.parametrize("layers", [False, True], ids=["only-lm-head", "lm-head-and-layers"])
def test_lm_head_alone_is_refused_by_load_and_extract_alike(tmp_path, wordpiece, layers):
    tok, vocab = wordpiece
    head = np.random.default_rng(0).standard_normal((vocab, 16)).astype(np.float32)
    tensors = {"lm_head.weight": head}
    if layers:  # a transformer checkpoint whose only vocab-sized matrix is its output projection
        tensors |= {
            "model.layers.0.mlp.up_proj.weight": np.ones((64, 16), np.float32),
            "model.norm.weight": np.ones(16, np.float32),
        }
    d = _checkpoint(tmp_path / "ckpt", tensors, tok)
    with pytest.raises(FormatError, match=r"output projection lm_head\.weight .*table='lm_head\.weight'"):
        tokvec.load(d)
    with pytest.raises(FormatError, match=r"output projection lm_head\.weight .*key='lm_head\.weight'"):
        tokvec.extract(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    info = tokvec.inspect(d)
    assert info.key is None and "lm_head.weight" in info.key_error
    # named, as the messages say: both read the output projection, the same rows
    m = tokvec.load(d, table="lm_head.weight", normalize=False)
    np.testing.assert_array_equal(m._tensor("lm_head.weight"), head)
    np.testing.assert_array_equal(_rows(tokvec.extract(d, tmp_path / "named", key="lm_head.weight")), head)
    emb = m.embed(["the cat sat"])
    np.testing.assert_allclose(
        tokvec.load(tmp_path / "named", normalize=False).embed(["the cat sat"]), emb, rtol=1e-6, atol=1e-6
    )


def test_sharded_index_with_only_lm_head_names_it(tmp_path, wordpiece):
    tok, vocab = wordpiece
    d = _checkpoint(tmp_path / "ckpt", {"lm_head.weight": np.ones((vocab, 8), np.float32)}, tok)
    (d / "model.safetensors").rename(d / "model-00001.safetensors")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "model-00001.safetensors"}})
    )
    with pytest.raises(FormatError, match=r"no input embedding table.*lm_head\.weight.*table='lm_head\.weight'"):
        tokvec.load(d)
    with pytest.raises(FormatError, match=r"output projection lm_head\.weight .*key='lm_head\.weight'"):
        tokvec.extract(d, tmp_path / "out")


def test_an_input_table_beside_lm_head_is_picked_by_both(tmp_path, wordpiece):
    tok, vocab = wordpiece
    rng = np.random.default_rng(1)
    table = rng.standard_normal((vocab, 16)).astype(np.float32)
    d = _checkpoint(
        tmp_path / "ckpt",
        {"model.embed_tokens.weight": table, "lm_head.weight": rng.standard_normal((vocab, 16)).astype(np.float32)},
        tok,
    )
    assert tokvec.load(d)._resolved.table == "model.embed_tokens.weight"
    np.testing.assert_array_equal(_rows(tokvec.extract(d, tmp_path / "out")), table)
