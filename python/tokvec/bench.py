"""`tokvec bench`: texts per second on this machine, stage by stage, with a model (default: the bundled one).

Stages, each timed on the same texts:

- ``tokenize``: the Rust tokenizer alone (`Model._core.encode`, the encoder `embed` runs), ids and offsets out;
- ``pool``: pooling alone on those pre-tokenized ids (`Model.embed_ids`);
- ``embed``: both in one pass (`Model.embed`), what users call;
- ``topk``: exact top-k of `queries` query vectors over all the embedded texts (`tokvec.topk`);
- ``dedup``: exact greedy deduplication of the embedded texts at `threshold` (`tokvec.dedup_indices`).

Without an input file the texts are generated, deterministically for a seed, from the words of the model's own
vocabulary (word-start tokens made only of letters), 4 to 30 words each, and 5 % of them are near-copies of an
earlier text (one word changed), so that deduplication has work to do. Nothing is read from disk but the model.

Each stage runs up to `repeat` times, stopping early once it has spent `budget` seconds, and the fastest run is
reported (the least disturbed by other work on the machine). Threads: the Rust core's rayon pool reads
`RAYON_NUM_THREADS` once, when it starts; `run_bench` reports the value it ran under, and `tokvec bench --threads N`
reruns itself in a child process with that variable set.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["STAGES", "format_report", "generate_texts", "rerun_child", "run_bench"]

#: Stage names, in the order they run.
STAGES = ("tokenize", "pool", "embed", "topk", "dedup")

# used when a vocabulary has too few plain words (e.g. a byte-level table with unusual pieces)
_FALLBACK_WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "as", "with", "by", "that", "at", "from", "his", "her",
    "it", "an", "were", "are", "which", "this", "be", "or", "has", "had", "first", "one", "their", "its", "new",
    "after", "who", "they", "two", "been", "also", "but", "city", "school", "time", "year", "world", "film", "state",
    "team", "known", "music", "river", "war", "during", "people", "family", "century", "house", "power", "system",
    "water", "game", "party", "north", "south",
)


def _vocab_words(tokenizer_json: str) -> list[str]:
    """Plain words of a tokenizer's vocabulary, sorted: word-start pieces made only of letters."""
    try:
        vocab = json.loads(tokenizer_json).get("model", {}).get("vocab", {})
    except (ValueError, AttributeError):
        vocab = {}
    pieces = vocab.keys() if isinstance(vocab, dict) else (v[0] for v in vocab if isinstance(v, list) and v)
    words = set()
    for p in pieces:
        if not isinstance(p, str) or p.startswith("##"):
            continue
        w = p[1:] if p[:1] in ("Ġ", "▁") else p
        if len(w) >= 2 and w.isalpha():
            words.add(w.lower())
    return sorted(words)


def generate_texts(model: Any, n: int, *, seed: int = 0, dup_rate: float = 0.05) -> list[str]:
    """`n` deterministic sentence-like texts made of the model's vocabulary words.

    Args:
        model: a `tokvec.Model` (its tokenizer's vocabulary gives the words).
        n: number of texts.
        seed: the random seed; the same seed and model give the same texts.
        dup_rate: fraction of texts that are an earlier text with one word replaced.

    Returns:
        the texts.
    """
    words = _vocab_words(model._tok.json)
    if len(words) < 100:
        words = list(_FALLBACK_WORDS)
    rng = np.random.default_rng(seed)
    # a Zipf-like choice (sorted order carries no meaning, so ranks are shuffled once): a few words are common
    ranks = rng.permutation(len(words))
    p = 1.0 / (ranks + 10.0)
    p /= p.sum()
    lengths = rng.integers(4, 31, size=n)
    pool = rng.choice(len(words), size=int(lengths.sum()), p=p)
    dup = rng.random(n) < dup_rate
    out: list[str] = []
    pos = 0
    for t in range(n):
        if dup[t] and out:
            src = out[int(rng.integers(0, len(out)))].rstrip(".").split(" ")
            src[int(rng.integers(0, len(src)))] = words[int(rng.integers(0, len(words)))]
            out.append(" ".join(src) + ".")
            pos += int(lengths[t])
            continue
        ws = [words[i] for i in pool[pos : pos + int(lengths[t])]]
        pos += int(lengths[t])
        ws[0] = ws[0].capitalize()
        out.append(" ".join(ws) + ".")
    return out


def _time(fn: Callable[[], Any], repeat: int, budget: float) -> tuple[float, int, Any]:
    """(fastest seconds, runs, last result)."""
    best = float("inf")
    runs = 0
    spent = 0.0
    result = None
    while runs < repeat and (runs == 0 or spent < budget):
        t = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t
        best = min(best, dt)
        spent += dt
        runs += 1
    return best, runs, result


def _threads() -> int:
    env = os.environ.get("RAYON_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_bench(
    model: Any,
    texts: list[str],
    *,
    source: str = "generated",
    queries: int = 1000,
    k: int = 10,
    threshold: float = 0.9,
    repeat: int = 3,
    budget: float = 2.0,
) -> dict[str, Any]:
    """Times each stage (see the module docstring) on `texts`.

    Args:
        model: a float `tokvec.Model` (not binary=True).
        texts: the texts (at least one).
        source: where the texts came from, for the report.
        queries: top-k queries (the first texts' vectors), at most len(texts).
        k: neighbours per top-k query.
        threshold: dedup threshold.
        repeat: runs per stage at most; the fastest is reported.
        budget: a stage stops repeating once it has spent this many seconds.

    Returns:
        a JSON-ready dict: model and machine facts, and per stage `seconds`, `texts_per_second`, `runs`.
    """
    import tokvec

    if model.binary:
        raise ValueError("tokvec bench needs a float model (binary=False)")
    if not texts:
        raise ValueError("no texts to benchmark")
    n = len(texts)
    stages: dict[str, dict[str, Any]] = {}

    def record(name: str, sec: float, runs: int, items: int, **extra: Any) -> None:
        stages[name] = {"seconds": round(sec, 6), "texts_per_second": round(items / max(sec, 1e-9), 1),
                        "runs": runs, **extra}

    sec, runs, (ids, offsets) = _time(lambda: model._core.encode(texts), repeat, budget)
    tokens = int(ids.shape[0])
    record("tokenize", sec, runs, n, tokens_per_second=round(tokens / max(sec, 1e-9), 1))
    sec, runs, _ = _time(lambda: model.embed_ids(ids, offsets), repeat, budget)
    record("pool", sec, runs, n, tokens_per_second=round(tokens / max(sec, 1e-9), 1))
    sec, runs, E = _time(lambda: model.embed(texts), repeat, budget)
    record("embed", sec, runs, n)
    nq = max(1, min(queries, n))
    kk = min(k, n)
    sec, runs, _ = _time(lambda: tokvec.topk(E[:nq], E, k=kk), repeat, budget)
    stages["topk"] = {"seconds": round(sec, 6), "queries_per_second": round(nq / max(sec, 1e-9), 1),
                      "texts_per_second": round(nq * n / max(sec, 1e-9), 1), "runs": runs, "queries": nq,
                      "corpus": n, "k": kk}
    sec, runs, (kept, _, _) = _time(lambda: tokvec.dedup_indices(E, threshold), repeat, budget)
    record("dedup", sec, runs, n, threshold=threshold, kept=int(kept.shape[0]))
    return {
        "command": "bench",
        "model": str(model._resolved.safetensors),
        "format": model.format,
        "vocab": model.vocab_size,
        "dim": model.dim,
        "tokenizer": model._tok.kind,
        "texts": n,
        "source": source,
        "tokens": tokens,
        "tokens_per_text": round(tokens / n, 2),
        "threads": _threads(),
        "rayon_num_threads": os.environ.get("RAYON_NUM_THREADS"),
        "cpu_features": tokvec.CPU_FEATURES,
        "tokvec_version": tokvec.__version__,
        "stages": stages,
    }


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table of a `run_bench` result."""
    lines = [
        f"model:     {r['model']} ({r['format']}, vocab {r['vocab']:,}, dim {r['dim']}, tokenizer {r['tokenizer']})",
        f"texts:     {r['texts']:,} ({r['source']}), {r['tokens_per_text']} tokens/text",
        f"threads:   {r['threads']}" + ("" if r["rayon_num_threads"] else " (RAYON_NUM_THREADS not set: all cores)"),
        f"cpu:       {r['cpu_features']}",
        "",
        f"{'stage':<10}{'texts/s':>14}{'seconds':>11}  notes",
    ]
    st = r["stages"]
    notes = {
        "tokenize": f"{st['tokenize']['tokens_per_second']:,.0f} tokens/s",
        "pool": f"pre-tokenized ids, {st['pool']['tokens_per_second']:,.0f} tokens/s",
        "embed": "tokenize + pool in one pass",
        "topk": f"{st['topk']['queries']:,} queries x {st['topk']['corpus']:,} vectors, k={st['topk']['k']}: "
        f"{st['topk']['queries_per_second']:,.0f} queries/s (texts/s = vectors scanned/s)",
        "dedup": f"exact, threshold {st['dedup']['threshold']:g}: kept {st['dedup']['kept']:,}",
    }
    for name in STAGES:
        s = st[name]
        lines.append(f"{name:<10}{s['texts_per_second']:>14,.0f}{s['seconds']:>11.4f}  {notes[name]}")
    return "\n".join(lines)


def rerun_child(args: Any, threads: int) -> int:
    """Reruns `tokvec bench` with the same options in a child process with `RAYON_NUM_THREADS=threads`
    (the pool of this process may already be running); forwards its stdout and stderr.

    Returns:
        the child's exit status.
    """
    import subprocess
    import sys

    argv = ["bench"] + ([args.input] if args.input else [])
    for opt, val in (("--n", args.n), ("--queries", args.queries), ("-k", args.k), ("--threshold", args.threshold),
                     ("--repeat", args.repeat), ("--seed", args.seed), ("--model", args.model), ("--dim", args.dim),
                     ("--column", args.column), ("--field", args.field), ("--format", args.format)):
        if val is not None:
            argv += [opt, str(val)]
    if args.json:
        argv.append("--json")
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
    p = subprocess.run([sys.executable, "-m", "tokvec", *argv], env=env, capture_output=True, text=True, check=False)
    sys.stdout.write(p.stdout)
    sys.stderr.write(p.stderr)
    return p.returncode
