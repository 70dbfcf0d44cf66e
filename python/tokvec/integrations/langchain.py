"""A tokvec model as LangChain embeddings: `TokvecEmbeddings` implements
`langchain_core.embeddings.Embeddings`, so vector stores, retrievers and chains take it.

    >>> from langchain_core.vectorstores import InMemoryVectorStore
    >>> from tokvec.integrations.langchain import TokvecEmbeddings
    >>> store = InMemoryVectorStore.from_texts(texts, TokvecEmbeddings())   # the bundled default model
    >>> store.similarity_search("a question", k=3)

Needs `pip install 'tokvec[langchain]'` (langchain-core).
"""

from __future__ import annotations

import os
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor

from tokvec.model import Model, load

__all__ = ["TokvecEmbeddings"]


class TokvecEmbeddings(Embeddings):
    """LangChain embeddings from a tokvec model.

    Vectors are unit length (`Model.encode(..., normalize_embeddings=True)`), also for a model
    whose config says `normalize: false`, so a store's cosine, dot product and Euclidean distance
    rank documents alike. A binary model gives its sign bits as +-1/sqrt(dim) floats, whose dot
    product is the model's Hamming similarity. Documents and queries are embedded the same way.

    Args:
        model: a `tokvec.Model`, a path that `tokvec.load` takes, or None for the bundled default model.

    Raises:
        TypeError: model is of another type.
    """

    def __init__(self, model: Model | str | os.PathLike[str] | None = None) -> None:
        if model is None or isinstance(model, (str, os.PathLike)):
            model = load(model)
        elif not isinstance(model, Model):
            raise TypeError(
                f"model must be a tokvec.Model, a model path or None (the default model), got {type(model).__name__}"
            )
        self.model = model

    def __repr__(self) -> str:
        return f"TokvecEmbeddings({self.model!r})"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embeds documents.

        Args:
            texts: the documents' texts.

        Returns:
            one list of `dim` floats per text.
        """
        return self.model.encode(texts, normalize_embeddings=True).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embeds a query.

        Args:
            text: the query text.

        Returns:
            a list of `dim` floats.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self.model.encode(text, normalize_embeddings=True).tolist()

    # The core releases the GIL while it pools, so these run in parallel with the event loop in LangChain's
    # executor (which also carries the caller's context, e.g. callbacks).
    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """`embed_documents` in a worker thread."""
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """`embed_query` in a worker thread."""
        return await run_in_executor(None, self.embed_query, text)

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model = state["model"]
