"""Embedding throughput: 100k Wikipedia sentences on the same table and tokenizer (WordLlama l2_supercat, 256-d).

Every contender tokenizes the raw strings and mean-pools the F16 table's rows into L2-normalized float32 vectors,
so the timings compare the same work. The HF ``tokenizers`` ``encode_batch`` alone is the floor for any Python
library that tokenizes with it. Correctness (same vectors) is checked outside the timed part.
"""

from __future__ import annotations

import numpy as np
import pytest

GROUP = "embed-100k (WordLlama l2_supercat 256 table)"
CHECK = 2_000  # texts used for the equality checks


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.mark.benchmark(group=GROUP)
def test_embed_tokvec(benchmark, record, tv_wordllama, reference_embed, texts):
    out = benchmark.pedantic(tv_wordllama.embed, args=(texts,), rounds=3, iterations=1, warmup_rounds=1)
    record(len(texts))
    assert out.shape == (len(texts), 256) and out.dtype == np.float32
    cos = _cosines(out[:CHECK], reference_embed(texts[:CHECK]))
    assert cos.min() > 0.999, f"tokvec and the numpy reference disagree: min cosine {cos.min():.6f}"


@pytest.mark.benchmark(group=GROUP)
def test_embed_tokvec_pool_only(benchmark, record, tv_wordllama, texts):
    """tokvec pooling on ids tokenized beforehand (CSR ids/offsets), to split tokenizing from pooling."""
    ids_per_text = tv_wordllama.encode_ids(texts)
    lengths = np.fromiter((len(x) for x in ids_per_text), dtype=np.uint64, count=len(ids_per_text))
    offsets = np.zeros(len(texts) + 1, dtype=np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter((i for row in ids_per_text for i in row), dtype=np.uint32, count=int(offsets[-1]))
    out = benchmark.pedantic(tv_wordllama.embed_ids, args=(ids, offsets), rounds=3, iterations=1, warmup_rounds=1)
    record(len(texts))
    ref = tv_wordllama.embed(texts[:CHECK])
    assert np.allclose(out[:CHECK], ref, atol=1e-5)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("method", ["encode_batch", "encode_batch_fast"])
def test_embed_hf_tokenizers_only(benchmark, record, wl_files, texts, method):
    """Floor: HF tokenizers alone (no pooling), same tokenizer JSON. ``encode_batch_fast`` skips the character
    offsets (model2vec uses it); ``encode_batch`` is what most libraries call."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(wl_files.tokenizer))
    tok.no_padding()
    tok.no_truncation()
    fn = getattr(tok, method)
    out = benchmark.pedantic(fn, args=(texts,), kwargs={"add_special_tokens": False}, rounds=3, iterations=1)
    record(len(texts))
    assert len(out) == len(texts)


@pytest.mark.benchmark(group=GROUP)
def test_embed_wordllama(benchmark, record, wordllama_model, reference_embed, texts):
    out = benchmark.pedantic(wordllama_model.embed, args=(texts,), kwargs={"norm": True}, rounds=1, iterations=1)
    record(len(texts))
    assert out.shape == (len(texts), 256)
    cos = _cosines(out[:CHECK], reference_embed(texts[:CHECK]))
    assert cos.min() > 0.999, f"wordllama and the numpy reference disagree: min cosine {cos.min():.6f}"


@pytest.mark.benchmark(group=GROUP)
def test_embed_model2vec(benchmark, record, m2v_model, reference_embed, texts):
    # model2vec.encode runs joblib threads (n_jobs=-1) over 1024-text batches above 10k texts.
    out = benchmark.pedantic(m2v_model.encode, args=(texts,), rounds=1, iterations=1)
    record(len(texts))
    assert out.shape == (len(texts), 256)
    cos = _cosines(out[:CHECK], reference_embed(texts[:CHECK]))
    # model2vec drops <unk> (id 0) before pooling; with a byte-fallback vocabulary that should never differ
    assert cos.min() > 0.999, f"model2vec and the numpy reference disagree: min cosine {cos.min():.6f}"


@pytest.mark.benchmark(group=GROUP)
def test_embed_tokvec_default_model(benchmark, record, tv_default, texts):
    """tokvec's bundled default model (MiniLM WordPiece tokenizer, 30522 x 256 F16): a different table, for scale."""
    out = benchmark.pedantic(tv_default.embed, args=(texts,), rounds=3, iterations=1, warmup_rounds=1)
    record(len(texts))
    assert out.shape == (len(texts), 256) and out.dtype == np.float32


# --- loading the model ---------------------------------------------------------------------------------------------

LOAD_GROUP = "load (cold process for RSS, warm page cache for time)"

_RSS_SCRIPT = r"""
import json, sys, time
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
import numpy, tokenizers  # dependencies first, so the growth below is the model itself
{imports}
r0 = rss(); t0 = time.perf_counter()
m = {load}
t1 = time.perf_counter(); r1 = rss()
{embed}
r2 = rss()
print(json.dumps({{"load_s": t1 - t0, "rss_load": r1 - r0, "rss_embed": r2 - r0}}))
"""


def _rss_growth(imports: str, load: str, embed: str) -> dict:
    """Import, load and embed 1,000 short texts in a fresh interpreter; RSS growth from /proc/self/status."""
    import json
    import subprocess
    import sys

    code = _RSS_SCRIPT.format(imports=imports, load=load, embed=embed)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(r: dict) -> str:
    return (
        f"fresh process: load {r['load_s'] * 1e3:7.1f} ms, RSS +{r['rss_load'] / 2**20:6.1f} MiB after load, "
        f"+{r['rss_embed'] / 2**20:6.1f} MiB after embedding 1,000 texts"
    )


@pytest.mark.benchmark(group=LOAD_GROUP)
def test_load_tokvec(benchmark, record, note, tokvec_mod):
    m = benchmark.pedantic(tokvec_mod.load, rounds=5, iterations=1, warmup_rounds=1)
    record(1, "loads")
    assert m.dim == 256
    r = _rss_growth("import tokvec", "tokvec.load()", 'm.embed(["a short text, to touch a few rows"] * 1000)')
    benchmark.extra_info.update(r)
    note(f"tokvec.load() default   {_fmt(r)}")


@pytest.mark.benchmark(group=LOAD_GROUP)
def test_load_wordllama(benchmark, record, note, wordllama_model):
    from wordllama import WordLlama

    m = benchmark.pedantic(WordLlama.load, kwargs={"disable_download": True}, rounds=5, iterations=1)
    record(1, "loads")
    assert m.embedding.shape == (32000, 256)
    r = _rss_growth(
        "from wordllama import WordLlama",
        "WordLlama.load(disable_download=True)",
        'm.embed(["a short text, to touch a few rows"] * 1000)',
    )
    benchmark.extra_info.update(r)
    note(f"WordLlama.load()        {_fmt(r)}")
