"""Command line: `tokvec embed | dedup | rank | cluster | split | info | extract | serve`. Errors are one line on stderr
and exit 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable

import numpy as np

__all__ = ["main"]


class UsageError(Exception):
    """A user mistake: reported as one line, no traceback."""


def read_texts(path: str, column: str | None, field: str | None = None, fmt: str | None = None) -> list[str]:
    """All texts of an input (see `tokvec.textio.Input`)."""
    from tokvec.textio import read_all

    return read_all(path, column=column, field=field, fmt=fmt)


def _load(args: argparse.Namespace):
    import tokvec

    return tokvec.load(args.model, dim=args.dim)


class Progress:
    """A tqdm bar on stderr (texts done, texts/s, ETA when the total is known), shown only when stderr
    is a terminal and --quiet is not given. `total` may be a function, called only when the bar shows."""

    def __init__(self, args: argparse.Namespace, desc: str, total: int | Callable[[], int | None] | None = None,
                 unit: str = " texts") -> None:
        self.bar = None
        if not getattr(args, "quiet", False) and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total() if callable(total) else total, desc=desc, unit=unit, unit_scale=True,
                            file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StageProgress:
    """One `Progress` bar per stage of a core run, fed by its `progress(stage, done)` reports: `stages` maps a
    stage number to (description, total, unit)."""

    def __init__(self, args: argparse.Namespace, stages: dict[int, tuple[str, int, str]]) -> None:
        self.args, self.stages = args, stages
        self.stage, self.done, self.bar = None, 0, None

    def __call__(self, stage: int, done: int) -> None:
        if stage not in self.stages:
            return
        if stage != self.stage:
            self.close()
            desc, total, unit = self.stages[stage]
            self.stage, self.done, self.bar = stage, 0, Progress(self.args, desc, total, unit)
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _input(args: argparse.Namespace, path: str, *, keep: bool = False):
    """An input of the command, checked (file, header, column) before any work."""
    from tokvec.textio import Input

    src = Input(path, column=args.column, field=args.field, fmt=args.format,
                encoding_errors=getattr(args, "encoding_errors", "strict"), keep=keep)
    src.check()
    return src


def _read(src, args: argparse.Namespace, desc: str) -> tuple[list[int], list[str]]:
    """Every text of an input with its row number."""
    from tokvec.textio import count_texts

    prog = Progress(args, desc, lambda: count_texts(src.path, fmt=args.format))
    rows: list[int] = []
    texts: list[str] = []
    try:
        for r, t in src.chunks(args.batch_size):
            rows.extend(r)
            texts.extend(t)
            prog.update(len(t))
    finally:
        prog.close()
    return rows, texts


def _embed(m, texts: list[str], args: argparse.Namespace, desc: str, scratch: bool = False) -> np.ndarray:
    """Unit vectors of texts (cosine even for a `normalize: false` model), pooled --batch-size texts at a time;
    `scratch`: in a scratch file when they are too many for memory (`_scratch.matrix`, disk space checked first)."""
    from tokvec import _scratch

    out = None
    if scratch and not m.binary:
        try:
            out = _scratch.matrix(len(texts), m.dim, what=desc)
        except OSError as e:
            raise UsageError(str(e)) from None
    prog = Progress(args, desc, len(texts))
    try:
        return m._pooled(texts, True, args.batch_size, prog, out=out)
    finally:
        prog.close()


def _summary(args: argparse.Namespace, info: dict, human: str) -> None:
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
    if not args.quiet:
        print(human, file=sys.stderr)


def _needs(module: str, what: str, extra: str) -> None:
    """Refuses, before any work, an option whose optional package is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{what} needs the {module} package: pip install 'tokvec[{extra}]'")


def _rows_output(flag: str, path: str, src) -> str:
    """How an output that selects input rows is written: "records" (the rows whole, in the input's format),
    "txt" (the texts, one a line) or "jsonl" (row number and text). Checked before any work."""
    from tokvec.textio import output_format

    fmt = output_format(path, ("txt", "jsonl", "csv", "tsv", "parquet"), compressed=True)
    if path.endswith((".gz", ".zst", ".zstd")):
        if fmt == "parquet":
            raise UsageError(f"{flag} {path}: Parquet is compressed internally; drop the .gz/.zst suffix")
        if not path.endswith(".gz"):
            _needs("zstandard", f"{flag} {path}", "zstd")
    if fmt == src.format:
        mode = "records"
    elif fmt in ("txt", "jsonl"):
        mode = fmt
    else:
        raise UsageError(
            f"{flag} {path}: rows of a .{src.format} input are written whole as .{src.format}, or as texts to .txt / "
            ".jsonl"
        )
    if fmt == "parquet":
        _needs("pyarrow", f"{flag} {path}", "parquet")
    return mode


def _text_lines(texts) -> list[str]:
    """(row, text) pairs as the lines of a .txt output; a text holding a line break is refused (it would become
    two)."""
    lines = []
    for r, t in texts:
        if "\n" in t or "\r" in t:
            raise UsageError(f"text of row {r} contains a line break; write the output to a .jsonl file instead")
        lines.append(t + "\n")
    return lines


def _write_rows(outs, path: str | None, mode: str, src, rows: list[int], texts: list[str], extra=None) -> None:
    """Writes selected rows (`rows`, with their `texts`, in output order) as `mode` says; stdout when no path.

    `extra(k)` adds fields to the k-th .jsonl line (e.g. rank and score)."""
    if path is not None and mode == "records":
        with outs.open(path) as fh:
            src.copy_rows(rows, fh)
        return
    if mode == "txt":
        lines = _text_lines(zip(rows, texts))
    else:
        lines = [json.dumps({**(extra(k) if extra else {}), "index": r, "text": t}, ensure_ascii=False) + "\n"
                 for k, (r, t) in enumerate(zip(rows, texts))]
    if path is None:
        sys.stdout.writelines(lines)
    else:
        outs.write_lines(path, lines)


def cmd_embed(args: argparse.Namespace) -> None:
    from tokvec.textio import EmbeddingWriter, check_distinct, output_format

    output_format(args.output)
    if args.output.endswith(".parquet"):
        _needs("pyarrow", f"-o {args.output}", "parquet")
    check_distinct({"-o": args.output}, {"input": args.input})
    src = _input(args, args.input)
    m = _load(args)
    t = time.perf_counter()
    meta = {"model": str(args.model or "default"), "dim": str(m.dim), "input": args.input}
    prog = Progress(args, "embed")
    try:
        with EmbeddingWriter(args.output, m.dim, metadata=meta) as w:
            for _rows, chunk in src.chunks(args.batch_size):
                w.write(m.embed(chunk), chunk)
                prog.update(len(chunk))
    finally:
        prog.close()
    dt = time.perf_counter() - t
    _summary(args, {"command": "embed", "input": args.input, "output": args.output, "texts": w.n, "dim": m.dim,
                    "seconds": round(dt, 3), "texts_per_second": round(w.n / max(dt, 1e-9), 1)},
             f"embedded {w.n} texts to {args.output} ({w.n} x {m.dim}) in {dt:.2f} s "
             f"({w.n / max(dt, 1e-9):,.0f} texts/s)")


def _input_notes(src) -> str:
    """What a read skipped or replaced, for the summary line."""
    st = src.stats
    notes = []
    if st.blank:
        notes.append(f"{st.blank} blank line{'s' * (st.blank != 1)} without a record")
    if st.replaced:
        notes.append(f"{st.replaced} row{'s' * (st.replaced != 1)} with invalid UTF-8 replaced")
    return "; ".join(notes)


#: From this many texts to compare (after identical texts), `tokvec dedup` uses the partitioned search unless told
#: --exact: exact greedy deduplication grows with n^2 (on 2 cores, 320k texts took 32 s exact and 5 s partitioned
#: with 99.98 % of exact's removals; 1M texts 274 s and 13 s, 99.97 %; benches/scale.py).
AUTO_APPROX_TEXTS = 500_000


def _auto_approx(args: argparse.Namespace, sweep: list[float] | None, binary: bool, n: int) -> bool:
    """Whether a run that asked for neither --approx nor --exact uses the partitioned search: a large input, and
    nothing that needs the exact search (a sweep, an HTML report, a reference set or index, a binary model)."""
    exact_only = args.exact or sweep is not None or args.report_html or args.against or args.index or binary
    return not exact_only and n >= AUTO_APPROX_TEXTS


def cmd_dedup(args: argparse.Namespace) -> None:
    from tokvec._validate import threshold as _threshold
    from tokvec.dedup import DedupIndex, parse_thresholds, plan_texts, resolve_texts, sweep_texts, text_keys
    from tokvec.search import Approx
    from tokvec.textio import Outputs, check_distinct, output_format

    sweep = None
    if args.threshold == "auto" or args.sweep:
        sweep = parse_thresholds(args.sweep or "auto")
        for v in sweep:
            _threshold(v)
    if args.threshold == "auto":
        if args.output or args.report or args.index:
            raise UsageError("--threshold auto only prints the sweep; pick a threshold to write -o/--report/--index")
        threshold = None
    else:
        try:
            threshold = _threshold(float(args.threshold))
        except ValueError:
            raise UsageError(f"--threshold must be a number in [-1, 1] or auto, got {args.threshold!r}") from None
    if args.json and args.output is None and threshold is not None:
        raise UsageError("--json prints the summary on stdout: give -o KEPT for the kept texts")
    if args.against and args.index:
        raise UsageError("use either --against REF or --index PATH, not both")
    if sweep is not None and (args.against or args.index):
        raise UsageError("--sweep / --threshold auto count duplicates within IN; they do not apply with "
                         "--against/--index")
    if args.report_html and (threshold is None or args.against or args.index or args.approx):
        raise UsageError("--report-html shows duplicates within IN at a threshold: give --threshold (not auto), "
                         "without --against/--index/--approx")
    if args.approx and args.exact:
        raise UsageError("use either --approx or --exact, not both")
    if args.approx and sweep is not None:
        raise UsageError("--approx does not apply to --threshold auto / --sweep (they are exact)")
    for flag, v in (("--nprobe", args.nprobe), ("--nlist", args.nlist)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} must be >= 1, got {v}")
    if args.nprobe is not None and args.nlist is not None and args.nprobe > args.nlist:
        raise UsageError(f"--nprobe must be at most --nlist ({args.nlist}), got {args.nprobe}")
    search = Approx(nprobe=args.nprobe, nlist=args.nlist) if args.approx else None
    if args.no_self and not (args.against or args.index):
        raise UsageError("--no-self needs --against REF or --index PATH")
    # everything the run needs, before the work: inputs, outputs, packages, the index
    src = _input(args, args.input, keep=args.output is not None)
    ref_src = _input(args, args.against) if args.against else None
    mode = _rows_output("-o", args.output, src) if args.output else "txt"
    for path, fmt in ((args.report, "jsonl"), (args.index, "safetensors"), (args.report_html, "html")):
        if path:
            output_format(path, (fmt,))
    check_distinct({"-o": args.output, "--report": args.report, "--index": args.index, "--report-html": args.report_html},
                   {"input": args.input, "--against": args.against})
    m = _load(args)
    if m.binary and (args.approx or args.against or args.index or sweep is not None or args.report_html):
        raise UsageError("--approx, --against, --index, --sweep and --report-html need a float model")
    index = None
    if args.index:
        index = DedupIndex.load(args.index, dim=m.dim)
        index.check(args.index, fingerprint=m.fingerprint, threshold=threshold)
        if index.size == 0:
            index.keys = []
    t0 = time.perf_counter()
    with Outputs() as outs:
        for p in (args.output, args.report, args.index, args.report_html):
            outs.add(p)
        rows, texts = _read(src, args, "read")
        ref_rows = ref_texts = ref_keys = None
        if ref_src is not None:
            ref_rows, ref_texts = _read(ref_src, args, "read reference")
            ref_keys = text_keys(ref_texts)
        elif index is not None:
            ref_keys = index.keys
        plan = plan_texts(texts, reference_keys=ref_keys, self_dedup=not args.no_self, drop_empty=args.drop_empty)
        if search is None and _auto_approx(args, sweep, m.binary, len(plan.vector_items)):
            search = Approx(nprobe=args.nprobe, nlist=args.nlist)
            if not args.quiet:
                print(f"tokvec dedup: {len(plan.vector_items):,} texts to compare: the partitioned search "
                      "(approximate: a few lists per text; --exact for the exact one)", file=sys.stderr)
        E = _embed(m, [texts[i] for i in plan.vector_items.tolist()], args, "embed", scratch=True)
        R = _embed(m, ref_texts, args, "embed reference") if ref_texts is not None else None
        if index is not None:
            R = index.embeddings
        t_embed = time.perf_counter() - t0
        info: dict = {"command": "dedup", "input": args.input, "texts": len(texts), "rows": src.stats.rows,
                      "blank_lines": src.stats.blank, "replaced": src.stats.replaced}
        if sweep is not None:
            info["sweep"] = sweep_rows = sweep_texts(plan, E, sweep)
            if not args.quiet or threshold is None:
                out = sys.stderr if args.json or (threshold is not None and args.output is None) else sys.stdout
                print("threshold\tkept\tremoved\tpairs", file=out)
                for r in sweep_rows:
                    print(f"{r['threshold']:g}\t{r['kept']}\t{r['removed']}\t{r['pairs']}", file=out)
            if threshold is None:
                info["seconds"] = round(time.perf_counter() - t0, 3)
                if args.json:
                    print(json.dumps(info))
                return
        t1 = time.perf_counter()
        bits = m.dim if m.binary else None
        approx_stats: dict = {}
        # the partitioned search's stages: k-means steps (at most 10), then texts resolved
        stages = StageProgress(args, {1: ("lists", 10, " steps"), 2: ("dedup", len(plan.vector_items), " texts")})
        try:
            res = resolve_texts(plan, E, threshold, reference=R, bits=bits, approx=search, stats=approx_stats,
                                progress=stages if search is not None else None)
        finally:
            stages.close()
        t_dedup = time.perf_counter() - t1
        res.texts, res.reference_texts, res.rows, res.reference_rows = texts, ref_texts, rows, ref_rows
        kept = res.kept.tolist()
        _write_rows(outs, args.output, mode, src, [rows[i] for i in kept], [texts[i] for i in kept])
        if args.report:
            lines = []
            for r in res.explain():
                if r["score"] is not None:
                    r["score"] = round(r["score"], 6)
                lines.append(json.dumps(r, ensure_ascii=False) + "\n")
            outs.write_lines(args.report, lines)
        if index is not None:
            index.metadata.update(threshold=str(threshold), model=str(args.model or "default"), dim=str(m.dim),
                                  model_fingerprint=m.fingerprint)
            pos = np.full(len(texts), -1, np.int64)
            pos[plan.vector_items] = np.arange(len(plan.vector_items))
            vec = np.zeros((len(kept), m.dim), np.float32)
            has = pos[res.kept] >= 0
            vec[has] = E[pos[res.kept][has]]  # kept empty texts keep the zero vector
            index.add(vec, text_keys([texts[i] for i in kept]))
            with outs.writing(args.index) as tmp:
                index.write(tmp)
            info["index_size"] = index.size
        if args.report_html:
            _report_html(outs, args, m, plan, E, rows, texts, res, time.perf_counter() - t0)
    src.close()
    dt = time.perf_counter() - t0
    st = res.summary()
    info.update(kept=st["kept"], removed=st["removed"], removed_self=st["removed_self"],
                removed_reference=st["removed_reference"], removed_identical=st["removed_identical"],
                removed_empty=st["removed_empty"], empty=int(plan.empty.sum()), threshold=threshold,
                output=args.output, seconds=round(dt, 3), embed_seconds=round(t_embed, 3),
                dedup_seconds=round(t_dedup, 3))
    if search is not None:
        # approx_method stays ("ivf", the only one): scripts that read --json look for it
        info.update(approx=True, approx_method="ivf", ivf=approx_stats)
    else:
        info.update(approx=False)
    extra = ""
    if ref_src is not None or index is not None:
        extra = f", {st['removed_reference']} matching the {'index' if index is not None else 'reference'}"
    notes = "; ".join(x for x in (_input_notes(src), f"{info['empty']} empty texts kept" * bool(
        info["empty"] and not args.drop_empty)) if x)
    _summary(args, info, f"kept {st['kept']} of {len(texts)} texts (removed {st['removed']}: "
             f"{st['removed_identical']} identical{extra}) at threshold {threshold:g} in {dt:.2f} s "
             f"(embedding {t_embed:.2f} s, dedup {t_dedup:.2f} s)" + (f"; {notes}" if notes else ""))


def _report_html(outs, args: argparse.Namespace, m, plan, E: np.ndarray, rows: list[int], texts: list[str], res,
                 seconds: float) -> None:
    """`--report-html`: the kept-vs-threshold curve, the pair-score histogram and examples per band, all from one
    pass over the pairs of the embedded (distinct, non-empty) texts."""
    from tokvec.dedup import sweep_texts
    from tokvec.report import DEFAULT_EDGES, band_examples, write_html_report
    from tokvec.search import duplicate_pairs

    grid = sorted({round(0.80 + 0.005 * k, 3) for k in range(41)} | {res.threshold})
    lo = min(grid[0], DEFAULT_EDGES[0])
    i, j, s = duplicate_pairs(E, lo, as_arrays=True)
    v = plan.vector_items
    st = res.summary()
    summary = {"input": args.input, "model": str(args.model or "default"), "texts": plan.n,
               "threshold": res.threshold, "kept": st["kept"], "removed": st["removed"],
               "exact_duplicates": st["removed_identical"], "seconds": round(seconds, 2)}
    if plan.empty.any():
        summary["empty texts"] = f"{int(plan.empty.sum())} ({'removed' if plan.drop_empty else 'kept'})"
    with outs.writing(args.report_html) as tmp:
        write_html_report(tmp, summary=summary, curve=sweep_texts(plan, E, grid, pairs=(i, j, s)), scores=s,
                          bands=band_examples(len(v), i, j, s), texts=lambda k: texts[v[k]],
                          rows=[rows[x] for x in v.tolist()], threshold=res.threshold)


def cmd_rank(args: argparse.Namespace) -> None:
    import tokvec
    from tokvec.textio import Outputs, check_distinct, output_format

    if args.k < 1:
        raise UsageError(f"-k must be >= 1, got {args.k}")
    if (args.query is None) == (args.queries is None):
        raise UsageError("give either a QUERY or --queries QFILE")
    if args.nprobe is not None and args.index is None:
        raise UsageError("--nprobe applies to a search index: give --index INDEX.safetensors")
    if args.nprobe is not None and args.nprobe < 1:
        raise UsageError(f"--nprobe must be >= 1, got {args.nprobe}")
    many = args.queries is not None
    src = _input(args, args.input, keep=args.output is not None)
    mode = None
    reuse = args.index is not None and os.path.exists(args.index)
    if args.index is not None:
        output_format(args.index, ("safetensors",))
    if args.output:
        if many:
            output_format(args.output, ("jsonl",))
        else:
            mode = _rows_output("-o", args.output, src)
    # an index that exists is read, one that does not is written
    check_distinct({"-o": args.output, **({} if reuse else {"--index": args.index})},
                   {"input": args.input, "--queries": args.queries, **({"--index": args.index} if reuse else {})})
    qsrc = None
    if many:
        from tokvec.textio import Input

        qsrc = Input(args.queries, column=args.query_column, field=args.query_field)
        qsrc.check()
    m = _load(args)
    if args.index is not None and m.binary:
        raise UsageError("--index needs a float model")
    ix = _rank_index(args, m) if reuse else None
    with Outputs() as outs:
        outs.add(args.output)
        if args.index is not None and not reuse:
            outs.add(args.index)
        rows, texts = _read(src, args, "read")
        if ix is not None:
            _check_index_texts(args, ix, texts)
        else:
            E = _embed(m, texts, args, "embed")
            if args.index is not None:
                if not texts:
                    raise UsageError(f"--index {args.index}: {args.input} has no texts to index")
                ix = tokvec.Index(E)
                meta = {"model": str(args.model or "default"), "model_fingerprint": m.fingerprint,
                        "texts_digest": tokvec.index.texts_digest(texts)}
                with outs.writing(args.index) as tmp:
                    ix.save(tmp, meta)
        qtexts = [t for _, c in qsrc.chunks() for t in c] if qsrc is not None else [args.query]
        if not texts or not qtexts:
            if args.output:
                outs.write_lines(args.output, [])
            if args.json:
                print(json.dumps({"command": "rank", "queries": len(qtexts), "texts": len(texts), "results": []}))
            return
        Q = m._unit_embed(qtexts)
        if ix is None:
            scores, idx = tokvec.topk(Q, E, k=args.k)
        else:
            scores, idx = ix.search(Q, args.k, nprobe=args.nprobe)  # None for an exact index (_rank_index)
        blocks = []
        for qi, q in enumerate(qtexts):
            # a slot the probed lists could not fill holds index -1: not a result
            hits = [{"rank": r + 1, "index": rows[i], "score": round(float(s), 6), "text": texts[i]}
                    for r, (s, i) in enumerate(zip(scores[qi].tolist(), idx[qi].tolist())) if i >= 0]
            blocks.append({"query_index": qi, "query": q, "results": hits})
            if args.json:
                print(json.dumps(blocks[-1], ensure_ascii=False))
            elif not args.output:
                for h in hits:
                    print((f"{qi}\t" if many else "") + f"{h['score']:.4f}\t{h['index']}\t{h['text']}")
        if args.output and many:
            outs.write_lines(args.output, [json.dumps(b, ensure_ascii=False) + "\n" for b in blocks])
        elif args.output:
            hits = blocks[0]["results"]
            _write_rows(outs, args.output, mode, src, [h["index"] for h in hits], [h["text"] for h in hits],
                        extra=lambda k: {"rank": hits[k]["rank"], "score": hits[k]["score"]})
    src.close()


def _rank_index(args: argparse.Namespace, m):
    """The saved search index `--index` names, checked against the model and `--nprobe` before any work
    (FormatError naming the file and what differs)."""
    import tokvec
    from tokvec._core import FormatError
    from tokvec._io import other_model

    ix = tokvec.Index.load(args.index)
    meta = ix.metadata
    if "model_fingerprint" not in meta or "texts_digest" not in meta:
        raise FormatError(f"{args.index}: this index does not record the model and texts it was built from, so "
                          "tokvec cannot check it belongs to this input; name a new --index file to build one")
    if (why := other_model(meta, m.fingerprint)) is not None:
        raise FormatError(f"{args.index}: built with another model ({why}); use that model, or name a new --index "
                          "file to build one for this model")
    if args.nprobe is not None:
        if ix.exact:
            raise UsageError(f"--nprobe: {args.index} is an exact index (no lists); leave --nprobe out")
        if args.nprobe > ix.nlist:
            raise UsageError(f"--nprobe must be at most the index's {ix.nlist} lists, got {args.nprobe}")
    return ix


def _check_index_texts(args: argparse.Namespace, ix, texts: list[str]) -> None:
    """FormatError unless the index at `--index` was built from exactly `texts` (count and digest)."""
    import tokvec
    from tokvec._core import FormatError

    digest = tokvec.index.texts_digest(texts)
    if len(texts) != len(ix) or digest != ix.metadata["texts_digest"]:
        raise FormatError(f"{args.index}: built from other texts ({len(ix)}, digest {ix.metadata['texts_digest'][:12]})"
                          f" than {args.input} gives ({len(texts)}, digest {digest[:12]}); delete it to rebuild, or "
                          "name another --index file")


def _save_npy(path, arr) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr)


def cmd_cluster(args: argparse.Namespace) -> None:
    from tokvec.cluster import kmeans
    from tokvec.textio import Outputs, check_distinct, output_format

    if args.k < 1:
        raise UsageError(f"-k must be >= 1, got {args.k}")
    fmt = output_format(args.output, ("txt", "npy", "jsonl"))
    if args.centroids:
        output_format(args.centroids, ("npy",))
    check_distinct({"-o": args.output, "--centroids": args.centroids}, {"input": args.input})
    src = _input(args, args.input)
    m = _load(args)
    if m.binary:
        raise UsageError("cluster needs a float model")
    t0 = time.perf_counter()
    with Outputs() as outs:
        outs.add(args.output)
        outs.add(args.centroids)
        rows, texts = _read(src, args, "read")
        E = _embed(m, texts, args, "embed")
        n = len(E)
        if args.k > n:
            raise UsageError(f"-k {args.k} is more than the {n} texts of {args.input}")
        t1 = time.perf_counter()
        r = kmeans(E, args.k, n_init=args.n_init, max_iter=args.max_iter, seed=args.seed)
        t_cluster = time.perf_counter() - t1
        if fmt == "npy":
            with outs.writing(args.output) as tmp:
                _save_npy(tmp, r.labels)
        elif fmt == "txt":
            outs.write_lines(args.output, [f"{v}\n" for v in r.labels.tolist()])
        else:
            outs.write_lines(args.output, [json.dumps({"index": i, "label": v, "text": t}, ensure_ascii=False) + "\n"
                                           for i, v, t in zip(rows, r.labels.tolist(), texts)])
        if args.centroids:
            with outs.writing(args.centroids) as tmp:
                _save_npy(tmp, r.centroids)
    sizes = np.bincount(r.labels, minlength=args.k)
    dt = time.perf_counter() - t0
    _summary(args, {"command": "cluster", "input": args.input, "texts": n, "k": args.k, "inertia": r.inertia,
                    "iterations": r.n_iter, "sizes": sizes.tolist(), "seconds": round(dt, 3),
                    "cluster_seconds": round(t_cluster, 3)},
             f"clustered {n} texts into {args.k} clusters (sizes {sizes.min()}..{sizes.max()}, inertia "
             f"{r.inertia:.2f}) in {dt:.2f} s (k-means {t_cluster:.2f} s); labels in {args.output}")


def cmd_split(args: argparse.Namespace) -> None:
    from tokvec.textio import Outputs, check_distinct, output_format

    if args.target_size < 1:
        raise UsageError(f"--target-size must be >= 1, got {args.target_size}")
    if args.output:
        output_format(args.output, ("jsonl", "txt"))
        check_distinct({"-o": args.output}, {"input": args.input})
    src = _input(args, args.input)
    m = _load(args)
    t0 = time.perf_counter()
    if src.format == "txt":
        docs = iter([([0], [src.read_whole()])])  # a text file (or stdin) is one document
    else:
        docs = src.chunks(args.batch_size)
    stats = {"docs": 0, "chunks": 0, "max": 0, "chars": 0}

    def lines():
        # streamed: a long document at a tiny target size gives millions of chunks
        as_txt = args.output is not None and args.output.endswith(".txt")
        for rows, chunk in docs:
            for row, text in zip(rows, chunk):
                for j, c in enumerate(m.split(text, args.target_size)):
                    stats["chunks"] += 1
                    stats["max"] = max(stats["max"], len(c))
                    stats["chars"] += len(c)
                    if as_txt:
                        yield c.replace("\n", " ").strip() + "\n"
                    else:
                        yield json.dumps({"doc": row, "chunk": j, "chars": len(c), "text": c}, ensure_ascii=False) + "\n"
                stats["docs"] += 1

    with Outputs() as outs:
        outs.add(args.output)
        if args.output:
            outs.write_lines(args.output, lines())
        else:
            sys.stdout.writelines(lines())
    dt = time.perf_counter() - t0
    info = {"command": "split", "input": args.input, "documents": stats["docs"], "chunks": stats["chunks"],
            "max_chars": stats["max"], "mean_chars": round(stats["chars"] / max(stats["chunks"], 1), 1),
            "seconds": round(dt, 3)}
    if args.json and args.output:
        print(json.dumps(info))
    if not args.quiet:
        print(f"split {stats['docs']} document(s) into {stats['chunks']} chunks (max {stats['max']} chars, target "
              f"{args.target_size}) in {dt:.2f} s", file=sys.stderr)


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


def cmd_bench(args: argparse.Namespace) -> None:
    from tokvec import bench

    for opt, val in (("--n", args.n), ("--queries", args.queries), ("-k", args.k), ("--repeat", args.repeat)):
        if val < 1:
            raise UsageError(f"{opt} must be >= 1, got {val}")
    if not -1 <= args.threshold <= 1:
        raise UsageError(f"--threshold must be in [-1, 1], got {args.threshold}")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        if os.environ.get("RAYON_NUM_THREADS") != str(args.threads):
            # rayon sizes its pool once per process: rerun in a child with the variable set
            rc = bench.rerun_child(args, args.threads)
            if rc != 0:
                raise UsageError(f"the run with RAYON_NUM_THREADS={args.threads} failed (exit status {rc})")
            return
    m = _load(args)
    if args.input:
        texts = read_texts(args.input, args.column, args.field, args.format)[: args.n]
        source = args.input
    else:
        texts = bench.generate_texts(m, args.n, seed=args.seed)
        source = f"generated from the vocabulary, seed {args.seed}"
    if not texts:
        raise UsageError(f"{args.input}: no texts")
    r = bench.run_bench(m, texts, source=source, queries=args.queries, k=args.k, threshold=args.threshold,
                        repeat=args.repeat)
    print(json.dumps(r) if args.json else bench.format_report(r))


def cmd_serve(args: argparse.Namespace) -> None:
    from tokvec import serve

    serve.main(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tokvec` command."""
    ap = argparse.ArgumentParser(prog="tokvec", description="Fast static text embeddings.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser, with_input: bool = True) -> None:
        p.add_argument("--model", default=None,
                       help="model folder, .safetensors file or Hub repo id org/name (default: bundled model)")
        p.add_argument("--dim", type=int, default=None, help="keep the first DIM dimensions")
        if with_input:
            p.add_argument("--column", default=None, help="column (.tsv/.csv) or field (.jsonl) holding the text")

    def io_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--field", default=None, help="JSON field holding the text (.jsonl; default: text)")
        p.add_argument("--format", default=None, choices=["txt", "jsonl", "csv", "tsv", "parquet"],
                       help="input format instead of the file suffix (e.g. for stdin)")
        p.add_argument("--batch-size", type=int, default=32768, help="texts read and embedded per chunk")
        p.add_argument("--encoding-errors", default="strict", choices=["strict", "replace"],
                       help="invalid UTF-8 in the input: an error naming file and line (strict), or U+FFFD and a "
                       "count (replace)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary line on stderr")
        p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")

    p = sub.add_parser("embed", help="embed texts to .npy, .safetensors, .parquet or .jsonl (streamed)")
    p.add_argument("input", help="texts: .txt, .jsonl, .csv, .tsv, .parquet (optionally .gz/.zst), or - for stdin")
    p.add_argument("-o", "--output", required=True, help="OUT.npy | OUT.safetensors | OUT.parquet | OUT.jsonl")
    common(p)
    io_opts(p)
    p.set_defaults(fn=cmd_embed)

    p = sub.add_parser("dedup", help="remove near-duplicate texts (greedy; exact unless --approx)")
    p.add_argument("input")
    p.add_argument("-o", "--output", default=None,
                   help="kept rows: in the input's format (.jsonl, .csv, .tsv, .parquet, .txt) they are written whole; "
                   ".txt / .jsonl of another input hold the texts (default: the texts on stdout)")
    p.add_argument("--threshold", default="0.9", help="cosine threshold in [-1, 1], or auto for a sweep")
    p.add_argument("--sweep", default=None, metavar="LIST",
                   help="also print how many texts each threshold keeps: 0.8,0.9 or 0.8:0.98:0.02 or auto")
    p.add_argument("--report", default=None,
                   help="JSONL file: each removed row, the kept row it duplicates (0-based input rows), score, match")
    p.add_argument("--report-html", default=None, metavar="HTML",
                   help="one self-contained page to choose the threshold by: kept-vs-threshold curve, pair-score "
                   "histogram, examples per similarity band (docs/dedup-report.md)")
    p.add_argument("--drop-empty", action="store_true",
                   help="remove empty texts (blank or whitespace only); by default every one is kept and counted")
    p.add_argument("--against", default=None, metavar="REF",
                   help="also remove texts that duplicate a text of REF (REF itself is not deduplicated)")
    p.add_argument("--index", default=None, metavar="PATH",
                   help="safetensors index of kept vectors: dedup against it, then add the kept texts to it")
    p.add_argument("--no-self", action="store_true",
                   help="with --against/--index: only remove matches of REF/the index, not duplicates within IN")
    p.add_argument("--approx", action="store_true",
                   help="very large inputs: each text meets only the kept texts of a few k-means lists (see "
                   "--nprobe); scores stay exact, pairs across unprobed lists are not seen")
    p.add_argument("--exact", action="store_true",
                   help=f"always the exact search (by default inputs of {AUTO_APPROX_TEXTS:,} texts or more to compare "
                   "use --approx's partitioned search, and the run says so)")
    p.add_argument("--nprobe", type=int, default=None,
                   help="with --approx: lists probed per text (default 8, 16 once more than 3 texts were removed per "
                        "kept one; more finds more, costs more)")
    p.add_argument("--nlist", type=int, default=None,
                   help="with --approx: number of lists (default 2 sqrt(n))")
    common(p)
    io_opts(p)
    p.set_defaults(fn=cmd_dedup)

    p = sub.add_parser("rank", help="the texts most similar to a query (or to each query of a file)")
    p.add_argument("query", nargs="?", default=None, help="the query text (or use --queries)")
    p.add_argument("input")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--queries", default=None, metavar="QFILE", help="many queries, one result block each")
    p.add_argument("--query-column", default=None, help="column of QFILE holding the query")
    p.add_argument("--query-field", default=None, help="JSON field of QFILE holding the query")
    p.add_argument("-o", "--output", default=None,
                   help="the k best rows, best first: whole in the input's format, or texts as .txt / .jsonl "
                   "(with --queries: .jsonl, one line per query)")
    p.add_argument("--index", default=None, metavar="INDEX.safetensors",
                   help="a partitioned search index of INPUT: built and saved on the first run (embedding, k-means "
                   "lists), loaded on later runs instead of embedding INPUT again (it must come from the same texts "
                   "and model: checked). Searches scan each query's nearest lists (--nprobe)")
    p.add_argument("--nprobe", type=int, default=None,
                   help="with --index: lists each query scans (default: tokvec.index.default_nprobe; the index's "
                   "number of lists gives the exact result)")
    common(p)
    io_opts(p)
    p.set_defaults(fn=cmd_rank)

    p = sub.add_parser("cluster", help="k-means clusters of texts (labels to .txt, .npy or .jsonl)")
    p.add_argument("input")
    p.add_argument("-k", type=int, required=True, help="number of clusters")
    p.add_argument("-o", "--output", required=True, help="LABELS.txt (a label a line), .npy or .jsonl")
    p.add_argument("--centroids", default=None, help="also write the (k, dim) centers to this .npy")
    p.add_argument("--n-init", type=int, default=3, help="k-means++ restarts (the lowest inertia wins)")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    common(p)
    io_opts(p)
    p.set_defaults(fn=cmd_cluster)

    p = sub.add_parser("split", help="semantic chunking of documents (a .txt file is one document)")
    p.add_argument("input", help="a .txt document (or -), or .jsonl/.csv/.tsv/.parquet with one document a row")
    p.add_argument("-o", "--output", default=None, help="chunks as .jsonl (doc, chunk, chars, text) or .txt")
    p.add_argument("--target-size", type=int, default=1536, help="maximum chunk length in characters")
    common(p)
    io_opts(p)
    p.set_defaults(fn=cmd_split)

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

    p = sub.add_parser("bench", help="texts/s on this machine per stage (tokenize, pool, embed, top-k, dedup)")
    p.add_argument("input", nargs="?", default=None,
                   help="texts to time (.txt, .jsonl, .csv, .tsv, .parquet); default: generated from the vocabulary")
    p.add_argument("--n", type=int, default=20000, help="number of texts (with an input: its first N)")
    p.add_argument("--threads", type=int, default=None,
                   help="run with RAYON_NUM_THREADS=N (in a child process: rayon reads it once, at start)")
    p.add_argument("--queries", type=int, default=1000, help="top-k queries (over all N vectors)")
    p.add_argument("-k", type=int, default=10, help="neighbours per top-k query")
    p.add_argument("--threshold", type=float, default=0.9, help="dedup threshold")
    p.add_argument("--repeat", type=int, default=3, help="runs per stage at most (the fastest is reported)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated texts")
    p.add_argument("--field", default=None, help="JSON field holding the text (.jsonl; default: text)")
    p.add_argument("--format", default=None, choices=["txt", "jsonl", "csv", "tsv", "parquet"],
                   help="input format instead of the file suffix")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    common(p)
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("serve", help="an OpenAI-compatible /v1/embeddings service (docs/serve.md)")
    p.add_argument("--model", action="append", default=None, metavar="NAME=PATH",
                   help="a model to serve, as NAME=PATH or PATH (folder, .safetensors, Hub id; its name is PATH); "
                   "repeat for several (default: the bundled model, named default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="port (0: a free one, printed at start)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/ (default: env TOKVEC_API_KEY, else none)")
    # limits: None keeps the service's default (tokvec.serve.Limits, listed in docs/serve.md)
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest request body (413 above; 8 MiB)")
    p.add_argument("--max-inputs", type=int, default=None, help="most texts in one request (2048)")
    p.add_argument("--max-text-chars", type=int, default=None, help="longest text, in characters (100,000)")
    p.add_argument("--read-timeout", type=float, default=None, help="seconds for a request body to arrive (408; 30)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads answering requests (default: the CPUs this process may use)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds to let requests in flight finish")
    p.add_argument("--access-log", action="store_true", help="log every request on stderr")
    p.set_defaults(fn=cmd_serve)

    from tokvec.train.cli import add_parsers as _train_parsers

    _train_parsers(sub)  # distill, tune, eval

    args = ap.parse_args(argv)
    from tokvec._core import FormatError, TokenizerError

    if getattr(args, "batch_size", 1) < 1:
        print(f"tokvec {args.cmd}: error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    with _signals_as_exceptions():
        try:
            args.fn(args)
        except BrokenPipeError:
            # the reader of stdout went away (e.g. `| head`): not an error; silence the flush at exit
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            return 0
        except (UsageError, FormatError, TokenizerError, FileNotFoundError, FileExistsError, ValueError, TypeError) as e:
            print(f"tokvec {args.cmd}: error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            # unreadable/unwritable files: permission denied, a folder given as a file, disk full
            where = f"{e.filename}: " if e.filename else ""
            print(f"tokvec {args.cmd}: error: {where}{e.strerror or e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"tokvec {args.cmd}: interrupted; no output written", file=sys.stderr)
            return 130
        except Terminated as e:
            print(f"tokvec {args.cmd}: stopped by {signal.Signals(e.signum).name}; no output written", file=sys.stderr)
            return 128 + e.signum
    return 0


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the program is (as KeyboardInterrupt is for SIGINT), so the
    outputs' temporary files are removed on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_as_exceptions():
    """SIGTERM and SIGHUP raise `Terminated` for the duration (main thread only), then the previous
    handlers come back."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated(signum)

    sigs = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    # a signal the caller ignores stays ignored (`nohup tokvec ...` must survive the terminal's SIGHUP)
    old = {s: signal.signal(s, raise_terminated) for s in sigs if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
