"""Writes small seed inputs for the cargo-fuzz targets into fuzz/corpus/<target>/ (if empty).

Seeds are valid files (the tiny test fixtures, a small GGUF written with the `gguf` package) and a
few hand-made near-misses, so the fuzzer starts from inputs that pass the first checks.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _st(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds() -> dict[str, bytes]:
    out = {p.name: p.read_bytes()[:4096] for p in sorted((ROOT / "tests/fixtures/tiny").glob("*.safetensors"))}
    out["two.safetensors"] = _st(
        {
            "__metadata__": {"format": "pt"},
            "a": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]},
            "b": {"dtype": "I32", "shape": [3], "data_offsets": [12, 24]},
        },
        bytes(24),
    )
    out["empty.safetensors"] = _st({}, b"")
    return out


def gguf_seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        import gguf
        import numpy as np
    except ImportError:  # the gguf package is a test dependency; the hand-made seed below still works
        gguf = None
    if gguf is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "t.gguf"
            w = gguf.GGUFWriter(str(p), arch="llama")
            w.add_string("tokenizer.ggml.model", "gpt2")
            w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
            w.add_uint32("general.alignment", 32)
            w.add_tensor("token_embd.weight", np.arange(12, dtype=np.float16).reshape(3, 4))
            w.add_tensor("q", np.zeros((2, 32), dtype=np.float32))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            out["small.gguf"] = p.read_bytes()
    # magic, version 3, 1 tensor, 1 kv: "k" = u32 7; tensor "t" 1-D [4] F32 at offset 0
    kv = struct.pack("<Q", 1) + b"k" + struct.pack("<II", 4, 7)
    ti = struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 4, 0, 0)
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + kv + ti
    head += bytes(-len(head) % 32)
    out["hand.gguf"] = head + bytes(16)
    return out


def embed_seeds() -> dict[str, bytes]:
    # dtype F32, 4 rows, 3 cols, flags (weights|mapping|normalize), 5 mapping entries, then data and ids
    return {
        "f32": bytes([2, 4, 3, 0]) + struct.pack("<12f", *range(12)) + bytes([1, 2, 0xFF, 3]),
        "f16_w_map": bytes([0, 4, 3, 1 | 2 | 8, 5]) + bytes(24) + bytes([0, 1, 2, 3, 1]) + bytes(20) + bytes([1, 2, 4]),
        "i8_dim": bytes([4, 5, 8, 4, 0]) + bytes(range(40)) + bytes([3]) + bytes([0, 1, 0xFF, 2, 3]),
    }


def main() -> None:
    targets = {"safetensors_header": safetensors_seeds, "gguf_parse": gguf_seeds, "embed_ids": embed_seeds}
    which = sys.argv[1:] or list(targets)
    for name in which:
        if name not in targets:
            continue
        d = ROOT / "fuzz" / "corpus" / name
        d.mkdir(parents=True, exist_ok=True)
        if any(d.iterdir()):
            continue
        for fname, data in targets[name]().items():
            (d / fname).write_bytes(data)


if __name__ == "__main__":
    main()
