//! Helpers shared by the unit tests of several modules (compiled only for tests).

/// Runs `f` on a rayon pool of `threads` threads, so a test can compare results across thread counts.
pub(crate) fn in_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}
