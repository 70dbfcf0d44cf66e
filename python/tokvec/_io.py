"""The bottom layer's file formats: safetensors element types, reading and writing safetensors files, and
writing a model folder atomically. Imports nothing of tokvec but the Rust core and `textio`'s atomic helpers,
so every module (extraction, training, deduplication, `Model`) can use it without an import circle.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tokvec import _core
from tokvec.textio import atomic_folder

#: safetensors dtype name -> the numpy type its little-endian bytes are read as (BF16: its uint16 bits).
_NP_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "BF16": np.uint16,
    "I32": np.int32,
    "I64": np.int64,
    "U32": np.uint32,
}
#: the float element types (what a table, weights or a network layer is stored as).
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def write_safetensors(
    path: Path, tensors: dict[str, tuple[str, list[int], Any]], metadata: dict[str, str] | None = None
) -> None:
    """Writes a safetensors file: tensors in name order, header padded to 8 bytes.

    Args:
        path: the file to write.
        tensors: name -> (dtype "F16"/..., shape, little-endian bytes, or a list of byte buffers written one after
            the other: a tensor held in parts is not joined first).
        metadata: optional `__metadata__` strings.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    chunks = {name: data if isinstance(data, list) else [data] for name, (_, _, data) in tensors.items()}
    off = 0
    for name in sorted(tensors):
        dt, shape, _ = tensors[name]
        size = sum(len(c) for c in chunks[name])
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + size]}
        off += size
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as fh:
        fh.write(len(h).to_bytes(8, "little"))
        fh.write(h)
        for name in sorted(tensors):
            fh.writelines(chunks[name])


def other_model(metadata: dict[str, str], fingerprint: str) -> str | None:
    """How the model a file's metadata records (`model`, `model_fingerprint`) differs from the one in use, as the
    words of an error message ("built with X, fingerprint abc...; this model's is def..."), or None when it is the
    same. The metadata must have `model_fingerprint`."""
    recorded = metadata["model_fingerprint"]
    if recorded == fingerprint:
        return None
    return (f"built with {metadata.get('model', '?')}, fingerprint {recorded[:12]}; this model's is "
            f"{fingerprint[:12]}")


def widen_bf16(a: np.ndarray, dtype: str) -> np.ndarray:
    """BF16 bits (uint16) widened to float32 exactly; other arrays as they are."""
    return (a.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else a


def read_tensor(f: Any, name: str) -> np.ndarray:
    """One tensor of a `_core.SafetensorsFile` (validated header, offsets checked by the core) as stored: a
    read-only array in the file's dtype, BF16 as its uint16 bits."""
    dt, shape = f.tensors()[name]
    return np.frombuffer(f.tensor_bytes(name), dtype=np.dtype(_NP_DTYPES[dt]).newbyteorder("<")).reshape(shape)


def read_float32(f: Any, name: str) -> np.ndarray:
    """One float tensor of a `_core.SafetensorsFile` as a new float32 array: BF16 bits widened exactly (not read as
    the integers they are stored as), the other element types converted."""
    return np.array(widen_bf16(read_tensor(f, name), f.tensors()[name][0]), dtype=np.float32)


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every float tensor of a safetensors file as a float32 array (BF16 widened exactly); integer tensors
    (position ids, a model2vec `mapping`) are left out.

    Raises:
        FileNotFoundError: no such file.
        FormatError: the file is not a valid safetensors file (the message names it).
    """
    f = _core.SafetensorsFile(Path(path))
    out: dict[str, np.ndarray] = {}
    for name, (dt, _) in f.tensors().items():
        if dt in FLOAT_DTYPES:
            out[name] = read_float32(f, name)
    return out


def write_model_folder(out: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Writes a model folder as one unit: `fill(tmp)` writes the files into a hidden sibling folder (made after
    `atomic_folder` has checked that `out` can be made), which is then renamed to `out`. An interrupted or failed
    write leaves no half-written model and `out` as it was.

    Raises:
        FileExistsError: `out` exists and is not an empty folder.
        FileNotFoundError / NotADirectoryError / PermissionError / OSError: the parent cannot take the folder.
    """
    dst = Path(out)
    tmp = atomic_folder(dst)
    try:
        fill(tmp)
        try:
            if dst.exists():  # an empty folder the user made (checked by atomic_folder): replaced
                dst.rmdir()
            os.replace(tmp, dst)
        except OSError as e:  # something else wrote to `out` meanwhile: the error would name the hidden folder
            raise FileExistsError(f"{dst}: filled by something else during the write ({e.strerror})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
