"""Jobs past a few million texts. Vectors past memory (`tokvec._scratch`): above the spill size a batch job's vectors
go to an unlinked scratch file whose written pages are released as it fills, the core reads a mapped matrix with a
bounded share of it mapped, and none of it changes a result: the vectors and the deduplication are those of the
in-memory run, bit for bit (small spill and residency sizes stand in for the 2 GiB / 1 GiB of a real run). Progress:
the partitioned run reports its stages while it runs (a callable, and the CLI's bars on a terminal)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import numpy as np
import pytest
import tokvec
from conftest import with_near_copies
from tokvec import _core, _scratch
from tokvec.cli import main

pytestmark = pytest.mark.skipif(_scratch.mapped_file_bytes() is None, reason="needs /proc/self/status (Linux)")


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def corpus(wiki_sentences: list[str]) -> list[str]:
    """12,000 Wikipedia sentences, edited copies of 4,000 of them, shuffled (fixed seed)."""
    return with_near_copies(wiki_sentences[:12000], np.random.default_rng(5), 4000, 0)


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


def test_the_partitioned_run_reports_its_stages(model, corpus) -> None:
    e = model.embed(corpus)
    want = _core.dedup_ivf(e, 0.9)
    calls: list[tuple[int, int]] = []
    got = _core.dedup_ivf(e, 0.9, progress=lambda stage, done: calls.append((stage, done)))
    for w, g in zip(want[:3], got[:3]):
        assert np.array_equal(w.view(np.int32) if w.dtype == np.float32 else w,
                              g.view(np.int32) if g.dtype == np.float32 else g)
    # k-means steps, then rows resolved, each moving forward, and the last report is the end of the run
    stages = [c[0] for c in calls]
    assert stages == sorted(stages) and set(stages) <= {1, 2}
    for s in (1, 2):
        done = [c[1] for c in calls if c[0] == s]
        assert done == sorted(done)
    assert calls[-1] == (2, len(corpus))
    assert all(1 <= c[1] <= 10 for c in calls if c[0] == 1)


def test_a_progress_callable_that_raises_stops_the_run(model, corpus) -> None:
    e = model.embed(corpus)

    def stop(stage: int, done: int) -> None:
        raise RuntimeError(f"stopped at stage {stage}")

    with pytest.raises(RuntimeError, match="stopped at stage"):
        _core.dedup_ivf(e, 0.9, progress=stop)
    with pytest.raises(TypeError, match="progress must be a callable"):
        _core.dedup_ivf(e, 0.9, progress=3)
    # and the next run is whole
    assert np.array_equal(_core.dedup_ivf(e, 0.9)[0], _core.dedup_ivf(e, 0.9)[0])


def test_the_cli_shows_a_bar_per_stage_on_a_terminal(tmp_path: Path, corpus) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "kept.txt"
    src.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    master, slave = pty.openpty()
    # a terminal 160 columns wide (a new pty has 0, where tqdm draws nothing)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "tokvec", "dedup", str(src), "-o", str(out), "--approx"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        r, _, _ = select.select([master], [], [], 1.0)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif p.poll() is not None:
            break
    os.close(master)
    assert p.wait() == 0
    text = seen.decode("utf-8", "replace")
    for bar in ("read", "embed", "lists", "dedup"):
        assert f"{bar}:" in text, text[-2000:]
    assert f"{len(corpus)}/{len(corpus)}" in text.replace(",", "") or "16.0k/16.0k" in text, text[-2000:]


def test_a_nan_past_the_first_rows_of_a_mapped_matrix_is_found(tmp_path: Path) -> None:
    # the finite check goes 65,536 rows at a time: the NaN sits in the second step
    e = np.zeros((70000, 8), np.float32)
    e[:, 0] = 1.0
    e[69999, 3] = np.nan
    np.save(tmp_path / "e.npy", e)
    mapped = np.load(tmp_path / "e.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="embeddings contains NaN or infinity"):
        tokvec.dedup_indices(mapped, 0.9, approx=True)
    with pytest.raises(ValueError, match="embeddings contains NaN or infinity"):
        tokvec.dedup_indices(mapped.astype(np.float64), 0.9)
