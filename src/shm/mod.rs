//! Shared-memory transport: regions, the SPSC ring, the zero-copy slab (plain libraries, no
//! actix, no runtime), and on top of them the segment, the doorbells and [`ShmLink`] (which
//! waits through tokio).
//!
//! See `SHM_API.md` and the module docs of [`ring`] and [`slab`]; for the link, of
//! [`segment`] (memfd, layout validation), [`doorbell`] (eventfds, liveness socket) and
//! [`link`] (the [`Link`](crate::links::Link) itself, parent/child handoff).

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
#[cfg(not(loom))]
pub use link::{ChildHandoff, IdleStrategy, ShmConfig, ShmLink};
pub use region::Region;
