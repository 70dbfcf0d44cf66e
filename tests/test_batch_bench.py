"""`tokvec bench`: the report has every stage with sane counts, the generated texts are deterministic, an input
file and a child run with RAYON_NUM_THREADS work, and mistakes exit with status 2. No timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokvec
from tokvec.bench import STAGES, generate_texts
from tokvec.cli import main


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


def _check(r: dict, n: int) -> None:
    assert r["command"] == "bench"
    assert r["texts"] == n
    assert r["cpu_features"] == tokvec.CPU_FEATURES
    assert r["dim"] == 256 and r["vocab"] == 30522
    assert r["tokens"] > n  # several tokens per text
    assert set(r["stages"]) == set(STAGES)
    for name, s in r["stages"].items():
        assert s["seconds"] > 0, name
        assert s["texts_per_second"] > 0, name
        assert 1 <= s["runs"] <= 2, name
    top = r["stages"]["topk"]
    assert top["queries"] == min(50, n) and top["corpus"] == n and top["k"] == 10
    assert 0 < r["stages"]["dedup"]["kept"] <= n


def test_bench_json_generated(capsys) -> None:
    assert main(["bench", "--n", "300", "--queries", "50", "--repeat", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    _check(r, 300)
    assert r["source"].startswith("generated")
    # 5 % near-copies are generated: some of them are above the threshold
    assert r["stages"]["dedup"]["kept"] < 300


def test_generated_texts_are_deterministic(model) -> None:
    a = generate_texts(model, 200, seed=3)
    assert a == generate_texts(model, 200, seed=3)
    assert a != generate_texts(model, 200, seed=4)
    assert len(a) == 200 and all(t.endswith(".") and len(t.split()) >= 4 for t in a)
    # words come from the vocabulary: none is split into unknown tokens
    ids = model.encode_ids(a)
    unk = model._tok.unk_id
    assert unk is None or not any(unk in row for row in ids)


def test_bench_input_file_and_table(tmp_path: Path, capsys, model) -> None:
    texts = generate_texts(model, 120, seed=1)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["bench", str(src), "--n", "100", "--queries", "50", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for name in STAGES:
        assert any(line.startswith(name) for line in out.splitlines()), name
    assert "100 (" in out and str(src) in out
    assert tokvec.CPU_FEATURES in out


def test_bench_threads_child(capsys) -> None:
    assert main(["bench", "--n", "200", "--queries", "50", "--repeat", "1", "--threads", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    _check(r, 200)
    assert r["threads"] == 1 and r["rayon_num_threads"] == "1"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "--n", "0"], "--n must be >= 1"),
        (["bench", "--threads", "0"], "--threads must be >= 1"),
        (["bench", "--repeat", "0"], "--repeat must be >= 1"),
        (["bench", "--threshold", "2"], "--threshold must be in [-1, 1]"),
        (["bench", "missing-file.txt"], "missing-file.txt"),
    ],
)
def test_bench_mistakes(argv: list[str], needle: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
