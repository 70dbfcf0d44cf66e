"""Semantic chunking: split a text into pieces (lines, then sentences, then words for over-long
sentences), embed the pieces, then merge neighbouring segments, most similar first, as long as the
merged segment stays within the target size. The chunks concatenate back to the input exactly.
"""

from __future__ import annotations

import heapq
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokvec.model import Model

__all__ = ["semantic_split", "split_units"]

# a line with its newline(s)
_LINE = re.compile(r"[^\n]*\n+|[^\n]+")
# a sentence: up to . ! ? (optionally closing quote/bracket) followed by whitespace, or the rest
_SENT = re.compile(r".+?[.!?][\"')\]]*(?:\s+|$)|.+$", re.DOTALL)
# a word with its trailing whitespace
_WORD = re.compile(r"\S+\s*|\s+")


def _pack(pieces: list[str], size: int) -> list[str]:
    """Greedily packs consecutive pieces into strings of at most `size` characters; a single piece
    longer than `size` is cut into `size`-character slices."""
    out: list[str] = []
    cur = ""
    for p in pieces:
        while len(p) > size:
            if cur:
                out.append(cur)
                cur = ""
            out.append(p[:size])
            p = p[size:]
        if len(cur) + len(p) > size and cur:
            out.append(cur)
            cur = ""
        cur += p
    if cur:
        out.append(cur)
    return out


def split_units(text: str, max_size: int) -> list[str]:
    """Lines, then sentences of lines longer than `max_size`, then word groups of sentences still
    longer, then hard slices of single words longer than `max_size`. `"".join(units) == text`.

    Args:
        text: the text.
        max_size: no unit is longer than this many characters.

    Returns:
        the units, in order.
    """
    units: list[str] = []
    for line in _LINE.findall(text):
        if len(line) <= max_size:
            units.append(line)
            continue
        for sent in _SENT.findall(line):
            if len(sent) <= max_size:
                units.append(sent)
            else:
                units.extend(_pack(_WORD.findall(sent), max_size))
    return units


def semantic_split(model: Model, text: str, target_size: int = 1536, unit_size: int | None = None) -> list[str]:
    """See `Model.split`."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if isinstance(target_size, bool) or not isinstance(target_size, int) or target_size < 1:
        raise ValueError(f"target_size must be an int >= 1, got {target_size!r}")
    if unit_size is None:
        unit_size = max(1, target_size // 4)
    if isinstance(unit_size, bool) or not isinstance(unit_size, int) or not (1 <= unit_size <= target_size):
        raise ValueError(f"unit_size must be an int in [1, target_size], got {unit_size!r}")
    if not text:
        return []
    units = split_units(text, unit_size)
    if len(units) == 1:
        return units
    E = model.embed(units).astype(np.float64)
    lens = np.array([len(u) for u in units], np.int64)
    # segment state: linked list over unit ranges, summed vectors (length-weighted mean direction)
    n = len(units)
    vec = E * np.maximum(lens, 1)[:, None]
    size = lens.copy()
    nxt = list(range(1, n)) + [-1]
    prv = [-1, *range(n - 1)]
    alive = [True] * n
    version = [0] * n

    def sim(a: int, b: int) -> float:
        va, vb = vec[a], vec[b]
        na, nb = np.linalg.norm(va), np.linalg.norm(vb)
        return float(va @ vb / (na * nb)) if na > 0 and nb > 0 else 0.0

    heap: list[tuple[float, int, int, int, int]] = []

    def push(a: int) -> None:
        b = nxt[a]
        if b >= 0 and size[a] + size[b] <= target_size:
            # highest similarity first; ties: leftmost first
            heapq.heappush(heap, (-sim(a, b), a, b, version[a], version[b]))

    for a in range(n - 1):
        push(a)
    while heap:
        _, a, b, va, vb = heapq.heappop(heap)
        if not (alive[a] and alive[b]) or version[a] != va or version[b] != vb or nxt[a] != b:
            continue
        # merge b into a
        vec[a] += vec[b]
        size[a] += size[b]
        alive[b] = False
        nxt[a] = nxt[b]
        if nxt[b] >= 0:
            prv[nxt[b]] = a
        version[a] += 1
        push(a)
        if prv[a] >= 0:
            push(prv[a])
    out: list[str] = []
    a = 0
    while a >= 0:
        b = nxt[a]
        end = b if b >= 0 else n
        out.append("".join(units[a:end]))
        a = b
    return out
