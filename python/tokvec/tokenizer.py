"""Tokenizer loading and configuration.

Python decides which tokenizer a model uses, how it is called (`add_special_tokens`) and which ids
are never pooled; the tokenizer JSON is parsed by the Rust core (the HF `tokenizers` crate,
truncation and padding off), which runs it inside its parallel embedding pass. When the JSON is a
family the core implements exactly (WordPiece, SentencePiece-style BPE, byte-level BPE), an ids-only
fast encoder runs instead, with the same ids (`LoadedTokenizer.kind`; `fast=False` forces the
`tokenizers` crate). The Python `tokenizers.Tokenizer` object is only built when asked for
(`LoadedTokenizer.tokenizer`).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from typing import TYPE_CHECKING

from tokvec import _core
from tokvec._core import FormatError, TokenizerError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["LoadedTokenizer", "load_tokenizer", "check_fits"]


class LoadedTokenizer:
    """A tokenizer JSON built by the Rust core, and what pooling needs to know about it.

    Attributes:
        core: the `_core.Tokenizer`.
        path: the file it came from.
        special_ids: ids of special tokens (BOS/EOS/CLS/SEP/pad/unk...), never pooled.
        unk_id: the id of the unknown token, if the model has one.
        id_limit: one past the largest id the tokenizer can produce.
        kind: the encoder the core runs: "wordpiece-fast", "spm-bpe-fast", "bytelevel-bpe-fast" or "hf".
    """

    def __init__(self, core: _core.Tokenizer, path: Path, add_special_tokens: bool) -> None:
        self.core = core
        self.path = path
        self.add_special_tokens = add_special_tokens
        self.special_ids: tuple[int, ...] = tuple(core.special_ids)
        self.unk_id: int | None = core.unk_id
        self.id_limit: int = int(core.id_limit)
        self.kind: str = str(core.kind)

    @property
    def json(self) -> str:
        """The tokenizer JSON."""
        return str(self.core.json)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The HF `tokenizers.Tokenizer` for the same JSON (truncation and padding off)."""
        from tokenizers import Tokenizer  # imported on first use: `import tokvec` stays light

        tok = Tokenizer.from_str(self.json)
        tok.no_truncation()
        tok.no_padding()
        return tok


def load_tokenizer(path: str | Path, *, add_special_tokens: bool = False, fast: bool = True) -> LoadedTokenizer:
    """Loads a `tokenizer.json` (HF tokenizers format).

    Args:
        path: the tokenizer JSON file.
        add_special_tokens: whether encoding adds the model's special tokens (they are never pooled).
        fast: use the core's fast encoder when the JSON qualifies (same ids); False always runs the
            `tokenizers` crate.

    Returns:
        The loaded tokenizer.

    Raises:
        FileNotFoundError: the file does not exist.
        TokenizerError: the file is not a tokenizer JSON that `tokenizers` can load.
    """
    if not isinstance(fast, bool):
        raise TypeError(f"fast must be a bool, got {type(fast).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: not a UTF-8 text file, so not a tokenizer JSON") from None
    try:
        core = _core.Tokenizer(raw, add_special_tokens, fast)
    except TokenizerError as e:
        raise TokenizerError(f"{path}: {e}") from None
    return LoadedTokenizer(core, path, add_special_tokens)


def check_fits(tok: LoadedTokenizer, id_limit: int, table_path: Path) -> None:
    """Raises FormatError when the tokenizer can produce ids the table has no row for."""
    if tok.id_limit > id_limit:
        raise FormatError(
            f"{table_path}: the tokenizer {tok.path} has ids up to {tok.id_limit - 1} but the table has "
            f"{id_limit} rows: this tokenizer does not belong to this table (pass the matching tokenizer.json)"
        )
