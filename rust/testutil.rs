//! Helpers shared by the unit tests of several modules (compiled only for tests).

/// Runs `f` on a rayon pool of `threads` threads, so a test can compare results across thread counts.
pub(crate) fn in_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// A flag that is already set: every cancellable kernel given it must stop with `Interrupted`.
pub(crate) fn stopped() -> crate::cancel::Cancel {
    let stop = crate::cancel::Cancel::new();
    stop.cancel();
    stop
}
