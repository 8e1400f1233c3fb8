//! Link events, sent to the subscriber given in [`LinkOptions::events`](super::LinkOptions).

use actix::Message;

use super::{ActorError, LinkId};
use crate::endpoint::Endpoint;

/// Something happened to a link. One message type so that one handler sees all of them, in
/// order.
///
/// Per link: [`Up`](LinkEvent::Up) comes first; each half (reader, writer) sends exactly one
/// [`Down`](LinkEvent::Down) when its actor stops; a
/// [`FrameRejected`](LinkEvent::FrameRejected) comes right before the reader's `Down`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub enum LinkEvent {
    /// The link's actors were started.
    Up(LinkUp),
    /// One half of the link stopped.
    Down(LinkDown),
    /// The reader refused a frame and stopped.
    FrameRejected(FrameRejected),
}

impl LinkEvent {
    /// The link this event is about.
    pub fn link(&self) -> LinkId {
        match self {
            LinkEvent::Up(e) => e.link,
            LinkEvent::Down(e) => e.link,
            LinkEvent::FrameRejected(e) => e.link,
        }
    }
}

/// A link's actors were started.
#[derive(Debug, Clone)]
pub struct LinkUp {
    /// The link.
    pub link: LinkId,
    /// The endpoint connected to (client side) or accepted on (server side), when known.
    pub endpoint: Option<Endpoint>,
}

/// Which half of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The [`LinkReader`](super::LinkReader).
    Reader,
    /// The [`LinkWriter`](super::LinkWriter).
    Writer,
}

/// One half of a link stopped.
#[derive(Debug, Clone)]
pub struct LinkDown {
    /// The link.
    pub link: LinkId,
    /// Which half stopped.
    pub side: Side,
    /// Why.
    pub reason: DownReason,
}

/// Why a link half stopped.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DownReason {
    /// Writer: a [`Close`](super::Close) completed; everything committed was flushed.
    Closed,
    /// Reader: the peer closed its sending direction cleanly, after its last message.
    PeerClosed,
    /// The link failed (I/O error, truncated or rejected frame, undecodable message).
    Error(ActorError),
    /// Reader: the recipient of [`Received`](super::Received) messages has stopped.
    RecipientGone,
    /// The actor was stopped otherwise: [`Shutdown`](super::Shutdown), every `Addr` of the
    /// writer dropped, or the actix system stopping.
    Stopped,
}

/// The reader refused a frame: the peer announced a frame above the maximum length, or sent
/// bytes that do not decode as the expected message type. The reader stops right after.
#[derive(Debug, Clone)]
pub struct FrameRejected {
    /// The link.
    pub link: LinkId,
    /// What was wrong with the frame.
    pub reason: ActorError,
}
