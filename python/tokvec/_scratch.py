"""Vector matrices larger than memory should hold, for the batch jobs past a few million texts.

`matrix(n, d)` is None (make an ordinary array) up to `SPILL_BYTES`; above, a float32 map of an unlinked temporary
file (gone when the last reference goes, even after a crash or a signal), checked for free disk space before any
work.
`release` hands the pages of rows just written back to the kernel, and `bounded_residency` keeps the share of a
map's pages that stay mapped while the core reads it (with the GIL released) near `RESIDENT_BYTES`: pages of a
file map count in a process's RSS as long as they stay mapped, so 10M x 256 vectors (10 GB) would otherwise show
as 10 GB of RSS once read. Released pages stay in the page cache (or go to the disk, under memory pressure) and
come back on the next access; nothing of the data changes.

Only shared maps are released (`np.memmap` modes "r", "r+", "w+"): releasing a private copy-on-write page would
discard its changes. Linux only (`/proc/self/status`, `madvise`); elsewhere the functions do nothing.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

#: vectors above this many bytes go to a scratch file (10M x 256 float32 is 10 GB; 2M x 256 is 2 GB).
SPILL_BYTES = 2 << 30
#: pages of a shared map that may stay mapped while the core reads it. The core reads a whole matrix at memory speed
#: at the start (norms, the finite check), so a poll can find up to a few hundred MB more mapped than this.
RESIDENT_BYTES = 512 << 20
#: seconds between two looks at the process's mapped file pages (a look reads /proc/self/status: ~30 us, so 0.3 %
#: of a core).
_POLL = 0.01
#: free space kept on the scratch file's disk beyond the file itself.
_MARGIN = 256 << 20


def matrix(n: int, d: int, *, directory: str | os.PathLike[str] | None = None,
           what: str = "vectors") -> np.memmap | None:
    """None when (n, d) float32 rows fit in `SPILL_BYTES` (the caller makes an ordinary array), else a new (n, d)
    float32 map of an unlinked file in `directory` (default: the temporary directory, `TMPDIR`).

    Raises:
        OSError: not enough free space for the file (the message names the directory and the sizes), or the file
            cannot be made.
    """
    import shutil
    import tempfile

    size = n * d * 4
    if size <= SPILL_BYTES:
        return None
    where = os.fspath(directory) if directory is not None else tempfile.gettempdir()
    free = shutil.disk_usage(where).free
    if free < size + _MARGIN:
        raise OSError(f"{what}: {n:,} x {d} float32 rows need {size / 2**30:.1f} GiB of scratch space in {where}, "
                      f"which has {free / 2**30:.1f} GiB free (set TMPDIR to a larger disk)")
    with tempfile.TemporaryFile(prefix="tokvec-vectors-", dir=where) as fh:
        fh.truncate(size)
        # the map holds the file open after `fh` closes; the file has no name, so nothing is left behind
        return np.memmap(fh, dtype=np.float32, mode="w+", shape=(n, d))


def _shared_map(a: np.ndarray) -> mmap.mmap | None:
    """The shared file map under `a` (an np.memmap or a view of one), or None."""
    x: object = a
    while x is not None:
        if isinstance(x, np.memmap) and getattr(x, "_mmap", None) is not None:
            return x._mmap if x.mode in ("r", "r+", "w+") else None
        x = getattr(x, "base", None)
    return None


def _can_release(mm: mmap.mmap | None) -> bool:
    return mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED")


def release(a: np.ndarray) -> None:
    """Unmaps the pages of a shared map under `a` (written rows stay in the file); nothing for other arrays."""
    mm = _shared_map(a)
    if _can_release(mm):
        mm.madvise(mmap.MADV_DONTNEED)


def mapped_file_bytes() -> int | None:
    """The process's resident pages of file maps (`RssFile`), or None where /proc does not say."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssFile:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextmanager
def bounded_residency(a: np.ndarray, limit: int | None = None) -> Iterator[None]:
    """While the block runs (the core reading `a` with the GIL released), unmaps the pages of the shared map under
    `a` whenever the process's mapped file pages exceed `limit` (default `RESIDENT_BYTES`). Nothing for in-memory
    arrays."""
    limit = RESIDENT_BYTES if limit is None else limit
    mm = _shared_map(a)
    if not _can_release(mm) or mapped_file_bytes() is None:
        yield
        return
    stop = threading.Event()
    # the core reads the rows of a re-score at random: without this, every read maps the 15 pages around it too
    # (the kernel's fault-around), which filled the allowance 16 times faster and took twice as long at 2M rows
    if hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)

    def trim() -> None:
        while not stop.wait(_POLL):
            used = mapped_file_bytes()
            if used is not None and used > limit:
                mm.madvise(mmap.MADV_DONTNEED)

    t = threading.Thread(target=trim, name="tokvec-residency", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        mm.madvise(mmap.MADV_DONTNEED)
        if hasattr(mmap, "MADV_NORMAL"):
            mm.madvise(mmap.MADV_NORMAL)
