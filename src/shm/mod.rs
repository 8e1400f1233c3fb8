//! Shared-memory transport: regions, the SPSC ring, the zero-copy slab (plain libraries, no
//! actix, no runtime).
//!
//! See `SHM_API.md` and the module docs of [`ring`] and [`slab`].

pub mod error;
pub mod region;
pub mod ring;
pub mod slab;

#[cfg(all(test, loom))]
mod loom_tests;

pub use error::ShmError;
pub use region::Region;
