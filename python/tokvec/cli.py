"""Command line: `tokvec embed | dedup | rank | info | extract`. Errors are one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


class UsageError(Exception):
    """A user mistake: reported as one line, no traceback."""


def read_texts(path: str, column: str | None) -> list[str]:
    """Reads texts: `.txt` one per line, `.tsv`/`.csv` a named column, `.jsonl` a named field, `-` stdin."""
    if path == "-":
        return [line.rstrip("\n") for line in sys.stdin]
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such file")
    suffix = p.suffix.lower()
    with open(p, encoding="utf-8", newline="") as fh:
        if suffix in (".tsv", ".csv"):
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",", quoting=csv.QUOTE_NONE
                                    if suffix == ".tsv" else csv.QUOTE_MINIMAL)
            fields = reader.fieldnames or []
            col = column or (fields[-1] if fields else None)
            if col not in fields:
                raise UsageError(f"{path}: no column {col!r} (columns: {', '.join(fields)}); pass --column")
            return [row[col] or "" for row in reader]
        if suffix == ".jsonl":
            out = []
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UsageError(f"{path}:{n}: not JSON ({e})") from None
                key = column or "text"
                if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
                    raise UsageError(f"{path}:{n}: no string field {key!r}; pass --column")
                out.append(obj[key])
            return out
        return [line.rstrip("\n") for line in fh]


def _write_atomic(path: str, write) -> None:
    out = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else ".")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(args: argparse.Namespace):
    import tokvec

    return tokvec.load(args.model, dim=args.dim)


def cmd_embed(args: argparse.Namespace) -> None:
    texts = read_texts(args.input, args.column)
    m = _load(args)
    t = time.perf_counter()
    E = m.embed(texts)
    dt = time.perf_counter() - t

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, E)

    _write_atomic(args.output, write)
    print(f"embedded {len(texts)} texts to {args.output} {E.shape} in {dt:.2f} s "
          f"({len(texts) / max(dt, 1e-9):,.0f} texts/s)", file=sys.stderr)


def cmd_dedup(args: argparse.Namespace) -> None:
    from tokvec.search import dedup_indices

    texts = read_texts(args.input, args.column)
    m = _load(args)
    t = time.perf_counter()
    E = m.embed(texts)
    t_embed = time.perf_counter() - t
    kept, dup_of, score = dedup_indices(E, args.threshold)
    dt = time.perf_counter() - t
    lines = [texts[i] + "\n" for i in kept]
    if args.output:
        _write_atomic(args.output, lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8"))
    else:
        sys.stdout.writelines(lines)
    if args.report:
        removed = np.flatnonzero(dup_of >= 0)
        rows = [json.dumps({"index": int(i), "duplicate_of": int(dup_of[i]), "score": round(float(score[i]), 6),
                            "text": texts[i], "kept_text": texts[dup_of[i]]}, ensure_ascii=False) + "\n"
                for i in removed]
        _write_atomic(args.report, lambda tmp: Path(tmp).write_text("".join(rows), encoding="utf-8"))
    print(f"kept {len(kept)} of {len(texts)} texts (removed {len(texts) - len(kept)} at threshold {args.threshold}) "
          f"in {dt:.2f} s (embedding {t_embed:.2f} s)", file=sys.stderr)


def cmd_rank(args: argparse.Namespace) -> None:
    import tokvec

    texts = read_texts(args.input, args.column)
    m = _load(args)
    if not texts:
        return
    scores, idx = tokvec.topk(m.embed([args.query]), m.embed(texts), k=args.k)
    for s, i in zip(scores[0], idx[0]):
        print(f"{s:.4f}\t{texts[i]}")


def cmd_info(args: argparse.Namespace) -> None:
    import tokvec
    from tokvec.extract import inspect
    from tokvec.formats import DEFAULT_MODEL_DIR

    info = inspect(args.path or DEFAULT_MODEL_DIR, key=args.key, tokenizer=args.tokenizer)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, ensure_ascii=False, default=str))
        return
    print(info)
    print(f"cpu features: {tokvec.CPU_FEATURES}")


def cmd_extract(args: argparse.Namespace) -> None:
    from tokvec.extract import extract

    if len(args.paths) < 2:
        raise UsageError("give a source and an output folder: tokvec extract SRC OUT")
    *srcs, out = args.paths
    if len(srcs) > 1 and not args.concat:
        raise UsageError(f"{len(srcs)} sources given: pass --concat to concatenate their tables (supercat)")
    if args.concat and len(srcs) < 2:
        raise UsageError("--concat needs at least two sources")
    if args.pca and args.dim is None:
        raise UsageError("--pca needs --dim N")
    if args.dim is not None and not args.pca:
        raise UsageError("--dim N needs --pca (tokvec load --dim truncates columns instead)")
    t = time.perf_counter()
    path = extract(srcs if len(srcs) > 1 else srcs[0], out, key=args.key, dtype=args.dtype, dim=args.dim,
                   pca=args.pca, center=args.center, trim=args.trim, tokenizer=args.tokenizer)
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    ex = cfg["extract"]
    src = cfg["source"]
    keys = ", ".join(s["key"] for s in src["concat"]) if "concat" in src else src["key"]
    print(f"wrote {path}: {ex['rows']} x {cfg['dim']} {ex['dtype']} from {keys} in {time.perf_counter() - t:.2f} s",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tokvec` command."""
    ap = argparse.ArgumentParser(prog="tokvec", description="Fast static text embeddings.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser, with_input: bool = True) -> None:
        p.add_argument("--model", default=None, help="model folder or .safetensors file (default: bundled model)")
        p.add_argument("--dim", type=int, default=None, help="keep the first DIM dimensions")
        if with_input:
            p.add_argument("--column", default=None, help="column (.tsv/.csv) or field (.jsonl) holding the text")

    p = sub.add_parser("embed", help="embed texts to a .npy file")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    common(p)
    p.set_defaults(fn=cmd_embed)

    p = sub.add_parser("dedup", help="remove near-duplicate texts (greedy, exact)")
    p.add_argument("input")
    p.add_argument("-o", "--output", default=None, help="kept texts (default: stdout)")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--report", default=None, help="JSONL file: each removed text, the kept text it duplicates, score")
    common(p)
    p.set_defaults(fn=cmd_dedup)

    p = sub.add_parser("rank", help="the texts most similar to a query")
    p.add_argument("query")
    p.add_argument("input")
    p.add_argument("-k", type=int, default=10)
    common(p)
    p.set_defaults(fn=cmd_rank)

    p = sub.add_parser("info", help="describe a checkpoint or model from its headers (tensors, table, tokenizer)")
    p.add_argument("path", nargs="?", default=None,
                   help="model folder, .safetensors / .gguf file or shard index (default: bundled model)")
    p.add_argument("--key", default=None, help="the embedding table's tensor name (checked instead of detected)")
    p.add_argument("--tokenizer", default=None, help="tokenizer JSON to use instead of the one found")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("extract", help="extract the token-embedding table of a checkpoint into a tokvec model",
                       description="tokvec extract SRC OUT, or tokvec extract SRC1 SRC2 ... OUT --concat")
    p.add_argument("paths", nargs="+", metavar="SRC... OUT",
                   help="model folder, .safetensors / .gguf file or shard index; then the output folder")
    p.add_argument("--key", default=None, help="the embedding table's tensor name, when detection is ambiguous")
    p.add_argument("--dtype", default=None, choices=["f16", "bf16", "f32"],
                   help="output dtype (default: the source's; f16 for quantized GGUF)")
    p.add_argument("--dim", type=int, default=None, help="with --pca: number of principal components to keep")
    p.add_argument("--pca", action="store_true", help="project the centered table on its top --dim components")
    p.add_argument("--center", action="store_true", help="subtract the mean row")
    p.add_argument("--trim", action="store_true", help="drop rows beyond the tokenizer's vocabulary")
    p.add_argument("--concat", action="store_true", help="concatenate the tables of several sources (one tokenizer)")
    p.add_argument("--tokenizer", default=None, help="tokenizer JSON (default: next to SRC, or from GGUF metadata)")
    p.set_defaults(fn=cmd_extract)

    args = ap.parse_args(argv)
    from tokvec._core import FormatError, TokenizerError

    try:
        args.fn(args)
    except (UsageError, FormatError, TokenizerError, FileNotFoundError, FileExistsError, ValueError, TypeError) as e:
        print(f"tokvec {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
