"""Writes tests/fixtures/tiny/: small real models (a WordPiece tokenizer trained with `tokenizers`
on Wikipedia sentences, random F16 / F32 / BF16 tables) and the embeddings a plain numpy reference
computes for real sentences. `tests/parity.rs` checks the Rust core against them.

Run from the repo root: python scripts/make_fixtures.py (needs numpy and tokenizers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikipedia-sentences" / "sentences.tsv"
OUT = ROOT / "tests" / "fixtures" / "tiny"


def sentences(n: int, skip: int = 0) -> list[str]:
    out = []
    with open(DATA, encoding="utf-8") as fh:
        next(fh)
        for i, line in enumerate(fh):
            if i < skip:
                continue
            out.append(line.rstrip("\n").split("\t", 1)[1])
            if len(out) == n:
                break
    return out


def write_st(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    header, off = {}, 0
    for name in sorted(tensors):
        dt, shape, data = tensors[name]
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(tensors[n][2] for n in sorted(tensors)))


def bf16_bytes(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    u = x.astype(np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    back = (rounded.astype(np.uint32) << 16).view(np.float32)
    return rounded.astype("<u2").tobytes(), back


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator(sentences(3000), trainer)
    tok.save(str(OUT / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}

    texts = sentences(64, skip=5000) + ["", "[CLS] [SEP]", "ünïcödé — 東京 🙂"]
    (OUT / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    dim = 48
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    bf_bytes, bf_vals = bf16_bytes(table)
    variants = {
        "f32": ("F32", table.astype("<f4").tobytes(), table),
        "f16": ("F16", table.astype("<f2").tobytes(), table.astype(np.float16).astype(np.float32)),
        "bf16": ("BF16", bf_bytes, bf_vals),
    }
    expected = {}
    for name, (dt, raw, vals) in variants.items():
        write_st(OUT / f"model_{name}.safetensors", {"embeddings": (dt, [vocab, dim], raw)})
        out = np.zeros((len(texts), dim), np.float32)
        for i, t in enumerate(texts):
            ids = [x for x in tok.encode(t, add_special_tokens=False).ids if x not in special]
            if ids:
                v = vals[ids].astype(np.float64).mean(axis=0)
                out[i] = v / np.linalg.norm(v)
        (OUT / f"expected_{name}.f32").write_bytes(out.astype("<f4").tobytes())
        expected[name] = list(out.shape)
    meta = {"dim": dim, "vocab": vocab, "special_ids": sorted(special), "texts": len(texts), "shapes": expected}
    (OUT / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {OUT}: vocab {vocab}, dim {dim}, {len(texts)} texts")


if __name__ == "__main__":
    main()
