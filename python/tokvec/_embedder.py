"""What the modules below `Model` need from a model, as protocols: they work on anything that has these
members, so they never import `model.py` (which imports them). `Model` implements all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from tokvec.formats import Resolved


class Embedder(Protocol):
    """Embeds texts to float vectors (semantic splitting)."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Any) -> np.ndarray: ...


class UnitEmbedder(Protocol):
    """Embeds texts to L2-normalized float32 vectors (the distributed deduplication's workers)."""

    @property
    def dim(self) -> int: ...

    def _unit_embed(self, texts: Sequence[str]) -> np.ndarray: ...


class TokenTable(Protocol):
    """A model's table, file and tokenizer (the token explorer). The explorer keeps its lazily built state in
    the object's `__dict__`."""

    __dict__: dict[str, Any]
    _resolved: Resolved
    _skip_ids: Sequence[int]

    @property
    def dim(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def tokenizer(self) -> Any: ...
