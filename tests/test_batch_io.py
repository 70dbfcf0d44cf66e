"""Batch command line, inputs and outputs: every input format (txt, jsonl, csv, tsv, parquet, stdin, gzip, zstd)
and every output format (npy, safetensors, parquet, jsonl) on real data, streamed in chunks; user mistakes give
one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tokvec
import zstandard
from tokvec.cli import main
from tokvec.textio import EmbeddingWriter, InputError, count_texts, iter_texts, read_all

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STSB_TSV = DATA / "stsb" / "sts-dev.tsv"
SCIFACT = DATA / "scifact" / "corpus.jsonl"
WIKI = DATA / "wikipedia-sentences" / "sentences.tsv"


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def stsb_s1() -> list[str]:
    with open(STSB_TSV, encoding="utf-8", newline="") as f:
        return [r["sentence1"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


@pytest.fixture(scope="module")
def scifact_titles() -> list[str]:
    with open(SCIFACT, encoding="utf-8") as f:
        return [json.loads(line)["title"] for line in f]


@pytest.fixture(scope="module")
def wiki_head(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """The first 3,000 Wikipedia sentences, also written as a .txt file."""
    with open(WIKI, encoding="utf-8", newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        texts = [row[1] for _, row in zip(range(3000), r)]
    p = tmp_path_factory.mktemp("wiki") / "wiki.txt"
    p.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return texts, p


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------------ readers
def test_read_every_format_same_texts(tmp_path: Path, stsb_s1: list[str]) -> None:
    texts = stsb_s1
    (tmp_path / "a.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    with open(tmp_path / "a.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts))
    with open(tmp_path / "a.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([i, t] for i, t in enumerate(texts))
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), tmp_path / "a.parquet")
    raw = (tmp_path / "a.jsonl").read_bytes()
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    assert read_all(str(STSB_TSV), column="sentence1") == texts
    assert read_all(str(tmp_path / "a.txt")) == texts
    assert read_all(str(tmp_path / "a.jsonl"), field="body") == texts
    assert read_all(str(tmp_path / "a.csv"), column="text") == texts
    assert read_all(str(tmp_path / "a.parquet"), column="text") == texts
    assert read_all(str(tmp_path / "b.jsonl.gz"), field="body") == texts
    assert read_all(str(tmp_path / "b.jsonl.zst"), field="body") == texts


def test_chunks_are_bounded_and_in_order(wiki_head: tuple[list[str], Path]) -> None:
    texts, p = wiki_head
    chunks = list(iter_texts(str(p), chunk_size=700))
    assert [len(c) for c in chunks] == [700, 700, 700, 700, 200]
    assert [t for c in chunks for t in c] == texts
    assert count_texts(str(p)) == 3000


def test_crlf_and_no_final_newline(tmp_path: Path) -> None:
    p = tmp_path / "w.txt"
    p.write_bytes(b"one line\r\ntwo line\r\nthree")
    assert read_all(str(p)) == ["one line", "two line", "three"]
    assert count_texts(str(p)) == 3


def test_scifact_jsonl_default_field(scifact_titles: list[str]) -> None:
    texts = read_all(str(SCIFACT))  # field "text": the abstracts
    assert len(texts) == len(scifact_titles) == 5183
    assert read_all(str(SCIFACT), field="title") == scifact_titles


# ------------------------------------------------------------------------------------------------ embed
@pytest.mark.parametrize("suffix", ["npy", "safetensors", "parquet", "jsonl"])
def test_embed_outputs_match_model(tmp_path: Path, suffix: str, model: tokvec.Model, capsys) -> None:
    from safetensors.numpy import load_file

    out = tmp_path / f"e.{suffix}"
    rc, stdout, _ = _run(
        ["embed", str(SCIFACT), "--field", "title", "-o", str(out), "--batch-size", "1000", "--json"], capsys
    )
    assert rc == 0
    summary = json.loads(stdout)
    assert summary["texts"] == 5183 and summary["dim"] == model.dim
    titles = read_all(str(SCIFACT), field="title")
    want = model.embed(titles)
    if suffix == "npy":
        got = np.load(out)
    elif suffix == "safetensors":
        got = load_file(out)["embeddings"]
    elif suffix == "parquet":
        t = pq.read_table(out)
        assert t.column("text").to_pylist() == titles
        got = np.array(t.column("embedding").to_pylist(), np.float32)
    else:
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [r["text"] for r in rows] == titles
        got = np.array([r["embedding"] for r in rows], np.float32)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left behind


def test_embed_empty_input_gives_empty_arrays(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    assert _run(["embed", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "e.npy")], capsys)[0] == 0
    assert np.load(tmp_path / "e.npy").shape == (0, tokvec.load().dim)


def test_embed_stdin_gzip_and_python_m(tmp_path: Path, wiki_head: tuple[list[str], Path], model) -> None:
    texts, p = wiki_head
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    data = gzip.compress(p.read_bytes())
    r = subprocess.run(
        [sys.executable, "-m", "tokvec", "embed", "-", "-o", str(tmp_path / "s.npy"), "--json"],
        input=data,
        capture_output=True,
        env=env,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["texts"] == 3000
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), model.embed(texts))
    # plain stdin as JSONL with --format
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts[:50]).encode()
    r = subprocess.run(
        [sys.executable, "-m", "tokvec", "embed", "-", "--format", "jsonl", "-o", str(tmp_path / "j.npy"), "-q"],
        input=lines,
        capture_output=True,
        env=env,
        check=False,
    )
    assert r.returncode == 0 and r.stderr == b""
    np.testing.assert_array_equal(np.load(tmp_path / "j.npy"), model.embed(texts[:50]))


def test_no_progress_bar_when_not_a_tty(wiki_head, tmp_path: Path) -> None:
    _, p = wiki_head
    r = subprocess.run(
        [sys.executable, "-m", "tokvec", "embed", str(p), "-o", str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("embedded 3000 texts")  # one summary line, no bar
    assert r.stdout == ""


def test_interrupted_write_leaves_nothing(tmp_path: Path, model) -> None:
    out = tmp_path / "e.npy"
    out.write_bytes(b"previous")
    with pytest.raises(RuntimeError), EmbeddingWriter(str(out), model.dim) as w:
        w.write(model.embed(["a", "b"]))
        raise RuntimeError("stop")
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy"]


# ------------------------------------------------------------------------------------------------ mistakes
def _bad(tmp_path: Path) -> dict[str, Path]:
    p = {}
    p["badjson"] = tmp_path / "bad.jsonl"
    p["badjson"].write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    p["nofield"] = tmp_path / "nofield.jsonl"
    p["nofield"].write_text('{"body": "x"}\n', encoding="utf-8")
    p["notstr"] = tmp_path / "notstr.jsonl"
    p["notstr"].write_text('{"text": 3}\n', encoding="utf-8")
    p["latin1"] = tmp_path / "latin1.txt"
    p["latin1"].write_bytes("café\n".encode("latin-1"))
    p["badgz"] = tmp_path / "trunc.txt.gz"
    p["badgz"].write_bytes(gzip.compress(b"hello\n" * 1000)[:40])
    p["badzst"] = tmp_path / "junk.txt.zst"
    p["badzst"].write_bytes(b"this is not zstd at all")
    p["badpq"] = tmp_path / "bad.parquet"
    p["badpq"].write_bytes(b"PAR1 nope")
    p["intpq"] = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), p["intpq"])
    p["dir"] = tmp_path / "adir.txt"
    p["dir"].mkdir()
    return p


@pytest.mark.parametrize(
    ("case", "argv", "needle"),
    [
        ("missing column", ["{STSB}", "--column", "nope"], "no column 'nope' (columns: genre"),
        ("ambiguous column", ["{STSB}"], "pass --column"),
        ("missing file", ["{tmp}/does-not-exist.txt"], "no such file"),
        ("bad json line", ["{badjson}"], "bad.jsonl:2: not a JSON line"),
        ("missing field", ["{nofield}"], "no field 'text' (fields: body)"),
        ("non-string field", ["{notstr}"], "field 'text' is a int"),
        ("not utf-8", ["{latin1}"], "not valid UTF-8"),
        ("truncated gzip", ["{badgz}"], "corrupt or truncated compressed data"),
        ("corrupt zstd", ["{badzst}"], "corrupt or truncated zstd data"),
        ("corrupt parquet", ["{badpq}"], "not a readable Parquet file"),
        ("non-string parquet column", ["{intpq}"], "not string"),
        ("folder as input", ["{dir}"], "is a folder"),
    ],
)
def test_embed_user_mistakes(tmp_path: Path, capsys, case: str, argv: list[str], needle: str) -> None:
    paths = {k: str(v) for k, v in _bad(tmp_path).items()}
    paths.update(STSB=str(STSB_TSV), tmp=str(tmp_path))
    argv = [a.format(**paths) for a in argv]
    rc, _out, err = _run(["embed", *argv, "-o", str(tmp_path / "o.npy")], capsys)
    assert rc == 2, case
    assert needle in err, (case, err)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o.npy").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.npy")]


def test_bad_output_suffix_and_folder(tmp_path: Path, capsys) -> None:
    rc, _, err = _run(["embed", str(SCIFACT), "-o", str(tmp_path / "o.csv")], capsys)
    assert rc == 2 and "unknown output format" in err
    rc, _, err = _run(["embed", str(SCIFACT), "-o", str(tmp_path / "nodir" / "o.npy")], capsys)
    assert rc == 2 and "does not exist" in err


def test_no_traceback_in_subprocess(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tokvec", "dedup", str(STSB_TSV), "--column", "sentence1", "--threshold", "1.5"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "tokvec dedup: error: --threshold must be a number in [-1, 1] or auto, got '1.5'"
    r = subprocess.run(
        [sys.executable, "-m", "tokvec", "embed", str(tmp_path / "x.txt"), "-o", str(tmp_path / "o.npy")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no such file" in r.stderr


def test_input_error_is_a_format_error() -> None:
    assert issubclass(InputError, tokvec.FormatError) and issubclass(InputError, ValueError)
