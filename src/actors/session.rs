//! [`StableSession<M>`]: one side of a stable session as a supervised actix actor.
//!
//! The actor owns the sans-IO [`Session`] (sequence numbers, replay buffer, resume key) in
//! its fields. The link's receiving half is a stream the actor polls itself (each message
//! goes from the link straight to the actor, no task hop); its sending half lives in a small
//! tokio writer task fed through a bounded channel (the "pump").
//!
//! # Messages
//!
//! * [`Outgoing<M>`] → `Result<(), StableError>`: send one typed item. The reply comes once
//!   the item is in the replay buffer (it is then delivered exactly once unless the session
//!   is lost). While the replay buffer is full the reply waits (backpressure); up to
//!   [`SessionOptions::max_waiting`] sends wait in order, beyond that they fail with
//!   [`StableError::ReplayFull`] — nothing is dropped silently. Use `Addr::send(..).await`
//!   (not `do_send`, which bypasses the mailbox bound).
//! * The application receives [`Incoming<M>`] items, in order, exactly once, on the
//!   `Recipient` given at start. Undecodable items are reported as
//!   [`SessionEvent::ItemUndecodable`] (and not delivered).
//! * Events ([`StableEvent`] wrapping [`SessionEvent`]): `SessionUp`, `LinkLost { reason }`,
//!   `Reconnecting { attempt, delay }`, `Resumed { replayed }`, `SessionLost { unacked }`,
//!   `Refused { unacked }` (the server is at its `max_sessions` limit).
//!
//! # Lifecycle
//!
//! Start it with [`StableSession::start_client`] (under an [`actix::Supervisor`]). In
//! `started()` a client connects through its [`LinkSource`] (after a backoff delay when
//! reconnecting), runs the handshake, installs the link and replays. When the link fails the
//! actor reports `LinkLost` and **stops**; the supervisor restarts it with the same fields
//! (`restarting()` drops the dead link) and `started()` reconnects and resumes. The mailbox
//! survives the restart, so messages sent meanwhile are not lost.
//!
//! Server-side sessions are created by the [`StableRegistry`](super::registry::StableRegistry);
//! after a restart they wait for the client to come back, for at most
//! [`StableConfig::resume_grace`].
//!
//! # What stops it
//!
//! Only the supervisor's rules: it is restarted as long as some `Addr` is alive. When the
//! session is **lost** (server rejected the resume, reconnecting gave up, grace expired) it
//! does not stop: it stays idle, answers every [`Outgoing`] with
//! [`StableError::SessionLost`], and goes away when its last `Addr` is dropped. A client
//! whose new session the server refused (it holds
//! [`StableConfig::max_sessions`] already) does the same, answering
//! [`StableError::Refused`]; it does not retry by itself.
//!
//! # Not guaranteed
//!
//! * Events are best effort (`do_send` to the events recipient).
//! * Encoding and decoding run under `catch_unwind`: a panicking `Serialize`/`Deserialize`
//!   impl becomes an error, not a dead session. A panic elsewhere in user code running on
//!   the same arbiter is outside this actor's control.
//! * If the application's `Incoming` mailbox is full, the session waits for it (pausing the
//!   link): an application handler that awaits a reply from this session while its own
//!   mailbox is full can deadlock.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::pump::{spawn_pump, Pump};
use crate::codec::{Codec, CodecError, Postcard};
use crate::links::{LinkError, LinkSource};
use crate::stable::backoff::SplitMix64;
use crate::stable::driver::SessionEvent;
use crate::stable::registry::{Registry, SessionId};
use crate::stable::session::{HandshakeOutcome, Received};
use crate::stable::wire::{ClientHello, ServerHello, HELLO_LEN};
use crate::stable::{ResumeKey, Session, StableConfig, StableError};

/// Bound on what session items may be: serde values that can cross threads.
pub trait Item: Serialize + DeserializeOwned + Send + Unpin + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Unpin + 'static> Item for T {}

/// Send one item through the session. See the [module docs](self).
#[derive(Debug)]
pub struct Outgoing<M>(pub M);

impl<M: 'static> Message for Outgoing<M> {
    type Result = Result<(), StableError>;
}

/// One item received, delivered to the application.
#[derive(Debug)]
pub struct Incoming<M>(pub M);

impl<M: 'static> Message for Incoming<M> {
    type Result = ();
}

/// A session event, delivered to the events recipient.
#[derive(Debug, Clone)]
pub struct StableEvent(pub SessionEvent);

impl Message for StableEvent {
    type Result = ();
}

/// Tuning of a session actor beyond [`StableConfig`].
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Mailbox capacity (messages). Default 64.
    pub mailbox: usize,
    /// Most [`Outgoing`] sends that wait for replay room, in order; beyond it they fail with
    /// [`StableError::ReplayFull`]. Default 1024.
    pub max_waiting: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            mailbox: 64,
            max_waiting: 1024,
        }
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<(Pump, Bytes), StableError>> + Send>>;
type Connector = Arc<dyn Fn([u8; HELLO_LEN], Instant) -> ConnectFuture + Send + Sync>;
pub(crate) type SharedRegistry<M> = Arc<Mutex<Registry<Option<Addr<StableSession<M>>>>>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes a link through `source`, sends the client hello and waits for the server's, until
/// `deadline`.
fn connector<S: LinkSource>(source: S) -> Connector {
    let source = Arc::new(tokio::sync::Mutex::new(source));
    Arc::new(move |hello: [u8; HELLO_LEN], deadline: Instant| {
        let source = source.clone();
        Box::pin(async move {
            let exchange = async {
                let link = source.lock().await.connect().await?;
                let mut pump = spawn_pump(link);
                pump.out
                    .send(Bytes::copy_from_slice(&hello))
                    .await
                    .map_err(|_| StableError::Link(LinkError::Closed))?;
                let incoming = pump.incoming.as_mut().ok_or(StableError::Closed)?;
                match futures::StreamExt::next(incoming).await {
                    Some(Ok(reply)) => Ok((pump, reply)),
                    Some(Err(e)) => Err(e),
                    None => Err(StableError::Link(LinkError::Closed)),
                }
            };
            tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), exchange)
                .await
                .unwrap_or(Err(StableError::HandshakeTimeout))
        }) as ConnectFuture
    })
}

enum Role<M: Item> {
    Client {
        connect: Connector,
        rng: SplitMix64,
        /// Reconnect attempt in the current outage.
        attempt: u32,
        outage_start: Option<Instant>,
    },
    Server {
        registry: SharedRegistry<M>,
        id: SessionId,
        link_number: u64,
        /// The first link, handed over by the registry at creation.
        first: Option<Pump>,
    },
}

/// A link that resumes a server-side session (sent by the registry).
pub(crate) struct Relink {
    pub(crate) pump: Pump,
    pub(crate) hello: ClientHello,
    pub(crate) new_key: ResumeKey,
    pub(crate) link_number: u64,
}

impl Message for Relink {
    type Result = ();
}

/// One side of a stable session. See the [module docs](self).
pub struct StableSession<M: Item> {
    sess: Session,
    role: Role<M>,
    options: SessionOptions,
    recipient: Recipient<Incoming<M>>,
    events: Option<Recipient<StableEvent>>,
    codec: Postcard,
    pump: Option<Pump>,
    stream: Option<SpawnHandle>,
    waiting: VecDeque<(Bytes, oneshot::Sender<Result<(), StableError>>)>,
    /// Received items not yet handed to the application, in order: the rest of a batch
    /// frame while the application's mailbox is full (the actor waits, with its mailbox and
    /// link stream paused, and goes on from here).
    backlog: VecDeque<Bytes>,
    ack_timer: Option<SpawnHandle>,
    flush_scheduled: bool,
    lost: Option<StableError>,
    _m: PhantomData<fn() -> M>,
}

impl<M: Item> StableSession<M> {
    /// Starts a client session under an [`actix::Supervisor`] on the current arbiter.
    /// Items received go to `recipient`, events (if any) to `events`.
    pub fn start_client<S: LinkSource>(
        source: S,
        config: StableConfig,
        options: SessionOptions,
        recipient: Recipient<Incoming<M>>,
        events: Option<Recipient<StableEvent>>,
    ) -> Result<Addr<StableSession<M>>, StableError> {
        let sess = Session::client(config)?;
        let connect = connector(source);
        Ok(actix::Supervisor::start(move |_| StableSession {
            sess,
            role: Role::Client {
                connect,
                rng: SplitMix64::from_entropy(),
                attempt: 0,
                outage_start: None,
            },
            options,
            recipient,
            events,
            codec: Postcard,
            pump: None,
            stream: None,
            waiting: VecDeque::new(),
            backlog: VecDeque::new(),
            ack_timer: None,
            flush_scheduled: false,
            lost: None,
            _m: PhantomData,
        }))
    }

    /// A server-side session on its first link (used by the registry).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_server(
        sess: Session,
        registry: SharedRegistry<M>,
        id: SessionId,
        first: Pump,
        options: SessionOptions,
        recipient: Recipient<Incoming<M>>,
        events: Option<Recipient<StableEvent>>,
    ) -> Self {
        StableSession {
            sess,
            role: Role::Server {
                registry,
                id,
                link_number: 1,
                first: Some(first),
            },
            options,
            recipient,
            events,
            codec: Postcard,
            pump: None,
            stream: None,
            waiting: VecDeque::new(),
            backlog: VecDeque::new(),
            ack_timer: None,
            flush_scheduled: false,
            lost: None,
            _m: PhantomData,
        }
    }

    fn emit(&self, ev: SessionEvent) {
        tracing::debug!(?ev, "stable session actor event");
        if let Some(events) = &self.events {
            events.do_send(StableEvent(ev));
        }
    }

    /// The session is gone for good: fail waiting senders, drop the link, stay idle.
    fn lose(&mut self, ctx: &mut Context<Self>) {
        let err = self.sess.mark_lost();
        self.lose_with(err, ctx);
    }

    /// Like [`lose`](Self::lose), reporting `err` ([`StableError::SessionLost`] or
    /// [`StableError::Refused`]) to waiting and later senders.
    fn lose_with(&mut self, err: StableError, ctx: &mut Context<Self>) {
        if self.lost.is_some() {
            return;
        }
        self.sess.mark_lost();
        match err {
            StableError::SessionLost { unacked } => {
                self.emit(SessionEvent::SessionLost { unacked })
            }
            StableError::Refused { unacked } => self.emit(SessionEvent::Refused { unacked }),
            _ => {}
        }
        for (_, reply) in self.waiting.drain(..) {
            let _ = reply.send(Err(err.clone()));
        }
        self.drop_link(ctx);
        if let Role::Server { registry, id, .. } = &self.role {
            lock(registry).remove(*id);
        }
        self.lost = Some(err);
    }

    fn drop_link(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.stream.take() {
            ctx.cancel_future(h);
        }
        if let Some(h) = self.ack_timer.take() {
            ctx.cancel_future(h);
        }
        self.pump = None;
    }

    /// The link failed: report it and stop, so the supervisor restarts us.
    fn link_failed(&mut self, reason: StableError, ctx: &mut Context<Self>) {
        if self.pump.is_none() {
            return;
        }
        if let StableError::Link(LinkError::TooLarge { max, .. }) = &reason {
            // A batch frame above the link's maximum payload: the next links get smaller
            // batches (a single item that large keeps failing, as before).
            self.sess.limit_batch(*max);
        }
        self.emit(SessionEvent::LinkLost { reason });
        self.sess.link_lost();
        self.drop_link(ctx);
        match &mut self.role {
            Role::Client { outage_start, .. } => {
                outage_start.get_or_insert_with(Instant::now);
            }
            Role::Server {
                registry,
                id,
                link_number,
                ..
            } => {
                lock(registry).link_lost(*id, Instant::now(), *link_number);
            }
        }
        ctx.stop();
    }

    fn install(&mut self, mut pump: Pump, ctx: &mut Context<Self>) {
        self.drop_link(ctx);
        if let Some(incoming) = pump.incoming.take() {
            // The link's messages reach this actor straight from the link (no task hop).
            self.stream = Some(ctx.add_stream(incoming));
        }
        self.pump = Some(pump);
        self.drain_waiting();
        self.flush(ctx);
    }

    /// Moves waiting sends into the replay buffer while it has room, in order.
    fn drain_waiting(&mut self) {
        while let Some((bytes, _)) = self.waiting.front() {
            if !self.sess.can_accept(bytes.len()) {
                break;
            }
            let Some((bytes, reply)) = self.waiting.pop_front() else {
                break;
            };
            let result = self.sess.push(bytes).map(|_| ());
            let _ = reply.send(result);
        }
    }

    /// Hands every frame that is ready to the pump, then arms the ack timer.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let Some(pump) = &self.pump else { return };
        let out = pump.out.clone();
        while self.sess.has_transmit(now) {
            match out.try_reserve() {
                Ok(permit) => {
                    if let Some(t) = self.sess.poll_transmit(now) {
                        permit.send(Bytes::from(t.into_vec()));
                    }
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    if !self.flush_scheduled {
                        self.flush_scheduled = true;
                        let out = out.clone();
                        let wait = async move {
                            let _ = out.reserve().await;
                        };
                        ctx.spawn(wait.into_actor(self).map(|(), act, ctx| {
                            act.flush_scheduled = false;
                            act.flush(ctx);
                        }));
                    }
                    return;
                }
                // The pump ended; its stream reports why.
                Err(mpsc::error::TrySendError::Closed(())) => return,
            }
        }
        if let Some(h) = self.ack_timer.take() {
            ctx.cancel_future(h);
        }
        if let Some(at) = self.sess.poll_timeout() {
            let delay = at.saturating_duration_since(now);
            self.ack_timer = Some(ctx.run_later(delay, |act, ctx| {
                act.ack_timer = None;
                act.flush(ctx);
            }));
        }
    }

    fn encode(&self, item: &M) -> Result<Bytes, StableError> {
        let codec = self.codec;
        match std::panic::catch_unwind(AssertUnwindSafe(|| codec.encode_to_vec(item))) {
            Ok(Ok(v)) => Ok(Bytes::from(v)),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(StableError::Codec(CodecError::Encode(
                "the item's Serialize impl panicked".into(),
            ))),
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<M, StableError> {
        let codec = self.codec;
        match std::panic::catch_unwind(AssertUnwindSafe(|| codec.decode::<M>(bytes))) {
            Ok(r) => r.map_err(StableError::from),
            Err(_) => Err(StableError::Codec(CodecError::Decode(
                "the item's Deserialize impl panicked".into(),
            ))),
        }
    }

    /// Hands received items to the application, in order.
    fn deliver(&mut self, items: impl IntoIterator<Item = Bytes>, ctx: &mut Context<Self>) {
        self.backlog.extend(items);
        self.drain_backlog(ctx);
    }

    /// Delivers the backlog until the application's mailbox is full; then waits for it
    /// (pausing our mailbox and the link stream) and goes on with the rest afterwards.
    fn drain_backlog(&mut self, ctx: &mut Context<Self>) {
        while let Some(item) = self.backlog.pop_front() {
            match self.decode(&item) {
                Ok(m) => match self.recipient.try_send(Incoming(m)) {
                    Ok(()) => {}
                    Err(SendError::Full(msg)) => {
                        let fut = self.recipient.send(msg);
                        ctx.wait(
                            async move {
                                let _ = fut.await;
                            }
                            .into_actor(self)
                            .map(|(), act, ctx| act.drain_backlog(ctx)),
                        );
                        return;
                    }
                    Err(SendError::Closed(_)) => {
                        tracing::debug!("stable session: application recipient is gone");
                    }
                },
                Err(error) => self.emit(SessionEvent::ItemUndecodable { error }),
            }
        }
    }

    fn client_connect(&mut self, ctx: &mut Context<Self>) {
        if self.lost.is_some() {
            return;
        }
        let Role::Client { connect, .. } = &self.role else {
            return;
        };
        let connect = connect.clone();
        let hello = match self.sess.client_hello(Instant::now()) {
            Ok(h) => h.to_bytes(),
            Err(_) => return self.lose(ctx),
        };
        let Some(deadline) = self.sess.poll_timeout() else {
            return;
        };
        ctx.spawn(
            connect(hello, deadline)
                .into_actor(self)
                .map(|result, act, ctx| {
                    match result.and_then(|(pump, reply)| {
                        act.sess
                            .handle_server_hello(Instant::now(), &reply)
                            .map(|outcome| (pump, outcome))
                    }) {
                        Ok((pump, outcome)) => {
                            if let Role::Client {
                                attempt,
                                outage_start,
                                ..
                            } = &mut act.role
                            {
                                *attempt = 0;
                                *outage_start = None;
                            }
                            act.emit(match outcome {
                                HandshakeOutcome::New => SessionEvent::SessionUp,
                                HandshakeOutcome::Resumed { replayed } => {
                                    SessionEvent::Resumed { replayed }
                                }
                            });
                            act.install(pump, ctx);
                        }
                        Err(
                            e @ (StableError::SessionLost { .. } | StableError::Refused { .. }),
                        ) => act.lose_with(e, ctx),
                        Err(reason) => {
                            act.sess.link_lost();
                            if let Role::Client {
                                attempt,
                                outage_start,
                                ..
                            } = &mut act.role
                            {
                                *attempt = attempt.saturating_add(1);
                                outage_start.get_or_insert_with(Instant::now);
                            }
                            act.emit(SessionEvent::LinkLost { reason });
                            ctx.stop();
                        }
                    }
                }),
        );
    }
}

impl<M: Item> Actor for StableSession<M> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.options.mailbox);
        if self.lost.is_some() {
            return;
        }
        let established = self.sess.is_established();
        let policy = self.sess.config().reconnect.clone();
        match &mut self.role {
            Role::Client {
                rng,
                attempt,
                outage_start,
                ..
            } => {
                if !established && *attempt == 0 {
                    return self.client_connect(ctx);
                }
                let elapsed = outage_start.map(|t| t.elapsed()).unwrap_or(Duration::ZERO);
                match policy.delay(*attempt, elapsed, rng) {
                    Some(delay) => {
                        let attempt = *attempt;
                        self.emit(SessionEvent::Reconnecting { attempt, delay });
                        ctx.run_later(delay, |act, ctx| act.client_connect(ctx));
                    }
                    None => self.lose(ctx),
                }
            }
            Role::Server { first, .. } => {
                if let Some(pump) = first.take() {
                    self.emit(SessionEvent::SessionUp);
                    return self.install(pump, ctx);
                }
                // Restarted after losing the link: wait for the client, within the grace.
                let grace = self.sess.config().resume_grace;
                ctx.run_later(grace, |act, ctx| {
                    if act.pump.is_some() {
                        return;
                    }
                    let expired = match &act.role {
                        Role::Server { registry, id, .. } => {
                            lock(registry).is_expired(*id, Instant::now())
                        }
                        Role::Client { .. } => false,
                    };
                    if expired {
                        act.lose(ctx);
                    } else {
                        // A resume is on its way (the registry handed out a link).
                        ctx.stop();
                    }
                });
            }
        }
    }
}

impl<M: Item> Supervised for StableSession<M> {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // Futures and streams were cancelled by actix; drop the dead link itself.
        self.pump = None;
        self.stream = None;
        self.ack_timer = None;
        self.flush_scheduled = false;
        self.sess.link_lost();
    }
}

impl<M: Item> StreamHandler<Result<Bytes, StableError>> for StableSession<M> {
    fn handle(&mut self, msg: Result<Bytes, StableError>, ctx: &mut Context<Self>) {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => return self.link_failed(e, ctx),
        };
        match self.sess.handle_frame(Instant::now(), msg) {
            Ok(Received::Item(item)) => self.deliver([item], ctx),
            Ok(Received::Items(items)) => self.deliver(items, ctx),
            Ok(_) => {}
            Err(e) => return self.link_failed(e, ctx),
        }
        self.drain_waiting();
        self.flush(ctx);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.link_failed(StableError::Link(LinkError::Closed), ctx);
    }
}

impl<M: Item> Handler<Outgoing<M>> for StableSession<M> {
    type Result = ResponseFuture<Result<(), StableError>>;

    fn handle(&mut self, msg: Outgoing<M>, ctx: &mut Context<Self>) -> Self::Result {
        let ready =
            |r| -> ResponseFuture<Result<(), StableError>> { Box::pin(std::future::ready(r)) };
        if let Some(e) = &self.lost {
            return ready(Err(e.clone()));
        }
        let bytes = match self.encode(&msg.0) {
            Ok(b) => b,
            Err(e) => return ready(Err(e)),
        };
        if let Err(e) = self.sess.check_item_len(bytes.len()) {
            return ready(Err(e));
        }
        if self.waiting.is_empty() && self.sess.can_accept(bytes.len()) {
            let r = self.sess.push(bytes).map(|_| ());
            self.flush(ctx);
            return ready(r);
        }
        if self.waiting.len() >= self.options.max_waiting {
            return ready(Err(StableError::ReplayFull));
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.push_back((bytes, tx));
        Box::pin(async move { rx.await.unwrap_or(Err(StableError::Closed)) })
    }
}

impl<M: Item> Handler<Relink> for StableSession<M> {
    type Result = ();

    fn handle(&mut self, msg: Relink, ctx: &mut Context<Self>) {
        let reject = |pump: Pump| {
            let _ = pump
                .out
                .try_send(Bytes::copy_from_slice(&ServerHello::rejected().to_bytes()));
            pump.close_gracefully();
        };
        if self.lost.is_some() {
            return reject(msg.pump);
        }
        if self.pump.is_some() {
            // A newer link supersedes the current one.
            self.emit(SessionEvent::LinkLost {
                reason: StableError::Link(LinkError::Closed),
            });
            self.drop_link(ctx);
        }
        match self.sess.handle_resume(&msg.hello) {
            Ok(outcome) => {
                let hello = self.sess.server_hello_resume(&msg.new_key).to_bytes();
                if let Role::Server { link_number, .. } = &mut self.role {
                    *link_number = msg.link_number;
                }
                if msg
                    .pump
                    .out
                    .try_send(Bytes::copy_from_slice(&hello))
                    .is_err()
                {
                    return;
                }
                if let HandshakeOutcome::Resumed { replayed } = outcome {
                    self.emit(SessionEvent::Resumed { replayed });
                }
                self.install(msg.pump, ctx);
            }
            Err(e) => {
                tracing::debug!(error = %e, "stable session actor: inconsistent resume");
                reject(msg.pump);
                self.lose(ctx);
            }
        }
    }
}
