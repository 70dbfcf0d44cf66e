"""Model configs: tokvec's own `config.json` and the settings read from other formats' configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokvec._core import FormatError

__all__ = ["FORMAT_VERSION", "read_json", "get_typed"]

#: Version of tokvec's own model folder format (`config.json` key `format_version`).
FORMAT_VERSION = 1


def read_json(path: Path, expect: type = dict) -> Any:
    """Reads a JSON object (or, with `expect=list`, an array) from `path`.

    Raises:
        FormatError: the file is not UTF-8 JSON or not of the expected kind.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, expected a JSON file") from None
    if not isinstance(data, expect):
        want = "a JSON object" if expect is dict else f"a JSON {expect.__name__}"
        raise FormatError(f"{path}: expected {want}, got {type(data).__name__}")
    return data


def get_typed(cfg: dict[str, Any], key: str, types: type | tuple[type, ...], default: Any, path: Path) -> Any:
    """`cfg[key]` checked against `types` (bool is not accepted as int), or `default` when absent/null."""
    value = cfg.get(key)
    if value is None:
        return default
    bad_bool = isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))
    if bad_bool or not isinstance(value, types):
        want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise FormatError(f"{path}: key {key!r} must be {want}, got {type(value).__name__} {value!r}")
    return value
