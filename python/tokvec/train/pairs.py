"""Supervised pairs for `tokvec tune`: the files they come in, and the two losses that learn from them.

Two kinds of data:

- **scored** pairs ``(sentence1, sentence2, score)``: the higher the score, the closer the two texts should be.
  Learnt with CoSENT: in a batch, every pair ``i`` scored above a pair ``j`` should have the larger cosine::

      L = log(1 + sum_{(i, j): score_i > score_j} exp(scale * (cos_j - cos_i)))

  Only the order of the scores matters, so any scale works (STS-B's 0-5, SICK's 1-5, a user's 0-1).
- **nli** triplets ``(anchor, positive, negative)``: the anchor should be closer to its positive (an entailed
  hypothesis) than to every other positive and every negative of the batch (the contradictions are the hard
  negatives). Learnt with in-batch InfoNCE at temperature ``tau``::

      L = mean_i -log softmax_k(cos(a_i, c_k) / tau)[i]   over the candidates c = (p_1 .. p_B, n_1 .. n_B)

Both are computed on each Matryoshka prefix of the vectors (the same dims as the teacher loss) and summed; the
gradients with respect to the pooled vectors are written out by hand (tests/test_tune_pairs.py checks them against
finite differences), and `tune_table` scatters them to the table rows like the teacher loss's.

File formats (UTF-8; a byte-order mark and CRLF line ends are accepted; blank lines are skipped):

- STS-B (``sts-train.tsv``): no header, tab separated, at least 7 columns: genre, file, year, id, score (0-5),
  sentence1, sentence2 (the extra trailing source columns of some official rows are ignored). Scored.
- SICK (``SICK_train.txt``): header ``pair_ID sentence_A sentence_B relatedness_score entailment_judgment``.
  Scored by relatedness (1-5) by default; ``:nli`` reads the entailment labels instead.
- SNLI / MultiNLI style: a header with ``premise``, ``hypothesis`` and ``label`` columns (other columns ignored),
  labels ``entailment``/``neutral``/``contradiction`` (``-``, SNLI's no-consensus mark, rows are skipped). NLI.
- Your own, TSV with a header: ``sentence1 sentence2 score`` (scored) or ``anchor positive negative`` (nli).
- Your own, JSONL: one object a line, ``{"sentence1": ..., "sentence2": ..., "score": ...}`` or
  ``{"anchor": ..., "positive": ..., "negative": ...}`` (or ``premise``/``hypothesis``/``label``).

Labelled NLI rows become triplets by grouping them by premise (anchor): each entailed hypothesis of a premise is
paired with one of its contradictions, in turn; a premise without both gives no triplet. Neutral rows are not used.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokvec.textio import InputError

__all__ = [
    "KINDS",
    "PairsSpec",
    "ScoredPairs",
    "Triplets",
    "cosent_loss_grad",
    "infonce_loss_grad",
    "parse_pairs_arg",
    "read_pairs",
]

KINDS = ("scored", "nli")
_LABELS = ("entailment", "neutral", "contradiction")
_SICK_HEADER = ["pair_id", "sentence_a", "sentence_b", "relatedness_score", "entailment_judgment"]


@dataclass
class ScoredPairs:
    """Sentence pairs with a similarity score (any scale: only the order is learnt)."""

    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)
    score: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    source: str = ""
    rows: int = 0  # data rows read (the header and blank lines are not rows)

    def __len__(self) -> int:
        return len(self.a)


@dataclass
class Triplets:
    """(anchor, positive, negative) texts: the positive entails the anchor's meaning, the negative contradicts it."""

    anchor: list[str] = field(default_factory=list)
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)
    source: str = ""
    rows: int = 0

    def __len__(self) -> int:
        return len(self.anchor)


@dataclass(frozen=True)
class PairsSpec:
    """One ``--pairs FILE[:kind]`` argument: the file and the kind asked for (None: detected from the file)."""

    path: Path
    kind: str | None = None


def parse_pairs_arg(spec: str | os.PathLike[str] | PairsSpec) -> PairsSpec:
    """Parses ``FILE[:kind]`` (kind: scored or nli) and checks that the file exists.

    Raises:
        ValueError: an unknown kind.
        FileNotFoundError: no such file.
    """
    if isinstance(spec, PairsSpec):
        path, kind = spec.path, spec.kind
    else:
        text = os.fspath(spec)
        path, kind = Path(text), None
        head, sep, tail = text.rpartition(":")
        if sep and head and not Path(text).exists():
            if tail not in KINDS:
                if "/" in tail or "\\" in tail or "." in tail:  # a path with a colon in it, not a kind
                    raise FileNotFoundError(f"{text}: pairs file not found")
                raise ValueError(f"{text}: unknown pairs kind {tail!r} (choose scored or nli)")
            path, kind = Path(head), tail
    if kind is not None and kind not in KINDS:
        raise ValueError(f"{path}: unknown pairs kind {kind!r} (choose scored or nli)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs file not found")
    return PairsSpec(path, kind)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line end) of a UTF-8 file; a leading BOM is dropped."""
    with open(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            if no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{no}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
            yield no, line.rstrip("\n").removesuffix("\r")


def _score(path: Path, no: int, value: object, lo: float | None = None, hi: float | None = None) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{path}:{no}: score {value!r} is not a number") from None
    if not math.isfinite(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
        rng = f" (expected {lo:g} to {hi:g})" if lo is not None and hi is not None else " (expected a finite number)"
        raise InputError(f"{path}:{no}: score {value!r} is out of range{rng}")
    return x


def _label(path: Path, no: int, value: object) -> str | None:
    """The NLI label, lower-cased; None for SNLI's '-' (no consensus)."""
    s = str(value).strip().lower()
    if s == "-":
        return None
    if s not in _LABELS:
        raise InputError(f"{path}:{no}: unknown NLI label {value!r} (expected entailment, neutral or contradiction)")
    return s


def _text(path: Path, no: int, value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{path}:{no}: {name} is not a string")
    if not value.strip():
        raise InputError(f"{path}:{no}: {name} is empty")
    return value


def _group_triplets(rows: list[tuple[str, str, str]], path: Path, n_rows: int) -> Triplets:
    """Triplets from labelled (premise, hypothesis, label) rows, grouped by premise in order of first appearance."""
    ent: dict[str, list[str]] = {}
    con: dict[str, list[str]] = {}
    for premise, hyp, label in rows:
        if label == "entailment":
            ent.setdefault(premise, []).append(hyp)
        elif label == "contradiction":
            con.setdefault(premise, []).append(hyp)
    out = Triplets(source=str(path), rows=n_rows)
    for premise, positives in ent.items():
        negatives = con.get(premise)
        if not negatives:
            continue
        for i, p in enumerate(positives):
            out.anchor.append(premise)
            out.positive.append(p)
            out.negative.append(negatives[i % len(negatives)])
    return out


def _read_jsonl(path: Path, kind: str | None) -> ScoredPairs | Triplets:
    scored = ScoredPairs(source=str(path))
    trip = Triplets(source=str(path))
    labelled: list[tuple[str, str, str]] = []
    scores: list[float] = []
    got: str | None = None
    n = 0
    for no, line in _lines(path):
        if not line.strip():
            continue
        n += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{no}: not a JSON object ({e.msg})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{no}: not a JSON object")
        if {"sentence1", "sentence2", "score"} <= obj.keys():
            this = "scored"
        elif {"anchor", "positive", "negative"} <= obj.keys():
            this = "triplet"
        elif {"premise", "hypothesis", "label"} <= obj.keys():
            this = "labelled"
        else:
            raise InputError(
                f"{path}:{no}: expected the keys sentence1, sentence2, score (scored pairs) or anchor, positive, "
                f"negative (or premise, hypothesis, label) (nli), found {sorted(obj)}"
            )
        if got is None:
            got = this
        elif this != got:
            raise InputError(f"{path}:{no}: a {this} row in a file of {got} rows")
        if this == "scored":
            scored.a.append(_text(path, no, obj["sentence1"], "sentence1"))
            scored.b.append(_text(path, no, obj["sentence2"], "sentence2"))
            scores.append(_score(path, no, obj["score"]))
        elif this == "triplet":
            trip.anchor.append(_text(path, no, obj["anchor"], "anchor"))
            trip.positive.append(_text(path, no, obj["positive"], "positive"))
            trip.negative.append(_text(path, no, obj["negative"], "negative"))
        else:
            label = _label(path, no, obj["label"])
            if label is not None:
                premise = _text(path, no, obj["premise"], "premise")
                labelled.append((premise, _text(path, no, obj["hypothesis"], "hypothesis"), label))
    if got is None:
        raise InputError(f"{path}: holds no pairs")
    found = "scored" if got == "scored" else "nli"
    if kind is not None and kind != found:
        raise InputError(f"{path}: asked for {kind} pairs, but its rows are {found}")
    if got == "scored":
        scored.rows = n
        scored.score = np.asarray(scores, dtype=np.float32)
        return scored
    if got == "triplet":
        trip.rows = n
        return trip
    return _group_triplets(labelled, path, n)


def _read_tsv(path: Path, kind: str | None) -> ScoredPairs | Triplets:
    lines = [(no, line) for no, line in _lines(path) if line.strip()]
    if not lines:
        raise InputError(f"{path}: holds no pairs")
    no0, first = lines[0]
    head = [h.strip().lower() for h in first.split("\t")]
    col = {h: i for i, h in enumerate(head)}
    if head == _SICK_HEADER:
        fmt, found = "sick", kind or "scored"
        ncols = len(head)
        body = lines[1:]
    elif {"premise", "hypothesis", "label"} <= col.keys():
        fmt, found, ncols, body = "nli-labelled", "nli", len(head), lines[1:]
    elif {"anchor", "positive", "negative"} <= col.keys():
        fmt, found, ncols, body = "triplet", "nli", len(head), lines[1:]
    elif {"sentence1", "sentence2", "score"} <= col.keys():
        fmt, found, ncols, body = "scored", "scored", len(head), lines[1:]
    elif len(head) >= 7:
        _score(path, no0, first.split("\t")[4])  # an STS-B row has its score in the fifth column
        fmt, found, ncols, body = "stsb", "scored", 7, lines
    else:
        raise InputError(
            f"{path}:{no0}: not a known pairs format: expected a header with sentence1, sentence2, score (scored) or "
            "anchor, positive, negative / premise, hypothesis, label (nli), a SICK header, or STS-B rows (7 columns)"
        )
    if kind is not None and kind != found:
        raise InputError(f"{path}: asked for {kind} pairs, but its rows are {found} ({fmt} format)")
    scored = ScoredPairs(source=str(path), rows=len(body))
    trip = Triplets(source=str(path), rows=len(body))
    labelled: list[tuple[str, str, str]] = []
    scores: list[float] = []
    for no, line in body:
        f = line.split("\t")
        if (len(f) < ncols) if fmt == "stsb" else (len(f) != ncols):
            want = f"at least {ncols}" if fmt == "stsb" else str(ncols)
            raise InputError(f"{path}:{no}: {len(f)} tab-separated columns, expected {want}")
        if fmt == "stsb":
            scores.append(_score(path, no, f[4], 0.0, 5.0))
            scored.a.append(_text(path, no, f[5], "sentence1"))
            scored.b.append(_text(path, no, f[6], "sentence2"))
        elif fmt == "scored":
            scores.append(_score(path, no, f[col["score"]]))
            scored.a.append(_text(path, no, f[col["sentence1"]], "sentence1"))
            scored.b.append(_text(path, no, f[col["sentence2"]], "sentence2"))
        elif fmt == "sick" and found == "scored":
            scores.append(_score(path, no, f[3], 1.0, 5.0))
            scored.a.append(_text(path, no, f[1], "sentence_A"))
            scored.b.append(_text(path, no, f[2], "sentence_B"))
        elif fmt == "sick":
            label = _label(path, no, f[4])
            if label is not None:
                labelled.append((_text(path, no, f[1], "sentence_A"), _text(path, no, f[2], "sentence_B"), label))
        elif fmt == "triplet":
            trip.anchor.append(_text(path, no, f[col["anchor"]], "anchor"))
            trip.positive.append(_text(path, no, f[col["positive"]], "positive"))
            trip.negative.append(_text(path, no, f[col["negative"]], "negative"))
        else:
            label = _label(path, no, f[col["label"]])
            if label is not None:
                premise = _text(path, no, f[col["premise"]], "premise")
                labelled.append((premise, _text(path, no, f[col["hypothesis"]], "hypothesis"), label))
    if found == "scored":
        scored.score = np.asarray(scores, dtype=np.float32)
        if not len(scored):
            raise InputError(f"{path}: holds no pairs")
        return scored
    out = trip if fmt == "triplet" else _group_triplets(labelled, path, len(body))
    if not len(out):
        raise InputError(f"{path}: no premise has both an entailed and a contradicting hypothesis: no triplet")
    return out


def read_pairs(spec: str | os.PathLike[str] | PairsSpec, kind: str | None = None) -> ScoredPairs | Triplets:
    """Reads a pairs file (see the module's formats): `ScoredPairs` or `Triplets`.

    Args:
        spec: ``FILE`` or ``FILE:kind``, or a `PairsSpec`.
        kind: "scored" or "nli" (overrides a kind in `spec`); None detects it from the file.

    Raises:
        tokvec.textio.InputError (a ValueError): a malformed row, naming the file and line.
        FileNotFoundError, ValueError: see `parse_pairs_arg`.
    """
    ps = parse_pairs_arg(spec)
    kind = kind or ps.kind
    if kind is not None and kind not in KINDS:
        raise ValueError(f"{ps.path}: unknown pairs kind {kind!r} (choose scored or nli)")
    if ps.path.name.lower().endswith(".jsonl"):
        return _read_jsonl(ps.path, kind)
    return _read_tsv(ps.path, kind)


# --------------------------------------------------------------------------------------------------- losses


def unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), x.dtype.type(1e-12))
    return x / n, n


def unit_back(g_hat: np.ndarray, xh: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Gradient w.r.t. x from the gradient w.r.t. x / |x|."""
    return (g_hat - (g_hat * xh).sum(axis=1, keepdims=True) * xh) / n


def cosent_loss_grad(
    u: np.ndarray, v: np.ndarray, gold: np.ndarray, dims: Sequence[int], scale: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """CoSENT loss of a batch of scored pairs (pooled vectors u, v [B, d], scores gold [B]), summed over the
    Matryoshka prefixes `dims`, and its gradients with respect to u and v."""
    dt = u.dtype.type
    gu = np.zeros_like(u)
    gv = np.zeros_like(v)
    gold = np.asarray(gold)
    above = gold[:, None] > gold[None, :]  # (i, j): pair i is scored above pair j
    loss = 0.0
    if not above.any():
        return loss, gu, gv
    for m in dims:
        uh, nu = unit(u[:, :m])
        vh, nv = unit(v[:, :m])
        c = (uh * vh).sum(axis=1)
        z = np.where(above, (c[None, :] - c[:, None]) * dt(scale), -np.inf)
        top = max(0.0, float(z.max()))
        e = np.exp(z - dt(top))  # exp(-inf) = 0 outside the ordered pairs
        denom = np.exp(dt(-top)) + e.sum()
        loss += top + math.log(float(denom))
        p = e / denom
        dc = (p.sum(axis=0) - p.sum(axis=1)) * dt(scale)  # dL/dc_k: +scale as the lower pair j, -scale as i
        gu[:, :m] += unit_back(dc[:, None] * vh, uh, nu)
        gv[:, :m] += unit_back(dc[:, None] * uh, vh, nv)
    return loss, gu, gv


def diagonal_softmax_xent(ah: np.ndarray, cand: np.ndarray, temperature: float) -> tuple[float, np.ndarray]:
    """In-batch cross-entropy of unit anchors `ah` [B, m] against unit candidates `cand` [C, m] (C >= B), the
    target of anchor i being candidate i: the mean loss and `softmax - onehot` [B, C], the gradient of the summed
    loss with respect to the logits times the temperature (callers scale it)."""
    b = ah.shape[0]
    logits = ah @ cand.T / ah.dtype.type(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    loss = float(-np.log(np.maximum(prob[np.arange(b), np.arange(b)], 1e-30)).mean())
    prob[np.arange(b), np.arange(b)] -= 1
    return loss, prob


def infonce_loss_grad(
    a: np.ndarray, p: np.ndarray, n: np.ndarray, dims: Sequence[int], temperature: float
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """In-batch InfoNCE of triplets (pooled anchors a, positives p, negatives n [B, d]): each anchor against every
    positive and negative of the batch, its own positive the target; mean over anchors, summed over the prefixes
    `dims`. Returns the loss and the gradients with respect to a, p and n."""
    dt = a.dtype.type
    b = a.shape[0]
    ga, gp, gn = np.zeros_like(a), np.zeros_like(p), np.zeros_like(n)
    loss = 0.0
    for m in dims:
        ah, na = unit(a[:, :m])
        ph, np_ = unit(p[:, :m])
        nh, nn = unit(n[:, :m])
        cand = np.concatenate([ph, nh])
        part, prob = diagonal_softmax_xent(ah, cand, temperature)
        loss += part
        g = prob / dt(temperature * b)  # dL/dlogit-numerators, scaled: d/d(ah . c_k)
        gc = g.T @ ah
        ga[:, :m] += unit_back(g @ cand, ah, na)
        gp[:, :m] += unit_back(gc[:b], ph, np_)
        gn[:, :m] += unit_back(gc[b:], nh, nn)
    return loss, ga, gp, gn
