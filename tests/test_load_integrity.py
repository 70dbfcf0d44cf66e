"""A loaded model never bends data: a table or weights holding NaN/Inf are refused at load (naming the file, the
tensor and the rows), and `mmap=False` keeps the table in private memory, so a model file overwritten or
truncated in place afterwards changes nothing (while a mapped one would read the new bytes, or die of SIGBUS,
shown in a child process)."""

from __future__ import annotations

import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tokvec
from safetensors.numpy import save_file
from tokvec import FormatError
from tokvec.model import write_safetensors

DEFAULT = Path(tokvec.__file__).parent / "models" / "default"
VOCAB = 30522  # the default tokenizer's vocabulary
TEXTS = ["the cat sat on the mat", "a second, longer text about tables and files", "", "x"]

#: little-endian bit patterns of NaN and +Inf per dtype
NAN_INF = {
    "F16": (np.float16(np.nan).view(np.uint16), np.float16(np.inf).view(np.uint16)),
    "BF16": (np.uint16(0x7FC0), np.uint16(0x7F80)),
    "F32": (np.float32(np.nan).view(np.uint32), np.float32(np.inf).view(np.uint32)),
    "F64": (np.float64(np.nan).view(np.uint64), np.float64(-np.inf).view(np.uint64)),
}
#: the unsigned integer type holding a dtype's bits, and how a float64 value becomes those bits
BITS = {"F16": np.uint16, "BF16": np.uint16, "F32": np.uint32, "F64": np.uint64}


def _encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values -> the raw bits of `dtype` (BF16 by truncating float32, exact for these values)."""
    if dtype == "BF16":
        return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return x.astype({"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype]).view(BITS[dtype])


def model_dir(tmp_path: Path, table: np.ndarray, dtype: str, weights: np.ndarray | None = None) -> Path:
    """A model2vec-style folder: `model.safetensors` (`embeddings`, raw bits of `dtype`; optional F32 `weights`)
    and the default model's tokenizer."""
    d = tmp_path / f"m-{dtype}"
    d.mkdir(exist_ok=True)
    shutil.copy(DEFAULT / "tokenizer.json", d)
    tensors = {
        "embeddings": (
            dtype,
            list(table.shape),
            np.ascontiguousarray(table).astype(table.dtype.newbyteorder("<")).tobytes(),
        )
    }
    if weights is not None:
        tensors["weights"] = ("F32", [len(weights)], weights.astype("<f4").tobytes())
    write_safetensors(d / "model.safetensors", tensors)
    return d


def random_table(dtype: str, cols: int = 8, seed: int = 0) -> np.ndarray:
    return _encode(np.random.default_rng(seed).standard_normal((VOCAB, cols)), dtype)


# ------------------------------------------------------------------------------------------ NaN / Inf at load
@pytest.mark.parametrize("dtype", sorted(NAN_INF))
def test_table_with_nan_or_inf_rows_is_refused(tmp_path, dtype):
    t = random_table(dtype)
    nan, inf = NAN_INF[dtype]
    t[77, 0] = inf
    t[5, 3] = nan
    t[30000, 7] = nan
    d = model_dir(tmp_path, t, dtype)
    with pytest.raises(FormatError) as e:
        tokvec.load(d)
    assert str(e.value) == (
        f'{d / "model.safetensors"}: table "embeddings": 3 row(s) hold NaN or Inf values (row ids 5, 77, 30000)'
    )
    # the same file without the bad values loads, and embeds finite vectors
    t[[5, 77, 30000]] = 0
    assert np.isfinite(tokvec.load(model_dir(tmp_path, t, dtype)).embed(TEXTS)).all()


def test_f64_beyond_float32_is_refused(tmp_path):
    # finite in float64, but infinite once read as float32, which is what pooling does
    t = np.random.default_rng(1).standard_normal((VOCAB, 8))
    t[12, 2] = 1e300
    with pytest.raises(FormatError, match=r"1 row\(s\) hold NaN or Inf values \(row ids 12\)"):
        tokvec.load(model_dir(tmp_path, t.view(np.uint64), "F64"))
    t[12, 2] = float(np.finfo(np.float32).max)
    assert np.isfinite(tokvec.load(model_dir(tmp_path, t.view(np.uint64), "F64")).embed(TEXTS)).all()


def test_many_bad_rows_show_the_first_ten(tmp_path):
    t = random_table("F16")
    t[100:140, 1] = NAN_INF["F16"][0]
    with pytest.raises(FormatError, match=r"40 row\(s\) .*\(row ids 100, 101, .*, 109, \.\.\.\)$"):
        tokvec.load(model_dir(tmp_path, t, "F16"))


def test_weights_with_nan_are_refused(tmp_path):
    w = np.ones(VOCAB, np.float32)
    w[9] = np.nan
    w[2000] = -np.inf
    d = model_dir(tmp_path, random_table("F32"), "F32", weights=w)
    with pytest.raises(FormatError) as e:
        tokvec.load(d)
    assert str(e.value) == (
        f'{d / "model.safetensors"}: weights "weights": 2 row(s) hold NaN or Inf values (row ids 9, 2000)'
    )


def test_nan_only_past_the_kept_columns_loads_truncated(tmp_path):
    t = random_table("F16")
    t[3, 6] = NAN_INF["F16"][0]  # column 6 of 8
    d = model_dir(tmp_path, t, "F16")
    for dim in (1, 4, 6):  # only columns 0..dim-1 are read
        E = tokvec.load(d, dim=dim).embed(TEXTS)
        assert E.shape == (len(TEXTS), dim) and np.isfinite(E).all()
    with pytest.raises(
        FormatError, match=r'table "embeddings": 1 row\(s\) hold NaN or Inf values in the first 7 columns'
    ):
        tokvec.load(d, dim=7)
    with pytest.raises(FormatError, match=r"1 row\(s\) hold NaN or Inf values \(row ids 3\)"):
        tokvec.load(d)


def test_int8_tables_need_no_scan(tmp_path):
    t = np.random.default_rng(2).integers(-127, 128, (VOCAB, 8)).astype(np.int8)
    d = tmp_path / "i8"
    d.mkdir()
    shutil.copy(DEFAULT / "tokenizer.json", d)
    save_file({"embeddings": t}, str(d / "model.safetensors"))
    assert np.isfinite(tokvec.load(d).embed(TEXTS)).all()


# ------------------------------------------------------------------------------------------ mmap=False
@pytest.fixture
def default_copy(tmp_path) -> Path:
    d = tmp_path / "default"
    shutil.copytree(DEFAULT, d)
    return d


def test_mmap_false_survives_the_file_being_overwritten_and_truncated(default_copy):
    f = default_copy / "model.safetensors"
    want = tokvec.load(default_copy).embed(TEXTS)
    m = tokvec.load(default_copy, mmap=False)
    np.testing.assert_array_equal(m.embed(TEXTS), want)
    size = f.stat().st_size
    # other bytes of the same size, written in place (same inode)
    with open(f, "r+b") as fh:
        fh.write(np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8).tobytes())
    assert f.stat().st_size == size
    np.testing.assert_array_equal(m.embed(TEXTS), want)
    with open(f, "r+b") as fh:
        fh.truncate(0)
    np.testing.assert_array_equal(m.embed(TEXTS), want)
    f.unlink()
    np.testing.assert_array_equal(m.embed(TEXTS), want)


def test_mmap_false_is_kept_by_pickle(default_copy):
    m = tokvec.load(default_copy, mmap=False)
    again = pickle.loads(pickle.dumps(m))
    assert again._load_args is not None and again._load_args["mmap"] is False
    np.testing.assert_array_equal(again.embed(TEXTS), m.embed(TEXTS))


def test_mmap_must_be_a_bool():
    with pytest.raises(TypeError, match="mmap must be a bool"):
        tokvec.load(mmap="no")  # type: ignore[arg-type]


def test_mapped_model_dies_of_sigbus_when_its_file_is_truncated(default_copy):
    """Why `mmap=False` exists: shown in a child, since the signal kills the process."""
    child = f"""
import tokvec
m = tokvec.load({str(default_copy)!r})
m.embed(["warm"])
open({str(default_copy / "model.safetensors")!r}, "r+b").truncate(0)
m.embed({TEXTS!r} * 1000)
print("survived")
"""
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr)
    assert "survived" not in r.stdout
