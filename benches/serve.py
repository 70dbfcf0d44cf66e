"""Load test of `tokvec serve` over loopback, against in-process `Model.embed` on the same texts.

Scenarios (each a fixed number of seconds, so the whole run is bounded in time):
  batch:  64 concurrent clients, 32 short texts per request -> texts/s, and its ratio to in-process `m.embed` of the
          same 32-text batches (and of all texts in one call); vectors as base64 (what the `openai` client asks
          for unless told otherwise) and as JSON floats (`encoding_format: float`)
  single: one text per request at 1, 16, 64 and 256 clients (base64) -> requests/s, texts/s, p50 and p99 latency
For each: the server's RSS after the scenario and the CPU seconds the server and the load generator used.

The load generator is `wrk` (C, epoll, one thread, persistent connections; Debian package `wrk`) when it is on PATH,
else an asyncio client in this process with persistent connections (slower: it takes CPU the server would use on a
2-core machine, which the CPU figures show). Texts: the Wikipedia sentences of ../shared/data of at most 120
characters.

Usage::

    python benches/serve.py                                  # ~1 min: every scenario, 5 s each
    python benches/serve.py --config default --config threads=1   # the service on both cores, then on one thread
    python benches/serve.py --baseline ../old/python         # and another tokvec (a checkout's python/ folder,
                                                             # e.g. an earlier version), in the same run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SENTENCES = REPO.parent / "shared" / "data" / "wikipedia-sentences" / "sentences.tsv"
sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = {
    "default": [],
    "threads=1": ["--threads", "1"],
}

WRK_SCRIPT = """
local bodies = {}
local n = 0
init = function(args)
  for line in io.lines(args[1]) do n = n + 1; bodies[n] = line end
  -- each wrk thread starts at another place
  i = math.random(n) - 1
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % n + 1
  return wrk.format(nil, "/v1/embeddings", nil, bodies[i])
end
"""


def short_texts(n: int) -> list[str]:
    out: list[str] = []
    if SENTENCES.exists():
        with open(SENTENCES, encoding="utf-8") as f:
            next(f)
            for line in f:
                t = line.rstrip("\n").split("\t", 1)[-1]
                if 0 < len(t) <= 120:
                    out.append(t)
                    if len(out) == n:
                        break
    if len(out) < n:
        out += [f"a short text number {i} about embeddings" for i in range(n - len(out))]
    return out


def in_process(texts: list[str], per_call: int, seconds: float) -> tuple[float, float]:
    """(texts/s, texts per CPU-second) of `m.embed` called `per_call` texts at a time, over `seconds`. The CPU
    figure counts every thread of this process (the core's pool too), so it holds on a busy machine."""
    import tokvec

    m = tokvec.load()
    calls = [texts[i : i + per_call] for i in range(0, len(texts) - per_call + 1, per_call)]
    m.embed(calls[0])
    done = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    while time.perf_counter() - t0 < seconds:
        for c in calls:
            m.embed(c)
        done += len(calls) * per_call
    return done / (time.perf_counter() - t0), done / (time.process_time() - c0)


class Server:
    def __init__(self, flags: list[str], python_path: str | None = None) -> None:
        env = dict(os.environ)
        if python_path:  # another tokvec package than the installed one
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [python_path, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokvec", "serve", "--port", "0", *flags],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not m:
            raise RuntimeError(f"the server did not start: {line}{self.proc.stderr.read()}")
        self.port = int(m.group(1))

    def pids(self) -> list[int]:
        """The server and any child processes it started."""
        pid = self.proc.pid
        return [pid] + [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def status(self, key: str) -> int:
        """A VmRSS/VmHWM line of the /proc status of the server's processes, in kB, added up (pages of the model
        file that several processes map are counted once per process)."""
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        return total

    def cpu(self) -> float:
        """CPU seconds used so far by the server's processes."""
        total = 0
        for pid in self.pids():
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=60)


def _ms(s: str) -> float:
    v, unit = re.match(r"([\d.]+)(\w+)", s).groups()
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(port: int, bodies: Path, clients: int, seconds: float) -> dict:
    script = bodies.with_suffix(".lua")
    script.write_text(WRK_SCRIPT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{seconds:g}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
            "--",
            str(bodies),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if set(lat) != {"50", "99"}:
        raise RuntimeError(f"no latency percentiles in wrk's output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return {
        "req_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(lat["50"]),
        "p99_ms": _ms(lat["99"]),
        "errors": (int(bad.group(1)) if bad else 0),
        "socket_errors": errs.group(1) if errs else "",
        "loadgen_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


async def _client(port: int, bodies: list[bytes], stop: float, lat: list[float], bad: list[int], k: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        i = k
        while time.perf_counter() < stop:
            body = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            writer.write(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            n = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
            await reader.readexactly(n)
            lat.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                bad.append(1)
    finally:
        writer.close()


def run_asyncio(port: int, bodies: Path, clients: int, seconds: float) -> dict:
    data = [line.encode() for line in bodies.read_text().splitlines()]
    lat: list[float] = []
    bad: list[int] = []
    t0 = time.perf_counter()
    c0 = time.process_time()

    async def main() -> None:
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(_client(port, data, stop, lat, bad, k * 7) for k in range(clients)))

    asyncio.run(main())
    dt = time.perf_counter() - t0
    a = np.array(lat) * 1e3
    return {
        "req_s": len(lat) / dt,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "errors": len(bad),
        "socket_errors": "",
        "loadgen_cpu_s": time.process_time() - c0,
    }


def scenario(
    server: Server,
    tool,
    tmp: Path,
    name: str,
    texts: list[str],
    per_request: int,
    clients: int,
    seconds: float,
    fmt: str,
) -> dict:
    bodies = tmp / f"{name}-{fmt}.jsonl"
    with open(bodies, "w", encoding="utf-8") as f:
        for i in range(0, len(texts) - per_request + 1, per_request):
            req = {"model": "default", "input": texts[i : i + per_request], "encoding_format": fmt}
            f.write(json.dumps(req) + "\n")
    tool(server.port, bodies, clients, min(1.0, seconds))  # warm-up: connections, caches
    cpu0 = server.cpu()
    r = tool(server.port, bodies, clients, seconds)
    cpu = server.cpu() - cpu0
    r.update(
        scenario=name,
        format=fmt,
        clients=clients,
        texts_per_request=per_request,
        texts_s=r["req_s"] * per_request,
        server_cpu_s=cpu,
        texts_per_server_cpu_s=r["req_s"] * seconds * per_request / max(cpu, 1e-9),
        seconds=seconds,
        server_rss_mb=server.status("VmRSS") / 1024,
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each scenario (after a 1 s warm-up)")
    ap.add_argument(
        "--config",
        action="append",
        choices=sorted(CONFIGS),
        default=None,
        help="server configurations to compare (repeatable; default: default)",
    )
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        default=None,
        help="also serve with the tokvec package found in DIR (a checkout's python/ folder, with its compiled core), "
        "default flags, in the same run: config 'baseline'",
    )
    ap.add_argument("--tool", choices=["wrk", "asyncio"], default="wrk" if shutil.which("wrk") else "asyncio")
    ap.add_argument("--json", action="store_true", help="one JSON object per scenario instead of the table")
    args = ap.parse_args()
    texts = short_texts(32 * 256)
    tool = run_wrk if args.tool == "wrk" else run_asyncio
    base32, cpu32 = in_process(texts, 32, args.seconds)
    base1, cpu1 = in_process(texts, 1, args.seconds)
    bulk, cpubulk = in_process(texts, len(texts), args.seconds)
    print(
        f"in-process m.embed on the same texts: {base32:,.0f} texts/s in calls of 32, {base1:,.0f} in calls of 1, "
        f"{bulk:,.0f} in one call of {len(texts)} (mean {np.mean([len(t) for t in texts]):.0f} chars)"
    )
    print(f"  per CPU-second: {cpu32:,.0f} texts in calls of 32, {cpu1:,.0f} in calls of 1, {cpubulk:,.0f} in one call")
    print(f"load generator: {args.tool}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        configs = [(c, CONFIGS[c], None) for c in args.config or ["default"]]
        if args.baseline:
            configs.append(("baseline", [], str(Path(args.baseline).resolve())))
        for cfg, flags, python_path in configs:
            server = Server(flags, python_path)
            try:
                plan = [("batch", 32, 64, "base64"), ("batch", 32, 64, "float")]
                plan += [("single", 1, c, "base64") for c in (1, 16, 64, 256)]
                for name, per, clients, fmt in plan:
                    r = scenario(server, tool, Path(tmp), name, texts, per, clients, args.seconds, fmt)
                    r["config"] = cfg
                    if name == "batch":
                        r["vs_in_process_32"] = r["texts_s"] / base32
                        r["vs_in_process_bulk"] = r["texts_s"] / bulk
                        r["cpu_vs_in_process_32"] = r["texts_per_server_cpu_s"] / cpu32
                    rows.append(r)
                    if args.json:
                        print(json.dumps(r))
                peak = server.status("VmHWM") / 1024
            finally:
                server.stop()
            if not args.json:
                what = f"tokvec from {python_path}, defaults" if python_path else " ".join(flags) or "defaults"
                print(f"\nconfig {cfg} ({what}), server peak RSS {peak:.0f} MB")
                print(
                    f"{'scenario':<8} {'vectors':<7} {'clients':>7} {'req/s':>9} {'texts/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
                    f"{'errors':>6} {'texts/CPU-s':>11} {'srv CPU':>7} {'gen CPU':>7} {'RSS MB':>6}  vs in-process"
                )
                for r in rows:
                    if r["config"] != cfg:
                        continue
                    ratio = (
                        f"{r['vs_in_process_32']:.1%} of calls of 32, {r['vs_in_process_bulk']:.1%} of one call; per CPU-s "
                        f"{r['cpu_vs_in_process_32']:.1%} of calls of 32"
                        if r["scenario"] == "batch"
                        else ""
                    )
                    print(
                        f"{r['scenario']:<8} {r['format']:<7} {r['clients']:>7} {r['req_s']:>9,.0f} {r['texts_s']:>10,.0f} "
                        f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['errors']:>6} {r['texts_per_server_cpu_s']:>11,.0f} "
                        f"{r['server_cpu_s'] / r['seconds']:>6.0%} {r['loadgen_cpu_s'] / r['seconds']:>6.0%} "
                        f"{r['server_rss_mb']:>6.0f}  {ratio}"
                    )


if __name__ == "__main__":
    main()
