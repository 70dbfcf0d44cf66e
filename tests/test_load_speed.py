"""What keeps `tokvec.load()` fast and small, checked as properties (no wall-clock limits): the tokenizers-crate
tokenizer is not built for the default model until a text needs it, the tokenizer JSON is kept once (so the
model never reads its files again), and loading grows the process's memory by about the model's files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tokvec
from tokvec.tokenizer import load_tokenizer

DEFAULT = Path(tokvec.__file__).parent / "models" / "default"


def test_default_model_loads_without_building_the_tokenizers_crate_tokenizer() -> None:
    m = tokvec.load()
    core = m._tok.core
    assert core.kind == "wordpiece-fast" and not core.hf_built
    m.embed(["a plain text", "another one, with punctuation!"])
    assert not core.hf_built
    # a text holding an added token's content is encoded by the tokenizers crate, built now
    with_cls = m.embed(["a plain [CLS] text"])
    assert core.hf_built
    assert with_cls.shape == (1, m.dim)


def test_ids_and_metadata_equal_those_of_the_tokenizers_crate() -> None:
    fast = load_tokenizer(DEFAULT / "tokenizer.json")
    ref = load_tokenizer(DEFAULT / "tokenizer.json", fast=False)
    assert ref.core.hf_built and not fast.core.hf_built
    assert (fast.special_ids, fast.unk_id, fast.id_limit) == (ref.special_ids, ref.unk_id, ref.id_limit)
    texts = ["Hello, World!", "naïve café [SEP] x", "", "日本語"]
    a, b = fast.core.encode(texts), ref.core.encode(texts)
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()


@pytest.mark.parametrize("mmap", [True, False])
def test_a_loaded_model_does_not_depend_on_its_tokenizer_file(tmp_path, mmap) -> None:
    """The tokenizers-crate tokenizer is built lazily, from the JSON kept at load: a tokenizer.json rewritten or
    deleted afterwards (a folder replaced by a new save, a cleaned cache) changes nothing, as with the table."""
    d = tmp_path / "model"
    shutil.copytree(DEFAULT, d)
    want = tokvec.load(DEFAULT).embed(["a [CLS] b", "plain"])
    m = tokvec.load(d, mmap=mmap)
    text = (d / "tokenizer.json").read_text(encoding="utf-8")
    assert m._tok.json == text and not m._tok.core.hf_built
    (d / "tokenizer.json").write_text(text.replace("[CLS]", "[CLX]"), encoding="utf-8")
    assert m._tok.json == text
    (d / "tokenizer.json").unlink()
    np.testing.assert_array_equal(m.embed(["a [CLS] b", "plain"]), want)
    assert m._tok.core.hf_built
    m.save(tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer.json").read_text(encoding="utf-8") == text


_RSS = """
import os, sys
import tokvec

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

before = rss()
m = tokvec.load()
print(rss() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_loading_the_default_model_grows_memory_by_about_its_files() -> None:
    # A fresh process, so nothing is loaded or cached yet. The table is mapped and scanned for NaN/Inf once,
    # then its pages are dropped from the process (they stay in the page cache); the tokenizer adds its compact
    # vocabulary, not the tokenizers crate's structures or a copy of the JSON.
    env = dict(os.environ, PYTHONPATH=str(Path(tokvec.__file__).parents[1]), RAYON_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _RSS], env=env, capture_output=True, text=True, check=True)
    growth = int(out.stdout.strip())
    files = sum(p.stat().st_size for p in DEFAULT.iterdir() if p.is_file())
    assert growth <= files, (
        f"loading grew the process by {growth / 2**20:.1f} MiB, its files are {files / 2**20:.1f} MiB"
    )
