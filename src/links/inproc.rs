//! In-process links between named endpoints: `inproc://name`.
//!
//! An [`InprocAcceptor`] is bound to a name in a process-wide registry with [`bind`];
//! [`connect`] to that name creates a new [`InprocLink`] and delivers its other half to the
//! acceptor, whose [`InprocAcceptor::accept`] returns it. Every connect is its own
//! bidirectional link: many clients on one name each get their own replies.
//!
//! ```
//! use actix_tether::links::{inproc, send_bytes, Link, LinkRx};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let acceptor = inproc::bind("inproc://doc-example")?;
//! let client = inproc::connect("inproc://doc-example").await?;
//! let server = acceptor.accept().await;
//!
//! let (mut ctx, _crx) = client.split();
//! let (_stx, mut srx) = server.split();
//! send_bytes(&mut ctx, b"hello").await?;
//! assert_eq!(srx.recv().await?.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```
//!
//! # Names
//!
//! A name is given either bare (`"svc"`) or as a URL (`"inproc://svc"`); both mean the same
//! endpoint. A name is 1 to [`MAX_NAME_LEN`] bytes of UTF-8 without control characters and
//! without `://`. Anything else — an empty name, a control character, a longer name, another
//! scheme such as `tcp://…` — is [`InprocError::InvalidName`]. Names are process-global:
//! any thread, tokio runtime or actix Arbiter of the process can bind or connect to them.
//!
//! # Lifecycle
//!
//! * A second [`bind`] of a bound name fails with [`InprocError::AddrInUse`] and changes
//!   nothing: the first binding keeps working.
//! * Dropping the [`InprocAcceptor`] unbinds the name: it can be bound again, and later
//!   connects fail with [`InprocError::NotFound`]. Connections that were pending in its
//!   backlog (connected but not yet accepted) are dropped; their clients see a clean end
//!   (`Ok(None)`) on `recv` and [`LinkError::Closed`] on `reserve`. Links already accepted
//!   are not affected.
//! * [`connect`] to an unbound name fails with [`InprocError::NotFound`] at once;
//!   [`connect_with`] and [`ConnectOptions::wait`] wait up to a timeout for the name to be
//!   bound (connect-before-bind, as ZeroMQ allows). Waiting is event-driven: every bind
//!   wakes the waiters, which look again; nothing polls.
//! * Dropping (or [closing](LinkTx::close)) the sending half of a link gives the peer every
//!   message committed before, then a clean, sticky end. Dropping the receiving half makes
//!   the peer's `reserve` fail with [`LinkError::Closed`] (sticky).
//!
//! # Bounds (no unbounded queue anywhere)
//!
//! Each direction of a link is a bounded queue of [`InprocConfig::capacity`] messages, each
//! at most [`InprocConfig::max_message_len`] bytes; the limits of a direction are those of
//! its **receiving** side (the acceptor's config for client → server, the client's for
//! server → client), as a socket's receive buffer. [`LinkTx::reserve`] waits while the queue
//! is full and then holds one place in it (a [`tokio::sync::mpsc`] permit), so `alloc` and
//! `commit` never wait or fail for lack of room. The memory one direction can pin is at most
//! `capacity × max_message_len` bytes plus the slot being filled. The acceptor's backlog of
//! not-yet-accepted connections is bounded by [`InprocConfig::backlog`].
//!
//! # Zero-copy
//!
//! [`Permit::alloc`] allocates the message's buffer ([`BytesMut`], zero-initialised);
//! [`WriteSlot::commit`] freezes it into [`Bytes`] and moves it into the queue, and the
//! receiver gets that very allocation. No byte is copied between the sender's slot and the
//! receiver's `Bytes`.
//!
//! # Errors
//!
//! Registry operations fail with [`InprocError`]; each variant corresponds to one
//! [`io::ErrorKind`] ([`InprocError::kind`]), and `From<InprocError> for io::Error` keeps
//! that kind, so code handling `tcp://` and `unix://` errors by kind handles `inproc://` too.
//! The links themselves fail only with [`LinkError::TooLarge`] (at `alloc`) and
//! [`LinkError::Closed`] (at `reserve`, once the peer's receiving half is gone).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::{Link, LinkError, LinkRx, LinkTx, Permit, WriteSlot};

/// The URL scheme of in-process endpoints, with its separator.
pub const SCHEME: &str = "inproc://";

/// Longest accepted name, in bytes (without the `inproc://` prefix).
pub const MAX_NAME_LEN: usize = 256;

/// Largest accepted [`InprocConfig::capacity`] (messages); larger values are clamped.
pub const MAX_CAPACITY: usize = 1 << 20;

/// Largest accepted [`InprocConfig::backlog`] (connections); larger values are clamped.
pub const MAX_BACKLOG: usize = 1 << 16;

/// Largest accepted [`InprocConfig::max_message_len`] (bytes); larger values are clamped.
/// Equal to the largest frame the stream transports can carry, so that any inproc message
/// can be forwarded over them.
pub const MAX_MESSAGE_LEN: usize = u32::MAX as usize;

/// Errors of the in-process registry: binding and connecting.
///
/// Each variant corresponds to one [`io::ErrorKind`], given by [`InprocError::kind`] and
/// kept by the conversion into [`io::Error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InprocError {
    /// The name is not a valid in-process endpoint name ([`io::ErrorKind::InvalidInput`]).
    #[error("invalid inproc name {input:?}: {reason}")]
    InvalidName {
        /// The text that was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The name is already bound by a live acceptor ([`io::ErrorKind::AddrInUse`]). The
    /// existing binding is unchanged.
    #[error("inproc://{name} is already bound")]
    AddrInUse {
        /// The name.
        name: String,
    },

    /// No acceptor is bound to the name ([`io::ErrorKind::NotFound`]).
    #[error("nothing is bound to inproc://{name}")]
    NotFound {
        /// The name.
        name: String,
    },

    /// The acceptor's backlog of not-yet-accepted connections is full and the connect was
    /// not allowed to wait ([`io::ErrorKind::WouldBlock`]).
    #[error("the backlog of inproc://{name} is full ({backlog} connections not yet accepted)")]
    BacklogFull {
        /// The name.
        name: String,
        /// The acceptor's backlog bound.
        backlog: usize,
    },

    /// A connect that was allowed to wait ([`ConnectOptions::wait`]) gave up
    /// ([`io::ErrorKind::TimedOut`]).
    #[error(
        "connect to inproc://{name} timed out after {after:?}: {}",
        if *.bound { "the acceptor's backlog stayed full" } else { "nothing was bound to the name" }
    )]
    TimedOut {
        /// The name.
        name: String,
        /// How long the connect waited.
        after: Duration,
        /// `true` if the name was bound but its backlog stayed full, `false` if the name
        /// was never bound within the time.
        bound: bool,
    },
}

impl InprocError {
    /// The [`io::ErrorKind`] this error corresponds to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            InprocError::InvalidName { .. } => io::ErrorKind::InvalidInput,
            InprocError::AddrInUse { .. } => io::ErrorKind::AddrInUse,
            InprocError::NotFound { .. } => io::ErrorKind::NotFound,
            InprocError::BacklogFull { .. } => io::ErrorKind::WouldBlock,
            InprocError::TimedOut { .. } => io::ErrorKind::TimedOut,
        }
    }
}

impl From<InprocError> for io::Error {
    fn from(e: InprocError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// Configuration of the receiving side of in-process links.
///
/// Given to [`bind_with`] it applies to the client → server direction of every link the
/// acceptor accepts, and to its backlog; given in [`ConnectOptions::config`] it applies to the
/// server → client direction of the new link. Out-of-range values are clamped, never
/// rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InprocConfig {
    /// How many messages one direction holds before `reserve` waits (messages sent and not
    /// yet received, plus reserved places). Default 64; clamped to `1..=`[`MAX_CAPACITY`].
    pub capacity: usize,
    /// Largest message accepted, in bytes; `alloc` of a larger one fails with
    /// [`LinkError::TooLarge`]. Default 16 MiB; clamped to at most [`MAX_MESSAGE_LEN`].
    pub max_message_len: usize,
    /// How many connections may wait in the acceptor's backlog before being accepted (only
    /// meaningful for [`bind_with`]). Default 128; clamped to `1..=`[`MAX_BACKLOG`].
    pub backlog: usize,
}

impl Default for InprocConfig {
    fn default() -> Self {
        InprocConfig {
            capacity: 64,
            max_message_len: crate::frame::DEFAULT_MAX_FRAME_LEN,
            backlog: 128,
        }
    }
}

impl InprocConfig {
    fn clamped(&self) -> InprocConfig {
        InprocConfig {
            capacity: self.capacity.clamp(1, MAX_CAPACITY),
            max_message_len: self.max_message_len.min(MAX_MESSAGE_LEN),
            backlog: self.backlog.clamp(1, MAX_BACKLOG),
        }
    }
}

/// Options of [`connect_with`].
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// How long the connect may wait, in total, for the name to be bound and for room in
    /// the acceptor's backlog. `None` (the default) never waits: an unbound name is
    /// [`InprocError::NotFound`] and a full backlog [`InprocError::BacklogFull`]. `Some(t)`
    /// waits up to `t` and then fails with [`InprocError::TimedOut`]; a `t` too large to
    /// add to the current time waits without limit. A finite wait uses tokio's timer, so it
    /// must run inside a tokio runtime with the time driver enabled (as actix's runtime and
    /// `#[tokio::main]` are).
    pub wait: Option<Duration>,
    /// Configuration of the new link's server → client direction.
    pub config: InprocConfig,
}

/// Checks an endpoint name and returns it without the `inproc://` prefix.
///
/// Accepts a bare name or an `inproc://name` URL; see the [module docs](self) for the rules.
pub fn parse_name(input: &str) -> Result<&str, InprocError> {
    let invalid = |reason| InprocError::InvalidName {
        input: input.to_string(),
        reason,
    };
    let name = match input.split_once("://") {
        Some(("inproc", rest)) => rest,
        Some(_) => {
            return Err(invalid(
                "wrong scheme (expected inproc://name or a bare name)",
            ))
        }
        None => input,
    };
    check_name(name).map_err(invalid)?;
    Ok(name)
}

/// Checks a bare name (no scheme); the error is the reason it is invalid.
pub(crate) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("name is longer than 256 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("control characters are not allowed");
    }
    if name.contains("://") {
        return Err("\"://\" is not allowed inside a name");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The registry

struct Entry {
    /// Identifies the acceptor that owns the entry.
    id: u64,
    backlog: mpsc::Sender<InprocLink>,
    /// The acceptor's (clamped) configuration.
    config: InprocConfig,
}

/// Bound names and their acceptors.
static REGISTRY: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());

/// Woken (`notify_waiters`) after every successful bind, so that connects waiting for a
/// name look again. A waiter enables its `Notified` before it looks at the registry, and a
/// binder notifies after it released the registry lock with the new entry in it, so a bind
/// that the waiter's look missed always wakes it.
static BOUND: Notify = Notify::const_new();

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn registry() -> MutexGuard<'static, BTreeMap<String, Entry>> {
    // Every critical section is a single insert, remove or lookup, so the map is consistent
    // even if a panic poisoned the lock.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The names currently bound, sorted (bare names, without `inproc://`). For diagnostics: the
/// answer may be stale as soon as it is returned.
pub fn bound_names() -> Vec<String> {
    registry().keys().cloned().collect()
}

/// Binds `name` with the default [`InprocConfig`]. See [`bind_with`].
pub fn bind(name: &str) -> Result<InprocAcceptor, InprocError> {
    bind_with(name, InprocConfig::default())
}

/// Binds `name` (bare or `inproc://name`) and returns its acceptor.
///
/// Fails with [`InprocError::InvalidName`] for an invalid name and with
/// [`InprocError::AddrInUse`] if the name is bound already, in which case the existing
/// binding is left exactly as it was. Connects waiting for the name are woken.
pub fn bind_with(name: &str, config: InprocConfig) -> Result<InprocAcceptor, InprocError> {
    let name = parse_name(name)?;
    let config = config.clamped();
    let (tx, rx) = mpsc::channel(config.backlog);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    {
        let mut reg = registry();
        if reg.contains_key(name) {
            return Err(InprocError::AddrInUse {
                name: name.to_string(),
            });
        }
        reg.insert(
            name.to_string(),
            Entry {
                id,
                backlog: tx.clone(),
                config: config.clone(),
            },
        );
    }
    BOUND.notify_waiters();
    Ok(InprocAcceptor {
        name: name.into(),
        id,
        config,
        incoming: tokio::sync::Mutex::new(rx),
        _open: tx,
    })
}

/// Connects to `name` (bare or `inproc://name`) with the default [`ConnectOptions`]: fails
/// at once with [`InprocError::NotFound`] if nothing is bound to it, or with
/// [`InprocError::BacklogFull`] if its acceptor has too many connections waiting.
pub async fn connect(name: &str) -> Result<InprocLink, InprocError> {
    connect_with(name, ConnectOptions::default()).await
}

/// Connects to `name` (bare or `inproc://name`); see [`ConnectOptions`] for waiting.
///
/// The returned link's peer half is queued in the acceptor's backlog and returned by its
/// next [`accept`](InprocAcceptor::accept). Cancel-safe: dropping the future before it
/// completes connects nothing.
pub async fn connect_with(name: &str, options: ConnectOptions) -> Result<InprocLink, InprocError> {
    let name = parse_name(name)?;
    let client_config = options.config.clamped();
    let started = Instant::now();
    // `None`: never wait. `Some(None)`: wait without limit.
    let deadline = options.wait.map(|w| started.checked_add(w));
    let timed_out = |bound| InprocError::TimedOut {
        name: name.to_string(),
        after: started.elapsed(),
        bound,
    };
    loop {
        let mut bound = pin!(BOUND.notified());
        bound.as_mut().enable();
        let full = {
            let reg = registry();
            match reg.get(name) {
                None => None,
                Some(entry) => match entry.backlog.try_reserve() {
                    Ok(permit) => {
                        let (client, server) = pair(name, &client_config, &entry.config);
                        permit.send(server);
                        return Ok(client);
                    }
                    // The acceptor is being dropped: as good as unbound.
                    Err(mpsc::error::TrySendError::Closed(())) => None,
                    Err(mpsc::error::TrySendError::Full(())) => {
                        Some((entry.backlog.clone(), entry.config.clone()))
                    }
                },
            }
        };
        let Some(deadline) = deadline else {
            return Err(match full {
                None => InprocError::NotFound {
                    name: name.to_string(),
                },
                Some((_, config)) => InprocError::BacklogFull {
                    name: name.to_string(),
                    backlog: config.backlog,
                },
            });
        };
        match full {
            None => {
                // Wait for the next bind (of any name), then look again.
                if until(deadline, bound).await.is_none() {
                    return Err(timed_out(false));
                }
            }
            Some((backlog, server_config)) => match until(deadline, backlog.reserve()).await {
                None => return Err(timed_out(true)),
                Some(Ok(permit)) => {
                    let (client, server) = pair(name, &client_config, &server_config);
                    permit.send(server);
                    return Ok(client);
                }
                // Unbound while we waited: wait for a new bind.
                Some(Err(_closed)) => continue,
            },
        }
    }
}

/// Runs `f` until `deadline` (`None`: without limit); `None` if the deadline passed first.
async fn until<F: std::future::Future>(deadline: Option<Instant>, f: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f).await.ok(),
        None => Some(f.await),
    }
}

/// A bound in-process endpoint. Dropping it unbinds the name; see the
/// [module docs](self#lifecycle).
pub struct InprocAcceptor {
    name: Arc<str>,
    id: u64,
    config: InprocConfig,
    incoming: tokio::sync::Mutex<mpsc::Receiver<InprocLink>>,
    /// Keeps the backlog open from the sending side for as long as the acceptor exists.
    _open: mpsc::Sender<InprocLink>,
}

impl InprocAcceptor {
    /// Waits for the next connection and returns its server half.
    ///
    /// Never fails: while the acceptor exists its name stays bound. Cancel-safe: dropping
    /// the future loses no connection. Several tasks may call it concurrently (each
    /// connection goes to one of them).
    pub async fn accept(&self) -> InprocLink {
        let mut incoming = self.incoming.lock().await;
        match incoming.recv().await {
            Some(link) => link,
            // `self._open` is a sender, so the channel is never closed from the sending side
            // while we can be called; this arm only keeps the types honest.
            None => std::future::pending().await,
        }
    }

    /// The bound name, without `inproc://`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The acceptor's configuration (after clamping).
    pub fn config(&self) -> &InprocConfig {
        &self.config
    }
}

impl fmt::Debug for InprocAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InprocAcceptor")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for InprocAcceptor {
    fn drop(&mut self) {
        let mut reg = registry();
        if reg.get(&*self.name).is_some_and(|e| e.id == self.id) {
            reg.remove(&*self.name);
        }
        drop(reg);
        // Then `incoming` is dropped: the channel closes and every pending connection in it
        // is dropped, so its client sees the end of the link.
    }
}

// ---------------------------------------------------------------------------------------
// Links

fn pair(name: &str, client: &InprocConfig, server: &InprocConfig) -> (InprocLink, InprocLink) {
    let name: Arc<str> = name.into();
    // Each direction is bounded by its receiver's configuration.
    let (to_server, from_client) = mpsc::channel(server.capacity);
    let (to_client, from_server) = mpsc::channel(client.capacity);
    (
        InprocLink {
            tx: InprocTx {
                tx: to_server,
                max_message_len: server.max_message_len,
            },
            rx: InprocRx { rx: from_server },
            name: name.clone(),
        },
        InprocLink {
            tx: InprocTx {
                tx: to_client,
                max_message_len: client.max_message_len,
            },
            rx: InprocRx { rx: from_client },
            name,
        },
    )
}

/// One end of an in-process link. See the [module docs](self).
#[derive(Debug)]
pub struct InprocLink {
    tx: InprocTx,
    rx: InprocRx,
    name: Arc<str>,
}

impl InprocLink {
    /// Two connected links that are not bound to any name; `a_config` configures the
    /// direction `a` receives, `b_config` the one `b` receives.
    pub fn pair(a_config: &InprocConfig, b_config: &InprocConfig) -> (InprocLink, InprocLink) {
        pair("", &a_config.clamped(), &b_config.clamped())
    }

    /// The name of the endpoint this link was connected through (empty for
    /// [`InprocLink::pair`]).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Link for InprocLink {
    type Tx = InprocTx;
    type Rx = InprocRx;

    fn split(self) -> (InprocTx, InprocRx) {
        (self.tx, self.rx)
    }
}

/// Sending half of an [`InprocLink`].
#[derive(Debug)]
pub struct InprocTx {
    tx: mpsc::Sender<Bytes>,
    max_message_len: usize,
}

impl InprocTx {
    /// Largest message this half can send, in bytes (the peer's
    /// [`InprocConfig::max_message_len`]).
    pub fn max_message_len(&self) -> usize {
        self.max_message_len
    }

    /// Messages that can be reserved right now without waiting.
    pub fn available(&self) -> usize {
        self.tx.capacity()
    }
}

impl LinkTx for InprocTx {
    type Permit<'a> = InprocPermit<'a>;

    /// Waits for a free place in the peer's queue and holds it. Fails with
    /// [`LinkError::Closed`] (sticky) once the peer's receiving half is gone.
    async fn reserve(&mut self) -> Result<InprocPermit<'_>, LinkError> {
        let permit = self.tx.reserve().await.map_err(|_| LinkError::Closed)?;
        Ok(InprocPermit {
            permit,
            max_message_len: self.max_message_len,
        })
    }

    /// Every committed message is already in the peer's queue, so there is nothing to
    /// flush: the sending direction is closed and the peer receives everything queued and
    /// then `Ok(None)`. Never fails. (Messages the peer never reads because it dropped its
    /// receiving half are dropped with it, as with a socket.)
    async fn close(self) -> Result<(), LinkError> {
        drop(self);
        Ok(())
    }
}

/// A place held in the peer's queue; see [`Permit`].
pub struct InprocPermit<'a> {
    permit: mpsc::Permit<'a, Bytes>,
    max_message_len: usize,
}

impl fmt::Debug for InprocPermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InprocPermit")
            .field("max_message_len", &self.max_message_len)
            .finish_non_exhaustive()
    }
}

impl<'a> Permit for InprocPermit<'a> {
    type Slot = InprocSlot<'a>;

    /// Allocates the message's own zero-filled buffer of `len` bytes; the receiver will get
    /// this very allocation.
    fn alloc(self, len: usize) -> Result<InprocSlot<'a>, LinkError> {
        if len > self.max_message_len {
            return Err(LinkError::TooLarge {
                len,
                max: self.max_message_len,
            });
        }
        Ok(InprocSlot {
            permit: self.permit,
            buf: BytesMut::zeroed(len),
        })
    }
}

/// A message being written; see [`WriteSlot`]. Committing moves its buffer to the peer
/// without copying.
pub struct InprocSlot<'a> {
    permit: mpsc::Permit<'a, Bytes>,
    buf: BytesMut,
}

impl fmt::Debug for InprocSlot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InprocSlot")
            .field("len", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl WriteSlot for InprocSlot<'_> {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    fn commit(self) {
        // `freeze` keeps the allocation (and its address); `send` cannot fail or wait, the
        // place was reserved. If the peer's receiver is already gone the message is dropped.
        self.permit.send(self.buf.freeze());
    }
}

/// Receiving half of an [`InprocLink`].
#[derive(Debug)]
pub struct InprocRx {
    rx: mpsc::Receiver<Bytes>,
}

impl LinkRx for InprocRx {
    /// The next message, or `Ok(None)` (sticky) once the peer's sending half is gone and
    /// everything it sent was received. Never fails. Cancel-safe.
    async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        Ok(self.rx.recv().await)
    }
}
