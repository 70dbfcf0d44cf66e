//! Runs a long kernel so that Ctrl-C (or any signal whose Python handler raises) stops it.
//!
//! Python runs signal handlers on the main thread only, between bytecodes: a kernel that keeps the
//! main thread in Rust defers them until it returns (20-50 s for a large deduplication). So
//! [`run`] starts the kernel on a scoped worker thread, and the calling thread, GIL released,
//! waits for it in steps of [`POLL`]; between steps it takes the GIL and runs the pending signal
//! handlers (`PyErr_CheckSignals`). When a handler raises, it sets the kernel's [`Cancel`] flag,
//! joins the worker (which stops at its next poll, milliseconds later) and returns the handler's
//! exception: `KeyboardInterrupt` for SIGINT, or whatever a SIGTERM handler raises.
//!
//! # Performance notes
//!
//! * A call whose work estimate is below [`INLINE_WORK`] runs inline (no thread, no polling), as
//!   before: a spawn and join cost tens of microseconds, which a 1 x 20k top-k (~1 ms) would
//!   notice, while such a call ends within milliseconds anyway.
//! * The waiting thread sleeps in `recv_timeout`: it wakes when the kernel ends, or every
//!   [`POLL`] for a check that takes microseconds. The kernel itself only polls an atomic flag.
//! * On a thread other than the main one, `check_signals` is a no-op (Python delivers signals to
//!   the main thread), so such calls simply wait for the kernel.

use std::sync::mpsc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::cancel::Cancel;
use crate::error::CoreError;

/// How long the calling thread waits between two checks for pending signals.
const POLL: Duration = Duration::from_millis(25);

/// Work estimate (multiply-adds) below which a kernel runs inline: at most a few milliseconds.
pub(crate) const INLINE_WORK: u64 = 1 << 26;

/// Stack of the worker thread: as large as a main thread's, since the kernels recurse (ball tree).
const WORKER_STACK: usize = 8 << 20;

/// Product of work factors, saturating.
pub(crate) fn work(factors: &[usize]) -> u64 {
    factors.iter().fold(1u64, |w, &f| w.saturating_mul(f as u64))
}

/// Runs `kernel` with the GIL released and signals handled meanwhile (see the module docs).
/// `work` estimates its cost in multiply-adds (see [`work`]).
///
/// Returns the kernel's result, or the exception a signal handler raised (the kernel is stopped
/// through its `Cancel` flag and joined first).
pub(crate) fn run<T, F>(py: Python<'_>, work: u64, kernel: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&Cancel) -> Result<T, CoreError> + Send,
{
    run_reporting(py, work, None, kernel)
}

/// [`run`], and while the kernel runs, `progress(stage, done)` (a Python callable) each time the
/// kernel's recorded progress ([`Cancel::set_progress`]) changed since the last check, called
/// from the waiting thread with the GIL. An exception it raises stops the kernel as a signal
/// handler's does. A kernel run inline (small work) reports nothing.
pub(crate) fn run_reporting<T, F>(
    py: Python<'_>,
    work: u64,
    progress: Option<&Bound<'_, PyAny>>,
    kernel: F,
) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&Cancel) -> Result<T, CoreError> + Send,
{
    let progress = progress.map(|p| p.clone().unbind());
    if work < INLINE_WORK {
        return Ok(py.detach(|| kernel(Cancel::never()))?);
    }
    py.detach(|| {
        let cancel = Cancel::new();
        let cancel = &cancel;
        std::thread::scope(|s| {
            let (done, finished) = mpsc::sync_channel::<()>(1);
            let spawned = std::thread::Builder::new()
                .name("tokvec-kernel".into())
                .stack_size(WORKER_STACK)
                .spawn_scoped(s, move || {
                    let r = kernel(cancel);
                    // the receiver outlives the worker (joined below), so this cannot fail
                    let _ = done.send(());
                    r
                });
            let worker = match spawned {
                Ok(w) => w,
                // no thread to be had (resource limits): the kernel cannot be moved, and `kernel`
                // was consumed by the failed spawn, so report the OS error
                Err(e) => {
                    return Err(pyo3::exceptions::PyOSError::new_err(format!(
                        "could not start a worker thread: {e}"
                    )))
                }
            };
            let mut seen = (0u8, 0u64);
            loop {
                match finished.recv_timeout(POLL) {
                    // finished, or the worker panicked (the join below re-raises the panic)
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let now = cancel.progress();
                        let report = progress.as_ref().filter(|_| now != seen);
                        seen = now;
                        let checked = Python::attach(|py| {
                            py.check_signals()?;
                            if let Some(f) = report {
                                f.call1(py, now)?;
                            }
                            Ok::<(), PyErr>(())
                        });
                        if let Err(e) = checked {
                            cancel.cancel();
                            // the kernel sees the flag at its next poll; its result is discarded
                            let _ = worker.join();
                            return Err(e);
                        }
                    }
                }
            }
            let r = match worker.join() {
                Ok(r) => r?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            // the last progress, which the kernel may have recorded after the last check
            let last = cancel.progress();
            if let Some(f) = progress.as_ref().filter(|_| last != seen) {
                Python::attach(|py| f.call1(py, last))?;
            }
            Ok(r)
        })
    })
}
