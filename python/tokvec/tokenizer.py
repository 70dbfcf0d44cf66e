"""Tokenizer loading and configuration.

Python owns the tokenizer's configuration (no truncation, no padding, which ids are never pooled);
the Rust core is then handed the configured tokenizer's JSON and runs it inside its parallel
embedding pass, so ids are produced by the same code as `tokenizers.Tokenizer.encode`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from tokvec._core import FormatError, TokenizerError

__all__ = ["LoadedTokenizer", "load_tokenizer"]


@dataclass(frozen=True)
class LoadedTokenizer:
    """A configured tokenizer and what pooling needs to know about it.

    Attributes:
        tokenizer: the HF tokenizer (truncation and padding disabled).
        json: its JSON, as handed to the Rust core.
        path: the file it came from.
        special_ids: ids of special tokens (BOS/EOS/CLS/SEP/pad/unk...), never pooled.
        unk_id: the id of the unknown token, if the model has one.
        id_limit: one past the largest id the tokenizer can produce.
    """

    tokenizer: Tokenizer
    json: str
    path: Path
    special_ids: tuple[int, ...]
    unk_id: int | None
    id_limit: int


def load_tokenizer(path: str | Path) -> LoadedTokenizer:
    """Loads a `tokenizer.json` (HF tokenizers format) and configures it for pooling.

    Args:
        path: the tokenizer JSON file.

    Returns:
        The configured tokenizer.

    Raises:
        FileNotFoundError: the file does not exist.
        TokenizerError: the file is not a tokenizer JSON that `tokenizers` can load.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    try:
        raw = path.read_text(encoding="utf-8")
        tok = Tokenizer.from_str(raw)
    except (UnicodeDecodeError, Exception) as e:  # tokenizers raises a bare Exception on bad JSON
        raise TokenizerError(f"{path}: not a valid tokenizer JSON ({str(e).splitlines()[0][:200]})") from None
    tok.no_truncation()
    tok.no_padding()
    special = sorted(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
    unk_id = _unk_id(tok, raw)
    vocab = tok.get_vocab(with_added_tokens=True)
    id_limit = (max(vocab.values()) + 1) if vocab else 0
    return LoadedTokenizer(tok, tok.to_str(), path, tuple(special), unk_id, id_limit)


def _unk_id(tok: Tokenizer, raw: str) -> int | None:
    try:
        model = json.loads(raw).get("model", {})
    except json.JSONDecodeError:  # pragma: no cover - from_str accepted it, so it is JSON
        return None
    unk = model.get("unk_token") if isinstance(model, dict) else None
    if isinstance(unk, str):
        return tok.token_to_id(unk)
    if isinstance(unk, int):  # Unigram stores unk_id
        return unk
    unk_id = model.get("unk_id") if isinstance(model, dict) else None
    return unk_id if isinstance(unk_id, int) else None


def check_fits(tok: LoadedTokenizer, id_limit: int, table_path: Path) -> None:
    """Raises FormatError when the tokenizer can produce ids the table has no row for."""
    if tok.id_limit > id_limit:
        raise FormatError(
            f"{table_path}: the tokenizer {tok.path} has ids up to {tok.id_limit - 1} but the table has "
            f"{id_limit} rows: this tokenizer does not belong to this table (pass the matching tokenizer.json)"
        )
