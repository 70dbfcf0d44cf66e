"""Semantic chunking on long texts and tiny targets: pieces are merged in blocks, so memory does not grow with the
number of pieces (10 MB at target 8 is about 5 million pieces), while the chunks stay those of one global merge on
real documents, and those of the split rule written out naively (`conftest.naive_split`) on documents of normal
size."""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tokvec
from conftest import naive_split
from tokvec.split import _BLOCK, _merge, semantic_split, split_units

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def scifact() -> str:
    """The first 200 SciFact abstracts (title line, then the abstract), as one document of about 300 KB."""
    with open(DATA / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for _, line in zip(range(200), f)]
    return "\n\n".join(d["title"] + "\n" + d["text"] for d in docs)


@functools.cache
def wikipedia_text(n_chars: int) -> str:
    """Wikipedia articles in order, one paragraph each (its sentences joined by spaces), to about n_chars."""
    paragraphs: list[str] = []
    size = 0
    with open(DATA / "wikipedia-sentences" / "sentences.tsv", encoding="utf-8") as f:
        next(f)
        for doc_id, rows in itertools.groupby((line.rstrip("\n").split("\t", 1) for line in f), key=lambda r: r[0]):
            paragraphs.append(" ".join(r[1] for r in rows))
            size += len(paragraphs[-1]) + 2
            if size >= n_chars:
                break
    return "\n\n".join(paragraphs)


@pytest.fixture(scope="module")
def wikipedia() -> str:
    """A long document of normal size: about 400 KB of Wikipedia articles."""
    return wikipedia_text(400_000)


def _global_merge(model: tokvec.Model, text: str, target: int) -> list[str]:
    """All pieces embedded and merged at once (one block of any size)."""
    units = split_units(text, max(1, target // 4))
    starts = _merge(model.embed(units), [len(u) for u in units], target)
    return ["".join(units[a:b]) for a, b in zip(starts, [*starts[1:], len(units)])]


@pytest.mark.parametrize("target", [256, 512, 1536, 4096])
def test_same_chunks_as_the_rule_written_naively(model, scifact, wikipedia, target: int) -> None:
    for text in (scifact, wikipedia):
        assert len(split_units(text, target // 4)) <= _BLOCK  # documents of normal size are one block
        assert semantic_split(model, text, target) == naive_split(model, text, target)


@pytest.mark.parametrize("target", [8, 64, 256])
def test_blocks_give_the_global_merge_on_real_text(model, target: int) -> None:
    # about 3 blocks of pieces: Wikipedia as paragraphs, and the same on one line
    paragraphs = wikipedia_text(50_000 * max(1, target // 4))
    for text in (paragraphs, " ".join(paragraphs.split())):
        assert len(split_units(text, max(1, target // 4))) > 2 * _BLOCK
        assert semantic_split(model, text, target) == _global_merge(model, text, target)


def test_blocks_keep_the_contract(model, scifact) -> None:
    # over 2 blocks of pieces with every kind of piece: lines, sentences, word groups, hard slices of a 5000-character
    # run without whitespace, whitespace-only lines
    text = ("x" * 5000 + "\n\n\n   \n").join(scifact[i : i + 20_000] for i in range(0, len(scifact), 20_000))
    for target in (8, 50):
        assert len(split_units(text, max(1, target // 4))) > 2 * _BLOCK
        chunks = semantic_split(model, text, target)
        assert "".join(chunks) == text
        assert all(0 < len(c) <= target for c in chunks)


_CHILD = textwrap.dedent("""
    import json, resource, sys
    import tokvec

    model = tokvec.load()
    model.embed(["warm up the tokenizer"])
    text = open(sys.argv[1], encoding="utf-8").read()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    chunks = model.split(text, target_size=8)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert "".join(chunks) == text
    print(json.dumps({"before_kb": before, "after_kb": after, "chunks": len(chunks)}))
""")


def test_memory_stays_bounded_on_a_long_line_at_a_tiny_target(model, tmp_path) -> None:
    # 1 MB on one line at target 8: about 540,000 pieces of at most 2 characters. Embedding them all at once (the
    # global merge) peaks at pieces x dim x 20 bytes (float32 embeddings, float64 copy, float64 sums): about 2.8 GB
    # at dim 256. In blocks, the growth is one block's arrays plus the chunks returned: about 130 MB.
    text = " ".join(wikipedia_text(1_000_000).split())[:1_000_000]
    path = tmp_path / "one-long-line.txt"
    path.write_text(text, encoding="utf-8")
    pieces = len(split_units(text, 2))
    assert pieces > 30 * _BLOCK
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    growth = (r["after_kb"] - r["before_kb"]) * 1024
    global_merge = pieces * model.dim * 20
    assert growth < 300 * len(text) < global_merge / 8, (growth, r)
