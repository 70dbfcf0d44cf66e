//! Binding for k-means (`crate::cluster`). The input is borrowed read-only with the GIL held and
//! the kernel runs with the GIL released, through `interrupt::run` so that Ctrl-C stops it (another
//! thread writing to the array meanwhile gives unspecified but memory-safe results); outputs are
//! moved into new arrays without a copy.

use numpy::ndarray::Array1;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::arrays::matrix;
use super::interrupt::{self, work};
use crate::cluster::{kmeans_cancellable, KMeansOptions};

type KMeansOut<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray2<f32>>, f64, usize);

/// k-means with k-means++ seeding and restarts; deterministic for a seed, whatever the thread count.
///
/// Args:
///     x: C-contiguous float32 array (n, d).
///     k: number of clusters, 1 <= k <= n.
///     n_init: restarts (the lowest inertia wins).
///     max_iter: Lloyd iterations per restart.
///     tol: relative tolerance on the center shift (0: until labels stop changing).
///     seed: seed of the random stream.
///     init: optional C-contiguous float32 (k, d) initial centers (one run, no seeding).
///
/// Returns:
///     (labels int64 (n,), centroids float32 (k, d), inertia float, iterations of the best run).
///
/// Raises:
///     ValueError: k out of range, n_init < 1, a bad tol, NaN/inf values, an init of the wrong shape.
///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the run.
#[pyfunction]
#[pyo3(name = "kmeans", signature = (x, k, n_init=3, max_iter=100, tol=1e-4, seed=0, init=None))]
fn py_kmeans<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    k: usize,
    n_init: usize,
    max_iter: usize,
    tol: f64,
    seed: u64,
    init: Option<PyReadonlyArray2<'py, f32>>,
) -> PyResult<KMeansOut<'py>> {
    let [n, d]: [usize; 2] = x.shape().try_into().unwrap_or([0, 0]);
    let xs = x.as_slice()?;
    let init_s = match &init {
        Some(a) => {
            if a.shape() != [k, d] {
                return Err(PyValueError::new_err(format!(
                    "init must have shape ({k}, {d}), got {:?}",
                    a.shape()
                )));
            }
            Some(a.as_slice()?)
        }
        None => None,
    };
    let opts = KMeansOptions {
        n_init,
        max_iter,
        tol,
        seed,
    };
    let cost = work(&[n, k, d, max_iter, if init_s.is_some() { 1 } else { n_init }]);
    let r = interrupt::run(py, cost, |stop| kmeans_cancellable(xs, d, k, opts, init_s, stop))?;
    let labels: Vec<i64> = r.labels.into_iter().map(i64::from).collect();
    Ok((
        Array1::from(labels).into_pyarray(py),
        matrix(py, k, d, r.centroids)?,
        r.inertia,
        r.n_iter,
    ))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_kmeans, m)?)?;
    Ok(())
}
