"""Soak test of `tokvec serve`: steady load for a long time, to see that memory, errors and latency stay flat.

One server (a configuration of benches/serve.py, default flags unless told otherwise) gets steady load from `wrk`
(16 connections, one thread) for SECONDS, as consecutive `wrk` runs of --window seconds (10 by default), each
reporting its own requests, latency percentiles and errors. Every request is POST /v1/embeddings, in a fixed cycle
of eight: five of one text (base64), one of one text with `dimensions: 64` (a truncated model variant), and two of
32 texts (one base64, one JSON floats). After each window: the RSS of the server's processes, and its anonymous
part (heap: where a leak shows; the rest is mostly the memory-mapped model file, whose pages the kernel may take
back when other processes need memory), the server CPU it used and the load average. At the end, the same figures
per minute.

Verdict: RSS growth after the warm-up (the first 10 % of the windows), from the end of the warm-up to the last
window, in MB, of the whole RSS and of its anonymous part; the error responses (non-2xx from wrk, socket errors, and the non-200 answers /metrics counted);
latency drift, the median window p99 of the last minute against that of the first minute after the warm-up. Exits
1 if either RSS figure grew more than --rss-tolerance-mb or any request failed. Latency drift is reported, not judged: on a
shared machine it moves with the other jobs (the load average column shows them).

Usage::

    python benches/serve_soak.py --seconds 600                   # the 10-minute soak
    python benches/serve_soak.py --seconds 60 --png soak.png     # and a figure of RSS and p99 over time
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as bench

CONNECTIONS = 16


def bodies(texts: list[str], path: Path) -> None:
    """The request cycle above, over `texts`, one JSON body a line."""
    singles = iter(texts)
    batches = (texts[i : i + 32] for i in range(0, len(texts) - 31, 32))
    with open(path, "w", encoding="utf-8") as f:
        try:
            while True:
                reqs = [{"input": next(singles), "encoding_format": "base64"} for _ in range(5)]
                reqs.append({"input": next(singles), "encoding_format": "base64", "dimensions": 64})
                reqs.append({"input": next(batches), "encoding_format": "base64"})
                reqs.append({"input": next(batches), "encoding_format": "float"})
                f.writelines(json.dumps({"model": "default", **r}) + "\n" for r in reqs)
        except StopIteration:
            pass


def server_errors(port: int) -> int:
    """The /v1/embeddings answers other than 200 that the server's /metrics counted."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    found = re.findall(r'^tokvec_requests_total\{endpoint="/v1/embeddings",status="(\d+)"\} (\d+)$', text, re.MULTILINE)
    return sum(int(n) for st, n in found if st != "200")


def socket_errors(s: str) -> int:
    """The sum of wrk's "Socket errors: connect 0, read 0, write 0, timeout 0"."""
    return sum(int(n) for n in re.findall(r"\d+", s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="length of the soak")
    ap.add_argument("--window", type=float, default=10.0, help="length of one wrk run (one row)")
    ap.add_argument("--config", choices=sorted(bench.CONFIGS), default="default", help="server flags")
    ap.add_argument("--rss-tolerance-mb", type=float, default=32.0, help="RSS growth after warm-up that fails")
    ap.add_argument("--png", type=Path, help="write a figure of RSS and p99 over time here")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("serve_soak.py needs wrk on PATH (Debian package wrk)")
    n_windows = max(2, round(args.seconds / args.window))
    load0 = os.getloadavg()
    print(
        f"soak: config {args.config}, {n_windows} windows of {args.window:g} s, {CONNECTIONS} connections; "
        f"{os.cpu_count()} cores; load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at start "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
    )
    print(
        f"{'t s':>5} {'requests':>9} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'RSS MB':>7} "
        f"{'anon MB':>7} {'srv CPU':>7} {'load':>5}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "soak.jsonl"
        bodies(bench.short_texts(32 * 256), path)
        server = bench.Server(bench.CONFIGS[args.config])
        try:
            t0 = time.perf_counter()
            for _ in range(n_windows):
                cpu0 = server.cpu()
                r = bench.run_wrk(server.port, path, CONNECTIONS, args.window)
                row = {
                    "t": time.perf_counter() - t0,
                    "requests": round(r["req_s"] * args.window),
                    "req_s": r["req_s"],
                    "p50_ms": r["p50_ms"],
                    "p99_ms": r["p99_ms"],
                    "errors": r["errors"] + socket_errors(r["socket_errors"]),
                    "rss_mb": server.status("VmRSS") / 1024,
                    "anon_mb": server.status("RssAnon") / 1024,
                    "server_cpu": (server.cpu() - cpu0) / args.window,
                    "load": os.getloadavg()[0],
                }
                rows.append(row)
                print(
                    f"{row['t']:>5.0f} {row['requests']:>9,} {row['req_s']:>7,.0f} {row['p50_ms']:>7.2f} "
                    f"{row['p99_ms']:>7.2f} {row['errors']:>6} {row['rss_mb']:>7.1f} {row['anon_mb']:>7.1f} "
                    f"{row['server_cpu']:>6.0%} "
                    f"{row['load']:>5.2f}",
                    flush=True,
                )
            counted = server_errors(server.port)
            peak = server.status("VmHWM") / 1024
        finally:
            server.stop()
    load1 = os.getloadavg()
    warm = max(1, n_windows // 10)
    after = rows[warm - 1 :]  # the last warm-up window is the baseline
    growth = after[-1]["rss_mb"] - after[0]["rss_mb"]
    anon = after[-1]["anon_mb"] - after[0]["anon_mb"]
    per_min = max(1, round(60 / args.window))
    print(
        "\nper minute: | minute | requests | req/s (windows) | p50 ms (median) | p99 ms: median / max of the windows | "
        "errors | RSS MB at its end | anon MB at its end | load average |"
    )
    for k in range(0, len(rows), per_min):
        w = rows[k : k + per_min]
        print(
            f"| {k // per_min + 1} | {sum(r['requests'] for r in w):,} | {min(r['req_s'] for r in w):,.0f}-"
            f"{max(r['req_s'] for r in w):,.0f} | {np.median([r['p50_ms'] for r in w]):.2f} | "
            f"{np.median([r['p99_ms'] for r in w]):.1f} / {max(r['p99_ms'] for r in w):.0f} | "
            f"{sum(r['errors'] for r in w)} | {w[-1]['rss_mb']:.1f} | {w[-1]['anon_mb']:.1f} | "
            f"{min(r['load'] for r in w):.1f}-{max(r['load'] for r in w):.1f} |"
        )
    first = float(np.median([r["p99_ms"] for r in rows[warm : warm + per_min]] or [after[0]["p99_ms"]]))
    last = float(np.median([r["p99_ms"] for r in rows[-per_min:]]))
    errors = sum(r["errors"] for r in rows) + counted
    total = sum(r["requests"] for r in rows)
    ok = max(growth, anon) <= args.rss_tolerance_mb and errors == 0
    print(
        f"load average {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} at end; {total:,} requests; server peak RSS "
        f"{peak:.0f} MB\n"
        f"RSS after warm-up ({warm} windows): {after[0]['rss_mb']:.1f} MB -> {after[-1]['rss_mb']:.1f} MB "
        f"(growth {growth:+.1f} MB, max {max(r['rss_mb'] for r in after):.1f}); anonymous {after[0]['anon_mb']:.1f} MB "
        f"-> {after[-1]['anon_mb']:.1f} MB (growth {anon:+.1f} MB, max {max(r['anon_mb'] for r in after):.1f}); "
        f"tolerance {args.rss_tolerance_mb:g} MB\n"
        f"errors: {errors} (wrk non-2xx and socket errors {errors - counted}, /metrics non-200 {counted})\n"
        f"p99 drift: median window p99 {first:.2f} ms in the first minute after warm-up, {last:.2f} ms in the last "
        f"({last / first:.2f}x; not judged: it follows the machine's load)\n"
        f"verdict: {'PASS' if ok else 'FAIL'}"
    )
    if args.png:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = [r["t"] for r in rows]
        fig, (a, b) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
        a.plot(t, [r["rss_mb"] for r in rows], label="RSS")
        a.plot(t, [r["anon_mb"] for r in rows], label="anonymous")
        a.set_ylim(bottom=0)  # from 0, so that a flat line looks flat
        a.set_ylabel("server memory, MB")
        a.legend()
        b.plot(t, [r["p99_ms"] for r in rows], label="p99")
        b.plot(t, [r["p50_ms"] for r in rows], label="p50")
        b.set_yscale("log")
        b.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        b.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        b.set_ylabel("latency, ms")
        b.set_xlabel("seconds")
        b.legend()
        fig.suptitle(f"tokvec serve soak, {CONNECTIONS} connections, config {args.config}")
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
