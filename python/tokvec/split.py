"""Semantic chunking: split a text into pieces (lines, then sentences, then words for over-long
sentences), embed the pieces, then merge neighbouring segments, most similar first, as long as the
merged segment stays within the target size. The chunks concatenate back to the input exactly.

Memory notes: a piece is embedded as `dim` floats (and merged in float64, scored as float32 unit rows), so a
tiny target on a long text (10 MB at target 8 is about 5 million pieces) cannot have every piece embedded at
once. Pieces are therefore cut lazily and merged in blocks of at most `_BLOCK` pieces: a block's segments are final up to
the segment that holds its last `_LOOKAHEAD` pieces, which are carried, unmerged and with their
embeddings, into the next block. At most `_BLOCK` embeddings exist at a time, whatever the text's
length. A text of at most `_BLOCK` pieces (about 800 KB at target 256, 2 MB at 1536) is one block: the
merge is global, as it was before blocks existed. A longer text can differ from a global merge only near
block ends, where a segment is closed without seeing the pieces beyond the look-ahead.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import re
from collections.abc import Iterable, Iterator

import numpy as np

from tokvec import _core
from tokvec._embedder import Embedder
from tokvec._validate import int_at_least, is_int

__all__ = ["iter_units", "semantic_split", "split_units"]

# a line with its newline(s)
_LINE = re.compile(r"[^\n]*\n+|[^\n]+")
# a sentence: up to . ! ? (optionally closing quote/bracket) followed by whitespace, or the rest
_SENT = re.compile(r".+?[.!?][\"')\]]*(?:\s+|$)|.+$", re.DOTALL)
# a word with its trailing whitespace
_WORD = re.compile(r"\S+\s*|\s+")

# pieces merged at once (16384 x dim floats: 64 MB at dim 256, as float32 embeddings, their float64 sums and
# float32 unit rows)
_BLOCK = 16384
# pieces at the end of a block that are merged again with the next block
_LOOKAHEAD = _BLOCK // 4


def _pack(pieces: Iterable[str], size: int) -> Iterator[str]:
    """Greedily packs consecutive pieces into strings of at most `size` characters; a single piece
    longer than `size` is cut into `size`-character slices (by index, so a long piece costs linear time)."""
    cur = ""
    for p in pieces:
        if len(p) > size:
            if cur:
                yield cur
                cur = ""
            i = 0
            while len(p) - i > size:
                yield p[i : i + size]
                i += size
            p = p[i:]
        if len(cur) + len(p) > size and cur:
            yield cur
            cur = ""
        cur += p
    if cur:
        yield cur


def iter_units(text: str, max_size: int) -> Iterator[str]:
    """The pieces of `split_units`, one at a time (for a long text, without the list). Long lines and
    sentences are searched in place (pos/endpos), not copied out of the text first."""
    for line in _LINE.finditer(text):
        a, b = line.span()
        if b - a <= max_size:
            yield line.group()
            continue
        for sent in _SENT.finditer(text, a, b):
            c, d = sent.span()
            if d - c <= max_size:
                yield sent.group()
            else:
                yield from _pack((w.group() for w in _WORD.finditer(text, c, d)), max_size)


def split_units(text: str, max_size: int) -> list[str]:
    """Lines, then sentences of lines longer than `max_size`, then word groups of sentences still
    longer, then hard slices of single words longer than `max_size`. `"".join(units) == text`.

    Args:
        text: the text.
        max_size: no unit is longer than this many characters.

    Returns:
        the units, in order.
    """
    return list(iter_units(text, max_size))


def _merge(E: np.ndarray, lens: list[int], target_size: int) -> list[int]:
    """Merges neighbouring segments of consecutive pieces, the most similar pair first (cosine of the
    length-weighted summed vectors; ties: leftmost first), while a merged segment stays within
    `target_size` characters.

    Args:
        E: (n, dim) embeddings of the pieces.
        lens: the pieces' lengths in characters.
        target_size: maximum merged length.

    Returns:
        the index of each segment's first piece, in order (starting with 0).
    """
    n = len(lens)
    # segment state: linked list over piece ranges, summed vectors (length-weighted mean direction) in float64
    lens_a = np.array(lens, np.int64)
    vec = E.astype(np.float64)
    vec *= np.maximum(lens_a, 1)[:, None]
    # The similarity of two segments is tokvec's one cosine: their sums as float32 rows normalized by the core,
    # then the core's canonical dot (`_core.dot_pairs`), the value `tokvec.topk` and `Model.similarity` give, so
    # near-ties fall as they do everywhere else. A segment's unit row is redone only when the segment changes.
    unit = vec.astype(np.float32)
    _core.normalize_rows(unit)
    left = np.arange(n - 1, dtype=np.int64)
    first = _core.dot_pairs(unit, unit, left, left + 1)
    fits = np.flatnonzero(lens_a[:-1] + lens_a[1:] <= target_size)
    # highest similarity first; ties: leftmost first
    heap = [(-s, a, a + 1, 0, 0) for s, a in zip(first[fits].tolist(), fits.tolist())]
    heapq.heapify(heap)
    size = list(lens)
    nxt = list(range(1, n)) + [-1]
    prv = [-1, *range(n - 1)]
    alive = [True] * n
    version = [0] * n

    while heap:
        _, a, b, va, vb = heapq.heappop(heap)
        if not (alive[a] and alive[b]) or version[a] != va or version[b] != vb or nxt[a] != b:
            continue
        # merge b into a
        vec[a] += vec[b]
        unit[a] = vec[a]
        _core.normalize_rows(unit[a : a + 1])
        size[a] += size[b]
        alive[b] = False
        nxt[a] = nxt[b]
        if nxt[b] >= 0:
            prv[nxt[b]] = a
        version[a] += 1
        # the pairs (previous, a) and (a, next) that still fit, scored in one call on just their rows (the core
        # checks every row it is given: the whole block would cost a block's scan per merge); the canonical dot
        # is symmetric, so a . previous is previous . a
        near = [x for x in (prv[a], nxt[a]) if x >= 0 and size[a] + size[x] <= target_size]
        if near:
            for x, s in zip(near, _core.scores(unit[a : a + 1], unit[near])[0].tolist()):
                p, q = (x, a) if x < a else (a, x)
                heapq.heappush(heap, (-s, p, q, version[p], version[q]))
    starts: list[int] = []
    a = 0
    while a >= 0:
        starts.append(a)
        a = nxt[a]
    return starts


def _cut(starts: list[int], n: int) -> int:
    """Where a full block's final segments end: at the start of the segment that holds piece
    n - _LOOKAHEAD, so that at least the last _LOOKAHEAD pieces are merged again with the next block.
    If that would carry more than half a block (a segment of many small pieces), the cut moves to the
    end of that segment instead, so every block makes room for at least _BLOCK // 2 new pieces."""
    i = bisect.bisect_right(starts, n - _LOOKAHEAD) - 1
    if n - starts[i] <= _BLOCK // 2:
        return starts[i]
    return starts[i + 1] if i + 1 < len(starts) else n


def semantic_split(model: Embedder, text: str, target_size: int = 1536, unit_size: int | None = None) -> list[str]:
    """See `Model.split`."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    target_size = int_at_least(target_size, "target_size")
    if unit_size is None:
        unit_size = max(1, target_size // 4)
    if not is_int(unit_size) or not (1 <= unit_size <= target_size):
        raise ValueError(f"unit_size must be an int in [1, target_size], got {unit_size!r}")
    unit_size = int(unit_size)
    units = iter_units(text, unit_size)
    first = list(itertools.islice(units, 2))
    if len(first) < 2:
        return first  # no text, or a single piece: nothing to embed
    out: list[str] = []
    # pieces carried from the previous block (not final yet), their embeddings, and the pieces read ahead
    carried: list[str] = []
    carried_E = np.zeros((0, model.dim), np.float32)
    ahead = first
    while True:
        new = ahead + list(itertools.islice(units, _BLOCK - len(carried) - len(ahead)))
        pieces = carried + new
        E = np.concatenate([carried_E, model.embed(new)]) if carried else model.embed(new)
        starts = _merge(E, [len(p) for p in pieces], target_size)
        # the text is done unless this block is full and another piece follows
        ahead = list(itertools.islice(units, 1)) if len(pieces) == _BLOCK else []
        cut = _cut(starts, len(pieces)) if ahead else len(pieces)
        ends = [*(s for s in starts[1:] if s < cut), cut]
        out.extend("".join(pieces[a:b]) for a, b in zip(starts, ends))
        if not ahead:
            return out
        carried = pieces[cut:]
        carried_E = E[cut:].copy()  # a copy, so that the block's array is freed
