"""`tokvec distill`: a static table from a sentence encoder's output vectors (model2vec's recipe).

1. Every vocabulary id ``t`` goes through the teacher alone, as ``[CLS] t [SEP]``; its vector is the mean of the
   three output positions (the teacher's own pooling, before normalization).
2. The ``[V, hidden]`` result is centred and projected on its top ``dim`` principal components (float64
   eigendecomposition of the covariance, components sorted by variance and sign-fixed so the largest-|value| entry
   is positive: the output does not depend on LAPACK's arbitrary signs). Leading columns carry the most variance,
   so ``dim=k`` truncation keeps the best k-dimensional linear summary.
3. Per-token ``weights`` from token frequencies counted on a corpus: SIF ``a / (a + p(t))`` or Zipf
   ``log(1 + rank(t))``; unseen tokens get the weight of a count of one (add-one smoothing).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokvec._io import write_model_folder, write_safetensors
from tokvec._pca import pca_components
from tokvec._validate import is_int
from tokvec.config import FORMAT_VERSION
from tokvec.textio import iter_texts
from tokvec.train.teacher import Teacher

__all__ = ["WEIGHTINGS", "distill", "pca_components", "token_counts", "token_weights"]

WEIGHTINGS = ("sif", "zipf", "none")
SIF_A = 1e-3


def token_counts(tokenizer: Any, texts: Sequence[str], vocab_size: int) -> np.ndarray:
    """Occurrences of each id in `texts` (no special tokens added), int64 [vocab_size]."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    step = 16384
    for a in range(0, len(texts), step):
        encs = tokenizer.encode_batch(list(texts[a : a + step]), add_special_tokens=False)
        ids = np.fromiter((i for e in encs for i in e.ids), dtype=np.int64)
        if ids.size:
            counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
    return counts


def token_weights(counts: np.ndarray, kind: str = "sif", a: float = SIF_A) -> np.ndarray:
    """Per-token weights (float32) from counts: "sif" a/(a+p), "zipf" log(1+rank) (rank 1 = most frequent,
    ties ranked by id), "none" all ones."""
    c = counts.astype(np.float64) + 1.0
    if kind == "sif":
        p = c / c.sum()
        return (a / (a + p)).astype(np.float32)
    if kind == "zipf":
        order = np.lexsort((np.arange(len(c)), -c))
        rank = np.empty(len(c))
        rank[order] = np.arange(1, len(c) + 1)
        return np.log1p(rank).astype(np.float32)
    if kind == "none":
        return np.ones(len(c), dtype=np.float32)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {kind!r}")


def read_corpus(path: str | os.PathLike[str], *, column: str | None = None, limit: int | None = None) -> list[str]:
    """Texts of a corpus file: ``.txt`` (one a line) or ``.tsv``/``.csv``/``.jsonl``/... through tokvec's readers
    (for a ``.tsv`` with a ``sentence`` column, that column is taken when `column` is not given).

    Raises:
        ValueError: the file is empty, holds no text, or is not UTF-8.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: corpus file not found")
    if p.stat().st_size == 0:
        raise ValueError(f"{p}: the corpus file is empty")
    if column is None and p.suffix == ".tsv":
        with open(p, "rb") as f:
            head = f.readline().decode("utf-8", "replace").rstrip("\r\n").split("\t")
        if "sentence" in head:
            column = "sentence"
        elif "text" in head:
            column = "text"
    texts: list[str] = []
    try:
        for chunk in iter_texts(str(p), column=column, chunk_size=65536):
            texts.extend(chunk)
            if limit is not None and len(texts) >= limit:
                texts = texts[:limit]
                break
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"{p}: the corpus holds no text")
    return texts


def _sha256_texts(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


def token_vectors(teacher: Teacher, *, progress: bool = False) -> np.ndarray:
    """The teacher's mean-pooled output for ``[CLS] t [SEP]``, for every id t of the tokenizer, float32 [V, hidden]."""
    v = teacher.tokenizer.get_vocab_size(with_added_tokens=True)
    ids = [[teacher.cls_id, t, teacher.sep_id] for t in range(v)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=v, desc="tokens", unit="tok", dynamic_ncols=True)
    try:
        return teacher.encode_ids(ids, normalize=False, progress=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()


def save_model(
    out: str | os.PathLike[str],
    embeddings: np.ndarray,
    weights: np.ndarray | None,
    tokenizer_json: str,
    config_extra: dict[str, Any],
    *,
    dtype: str = "f32",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Writes a tokvec model folder (``model.safetensors`` with ``embeddings`` [V, d] and optional ``weights`` [V],
    ``tokenizer.json``, ``config.json``), byte-reproducibly (tensors and header keys in sorted order), as one unit:
    an interrupted write leaves no half-written model. Missing parent folders are made."""
    dst = Path(out)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst}: exists and is not an empty folder")
    np_dt, st_dt = {"f32": (np.float32, "F32"), "f16": (np.float16, "F16")}[dtype]
    emb = np.ascontiguousarray(embeddings, dtype=np.dtype(np_dt).newbyteorder("<"))
    if not np.isfinite(emb).all():
        raise ValueError("the table has non-finite values (F16 overflow?)")
    tensors = {"embeddings": (st_dt, list(emb.shape), emb.tobytes())}
    if weights is not None:
        w = np.ascontiguousarray(weights, dtype="<f4")
        tensors["weights"] = ("F32", [len(w)], w.tobytes())
    cfg = {
        "format": "tokvec",
        "format_version": FORMAT_VERSION,
        "dim": int(emb.shape[1]),
        "normalize": True,
        "pooling": "mean",
        "add_special_tokens": False,
        **config_extra,
    }
    meta = {"format": "tokvec", **dict(sorted((metadata or {}).items()))}

    def fill(tmp: Path) -> None:
        write_safetensors(tmp / "model.safetensors", tensors, meta)
        (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")

    dst.parent.mkdir(parents=True, exist_ok=True)
    return write_model_folder(dst, fill)


def distill(
    teacher: str | os.PathLike[str] | Teacher,
    out: str | os.PathLike[str],
    *,
    dim: int = 256,
    weighting: str = "sif",
    corpus: str | os.PathLike[str] | None = None,
    corpus_limit: int | None = 100_000,
    sif_a: float = SIF_A,
    dtype: str = "f32",
    progress: bool = False,
) -> Path:
    """Distils a teacher into a static tokvec model (see the module docstring for the recipe).

    Args:
        teacher: the teacher folder (BERT: config.json, model.safetensors, tokenizer.json) or a `Teacher`.
        out: the output folder (must not exist or be empty).
        dim: output dimensions (at most the teacher's hidden size).
        weighting: "sif", "zipf" or "none".
        corpus: text file for token frequencies (needed unless weighting is "none").
        corpus_limit: first texts of the corpus counted.
        sif_a: the SIF constant a.
        dtype: "f32" or "f16" table.
        progress: progress bar on stderr.

    Returns:
        the output folder.
    """
    t = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
    if not is_int(dim) or dim < 1:
        raise ValueError(f"--dim must be a positive int, got {dim!r}")
    if dim > t.dim:
        raise ValueError(f"--dim {dim} is larger than the teacher's dimension {t.dim}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    dst = Path(out)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst}: exists and is not an empty folder")
    weights = None
    corpus_info: dict[str, Any] = {}
    if weighting != "none":
        if corpus is None:
            raise ValueError(f"weighting {weighting!r} needs a corpus for token frequencies (--corpus)")
        texts = read_corpus(corpus, limit=corpus_limit)
        counts = token_counts(t.tokenizer, texts, t.tokenizer.get_vocab_size(with_added_tokens=True))
        weights = token_weights(counts, weighting, sif_a)
        corpus_info = {"corpus": Path(corpus).name, "texts": len(texts), "sha256": _sha256_texts(texts)}
    vecs = token_vectors(t, progress=progress)
    mean, evals, comps = pca_components(vecs)
    table = (vecs.astype(np.float64) - mean) @ comps[:, :dim]
    explained = float(evals[:dim].sum() / evals.sum())
    recipe = (
        f"teacher output of [CLS] t [SEP] for every id, mean-pooled; PCA {t.dim}->{dim} (centered); "
        f"weights {weighting}" + (f" (a={sif_a:g})" if weighting == "sif" else "")
    )
    extra = {
        "source": {
            "teacher": str(t.path),
            "recipe": recipe,
            "explained_variance": round(explained, 6),
            "weights": weighting,
            **({"weights_corpus": corpus_info} if corpus_info else {}),
        }
    }
    tok_json = (t.path / "tokenizer.json").read_text(encoding="utf-8")
    return save_model(dst, table, weights, tok_json, extra, dtype=dtype)
