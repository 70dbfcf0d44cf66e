"""The dedup report: one self-contained HTML page that shows what a threshold does.

Choosing the threshold is the one decision a deduplication makes. The page shows, for one run:

- a summary (input, model, texts, threshold, kept / removed, exact-text duplicates, time);
- the kept-vs-threshold curve: texts kept by the greedy dedup at each threshold of a fine grid, with the
  run's threshold marked;
- the histogram of pair scores (every pair above the curve's lowest threshold), linear or log counts;
- for each similarity band (0.80-0.85, ..., 0.98-1.00 by default), how many texts a run at the band's lower
  edge removes with a score in the band, and a few of them next to the kept text they duplicate, with the
  score and both input row numbers.

Use:

    >>> import tokvec
    >>> from tokvec.report import band_examples, write_html_report
    >>> E = tokvec.load().embed(texts)
    >>> grid = [round(0.80 + 0.005 * k, 3) for k in range(41)]          # 0.80 .. 1.00
    >>> curve = tokvec.dedup_sweep(E, grid)
    >>> i, j, s = tokvec.duplicate_pairs(E, 0.80, as_arrays=True)      # 0.80: min(grid[0], lowest band edge)
    >>> bands = band_examples(len(E), i, j, s)
    >>> write_html_report("report.html", summary={"input": "in.txt", "texts": len(E), "kept": 9120},
    ...                   curve=curve, scores=s, bands=bands, texts=texts, threshold=0.9)

The page loads nothing: CSS and the SVG charts are inline, there is no script, and a Content-Security-Policy
meta tag (`default-src 'none'; style-src 'unsafe-inline'; img-src data:`) makes the browser refuse any
outside fetch, even one a text could smuggle in. The linear/log switch of the histogram is two radio
buttons and CSS. Texts are user data: they are HTML-escaped, shown direction-isolated (`dir="auto"`),
control and bidi-override characters are shown as visible marks, and long texts are cut at `MAX_CHARS`
characters with their full length stated.

Size and speed do not grow with the data: the histogram is binned with numpy (one SVG bar per bin, not an
element per pair), the curve is one path, and only `per_band` examples per band are shown, so a run over
320,000 texts and millions of pairs gives a page of a few tens of KB, written in well under a second.
"""

from __future__ import annotations

import difflib
import html
import itertools
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokvec import _core
from tokvec._validate import int_at_least
from tokvec.dedup import _resolve
from tokvec.textio import write_lines

__all__ = ["DEFAULT_EDGES", "MAX_CHARS", "band_examples", "write_html_report"]

#: Band edges of `band_examples`: bands 0.80-0.85, 0.85-0.90, 0.90-0.95, 0.95-0.98, 0.98-1.00.
DEFAULT_EDGES = (0.80, 0.85, 0.90, 0.95, 0.98, 1.0)
#: Characters of a text shown on the page; longer texts are cut, with an ellipsis and their length.
MAX_CHARS = 400
#: Histogram bin width (widened when the score range would need more than `_MAX_BINS` bins).
_BIN_WIDTH = 0.005
_MAX_BINS = 200
#: The page's Content-Security-Policy: inline CSS and data: images only, so nothing is fetched from elsewhere.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


# ---------------------------------------------------------------------------------------------------- band examples
def band_examples(
    n: int,
    i: np.ndarray,
    j: np.ndarray,
    s: np.ndarray,
    edges: Sequence[float] = DEFAULT_EDGES,
    per_band: int = 5,
) -> list[dict[str, Any]]:
    """Removed texts by similarity band, with the kept text each one duplicates.

    For each band [lo, hi) the greedy dedup is resolved at threshold lo (`tokvec.dedup._resolve`, the same
    rule as `tokvec.dedup_indices`): the band counts the removed items whose score with the kept item they
    duplicate lies in [lo, hi) (the last band includes hi; scores are clipped at 1.0, so the float rounding
    of an exact copy, 1.0000001, stays in a band that ends at 1.0). That count is what lowering the threshold
    from hi to lo roughly costs. Up to `per_band` of them are picked evenly spaced over the input order
    (first and last included), so the examples are deterministic and not all from the start of the file.

    Args:
        n: number of items.
        i: int64 pair indices (i < j), as `tokvec.duplicate_pairs(E, edges[0], as_arrays=True)` returns.
        j: int64 pair indices.
        s: float32 pair scores. Pairs at or below edges[0] are ignored; pairs missing above it make the
            resolution wrong, so compute them at a threshold <= edges[0].
        edges: ascending band edges in [-1, 1], at least two.
        per_band: examples per band at most (>= 0).

    Returns:
        one dict per band, ascending: `lo`, `hi`, `count` (removals in the band at threshold lo) and
        `examples`, a list of `{"index", "duplicate_of", "score"}` (indices into the n items, ascending).

    Raises:
        ValueError: edges not ascending or out of range, per_band < 0, arrays of different lengths.
    """
    e = [float(x) for x in edges]
    if len(e) < 2 or any(b <= a for a, b in itertools.pairwise(e)) or not (-1.0 <= e[0] and e[-1] <= 1.0):
        raise ValueError(f"edges must be at least two ascending values in [-1, 1], got {list(edges)}")
    per_band = int_at_least(per_band, "per_band", 0)
    out = []
    for k, (lo, hi) in enumerate(itertools.pairwise(e)):
        _, dup_of, score = _resolve(n, i, j, s, lo)
        sc = np.minimum(score, 1.0)  # NaN (kept items) stays NaN and fails both comparisons below
        upper = sc <= hi if k == len(e) - 2 else sc < hi
        idx = np.flatnonzero((dup_of >= 0) & (sc >= lo) & upper)
        if idx.size > per_band:
            # evenly spaced, first and last included, rounded half up in integers (no float ties to break)
            d = max(per_band - 1, 1)
            pick = idx[(2 * np.arange(per_band, dtype=np.int64) * (idx.size - 1) + d) // (2 * d)]
        else:
            pick = idx
        examples = [{"index": int(x), "duplicate_of": int(dup_of[x]), "score": float(score[x])} for x in pick.tolist()]
        out.append({"lo": lo, "hi": hi, "count": int(idx.size), "examples": examples})
    return out


# ------------------------------------------------------------------------------------------------------------- page
def write_html_report(
    path: str | Path,
    *,
    summary: dict[str, Any],
    curve: list[dict[str, Any]],
    scores: np.ndarray,
    bands: list[dict[str, Any]],
    texts: Callable[[int], str] | Sequence[str],
    rows: Sequence[int] | None = None,
    threshold: float,
) -> Path:
    """Writes the report page atomically (a temporary file beside `path`, then a rename).

    Args:
        path: the .html file to write.
        summary: shown at the top. Known keys, in this order: `input`, `model`, `texts`, `threshold`, `kept`,
            `removed`, `exact_duplicates` (texts equal to an earlier text), `seconds`, `date`; any other key
            is shown after them as it is.
        curve: rows of `tokvec.dedup_sweep`: `threshold`, `kept`, `removed`, `pairs`, ascending.
        scores: the pair scores the histogram bins: every pair above the curve's lowest threshold (for
            example the `s` of `tokvec.duplicate_pairs(E, curve[0]["threshold"], as_arrays=True)`).
        bands: the result of `band_examples`.
        texts: the item texts, a sequence or a function index -> text (called only for the examples).
        rows: item index -> 0-based input row number, when items are not the input rows (None: the same).
        threshold: the threshold of the run, marked on the charts.

    Returns:
        the path written.
    """
    text_of = texts if callable(texts) else texts.__getitem__
    row_of = (lambda x: x) if rows is None else rows.__getitem__
    t = float(threshold)
    n = summary.get("texts")
    inp = str(summary.get("input", ""))
    head = html.escape(_HIDDEN.sub("\ufffd", f"tokvec dedup report: {inp}" if inp else "tokvec dedup report"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{head}</title><style>{_CSS}</style></head><body><main>",
        _summary_html(summary, t),
        _curve_html(curve, t, int(n) if isinstance(n, (int, np.integer)) else None),
        _hist_html(np.asarray(scores), curve, bands, t),
        _bands_html(bands, t, text_of, row_of),
        (
            f"<footer>Written by tokvec {html.escape(_core.__version__)}. This page is self-contained: it loads "
            "nothing from the network (no script, no font, no image from elsewhere).</footer>"
        ),
        "</main></body></html>",
    ]
    return write_lines(path, ["\n".join(parts) + "\n"])


# ---------------------------------------------------------------------------------------------------------- summary
_LABELS = {
    "input": "Input",
    "model": "Model",
    "texts": "Texts",
    "threshold": "Threshold",
    "kept": "Kept",
    "removed": "Removed",
    "exact_duplicates": "Exact duplicates",
    "seconds": "Time",
    "date": "Date",
}
_CARDS = ("texts", "kept", "removed", "exact_duplicates")


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return f"{float(v):,.3f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{float(v):,.0f}"


def _share(v: Any, n: Any) -> str:
    """'12.5% of the texts', or '' when v or n is not a count."""
    if isinstance(v, (int, np.integer)) and isinstance(n, (int, np.integer)) and n > 0:
        return f"{100 * v / n:.1f}% of the texts"
    return ""


def _summary_html(summary: dict[str, Any], t: float) -> str:
    n = summary.get("texts")
    cards = [("threshold", f"{t:g}", "removed: cosine above it")]
    cards += [(k, _num(summary[k]), "" if k == "texts" else _share(summary[k], n)) for k in _CARDS if k in summary]
    card_html = "".join(
        f'<div class="card"><div class="k">{_LABELS[k]}</div><div class="v">{html.escape(v)}</div>'
        f'<div class="d">{html.escape(d)}</div></div>'
        for k, v, d in cards
    )
    meta = [
        (_LABELS[k], f"{_num(summary[k])} s" if k == "seconds" else str(summary[k]))
        for k in ("input", "model", "seconds", "date")
        if k in summary
    ]
    # other keys as they are; lists and dicts (a sweep, options) are left to the sections below
    meta += [
        (k.replace("_", " "), _num(v)[:200])
        for k, v in summary.items()
        if k not in _LABELS and not isinstance(v, (dict, list, tuple))
    ]
    dl = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in meta)
    return (
        '<header><h1>Deduplication report</h1><p class="lead">What the threshold does to this input: how many '
        "texts each threshold keeps, how pair scores are spread, and what gets removed in each score band.</p>"
        f'<div class="cards">{card_html}</div><dl class="meta">{dl}</dl></header>'
    )


# ----------------------------------------------------------------------------------------------------------- charts
def _step(span: float, target: int) -> float:
    """A 1-2-2.5-5 step that cuts `span` into about `target` parts."""
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))


def _ticks(lo: float, hi: float, step: float) -> list[float]:
    k0, k1 = math.ceil(lo / step - 1e-6), math.floor(hi / step + 1e-6)
    return [round(k * step, 10) for k in range(k0, k1 + 1)]


def _decimals(step: float) -> int:
    """Decimals that show every multiple of step exactly (0.025 -> 3)."""
    return next(d for d in range(10) if abs(round(step, d) - step) < 1e-9 * max(step, 1e-12))


def _count_labels(ticks: list[float]) -> list[str]:
    """Count tick labels in one unit chosen by the largest: 950 / 12,500 / 92k, 100k / 1.5M, 3M."""
    top = max((abs(v) for v in ticks), default=0.0)
    div, unit = (1e6, "M") if top >= 1e6 else (1e3, "k") if top >= 1e5 else (1.0, "")
    return [f"{v / div:,.6g}{unit}" if v else "0" for v in ticks]


@dataclass
class _Plot:
    """Data -> SVG coordinates of one chart (viewBox units; the SVG scales to the page width)."""

    x0: float
    x1: float
    y0: float
    y1: float
    log: bool = False
    w: int = 900
    h: int = 300
    left: int = 64
    right: int = 16
    top: int = 26
    bottom: int = 48

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def y(self, v: float) -> float:
        if self.log:
            v, a, b = math.log10(max(v, self.y0)), math.log10(self.y0), math.log10(self.y1)
        else:
            a, b = self.y0, self.y1
        return self.h - self.bottom - (v - a) / (b - a) * (self.h - self.top - self.bottom)

    def frame(self, xticks: list[float], xdec: int, yticks: list[float], xlabel: str, ylabel: str) -> list[str]:
        """Grid lines, tick labels, axis lines and axis titles."""
        out = []
        xb, xl, xr, yt = self.h - self.bottom, self.left, self.w - self.right, self.top
        for v, label in zip(yticks, _count_labels(yticks)):
            y = self.y(v)
            out.append(f'<line class="grid" x1="{xl}" x2="{xr}" y1="{y:.1f}" y2="{y:.1f}"/>')
            out.append(f'<text class="tick" x="{xl - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        for v in xticks:
            x = self.x(v)
            out.append(f'<line class="tk" x1="{x:.1f}" x2="{x:.1f}" y1="{xb}" y2="{xb + 5}"/>')
            out.append(f'<text class="tick" x="{x:.1f}" y="{xb + 18}" text-anchor="middle">{v:.{xdec}f}</text>')
        out.append(f'<line class="axis" x1="{xl}" x2="{xr}" y1="{xb}" y2="{xb}"/>')
        out.append(f'<line class="axis" x1="{xl}" x2="{xl}" y1="{yt}" y2="{xb}"/>')
        out.append(f'<text class="label" x="{(xl + xr) / 2:.1f}" y="{self.h - 8}" text-anchor="middle">{xlabel}</text>')
        cy = (yt + xb) / 2
        out.append(
            f'<text class="label" x="14" y="{cy:.1f}" text-anchor="middle" transform="rotate(-90 14 {cy:.1f})">'
            f"{ylabel}</text>"
        )
        return out

    def marker(self, t: float, label: str) -> list[str]:
        """The run's threshold: a dashed vertical line with a label above the plot."""
        x = self.x(t)
        # 13px semibold digits and letters are under 8 units wide: flip the label left when it would overflow
        anchor = "end" if x + 6 + 8 * len(label) > self.w else "start"
        dx = -6 if anchor == "end" else 6
        return [
            f'<line class="thr" x1="{x:.1f}" x2="{x:.1f}" y1="{self.top - 6}" y2="{self.h - self.bottom}"/>',
            f'<text class="thr-label" x="{x + dx:.1f}" y="{self.top - 10}" text-anchor="{anchor}">{label}</text>',
        ]

    def svg(self, cls: str, label: str, body: list[str]) -> str:
        return (
            f'<svg class="{cls}" viewBox="0 0 {self.w} {self.h}" role="img" aria-label="{html.escape(label)}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>'
        )


def _xrange(lo: float, hi: float) -> tuple[float, float, float]:
    """Padded x range and tick step for scores/thresholds in [lo, hi]."""
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    return lo, hi, _step(hi - lo, 10)


def _legend(items: list[tuple[str, str]]) -> str:
    return (
        '<div class="legend">'
        + "".join(f'<span><i class="sw {c}"></i>{html.escape(t)}</span>' for c, t in items)
        + "</div>"
    )


def _curve_html(curve: list[dict[str, Any]], t: float, n: int | None) -> str:
    intro = (
        '<section><h2>Kept texts by threshold</h2><p class="help">Each point is a full greedy run at that '
        "threshold. Where the curve is flat, few texts have a near-copy scoring there and moving the threshold "
        "changes little; where it climbs steeply, many do, and the threshold decides their fate.</p>"
    )
    if not curve:
        return intro + '<p class="empty">No curve: no threshold was swept.</p></section>'
    th = np.array([float(r["threshold"]) for r in curve])
    kept = np.array([int(r["kept"]) for r in curve])
    x0, x1, xs = _xrange(float(th.min()), float(th.max()))
    top = max(int(kept.max()), n or 0)
    lo = int(kept.min())
    if top - lo < 4:
        lo, top = max(0, lo - 2), top + 2
    ys = max(1.0, _step(top - lo, 5))
    y0, y1 = math.floor(lo / ys) * ys, math.ceil(top / ys) * ys
    p = _Plot(x0, x1, y0, y1)
    body = p.frame(_ticks(x0, x1, xs), _decimals(xs), _ticks(y0, y1, ys), "threshold", "kept texts")
    if n is not None and y0 <= n <= y1:
        yn = p.y(n)
        body.append(f'<line class="total" x1="{p.left}" x2="{p.w - p.right}" y1="{yn:.1f}" y2="{yn:.1f}"/>')
        body.append(f'<text class="note" x="{p.left + 6}" y="{yn - 5:.1f}">all {n:,} texts</text>')
    pts = [(p.x(a), p.y(b)) for a, b in zip(th, kept)]
    line = "M" + " L".join(f"{a:.1f},{b:.1f}" for a, b in pts)
    base = p.h - p.bottom
    body.append(f'<path class="area" d="{line} L{pts[-1][0]:.1f},{base} L{pts[0][0]:.1f},{base} Z"/>')
    body.append(f'<path id="curve-line" class="curve" d="{line}"/>')
    for (a, b), r in zip(pts, curve):
        tip = f"threshold {float(r['threshold']):g}: {int(r['kept']):,} kept, {int(r['removed']):,} removed"
        body.append(f'<circle class="pt" cx="{a:.1f}" cy="{b:.1f}" r="2.2"><title>{tip}</title></circle>')
    note = ""
    if x0 <= t <= x1:
        # the point of the curve at the run's threshold, when the grid has it (the summary has the run's counts)
        at = np.flatnonzero(np.isclose(th, t, rtol=0, atol=1e-9))
        if at.size:
            k = int(kept[at[0]])
            body += p.marker(t, f"threshold {t:g}: {k:,} kept")
            body.append(f'<circle class="thr-pt" cx="{p.x(t):.1f}" cy="{p.y(k):.1f}" r="4.5"/>')
        else:
            body += p.marker(t, f"threshold {t:g}")
    else:
        note = f'<p class="empty">The run\'s threshold {t:g} lies outside the swept range {x0:g} to {x1:g}.</p>'
    table = "".join(
        f"<tr><td>{float(r['threshold']):g}</td><td>{int(r['kept']):,}</td><td>{int(r['removed']):,}</td>"
        f"<td>{int(r['pairs']):,}</td></tr>"
        for r in curve
    )
    return (
        intro
        + _legend([("curve", "kept texts"), ("thr", "threshold of this run")] + ([("total", "all texts")] if n else []))
        + p.svg("chart", "kept texts as a function of the threshold", body)
        + note
        + '<details><summary>The curve as a table</summary><table class="grid-table"><thead><tr><th>threshold</th>'
        f"<th>kept</th><th>removed</th><th>pairs above</th></tr></thead><tbody>{table}</tbody></table></details>"
        "</section>"
    )


def _hist_svg(edges: np.ndarray, counts: np.ndarray, t: float, log: bool, width: float) -> str:
    top = float(counts.max())
    if log:
        y0, y1 = 0.5, 10.0 ** math.ceil(math.log10(top) + 1e-9)
        yt = [10.0**k for k in range(round(math.log10(y1)) + 1)]
        if len(yt) > 8:
            yt = yt[:: math.ceil(len(yt) / 7)]
    else:
        ys = max(1.0, _step(top, 5))
        y0, y1 = 0.0, math.ceil(top / ys) * ys
        yt = _ticks(y0, y1, ys)
    x0, x1, xs = _xrange(float(edges[0]), float(edges[-1]))
    p = _Plot(x0, x1, y0, y1, log=log)
    dec = _decimals(width)
    body = p.frame(_ticks(x0, x1, xs), _decimals(xs), yt, "pair score (cosine)", f"pairs per {width:g} bin")
    base = p.y(y0)
    for a, b, c in zip(edges[:-1], edges[1:], counts):
        if c == 0:
            continue
        xa, xb, yc = p.x(float(a)), p.x(float(b)), p.y(float(c))
        cls = "bar hi" if a >= t - 1e-9 else "bar"
        body.append(
            f'<rect class="{cls}" x="{xa + 0.4:.1f}" y="{yc:.1f}" width="{max(xb - xa - 0.8, 0.6):.1f}" '
            f'height="{max(base - yc, 0.5):.1f}"><title>{a:.{dec}f} to {b:.{dec}f}: {int(c):,} pairs</title></rect>'
        )
    if x0 <= t <= x1:
        body += p.marker(t, f"threshold {t:g}")
    scale = "log" if log else "linear"
    return p.svg(f"chart hist-{scale}", f"histogram of pair scores, {scale} counts", body)


def _hist_html(scores: np.ndarray, curve: list[dict[str, Any]], bands: list[dict[str, Any]], t: float) -> str:
    s = scores.astype(np.float32, copy=False).ravel()
    s = np.minimum(s[np.isfinite(s)], 1.0)  # an exact copy can score 1.0000001
    if curve:
        lo = float(curve[0]["threshold"])
    elif bands:
        lo = float(bands[0]["lo"])
    else:
        lo = float(s.min()) if s.size else 0.8
    lo = min(lo, 1.0 - _BIN_WIDTH)
    s = s[s >= lo]  # pairs found at a lower threshold (for the bands) are outside the curve's range
    intro = (
        '<section><h2>Pair scores</h2><p class="help">Every pair of texts whose cosine is above '
        f"{lo:g}. Bars right of the threshold are the pairs this run counts as duplicates; a valley is a natural "
        "place for a threshold, a cliff is where a small change moves many texts.</p>"
    )
    if s.size == 0:
        return intro + f'<p class="empty">No pair of texts scores above {lo:g}.</p></section>'
    width = _BIN_WIDTH
    while (1.0 - lo) / width > _MAX_BINS:
        width *= 2
    nb = math.ceil((1.0 - lo) / width - 1e-9)
    edges = np.linspace(1.0 - nb * width, 1.0, nb + 1)
    counts, _ = np.histogram(s, bins=edges)
    nz = counts[counts > 0]
    log_first = bool(nz.size and nz.max() / nz.min() >= 100)
    above = int((s > t).sum())
    lin, log = _hist_svg(edges, counts, t, False, width), _hist_svg(edges, counts, t, True, width)
    chk = ("", " checked") if log_first else (" checked", "")
    return (
        intro
        + _legend(
            [("bar", f"pairs at or below {t:g}"), ("bar hi", f"pairs above {t:g}: {above:,}"), ("thr", "threshold")]
        )
        # the switch is CSS only: the checked radio button shows its chart (the inputs precede what they show)
        + f'<div class="hist"><input type="radio" name="hscale" id="hs-lin"{chk[0]}>'
        f'<input type="radio" name="hscale" id="hs-log"{chk[1]}><div class="scale">counts '
        '<label for="hs-lin">linear</label><label for="hs-log">log</label></div>'
        f'<div class="h-lin">{lin}</div><div class="h-log">{log}</div></div>'
        f'<p class="help small">{int(s.size):,} pairs in {nb} bins of {width:g}.</p></section>'
    )


# ------------------------------------------------------------------------------------------------------------ bands
#: Characters shown as visible marks: C0/C1 controls (except tab and newline), DEL, and the bidi controls that
#: could reorder what is displayed around them (Trojan Source).
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _mark(c: str) -> str:
    o = ord(c)
    if o < 0x20:
        shown = chr(0x2400 + o)  # Control Pictures: U+2407 for BEL
    elif o == 0x7F:
        shown = "\u2421"
    elif 0xD800 <= o <= 0xDFFF:
        shown = "\ufffd"  # a lone surrogate cannot be written as UTF-8
    else:
        shown = f"U+{o:04X}"
    name = unicodedata.name(c, f"U+{o:04X}") if not 0xD800 <= o <= 0xDFFF else "lone surrogate"
    return f'<span class="ctl" title="{html.escape(name)}">{html.escape(shown)}</span>'


def _esc(s: str) -> str:
    """HTML text for untrusted s: escaped, hidden characters as marks."""
    out, k = [], 0
    for m in _HIDDEN.finditer(s):
        out.append(html.escape(s[k : m.start()]))
        out.append(_mark(m.group()))
        k = m.end()
    out.append(html.escape(s[k:]))
    return "".join(out)


#: Diff units: runs of spaces, of word characters, of other characters (so "829." differs from "559." in "829").
_WORDS = re.compile(r"\s+|\w+|[^\w\s]+")


def _diff_pair(a: str, b: str) -> tuple[str, str]:
    """Both texts as HTML (cut at MAX_CHARS), with the words that differ between them marked."""
    ca, cb = a[:MAX_CHARS], b[:MAX_CHARS]
    ta, tb = _WORDS.findall(ca), _WORDS.findall(cb)
    ha: list[str] = []
    hb: list[str] = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        ha.append(_esc("".join(ta[a0:a1])) if op == "equal" else _marked(ta[a0:a1]))
        hb.append(_esc("".join(tb[b0:b1])) if op == "equal" else _marked(tb[b0:b1]))
    return _cut("".join(ha), a), _cut("".join(hb), b)


def _marked(tokens: list[str]) -> str:
    """Words and the spaces between them inside one <mark>; spaces at either end outside it."""
    k0, k1 = 0, len(tokens)
    while k0 < k1 and tokens[k0].isspace():
        k0 += 1
    while k1 > k0 and tokens[k1 - 1].isspace():
        k1 -= 1
    core = f"<mark>{_esc(''.join(tokens[k0:k1]))}</mark>" if k1 > k0 else ""
    return _esc("".join(tokens[:k0])) + core + _esc("".join(tokens[k1:]))


def _cut(body: str, full: str) -> str:
    if len(full) <= MAX_CHARS:
        return body
    return f'{body}\u2026 <span class="len">({len(full):,} characters in all)</span>'


def _bands_html(
    bands: list[dict[str, Any]], t: float, text_of: Callable[[int], Any], row_of: Callable[[int], int]
) -> str:
    out = [
        (
            '<section><h2>What each score band removes</h2><p class="help">For each band, a run whose threshold is '
            "the band's lower edge removes the texts counted here with a score inside the band: it is roughly what "
            "lowering the threshold across the band costs. Words that differ between the two texts are highlighted. "
            "If these removed texts are copies you want gone, a threshold at or below the band is safe; if they are "
            "distinct texts, keep the threshold above it.</p>"
        )
    ]
    if not bands:
        out.append('<p class="empty">No bands.</p>')
    for b in bands:
        lo, hi, count = float(b["lo"]), float(b["hi"]), int(b["count"])
        if hi <= t:
            tag, cls = f"below the threshold {t:g}: such pairs are not duplicates in this run", "below"
        elif lo >= t:
            tag, cls = f"above the threshold {t:g}: such pairs are duplicates in this run", "above"
        else:
            tag, cls = f"contains the threshold {t:g}", "at"
        out.append(
            f'<div class="band {cls}"><h3><span class="range">{lo:.2f} to {hi:.2f}</span> '
            f'<span class="count">{count:,} removed at threshold {lo:g}</span>'
            f'<span class="tag">{html.escape(tag)}</span></h3>'
        )
        if not b["examples"]:
            out.append('<p class="empty">No removal falls in this band.</p></div>')
            continue
        out.append(
            '<table class="pairs"><colgroup><col class="c-score"><col><col></colgroup><thead><tr><th>score</th>'
            "<th>removed text</th><th>kept text it duplicates</th></tr></thead><tbody>"
        )
        for ex in b["examples"]:
            ia, ib = int(ex["index"]), int(ex["duplicate_of"])
            ta, tb = str(text_of(ia)), str(text_of(ib))
            ha, hb = _diff_pair(ta, tb)
            same = '<span class="same">identical text</span>' if ta == tb else ""
            out.append(
                f'<tr><td class="score">{float(ex["score"]):.4f}{same}</td>'
                f'<td><div class="row">row {int(row_of(ia)):,}</div><div class="text" dir="auto">{ha}</div></td>'
                f'<td><div class="row">row {int(row_of(ib)):,}</div><div class="text" dir="auto">{hb}</div></td></tr>'
            )
        shown = len(b["examples"])
        more = f"{shown} of {count:,}, evenly spaced over the input" if count > shown else f"all {count:,}"
        out.append(f'</tbody></table><p class="help small">Shown: {more}.</p></div>')
    out.append("</section>")
    return "".join(out)


_CSS = """
:root{--fg:#1f2430;--muted:#5f6b7a;--line:#e4e7ec;--panel:#f6f7f9;--blue:#2563eb;--blue-l:#dbe6fd;--thr:#d9480f;
--bar:#9db4d6;--bar-hi:#2563eb}
*{box-sizing:border-box}
body{margin:0;background:#fff;color:var(--fg);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue","DejaVu Sans",Arial,sans-serif}
main{max-width:1040px;margin:0 auto;padding:28px 28px 40px}
h1{font-size:26px;margin:0 0 4px;letter-spacing:-.01em}
h2{font-size:19px;margin:0 0 6px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:0 0 8px;display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 12px}
section{margin-top:34px}
.lead{color:var(--muted);margin:0 0 14px}
.help{color:var(--muted);margin:4px 0 10px;max-width:78ch}
.small{font-size:13px}
.empty{color:var(--muted);font-style:italic;padding:10px 14px;background:var(--panel);border-radius:6px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:12px;margin:6px 0 12px}
.card{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.card .k{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.card .v{font-size:24px;font-weight:650;font-variant-numeric:tabular-nums}
.card .d{font-size:12px;color:var(--muted);min-height:1.4em}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0;font-size:13px}
.meta dt{color:var(--muted)}.meta dd{margin:0;overflow-wrap:anywhere;font-family:ui-monospace,"DejaVu Sans Mono",
Menlo,Consolas,monospace}
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;font-size:13px;color:var(--muted);margin:2px 0 4px}
.legend span{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block;width:18px;height:10px;border-radius:2px}
.sw.curve{height:3px;background:var(--blue)}
.sw.thr{height:0;border-top:2px dashed var(--thr);border-radius:0}
.sw.total{height:0;border-top:1px dashed #98a2b3;border-radius:0}
.sw.bar{background:var(--bar)}.sw.bar.hi{background:var(--bar-hi)}
svg.chart{display:block;width:100%;height:auto}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif}
.tick{font-size:12px;fill:var(--muted);font-variant-numeric:tabular-nums}
.label{font-size:13px;fill:var(--fg)}
.note{font-size:12px;fill:#667085}
.grid{stroke:#eef0f3}.tk{stroke:#98a2b3}.axis{stroke:#98a2b3}
.total{stroke:#98a2b3;stroke-dasharray:3 3}
.curve{fill:none;stroke:var(--blue);stroke-width:2.2;stroke-linejoin:round}
.area{fill:var(--blue-l);opacity:.55}
.pt{fill:var(--blue)}
.thr{stroke:var(--thr);stroke-width:1.6;stroke-dasharray:5 4}
.thr-pt{fill:#fff;stroke:var(--thr);stroke-width:2.5}
.thr-label{font-size:13px;font-weight:600;fill:var(--thr)}
.bar{fill:var(--bar)}.bar.hi{fill:var(--bar-hi)}
.hist{position:relative}
.hist>input{position:absolute;opacity:0;pointer-events:none}
.scale{position:absolute;right:0;top:-30px;font-size:13px;color:var(--muted)}
.scale label{cursor:pointer;border:1px solid var(--line);padding:1px 10px;margin-left:-1px}
.scale label[for=hs-lin]{margin-left:6px;border-radius:6px 0 0 6px}.scale label[for=hs-log]{border-radius:0 6px 6px 0}
#hs-lin:checked~.scale label[for=hs-lin],#hs-log:checked~.scale label[for=hs-log]{background:var(--fg);color:#fff;
border-color:var(--fg)}
#hs-lin:checked~.h-log,#hs-log:checked~.h-lin{display:none}
details{margin-top:8px;font-size:13px}summary{cursor:pointer;color:var(--muted)}
.grid-table{border-collapse:collapse;margin-top:6px;font-variant-numeric:tabular-nums}
.grid-table td,.grid-table th{padding:2px 12px;text-align:right;border-bottom:1px solid var(--line)}
.band{margin:18px 0 8px;padding:14px 16px;border:1px solid var(--line);border-left:4px solid #98a2b3;
border-radius:8px}
.band.above{border-left-color:var(--blue)}.band.at{border-left-color:var(--thr)}
.range{font-variant-numeric:tabular-nums}
.count{font-weight:600}
.tag{font-size:12px;font-weight:400;color:var(--muted);background:var(--panel);border-radius:10px;padding:1px 9px}
.band.above .tag{color:#1e40af;background:#e8effd}.band.at .tag{color:#9a3412;background:#fdeee6}
table.pairs{width:100%;border-collapse:collapse;table-layout:fixed;font-size:14px}
.c-score{width:92px}
table.pairs th{text-align:left;font-size:12px;font-weight:500;color:var(--muted);padding:4px 8px}
table.pairs td{vertical-align:top;border-top:1px solid var(--line);padding:8px}
td.score{font-variant-numeric:tabular-nums;font-weight:600}
.same{display:block;font-size:11px;font-weight:400;color:var(--muted)}
.row{font-size:12px;color:var(--muted);font-variant-numeric:tabular-nums}
.text{white-space:pre-wrap;overflow-wrap:anywhere;unicode-bidi:isolate}
mark{background:#fff0b3;color:inherit;border-radius:2px}
.ctl{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.85em;color:#b42318;background:#fde8e7;
border-radius:3px;padding:0 2px}
.len{font-size:12px;color:var(--muted);white-space:nowrap}
footer{margin-top:40px;padding-top:10px;border-top:1px solid var(--line);font-size:12px;color:var(--muted)}
"""
