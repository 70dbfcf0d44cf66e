//! Cooperative cancellation of long kernels.
//!
//! A [`Cancel`] is a flag that the caller sets from another thread (the Python binding sets it when
//! a signal handler raised, e.g. on Ctrl-C). Kernels poll it between units of work (a task of the
//! pair search, a block of greedy deduplication, a node of the ball tree, a super-block of top-k,
//! a query tile, a k-means point or iteration) and return [`CoreError::Interrupted`] once it is
//! set. A unit is small (milliseconds), so a stop is seen well within a second.
//!
//! Polling only skips work: a kernel that is not cancelled does exactly the same operations in the
//! same order, so results stay bit-identical. A caller that never stops a kernel passes
//! [`Cancel::never`].
//!
//! The flag also carries how far a kernel is (a stage number and a count in it), which a kernel
//! sets between units of work and the binding reads while it waits (a progress bar).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{CoreError, Result};

/// A cancellation flag shared by the caller and a running kernel, and the kernel's progress.
#[derive(Debug, Default)]
pub struct Cancel {
    stop: AtomicBool,
    /// `stage << PROGRESS_BITS | done`.
    progress: AtomicU64,
}

/// Bits of the count in [`Cancel::progress`].
const PROGRESS_BITS: u32 = 56;

static NEVER: Cancel = Cancel::new();

impl Cancel {
    /// A flag that is not set.
    pub const fn new() -> Self {
        Cancel {
            stop: AtomicBool::new(false),
            progress: AtomicU64::new(0),
        }
    }

    /// Records that the kernel is at `done` units of its stage `stage` (both small: a stage below
    /// 256, a count below 2^56). Nothing on [`Cancel::never`]'s flag, which calls share.
    pub fn set_progress(&self, stage: u8, done: u64) {
        if !std::ptr::eq(self, &NEVER) {
            let v = (stage as u64) << PROGRESS_BITS | done.min((1 << PROGRESS_BITS) - 1);
            self.progress.store(v, Ordering::Relaxed);
        }
    }

    /// The last (stage, done) a kernel recorded; (0, 0) before any.
    pub fn progress(&self) -> (u8, u64) {
        let v = self.progress.load(Ordering::Relaxed);
        ((v >> PROGRESS_BITS) as u8, v & ((1 << PROGRESS_BITS) - 1))
    }

    /// A flag that nobody sets (for the kernels called without one).
    pub fn never() -> &'static Cancel {
        &NEVER
    }

    /// Asks the kernel to stop. Never call this on [`Cancel::never`]'s flag (it is shared).
    pub fn cancel(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked for. A relaxed load: a plain read on x86-64, cheap enough to
    /// poll per row.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// `Err(CoreError::Interrupted)` once a stop was asked for.
    #[inline]
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(CoreError::Interrupted)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag() {
        let c = Cancel::new();
        assert!(c.check().is_ok());
        c.cancel();
        assert!(matches!(c.check(), Err(CoreError::Interrupted)));
        assert!(!Cancel::never().is_cancelled());
    }

    #[test]
    fn progress() {
        let c = Cancel::new();
        assert_eq!(c.progress(), (0, 0));
        c.set_progress(1, 12345);
        assert_eq!(c.progress(), (1, 12345));
        c.set_progress(255, u64::MAX);
        assert_eq!(c.progress(), (255, (1 << PROGRESS_BITS) - 1));
        Cancel::never().set_progress(3, 7);
        assert_eq!(Cancel::never().progress(), (0, 0));
    }
}
