"""Semantic chunking (`Model.split`, `tokvec split`) on real documents: chunks rebuild the text exactly, respect
the target size, and edge cases (empty input, one giant line, no newlines, no whitespace) work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokvec
from tokvec.cli import main
from tokvec.split import split_units

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def abstracts() -> list[dict]:
    with open(DATA / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(30), f)]


@pytest.mark.parametrize("target", [200, 600, 1536])
def test_chunks_rebuild_text_and_fit(model, abstracts, target: int) -> None:
    text = "\n\n".join(d["title"] + "\n" + d["text"] for d in abstracts)
    chunks = model.split(text, target_size=target)
    assert "".join(chunks) == text
    assert all(0 < len(c) <= target for c in chunks)
    # merging does its job: far fewer chunks than pieces, and most chunks use a good part of the budget
    assert len(chunks) < len(split_units(text, max(1, target // 4))) / 2
    assert sum(len(c) for c in chunks) / len(chunks) > target / 3


def test_topic_boundaries_fall_between_documents(model, abstracts) -> None:
    # two unrelated abstracts back to back, each short enough to be one chunk: the cut falls between them
    a, b = abstracts[0]["text"], abstracts[7]["text"]
    text = a + "\n" + b
    chunks = model.split(text, target_size=max(len(a), len(b)) + 1)
    assert "".join(chunks) == text
    assert chunks[0].startswith(a[:50])
    assert any(c.startswith(b[:50]) for c in chunks)


def test_edge_cases(model, abstracts) -> None:
    assert model.split("") == []
    assert model.split("one short line") == ["one short line"]
    giant = " ".join(d["text"] for d in abstracts)  # no newline at all
    chunks = model.split(giant, target_size=500)
    assert "".join(chunks) == giant and all(len(c) <= 500 for c in chunks) and len(chunks) > 10
    nospace = "x" * 5000
    chunks = model.split(nospace, target_size=300)
    assert "".join(chunks) == nospace and max(len(c) for c in chunks) <= 300
    ws = "\n\n\n   \n"
    assert "".join(model.split(ws, target_size=2)) == ws
    with pytest.raises(ValueError, match="target_size"):
        model.split("abc", target_size=0)
    with pytest.raises(TypeError, match="text must be str"):
        model.split(["a list"])


def test_cli_split(tmp_path: Path, capsys, abstracts) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("\n".join(d["text"] for d in abstracts[:5]), encoding="utf-8")
    assert main(["split", str(doc), "--target-size", "400", "-o", str(tmp_path / "c.jsonl"), "--json", "-q"]) == 0
    info = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text(encoding="utf-8").splitlines()]
    assert info["documents"] == 1 and info["chunks"] == len(rows) and info["max_chars"] <= 400
    assert "".join(r["text"] for r in rows) == doc.read_text(encoding="utf-8")
    # one document per JSONL row
    assert main(["split", str(DATA / "scifact" / "corpus.jsonl"), "--target-size", "2000", "-q"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[-1]["doc"] == 5182
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert main(["split", str(empty), "-q"]) == 0 and capsys.readouterr().out == ""
    assert main(["split", str(doc), "--target-size", "0"]) == 2
    assert "--target-size must be >= 1" in capsys.readouterr().err
