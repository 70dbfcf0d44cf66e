"""Streaming text input and embedding output for batch jobs (the `tokvec` command line).

Inputs: `.txt` (one text a line), `.jsonl` (a string field), `.csv` / `.tsv` (a named column),
`.parquet` (a string column, needs the `parquet` extra), each optionally compressed as `.gz`
(Python's gzip) or `.zst` (the `zstd` extra), or `-` for stdin. Texts are read in chunks, so
memory is bounded by the chunk size, not the file size.

Outputs: `.npy`, `.safetensors`, `.parquet` and `.jsonl`, written incrementally to a temporary
file in the destination folder and renamed at the end: an interrupted job never leaves a
half-written output under the final name.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from tokvec._core import FormatError

__all__ = [
    "INPUT_FORMATS",
    "OUTPUT_FORMATS",
    "EmbeddingWriter",
    "InputError",
    "atomic_path",
    "count_texts",
    "input_format",
    "iter_texts",
    "read_all",
]

INPUT_FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet")
OUTPUT_FORMATS = ("npy", "safetensors", "parquet", "jsonl")
_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}


class InputError(FormatError):
    """An input file cannot be read as asked (missing column, bad JSON line, unreadable file).

    A `tokvec.FormatError`, hence a ValueError.
    """


def _split_suffix(path: str) -> tuple[str, str | None]:
    """Returns (format suffix without dot, compression or None) from a file name."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    comp = None
    if suffixes and suffixes[-1] in _COMPRESSION:
        comp = _COMPRESSION[suffixes[-1]]
        suffixes = suffixes[:-1]
    fmt = suffixes[-1].lstrip(".") if suffixes else ""
    return fmt, comp


def input_format(path: str, fmt: str | None = None) -> tuple[str, str | None]:
    """The input format and compression of `path` (`fmt` overrides the format, e.g. for stdin).

    Args:
        path: a file name, or `-` for stdin (format `txt` unless `fmt` is given).
        fmt: one of `INPUT_FORMATS`, or None to use the file's suffix.

    Returns:
        (format, compression) with compression `gzip`, `zstd` or None.

    Raises:
        InputError: unknown format.
    """
    if path == "-":
        f, comp = fmt or "txt", None
    else:
        f, comp = _split_suffix(path)
        f = fmt or f or "txt"
        if f not in INPUT_FORMATS:
            # an unknown suffix (.log, .text, none) is read as one text a line
            f = "txt" if fmt is None else f
    if f not in INPUT_FORMATS:
        raise InputError(f"unknown input format {f!r}; use one of {', '.join(INPUT_FORMATS)}")
    return f, comp


def _open_binary(path: str, comp: str | None) -> IO[bytes]:
    if path == "-":
        raw: IO[bytes] = sys.stdin.buffer
        head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
        if head[:2] == b"\x1f\x8b":
            return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
        if head == b"\x28\xb5\x2f\xfd":
            comp = "zstd"
        else:
            return raw
    p = Path(path)
    if path != "-":
        if p.is_dir():
            raise InputError(f"{path}: is a folder, not a file")
        if not p.exists():
            raise FileNotFoundError(f"{path}: no such file")
    if comp == "gzip":
        return gzip.open(p, "rb")  # type: ignore[return-value]
    if comp == "zstd":
        try:
            import zstandard
        except ImportError:
            raise InputError(f"{path}: reading .zst needs the zstandard package: pip install 'tokvec[zstd]'") from None
        src = sys.stdin.buffer if path == "-" else open(p, "rb")  # noqa: SIM115
        return zstandard.ZstdDecompressor().stream_reader(src, closefd=path != "-")  # type: ignore[return-value]
    return open(p, "rb")


def _text_stream(path: str, comp: str | None) -> IO[str]:
    # newline="" keeps "\r\n" inside CSV quoted fields intact; lines are stripped of "\r\n" / "\n" below
    return io.TextIOWrapper(_open_binary(path, comp), encoding="utf-8", newline="")


def _strip_eol(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1].removesuffix("\r")
    return line


def _iter_txt(fh: IO[str]) -> Iterator[str]:
    for line in fh:
        yield _strip_eol(line)


def _iter_jsonl(fh: IO[str], path: str, field: str) -> Iterator[str]:
    for n, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: not a JSON line ({e.msg})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{n}: a JSON {type(obj).__name__}, expected an object with a {field!r} field")
        if field not in obj:
            keys = ", ".join(list(obj)[:20])
            raise InputError(f"{path}:{n}: no field {field!r} (fields: {keys}); pass --field")
        v = obj[field]
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise InputError(f"{path}:{n}: field {field!r} is a {type(v).__name__}, not a string")
        yield v


def _iter_delimited(fh: IO[str], path: str, fmt: str, column: str | None) -> Iterator[str]:
    if fmt == "tsv":
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(fh)
    try:
        header = next(reader)
    except StopIteration:
        return
    if column is None:
        if len(header) != 1:
            raise InputError(f"{path}: {len(header)} columns ({', '.join(header)}); pass --column NAME")
        column = header[0]
    if column not in header:
        raise InputError(f"{path}: no column {column!r} (columns: {', '.join(header)})")
    c = header.index(column)
    for n, row in enumerate(reader, 2):
        if not row:
            continue
        if c >= len(row):
            raise InputError(f"{path}:{n}: row has {len(row)} fields, column {column!r} is field {c + 1}")
        yield row[c]


def _parquet_file(path: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow: pip install 'tokvec[parquet]'") from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 -- pyarrow raises ArrowInvalid / OSError subclasses with long messages
        raise InputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def _iter_parquet_chunks(path: str, column: str | None, chunk_size: int) -> Iterator[list[str]]:
    if path == "-":
        raise InputError("Parquet cannot be read from stdin; give a file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    pf = _parquet_file(path)
    names = pf.schema_arrow.names
    if column is None:
        if len(names) != 1:
            raise InputError(f"{path}: {len(names)} columns ({', '.join(names)}); pass --column NAME")
        column = names[0]
    if column not in names:
        raise InputError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
    import pyarrow as pa

    typ = pf.schema_arrow.field(column).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise InputError(f"{path}: column {column!r} has type {typ}, not string")
    for batch in pf.iter_batches(batch_size=chunk_size, columns=[column]):
        yield ["" if v is None else v for v in batch.column(0).to_pylist()]


def iter_texts(
    path: str,
    *,
    column: str | None = None,
    field: str | None = None,
    fmt: str | None = None,
    chunk_size: int = 32768,
) -> Iterator[list[str]]:
    """Reads texts from a file in chunks of at most `chunk_size`.

    Args:
        path: the input file, or `-` for stdin (gzip/zstd stdin is detected from its magic bytes).
        column: the column holding the text (`.csv`, `.tsv`, `.parquet`; optional when there is
            only one column). For `.jsonl` it is accepted as the field name.
        field: the JSON field holding the text (`.jsonl`, default `text`).
        fmt: force a format (one of `INPUT_FORMATS`) instead of the file suffix.
        chunk_size: texts per yielded list.

    Yields:
        lists of str, in file order. A null (JSON/Parquet) text is read as "".

    Raises:
        FileNotFoundError: the file does not exist.
        InputError: unreadable content (bad JSON line, missing column or field, bad compression,
            invalid UTF-8), with the file name and line number where known.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    f, comp = input_format(path, fmt)
    if f == "parquet":
        if comp is not None:
            raise InputError(f"{path}: Parquet is compressed internally; do not compress the file itself")
        yield from _iter_parquet_chunks(path, column, chunk_size)
        return
    fh = _text_stream(path, comp)
    try:
        if f == "jsonl":
            it = _iter_jsonl(fh, path, field or column or "text")
        elif f in ("csv", "tsv"):
            it = _iter_delimited(fh, path, f, column)
        else:
            it = _iter_txt(fh)
        chunk: list[str] = []
        try:
            for t in it:
                chunk.append(t)
                if len(chunk) >= chunk_size:
                    yield chunk
                    chunk = []
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start} of a read block)") from None
        except (EOFError, gzip.BadGzipFile) as e:
            raise InputError(f"{path}: corrupt or truncated compressed data ({e})") from None
        except csv.Error as e:
            raise InputError(f"{path}: malformed {f.upper()} ({e})") from None
        except Exception as e:
            if type(e).__module__.startswith("zstandard"):
                raise InputError(f"{path}: corrupt or truncated zstd data ({e})") from None
            raise
        if chunk:
            yield chunk
    finally:
        if path != "-":
            fh.close()
        else:
            fh.detach()


def read_all(path: str, **kw: Any) -> list[str]:
    """All texts of a file as one list (see `iter_texts` for the arguments)."""
    out: list[str] = []
    for chunk in iter_texts(path, **kw):
        out.extend(chunk)
    return out


def count_texts(path: str, *, fmt: str | None = None) -> int | None:
    """The number of texts in a file when it is cheap to know (for a progress bar's ETA).

    Uncompressed `.txt` files: newlines counted at disk speed; Parquet: the row count from its
    metadata. Other inputs (compressed, stdin, JSONL with blank lines, CSV with quoted newlines):
    None.
    """
    if path == "-":
        return None
    try:
        f, comp = input_format(path, fmt)
        if f == "parquet":
            return int(_parquet_file(path).metadata.num_rows)
        if f != "txt" or comp is not None:
            return None
        n, last = 0, b"\n"
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                n += block.count(b"\n")
                last = block[-1:]
        return n + (last != b"\n")
    except (OSError, ValueError):
        return None


def atomic_path(path: str | os.PathLike[str]) -> Path:
    """A temporary file name beside `path` (same folder, so the final rename is atomic)."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{out}: folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    # mkstemp creates the file 0600; the final file gets the usual permissions (0666 minus the umask)
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_format(path: str, allowed: tuple[str, ...] = OUTPUT_FORMATS) -> str:
    """The output format from a file suffix.

    Raises:
        InputError: the suffix is not one of `allowed`.
    """
    fmt, comp = _split_suffix(path)
    if comp is not None or fmt not in allowed:
        raise InputError(
            f"{path}: unknown output format; the file name must end in {', '.join('.' + a for a in allowed)}"
        )
    return fmt


_NPY_HEADER = 128  # bytes reserved for the .npy header (magic + length + dict, padded)
_ST_HEADER = 512  # bytes reserved for the safetensors JSON header


def _npy_header(n: int, d: int) -> bytes:
    h = repr({"descr": "<f4", "fortran_order": False, "shape": (n, d)}).encode()
    body = _NPY_HEADER - 10
    if len(h) + 1 > body:
        raise ValueError(f"shape ({n}, {d}) does not fit the reserved .npy header")
    return b"\x93NUMPY\x01\x00" + body.to_bytes(2, "little") + h + b" " * (body - len(h) - 1) + b"\n"


def _st_header(n: int, d: int, metadata: dict[str, str]) -> bytes:
    hdr = {"__metadata__": metadata, "embeddings": {"dtype": "F32", "shape": [n, d], "data_offsets": [0, n * d * 4]}}
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if len(h) > _ST_HEADER:
        raise ValueError("metadata too long for the reserved safetensors header")
    return _ST_HEADER.to_bytes(8, "little") + h + b" " * (_ST_HEADER - len(h))


class EmbeddingWriter:
    """Writes float32 embeddings (and optionally their texts) chunk by chunk to a temporary file,
    renamed to the destination by `close()`; `abort()` (or an exception inside a `with` block)
    deletes it. Memory stays bounded by one chunk.

    Formats: `.npy` (float32 (n, d)), `.safetensors` (tensor `embeddings` F32 [n, d]),
    `.parquet` (columns `text` and `embedding`, a fixed-size list of float32), `.jsonl`
    (`{"text": ..., "embedding": [...]}` a line). The shape in the `.npy` and `.safetensors`
    headers is written once the row count is known (the header space is reserved up front).
    """

    def __init__(self, path: str, dim: int, metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.format = output_format(path)
        self.dim = dim
        self.n = 0
        self._meta = dict(metadata or {})
        self._tmp = atomic_path(path)
        self._fh: Any = None
        self._pq: Any = None
        if self.format in ("npy", "safetensors", "jsonl"):
            self._fh = open(self._tmp, "wb")  # noqa: SIM115
            if self.format == "npy":
                self._fh.write(b"\0" * _NPY_HEADER)
            elif self.format == "safetensors":
                self._fh.write(b"\0" * (8 + _ST_HEADER))
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                self._tmp.unlink(missing_ok=True)
                raise InputError(f"{path}: writing Parquet needs pyarrow: pip install 'tokvec[parquet]'") from None
            self._pa = pa
            self._schema = pa.schema(
                [("text", pa.string()), ("embedding", pa.list_(pa.float32(), dim))],
                metadata={k.encode(): v.encode() for k, v in self._meta.items()},
            )
            self._pq = pq.ParquetWriter(self._tmp, self._schema)

    def write(self, E: np.ndarray, texts: list[str] | None = None) -> None:
        """Appends a chunk of embeddings (n, dim) and, for .parquet / .jsonl, their texts."""
        E = np.ascontiguousarray(E, dtype="<f4")
        if E.ndim != 2 or E.shape[1] != self.dim:
            raise ValueError(f"expected ({'n'}, {self.dim}) embeddings, got {E.shape}")
        if self.format in ("npy", "safetensors"):
            self._fh.write(E.tobytes())
        elif self.format == "jsonl":
            ts = texts if texts is not None else [None] * len(E)
            lines = [
                json.dumps({"text": t, "embedding": row}, ensure_ascii=False) + "\n" for t, row in zip(ts, E.tolist())
            ]
            self._fh.write("".join(lines).encode("utf-8"))
        else:
            pa = self._pa
            emb = pa.FixedSizeListArray.from_arrays(pa.array(E.reshape(-1), pa.float32()), self.dim)
            txt = pa.array(texts if texts is not None else [None] * len(E), pa.string())
            self._pq.write_batch(pa.record_batch([txt, emb], schema=self._schema))
        self.n += len(E)

    def close(self) -> Path:
        """Finishes the file (final header) and renames it to the destination."""
        if self.format == "npy":
            self._fh.seek(0)
            self._fh.write(_npy_header(self.n, self.dim))
        elif self.format == "safetensors":
            self._fh.seek(0)
            self._fh.write(_st_header(self.n, self.dim, self._meta))
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        if self._pq is not None:
            self._pq.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Closes and deletes the temporary file; the destination is left untouched."""
        try:
            if self._fh is not None:
                self._fh.close()
            if self._pq is not None:
                self._pq.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddingWriter:  # noqa: PYI034
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Calls `write(tmp)` on a temporary file beside `path`, then renames it to `path`.

    On any exception (including KeyboardInterrupt) the temporary file is deleted and the
    destination is left untouched.
    """
    tmp = atomic_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Path(path)


def write_lines(path: str | os.PathLike[str], lines: Iterator[str] | list[str]) -> Path:
    """Writes lines (each ending in a newline already) atomically as UTF-8."""

    def w(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.writelines(lines)

    return write_atomic(path, w)
