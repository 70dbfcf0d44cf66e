"""From an LLM checkpoint to a tokvec model: `inspect` (headers only) and `extract`.

Sources:

- a folder with `model.safetensors`, or shards with `model.safetensors.index.json` (its
  `weight_map` says which shard holds the table: only that shard is opened for extraction);
- a single `.safetensors` file;
- a GGUF file (llama.cpp), F32/F16/BF16/F64 or quantized Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
  Q6_K (dequantized in Rust). Its tokenizer is rebuilt from the GGUF metadata when no
  `tokenizer.json` sits next to it (`gpt2` byte-level BPE and `llama` SentencePiece BPE models).

Pickled checkpoints (`.bin`, `.pt`, ...) are refused: they are never unpickled.

The table is found by name (`embed_tokens`, `word_embeddings`, `wte`, `tok_embeddings`,
`token_embd`, `embeddings.weight`, `embedding.weight`, ...) or, failing that, by shape (a 2-D tensor
whose row count is at least the tokenizer's vocabulary and close to it). A tied `lm_head` /
`output.weight` is used when it is the only such tensor. Several candidates are an error that lists
them and asks for `key=`.

Rows vs vocabulary: models often have more rows than the tokenizer has ids (padding rows, e.g.
Qwen2 and Llama-3 style checkpoints). They are kept by default (the output loads and embeds the
same), or dropped with `trim=True`. A tokenizer producing ids at or above the row count is an error.

Only the table's bytes are read (memory-mapped), converted in chunks by the Rust core, and written
to the output as they are converted; source pages are released after each chunk, so memory stays
flat whatever the table's size. `pca=True, dim=N` projects the centered table on its top N principal
components, computed from the d × d covariance accumulated chunk by chunk (never a V × V matrix).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokvec import _core
from tokvec._core import FormatError
from tokvec._io import read_tensor, write_model_folder
from tokvec._pca import components
from tokvec._validate import is_int
from tokvec.config import FORMAT_VERSION
from tokvec.formats import PICKLE_SUFFIXES, detect_table, table_by_name
from tokvec.tokenizer import core_reason, read_tokenizer

__all__ = ["inspect", "extract", "SourceInfo", "TensorInfo"]

INDEX_NAME = "model.safetensors.index.json"
#: Bytes of converted output per chunk (plain conversion) / of float32 per chunk (PCA, concat, center).
CHUNK_BYTES = 32 << 20
F32_CHUNK_BYTES = 32 << 20

_DTYPE_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4,
                "I64": 8, "U64": 8, "BOOL": 1, "F8_E5M2": 1, "F8_E4M3": 1}


@dataclass
class TensorInfo:
    """One tensor of a checkpoint, from its header."""

    name: str
    dtype: str
    shape: list[int]
    nbytes: int
    file: str


@dataclass
class SourceInfo:
    """What `inspect` finds in a checkpoint (headers only)."""

    path: str
    format: str
    files: list[str]
    tensors: list[TensorInfo]
    key: str | None
    key_error: str | None = None
    tokenizer: str | None = None
    vocab_size: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: why the tokenizer found (or given) cannot be used, naming its file; None when it can, or when there is none
    tokenizer_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return asdict(self)

    def __str__(self) -> str:
        total = sum(t.nbytes for t in self.tensors)
        lines = [
            f"path:       {self.path}",
            f"format:     {self.format} ({len(self.files)} file{'s' if len(self.files) != 1 else ''}, "
            f"{len(self.tensors)} tensors, {_human(total)} of tensor data)",
        ]
        if self.key is not None:
            t = next(t for t in self.tensors if t.name == self.key)
            lines.append(f"embeddings: {self.key}  {t.dtype} {t.shape}  ({_human(t.nbytes)}, in {t.file})")
        else:
            lines.append(f"embeddings: not detected: {self.key_error}")
        if self.tokenizer is not None:
            rows = next((t.shape[0] for t in self.tensors if t.name == self.key), None)
            extra = ""
            if rows is not None and self.vocab_size is not None:
                if rows > self.vocab_size:
                    extra = f" ({rows - self.vocab_size} table rows beyond the vocabulary: kept, or dropped with --trim)"
                elif rows < self.vocab_size:
                    extra = f" (MORE ids than the table's {rows} rows: this tokenizer does not match)"
            lines.append(f"tokenizer:  {self.tokenizer}, {self.vocab_size} ids{extra}")
        elif self.tokenizer_error is not None:
            lines.append(f"tokenizer:  found but unusable: {self.tokenizer_error}")
        else:
            lines.append("tokenizer:  none found (pass --tokenizer path/to/tokenizer.json)")
        w = max([len(t.name) for t in self.tensors] + [4])
        lines.append("tensors:")
        lines.append(f"  {'name':<{w}}  {'dtype':<7} {'shape':<22} {'bytes':>12}")
        for t in self.tensors:
            lines.append(f"  {t.name:<{w}}  {t.dtype:<7} {str(t.shape):<22} {t.nbytes:>12,}")
        return "\n".join(lines)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


# ------------------------------------------------------------------------------------------------ sources
@dataclass
class _Source:
    """A located checkpoint: its format, its files and a way to list tensors / open the table."""

    path: Path
    format: str  # "safetensors" | "safetensors-sharded" | "gguf"
    files: list[Path]
    weight_map: dict[str, str] | None = None  # sharded: tensor -> shard file name
    index: Path | None = None
    gguf: Any = None  # _core.GgufFile
    tokenizer_path: Path | None = None

    def tensors(self, only: Path | None = None) -> list[TensorInfo]:
        out: list[TensorInfo] = []
        if self.gguf is not None:
            for name, (ty, shape, nbytes) in self.gguf.tensors().items():
                out.append(TensorInfo(name, ty, list(shape), int(nbytes), self.files[0].name))
            return out
        for f in [only] if only is not None else self.files:
            for name, (dt, shape) in _core.SafetensorsFile(f).tensors().items():
                n = int(np.prod(shape, dtype=np.int64)) * _DTYPE_SIZES.get(dt, 0)
                out.append(TensorInfo(name, dt, list(shape), n, f.name))
        return out


def _read_index(index: Path) -> dict[str, str]:
    def no_dups(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k, v in pairs:
            if k in d:
                raise FormatError(f"{index}: tensor {k!r} is listed twice in the index (two shards claim it)")
            d[k] = v
        return d

    try:
        data = json.loads(index.read_text(encoding="utf-8"), object_pairs_hook=no_dups)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{index}: not valid JSON ({e})") from None
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
        raise FormatError(f"{index}: 'weight_map' must map tensor names to shard file names")
    return wm


def _refuse_pickle(p: Path) -> None:
    raise FormatError(
        f"{p}: pickle checkpoints ({p.suffix}) are never unpickled by tokvec (loading them can run code); "
        "use the model's .safetensors or .gguf files"
    )


def _is_gguf(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def _locate(path: str | os.PathLike[str], tokenizer: str | os.PathLike[str] | None = None) -> _Source:
    p = Path(path).expanduser()
    if not p.exists():
        if p.is_symlink():
            raise FileNotFoundError(f"{p}: a symbolic link that leads nowhere (dangling, or a loop of links)")
        raise FileNotFoundError(f"{p}: no such file or folder")
    src: _Source
    if p.is_dir():
        index = p / INDEX_NAME
        if (p / "model.safetensors").is_file():
            src = _Source(p, "safetensors", [p / "model.safetensors"])
        elif index.is_file():
            src = _sharded(p, index)
        else:
            ggufs = sorted(x for x in p.iterdir() if x.suffix.lower() == ".gguf")
            sts = sorted(x for x in p.iterdir() if x.suffix.lower() == ".safetensors")
            if len(ggufs) == 1 and not sts:
                src = _Source(ggufs[0], "gguf", [ggufs[0]])
            elif len(sts) == 1 and not ggufs:
                src = _Source(sts[0], "safetensors", [sts[0]])
            elif ggufs or sts:
                names = ", ".join(x.name for x in ggufs + sts)
                raise FormatError(f"{p}: several checkpoint files ({names}); pass one file")
            else:
                pickles = [x.name for x in p.iterdir() if x.suffix.lower() in PICKLE_SUFFIXES]
                hint = f" (found {', '.join(pickles)}: pickles are never loaded)" if pickles else ""
                raise FormatError(f"{p}: no model.safetensors, {INDEX_NAME} or .gguf file in this folder{hint}")
        folder = p
    else:
        s = p.suffix.lower()
        if s in PICKLE_SUFFIXES:
            _refuse_pickle(p)
        if p.name.endswith(".index.json"):
            src = _sharded(p.parent, p)
        elif s == ".gguf" or _is_gguf(p):
            src = _Source(p, "gguf", [p])
        elif s == ".safetensors":
            src = _Source(p, "safetensors", [p])
        else:
            raise FormatError(f"{p}: expected a .safetensors or .gguf file, a shard index or a model folder")
        folder = p.parent
    if src.format == "gguf":
        src.gguf = _core.GgufFile(src.files[0])
    if tokenizer is not None:
        src.tokenizer_path = Path(tokenizer).expanduser()
        if src.tokenizer_path.is_dir():
            raise IsADirectoryError(f"{src.tokenizer_path}: a folder, not a tokenizer JSON file")
        if not src.tokenizer_path.is_file():
            raise FileNotFoundError(f"{src.tokenizer_path}: tokenizer file not found")
    elif (folder / "tokenizer.json").is_file() or (folder / "tokenizer.json").is_dir():  # a folder is reported
        src.tokenizer_path = folder / "tokenizer.json"
    return src


def _sharded(folder: Path, index: Path) -> _Source:
    wm = _read_index(index)
    root = folder.resolve()
    files = []
    for name in dict.fromkeys(wm.values()):
        f = (folder / name).resolve()
        if root not in f.parents:
            raise FormatError(f"{index}: shard {name!r} lies outside the model folder")
        files.append(folder / name)
    return _Source(folder, "safetensors-sharded", files, weight_map=wm, index=index)


# ------------------------------------------------------------------------------------------------ tokenizer
@dataclass
class _Tok:
    json: str
    origin: str  # human-readable: where it came from
    id_limit: int


def _tokenizer(src: _Source, required: bool) -> _Tok | None:
    if src.tokenizer_path is not None:
        core = read_tokenizer(src.tokenizer_path)
        return _Tok(str(core.json), str(src.tokenizer_path), int(core.id_limit))
    if src.gguf is not None:
        from tokvec.gguf_tokenizer import tokenizer_json_from_gguf

        md = src.gguf.metadata()
        if "tokenizer.ggml.model" in md or required:
            js = tokenizer_json_from_gguf(md, source=str(src.files[0]))
            try:
                core = _core.Tokenizer(js, False)
            except _core.TokenizerError as e:
                raise _core.TokenizerError(
                    f"{src.files[0]}: its tokenizer metadata does not make a valid tokenizer "
                    f"({core_reason(str(e), position=False)}); pass the model's tokenizer.json with tokenizer='...'"
                ) from None
            model, pre = md.get("tokenizer.ggml.model"), md.get("tokenizer.ggml.pre")
            origin = f"GGUF metadata ({model}{f', pre={pre}' if pre else ''})"
            return _Tok(js, origin, int(core.id_limit))
    if required:
        raise FormatError(
            f"{src.path}: no tokenizer.json next to the checkpoint; pass tokenizer='path/to/tokenizer.json' "
            "(the model's own tokenizer)"
        )
    return None


# ------------------------------------------------------------------------------------------------ key detection
def _detect_key(shapes: dict[str, list[int]], vocab: int | None, where: str) -> str:
    return detect_table(shapes, where, vocab=vocab, arg="key='<name>' (--key on the command line)")


def _find_key(src: _Source, vocab: int | None, key: str | None) -> tuple[str, Path]:
    """The table's name and the file holding it (for shards: only the shard that holds it is opened)."""
    where = str(src.index or src.files[0])
    if src.weight_map is not None:
        if key is None:
            # by name first (the index alone), by shape only if the names say nothing
            by_name = table_by_name(src.weight_map)
            if len(by_name) == 1:
                key = by_name[0]
            else:
                shapes = {t.name: t.shape for t in src.tensors()}
                key = _detect_key(shapes, vocab, where)
        if key not in src.weight_map:
            raise FormatError(f"{where}: no tensor named {key!r} in the index's weight_map")
        shard = src.path / src.weight_map[key]
        if not shard.is_file():
            raise FormatError(f"{where}: shard {src.weight_map[key]!r} (which holds {key!r}) does not exist")
        have = _core.SafetensorsFile(shard).tensors()
        if key not in have:
            raise FormatError(f"{shard}: the index says this shard holds {key!r}, but it has no such tensor")
        if len(have[key][1]) != 2:
            raise FormatError(f"{shard}: tensor {key!r} has shape {have[key][1]}: an embedding table is 2-D [vocab, dim]")
        return key, shard
    shapes = {t.name: t.shape for t in src.tensors()}
    if key is None:
        key = _detect_key(shapes, vocab, where)
    if key not in shapes:
        listed = ", ".join(sorted(shapes)[:20]) + (", ..." if len(shapes) > 20 else "")
        raise FormatError(f"{where}: no tensor named {key!r} (the file has: {listed})")
    if len(shapes[key]) != 2:
        raise FormatError(f"{where}: tensor {key!r} has shape {shapes[key]}: an embedding table is 2-D [vocab, dim]")
    return key, src.files[0]


# ------------------------------------------------------------------------------------------------ inspect
def inspect(
    path: str | os.PathLike[str], *, key: str | None = None, tokenizer: str | os.PathLike[str] | None = None
) -> SourceInfo:
    """Describes a checkpoint from its headers: tensors, the detected embedding table, the tokenizer.

    Reads headers only (safetensors headers, the shard index, the GGUF header): instant on a
    checkpoint of any size.

    Args:
        path: a model folder, a `.safetensors` / `.gguf` file, or a shard index.
        key: the table's name, to check it instead of detecting it.
        tokenizer: a tokenizer JSON to use instead of the one found next to the checkpoint.

    Returns:
        a `SourceInfo` (`str()` of it is the `tokvec info` report).

    Raises:
        FileNotFoundError: the path does not exist.
        FormatError: a malformed file or index, or a pickle checkpoint.

    A tokenizer that is found (or given) but cannot be read or built does not raise: the report says why, naming
    the file (`SourceInfo.tokenizer_error`).
    """
    src = _locate(path, tokenizer)
    tensors = src.tensors()
    tok = None
    tok_err = None
    try:
        tok = _tokenizer(src, required=False)
    except (FormatError, _core.TokenizerError) as e:
        tok_err = str(e)
    except OSError as e:  # a tokenizer.json that is a folder or cannot be read: the rest can still be described
        tok_err = f"{e.filename}: {e.strerror}" if e.filename else str(e)
    vocab = tok.id_limit if tok is not None else None
    found, err = None, None
    try:
        where = str(src.index or src.files[0])
        shapes = {t.name: t.shape for t in tensors}
        if key is not None:
            if key not in shapes:
                raise FormatError(f"{where}: no tensor named {key!r}")
            found = key
        else:
            found = _detect_key(shapes, vocab, where)
    except FormatError as e:
        err = str(e)
    md: dict[str, Any] = {}
    if src.gguf is not None:
        md = {k: v for k, v in src.gguf.metadata().items() if not isinstance(v, (list, np.ndarray))}
        md["gguf.version"] = src.gguf.version
    return SourceInfo(
        str(src.path), src.format, [str(f) for f in src.files], tensors, found, err,
        tok.origin if tok is not None else None, vocab, md, tok_err,
    )


# ------------------------------------------------------------------------------------------------ extract
def _sha256_range(path: str, start: int, end: int, out: list[str], errors: list[BaseException]) -> None:
    """sha256 of bytes [start, end) of a file, read through a map whose pages are released as it goes."""
    try:
        h = hashlib.sha256()
        if end > start:
            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                with memoryview(mm) as mv:
                    pos = start
                    while pos < end:
                        n = min(CHUNK_BYTES, end - pos)
                        h.update(mv[pos : pos + n])
                        a = pos - pos % mmap.PAGESIZE
                        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                            mm.madvise(mmap.MADV_DONTNEED, a, pos + n - a)
                        pos += n
        out.append(h.hexdigest())
    except BaseException as e:  # noqa: BLE001 - re-raised by the caller
        errors.append(e)


def _default_dtype(codec: str) -> str:
    if codec in ("F16", "BF16", "F32"):
        return codec
    return "F32" if codec == "F64" else "F16"


def _check_dtype(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    if not isinstance(dtype, str) or dtype.upper() not in ("F16", "BF16", "F32"):
        raise ValueError(f"dtype must be 'f16', 'bf16' or 'f32', got {dtype!r}")
    return dtype.upper()


def _same_vocab(a: str, b: str) -> str | None:
    """None when the two tokenizer JSONs have the same token -> id map, else a description of a difference."""
    from tokenizers import Tokenizer

    va = Tokenizer.from_str(a).get_vocab(with_added_tokens=True)
    vb = Tokenizer.from_str(b).get_vocab(with_added_tokens=True)
    if va == vb:
        return None
    if len(va) != len(vb):
        return f"{len(va)} vs {len(vb)} tokens"
    diff = next(t for t in sorted(va) if vb.get(t) != va[t])
    return f"token {diff!r} has id {va[diff]} vs {vb.get(diff)}"


@dataclass
class _Opened:
    src: _Source
    key: str
    file: Path
    table: Any  # _core.Table
    tok: _Tok
    #: per-token weights of a tokvec / model2vec source (its `weights` tensor), float32 [rows], or None
    weights: np.ndarray | None = None


def _open_table(path: str | os.PathLike[str], key: str | None, tokenizer: str | os.PathLike[str] | None) -> _Opened:
    src = _locate(path, tokenizer)
    tok = _tokenizer(src, required=True)
    assert tok is not None  # required=True raises instead
    k, f = _find_key(src, tok.id_limit, key)
    table = _core.Table(f, k, "gguf" if src.format == "gguf" else "safetensors")
    weights = _source_weights(f, k, int(table.rows), src.format)
    if tok.id_limit > table.rows:
        raise FormatError(
            f"{f}: the tokenizer ({tok.origin}) has ids up to {tok.id_limit - 1} but table {k!r} has {table.rows} rows: "
            "this tokenizer does not belong to this table (pass the matching tokenizer.json)"
        )
    return _Opened(src, k, f, table, tok, weights)


def _source_weights(f: Path, key: str, rows: int, fmt: str) -> np.ndarray | None:
    """The `weights` tensor of a tokvec / model2vec model (SIF-style per-token weights that pooling multiplies
    each row by), so extraction keeps what the source embeds; a `mapping` (model2vec's vocabulary quantization,
    rows shared by several ids) is refused rather than extracted as if rows were ids."""
    if fmt == "gguf" or key != "embeddings":
        return None
    sf = _core.SafetensorsFile(f)
    info = sf.tensors()
    if "mapping" in info:
        raise FormatError(
            f"{f}: the model maps token ids to shared rows (a 'mapping' tensor); extract reads rows as token ids, "
            "so it cannot convert this model: use tokvec.load(path).save(out) to copy it"
        )
    if "weights" not in info:
        return None
    dt, shape = info["weights"]
    if list(shape) != [rows] or dt not in ("F16", "F32", "F64"):
        raise FormatError(f"{f}: tensor 'weights' has dtype {dt} and shape {list(shape)}; expected float [{rows}]")
    w = read_tensor(sf, "weights").astype(np.float32)
    if not np.isfinite(w).all():
        raise FormatError(f"{f}: tensor 'weights' holds NaN or Inf values")
    return w



def _provenance(o: _Opened, sha: str) -> dict[str, Any]:
    start, end = o.table.byte_range
    d: dict[str, Any] = {
        "format": o.src.format,
        "path": str(o.src.path),
        "files": [str(o.file)] + ([str(o.src.index)] if o.src.index else []),
        "key": o.key,
        "dtype": o.table.dtype,
        "shape": [int(o.table.rows), int(o.table.cols)],
        "sha256": sha,
        "sha256_of": f"bytes {start}..{end} of {o.file.name} (the tensor's data)",
        "tokenizer": o.tok.origin,
    }
    if o.src.gguf is not None:
        md = o.src.gguf.metadata()
        for k in ("general.name", "general.architecture", "general.license", "tokenizer.ggml.model", "tokenizer.ggml.pre"):
            if isinstance(md.get(k), (str, int, float)):
                d[k] = md[k]
    return d


def extract(
    src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    key: str | None = None,
    dtype: str | None = None,
    dim: int | None = None,
    pca: bool = False,
    center: bool = False,
    trim: bool = False,
    tokenizer: str | os.PathLike[str] | None = None,
) -> Path:
    """Extracts the token-embedding table of a checkpoint into a tokvec model folder.

    Args:
        src: a model folder, `.safetensors` / `.gguf` file or shard index; a list of several
            ("supercat") concatenates their tables along the dimension: they must share one
            tokenizer (same token -> id map, checked), and the output keeps the smallest row count.
            A tokvec / model2vec source's per-token `weights` are kept as they are (one source) or
            multiplied into that source's rows (several sources), so the output embeds as the sources did.
        out: the folder to create (must not exist, or be empty): `model.safetensors`
            (`embeddings`), `tokenizer.json`, `config.json` with provenance.
        key: the table's tensor name, when detection is ambiguous (applies to every source).
        dtype: "f16", "bf16" or "f32". Default: the source's dtype when it is one of these, f32
            for f64 sources, f16 for quantized GGUF tables.
        dim: with `pca=True`, the number of principal components kept.
        pca: project the centered table on its top `dim` principal components.
        center: subtract the mean row (implied by `pca`).
        trim: drop rows beyond the tokenizer's vocabulary (kept by default).
        tokenizer: a tokenizer JSON, instead of the `tokenizer.json` next to the checkpoint (or the
            one rebuilt from GGUF metadata).

    Returns:
        the output folder; `tokvec.load(out)` opens it.

    Raises:
        FileNotFoundError: a source, or the folder `out` is to be made in, does not exist.
        FileExistsError: `out` exists and is not an empty folder.
        NotADirectoryError: the parent of `out` is a file.
        PermissionError: no permission to create a folder beside `out`.
        FormatError: malformed or truncated files, an ambiguous or missing table, a tokenizer that
            does not fit the table, NaN/Inf rows (listed), an unsupported quantization.
        ValueError: inconsistent options.
    """
    srcs = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    if not srcs:
        raise ValueError("no source given")
    out_path = Path(out).expanduser()
    dtype = _check_dtype(dtype)
    if not isinstance(pca, bool) or not isinstance(center, bool) or not isinstance(trim, bool):
        raise TypeError("pca, center and trim must be bools")
    if dim is not None and (not is_int(dim) or dim < 1):
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if pca and dim is None:
        raise ValueError("pca=True needs dim=N, the number of components to keep")
    if dim is not None and not pca:
        raise ValueError("dim=N needs pca=True (to keep the first N columns instead, use tokvec.load(path, dim=N))")

    def fill(tmp: Path) -> None:
        threads: list[threading.Thread] = []
        try:
            _fill(tmp, threads)
        finally:  # the hashing threads read the sources: they end before the folder is renamed or removed
            for t in threads:
                t.join()

    def _fill(tmp: Path, threads: list[threading.Thread]) -> None:
        opened = [_open_table(s, key, tokenizer) for s in srcs]
        first = opened[0]
        for o in opened[1:]:
            diff = _same_vocab(first.tok.json, o.tok.json)
            if diff is not None:
                raise FormatError(
                    f"{o.src.path}: its tokenizer differs from {first.src.path}'s ({diff}); "
                    "concatenated tables must share one tokenizer"
                )
        vocab = first.tok.id_limit
        rows = vocab if trim else min(int(o.table.rows) for o in opened)
        cols_in = sum(int(o.table.cols) for o in opened)
        if dim is not None and dim > cols_in:
            raise ValueError(f"dim={dim} (--dim) is larger than the table's {cols_in} columns")
        out_dtype = dtype or _default_dtype(first.table.dtype)
        cols_out = dim if pca else cols_in
        # Per-token weights: one source keeps them as its `weights` tensor; several sources each have their own,
        # which one vector cannot hold, so each source's rows are multiplied by its weights (pooling is
        # sum(w[t] * row[t]) / n, so each part then pools as its source did) and the output has none.
        weighted = [i for i, o in enumerate(opened) if o.weights is not None]
        carry = first.weights[:rows] if len(opened) == 1 and weighted else None
        bake = len(opened) > 1 and bool(weighted)
        if carry is not None:
            weights_note = "kept (the source's per-token weights)"
        elif bake:
            weights_note = f"multiplied into the rows of {', '.join(map(str, weighted))} (sources by position)"
        else:
            weights_note = None

        # sha256 of each source tensor's bytes, in background threads (hashlib releases the GIL)
        shas: list[list[str]] = [[] for _ in opened]
        errs: list[BaseException] = []
        for o, box in zip(opened, shas):
            a, b = o.table.byte_range
            t = threading.Thread(target=_sha256_range, args=(str(o.file), a, b, box, errs), daemon=True)
            t.start()
            threads.append(t)

        info: dict[str, Any] = {}
        with open(tmp / "model.safetensors", "wb") as fh:
            _write_header(fh, rows, cols_out, out_dtype, weights=carry is not None)
            try:
                if len(opened) == 1 and not (pca or center):
                    _copy_rows(fh, first.table, rows, out_dtype)
                else:
                    info = _transform_rows(fh, opened, rows, out_dtype, dim if pca else None, center or pca, bake)
                if carry is not None:
                    fh.write(np.ascontiguousarray(carry, dtype="<f4").tobytes())
            except FormatError as e:
                _raise_all_nonfinite(opened, rows, e)
                raise
        for t in threads:
            t.join()
        if errs:
            raise errs[0]
        (tmp / "tokenizer.json").write_text(first.tok.json, encoding="utf-8")
        prov = [_provenance(o, box[0]) for o, box in zip(opened, shas)]
        cfg = {
            "format": "tokvec",
            "format_version": FORMAT_VERSION,
            "table": "embeddings",
            "dim": cols_out,
            "normalize": True,
            "pooling": "mean",
            "add_special_tokens": False,
            "source": prov[0] if len(prov) == 1 else {"concat": prov},
            "extract": {
                "tool": "tokvec",
                "version": _core.__version__,
                "dtype": out_dtype,
                "rows": rows,
                "source_rows": [int(o.table.rows) for o in opened],
                "vocab_size": vocab,
                "trim": trim,
                "center": center or pca,
                "pca": info.get("pca"),
                "weights": weights_note,
            },
        }
        lic = next((p.get("general.license") for p in prov if p.get("general.license")), None)
        if lic:
            cfg["license"] = lic
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return write_model_folder(out_path, fill)


def _write_header(fh: Any, rows: int, cols: int, dtype: str, *, weights: bool = False) -> None:
    """The safetensors header: `embeddings` [rows, cols], then (with `weights`) `weights` F32 [rows] after it."""
    size = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    end = rows * cols * size
    header: dict[str, Any] = {
        "__metadata__": {"format": "tokvec"},
        "embeddings": {"dtype": dtype, "shape": [rows, cols], "data_offsets": [0, end]},
    }
    if weights:
        header["weights"] = {"dtype": "F32", "shape": [rows], "data_offsets": [end, end + 4 * rows]}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    fh.write(len(h).to_bytes(8, "little"))
    fh.write(h)


def _raise_all_nonfinite(opened: list[_Opened], rows: int, err: FormatError) -> None:
    """A chunked read stops at the first chunk with NaN/Inf rows; rescan so the error lists them all."""
    if "NaN or Inf" not in str(err):
        return
    for o in opened:
        bad = o.table.nonfinite_rows(0, rows)
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
            raise FormatError(
                f'{o.file}: table "{o.table.name}": {len(bad)} row(s)'
                f" hold NaN or Inf values (row ids {shown})"
            ) from None


def _copy_rows(fh: Any, table: Any, rows: int, dtype: str) -> None:
    """Plain conversion: each chunk is converted in Rust (GIL released) and written at once."""
    size = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    step = max(1, CHUNK_BYTES // (int(table.cols) * size))
    for a in range(0, rows, step):
        b = min(rows, a + step)
        fh.write(table.read_bytes(a, b, dtype))


def _read_concat(opened: list[_Opened], a: int, b: int, bake: bool = False) -> np.ndarray:
    """Rows a..b of the sources side by side, float32; with `bake`, each source's rows times its weights."""
    parts = [o.table.read_f32(a, b) for o in opened]
    if bake:
        parts = [p if o.weights is None else p * o.weights[a:b, None] for p, o in zip(parts, opened)]
    return parts[0] if len(parts) == 1 else np.ascontiguousarray(np.hstack(parts))


def _transform_rows(
    fh: Any, opened: list[_Opened], rows: int, dtype: str, pca_dim: int | None, center: bool, bake: bool = False
) -> dict[str, Any]:
    cols = sum(int(o.table.cols) for o in opened)
    step = max(1, F32_CHUNK_BYTES // (cols * 4))
    info: dict[str, Any] = {}
    mean = None
    if center:
        acc = np.zeros(cols, np.float64)
        for a in range(0, rows, step):
            acc += _read_concat(opened, a, min(rows, a + step), bake).sum(axis=0, dtype=np.float64)
        mean = (acc / max(rows, 1)).astype(np.float32)
    proj = None
    if pca_dim is not None:
        assert mean is not None
        # d x d covariance of the centered rows, accumulated chunk by chunk (float32 GEMM per chunk,
        # float64 accumulation); never a V x V matrix.
        cov = np.zeros((cols, cols), np.float64)
        for a in range(0, rows, step):
            x = _read_concat(opened, a, min(rows, a + step), bake) - mean
            cov += x.T @ x
        cov /= max(rows - 1, 1)
        evals, proj = components(cov)
        proj = np.ascontiguousarray(proj[:, :pca_dim].astype(np.float32))
        total = float(np.clip(evals, 0, None).sum())
        kept = float(np.clip(evals[:pca_dim], 0, None).sum())
        info["pca"] = {"dim": pca_dim, "from_dim": cols, "explained_variance": round(kept / total, 6) if total else 1.0}
    for a in range(0, rows, step):
        b = min(rows, a + step)
        x = _read_concat(opened, a, b, bake)
        if mean is not None:
            x = x - mean
        if proj is not None:
            x = x @ proj
        fh.write(_core.encode_table(np.ascontiguousarray(x, np.float32), dtype, a))
    return info
