"""Models by Hugging Face Hub repo id: which strings name a repo, and the local Hub cache behind them.

`tokvec.load` (through `formats.resolve`) reads a string as a path first; this module decides when a string that
is no existing path names a Hub repo, finds the repo's snapshot in the local Hub cache, and downloads the files
tokvec reads only when that is allowed. The rule, in order:

1. An existing file or folder always wins.
2. A bundled model's name (no slash: ``"default"``) is the bundled model (`formats.bundled_models`).
3. ``"hf://org/name"`` is always a Hub repo, and ``"hf://org/name/path/in/repo.safetensors"`` one table file of
   it (WordLlama's repos hold one file per dimension).
4. ``"org/name"`` (one slash, two names as the Hub spells them) is a Hub repo, unless ``org`` is an existing local
   folder: then it is a local path that does not exist (a typo in ``models/mine`` never reaches the network).
   Anything else (``./org/name``, ``/abs/path``, ``~/x``, ``a/b/c``, ``org/name.safetensors``) is a local path.

The cache is huggingface_hub's (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), and a
cached snapshot is used as it is, without asking the Hub whether the branch moved (pass `revision=` for another
commit, or update it with ``hf download org/name``). ``HF_HUB_OFFLINE=1`` is honoured: nothing is downloaded, and
a repo that is not cached is a FileNotFoundError saying how to get it. Downloads fetch only the files tokvec reads
(`REPO_FILES`), never pickled or ONNX weights.

huggingface_hub is imported here on first use only: ``import tokvec`` and local paths never import it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PREFIX", "REPO_FILES", "HubRef", "cache_dir", "cached", "download", "get_command", "offline", "parse"]

#: The prefix that always names a Hub repo (huggingface_hub's own `HfFileSystem` URL form).
PREFIX = "hf://"

#: What a repo-id download fetches: every model layout tokvec reads (tokvec, model2vec, sentence-transformers
#: StaticEmbedding, a single-file transformer checkpoint), their configs, and the licence files. Sharded
#: checkpoints get the index here and then the one shard that holds the table (`download(..., files=[shard])`).
REPO_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "0_StaticEmbedding/*",
    "README.md",
    "LICENSE*",
    "NOTICE*",
)

# The Hub's repo-name rule (huggingface_hub.utils.validate_repo_id): letters, digits, "-", "_", ".", no "--" or
# "..", at most 96 characters; a leading "." is refused here as well, so "./x" and "../x" stay local.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A bare "org/name" whose name ends like a file is a local file path, never a repo.
_FILE_SUFFIXES = (".safetensors", ".json", ".gguf", ".bin", ".pt", ".pth", ".onnx", ".npy", ".txt")


@dataclass(frozen=True)
class HubRef:
    """A Hub model repo, and optionally one file in it.

    Attributes:
        spec: what the user wrote (errors name it).
        repo_id: ``org/name``.
        filename: a ``.safetensors`` file's path in the repo, or None for the whole model.
    """

    spec: str
    repo_id: str
    filename: str | None = None

    @property
    def patterns(self) -> list[str]:
        """The repo files a download of this reference fetches."""
        if self.filename is None:
            return list(REPO_FILES)
        folder = self.filename.rpartition("/")[0]
        here = f"{folder}/" if folder else ""
        return [self.filename, f"{here}*tokenizer*.json", f"{here}config.json", "README.md", "LICENSE*", "NOTICE*"]


def _valid_name(part: str) -> bool:
    return bool(_NAME.fullmatch(part)) and "--" not in part and ".." not in part


def parse(path: str) -> HubRef | None:
    """The Hub repo `path` names, or None when it is a local path (rule in the module docstring). Call it only for
    a path that does not exist.

    Raises:
        ValueError: `path` starts with ``hf://`` but is not ``hf://org/name[/file.safetensors]``.
    """
    if path.startswith(PREFIX):
        rest = path[len(PREFIX) :]
        parts = rest.split("/")
        if "@" in parts[1 if len(parts) > 1 else 0]:
            raise ValueError(f"{path}: give the revision as revision='...', not after '@'")
        if len(parts) < 2 or not (_valid_name(parts[0]) and _valid_name(parts[1])) or len(parts[0] + parts[1]) > 95:
            raise ValueError(f"{path}: expected hf://org/name or hf://org/name/path/in/repo.safetensors")
        if parts[0] in ("datasets", "spaces"):
            raise ValueError(f"{path}: only model repos hold models (hf://org/name)")
        filename = "/".join(parts[2:]) or None
        bad_part = any(p in ("", ".", "..") for p in parts[2:])
        if filename is not None and (not filename.endswith(".safetensors") or bad_part):
            raise ValueError(f"{path}: a file in a repo must be a .safetensors file (hf://org/name/file.safetensors)")
        return HubRef(path, f"{parts[0]}/{parts[1]}", filename)
    parts = path.split("/")
    if len(parts) != 2 or os.sep != "/" and os.sep in path or len(path) > 96:
        return None
    org, name = parts
    if not (_valid_name(org) and _valid_name(name)) or name.lower().endswith(_FILE_SUFFIXES):
        return None
    if Path(org).is_dir():
        return None  # "models/mine" next to a local models/ folder: a local path with a typo, not a repo
    return HubRef(path, path)


def _hf() -> Any:
    import huggingface_hub  # first use only: `import tokvec` stays light

    return huggingface_hub


def offline() -> bool:
    """Whether downloads are off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, read by huggingface_hub)."""
    return bool(_hf().constants.HF_HUB_OFFLINE)


def cache_dir() -> str:
    """The Hub cache folder huggingface_hub uses (``HF_HUB_CACHE``, ``HF_HOME``... honoured)."""
    return str(_hf().constants.HF_HUB_CACHE)


def get_command(ref: HubRef) -> str:
    """The shell command that downloads `ref` with the installed huggingface_hub (the `hf` CLI came in 0.34)."""
    version = tuple(int(x) for x in re.findall(r"\d+", _hf().__version__)[:2])
    tool = "hf download" if version >= (0, 34) else "huggingface-cli download"
    return f"{tool} {ref.repo_id}" + (f" {ref.filename}" if ref.filename else "")


def cached(ref: HubRef, revision: str | None) -> Path | None:
    """The repo's snapshot folder in the local cache at `revision` (a branch, tag or commit; None: main), or None
    when the cache has none (or huggingface_hub's record of the commit's files says the snapshot is incomplete).
    Never touches the network."""
    hf = _hf()
    from huggingface_hub.errors import LocalEntryNotFoundError  # IncompleteSnapshotError (2.x) is a subclass

    try:
        folder = hf.snapshot_download(
            ref.repo_id, revision=revision, local_files_only=True, allow_patterns=ref.patterns
        )
    except LocalEntryNotFoundError:
        return None
    return Path(folder)


def download(ref: HubRef, revision: str | None, files: list[str] | None = None) -> Path:
    """Downloads the files tokvec reads (`ref.patterns`, or exactly `files`) into the Hub cache and returns the
    snapshot folder. Files already in the cache are not fetched again.

    Raises:
        FileNotFoundError: downloads are off (``HF_HUB_OFFLINE``) and the repo is not cached, the repo does not
            exist (or is private or gated and no token is set), or it has no such revision; the message says how
            to get it.
        OSError: the Hub could not be reached.
    """
    where = f"revision {revision!r} of " if revision else ""
    if offline():
        raise FileNotFoundError(
            f"{ref.spec}: {where}Hub repo {ref.repo_id} is not in the local Hugging Face cache ({cache_dir()}) and "
            f"HF_HUB_OFFLINE is set, so it is not downloaded; get it with `{get_command(ref)}` (on a machine with "
            "network access, then copy the cache), or unset HF_HUB_OFFLINE"
        )
    hf = _hf()
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        folder = hf.snapshot_download(ref.repo_id, revision=revision, allow_patterns=files or ref.patterns)
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{ref.spec}: Hub repo {ref.repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:  # GatedRepoError is a subclass
        raise FileNotFoundError(
            f"{ref.spec}: no such local file or folder, and no Hub repo {ref.repo_id} this machine can read (a "
            "private or gated repo needs a token: `hf auth login`); a local folder is written ./org/name"
        ) from None
    except LocalEntryNotFoundError as e:
        raise OSError(
            f"{ref.spec}: {where}Hub repo {ref.repo_id} is not in the local cache ({cache_dir()}) and the Hub "
            f"could not be reached ({e.__class__.__name__}); check the network, or set HF_HUB_OFFLINE=1 to work "
            "from the cache only"
        ) from None
    return Path(folder)
