"""Model-file readers under hostile sizes: a GGUF whose metadata holds a huge array is inspected in memory of the
order of the file (not 32+ bytes per element), GGUF metadata still comes back as it always did for normal files,
and a table refuses a row range it does not have before sizing any buffer from it.

Memory and crash-prone calls run in a child process, so that a regression (an abort on a failed allocation, or
gigabytes of resident memory) fails the test instead of the test run.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

gguf = pytest.importorskip("gguf", reason="the gguf package is a test dependency (pip install '.[test]')")

# GGUF metadata value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
LIST_LIMIT = 1 << 20  # numeric arrays longer than this come back as numpy arrays


def _run(code: str) -> dict:
    """Runs `code` in a fresh interpreter (this one's tokvec) and returns the JSON it prints last."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True)
    assert r.returncode == 0, f"child exited with {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _s(v: str) -> bytes:
    b = v.encode()
    return struct.pack("<Q", len(b)) + b


def _gguf_with_array(path: Path, values: np.ndarray, elem: int) -> Path:
    """A GGUF file written byte by byte (the `gguf` package packs arrays element by element, far too slowly
    for tens of millions): metadata `general.architecture` and `test.big` (the array), one F32 tensor."""
    table = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)
    b = b"GGUF" + struct.pack("<IQQ", 3, 1, 2)
    b += _s("general.architecture") + struct.pack("<I", STR) + _s("llama")
    b += (
        _s("test.big")
        + struct.pack("<IIQ", ARR, elem, len(values))
        + values.astype(values.dtype.newbyteorder("<")).tobytes()
    )
    b += _s("token_embd.weight") + struct.pack("<IQQIQ", 2, 4, 8, 0, 0)
    b += b"\0" * (-len(b) % 32)
    path.write_bytes(b + table.tobytes())
    return path


def test_inspect_of_a_gguf_with_a_20m_element_array_stays_near_the_file_size(tmp_path):
    n = 20_000_000
    p = _gguf_with_array(tmp_path / "big.gguf", np.arange(n, dtype=np.float32) * 0.5, F32)
    size = p.stat().st_size
    out = _run(f"""
        import json, resource
        import numpy as np
        from tokvec import _core
        from tokvec.extract import inspect
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        info = inspect({str(p)!r})
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        big = _core.GgufFile({str(p)!r}).metadata()["test.big"]
        same = isinstance(big, np.ndarray) and big.dtype == np.float32 and np.array_equal(
            big, np.arange({n}, dtype=np.float32) * 0.5)
        print(json.dumps({{"grown": grown, "same": bool(same), "arch": info.metadata["general.architecture"],
                           "key": info.key}}))
    """)
    # the array is 80 MB in the file: its mapped pages plus one decoded copy, not 32+ bytes per element in Rust and
    # again in Python (1.3 GB before)
    assert out["grown"] < 4 * size, f"peak RSS grew by {out['grown'] / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"
    assert out["same"] and out["arch"] == "llama" and out["key"] == "token_embd.weight", out


def test_gguf_metadata_comes_back_as_before(tmp_path):
    """Every value type, nested arrays and a vocabulary-sized array, against the `gguf` package's own reader."""
    p = tmp_path / "kinds.gguf"
    w = gguf.GGUFWriter(str(p), arch="llama")
    w.add_uint8("k.u8", 200)
    w.add_int8("k.i8", -100)
    w.add_uint16("k.u16", 60000)
    w.add_int16("k.i16", -30000)
    w.add_uint32("k.u32", 4_000_000_000)
    w.add_int32("k.i32", -2_000_000_000)
    w.add_float32("k.f32", 0.1)
    w.add_bool("k.bool", True)
    w.add_string("k.str", "héllo")
    w.add_uint64("k.u64", 2**63 + 5)
    w.add_int64("k.i64", -(2**62))
    w.add_float64("k.f64", 1e300)
    w.add_array("k.strs", ["a", "", "bc", "日本"])
    w.add_array("k.ints", list(range(-5, 5)))
    w.add_array("k.floats", [0.5, -1.25, 3.0])
    w.add_array("k.bools", [True, False, True])
    w.add_array("k.nested", [[1, 2], [3]])
    w.add_array("k.nested_strs", [["x", "y"], ["z"]])
    w.add_token_scores([float(i) / 7 for i in range(300_000)])
    w.add_tensor("t", np.ones((2, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    from tokvec import _core

    got = _core.GgufFile(str(p)).metadata()
    want = {f.name: f.contents() for f in gguf.GGUFReader(str(p)).fields.values() if not f.name.startswith("GGUF.")}
    # the reader flattens nested arrays; these are what was written
    want["k.nested"], want["k.nested_strs"] = [[1, 2], [3]], [["x", "y"], ["z"]]
    assert list(got) == list(want)
    for k, v in want.items():
        assert type(got[k]) is type(v), (k, got[k], v)
        assert got[k] == (pytest.approx(v) if isinstance(v, float) else v), k
    assert isinstance(got["tokenizer.ggml.scores"], list) and len(got["tokenizer.ggml.scores"]) == 300_000
    assert all(type(x) is float for x in got["k.floats"]) and all(type(x) is bool for x in got["k.bools"])


@pytest.mark.parametrize(
    ("elem", "dtype"),
    [
        (U8, np.uint8),
        (I8, np.int8),
        (U16, np.uint16),
        (I32, np.int32),
        (F32, np.float32),
        (BOOL, np.bool_),
        (U64, np.uint64),
        (I64, np.int64),
        (F64, np.float64),
    ],
)
def test_long_numeric_arrays_come_back_as_numpy(tmp_path, elem, dtype):
    from tokvec import _core

    rng = np.random.default_rng(elem)
    for n, kind in ((LIST_LIMIT, list), (LIST_LIMIT + 1, np.ndarray)):
        vals = (rng.integers(0, 2, n) if dtype is np.bool_ else rng.integers(-100, 100, n)).astype(dtype)
        p = _gguf_with_array(tmp_path / f"a{elem}-{n}.gguf", vals, elem)
        got = _core.GgufFile(str(p)).metadata()["test.big"]
        assert isinstance(got, kind)
        if kind is np.ndarray:
            assert got.dtype == dtype and np.array_equal(got, vals)
        else:
            assert got == vals.tolist()


def test_table_refuses_a_row_range_it_does_not_have_before_allocating(tmp_path):
    st = tmp_path / "t.safetensors"
    save_file({"w": np.arange(12, dtype=np.float32).reshape(4, 3)}, str(st))
    gg = _gguf_with_array(tmp_path / "t.gguf", np.zeros(3, np.float32), F32)
    out = _run(f"""
        import json
        from tokvec import _core
        res = []
        for path, name, fmt in (({str(st)!r}, "w", "safetensors"), ({str(gg)!r}, "token_embd.weight", "gguf")):
            t = _core.Table(path, name, fmt)
            calls = [
                lambda: t.read_f32(0, 2**40),
                lambda: t.read_f32(2**62, 2**63),
                lambda: t.read_f32(3, 2),
                lambda: t.read_bytes(0, 2**40, "F16"),
                lambda: t.read_bytes(1, 2**63, "F32"),
                lambda: t.nonfinite_rows(0, 2**40),
            ]
            for c in calls:
                try:
                    c()
                    res.append(["no error", ""])
                except Exception as e:
                    res.append([type(e).__name__, str(e)])
            res.append(["rows", [t.read_f32(1, 3).shape, t.read_f32(8 if fmt == "gguf" else 4, 8 if fmt == "gguf" else 4).shape]])
        print(json.dumps(res))
    """)
    for fmt, rows, chunk in (("safetensors", 4, out[:7]), ("gguf", 8, out[7:])):
        *errors, ok = chunk
        assert ok == ["rows", [[2, 4 if fmt == "gguf" else 3], [0, 4 if fmt == "gguf" else 3]]], (fmt, ok)
        starts_ends = [(0, 2**40), (2**62, 2**63), (3, 2), (0, 2**40), (1, 2**63), (0, 2**40)]
        for (kind, msg), (a, b) in zip(errors, starts_ends):
            assert kind == "ValueError", (fmt, kind, msg)
            assert f"start={a}, end={b}" in msg and f"{rows} rows" in msg, (fmt, msg)
