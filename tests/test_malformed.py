"""Every file of the malformed corpus (tests/malformed/make_corpus.py: 300+ broken safetensors headers, truncated
data, bad paths, tokenizers, configs, model2vec extras, shard indexes and GGUF files) gets a specific tokvec exception
that names the file and the problem: never a panic, a crash, a MemoryError or a hang.

The corpus first runs in child processes, so a crash fails the test of the case that crashed instead of killing
pytest; then each case runs in-process and its exception type and message are checked."""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tokvec

sys.path.insert(0, str(Path(__file__).parent / "malformed"))
from make_corpus import Case, make_corpus, run_case

_ROOT = Path(tempfile.mkdtemp(prefix="tokvec-malformed-"))
atexit.register(shutil.rmtree, _ROOT, True)
CASES: list[Case] = make_corpus(_ROOT / "corpus")
EXC = {
    "FormatError": tokvec.FormatError,
    "TokenizerError": tokvec.TokenizerError,
    "FileNotFoundError": FileNotFoundError,
}

# Runs cases from argv[1] on, printing "start <i>" before and one JSON result line after each, so the parent
# knows which case a crash happened in and can restart after it.
_CHILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from make_corpus import make_corpus, run_case
cases = make_corpus(Path(sys.argv[2]))
out = Path(sys.argv[2]) / "_out"
for i in range(int(sys.argv[1]), len(cases)):
    print("start", i, flush=True)
    try:
        run_case(cases[i], out)
        r = {"type": None, "msg": ""}
    except BaseException as e:  # noqa: BLE001 - a panic is a BaseException: it must be recorded, not raised
        r = {"type": type(e).__name__, "msg": str(e)[:500]}
    print("result", i, json.dumps(r), flush=True)
"""


@pytest.fixture(scope="module")
def child_results(tmp_path_factory) -> dict[int, dict]:
    """Runs the whole corpus in child processes; a crash is recorded for its case and the next child goes on."""
    results: dict[int, dict] = {}
    start = 0
    while start < len(CASES):
        d = tmp_path_factory.mktemp("child")
        p = subprocess.run(
            [sys.executable, "-c", _CHILD, str(start), str(d), str(Path(__file__).parent / "malformed")],
            capture_output=True,
            text=True,
            check=False,
        )
        last = None
        for line in p.stdout.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "start":
                last = int(rest)
            elif kind == "result":
                i, _, js = rest.partition(" ")
                results[int(i)] = json.loads(js)
                last = None
        if p.returncode == 0 and last is None:
            break
        if last is None:  # died before its first case: nothing to attribute, report it as a whole
            raise AssertionError(f"child exited {p.returncode}: {p.stderr[-2000:]}")
        results[last] = {"type": "CRASH", "msg": f"exit code {p.returncode}: {p.stderr[-2000:]}"}
        start = last + 1
    return results


def test_corpus_is_large_and_covers_every_entry_point():
    assert len(CASES) >= 200
    assert {c.api for c in CASES} == {"load", "inspect", "extract"}
    kinds = {c.name.split("/")[0] for c in CASES}
    assert {"safetensors", "path", "tokenizer", "config", "model2vec", "shards", "gguf"} <= kinds


def test_corpus_runs_in_a_child_without_crashing(child_results):
    crashed = {CASES[i].name: r["msg"] for i, r in child_results.items() if r["type"] == "CRASH"}
    assert not crashed, crashed
    assert len(child_results) == len(CASES)
    bad = {
        CASES[i].name: r
        for i, r in child_results.items()
        if r["type"] in (None, "PanicException", "MemoryError", "RecursionError", "SystemError")
    }
    assert not bad, bad


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
def test_malformed_case(index, child_results, tmp_path):
    case = CASES[index]
    r = child_results.get(index)
    if r is None or r["type"] == "CRASH":
        pytest.fail(f"{case.name}: crashed the child process ({r and r['msg']})")
    with pytest.raises(EXC[case.exc]) as info:
        run_case(case, tmp_path / "out")
    msg = str(info.value)
    assert case.names in msg, f"{case.name}: message does not name {case.names!r}: {msg}"
    low = msg.lower()
    assert any(f.lower() in low for f in case.fragments), f"{case.name}: message lacks any of {case.fragments}: {msg}"
