"""Batch jobs never lose or bend the user's data: whole records out, identical texts first, cosine for every
model, every bad input refused before the work, no debris after a signal. One test (or more) per case of the
batch-integrity issue, on real files, real models and real subprocess signals."""

from __future__ import annotations

import csv
import gzip
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tokvec
from conftest import default_signals
from tokvec.cli import main
from tokvec.dedup import DedupIndex

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STSB = DATA / "stsb" / "sts-dev.tsv"
WIKI = DATA / "wikipedia-sentences" / "sentences.tsv"
DEFAULT = Path(tokvec.__file__).parent / "models" / "default"


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def stsb() -> list[dict[str, str]]:
    with open(STSB, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def wiki() -> list[str]:
    with open(WIKI, encoding="utf-8", newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        return [row[1] for _, row in zip(range(4000), r)]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _tokvec(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokvec", *argv], capture_output=True, check=False, **kw)


def _records(stsb: list[dict[str, str]]) -> list[dict]:
    """STS-B dev sentences as records with extra fields; every sentence twice (an exact copy under another id)."""
    out = []
    for i, r in enumerate(stsb[:600]):
        out.append({"id": i, "text": r["sentence1"], "url": f"https://example.org/{i}", "meta": {"genre": r["genre"]}})
        out.append({"id": 10_000 + i, "text": r["sentence1"], "url": None, "score": float(r["score"])})
    return out


# ------------------------------------------------------------------------------------------------ 1. cosine always
def _model2vec_copy(tmp_path: Path, normalize: bool) -> Path:
    d = tmp_path / f"m2v-{normalize}"
    d.mkdir()
    shutil.copy(DEFAULT / "model.safetensors", d / "model.safetensors")
    shutil.copy(DEFAULT / "tokenizer.json", d / "tokenizer.json")
    (d / "config.json").write_text(json.dumps({"model_type": "model2vec", "normalize": normalize}), encoding="utf-8")
    return d


def test_normalize_false_model_dedups_as_cosine(tmp_path: Path, wiki: list[str], capsys) -> None:
    raw = tokvec.load(_model2vec_copy(tmp_path, False))
    unit = tokvec.load(_model2vec_copy(tmp_path, True))
    assert raw.format == unit.format == "model2vec" and not raw.normalize and unit.normalize
    texts = wiki[:2000]
    E = raw.embed(texts)
    assert np.abs(np.linalg.norm(E, axis=1) - 1).max() > 0.1  # really not normalized
    want = unit.deduplicate(texts, 0.8, return_indices=True)
    assert raw.deduplicate(texts, 0.8, return_indices=True) == want
    res = raw.deduplicate(texts, 0.8, explain=True)
    assert float(np.nanmax(res.score)) <= 1.0 + 1e-6
    # search and similarity are cosines too, bit for bit those of the normalized model
    assert raw.similarity(texts[0], texts[1]) == unit.similarity(texts[0], texts[1])
    assert raw.rank(texts[0], texts[:50]) == unit.rank(texts[0], texts[:50])
    assert raw.topk(texts[0], texts[:500], k=5) == unit.topk(texts[0], texts[:500], k=5)
    # the command line
    src = tmp_path / "w.txt"
    src.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    for m in ("False", "True"):
        rc, _, err = _run(["dedup", str(src), "--model", str(tmp_path / f"m2v-{m}"), "--threshold", "0.8",
                           "-o", str(tmp_path / f"k{m}.txt"), "--report", str(tmp_path / f"r{m}.jsonl")], capsys)
        assert rc == 0, err
    assert (tmp_path / "kFalse.txt").read_bytes() == (tmp_path / "kTrue.txt").read_bytes()
    scores = [json.loads(x)["score"] for x in (tmp_path / "rFalse.jsonl").read_text().splitlines()]
    assert len(scores) == len(texts) - len(want) and max(scores) <= 1.0


# ------------------------------------------------------------------------------------------------ 2. whole records
def test_jsonl_dedup_writes_whole_lines_and_row_numbers(tmp_path: Path, stsb, capsys) -> None:
    recs = _records(stsb)
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in recs]
    lines.insert(7, "\n")  # a blank line: no record, but a row (the rows after it keep their line numbers)
    lines.insert(100, "  \r\n")
    src = tmp_path / "d.jsonl"
    src.write_text("".join(lines), encoding="utf-8")
    rc, _, err = _run(["dedup", str(src), "-o", str(tmp_path / "k.jsonl"), "--report", str(tmp_path / "r.jsonl"),
                       "--threshold", "0.9"], capsys)
    assert rc == 0, err
    assert "2 blank lines" in err
    report = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()]
    removed = {r["index"] for r in report}
    raw = src.read_bytes().split(b"\n")
    kept_rows = [i for i, b in enumerate(raw[:-1]) if b.strip() and i not in removed]
    assert (tmp_path / "k.jsonl").read_bytes() == b"".join(raw[i] + b"\n" for i in kept_rows)  # byte for byte
    for r in report:  # row numbers are input lines (0-based)
        assert json.loads(raw[r["index"]])["text"] == r["text"]
        assert json.loads(raw[r["duplicate_of"]])["text"] == r["kept_text"]
        assert r["duplicate_of"] in kept_rows
    # every exact copy (the second record of each pair) was removed: as an identical text of its original when
    # the original was kept, else as the original was (same vector, same kept text)
    row_of = {json.loads(b)["id"]: i for i, b in enumerate(raw) if b.strip()}
    by_row = {r["index"]: r for r in report}
    copies = [(row_of[k], row_of[k - 10_000]) for k in row_of if k >= 10_000]
    assert {c for c, _ in copies} <= removed
    for c, orig in copies:
        if orig in kept_rows:
            assert by_row[c]["match"] == "text" and by_row[c]["score"] == 1.0 and by_row[c]["duplicate_of"] == orig
        else:
            assert {k: by_row[c][k] for k in ("duplicate_of", "score", "match")} == {
                k: by_row[orig][k] for k in ("duplicate_of", "score", "match")}
    assert sum(by_row[c]["match"] == "text" for c, _ in copies) > 400


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_tsv_dedup_writes_whole_rows_same_dialect(tmp_path: Path, stsb, capsys, fmt: str) -> None:
    recs = _records(stsb)
    src = tmp_path / f"d.{fmt}"
    with open(src, "w", encoding="utf-8", newline="") as f:
        if fmt == "csv":
            w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\r\n")  # a dialect of its own
        else:  # TSV has no quoting: fields are joined by tabs as they are
            w = None
        rows = [["id", "text", "url", "score"]]
        for r in recs:
            text = r["text"] + ("\nwith a second line" if fmt == "csv" and r["id"] == 5 else "")
            rows.append([r["id"], text, r["url"] or "", r.get("score", "")])
        if w is not None:
            w.writerows(rows)
        else:
            f.writelines("\t".join(map(str, x)) + "\n" for x in rows)
    rc, _, err = _run(["dedup", str(src), "--column", "text", "-o", str(tmp_path / f"k.{fmt}"),
                       "--report", str(tmp_path / "r.jsonl")], capsys)
    assert rc == 0, err
    report = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()]
    removed = {r["index"] for r in report}
    with open(src, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t" if fmt == "tsv" else ",",
                               quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL))
    header, data = rows[0], rows[1:]
    with open(tmp_path / f"k.{fmt}", encoding="utf-8", newline="") as f:
        out = list(csv.reader(f, delimiter="\t" if fmt == "tsv" else ",",
                              quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL))
    assert out[0] == header and out[1:] == [r for i, r in enumerate(data) if i not in removed]
    # same dialect: the kept rows' bytes are the input's bytes
    raw_in = src.read_bytes()
    raw_out = (tmp_path / f"k.{fmt}").read_bytes()
    assert raw_out.startswith(raw_in[: raw_in.index(b"\n") + 1])
    if fmt == "csv":
        assert b'"5","' in raw_out and b"\r\n" in raw_out and b'"with a second line' not in raw_out.replace(
            b'\nwith a second line', b"")  # the multi-line field kept as one record
    assert len(removed) >= 600


def test_parquet_dedup_keeps_schema_and_rows(tmp_path: Path, stsb, capsys) -> None:
    recs = _records(stsb)
    table = pa.table({
        "id": pa.array([r["id"] for r in recs], pa.int64()),
        "text": pa.array([r["text"] if r["id"] != 3 else None for r in recs], pa.large_string()),
        "url": [r["url"] for r in recs],
        "vec": pa.array([[float(r["id"]), 1.0] for r in recs], pa.list_(pa.float32(), 2)),
    }).replace_schema_metadata({"origin": "test"})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=250, compression="zstd")
    rc, _, err = _run(["dedup", str(tmp_path / "d.parquet"), "--column", "text", "-o", str(tmp_path / "k.parquet"),
                       "--report", str(tmp_path / "r.jsonl"), "--batch-size", "100"], capsys)
    assert rc == 0, err
    removed = {json.loads(x)["index"] for x in (tmp_path / "r.jsonl").read_text().splitlines()}
    out = pq.read_table(tmp_path / "k.parquet")
    assert out.schema == table.schema and out.schema.metadata[b"origin"] == b"test"
    keep = [i for i in range(table.num_rows) if i not in removed]
    assert out.equals(table.take(pa.array(keep)))
    assert pq.ParquetFile(tmp_path / "k.parquet").metadata.row_group(0).column(0).compression == "ZSTD"
    assert [r["id"] for r in recs].index(3) in keep  # the null text is an empty text: kept


def test_txt_dedup_is_byte_for_byte_and_other_kinds_refused(tmp_path: Path, capsys) -> None:
    src = tmp_path / "d.txt"
    src.write_bytes(b"alpha beta\r\ncarriage\rreturn inside\nalpha beta\n\n\nlast line without newline")
    rc, _, err = _run(["dedup", str(src), "-o", str(tmp_path / "k.txt")], capsys)
    assert rc == 0, err
    # the last line gets the line ending of the file's first line
    assert (tmp_path / "k.txt").read_bytes() == b"alpha beta\r\ncarriage\rreturn inside\n\n\nlast line without newline\r\n"
    rc, _, err = _run(["dedup", str(src), "-o", str(tmp_path / "k.parquet")], capsys)
    assert rc == 2 and "written whole as .txt" in err
    # a .jsonl of a .txt input holds row numbers and texts
    rc, _, err = _run(["dedup", str(src), "-o", str(tmp_path / "k.jsonl")], capsys)
    assert rc == 0, err
    got = [json.loads(x) for x in (tmp_path / "k.jsonl").read_text().splitlines()]
    assert got[0] == {"index": 0, "text": "alpha beta"} and got[1]["text"] == "carriage\rreturn inside"
    assert [g["index"] for g in got] == [0, 1, 3, 4, 5]


def test_stdin_records_and_compressed_output(tmp_path: Path, stsb) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in _records(stsb)[:200]).encode()
    r = _tokvec("dedup", "-", "--format", "jsonl", "-o", str(tmp_path / "k.jsonl.gz"), "-q", input=lines)
    assert r.returncode == 0, r.stderr
    out = gzip.decompress((tmp_path / "k.jsonl.gz").read_bytes()).splitlines(keepends=True)
    inp = lines.splitlines(keepends=True)
    assert 0 < len(out) <= 100 and out == [x for x in inp if x in set(out)]  # whole lines, input order
    assert all(json.loads(x)["id"] < 10_000 for x in out)  # no exact copy kept


def test_rank_output_selects_whole_rows(tmp_path: Path, capsys) -> None:
    src = DATA / "scifact" / "corpus.jsonl"
    rc, out, err = _run(["rank", "effects of aspirin on cancer", str(src), "--field", "title", "-k", "3",
                         "-o", str(tmp_path / "top.jsonl")], capsys)
    assert rc == 0, err
    raw = src.read_bytes().split(b"\n")
    got = (tmp_path / "top.jsonl").read_bytes().split(b"\n")[:-1]
    titles = [json.loads(g)["title"] for g in got]
    m = tokvec.load()
    docs = [json.loads(x)["title"] for x in raw if x.strip()]
    assert titles == m.topk("effects of aspirin on cancer", docs, k=3)
    assert all(g in raw for g in got)  # whole lines, every field


# ------------------------------------------------------------------------------------------------ 3, 4, 11: reading
@pytest.mark.parametrize(("fmt", "row", "needle"), [
    ("tsv", b"1\thello\tworld and more\n", ":3: 3 fields, the header has 2 (a text holding a tab?"),
    ("tsv", b"1\n", ":3: 1 fields, the header has 2"),
    ("csv", b"1,hello,world\n", ":3: 3 fields, the header has 2"),
])
def test_wrong_number_of_fields_is_an_error(tmp_path: Path, capsys, fmt: str, row: bytes, needle: str) -> None:
    sep = b"\t" if fmt == "tsv" else b","
    src = tmp_path / f"x.{fmt}"
    src.write_bytes(b"id" + sep + b"text\n0" + sep + b"fine\n" + row)
    rc, _, err = _run(["dedup", str(src), "--column", "text", "-o", str(tmp_path / "k.txt")], capsys)
    assert rc == 2 and f"{src}{needle}" in err, err
    assert not (tmp_path / "k.txt").exists()


def test_lone_cr_stays_inside_a_txt_line(tmp_path: Path, capsys, model) -> None:
    src = tmp_path / "cr.txt"
    src.write_bytes(b"hello\rworld\nfoo bar\r\nlast")
    rc, _, err = _run(["cluster", str(src), "-k", "1", "-o", str(tmp_path / "labels.txt")], capsys)
    assert rc == 0, err
    assert (tmp_path / "labels.txt").read_text().splitlines() == ["0", "0", "0"]  # 3 lines in, 3 labels out
    assert tokvec.textio.read_all(str(src)) == ["hello\rworld", "foo bar", "last"]
    rc, _, err = _run(["embed", str(src), "-o", str(tmp_path / "e.npy")], capsys)
    assert rc == 0 and np.load(tmp_path / "e.npy").shape[0] == 3
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy")[0], model.embed("hello\rworld"))


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "tsv"])
def test_utf8_bom_is_dropped(tmp_path: Path, capsys, fmt: str) -> None:
    body = {
        "txt": "first text\nsecond\n",
        "jsonl": '{"text": "first text"}\n{"text": "second"}\n',
        "csv": "text,id\nfirst text,1\nsecond,2\n",
        "tsv": "text\tid\nfirst text\t1\nsecond\t2\n",
    }[fmt]
    src = tmp_path / f"b.{fmt}"
    src.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert tokvec.textio.read_all(str(src), column="text" if fmt in ("csv", "tsv") else None) == ["first text", "second"]
    argv = ["dedup", str(src), "-o", str(tmp_path / f"k.{fmt}")] + (["--column", "text"] if fmt in ("csv", "tsv") else [])
    rc, _, err = _run(argv, capsys)
    assert rc == 0, err
    assert (tmp_path / f"k.{fmt}").read_bytes() == src.read_bytes()  # nothing removed: the same file, BOM included


def test_ten_megabyte_csv_field_reads(tmp_path: Path, capsys) -> None:
    big = "word " * 2_000_000
    src = tmp_path / "big.csv"
    with open(src, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["id", "text"], [1, big], [2, "small"]])
    assert [len(t) for t in tokvec.textio.read_all(str(src), column="text")] == [len(big), 5]
    rc, _, err = _run(["dedup", str(src), "--column", "text", "-o", str(tmp_path / "k.csv")], capsys)
    assert rc == 0, err
    assert (tmp_path / "k.csv").read_bytes() == src.read_bytes()


def test_invalid_utf8_names_line_or_is_replaced_and_counted(tmp_path: Path, capsys) -> None:
    src = tmp_path / "bad.txt"
    src.write_bytes(b"a cat on a mat\nstock markets fell sharply\ncaf\xe9 au lait\nthe river froze in winter\n")
    rc, _, err = _run(["dedup", str(src), "-o", str(tmp_path / "k.txt")], capsys)
    assert rc == 2 and f"{src}:3: not valid UTF-8 (byte 0xe9 at column 4)" in err and "--encoding-errors" in err
    rc, out, err = _run(["dedup", str(src), "-o", str(tmp_path / "k.txt"), "--encoding-errors", "replace", "--json"],
                        capsys)
    assert rc == 0, err
    assert json.loads(out)["replaced"] == 1 and "1 row with invalid UTF-8 replaced" in err
    assert tokvec.textio.read_all(str(src), encoding_errors="replace")[2] == "caf\ufffd au lait"
    # records are copied as they were, invalid byte included
    assert (tmp_path / "k.txt").read_bytes() == src.read_bytes()
    utf16 = tmp_path / "u16.txt"
    utf16.write_bytes("hello\n".encode("utf-16"))
    rc, _, err = _run(["embed", str(utf16), "-o", str(tmp_path / "e.npy")], capsys)
    assert rc == 2 and "UTF-16 byte-order mark" in err


def test_bad_json_line_message_keeps_the_position(tmp_path: Path, capsys) -> None:
    src = tmp_path / "j.jsonl"
    src.write_text('{"text": "ok"}\n{"text": "a\tb"}\n', encoding="utf-8")
    rc, _, err = _run(["embed", str(src), "-o", str(tmp_path / "e.npy")], capsys)
    assert rc == 2 and f"{src}:2: not a JSON line (Invalid control character at at column 12)" in err, err


# ------------------------------------------------------------------------------------------------ 5, 6, 13: identical
def test_identical_zero_vector_texts_are_duplicates(model, tmp_path: Path, capsys) -> None:
    assert model.deduplicate(["😀"] * 3, 0.0) == ["😀"]
    assert not model.embed("😀").any()  # the zero vector: no score could find these
    src = tmp_path / "emoji.txt"
    src.write_text("😀\n😀\n🎉🎉\n😀\n🎉🎉\n\n\n \n", encoding="utf-8")
    rc, out, err = _run(["dedup", str(src), "--threshold", "0.5", "-o", str(tmp_path / "k.txt"), "--json"], capsys)
    assert rc == 0, err
    info = json.loads(out)
    assert (tmp_path / "k.txt").read_text(encoding="utf-8") == "😀\n🎉🎉\n\n\n \n"  # empty texts: kept, each of them
    assert info["removed_identical"] == 3 and info["empty"] == 3 and info["removed_empty"] == 0
    rc, out, err = _run(["dedup", str(src), "--threshold", "0.5", "-o", str(tmp_path / "k.txt"), "--drop-empty",
                         "--report", str(tmp_path / "r.jsonl"), "--json"], capsys)
    assert rc == 0 and (tmp_path / "k.txt").read_text(encoding="utf-8") == "😀\n🎉🎉\n"
    rep = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rep if r["match"] == "empty"] == [5, 6, 7]


def test_threshold_one_means_identical_texts_only(model, stsb) -> None:
    distinct = sorted({r["sentence1"] for r in stsb})[:400]
    docs = distinct + distinct[:206]  # 206 exact duplicates
    rng = np.random.default_rng(0)
    docs = [docs[i] for i in rng.permutation(len(docs))]
    kept = model.deduplicate(docs, 1.0)
    assert len(kept) == 400 and sorted(kept) == distinct
    res = model.deduplicate(docs, 1.0, explain=True)
    assert res.summary()["removed_identical"] == 206 and res.exact.sum() == 206
    # case variants share a vector under an uncased tokenizer, but are not identical texts
    assert model.deduplicate(["Hello there", "hello there", "HELLO THERE"], 1.0) == ["Hello there", "hello there",
                                                                                       "HELLO THERE"]
    assert model.deduplicate(["Hello there", "hello there"], 0.99) == ["Hello there"]


def test_copy_of_a_removed_text_is_explained_by_the_kept_text(model) -> None:
    docs = ["a cat sat on the mat", "a cat sat on the mat!", "a dog", "a cat sat on the mat!"]
    res = model.deduplicate(docs, 0.9, explain=True)
    assert res.kept.tolist() == [0, 2]
    rows = {r["index"]: r for r in res.explain()}
    assert rows[1]["duplicate_of"] == 0 and rows[1]["match"] == "vector"
    assert rows[3]["duplicate_of"] == 0 and rows[3]["score"] == rows[1]["score"]  # same text, same kept text


def _peak_rss_mb(code: str) -> float:
    r = subprocess.run([sys.executable, "-c", code + "\nimport resource,sys;"
                        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
                       capture_output=True, text=True, check=True)
    return float(r.stdout.split()[-1])


def test_many_identical_lines_cost_what_one_does(tmp_path: Path, capsys) -> None:
    src = tmp_path / "same.txt"
    src.write_text("the very same line of text\n" * 50_000, encoding="utf-8")
    rc, out, err = _run(["dedup", str(src), "-o", str(tmp_path / "k.txt"), "--json"], capsys)
    assert rc == 0, err
    info = json.loads(out)
    assert info["kept"] == 1 and info["removed_identical"] == 49_999
    rc, out, _ = _run(["dedup", str(src), "--threshold", "auto"], capsys)
    assert rc == 0 and out.splitlines()[1:] == [f"{t:g}\t1\t49999\t0" for t in [0.8 + 0.02 * k for k in range(10)]]
    # memory: one vector, not 50,000 x 50,000 / 2 pairs (1.3 GB before)
    base = _peak_rss_mb("import tokvec; tokvec.load().embed(['x'])")
    peak = _peak_rss_mb(f"from tokvec.cli import main; main(['dedup', {str(src)!r}, '-o', {str(tmp_path / 'k2.txt')!r},"
                        " '-q'])")
    assert peak - base < 150, (base, peak)


# ------------------------------------------------------------------------------------------------ 7: input = output
@pytest.mark.parametrize("argv", [
    ["cluster", "{x}", "-k", "2", "-o", "{x}"],
    ["dedup", "{x}", "-o", "{x}"],
    ["dedup", "{j}", "-o", "{tmp}/k.jsonl", "--report", "{j}"],
    ["rank", "query", "{x}", "-o", "{x}"],
    ["split", "{x}", "-o", "{x}"],
    ["embed", "{j}", "-o", "{j}"],
    ["dedup", "{x}", "-o", "{link}"],
    ["dedup", "{x}", "-o", "{tmp}/k.jsonl", "--report", "{tmp}/k.jsonl"],
])
def test_output_that_is_an_input_is_refused(tmp_path: Path, capsys, argv: list[str]) -> None:
    x = tmp_path / "x.txt"
    x.write_text("one text\nanother text\n", encoding="utf-8")
    j = tmp_path / "x.jsonl"
    j.write_text('{"text": "a"}\n', encoding="utf-8")
    (tmp_path / "link.txt").symlink_to(x)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    args = [a.format(x=x, j=j, tmp=tmp_path, link=tmp_path / "link.txt") for a in argv]
    rc, _, err = _run(args, capsys)
    assert rc == 2 and ("is the input" in err or "are the same file" in err), err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_symlinked_output_stays_a_link(tmp_path: Path, capsys) -> None:
    x = tmp_path / "x.txt"
    x.write_text("a cat on a mat\nstock markets fell sharply\na cat on a mat\n", encoding="utf-8")
    real = tmp_path / "real" / "kept.txt"
    real.parent.mkdir()
    real.write_text("old", encoding="utf-8")
    (tmp_path / "kept.txt").symlink_to(real)
    rc, _, err = _run(["dedup", str(x), "-o", str(tmp_path / "kept.txt")], capsys)
    assert rc == 0, err
    assert (tmp_path / "kept.txt").is_symlink() and real.read_text() == "a cat on a mat\nstock markets fell sharply\n"
    assert sorted(p.name for p in real.parent.iterdir()) == ["kept.txt"]


# ------------------------------------------------------------------------------------------------ 9: before the work
def test_output_problems_fail_before_reading(tmp_path: Path, capsys) -> None:
    # line 3 of the input is broken: an error about an output proves the output was checked first
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a"}\n{"text": "b"}\n{broken\n', encoding="utf-8")
    cases = [
        (["dedup", "-o", "{t}/k.txt", "--report", "{t}/missing/r.jsonl"], "folder"),
        (["dedup", "-o", "{t}/k.txt", "--report", "{t}/r.txt"], "unknown output format"),
        (["dedup", "-o", "{t}/k.txt", "--report-html", "{t}/r.htm"], "unknown output format"),
        (["dedup", "-o", "{t}/k.txt", "--index", "{t}/nodir/i.safetensors"], "folder"),
        (["dedup", "-o", "{t}/adir.txt"], "is a folder"),
        (["cluster", "-k", "2", "-o", "{t}/l.txt", "--centroids", "{t}/missing/c.npy"], "folder"),
        (["cluster", "-k", "2", "-o", "{t}/l.txt", "--centroids", "{t}/c.txt"], "unknown output format"),
        (["split", "-o", "{t}/missing/c.jsonl"], "folder"),
        (["embed", "-o", "{t}/missing/e.npy"], "folder"),
    ]
    (tmp_path / "adir.txt").mkdir()
    for argv, needle in cases:
        args = [argv[0], str(src), *[a.format(t=tmp_path) for a in argv[1:]]]
        rc, _, err = _run(args, capsys)
        assert rc == 2 and needle in err and "broken" not in err and "JSON" not in err, (argv, err)
        leftovers = sorted(p.name for p in tmp_path.iterdir())
        assert leftovers == ["adir.txt", "in.jsonl"], (argv, leftovers)


def test_existing_index_is_checked_before_reading(tmp_path: Path, capsys, model, wiki) -> None:
    a = tmp_path / "a.txt"
    a.write_text("".join(t + "\n" for t in wiki[:300]), encoding="utf-8")
    idx = tmp_path / "i.safetensors"
    assert main(["dedup", str(a), "--index", str(idx), "-o", str(tmp_path / "k.txt"), "-q"]) == 0
    meta = DedupIndex.load(idx).metadata
    assert meta["model_fingerprint"] == model.fingerprint and meta["threshold"] == "0.9"
    bad = tmp_path / "b.jsonl"
    bad.write_text("{broken\n", encoding="utf-8")
    rc, _, err = _run(["dedup", str(bad), "--index", str(idx), "-o", str(tmp_path / "k2.txt"), "--threshold", "0.8"],
                      capsys)
    assert rc == 2 and "another threshold (the index was built at 0.9, this run uses 0.8)" in err, err
    # another model with the same dimension: one row of the table changed
    other = tmp_path / "other"
    shutil.copytree(DEFAULT, other)
    from safetensors.numpy import load_file, save_file

    t = load_file(other / "model.safetensors")
    t["embeddings"][1000] = -t["embeddings"][1000]
    save_file(t, other / "model.safetensors")
    rc, _, err = _run(["dedup", str(bad), "--index", str(idx), "--model", str(other), "-o", str(tmp_path / "k2.txt")],
                      capsys)
    assert rc == 2 and "made with another model" in err, err
    # an index from before fingerprints
    DedupIndex(np.ones((2, model.dim), np.float32) / 16, {"threshold": "0.9"}).save(tmp_path / "old.safetensors")
    rc, _, err = _run(["dedup", str(bad), "--index", str(tmp_path / "old.safetensors"), "-o", str(tmp_path / "k3.txt")],
                      capsys)
    assert rc == 2 and "no model fingerprint" in err
    assert not (tmp_path / "k2.txt").exists() and not (tmp_path / "k3.txt").exists()


def test_index_remembers_identical_texts_across_batches(tmp_path: Path, capsys, model) -> None:
    idx = tmp_path / "i.safetensors"
    batches = [["a text", "😀", "another text"], ["😀", "a text", "new text", ""]]
    kept = []
    for k, b in enumerate(batches):
        (tmp_path / f"{k}.txt").write_text("".join(t + "\n" for t in b), encoding="utf-8")
        assert main(["dedup", str(tmp_path / f"{k}.txt"), "--index", str(idx), "--threshold", "1.0",
                     "-o", str(tmp_path / f"k{k}.txt"), "-q"]) == 0
        kept += (tmp_path / f"k{k}.txt").read_text(encoding="utf-8").splitlines()
    assert kept == model.deduplicate(batches[0] + batches[1], 1.0)
    assert DedupIndex.load(idx).size == 5


# ------------------------------------------------------------------------------------------------ 10: signals
def _wait_for(cond, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize("cmd", [["embed", "-", "-o", "{d}/e.npy"], ["dedup", "-", "-o", "{d}/k.txt",
                                                                     "--report", "{d}/r.jsonl"]])
def test_signal_leaves_no_temporary_files(tmp_path: Path, sig: int, cmd: list[str], wiki) -> None:
    """The job reads stdin, which stays open: the signal arrives while it waits, with its temporary
    outputs created. It must exit with the signal's status and leave the folder as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "k.txt").write_text("previous", encoding="utf-8")
    # default actions in the child, whatever this run inherited (the next test checks an ignored SIGHUP)
    p = subprocess.Popen([sys.executable, "-m", "tokvec", *[c.format(d=out) for c in cmd], "-q"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=default_signals)  # noqa: PLW1509
    assert p.stdin is not None
    p.stdin.write("".join(t + "\n" for t in wiki[:2000]).encode())
    p.stdin.flush()
    _wait_for(lambda: any(x.name.endswith(".tmp") for x in out.iterdir()), "the temporary output")
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig if sig != signal.SIGINT else p.returncode == 130, err
    assert b"no output written" in err and b"Traceback" not in err
    assert sorted(x.name for x in out.iterdir()) == ["k.txt"] and (out / "k.txt").read_text() == "previous"


def test_an_ignored_sighup_stays_ignored(tmp_path: Path, wiki) -> None:
    """`nohup tokvec dedup ...`: SIGHUP arrives ignored, and the closed terminal's SIGHUP must not stop the job. It
    finishes and commits its outputs."""
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "tokvec", "dedup", "-", "-o", str(out / "k.txt"), "-q"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # noqa: PLW1509
    assert p.stdin is not None
    texts = wiki[:2000]
    p.stdin.write("".join(t + "\n" for t in texts).encode())
    p.stdin.flush()
    _wait_for(lambda: any(x.name.endswith(".tmp") for x in out.iterdir()), "the temporary output")
    p.send_signal(signal.SIGHUP)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    kept = (out / "k.txt").read_text(encoding="utf-8").splitlines()
    assert 0 < len(kept) <= len(texts) and set(kept) <= set(texts)
    assert not [x for x in out.iterdir() if x.name.endswith(".tmp")]


def test_disk_full_names_the_output_and_leaves_nothing(tmp_path: Path, wiki) -> None:
    """RLIMIT_FSIZE makes writes past 64 KB fail as a full disk would (EFBIG instead of ENOSPC)."""
    src = tmp_path / "w.txt"
    src.write_text("".join(t + "\n" for t in wiki), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    for argv in (["dedup", str(src), "-o", str(out / "kept.txt"), "--report", str(out / "r.jsonl"), "--threshold",
                  "0.5"], ["embed", str(src), "-o", str(out / "e.npy")]):
        r = subprocess.run([sys.executable, "-m", "tokvec", *argv], capture_output=True, text=True,
                           preexec_fn=limit, check=False)
        assert r.returncode == 2 and "File too large" in r.stderr and "Traceback" not in r.stderr, r.stderr
        name = r.stderr.split("error: ")[1].split(":")[0]
        assert name in (str(out / "kept.txt"), str(out / "r.jsonl"), str(out / "e.npy")), r.stderr
        assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------------------------ the report page
def test_report_html_from_the_command_line(tmp_path: Path, capsys, stsb) -> None:
    src = tmp_path / "s.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records(stsb)), encoding="utf-8")
    rc, _, err = _run(["dedup", str(src), "--threshold", "0.85", "-o", str(tmp_path / "k.jsonl"),
                       "--report-html", str(tmp_path / "r.html")], capsys)
    assert rc == 0, err
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Content-Security-Policy" in page and "threshold 0.85" in page and 'src="http' not in page
    rc, _, err = _run(["dedup", str(src), "--threshold", "auto", "--report-html", str(tmp_path / "r2.html")], capsys)
    assert rc == 2 and "--report-html" in err
