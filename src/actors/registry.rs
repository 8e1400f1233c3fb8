//! [`StableRegistry<M>`]: the server side of stable sessions as an actor. It takes incoming
//! links, runs the server handshake, and either creates a new supervised
//! [`StableSession`] or hands the link to the existing session the client resumes.
//!
//! # Messages
//!
//! * [`RegistryStats`] → [`ServerStats`]: counters (sessions, resumes, rejections,
//!   refusals, handshake failures and the last handshake error).
//! * [`actors::Incoming`](super::Incoming): a connection from an
//!   [`Acceptor`](super::Acceptor) or a [`ShmHub`](super::hub::ShmHub) (pass the registry's
//!   `recipient()` as their `incoming` recipient); its link goes to
//!   [`handle_link`](StableRegistry::handle_link).
//! * [`AcceptError`]: a failed accept of that `Acceptor`; logged (`tracing::warn!`), the
//!   acceptor keeps listening.
//! * Links also arrive through [`StableRegistry::handle_link`] (any [`Link`]) or
//!   [`StableRegistry::serve`] (an accept loop on an [`endpoint::Listener`]).
//!
//! ```no_run
//! # use actix::prelude::*;
//! # use actix_tether::actors::{Acceptor, registry::{SessionWiring, StableRegistry}};
//! # async fn f(wiring: impl FnMut(Addr<actix_tether::actors::session::StableSession<String>>)
//! #     -> SessionWiring<String> + 'static) -> Result<(), Box<dyn std::error::Error>> {
//! let registry = StableRegistry::<String>::new(Default::default(), Default::default(), wiring)?
//!     .start();
//! let (_acceptor, _ep) = Acceptor::listen(
//!     &"tcp://127.0.0.1:7000".parse()?,
//!     registry.clone().recipient(),
//!     registry.recipient(),
//!     &Default::default(),
//! )
//! .await?;
//! # Ok(()) }
//! ```
//!
//! For each new session the registry calls the application's `on_session` callback with the
//! session's `Addr` (send [`Outgoing`](super::session::Outgoing) there) and takes back where
//! its items and events go ([`SessionWiring`]). The application sees one stable `Addr` and
//! one `Recipient` per session, whatever number of links the session uses. The callback
//! runs before the client is told its session exists: if it panics, the panic is caught,
//! logged (`tracing::warn!`), the session is not created, and the client is answered
//! `rejected` (it reports [`StableError::Refused`]; counted in [`ServerStats::refused`]).
//! The registry keeps serving.
//!
//! # Lifecycle
//!
//! Started like any actor (`StableRegistry::new(..)?.start()`). Handshakes run in their own
//! tasks, each bounded by [`StableConfig::handshake_timeout`]; a bad one (garbage, wrong
//! version, timeout) is counted and its link closed. Resumes are looked up by key in
//! constant time and re-keyed; unknown or expired keys are answered `rejected`. At most
//! [`StableConfig::max_sessions`] sessions are registered: a new session beyond it is
//! answered `rejected` too (the client's `StableSession` reports
//! [`StableError::Refused`]) and counted in [`ServerStats::refused`].
//!
//! # What stops it / not guaranteed
//!
//! It stops when its last `Addr` is dropped; sessions it created keep running while the
//! application holds their `Addr`s, but can no longer be resumed. The accept loop of
//! [`serve`](StableRegistry::serve) ends when accepting fails.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;

use super::pump::{spawn_pump, Pump};
use super::session::{
    lock, Incoming, Item, Relink, SessionOptions, SharedRegistry, StableEvent, StableSession,
};
use super::{AcceptError, Incoming as IncomingLink};
use crate::endpoint;
use crate::links::{Link, LinkError};
use crate::stable::driver::ServerStats;
use crate::stable::registry::Registry;
use crate::stable::wire::{ClientHello, ServerHello};
use crate::stable::{ResumeKey, Session, StableConfig, StableError};

/// Where a new session's items and events go.
pub struct SessionWiring<M: Item> {
    /// Receives the session's items.
    pub recipient: Recipient<Incoming<M>>,
    /// Receives the session's events, if wanted.
    pub events: Option<Recipient<StableEvent>>,
}

type OnSession<M> = Rc<RefCell<dyn FnMut(Addr<StableSession<M>>) -> SessionWiring<M>>>;

/// The server side of stable sessions. See the [module docs](self).
pub struct StableRegistry<M: Item> {
    config: StableConfig,
    options: SessionOptions,
    registry: SharedRegistry<M>,
    on_session: OnSession<M>,
    stats: ServerStats,
}

impl<M: Item> StableRegistry<M> {
    /// A registry whose new sessions are wired by `on_session`.
    pub fn new(
        config: StableConfig,
        options: SessionOptions,
        on_session: impl FnMut(Addr<StableSession<M>>) -> SessionWiring<M> + 'static,
    ) -> Result<Self, StableError> {
        config.validate()?;
        Ok(StableRegistry {
            registry: Arc::new(Mutex::new(Registry::new(
                config.resume_grace,
                config.max_sessions,
            ))),
            config,
            options,
            on_session: Rc::new(RefCell::new(on_session)),
            stats: ServerStats::default(),
        })
    }

    /// Runs the server handshake on a freshly accepted link (in a task), then hands it to
    /// the registry. Must be called inside a tokio runtime (any actix system is one).
    pub fn handle_link<L: Link>(addr: &Addr<Self>, link: L, config: &StableConfig) {
        let addr = addr.clone();
        let timeout = config.handshake_timeout;
        tokio::spawn(async move {
            let mut pump = spawn_pump(link);
            let deadline = tokio::time::Instant::now() + timeout;
            let first = match pump.incoming.as_mut() {
                Some(rx) => tokio::time::timeout_at(deadline, futures::StreamExt::next(rx)).await,
                None => Ok(None),
            };
            let hello = match first {
                Err(_) => Err(StableError::HandshakeTimeout),
                Ok(None) => Err(StableError::Link(LinkError::Closed)),
                Ok(Some(Err(e))) => Err(e),
                Ok(Some(Ok(msg))) => ClientHello::parse(&msg),
            };
            match hello {
                Ok(hello) => {
                    let _ = addr.send(Hello { pump, hello }).await;
                }
                Err(error) => {
                    // Counted before the link is closed.
                    let _ = addr.send(HandshakeFailed(error)).await;
                    drop(pump);
                }
            }
        });
    }

    /// Accepts links from `listener`, handing each to
    /// [`handle_link`](StableRegistry::handle_link), until the registry stops. An accept
    /// error is logged (`tracing::warn!`) and accepting resumes after 100 ms. Returns at
    /// once; the loop runs in a task.
    pub fn serve(addr: &Addr<Self>, listener: endpoint::Listener, config: &StableConfig) {
        let addr = addr.clone();
        let config = config.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok(link) => StableRegistry::handle_link(&addr, link, &config),
                    Err(e) => {
                        // Usually transient (EMFILE, ECONNABORTED): report it, back off
                        // briefly so a persistent error cannot spin, and keep serving.
                        tracing::warn!(error = %e, "stable registry: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
                if !addr.connected() {
                    break;
                }
            }
        });
    }

    fn reject(&mut self, pump: Pump) {
        self.stats.rejected += 1;
        answer_rejected(pump);
    }

    fn new_session(&mut self, pump: Pump) -> Result<(), StableError> {
        let sess = Session::server(self.config.clone())?;
        // Drawn before the registry lock (shared with the session actors) is taken.
        let key = ResumeKey::generate()?;
        let inserted = lock(&self.registry).insert(Instant::now(), key.clone(), None);
        let id = match inserted {
            Ok(id) => id,
            Err(StableError::TooManySessions { max }) => {
                tracing::debug!(max, "stable registry: session limit reached, refusing");
                self.stats.refused += 1;
                answer_rejected(pump);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if pump.out.is_closed() {
            // The link died while its hello was read: no session for it.
            lock(&self.registry).remove(id);
            return Err(StableError::Link(LinkError::Closed));
        }
        let registry = self.registry.clone();
        let options = self.options.clone();
        let on_session = self.on_session.clone();
        // The link stays here until the callback returned, so that a panicking callback
        // leaves it to be answered `rejected`.
        let out = pump.out.clone();
        let link = Rc::new(RefCell::new(Some(pump)));
        let take = link.clone();
        // `Supervisor::start` builds the actor synchronously: a panic in the application's
        // callback unwinds out of it before anything is spawned (the context is dropped).
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
            actix::Supervisor::start(move |ctx: &mut Context<StableSession<M>>| {
                let wiring = (on_session.borrow_mut())(ctx.address());
                let pump = take.borrow_mut().take().expect("the link is taken once");
                StableSession::new_server(
                    sess,
                    registry,
                    id,
                    pump,
                    options,
                    wiring.recipient,
                    wiring.events,
                )
            })
        }));
        let addr = match started {
            Ok(addr) => addr,
            Err(panic) => {
                tracing::warn!(
                    panic = panic_message(&*panic),
                    "stable registry: the on_session callback panicked; \
                     new session refused (its link is answered `rejected`)"
                );
                lock(&self.registry).remove(id);
                self.stats.refused += 1;
                if let Some(pump) = link.borrow_mut().take() {
                    answer_rejected(pump);
                }
                return Ok(());
            }
        };
        if let Some(slot) = lock(&self.registry).get_mut(id) {
            *slot = Some(addr);
        }
        self.stats.sessions += 1;
        // The session actor has not run yet (it is spawned on this thread), so the hello
        // is the first message on the link.
        if out
            .try_send(Bytes::copy_from_slice(
                &ServerHello::accept_new(&key).to_bytes(),
            ))
            .is_err()
        {
            // The link died just now: the session actor sees it end and waits for a
            // resume (which cannot come: the client never got the key) until the grace
            // period expires.
            return Err(StableError::Link(LinkError::Closed));
        }
        Ok(())
    }
}

/// The text of a panic payload, if it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// Answers `rejected` and closes the link once the answer is written.
fn answer_rejected(pump: Pump) {
    let _ = pump
        .out
        .try_send(Bytes::copy_from_slice(&ServerHello::rejected().to_bytes()));
    pump.close_gracefully();
}

impl<M: Item> Actor for StableRegistry<M> {
    type Context = Context<Self>;
}

/// A link whose client hello was read (internal).
struct Hello {
    pump: Pump,
    hello: ClientHello,
}

impl Message for Hello {
    type Result = ();
}

/// A link whose handshake failed (internal).
struct HandshakeFailed(StableError);

impl Message for HandshakeFailed {
    type Result = ();
}

/// Asks a [`StableRegistry`] for its counters.
#[derive(Debug, Clone, Copy)]
pub struct RegistryStats;

impl Message for RegistryStats {
    type Result = ServerStats;
}

impl<M: Item> Handler<Hello> for StableRegistry<M> {
    type Result = ();

    fn handle(&mut self, msg: Hello, _ctx: &mut Context<Self>) {
        let Hello { pump, hello } = msg;
        let Some(key) = hello.resume_key() else {
            if let Err(e) = self.new_session(pump) {
                self.stats.handshake_failures += 1;
                self.stats.last_handshake_error = Some(e);
            }
            return;
        };
        // Drawn before the registry lock (shared with the session actors) is taken.
        let new_key = match ResumeKey::generate() {
            Ok(k) => k,
            Err(e) => {
                self.stats.handshake_failures += 1;
                self.stats.last_handshake_error = Some(e);
                return drop(pump);
            }
        };
        let routed = lock(&self.registry)
            .resume(Instant::now(), &key, new_key)
            .and_then(|r| r.value.clone().map(|addr| (addr, r.new_key, r.link_number)));
        match routed {
            Some((addr, new_key, link_number)) if addr.connected() => {
                self.stats.resumes += 1;
                addr.do_send(Relink {
                    pump,
                    hello,
                    new_key,
                    link_number,
                });
            }
            _ => self.reject(pump),
        }
    }
}

impl<M: Item> Handler<HandshakeFailed> for StableRegistry<M> {
    type Result = ();

    fn handle(&mut self, msg: HandshakeFailed, _ctx: &mut Context<Self>) {
        tracing::debug!(error = %msg.0, "stable registry: handshake failed");
        self.stats.handshake_failures += 1;
        self.stats.last_handshake_error = Some(msg.0);
    }
}

impl<M: Item> Handler<IncomingLink> for StableRegistry<M> {
    type Result = ();

    fn handle(&mut self, incoming: IncomingLink, ctx: &mut Context<Self>) {
        StableRegistry::handle_link(&ctx.address(), incoming.into_link(), &self.config);
    }
}

impl<M: Item> Handler<AcceptError> for StableRegistry<M> {
    type Result = ();

    fn handle(&mut self, e: AcceptError, _ctx: &mut Context<Self>) {
        tracing::warn!(error = %e.error, "stable registry: the acceptor failed to accept");
    }
}

impl<M: Item> Handler<RegistryStats> for StableRegistry<M> {
    type Result = MessageResult<RegistryStats>;

    fn handle(&mut self, _: RegistryStats, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats.clone())
    }
}
