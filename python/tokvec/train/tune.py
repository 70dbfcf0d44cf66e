"""`tokvec tune`: fit a static table so that its pooled sentence vectors match a teacher's, on real sentences.

The student is tokvec's own pooling: ``s = sum_i w[t_i] E[t_i] / n`` over a text's non-special tokens, compared by
cosine. The targets are the teacher's (cached) sentence vectors ``T``, minus their mean over the corpus (the
component every sentence shares; ``center_targets``), expressed in the student's dimension ``d``: ``Y = T B`` with
``B`` the top-``d`` right singular vectors of that matrix (sign-fixed). The table is first
rotated by the orthogonal ``R`` that best maps its pooled vectors onto ``Y`` (Procrustes); a rotation changes no
cosine, so the starting quality is kept, and the table's leading columns now line up with the teacher's leading
directions.

Loss per text, averaged over a mini-batch (Matryoshka: the same cosine loss on the leading 128 and 64 columns)::

    L = sum_{m in dims} (1 - cos(s[:m], Y[:m]))  +  lambda * InfoNCE(s, Y; tau)   (optional in-batch term)

With supervised pairs (``tune(..., pairs=[...])``, `tokvec.train.pairs`), each step also draws a batch of scored
pairs and a batch of NLI triplets (cycling through them independently of the corpus) and adds
``pair_weight * CoSENT + nli_weight * InfoNCE(anchor; positives, hard negatives)``, both on the same dims.

Gradients are written out by hand: for ``c = <s, y> / (|s| |y|)``, ``dc/ds = (y/|y| - c s/|s|) / |s|``; the gradient
of a pooled vector reaches each of its tokens' rows times ``w[t] / n`` (a scatter-add over the batch's distinct
ids). Adam updates only the rows a batch touched (lazy/sparse Adam with the global step for bias correction).
Everything runs in float32 numpy with a fixed seed: the same inputs give the same table.

The epoch kept is the one with the best mean of STS-B dev and SICK-R trial Spearman and SciFact nDCG@10 on the
train qrels (dev splits only).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokvec import _core
from tokvec._io import read_float32
from tokvec.model import load
from tokvec.train.pairs import (
    ScoredPairs,
    cosent_loss_grad,
    diagonal_softmax_xent,
    infonce_loss_grad,
    parse_pairs_arg,
    read_pairs,
    unit,
    unit_back,
)

__all__ = ["PairData", "Student", "TuneConfig", "target_basis", "tune", "tune_table"]

_CSR = tuple[np.ndarray, np.ndarray]


@dataclass
class PairData:
    """Supervised pairs as CSR token ids (filtered; every text has a pooled token): scored pairs ``(a, b)`` with
    their scores, and NLI triplets ``(anchor, positive, negative)``. Either may be None."""

    scored: tuple[_CSR, _CSR, np.ndarray] | None = None
    nli: tuple[_CSR, _CSR, _CSR] | None = None


@dataclass
class TuneConfig:
    """Hyper-parameters of `tune` (recorded in the output's config.json)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    matryoshka: tuple[int, ...] = (128, 64)
    contrastive: float = 0.0
    temperature: float = 0.05
    seed: int = 0
    max_texts: int | None = None
    center_targets: bool = True
    token_examples: bool = False
    decay: float = 0.0
    schedule: str = "constant"
    average: bool = False
    # chosen on dev with the default model's corpus (404k texts, 3 epochs): a weight of 1 on either pair loss
    # outweighs the teacher and lowered the dev mean (docs/model-card.md, "Supervised pairs")
    pair_weight: float = 0.002
    pair_scale: float = 20.0
    nli_weight: float = 0.003
    nli_temperature: float = 0.1
    pair_batch: int = 64


class Student:
    """A static model's trainable parts: table E [V, d] (float32), fixed weights w [V], skipped ids."""

    def __init__(self, table: np.ndarray, weights: np.ndarray | None, skip_ids: Sequence[int]):
        self.E = np.ascontiguousarray(table, dtype=np.float32)
        v = self.E.shape[0]
        self.w = np.ones(v, dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32).copy()
        self.keep = np.ones(v, dtype=bool)
        skip = np.asarray([i for i in skip_ids if 0 <= i < v], dtype=np.int64)
        self.keep[skip] = False

    def csr(self, ids: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drops skipped ids from a CSR batch of token ids; returns (ids int64, offsets int64)."""
        ids = np.asarray(ids, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        ok = self.keep[ids]
        seg = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        counts = np.bincount(seg[ok], minlength=len(offsets) - 1)
        return ids[ok], np.r_[0, np.cumsum(counts)].astype(np.int64)

    def pool(self, ids: np.ndarray, offsets: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Pooled vectors for CSR ids (already filtered): sum(w E) / n, optionally L2-normalized; empty -> 0."""
        n = len(offsets) - 1
        out = np.zeros((n, self.E.shape[1]), dtype=np.float32)
        lens = np.diff(offsets)
        # in slices of texts, so the gathered rows stay small (SciFact's corpus is 1.5 M tokens)
        step = 1024
        for a in range(0, n, step):
            b = min(n, a + step)
            nz = a + np.flatnonzero(lens[a:b] > 0)
            if len(nz) == 0:
                continue
            lo, hi = offsets[a], offsets[b]
            rows = self.E[ids[lo:hi]] * self.w[ids[lo:hi]][:, None]
            sums = np.add.reduceat(rows, offsets[nz] - lo, axis=0)
            out[nz] = sums / lens[nz][:, None].astype(np.float32)
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
        return out


def target_basis(t: np.ndarray, d: int) -> np.ndarray:
    """Top-`d` right singular vectors of the (uncentred) teacher vectors, as columns [hidden, d], float32.

    From the float64 eigendecomposition of ``T^T T``, sorted descending, each flipped so its largest-|value| entry
    is positive (deterministic whatever LAPACK's signs).
    """
    x = np.asarray(t, dtype=np.float64)
    g = x.T @ x
    g = (g + g.T) / 2
    evals, evecs = np.linalg.eigh(g)
    order = np.argsort(evals)[::-1][:d]
    evecs = evecs[:, order]
    pivot = np.argmax(np.abs(evecs), axis=0)
    signs = np.sign(evecs[pivot, np.arange(evecs.shape[1])])
    signs[signs == 0] = 1.0
    return (evecs * signs).astype(np.float32)


def procrustes(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Orthogonal R [d, d] minimizing ||s R - y|| (rows normalized first), in float64, returned float32."""
    a = s.astype(np.float64)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = y.astype(np.float64)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    u, _, vt = np.linalg.svd(a.T @ b)
    return (u @ vt).astype(np.float32)


def _cos_grad(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row cosine c of s and y and dc/ds."""
    ns = np.maximum(np.linalg.norm(s, axis=1, keepdims=True), np.float32(1e-12))
    ny = np.maximum(np.linalg.norm(y, axis=1, keepdims=True), np.float32(1e-12))
    sh, yh = s / ns, y / ny
    c = (sh * yh).sum(axis=1, keepdims=True)
    return c[:, 0], (yh - c * sh) / ns


def batch_loss_grad(
    s: np.ndarray, y: np.ndarray, dims: Sequence[int], contrastive: float, temperature: float
) -> tuple[float, np.ndarray]:
    """Loss (mean over the batch) and its gradient with respect to the pooled vectors s [B, d]."""
    b = s.shape[0]
    g = np.zeros_like(s)
    loss = 0.0
    for m in dims:
        c, dc = _cos_grad(s[:, :m], y[:, :m])
        loss += float((1.0 - c).mean())
        g[:, :m] -= dc / np.float32(b)
    if contrastive > 0:
        sh, ns = unit(s)
        yh, _ = unit(y)
        part, p = diagonal_softmax_xent(sh, yh, temperature)
        loss += contrastive * part
        g += unit_back((p @ yh) * np.float32(contrastive / (temperature * b)), sh, ns)
    return loss, g


def _check_config(cfg: TuneConfig) -> None:
    """Raises ValueError for hyper-parameters `tune_table` cannot run with."""
    if cfg.epochs < 0 or cfg.batch_size < 1 or not cfg.lr > 0:
        raise ValueError("epochs must be >= 0, batch_size >= 1 and lr > 0")
    if cfg.schedule not in ("constant", "linear"):
        raise ValueError(f"schedule must be 'constant' or 'linear', not {cfg.schedule!r}")
    if cfg.pair_weight < 0 or cfg.nli_weight < 0:
        raise ValueError("pair_weight and nli_weight must be >= 0")
    if cfg.pair_batch < 2 or not cfg.pair_scale > 0 or not cfg.nli_temperature > 0:
        raise ValueError("pair_batch must be >= 2, pair_scale and nli_temperature > 0")


def _gather(ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The token ids of the chosen texts of a CSR batch, concatenated, and their lengths."""
    bl = offsets[rows + 1] - offsets[rows]
    tok = np.concatenate([ids[s : s + k] for s, k in zip(offsets[rows].tolist(), bl.tolist())])
    return tok, bl


class _Cycle:
    """Batches of indices into n items: shuffled passes, one after the other (a batch may span two passes)."""

    def __init__(self, n: int, size: int, rng: np.random.Generator):
        self.n, self.size, self.rng = n, min(size, n), rng
        self.order = rng.permutation(n)
        self.pos = 0

    def next(self) -> np.ndarray:
        out = self.order[self.pos : self.pos + self.size]
        self.pos += self.size
        if len(out) < self.size:
            self.order = self.rng.permutation(self.n)
            self.pos = self.size - len(out)
            out = np.r_[out, self.order[: self.pos]]
        return out


def tune_table(
    student: Student,
    ids: np.ndarray,
    offsets: np.ndarray,
    targets: np.ndarray,
    cfg: TuneConfig,
    *,
    validate: Callable[[Student], float] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    pairs: PairData | None = None,
) -> dict[str, Any]:
    """Trains `student.E` in place on CSR token ids (filtered) and targets [N, d], plus the supervised `pairs` when
    given; keeps the best epoch by `validate` (higher is better) when given, else the last. Returns a history
    dict."""
    say = log or (lambda _m: None)
    n = len(offsets) - 1
    d = student.E.shape[1]
    dims = [d] + [m for m in cfg.matryoshka if m < d]
    rng = np.random.default_rng(cfg.seed)
    m1 = np.zeros_like(student.E)
    m2 = np.zeros_like(student.E)
    b1, b2, eps = 0.9, 0.999, 1e-8
    start = student.E.copy() if cfg.decay > 0 else None
    step = 0
    _check_config(cfg)
    total_steps = max(1, cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size))
    # the pair streams draw from the same generator only when present, so a run without pairs is unchanged
    scored = pairs.scored if pairs is not None and cfg.pair_weight > 0 else None
    nli = pairs.nli if pairs is not None and cfg.nli_weight > 0 else None
    scored_cycle = _Cycle(len(scored[2]), cfg.pair_batch, rng) if scored is not None else None
    nli_cycle = _Cycle(len(nli[0][1]) - 1, cfg.pair_batch, rng) if nli is not None else None
    history: dict[str, Any] = {"epochs": []}
    best = (-np.inf, -1, student.E.copy())
    snapshots: list[np.ndarray] = []
    if validate is not None:
        score = validate(student)
        history["epochs"].append({"epoch": 0, "dev": score})
        best = (score, 0, student.E.copy())
        say(f"epoch 0: dev {score:.4f}")
    t0 = time.time()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size),
            desc="tune",
            unit="step",
            dynamic_ncols=True,
        )
    try:
        for epoch in range(1, cfg.epochs + 1):
            order = rng.permutation(n)
            total = total_pair = total_nli = 0.0
            n_steps = 0
            for a in range(0, n, cfg.batch_size):
                rows = order[a : a + cfg.batch_size]
                # the batch's texts: the corpus rows, then the pairs' sides; pooled together, one scatter
                parts = [_gather(ids, offsets, rows)]
                if scored_cycle is not None:
                    prow = scored_cycle.next()
                    parts += [_gather(*scored[0], prow), _gather(*scored[1], prow)]
                if nli_cycle is not None:
                    trow = nli_cycle.next()
                    parts += [_gather(*side, trow) for side in nli]
                tok = np.concatenate([p[0] for p in parts])
                bl = np.concatenate([p[1] for p in parts])
                off = np.r_[0, np.cumsum(bl)]
                seg = np.repeat(np.arange(len(bl)), bl)
                w = student.w[tok]
                pooled = np.add.reduceat(student.E[tok] * w[:, None], off[:-1], axis=0) / bl[:, None].astype(np.float32)
                k = len(rows)
                loss, g_t = batch_loss_grad(pooled[:k], targets[rows], dims, cfg.contrastive, cfg.temperature)
                total += loss * k
                grads = [g_t]
                if scored_cycle is not None:
                    q = len(prow)
                    pl, gu, gv = cosent_loss_grad(
                        pooled[k : k + q], pooled[k + q : k + 2 * q], scored[2][prow], dims, cfg.pair_scale
                    )
                    total_pair += pl
                    grads += [gu * np.float32(cfg.pair_weight), gv * np.float32(cfg.pair_weight)]
                    k += 2 * q
                if nli_cycle is not None:
                    q = len(trow)
                    nl, ga, gp, gn = infonce_loss_grad(
                        pooled[k : k + q],
                        pooled[k + q : k + 2 * q],
                        pooled[k + 2 * q : k + 3 * q],
                        dims,
                        cfg.nli_temperature,
                    )
                    total_nli += nl
                    grads += [g_ * np.float32(cfg.nli_weight) for g_ in (ga, gp, gn)]
                n_steps += 1
                g = np.concatenate(grads) if len(grads) > 1 else g_t
                gtok = g[seg] * (w / bl[seg].astype(np.float32))[:, None]
                # scatter-add into rows: sort by id, sum each run
                srt = np.argsort(tok, kind="stable")
                ts = tok[srt]
                first = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
                uniq = ts[first]
                grad = np.add.reduceat(gtok[srt], first, axis=0)
                step += 1
                m1[uniq] = b1 * m1[uniq] + (1 - b1) * grad
                m2[uniq] = b2 * m2[uniq] + (1 - b2) * grad * grad
                lr_s = cfg.lr * (1.0 - (step - 1) / total_steps if cfg.schedule == "linear" else 1.0)
                lr_t = lr_s * np.sqrt(1 - b2**step) / (1 - b1**step)
                student.E[uniq] -= np.float32(lr_t) * m1[uniq] / (np.sqrt(m2[uniq]) + np.float32(eps))
                if start is not None:  # decoupled pull of the touched rows toward the starting table
                    student.E[uniq] -= np.float32(lr_s * cfg.decay) * (student.E[uniq] - start[uniq])
                if bar is not None:
                    bar.update(1)
            rec: dict[str, Any] = {"epoch": epoch, "loss": total / n, "seconds": round(time.time() - t0, 1)}
            msg = f"epoch {epoch}: loss {total / n:.4f}"
            if scored_cycle is not None:  # mean per step (each step's CoSENT is one value for its batch of pairs)
                rec["pair_loss"] = total_pair / max(1, n_steps)
                msg += f", pairs {rec['pair_loss']:.4f}"
            if nli_cycle is not None:
                rec["nli_loss"] = total_nli / max(1, n_steps)
                msg += f", nli {rec['nli_loss']:.4f}"
            if validate is not None:
                score = validate(student)
                rec["dev"] = score
                msg += f", dev {score:.4f}"
                if score > best[0]:
                    best = (score, epoch, student.E.copy())
            history["epochs"].append(rec)
            say(msg + f" ({time.time() - t0:.0f} s)")
            if cfg.average and validate is not None:  # averages are only kept when dev can choose them
                snapshots.append(student.E.copy())
    finally:
        if bar is not None:
            bar.close()
    if validate is not None and len(snapshots) > 1:
        # averages of the last k epochs' tables (k >= 2) are candidates too (weight averaging, as in SWA)
        for k in range(2, len(snapshots) + 1):
            student.E[:] = np.mean(snapshots[-k:], axis=0)
            score = validate(student)
            history.setdefault("averages", []).append({"last_epochs": k, "dev": score})
            say(f"mean of the last {k} epochs: dev {score:.4f}")
            if score > best[0]:
                best = (score, f"mean of epochs {len(snapshots) - k + 1}-{len(snapshots)}", student.E.copy())
    if validate is not None:
        student.E[:] = best[2]
        history["best_epoch"] = best[1]
        history["best_dev"] = best[0]
    history["seconds"] = round(time.time() - t0, 1)
    return history


def token_teacher_vectors(teacher: Any, *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = False):
    """The teacher's normalized vector of ``[CLS] t [SEP]`` for every id t, cached as ``tokens.npy`` next to the
    sentence chunks."""
    import tempfile

    from tokvec.train.cache import default_cache_dir
    from tokvec.train.distill import token_vectors

    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "teacher" / teacher.fingerprint()
    path = folder / "tokens.npy"
    if path.is_file():
        arr = np.load(path)
        if arr.shape == (teacher.tokenizer.get_vocab_size(with_added_tokens=True), teacher.dim):
            return arr
    v = token_vectors(teacher, progress=progress)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), np.float32(1e-12))
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tokens.", suffix=".npy", dir=folder)
    with os.fdopen(fd, "wb") as f:
        np.save(f, v)
    os.replace(tmp, path)
    return v


def _load_student(model: str | os.PathLike[str]) -> tuple[Any, Student]:
    m = load(model)
    r = m._resolved
    f = _core.SafetensorsFile(r.safetensors)
    if r.mapping:
        raise ValueError(f"{model}: models with a `mapping` tensor cannot be tuned")
    table = read_float32(f, r.table)
    weights = read_float32(f, r.weights) if r.weights else None
    return m, Student(table, weights, m._skip_ids)


def _dev_validator(m: Any, student: Student, data_dir: str | os.PathLike[str] | None) -> Callable[[Student], float]:
    """Mean of STS-B dev Spearman, SICK-R trial Spearman and SciFact nDCG@10 on the train qrels (all dev splits)
    of the student (numpy pooling with tokvec's tokenizer, the same vectors tokvec computes)."""
    from tokvec.train.evaluate import PairTask, load_eval_data, ndcg_at_k, spearman

    data = load_eval_data(data_dir, split="dev", tasks=("sts", "sick", "retrieval"))
    sets = []
    for s in data.sets.values():
        a, b = (s.a, s.b) if isinstance(s, PairTask) else (s.queries, s.docs)
        sets.append((student.csr(*m._core.encode(a)), student.csr(*m._core.encode(b)), s))

    def validate(st: Student) -> float:
        scores = []
        for (ia, oa), (ib, ob), s in sets:
            va, vb = st.pool(ia, oa), st.pool(ib, ob)
            if isinstance(s, PairTask):
                scores.append(spearman((va * vb).sum(axis=1), s.gold))
            else:
                scores.append(ndcg_at_k(va @ vb.T, s.qrels, 10))
        return float(np.mean(scores))

    return validate


def _pair_data(m: Any, student: Student, sets: Sequence[Any], say: Callable[[str], None]) -> PairData:
    """Tokenizes the pairs files (scored files joined, nli files joined); drops pairs with a side that has no
    pooled token (its vector would be zero, its cosine undefined)."""

    def csr(texts: list[str]) -> _CSR:
        return student.csr(*m._core.encode(texts))

    def keep(sides: list[_CSR], rows: np.ndarray) -> list[_CSR]:  # rows: not empty (checked by the callers)
        out = []
        for ids, off in sides:
            tok, lens = _gather(ids, off, rows)
            out.append((tok, np.r_[0, np.cumsum(lens)].astype(np.int64)))
        return out

    def nonempty(sides: list[_CSR]) -> np.ndarray:
        ok = np.ones(len(sides[0][1]) - 1, dtype=bool)
        for _ids, off in sides:
            ok &= np.diff(off) > 0
        return np.flatnonzero(ok)

    data = PairData()
    scored = [s for s in sets if isinstance(s, ScoredPairs)]
    nli = [s for s in sets if not isinstance(s, ScoredPairs)]
    if scored:
        sides = [csr([t for s in scored for t in s.a]), csr([t for s in scored for t in s.b])]
        rows = nonempty(sides)
        gold = np.concatenate([s.score for s in scored]).astype(np.float32)
        if len(rows) == 0:
            raise ValueError(f"{', '.join(s.source for s in scored)}: no pair has a token the model pools")
        a, b = keep(sides, rows)
        data.scored = (a, b, gold[rows])
        say(f"scored pairs: {len(rows)} (of {len(gold)})")
    if nli:
        sides = [csr([t for s in nli for t in getattr(s, f)]) for f in ("anchor", "positive", "negative")]
        rows = nonempty(sides)
        if len(rows) == 0:
            raise ValueError(f"{', '.join(s.source for s in nli)}: no triplet has a token the model pools")
        an, po, ne = keep(sides, rows)
        data.nli = (an, po, ne)
        say(f"nli triplets: {len(rows)} (of {sum(len(s) for s in nli)})")
    return data


def _pairs_record(sets: Sequence[Any]) -> list[dict[str, Any]]:
    """What the config.json says of each pairs file: its name, kind, size and a hash of its rows (so the data a
    model was trained on, and hence the terms its weights carry, can be told from the model)."""
    from tokvec.train.distill import _sha256_texts

    out = []
    for s in sets:
        if isinstance(s, ScoredPairs):
            rows = [f"{a}\t{b}\t{g!r}" for a, b, g in zip(s.a, s.b, s.score.tolist())]
            kind = "scored"
        else:
            rows = ["\t".join(x) for x in zip(s.anchor, s.positive, s.negative)]
            kind = "nli"
        out.append(
            {
                "file": Path(s.source).name,
                "kind": kind,
                "rows": s.rows,
                "examples": len(s),
                "sha256": _sha256_texts(rows),
            }
        )
    return out


def tune(
    model: str | os.PathLike[str],
    teacher: Any,
    corpus: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    config: TuneConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    select: bool = True,
    dtype: str = "f32",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    pairs: Sequence[Any] | None = None,
) -> Path:
    """Tunes a static model on a corpus against a teacher and writes the result as a tokvec folder.

    Args:
        model: the starting model (e.g. the output of `distill`), any folder `tokvec.load` reads.
        teacher: the teacher folder or a `Teacher`.
        corpus: a text file (``.txt`` one text a line, ``.tsv`` with a ``sentence``/``text`` column, ...), or a
            list of them (texts of each, in order; ``max_texts`` applies to each file).
        out: the output folder (must not exist or be empty).
        config: hyper-parameters (`TuneConfig`).
        cache_dir: where teacher vectors are cached (default ``~/.cache/tokvec``).
        data_dir: evaluation data for the dev-split selection (the folder holding stsb/, sick-r/, scifact/): STS-B
            dev, SICK-R trial and SciFact train qrels. Needed when `select` is True.
        select: keep the epoch with the best dev score (needs the dev files); False keeps the last.
        dtype: "f32" or "f16" output table.
        progress: progress bars on stderr.
        log: called with one line per epoch.
        pairs: supervised pairs files, each ``FILE`` or ``FILE:kind`` (kind ``scored`` or ``nli``, else detected;
            formats in `tokvec.train.pairs`), learnt alongside the teacher with weights ``config.pair_weight``
            (CoSENT on scored pairs) and ``config.nli_weight`` (InfoNCE on NLI triplets). Read and checked before
            the teacher runs.

    Returns:
        the output folder.
    """
    from tokvec.train.cache import teacher_vectors
    from tokvec.train.distill import _sha256_texts, read_corpus, save_model
    from tokvec.train.teacher import Teacher

    cfg = config or TuneConfig()
    _check_config(cfg)  # before the teacher runs, not after
    pair_sets = [read_pairs(parse_pairs_arg(p)) for p in (pairs or [])]
    for ps in pair_sets:
        is_scored = isinstance(ps, ScoredPairs)
        if (cfg.pair_weight if is_scored else cfg.nli_weight) == 0:
            what = "pair_weight (--pair-weight)" if is_scored else "nli_weight (--nli-weight)"
            raise ValueError(f"{ps.source}: {'scored' if is_scored else 'nli'} pairs given but {what} is 0")
    if select and data_dir is None:
        raise TypeError(
            "select=True picks the best epoch on the dev sets: pass data_dir=<folder holding stsb/, "
            "sick-r/, scifact/>, or select=False to keep the last epoch"
        )
    dst = Path(out)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst}: exists and is not an empty folder")
    say = log or (lambda _m: None)
    t = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
    m, student = _load_student(model)
    d = student.E.shape[1]
    if d > t.dim:
        raise ValueError(f"the model is {d}-d, larger than the teacher's {t.dim}")
    corpora = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus)
    if not corpora:
        raise ValueError("no corpus given")
    parts = [read_corpus(c, limit=cfg.max_texts) for c in corpora]
    texts = [x for part in parts for x in part]
    t0 = time.time()
    # one cache run per file, so each file's chunks are the same whatever it is combined with
    tv = np.concatenate(
        [teacher_vectors(t, part, cache_dir=cache_dir, progress=progress, desc="teacher") for part in parts]
    )
    teacher_s = time.time() - t0
    say(f"teacher vectors: {len(texts)} texts, {teacher_s:.1f} s (cached chunks are read, not recomputed)")
    ids, offsets = student.csr(*m._core.encode(texts))
    keep = np.flatnonzero(np.diff(offsets) > 0)
    if len(keep) < len(texts):  # texts made only of special/unknown tokens carry no signal for the student
        lens = np.diff(offsets)[keep]
        ids = np.concatenate([ids[offsets[i] : offsets[i + 1]] for i in keep]) if len(keep) else ids[:0]
        offsets = np.r_[0, np.cumsum(lens)].astype(np.int64)
        tv = tv[keep]
    if len(keep) == 0:
        raise ValueError(f"{', '.join(map(str, corpora))}: no text has a token the model pools")
    mu = np.zeros(tv.shape[1], dtype=np.float32)
    if cfg.center_targets:  # compare with the teacher's vectors minus their corpus mean (its common component)
        mu = tv.mean(axis=0, dtype=np.float64).astype(np.float32)
        tv = tv - mu
    basis = target_basis(tv, d)
    targets = np.ascontiguousarray(tv @ basis)
    # rotate the table onto the target axes (cosines unchanged); scale rows so a typical pooled vector has norm ~1
    sample = np.arange(min(len(keep), 20000))
    s0 = student.pool(ids, offsets, normalize=False)
    rot = procrustes(s0[sample], targets[sample])
    student.E = np.ascontiguousarray(student.E @ rot)
    scale = float(np.median(np.linalg.norm(s0, axis=1)))
    if scale > 0:
        student.E /= np.float32(scale)
    n_sentences = len(offsets) - 1
    if cfg.token_examples:
        # every pooled token alone is one more example, its target the teacher's vector of [CLS] t [SEP]: rows that
        # the corpus never or rarely touches are pulled into the same space as the tuned ones
        if t.tokenizer.get_vocab_size(with_added_tokens=True) != student.E.shape[0]:
            raise ValueError("token_examples needs the model to share the teacher's vocabulary")
        tokv = token_teacher_vectors(t, cache_dir=cache_dir, progress=progress)
        tok_ids = np.flatnonzero(student.keep)
        ids = np.concatenate([ids, tok_ids])
        offsets = np.concatenate([offsets, offsets[-1] + np.arange(1, len(tok_ids) + 1)])
        targets = np.concatenate([targets, (tokv[tok_ids] - mu) @ basis])
        say(f"token examples: {len(tok_ids)} single-token texts added to {n_sentences} sentences")
    pair_data = _pair_data(m, student, pair_sets, say) if pair_sets else None
    validate = _dev_validator(m, student, data_dir) if select else None
    hist = tune_table(
        student, ids, offsets, targets, cfg, validate=validate, log=say, progress=progress, pairs=pair_data
    )
    recipe = {
        "teacher": str(t.path),
        "init": str(model),
        "corpus": [Path(c).name for c in corpora] if len(corpora) > 1 else Path(corpora[0]).name,
        "corpus_texts": len(texts) if len(corpora) == 1 else [len(part) for part in parts],
        "corpus_sha256": _sha256_texts(texts),
        "targets": f"teacher vectors (mean pooling, normalized){' minus their corpus mean' if cfg.center_targets else ''}"
        f" projected on their top {d} singular directions",
        "loss": "cosine"
        + (f" on dims {[d, *[k for k in cfg.matryoshka if k < d]]}")
        + (f" + {cfg.contrastive} x in-batch InfoNCE (tau {cfg.temperature})" if cfg.contrastive > 0 else "")
        + (
            f" + {cfg.pair_weight} x CoSENT on scored pairs (scale {cfg.pair_scale})"
            if pair_data is not None and pair_data.scored is not None
            else ""
        )
        + (
            f" + {cfg.nli_weight} x in-batch InfoNCE on NLI triplets with hard negatives (tau {cfg.nli_temperature})"
            if pair_data is not None and pair_data.nli is not None
            else ""
        )
        + (f", rows pulled toward the start by {cfg.decay} x lr" if cfg.decay > 0 else ""),
        "optimizer": "sparse Adam" + (", learning rate decayed linearly to 0" if cfg.schedule == "linear" else ""),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        **({"pairs": _pairs_record(pair_sets)} if pair_sets else {}),
        "best_epoch": hist.get("best_epoch"),
        "dev_mean_sts_sick_scifact": hist.get("best_dev"),
        "train_seconds": hist["seconds"],
    }
    tok_json = m._tok.json
    prior = m._resolved.config.get("source") if m._resolved.format == "tokvec" else None
    extra = {"source": {"recipe": "tokvec tune", "tune": recipe, **({"init_source": prior} if prior else {})}}
    save_model(dst, student.E, student.w, tok_json, extra, dtype=dtype)
    (dst / "tune_history.json").write_text(json.dumps(hist, indent=2) + "\n", encoding="utf-8")
    return dst
