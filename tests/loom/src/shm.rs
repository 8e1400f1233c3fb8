//! The library's `src/shm` data structures (paths relative to this file's directory).

#[path = "../../../src/shm/error.rs"]
pub mod error;
#[path = "../../../src/shm/region.rs"]
pub mod region;
#[path = "../../../src/shm/ring.rs"]
pub mod ring;
#[path = "../../../src/shm/slab.rs"]
pub mod slab;

#[cfg(all(test, loom))]
#[path = "../../../src/shm/loom_tests.rs"]
mod loom_tests;

pub use error::ShmError;
