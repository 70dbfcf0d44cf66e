//! numpy arrays made from vectors the core filled, moved without a copy.

use numpy::ndarray::Array2;
use numpy::{Element, IntoPyArray, PyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::error::CoreError;

/// `v` as an `n × width` array (a ValueError if its length is not `n * width`).
pub(super) fn matrix<T: Element>(
    py: Python<'_>,
    n: usize,
    width: usize,
    v: Vec<T>,
) -> PyResult<Bound<'_, PyArray2<T>>> {
    Ok(Array2::from_shape_vec((n, width), v)
        .map_err(|e| PyValueError::new_err(e.to_string()))?
        .into_pyarray(py))
}

/// An `n × width` array filled by `fill` with the GIL released.
pub(super) fn rows_into<'py, T: Element + Copy + Default + Send>(
    py: Python<'py>,
    n: usize,
    width: usize,
    fill: impl FnOnce(&mut [T]) -> Result<(), CoreError> + Send,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let mut out = vec![T::default(); n * width];
    py.detach(|| fill(&mut out))?;
    matrix(py, n, width, out)
}
