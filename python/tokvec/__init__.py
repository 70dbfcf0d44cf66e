"""tokvec: fast static text embeddings from the token-embedding table of a language model.

    >>> import tokvec
    >>> m = tokvec.load()                      # the bundled default model, offline
    >>> E = m.embed(["a text", "another"])     # float32 (2, dim), L2-normalized
    >>> m.deduplicate(docs, threshold=0.9)     # greedy, exact
    >>> tokvec.extract("path/to/llm", "my-model")  # the token table of any checkpoint (safetensors, GGUF)
    >>> tokvec.evaluate(m, split="dev")        # STS-B, SICK-R, PAWS/MRPC F1, SciFact nDCG@10 (tokvec.train)
"""

from tokvec._core import CPU_FEATURES, FormatError, SafetensorsFile, TokenizerError, __version__
from tokvec.explore import TokenError, plot_tokens
from tokvec.extract import extract, inspect
from tokvec.model import Model, load
from tokvec.search import dedup_indices, duplicate_pairs, topk
from tokvec.index import Index
from tokvec.cluster import KMeansResult, kmeans
from tokvec.dedup import DedupIndex, DedupResult, dedup_sweep
from tokvec.train.evaluate import evaluate

__all__ = [
    "CPU_FEATURES",
    "DedupIndex",
    "DedupResult",
    "FormatError",
    "Index",
    "KMeansResult",
    "Model",
    "SafetensorsFile",
    "TokenError",
    "TokenizerError",
    "__version__",
    "dedup_indices",
    "dedup_sweep",
    "duplicate_pairs",
    "evaluate",
    "extract",
    "inspect",
    "kmeans",
    "load",
    "plot_tokens",
    "topk",
]
