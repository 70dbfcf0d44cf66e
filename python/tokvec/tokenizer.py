"""Tokenizer loading and configuration.

Python decides which tokenizer a model uses, how it is called (`add_special_tokens`) and which ids
are never pooled; the tokenizer file is read and parsed by the Rust core, which runs it inside its
parallel embedding pass. When the JSON is a family the core implements exactly (WordPiece,
SentencePiece-style BPE, byte-level BPE), an ids-only fast encoder runs, with the ids of the HF
`tokenizers` crate (`LoadedTokenizer.kind`); otherwise, or with `fast=False`, the `tokenizers` crate
itself runs (truncation and padding off). Load time: with a fast encoder the core parses the JSON once,
typed, and keeps one copy of its text (so the file is never read again); the `tokenizers` crate's tokenizer
is built from that text only when a text needs it. The Python `tokenizers.Tokenizer` object is only built
when asked for (`LoadedTokenizer.tokenizer`).
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from tokvec import _core
from tokvec._core import FormatError, TokenizerError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["LoadedTokenizer", "check_fits", "core_reason", "load_tokenizer", "read_tokenizer"]


# the core's message is "tokenizer: cannot build the tokenizer from its JSON: <the tokenizers crate's serde error>"
_CORE_PREFIX = re.compile(r"^(tokenizer: )?(cannot build the tokenizer from its JSON: )?")
# serde names the Rust enum a section failed to match, e.g. "untagged enum ModelUntagged" for "model"
_UNTAGGED = re.compile(r"data did not match any variant of untagged enum (\w+)")
# where in the JSON the error is
_POSITION = re.compile(r" at line \d+ column \d+$")
_SECTIONS = {
    "ModelUntagged": '"model"',
    "NormalizerUntagged": '"normalizer"',
    "PreTokenizerUntagged": '"pre_tokenizer"',
    "PostProcessorUntagged": '"post_processor"',
    "DecoderUntagged": '"decoder"',
    "MergeType": '"merges"',
}


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
        """The tokenizer JSON the model was loaded with (kept in memory: the file may have changed since)."""
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
    core = read_tokenizer(path, add_special_tokens=add_special_tokens, fast=fast)
    return LoadedTokenizer(core, path, add_special_tokens)


def read_tokenizer(path: Path, *, add_special_tokens: bool = False, fast: bool = True) -> _core.Tokenizer:
    """Reads a tokenizer JSON file and builds it in the core (the one reader `load` and `extract` share).

    Args:
        path: the file.
        add_special_tokens: see `load_tokenizer`.
        fast: see `load_tokenizer`.

    Returns:
        the `_core.Tokenizer` (its `json` is the file's text, kept).

    Raises:
        OSError: the file cannot be read (the error names it); IsADirectoryError for a folder.
        TokenizerError: the file is not a tokenizer JSON: the message names the file and says what is wrong in
            one line (not valid JSON and where, no "model" section, a section in an unknown form).
    """
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder, not a tokenizer JSON file")
    try:
        return _core.Tokenizer.from_file(path, add_special_tokens, fast)
    except TokenizerError as e:
        core_msg = str(e)
    # only after a failure: the file's text, to say what is wrong with it
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: not a UTF-8 text file, so not a tokenizer JSON") from None
    raise TokenizerError(f"{path}: {_why_not(raw, core_msg)}") from None


def core_reason(msg: str, *, position: bool = True) -> str:
    """The reason in a core TokenizerError's message, without the core's prefixes ("tokenizer: cannot build the
    tokenizer from its JSON: "), with the sections the tokenizers crate names by its Rust types ("untagged enum
    ModelUntagged") named by their JSON keys, and, without `position`, without the line and column (of a JSON
    the user never saw, e.g. one rebuilt from GGUF metadata)."""
    msg = _CORE_PREFIX.sub("", msg)
    m = _UNTAGGED.search(msg)
    if m:
        section = _SECTIONS.get(m.group(1), "a section")
        msg = f"{msg[: m.start()]}the {section} section is in no form the tokenizers library reads{msg[m.end() :]}"
    return msg if position else _POSITION.sub("", msg)


def _why_not(raw: str, core_msg: str) -> str:
    """Why the core could not build a tokenizer from `raw`, in the words of a user of the file: whether it is
    JSON at all (with the parser's line and column), a top level or "model" of the wrong kind by name, and the
    sections the tokenizers crate names by its Rust types ("untagged enum ModelUntagged") by their JSON keys.
    Runs only after a failure, so a valid file is parsed once."""
    if not raw.strip():
        return "the file is empty, so not a tokenizer JSON"
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        # serde's own words are clear for syntax ("EOF while parsing a string at line 1 column 200")
        return f"not valid JSON ({core_reason(core_msg)})"
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        return f"not a tokenizer JSON (the top level is {kind}, not an object)"
    if not isinstance(data.get("model"), dict):
        shown = json.dumps(data.get("model"))
        has = "no \"model\"" if "model" not in data else f'"model": {shown if len(shown) <= 40 else shown[:37] + "..."}'
        return f'not a tokenizer JSON (it has {has}; a tokenizer has a "model" object, e.g. {{"type": "BPE", ...}})'
    return f"not a tokenizer JSON the tokenizers library can build ({core_reason(core_msg)})"


def check_fits(tok: LoadedTokenizer, id_limit: int, table_path: Path) -> None:
    """Raises FormatError when the tokenizer can produce ids the table has no row for."""
    if tok.id_limit > id_limit:
        raise FormatError(
            f"{table_path}: the tokenizer {tok.path} has ids up to {tok.id_limit - 1} but the table has "
            f"{id_limit} rows: this tokenizer does not belong to this table (pass the matching tokenizer.json)"
        )
