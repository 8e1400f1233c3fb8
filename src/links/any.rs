//! [`AnyLink`]: one type for a link of any transport, so that code which does not care about
//! the transport (the actors, [`crate::endpoint::connect`]) is not generic over it.
//!
//! Dispatch is a `match` per call, no boxing of futures.

use bytes::Bytes;

use super::stream::{BoxRead, BoxWrite, StreamLink, StreamPermit, StreamRx, StreamSlot, StreamTx};
use super::{Link, LinkError, LinkRx, LinkTx, Permit, WriteSlot};

/// A link of any transport.
#[non_exhaustive]
pub enum AnyLink {
    /// A framed byte stream (TCP, Unix socket, stdio, in-memory pipe).
    Stream(StreamLink<BoxRead, BoxWrite>),
}

/// Sending half of an [`AnyLink`].
#[non_exhaustive]
pub enum AnyTx {
    /// See [`AnyLink::Stream`].
    Stream(StreamTx<BoxWrite>),
}

/// Receiving half of an [`AnyLink`].
#[non_exhaustive]
pub enum AnyRx {
    /// See [`AnyLink::Stream`].
    Stream(StreamRx<BoxRead>),
}

/// Permit of an [`AnyTx`].
#[non_exhaustive]
pub enum AnyPermit<'a> {
    /// See [`AnyLink::Stream`].
    Stream(StreamPermit<'a>),
}

/// Write slot of an [`AnyTx`].
#[non_exhaustive]
pub enum AnySlot<'a> {
    /// See [`AnyLink::Stream`].
    Stream(StreamSlot<'a>),
}

impl<R, W> From<StreamLink<R, W>> for AnyLink
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    fn from(link: StreamLink<R, W>) -> Self {
        AnyLink::Stream(link.boxed())
    }
}

impl Link for AnyLink {
    type Tx = AnyTx;
    type Rx = AnyRx;

    fn split(self) -> (AnyTx, AnyRx) {
        match self {
            AnyLink::Stream(l) => {
                let (t, r) = l.split();
                (AnyTx::Stream(t), AnyRx::Stream(r))
            }
        }
    }
}

impl LinkTx for AnyTx {
    type Permit<'a> = AnyPermit<'a>;

    async fn reserve(&mut self) -> Result<AnyPermit<'_>, LinkError> {
        match self {
            AnyTx::Stream(t) => t.reserve().await.map(AnyPermit::Stream),
        }
    }

    async fn close(self) -> Result<(), LinkError> {
        match self {
            AnyTx::Stream(t) => t.close().await,
        }
    }
}

impl<'a> Permit for AnyPermit<'a> {
    type Slot = AnySlot<'a>;

    fn alloc(self, len: usize) -> Result<AnySlot<'a>, LinkError> {
        match self {
            AnyPermit::Stream(p) => p.alloc(len).map(AnySlot::Stream),
        }
    }
}

impl WriteSlot for AnySlot<'_> {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            AnySlot::Stream(s) => s.as_mut_slice(),
        }
    }

    fn commit(self) {
        match self {
            AnySlot::Stream(s) => s.commit(),
        }
    }
}

impl LinkRx for AnyRx {
    async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        match self {
            AnyRx::Stream(r) => r.recv().await,
        }
    }
}
