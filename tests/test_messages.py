"""Messages of `extract`, `inspect` / `tokvec info` and the tokenizer reader on the mistakes a new user makes: they
name the user's own paths and say what is wrong in one line, never a hidden temporary folder, an internal variable
or a Rust type, and the output folder is checked before any work."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import tokvec
from safetensors.numpy import load_file
from tokvec import TokenizerError
from tokvec.cli import main
from tokvec.extract import extract, inspect

DEFAULT = Path(tokvec.__file__).parent / "models" / "default"


def _cli_error(capsys, *argv: str) -> str:
    """The one stderr line of a failing command (exit code 2)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------ extract: the output
def test_extract_output_parent_missing(tmp_path, capsys) -> None:
    out = tmp_path / "nodir" / "sub" / "out"
    with pytest.raises(FileNotFoundError) as e:
        extract(DEFAULT, out)
    assert str(e.value) == f"{out}: folder {out.parent} does not exist"
    assert _cli_error(capsys, "extract", str(DEFAULT), str(out)) == f"tokvec extract: error: {e.value}"
    assert not (tmp_path / "nodir").exists()


def test_extract_output_parent_is_a_file(tmp_path, capsys) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("a file, not a folder\n", encoding="utf-8")
    out = f / "out"
    with pytest.raises(NotADirectoryError) as e:
        extract(DEFAULT, out)
    assert str(e.value) == f"{out}: {f} is a file, not a folder"
    assert _cli_error(capsys, "extract", str(DEFAULT), str(out)) == f"tokvec extract: error: {e.value}"


def test_extract_output_exists(tmp_path, capsys) -> None:
    f = tmp_path / "out.txt"
    f.write_text("x", encoding="utf-8")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x", encoding="utf-8")
    for out in (f, full):
        with pytest.raises(FileExistsError, match=f"^{re.escape(str(out))}: exists and is not an empty folder$"):
            extract(DEFAULT, out)
        assert _cli_error(capsys, "extract", str(DEFAULT), str(out)).endswith(f"{out}: exists and is not an empty folder")
    assert (full / "keep.txt").read_text(encoding="utf-8") == "x" and sorted(os.listdir(tmp_path)) == ["full", "out.txt"]


def test_extract_output_parent_not_writable(tmp_path, capsys) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    if os.geteuid() != 0:
        parent.chmod(0o555)
        undo = ["chmod", "755", str(parent)]
    else:
        # root writes in any folder whatever its mode, but not in an immutable one
        made = shutil.which("chattr") and subprocess.run(["chattr", "+i", str(parent)], check=False, capture_output=True)
        if not made or made.returncode:
            pytest.skip("running as root, and this file system has no immutable folders (chattr +i)")
        undo = ["chattr", "-i", str(parent)]
    try:
        with pytest.raises(PermissionError) as e:
            extract(DEFAULT, parent / "out")
        assert str(e.value) == f"{parent / 'out'}: no permission to create a folder in {parent}"
        assert _cli_error(capsys, "extract", str(DEFAULT), str(parent / "out")) == f"tokvec extract: error: {e.value}"
    finally:
        subprocess.run(undo, check=True)
    assert os.listdir(parent) == []


def test_extract_failure_leaves_nothing_and_success_fills_an_empty_folder(tmp_path, capsys) -> None:
    # a failure once the output's hidden folder exists: it is removed, and the message names the user's paths
    err = _cli_error(capsys, "extract", str(DEFAULT), str(tmp_path / "out"), "--key", "nope")
    assert "no tensor named 'nope'" in err and ".out." not in err
    err = _cli_error(capsys, "extract", str(DEFAULT), str(tmp_path / "out"), "--pca", "--dim", "9999")
    assert err == "tokvec extract: error: dim=9999 (--dim) is larger than the table's 256 columns"
    assert os.listdir(tmp_path) == []
    out = tmp_path / "out"
    out.mkdir()
    assert extract(DEFAULT, out) == out
    assert tokvec.load(out).embed("a test").shape == (256,) and _hidden(tmp_path) == []


# ------------------------------------------------------------------------------------------ tokenizer files
@pytest.fixture
def broken_model(tmp_path):
    """The bundled model's folder with its tokenizer.json replaced by the given text."""

    def make(tokenizer: str) -> Path:
        d = tmp_path / f"model{len(list(tmp_path.iterdir()))}"
        shutil.copytree(DEFAULT, d)
        (d / "tokenizer.json").write_text(tokenizer, encoding="utf-8")
        return d

    return make


GOOD = json.loads((DEFAULT / "tokenizer.json").read_text(encoding="utf-8"))
BROKEN = {
    # tokenizer.json text: what the message says after "<path>: "
    "{bad": "not valid JSON (key must be a string at line 1 column 2)",
    '{"model": 3}': 'not a tokenizer JSON (it has "model": 3; a tokenizer has a "model" object, e.g. {"type": "BPE", ...})',
    "[1, 2]": "not a tokenizer JSON (the top level is an array, not an object)",
    "": "the file is empty, so not a tokenizer JSON",
    json.dumps(GOOD)[:300]: "not valid JSON (EOF while parsing a string at line 1 column 300)",
    json.dumps({**GOOD, "model": {**GOOD["model"], "type": "Nope"}}): (
        'not a tokenizer JSON the tokenizers library can build (the "model" section is in no form the tokenizers '
        "library reads at line 1 column "
    ),
}


@pytest.mark.parametrize("text", list(BROKEN), ids=[f"case{i}" for i in range(len(BROKEN))])
def test_broken_tokenizer_json(broken_model, capsys, text: str) -> None:
    d = broken_model(text)
    f = d / "tokenizer.json"
    expected = f"{f}: {BROKEN[text]}"
    # tokvec.load: a TokenizerError naming the file
    with pytest.raises(TokenizerError) as e:
        tokvec.load(d)
    assert str(e.value).startswith(expected) and "Untagged" not in str(e.value)
    # inspect / tokvec info: the rest is described, and the tokenizer line says the file is there but unusable
    info = inspect(d)
    assert info.tokenizer is None and info.tokenizer_error.startswith(expected) and info.key == "embeddings"
    assert f"\ntokenizer:  found but unusable: {expected}" in str(info)
    assert main(["info", str(d)]) == 0
    out = capsys.readouterr().out
    assert f"\ntokenizer:  found but unusable: {expected}" in out and "none found" not in out
    assert main(["info", str(d), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokenizer_error"].startswith(expected)
    # extract: the same message
    with pytest.raises(TokenizerError) as e:
        extract(d, d.parent / f"{d.name}-out")
    assert str(e.value).startswith(expected)


def test_tokenizer_json_is_a_folder(tmp_path, capsys) -> None:
    d = tmp_path / "model"
    shutil.copytree(DEFAULT, d)
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.json").mkdir()
    expected = f"{d / 'tokenizer.json'}: a folder, not a tokenizer JSON file"
    assert inspect(d).tokenizer_error == expected
    assert _cli_error(capsys, "extract", str(d), str(tmp_path / "out")) == f"tokvec extract: error: {expected}"
    err = _cli_error(capsys, "extract", str(DEFAULT), str(tmp_path / "out"), "--tokenizer", str(tmp_path))
    assert err == f"tokvec extract: error: {tmp_path}: a folder, not a tokenizer JSON file"


def test_gguf_metadata_that_makes_no_tokenizer(tmp_path, capsys) -> None:
    # a byte-level BPE whose merge "t 1" names a token ("t") that is not in the vocabulary: the message names the
    # GGUF file and the problem, not a line and column of the JSON rebuilt from the metadata
    table = load_file(DEFAULT / "model.safetensors")["embeddings"][:100].astype(np.float32)
    p = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(p), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(100)])
    w.add_token_merges(["t 1"])
    w.add_tensor("token_embd.weight", table)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    expected = (
        f"{p}: its tokenizer metadata does not make a valid tokenizer (Token `t` out of vocabulary); "
        "pass the model's tokenizer.json with tokenizer='...'"
    )
    assert inspect(p).tokenizer_error == expected
    assert _cli_error(capsys, "extract", str(p), str(tmp_path / "out")) == f"tokvec extract: error: {expected}"
