"""Deduplication workflows on real text: explained results, dedup against a reference set (decontamination),
an incremental on-disk index, threshold sweeps from one pass, and the `tokvec dedup` command. Every result is
checked against a brute-force greedy reference in numpy."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tokvec
from tokvec.cli import main
from tokvec.dedup import DedupIndex, dedup, dedup_sweep, parse_thresholds

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STSB = DATA / "stsb"


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


def _col(path: Path, col: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return [r[col] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def greedy_ref(E: np.ndarray, t: float, R: np.ndarray | None = None, self_dedup: bool = True):
    """Brute force: row j is dropped if its best score over reference rows and earlier kept rows is > t."""
    n = len(E)
    S = E @ E.T
    C = (R @ E.T) if R is not None and len(R) else np.zeros((0, n), np.float32)
    kept: list[int] = []
    dup_of = np.full(n, -1)
    source = np.full(n, -1)
    for j in range(n):
        best, who, src = -np.inf, -1, -1
        for i in range(C.shape[0]):
            if C[i, j] > t and C[i, j] > best:
                best, who, src = C[i, j], i, 1
        if self_dedup:
            for i in kept:
                if S[i, j] > t and S[i, j] > best:
                    best, who, src = S[i, j], i, 0
        if who < 0:
            kept.append(j)
        else:
            dup_of[j], source[j] = who, src
    return np.array(kept), dup_of, source


def _min_margin(E: np.ndarray, t: float) -> float:
    """The smallest |score - t| over all pairs: brute-force numpy and the canonical Rust dot may legitimately disagree
    on a pair within float rounding of the threshold, so a test that compares kept sets asserts this is not tiny."""
    return float(np.abs(E @ E.T - t).min())


def test_explain_matches_bruteforce(model, near_dup_corpus: list[str]) -> None:
    docs = near_dup_corpus
    E = model.embed(docs)
    res = model.deduplicate(docs, 0.9, explain=True)
    assert isinstance(res, tokvec.DedupResult)
    kept, _dup_of, _ = greedy_ref(E, 0.9)
    # no pair of this corpus scores within 0.01 of 0.9: the comparison below is exact, never a rounding call
    assert _min_margin(E, 0.9) > 1e-5
    np.testing.assert_array_equal(res.kept, kept)
    # agrees with the plain API
    assert res.kept.tolist() == model.deduplicate(docs, 0.9, return_indices=True)
    rows = res.explain()
    assert len(rows) == res.n - len(res.kept) > 20
    for r in rows:
        i, j = r["index"], r["duplicate_of"]
        assert j < i and j in set(res.kept.tolist()) and r["against"] == "self"
        assert r["text"] == docs[i] and r["kept_text"] == docs[j]
        assert r["score"] == pytest.approx(float(E[i] @ E[j]), abs=1e-5) and r["score"] > 0.9
    s = res.summary()
    assert s["kept"] + s["removed"] == len(docs) and s["removed_reference"] == 0
    assert 0.9 < s["score_min"] <= s["score_mean"] <= s["score_max"] <= 1.0 + 1e-5
    assert res.kept_texts() == model.deduplicate(docs, 0.9)


def test_against_reference_decontamination(model) -> None:
    # STS-B test sentences as "training data", STS-B dev (sentence1) as the reference "test set"; the sentence2
    # column of dev holds close paraphrases of sentence1, so mixing some in gives real contamination
    train = _col(STSB / "sts-test.tsv", "sentence1")[:600] + _col(STSB / "sts-dev.tsv", "sentence2")[:200]
    ref = _col(STSB / "sts-dev.tsv", "sentence1")
    E, R = model.embed(train), model.embed(ref)
    t = 0.92
    res = dedup(E, t, reference=R)
    kept, dup_of, source = greedy_ref(E, t, R)
    np.testing.assert_array_equal(res.kept, kept)
    np.testing.assert_array_equal(res.source, source)
    np.testing.assert_array_equal(res.dup_of, dup_of)
    assert (res.source == 1).sum() > 20  # real contamination found
    # the reference set is not deduplicated: only the items are in the result
    assert res.n == len(train)
    only = dedup(E, t, reference=R, self_dedup=False)
    k2, _, _s2 = greedy_ref(E, t, R, self_dedup=False)
    np.testing.assert_array_equal(only.kept, k2)
    assert (only.source == 0).sum() == 0
    # through the Model
    got = model.deduplicate(train, t, reference=ref, return_indices=True)
    assert got == kept.tolist()


def test_incremental_index_equals_one_pass(model, near_dup_corpus: list[str], tmp_path: Path) -> None:
    docs = near_dup_corpus
    E = model.embed(docs)
    t = 0.88
    path = tmp_path / "index.safetensors"
    kept_all: list[int] = []
    for a, b in [(0, 100), (100, 250), (250, len(docs))]:
        idx = DedupIndex.load(path, dim=model.dim)
        res = idx.dedup(E[a:b], t)
        kept_all += (res.kept + a).tolist()
        idx.add(E[a:b][res.kept])
        idx.save(path)
    one = tokvec.dedup_indices(E, t)[0].tolist()
    assert kept_all == one
    final = DedupIndex.load(path)
    assert final.size == len(one) and final.metadata["count"] == str(len(one))
    np.testing.assert_array_equal(final.embeddings, E[one])


def test_sweep_matches_separate_runs(model, near_dup_corpus: list[str]) -> None:
    E = model.embed(near_dup_corpus)
    ts = [0.8, 0.85, 0.9, 0.95, 0.99]
    rows = dedup_sweep(E, ts)
    assert [r["threshold"] for r in rows] == ts
    for r in rows:
        assert r["kept"] == len(tokvec.dedup_indices(E, r["threshold"])[0])
        assert r["pairs"] == len(tokvec.duplicate_pairs(E, r["threshold"]))
    kept = [r["kept"] for r in rows]
    assert kept == sorted(kept) and kept[0] < kept[-1]
    assert parse_thresholds("0.8:0.9:0.05") == [0.8, 0.85, 0.9]
    assert len(parse_thresholds("auto")) == 10
    with pytest.raises(ValueError, match="bad threshold list"):
        parse_thresholds("0.9:0.8:0.1")


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_dedup_report_and_json(tmp_path: Path, capsys, model) -> None:
    src = str(STSB / "sts-dev.tsv")
    rc = main(
        [
            "dedup",
            src,
            "--column",
            "sentence2",
            "-o",
            str(tmp_path / "kept.txt"),
            "--threshold",
            "0.9",
            "--report",
            str(tmp_path / "pairs.jsonl"),
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    info = json.loads(out)
    texts = _col(STSB / "sts-dev.tsv", "sentence2")
    kept = model.deduplicate(texts, 0.9)
    assert (tmp_path / "kept.txt").read_text(encoding="utf-8").splitlines() == kept
    assert info["kept"] == len(kept) and info["removed"] == len(texts) - len(kept)
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == info["removed"] > 0
    assert all(texts[r["index"]] == r["text"] and texts[r["duplicate_of"]] == r["kept_text"] for r in rows)


def test_cli_dedup_against_and_index(tmp_path: Path, capsys, model) -> None:
    train = tmp_path / "train.txt"
    texts = _col(STSB / "sts-test.tsv", "sentence1")[:400] + _col(STSB / "sts-dev.tsv", "sentence2")[:100]
    train.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    rc = main(
        [
            "dedup",
            str(train),
            "--against",
            str(STSB / "sts-dev.tsv"),
            "--column",
            "sentence1",
            "-o",
            str(tmp_path / "clean.jsonl"),
            "--threshold",
            "0.92",
            "--json",
            "-q",
        ]
    )
    out, err = capsys.readouterr()
    # --column applies to both IN (a .txt, which has no columns) and REF
    assert rc == 0, err
    info = json.loads(out)
    ref = _col(STSB / "sts-dev.tsv", "sentence1")
    want = model.deduplicate(texts, 0.92, reference=ref, return_indices=True)
    got = [json.loads(line)["index"] for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert got == want and info["removed_reference"] > 10
    # incremental: two halves through --index keep what one pass keeps
    idx = tmp_path / "kept.safetensors"
    (tmp_path / "a.txt").write_text("".join(t + "\n" for t in texts[:250]), encoding="utf-8")
    (tmp_path / "b.txt").write_text("".join(t + "\n" for t in texts[250:]), encoding="utf-8")
    kept_lines = []
    for part in ("a", "b"):
        assert (
            main(
                [
                    "dedup",
                    str(tmp_path / f"{part}.txt"),
                    "--index",
                    str(idx),
                    "-o",
                    str(tmp_path / f"{part}.kept.txt"),
                    "-q",
                ]
            )
            == 0
        )
        kept_lines += (tmp_path / f"{part}.kept.txt").read_text(encoding="utf-8").splitlines()
    assert kept_lines == model.deduplicate(texts, 0.9)


def test_cli_sweep(tmp_path: Path, capsys, model) -> None:
    src = str(STSB / "sts-dev.tsv")
    rc = main(["dedup", src, "--column", "sentence2", "--threshold", "auto"])
    out, _ = capsys.readouterr()
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "threshold\tkept\tremoved\tpairs" and len(lines) == 11
    texts = _col(STSB / "sts-dev.tsv", "sentence2")
    for line in lines[1:]:
        t, k, _, _ = line.split("\t")
        assert int(k) == len(model.deduplicate(texts, float(t)))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--threshold", "abc"], "--threshold must be a number"),
        (["--threshold", "auto", "-o", "x.txt"], "--threshold auto only prints the sweep"),
        (["--sweep", "0.9:0.8:0.1", "-o", "x.txt"], "bad threshold list"),
        (["--no-self"], "--no-self needs"),
        (["--json"], "--json prints the summary on stdout"),
        (["--against", "/nonexistent/ref.txt", "-o", "x.txt"], "no such file"),
        (["-o", "x.npy"], "unknown output format"),
    ],
)
def test_cli_dedup_mistakes(tmp_path: Path, capsys, argv: list[str], needle: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc = main(["dedup", str(STSB / "sts-dev.tsv"), "--column", "sentence1", *argv])
    _, err = capsys.readouterr()
    assert rc == 2 and needle in err and err.count("\n") == 1, err


def test_index_dimension_mismatch(tmp_path: Path, capsys, model) -> None:
    idx = DedupIndex(np.ones((2, 8), np.float32) / np.sqrt(8))
    idx.save(tmp_path / "i.safetensors")
    rc = main(
        [
            "dedup",
            str(STSB / "sts-dev.tsv"),
            "--column",
            "sentence1",
            "--index",
            str(tmp_path / "i.safetensors"),
            "-o",
            str(tmp_path / "k.txt"),
        ]
    )
    _, err = capsys.readouterr()
    assert rc == 2 and "index vectors have 8 dimensions" in err


def test_dedup_resolve_checks_pairs() -> None:
    from tokvec import _core

    i = np.array([0, 1], np.int64)
    s = np.array([0.95, 0.95], np.float32)
    kept, dup_of, _ = _core.dedup_resolve(3, i, np.array([1, 2], np.int64), s, 0.9)
    assert kept.tolist() == [0, 2] and dup_of.tolist() == [-1, 0, -1]  # 1 dropped by 0, so 2 stays
    with pytest.raises(ValueError, match="pairs need 0 <= i < j < n"):
        _core.dedup_resolve(3, i, np.array([1, 1], np.int64), s, 0.9)
    with pytest.raises(ValueError, match="pairs need"):
        _core.dedup_resolve(2, i, np.array([1, 2], np.int64), s, 0.9)
    with pytest.raises(ValueError, match="same length"):
        _core.dedup_resolve(3, i, np.array([1], np.int64), s, 0.9)


_CROSS_RSS = r"""
import sys
import numpy as np
from tokvec.dedup import dedup

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

base, ref = np.load(sys.argv[1]), np.load(sys.argv[2])
copies, t = int(sys.argv[3]), float(sys.argv[4])
rng = np.random.default_rng(0)
# the items: each base vector again and again with a little noise, built a copy at a time (no big temporaries,
# so the high-water mark below is the matrix itself)
E = np.empty((copies * len(base), base.shape[1]), np.float32)
for c in range(copies):
    x = base + rng.standard_normal(base.shape, dtype=np.float32) * 0.01
    E[c * len(base):(c + 1) * len(base)] = x / np.linalg.norm(x, axis=1, keepdims=True)
del x
before = hwm()
res = dedup(E, t, reference=ref, self_dedup=False)
grew = hwm() - before
# the oracle: an item goes when its best reference score is above the threshold (numpy, by blocks)
best = np.concatenate([(E[s:s + 65536] @ ref.T).max(axis=1) for s in range(0, len(E), 65536)])
print(grew, E.nbytes, int((res.source == 1).sum()), int((best > t).sum()), int((np.abs(best - t) < 1e-5).sum()))
want = np.flatnonzero(best <= t)
near = np.abs(best - t) < 1e-5
assert np.array_equal(np.setdiff1d(res.kept, np.flatnonzero(near)), np.setdiff1d(want, np.flatnonzero(near)))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_reference_search_does_not_copy_the_items(model, wiki_sentences: list[str], tmp_path: Path) -> None:
    """Decontaminating 600k items (614 MB of vectors) against a reference set: the cross search reads the items in
    blocks, so the process's peak memory grows by much less than the items (it copied them as floats and as int8
    codes before: 1.25x their size), and the items removed are those numpy finds above the threshold."""
    base = model.embed(wiki_sentences[:2000])
    ref = model.embed(wiki_sentences[:40] + wiki_sentences[5000:5060])
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "ref.npy", ref)
    argv = [sys.executable, "-c", _CROSS_RSS, str(tmp_path / "base.npy"), str(tmp_path / "ref.npy"), "300", "0.9"]
    r = subprocess.run(argv, check=False, capture_output=True, text=True, env={**os.environ, "RAYON_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    grew, size, removed, want_removed, near = map(int, r.stdout.split())
    assert size == 600_000 * base.shape[1] * 4
    assert removed >= 40 * 300 and abs(removed - want_removed) <= near
    assert grew < 0.4 * size, f"peak memory grew by {grew / 1e6:.0f} MB for {size / 1e6:.0f} MB of items"
