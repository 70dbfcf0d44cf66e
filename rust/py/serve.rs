//! `tokvec._core.Server`: the HTTP front of `tokvec serve` (rust/serve.rs), started and stopped from Python.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use super::model::PyModel;
use crate::serve::{Config, Limits, Loader, Server};

/// The service, answering on a listening socket from its first moment until `stop`. Built by
/// `tokvec.serve.run`, which checks the flags and loads the models first.
///
/// Args:
///     fd: a listening TCP socket's descriptor, which the server takes over (`socket.detach()`).
///     models: (name, core Model) pairs, in the order `/v1/models` lists them.
///     loader: `loader(name, dims)` returns the core Model of model `name` loaded with `dim=dims`; called (with
///         the GIL, on a thread of the service) the first time a request asks for those `dimensions`.
///     api_key: when set, `/v1/*` needs `Authorization: Bearer KEY`.
///     max_body_bytes, max_inputs, max_text_chars, read_timeout: the limits of one request.
///     threads: worker threads answering requests.
///     access_log: one line per request on stderr.
///     created: `created` of the models in `/v1/models`.
///
/// Raises:
///     ValueError: no model, a limit below 1, or a read timeout that is not positive.
///     OSError: `fd` is not a listening socket, or the runtime cannot start.
#[pyclass(name = "Server", module = "tokvec._core", frozen)]
pub struct PyServer {
    inner: Server,
}

#[pymethods]
impl PyServer {
    #[new]
    #[pyo3(signature = (fd, models, *, loader, api_key=None, max_body_bytes, max_inputs, max_text_chars,
                        read_timeout, threads, access_log=false, created=0))]
    fn py_new(
        py: Python<'_>,
        fd: RawFd,
        models: Vec<(String, PyRef<'_, PyModel>)>,
        loader: Py<PyAny>,
        api_key: Option<String>,
        max_body_bytes: usize,
        max_inputs: usize,
        max_text_chars: usize,
        read_timeout: f64,
        threads: usize,
        access_log: bool,
        created: u64,
    ) -> PyResult<Self> {
        if models.is_empty() {
            return Err(PyValueError::new_err("no model to serve"));
        }
        if max_body_bytes == 0 || max_inputs == 0 || max_text_chars == 0 || threads == 0 {
            return Err(PyValueError::new_err(
                "max_body_bytes, max_inputs, max_text_chars and threads must be >= 1",
            ));
        }
        if !(read_timeout.is_finite() && read_timeout > 0.0) {
            return Err(PyValueError::new_err(format!(
                "read_timeout must be > 0 seconds, got {read_timeout}"
            )));
        }
        if fd < 0 {
            return Err(PyOSError::new_err(format!("fd {fd} is not a socket")));
        }
        // SAFETY: the caller hands the descriptor over (`socket.detach()`): it is open and owned by nobody else,
        // and the listener closes it when dropped.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        listener
            .local_addr()
            .map_err(|e| PyOSError::new_err(format!("fd {fd} is not a listening TCP socket: {e}")))?;
        let loader: Loader = Box::new(move |name: &str, dims: usize| {
            Python::attach(|py| {
                let got = loader.call1(py, (name, dims)).map_err(|e| e.to_string())?;
                let m = got
                    .bind(py)
                    .cast::<PyModel>()
                    .map_err(|_| "the loader did not return a core Model".to_string())?;
                Ok(m.get().inner.clone())
            })
        });
        let cfg = Config {
            models: models.iter().map(|(n, m)| (n.clone(), m.inner.clone())).collect(),
            api_key: api_key.map(String::into_bytes),
            limits: Limits {
                max_body_bytes,
                max_inputs,
                max_text_chars,
                read_timeout: Duration::from_secs_f64(read_timeout),
            },
            loader,
            threads,
            access_log,
            created,
        };
        let inner = py
            .detach(|| Server::start(listener, cfg))
            .map_err(|e| PyOSError::new_err(format!("the service cannot start: {e}")))?;
        Ok(PyServer { inner })
    }

    /// Waits at most `timeout` seconds (GIL released) for the service to stop; None while it runs, else whether
    /// every connection finished within the drain time.
    fn wait(&self, py: Python<'_>, timeout: f64) -> Option<bool> {
        let t = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        py.detach(|| self.inner.wait(t))
    }

    /// Stops accepting connections (the socket is closed) and lets the requests in flight finish, for at most
    /// `drain_timeout` seconds; returns at once (`wait` tells when it is done).
    fn stop(&self, drain_timeout: f64) {
        self.inner
            .stop(Duration::from_secs_f64(drain_timeout.clamp(0.0, 86_400.0)));
    }

    /// `/v1/embeddings` requests answered so far.
    #[getter]
    fn answered(&self) -> u64 {
        self.inner.answered()
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyServer>()?;
    Ok(())
}
