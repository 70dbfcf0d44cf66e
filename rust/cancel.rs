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

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{CoreError, Result};

/// A cancellation flag shared by the caller and a running kernel.
#[derive(Debug, Default)]
pub struct Cancel(AtomicBool);

static NEVER: Cancel = Cancel::new();

impl Cancel {
    /// A flag that is not set.
    pub const fn new() -> Self {
        Cancel(AtomicBool::new(false))
    }

    /// A flag that nobody sets (for the kernels called without one).
    pub fn never() -> &'static Cancel {
        &NEVER
    }

    /// Asks the kernel to stop. Never call this on [`Cancel::never`]'s flag (it is shared).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked for. A relaxed load: a plain read on x86-64, cheap enough to
    /// poll per row.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
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
}
