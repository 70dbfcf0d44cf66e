"""A `tokenizer.json` (HF `tokenizers` format) rebuilt from the tokenizer metadata of a GGUF file.

llama.cpp stores the vocabulary in the GGUF header (`tokenizer.ggml.*`). Two tokenizer models are
rebuilt here, so that a GGUF file alone is enough to make a tokvec model:

- `gpt2`: byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM, ...). Tokens and merges are taken as they
  are; the pre-tokenizer comes from `tokenizer.ggml.pre`, mapped to the split regex llama.cpp uses
  for it (the one in the model's original `tokenizer.json`). Control and user-defined tokens become
  added tokens. Unknown `pre` values are refused rather than guessed.
- `llama`: SentencePiece BPE (Llama-2, Mistral v0.1, TinyLlama, ...). Merges are derived from the
  token scores the way `transformers` converts a SentencePiece model (every split of a piece into
  two vocabulary pieces, ordered by the piece's score), `<0xNN>` byte tokens enable byte fallback,
  and `tokenizer.ggml.add_space_prefix` (default true) prepends "▁".

Tests check the ids against the reference tokenizer on real text: the original `tokenizer.json`
for GGUF files written from it, and llama.cpp's own algorithm plus published ids for SmolLM2.
"""

from __future__ import annotations

import json
from typing import Any

from tokvec._core import FormatError

__all__ = ["tokenizer_json_from_gguf", "PRE_TOKENIZERS", "TOKEN_TYPES"]

#: llama.cpp's token types (`tokenizer.ggml.token_type`).
TOKEN_TYPES = {"normal": 1, "unknown": 2, "control": 3, "user_defined": 4, "unused": 5, "byte": 6}

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split(pattern: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def _seq(*pre: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": list(pre)}


_DIGITS = {"type": "Digits", "individual_digits": True}

#: `tokenizer.ggml.pre` → (HF pre-tokenizer, ignore_merges), following llama.cpp's llama-vocab.cpp.
PRE_TOKENIZERS: dict[str, tuple[dict[str, Any], bool]] = {}
for _names, _pre, _ignore in (
    (("default", "gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de",
      "jina-v1-en", "jina-v2-code", "roberta-bpe", "gigachat", "exaone4", "mellum", "modern-bert", "trillion",
      "granite-docling", "a.x-4.0"), _seq(_byte_level(True)), False),
    (("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
     _seq(_DIGITS, _byte_level(True)), False),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
     _seq(_split(_LLAMA3), _byte_level(False)), True),
    (("dbrx", "smaug-bpe", "glm4", "chatglm-bpe"), _seq(_split(_LLAMA3), _byte_level(False)), False),
    (("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan", "kormo"),
     _seq(_split(_QWEN2), _byte_level(False)), False),
    (("gpt-4o", "llama4", "kanana2"), _seq(_split(_GPT4O), _byte_level(False)), False),
):
    for _n in _names:
        PRE_TOKENIZERS[_n] = (_pre, _ignore)


def _get(md: dict[str, Any], key: str, types: type | tuple[type, ...], default: Any = None) -> Any:
    v = md.get(key, default)
    if v is not None and not isinstance(v, types):
        raise FormatError(f"GGUF metadata {key!r} has type {type(v).__name__}")
    return v


def _tokens(md: dict[str, Any]) -> tuple[list[str], list[int]]:
    toks = _get(md, "tokenizer.ggml.tokens", list)
    if not toks:
        raise FormatError("the GGUF file has no tokenizer (no tokenizer.ggml.tokens); pass tokenizer='tokenizer.json'")
    bad = next((i for i, t in enumerate(toks) if not isinstance(t, str)), None)
    if bad is not None:
        raise FormatError(f"GGUF token {bad} is not a valid UTF-8 string; pass tokenizer='tokenizer.json'")
    types = _get(md, "tokenizer.ggml.token_type", list) or [1] * len(toks)
    if len(types) != len(toks) or not all(isinstance(t, int) for t in types):
        raise FormatError("GGUF tokenizer.ggml.token_type does not match tokenizer.ggml.tokens")
    return toks, types


def _added(toks: list[str], types: list[int], extra_special: set[int]) -> list[dict[str, Any]]:
    out = []
    for i, (t, ty) in enumerate(zip(toks, types)):
        if ty in (TOKEN_TYPES["control"], TOKEN_TYPES["user_defined"]) or i in extra_special:
            out.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                        "normalized": False, "special": ty != TOKEN_TYPES["user_defined"]})
    return out


def _special_ids(md: dict[str, Any], n: int) -> set[int]:
    ids = set()
    for k in ("bos", "eos", "unknown", "padding", "cls", "sep", "mask"):
        v = md.get(f"tokenizer.ggml.{k}_token_id")
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n:
            ids.add(v)
    return ids


def _vocab(toks: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, t in enumerate(toks):
        vocab.setdefault(t, i)  # a duplicate piece keeps its first id, as llama.cpp's text_to_token does
    return vocab


def _gpt2(md: dict[str, Any]) -> dict[str, Any]:
    toks, types = _tokens(md)
    merges = _get(md, "tokenizer.ggml.merges", list)
    if merges is None:
        raise FormatError("GGUF gpt2 tokenizer without tokenizer.ggml.merges")
    pairs = []
    for m in merges:
        parts = m.split(" ") if isinstance(m, str) else []
        if len(parts) != 2:
            raise FormatError(f"GGUF merge {m!r} is not two tokens separated by one space")
        pairs.append(parts)
    pre_name = _get(md, "tokenizer.ggml.pre", str, "default")
    if pre_name not in PRE_TOKENIZERS:
        raise FormatError(
            f"GGUF pre-tokenizer {pre_name!r} is not supported (supported: {', '.join(sorted(PRE_TOKENIZERS))}); "
            "pass the model's tokenizer.json with tokenizer='...'"
        )
    pre, ignore_merges = PRE_TOKENIZERS[pre_name]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added(toks, types, set()),
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": _vocab(toks), "merges": pairs},
    }


def _spm_merges(toks: list[str], scores: list[float], vocab: dict[str, int]) -> list[list[str]]:
    """Every split of a piece into two vocabulary pieces, ordered by the piece's score (descending),
    then by piece id and the parts' ids: the order `transformers`' SentencePiece converter uses."""
    found = []
    for pid, piece in enumerate(toks):
        if vocab.get(piece) != pid or len(piece) < 2:
            continue
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                found.append((-scores[pid], pid, vocab[left], vocab[right], left, right))
    found.sort(key=lambda x: x[:4])
    return [[f[4], f[5]] for f in found]


def _spm(md: dict[str, Any]) -> dict[str, Any]:
    toks, types = _tokens(md)
    scores = _get(md, "tokenizer.ggml.scores", list)
    if scores is None or len(scores) != len(toks) or not all(isinstance(s, (int, float)) for s in scores):
        raise FormatError("GGUF llama tokenizer needs tokenizer.ggml.scores, one float per token")
    vocab = _vocab(toks)
    unk_id = md.get("tokenizer.ggml.unknown_token_id")
    if not isinstance(unk_id, int) or not 0 <= unk_id < len(toks):
        unk_id = next((i for i, ty in enumerate(types) if ty == TOKEN_TYPES["unknown"]), None)
    byte_fallback = any(ty == TOKEN_TYPES["byte"] for ty in types)
    add_prefix = _get(md, "tokenizer.ggml.add_space_prefix", bool, True)
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    normalizer = (
        {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, replace]} if add_prefix else replace
    )
    extra = {unk_id} if unk_id is not None else set()
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added(toks, types, extra),
        "normalizer": normalizer,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": toks[unk_id] if unk_id is not None else None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": byte_fallback, "ignore_merges": False, "vocab": vocab,
                  "merges": _spm_merges(toks, [float(s) for s in scores], vocab)},
    }


def tokenizer_json_from_gguf(metadata: dict[str, Any], *, source: str = "GGUF file") -> str:
    """Builds a tokenizer JSON from GGUF metadata (as returned by `_core.GgufFile.metadata()`).

    Args:
        metadata: the GGUF key/value metadata.
        source: names the file in error messages.

    Returns:
        the tokenizer JSON (HF `tokenizers` format), encoding with `add_special_tokens=False`
        exactly as llama.cpp tokenizes with `add_special=False, parse_special=True`.

    Raises:
        FormatError: no tokenizer in the metadata, a tokenizer model other than `gpt2` / `llama`,
            or an unsupported pre-tokenizer.
    """
    model = metadata.get("tokenizer.ggml.model")
    try:
        if model == "gpt2":
            tok = _gpt2(metadata)
        elif model == "llama":
            tok = _spm(metadata)
        elif model is None:
            raise FormatError("no tokenizer in the GGUF metadata (tokenizer.ggml.model is missing)")
        else:
            raise FormatError(
                f"tokenizer model {model!r} is not rebuilt by tokvec (only 'gpt2' and 'llama'); "
                "pass the model's tokenizer.json with tokenizer='...'"
            )
    except FormatError as e:
        raise FormatError(f"{source}: {e}") from None
    return json.dumps(tok, ensure_ascii=False)
