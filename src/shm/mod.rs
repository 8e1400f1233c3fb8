//! Shared-memory transport: regions, the SPSC ring, the zero-copy slab (plain libraries, no
//! actix, no runtime).
//!
//! See `SHM_API.md` and the module docs of [`ring`] and [`slab`].

#[cfg(not(loom))]
pub mod doorbell;
pub mod error;
#[cfg(not(loom))]
pub mod layout;
#[cfg(not(loom))]
pub mod link;
pub mod region;
pub mod ring;
#[cfg(not(loom))]
pub mod segment;
pub mod slab;

#[cfg(all(test, not(loom)))]
mod ring_tests;

pub use error::ShmError;
pub use region::Region;
