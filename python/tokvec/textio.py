"""Streaming text input and output for batch jobs (the `tokvec` command line).

Inputs: `.txt` (one text a line), `.jsonl` (a string field), `.csv` / `.tsv` (a named column),
`.parquet` (a string column, needs the `parquet` extra), each optionally compressed as `.gz`
(Python's gzip) or `.zst` (the `zstd` extra), or `-` for stdin. Texts are read in chunks, so
memory is bounded by the chunk size, not the file size.

Rows. Every text has a 0-based input row number: the line of a `.txt` / `.jsonl` file, the data
record of a `.csv` / `.tsv` file (the header is not a row), the row of a Parquet file. Blank lines
are rows too: in a `.txt` file a blank line is an empty text; in `.jsonl`, `.csv` and `.tsv` it
holds no record, so it gives no text, but it is counted, so the rows after it keep their numbers.

Reading rules, the same in every format: lines end at `\\n` only (`\\r\\n` is stripped, a lone `\\r`
stays inside the text); a UTF-8 byte-order mark at the start of the input is dropped; invalid
UTF-8 is an error naming the file and line (or, with `encoding_errors="replace"`, U+FFFD and a
count); a CSV/TSV row with another number of fields than the header is an error naming the line;
CSV fields have no size limit.

Records. `Input.copy_rows` writes chosen rows of the input *whole*, in the input's own format:
`.txt`, `.jsonl`, `.csv` and `.tsv` rows byte for byte as read (with the header, and the input's
byte-order mark if it had one), Parquet rows with the input's schema, row group by row group. It
reads the input a second time (stdin is kept in an anonymous temporary file meanwhile) and fails if
the file changed in between.

Outputs are written to temporary files beside their destinations and renamed at the end
(`Outputs`, `EmbeddingWriter`, `write_atomic`): an interrupted job never leaves a half-written
output under the final name, and no temporary file stays behind. A symlinked destination keeps its
link: the file it points to is replaced.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from tokvec._core import FormatError

__all__ = [
    "ENCODING_ERRORS",
    "INPUT_FORMATS",
    "OUTPUT_FORMATS",
    "EmbeddingWriter",
    "Input",
    "InputError",
    "Outputs",
    "atomic_folder",
    "atomic_path",
    "check_distinct",
    "count_texts",
    "input_format",
    "iter_texts",
    "output_format",
    "read_all",
    "write_atomic",
    "write_lines",
]

INPUT_FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet")
OUTPUT_FORMATS = ("npy", "safetensors", "parquet", "jsonl")
ENCODING_ERRORS = ("strict", "replace")
_T = TypeVar("_T", bound="_AllOrNothing")
_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_BOM = b"\xef\xbb\xbf"
# CSV fields have no size limit of their own (the csv module's default is 131,072 characters)
_CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


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


def _zstd(path: str) -> Any:
    try:
        import zstandard
    except ImportError:
        raise InputError(f"{path}: .zst files need the zstandard package: pip install 'tokvec[zstd]'") from None
    return zstandard


def _open_binary(path: str, comp: str | None) -> IO[bytes]:
    """A buffered binary stream of the (decompressed) input."""
    if path == "-":
        raw: IO[bytes] = sys.stdin.buffer
        head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
        if head[:2] == b"\x1f\x8b":
            return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
        if head != b"\x28\xb5\x2f\xfd":
            return raw
        comp = "zstd"
    else:
        _check_readable(path)
    if comp == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if comp == "zstd":
        zstandard = _zstd(path)
        src = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
        reader = zstandard.ZstdDecompressor().stream_reader(src, closefd=path != "-")
        return io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type]
    return open(path, "rb", buffering=1 << 20)


def _check_readable(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path}: is a folder, not a file")
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


@dataclass
class ReadStats:
    """What a read found, besides the texts.

    Attributes:
        rows: input rows seen (texts, plus blank lines that hold no record).
        texts: texts read.
        blank: blank lines of a `.jsonl` / `.csv` / `.tsv` input (rows without a record).
        replaced: rows whose invalid UTF-8 was replaced by U+FFFD (`encoding_errors="replace"`).
        bom: the input started with a UTF-8 byte-order mark.
    """

    rows: int = 0
    texts: int = 0
    blank: int = 0
    replaced: int = 0
    bom: bool = False


class Input:
    """One input of a batch job: its texts in chunks, with their row numbers, and its rows copied
    whole into an output of the same format.

    Args:
        path: the file, or `-` for stdin.
        column: the column holding the text (`.csv`, `.tsv`, `.parquet`; optional when there is only
            one column). For `.jsonl` it is accepted as the field name.
        field: the JSON field holding the text (`.jsonl`, default `text`).
        fmt: force a format (one of `INPUT_FORMATS`) instead of the file suffix.
        encoding_errors: "strict" (invalid UTF-8 is an error naming file and line) or "replace"
            (U+FFFD, counted in `stats.replaced`).
        keep: keep a copy of stdin for a second pass (`copy_rows`); files are simply read again.

    Raises:
        InputError: unknown format or option.
    """

    def __init__(
        self,
        path: str,
        *,
        column: str | None = None,
        field: str | None = None,
        fmt: str | None = None,
        encoding_errors: str = "strict",
        keep: bool = False,
    ) -> None:
        if encoding_errors not in ENCODING_ERRORS:
            raise InputError(f"encoding errors must be one of {', '.join(ENCODING_ERRORS)}, got {encoding_errors!r}")
        self.path = path
        self.format, self.compression = input_format(path, fmt)
        if self.format == "parquet":
            if path == "-":
                raise InputError("Parquet cannot be read from stdin; give a file")
            if self.compression is not None:
                raise InputError(f"{path}: Parquet is compressed internally; do not compress the file itself")
        self.column = column
        self.field = field or column or "text"
        self.errors = encoding_errors
        self.stats = ReadStats()
        self._keep = keep and path == "-"
        self._spool: IO[bytes] | None = None
        self._identity: tuple[int, ...] | None = None
        self._header: list[str] | None = None
        self._header_raw = b""

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Checks what can be checked before the work: the file exists and opens, and for CSV/TSV
        and Parquet the header holds the column (stdin: nothing is read).

        Raises:
            FileNotFoundError: no such file.
            InputError: a folder, an unreadable Parquet file, a missing or ambiguous column.
        """
        if self.path == "-":
            return
        if self.format == "parquet":
            self._parquet_column(self._parquet())
            return
        _check_readable(self.path)
        if self.format in ("csv", "tsv"):
            with _open_binary(self.path, self.compression) as fh:
                for _ in self._delimited(fh, parse=True, header_only=True):
                    pass
        else:
            with open(self.path, "rb"):
                pass

    def _stat(self) -> tuple[int, ...]:
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def read_whole(self) -> str:
        """The whole input as one text (a `.txt` document for `tokvec split`): line endings kept as
        they are, the byte-order mark dropped, UTF-8 checked as `chunks` does (the line of an invalid
        byte is named)."""
        with self._reader(parse=False) as fh:
            data = fh.read()
        if data.startswith(_BOM):
            data = data[3:]
            self.stats.bom = True
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start)
            start = data.rfind(b"\n", 0, e.start) + 1
            end = data.find(b"\n", e.start)
            self._decode(data[start : len(data) if end < 0 else end + 1], line)  # raises, or counts in replace mode
            return data.decode("utf-8", "replace")

    # ------------------------------------------------------------------ first pass
    def chunks(self, chunk_size: int = 32768) -> Iterator[tuple[list[int], list[str]]]:
        """Reads the texts in chunks of at most `chunk_size`, in input order.

        Yields:
            (rows, texts): the 0-based input row numbers and the texts. A null (JSON/Parquet)
            text is read as "".

        Raises:
            FileNotFoundError: the file does not exist.
            InputError: unreadable content (bad JSON line, missing column or field, wrong number
                of CSV fields, bad compression, invalid UTF-8), naming the file and line.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.stats = ReadStats()
        if self.path != "-":
            _check_readable(self.path)
            self._identity = self._stat()
        rows: list[int] = []
        texts: list[str] = []
        for row, _raw, text in self._records(parse=True):
            rows.append(row)
            texts.append(text)  # type: ignore[arg-type]
            if len(texts) >= chunk_size:
                self.stats.texts += len(texts)
                yield rows, texts
                rows, texts = [], []
        if texts:
            self.stats.texts += len(texts)
            yield rows, texts

    def _records(self, parse: bool) -> Iterator[tuple[int, bytes, str | None]]:
        """(row, raw record bytes, text or None when not parsed) for every record, in order."""
        if self.format == "parquet":
            yield from self._parquet_texts()
            return
        with self._reader(parse) as fh:
            try:
                if self.format == "txt":
                    yield from self._txt(fh, parse)
                elif self.format == "jsonl":
                    yield from self._jsonl(fh, parse)
                else:
                    yield from self._delimited(fh, parse)
            except (EOFError, gzip.BadGzipFile) as e:
                raise InputError(f"{self.path}: corrupt or truncated compressed data ({e})") from None
            except InputError:
                raise
            except Exception as e:
                if type(e).__module__.startswith("zstandard"):
                    raise InputError(f"{self.path}: corrupt or truncated zstd data ({e})") from None
                raise

    @contextmanager
    def _reader(self, parse: bool) -> Iterator[IO[bytes]]:
        """The input's bytes: the first pass reads the file (or stdin, teeing it into the spool
        when a second pass will need it); the second pass reads the file again or the spool."""
        if not parse and self._spool is not None:
            self._spool.seek(0)
            yield self._spool
            return
        fh = _open_binary(self.path, self.compression)
        try:
            if parse and self._keep:
                self._spool = tempfile.TemporaryFile(prefix="tokvec-stdin-")  # noqa: SIM115 -- closed in close()
                yield _Tee(fh, self._spool)  # type: ignore[misc]
            else:
                yield fh
        finally:
            if fh is not sys.stdin.buffer:
                fh.close()  # a gzip/zstd reader of stdin does not close stdin itself

    def _lines(self, fh: IO[bytes]) -> Iterator[tuple[int, bytes]]:
        """(0-based line, raw line with its newline), the byte-order mark dropped from line 0."""
        for no, raw in enumerate(fh):
            if no == 0 and raw.startswith(_BOM):
                raw = raw[3:]
                self.stats.bom = True
            yield no, raw

    def _decode(self, raw: bytes, line: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if self.errors == "replace":
                self.stats.replaced += 1
                return raw.decode("utf-8", "replace")
            hint = ""
            if line == 0 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
                hint = " (it starts with a UTF-16 byte-order mark: convert the file to UTF-8)"
            raise InputError(
                f"{self.path}:{line + 1}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}){hint}; "
                "fix the file or pass --encoding-errors replace"
            ) from None

    def _txt(self, fh: IO[bytes], parse: bool) -> Iterator[tuple[int, bytes, str | None]]:
        for no, raw in self._lines(fh):
            self.stats.rows += 1
            yield no, raw, self._decode(_strip_eol(raw), no) if parse else None

    def _jsonl(self, fh: IO[bytes], parse: bool) -> Iterator[tuple[int, bytes, str | None]]:
        field, path = self.field, self.path
        for no, raw in self._lines(fh):
            self.stats.rows += 1
            body = _strip_eol(raw)
            if not body.strip():
                self.stats.blank += 1
                continue
            if not parse:
                yield no, raw, None
                continue
            try:
                obj = json.loads(self._decode(body, no))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{no + 1}: not a JSON line ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise InputError(
                    f"{path}:{no + 1}: a JSON {type(obj).__name__}, expected an object with a {field!r} field"
                )
            if field not in obj:
                keys = ", ".join(list(obj)[:20])
                raise InputError(f"{path}:{no + 1}: no field {field!r} (fields: {keys}); pass --field")
            v = obj[field]
            if v is None:
                v = ""
            if not isinstance(v, str):
                raise InputError(f"{path}:{no + 1}: field {field!r} is a {type(v).__name__}, not a string")
            yield no, raw, v

    def _delimited(
        self, fh: IO[bytes], parse: bool, header_only: bool = False
    ) -> Iterator[tuple[int, bytes, str | None]]:
        """CSV/TSV records with the raw lines each one took (a quoted CSV field may span lines).

        The csv reader pulls one line at a time from `feed`, so the lines taken since the last
        record are exactly the next record's."""
        path, fmt = self.path, self.format
        taken: list[bytes] = []
        where = [0]  # line of the record being read

        def feed() -> Iterator[str]:
            for no, raw in self._lines(fh):
                if not taken:
                    where[0] = no
                taken.append(raw)
                yield self._decode(raw, no)

        csv.field_size_limit(_CSV_FIELD_LIMIT)
        if fmt == "tsv":
            reader = csv.reader(feed(), delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
        else:
            reader = csv.reader(feed(), strict=True)

        def record() -> tuple[list[str], bytes] | None:
            try:
                fields = next(reader)
            except StopIteration:
                return None
            except csv.Error as e:
                raise InputError(f"{path}:{where[0] + 1}: malformed {fmt.upper()} ({e})") from None
            raw = b"".join(taken)
            taken.clear()
            return fields, raw

        first = record()
        if first is None:
            return
        header, self._header_raw = first
        column = self._pick_column(header)
        if header.count(column) > 1:
            raise InputError(f"{path}: the header names column {column!r} {header.count(column)} times")
        self._header = header
        if header_only:
            return
        c, width = header.index(column), len(header)
        row = 0
        while (rec := record()) is not None:
            fields, raw = rec
            self.stats.rows += 1
            if not fields:
                self.stats.blank += 1
            elif len(fields) != width:
                raise InputError(
                    f"{path}:{where[0] + 1}: {len(fields)} fields, the header has {width}"
                    + (" (a text holding a tab? TSV has no quoting)" if fmt == "tsv" and len(fields) > width else "")
                )
            else:
                yield row, raw, fields[c] if parse else None
            row += 1

    def _pick_column(self, names: list[str]) -> str:
        """The text column among a table's column names: --column, or the only column there is."""
        column = self.column
        if column is None:
            if len(names) != 1:
                raise InputError(f"{self.path}: {len(names)} columns ({', '.join(names)}); pass --column NAME")
            column = names[0]
        if column not in names:
            raise InputError(f"{self.path}: no column {column!r} (columns: {', '.join(names)})")
        return column

    # ------------------------------------------------------------------ Parquet
    def _parquet(self) -> Any:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError(f"{self.path}: reading Parquet needs pyarrow: pip install 'tokvec[parquet]'") from None
        _check_readable(self.path)
        try:
            return pq.ParquetFile(self.path)
        except Exception as e:  # noqa: BLE001 -- pyarrow raises ArrowInvalid / OSError subclasses with long messages
            raise InputError(f"{self.path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None

    def _parquet_column(self, pf: Any) -> str:
        import pyarrow as pa

        column = self._pick_column(pf.schema_arrow.names)
        typ = pf.schema_arrow.field(column).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise InputError(f"{self.path}: column {column!r} has type {typ}, not string")
        return column

    def _parquet_texts(self) -> Iterator[tuple[int, bytes, str | None]]:
        pf = self._parquet()
        column = self._parquet_column(pf)
        row = 0
        for batch in pf.iter_batches(batch_size=65536, columns=[column]):
            for v in batch.column(0).to_pylist():
                self.stats.rows += 1
                yield row, b"", "" if v is None else v
                row += 1

    # ------------------------------------------------------------------ second pass
    def copy_rows(self, rows: Sequence[int] | np.ndarray, out: IO[bytes]) -> int:
        """Writes the given rows whole to `out` in the input's format (see the module docstring).

        Args:
            rows: 0-based row numbers from `chunks`; ascending rows are streamed, any other order
                (e.g. best first) is gathered first (meant for a few rows).
            out: a binary stream (e.g. `Outputs.open`).

        Returns:
            the number of rows written.

        Raises:
            InputError: the input changed since it was read.
        """
        want = np.asarray(rows, np.int64)
        changed = InputError(f"{self.path}: the file changed while tokvec was reading it; run the command again")
        if self.path != "-" and self._identity is not None and self._stat() != self._identity:
            raise changed
        if self.format == "parquet":
            return self._copy_parquet(want, out)
        order = want.tolist()
        ascending = all(a < b for a, b in itertools.pairwise(order))
        stats, self.stats = self.stats, ReadStats()
        try:
            if stats.bom:
                out.write(_BOM)
            if self.format in ("csv", "tsv"):
                out.write(self._header_raw)
            picked: dict[int, bytes] = {}
            wanted = set(order)
            k = 0
            eol = None  # the line ending a last line without one gets: the file's first line's
            for row, raw, _ in self._records(parse=False):
                if eol is None:
                    eol = b"\r\n" if (self._header_raw or raw).endswith(b"\r\n") else b"\n"
                if row in wanted:
                    if ascending:
                        out.write(_with_newline(raw, eol))
                        k += 1
                    else:
                        picked[row] = raw
            if not ascending and len(picked) == len(wanted):
                for r in order:
                    out.write(_with_newline(picked[r], eol or b"\n"))
                k = len(order)
            if self.stats.rows != stats.rows or k != len(order):
                raise changed
        finally:
            self.stats = stats
        return k

    def _copy_parquet(self, want: np.ndarray, out: IO[bytes]) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = self._parquet()
        if pf.metadata.num_rows != self.stats.rows:
            raise InputError(f"{self.path}: the file changed while tokvec was reading it; run the command again")
        codec = "snappy"
        if pf.metadata.num_row_groups and pf.metadata.row_group(0).num_columns:
            codec = pf.metadata.row_group(0).column(0).compression.lower()
            codec = {"uncompressed": "none", "lz4_raw": "lz4"}.get(codec, codec)
        ascending = bool(np.all(want[1:] > want[:-1])) if len(want) > 1 else True
        with pq.ParquetWriter(out, pf.schema_arrow, compression=codec) as w:
            if not ascending:
                w.write_table(pf.read().take(pa.array(want)))
                return len(want)
            start = 0
            for g in range(pf.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                lo, hi = np.searchsorted(want, [start, start + n])
                if hi > lo:
                    w.write_table(pf.read_row_group(g).take(pa.array(want[lo:hi] - start)))
                start += n
        return len(want)

    def close(self) -> None:
        """Drops the stdin copy, if any."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None


class _Tee:
    """Iterates a binary stream by lines, copying each line to `spool`."""

    def __init__(self, src: IO[bytes], spool: IO[bytes]) -> None:
        self._src, self._spool = src, spool

    def __iter__(self) -> Iterator[bytes]:
        for line in self._src:
            self._spool.write(line)
            yield line


def _with_newline(raw: bytes, eol: bytes = b"\n") -> bytes:
    """A record as copied to an output: the input's last line may lack its line ending (it gets the file's)."""
    return raw if raw.endswith(b"\n") else raw + eol


def iter_texts(
    path: str,
    *,
    column: str | None = None,
    field: str | None = None,
    fmt: str | None = None,
    chunk_size: int = 32768,
    encoding_errors: str = "strict",
) -> Iterator[list[str]]:
    """Reads texts from a file in chunks of at most `chunk_size` (see `Input.chunks`).

    Args:
        path: the input file, or `-` for stdin (gzip/zstd stdin is detected from its magic bytes).
        column: the column holding the text (`.csv`, `.tsv`, `.parquet`; optional when there is
            only one column). For `.jsonl` it is accepted as the field name.
        field: the JSON field holding the text (`.jsonl`, default `text`).
        fmt: force a format (one of `INPUT_FORMATS`) instead of the file suffix.
        chunk_size: texts per yielded list.
        encoding_errors: "strict" or "replace".

    Yields:
        lists of str, in file order.
    """
    src = Input(path, column=column, field=field, fmt=fmt, encoding_errors=encoding_errors)
    for _rows, texts in src.chunks(chunk_size):
        yield texts


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
            return int(Input(path, fmt=f)._parquet().metadata.num_rows)
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


# ---------------------------------------------------------------------------------------------------- outputs
def output_format(path: str, allowed: tuple[str, ...] = OUTPUT_FORMATS, compressed: bool = False) -> str:
    """The output format from a file suffix.

    Args:
        path: the output file.
        allowed: the formats this output may have.
        compressed: whether `.gz` / `.zst` may follow the suffix (text formats).

    Raises:
        InputError: the suffix is not one of `allowed`.
    """
    fmt, comp = _split_suffix(path)
    if (comp is not None and not compressed) or fmt not in allowed:
        raise InputError(
            f"{path}: unknown output format; the file name must end in {', '.join('.' + a for a in allowed)}"
            + (" (optionally .gz or .zst)" if compressed else "")
        )
    return fmt


def _destination(path: str | os.PathLike[str]) -> Path:
    """Where an output really goes: a symlink's target (its link stays), else the path itself."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_distinct(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """Refuses an output that is one of the inputs (or a link to it) or another output.

    Args:
        outputs: option name (e.g. "-o") -> path, None when not given.
        inputs: option name (e.g. "input") -> path or `-`, None when not given.

    Raises:
        InputError: naming both options and the path.
    """
    outs = [(k, v) for k, v in outputs.items() if v is not None]
    ins = [(k, v) for k, v in inputs.items() if v is not None and v != "-"]
    for i, (k, v) in enumerate(outs):
        for ki, vi in ins:
            if _same_file(v, vi):
                raise InputError(f"{k} {v} is the {ki} {vi}: write the output to another file")
        for k2, v2 in outs[:i]:
            if _same_file(v, v2):
                raise InputError(f"{k} {v} and {k2} {v2} are the same file; give each output its own path")


def _parent(path: str | os.PathLike[str], out: Path) -> Path:
    """The folder an output goes in, checked: it exists and is a folder (errors name `path`)."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(f"{path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise NotADirectoryError(f"{path}: {parent} is a file, not a folder")
    return parent


@contextmanager
def _creating_in(path: str | os.PathLike[str], parent: Path, what: str) -> Iterator[None]:
    """Errors while creating a temporary file or folder in `parent` name `path` and `parent`, never the temporary."""
    try:
        yield
    except PermissionError:
        raise PermissionError(f"{path}: no permission to create a {what} in {parent}") from None
    except OSError as e:
        raise OSError(f"{path}: cannot create a {what} in {parent} ({e.strerror or e})") from None


def atomic_path(path: str | os.PathLike[str]) -> Path:
    """A new, empty temporary file beside `path`'s destination (same folder, so the final rename is
    atomic), with the usual permissions (0666 minus the umask).

    Raises:
        FileNotFoundError / NotADirectoryError: the folder does not exist / is a file.
        InputError: `path` is a folder.
        PermissionError / OSError: the folder does not take a new file (naming `path`).
    """
    out = _destination(path)
    parent = _parent(path, out)
    if out.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")
    with _creating_in(path, parent, "file"):
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


def atomic_folder(out: Path) -> Path:
    """Checks, before any work, that the output folder `out` can be made, and makes the hidden sibling folder it
    is written in (renamed to `out` at the end, so an interrupted run leaves no half-written model). Errors name
    `out` and its parent folder, never the hidden one.

    Raises:
        FileExistsError: `out` exists and is not an empty folder.
        FileNotFoundError / NotADirectoryError: the parent folder does not exist / is a file.
        PermissionError / OSError: the parent does not take a new folder (read-only file system, ...).
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder")
    parent = _parent(out, out)
    with _creating_in(out, parent, "folder"):
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _named(path: str | os.PathLike[str], tmp: Path | None) -> Iterator[None]:
    """Errors while writing a temporary file name the user's path, not the temporary one."""
    try:
        yield
    except OSError as e:
        # a write error (disk full) has no file name; an error on the temporary file names it
        if e.filename is None or (tmp is not None and os.fspath(e.filename) == os.fspath(tmp)):
            raise OSError(e.errno, e.strerror, os.fspath(path)) from None
        raise


@contextmanager
def _open_output(dest: Path, comp: str | None) -> Iterator[IO[bytes]]:
    """A binary stream writing `dest`, compressed with `comp` ("gzip", "zstd" or None)."""
    if comp == "gzip":
        with open(dest, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
            yield fh  # type: ignore[misc]
    elif comp == "zstd":
        zstandard = _zstd(str(dest))
        with open(dest, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw, closefd=False) as fh:
            yield fh
    else:
        with open(dest, "wb", buffering=1 << 20) as fh:
            yield fh


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends (so a set of renames is not cut in the middle)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):  # not the main thread, or no pthread_sigmask
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _AllOrNothing:
    """A `with` block that finishes the job (`_finish`) when it ends normally and undoes it (`abort`) when it ends
    by an exception, a signal turned into one included."""

    def _finish(self) -> object:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:  # noqa: PYI019  (typing.Self is 3.11+, tokvec runs on 3.10)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._finish()
        else:
            self.abort()


class Outputs(_AllOrNothing):
    """Every output file of one job, written as one unit.

    `add(path)` creates the temporary file beside the destination at once (so a missing or
    read-only folder fails before any work); the job writes the temporary files; `commit()` renames
    them all to their destinations with SIGINT/SIGTERM held; leaving the `with` block by an
    exception (a signal turned into one included) deletes them all and leaves every destination as
    it was. Errors while writing name the user's path.
    """

    def __init__(self) -> None:
        self._files: list[tuple[str, Path, Path]] = []  # (user path, temporary file, destination)

    def add(self, path: str | os.PathLike[str] | None) -> Path | None:
        """Reserves an output; returns its temporary file (None for None)."""
        if path is None:
            return None
        tmp = atomic_path(path)
        self._files.append((os.fspath(path), tmp, _destination(path)))
        return tmp

    def tmp(self, path: str | os.PathLike[str]) -> Path:
        """The temporary file of a reserved output."""
        for user, tmp, _ in self._files:
            if user == os.fspath(path):
                return tmp
        raise KeyError(path)

    @contextmanager
    def writing(self, path: str | os.PathLike[str]) -> Iterator[Path]:
        """`with outs.writing(path) as tmp:` write `tmp`; OSErrors name `path`."""
        tmp = self.tmp(path)
        with _named(path, tmp):
            yield tmp

    @contextmanager
    def open(self, path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
        """A binary stream writing a reserved output, compressed when its name ends in .gz / .zst."""
        with self.writing(path) as tmp, _open_output(tmp, _split_suffix(os.fspath(path))[1]) as fh:
            yield fh

    def write_lines(self, path: str | os.PathLike[str], lines: Iterator[str] | list[str]) -> None:
        """Writes lines (each ending in a newline already) as UTF-8 to a reserved output."""
        with self.open(path) as fh:
            w = io.TextIOWrapper(fh, encoding="utf-8", newline="", write_through=False)
            w.writelines(lines)
            w.flush()
            w.detach()

    def commit(self) -> None:
        """Renames every temporary file to its destination."""
        with _signals_held():
            for user, tmp, dest in self._files:
                with _named(user, tmp):
                    os.replace(tmp, dest)
            self._files = []

    def abort(self) -> None:
        """Deletes the temporary files; the destinations are left untouched."""
        for _, tmp, _ in self._files:
            tmp.unlink(missing_ok=True)
        self._files = []

    _finish = commit


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


class EmbeddingWriter(_AllOrNothing):
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
        self._fh: Any = None
        self._pq: Any = None
        if self.format == "parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise InputError(f"{path}: writing Parquet needs pyarrow: pip install 'tokvec[parquet]'") from None
        self._outs = Outputs()
        self._tmp = self._outs.add(path)
        with _named(self.path, self._tmp):
            if self.format in ("npy", "safetensors", "jsonl"):
                self._fh = open(self._tmp, "wb")  # noqa: SIM115
                if self.format == "npy":
                    self._fh.write(b"\0" * _NPY_HEADER)
                elif self.format == "safetensors":
                    self._fh.write(b"\0" * (8 + _ST_HEADER))
            else:
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
        with _named(self.path, self._tmp):
            if self.format in ("npy", "safetensors"):
                self._fh.write(E.tobytes())
            elif self.format == "jsonl":
                ts = texts if texts is not None else [None] * len(E)
                lines = [
                    json.dumps({"text": t, "embedding": row}, ensure_ascii=False) + "\n"
                    for t, row in zip(ts, E.tolist())
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
        with _named(self.path, self._tmp):
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
        self._outs.commit()
        return self.path

    def abort(self) -> None:
        """Closes and deletes the temporary file; the destination is left untouched."""
        try:
            if self._fh is not None:
                self._fh.close()
            if self._pq is not None:
                self._pq.close()
        finally:
            self._outs.abort()

    _finish = close


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Calls `write(tmp)` on a temporary file beside `path`, then renames it to `path` (a symlink's
    target is replaced, the link stays).

    On any exception (including KeyboardInterrupt) the temporary file is deleted and the
    destination is left untouched; errors name `path`, never the temporary file.
    """
    with Outputs() as outs:
        outs.add(path)
        with outs.writing(path) as tmp:
            write(tmp)
    return Path(path)


def write_lines(path: str | os.PathLike[str], lines: Iterator[str] | list[str]) -> Path:
    """Writes lines (each ending in a newline already) atomically as UTF-8."""
    with Outputs() as outs:
        outs.add(path)
        outs.write_lines(path, lines)
    return Path(path)
