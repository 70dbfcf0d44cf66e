"""The dedup report page (`tokvec.report`), built from real text embedded with the default model and rendered in
headless Chromium: band examples against a brute-force greedy reference, a screenshot that is not blank, the DOM
(curve, escaped hostile texts), and the browser's own net log showing that the page asks for nothing outside.

Chromium is Debian's `chromium` package; scripts/test.sh installs it when it is missing."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import tokvec
from PIL import Image
from tokvec.report import MAX_CHARS, band_examples, write_html_report

EDGES = (0.80, 0.85, 0.90, 0.95, 0.98, 1.0)
THRESHOLD = 0.9
GRID = [round(0.80 + 0.005 * k, 3) for k in range(41)]
#: Everything a text can do to a page: markup, an outside image, quotes, control and bidi characters, RTL scripts,
#: emoji (a ZWJ family) and a length past MAX_CHARS.
HOSTILE = (
    '<script>document.title="pwned"</script><img src="http://example.invalid/leak.png"> "double" \'single\' & amp '
    "bell\x07 esc\x1b[31m nul\x00 \u202eRTL override\u202c مرحبا بالعالم שלום עולם 👩\u200d👩\u200d👧 🎉 "
    + "long "
    * 300
)
#: Pixel colours of the curve / bars (#2563eb) and of the threshold marker (#d9480f).
BLUE, ORANGE = (37, 99, 235), (217, 72, 15)


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def corpus(stsb_dev: list[tuple[str, str, float]], near_dup_corpus: list[str]) -> list[str]:
    """STS-B dev sentences (paraphrase pairs: real near-duplicates at every score), Wikipedia sentences with lightly
    edited copies, the hostile text in the middle and an exact copy of it as the very last text."""
    texts = [s for a, b, _ in stsb_dev for s in (a, b)]
    texts = texts[:1500] + [HOSTILE] + texts[1500:] + near_dup_corpus
    return [*texts, HOSTILE]


@pytest.fixture(scope="module")
def run(model: tokvec.Model, corpus: list[str]) -> dict:
    E = model.embed(corpus)
    i, j, s = tokvec.duplicate_pairs(E, EDGES[0], as_arrays=True)
    return {
        "E": E,
        "i": i,
        "j": j,
        "s": s,
        "curve": tokvec.dedup_sweep(E, GRID),
        "bands": band_examples(len(E), i, j, s),
    }


# --------------------------------------------------------------------------------------------------- band examples
def greedy_dense(S: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Brute force on a dense score matrix: item j is removed when an earlier kept item scores > t with it, and
    duplicates the best such item (the lowest index on ties). Returns (dup_of, score)."""
    n = len(S)
    kept = np.ones(n, bool)
    dup_of = np.full(n, -1)
    score = np.full(n, np.nan, np.float32)
    for j in range(n):
        col = np.where(kept[:j] & (S[:j, j] > t), S[:j, j], -np.inf)
        if col.size and col.max() > -np.inf:
            k = int(np.argmax(col))
            kept[j], dup_of[j], score[j] = False, k, col[k]
    return dup_of, score


def bands_ref(n: int, i: np.ndarray, j: np.ndarray, s: np.ndarray, edges, per_band: int) -> list[dict]:
    """band_examples by brute force: members of [lo, hi) (hi included for the last band, scores clipped at 1) of
    a greedy run at lo, and the members at positions q * (m - 1) / (per_band - 1) rounded half up."""
    S = np.full((n, n), -np.inf, np.float32)
    S[i, j] = s
    out = []
    for k, (lo, hi) in enumerate(itertools.pairwise(edges)):
        dup_of, score = greedy_dense(S, lo)
        last = k == len(edges) - 2
        members = [
            x
            for x in range(n)
            if dup_of[x] >= 0 and lo <= min(score[x], 1.0) and (min(score[x], 1.0) <= hi if last else score[x] < hi)
        ]
        shown = members
        if len(members) > per_band:
            d = max(per_band - 1, 1)
            shown = [members[math.floor(Fraction(q * (len(members) - 1), d) + Fraction(1, 2))] for q in range(per_band)]
        examples = [{"index": x, "duplicate_of": int(dup_of[x]), "score": float(score[x])} for x in shown]
        out.append({"lo": lo, "hi": hi, "count": len(members), "examples": examples})
    return out


def test_band_examples_match_brute_force(run: dict, corpus: list[str]) -> None:
    E, i, j, s = run["E"], run["i"], run["j"], run["s"]
    n = len(corpus)
    # the pairs are all the pairs: every numpy score clearly above the lowest edge is among them
    S = E @ E.T
    a, b = np.nonzero(np.triu(S > EDGES[0] + 1e-5, 1))
    assert set(zip(a.tolist(), b.tolist())) <= set(zip(i.tolist(), j.tolist()))
    for per_band in (5, 1, 0, 10_000):
        got = band_examples(n, i, j, s, EDGES, per_band=per_band)
        assert got == bands_ref(n, i, j, s, EDGES, per_band)
    bands = run["bands"]
    assert [(b["lo"], b["hi"]) for b in bands] == list(itertools.pairwise(EDGES))
    assert all(len(b["examples"]) == 5 and b["count"] > 5 for b in bands), [b["count"] for b in bands]
    # a band's count is part of what a dedup run at its lower edge removes
    for b in bands:
        res = tokvec.dedup_indices(E, b["lo"])[1]
        assert b["count"] <= int((res >= 0).sum())
        for ex in b["examples"]:
            assert ex["index"] > ex["duplicate_of"] and b["lo"] <= min(ex["score"], 1.0) <= b["hi"]
    # evenly spaced, first and last included: the last text (the hostile copy) is the last example of the top band
    last = bands[-1]["examples"][-1]
    assert (last["index"], last["duplicate_of"]) == (n - 1, 1500)


def test_band_examples_empty_cases(model: tokvec.Model, wiki_sentences: list[str]) -> None:
    z, zs = np.zeros(0, np.int64), np.zeros(0, np.float32)
    assert band_examples(0, z, z, zs) == [
        {"lo": a, "hi": b, "count": 0, "examples": []} for a, b in itertools.pairwise(EDGES)
    ]
    # two unrelated real sentences: no pair at all
    E = model.embed(wiki_sentences[:2])
    i, j, s = tokvec.duplicate_pairs(E, EDGES[0], as_arrays=True)
    assert len(s) == 0
    assert all(b["count"] == 0 for b in band_examples(2, i, j, s))
    # 200 sentences plus exact repeats of ten of them: only the top band has removals
    texts = wiki_sentences[1000:1200] + wiki_sentences[1000:1010]
    E = model.embed(texts)
    i, j, s = tokvec.duplicate_pairs(E, EDGES[0], as_arrays=True)
    bands = band_examples(len(texts), i, j, s)
    assert bands[-1]["count"] == 10 and [e["index"] for e in bands[-1]["examples"]] == [200, 202, 205, 207, 209]
    assert bands[2]["count"] == 0 and bands[2]["examples"] == []
    for bad in ((0.9,), (0.9, 0.8), (0.8, 0.8, 0.9), (0.5, 1.5)):
        with pytest.raises(ValueError, match="edges"):
            band_examples(len(texts), i, j, s, bad)
    with pytest.raises(ValueError, match="per_band"):
        band_examples(len(texts), i, j, s, per_band=-1)


# -------------------------------------------------------------------------------------------------------- chromium
def chromium(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    """Runs headless Chromium on `url` with a fresh profile and the browser's own background services (time,
    sign-in and search-eligibility queries) switched off where a flag does it; returns the finished process."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "chromium is missing: the report test renders the page in headless Chromium. Install Debian's package "
            "(apt-get install -y chromium; scripts/test.sh does it when apt-get is available)",
            pytrace=False,
        )
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
        "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions", "--disable-default-apps", "--allow-browser-signin=false",
        "--disable-features=NetworkTimeServiceQuerying,AimEnabled,AimServerEligibilityEnabled",
        f"--user-data-dir={tmp / 'profile'}", *args, url,
    ]  # fmt: skip
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def page_requests(net_log: Path) -> list[str]:
    """URLs (http, https, ws, wss) that a page asked for, from Chromium's JSON net log. A request counts as the
    page's when a document started it (its initiator is an origin, `null` for file:// pages) or when it belongs
    to the page's network partition (isolation key of a file:// top frame); the browser's own service requests
    carry the initiator `not an origin` and another partition."""
    log = json.loads(net_log.read_text(encoding="utf-8"))
    types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    out = []
    for ev in log["events"]:
        p = ev.get("params") or {}
        url = p.get("url", "")
        if types.get(ev["type"]) != "URL_REQUEST_START_JOB" or not url.startswith(("http:", "https:", "ws:", "wss:")):
            continue
        if p.get("initiator") != "not an origin" or str(p.get("network_isolation_key", "")).startswith("file:"):
            out.append(url)
    return out


def outside_requests(tmp: Path, page: Path) -> list[str]:
    log = tmp / f"{page.stem}-netlog.json"
    chromium(tmp, page.as_uri(), f"--log-net-log={log}", "--dump-dom")
    return page_requests(log)


def test_net_log_check_detects_an_outside_request(tmp_path: Path) -> None:
    """Negative control: an <img> on an outside URL is seen by the check; behind the report's CSP it is not
    fetched."""
    bare = tmp_path / "bare.html"
    bare.write_text('<!DOCTYPE html><p>x</p><img src="http://example.invalid/x.png">', encoding="utf-8")
    assert outside_requests(tmp_path, bare) == ["http://example.invalid/x.png"]
    csp = (
        '<!DOCTYPE html><meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        'style-src \'unsafe-inline\'; img-src data:"><p>x</p><img src="http://example.invalid/x.png">'
    )
    guarded = tmp_path / "guarded.html"
    guarded.write_text(csp, encoding="utf-8")
    assert outside_requests(tmp_path, guarded) == []


def _colour_count(px: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(px[..., :3].astype(int) - np.array(rgb)).sum(axis=-1) < tol).sum())


def test_report_page(run: dict, corpus: list[str], tmp_path: Path) -> None:
    n = len(corpus)
    rows = list(range(10_000, 10_000 + n))  # item -> input row, e.g. items taken from further down a file
    kept = tokvec.dedup_indices(run["E"], THRESHOLD)[0]
    summary = {
        "input": "../shared/data/stsb/sts-dev.tsv <& more>",
        "model": "default",
        "texts": n,
        "threshold": THRESHOLD,
        "kept": len(kept),
        "removed": n - len(kept),
        "exact_duplicates": n - len(set(corpus)),
        "seconds": 1.25,
        "sweep": run["curve"],  # a list: not shown in the summary
    }
    page = tmp_path / "report.html"
    got = write_html_report(
        page, summary=summary, curve=run["curve"], scores=run["s"], bands=run["bands"], texts=corpus.__getitem__,
        rows=rows, threshold=THRESHOLD,
    )  # fmt: skip
    assert got == page and [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left
    source = page.read_text(encoding="utf-8")
    assert len(source.encode()) < 150_000
    assert "Content-Security-Policy" in source and "default-src 'none'" in source
    assert "<script" not in source.lower() and "<img" not in source.lower()

    # the DOM as Chromium parsed it
    dom = chromium(tmp_path, page.as_uri(), "--dump-dom").stdout
    low = dom.lower()
    assert "<script" not in low and "<img" not in low  # the hostile text's markup is text, not elements
    assert '&lt;script&gt;document.title="pwned"&lt;/script&gt;&lt;img src="http://example.invalid/leak.png"&gt;' in dom
    assert "\u2407" in dom and "\u241b" in dom and "\u2400" in dom  # BEL, ESC, NUL as visible control pictures
    assert "\u202e" not in dom and "U+202E" in dom  # the bidi override is shown, not obeyed
    assert "مرحبا بالعالم" in dom and "👩\u200d👩\u200d👧" in dom
    assert len(HOSTILE) > MAX_CHARS and f"({len(HOSTILE):,} characters in all)" in dom and "long " * 300 not in dom
    assert "<title>tokvec dedup report: ../shared/data/stsb/sts-dev.tsv &lt;&amp; more&gt;</title>" in dom
    # the curve: one path through every row of the sweep, and the run's threshold marked
    start = dom.index('id="curve-line"')
    d = dom[dom.index(' d="', start - 200) + 4 :]
    d = d[: d.index('"')]
    assert d.startswith("M") and d.count("L") == len(GRID) - 1
    assert f"threshold {THRESHOLD:g}: {len(kept):,} kept" in dom
    # every band with its count, and each example with both row numbers and its score
    for b in run["bands"]:
        assert f"{b['count']:,} removed at threshold {b['lo']:g}" in dom
        for ex in b["examples"]:
            assert f"row {rows[ex['index']]:,}" in dom and f"row {rows[ex['duplicate_of']]:,}" in dom
            assert f"{ex['score']:.4f}" in dom
    assert len(run["bands"][-1]["examples"]) == 5 and "identical text" in dom
    assert "<dt>sweep</dt>" not in dom and "<dt>Input</dt>" in dom

    # the screenshot: the charts are drawn (curve and bars in blue, the threshold in orange)
    shot = tmp_path / "shot.png"
    chromium(tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=1100,1800")
    px = np.asarray(Image.open(shot).convert("RGB"))
    assert px.shape[:2] == (1800, 1100)
    charts = px[300:1700]
    assert (np.abs(charts.astype(int) - 255).sum(axis=-1) > 60).mean() > 0.03  # not blank
    assert _colour_count(charts, BLUE) > 3000 and _colour_count(charts, ORANGE) > 150

    # and the page asks for nothing outside (the hostile <img> URL included)
    assert outside_requests(tmp_path, page) == []


def test_report_empty_cases(tmp_path: Path) -> None:
    z, zs = np.zeros(0, np.int64), np.zeros(0, np.float32)
    page = write_html_report(
        tmp_path / "empty.html", summary={"input": "empty.txt", "texts": 0, "kept": 0, "removed": 0}, curve=[],
        scores=zs, bands=band_examples(0, z, z, zs), texts=[], threshold=THRESHOLD,
    )  # fmt: skip
    dom = chromium(tmp_path, page.as_uri(), "--dump-dom").stdout
    assert "No curve" in dom and "No pair of texts scores above 0.8" in dom
    assert dom.count("No removal falls in this band.") == len(EDGES) - 1
    # two texts, no pair: a flat curve and an empty histogram
    curve = [{"threshold": t, "kept": 2, "removed": 0, "pairs": 0} for t in GRID]
    page = write_html_report(
        tmp_path / "nopairs.html", summary={"texts": 2}, curve=curve, scores=zs, bands=band_examples(2, z, z, zs),
        texts=["a", "b"], threshold=0.95,
    )  # fmt: skip
    dom = chromium(tmp_path, page.as_uri(), "--dump-dom").stdout
    assert 'id="curve-line"' in dom and "No pair of texts scores above 0.8" in dom
    assert outside_requests(tmp_path, page) == []


def test_report_stays_small_with_millions_of_pairs(run: dict, corpus: list[str], tmp_path: Path) -> None:
    """Three million real pair scores (the run's, repeated) and a 320,000-text summary: the page is binned, not
    drawn pair by pair, so it stays small and quick."""
    s = np.resize(run["s"], 3_000_000)
    rows = range(0, 320_000 * 100, 100)
    t0 = time.perf_counter()
    page = write_html_report(
        tmp_path / "big.html", summary={"texts": 320_000, "kept": 300_000, "removed": 20_000}, curve=run["curve"],
        scores=s, bands=run["bands"], texts=corpus, rows=rows, threshold=THRESHOLD,
    )  # fmt: skip
    dt = time.perf_counter() - t0
    size = page.stat().st_size
    print(f"3,000,000 scores: {size:,} bytes in {dt:.3f} s", file=sys.stderr)
    assert size < 150_000 and dt < 5.0
    assert "3,000,000 pairs in 40 bins of 0.005" in page.read_text(encoding="utf-8")


def test_report_ranges(run: dict, corpus: list[str], tmp_path: Path) -> None:
    """The histogram covers the curve's range even when the pairs were found lower; a threshold between grid points
    is marked without a count, one outside the grid is said to be outside."""
    s = tokvec.duplicate_pairs(run["E"], 0.5, as_arrays=True)[2]
    kw = {"summary": {"texts": len(corpus)}, "curve": run["curve"], "scores": s, "bands": run["bands"], "texts": corpus}
    page = write_html_report(tmp_path / "r.html", threshold=0.9225, **kw).read_text(encoding="utf-8")
    assert f"{int((np.minimum(s, 1.0) >= GRID[0]).sum()):,} pairs in 40 bins of 0.005" in page
    assert len(s) > int((s >= GRID[0]).sum())
    assert "threshold 0.9225</text>" in page and 'class="thr-pt"' not in page
    page = write_html_report(tmp_path / "r.html", threshold=0.7, **kw).read_text(encoding="utf-8")
    assert "threshold 0.7 lies outside the swept range 0.8 to 1" in page
