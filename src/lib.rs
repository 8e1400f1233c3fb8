//! # actix-tether
//!
//! A transport layer for [actix](https://docs.rs/actix) applications: reliable, ordered,
//! message-framed **links** over TCP, Unix sockets, any byte stream and in-process named
//! endpoints, typed messages through a serde [codec], and (with the `actors` feature) actix
//! actors on top.
//!
//! Layers, bottom up (see `ARCHITECTURE.md`):
//!
//! * [`frame`] — `[len: u32 LE][payload]` framing (plain library).
//! * [`codec`] — serde values into link messages (postcard; bincode 2 with `bincode`).
//! * [`links`] — the [`Link`](links::Link) contract and its transports.
//! * [`endpoint`] — `tcp://`, `unix://` and `inproc://` addresses, `connect` and `listen`.
//! * `actors` (feature `actors`, default) — actix actors over links: `LinkWriter`,
//!   `LinkReader`, `Acceptor`, link events.
//! * [`shm`] (Unix) — a zero-copy shared-memory link between threads or processes of one
//!   host ([`shm::ShmLink`]): sealed memfd segment, SPSC rings, slab, socket-pair doorbells; and
//!   the hub bootstrap (descriptor passing).
//! * [`stable`] — stable sessions that survive link failure (sans-IO core, plus a plain
//!   tokio driver in [`stable::driver`]); actors `StableSession` and `StableRegistry`.
//!
//! ```
//! use actix_tether::{codec::{self, Codec, Postcard}, endpoint, links::{Link, LinkRx}};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = endpoint::listen(&"tcp://127.0.0.1:0".parse()?).await?;
//! let client = endpoint::connect(&listener.local_endpoint()).await?;
//! let server = listener.accept().await?;
//!
//! let (mut tx, _) = client.split();
//! let (_, mut rx) = server.split();
//! codec::send(&mut tx, &Postcard, &("hello", 42u32)).await?;
//! let (text, n): (String, u32) = Postcard.decode(&rx.recv().await?.unwrap())?;
//! assert_eq!((text.as_str(), n), ("hello", 42));
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "actors")]
#[cfg_attr(docsrs, doc(cfg(feature = "actors")))]
pub mod actors;
pub mod codec;
pub mod endpoint;
pub mod frame;
pub mod links;
#[cfg(unix)]
pub mod shm;
pub mod stable;
#[cfg(unix)]
mod sync;

/// The README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
