//! Shared-memory transport: regions, the SPSC ring, the zero-copy slab (plain libraries, no
//! actix, no runtime), and on top of them the segment, the doorbells and [`ShmLink`] (which
//! waits through tokio); the hub bootstrap (descriptor passing over a Unix `SOCK_SEQPACKET`
//! socket) and the hub's sans-IO peer table.
//!
//! See `SHM_API.md` and the module docs of [`ring`] and [`slab`]; for the link, of
//! [`segment`] (memfd, layout validation), [`doorbell`] (socket-pair doorbells, liveness
//! socket, and the defences against descriptors a peer passes on a socket we read, whose
//! closes run on a closer thread: [`flush_descriptor_closer`]) and
//! [`link`] (the [`Link`](crate::links::Link) itself, parent/child handoff).
//!
//! Modules that need `unsafe` opt in with `#![allow(unsafe_code)]` themselves.

#[cfg(all(target_os = "linux", not(loom)))]
pub mod bootstrap;
#[cfg(not(loom))]
pub mod doorbell;
pub mod error;
#[cfg(all(target_os = "linux", not(loom)))]
pub mod hub;
#[cfg(not(loom))]
pub mod layout;
#[cfg(not(loom))]
pub mod link;
#[cfg(not(loom))]
pub mod peers;
pub mod region;
pub mod ring;
#[cfg(not(loom))]
pub(crate) mod scm;
#[cfg(not(loom))]
pub mod segment;
pub mod slab;

#[cfg(all(test, not(loom)))]
mod ring_tests;

pub use error::ShmError;
#[cfg(not(loom))]
pub use link::{ChildHandoff, IdleStrategy, ShmConfig, ShmLink};
pub use region::Region;
#[cfg(not(loom))]
pub use scm::flush_descriptor_closer;
