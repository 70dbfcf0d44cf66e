"""Writes tests/fixtures/wordllama-spm/: WordLlama's SentencePiece BPE tokenizer cut down to the texts it is
tested on, and the ids WordLlama's full tokenizer gives those texts. The Rust tests of the SentencePiece fast
path (`rust/fasttok/spm.rs`, `rust/fasttok/mod.rs`) read them, so they run without Python or wordllama.

Why the cut-down tokenizer gives the full one's ids on these texts: `tokenizers` runs this family on the
normalized text ("▁" + text with " " → "▁") as one BPE word. Every symbol that arises while merging it is a
substring of that normalized text (or a byte-fallback or unknown token), so the vocabulary keeps every token
that is such a substring, plus the added and `<0xXX>` byte tokens, with their original ids; the merges keep
every merge whose two parts and result are kept, in their original order. The merges that can apply to these
texts are then exactly the full tokenizer's, in the same relative order, so each step merges the same pair.
The script checks it: the cut-down tokenizer must give the golden ids too.

Run from the repo root: python scripts/make_tokenizer_fixtures.py (needs wordllama and tokenizers).
"""

from __future__ import annotations

import json
from pathlib import Path

import wordllama
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikipedia-sentences" / "sentences.tsv"
OUT = ROOT / "tests" / "fixtures" / "wordllama-spm"
SOURCE = Path(wordllama.__file__).parent / "tokenizers" / "l2_supercat_tokenizer_config.json"

#: Texts chosen for the fast path's edge cases: spaces at either end and in runs, literal "▁", characters
#: outside the vocabulary (byte fallback), control characters, mixed scripts, an added token's content.
EDGE_CASES = [
    "The quick brown fox, jumped over the lazy dog.",
    "  leading and trailing  ",
    "Zürich – “quoted” — naïve café 日本語のテキスト 🙂👍🏽",
    "tabs\tand\nnewlines\r\n",
    "\x00\x01\x7f",
    "x\u2581\u2581y \u2581 z",
    "a\u200db \u202ertl\u202c",
    "",
    " ",
    "a</s>b <s> c",
    "ünïcödé ŧëxŧ ѦѧѨ ꙮ",
]


def sentences(n: int) -> list[str]:
    out = []
    with open(DATA, encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            out.append(line.rstrip("\n").split("\t", 1)[1])
            if len(out) == n:
                break
    return out


def normalized(text: str) -> str:
    return "" if not text else "\u2581" + text.replace(" ", "\u2581")


def cut_down(full: dict, texts: list[str]) -> dict:
    vocab: dict[str, int] = full["model"]["vocab"]
    keep: dict[str, int] = {}
    for t in texts:
        s = normalized(t)
        for i in range(len(s)):
            for j in range(i + 1, len(s) + 1):
                if s[i:j] in vocab:
                    keep[s[i:j]] = vocab[s[i:j]]
    for tok, i in vocab.items():
        if tok.startswith("<0x") or tok in {a["content"] for a in full["added_tokens"]}:
            keep[tok] = i
    merges = []
    for m in full["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a in keep and b in keep and a + b in keep:
            merges.append(m)
    out = dict(full)
    out["model"] = dict(full["model"], vocab=dict(sorted(keep.items(), key=lambda kv: kv[1])), merges=merges)
    return out


def ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    tok.no_truncation()
    tok.no_padding()
    return [tok.encode(t, add_special_tokens=False).ids for t in texts]


def main() -> None:
    full_text = SOURCE.read_text(encoding="utf-8")
    texts = EDGE_CASES + sentences(40)
    golden = ids(Tokenizer.from_str(full_text), texts)
    small = cut_down(json.loads(full_text), texts)
    small_text = json.dumps(small, ensure_ascii=False, separators=(",", ":"))
    assert ids(Tokenizer.from_str(small_text), texts) == golden, "the cut-down tokenizer differs from the full one"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tokenizer.json").write_text(small_text + "\n", encoding="utf-8")
    doc = {
        "source": f"wordllama {wordllama.__version__ if hasattr(wordllama, '__version__') else ''}: "
        f"{SOURCE.name}, ids by tokenizers {__import__('tokenizers').__version__} (add_special_tokens=False)",
        "texts": texts,
        "ids": golden,
    }
    (OUT / "golden.json").write_text(json.dumps(doc, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(small['model']['vocab'])} tokens, {len(small['model']['merges'])} merges, {len(texts)} texts")


if __name__ == "__main__":
    main()
