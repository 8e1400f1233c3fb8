//! The one atomics shim of the crate.
//!
//! Every atomic used by the shared-memory ring and slab comes from here. In a normal build
//! these are the `std` types; under `--cfg loom` they are loom's model-checked types, so the
//! very same ring and slab code is exhaustively checked by the loom models in
//! `src/shm/loom_tests.rs`. The models are built by the crate in `tests/loom`, which compiles
//! this file and the ring/slab sources by path (the whole library cannot be built with
//! `--cfg loom`: tokio configures its networking out under it):
//!
//! ```text
//! cd tests/loom && RUSTFLAGS="--cfg loom" cargo test --release --lib
//! ```
//!
//! Under loom, atomics are not plain integers: structures placed in shared memory are
//! initialised in place with `ptr::write` of a value built with `new` (which is also what the
//! normal build does), and their size differs, so only in-process (heap) regions are used
//! under loom.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Access tracking for plain (non-atomic) shared memory under loom.
///
/// In a normal build this is a zero-sized no-op. Under loom it wraps a
/// `loom::cell::UnsafeCell<()>`: the ring and slab "touch" it whenever they write or read the
/// bytes it stands for, so loom reports any write/read pair of ring or slot bytes that is not
/// ordered by happens-before (that is, a missing `Release`/`Acquire` on an index or flag).
#[derive(Debug, Default)]
pub(crate) struct Tracked {
    #[cfg(loom)]
    cell: loom::cell::UnsafeCell<()>,
}

impl Tracked {
    /// Creates a tracker.
    #[cfg_attr(not(loom), allow(dead_code))]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records a write of the tracked bytes (no-op outside loom).
    #[inline(always)]
    pub(crate) fn write(&self) {
        #[cfg(loom)]
        self.cell.with_mut(|_| ());
    }

    /// Records a read of the tracked bytes (no-op outside loom).
    #[inline(always)]
    pub(crate) fn read(&self) {
        #[cfg(loom)]
        self.cell.with(|_| ());
    }
}
