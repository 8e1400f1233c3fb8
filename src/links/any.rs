//! [`AnyLink`]: one type for a link of any transport, so that code which does not care about
//! the transport (the actors, [`crate::endpoint::connect`]) is not generic over it.
//!
//! Dispatch is a `match` per call, no boxing of futures.

use bytes::Bytes;

use super::inproc::{InprocLink, InprocPermit, InprocRx, InprocSlot, InprocTx};
use super::stream::{BoxRead, BoxWrite, StreamLink, StreamPermit, StreamRx, StreamSlot, StreamTx};
use super::{Link, LinkError, LinkRx, LinkTx, Permit, WriteSlot};
#[cfg(all(unix, not(loom)))]
use crate::shm::link::{ShmLink, ShmPermit, ShmRx, ShmSlot, ShmTx};

/// A link of any transport.
#[non_exhaustive]
pub enum AnyLink {
    /// A framed byte stream (TCP, Unix socket, stdio, in-memory pipe).
    Stream(StreamLink<BoxRead, BoxWrite>),
    /// An in-process link (`inproc://name`).
    Inproc(InprocLink),
    /// A shared-memory link (see [`crate::shm::link`]).
    #[cfg(all(unix, not(loom)))]
    Shm(Box<ShmLink>),
}

/// Sending half of an [`AnyLink`].
#[non_exhaustive]
pub enum AnyTx {
    /// See [`AnyLink::Stream`].
    Stream(StreamTx<BoxWrite>),
    /// See [`AnyLink::Inproc`].
    Inproc(InprocTx),
    /// See [`AnyLink::Shm`].
    #[cfg(all(unix, not(loom)))]
    Shm(Box<ShmTx>),
}

/// Receiving half of an [`AnyLink`].
#[non_exhaustive]
pub enum AnyRx {
    /// See [`AnyLink::Stream`].
    Stream(StreamRx<BoxRead>),
    /// See [`AnyLink::Inproc`].
    Inproc(InprocRx),
    /// See [`AnyLink::Shm`].
    #[cfg(all(unix, not(loom)))]
    Shm(Box<ShmRx>),
}

/// Permit of an [`AnyTx`].
#[non_exhaustive]
pub enum AnyPermit<'a> {
    /// See [`AnyLink::Stream`].
    Stream(StreamPermit<'a>),
    /// See [`AnyLink::Inproc`].
    Inproc(InprocPermit<'a>),
    /// See [`AnyLink::Shm`].
    #[cfg(all(unix, not(loom)))]
    Shm(ShmPermit<'a>),
}

/// Write slot of an [`AnyTx`].
#[non_exhaustive]
pub enum AnySlot<'a> {
    /// See [`AnyLink::Stream`].
    Stream(StreamSlot<'a>),
    /// See [`AnyLink::Inproc`].
    Inproc(InprocSlot<'a>),
    /// See [`AnyLink::Shm`].
    #[cfg(all(unix, not(loom)))]
    Shm(ShmSlot<'a>),
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

impl From<InprocLink> for AnyLink {
    fn from(link: InprocLink) -> Self {
        AnyLink::Inproc(link)
    }
}

#[cfg(all(unix, not(loom)))]
impl From<ShmLink> for AnyLink {
    fn from(link: ShmLink) -> Self {
        AnyLink::Shm(Box::new(link))
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
            AnyLink::Inproc(l) => {
                let (t, r) = l.split();
                (AnyTx::Inproc(t), AnyRx::Inproc(r))
            }
            #[cfg(all(unix, not(loom)))]
            AnyLink::Shm(l) => {
                let (t, r) = (*l).split();
                (AnyTx::Shm(Box::new(t)), AnyRx::Shm(Box::new(r)))
            }
        }
    }
}

impl LinkTx for AnyTx {
    type Permit<'a> = AnyPermit<'a>;

    async fn reserve(&mut self) -> Result<AnyPermit<'_>, LinkError> {
        match self {
            AnyTx::Stream(t) => t.reserve().await.map(AnyPermit::Stream),
            AnyTx::Inproc(t) => t.reserve().await.map(AnyPermit::Inproc),
            #[cfg(all(unix, not(loom)))]
            AnyTx::Shm(t) => t.reserve().await.map(AnyPermit::Shm),
        }
    }

    async fn close(self) -> Result<(), LinkError> {
        match self {
            AnyTx::Stream(t) => t.close().await,
            AnyTx::Inproc(t) => t.close().await,
            #[cfg(all(unix, not(loom)))]
            AnyTx::Shm(t) => (*t).close().await,
        }
    }
}

impl<'a> Permit for AnyPermit<'a> {
    type Slot = AnySlot<'a>;

    fn alloc(self, len: usize) -> Result<AnySlot<'a>, LinkError> {
        match self {
            AnyPermit::Stream(p) => p.alloc(len).map(AnySlot::Stream),
            AnyPermit::Inproc(p) => p.alloc(len).map(AnySlot::Inproc),
            #[cfg(all(unix, not(loom)))]
            AnyPermit::Shm(p) => p.alloc(len).map(AnySlot::Shm),
        }
    }
}

impl WriteSlot for AnySlot<'_> {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            AnySlot::Stream(s) => s.as_mut_slice(),
            AnySlot::Inproc(s) => s.as_mut_slice(),
            #[cfg(all(unix, not(loom)))]
            AnySlot::Shm(s) => s.as_mut_slice(),
        }
    }

    fn commit(self) {
        match self {
            AnySlot::Stream(s) => s.commit(),
            AnySlot::Inproc(s) => s.commit(),
            #[cfg(all(unix, not(loom)))]
            AnySlot::Shm(s) => s.commit(),
        }
    }
}

impl LinkRx for AnyRx {
    async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        match self {
            AnyRx::Stream(r) => r.recv().await,
            AnyRx::Inproc(r) => r.recv().await,
            #[cfg(all(unix, not(loom)))]
            AnyRx::Shm(r) => r.recv().await,
        }
    }
}
