"""`tokvec.load("org/name")`: models by Hugging Face Hub repo id, read from a real Hub cache laid out on disk.

Each test writes real model folders (saved by tokvec, or by model2vec itself, or WordLlama's own files), lays them
out as huggingface_hub's cache holds a downloaded repo (`models--org--name/blobs/<etag>`, `snapshots/<commit>/<path>`
as relative links to the blobs, `refs/<branch>` holding the commit: huggingface_hub's `file_download.py`), then
loads by repo id in a fresh Python process whose HF_HUB_CACHE points there, HF_HOME at an empty folder, and whose
sockets are blocked: any attempt to connect or resolve a name is written to a log that the test asserts is empty,
so a load that tried to download would fail even where huggingface_hub swallows the error and falls back to the
cache. A fresh process is needed because huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tokvec
from conftest import wordllama_file
from tokvec import hub

PKG_ROOT = str(Path(tokvec.__file__).resolve().parents[1])

# Runs first in every child process: every socket connect and name lookup is refused and logged.
_GUARD = r"""
import os, socket
_LOG = os.environ["TOKVEC_TEST_NET_LOG"]
def _blocked(*args, **kwargs):
    with open(_LOG, "a", encoding="utf-8") as f:
        f.write(repr(args[:3]) + "\n")
    raise OSError("tests/test_hub.py: the network is blocked")
socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
socket.create_connection = _blocked
socket.getaddrinfo = _blocked
import json, pickle, sys
import numpy as np
ARGS = json.loads(os.environ["TOKVEC_TEST_ARGS"])
"""


def run(tmp_path: Path, body: str, args: dict[str, Any] | None = None, *, offline: bool = True,
        cwd: Path | None = None, hub_cache: bool = True) -> Any:
    """Runs `body` in a fresh Python with the Hub cache at tmp_path/hub (HF_HUB_CACHE; without `hub_cache`, only
    HF_HOME=tmp_path/hf-home is set, whose hub/ is then the cache) and the network blocked; returns the JSON its last
    output line holds. Fails when the child used the network or exited with an error."""
    log = tmp_path / "network.log"
    hf_vars = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(hf_vars)}
    env.update(
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_CACHE=str(tmp_path / "hub"),
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKVEC_TEST_NET_LOG=str(log),
        TOKVEC_TEST_ARGS=json.dumps(args or {}),
        PYTHONPATH=os.pathsep.join(p for p in (PKG_ROOT, os.environ.get("PYTHONPATH")) if p),
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if not hub_cache:
        del env["HF_HUB_CACHE"]
    p = subprocess.run([sys.executable, "-c", _GUARD + textwrap.dedent(body)], env=env, cwd=cwd or tmp_path,
                       capture_output=True, text=True, check=False)
    assert not log.exists(), f"the load tried to use the network:\n{log.read_text()}\n{p.stderr}"
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def put_repo(cache: Path, repo_id: str, files: dict[str, Path], *, refs: Sequence[str] = ("main",)) -> str:
    """Lays out `files` (path in the repo -> a local file) as one snapshot of `repo_id` in a Hub cache, the way
    huggingface_hub's download leaves it, and returns its commit hash (derived from the content).

    blobs/ holds each file once under its etag (the sha256 for LFS files, the git blob sha1 for the others),
    snapshots/<commit>/<path> is a relative link to the blob, refs/<name> holds the commit without a newline."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    datas = {rel: src.read_bytes() for rel, src in sorted(files.items())}
    commit = hashlib.sha1(b"".join(rel.encode() + hashlib.sha256(d).digest() for rel, d in datas.items())).hexdigest()
    for rel, data in datas.items():
        lfs = rel.endswith(".safetensors") or len(data) > 10 * 2**20
        etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return commit


def files_of(folder: Path) -> dict[str, Path]:
    """Every file below `folder`, by its path relative to it (what a repo of that folder holds)."""
    return {f.relative_to(folder).as_posix(): f for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def texts(stsb_dev: list[tuple[str, str, float]]) -> list[str]:
    """The first 400 STS-B dev sentences."""
    return [s for a, b, _ in stsb_dev[:200] for s in (a, b)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled default model saved in each format tokvec writes, plus a second model (128 columns) as a later
    revision."""
    root = tmp_path_factory.mktemp("saved")
    m = tokvec.load()
    out = {fmt: m.save(root / fmt, format=fmt) for fmt in ("tokvec", "model2vec", "sentence-transformers")}
    out["dim128"] = tokvec.load(dim=128).save(root / "dim128")
    return out


def embed_by_id(tmp_path: Path, spec: str, texts: list[str], *, offline: bool = True,
                **kw: Any) -> tuple[np.ndarray, Any]:
    """Loads `spec` in a child process (network blocked) and returns its embeddings of `texts` and what it says
    about the load (format, revision recorded for pickling, and whether a pickled copy embeds the same)."""
    out = tmp_path / f"emb-{len(list(tmp_path.glob('emb-*')))}.npy"
    info = run(tmp_path, """
        import tokvec
        m = tokvec.load(ARGS["spec"], **ARGS["kw"])
        e = m.embed(ARGS["texts"])
        np.save(ARGS["out"], e)
        again = pickle.loads(pickle.dumps(m)).embed(ARGS["texts"])
        print(json.dumps({"format": m.format, "revision": m._load_args["revision"],
                          "path": str(m._resolved.safetensors), "pickled_equal": bool((again == e).all()),
                          "dim": m.dim, "max_length": m._max_length}))
    """, {"spec": spec, "texts": texts, "kw": kw, "out": str(out)}, offline=offline)
    return np.load(out), info


# ------------------------------------------------------------------------------------------------ loading by id
@pytest.mark.parametrize("fmt", ["tokvec", "model2vec", "sentence-transformers"])
def test_repo_id_loads_from_the_cache_offline(tmp_path, saved, texts, fmt):
    commit = put_repo(tmp_path / "hub", f"tokvec-tests/base-{fmt}", files_of(saved[fmt]))
    got, info = embed_by_id(tmp_path, f"tokvec-tests/base-{fmt}", texts)
    want = tokvec.load(saved[fmt]).embed(texts)
    assert (got == want).all()
    assert info["format"] == fmt and info["revision"] == commit and info["pickled_equal"]
    assert f"models--tokvec-tests--base-{fmt}/snapshots/{commit}/" in info["path"]


def test_cache_first_when_online(tmp_path, saved, texts):
    """Without HF_HUB_OFFLINE, a cached repo is still read from the cache without asking the Hub (the socket log
    stays empty); so is an `hf://` reference."""
    put_repo(tmp_path / "hub", "tokvec-tests/base", files_of(saved["tokvec"]))
    want = tokvec.load(saved["tokvec"]).embed(texts)
    for spec in ("tokvec-tests/base", "hf://tokvec-tests/base"):
        got, info = embed_by_id(tmp_path, spec, texts, offline=False)
        assert (got == want).all() and info["format"] == "tokvec"


def test_hf_home_cache(tmp_path, saved, texts):
    """With HF_HOME set and HF_HUB_CACHE not, the cache is HF_HOME/hub."""
    commit = put_repo(tmp_path / "hf-home" / "hub", "tokvec-tests/base", files_of(saved["tokvec"]))
    info = run(tmp_path, """
        import tokvec
        m = tokvec.load("tokvec-tests/base")
        print(json.dumps([m._load_args["revision"], m.embed(ARGS["texts"]).tolist()]))
    """, {"texts": texts[:20]}, hub_cache=False)
    assert info[0] == commit and (np.array(info[1], np.float32) == tokvec.load(saved["tokvec"]).embed(texts[:20])).all()


def test_model2vec_repo_saved_by_model2vec(tmp_path, saved, texts):
    """A repo as model2vec's own `save_pretrained` writes it (model.safetensors, config.json, tokenizer.json,
    modules.json, README.md), loaded by id: model2vec's defaults apply and the vectors are model2vec's."""
    from model2vec import StaticModel

    folder = tmp_path / "potion-mini"
    sm = StaticModel.from_pretrained(saved["model2vec"])
    sm.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["max_length"]  # as in the published potion configs: model2vec then cuts at 512 tokens
    (folder / "config.json").write_text(json.dumps(cfg))
    assert {"model.safetensors", "config.json", "tokenizer.json", "modules.json", "README.md"} <= set(files_of(folder))
    put_repo(tmp_path / "hub", "tokvec-tests/potion-mini", files_of(folder))
    got, info = embed_by_id(tmp_path, "tokvec-tests/potion-mini", texts)
    assert info["format"] == "model2vec" and info["max_length"] == 512
    assert (got == tokvec.load(folder).embed(texts)).all()
    ref = StaticModel.from_pretrained(folder).encode(texts).astype(np.float32)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.9999


def test_revision(tmp_path, saved, texts):
    """refs/main and a tag point at two snapshots; `revision=` picks a tag, a branch or a commit, and an unknown
    revision offline says it is not cached."""
    cache = tmp_path / "hub"
    first = put_repo(cache, "tokvec-tests/base", files_of(saved["tokvec"]))
    second = put_repo(cache, "tokvec-tests/base", files_of(saved["dim128"]), refs=("v2",))
    assert first != second
    full, narrow = tokvec.load(saved["tokvec"]).embed(texts), tokvec.load(saved["dim128"]).embed(texts)
    cases = (({}, full, first), ({"revision": "main"}, full, first), ({"revision": "v2"}, narrow, second),
             ({"revision": second}, narrow, second), ({"revision": first}, full, first))
    for kw, want, commit in cases:
        got, info = embed_by_id(tmp_path, "tokvec-tests/base", texts, **kw)
        assert (got == want).all() and info["revision"] == commit and info["pickled_equal"], kw
    err = run(tmp_path, """
        import tokvec
        try:
            tokvec.load("tokvec-tests/base", revision="v3")
        except FileNotFoundError as e:
            print(json.dumps(str(e)))
    """)
    assert "revision 'v3' of Hub repo tokvec-tests/base is not in the local Hugging Face cache" in err


def test_missing_repo_offline_says_how_to_get_it(tmp_path):
    err = run(tmp_path, """
        import tokvec
        try:
            tokvec.load("tokvec-tests/absent")
        except FileNotFoundError as e:
            print(json.dumps(str(e)))
    """)
    assert err.startswith("tokvec-tests/absent: Hub repo tokvec-tests/absent is not in the local Hugging Face cache (")
    assert str(tmp_path / "hub") in err
    assert "`hf download tokvec-tests/absent`" in err and "unset HF_HUB_OFFLINE" in err


def test_incomplete_snapshot_offline(tmp_path, saved):
    """A snapshot that lacks a file tokvec needs (here the tokenizer) is reported, not half-loaded."""
    files = files_of(saved["tokvec"])
    del files["tokenizer.json"]
    put_repo(tmp_path / "hub", "tokvec-tests/partial", files)
    err = run(tmp_path, """
        import tokvec
        try:
            tokvec.load("tokvec-tests/partial")
        except FileNotFoundError as e:
            print(json.dumps(str(e)))
    """)
    assert "has no tokenizer JSON for model.safetensors" in err and "`hf download tokvec-tests/partial`" in err


def test_sharded_checkpoint_needs_only_the_table_shard(tmp_path, make_model, texts):
    """A sharded transformer checkpoint is read from its index and the one shard that holds the table; the other
    shard need not be cached (a download fetches only that shard)."""
    mf = make_model("sharded", "F16", tokenizer="wordpiece")
    files = files_of(mf.path)
    index = json.loads((mf.path / "model.safetensors.index.json").read_text())
    table_shard = index["weight_map"]["model.embed_tokens.weight"]
    other = next(n for n in set(index["weight_map"].values()) if n != table_shard)
    del files[other]
    put_repo(tmp_path / "hub", "tokvec-tests/sharded", files)
    got, info = embed_by_id(tmp_path, "tokvec-tests/sharded", texts)
    assert info["format"] == "transformer" and info["path"].endswith(table_shard)
    assert (got == tokvec.load(mf.path).embed(texts)).all()


def test_wordllama_file_of_a_repo(tmp_path, texts):
    """WordLlama's Hub repos hold one table per size (l2_supercat_64 ... _1024.safetensors) next to one tokenizer
    JSON; `hf://org/name/file.safetensors` loads one of them, and the bare repo id names the files to choose from."""
    f = wordllama_file()
    if f is None:
        pytest.fail("wordllama is a test dependency (its wheel ships l2_supercat_256 and its tokenizer)")
    from safetensors.numpy import load_file, save_file

    tok = f.parent.parent / "tokenizers" / "l2_supercat_tokenizer_config.json"
    small = tmp_path / "l2_supercat_128.safetensors"  # WordLlama's smaller sizes are the first columns (Matryoshka)
    save_file({"embedding.weight": np.ascontiguousarray(load_file(str(f))["embedding.weight"][:, :128])}, str(small))
    put_repo(tmp_path / "hub", "dleemiller/word-llama-l2-supercat",
             {f.name: f, small.name: small, tok.name: tok})
    got, info = embed_by_id(tmp_path, f"hf://dleemiller/word-llama-l2-supercat/{f.name}", texts)
    assert info["format"] == "wordllama"
    assert (got == tokvec.load(f).embed(texts)).all()
    got128, _ = embed_by_id(tmp_path, "hf://dleemiller/word-llama-l2-supercat/l2_supercat_128.safetensors", texts)
    assert (got128 == tokvec.load(f, dim=128).embed(texts)).all()
    err = run(tmp_path, """
        import tokvec
        try:
            tokvec.load("dleemiller/word-llama-l2-supercat")
        except tokvec.FormatError as e:
            print(json.dumps(str(e)))
    """)
    assert "several tables (l2_supercat_128.safetensors, l2_supercat_256.safetensors)" in err
    assert "tokvec.load('hf://dleemiller/word-llama-l2-supercat/l2_supercat_128.safetensors')" in err


# ---------------------------------------------------------------------------------------- local paths stay local
def test_local_paths_never_reach_the_hub(tmp_path, saved, texts):
    """An existing folder wins over a cached repo of the same name; ./org/name, a path under an existing local
    folder and org/name.safetensors are local paths: missing, they are FileNotFoundError, huggingface_hub is
    never imported and nothing touches the network."""
    put_repo(tmp_path / "hub", "tokvec-tests/base", files_of(saved["tokvec"]))
    work = tmp_path / "work"
    (work / "tokvec-tests").mkdir(parents=True)
    saved["dim128"].rename(work / "tokvec-tests" / "base")  # a local folder named like the repo
    (work / "models").mkdir()
    out = run(tmp_path, """
        import tokvec
        m = tokvec.load("tokvec-tests/base")
        result = {"dim": m.dim, "load_revision": m._load_args["revision"]}
        for spec in ("./tokvec-tests/other", "tokvec-tests/other", "models/mine", "org/name.safetensors",
                     "/no/such/org/name", "a/b/c"):
            try:
                tokvec.load(spec)
            except FileNotFoundError as e:
                result[spec] = str(e)
        try:
            tokvec.load("./tokvec-tests/base", revision="main")
        except ValueError as e:
            result["revision"] = str(e)
        result["hub_imported"] = "huggingface_hub" in sys.modules
        print(json.dumps(result))
    """, cwd=work)
    assert out.pop("dim") == 128 and out.pop("load_revision") is None  # the local folder, not the cached repo
    assert out.pop("hub_imported") is False
    assert out.pop("revision") == (
        "revision='main' applies to Hub repos (org/name), but ./tokvec-tests/base is a local path"
    )
    for spec, msg in out.items():
        assert msg.endswith("no such file or folder"), (spec, msg)


def test_import_is_light(tmp_path):
    out = run(tmp_path, """
        import tokvec
        before = "huggingface_hub" in sys.modules
        tokvec.load()
        print(json.dumps([before, "huggingface_hub" in sys.modules]))
    """)
    assert out == [False, False]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("minishlab/potion-base-8M", hub.HubRef("minishlab/potion-base-8M", "minishlab/potion-base-8M")),
        ("hf://minishlab/potion-base-8M", hub.HubRef("hf://minishlab/potion-base-8M", "minishlab/potion-base-8M")),
        ("hf://a/b/sub/t.safetensors", hub.HubRef("hf://a/b/sub/t.safetensors", "a/b", "sub/t.safetensors")),
        ("./minishlab/potion-base-8M", None),
        ("../a/b", None),
        ("a/b/c", None),
        ("a/b.safetensors", None),
        ("a--b/c", None),
        ("a/b..c", None),
        ("~/x", None),
        ("/abs", None),
        ("plain", None),
    ],
)
def test_parse(spec, expected):
    assert hub.parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hf://only", "expected hf://org/name or hf://org/name/path/in/repo.safetensors"),
        ("hf://a/b@v1", "give the revision as revision='...', not after '@'"),
        ("hf://a/b/model.bin", "a file in a repo must be a .safetensors file"),
        ("hf://a/b/../x.safetensors", "a file in a repo must be a .safetensors file"),
        ("hf://datasets/x/y", "only model repos hold models"),
    ],
)
def test_bad_hf_references(spec, message):
    with pytest.raises(ValueError) as e:
        tokvec.load(spec)
    assert str(e.value).startswith(f"{spec}: {message}")
