"""The bottom layer's file formats: one model-folder writer (atomic for every writer: `Model.save`, `extract`,
`distill`/`tune`) and one safetensors reader (the teacher's too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokvec import FormatError
from tokvec._io import read_safetensors, write_safetensors
from tokvec.train.distill import save_model
from tokvec.train.teacher import Teacher, TeacherError


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_model_writes_the_folder_as_one_unit(tmp_path):
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    # a failure after the table is written (here: a tokenizer that is not a str) leaves no folder behind
    with pytest.raises(TypeError):
        save_model(tmp_path / "out", emb, None, 123, {})  # type: ignore[arg-type]
    assert _leftovers(tmp_path) == []
    # missing parents are still made, and a complete folder is written
    out = save_model(tmp_path / "a" / "b" / "out", emb, np.ones(4, np.float32), "{}", {"x": 1})
    assert _leftovers(out) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert _leftovers(out.parent) == ["out"]
    got = read_safetensors(out / "model.safetensors")
    np.testing.assert_array_equal(got["embeddings"], emb)
    with pytest.raises(FileExistsError, match="not an empty folder"):
        save_model(out, emb, None, "{}", {})


def test_read_safetensors_floats_only_bf16_exact(tmp_path):
    bf16_bits = np.array([0x3F80, 0xC000, 0x7F7F], np.uint16)  # 1.0, -2.0, the largest finite bfloat16
    f16 = np.array([[0.5, -1.25]], np.float16)
    p = tmp_path / "t.safetensors"
    write_safetensors(
        p,
        {
            "b": ("BF16", [3], bf16_bits.astype("<u2").tobytes()),
            "h": ("F16", [1, 2], f16.astype("<f2").tobytes()),
            "ids": ("I64", [2], np.array([1, 2], "<i8").tobytes()),
        },
    )
    got = read_safetensors(p)
    assert sorted(got) == ["b", "h"]  # integer buffers are not weights
    np.testing.assert_array_equal(got["b"], (bf16_bits.astype(np.uint32) << 16).view(np.float32))
    assert got["h"].dtype == np.float32 and got["h"].tolist() == [[0.5, -1.25]]


def test_a_broken_file_is_a_format_error_naming_it_and_a_teacher_error_for_a_teacher(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    with pytest.raises(FormatError, match="model.safetensors"):
        read_safetensors(p)
    (tmp_path / "config.json").write_text(
        '{"model_type": "bert", "hidden_size": 4, "num_attention_heads": 1, "num_hidden_layers": 1, '
        '"intermediate_size": 8, "hidden_act": "gelu"}'
    )
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(TeacherError, match="model.safetensors"):
        Teacher(tmp_path)
