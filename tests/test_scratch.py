"""Vectors past memory (`tokvec._scratch`): above the spill size a batch job's vectors go to an unlinked scratch file
whose written pages are released as it fills, the core reads a mapped matrix with a bounded share of it mapped, and
none of it changes a result: the vectors and the deduplication are those of the in-memory run, bit for bit. Small
spill and residency sizes stand in for the 2 GiB / 1 GiB of a real run."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tokvec
from conftest import near_copy
from tokvec import _scratch
from tokvec.cli import main

pytestmark = pytest.mark.skipif(_scratch.mapped_file_bytes() is None, reason="needs /proc/self/status (Linux)")


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def corpus(wiki_sentences: list[str]) -> list[str]:
    """12,000 Wikipedia sentences and 4,000 edited copies, shuffled (fixed seed)."""
    rng = np.random.default_rng(5)
    base = wiki_sentences[:12000]
    out = base + [near_copy(base[i], rng) for i in rng.integers(0, len(base), 4000).tolist()]
    return [out[i] for i in rng.permutation(len(out)).tolist()]


def test_small_matrices_stay_in_memory_and_large_ones_go_to_an_unnamed_file(monkeypatch, tmp_path: Path,
                                                                           model, corpus) -> None:
    assert _scratch.matrix(len(corpus), model.dim) is None
    monkeypatch.setattr(_scratch, "SPILL_BYTES", 1 << 20)
    out = _scratch.matrix(len(corpus), model.dim, directory=tmp_path)
    assert isinstance(out, np.memmap) and out.shape == (len(corpus), model.dim)
    # nothing is left in the directory: the file was unlinked when made
    assert list(tmp_path.iterdir()) == []
    e = model._pooled(corpus, True, 1000, out=out)
    assert e is out
    # the written pages (16 MB) were handed back as the batches went: releasing them now frees almost nothing
    before = _scratch.mapped_file_bytes()
    _scratch.release(out)
    assert before - _scratch.mapped_file_bytes() < 1 << 20
    assert np.array_equal(np.asarray(e), model.embed(corpus))


def test_deduplicate_through_a_scratch_file_equals_in_memory(monkeypatch, model, corpus) -> None:
    want = model.deduplicate(corpus, 0.9, explain=True)
    want_approx = model.deduplicate(corpus, 0.9, explain=True, approx=True)
    monkeypatch.setattr(_scratch, "SPILL_BYTES", 1 << 20)
    monkeypatch.setattr(_scratch, "RESIDENT_BYTES", 1 << 20)
    got = model.deduplicate(corpus, 0.9, explain=True)
    got_approx = model.deduplicate(corpus, 0.9, explain=True, approx=True)
    for w, g in ((want, got), (want_approx, got_approx)):
        assert np.array_equal(w.kept, g.kept) and np.array_equal(w.dup_of, g.dup_of)
        assert np.array_equal(w.score.view(np.int32), g.score.view(np.int32))


def test_the_core_reads_a_mapped_matrix_with_a_bounded_share_mapped(monkeypatch, tmp_path: Path) -> None:
    # 300k x 128 float32 (147 MiB) saved and mapped read-only, as a user's .npy of vectors would be
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30000, 128)).astype(np.float32)
    e = np.repeat(base, 10, axis=0) + 0.01 * rng.standard_normal((300000, 128)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    want = tokvec.dedup_indices(e, 0.9, approx=True)
    np.save(tmp_path / "e.npy", e)
    del e
    mapped = np.load(tmp_path / "e.npy", mmap_mode="r")
    size = mapped.nbytes
    monkeypatch.setattr(_scratch, "RESIDENT_BYTES", 16 << 20)
    before = _scratch.mapped_file_bytes()
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append(_scratch.mapped_file_bytes() - before)

    t = threading.Thread(target=sample)
    t.start()
    try:
        got = tokvec.dedup_indices(mapped, 0.9, approx=True)
    finally:
        done.set()
        t.join()
    for w, g in zip(want, got):
        assert np.array_equal(np.asarray(w).view(np.int32 if w.dtype == np.float32 else w.dtype),
                              np.asarray(g).view(np.int32 if g.dtype == np.float32 else g.dtype))
    # every row is read at the start (norms) and again block by block (lists, codes), so without the release the
    # whole file stays mapped from the first pass on; with it, little is mapped most of the time (the first pass
    # maps it all within a poll)
    assert len(samples) > 20
    assert np.mean(samples) < size / 4, (np.mean(samples), max(samples), size)
    assert _scratch.mapped_file_bytes() - before < size // 4


def test_a_private_copy_is_never_released(tmp_path: Path) -> None:
    np.save(tmp_path / "e.npy", np.zeros((4096, 64), np.float32))
    c = np.load(tmp_path / "e.npy", mmap_mode="c")
    c[:] = 1.0
    _scratch.release(c)
    with _scratch.bounded_residency(c, limit=0):
        pass
    # a released private page would read back as the file's zeros
    assert float(c.sum()) == c.size


def test_too_little_disk_is_refused_before_the_work(tmp_path: Path, capsys, monkeypatch, corpus) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    rows = free // (4 * 256) + 1
    with pytest.raises(OSError, match=str(tmp_path).replace("\\", "\\\\")) as e:
        _scratch.matrix(rows, 256, directory=tmp_path)
    assert "GiB free" in str(e.value) and "TMPDIR" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    # the CLI says it in one line, before embedding, and writes nothing
    src, out = tmp_path / "in.txt", tmp_path / "kept.txt"
    src.write_text("\n".join(corpus[:3000]) + "\n", encoding="utf-8")
    monkeypatch.setattr(_scratch, "SPILL_BYTES", 1 << 10)
    monkeypatch.setattr(_scratch, "_MARGIN", free + (1 << 40))
    assert main(["dedup", str(src), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scratch space" in err[0], err
    assert not out.exists()
