"""`tokvec eval`: one quality table for any embedding model, from the same code for every row.

Tasks (``--tasks``) and the files they read under the data folder (``../shared/data`` layout):

=========== ============================== ===================================== ============================
task        metric                         test split                            dev split (``--split dev``)
=========== ============================== ===================================== ============================
sts         Spearman(cosine, gold)         stsb/sts-test.tsv                     stsb/sts-dev.tsv
sick        Spearman(cosine, gold)         sick-r/sick-test.tsv                  sick-r/sick-trial.tsv
pair        best-threshold F1 of cosine    paws-wiki/test.tsv, mrpc/test.tsv     paws-wiki/dev.tsv, mrpc/train.tsv
retrieval   nDCG@10 (graded qrels)         scifact qrels/test.tsv                scifact qrels/train.tsv
=========== ============================== ===================================== ============================

SciFact documents are ``title + " " + text`` (as BEIR's sentence-transformers runs embed them); queries are the
claims whose ids appear in the chosen qrels file. Every model is scored by cosine of L2-normalized vectors. Select
and tune on the dev splits only; report the test splits.

The metrics are written out in numpy here (no scipy): Spearman is the Pearson correlation of average ranks (ties
share the mean of their ranks, as ``scipy.stats.spearmanr``); best F1 tries every cut between distinct scores;
nDCG@10 uses linear gains ``rel / log2(rank + 1)`` and the ideal ordering of the query's judged documents, as
``pytrec_eval`` does for BEIR.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokvec.model import load

__all__ = [
    "METRICS",
    "TASKS",
    "EvalData",
    "best_f1",
    "evaluate",
    "format_table",
    "load_eval_data",
    "ndcg_at_k",
    "rankdata",
    "read_pairs",
    "spearman",
]

TASKS = ("sts", "sick", "pair", "retrieval")
# metric columns, in table order, and the task each belongs to
METRICS = {"stsb": "sts", "sick": "sick", "paws": "pair", "mrpc": "pair", "scifact": "retrieval"}
_SPLITS = ("test", "dev")

Encoder = Callable[[list[str]], np.ndarray]


# --------------------------------------------------------------------------------------------------- metrics


def rankdata(a: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the average of the ranks they span (float64)."""
    x = np.asarray(a, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]]) if len(x) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of the average ranks (nan when either side is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) != len(rb):
        raise ValueError(f"spearman: {len(ra)} vs {len(rb)} values")
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / den) if den > 0 else float("nan")


def best_f1(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[float, float]:
    """Best F1 of "positive when score >= threshold" over every threshold.

    Returns:
        (f1, threshold): the threshold is the lowest score predicted positive at the best cut.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if len(s) != len(y):
        raise ValueError(f"best_f1: {len(s)} scores vs {len(y)} labels")
    pos = int(y.sum())
    if pos == 0 or len(s) == 0:
        return 0.0, float("nan")
    order = np.argsort(-s, kind="mergesort")
    ss, ys = s[order], y[order]
    tp = np.cumsum(ys)
    k = np.arange(1, len(s) + 1)
    # a cut may only fall after the last of a run of equal scores
    last = np.r_[ss[1:] != ss[:-1], True]
    f1 = np.where(last, 2 * tp / (k + pos), -1.0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(ss[i])


def ndcg_at_k(scores: np.ndarray, qrels: Sequence[dict[int, float]], k: int = 10) -> float:
    """Mean nDCG@k over queries.

    Args:
        scores: (queries, docs) similarity matrix.
        qrels: for each query, {doc index: relevance > 0}.
        k: the cut-off.

    Ties in score are broken by document index (lower first), so results are deterministic.
    """
    if scores.shape[0] != len(qrels):
        raise ValueError(f"ndcg_at_k: {scores.shape[0]} score rows vs {len(qrels)} qrels")
    total = 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for row, rel in zip(scores, qrels):
        kk = min(k, len(row))
        top = np.argpartition(-row, kk - 1)[:kk] if kk < len(row) else np.arange(len(row))
        # exact order among the candidates: score descending, then index ascending
        top = top[np.lexsort((top, -row[top]))]
        # argpartition may drop a tied candidate with a lower index; re-admit ties at the boundary
        edge = row[top[-1]]
        tied = np.flatnonzero(row == edge)
        if len(tied) > 1:
            cand = np.union1d(top, tied)
            top = cand[np.lexsort((cand, -row[cand]))][:kk]
        dcg = sum(rel.get(int(d), 0.0) * discounts[i] for i, d in enumerate(top))
        ideal = sorted(rel.values(), reverse=True)[:kk]
        idcg = sum(g * discounts[i] for i, g in enumerate(ideal))
        total += dcg / idcg if idcg > 0 else 0.0
    return total / len(qrels)


# --------------------------------------------------------------------------------------------------- data


def _read_tsv(path: Path, columns: Sequence[str], header: bool = True) -> list[list[str]]:
    """Tab-separated, no quoting (the shared/data files are not quoted). Returns the asked columns per row."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: evaluation file not found (pass --data DIR)")
    with open(path, encoding="utf-8-sig", newline="") as f:
        names = f.readline().rstrip("\r\n").split("\t")
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; the header has {names}")
        idx = [names.index(c) for c in columns]
        rows = []
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < len(names):
                continue
            rows.append([parts[i] for i in idx])
    return rows


@dataclass
class PairTask:
    """Sentence pairs with a gold score (STS) or a 0/1 label (paraphrase)."""

    a: list[str]
    b: list[str]
    gold: np.ndarray


@dataclass
class RetrievalTask:
    queries: list[str]
    docs: list[str]
    qrels: list[dict[int, float]]


@dataclass
class EvalData:
    """The loaded evaluation sets of one split, keyed by metric name (`METRICS`)."""

    split: str
    sets: dict[str, Any] = field(default_factory=dict)

    def texts(self) -> list[str]:
        """Every distinct text, in first-seen order (what one encoder pass needs)."""
        seen: dict[str, None] = {}
        for s in self.sets.values():
            parts = (s.a, s.b) if isinstance(s, PairTask) else (s.queries, s.docs)
            for p in parts:
                for t in p:
                    seen.setdefault(t, None)
        return list(seen)


def read_pairs(
    path: str | os.PathLike[str],
    c1: str = "sentence1",
    c2: str = "sentence2",
    gold: str = "score",
    limit: int | None = None,
) -> PairTask:
    """A sentence-pair set (tab-separated with a header, no quoting; STS-B's columns by default)."""
    rows = _read_tsv(Path(path), [c1, c2, gold])[:limit]
    return PairTask([r[0] for r in rows], [r[1] for r in rows], np.array([float(r[2]) for r in rows]))


def _scifact(root: Path, split: str, limit: int | None) -> RetrievalTask:
    d = root / "scifact"
    qrel_rows = _read_tsv(
        d / "qrels" / f"{'test' if split == 'test' else 'train'}.tsv", ["query-id", "corpus-id", "score"]
    )
    corpus_ids: list[str] = []
    docs: list[str] = []
    with open(d / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                o = json.loads(line)
                corpus_ids.append(str(o["_id"]))
                docs.append((o.get("title", "") + " " + o.get("text", "")).strip())
    doc_index = {c: i for i, c in enumerate(corpus_ids)}
    judged: dict[str, dict[int, float]] = {}
    for q, c, s in qrel_rows:
        if float(s) > 0 and c in doc_index:
            judged.setdefault(q, {})[doc_index[c]] = float(s)
    qtext: dict[str, str] = {}
    with open(d / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                o = json.loads(line)
                qtext[str(o["_id"])] = o["text"]
    qids = [q for q in judged if q in qtext][:limit]
    if limit is not None:
        # a small slice: keep the judged documents plus the first `limit * 10` others, re-indexed
        keep = sorted({i for q in qids for i in judged[q]} | set(range(min(len(docs), limit * 10))))
        remap = {old: new for new, old in enumerate(keep)}
        docs = [docs[i] for i in keep]
        judged = {q: {remap[i]: g for i, g in judged[q].items()} for q in qids}
    return RetrievalTask([qtext[q] for q in qids], docs, [judged[q] for q in qids])


def load_eval_data(
    data_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    tasks: Sequence[str] = TASKS,
    limit: int | None = None,
) -> EvalData:
    """Reads the evaluation sets.

    Args:
        data_dir: the folder holding stsb/, sick-r/, paws-wiki/, mrpc/, scifact/ (the layout in the module
            docstring).
        split: "test" (report) or "dev" (select and tune).
        tasks: any of `TASKS`.
        limit: keep only the first `limit` pairs / queries of each set (quick checks, tests).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {bad}; choose from {', '.join(TASKS)}")
    if data_dir is None:
        raise TypeError("data_dir must be the folder holding the evaluation sets (stsb/, sick-r/, ...), got None")
    root = Path(data_dir)
    test = split == "test"
    out = EvalData(split)
    if "sts" in tasks:
        out.sets["stsb"] = read_pairs(
            root / "stsb" / ("sts-test.tsv" if test else "sts-dev.tsv"), "sentence1", "sentence2", "score", limit
        )
    if "sick" in tasks:
        out.sets["sick"] = read_pairs(
            root / "sick-r" / ("sick-test.tsv" if test else "sick-trial.tsv"),
            "sentence_A",
            "sentence_B",
            "relatedness_score",
            limit,
        )
    if "pair" in tasks:
        out.sets["paws"] = read_pairs(
            root / "paws-wiki" / ("test.tsv" if test else "dev.tsv"), "sentence1", "sentence2", "label", limit
        )
        out.sets["mrpc"] = read_pairs(
            root / "mrpc" / ("test.tsv" if test else "train.tsv"), "sentence1", "sentence2", "label", limit
        )
    if "retrieval" in tasks:
        out.sets["scifact"] = _scifact(root, split, limit)
    return out


# --------------------------------------------------------------------------------------------------- models


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, np.float32(1e-12))


def as_encoder(model: Any, *, dim: int | None = None) -> Encoder:
    """An encoder (list of str -> float32 (n, d)) from a tokvec `Model`, a path or bundled name (`tokvec.load`),
    a `Teacher`, any object with ``embed`` or ``encode``, or a callable."""
    if isinstance(model, (str, os.PathLike)) or model is None:
        model = load(model, dim=dim)
        dim = None
    from tokvec.train.teacher import Teacher

    if isinstance(model, Teacher):  # cached vectors
        from tokvec.train.cache import teacher_vectors

        teacher = model

        def enc_teacher(texts: list[str]) -> np.ndarray:
            return teacher_vectors(teacher, texts, progress=_progress_default(), desc="teacher")

        base: Encoder = enc_teacher
    elif hasattr(model, "embed") and callable(model.embed):
        base = model.embed
    elif hasattr(model, "encode") and callable(model.encode):
        base = model.encode
    elif callable(model):
        base = model
    else:
        raise TypeError(f"cannot evaluate a {type(model).__name__}: pass a tokvec.Model, a path or a callable")

    def enc(texts: list[str]) -> np.ndarray:
        x = np.asarray(base(list(texts)))
        if dim is not None:
            x = x[:, :dim]
        return _normalize(x)

    return enc


def _progress_default() -> bool:
    import sys

    return sys.stderr.isatty()


def evaluate(
    model: Any = None,
    *,
    tasks: Sequence[str] = TASKS,
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    dim: int | None = None,
    limit: int | None = None,
    data: EvalData | None = None,
) -> dict[str, float]:
    """Scores one model on the evaluation sets.

    Args:
        model: a tokvec `Model`, a model path or bundled name (None: the default model), a `Teacher`, or any
            encoder (a callable or an object with ``embed``/``encode``) returning one vector per text.
        tasks: any of `TASKS` ("sts", "sick", "pair", "retrieval").
        split: "test" or "dev".
        data_dir: the folder holding the evaluation sets (stsb/, sick-r/, paws-wiki/, mrpc/, scifact/); needed
            unless `data` is given.
        dim: keep the first `dim` columns (Matryoshka truncation) before normalizing.
        limit: first `limit` pairs / queries of each set.
        data: already loaded sets (`load_eval_data`), to score several models on one read.

    Returns:
        {metric: value}: "stsb", "sick" (Spearman), "paws", "mrpc" (best F1), "scifact" (nDCG@10), for the
        tasks asked.
    """
    if data is None:
        if data_dir is None:
            raise TypeError(
                "evaluate needs the evaluation sets: data_dir=<folder holding stsb/, sick-r/, paws-wiki/, mrpc/, "
                "scifact/> or data=load_eval_data(folder)"
            )
        data = load_eval_data(data_dir, split=split, tasks=tasks, limit=limit)
    enc = as_encoder(model, dim=dim)
    out: dict[str, float] = {}
    for name, s in data.sets.items():
        # one encoder pass per set over its distinct texts (a teacher caches each set's vectors on its own, so a
        # later run with other tasks reuses them)
        texts = list(dict.fromkeys([*s.a, *s.b] if isinstance(s, PairTask) else [*s.queries, *s.docs]))
        vecs = enc(texts)
        index = {t: i for i, t in enumerate(texts)}

        def rows(ts: list[str], vecs: np.ndarray = vecs, index: dict[str, int] = index) -> np.ndarray:
            return vecs[[index[t] for t in ts]]

        if isinstance(s, PairTask):
            cos = (rows(s.a) * rows(s.b)).sum(axis=1)
            out[name] = spearman(cos, s.gold) if name in ("stsb", "sick") else best_f1(cos, s.gold)[0]
        else:
            out[name] = ndcg_at_k(rows(s.queries) @ rows(s.docs).T, s.qrels, 10)
    return out


def format_table(results: dict[str, dict[str, float]], split: str) -> str:
    """A Markdown table, one row per model, one column per metric, values x 100."""
    cols = [m for m in METRICS if any(m in r for r in results.values())]
    heads = {
        "stsb": "STS-B ρ",
        "sick": "SICK-R ρ",
        "paws": "PAWS F1",
        "mrpc": "MRPC F1",
        "scifact": "SciFact nDCG@10",
    }
    width = max([len("model")] + [len(k) for k in results])
    lines = [
        f"| {'model (' + split + ')':<{width}} | " + " | ".join(heads[c] for c in cols) + " |",
        "|" + "-" * (width + 2) + "|" + "|".join("-" * (len(heads[c]) + 2) for c in cols) + "|",
    ]
    for name, r in results.items():
        cells = [f"{100 * r[c]:.2f}".rjust(len(heads[c])) if c in r else " " * len(heads[c]) for c in cols]
        lines.append(f"| {name:<{width}} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- peers


def wordllama_encoder(dim: int | None = None) -> Encoder | None:
    """WordLlama's own l2_supercat 256 model, offline, when the `wordllama` package is installed; `dim` (64 or 128)
    truncates it the way WordLlama does (``trunc_dim``: its Matryoshka prefixes), for the truncation rows.

    WordLlama looks for its tokenizer under ``~/.cache/wordllama/tokenizers/`` (not the folder its wheel ships), so
    the shipped JSON is copied there first; ``disable_download=True`` keeps it from going online.
    """
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    src = root / "tokenizers" / "l2_supercat_tokenizer_config.json"
    if not src.is_file():
        return None
    cache = Path.home() / ".cache" / "wordllama" / "tokenizers"
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / src.name).is_file() or (cache / src.name).read_bytes() != src.read_bytes():
        shutil.copyfile(src, cache / src.name)
    from wordllama import WordLlama

    trunc = None if dim is None or dim >= 256 else dim
    wl = WordLlama.load(config="l2_supercat", dim=256, trunc_dim=trunc, disable_download=True)
    return lambda texts: np.asarray(wl.embed(texts, norm=True), dtype=np.float32)


def model2vec_encoder() -> Encoder | None:
    """model2vec's `StaticModel` on WordLlama's l2_supercat 256 table and tokenizer (the same table as the
    wordllama row, run by model2vec's pooling), when both packages are installed."""
    import importlib.util

    if importlib.util.find_spec("model2vec") is None or importlib.util.find_spec("wordllama") is None:
        return None
    spec = importlib.util.find_spec("wordllama")
    root = Path(next(iter(spec.submodule_search_locations)))  # type: ignore[union-attr, arg-type]
    table_path = root / "weights" / "l2_supercat_256.safetensors"
    tok_path = root / "tokenizers" / "l2_supercat_tokenizer_config.json"
    if not table_path.is_file() or not tok_path.is_file():
        return None
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    from tokvec._io import read_safetensors

    table = read_safetensors(table_path)["embedding.weight"]
    m = StaticModel(vectors=table, tokenizer=Tokenizer.from_file(str(tok_path)), normalize=True)
    return lambda texts: np.asarray(m.encode(texts, show_progress_bar=False), dtype=np.float32)
