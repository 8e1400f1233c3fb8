//! [`ShmHub`]: the actor that owns a shared-memory [`Hub`] and its listener.
//!
//! # Messages
//!
//! * Sends [`Incoming`] (to the `incoming` recipient) for each guest that joined, exactly as
//!   the [`Acceptor`](super::Acceptor) does: the application calls
//!   [`Incoming::accept_with`] to start the guest's `LinkWriter`/`LinkReader` (the link is
//!   an [`AnyLink::Shm`]), or [`Incoming::refuse`] to drop it (the guest's link then ends:
//!   its reader sees the end, its sender `Closed`; the slot is released, with a
//!   [`PeerLeft`], when the guest drops its link or exits). The [`Incoming::id`] is the
//!   [`LinkId`] named in the preceding [`PeerJoined`].
//! * Sends [`HubPeerEvent`] (to the `events` recipient): [`PeerJoined { peer, pid, link }`]
//!   before the guest's `Incoming`, and [`PeerLeft { peer, reason }`] when it leaves, with
//!   `reason` [`Clean`](DisconnectReason::Clean), [`Crashed`](DisconnectReason::Crashed) or
//!   [`Corrupt`](DisconnectReason::Corrupt) (see [`crate::shm::hub`] for how each is
//!   decided).
//! * Handles [`SpawnGuest`]: starts a guest process for a reserved slot
//!   ([`HubHandle::spawn`], run with `spawn_blocking`); the child calls
//!   [`ShmConnector::from_env`](crate::shm::hub::ShmConnector::from_env).
//! * Handles [`Shutdown`]: stops.
//!
//! # Lifecycle
//!
//! [`ShmHub::start`] takes a bound [`Hub`] (or [`ShmHub::bind`] binds one). Joins are
//! handshaken concurrently by the hub's own futures, polled by this actor; no system call
//! blocks the Arbiter (the sockets are non-blocking and driven by tokio's `AsyncFd`, and
//! spawning a process goes through `spawn_blocking`). Each guest's departure is detected by
//! a tokio task the hub spawned for it, whether or not the actor is busy.
//!
//! # What stops it
//!
//! [`Shutdown`], its `incoming` recipient stopping (nobody to hand guests to), or the
//! system stopping. When it stops, the hub is dropped: its socket is unlinked and every
//! guest's bootstrap connection is shut down, so every guest link (on both sides) fails.
//! Link actors already started keep running until their link reports the failure.
//!
//! # Not guaranteed
//!
//! * Events are delivered within the `events` recipient's mailbox capacity (`try_send`,
//!   and when the mailbox is full, `send` whose reply the actor waits for, pausing its
//!   streams meanwhile — never `do_send`, which ignores the capacity). So a recipient that
//!   does not keep up slows the hub down instead of growing its mailbox: the actor stops
//!   taking joins and departures; departures wait in the hub's bounded event channel
//!   ([`HubConfig::event_capacity`]), and departed guests keep their slots until their
//!   event is queued, so the hub fills up and refuses joins (`Full`) rather than growing.
//!   Nothing is dropped on the way, but a [`PeerLeft`] for a recipient that has stopped is
//!   lost, as are events of guests whose join completes while the actor is stopping.
//! * A failure of the listener itself (rare: e.g. out of descriptors) is logged and
//!   retried after [`ActorConfig::accept_retry_delay`]; individual failed joins are only
//!   logged (the guest gets the error).

use std::fmt;
use std::process::{Child, Command};
use std::time::Duration;

use actix::prelude::*;

use super::{offer, ActorConfig, Delivery, Incoming, LinkId, Shutdown};
use crate::endpoint::Endpoint;
use crate::links::AnyLink;
use crate::shm::hub::{Hub, HubConfig, HubError, HubEvent, HubGuest, HubHandle};
pub use crate::shm::peers::{DisconnectReason, PeerHandle};

/// A guest joined the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerJoined {
    /// Its slot and generation.
    pub peer: PeerHandle,
    /// Its process id (`SO_PEERCRED`; 0 if unknown).
    pub pid: u32,
    /// The id of the [`Incoming`] that carries its link.
    pub link: LinkId,
}

/// A guest left the hub; its slot is reused once the application dropped every buffer
/// received from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLeft {
    /// Which occupancy ended.
    pub peer: PeerHandle,
    /// Why: `Clean`, `Crashed` or `Corrupt`.
    pub reason: DisconnectReason,
}

/// What [`ShmHub`] reports about its guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub enum HubPeerEvent {
    /// See [`PeerJoined`].
    Joined(PeerJoined),
    /// See [`PeerLeft`].
    Left(PeerLeft),
}

/// Asks [`ShmHub`] to start a guest process (see [`HubHandle::spawn`]).
#[derive(Debug, Message)]
#[rtype(result = "Result<Child, HubError>")]
pub struct SpawnGuest(pub Command);

/// The hub actor. See the [module docs](self).
pub struct ShmHub {
    hub: Option<Hub>,
    handle: HubHandle,
    local: Endpoint,
    incoming: Recipient<Incoming>,
    events: Recipient<HubPeerEvent>,
    retry_delay: Duration,
}

impl fmt::Debug for ShmHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmHub")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl ShmHub {
    /// An actor (not yet started) for `hub`.
    pub fn new(
        hub: Hub,
        incoming: Recipient<Incoming>,
        events: Recipient<HubPeerEvent>,
        config: &ActorConfig,
    ) -> ShmHub {
        ShmHub {
            handle: hub.handle(),
            local: Endpoint::Shm(hub.path().to_path_buf()),
            hub: Some(hub),
            incoming,
            events,
            retry_delay: config.accept_retry_delay,
        }
    }

    /// Binds a hub at `path` and starts its actor. Returns the actor and a handle on the
    /// hub's slots (also reachable with [`SpawnGuest`]).
    pub fn bind(
        path: impl AsRef<std::path::Path>,
        config: HubConfig,
        incoming: Recipient<Incoming>,
        events: Recipient<HubPeerEvent>,
    ) -> Result<(Addr<ShmHub>, HubHandle), HubError> {
        let hub = Hub::bind(path, config)?;
        let handle = hub.handle();
        Ok((
            ShmHub::new(hub, incoming, events, &ActorConfig::default()).start(),
            handle,
        ))
    }

    /// The `shm://` endpoint guests connect to.
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// A handle on the hub's slots.
    pub fn handle(&self) -> &HubHandle {
        &self.handle
    }
}

/// One item of the actor's input stream.
enum Item {
    Guest(Box<Result<HubGuest, HubError>>),
    Left(HubEvent),
}

impl Actor for ShmHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(mut hub) = self.hub.take() else {
            return;
        };
        let departures = hub.take_events();
        let retry = self.retry_delay;
        let accept = futures::stream::unfold((hub, false), move |(mut hub, failed)| async move {
            if failed {
                tokio::time::sleep(retry).await;
            }
            let r = hub.accept().await;
            let failed = r.is_err();
            Some((Item::Guest(Box::new(r)), (hub, failed)))
        });
        let left = futures::stream::unfold(departures, |mut rx| async move {
            rx.recv().await.map(|e| (Item::Left(e), rx))
        });
        ctx.add_stream(futures::stream::select(accept, left));
    }
}

impl ShmHub {
    /// Hands a guest's link to the application (after its `PeerJoined`).
    fn hand_over(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        let delivery = offer(&self.incoming, incoming);
        super::wait_or_stop(self, delivery, ctx);
    }

    /// Sends an event within the events recipient's mailbox capacity, then runs `then`
    /// (at once, or once the event is in the mailbox, with the actor's streams paused
    /// meanwhile). A recipient that has stopped loses the event; `then` still runs.
    fn emit(
        &mut self,
        event: HubPeerEvent,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut ShmHub, &mut Context<ShmHub>) + 'static,
    ) {
        match offer(&self.events, event) {
            Delivery::Done | Delivery::Gone => then(self, ctx),
            Delivery::Wait(request) => {
                ctx.wait(
                    request
                        .into_actor(self)
                        .map(move |_, act, ctx| then(act, ctx)),
                );
            }
        }
    }
}

impl StreamHandler<Item> for ShmHub {
    fn handle(&mut self, item: Item, ctx: &mut Context<Self>) {
        match item {
            Item::Guest(guest) => match *guest {
                Ok(guest) => {
                    let id = LinkId::next();
                    let joined = HubPeerEvent::Joined(PeerJoined {
                        peer: guest.peer,
                        pid: guest.pid,
                        link: id,
                    });
                    let incoming = Incoming::new(AnyLink::from(guest.link), id, self.local.clone());
                    // `PeerJoined` first, then the link.
                    self.emit(joined, ctx, move |act, ctx| act.hand_over(incoming, ctx));
                }
                Err(e) => {
                    tracing::warn!("shm hub {}: accept failed: {e}", self.local);
                }
            },
            Item::Left(HubEvent::Left { peer, reason }) => {
                let left = HubPeerEvent::Left(PeerLeft { peer, reason });
                self.emit(left, ctx, |_, _| {});
            }
        }
    }
}

impl Handler<SpawnGuest> for ShmHub {
    type Result = ResponseFuture<Result<Child, HubError>>;

    fn handle(&mut self, SpawnGuest(command): SpawnGuest, _: &mut Context<Self>) -> Self::Result {
        let handle = self.handle.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || handle.spawn(command))
                .await
                .unwrap_or_else(|e| Err(HubError::Spawn(std::io::Error::other(e))))
        })
    }
}

impl Handler<Shutdown> for ShmHub {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
