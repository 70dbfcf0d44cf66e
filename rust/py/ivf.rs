//! Binding for partitioned greedy deduplication (`crate::ivf`). The input is borrowed read-only
//! with the GIL held, the kernel runs with the GIL released through `interrupt::run` (Ctrl-C stops
//! it), and the outputs are moved into new arrays without a copy.

use numpy::ndarray::Array1;
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::interrupt::{self, work};
use crate::dedup::{PROGRESS_KMEANS, PROGRESS_ROWS};
use crate::ivf::{dedup_ivf_cancellable, IvfOptions};

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

/// Greedy deduplication in input order over the pairs that partitioned lists let meet: the rows
/// are split into `nlist` lists (spherical k-means on a sample), and each row is compared with the
/// earlier kept rows of its `nprobe` nearest lists. Scores are the exact canonical ones; with
/// nprobe = nlist the result equals `dedup`'s. GIL released, Ctrl-C stops it.
///
/// Args:
///     embeddings: C-contiguous float32 array (n, d).
///     threshold: a finite float.
///     nlist: number of lists (None: 2 sqrt(n), at most n).
///     nprobe: lists probed per row, <= nlist (None: 32 / spill, so 8 with 4 lists per kept row; at
///         most nlist).
///     sample: rows sampled for the k-means (None: 16 per list, at least 4096, at most n).
///     block: rows per block of the greedy resolution (None: 8192).
///     spill: lists a kept row is stored in, its nearest ones (None: 4 while the lists' copies of
///         the kept rows fit in 2 GiB, then 2, then 1; at most nprobe).
///     progress: None, or a callable `progress(stage, done)`, called from this thread while the
///         run goes on, each time it moved: stage 1 = k-means steps done (of at most 10), stage 2 =
///         rows resolved (of n). An exception it raises stops the run.
///
/// Returns:
///     (kept int64 ascending, dup_of int64 (n,) — -1 for kept rows —, score float32 (n,) — NaN for
///     kept rows —, stats dict: nlist, nprobe, spill, sample, block, kmeans_iterations, prescored,
///     rescored, found, largest_list, train_seconds, assign_seconds, search_seconds).
///
/// Raises:
///     ValueError: a non-finite threshold, nlist/nprobe/sample/block < 1, nprobe > nlist, a
///         non-contiguous array, NaN/inf or huge rows.
///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the run.
#[pyfunction]
#[pyo3(name = "dedup_ivf", signature = (embeddings, threshold, *, nlist=None, nprobe=None, sample=None, block=None, spill=None, progress=None))]
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
    let opts = IvfOptions {
        nlist: count(nlist, "nlist")?,
        nprobe: count(nprobe, "nprobe")?,
        sample: count(sample, "sample")?,
        block: count(block, "block")?,
        spill: count(spill, "spill")?,
        ..IvfOptions::default()
    };
    let [n, d]: [usize; 2] = embeddings.shape().try_into().unwrap_or([0, 0]);
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
    m.add_function(wrap_pyfunction!(py_dedup_ivf, m)?)
}
