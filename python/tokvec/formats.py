"""Format detection: from a path to the table, the tokenizer and the pooling settings.

Detected from the files, no configuration by hand:

- tokvec: `config.json` with `"format": "tokvec"`, `model.safetensors` (`embeddings` [V, d],
  optional `weights` [V] and `mapping` [V]), `tokenizer.json`. Written by `Model.save`.
- model2vec: `model.safetensors` with `embeddings` (f16/f32/f64/int8), optional `weights`/`mapping`,
  `tokenizer.json`, `config.json`. Read with model2vec's own defaults: unknown-token ids are dropped,
  `normalize` is False unless the config says so, and texts are cut at the config's `max_length` tokens
  (512 when the config has no such key, null for no cap), as `StaticModel.encode` does.
- WordLlama: a `.safetensors` file with `embedding.weight` [V, d] and a tokenizer JSON, found next
  to it or in the wheel's layout (`weights/<name>_<dim>.safetensors`,
  `tokenizers/<name>_tokenizer_config.json`). Encoded with `add_special_tokens=False`.
- sentence-transformers StaticEmbedding folders (`0_StaticEmbedding/model.safetensors` with
  `embedding.weight` and its `tokenizer.json`), L2-normalized when `modules.json` lists a `Normalize` module
  (as sentence-transformers does).
- a raw transformer checkpoint folder (`model.safetensors` or shards with
  `model.safetensors.index.json`, plus `tokenizer.json`): the input embedding table is found by
  name (`embed_tokens`, `word_embeddings`, `wte`, `tok_embeddings`, ...).
- any folder or file with one 2-D table plus a tokenizer JSON (mean pooling, L2-normalized).

A string that is no existing path may name a Hugging Face Hub repo (``"org/name"``, ``"hf://org/name"``): the rule
and the cache are in `tokvec.hub`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokvec import hub
from tokvec._core import FormatError, SafetensorsFile
from tokvec.config import get_typed, read_json

__all__ = [
    "DEFAULT_MODEL_DIR",
    "EMBEDDING_NAMES",
    "EMBEDDING_SUFFIXES",
    "LM_HEAD_NAMES",
    "Resolved",
    "detect_table",
    "resolve",
    "table_by_name",
]

DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "default"

#: Exact tensor names of input embedding tables, most specific first.
EMBEDDING_NAMES = (
    "embeddings",
    "embedding.weight",
    "model.embed_tokens.weight",
    "embed_tokens.weight",
    "embeddings.word_embeddings.weight",
    "bert.embeddings.word_embeddings.weight",
    "transformer.wte.weight",
    "wte.weight",
    "tok_embeddings.weight",
    "model.tok_embeddings.weight",
    "token_embd.weight",
    "word_embeddings.weight",
    "embeddings.weight",
    "gpt_neox.embed_in.weight",
    "shared.weight",
)
#: Name endings that mark an input embedding table in other checkpoints.
EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "word_embeddings.weight",
    "wte.weight",
    "tok_embeddings.weight",
    "token_embd.weight",
    "embedding.weight",
    "embed_in.weight",
)
#: Output projections that are the input table when the weights are tied (used only as a last resort).
LM_HEAD_NAMES = ("lm_head.weight", "output.weight", "embed_out.weight")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
#: model2vec's `StaticModel.encode` cuts texts at this many tokens unless the config's `max_length` says otherwise.
MODEL2VEC_MAX_LENGTH = 512


@dataclass
class Resolved:
    """Everything `tokvec.load` needs to build a model."""

    format: str
    safetensors: Path
    table: str
    tokenizer: Path
    weights: str | None = None
    mapping: str | None = None
    normalize: bool = True
    add_special_tokens: bool = False
    skip_unk: bool = False
    skip_ids: tuple[int, ...] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    #: tokens pooled per text by default (None: no cap); `load(max_length=...)` overrides it
    max_length: int | None = None
    #: the commit of the Hub snapshot the files come from (None: a local path)
    revision: str | None = None


def resolve(
    path: str | Path | None,
    *,
    tokenizer: str | Path | None = None,
    table: str | None = None,
    revision: str | None = None,
) -> Resolved:
    """Detects the format of `path` (None: the bundled default model).

    Args:
        path: a model folder or a `.safetensors` file, a bundled model's name, or a Hugging Face Hub repo
            (``"org/name"`` or ``"hf://org/name[/file.safetensors]"``; which strings are repos: `tokvec.hub`).
        tokenizer: an explicit tokenizer JSON, overriding the one found next to the table.
        table: an explicit table tensor name, overriding detection.
        revision: a branch, tag or commit of the Hub repo (default: main); only for repos.

    Raises:
        FileNotFoundError: `path` does not exist (or the repo is neither cached nor downloadable: the message says
            why and how to get it).
        FormatError: the files are not a model tokvec reads; the message says what is missing.
        ValueError: `revision` given for a local path, or a malformed ``hf://`` reference.
    """
    p = DEFAULT_MODEL_DIR if path is None else Path(path).expanduser()
    if table is not None and not isinstance(table, str):
        raise TypeError(f"table must be a tensor name (str), got {type(table).__name__}")
    if revision is not None and not isinstance(revision, str):
        raise TypeError(f"revision must be a str (branch, tag or commit), got {type(revision).__name__}")
    ref = hub.parse(path) if isinstance(path, str) and not p.exists() else None
    if revision is not None and ref is None:
        raise ValueError(f"revision={revision!r} applies to Hub repos (org/name), but {path} is a local path")
    if ref is not None:
        r = _resolve_hub(ref, revision, table, tokenizer is not None)
    else:
        if not p.exists() and isinstance(path, str) and _looks_like_name(path):
            names = bundled_models()
            if path not in names:
                raise FileNotFoundError(
                    f"{path}: no such file or folder, and not a bundled model; bundled models: "
                    f"{', '.join(sorted(names))}"
                )
            p = names[path]
        if not p.exists():
            _check_link(p)
            if path is None:
                raise FileNotFoundError(f"{p}: the bundled default model is missing; reinstall tokvec")
            raise FileNotFoundError(f"{p}: no such file or folder")
        r = _resolve_dir(p, table) if p.is_dir() else _resolve_file(p, table)
    if tokenizer is not None:
        r.tokenizer = Path(tokenizer).expanduser()
        if not r.tokenizer.is_file():
            raise FileNotFoundError(f"{r.tokenizer}: tokenizer file not found (passed as tokenizer=)")
    if not r.tokenizer or not Path(r.tokenizer).is_file():
        raise FormatError(f"{p}: no tokenizer JSON found; pass tokenizer='path/to/tokenizer.json'")
    return r


class _Incomplete(Exception):
    """A Hub snapshot without a file tokvec needs (not cached yet, or not in the repo)."""


def _resolve_hub(ref: hub.HubRef, revision: str | None, table: str | None, tokenizer_given: bool) -> Resolved:
    """The model in the repo's cached snapshot; the files tokvec reads are downloaded first when the cache lacks
    them and downloads are allowed."""
    folder = hub.cached(ref, revision)
    if folder is not None:
        try:
            return _resolve_snapshot(ref, folder, table, tokenizer_given, fetch=not hub.offline())
        except _Incomplete as e:
            if hub.offline():
                raise FileNotFoundError(
                    f"{ref.spec}: the cached snapshot {folder} {e}; HF_HUB_OFFLINE is set, so nothing is downloaded: "
                    f"get the files with `{hub.get_command(ref)}`, or unset HF_HUB_OFFLINE"
                ) from None
    folder = hub.download(ref, revision)
    try:
        return _resolve_snapshot(ref, folder, table, tokenizer_given, fetch=True)
    except _Incomplete as e:
        if ref.filename is not None and not (folder / ref.filename).is_file():
            raise FileNotFoundError(f"{ref.spec}: Hub repo {ref.repo_id} has no file {ref.filename}") from None
        raise FormatError(f"{ref.spec}: the repo (snapshot {folder}) {e}") from None


def _resolve_snapshot(ref: hub.HubRef, folder: Path, table: str | None, tokenizer_given: bool, *,
                      fetch: bool) -> Resolved:
    """Format detection on a Hub snapshot folder (`ref.filename` in it, if given). A sharded checkpoint's shard
    that holds the table is fetched when missing and `fetch`.

    Raises:
        _Incomplete: a file tokvec needs is missing (the message continues "the snapshot ...").
    """
    if ref.filename is not None:
        target = folder / ref.filename
        if not target.is_file():
            raise _Incomplete(f"has no {ref.filename}")
    else:
        target = folder
        model_files = ("model.safetensors", "model.safetensors.index.json", "0_StaticEmbedding")
        if not any((folder / f).exists() for f in model_files):
            tables = sorted(f.name for f in folder.glob("*.safetensors"))
            if not tables:
                raise _Incomplete(
                    "has no model.safetensors, model.safetensors.index.json or 0_StaticEmbedding/ (a repo with one "
                    "table file per size, as WordLlama's, is loaded one file at a time: "
                    f"tokvec.load('{hub.PREFIX}{ref.repo_id}/<file>.safetensors'))"
                )
            if len(tables) > 1:
                raise FormatError(
                    f"{ref.spec}: the repo holds several tables ({', '.join(tables)}); load one: "
                    f"tokvec.load('{hub.PREFIX}{ref.repo_id}/{tables[0]}')"
                )
        static = folder / "0_StaticEmbedding"
        if static.is_dir() and not (static / "model.safetensors").exists():
            raise _Incomplete("has no 0_StaticEmbedding/model.safetensors")
    r = _resolve_dir(target, table) if target.is_dir() else _resolve_file(target, table)
    if not tokenizer_given and not (r.tokenizer and Path(r.tokenizer).is_file()):
        raise _Incomplete(f"has no tokenizer JSON for {r.safetensors.relative_to(folder)}")
    if not r.safetensors.exists():
        shard = r.safetensors.relative_to(folder).as_posix()
        if not fetch:
            raise _Incomplete(f"lacks {shard}, the shard that holds the table")
        hub.download(ref, folder.name, files=[shard])
    r.revision = folder.name
    return r


def _looks_like_name(path: str) -> bool:
    """A bare name (no folder separator, no file suffix) that may name a bundled model."""
    return bool(path) and "/" not in path and os.sep not in path and not path.startswith(".") and "." not in path


def bundled_models() -> dict[str, Path]:
    """Names of the models shipped under ``tokvec/models/``: each folder's name, and the ``"name"`` of its
    config.json when it has one (e.g. ``default`` and ``tokvec-base-256`` for the same folder)."""
    root = DEFAULT_MODEL_DIR.parent
    out: dict[str, Path] = {}
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not (d / "config.json").is_file():
            continue
        out[d.name] = d
        try:
            name = json.loads((d / "config.json").read_text(encoding="utf-8")).get("name")
        except (OSError, ValueError):
            name = None
        if isinstance(name, str) and name:
            out.setdefault(name, d)
    return out


def _check_link(p: Path) -> None:
    """Raises FileNotFoundError naming the problem when `p` is a symbolic link that resolves to nothing."""
    if p.is_symlink() and not p.exists():
        raise FileNotFoundError(f"{p}: a symbolic link that leads nowhere (dangling, or a loop of links)")


def _check_suffix(p: Path) -> None:
    s = p.suffix.lower()
    if s in PICKLE_SUFFIXES:
        raise FormatError(
            f"{p}: pickle checkpoints ({s}) are never unpickled by tokvec (loading them can run code); "
            "convert the model to safetensors first"
        )
    if s == ".gguf":
        raise FormatError(f"{p}: GGUF files are not loaded directly; extract the embedding table to safetensors first")
    if s != ".safetensors":
        raise FormatError(f"{p}: expected a .safetensors file or a model folder")


def _find_tokenizer_near(st: Path) -> Path | None:
    d = st.parent
    for cand in (d / "tokenizer.json",):
        if cand.is_file():
            return cand
    # WordLlama's wheel: weights/l2_supercat_256.safetensors + tokenizers/l2_supercat_tokenizer_config.json
    parts = st.stem.split("_")
    for n in range(len(parts), 0, -1):
        prefix = "_".join(parts[:n])
        for folder in (d, d.parent / "tokenizers"):
            for name in (f"{prefix}_tokenizer_config.json", f"{prefix}_tokenizer.json", f"{prefix}.tokenizer.json"):
                if (folder / name).is_file():
                    return folder / name
    found = sorted(x for x in d.glob("*tokenizer*.json") if x.name != "tokenizer_config.json")
    return found[0] if len(found) == 1 else None


def _tensors(st: Path) -> dict[str, tuple[str, list[int]]]:
    return SafetensorsFile(st).tensors()


#: Rows a table may have beyond the tokenizer's ids (checkpoints pad their vocabulary to a multiple of 64 or so).
PADDING_SLACK = 1024


def _fits(rows: int, vocab: int | None) -> bool:
    return vocab is None or vocab <= rows <= vocab + max(PADDING_SLACK, vocab // 8)


def _is_head(name: str) -> bool:
    return name in LM_HEAD_NAMES or name.endswith(LM_HEAD_NAMES)


def table_by_name(names: list[str] | dict[str, Any]) -> list[str]:
    """The tensors named like an input embedding table: the first exact name found (most specific first) when
    there is one, else every name with a table's ending (sorted)."""
    exact = [n for n in EMBEDDING_NAMES if n in names]
    return exact[:1] or sorted(n for n in names if n.endswith(EMBEDDING_SUFFIXES))


def detect_table(shapes: dict[str, list[int]], where: str, *, vocab: int | None = None,
                 arg: str = "table='<name>'") -> str:
    """The input embedding table among a checkpoint's tensors (name -> shape): the rule `tokvec.load` and
    `tokvec.extract` share.

    1. a 2-D tensor with an exact table name (`EMBEDDING_NAMES`, most specific first), else the only one whose name
       ends like a table (`EMBEDDING_SUFFIXES`); several such names are told apart by their row count when the
       tokenizer's id count `vocab` is known, else refused;
    2. when no name says "table": with `vocab`, the only 2-D tensor whose row count fits the tokenizer; without it,
       the only 2-D tensor;
    3. an output projection (`lm_head.weight`, `output.weight`, `embed_out.weight`) is never picked by itself: it is
       the input table only when the model ties its weights, which the checkpoint does not say (a checkpoint that
       ties them normally stores the input table's name). The error names it, so passing it is one step.

    Args:
        shapes: tensor name -> shape.
        where: the file or index the errors name.
        vocab: the tokenizer's id count, when known.
        arg: how the caller's option is spelled in the errors ("table='<name>'" for load, "key=..." for extract).

    Raises:
        FormatError: no table, or several candidates (listed with their shapes).
    """
    two_d = {k: s for k, s in shapes.items() if len(s) == 2}
    for name in EMBEDDING_NAMES:
        if name in two_d and _fits(two_d[name][0], vocab):
            return name
    by_name = sorted(k for k in two_d if k in EMBEDDING_NAMES or k.endswith(EMBEDDING_SUFFIXES))
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        fit = [k for k in by_name if _fits(two_d[k][0], vocab)]
        if len(fit) == 1:
            return fit[0]
        cands = fit or by_name
        raise FormatError(
            f"{where}: several embedding tables ({', '.join(f'{k} {two_d[k]}' for k in cands)}); pass {arg}"
        )
    heads = sorted(k for k in two_d if _is_head(k))
    others = sorted(k for k in two_d if k not in heads)
    if vocab is not None:
        fit = [k for k in others if _fits(two_d[k][0], vocab)]
        if len(fit) == 1:
            return fit[0]
        if len(fit) > 1:
            raise FormatError(
                f"{where}: no tensor is named like an embedding table and several have a row count close to the "
                f"tokenizer's {vocab} ids ({', '.join(f'{k} {two_d[k]}' for k in fit)}); pass {arg}"
            )
    elif len(two_d) == 1 and others:
        return others[0]
    if heads:
        head = f"{heads[0]} {two_d[heads[0]]}"
        raise FormatError(
            f"{where}: no input embedding table found; the only candidate is the output projection {head}, which "
            f"is the input table only when the model ties its input and output embeddings; if it does, pass "
            f"{arg.replace('<name>', heads[0])}"
        )
    listed = ", ".join(sorted(shapes)[:12]) + (", ..." if len(shapes) > 12 else "")
    raise FormatError(
        f"{where}: no input embedding table found (looked for names ending in {', '.join(EMBEDDING_SUFFIXES)}"
        f"{f' and 2-D tensors with about {vocab} rows' if vocab else ' or a single 2-D tensor'}; the checkpoint "
        f"has: {listed or 'no tensors'}); pass {arg}"
    )


def _pick_table(st: Path, tensors: dict[str, tuple[str, list[int]]], table: str | None = None) -> str:
    if table is not None:
        if table not in tensors:
            listed = ", ".join(sorted(tensors)[:12]) + (", ..." if len(tensors) > 12 else "")
            raise FormatError(f"{st}: no tensor named {table!r} (the file has: {listed or 'no tensors'})")
        if len(tensors[table][1]) != 2:
            raise FormatError(f"{st}: tensor {table!r} has shape {tensors[table][1]}, expected a 2-D table")
        return table
    return detect_table({k: list(v[1]) for k, v in tensors.items()}, str(st))


def _resolve_file(st: Path, table: str | None) -> Resolved:
    _check_suffix(st)
    tensors = _tensors(st)
    name = _pick_table(st, tensors, table)
    fmt = "wordllama" if name == "embedding.weight" else "table"
    tok = _find_tokenizer_near(st)
    return Resolved(fmt, st, name, tok or Path(""))


def _resolve_dir(d: Path, table: str | None) -> Resolved:
    # sentence-transformers StaticEmbedding
    static = d / "0_StaticEmbedding"
    if (d / "modules.json").is_file() and static.is_dir():
        st = static / "model.safetensors"
        if not st.exists():
            raise FormatError(f"{static}: StaticEmbedding folder without model.safetensors")
        tensors = _tensors(st)
        name = "embedding.weight" if table is None and "embedding.weight" in tensors else _pick_table(st, tensors, table)
        tok = static / "tokenizer.json"
        modules = _read_modules(d / "modules.json")
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        return Resolved("sentence-transformers", st, name, tok if tok.is_file() else Path(""), normalize=normalize)

    cfg_path = d / "config.json"
    # exists(), not is_file(): a folder named config.json is an error (read_json says so), not "no config"
    cfg: dict[str, Any] = read_json(cfg_path) if cfg_path.exists() else {}
    st = d / "model.safetensors"
    if not st.exists():
        st_index = d / "model.safetensors.index.json"
        if st_index.exists():
            return _resolve_sharded(d, st_index, table)
        files = sorted(d.glob("*.safetensors"))
        if len(files) == 1:
            st = files[0]
        elif files:
            raise FormatError(f"{d}: several .safetensors files ({', '.join(f.name for f in files)}); pass one file")
        else:
            pickles = [f.name for f in d.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES]
            hint = f" (found {', '.join(pickles)}: pickles are never loaded; convert to safetensors)" if pickles else ""
            raise FormatError(f"{d}: no model.safetensors in this folder{hint}")
    _check_link(st)
    tensors = _tensors(st)
    tok = d / "tokenizer.json"
    tok_path = tok if tok.is_file() else (_find_tokenizer_near(st) or Path(""))

    if cfg.get("format") == "tokvec":
        r = _resolve_tokvec(d, st, tensors, tok_path, cfg, cfg_path)
        if table is not None:
            r.table = _pick_table(st, tensors, table)
        return r
    if table is None and "embeddings" in tensors and len(tensors["embeddings"][1]) == 2:
        # model2vec, with StaticModel's defaults where the config is silent: no normalization, 512 tokens
        return Resolved(
            "model2vec",
            st,
            "embeddings",
            tok_path,
            weights="weights" if "weights" in tensors else None,
            mapping="mapping" if "mapping" in tensors else None,
            normalize=get_typed(cfg, "normalize", bool, False, cfg_path),
            skip_unk=True,
            config=cfg,
            max_length=_max_length(cfg, cfg_path, MODEL2VEC_MAX_LENGTH),
        )
    name = _pick_table(st, tensors, table)
    fmt = "wordllama" if name == "embedding.weight" else ("transformer" if len(tensors) > 1 else "table")
    return Resolved(fmt, st, name, tok_path, config=cfg)


def _resolve_tokvec(
    d: Path, st: Path, tensors: dict[str, Any], tok: Path, cfg: dict[str, Any], cfg_path: Path
) -> Resolved:
    version = get_typed(cfg, "format_version", int, 1, cfg_path)
    if version > 1:
        raise FormatError(f"{cfg_path}: format_version {version} is newer than this tokvec reads (1); upgrade tokvec")
    table = get_typed(cfg, "table", str, "embeddings", cfg_path)
    if table not in tensors:
        raise FormatError(f"{st}: tokvec model without its table {table!r} (named by {cfg_path})")
    skip = get_typed(cfg, "skip_ids", list, None, cfg_path)
    if skip is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in skip):
        raise FormatError(f"{cfg_path}: key 'skip_ids' must be a list of non-negative ints")
    return Resolved(
        "tokvec",
        st,
        table,
        tok,
        weights="weights" if "weights" in tensors else None,
        mapping="mapping" if "mapping" in tensors else None,
        normalize=get_typed(cfg, "normalize", bool, True, cfg_path),
        add_special_tokens=get_typed(cfg, "add_special_tokens", bool, False, cfg_path),
        skip_ids=tuple(skip) if skip is not None else None,
        config=cfg,
        max_length=_max_length(cfg, cfg_path, None),
    )


def _max_length(cfg: dict[str, Any], cfg_path: Path, default: int | None) -> int | None:
    """The config's `max_length`: a positive int, or null for no cap; `default` when the key is absent."""
    if "max_length" not in cfg:
        return default
    value = get_typed(cfg, "max_length", int, None, cfg_path)
    if value is not None and value < 1:
        raise FormatError(f"{cfg_path}: key 'max_length' must be a positive int or null, got {value}")
    return value


def _read_modules(path: Path) -> list[dict[str, Any]]:
    """The module list of a sentence-transformers `modules.json`."""
    data = read_json(path, list)
    if not all(isinstance(m, dict) for m in data):
        raise FormatError(f"{path}: expected a list of module objects ({{\"type\": ..., \"path\": ...}})")
    return data


def _resolve_sharded(d: Path, index: Path, table: str | None) -> Resolved:
    idx = read_json(index)
    wm = idx.get("weight_map")
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise FormatError(f"{index}: 'weight_map' must map tensor names to shard file names")
    if table is not None and table not in wm:
        raise FormatError(f"{index}: no tensor named {table!r} in weight_map")
    names = [table] if table is not None else table_by_name(wm)
    if not names:
        heads = sorted(k for k in wm if _is_head(k))
        why = (f" (only the output projection {heads[0]}, the input table only when the model ties its input and "
               f"output embeddings; if it does, pass table={heads[0]!r})") if heads else ""
        raise FormatError(f"{index}: no input embedding table in weight_map{why}; pass table='<name>'")
    if len(names) > 1 and names[0] not in EMBEDDING_NAMES:
        raise FormatError(f"{index}: several embedding tables ({', '.join(names)}); pass table='<name>'")
    # checked on the path as written, not on where links lead: a Hub snapshot's files are links into its blobs/
    shard = Path(os.path.normpath(d / wm[names[0]]))
    if Path(os.path.normpath(d)) not in shard.parents:
        raise FormatError(f"{index}: shard {wm[names[0]]!r} lies outside the model folder")
    tok = d / "tokenizer.json"
    return Resolved("transformer", shard, names[0], tok if tok.is_file() else Path(""))
