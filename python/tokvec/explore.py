"""Token explorer: look at a model's token-embedding table one token at a time.

`Model.token_vector`, `Model.most_similar_tokens` and `Model.analogy` call the functions here;
`plot_tokens` draws a 2-D PCA map of a few tokens (needs matplotlib: `pip install tokvec[plot]`).

The rows are read through the Rust core exactly as the model pools a one-token text (the table row
after `mapping`, times its `weight` when the model has weights, first `dim` columns), so what is
explored is what the model averages. The normalized rows are built on first use and kept on the
model (threads that make that first call at the same moment may each build them; one copy is kept).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokvec import _core
from tokvec._embedder import TokenTable
from tokvec._pca import pca_components
from tokvec._validate import int_at_least
from tokvec.search import topk as _topk

__all__ = ["TokenError", "plot_tokens"]

#: Word-start markers of the tokenizer families tokvec reads: SentencePiece ("▁king") and byte-level BPE
#: ("Ġking"). WordPiece marks the opposite (continuations are "##ing"), so its word-start form is the word itself.
_WORD_START = ("Ġ", "▁")
#: Rows embedded per call when the table is read (bounds the temporary id arrays, not the result).
_CHUNK = 65536


class TokenError(KeyError, ValueError):
    """A token string that is not a single token of the model's vocabulary, or an id out of range.

    Both a KeyError (a lookup that missed) and a ValueError (a bad argument); the message names the token.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class _Explorer:
    """The lazily built state of a model's token explorer."""

    raw: Any  # a `_core.Model` that pools ids without normalizing
    vocab: dict[str, int]  # token string -> id (ids below the table's id limit)
    tokens: list[str | None]  # id -> token string (None: no token has that id)
    candidates: np.ndarray | None = None  # int64 ids searched by `most_similar_tokens`
    unit: np.ndarray | None = None  # float32 (len(candidates), dim), L2-normalized rows of the candidates


def _explorer(model: TokenTable) -> _Explorer:
    ex = model.__dict__.get("_explorer")
    if ex is None:
        r = model._resolved
        raw = _core.Model(
            str(r.safetensors),
            r.table,
            weights=r.weights,
            mapping=r.mapping,
            tokenizer=None,
            skip_ids=[],
            dim=model.dim,
            normalize=False,
        )
        limit = model.vocab_size
        vocab = {t: i for t, i in model.tokenizer.get_vocab(with_added_tokens=True).items() if 0 <= i < limit}
        tokens: list[str | None] = [None] * limit
        for t, i in vocab.items():
            tokens[i] = t
        ex = _Explorer(raw, vocab, tokens)
        model.__dict__["_explorer"] = ex
    return ex


def _rows(ex: _Explorer, ids: np.ndarray) -> np.ndarray:
    """float32 (len(ids), dim): each id pooled alone, without normalization."""
    out = []
    for a in range(0, len(ids), _CHUNK):
        part = np.ascontiguousarray(ids[a : a + _CHUNK], np.uint32)
        out.append(ex.raw.embed_ids(part, np.arange(len(part) + 1, dtype=np.uint64)))
    return np.concatenate(out) if out else np.zeros((0, ex.raw.dim), np.float32)


def token_id(model: TokenTable, token: str | int) -> int:
    """The id of one token: an int id, a vocabulary string, or a word whose word-start form is one token.

    Lookup order for a str: its word-start forms ("Ġ" + word, "▁" + word), the string as it is in the
    vocabulary, then the tokenizer itself (which applies its normalizer, e.g. lowercasing) when it
    encodes the word, or " " + word, to exactly one token.
    """
    ex = _explorer(model)
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        if not 0 <= int(token) < model.vocab_size:
            raise TokenError(f"token id {int(token)} is out of range: the table covers ids 0..{model.vocab_size - 1}")
        return int(token)
    if not isinstance(token, str):
        raise TypeError(f"token must be a str or an int id, got {type(token).__name__}")
    if not token:
        raise TokenError("token is the empty string")
    for form in (*(m + token for m in _WORD_START if not token.startswith(m)), token):
        if form in ex.vocab:
            return ex.vocab[form]
    pieces: list[str] = []
    for text in (token, " " + token):
        enc = model.tokenizer.encode(text, add_special_tokens=False)
        if len(enc.ids) == 1 and enc.ids[0] < model.vocab_size:
            return int(enc.ids[0])
        if not pieces:
            pieces = list(enc.tokens)
    if pieces:
        hint = f"it splits into {len(pieces)} tokens {pieces}"
    else:
        hint = "it encodes to no token"
    raise TokenError(
        f"{token!r} is not a single token of this model's vocabulary: {hint}; pass one of those tokens, or an int id"
    )


def token_vector(model: TokenTable, token: str | int) -> np.ndarray:
    """The row of one token (float32, dim): what the model averages for it (see `Model.token_vector`)."""
    return _rows(_explorer(model), np.array([token_id(model, token)]))[0]


def token_rows(model: TokenTable) -> np.ndarray:
    """Every token id's row as pooling adds it up (row after `mapping`, times the id's weight, first `dim`
    columns), float32 (vocab_size, dim): the table a format without `weights`/`mapping` tensors needs."""
    return _rows(_explorer(model), np.arange(model.vocab_size, dtype=np.int64))


def _table(model: TokenTable) -> _Explorer:
    ex = _explorer(model)
    if ex.unit is None:
        skip = set(model._skip_ids)
        cand = np.array([i for i, t in enumerate(ex.tokens) if t is not None and i not in skip], np.int64)
        rows = _rows(ex, cand)
        _core.normalize_rows(rows)
        ex.candidates, ex.unit = cand, rows
    return ex


def _unit(v: np.ndarray) -> np.ndarray:
    """v as a float32 unit vector (a zero vector stays zero), normalized by the core as the table's rows and the
    model's embeddings are: its scores against the rows are then `_core.scores`, the values `tokvec.topk` gives."""
    out = np.array(v, np.float32, ndmin=2)
    _core.normalize_rows(out)
    return out[0]


def _query(model: TokenTable, token_or_vector: Any) -> tuple[np.ndarray, list[int]]:
    if isinstance(token_or_vector, (str, int, np.integer)) and not isinstance(token_or_vector, bool):
        i = token_id(model, token_or_vector)
        return _unit(token_vector(model, i)), [i]
    v = np.asarray(token_or_vector)
    if v.dtype.kind not in "fiu" or v.shape != (model.dim,):
        raise ValueError(
            f"expected a token (str or int id) or a float vector of shape ({model.dim},), "
            f"got {type(token_or_vector).__name__} with shape {getattr(v, 'shape', None)}"
        )
    v = v.astype(np.float32)
    if not np.isfinite(v).all():
        raise ValueError("the query vector contains NaN or infinity")
    return _unit(v), []


def nearest(model: TokenTable, v: np.ndarray, exclude: list[int], k: int) -> list[tuple[str, float]]:
    """The k tokens whose rows have the highest cosine with the unit vector v, `exclude` ids left out: the scores
    are the core's canonical dot of v with the unit rows (`tokvec.topk`, bit for bit `_core.scores`)."""
    k = int_at_least(k, "k")
    ex = _table(model)
    assert ex.unit is not None and ex.candidates is not None  # set by _table
    drop = set(exclude)
    scores, idx = _topk(np.ascontiguousarray(v, np.float32), ex.unit, int(k) + len(drop))
    out: list[tuple[str, float]] = []
    for s, j in zip(scores.tolist(), idx.tolist()):
        i = int(ex.candidates[j])
        if i in drop:
            continue
        out.append((ex.tokens[i] or "", float(s)))
        if len(out) == k:
            break
    return out


def most_similar_tokens(model: TokenTable, token_or_vector: Any, k: int = 10) -> list[tuple[str, float]]:
    """See `Model.most_similar_tokens`."""
    v, exclude = _query(model, token_or_vector)
    return nearest(model, v, exclude, k)


def analogy(model: TokenTable, a: str | int, b: str | int, c: str | int, k: int = 10) -> list[tuple[str, float]]:
    """See `Model.analogy`."""
    ids = [token_id(model, t) for t in (a, b, c)]
    ua, ub, uc = (_unit(token_vector(model, i)) for i in ids)
    return nearest(model, _unit(ua - ub + uc), ids, k)


def plot_tokens(
    model: TokenTable, words: list[str | int], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Draws the tokens' rows projected on their first two principal components, labelled, as a PNG.

    The rows are L2-normalized, centred and projected on their first two principal components (tokvec's one PCA,
    fitted on these tokens only). The figure is drawn on its own Agg canvas: matplotlib's backend and pyplot's
    current figure are left as they were.

    Args:
        model: a tokvec model.
        words: two or more tokens (str, as in `Model.token_vector`, or int ids).
        path: the PNG file to write.
        title: the plot's title (default: the model's table name and dim).

    Returns:
        the path written.

    Raises:
        ImportError: matplotlib is not installed (`pip install tokvec[plot]`).
        TokenError: a word is not a single token (a KeyError and a ValueError).
        ValueError: fewer than two words.
    """
    try:
        import matplotlib  # noqa: F401  (first: a missing matplotlib fails here, not inside a submodule)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plot_tokens needs matplotlib: pip install tokvec[plot]") from e
    if isinstance(words, str) or len(words) < 2:
        raise ValueError("words must be a list of at least two tokens")
    ids = [token_id(model, w) for w in words]
    x = np.stack([_unit(token_vector(model, i)) for i in ids]).astype(np.float64)
    mean, evals, comps = pca_components(x)
    xy = (x - mean) @ comps[:, :2]
    if xy.shape[1] < 2:
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    evals = np.clip(evals, 0, None)  # rounding can leave the smallest eigenvalues a hair below zero
    var = evals / max(float(evals.sum()), 1e-30)
    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    ax = fig.add_subplot()
    ax.scatter(xy[:, 0], xy[:, 1], s=18, color="#3b6ea8")
    # labels: the first of eight positions around its point whose box (in pixels, ~6 px per character)
    # overlaps no label placed so far and no other point
    ax.margins(0.12)
    fig.canvas.draw()
    pix = ax.transData.transform(xy)
    boxes: list[tuple[float, float, float, float]] = []
    for n, ((px, py), w) in enumerate(zip(pix, words)):
        label = str(w)
        wid, hei = 6.0 * len(label) + 2, 11.0
        best = None
        for dx, dy in (
            (5, 2),
            (5, -12),
            (-5 - wid, 2),
            (-5 - wid, -12),
            (-wid / 2, 6),
            (-wid / 2, -17),
            (8, -5),
            (-8 - wid, -5),
        ):
            box = (px + dx, py + dy, px + dx + wid, py + dy + hei)
            hits = sum(not (box[2] < q[0] or q[2] < box[0] or box[3] < q[1] or q[3] < box[1]) for q in boxes)
            hits += sum(
                box[0] - 3 < ox < box[2] + 3 and box[1] - 3 < oy < box[3] + 3
                for m, (ox, oy) in enumerate(pix)
                if m != n
            )
            if best is None or hits < best[0]:
                best = (hits, dx, dy, box)
            if hits == 0:
                break
        assert best is not None  # the loop above ran
        boxes.append(best[3])
        # offsets are in points; at 100 dpi one point is 100 / 72 pixels
        ax.annotate(
            label,
            (xy[n, 0], xy[n, 1]),
            xytext=(best[1] * 0.72, best[2] * 0.72),
            textcoords="offset points",
            fontsize=9,
            ha="left",
            va="bottom",
        )
    ax.set_xlabel(f"PC1 ({var[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({var[1] if len(var) > 1 else 0:.0%})")
    ax.set_title(
        title if title is not None else f"{model._resolved.table} ({model.dim}-d), PCA of {len(ids)} tokens",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out
