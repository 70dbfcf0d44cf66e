//! Binding for the partitioned search index (`crate::index`). The index holds no f32 copy of its
//! rows: each search is given them (the numpy arrays the caller keeps: the built rows and each block
//! added since), borrowed read-only for the call, and re-scores candidates from them. Builds, adds
//! and searches run with the GIL released through `interrupt::run` (Ctrl-C stops them); the lists
//! sit behind a read-write lock taken only with the GIL released, so searches run side by side and
//! an add waits for them. Another Python thread writing to the rows meanwhile gives unspecified
//! (but memory-safe) results, as with any numpy reader.

use std::sync::{RwLock, RwLockReadGuard};

use numpy::ndarray::Array1;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::arrays::matrix;
use super::interrupt::{self, work};
use super::ivf::count;
use crate::error::CoreError;
use crate::index::{IndexOptions, IvfIndex, Parts, NO_ROW};

/// The core's `d` is the width of the rows the user passed.
fn named(e: CoreError) -> CoreError {
    e.with_arg_names(&[("d", "vectors")])
}

/// A count >= 1, or a ValueError naming the argument.
fn required(v: i64, name: &str) -> PyResult<usize> {
    Ok(count(Some(v), name)?.unwrap_or(1))
}

/// `(rows, columns)` of a 2-d array.
fn shape2<T: numpy::Element>(a: &PyReadonlyArray2<'_, T>) -> (usize, usize) {
    let [n, d]: [usize; 2] = a.shape().try_into().unwrap_or([0, 0]);
    (n, d)
}

/// Rows split into k-means lists for top-k search: each query scans the rows of its `nprobe`
/// nearest lists with the int8 pre-score and re-scores candidates with the canonical dot, so every
/// score is bit-identical to `topk`'s, and with nprobe = nlist the result equals `topk(queries,
/// vectors, k)`. The index keeps no reference to `vectors`: every search is given the rows.
///
/// Args:
///     vectors: C-contiguous float32 array (n, d), n >= 1.
///     nlist: number of lists (None: 2 sqrt(n); at most n).
///     sample: rows sampled for the k-means (None: 64 per list, at least 4096; between nlist and n).
///     centroids: with labels, the lists of a saved index instead of training: float32 (nlist, d).
///     labels: the home list of every row, uint32 (n,), each < nlist.
///
/// Raises:
///     ValueError: no rows, a non-contiguous array, NaN/inf or huge rows, nlist/sample < 1,
///         centroids or labels that do not fit (naming the argument).
///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the build.
#[pyclass(name = "IvfIndex", module = "tokvec._core", frozen)]
pub struct PyIvfIndex {
    inner: RwLock<IvfIndex>,
    /// Columns of every row.
    #[pyo3(get)]
    d: usize,
    /// Number of lists.
    #[pyo3(get)]
    nlist: usize,
}

impl PyIvfIndex {
    /// The lists for reading; call with the GIL released (an add holds the lock while it packs).
    fn read(&self) -> RwLockReadGuard<'_, IvfIndex> {
        // a panic cannot happen while the lock is held for writing (the add's work is checked first)
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PyIvfIndex {
    #[new]
    #[pyo3(signature = (vectors, *, nlist=None, sample=None, centroids=None, labels=None))]
    fn py_new(
        py: Python<'_>,
        vectors: Bound<'_, PyArray2<f32>>,
        nlist: Option<i64>,
        sample: Option<i64>,
        centroids: Option<PyReadonlyArray2<'_, f32>>,
        labels: Option<PyReadonlyArray1<'_, u32>>,
    ) -> PyResult<Self> {
        let (nlist, sample) = (count(nlist, "nlist")?, count(sample, "sample")?);
        let ro = vectors
            .try_readonly()
            .map_err(|e| PyValueError::new_err(format!("vectors: {e}")))?;
        let (n, d) = shape2(&ro);
        let x = ro.as_slice()?;
        let inner = match (centroids, labels) {
            (Some(c), Some(l)) => {
                if shape2(&c).1 != d {
                    return Err(PyValueError::new_err(format!(
                        "centroids have {} columns but vectors have {d}",
                        shape2(&c).1
                    )));
                }
                let (c, l) = (c.as_slice()?.to_vec(), l.as_slice()?.to_vec());
                interrupt::run(py, work(&[n, d]), |stop| {
                    IvfIndex::from_parts(x, d, c, l, false, stop).map_err(named)
                })?
            }
            (None, None) => {
                let lists = nlist.unwrap_or_else(|| crate::ivf::default_nlist(n));
                interrupt::run(py, work(&[n, lists, d, 4]), |stop| {
                    IvfIndex::build(
                        x,
                        d,
                        &IndexOptions {
                            nlist,
                            sample,
                            exact_scan: false,
                        },
                        stop,
                    )
                    .map_err(named)
                })?
            }
            _ => {
                return Err(PyValueError::new_err(
                    "centroids and labels go together: pass both (a saved index) or neither",
                ))
            }
        };
        Ok(PyIvfIndex {
            d: inner.d(),
            nlist: inner.nlist(),
            inner: RwLock::new(inner),
        })
    }

    /// Rows indexed.
    #[getter]
    fn n(&self, py: Python<'_>) -> usize {
        py.detach(|| self.read().n())
    }

    /// Appends rows (indices continuing after the existing ones), each joining its nearest list;
    /// only they are packed. The caller passes them to later searches as the next part of the
    /// rows. GIL released, Ctrl-C stops it (the index unchanged).
    ///
    /// Args:
    ///     vectors: C-contiguous float32 array (m, d).
    ///
    /// Raises:
    ///     ValueError: mismatched columns, a non-contiguous array, NaN/inf or huge rows.
    ///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the run.
    #[pyo3(name = "add")]
    fn py_add(&self, py: Python<'_>, vectors: PyReadonlyArray2<'_, f32>) -> PyResult<()> {
        let (m, dv) = shape2(&vectors);
        if dv != self.d {
            return Err(PyValueError::new_err(format!(
                "vectors have {dv} columns but the index holds vectors of {}",
                self.d
            )));
        }
        let y = vectors.as_slice()?;
        interrupt::run(py, work(&[m, self.nlist, self.d]), |stop| {
            let mut ix = self.inner.write().unwrap_or_else(|e| e.into_inner());
            ix.add(y, stop).map_err(named)
        })
    }

    /// For every query, the k rows of its `nprobe` nearest lists with the highest inner product,
    /// best first, ties broken by the lower row index. GIL released, Ctrl-C stops it.
    ///
    /// Args:
    ///     queries: C-contiguous float32 array (nq, d).
    ///     k: neighbours per query, >= 1 (clipped to n).
    ///     nprobe: lists scanned per query, in 1..=nlist.
    ///     vectors: the rows, as the C-contiguous float32 arrays (r, d) that hold them in order (the
    ///         built rows, then each added block); fewer rows than the index (a view taken before an
    ///         add) searches those only.
    ///
    /// Returns:
    ///     (scores float32 (nq, min(k, n)), indices int64 (nq, min(k, n))), n the rows given;
    ///     slots the probed lists cannot fill hold -inf and -1.
    ///
    /// Raises:
    ///     ValueError: k < 1, nprobe outside 1..=nlist, mismatched columns, NaN/inf or huge queries,
    ///         no rows or more than the index holds.
    ///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the run.
    #[pyo3(name = "search")]
    fn py_search<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray2<'py, f32>,
        k: i64,
        nprobe: i64,
        vectors: Vec<PyReadonlyArray2<'py, f32>>,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>)> {
        let (k, nprobe) = (required(k, "k")?, required(nprobe, "nprobe")?);
        let (nq, dq) = shape2(&queries);
        let d = self.d;
        if dq != d {
            return Err(PyValueError::new_err(format!(
                "queries have {dq} columns but the index holds vectors of {d}"
            )));
        }
        let mut parts = Vec::with_capacity(vectors.len());
        for v in &vectors {
            if shape2(v).1 != d {
                return Err(PyValueError::new_err(format!(
                    "vectors have {} columns but the index holds vectors of {d}",
                    shape2(v).1
                )));
            }
            parts.push(v.as_slice()?);
        }
        let x = Parts::new(parts, d)?;
        let q = queries.as_slice()?;
        let (n, nlist) = (x.n(), self.nlist);
        let per_query = n / nlist * nprobe.min(nlist) + nlist;
        let (s, i) = interrupt::run(py, work(&[nq, per_query, d]), |stop| {
            self.read().search(&x, q, k, nprobe, stop).map_err(named)
        })?;
        let kk = k.min(n);
        let i: Vec<i64> = i
            .into_iter()
            .map(|r| if r == NO_ROW { -1 } else { i64::from(r) })
            .collect();
        Ok((matrix(py, nq, kk, s)?, matrix(py, nq, kk, i)?))
    }

    /// The home list of each row of `vectors` (the list new rows join).
    ///
    /// Args:
    ///     vectors: C-contiguous float32 array (m, d).
    ///
    /// Returns:
    ///     uint32 (m,).
    #[pyo3(name = "assign")]
    fn py_assign<'py>(
        &self,
        py: Python<'py>,
        vectors: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let (m, dv) = shape2(&vectors);
        let d = self.d;
        if dv != d {
            return Err(PyValueError::new_err(format!(
                "vectors have {dv} columns but the index holds vectors of {d}"
            )));
        }
        let y = vectors.as_slice()?;
        let l = interrupt::run(py, work(&[m, self.nlist, d]), |stop| self.read().assign(y, stop))?;
        Ok(Array1::from(l).into_pyarray(py))
    }

    /// The unit centroids of the lists: float32 (nlist, d), a copy.
    #[getter]
    fn centroids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let c = py.detach(|| self.read().centroids().to_vec());
        matrix(py, self.nlist, self.d, c)
    }

    /// The home list of every row: uint32 (n,), a copy.
    #[getter]
    fn labels<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        Array1::from(py.detach(|| self.read().labels().to_vec())).into_pyarray(py)
    }

    /// Where each list starts in `order`: int64 (nlist + 1,), a copy.
    #[getter]
    fn offsets<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        let off = py.detach(|| self.read().offsets());
        Array1::from_iter(off.into_iter().map(|o| o as i64)).into_pyarray(py)
    }

    /// The rows grouped by list, ascending within a list: uint32 (n,), a copy.
    #[getter]
    fn order<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        Array1::from(py.detach(|| self.read().order())).into_pyarray(py)
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyIvfIndex>()
}
