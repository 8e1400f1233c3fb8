//! The [`Link`] contract and the transports that implement it.
//!
//! A link is a reliable, ordered, message-framed, bidirectional channel between two peers.
//! It is split into a sending half ([`LinkTx`]) and a receiving half ([`LinkRx`]) that can
//! live in different tasks.
//!
//! # Sending: a two-phase write
//!
//! ```text
//!   tx.reserve().await ──► Permit ──alloc(len)──► WriteSlot ──as_mut_slice()/commit()──► peer
//!        ▲ the only place a sender waits (backpressure)
//! ```
//!
//! 1. [`LinkTx::reserve`] is **the one backpressure point**. It waits until the transport
//!    has room for one more message and then *holds* that room: the returned [`Permit`] is a
//!    real reservation, so the following `alloc` and `commit` never wait and never fail
//!    for lack of space.
//! 2. [`Permit::alloc`] is synchronous. It hands out a [`WriteSlot`] of exactly `len` bytes,
//!    or fails with [`LinkError::TooLarge`] when `len` is above the transport's maximum
//!    payload. Nothing is sent yet.
//! 3. [`WriteSlot::as_mut_slice`] is exactly `len` bytes long; the caller fills it (a codec
//!    serializes straight into it, see [`crate::codec`]).
//! 4. [`WriteSlot::commit`] is synchronous and publishes exactly one message.
//!
//! Dropping a permit or a slot sends nothing and releases the reservation.
//!
//! # Receiving
//!
//! [`LinkRx::recv`] yields one message per call as [`bytes::Bytes`]:
//!
//! * `Ok(Some(bytes))` — the next message, in the order it was committed. Empty messages are
//!   legal and are delivered as empty `Bytes`.
//! * `Ok(None)` — the peer closed the link cleanly. This is **sticky**: every later call
//!   returns `Ok(None)` again.
//! * `Err(e)` — the link failed. This is **sticky** too: every later call returns the same
//!   error.
//!
//! `recv` is **cancel-safe**: dropping the future before it completes (for instance when
//! another branch of `tokio::select!` wins) loses no message and never desynchronises the
//! framing; the next call returns the message that would have been returned.
//!
//! # Closing
//!
//! [`LinkTx::close`] flushes everything committed before it, then closes the sending
//! direction; the peer's `recv` returns every message and then `Ok(None)`.
//!
//! # Transports
//!
//! * [`stream`] — any `AsyncRead + AsyncWrite` byte stream (TCP, Unix sockets, stdio, an
//!   in-memory duplex) with `[len: u32 LE][payload]` framing.
//! * [`inproc`] — in-process endpoints addressed by name (`inproc://name`): bounded queues
//!   of zero-copy messages between threads, runtimes and actix Arbiters of one process.
//! * [`AnyLink`] — a link of any transport, as returned by [`crate::endpoint::connect`].
//! * [`fault`] — [`FaultyLink`](fault::FaultyLink), a wrapper that breaks any link on
//!   purpose, for testing.
//!
//! A [`LinkSource`] makes fresh links to the same peer (an [`Endpoint`](crate::endpoint::Endpoint),
//! or a closure through [`FnSource`]); whatever reconnects takes one.

use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

mod any;
pub mod fault;
pub mod inproc;
mod source;
pub mod stream;

pub use any::{AnyLink, AnyPermit, AnyRx, AnySlot, AnyTx};
pub use source::{FnSource, LinkSource};

/// Errors of the link layer.
///
/// Errors are `Clone` so that a link can report the same failure to every later call
/// (errors are sticky).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The operating system reported an I/O error on the underlying transport.
    #[error("link I/O error: {0}")]
    Io(#[source] Arc<io::Error>),

    /// A message to be sent is larger than the transport's maximum payload; it was refused
    /// at [`Permit::alloc`] and nothing was sent.
    #[error("message of {len} bytes is larger than the maximum of {max} bytes")]
    TooLarge {
        /// Requested payload length in bytes.
        len: usize,
        /// The transport's maximum payload length in bytes.
        max: usize,
    },

    /// The peer sent a frame whose length prefix is above the configured maximum. The
    /// receiver refused it before allocating anything for its payload.
    #[error("peer announced a frame of {len} bytes, above the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced length in bytes.
        len: u64,
        /// The configured maximum frame length in bytes.
        max: usize,
    },

    /// The byte stream ended in the middle of a frame (inside the length prefix or the
    /// payload). This is an error, not a clean close: a message was cut short.
    #[error("link ended in the middle of a frame ({buffered} bytes of an incomplete frame)")]
    Truncated {
        /// How many bytes of the incomplete frame had arrived.
        buffered: usize,
    },

    /// The link is closed: it was closed locally, or the peer went away, so nothing more can
    /// be sent.
    #[error("link is closed")]
    Closed,

    /// The transport's shared state was found malformed (shared-memory transports validate
    /// every index and length they read from the peer). The link cannot continue.
    #[error("link state is corrupt: {0}")]
    Corrupt(String),
}

impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> Self {
        LinkError::Io(Arc::new(e))
    }
}

/// A bidirectional, message-framed link between two peers. See the [module docs](self) for
/// the full contract.
pub trait Link: Send + 'static {
    /// The sending half.
    type Tx: LinkTx;
    /// The receiving half.
    type Rx: LinkRx;

    /// Splits the link into its two halves, which may then be used from different tasks.
    fn split(self) -> (Self::Tx, Self::Rx);
}

/// The sending half of a [`Link`].
pub trait LinkTx: Send + 'static {
    /// A reservation for one message, borrowed from the sender.
    type Permit<'a>: Permit
    where
        Self: 'a;

    /// Waits until the transport has room for one more message and reserves it.
    ///
    /// This is the only point where a sender waits. The returned permit *holds* the room:
    /// [`Permit::alloc`] and [`WriteSlot::commit`] then never wait. Dropping the permit
    /// releases the room and sends nothing.
    ///
    /// Errors are sticky: after the link failed or was closed, `reserve` keeps returning the
    /// error (a transport write error is reported here, at the next `reserve`, or at
    /// [`close`](LinkTx::close)).
    ///
    /// Cancel-safe: dropping the future reserves nothing.
    fn reserve(&mut self) -> impl Future<Output = Result<Self::Permit<'_>, LinkError>> + Send;

    /// Flushes every message committed before the call, then closes the sending direction.
    /// The peer receives all of them and then a clean end (`Ok(None)`).
    ///
    /// Returns the transport's error if any committed message could not be written.
    fn close(self) -> impl Future<Output = Result<(), LinkError>> + Send;
}

/// A reservation for exactly one message. Obtained from [`LinkTx::reserve`].
///
/// Dropping it sends nothing and releases the reservation.
pub trait Permit: Send {
    /// The slot the message is written into.
    type Slot: WriteSlot;

    /// Allocates a slot of exactly `len` bytes for the message. Synchronous.
    ///
    /// Fails with [`LinkError::TooLarge`] if `len` is above the transport's maximum
    /// payload; the reservation is then released and nothing is sent.
    fn alloc(self, len: usize) -> Result<Self::Slot, LinkError>;
}

/// A buffer of exactly the allocated length that becomes one message when committed.
///
/// Dropping it without committing sends nothing.
pub trait WriteSlot {
    /// The message bytes to fill in; exactly as long as the length passed to
    /// [`Permit::alloc`]. Its initial content is unspecified (but initialised).
    fn as_mut_slice(&mut self) -> &mut [u8];

    /// Publishes the message. Synchronous; exactly one message is sent.
    fn commit(self);
}

/// The receiving half of a [`Link`].
pub trait LinkRx: Send + 'static {
    /// Receives the next message.
    ///
    /// `Ok(Some(_))` is a message, `Ok(None)` a clean close by the peer, `Err(_)` a failure.
    /// Both the close and the error are sticky. Cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Bytes>, LinkError>> + Send;
}

/// Sends `payload` as one message: `reserve`, `alloc`, copy, `commit`.
///
/// A convenience for callers that already hold the bytes; codecs write straight into the
/// slot instead (see [`crate::codec::send`]).
///
/// ```
/// # use actix_tether::links::{stream::StreamLink, send_bytes, Link, LinkRx};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), actix_tether::links::LinkError> {
/// let (a, b) = StreamLink::duplex_pair(64 * 1024);
/// let (mut atx, _arx) = a.split();
/// let (_btx, mut brx) = b.split();
/// send_bytes(&mut atx, b"hello").await?;
/// assert_eq!(brx.recv().await?.as_deref(), Some(&b"hello"[..]));
/// # Ok(()) }
/// ```
pub async fn send_bytes<T: LinkTx>(tx: &mut T, payload: &[u8]) -> Result<(), LinkError> {
    let permit = tx.reserve().await?;
    let mut slot = permit.alloc(payload.len())?;
    slot.as_mut_slice().copy_from_slice(payload);
    slot.commit();
    Ok(())
}
