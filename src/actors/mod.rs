//! The actix actor layer: typed messages over any [`Link`] (actors own the link halves).
//!
//! ```text
//!  app ──Send<Out>──► LinkWriter ──reserve/encode/commit──► link ──► peer
//!  app ◄─Received<In>─ LinkReader ◄──recv/decode─────────── link ◄── peer
//!  app ◄─Incoming──── Acceptor ◄── Listener (tcp://, unix://, inproc://)
//!  subscriber ◄─LinkEvent (Up / Down / FrameRejected)
//! ```
//!
//! * [`LinkWriter`] owns a link's sending half and handles [`Send`], [`SendAll`] and
//!   [`Close`].
//! * [`LinkReader`] owns a link's receiving half and delivers [`Received`] to a
//!   [`Recipient`].
//! * [`Acceptor`] listens on an [`Endpoint`] and hands each connection to the application
//!   as an [`Incoming`], which it accepts (starting both link actors) or refuses.
//! * [`LinkEvent`]s tell an optional subscriber when a link comes up, goes down and why,
//!   and when a frame was rejected.
//! * [`session::StableSession`] — one side of a stable session, supervised: it reconnects,
//!   resumes and replays by itself after its link fails.
//! * [`registry::StableRegistry`] — the server side of stable sessions: takes incoming links
//!   (from its own accept loop, from any [`Link`] handed to it, or as
//!   the `incoming` recipient of an [`Acceptor`] or a [`hub::ShmHub`], whose [`Incoming`]
//!   it handles itself) and creates or resumes sessions.
//!
//! Backpressure is end to end and bounded: a slow peer makes the writer's `reserve` wait,
//! which pauses the writer's (small) mailbox, which makes `send().await` wait and
//! `try_send` fail; a slow application makes the reader wait for its mailbox, which stops
//! the reader from reading the link, which fills the peer's socket buffers. No queue in
//! this module grows without bound. The flip side, as with any bounded buffers: two peers
//! that each only write and never read can block each other for good; read concurrently.
//!
//! ```no_run
//! use actix::prelude::*;
//! use actix_tether::actors::{self, Received, Send};
//!
//! struct Printer;
//! impl Actor for Printer { type Context = Context<Self>; }
//! impl Handler<Received<String>> for Printer {
//!     type Result = ();
//!     fn handle(&mut self, msg: Received<String>, _: &mut Context<Self>) {
//!         println!("{}: {}", msg.link, msg.msg);
//!     }
//! }
//!
//! # #[actix::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let printer = Printer.start();
//! let writer = actors::connect::<String, String>(
//!     &"tcp://127.0.0.1:7000".parse()?,
//!     printer.recipient(),
//! ).await?;
//! writer.send(Send("hello".to_string())).await??; // committed to the link
//! writer.send(actors::Close).await??;             // flushed and closed
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{Codec, CodecError, Postcard};
use crate::endpoint::{self, Endpoint, EndpointError};
use crate::links::{Link, LinkError};

mod acceptor;
mod events;
#[cfg(target_os = "linux")]
pub mod hub;
mod pump;
mod reader;
pub mod registry;
pub mod session;
mod writer;

pub use acceptor::{AcceptError, Acceptor, Incoming};
pub use events::{DownReason, FrameRejected, LinkDown, LinkEvent, LinkUp, Side};
#[cfg(target_os = "linux")]
pub use hub::{HubPeerEvent, PeerJoined, PeerLeft, ShmHub, SpawnGuest};
pub use reader::{LinkReader, Received};
pub use writer::{BatchError, Close, LinkWriter, Send, SendAll, WriteError};

/// Errors of the actor layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ActorError {
    /// The link refused a message (`TooLarge`) or failed (I/O error, hostile frame, closed).
    #[error(transparent)]
    Link(LinkError),
    /// A message could not be encoded, or a received message could not be decoded.
    #[error(transparent)]
    Codec(CodecError),
    /// Connecting or listening failed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The actor has stopped or its link was already closed with [`Close`].
    #[error("the link actor is closed")]
    Closed,
}

impl From<LinkError> for ActorError {
    fn from(e: LinkError) -> Self {
        ActorError::Link(e)
    }
}

impl From<CodecError> for ActorError {
    /// A codec error that wraps a link error becomes [`ActorError::Link`].
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Link(e) => ActorError::Link(e),
            e => ActorError::Codec(e),
        }
    }
}

/// Configuration of the actor layer.
#[derive(Debug, Clone)]
pub struct ActorConfig {
    /// Mailbox capacity of each [`LinkWriter`], in messages. Default 16; values below 1 are
    /// raised to 1. This bounds how many encoded-to-be messages wait in the writer's
    /// mailbox while the link is full (actix gives each `Addr` clone one extra slot, and
    /// every pending `send()` future holds its own message).
    pub writer_mailbox: usize,
    /// How long an [`Acceptor`] waits before accepting again after an accept error
    /// (for instance `EMFILE`, too many open files), so that a persistent error does not
    /// spin. Default 100 ms.
    pub accept_retry_delay: Duration,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            writer_mailbox: 16,
            accept_retry_delay: Duration::from_millis(100),
        }
    }
}

/// Identity of one link (a writer and reader pair), unique within the process. Carried by
/// every [`Received`] message and [`LinkEvent`] so one actor can serve many links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(u64);

impl LinkId {
    /// A fresh identity (process-wide counter).
    pub fn next() -> LinkId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        LinkId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The number behind this identity.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

/// Stops an [`Acceptor`] (unbinding its endpoint) or a [`LinkReader`] (dropping its
/// receiving half). Handled at once, after messages queued before it.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// How link actors are started: who gets their [`LinkEvent`]s, and the [`ActorConfig`].
#[derive(Clone, Default)]
pub struct LinkOptions {
    /// Subscriber of the link's events (none by default).
    pub events: Option<Recipient<LinkEvent>>,
    /// Actor configuration.
    pub config: ActorConfig,
}

impl LinkOptions {
    /// Sets the subscriber of the link's events.
    pub fn events(mut self, events: Recipient<LinkEvent>) -> Self {
        self.events = Some(events);
        self
    }

    /// Sets the actor configuration.
    pub fn config(mut self, config: ActorConfig) -> Self {
        self.config = config;
        self
    }
}

impl fmt::Debug for LinkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkOptions")
            .field("events", &self.events.is_some())
            .field("config", &self.config)
            .finish()
    }
}

/// The two actors of one link, as started by [`spawn_link`], [`connect_with`] and
/// [`Incoming::accept_with`].
pub struct LinkActors<W: Actor, R: Actor> {
    /// The link's identity.
    pub id: LinkId,
    /// The sending half's actor.
    pub writer: Addr<W>,
    /// The receiving half's actor.
    pub reader: Addr<R>,
}

impl<W: Actor, R: Actor> fmt::Debug for LinkActors<W, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkActors").field("id", &self.id).finish()
    }
}

/// The actors [`spawn_link`] starts for a link of type `L`.
pub type ActorsOf<Out, In, C, L> =
    LinkActors<LinkWriter<Out, C, <L as Link>::Tx>, LinkReader<In, C, <L as Link>::Rx>>;

/// Splits `link` and starts a [`LinkWriter`] for `Out` messages and a [`LinkReader`] that
/// delivers `In` messages to `recipient`, both on the current actix Arbiter. Sends
/// [`LinkEvent::Up`] to the subscriber first, if there is one.
///
/// Must be called from inside a running actix system.
pub fn spawn_link<Out, In, C, L>(
    link: L,
    recipient: Recipient<Received<In>>,
    options: LinkOptions,
) -> ActorsOf<Out, In, C, L>
where
    Out: Serialize + std::marker::Send + 'static,
    In: DeserializeOwned + std::marker::Send + 'static,
    C: Codec,
    L: Link,
{
    spawn_link_as(link, LinkId::next(), None, recipient, options)
}

pub(crate) fn spawn_link_as<Out, In, C, L>(
    link: L,
    id: LinkId,
    endpoint: Option<Endpoint>,
    recipient: Recipient<Received<In>>,
    options: LinkOptions,
) -> ActorsOf<Out, In, C, L>
where
    Out: Serialize + std::marker::Send + 'static,
    In: DeserializeOwned + std::marker::Send + 'static,
    C: Codec,
    L: Link,
{
    if let Some(events) = &options.events {
        events.do_send(LinkEvent::Up(LinkUp { link: id, endpoint }));
    }
    let (tx, rx) = link.split();
    let writer = LinkWriter::<Out, C, L::Tx>::new(tx, id, &options).spawn();
    let reader = LinkReader::<In, C, L::Rx>::new(rx, id, recipient, &options).start();
    LinkActors { id, writer, reader }
}

/// Connects to `endpoint` and starts the link's actors with the default codec and options:
/// returns the writer for `Out` messages; `In` messages go to `recipient`.
///
/// Must be called from inside a running actix system. See [`connect_with`] for events and
/// configuration.
pub async fn connect<Out, In>(
    endpoint: &Endpoint,
    recipient: Recipient<Received<In>>,
) -> Result<Addr<LinkWriter<Out>>, ActorError>
where
    Out: Serialize + std::marker::Send + 'static,
    In: DeserializeOwned + std::marker::Send + 'static,
{
    Ok(
        connect_with::<Out, In, Postcard>(endpoint, recipient, LinkOptions::default())
            .await?
            .writer,
    )
}

/// Connects to `endpoint` and starts the link's actors with codec `C` and `options`.
pub async fn connect_with<Out, In, C>(
    endpoint: &Endpoint,
    recipient: Recipient<Received<In>>,
    options: LinkOptions,
) -> Result<LinkActors<LinkWriter<Out, C>, LinkReader<In, C>>, ActorError>
where
    Out: Serialize + std::marker::Send + 'static,
    In: DeserializeOwned + std::marker::Send + 'static,
    C: Codec,
{
    let link = endpoint::connect(endpoint).await?;
    Ok(spawn_link_as(
        link,
        LinkId::next(),
        Some(endpoint.clone()),
        recipient,
        options,
    ))
}

/// Sends an event to the subscriber, if any. Events are few per link (one `Up`, one `Down`
/// per half, at most one `FrameRejected`), so `do_send` cannot grow a mailbox without bound.
fn emit(events: &Option<Recipient<LinkEvent>>, event: LinkEvent) {
    if let Some(events) = events {
        events.do_send(event);
    }
}

/// Outcome of [`offer`].
enum Delivery<T: Message<Result = ()> + std::marker::Send + 'static> {
    /// In the recipient's mailbox.
    Done,
    /// The mailbox is full: the message is sent with `send`; the caller must wait for the
    /// reply (`ctx.wait`) before taking the next message.
    Wait(actix::dev::RecipientRequest<T>),
    /// The recipient has stopped.
    Gone,
}

/// Hands `msg` to `recipient` without letting its mailbox grow without bound: `try_send`
/// while the mailbox has room, otherwise `send`, whose reply the caller waits for.
///
/// Always the same `Recipient` value: a *clone* of a recipient starts unparked and skips
/// actix's capacity check for its first message, so cloning per message would be unbounded.
fn offer<T>(recipient: &Recipient<T>, msg: T) -> Delivery<T>
where
    T: Message<Result = ()> + std::marker::Send + 'static,
{
    match recipient.try_send(msg) {
        Ok(()) => Delivery::Done,
        // `Recipient::send` enqueues even when the mailbox is full (actix 0.13 gives the
        // request its own sender slot); waiting for the reply is what bounds us: at most
        // one message per caller beyond the recipient's capacity.
        Err(SendError::Full(msg)) => Delivery::Wait(recipient.send(msg)),
        Err(SendError::Closed(_)) => Delivery::Gone,
    }
}

/// Finishes an [`offer`]: when the mailbox was full, pauses the actor (`ctx.wait`) until the
/// message is taken; stops the actor if the recipient is gone (or goes away meanwhile). For
/// recipients that are the actor's reason to exist (the application's handler of incoming
/// links).
fn wait_or_stop<A, T>(act: &A, delivery: Delivery<T>, ctx: &mut Context<A>)
where
    A: Actor<Context = Context<A>>,
    T: Message<Result = ()> + std::marker::Send + 'static,
{
    match delivery {
        Delivery::Done => {}
        Delivery::Wait(request) => {
            ctx.wait(request.into_actor(act).map(|res, _, ctx| {
                if res.is_err() {
                    ctx.stop();
                }
            }));
        }
        Delivery::Gone => ctx.stop(),
    }
}

/// Response of the link actors' handlers that may have to wait for the link: either the
/// result at once, or a future run with `ctx.wait`, which pauses the actor's mailbox (and
/// its streams) until it completes. This is what turns a full link into backpressure on the
/// mailbox.
pub struct WaitResponse<A: Actor, R> {
    inner: WaitInner<A, R>,
}

enum WaitInner<A: Actor, R> {
    Ready(R),
    Wait(ResponseActFuture<A, R>),
}

impl<A: Actor, R> WaitResponse<A, R> {
    fn ready(r: R) -> Self {
        WaitResponse {
            inner: WaitInner::Ready(r),
        }
    }

    fn wait<F: ActorFuture<A, Output = R> + 'static>(f: F) -> Self {
        WaitResponse {
            inner: WaitInner::Wait(Box::pin(f)),
        }
    }
}

impl<A: Actor, R> fmt::Debug for WaitResponse<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            WaitInner::Ready(_) => "WaitResponse::Ready",
            WaitInner::Wait(_) => "WaitResponse::Wait",
        })
    }
}

impl<A, M> MessageResponse<A, M> for WaitResponse<A, M::Result>
where
    A: Actor<Context = Context<A>>,
    M: Message,
{
    fn handle(self, ctx: &mut Context<A>, tx: Option<OneshotSender<M::Result>>) {
        match self.inner {
            WaitInner::Ready(r) => {
                if let Some(tx) = tx {
                    let _ = tx.send(r);
                }
            }
            WaitInner::Wait(fut) => {
                ctx.wait(fut.map(move |r, _, _| {
                    if let Some(tx) = tx {
                        let _ = tx.send(r);
                    }
                }));
            }
        }
    }
}
