"""Embed a file of texts with Ray Data: `map_batches` with a callable class, one model per worker.

    pip install "ray[data]" tokvec
    python examples/ray_embed.py ../shared/data/wikipedia-sentences/sentences.tsv --column sentence -o emb.parquet

The `tokvec.Model` is passed to the class constructor (`fn_constructor_args`): it pickles by path (a few hundred
bytes), so each Ray worker re-opens the memory-mapped model files once, when its actor starts, and every batch
after that is one call into the Rust core. The files must be readable at the same path on every node (a shared
filesystem, or the same wheel installed everywhere for the bundled model).

Inputs: `.txt` (one text a line) or `.tsv`/`.csv` with `--column`. Output: a Parquet folder with columns `text` and
`embedding` (a fixed-size tensor column of float32).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray
import tokvec


class Embedder:
    """Loaded once per Ray worker (actor); called on each batch."""

    def __init__(self, model: tokvec.Model) -> None:
        self.model = model  # unpickled here: the worker memory-maps the model's files itself

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = batch["text"].tolist()
        return {"text": batch["text"], "embedding": self.model.embed(texts)}


def read(path: str, column: str | None, limit: int | None) -> ray.data.Dataset:
    if path.endswith(".txt"):
        ds = ray.data.read_text(path)  # one row per line, column "text"
    else:
        import pyarrow.csv as pacsv

        # tab- or comma-separated, no quoting (as tokvec reads .tsv)
        parse = pacsv.ParseOptions(delimiter="\t" if path.endswith(".tsv") else ",",
                                   quote_char=False if path.endswith(".tsv") else '"')
        ds = ray.data.read_csv(path, parse_options=parse)
        if column is None:
            raise SystemExit("pass --column NAME for a .tsv/.csv input")
        ds = ds.select_columns([column]).rename_columns({column: "text"})
    return ds.limit(limit) if limit else ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("--column", default=None)
    ap.add_argument("-o", "--output", required=True, help="output Parquet folder")
    ap.add_argument("--model", default=None, help="model path (default: the bundled model)")
    ap.add_argument("--workers", type=int, default=2, help="Ray actors, each with its own model")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--limit", type=int, default=None, help="only the first N texts")
    a = ap.parse_args()

    # a local Ray (use ray.init(address="auto") on a cluster); one CPU slot more than the actors hold, for the
    # read and write tasks: with exactly `workers` slots the actors take them all and the read never runs
    ray.init(num_cpus=a.workers + 1)
    model = tokvec.load(a.model)
    t = time.perf_counter()
    ds = read(a.input, a.column, a.limit).map_batches(
        Embedder,
        fn_constructor_args=(model,),
        compute=ray.data.ActorPoolStrategy(size=a.workers),
        batch_size=a.batch_size,
        batch_format="numpy",
        num_cpus=1,
    )
    ds.write_parquet(a.output)
    dt = time.perf_counter() - t
    n = ray.data.read_parquet(a.output).count()
    print(f"embedded {n} texts ({model.dim}-d) with {a.workers} Ray workers in {dt:.1f} s -> {a.output}")


if __name__ == "__main__":
    main()
