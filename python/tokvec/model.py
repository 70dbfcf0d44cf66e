"""The user-facing model: `tokvec.load(...)` and `Model`."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokvec import _core, _scratch, explore
from tokvec._io import _NP_DTYPES, read_tensor, widen_bf16, write_model_folder, write_safetensors
from tokvec._validate import int_at_least, is_int
from tokvec._validate import positive_int_or_none as _positive_int
from tokvec._validate import threshold as _threshold
from tokvec.cluster import kmeans
from tokvec.config import FORMAT_VERSION
from tokvec.dedup import plan_texts, resolve_texts, text_keys
from tokvec.formats import Resolved, resolve
from tokvec.search import approx_options
from tokvec.search import topk as _topk
from tokvec.split import semantic_split
from tokvec.tokenizer import LoadedTokenizer, check_fits, load_tokenizer

__all__ = ["Model", "load"]


class _ModelDefault:
    """The default of `load(max_length=...)`: what the model's format says (None is "no cap")."""

    def __repr__(self) -> str:
        return "<the model's default>"


_MODEL_DEFAULT: Any = _ModelDefault()


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    table: str | None = None,
    dim: int | None = None,
    binary: bool = False,
    normalize: bool | None = None,
    max_length: int | None = _MODEL_DEFAULT,
    fast_tokenizer: bool = True,
    mmap: bool = True,
    revision: str | None = None,
) -> Model:
    """Loads a static embedding model. The table is memory-mapped and read in place (no copy, no
    conversion): loading costs a header parse and a parallel scan of the table for NaN/Inf values.

    Args:
        path: a model folder or a `.safetensors` file; None loads the bundled default model
            (offline, shipped in the wheel). The format is detected from the files: tokvec,
            model2vec, WordLlama, sentence-transformers StaticEmbedding, a raw transformer
            checkpoint (its input embedding table), or any single 2-D table with a tokenizer.
            A Hugging Face Hub repo id (``"minishlab/potion-base-8M"``, ``"hf://org/name"``, or
            ``"hf://org/name/file.safetensors"`` for one table file of a repo) loads from the local Hub
            cache, downloading only the files tokvec reads when the repo is not cached and HF_HUB_OFFLINE
            is not set. An existing local path always wins over a repo id; ``./org/name`` is always
            local (docs/hub-and-export.md).
        tokenizer: a tokenizer JSON to use instead of the one found next to the table.
        table: the table tensor's name, when detection finds several.
        dim: keep only the first `dim` columns (Matryoshka truncation).
        binary: embed to sign bits packed in uint64 words; similarities become `1 - 2 h / dim`
            with h the Hamming distance.
        normalize: L2-normalize embeddings; default from the model's config, else True.
        max_length: pool at most this many tokens per text; None: no cap. Default: the model's own,
            which is no cap except for model2vec folders, which get their config's `max_length` (512
            when it has none), as model2vec's `StaticModel.encode` truncates, and tokvec folders saved
            with a cap.
        fast_tokenizer: tokenize with tokvec's ids-only fast encoder when the tokenizer JSON is a
            family it implements exactly (WordPiece, SentencePiece-style BPE, byte-level BPE); the ids
            are those of HF `tokenizers`. False always runs the `tokenizers` crate.
        mmap: True (default) maps the model file: no copy, pages shared between processes. A
            mapped file must not be rewritten in place while the model is loaded (replacing it by
            a rename, or deleting it, is fine): the model would read the new bytes, and a truncated
            file kills the process with SIGBUS. False reads the file into private memory (memory
            of the table's size, and the time to read it), after which the file may change freely.
        revision: with a Hub repo id: the branch, tag or commit to load (default: main).

    Returns:
        The model.

    Raises:
        FileNotFoundError: the path does not exist, or the repo is neither in the Hub cache nor downloadable
            (HF_HUB_OFFLINE set, no such repo or revision); the message says how to get it.
        OSError: the repo is not cached and the Hub cannot be reached.
        FormatError: the files are malformed or not a format tokvec reads, or the table's columns in
            use or the weights hold NaN/Inf values (a ValueError).
        TokenizerError: the tokenizer JSON cannot be loaded (a ValueError).
        ValueError: an option is out of range (e.g. `dim` larger than the table).
    """
    if not isinstance(binary, bool):
        raise TypeError(f"binary must be a bool, got {type(binary).__name__}")
    if not isinstance(mmap, bool):
        raise TypeError(f"mmap must be a bool, got {type(mmap).__name__}")
    if normalize is not None and not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool or None, got {type(normalize).__name__}")
    dim = _positive_int(dim, "dim")
    if max_length is not _MODEL_DEFAULT:
        max_length = _positive_int(max_length, "max_length")
    r = resolve(path, tokenizer=tokenizer, table=table, revision=revision)
    if max_length is _MODEL_DEFAULT:
        max_length = r.max_length
    tok = load_tokenizer(r.tokenizer, add_special_tokens=r.add_special_tokens, fast=fast_tokenizer)
    m = Model._build(r, tok, dim=dim, binary=binary, normalize=normalize, max_length=max_length, mmap=mmap)
    # what `pickle` needs to re-open the model elsewhere: paths and options, never the table; a Hub repo by its id
    # and the commit its files came from (re-opened from the cache there, or downloaded where that is allowed)
    m._load_args = {
        "path": None if path is None else os.fspath(path) if r.revision else os.fspath(Path(path).resolve()),
        "revision": r.revision,
        "tokenizer": None if tokenizer is None else os.fspath(Path(tokenizer).resolve()),
        "table": table,
        "dim": dim,
        "binary": binary,
        "normalize": normalize,
        "max_length": max_length,
        "fast_tokenizer": fast_tokenizer,
        "mmap": mmap,
    }
    return m


def _reload(args: dict[str, Any]) -> Model:
    return load(**args)


class Model:
    """A static embedding model: a token-embedding table, a tokenizer and pooling settings.

    Embeddings are the mean of the table rows of a text's tokens (times per-token weights when the
    model has them), special tokens excluded, L2-normalized by default. An empty text (or one made
    only of special tokens) embeds to the zero vector, whose similarity with anything is 0.

    Thread safety: a model is immutable; any number of threads may call it at once, and the
    Rust core releases the GIL while it works.
    """

    def __init__(
        self,
        core: Any,
        tokenizer: LoadedTokenizer,
        resolved: Resolved,
        binary: bool,
        max_length: int | None,
        skip_ids: tuple[int, ...],
        *,
        scalar: bool = False,
        mmap: bool = True,
    ) -> None:
        self._core = core
        self._tok = tokenizer
        self._resolved = resolved
        self._binary = binary
        self._max_length = max_length
        self._skip_ids = skip_ids
        self._scalar = scalar
        self._mmap = mmap
        self._raw: Any = None  # the core without normalization, built on first use (`_raw_core`)
        self._load_args: dict[str, Any] | None = None
        self._fingerprint: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles by path: a worker re-opens (memory-maps) the same files, so nothing large crosses the
        # wire. The files must be readable at the same path where the model is unpickled.
        if self._load_args is None:
            raise TypeError("only models made by tokvec.load() can be pickled (they are re-opened by path)")
        return (_reload, (self._load_args,))

    @classmethod
    def _build(
        cls,
        r: Resolved,
        tok: LoadedTokenizer,
        *,
        dim: int | None,
        binary: bool,
        normalize: bool | None,
        max_length: int | None,
        scalar: bool = False,
        mmap: bool = True,
    ) -> Model:
        if r.skip_ids is not None:
            skip = tuple(r.skip_ids)
        else:
            skip_set = set(tok.special_ids)
            if r.skip_unk and tok.unk_id is not None:
                skip_set.add(tok.unk_id)
            skip = tuple(sorted(skip_set))
        info = _core.SafetensorsFile(r.safetensors).tensors()
        if r.table not in info:
            raise _core.FormatError(f"{r.safetensors}: no tensor named {r.table!r}")
        _, shape = info[r.table]
        if len(shape) != 2:
            raise _core.FormatError(f"{r.safetensors}: table {r.table!r} must be 2-D [vocab, dim], has shape {shape}")
        if dim is not None and dim > shape[1]:
            raise ValueError(f"dim={dim} is larger than the table's {shape[1]} columns")
        id_limit = info[r.mapping][1][0] if r.mapping and r.mapping in info else shape[0]
        check_fits(tok, id_limit, r.safetensors)
        if r.skip_ids and max(r.skip_ids) >= id_limit:
            raise _core.FormatError(
                f"{r.safetensors.parent / 'config.json'}: key 'skip_ids' holds id {max(r.skip_ids)}, "
                f"past the table's {id_limit} token ids"
            )
        core = _new_core(
            r,
            tok,
            skip,
            dim=dim,
            normalize=r.normalize if normalize is None else normalize,
            max_length=max_length,
            scalar=scalar,
            mmap=mmap,
        )
        return cls(core, tok, r, binary, max_length, skip, scalar=scalar, mmap=mmap)

    def _raw_core(self) -> Any:
        """The core that pools without normalizing: the model's own when its config says
        `normalize: false`; otherwise a second core over the same mapped file, tokenizer and
        settings, built on first use (a header parse and the NaN/Inf scan of the table; the pages
        are shared, so no second copy of the table). Its rows, normalized by `_core.normalize_rows`,
        are the model's vectors bit for bit. Two threads may both build one; either is kept."""
        if not self.normalize:
            return self._core
        if self._raw is None:
            if not self._mmap:
                raise ValueError(
                    "raw pooled means (normalize_embeddings=False, norm=False) of a model that normalizes come "
                    "from a second view of its file, and this model was loaded with mmap=False (a private copy: "
                    "the file may have changed since); load it with tokvec.load(..., normalize=False) instead: "
                    "its vectors are the raw means, and normalize_embeddings=True gives this model's vectors"
                )
            self._raw = _new_core(
                self._resolved,
                self._tok,
                self._skip_ids,
                dim=self.dim,
                normalize=False,
                max_length=self._max_length,
                scalar=self._scalar,
                mmap=True,
            )
        return self._raw

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Embedding dimension (columns kept)."""
        return int(self._core.dim)

    @property
    def binary(self) -> bool:
        """Whether embeddings are packed sign bits."""
        return self._binary

    @property
    def normalize(self) -> bool:
        """Whether embeddings are L2-normalized."""
        return bool(self._core.normalize)

    @property
    def format(self) -> str:
        """The detected format: tokvec, model2vec, wordllama, sentence-transformers, transformer or table."""
        return self._resolved.format

    @property
    def tokenizer(self) -> Any:
        """The HF `tokenizers.Tokenizer` (configured: no truncation, no padding)."""
        return self._tok.tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids the table covers."""
        return int(self._core.id_limit)

    def __repr__(self) -> str:
        kind = "binary" if self._binary else ("normalized" if self.normalize else "raw")
        return (
            f"Model(format={self.format!r}, path={str(self._resolved.safetensors)!r}, table={self._core.table!r}, "
            f"vocab={self.vocab_size}, dim={self.dim}, dtype={self._core.dtype}, {kind})"
        )

    # ---------------------------------------------------------------- embedding
    @staticmethod
    def _texts(texts: Any, name: str = "texts") -> list[str]:
        if texts is None:
            raise TypeError(f"{name} must be a list of str, got None")
        if isinstance(texts, (bytes, bytearray)):
            raise TypeError(f"{name} must be str or a list of str, got bytes; decode it first")
        if isinstance(texts, str):
            # iterating a str would silently make every character a document
            raise TypeError(f"{name} must be a list of str, got a single str; wrap it in a list: [{name}]")
        if isinstance(texts, list):
            return texts
        if isinstance(texts, np.ndarray):
            return texts.tolist()
        if isinstance(texts, Iterable):
            return list(texts)
        raise TypeError(f"{name} must be a list of str, got {type(texts).__name__}")

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        norm: bool | None = None,
        return_np: bool = True,
        batch_size: int | None = None,
    ) -> Any:
        """Embeds texts.

        Args:
            texts: a list (or any iterable) of str; a single str gives a single vector.
            norm: None (default) follows the model: L2-normalized unless its config says
                `normalize: false`. True gives unit vectors (bit for bit those of the model loaded
                normalized), False the raw pooled means (for a model that normalizes, from a second
                core over the same file, see `encode`). WordLlama's keyword, with its meaning (its
                default is False: tokvec's follows the model instead). No effect on a binary model:
                the signs do not depend on the scale.
            return_np: False returns nested lists of Python floats (`.tolist()`), as WordLlama's
                `return_np=False`.
            batch_size: texts pooled per call into the core (bounds the memory of the token ids);
                the vectors do not depend on it. Default: all at once.

        Returns:
            float32 (len(texts), dim), L2-normalized unless the model says otherwise; with
            `binary=True`, uint64 (len(texts), ceil(dim / 64)) packed sign bits. A single str
            gives shape (dim,) (or (words,)). An empty list gives shape (0, dim).

        Raises:
            TypeError: texts is not str / a list of str (the message names the first bad item).
            ValueError: a text holds a lone surrogate and cannot be encoded as UTF-8.
        """
        norm = _opt_bool(norm, "norm")
        if not isinstance(return_np, bool):
            raise TypeError(f"return_np must be a bool, got {type(return_np).__name__}")
        batch = _positive_int(batch_size, "batch_size")
        if isinstance(texts, str):
            e = self._pooled([texts], norm, batch)[0]
        else:
            e = self._pooled(self._texts(texts), norm, batch)
        return e if return_np else e.tolist()

    def _pooled(
        self,
        items: list[str],
        normalize: bool | None,
        batch_size: int | None = None,
        bar: Any = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The one pooling path of `embed`, `encode` and the scoring methods: packed bits for a binary
        model, else float32 rows, normalized as asked (None: as the model's config says), pooled
        `batch_size` texts per core call (None: one call), `bar.update` called after each call.
        `out`: a float (n, dim) matrix to fill instead (`_scratch.matrix`: a map whose written pages
        are released after each call, at most `_BAR_BATCH` texts a call by default)."""
        if self._binary:
            fn, fix = self._core.embed_binary, False
        elif normalize is None or normalize == self.normalize:
            fn, fix = self._core.embed, False
        elif normalize:  # a raw model asked for unit vectors: the normalized model's arithmetic
            fn, fix = self._core.embed, True
        else:
            fn, fix = self._raw_core().embed, False
        n = len(items)
        if out is not None:
            batch_size = batch_size or _BAR_BATCH
            if self._binary or out.shape != (n, self.dim):
                raise ValueError(f"out must be a float ({n}, {self.dim}) matrix, got {out.shape}")
            for a in range(0, n, batch_size):
                out[a : a + batch_size] = fn(items[a : a + batch_size])
                if fix:
                    _core.normalize_rows(out[a : a + batch_size])
                _scratch.release(out)
                if bar is not None:
                    bar.update(min(batch_size, n - a))
            return out
        if batch_size is None or n <= batch_size:
            out = fn(items)
            if bar is not None:
                bar.update(n)
        else:
            width = -(-self.dim // 64) if self._binary else self.dim
            out = np.empty((n, width), np.uint64 if self._binary else np.float32)
            for a in range(0, n, batch_size):
                out[a : a + batch_size] = fn(items[a : a + batch_size])
                if bar is not None:
                    bar.update(min(batch_size, n - a))
        if fix and n:
            _core.normalize_rows(out)
        return out

    def _unit_embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings for scoring: similarity, search and dedup are cosine even when the model's
        config says `normalize: false` (the rows are then normalized here, with the arithmetic a
        normalized model's pooling uses, so the scores are bit for bit the normalized model's)."""
        return self._pooled(texts, True)

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int | None = None,
        show_progress_bar: bool | None = False,
        normalize_embeddings: bool | None = None,
        convert_to_numpy: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Embeds texts as sentence-transformers' and model2vec's `encode` do, so that libraries
        written for those (semhash, BERTopic, ...) can take a tokvec model. Float vectors always.

        Args:
            sentences: a list (or any iterable) of str; a single str gives shape (dim,).
            batch_size: texts pooled per core call; the vectors do not depend on it. Default: all at
                once, or 10,000 a step with a progress bar.
            show_progress_bar: a tqdm bar (texts, texts/s) on stderr; None counts as False.
            normalize_embeddings: None (default) follows the model (normalized unless its config
                says `normalize: false`). True gives unit vectors, bit for bit those of the model
                loaded normalized. False gives the raw pooled means, as model2vec's
                `normalize=False`; for a model that normalizes they come from a second core over the
                same mapped file, built on the first such call (with `mmap=False` this is refused:
                load with `normalize=False` instead).
            convert_to_numpy: True returns a numpy array; False (sentence-transformers: a list of
                torch tensors) needs torch.
            **kwargs: the other keywords those libraries pass, accepted where they leave the result
                as they would compute it, refused where they would change it:
                `normalize` (model2vec's name for normalize_embeddings), `convert_to_tensor` (True:
                a torch.Tensor, needs torch), `device` (None or "cpu"), `precision` ("float32"),
                `output_value` ("sentence_embedding"), `prompt_name` (None), `prompt` (None or ""),
                `truncate_dim` (None or the model's dim: load with `dim=` to truncate), `max_length`
                (the model's max_length: load with `max_length=` to change it), `task` (None),
                `pool` (None), `chunk_size`, `use_multiprocessing`, `multiprocessing_threshold`
                (no effect: the core is multi-threaded).

        Returns:
            float32 (len(sentences), dim), or (dim,) for a str. A binary model (`binary=True`) gives
            its sign bits unpacked as floats, +-1/sqrt(dim) (unit rows, so the dot product is the
            model's Hamming similarity 1 - 2h/dim), or +-1 with normalize_embeddings=False.

        Raises:
            TypeError: sentences is not str / a list of str, a keyword of the wrong type, or an
                unknown keyword.
            ValueError: a keyword value that would change the result (a GPU device, a precision
                other than float32, a prompt, ...); the message says what to do instead.
            ImportError: torch tensors asked for and torch is not installed.
        """
        batch = _positive_int(batch_size, "batch_size")
        if show_progress_bar is not None and not isinstance(show_progress_bar, bool):
            raise TypeError(f"show_progress_bar must be a bool or None, got {type(show_progress_bar).__name__}")
        if not isinstance(convert_to_numpy, bool):
            raise TypeError(f"convert_to_numpy must be a bool, got {type(convert_to_numpy).__name__}")
        norm, tensor = _encode_options(self, _opt_bool(normalize_embeddings, "normalize_embeddings"), kwargs)
        single = isinstance(sentences, str)
        items = [sentences] if single else self._texts(sentences, "sentences")
        if show_progress_bar:
            from tqdm import tqdm

            with tqdm(total=len(items), desc="encode", unit="texts", dynamic_ncols=True) as bar:
                e = self._pooled(items, norm, batch or _BAR_BATCH, bar)
        else:
            e = self._pooled(items, norm, batch)
        if self._binary:
            e = _signs(e, self.dim)
            if self.normalize if norm is None else norm:
                e *= np.float32(1 / np.sqrt(self.dim))
        if single:
            e = e[0]
        if tensor or not convert_to_numpy:
            try:
                import torch
            except ImportError:
                asked = "convert_to_tensor=True" if tensor else "convert_to_numpy=False"
                raise ImportError(
                    f"{asked} asks for torch tensors, and torch is not installed; leave it out for a numpy "
                    f"array (torch.from_numpy(array) makes a tensor of it without a copy)"
                ) from None
            t = torch.from_numpy(e)
            return t if tensor or single else list(t)
        return e

    def get_sentence_embedding_dimension(self) -> int:
        """The length of `encode`'s vectors (`dim`), as sentence-transformers names it."""
        return self.dim

    @property
    def fingerprint(self) -> str:
        """A SHA-256 hex digest of everything that decides this model's vectors for scoring: the
        table (the kept columns), per-token weights, mapping, tokenizer JSON and pooling settings.
        Computed once, on first use (it reads the whole table). `tokvec.DedupIndex` records it."""
        if self._fingerprint is None:
            r = self._resolved
            f = _core.SafetensorsFile(r.safetensors)
            info = f.tensors()
            h = hashlib.sha256()
            dt, shape = info[r.table]
            settings = {
                "dim": self.dim,
                "binary": self._binary,
                "max_length": self._max_length,
                "skip_ids": list(self._skip_ids),
                "table": [dt, shape],
            }
            h.update(json.dumps(settings, sort_keys=True).encode())
            for name in (r.table, r.weights, r.mapping):
                if name:
                    h.update(f.tensor_bytes(name))
            h.update(self._tok.json.encode("utf-8", "surrogatepass"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text as the Rust core tokenizes it (special tokens still included).

        Args:
            texts: a list of str.

        Returns:
            one list of ids per text.
        """
        ids, offsets = self._core.encode(self._texts(texts))
        return [ids[a:b].tolist() for a, b in itertools.pairwise(offsets)]

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """How many tokens the model's tokenizer makes of each text: the ids `encode_ids` gives, which `embed`
        pools, counted before `max_length` (a cap does not lower the count). Special tokens are counted: those the
        tokenizer adds when the model's config asks for them (`add_special_tokens`), and those written in the text;
        `embed` leaves them out of the mean.

        Args:
            texts: a list of str.

        Returns:
            int64 (len(texts),).

        Raises:
            TypeError: texts is a single str (wrap it in a list) or not a list of str.
            ValueError: a text holds a lone surrogate and cannot be encoded as UTF-8.
        """
        _, offsets = self._core.encode(self._texts(texts))
        return np.diff(offsets).astype(np.int64, copy=False)

    def embed_ids(self, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Pools pre-tokenized ids given in CSR form (text i is `ids[offsets[i]:offsets[i+1]]`).

        Args:
            ids: integer token ids, concatenated over texts.
            offsets: len(texts) + 1 non-decreasing offsets starting at 0.

        Returns:
            float32 (len(offsets) - 1, dim).

        Raises:
            IndexError: an id is not below `vocab_size`.
            ValueError: malformed offsets.
        """
        ids_a = np.asarray(ids)
        off_a = np.asarray(offsets)
        if ids_a.ndim != 1 or off_a.ndim != 1:
            raise ValueError("ids and offsets must be 1-D")
        if ids_a.size and (ids_a.dtype.kind not in "iu" or ids_a.min() < 0 or ids_a.max() >= 2**32):
            raise ValueError("ids must be non-negative integers below 2**32")
        if off_a.size and (off_a.dtype.kind not in "iu" or off_a.min() < 0):
            raise ValueError("offsets must be non-negative integers")
        return self._core.embed_ids(np.ascontiguousarray(ids_a, np.uint32), np.ascontiguousarray(off_a, np.uint64))

    # ---------------------------------------------------------------- similarity
    def _sim_matrix(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if not self._binary:
            # The core's canonical score, the very value its top-k and dedup compute: rank, filter, key and
            # similarity then order near-ties as topk does and cut at a threshold as dedup does (and repeats tie).
            return _core.scores(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32))
        return (_signs(a, self.dim) @ _signs(b, self.dim).T) / self.dim

    def similarity(self, a: str | Sequence[str], b: str | Sequence[str]) -> Any:
        """Cosine similarity (Hamming-based for binary models).

        Args:
            a: a str or a list of str.
            b: a str or a list of str.

        Returns:
            a float for two str; otherwise a float32 (len(a), len(b)) matrix.
        """
        ea = self._unit_embed([a] if isinstance(a, str) else self._texts(a, "a"))
        eb = self._unit_embed([b] if isinstance(b, str) else self._texts(b, "b"))
        m = self._sim_matrix(ea, eb)
        if isinstance(a, str) and isinstance(b, str):
            return float(m[0, 0])
        return m.astype(np.float32, copy=False)

    def _scores(self, query: str, docs: list[str], batch_size: int | None = None) -> np.ndarray:
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        if not docs:
            return np.zeros(0, np.float32)
        return self._sim_matrix(self._unit_embed([query]), self._pooled(docs, True, batch_size))[0]

    def rank(
        self,
        query: str,
        docs: Sequence[str],
        sort: bool = True,
        batch_size: int | None = None,
    ) -> list[tuple[str, float]]:
        """Scores every doc against the query.

        Args:
            query: the query text.
            docs: the candidate texts.
            sort: best first (stable: equal scores keep input order); False keeps input order.
            batch_size: WordLlama's keyword: texts pooled per core call; the scores do not depend on it.

        Returns:
            list of (doc, score).
        """
        if not isinstance(sort, bool):
            raise TypeError(f"sort must be a bool, got {type(sort).__name__}")
        items = self._texts(docs, "docs")
        s = self._scores(query, items, _positive_int(batch_size, "batch_size"))
        order = np.argsort(-s, kind="stable") if sort else range(len(items))
        return [(items[i], float(s[i])) for i in order]

    def topk(self, query: str, docs: Sequence[str], k: int = 3) -> list[str]:
        """The k docs most similar to the query, best first (ties: input order).

        Args:
            query: the query text.
            docs: the candidate texts.
            k: how many; clipped to len(docs).

        Returns:
            list of docs.
        """
        int_at_least(k, "k")
        items = self._texts(docs, "docs")
        if not items:
            return []
        if self._binary or len(items) < 64:
            s = self._scores(query, items)
            order = np.argsort(-s, kind="stable")[:k]
            return [items[i] for i in order]
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        _, idx = _topk(self._unit_embed([query]), self._unit_embed(items), k)
        return [items[i] for i in idx[0]]

    def filter(self, query: str, docs: Sequence[str], threshold: float = 0.3) -> list[str]:
        """The docs whose similarity with the query is > threshold, in input order.

        Args:
            query: the query text.
            docs: the candidate texts.
            threshold: in [-1, 1].

        Returns:
            list of docs.
        """
        t = _threshold(threshold)
        items = self._texts(docs, "docs")
        # compared in float32, as the core's dedup compares its scores with the threshold
        keep = self._scores(query, items) > np.float32(t)
        return [d for d, k in zip(items, keep.tolist()) if k]

    def key(self, query: str, *, norm: bool = True) -> Callable[[str], float]:
        """A key function that returns a text's similarity with the query, as WordLlama's `key` does:
        `max(docs, key=m.key(q))` is the doc most similar to q, and `sorted(docs, key=m.key(q),
        reverse=True)` puts the most similar first (`min`, or `sorted` without `reverse`, the least).

        Embeddings of seen texts are cached in the key.

        Args:
            query: the query text.
            norm: WordLlama's keyword, accepted for code moving from it: the score is the cosine
                similarity (Hamming-based for binary models) either way, as in WordLlama, whose
                similarity normalizes the vectors itself.

        Returns:
            a function str -> float, the score `similarity(query, text)` gives.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        if not isinstance(norm, bool):
            raise TypeError(f"norm must be a bool, got {type(norm).__name__}")
        q = self._unit_embed([query])
        cache: dict[str, float] = {}

        def _key(text: str) -> float:
            v = cache.get(text)
            if v is None:
                if not isinstance(text, str):
                    raise TypeError(f"the key takes a str, got {type(text).__name__}")
                v = cache[text] = float(self._sim_matrix(q, self._unit_embed([text]))[0, 0])
            return v

        return _key

    def deduplicate(
        self,
        docs: Sequence[str],
        threshold: float = 0.9,
        *,
        return_indices: bool = False,
        explain: bool = False,
        reference: Sequence[str] | None = None,
        drop_empty: bool = False,
        approx: bool = False,
        batch_size: int | None = None,
        nprobe: int | None = None,
        nlist: int | None = None,
    ) -> Any:
        """Removes duplicates, greedily in input order: a doc is dropped when it is identical to an
        earlier doc, or when its cosine similarity with an earlier *kept* doc is > threshold. Exact
        unless `approx=True`.

        Identical texts go first, by a hash pass (as semhash does): they are duplicates at every
        threshold, whatever their vectors (a text of emoji or unknown tokens embeds to the zero
        vector), and only the first occurrence of each text is embedded. Similarity is cosine even
        for a model whose config says `normalize: false`.

        Args:
            docs: the texts.
            threshold: in [-1, 1]. 1.0 keeps one copy of each identical text and nothing else is
                removed (scores never decide at 1.0).
            return_indices: return the indices of the *kept* docs (ascending) instead of the texts.
                (WordLlama's `return_indices=True` returns the removed docs' indices instead.)
            explain: return a `tokvec.DedupResult` instead: kept indices, and for every removed doc
                the kept doc it duplicates, the score and whether the text was identical
                (`.explain()`), plus `.summary()`.
            reference: docs of a reference set (e.g. a test set): any doc identical to one of them
                or above the threshold with one of them is removed too; the reference set is not
                deduplicated.
            drop_empty: remove empty docs (no characters, or whitespace only). By default every
                empty doc is kept, none is a duplicate of another, and `.summary()` counts them.
            approx: for very large sets: each doc meets only the earlier kept docs of its `nprobe` nearest
                k-means lists; scores are exact and the greedy pass is the same. A removed doc always has a
                kept doc above the threshold, but pairs the search does not meet are not seen (`tokvec.dedup`).
            batch_size: WordLlama's keyword (its block size): texts pooled per core call; the result
                does not depend on it.
            nprobe: with approx, lists probed per doc (default 8; 16 once more than 3 docs were removed
                per kept one).
            nlist: with approx, number of lists (default 2 sqrt(n)).

        Returns:
            the kept docs in input order, or their indices, or a `DedupResult`.
        """
        t = _threshold(threshold)
        batch = _positive_int(batch_size, "batch_size")
        search = approx_options(approx, nprobe=nprobe, nlist=nlist)
        items = self._texts(docs, "docs")
        ref = None if reference is None else self._texts(reference, "reference")
        if self._binary and (ref is not None or approx):
            raise ValueError("reference= and approx=True need a float model (binary=False)")
        plan = plan_texts(items, reference_keys=None if ref is None else text_keys(ref), drop_empty=drop_empty)
        nv = len(plan.vector_items)
        out = None if self._binary else _scratch.matrix(nv, self.dim)
        vectors = self._pooled([items[i] for i in plan.vector_items.tolist()], True, batch, out=out)
        res = resolve_texts(
            plan,
            vectors,
            t,
            reference=None if ref is None else self._unit_embed(ref),
            bits=self.dim if self._binary else None,
            approx=search,
        )
        res.texts, res.reference_texts = items, ref
        if explain:
            return res
        return res.kept.tolist() if return_indices else res.kept_texts()

    # ---------------------------------------------------------------- token explorer
    def token_vector(self, token: str | int) -> np.ndarray:
        """The table row of one token: what the model averages when a text is that token alone.

        The row after `mapping`, times the token's weight when the model has weights, first `dim`
        columns, not normalized.

        Args:
            token: an int id, or a str: a word ("king") is looked up by its word-start forms first
                ("Ġking", "▁king"), then as it is in the vocabulary ("##ing" too), then through the
                tokenizer (its normalizer, e.g. lowercasing) when that gives exactly one token.

        Returns:
            float32 (dim,).

        Raises:
            TokenError: not a single token (the message says what it splits into) or an id out of
                range; a KeyError and a ValueError.
        """
        return explore.token_vector(self, token)

    def most_similar_tokens(self, token_or_vector: str | int | np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        """The vocabulary tokens whose rows have the highest cosine with a token's row (or a vector).

        Exact search over the whole vocabulary with the Rust top-k; the query token itself and the
        special tokens (those pooling skips) are left out. The first call reads every row once and
        keeps the L2-normalized rows in memory, float32: vocab x dim x 4 bytes (47 MB for a
        30,522 x 384 table, 113 MB for 49,152 x 576, 2.1 GB for 128,256 x 4,096).

        Args:
            token_or_vector: a token (as in `token_vector`) or a float vector of shape (dim,).
            k: how many tokens.

        Returns:
            [(token, cosine)] best first (ties: lower id first); tokens as spelled in the vocabulary.
        """
        return explore.most_similar_tokens(self, token_or_vector, k)

    def analogy(self, a: str | int, b: str | int, c: str | int, k: int = 10) -> list[tuple[str, float]]:
        """Tokens closest to a - b + c ("king" - "man" + "woman"), with a, b and c left out.

        Each row is L2-normalized before the sum (3CosAdd), then the sum is searched as in
        `most_similar_tokens`.

        Args:
            a: the token to start from.
            b: the token to subtract.
            c: the token to add.
            k: how many tokens.

        Returns:
            [(token, cosine)] best first.
        """
        return explore.analogy(self, a, b, c, k)

    def split(self, text: str, target_size: int = 1536, *, unit_size: int | None = None) -> list[str]:
        """Semantic chunking: the text is cut into lines, then sentences (for lines longer than
        `unit_size`), then word groups (for sentences still longer); the pieces are embedded and
        neighbouring segments are merged, the most similar pair first, while the merged segment stays
        within `target_size` characters. Topic shifts therefore tend to fall between chunks.

        Args:
            text: the text to split.
            target_size: maximum chunk length in characters (a run without whitespace longer than that is
                cut hard).
            unit_size: maximum length of the initial pieces (default target_size // 4).

        Returns:
            the chunks in order; `"".join(chunks) == text`. An empty text gives [].
        """
        if self._binary:
            raise ValueError("split needs a float model (binary=False)")
        return semantic_split(self, text, target_size, unit_size)

    def cluster(self, docs: Sequence[str], k: int, **kwargs: Any) -> Any:
        """Clusters docs with k-means on their unit vectors (as `tokvec cluster` does, also for a model whose
        config says `normalize: false`; see `tokvec.kmeans` for the options: n_init, max_iter, tol, seed).

        Args:
            docs: the texts.
            k: number of clusters.
            **kwargs: passed to `tokvec.kmeans`.

        Returns:
            a `tokvec.KMeansResult` (labels per doc, centroids, inertia), not WordLlama's
            `(labels, inertia)` tuple.

        Raises:
            TypeError: a WordLlama keyword (the message names tokvec's).
        """
        wl = [name for name in _WORDLLAMA_KMEANS if name in kwargs]
        if wl:
            raise TypeError(
                f"cluster() got WordLlama's keyword {wl[0]!r}; tokvec.kmeans names its options n_init, max_iter, tol "
                f"and seed ({_WORDLLAMA_KMEANS[wl[0]]})"
            )
        if self._binary:
            raise ValueError("cluster needs a float model (binary=False)")
        return kmeans(self._unit_embed(self._texts(docs, "docs")), k, **kwargs)

    # ---------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike[str], format: str = "tokvec") -> Path:
        """Writes the model as a folder in one of three formats. Only the kept `dim` columns are written. The
        folder is written to a temporary sibling and renamed, so an interrupted save leaves no half-written model.
        Licence files next to the source model (LICENSE*, NOTICE*) are copied along.

        - ``"tokvec"``: `model.safetensors` (`embeddings` in the table's on-disk dtype, and `weights` /
          `mapping` when the model has them), `tokenizer.json`, `config.json` (normalize, skipped ids, the
          token cap when one is set). `tokvec.load` reads it back bit for bit.
        - ``"model2vec"``: the folder model2vec's `StaticModel.from_pretrained` loads: `model.safetensors`
          (`embeddings`, `weights`, `mapping`, which model2vec's encode applies as tokvec does), `tokenizer.json`
          and a `config.json` with `normalize` and `max_length` (null: no cap). BF16 tables are written as F32.
        - ``"sentence-transformers"``: `modules.json`, `0_StaticEmbedding/` (`model.safetensors` with
          `embedding.weight`, `tokenizer.json`) and `1_Normalize` when the model normalizes. The format has no
          weights or mapping, so every token id's row is written as pooling uses it (mapped, times its weight:
          the pooled mean is the same), float32.

        What each format cannot carry (special tokens typed into a text, the token cap in sentence-transformers)
        is listed in docs/hub-and-export.md.

        Args:
            path: the folder to create (must not exist, or be an empty folder).
            format: "tokvec", "model2vec" or "sentence-transformers".

        Returns:
            the folder's path.

        Raises:
            ValueError: an unknown format.
            FileExistsError: `path` exists and is not an empty folder.
        """
        if format not in _SAVE_FORMATS:
            raise ValueError(f"format must be one of {', '.join(map(repr, _SAVE_FORMATS))}, got {format!r}")
        write = {
            "tokvec": self._save_tokvec,
            "model2vec": self._save_model2vec,
            "sentence-transformers": self._save_sentence_transformers,
        }[format]

        def fill(tmp: Path) -> None:
            write(tmp)
            for f in self._licence_files():
                shutil.copyfile(f, tmp / f.name)

        return write_model_folder(path, fill)  # errors name `path` and its folder, never the hidden one

    def _tensor(self, name: str, columns: bool = False) -> np.ndarray:
        """A tensor of the model file as stored (BF16 as its uint16 bits); the table's kept columns with `columns`."""
        a = read_tensor(_core.SafetensorsFile(self._resolved.safetensors), name)
        return np.ascontiguousarray(a[:, : self.dim]) if columns else a

    def _licence_files(self) -> list[Path]:
        r = self._resolved
        folder = r.safetensors.parent.parent if r.format == "sentence-transformers" else r.safetensors.parent
        return sorted(f for pat in ("LICENSE*", "NOTICE*") for f in folder.glob(pat) if f.is_file())

    def _save_tokvec(self, tmp: Path) -> None:
        r = self._resolved
        f = _core.SafetensorsFile(r.safetensors)
        info = f.tensors()
        tensors = {"embeddings": _tensor_entry(info[r.table][0], self._tensor(r.table, columns=True))}
        for key, name in (("weights", r.weights), ("mapping", r.mapping)):
            if name:
                dt, shape = info[name]
                tensors[key] = (dt, shape, f.tensor_bytes(name))
        cfg = {
            "format": "tokvec",
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "normalize": self.normalize,
            "pooling": "mean",
            "add_special_tokens": r.add_special_tokens,
            "skip_ids": list(self._skip_ids),
            "source": self._source(),
        }
        if self._max_length is not None:
            cfg["max_length"] = self._max_length
        if "license" in r.config and r.format == "tokvec":
            cfg["license"] = r.config["license"]
        write_safetensors(tmp / "model.safetensors", tensors, {"format": "tokvec"})
        (tmp / "tokenizer.json").write_text(self._tok.json, encoding="utf-8")
        _write_json(tmp / "config.json", cfg)

    def _save_model2vec(self, tmp: Path) -> None:
        # model2vec's StaticModel reads the tensors with safetensors' numpy loader (no bfloat16 there, so BF16 is
        # widened to F32, exactly), pools `embeddings[mapping[id]] * weights[id]` as tokvec does, and asks for one
        # row per vocabulary entry unless a mapping says otherwise.
        r = self._resolved
        info = _core.SafetensorsFile(r.safetensors).tensors()
        table = widen_bf16(self._tensor(r.table, columns=True), info[r.table][0])
        weights = None if r.weights is None else widen_bf16(self._tensor(r.weights), info[r.weights][0])
        mapping = None if r.mapping is None else self._tensor(r.mapping)
        n_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if mapping is None and len(table) != n_vocab:
            if self._tok.id_limit == n_vocab < len(table):
                # rows past the tokenizer's ids (a vocabulary padded to a multiple of 64) are never read
                table = table[:n_vocab]
                weights = None if weights is None else weights[:n_vocab]
            else:
                mapping = np.arange(len(table), dtype=np.int64)  # ids with gaps: one row per id, by mapping
        tensors = {"embeddings": _tensor_entry("F32", table)}
        if weights is not None:
            tensors["weights"] = _tensor_entry("F32", weights)
        if mapping is not None:
            tensors["mapping"] = _tensor_entry("I64", mapping)
        cfg: dict[str, Any] = {
            "model_type": "model2vec",
            "architectures": ["StaticModel"],
            "tokenizer_name": r.config.get("tokenizer_name") or self._source().get("model"),
            "apply_pca": r.config.get("apply_pca"),
            "hidden_dim": self.dim,
            "seq_length": r.config.get("seq_length", 1000000),
            "normalize": self.normalize,
            "max_length": self._max_length,
            "embedding_dtype": table.dtype.name,
            "source": self._source(),
        }
        if mapping is not None:
            cfg["vocabulary_quantization"] = len(table)
        if "license" in r.config:
            cfg["license"] = r.config["license"]
        write_safetensors(tmp / "model.safetensors", tensors)
        (tmp / "tokenizer.json").write_text(self._tok.json, encoding="utf-8")
        _write_json(tmp / "config.json", cfg)

    def _save_sentence_transformers(self, tmp: Path) -> None:
        rows = explore.token_rows(self)  # mapped and weighted: the format has neither tensor
        static = tmp / "0_StaticEmbedding"
        static.mkdir()
        write_safetensors(static / "model.safetensors", {"embedding.weight": _tensor_entry("F32", rows)})
        (static / "tokenizer.json").write_text(self._tok.json, encoding="utf-8")
        modules = [
            {"idx": 0, "name": "0", "path": "0_StaticEmbedding", "type": "sentence_transformers.models.StaticEmbedding"}
        ]
        if self.normalize:
            (tmp / "1_Normalize").mkdir()
            modules.append(
                {"idx": 1, "name": "1", "path": "1_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
        _write_json(tmp / "modules.json", modules)
        _write_json(
            tmp / "config_sentence_transformers.json",
            {
                "__version__": {"tokvec": _core.__version__},
                "prompts": {},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
                "tokvec": {
                    "source": self._source(),
                    "rows": "each token id's row as tokvec pools it: after the mapping, times the id's weight"
                    if self._resolved.weights or self._resolved.mapping
                    else "the table's rows",
                },
            },
        )

    def _source(self) -> dict[str, Any]:
        """Where the model came from: a tokvec model's own record, else the file it was read from."""
        r = self._resolved
        if r.format == "tokvec" and isinstance(r.config.get("source"), dict):
            return r.config["source"]
        return {"format": r.format, "path": str(r.safetensors), "table": r.table}


_SAVE_FORMATS = ("tokvec", "model2vec", "sentence-transformers")
_ST_DTYPE_NAMES = {np.dtype(v): k for k, v in _NP_DTYPES.items() if k != "BF16"}


def _tensor_entry(stored: str, a: np.ndarray) -> tuple[str, list[int], bytes]:
    """`write_safetensors`' (dtype, shape, little-endian bytes) of an array; uint16 bits of a tensor `stored` as
    BF16 stay BF16, every other array is written in its own dtype."""
    a = np.ascontiguousarray(a)
    dtype = "BF16" if stored == "BF16" and a.dtype == np.uint16 else _ST_DTYPE_NAMES[a.dtype]
    return dtype, list(a.shape), a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _new_core(
    r: Resolved,
    tok: LoadedTokenizer,
    skip: Sequence[int],
    *,
    dim: int | None,
    normalize: bool,
    max_length: int | None,
    scalar: bool,
    mmap: bool,
) -> Any:
    return _core.Model(
        str(r.safetensors),
        r.table,
        weights=r.weights,
        mapping=r.mapping,
        tokenizer=tok.core,
        skip_ids=list(skip),
        dim=dim,
        normalize=normalize,
        max_length=max_length,
        scalar=scalar,
        mmap=mmap,
    )


def _signs(bits: np.ndarray, dim: int) -> np.ndarray:
    """Packed sign bits (uint64 rows, little-endian bit order) as float32 +-1, the first `dim` of each row."""
    return np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :dim].astype(np.float32) * 2 - 1


def _opt_bool(value: Any, name: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool or None, got {type(value).__name__}")
    return value


#: WordLlama's `cluster` keywords, with what tokvec.kmeans has instead (they are not aliases: the rules differ).
_WORDLLAMA_KMEANS = {
    "max_iterations": "max_iter: Lloyd iterations per restart",
    "tolerance": "tol: scikit-learn's rule, the squared center shift relative to the data's variance",
    "min_iterations": "none: iterations stop at convergence",
    "random_state": "seed: an int",
}

#: Texts pooled per core call when `encode` shows a progress bar and no batch_size is given.
_BAR_BATCH = 10_000


def _encode_options(model: Model, normalize: bool | None, kwargs: dict[str, Any]) -> tuple[bool | None, bool]:
    """Checks the keywords of sentence-transformers' and model2vec's `encode` that `Model.encode`
    takes in **kwargs. Returns (normalize, convert_to_tensor)."""
    kw = dict(kwargs)
    alias = _opt_bool(kw.pop("normalize", None), "normalize")  # model2vec's name
    if alias is not None and normalize is not None and alias != normalize:
        raise ValueError(f"normalize={alias} and normalize_embeddings={normalize} disagree; pass one of them")
    if alias is not None:
        normalize = alias
    tensor = kw.pop("convert_to_tensor", False)
    if not isinstance(tensor, bool):
        raise TypeError(f"convert_to_tensor must be a bool, got {type(tensor).__name__}")
    device = kw.pop("device", None)
    if device is not None and str(device) != "cpu":
        raise ValueError(f"device={str(device)!r}: tokvec embeds on the CPU; pass device=None or 'cpu'")
    precision = kw.pop("precision", "float32")
    if precision != "float32":
        raise ValueError(
            f"precision={precision!r}: encode returns float32 only; quantize the vectors yourself, or load the "
            f"model with binary=True for sign bits (embed() returns them packed)"
        )
    output_value = kw.pop("output_value", "sentence_embedding")
    if output_value != "sentence_embedding":
        raise ValueError(
            f"output_value={output_value!r}: a static model has one vector per text (the mean of its token rows); "
            f"only 'sentence_embedding' is available (token rows: Model.token_vector)"
        )
    if kw.pop("prompt_name", None) is not None:
        raise ValueError("prompt_name: this model has no prompts (pass prompt_name=None)")
    prompt = kw.pop("prompt", None)
    if prompt is not None and prompt != "":
        raise ValueError(
            f"prompt={prompt!r}: a prompt's tokens would join every text's mean and change its vector; tokvec "
            f"models take no prompt (prepend it to the texts yourself if that is what you want)"
        )
    truncate_dim = kw.pop("truncate_dim", None)
    if truncate_dim is not None and truncate_dim != model.dim:
        raise ValueError(
            f"truncate_dim={truncate_dim!r}: the model gives {model.dim} columns; load it with "
            f"tokvec.load(..., dim={truncate_dim!r}) for fewer (the first columns, normalized after the cut)"
        )
    if "max_length" in kw:
        max_length = kw.pop("max_length")
        if max_length != model._max_length:
            raise ValueError(
                f"max_length={max_length!r}: this model pools "
                f"{'every token' if model._max_length is None else f'at most {model._max_length} tokens'} per "
                f"text; load it with tokvec.load(..., max_length={max_length!r}) to change that"
            )
    if kw.pop("task", None) is not None:
        raise ValueError("task: this model has no task-specific modules (pass task=None)")
    if kw.pop("pool", None) is not None:
        raise ValueError("pool: tokvec runs in one process, multi-threaded in its Rust core; pass pool=None")
    for name in ("chunk_size", "multiprocessing_threshold"):
        v = kw.pop(name, None)
        if v is not None and not is_int(v):
            raise TypeError(f"{name} must be an int or None, got {type(v).__name__}")
    if not isinstance(kw.pop("use_multiprocessing", True), bool):
        raise TypeError("use_multiprocessing must be a bool")
    if kw:
        raise TypeError(
            f"encode() got an unexpected keyword argument {next(iter(kw))!r}; it takes those of "
            f"sentence-transformers' and model2vec's encode that leave the result unchanged (see help(Model.encode))"
        )
    return normalize, tensor
