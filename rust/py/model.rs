//! Bindings for model files and the embedding pass.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1};
use pyo3::exceptions::{PyIsADirectoryError, PyOSError, PyPermissionError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use super::arrays::rows_into;
use crate::error::CoreError;
use crate::fasttok;
use crate::header::SafetensorsFile;
use crate::pool::{encode_batch, EmbedModel, Encoder, ModelSpec};
use crate::simd::Isa;

fn open_file(py: Python<'_>, path: PathBuf) -> PyResult<Arc<SafetensorsFile>> {
    Ok(Arc::new(py.detach(|| SafetensorsFile::open(&path))?))
}

/// A validated, memory-mapped safetensors file: header inspection without reading tensor data.
///
/// Args:
///     path: the `.safetensors` file.
///
/// Raises:
///     FileNotFoundError: the file does not exist.
///     FormatError: the header is malformed (the message names the file and the problem).
#[pyclass(name = "SafetensorsFile", module = "tokvec._core", frozen)]
pub struct PySafetensorsFile {
    inner: Arc<SafetensorsFile>,
}

#[pymethods]
impl PySafetensorsFile {
    #[new]
    fn py_new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        Ok(PySafetensorsFile {
            inner: open_file(py, path)?,
        })
    }

    /// The file's path.
    #[getter]
    fn path(&self) -> &str {
        self.inner.path()
    }

    /// Size of the file in bytes.
    #[getter]
    fn size(&self) -> usize {
        self.inner.len()
    }

    /// All tensors.
    ///
    /// Returns:
    ///     dict mapping each tensor name to `(dtype, shape)`, e.g. `("F16", [30522, 256])`.
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for t in self.inner.tensors() {
            d.set_item(&t.name, (t.dtype.name(), t.shape.clone()))?;
        }
        Ok(d)
    }

    /// The header's `__metadata__` string map (empty if absent).
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.inner.metadata() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// A copy of one tensor's raw little-endian bytes.
    ///
    /// Args:
    ///     name: the tensor's name.
    ///
    /// Returns:
    ///     bytes of length `prod(shape) * dtype size`.
    fn tensor_bytes<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        let t = self.inner.tensor(name)?;
        Ok(PyBytes::new(py, self.inner.bytes(t)))
    }
}

/// A tokenizer built from its JSON: an ids-only fast encoder when the JSON is one a fast path
/// implements exactly, else the HF `tokenizers` crate (truncation and padding off). With a fast
/// encoder, the `tokenizers` crate's tokenizer is built only when a text first needs it.
///
/// Args:
///     json: the tokenizer JSON (the contents of a `tokenizer.json`); kept by the tokenizer.
///     add_special_tokens: passed to every encode (True always runs the `tokenizers` crate).
///     fast: use a fast encoder when the JSON qualifies ("wordpiece-fast", "spm-bpe-fast",
///         "bytelevel-bpe-fast"); False always runs the `tokenizers` crate ("hf"). Both give the
///         same ids.
///
/// Raises:
///     TokenizerError: the JSON is not a tokenizer `tokenizers` can build.
#[pyclass(name = "Tokenizer", module = "tokvec._core", frozen)]
pub struct PyTokenizer {
    inner: fasttok::Tokenizer,
}

/// An error reading `path`, as the built-in exception Python would raise for it, naming the file.
fn read_error(e: CoreError) -> PyErr {
    match e {
        CoreError::Io { path, source } => {
            let msg = format!("{path}: {source}");
            match source.kind() {
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
                std::io::ErrorKind::IsADirectory => PyIsADirectoryError::new_err(msg),
                _ => PyOSError::new_err(msg),
            }
        }
        other => other.into(),
    }
}

#[pymethods]
impl PyTokenizer {
    #[new]
    #[pyo3(signature = (json, add_special_tokens=false, fast=true))]
    fn py_new(py: Python<'_>, json: String, add_special_tokens: bool, fast: bool) -> PyResult<Self> {
        let inner = py.detach(|| fasttok::Tokenizer::from_json(json, add_special_tokens, fast))?;
        Ok(PyTokenizer { inner })
    }

    /// Builds the tokenizer from a `tokenizer.json` file (errors name it). The text is kept once, as
    /// with `Tokenizer(json)`: the file is never read again, so it may change or go afterwards.
    ///
    /// Args:
    ///     path: the file.
    ///     add_special_tokens: as for `Tokenizer`.
    ///     fast: as for `Tokenizer`.
    ///
    /// Raises:
    ///     FileNotFoundError: no such file.
    ///     OSError: the file cannot be read (PermissionError, IsADirectoryError, ...).
    ///     TokenizerError: the file is not UTF-8, or not a tokenizer `tokenizers` can build.
    #[staticmethod]
    #[pyo3(signature = (path, add_special_tokens=false, fast=true))]
    fn from_file(py: Python<'_>, path: PathBuf, add_special_tokens: bool, fast: bool) -> PyResult<Self> {
        let inner = py
            .detach(|| fasttok::Tokenizer::from_file(&path, add_special_tokens, fast))
            .map_err(read_error)?;
        Ok(PyTokenizer { inner })
    }

    /// Which encoder runs: "wordpiece-fast", "spm-bpe-fast", "bytelevel-bpe-fast" or "hf".
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind().name()
    }

    /// Why no fast encoder runs (None when one does).
    #[getter]
    fn fallback_reason(&self) -> Option<&str> {
        self.inner.fallback_reason()
    }

    /// Ids of the special added tokens, ascending.
    #[getter]
    fn special_ids(&self) -> Vec<u32> {
        self.inner.special_ids().to_vec()
    }

    /// The unknown token's id, or None.
    #[getter]
    fn unk_id(&self) -> Option<u32> {
        self.inner.unk_id()
    }

    /// One past the largest id the tokenizer can produce.
    #[getter]
    fn id_limit(&self) -> u64 {
        self.inner.id_limit()
    }

    /// Whether the `tokenizers` crate's tokenizer has been built (always, for kind "hf").
    #[getter]
    fn hf_built(&self) -> bool {
        self.inner.hf_built()
    }

    /// The JSON the tokenizer was built from.
    #[getter]
    fn json(&self) -> &str {
        self.inner.json()
    }

    /// Token ids of many texts with the encoder that runs, in parallel (GIL released).
    ///
    /// Args:
    ///     texts: a list of str.
    ///
    /// Returns:
    ///     (ids uint32, offsets uint64) in CSR form: text i is ids[offsets[i]:offsets[i+1]].
    ///
    /// Raises:
    ///     TypeError: an item is not a str.
    ///     ValueError: an item holds a lone surrogate.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyList>,
    ) -> PyResult<(Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u64>>)> {
        csr_of(py, texts, |strs| encode_batch(&**self.inner.encoder(), strs))
    }
}

/// The ids of `texts` from `encode` (GIL released) as numpy arrays (ids uint32, offsets uint64).
fn csr_of<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyList>,
    encode: impl FnOnce(&[&str]) -> Result<(Vec<u32>, Vec<u64>), CoreError> + Send,
) -> PyResult<(Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u64>>)> {
    let items = collect_strings(texts)?;
    let strs = borrow_texts(&items)?;
    let (ids, offsets) = py.detach(|| encode(&strs))?;
    Ok((ids.into_pyarray(py), offsets.into_pyarray(py)))
}

/// Borrows every item of `texts` as `&str` (no copy). Items must be `str` without lone surrogates.
fn borrow_texts<'a, 'py>(items: &'a [Bound<'py, PyString>]) -> PyResult<Vec<&'a str>> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.to_str().map_err(|_| {
                PyValueError::new_err(format!(
                    "texts[{i}] cannot be encoded as UTF-8 (it holds a lone surrogate); clean it, e.g. \
                     text.encode('utf-8', 'replace').decode()"
                ))
            })
        })
        .collect()
}

fn collect_strings<'py>(texts: &Bound<'py, PyList>) -> PyResult<Vec<Bound<'py, PyString>>> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.cast_into::<PyString>().map_err(|e| {
                PyTypeError::new_err(format!(
                    "texts[{i}] must be str, got {}",
                    e.into_inner()
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_else(|_| "?".into())
                ))
            })
        })
        .collect()
}

/// An embedding model: a table read in place from a memory-mapped safetensors file (or from a
/// private copy, `mmap=False`), a tokenizer run in Rust, and pooling settings. Built by
/// `tokvec.load`, which detects the format.
///
/// Args:
///     path: the `.safetensors` file holding the table.
///     table: name of the `[vocab, dim]` table tensor.
///     weights: optional name of a `[vocab]` per-token weight tensor.
///     mapping: optional name of a `[vocab]` token → row tensor.
///     tokenizer: a `Tokenizer`, or None for a model that pools given ids only.
///     skip_ids: token ids never pooled (special tokens).
///     dim: keep the first `dim` columns; None keeps all.
///     normalize: L2-normalize pooled vectors.
///     max_length: pool at most this many tokens per text; None: no cap.
///     scalar: use the scalar reference kernels instead of SIMD (for tests).
///     mmap: map the file (True) or read it into private memory (False: memory of the file's
///         size, and the model is unaffected if the file is later rewritten or truncated).
///
/// Raises:
///     FileNotFoundError: the file does not exist.
///     FormatError: a malformed file, a bad table/weights/mapping, or NaN/Inf in the table's
///         columns in use or in the weights (the message names the file, the tensor, the number of
///         bad rows and the first row ids).
#[pyclass(name = "Model", module = "tokvec._core", frozen)]
pub struct PyModel {
    /// Shared with the service (`tokvec._core.Server`), which embeds with it without the GIL.
    pub(crate) inner: Arc<EmbedModel>,
    /// Output dimension.
    #[pyo3(get)]
    dim: usize,
    /// Rows of the table.
    #[pyo3(get)]
    rows: usize,
    /// Columns of the table.
    #[pyo3(get)]
    cols: usize,
    /// Number of valid token ids.
    #[pyo3(get)]
    id_limit: usize,
    /// On-disk dtype of the table ("F16", ...).
    #[pyo3(get)]
    dtype: &'static str,
    /// Name of the table tensor.
    #[pyo3(get)]
    table: String,
    /// Path of the model file.
    #[pyo3(get)]
    path: String,
    /// Whether outputs are L2-normalized.
    #[pyo3(get)]
    normalize: bool,
}

#[pymethods]
impl PyModel {
    #[new]
    #[pyo3(signature = (path, table, *, weights=None, mapping=None, tokenizer=None,
                        skip_ids=Vec::new(), dim=None, normalize=true, max_length=None, scalar=false,
                        mmap=true))]
    fn py_new(
        py: Python<'_>,
        path: PathBuf,
        table: String,
        weights: Option<String>,
        mapping: Option<String>,
        tokenizer: Option<PyRef<'_, PyTokenizer>>,
        skip_ids: Vec<u32>,
        dim: Option<usize>,
        normalize: bool,
        max_length: Option<usize>,
        scalar: bool,
        mmap: bool,
    ) -> PyResult<Self> {
        let spec = ModelSpec {
            table,
            weights,
            mapping,
            skip_ids,
            dim,
            normalize,
            max_length,
        };
        let enc: Option<Arc<dyn Encoder>> = tokenizer.map(|t| t.inner.encoder().clone());
        let inner = py.detach(|| -> Result<EmbedModel, CoreError> {
            let file = Arc::new(if mmap {
                SafetensorsFile::open(&path)?
            } else {
                SafetensorsFile::read(&path)?
            });
            let mut m = EmbedModel::new(file, &spec, enc)?;
            if scalar {
                m.set_isa(Isa::Scalar);
            }
            Ok(m)
        })?;
        Ok(PyModel {
            dim: inner.dim(),
            rows: inner.rows(),
            cols: inner.cols(),
            id_limit: inner.id_limit(),
            dtype: inner.table().dtype.name(),
            table: inner.table().name.clone(),
            path: inner.file().path().to_owned(),
            normalize: inner.normalize(),
            inner: Arc::new(inner),
        })
    }

    /// Embeds texts (tokenize + pool in one parallel pass, GIL released).
    ///
    /// Args:
    ///     texts: a list of str.
    ///
    /// Returns:
    ///     float32 array (len(texts), dim).
    fn embed<'py>(&self, py: Python<'py>, texts: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let items = collect_strings(texts)?;
        let strs = borrow_texts(&items)?;
        rows_into(py, strs.len(), self.inner.dim(), |out| self.inner.embed(&strs, out))
    }

    /// Embeds texts into packed sign bits.
    ///
    /// Args:
    ///     texts: a list of str.
    ///
    /// Returns:
    ///     uint64 array (len(texts), ceil(dim / 64)); bit j of a vector is word j // 64, bit j % 64.
    fn embed_binary<'py>(&self, py: Python<'py>, texts: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyArray2<u64>>> {
        let items = collect_strings(texts)?;
        let strs = borrow_texts(&items)?;
        rows_into(py, strs.len(), self.inner.binary_words(), |out| {
            self.inner.embed_binary(&strs, out)
        })
    }

    /// Pools pre-tokenized ids (CSR form), skipping the tokenizer.
    ///
    /// Args:
    ///     ids: uint32 token ids of all texts, concatenated.
    ///     offsets: uint64, len(texts) + 1; text i is ids[offsets[i]:offsets[i+1]].
    ///
    /// Returns:
    ///     float32 array (len(offsets) - 1, dim).
    fn embed_ids<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArray1<'py, u32>,
        offsets: PyReadonlyArray1<'py, u64>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let ids_s = ids.as_slice()?;
        let off_s = offsets.as_slice()?;
        let n = off_s.len().saturating_sub(1);
        rows_into(py, n, self.inner.dim(), |out| self.inner.embed_ids(ids_s, off_s, out))
    }

    /// Token ids as the Rust tokenizer produces them (before special tokens are dropped).
    ///
    /// Args:
    ///     texts: a list of str.
    ///
    /// Returns:
    ///     (ids uint32, offsets uint64) in CSR form.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyList>,
    ) -> PyResult<(Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u64>>)> {
        csr_of(py, texts, |strs| self.inner.encode(strs))
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_class::<PySafetensorsFile>()?;
    m.add_class::<PyTokenizer>()?;
    Ok(())
}
