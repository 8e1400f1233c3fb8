//! Pinning the two sides of a two-thread contender to two CPUs.
//!
//! On the 2-vCPU VMs these benchmarks run on, the scheduler kept a freshly spawned peer
//! thread on its spawner's CPU for the first milliseconds (`/proc/thread-self/stat`, sampled
//! through a 1.5 ms stream: both threads on CPU 1 in every repeat), so a short measurement
//! of two spinning threads measured one shared core, and which binary hit it depended on
//! timing (the same ShmLink code measured 6 M or 23 M msg/s of 64 B across two builds).
//! Every contender whose two sides run on threads of their own therefore puts side A (the
//! measuring thread) on CPU 0 and side B (the spawned thread) on CPU 1 while it runs. On a
//! machine with fewer than two usable CPUs nothing is pinned.

use std::mem::{size_of, zeroed};

/// The calling thread's CPU affinity, or `None` if it cannot be read.
fn current() -> Option<libc::cpu_set_t> {
    // SAFETY: a zeroed `cpu_set_t` is a valid (empty) set; `sched_getaffinity` writes at
    // most `size_of::<cpu_set_t>()` bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        (libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
    }
}

fn set(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid `cpu_set_t`; the call only reads it. A failure leaves the
    // affinity as it was, which only makes the measurement unpinned.
    unsafe {
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set);
    }
}

/// Whether CPUs 0 and 1 are both usable, as first seen (before anything was pinned: a
/// thread spawned by a pinned side A inherits its one-CPU mask, so it must not look again).
fn two_cpus() -> bool {
    static TWO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TWO.get_or_init(|| {
        // SAFETY: `CPU_ISSET` reads bit 0 or 1 of a valid set (far below `CPU_SETSIZE`).
        current().is_some_and(|s| unsafe { libc::CPU_ISSET(0, &s) && libc::CPU_ISSET(1, &s) })
    })
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed `cpu_set_t` is a valid empty set; `CPU_SET` sets bit `cpu` (0 or 1,
    // far below `CPU_SETSIZE`) within it.
    let one = unsafe {
        let mut one: libc::cpu_set_t = zeroed();
        libc::CPU_SET(cpu, &mut one);
        one
    };
    set(&one);
}

/// Side A: pins the calling thread to CPU 0 until dropped, then restores its affinity.
pub struct SideA(Option<libc::cpu_set_t>);

impl SideA {
    /// Pins the calling thread (if the machine has CPUs 0 and 1).
    pub fn pin() -> SideA {
        if !two_cpus() {
            return SideA(None);
        }
        let before = current();
        pin_to(0);
        SideA(before)
    }
}

impl Drop for SideA {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            set(before);
        }
    }
}

/// Side B: pins the calling (freshly spawned) thread to CPU 1 for the rest of its life.
pub fn side_b() {
    if two_cpus() {
        pin_to(1);
    }
}

/// Looks at the CPUs once, before anything is pinned; call it first thing in `main`.
pub fn init() {
    two_cpus();
}
