"""On-disk cache of teacher vectors: encode a text once, reuse it in every later run.

Texts are cut into chunks of `CHUNK` in input order; each chunk is stored as one ``.npy`` (float32) named after the
sha256 of the teacher's fingerprint and the chunk's texts. A run that stops midway keeps every finished chunk, so
the next run resumes where it stopped, and a longer prefix of the same corpus (or the same eval split) reuses the
chunks it shares. Files are written to a temporary name and renamed, so a stopped run never leaves a torn chunk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHUNK", "default_cache_dir", "teacher_vectors"]

CHUNK = 2048


def default_cache_dir() -> Path:
    """``$TOKVEC_CACHE`` or ``~/.cache/tokvec``."""
    env = os.environ.get("TOKVEC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tokvec"


def _chunk_key(fingerprint: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256(fingerprint.encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:32]


def teacher_vectors(
    teacher: Any,
    texts: Sequence[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    desc: str = "teacher",
) -> np.ndarray:
    """Teacher sentence vectors of `texts`, from the cache where present, else encoded and cached.

    Args:
        teacher: a `Teacher` (anything with ``encode(texts)``, ``dim`` and ``fingerprint()``).
        texts: the texts, in order.
        cache_dir: the cache root (default `default_cache_dir()`).
        progress: show a tqdm bar (texts, texts/s, ETA) on stderr.
        desc: the bar's label.

    Returns:
        float32 (len(texts), teacher.dim), L2-normalized.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "teacher" / teacher.fingerprint()
    folder.mkdir(parents=True, exist_ok=True)
    n = len(texts)
    out = np.zeros((n, teacher.dim), dtype=np.float32)
    todo: list[tuple[int, int, Path]] = []
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        path = folder / f"{_chunk_key(teacher.fingerprint(), texts[a:b])}.npy"
        if path.is_file():
            try:
                arr = np.load(path)
            except (OSError, ValueError):
                arr = None
            if arr is not None and arr.shape == (b - a, teacher.dim):
                out[a:b] = arr
                continue
        todo.append((a, b, path))
    if not todo:
        return out
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, initial=n - sum(b - a for a, b, _ in todo), desc=desc, unit="texts", dynamic_ncols=True)
    try:
        for a, b, path in todo:
            vecs = teacher.encode(list(texts[a:b]), progress=None if bar is None else bar.update)
            out[a:b] = vecs
            fd, tmp = tempfile.mkstemp(prefix=".chunk.", suffix=".npy", dir=folder)
            with os.fdopen(fd, "wb") as f:
                np.save(f, vecs)
            os.replace(tmp, path)
    finally:
        if bar is not None:
            bar.close()
    return out
