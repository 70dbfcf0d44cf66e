//! The `tokvec._core` extension module. Only this folder uses pyo3 types: it borrows numpy arrays
//! and strings with the GIL held, runs the core kernels inside `py.detach` (GIL released; the long
//! search and clustering kernels through `interrupt::run`, so that Ctrl-C stops them), and builds
//! results with the GIL held again.

use pyo3::prelude::*;

mod arrays;
mod cluster;
mod errors;
mod extract;
mod index;
mod interrupt;
mod ivf;
mod model;
mod search;
mod serve;

pub(crate) use errors::{FormatError, TokenizerError};

/// The compiled core of tokvec. Users import `tokvec`, not this module.
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("FormatError", py.get_type::<FormatError>())?;
    m.add("TokenizerError", py.get_type::<TokenizerError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CPU_FEATURES", crate::simd::describe())?;
    extract::register(m)?;
    model::register(m)?;
    search::register(m)?;
    cluster::register(m)?;
    ivf::register(m)?;
    index::register(m)?;
    serve::register(m)?;
    Ok(())
}
