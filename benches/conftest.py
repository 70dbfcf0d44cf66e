"""Shared setup for the end-to-end benchmarks (pytest-benchmark). Not collected by the default test run.

Run from the repository root, after building tokvec (``maturin develop --release``)::

    python -m pytest benches -p no:cacheprovider                  # everything except the 1M top-k
    python -m pytest benches --run-slow                           # also the 1M x 256 top-k
    python -m pytest benches --benchmark-disable                  # correctness checks only, each body runs once

See benches/README.md for what is compared.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# --- threads: set before numpy / tokenizers / tokvec are imported -------------------------------------------------
# conftest.py is imported before the benchmark modules, and numpy is only imported lazily below, so these settings
# reach OpenBLAS, rayon (tokvec, HF tokenizers) and OpenMP (faiss). Every library gets the same two threads.
# OPENBLAS_CORETYPE forces an OpenBLAS kernel family; some machines set it to an old core type, which makes numpy
# (and the numpy/semhash/wordllama baselines) much slower than they should be, so it is removed and reported.
THREADS = os.environ.get("BENCH_THREADS", "2")
_OPENBLAS_CORETYPE = os.environ.pop("OPENBLAS_CORETYPE", None)
_NUMPY_WAS_IMPORTED = "numpy" in sys.modules
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_var] = THREADS
os.environ["TOKENIZERS_PARALLELISM"] = "true"

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
SENTENCES_TSV = DATA / "wikipedia-sentences" / "sentences.tsv"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run benchmarks marked slow (1M x 256 top-k)")
    parser.addoption("--n-texts", type=int, default=100_000, help="number of Wikipedia sentences (default 100000)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: large benchmark, run only with --run-slow")
    # pyproject.toml turns warnings into errors for the test suite; peers' deprecation warnings must not fail a
    # benchmark (later filterwarnings entries take precedence).
    config.addinivalue_line("filterwarnings", "default")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    lines = [f"bench threads: {THREADS} (OMP/OPENBLAS/MKL/RAYON_NUM_THREADS)"]
    if _OPENBLAS_CORETYPE is not None:
        note = " (numpy was already imported: it may still apply)" if _NUMPY_WAS_IMPORTED else ""
        lines.append(f"OPENBLAS_CORETYPE={_OPENBLAS_CORETYPE!r} was set and has been unset{note}")
    try:
        import tokvec

        lines.append(f"tokvec {tokvec.__version__}, CPU features: {tokvec.CPU_FEATURES}")
    except Exception as e:  # noqa: BLE001 - header only
        lines.append(f"tokvec not importable: {e!r}")
    return lines


# --- timing summary with ratios ------------------------------------------------------------------------------------


@dataclass
class Result:
    group: str
    name: str
    seconds: float  # best round
    items: int
    unit: str


_RESULTS: list[Result] = []


@pytest.fixture
def record(benchmark):
    """Call ``record(items, unit)`` after a benchmark to list it in the end-of-run ratio table."""

    def _record(items: int, unit: str = "texts") -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable
            return
        best = stats.stats.min
        benchmark.extra_info[f"{unit}_per_s"] = round(items / best, 1) if best > 0 else None
        _RESULTS.append(Result(benchmark.group or "", benchmark.name, best, items, unit))

    return _record


_NOTES: dict[str, list[str]] = {}


@pytest.fixture
def note(benchmark):
    """Call ``note(line)`` to print a line under the benchmark's group at the end of the run."""

    def _note(line: str) -> None:
        _NOTES.setdefault(benchmark.group or "", []).append(line)

    return _note


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    for group, lines in _NOTES.items():
        tr.section(f"notes: {group}")
        for line in lines:
            tr.write_line("  " + line)
    if not _RESULTS:
        return
    tr.section("tokvec vs peers (best round; ratio = peer time / tokvec time, > 1 means tokvec is faster)")
    groups: dict[str, list[Result]] = {}
    for r in _RESULTS:
        groups.setdefault(r.group, []).append(r)
    for group, rows in groups.items():
        ref = next((r for r in rows if r.name.split("[")[0].endswith("_tokvec")), None)
        tr.write_line(f"[{group}]")
        for r in sorted(rows, key=lambda r: r.seconds):
            rate = f"{r.items / r.seconds:>14,.0f} {r.unit}/s" if r.seconds > 0 else ""
            ratio = f"{r.seconds / ref.seconds:8.2f}x" if ref is not None and ref.seconds > 0 else ""
            tr.write_line(f"  {r.name:<48s} {r.seconds:10.4f} s {rate} {ratio}")


# --- data ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def texts(request) -> list[str]:
    """The first N sentences of shared/data/wikipedia-sentences/sentences.tsv (header ``doc_id\\tsentence``)."""
    if not SENTENCES_TSV.is_file():
        pytest.skip(f"{SENTENCES_TSV} not found")
    n = request.config.getoption("--n-texts")
    out = []
    with open(SENTENCES_TSV, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        assert header == ["doc_id", "sentence"], header
        for row in reader:
            out.append(row[1])
            if len(out) == n:
                break
    return out


# --- the shared table: WordLlama l2_supercat, 256-d ----------------------------------------------------------------


@dataclass(frozen=True)
class WordLlamaFiles:
    table: Path  # safetensors, `embedding.weight` F16 [32000, 256]
    tokenizer: Path  # tokenizers JSON


@pytest.fixture(scope="session")
def wl_files() -> WordLlamaFiles:
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("wordllama is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    files = WordLlamaFiles(
        root / "weights" / "l2_supercat_256.safetensors",
        root / "tokenizers" / "l2_supercat_tokenizer_config.json",
    )
    for p in (files.table, files.tokenizer):
        if not p.is_file():
            pytest.skip(f"{p} not found")
    return files


@pytest.fixture(scope="session")
def wl_table_f32(wl_files):
    import numpy as np
    from safetensors.numpy import load_file

    return np.ascontiguousarray(load_file(str(wl_files.table))["embedding.weight"], dtype=np.float32)


@pytest.fixture(scope="session")
def reference_embed(wl_files, wl_table_f32):
    """Plain numpy reference on the WordLlama table: HF tokenizer (no special tokens), mean of rows, L2-normalize."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(wl_files.tokenizer))
    tok.no_padding()
    tok.no_truncation()

    def embed(batch: list[str]):
        out = np.zeros((len(batch), wl_table_f32.shape[1]), dtype=np.float64)
        for r, enc in enumerate(tok.encode_batch(batch, add_special_tokens=False)):
            if enc.ids:
                out[r] = wl_table_f32[enc.ids].astype(np.float64).mean(axis=0)
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    return embed


@pytest.fixture(scope="session")
def tokvec_mod():
    tokvec = pytest.importorskip("tokvec")
    if not hasattr(tokvec, "load"):
        pytest.skip("tokvec is importable but has no load(): build it with `maturin develop --release`")
    return tokvec


@pytest.fixture(scope="session")
def tv_wordllama(tokvec_mod, wl_files):
    """tokvec on the WordLlama table; it finds the tokenizer JSON itself, passed explicitly here to be certain."""
    return tokvec_mod.load(str(wl_files.table), tokenizer=str(wl_files.tokenizer))


@pytest.fixture(scope="session")
def tv_default(tokvec_mod):
    return tokvec_mod.load()


@pytest.fixture(scope="session")
def wordllama_model(wl_files):
    """``WordLlama.load()`` offline.

    WordLlama looks for the weights next to its package (``wordllama/weights/``, found) but for the tokenizer under
    ``wordllama/tokenizer/`` (singular, not the folder it ships), then in ``~/.cache/wordllama/tokenizers/``, then
    downloads. Copying the shipped JSON into the cache makes the offline load work.
    """
    from wordllama import WordLlama

    cache = Path.home() / ".cache" / "wordllama" / "tokenizers"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / wl_files.tokenizer.name
    if not target.is_file() or target.read_bytes() != wl_files.tokenizer.read_bytes():
        shutil.copyfile(wl_files.tokenizer, target)
    return WordLlama.load(disable_download=True)


@pytest.fixture(scope="session")
def m2v_model(wl_files, wl_table_f32):
    """A model2vec StaticModel on the same table (float32) and tokenizer, normalized output."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    return StaticModel(vectors=wl_table_f32, tokenizer=Tokenizer.from_file(str(wl_files.tokenizer)), normalize=True)


@pytest.fixture(autouse=True)
def _restore_tokenizers_parallelism():
    """model2vec sets TOKENIZERS_PARALLELISM=false process-wide on inputs over 10k texts (before its own threads);
    put it back so it does not slow the benchmarks that run after it."""
    yield
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
