//! Binding for partitioned greedy deduplication (`crate::ivf`). The input is borrowed read-only
//! with the GIL held, the kernel runs with the GIL released through `interrupt::run` (Ctrl-C stops
//! it), and the outputs are moved into new arrays without a copy.

use numpy::ndarray::Array1;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::arrays::matrix;
use super::interrupt::{self, work};
use crate::dedup::{PROGRESS_KMEANS, PROGRESS_ROWS};
use crate::dot::row_norms;
use crate::error::CoreError;
use crate::int8::int8_serves;
use crate::ivf::{dedup_ivf_cancellable, nearest_lists, settings, train, IvfOptions};

type IvfOut<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyDict>,
);

/// An optional count >= 1, or a ValueError naming the argument.
pub(super) fn count(v: Option<i64>, name: &str) -> PyResult<Option<usize>> {
    match v {
        None => Ok(None),
        Some(x) if x >= 1 => usize::try_from(x)
            .map(Some)
            .map_err(|_| PyValueError::new_err(format!("{name} is too large: {x}"))),
        Some(x) => Err(PyValueError::new_err(format!("{name} must be >= 1, got {x}"))),
    }
}

/// `(rows, columns)` of a 2-d array.
fn shape2(a: &PyReadonlyArray2<'_, f32>) -> (usize, usize) {
    let [n, d]: [usize; 2] = a.shape().try_into().unwrap_or([0, 0]);
    (n, d)
}

/// `centroids` fit rows of `d` columns: at least one row, the same width.
fn check_centroids(c: &PyReadonlyArray2<'_, f32>, d: usize) -> PyResult<usize> {
    let (k, cd) = shape2(c);
    if k == 0 {
        return Err(PyValueError::new_err("centroids: needs at least one centroid"));
    }
    if cd != d {
        return Err(PyValueError::new_err(format!(
            "centroids have {cd} columns but vectors have {d}"
        )));
    }
    Ok(k)
}

/// The settings `dedup_ivf` would use for n rows of d columns: the defaults and clamps of the core,
/// so a run split over several machines takes the very lists, probes, spill and k-means sample of
/// a single one.
///
/// Args:
///     n: number of rows.
///     d: columns of a row (the default spill depends on the lists' memory).
///     nlist, nprobe, sample, spill: as `dedup_ivf` takes them (None: the default for n and d).
///
/// Returns:
///     dict: nlist, nprobe, sample, spill. nprobe and spill are those of the first block: with
///     neither given, `dedup_ivf` lowers spill (and raises nprobe) for later blocks once its
///     lists' copies of the kept rows pass 2 GiB (about 1.9M kept rows of 256 dimensions); given
///     ones hold for every block.
///
/// Raises:
///     ValueError: nlist/nprobe/sample/spill < 1, nprobe > nlist.
#[pyfunction]
#[pyo3(name = "ivf_settings", signature = (n, d, *, nlist=None, nprobe=None, sample=None, spill=None))]
#[allow(clippy::too_many_arguments)]
fn py_ivf_settings<'py>(
    py: Python<'py>,
    n: usize,
    d: usize,
    nlist: Option<i64>,
    nprobe: Option<i64>,
    sample: Option<i64>,
    spill: Option<i64>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = IvfOptions {
        nlist: count(nlist, "nlist")?,
        nprobe: count(nprobe, "nprobe")?,
        sample: count(sample, "sample")?,
        spill: count(spill, "spill")?,
        ..IvfOptions::default()
    };
    let (nlist, nprobe, sample, spill) = settings(n, d, &opts)?;
    let out = PyDict::new(py);
    for (k, v) in [
        ("nlist", nlist),
        ("nprobe", nprobe),
        ("sample", sample),
        ("spill", spill),
    ] {
        out.set_item(k, v)?;
    }
    Ok(out)
}

/// The k-means centroids `dedup_ivf(vectors, ..., nlist=nlist, sample=sample)` trains: spherical
/// k-means on `sample` evenly spaced rows (row t * n // sample), int8 pre-scores where they serve.
/// Passing only the sampled rows with sample = their number gives the same centroids. GIL released,
/// Ctrl-C stops it.
///
/// Args:
///     vectors: C-contiguous float32 array (n, d), n >= 1.
///     nlist: number of lists, >= 1 (at most n: a larger one is lowered to n).
///     sample: rows sampled (None: 16 per list, at least 4096; between nlist and n).
///
/// Returns:
///     float32 (nlist, d): unit centroids.
///
/// Raises:
///     ValueError: no rows, nlist/sample < 1, a non-contiguous array, NaN/inf or huge rows.
///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the run.
#[pyfunction]
#[pyo3(name = "ivf_train", signature = (vectors, nlist, sample=None))]
fn py_ivf_train<'py>(
    py: Python<'py>,
    vectors: PyReadonlyArray2<'py, f32>,
    nlist: i64,
    sample: Option<i64>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let opts = IvfOptions {
        nlist: count(Some(nlist), "nlist")?,
        sample: count(sample, "sample")?,
        ..IvfOptions::default()
    };
    let (n, d) = shape2(&vectors);
    if n == 0 || d == 0 {
        return Err(PyValueError::new_err(format!(
            "vectors: k-means needs at least one row and one column, got shape ({n}, {d})"
        )));
    }
    let x = vectors.as_slice()?;
    let (nlist, _, sample, _) = settings(n, d, &opts)?;
    let (c, _) = interrupt::run(py, work(&[sample, nlist, d, 10]), |stop| {
        let norms = row_norms(x, d, "vectors")?;
        train(x, n, d, &norms, nlist, sample, int8_serves(d), stop)
    })?;
    matrix(py, nlist, d, c)
}

/// For every row, its `k` nearest lists, nearest first: the lists `dedup_ivf` with these
/// centroids probes (k = nprobe) and stores a kept row in (its first spill). GIL released,
/// Ctrl-C stops it.
///
/// Args:
///     vectors: C-contiguous float32 array (n, d).
///     centroids: C-contiguous float32 array (nlist, d), nlist >= 1.
///     k: lists per row, 1 <= k <= nlist.
///
/// Returns:
///     uint32 (n, k).
///
/// Raises:
///     ValueError: k out of range, mismatched columns, a non-contiguous array, NaN/inf or huge rows
///         (naming the argument).
///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the run.
#[pyfunction]
#[pyo3(name = "ivf_assign", signature = (vectors, centroids, k))]
fn py_ivf_assign<'py>(
    py: Python<'py>,
    vectors: PyReadonlyArray2<'py, f32>,
    centroids: PyReadonlyArray2<'py, f32>,
    k: i64,
) -> PyResult<Bound<'py, PyArray2<u32>>> {
    let (n, d) = shape2(&vectors);
    let nlist = check_centroids(&centroids, d)?;
    let k = count(Some(k), "k")?.unwrap_or(1);
    if k > nlist {
        return Err(PyValueError::new_err(format!(
            "k must be at most the number of centroids ({nlist}), got {k}"
        )));
    }
    let (x, c) = (vectors.as_slice()?, centroids.as_slice()?);
    let lists = interrupt::run(py, work(&[n, nlist, d]), |stop| {
        if d == 0 {
            return Err(CoreError::arg("vectors", "the dimension must be at least 1"));
        }
        row_norms(c, d, "centroids")?;
        row_norms(x, d, "vectors")?;
        nearest_lists(x, n, d, c, nlist, k, int8_serves(d), stop)
    })?;
    matrix(py, n, k, lists)
}

/// Greedy deduplication in input order over the pairs that partitioned lists let meet: the rows
/// are split into `nlist` lists (spherical k-means on a sample), and each row is compared with the
/// earlier kept rows of its `nprobe` nearest lists. Scores are the exact canonical ones; with
/// nprobe = nlist the result equals `dedup`'s. GIL released, Ctrl-C stops it.
///
/// Args:
///     embeddings: C-contiguous float32 array (n, d).
///     threshold: a finite float.
///     nlist: number of lists (None: 2 sqrt(n), at most n).
///     nprobe: lists probed per row, <= nlist (None: 32 / spill, so 8 with 4 lists per kept row,
///         twice that for a block after more than 3 rows were removed per kept row; at most nlist).
///     sample: rows sampled for the k-means (None: 16 per list, at least 4096, at most n).
///     block: rows per block of the greedy resolution (None: 8192).
///     spill: lists a kept row is stored in, its nearest ones (None: 4 while the lists' copies of
///         the kept rows fit in 2 GiB, then 2, then 1; at most nprobe).
///     progress: None, or a callable `progress(stage, done)`, called from this thread while the
///         run goes on, each time it moved: stage 1 = k-means steps done (of at most 10), stage 2 =
///         rows resolved (of n). An exception it raises stops the run.
///     centroids: float32 (nlist, d), the lists instead of the k-means (e.g. `ivf_train`'s);
///         nlist is then their number of rows (at most n).
///
/// Returns:
///     (kept int64 ascending, dup_of int64 (n,) — -1 for kept rows —, score float32 (n,) — NaN for
///     kept rows —, stats dict: nlist, nprobe, spill, sample, block, kmeans_iterations, prescored,
///     rescored, found, largest_list, train_seconds, assign_seconds, search_seconds).
///
/// Raises:
///     ValueError: a non-finite threshold, nlist/nprobe/sample/block < 1, nprobe > nlist, a
///         non-contiguous array, NaN/inf or huge rows, centroids that do not fit.
///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the run.
#[pyfunction]
#[pyo3(name = "dedup_ivf", signature = (embeddings, threshold, *, nlist=None, nprobe=None, sample=None, block=None, spill=None, progress=None, centroids=None))]
#[allow(clippy::too_many_arguments)]
fn py_dedup_ivf<'py>(
    py: Python<'py>,
    embeddings: PyReadonlyArray2<'py, f32>,
    threshold: f64,
    nlist: Option<i64>,
    nprobe: Option<i64>,
    sample: Option<i64>,
    block: Option<i64>,
    spill: Option<i64>,
    progress: Option<Bound<'py, PyAny>>,
    centroids: Option<PyReadonlyArray2<'py, f32>>,
) -> PyResult<IvfOut<'py>> {
    if let Some(p) = &progress {
        if !p.is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "progress must be a callable or None, got {}",
                p.get_type().name()?
            )));
        }
    }
    if !threshold.is_finite() {
        return Err(PyValueError::new_err(format!(
            "threshold must be a finite number, got {threshold}"
        )));
    }
    let (n, d) = shape2(&embeddings);
    let mut nlist = count(nlist, "nlist")?;
    if let Some(c) = &centroids {
        let k = check_centroids(c, d)?;
        if nlist.is_some_and(|l| l != k) {
            return Err(PyValueError::new_err(format!(
                "nlist ({}) differs from the number of centroids ({k}): pass one of them",
                nlist.unwrap_or(0)
            )));
        }
        if n > 0 && k > n {
            return Err(PyValueError::new_err(format!(
                "centroids: {k} lists for {n} rows; at most one list per row"
            )));
        }
        nlist = Some(k);
    }
    let opts = IvfOptions {
        nlist,
        nprobe: count(nprobe, "nprobe")?,
        sample: count(sample, "sample")?,
        block: count(block, "block")?,
        spill: count(spill, "spill")?,
        centroids: centroids.as_ref().map(|c| c.as_slice()).transpose()?,
        ..IvfOptions::default()
    };
    let x = embeddings.as_slice()?;
    let t = threshold as f32;
    const _: () = assert!(
        PROGRESS_KMEANS == 1 && PROGRESS_ROWS == 2,
        "the stages documented above"
    );
    let (r, st) = interrupt::run_reporting(py, work(&[n, 64, d]), progress.as_ref(), |stop| {
        dedup_ivf_cancellable(x, n, d, t, &opts, stop).map_err(|e| e.with_arg_names(&[("e", "embeddings")]))
    })?;
    let stats = PyDict::new(py);
    let counts = [
        ("nlist", st.nlist as u64),
        ("nprobe", st.nprobe as u64),
        ("spill", st.spill as u64),
        ("sample", st.sample as u64),
        ("block", st.block as u64),
        ("kmeans_iterations", st.kmeans_iterations as u64),
        ("prescored", st.prescored),
        ("rescored", st.rescored),
        ("found", st.found),
        ("largest_list", st.largest_list as u64),
    ];
    for (k, v) in counts {
        stats.set_item(k, v)?;
    }
    for (k, v) in [
        ("train_seconds", st.train_seconds),
        ("assign_seconds", st.assign_seconds),
        ("search_seconds", st.search_seconds),
    ] {
        stats.set_item(k, v)?;
    }
    let kept: Vec<i64> = r.kept.into_iter().map(i64::from).collect();
    Ok((
        Array1::from(kept).into_pyarray(py),
        Array1::from(r.dup_of).into_pyarray(py),
        Array1::from(r.score).into_pyarray(py),
        stats,
    ))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_dedup_ivf, m)?)?;
    m.add_function(wrap_pyfunction!(py_ivf_settings, m)?)?;
    m.add_function(wrap_pyfunction!(py_ivf_train, m)?)?;
    m.add_function(wrap_pyfunction!(py_ivf_assign, m)?)
}
