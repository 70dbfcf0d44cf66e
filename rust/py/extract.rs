//! Bindings for extraction: GGUF headers, and streaming reads of one embedding table (safetensors
//! or GGUF) converted chunk by chunk in Rust with the GIL released.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use pyo3::IntoPyObjectExt;

use super::arrays::rows_into;
use crate::convert::{encode_rows, Table};
use crate::dtype::ElemType;
use crate::gguf::{GgufFile, Value};

/// Numeric metadata arrays longer than this come back as numpy arrays rather than lists: a list
/// costs 8 bytes per element plus a Python object per element (32 bytes for a float), so a corrupt
/// or hostile 100M-element array would take gigabytes. Vocabulary-sized arrays (token scores and
/// types, a few 100k elements) stay lists.
const LIST_LIMIT: usize = 1 << 20;

/// Little-endian elements of `N` bytes decoded by `f` into a numpy array.
fn le_array<'py, T: numpy::Element, const N: usize>(
    py: Python<'py>,
    raw: &[u8],
    f: fn([u8; N]) -> T,
) -> Bound<'py, PyAny> {
    let v: Vec<T> = raw
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect();
    v.into_pyarray(py).into_any()
}

/// A long numeric array as a numpy array of its own dtype.
fn numeric_array<'py>(py: Python<'py>, elem: u32, raw: &[u8]) -> Option<Bound<'py, PyAny>> {
    Some(match elem {
        0 => le_array(py, raw, u8::from_le_bytes),
        1 => le_array(py, raw, i8::from_le_bytes),
        2 => le_array(py, raw, u16::from_le_bytes),
        3 => le_array(py, raw, i16::from_le_bytes),
        4 => le_array(py, raw, u32::from_le_bytes),
        5 => le_array(py, raw, i32::from_le_bytes),
        6 => le_array(py, raw, f32::from_le_bytes),
        7 => le_array(py, raw, |[b]: [u8; 1]| b != 0),
        10 => le_array(py, raw, u64::from_le_bytes),
        11 => le_array(py, raw, i64::from_le_bytes),
        12 => le_array(py, raw, f64::from_le_bytes),
        _ => return None,
    })
}

fn value_to_py<'py>(py: Python<'py>, f: &GgufFile, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    match v {
        Value::U8(x) => x.into_bound_py_any(py),
        Value::I8(x) => x.into_bound_py_any(py),
        Value::U16(x) => x.into_bound_py_any(py),
        Value::I16(x) => x.into_bound_py_any(py),
        Value::U32(x) => x.into_bound_py_any(py),
        Value::I32(x) => x.into_bound_py_any(py),
        Value::U64(x) => x.into_bound_py_any(py),
        Value::I64(x) => x.into_bound_py_any(py),
        Value::F32(x) => x.into_bound_py_any(py),
        Value::F64(x) => x.into_bound_py_any(py),
        Value::Bool(x) => x.into_bound_py_any(py),
        Value::Str(s) => s.into_bound_py_any(py),
        Value::Bytes(b) => Ok(PyBytes::new(py, b).into_any()),
        Value::Array(a) => {
            if a.len > LIST_LIMIT {
                if let Some(arr) = f.array_raw(a).and_then(|raw| numeric_array(py, a.elem, raw)) {
                    return Ok(arr);
                }
            }
            let l = PyList::empty(py);
            for it in f.array_values(a) {
                l.append(value_to_py(py, f, &it?)?)?;
            }
            Ok(l.into_any())
        }
    }
}

/// A validated, memory-mapped GGUF file (llama.cpp): header inspection without reading tensor data.
///
/// Args:
///     path: the `.gguf` file.
///
/// Raises:
///     FileNotFoundError: the file does not exist.
///     FormatError: the header is malformed (the message names the file and the problem).
#[pyclass(name = "GgufFile", module = "tokvec._core", frozen)]
pub struct PyGgufFile {
    inner: Arc<GgufFile>,
}

#[pymethods]
impl PyGgufFile {
    #[new]
    fn py_new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py.detach(|| GgufFile::open(&path))?;
        Ok(PyGgufFile { inner: Arc::new(inner) })
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

    /// The GGUF version (2 or 3).
    #[getter]
    fn version(&self) -> u32 {
        self.inner.header().version
    }

    /// All tensors, in file order.
    ///
    /// Returns:
    ///     dict mapping each tensor name to `(ggml type, shape, nbytes)`; the shape is in row-major
    ///     order (ggml's dims reversed), e.g. `("Q8_0", [49152, 576], 30081024)`.
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for t in &self.inner.header().tensors {
            d.set_item(&t.name, (t.ggml_type.name(), t.shape(), t.nbytes()))?;
        }
        Ok(d)
    }

    /// The metadata key/value pairs, in file order.
    ///
    /// Returns:
    ///     dict mapping each key to an int, float, bool, str, bytes (a string that is not UTF-8) or
    ///     list of those; a numeric or bool array of more than 1,048,576 elements comes back as a
    ///     numpy array of its own dtype instead of a list (which would take 32+ bytes per element).
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in &self.inner.header().metadata {
            d.set_item(k, value_to_py(py, &self.inner, v)?)?;
        }
        Ok(d)
    }

    /// The byte range `(start, end)` of one tensor's data in the file.
    ///
    /// Args:
    ///     name: the tensor's name.
    fn byte_range(&self, name: &str) -> PyResult<(usize, usize)> {
        let t = self.inner.tensor(name)?;
        Ok((t.start, t.end))
    }
}

/// One 2-D embedding table of a safetensors or GGUF file, read in row ranges and converted in
/// Rust (GIL released). Source pages are released after each read, so streaming a table through
/// it keeps memory flat.
///
/// Args:
///     path: the `.safetensors` or `.gguf` file.
///     name: the tensor's name.
///     format: "safetensors" or "gguf".
///
/// Raises:
///     FileNotFoundError: the file does not exist.
///     FormatError: malformed file, tensor not 2-D, dtype not convertible, or unsupported quantization.
#[pyclass(name = "Table", module = "tokvec._core", frozen)]
pub struct PyTable {
    inner: Table,
}

#[pymethods]
impl PyTable {
    #[new]
    #[pyo3(signature = (path, name, format))]
    fn py_new(py: Python<'_>, path: PathBuf, name: String, format: &str) -> PyResult<Self> {
        let inner = match format {
            "safetensors" => py.detach(|| Table::from_safetensors(&path, &name))?,
            "gguf" => py.detach(|| Table::from_gguf(&path, &name))?,
            other => {
                return Err(PyValueError::new_err(format!(
                    "format must be 'safetensors' or 'gguf', got {other:?}"
                )))
            }
        };
        Ok(PyTable { inner })
    }

    /// The file.
    #[getter]
    fn path(&self) -> &str {
        self.inner.path()
    }
    /// The tensor's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }
    /// Row count.
    #[getter]
    fn rows(&self) -> usize {
        self.inner.rows()
    }
    /// Column count.
    #[getter]
    fn cols(&self) -> usize {
        self.inner.cols()
    }
    /// The source element type ("BF16", "Q8_0", ...).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.codec().name()
    }
    /// The tensor's byte range `(start, end)` in the file.
    #[getter]
    fn byte_range(&self) -> (usize, usize) {
        self.inner.byte_range()
    }

    /// Rows `[start, end)` decoded to float32.
    ///
    /// Args:
    ///     start: first row.
    ///     end: one past the last row.
    ///
    /// Returns:
    ///     float32 array (end - start, cols).
    ///
    /// Raises:
    ///     ValueError: not `0 <= start <= end <= rows` (checked before any memory is allocated).
    ///     FormatError: a row holds NaN or Inf (the message lists the row ids).
    fn read_f32<'py>(&self, py: Python<'py>, start: usize, end: usize) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let n = self.inner.check_rows(start, end)?;
        rows_into(py, n, self.inner.cols(), |out| self.inner.read_f32(start, end, out))
    }

    /// The ids of the rows in `[start, end)` holding NaN or Inf, ascending (a bounded-memory scan).
    ///
    /// Args:
    ///     start: first row.
    ///     end: one past the last row.
    ///
    /// Returns:
    ///     list of row ids.
    fn nonfinite_rows(&self, py: Python<'_>, start: usize, end: usize) -> PyResult<Vec<usize>> {
        Ok(py.detach(|| self.inner.nonfinite_rows(start, end))?)
    }

    /// Rows `[start, end)` converted to `dtype`, as little-endian bytes.
    ///
    /// Args:
    ///     start: first row.
    ///     end: one past the last row.
    ///     dtype: "F16", "BF16" or "F32".
    ///
    /// Returns:
    ///     uint8 array of `(end - start) * cols * size(dtype)` bytes.
    ///
    /// Raises:
    ///     ValueError: not `0 <= start <= end <= rows`, or an unknown `dtype`.
    ///     FormatError: a row holds NaN/Inf or overflows `dtype` (the message lists the row ids).
    fn read_bytes<'py>(
        &self,
        py: Python<'py>,
        start: usize,
        end: usize,
        dtype: &str,
    ) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let dt = ElemType::parse_writable(dtype)?;
        let n = self.inner.check_rows(start, end)?;
        let mut out = vec![0u8; n * self.inner.cols() * dt.size()];
        py.detach(|| self.inner.read_as(start, end, dt, &mut out))?;
        Ok(out.into_pyarray(py))
    }
}

/// Encodes a float32 matrix as F16 / BF16 / F32 little-endian bytes (round to nearest even).
///
/// Args:
///     x: C-contiguous float32 array (n, d).
///     dtype: "F16", "BF16" or "F32".
///     row0: number of the first row, for error messages.
///
/// Returns:
///     uint8 array of n * d * size(dtype) bytes.
///
/// Raises:
///     FormatError: a row holds NaN/Inf or a value too large for `dtype`.
#[pyfunction]
#[pyo3(signature = (x, dtype, row0=0))]
fn encode_table<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    dtype: &str,
    row0: usize,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let dt = ElemType::parse_writable(dtype)?;
    let cols = x.shape()[1];
    let src = x.as_slice()?;
    let mut out = vec![0u8; src.len() * dt.size()];
    if !src.is_empty() {
        py.detach(|| encode_rows(src, cols, dt, row0, &mut out))?;
    }
    Ok(out.into_pyarray(py))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGgufFile>()?;
    m.add_class::<PyTable>()?;
    m.add_function(wrap_pyfunction!(encode_table, m)?)?;
    Ok(())
}
