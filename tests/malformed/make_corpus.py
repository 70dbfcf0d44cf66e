"""A corpus of broken model files and folders, each with the exception tokvec must raise for it.

`make_corpus(root)` writes every case under `root` (one folder per case) and returns the list of
`Case`s. Nothing is committed: tests generate the corpus into a temporary folder. Run as a script
(`python tests/malformed/make_corpus.py OUT`) to write it to `OUT` and print the case count.

Each case names the entry point (`load`, `inspect` or `extract`), the path to pass, the exception
type that must be raised and fragments of which at least one must appear in the message (the
problem), plus `names`: a piece of the path that the message must contain (the file).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tiny"
VOCAB = 600  # rows of the fixture tokenizer's vocabulary (tests/fixtures/tiny/tokenizer.json)
DIM = 8


@dataclass
class Case:
    """One malformed input and what tokvec must say about it."""

    name: str
    api: str  # "load", "inspect" or "extract"
    path: Path
    exc: str  # "FormatError", "TokenizerError", "FileNotFoundError"
    fragments: tuple[str, ...]  # at least one (case-insensitive) must be in the message
    names: str  # must be in the message (the file or folder at fault)
    kwargs: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- builders
def st_bytes(header: object, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length, the header, the data section."""
    if isinstance(header, bytes):
        h = header
    elif isinstance(header, str):
        h = header.encode()
    else:
        h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def table_entry(rows: int = VOCAB, dim: int = DIM, dtype: str = "F32", start: int = 0) -> dict:
    size = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1}.get(dtype, 4)
    return {"dtype": dtype, "shape": [rows, dim], "data_offsets": [start, start + rows * dim * size]}


def good_table(rows: int = VOCAB, dim: int = DIM) -> bytes:
    return np.random.default_rng(0).standard_normal((rows, dim)).astype("<f4").tobytes()


def model_dir(
    root: Path,
    name: str,
    st: bytes | None,
    *,
    tokenizer: str | bytes | None = None,
    config: str | bytes | None = None,
    st_name: str = "model.safetensors",
) -> Path:
    """A folder with `st_name` (raw bytes), the fixture tokenizer (or `tokenizer`) and an optional config."""
    d = root / name
    d.mkdir(parents=True)
    if st is not None:
        (d / st_name).write_bytes(st)
    tok = (FIXTURES / "tokenizer.json").read_bytes() if tokenizer is None else tokenizer
    (d / "tokenizer.json").write_bytes(tok.encode() if isinstance(tok, str) else tok)
    if config is not None:
        (d / "config.json").write_bytes(config.encode() if isinstance(config, str) else config)
    return d


HEADER_PROBLEM = (
    "header",
    "safetensors",
    "json",
    "dtype",
    "shape",
    "offset",
    "tensor",
    "byte",
    "truncated",
    "metadata",
)


# ----------------------------------------------------------------------------------------------- safetensors
def _header_cases() -> list[tuple[str, bytes, tuple[str, ...]]]:
    """(name, file bytes, message fragments) for every way a safetensors header can be wrong."""
    t = table_entry()
    data = good_table()
    n = len(data)
    cases: list[tuple[str, bytes, tuple[str, ...]]] = []
    add = cases.append
    # length field
    for length, frag in [
        (0, ("not a json object", "header")),
        (1, ("header",)),
        (7, ("header",)),
        (10**6, ("past the end",)),
        (2**32, ("past the end", "cap")),
        (2**63, ("cap",)),
        (2**64 - 1, ("cap",)),
        (100_000_001, ("cap",)),
        (10**9, ("cap",)),
    ]:
        add((f"length-{length}", st_bytes({"t": t}, data, length=length), frag))
    hdr = json.dumps({"t": t}).encode()
    add(("length-one-short", st_bytes(hdr, data, length=len(hdr) - 1), HEADER_PROBLEM))
    add(("length-one-long", st_bytes(hdr, data, length=len(hdr) + 1), HEADER_PROBLEM))
    # file sizes
    for size in range(8):
        add((f"file-{size}-bytes", bytes(size), ("8-byte", "bytes")))
    add(("only-length", struct.pack("<Q", 2), ("past the end",)))
    # not JSON / not UTF-8
    for i, raw in enumerate(
        [
            b"not json at all",
            b'{"t": ',
            b"\xff\xfe\x00\x01",
            b"\x00" * 16,
            b'{"t": 1} trailing',
            b"\xef\xbb\xbf{}",
            b"{" * 1000 + b"}" * 1000,
            b'{"a": "\xff"}',
            b"{,}",
            b'{"t" "x"}',
        ]
    ):
        add((f"not-json-{i}", st_bytes(raw, data), HEADER_PROBLEM))
    # JSON, not an object
    for i, raw in enumerate(["[]", "1", '"s"', "null", "true", '[{"t": 1}]', "-0.5"]):
        add((f"not-object-{i}", st_bytes(raw, data), ("json object", "header")))
    # duplicate keys
    e = json.dumps(t)
    add(("duplicate-tensor", st_bytes(f'{{"t": {e}, "t": {e}}}', data), ("twice", "duplicate")))
    add(
        (
            "duplicate-metadata",
            st_bytes(f'{{"__metadata__": {{}}, "__metadata__": {{}}, "t": {e}}}', data),
            ("twice", "duplicate", "header"),
        )
    )
    # tensor entry itself not an object / fields missing
    for i, entry in enumerate(
        [
            '"x"',
            "1",
            "[]",
            "null",
            "{}",
            '{"dtype": "F32"}',
            f'{{"dtype": "F32", "shape": [{VOCAB}, {DIM}]}}',
            f'{{"shape": [{VOCAB}, {DIM}], "data_offsets": [0, {n}]}}',
        ]
    ):
        add((f"entry-{i}", st_bytes(f'{{"t": {entry}}}', data), HEADER_PROBLEM))
    # dtype unknown or not a string
    for dt in ["F17", "", "f32", "FLOAT32", 1, None, ["F32"], "F32 ", "Q4_0"]:
        add((f"dtype-unknown-{dt!r}", st_bytes({"t": {**t, "dtype": dt}}, data), HEADER_PROBLEM))
    # dtype known but not readable as a table (same byte size kept consistent)
    for dt, size in [
        ("BOOL", 1),
        ("U8", 1),
        ("I16", 2),
        ("U16", 2),
        ("U64", 8),
        ("I32", 4),
        ("I64", 8),
        ("U32", 4),
        ("F8_E4M3", 1),
        ("F8_E5M2", 1),
    ]:
        add(
            (
                f"dtype-table-{dt}",
                st_bytes(
                    {"t": {"dtype": dt, "shape": [VOCAB, DIM], "data_offsets": [0, VOCAB * DIM * size]}},
                    bytes(VOCAB * DIM * size),
                ),
                ("dtype",),
            )
        )
    # shapes
    for i, shape in enumerate(
        [
            [-1, DIM],
            [VOCAB, -DIM],
            [VOCAB, 2.5],
            ["600", DIM],
            [None, DIM],
            "600x8",
            5,
            [2**64, DIM],
            [2**63, 2],
            [2**32, 2**32],
            [2**62, 2**62, 2**62],
            [VOCAB * DIM],
            [VOCAB, DIM, 1],
            [],
            [0, DIM],
            [VOCAB, 0],
            [VOCAB + 1, DIM],
            [VOCAB - 1, DIM],
        ]
    ):
        nm = f"shape-{i}-{json.dumps(shape)}"
        add((nm, st_bytes({"t": {**t, "shape": shape}}, data), HEADER_PROBLEM + ("2-d", "empty", "overflow")))
    # offsets
    for i, off in enumerate(
        [
            [n, 0],
            [0, n + 1],
            [0, n - 1],
            [4, n + 4],
            [n + 8, n + 8 + n],
            [-1, n],
            [0, 2**64],
            [0.0, float(n)],
            ["0", str(n)],
            [0],
            [0, n, 2 * n],
            None,
            [2**63, 2**63 + n],
        ]
    ):
        add((f"offsets-{i}-{json.dumps(off)}", st_bytes({"t": {**t, "data_offsets": off}}, data), HEADER_PROBLEM))
    half = VOCAB // 2 * DIM * 4
    two = {"a": {"dtype": "F32", "shape": [VOCAB // 2, DIM], "data_offsets": [0, half]}}
    add(
        (
            "offsets-overlap",
            st_bytes(
                {**two, "t": {"dtype": "F32", "shape": [VOCAB, DIM], "data_offsets": [half - 4, half - 4 + n]}},
                bytes(half + n - 4),
            ),
            HEADER_PROBLEM,
        )
    )
    add(
        (
            "offsets-gap",
            st_bytes(
                {**two, "t": {"dtype": "F32", "shape": [VOCAB, DIM], "data_offsets": [half + 4, half + 4 + n]}},
                bytes(half + n + 4),
            ),
            HEADER_PROBLEM,
        )
    )
    add(
        (
            "offsets-out-of-order",
            st_bytes(
                {"t": {**t, "data_offsets": [half, half + n]}, "a": {**two["a"], "data_offsets": [0, half]}},
                bytes(half + n),
            ),
            ("embedding", "several", "table", "name"),
        )
    )
    add(("offsets-same-range", st_bytes({"t": t, "u": t}, data), HEADER_PROBLEM))
    # __metadata__
    for i, md in enumerate(
        [{"k": 1}, {"k": 1.5}, {"k": None}, {"k": ["a"]}, {"k": {"a": "b"}}, {"k": True}, ["a"], "s", 3]
    ):
        add((f"metadata-{i}-{json.dumps(md)}", st_bytes({"__metadata__": md, "t": t}, data), HEADER_PROBLEM))
    # data section truncated or padded
    full = st_bytes({"t": t}, data)
    hl = len(full) - n
    for cut in [hl, hl + 1, hl + n // 2, len(full) - 1]:
        add((f"truncated-at-{cut}", full[:cut], ("truncated", "cover", "outside", "byte")))
    add(("padded", full + b"\x00" * 16, ("cover", "padded", "byte")))
    return cases


#: Header cases whose safetensors header is valid (the table is what is wrong): `inspect` describes them.
VALID_HEADERS = ("dtype-table-", "shape-11-", "shape-12-", "offsets-out-of-order")


def _st_cases(root: Path) -> list[Case]:
    out: list[Case] = []
    for i, (name, raw, frags) in enumerate(_header_cases()):
        slug = f"st{i:03d}-{''.join(c if c.isalnum() or c in '-_' else '_' for c in name)[:60]}"
        d = model_dir(root, slug, raw)
        out.append(
            Case(f"safetensors/{name}", "load", d / "model.safetensors", "FormatError", frags, "model.safetensors")
        )
        # the same file through the folder and through inspect (every third, to keep the run short); inspect only
        # describes files whose header is valid but whose table is unusable (wrong dtype or rank): no error there
        if i % 3 == 0:
            out.append(Case(f"safetensors-folder/{name}", "load", d, "FormatError", frags, "model.safetensors"))
            if not name.startswith(VALID_HEADERS):
                out.append(Case(f"inspect/{name}", "inspect", d, "FormatError", frags, "model.safetensors"))
    return out


# ----------------------------------------------------------------------------------------------- paths
def _leads_nowhere(name: str, path: Path, names: str) -> Case:
    """A symlink that resolves to no file (a loop, a cycle, a dangling link): load says where it leads."""
    return Case(name, "load", path, "FileNotFoundError", ("leads nowhere",), names)


def _path_cases(root: Path) -> list[Case]:
    out: list[Case] = []
    good = st_bytes({"embeddings": table_entry()}, good_table())
    d = model_dir(root, "p-zero-byte", b"")
    out.append(Case("path/zero-byte file", "load", d, "FormatError", ("0 bytes", "8-byte"), "model.safetensors"))
    d = model_dir(root, "p-dir-as-file", None)
    (d / "model.safetensors").mkdir()
    out.append(
        Case("path/directory named model.safetensors", "load", d, "FormatError", ("directory",), "model.safetensors")
    )
    out.append(
        Case(
            "path/directory passed as the file",
            "load",
            d / "model.safetensors",
            "FormatError",
            ("directory", "no model.safetensors", "folder"),
            "model.safetensors",
        )
    )
    d = model_dir(root, "p-symlink-loop", None)
    os.symlink("model.safetensors", d / "model.safetensors")
    out.append(_leads_nowhere("path/symlink loop (self)", d, "model.safetensors"))
    out.append(_leads_nowhere("path/symlink loop file", d / "model.safetensors", "model.safetensors"))
    d = model_dir(root, "p-symlink-cycle", None)
    os.symlink("b.safetensors", d / "a.safetensors")
    os.symlink("a.safetensors", d / "b.safetensors")
    out.append(_leads_nowhere("path/symlink cycle a->b->a", d / "a.safetensors", "a.safetensors"))
    d = model_dir(root, "p-dangling", None)
    os.symlink("nowhere.safetensors", d / "model.safetensors")
    out.append(_leads_nowhere("path/dangling symlink", d / "model.safetensors", "model.safetensors"))
    out.append(
        Case("path/missing", "load", root / "does-not-exist", "FileNotFoundError", ("no such",), "does-not-exist")
    )
    out.append(
        Case(
            "path/missing inspect",
            "inspect",
            root / "does-not-exist",
            "FileNotFoundError",
            ("no such",),
            "does-not-exist",
        )
    )
    (root / "p-empty").mkdir()
    out.append(Case("path/empty folder", "load", root / "p-empty", "FormatError", ("no model.safetensors",), "p-empty"))
    out.append(
        Case(
            "path/empty folder inspect",
            "inspect",
            root / "p-empty",
            "FormatError",
            ("no model.safetensors",),
            "p-empty",
        )
    )
    d = root / "p-pickle"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    out.append(Case("path/pickle only", "load", d, "FormatError", ("pickle",), "p-pickle"))
    out.append(
        Case("path/pickle file", "load", d / "pytorch_model.bin", "FormatError", ("pickle",), "pytorch_model.bin")
    )
    out.append(
        Case("path/pickle inspect", "inspect", d / "pytorch_model.bin", "FormatError", ("pickle",), "pytorch_model.bin")
    )
    d = model_dir(root, "p-tok-dir", good, tokenizer=b"")
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.json").mkdir()
    out.append(Case("path/tokenizer.json is a directory", "load", d, "FormatError", ("no tokenizer",), "p-tok-dir"))
    d = model_dir(root, "p-tok-loop", good, tokenizer=b"")
    (d / "tokenizer.json").unlink()
    os.symlink("tokenizer.json", d / "tokenizer.json")
    out.append(Case("path/tokenizer.json symlink loop", "load", d, "FormatError", ("no tokenizer",), "p-tok-loop"))
    d = model_dir(root, "p-no-tok", good, tokenizer=b"")
    (d / "tokenizer.json").unlink()
    out.append(Case("path/no tokenizer", "load", d, "FormatError", ("no tokenizer",), "p-no-tok"))
    out.append(
        Case(
            "path/tokenizer= missing",
            "load",
            d,
            "FileNotFoundError",
            ("not found",),
            "nope.json",
            {"tokenizer": str(d / "nope.json")},
        )
    )
    d = model_dir(root, "p-fifo", None)
    os.mkfifo(d / "model.safetensors")
    out.append(
        Case(
            "path/fifo as model.safetensors",
            "load",
            d,
            "FormatError",
            ("0 bytes", "8-byte", "not a regular"),
            "model.safetensors",
        )
    )
    d = model_dir(root, "p-fifo-tok", good, tokenizer=b"")
    (d / "tokenizer.json").unlink()
    os.mkfifo(d / "tokenizer.json")
    out.append(Case("path/fifo as tokenizer.json", "load", d, "FormatError", ("no tokenizer",), "p-fifo-tok"))
    d = model_dir(root, "p-config-dir", good)
    (d / "config.json").mkdir()
    out.append(Case("path/config.json is a directory", "load", d, "FormatError", ("directory",), "config.json"))
    d = model_dir(root, "p-two-st", good, st_name="a.safetensors")
    (d / "b.safetensors").write_bytes(good)
    out.append(Case("path/two safetensors files", "load", d, "FormatError", ("several",), "p-two-st"))
    p = root / "p-suffix.txt"
    p.write_bytes(good)
    out.append(Case("path/wrong suffix", "load", p, "FormatError", ("expected a .safetensors",), "p-suffix.txt"))
    return out


# ----------------------------------------------------------------------------------------------- tokenizers
def _tokenizer_cases(root: Path) -> list[Case]:
    out: list[Case] = []
    good = st_bytes({"embeddings": table_entry()}, good_table())
    base = json.loads((FIXTURES / "tokenizer.json").read_text())
    bad: list[tuple[str, bytes | str, str, tuple[str, ...]]] = [
        ("empty", b"", "TokenizerError", ("tokenizer",)),
        ("not json", "hello", "TokenizerError", ("tokenizer",)),
        ("truncated", json.dumps(base)[:200], "TokenizerError", ("tokenizer", "eof")),
        ("list", "[]", "TokenizerError", ("tokenizer",)),
        ("null", "null", "TokenizerError", ("tokenizer",)),
        ("no model", json.dumps({k: v for k, v in base.items() if k != "model"}), "TokenizerError", ("tokenizer",)),
        (
            "model type unknown",
            json.dumps({**base, "model": {**base["model"], "type": "Nope"}}),
            "TokenizerError",
            ("tokenizer",),
        ),
        (
            "vocab a list",
            json.dumps({**base, "model": {**base["model"], "vocab": ["a", "b"]}}),
            "TokenizerError",
            ("tokenizer",),
        ),
        (
            "vocab id negative",
            json.dumps({**base, "model": {**base["model"], "vocab": {"a": -1, "[UNK]": 1}}}),
            "TokenizerError",
            ("tokenizer",),
        ),
        ("invalid utf-8", b'{"version": "\xff\xfe"}', "TokenizerError", ("tokenizer", "utf-8", "utf8")),
        ("nul bytes", b"\x00" * 64, "TokenizerError", ("tokenizer",)),
        ("deep nesting", "[" * 100_000 + "]" * 100_000, "TokenizerError", ("tokenizer", "recursion")),
        ("bom", b"\xef\xbb\xbf" + json.dumps(base).encode(), "TokenizerError", ("tokenizer",)),
    ]
    big_vocab = dict(base["model"]["vocab"])
    for i in range(VOCAB, VOCAB + 50):
        big_vocab[f"extra{i}"] = i
    bad.append(
        (
            "vocab larger than the table",
            json.dumps({**base, "model": {**base["model"], "vocab": big_vocab}}),
            "FormatError",
            ("rows", "does not", "tokenizer"),
        )
    )
    added = base.get("added_tokens", []) + [
        {
            "id": 5000,
            "content": "[BIG]",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    ]
    bad.append(
        (
            "added token beyond the table",
            json.dumps({**base, "added_tokens": added}),
            "FormatError",
            ("rows", "does not", "tokenizer"),
        )
    )
    huge = base.get("added_tokens", []) + [
        {
            "id": 2**32 + 5,
            "content": "[HUGE]",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    ]
    bad.append(("added token id 2**32+5", json.dumps({**base, "added_tokens": huge}), "TokenizerError", ("tokenizer",)))
    for i, (name, tok, exc, frags) in enumerate(bad):
        d = model_dir(root, f"tok{i:02d}", good, tokenizer=tok)
        out.append(
            Case(
                f"tokenizer/{name}",
                "load",
                d,
                exc,
                frags,
                "tokenizer.json" if exc != "FormatError" else "model.safetensors",
            )
        )
    return out


# ----------------------------------------------------------------------------------------------- configs
def _config_cases(root: Path) -> list[Case]:
    out: list[Case] = []
    good = st_bytes({"embeddings": table_entry()}, good_table())
    tv = {"format": "tokvec", "format_version": 1, "table": "embeddings"}
    configs: list[tuple[str, str | bytes, tuple[str, ...]]] = [
        ("not json", "{not json", ("not valid json",)),
        ("invalid utf-8", b'{"a": "\xff"}', ("not valid json", "utf-8")),
        ("a list", "[1, 2]", ("json object",)),
        ("a string", '"tokvec"', ("json object",)),
        ("empty", "", ("not valid json",)),
        ("normalize a string", json.dumps({"normalize": "yes"}), ("normalize",)),
        ("normalize an int", json.dumps({"normalize": 1}), ("normalize",)),
        ("tokvec normalize a list", json.dumps({**tv, "normalize": [True]}), ("normalize",)),
        ("format_version a string", json.dumps({**tv, "format_version": "1"}), ("format_version",)),
        ("format_version a bool", json.dumps({**tv, "format_version": True}), ("format_version",)),
        ("format_version too new", json.dumps({**tv, "format_version": 99}), ("newer",)),
        ("table an int", json.dumps({**tv, "table": 3}), ("table",)),
        ("table missing tensor", json.dumps({**tv, "table": "nope"}), ("without its table",)),
        ("skip_ids a string", json.dumps({**tv, "skip_ids": "0,1"}), ("skip_ids",)),
        ("skip_ids negative", json.dumps({**tv, "skip_ids": [-1]}), ("skip_ids",)),
        ("skip_ids floats", json.dumps({**tv, "skip_ids": [1.5]}), ("skip_ids",)),
        ("skip_ids bools", json.dumps({**tv, "skip_ids": [True]}), ("skip_ids",)),
        ("skip_ids 2**40", json.dumps({**tv, "skip_ids": [2**40]}), ("skip_ids",)),
        ("skip_ids past the vocabulary", json.dumps({**tv, "skip_ids": [2**32 - 1]}), ("skip_ids",)),
        ("add_special_tokens a string", json.dumps({**tv, "add_special_tokens": "no"}), ("add_special_tokens",)),
    ]
    for i, (name, cfg, frags) in enumerate(configs):
        d = model_dir(root, f"cfg{i:02d}", good, config=cfg)
        out.append(Case(f"config/{name}", "load", d, "FormatError", frags, "config.json"))
    return out


# ----------------------------------------------------------------------------------------------- model2vec / shards
def _model2vec_cases(root: Path) -> list[Case]:
    out: list[Case] = []
    tbl = good_table()
    n = len(tbl)
    e = table_entry()

    def extra(name: str, dtype: str, shape: list, raw: bytes) -> bytes:
        return st_bytes(
            {"embeddings": e, name: {"dtype": dtype, "shape": shape, "data_offsets": [n, n + len(raw)]}}, tbl + raw
        )

    cases = [
        ("weights too short", extra("weights", "F32", [VOCAB - 1], np.ones(VOCAB - 1, "<f4").tobytes()), ("weights",)),
        ("weights NaN", extra("weights", "F32", [VOCAB], np.full(VOCAB, np.nan, "<f4").tobytes()), ("hold NaN or Inf",)),
        ("weights inf", extra("weights", "F32", [VOCAB], np.full(VOCAB, np.inf, "<f4").tobytes()), ("hold NaN or Inf",)),
        ("weights 2-D", extra("weights", "F32", [VOCAB, 1], np.ones(VOCAB, "<f4").tobytes()), ("1-d",)),
        ("weights int", extra("weights", "I32", [VOCAB], np.ones(VOCAB, "<i4").tobytes()), ("dtype",)),
        ("mapping negative", extra("mapping", "I32", [VOCAB], np.full(VOCAB, -1, "<i4").tobytes()), ("negative",)),
        ("mapping out of range", extra("mapping", "I64", [VOCAB], np.full(VOCAB, VOCAB, "<i8").tobytes()), ("row",)),
        ("mapping float", extra("mapping", "F32", [VOCAB], np.zeros(VOCAB, "<f4").tobytes()), ("dtype",)),
        (
            "mapping too short",
            extra("mapping", "I32", [10], np.zeros(10, "<i4").tobytes()),
            ("rows", "does not", "tokenizer"),
        ),
    ]
    for i, (name, raw, frags) in enumerate(cases):
        d = model_dir(root, f"m2v{i:02d}", raw, config=json.dumps({"normalize": True}))
        out.append(Case(f"model2vec/{name}", "load", d, "FormatError", frags, "model.safetensors"))
    good = st_bytes({"model.embed_tokens.weight": e}, tbl)
    idx_cases: list[tuple[str, str | bytes, tuple[str, ...], str]] = [
        ("index not json", "{", ("not valid json",), "index.json"),
        ("index a list", "[]", ("json object",), "index.json"),
        ("weight_map a list", json.dumps({"weight_map": ["a"]}), ("weight_map",), "index.json"),
        (
            "weight_map values ints",
            json.dumps({"weight_map": {"model.embed_tokens.weight": 1}}),
            ("weight_map",),
            "index.json",
        ),
        (
            "shard outside the folder",
            json.dumps({"weight_map": {"model.embed_tokens.weight": "../x.safetensors"}}),
            ("outside",),
            "index.json",
        ),
        (
            "shard missing",
            json.dumps({"weight_map": {"model.embed_tokens.weight": "gone.safetensors"}}),
            ("no such", "not found"),
            "gone.safetensors",
        ),
        (
            "shard is a directory",
            json.dumps({"weight_map": {"model.embed_tokens.weight": "sub"}}),
            ("directory",),
            "sub",
        ),
    ]
    for i, (name, idx, frags, names) in enumerate(idx_cases):
        d = model_dir(root, f"shard{i:02d}", good, st_name="model-00001-of-00001.safetensors")
        (d / "sub").mkdir()
        (d / "model.safetensors.index.json").write_bytes(idx.encode() if isinstance(idx, str) else idx)
        exc = "FileNotFoundError" if name == "shard missing" else "FormatError"
        out.append(Case(f"shards/{name}", "load", d, exc, frags, names))
    return out


# ----------------------------------------------------------------------------------------------- GGUF
def _gguf_str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def gguf_bytes(
    *,
    magic: bytes = b"GGUF",
    version: int = 3,
    kvs: list[bytes] | None = None,
    tensors: list[bytes] | None = None,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    data: bytes | None = None,
    align: int = 32,
) -> bytes:
    """A GGUF file from raw key/value and tensor-info records."""
    kvs = kvs if kvs is not None else [_gguf_str(b"general.architecture") + struct.pack("<I", 8) + _gguf_str(b"llama")]
    tensors = tensors if tensors is not None else [tensor_info()]
    head = magic + struct.pack("<I", version)
    head += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tensors)
    head += bytes(-len(head) % align)
    return head + (bytes(VOCAB * DIM * 4) if data is None else data)


def tensor_info(
    name: bytes = b"token_embd.weight",
    dims: tuple[int, ...] = (DIM, VOCAB),
    ggml_type: int = 0,
    offset: int = 0,
    n_dims: int | None = None,
) -> bytes:
    return (
        _gguf_str(name)
        + struct.pack("<I", len(dims) if n_dims is None else n_dims)
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def _gguf_cases(root: Path) -> list[Case]:
    out: list[Case] = []
    arch = _gguf_str(b"general.architecture") + struct.pack("<I", 8)
    full = gguf_bytes()
    cases: list[tuple[str, bytes, tuple[str, ...]]] = [
        ("bad magic", gguf_bytes(magic=b"GGUG"), ("magic",)),
        ("magic lowercase", gguf_bytes(magic=b"gguf"), ("magic",)),
        ("version 0", gguf_bytes(version=0), ("version",)),
        ("version 1", gguf_bytes(version=1), ("version",)),
        ("version 4", gguf_bytes(version=4), ("version",)),
        ("version big-endian", gguf_bytes(version=3 << 24), ("big-endian",)),
        ("version 2**32-1", gguf_bytes(version=2**32 - 1), ("version",)),
        ("only magic", b"GGUF", ("truncated", "needs")),
        ("3 bytes", b"GGU", ("magic",)),
        ("tensor count huge", gguf_bytes(n_tensors=2**63), ("tensor count",)),
        ("tensor count 2**64-1", gguf_bytes(n_tensors=2**64 - 1), ("tensor count",)),
        ("kv count huge", gguf_bytes(n_kv=2**40), ("metadata count",)),
        ("kv count one too many", gguf_bytes(n_kv=2), ("truncated", "needs", "type", "more than")),
        ("key length past the end", gguf_bytes(kvs=[struct.pack("<Q", 2**40) + b"k"]), ("length", "more than")),
        (
            "value string length past the end",
            gguf_bytes(kvs=[arch[:-4] + struct.pack("<IQ", 8, 2**50) + b"x"]),
            ("length", "more than"),
        ),
        (
            "value string length 2**64-1",
            gguf_bytes(kvs=[arch[:-4] + struct.pack("<IQ", 8, 2**64 - 1)]),
            ("length", "more than"),
        ),
        ("unknown value type", gguf_bytes(kvs=[arch[:-4] + struct.pack("<I", 99) + _gguf_str(b"x")]), ("type",)),
        ("array length huge", gguf_bytes(kvs=[arch[:-4] + struct.pack("<IIQ", 9, 4, 2**60)]), ("more than",)),
        ("array of unknown type", gguf_bytes(kvs=[arch[:-4] + struct.pack("<IIQ", 9, 77, 1) + bytes(8)]), ("type",)),
        (
            "nested arrays",
            gguf_bytes(kvs=[arch[:-4] + struct.pack("<IIQ", 9, 9, 1) * 100 + struct.pack("<IQ", 4, 0)]),
            ("nest", "depth", "array"),
        ),
        (
            "key not utf-8",
            gguf_bytes(kvs=[_gguf_str(b"\xff\xfe") + struct.pack("<I", 4) + bytes(4)]),
            ("utf-8", "utf8"),
        ),
        ("alignment 0", gguf_bytes(kvs=[_gguf_str(b"general.alignment") + struct.pack("<II", 4, 0)]), ("alignment",)),
        ("alignment 3", gguf_bytes(kvs=[_gguf_str(b"general.alignment") + struct.pack("<II", 4, 3)]), ("alignment",)),
        (
            "alignment a string",
            gguf_bytes(kvs=[_gguf_str(b"general.alignment") + struct.pack("<I", 8) + _gguf_str(b"32")]),
            ("alignment",),
        ),
        ("n_dims 0", gguf_bytes(tensors=[tensor_info(dims=(), n_dims=0)]), ("n_dims",)),
        ("n_dims 5", gguf_bytes(tensors=[tensor_info(dims=(1, 1, 1, 1, 1))]), ("n_dims",)),
        ("n_dims 2**32-1", gguf_bytes(tensors=[tensor_info(n_dims=2**32 - 1)]), ("n_dims",)),
        ("dims product overflow", gguf_bytes(tensors=[tensor_info(dims=(2**32, 2**32))]), ("overflow",)),
        ("dims 4-D overflow", gguf_bytes(tensors=[tensor_info(dims=(2**16, 2**16, 2**16, 2**16))]), ("overflow",)),
        ("byte size overflow", gguf_bytes(tensors=[tensor_info(dims=(2**62, 2))]), ("overflow",)),
        ("unknown ggml type", gguf_bytes(tensors=[tensor_info(ggml_type=200)]), ("ggml type",)),
        ("ggml type 2**32-1", gguf_bytes(tensors=[tensor_info(ggml_type=2**32 - 1)]), ("ggml type",)),
        ("row not a block multiple", gguf_bytes(tensors=[tensor_info(ggml_type=2, dims=(DIM + 1, VOCAB))]), ("block",)),
        ("offset past the end", gguf_bytes(tensors=[tensor_info(offset=2**40)]), ("past the end", "end of the file")),
        ("offset 2**64-32", gguf_bytes(tensors=[tensor_info(offset=2**64 - 32)]), ("past the end",)),
        ("offset misaligned", gguf_bytes(tensors=[tensor_info(offset=3)]), ("alignment",)),
        ("data truncated", full[:-1], ("past the end",)),
        ("data missing", gguf_bytes(data=b""), ("past the end",)),
        ("duplicate tensor", gguf_bytes(tensors=[tensor_info(), tensor_info()]), ("twice",)),
        (
            "tensor name length past the end",
            gguf_bytes(tensors=[struct.pack("<Q", 2**33) + b"t"]),
            ("length", "more than"),
        ),
        ("header cut in tensor info", full[:60], ("truncated", "needs", "more than")),
        ("zero bytes", b"", ("magic",)),
    ]
    for i, (name, raw, frags) in enumerate(cases):
        p = root / f"gguf{i:02d}" / "model.gguf"
        p.parent.mkdir(parents=True)
        p.write_bytes(raw)
        out.append(Case(f"gguf/{name}", "inspect", p, "FormatError", frags, "model.gguf"))
        if i % 2 == 0:
            out.append(Case(f"gguf-extract/{name}", "extract", p, "FormatError", frags, "model.gguf"))
    return out


def make_corpus(root: Path) -> list[Case]:
    """Writes every case under `root` (which must be empty or absent) and returns them."""
    root.mkdir(parents=True, exist_ok=True)
    builders: list[Callable[[Path], list[Case]]] = [
        _st_cases,
        _path_cases,
        _tokenizer_cases,
        _config_cases,
        _model2vec_cases,
        _gguf_cases,
    ]
    cases: list[Case] = []
    for b in builders:
        cases += b(root)
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def run_case(case: Case, out_dir: Path) -> None:
    """Calls the case's entry point; the caller checks what it raises."""
    import tokvec

    if case.api == "load":
        m = tokvec.load(case.path, **case.kwargs)
        m.embed(["a test text"])  # a load that wrongly succeeds must at least not crash here
    elif case.api == "inspect":
        tokvec.inspect(case.path, **case.kwargs)
    elif case.api == "extract":
        shutil.rmtree(out_dir, ignore_errors=True)
        tokvec.extract(case.path, out_dir, **case.kwargs)
    else:
        raise AssertionError(case.api)


if __name__ == "__main__":
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "malformed-corpus")
    print(len(make_corpus(dest)), "cases written to", dest)
