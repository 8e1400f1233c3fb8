//! Shared-memory transport: the hub bootstrap (fd passing over a Unix `SOCK_SEQPACKET`
//! socket) and the hub's sans-IO peer table.
//!
//! Modules that need `unsafe` opt in with `#![allow(unsafe_code)]` themselves.

#[cfg(target_os = "linux")]
pub mod bootstrap;
pub mod peers;
