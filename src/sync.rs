//! The one atomics shim of the crate, and [`os_random`], the crate's one call into the OS
//! random source (kept here because it needs `unsafe`, which the crate allows only in this
//! file and in `src/shm/`).
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

/// Fills `buf` from the operating system's CSPRNG.
///
/// On Linux and Android this is the `getrandom(2)` system call (flags 0: it blocks only until
/// the kernel's pool is initialised at boot, never afterwards): no file descriptor, no file
/// system access. An interrupted call (`EINTR`) is retried and a short read continues where
/// it stopped. Only when the kernel lacks the call (`ENOSYS`, before Linux 3.17) does it fall
/// back to reading `/dev/urandom`, as it does on other Unix systems.
///
/// The one other home of `unsafe` besides `src/shm/`: the system call needs a raw pointer.
#[cfg(not(loom))]
#[allow(unsafe_code)]
pub(crate) fn os_random(buf: &mut [u8]) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut filled = 0;
        while filled < buf.len() {
            let rest = &mut buf[filled..];
            // SAFETY: `rest` is a live, exclusively borrowed, writable region of exactly
            // `rest.len()` initialised bytes; getrandom writes at most that many bytes into
            // it and keeps no pointer after returning.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n > 0 {
                filled += n as usize;
                continue;
            }
            if n == 0 {
                // Not documented for a non-empty request; refuse to spin on it.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "getrandom returned no bytes",
                ));
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ENOSYS) => return urandom(&mut buf[filled..]),
                _ => return Err(err),
            }
        }
        Ok(())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        urandom(buf)
    }
}

/// Fallback of [`os_random`]: reads `/dev/urandom`.
#[cfg(not(loom))]
fn urandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(all(test, not(loom)))]
mod tests {
    #[test]
    fn os_random_fills_buffers_of_any_size() {
        for len in [0usize, 1, 16, 300, 70_000] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            super::os_random(&mut a).unwrap();
            super::os_random(&mut b).unwrap();
            if len >= 16 {
                assert_ne!(a, b, "two draws of {len} bytes are equal");
                assert!(a.iter().any(|&x| x != 0));
            }
        }
        let mut c = [0u8; 16];
        super::urandom(&mut c).unwrap();
        assert_ne!(c, [0u8; 16]);
    }
}
