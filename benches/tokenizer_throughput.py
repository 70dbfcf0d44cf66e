"""Tokenizer throughput per family: tokvec's fast encoder vs its `tokenizers`-crate fallback vs HF
`tokenizers.encode_batch`, ids only, on the first N Wikipedia sentences, for 1 and 2 threads.

Each thread count runs in a fresh interpreter (rayon's pool size is fixed at first use). Prints one
row per (family, threads): texts/s and tokens/s of each encoder, and the fast encoder's speed-up.

Usage::

    python benches/tokenizer_throughput.py              # 100,000 sentences, 1 and 2 threads
    python benches/tokenizer_throughput.py --n 20000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))


def measure(n: int, repeats: int) -> list[dict]:
    import tokenizers
    from check_tokenizer_equality import load_corpora, tokenizer_jsons
    from timing import best
    from tokvec import _core

    texts = load_corpora()["wikipedia-sentences"][:n]
    rows = []
    for name, (js, _kind) in tokenizer_jsons(texts[:20000]).items():
        fast = _core.Tokenizer(js, False, True)
        slow = _core.Tokenizer(js, False, False)
        hf = tokenizers.Tokenizer.from_str(js)
        hf.no_truncation()
        hf.no_padding()

        t_fast, (ids, _) = best(lambda f=fast: f.encode(texts), repeats)
        t_slow, _ = best(lambda s=slow: s.encode(texts), repeats)
        t_hf, _ = best(lambda h=hf: h.encode_batch(texts, add_special_tokens=False), repeats)
        rows.append(
            {"family": name, "kind": fast.kind, "tokens": len(ids), "fast": t_fast, "crate": t_slow, "hf": t_hf}
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.n, a.repeats)))
        return
    print(
        f"{'family':52} {'thr':>3} {'fast texts/s':>13} {'crate texts/s':>14} {'HF batch texts/s':>17} "
        f"{'fast Mtok/s':>11} {'fast/HF':>8}"
    )
    for t in a.threads.split(","):
        env = {**os.environ, "RAYON_NUM_THREADS": t, "RAYON_RS_NUM_CPUS": t, "TOKENIZERS_PARALLELISM": "true"}
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--n", str(a.n), "--repeats", str(a.repeats)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for r in json.loads(out.strip().splitlines()[-1]):
            print(
                f"{r['family']:52} {t:>3} {a.n / r['fast']:>13,.0f} {a.n / r['crate']:>14,.0f} "
                f"{a.n / r['hf']:>17,.0f} {r['tokens'] / r['fast'] / 1e6:>11.2f} {r['hf'] / r['fast']:>7.2f}x"
            )


if __name__ == "__main__":
    main()
