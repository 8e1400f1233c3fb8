//! Shared-memory transport: the hub bootstrap (descriptor passing over a Unix
//! `SOCK_SEQPACKET` socket) and the hub's sans-IO peer table.
//!
//! Modules that need `unsafe` opt in with `#![allow(unsafe_code)]` themselves.

#[cfg(all(target_os = "linux", not(loom)))]
pub mod bootstrap;
pub mod peers;
