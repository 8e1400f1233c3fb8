//! A plain tokio driver for stable sessions (no actix): [`StableClient::connect`] on one
//! side, [`StableServer`] on the other, and a [`StableConn`] per session on both, with
//! `send` and `recv` of byte items.
//!
//! Each session runs in one tokio task that owns the [`Session`] state machine and the
//! current link. The application talks to it through bounded channels:
//!
//! ```text
//!  app ──send──► [queue: DriverConfig::app_queue items]
//!        ──► staged item ──can_accept?──► replay buffer ──► link
//!  app ◄──recv── [queue: DriverConfig::app_queue items] ◄── link
//! ```
//!
//! * `send` waits while the queue is full; the task takes an item from the queue only when
//!   the replay buffer can hold it. So while the link is down, or the peer does not ack,
//!   the application is **backpressured**; nothing is dropped. Memory is bounded by the
//!   replay bound plus `app_queue + 1` items.
//! * `recv` yields items exactly once, in order. When the application does not read, the
//!   task stops reading the link (the link's own backpressure takes over).
//! * The client reconnects by itself through its [`LinkSource`], pacing attempts with the
//!   [`ReconnectPolicy`](super::ReconnectPolicy), resumes and replays. When the server
//!   rejects the resume (it restarted, or the grace period expired) or the policy gives up,
//!   `send` and `recv` fail with [`StableError::SessionLost`].
//! * The server hands each new session out through [`StableServerSessions::accept`]; links that
//!   resume a session are routed to that session's task (the newest link wins; a link it
//!   superseded is dropped).
//!
//! Dropping the sending half (a [`StableSender`], or the whole [`StableConn`]) ends the
//! session once everything sent has been acknowledged: the driver then closes the link, and
//! a server forgets the session. There is no close frame in protocol version 1: the peer
//! sees its link end and, when it tries to resume, gets [`StableError::SessionLost`] with
//! `unacked` counting what it sent that was never acknowledged (0 when nothing is missing).
//!
//! Events ([`SessionEvent`]) are diagnostics, delivered best-effort through a bounded
//! channel (dropped when the application does not read them); the counters of
//! [`StableConn::stats`] are exact, as of the session task's latest step.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

use super::backoff::SplitMix64;
use super::registry::{Registry, SessionId};
use super::session::{Accepting, HandshakeOutcome, Received, Session, SessionStats};
use super::wire::{ClientHello, ServerHello};
use super::{ResumeKey, StableConfig, StableError};
use crate::links::{send_bytes, Link, LinkError, LinkRx, LinkSource, LinkTx, Permit, WriteSlot};

fn now() -> std::time::Instant {
    TokioInstant::now().into_std()
}

/// Something that happened to a session (diagnostics).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A new session was established.
    SessionUp,
    /// The session's link failed or closed; the session waits for or makes a new one.
    LinkLost {
        /// Why.
        reason: StableError,
    },
    /// Client: reconnect attempt `attempt` (0-based) starts after `delay`.
    Reconnecting {
        /// Attempt number in this outage, from 0.
        attempt: u32,
        /// Backoff before the attempt.
        delay: Duration,
    },
    /// The session resumed on a new link; `replayed` items are sent again.
    Resumed {
        /// Items this side replays.
        replayed: usize,
    },
    /// The session is gone; `unacked` items this side sent were never acknowledged.
    SessionLost {
        /// Items never acknowledged.
        unacked: usize,
    },
    /// An item arrived (and was acknowledged) but could not be decoded into the
    /// application's type; it was not delivered. (Typed sessions only.)
    ItemUndecodable {
        /// The decode error.
        error: StableError,
    },
}

/// Configuration of the driver (in addition to the [`StableConfig`]).
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Items buffered between the application and the session task in each direction.
    /// Default 64; at least 1.
    pub app_queue: usize,
    /// Capacity of the events channel; events beyond it are dropped. Default 256.
    pub event_queue: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            app_queue: 64,
            event_queue: 256,
        }
    }
}

/// Exact counters of a driven session.
#[derive(Debug, Clone, Default)]
pub struct DriverStats {
    /// The state machine's counters.
    pub session: SessionStats,
    /// Links used successfully (handshake completed).
    pub links: u64,
    /// Links lost.
    pub link_losses: u64,
    /// Reconnect attempts (client).
    pub reconnect_attempts: u64,
}

struct Shared {
    stats: Mutex<DriverStats>,
    /// Why the session ended, once it did.
    end: Mutex<Option<StableError>>,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            stats: Mutex::new(DriverStats::default()),
            end: Mutex::new(None),
        })
    }
    fn stats(&self) -> std::sync::MutexGuard<'_, DriverStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn end_error(&self) -> StableError {
        self.end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(StableError::Closed)
    }
}

/// The sending half of a [`StableConn`].
pub struct StableSender {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    max_item: usize,
}

impl StableSender {
    /// Sends one item. Waits while the session cannot take it (backpressure: replay buffer
    /// full, link down). Fails once the session ended ([`StableError::SessionLost`], ...)
    /// or for an item above the maximum size.
    pub async fn send(&self, item: impl Into<Bytes>) -> Result<(), StableError> {
        let item = item.into();
        if item.len() > self.max_item {
            return Err(StableError::ItemTooLarge {
                len: item.len(),
                max: self.max_item,
            });
        }
        self.tx
            .send(item)
            .await
            .map_err(|_| self.shared.end_error())
    }

    /// A snapshot of the session's counters.
    pub fn stats(&self) -> DriverStats {
        self.shared.stats().clone()
    }
}

/// The receiving half of a [`StableConn`].
pub struct StableReceiver {
    rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
}

impl StableReceiver {
    /// The next item, in order. After the session ended and every delivered item was read,
    /// fails with why it ended. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Bytes, StableError> {
        match self.rx.recv().await {
            Some(b) => Ok(b),
            None => Err(self.shared.end_error()),
        }
    }

    /// A snapshot of the session's counters.
    pub fn stats(&self) -> DriverStats {
        self.shared.stats().clone()
    }
}

/// One stable session, as the application sees it. See the [module docs](self).
pub struct StableConn {
    sender: StableSender,
    receiver: StableReceiver,
    events: Option<mpsc::Receiver<SessionEvent>>,
    shared: Arc<Shared>,
}

impl StableConn {
    /// Sends one item; see [`StableSender::send`].
    pub async fn send(&self, item: impl Into<Bytes>) -> Result<(), StableError> {
        self.sender.send(item).await
    }

    /// Receives the next item; see [`StableReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Bytes, StableError> {
        self.receiver.recv().await
    }

    /// Takes the events channel (once).
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<SessionEvent>> {
        self.events.take()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DriverStats {
        self.shared.stats().clone()
    }

    /// Splits into independently usable halves (the session ends when both are dropped).
    pub fn split(self) -> (StableSender, StableReceiver) {
        (self.sender, self.receiver)
    }
}

/// The task's side of the application channels.
struct AppIo {
    from_app: mpsc::Receiver<Bytes>,
    from_app_closed: bool,
    staged: Option<Bytes>,
    to_app: mpsc::Sender<Bytes>,
    to_app_closed: bool,
    pending: Option<Bytes>,
    events: mpsc::Sender<SessionEvent>,
    shared: Arc<Shared>,
}

fn new_conn(config: &StableConfig, driver: &DriverConfig) -> (StableConn, AppIo) {
    let q = driver.app_queue.max(1);
    let (app_tx, from_app) = mpsc::channel(q);
    let (to_app, app_rx) = mpsc::channel(q);
    let (events, ev_rx) = mpsc::channel(driver.event_queue.max(1));
    let shared = Shared::new();
    (
        StableConn {
            sender: StableSender {
                tx: app_tx,
                shared: shared.clone(),
                max_item: config.effective_max_item(),
            },
            receiver: StableReceiver {
                rx: app_rx,
                shared: shared.clone(),
            },
            events: Some(ev_rx),
            shared: shared.clone(),
        },
        AppIo {
            from_app,
            from_app_closed: false,
            staged: None,
            to_app,
            to_app_closed: false,
            pending: None,
            events,
            shared,
        },
    )
}

impl AppIo {
    fn emit(&self, ev: SessionEvent) {
        tracing::debug!(?ev, "stable session event");
        let _ = self.events.try_send(ev);
    }

    fn sync_stats(&self, sess: &Session) {
        self.shared.stats().session = sess.stats().clone();
    }

    /// Moves the staged item into the session if it fits.
    fn push_staged(&mut self, sess: &mut Session) -> Result<(), StableError> {
        if let Some(item) = self.staged.take() {
            if sess.can_accept(item.len()) {
                sess.push(item)?;
            } else {
                self.staged = Some(item);
            }
        }
        Ok(())
    }

    /// The application dropped its sender and everything it sent was acknowledged.
    fn finished(&self, sess: &Session) -> bool {
        self.from_app_closed && self.staged.is_none() && sess.unacked() == 0
    }

    /// While no link is up: take application items into the replay buffer until `until`
    /// completes. Returns its output.
    async fn intake_until<F: std::future::Future>(
        &mut self,
        sess: &mut Session,
        until: F,
    ) -> Result<F::Output, StableError> {
        tokio::pin!(until);
        loop {
            self.push_staged(sess)?;
            tokio::select! {
                out = &mut until => return Ok(out),
                item = self.from_app.recv(), if self.staged.is_none() && !self.from_app_closed => {
                    match item {
                        Some(b) => self.staged = Some(b),
                        None => self.from_app_closed = true,
                    }
                }
            }
        }
    }

    fn end(self, sess: &mut Session, err: StableError) {
        if let StableError::SessionLost { unacked } = err {
            self.emit(SessionEvent::SessionLost { unacked });
        }
        self.sync_stats(sess);
        *self.shared.end.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
        // Dropping `self` closes the channels: the application's send/recv see the end.
    }
}

/// Most items moved per direction by one [`step_ready`] (fairness between directions).
const BATCH: usize = 64;

/// Receive and deliver, take application items, and transmit, as far as possible without
/// waiting. The order matters: acks received free replay room that the intake then uses,
/// and items taken in are transmitted at once.
fn step_ready<Tx: LinkTx, Rx: LinkRx>(
    sess: &mut Session,
    io: &mut AppIo,
    tx: &mut Tx,
    rx: &mut Rx,
    now: std::time::Instant,
) -> Result<(), StableError> {
    // Link → application (first: acks free replay room for the intake).
    for _ in 0..BATCH {
        if let Some(item) = io.pending.take() {
            match io.to_app.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => {
                    io.pending = Some(item);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => io.to_app_closed = true,
            }
        }
        match rx.recv().now_or_never() {
            Some(Ok(Some(msg))) => {
                if let Received::Item(item) = sess.handle_frame(now, msg)? {
                    if !io.to_app_closed {
                        io.pending = Some(item);
                    }
                }
            }
            Some(Ok(None)) => return Err(LinkError::Closed.into()),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    // Application → replay buffer.
    for _ in 0..BATCH {
        io.push_staged(sess)?;
        if io.staged.is_some() || io.from_app_closed {
            break;
        }
        match io.from_app.try_recv() {
            Ok(item) => io.staged = Some(item),
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => io.from_app_closed = true,
        }
    }
    // Invariant for the caller's select: an item stays staged only while the replay buffer
    // cannot take it (otherwise nothing would wake us to push it).
    io.push_staged(sess)?;
    // Replay buffer → link.
    for _ in 0..BATCH {
        if !sess.has_transmit(now) {
            break;
        }
        match tx.reserve().now_or_never() {
            Some(Ok(permit)) => {
                if let Some(t) = sess.poll_transmit(now) {
                    let mut slot = permit.alloc(t.len())?;
                    t.write_to(slot.as_mut_slice());
                    slot.commit();
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    Ok(())
}

/// Why [`run_link`] returned.
enum LinkEnd<T> {
    /// The link failed (or the peer closed it).
    Failed(StableError),
    /// A newer link for this session arrived (server).
    Superseded(T),
    /// The application is done and everything was acknowledged.
    Finished,
}

/// Runs the session over one link until it fails, is superseded, or the session is done.
async fn run_link<Tx: LinkTx, Rx: LinkRx, T>(
    sess: &mut Session,
    io: &mut AppIo,
    tx: &mut Tx,
    rx: &mut Rx,
    mut newer: Option<&mut mpsc::Receiver<T>>,
) -> LinkEnd<T> {
    loop {
        let now = now();
        // Do whatever is possible without waiting, in bounded batches, before selecting.
        if let Err(e) = step_ready(sess, io, tx, rx, now) {
            return LinkEnd::Failed(e);
        }
        if io.finished(sess) && io.pending.is_none() {
            return LinkEnd::Finished;
        }
        io.sync_stats(sess);
        let want_tx = sess.has_transmit(now);
        // Only arm the ack timer when nothing is ready to go (otherwise a past deadline
        // would spin while the link is full).
        let timeout = if want_tx { None } else { sess.poll_timeout() };
        let sleep = tokio::time::sleep_until(TokioInstant::from_std(
            timeout.unwrap_or_else(|| now + Duration::from_secs(3600)),
        ));
        let newer_recv = async {
            match newer.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            n = newer_recv => match n {
                Some(link) => return LinkEnd::Superseded(link),
                None => newer = None,
            },
            r = tx.reserve(), if want_tx => {
                let permit = match r {
                    Ok(p) => p,
                    Err(e) => return LinkEnd::Failed(e.into()),
                };
                if let Some(t) = sess.poll_transmit(now) {
                    match permit.alloc(t.len()) {
                        Ok(mut slot) => {
                            t.write_to(slot.as_mut_slice());
                            slot.commit();
                        }
                        Err(e) => return LinkEnd::Failed(e.into()),
                    }
                }
            }
            p = io.to_app.reserve(), if io.pending.is_some() => match p {
                Ok(p) => {
                    if let Some(item) = io.pending.take() {
                        p.send(item);
                    }
                }
                Err(_) => {
                    // The application dropped its receiver: it does not want items.
                    io.to_app_closed = true;
                    io.pending = None;
                }
            },
            m = rx.recv(), if io.pending.is_none() => match m {
                Ok(Some(msg)) => match sess.handle_frame(now, msg) {
                    Ok(Received::Item(item)) => {
                        if !io.to_app_closed {
                            io.pending = Some(item);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return LinkEnd::Failed(e),
                },
                Ok(None) => return LinkEnd::Failed(LinkError::Closed.into()),
                Err(e) => return LinkEnd::Failed(e.into()),
            },
            item = io.from_app.recv(), if io.staged.is_none() && !io.from_app_closed => {
                match item {
                    Some(b) => io.staged = Some(b),
                    None => io.from_app_closed = true,
                }
            }
            _ = sleep, if timeout.is_some() => {}
        }
    }
}

// ---- client ---------------------------------------------------------------------------

/// The client side: connects through a [`LinkSource`] and keeps the session alive.
pub struct StableClient;

impl StableClient {
    /// Starts a client session over links from `source` and returns it at once; the first
    /// link is made in the background (items sent meanwhile wait in the replay buffer).
    /// Must be called inside a tokio runtime.
    pub fn connect<S: LinkSource>(
        source: S,
        config: StableConfig,
        driver: DriverConfig,
    ) -> Result<StableConn, StableError> {
        let sess = Session::client(config.clone())?;
        let (conn, io) = new_conn(&config, &driver);
        tokio::spawn(client_task(source, sess, io));
        Ok(conn)
    }
}

/// Makes a link and runs the client handshake on it.
async fn client_handshake<S: LinkSource>(
    source: &mut S,
    sess: &mut Session,
) -> Result<
    (
        <S::Link as Link>::Tx,
        <S::Link as Link>::Rx,
        HandshakeOutcome,
    ),
    StableError,
> {
    let link = source.connect().await?;
    let (mut tx, mut rx) = link.split();
    let hello = sess.client_hello(now())?;
    let deadline = sess
        .poll_timeout()
        .ok_or(StableError::State("no handshake deadline"))?;
    let exchange = async {
        send_bytes(&mut tx, &hello.to_bytes()).await?;
        match rx.recv().await? {
            Some(msg) => Ok(msg),
            None => Err(StableError::Link(LinkError::Closed)),
        }
    };
    match tokio::time::timeout_at(TokioInstant::from_std(deadline), exchange).await {
        Ok(Ok(msg)) => {
            let outcome = sess.handle_server_hello(now(), &msg)?;
            Ok((tx, rx, outcome))
        }
        Ok(Err(e)) => {
            sess.link_lost();
            Err(e)
        }
        Err(_) => {
            sess.handle_timeout(now().max(deadline))?;
            Err(StableError::HandshakeTimeout)
        }
    }
}

async fn client_task<S: LinkSource>(mut source: S, mut sess: Session, mut io: AppIo) {
    let mut rng = SplitMix64::from_entropy();
    let policy = sess.config().reconnect.clone();
    let mut had_link = false;
    loop {
        // Get a link, with backoff.
        let outage_start = now();
        let mut attempt: u32 = 0;
        let (mut tx, mut rx) = loop {
            if had_link || attempt > 0 {
                let elapsed = now().saturating_duration_since(outage_start);
                let Some(delay) = policy.delay(attempt, elapsed, &mut rng) else {
                    let err = sess.mark_lost();
                    return io.end(&mut sess, err);
                };
                io.emit(SessionEvent::Reconnecting { attempt, delay });
                io.shared.stats().reconnect_attempts += 1;
                // A zero delay must not wait for the next timer tick (about 1 ms).
                if !delay.is_zero() {
                    if let Err(e) = io.intake_until(&mut sess, tokio::time::sleep(delay)).await {
                        return io.end(&mut sess, e);
                    }
                }
            }
            attempt = attempt.saturating_add(1);
            // Application items wait in the queue during the (time-limited) handshake.
            let result = client_handshake(&mut source, &mut sess).await;
            match result {
                Ok((tx, rx, outcome)) => {
                    io.shared.stats().links += 1;
                    match outcome {
                        HandshakeOutcome::New => io.emit(SessionEvent::SessionUp),
                        HandshakeOutcome::Resumed { replayed } => {
                            io.emit(SessionEvent::Resumed { replayed })
                        }
                    }
                    break (tx, rx);
                }
                Err(e @ StableError::SessionLost { .. }) => return io.end(&mut sess, e),
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "stable client: link attempt failed");
                    if !had_link && !sess.is_established() && attempt == 1 {
                        // Still report the first failure so the application can see it.
                        io.emit(SessionEvent::LinkLost { reason: e });
                    }
                }
            }
        };
        had_link = true;
        match run_link::<_, _, ()>(&mut sess, &mut io, &mut tx, &mut rx, None).await {
            LinkEnd::Finished => {
                let _ = tx.close().await;
                return io.end(&mut sess, StableError::Closed);
            }
            LinkEnd::Failed(reason) => {
                sess.link_lost();
                io.shared.stats().link_losses += 1;
                io.emit(SessionEvent::LinkLost { reason });
            }
            // The client passes no channel of newer links.
            LinkEnd::Superseded(()) => sess.link_lost(),
        }
    }
}

// ---- server ---------------------------------------------------------------------------

/// A link that resumes a session, routed by the registry to the session's task.
struct Relink<L: Link> {
    tx: L::Tx,
    rx: L::Rx,
    hello: ClientHello,
    new_key: ResumeKey,
    link_number: u64,
}

type SessionRegistry<L> = Registry<mpsc::Sender<Relink<L>>>;

struct ServerInner<L: Link> {
    config: StableConfig,
    driver: DriverConfig,
    registry: Mutex<SessionRegistry<L>>,
    new_sessions: mpsc::Sender<StableConn>,
    stats: Mutex<ServerStats>,
}

impl<L: Link> ServerInner<L> {
    fn registry(&self) -> std::sync::MutexGuard<'_, SessionRegistry<L>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn stats(&self) -> std::sync::MutexGuard<'_, ServerStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters of a [`StableServer`].
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    /// Sessions created.
    pub sessions: u64,
    /// Resumes accepted.
    pub resumes: u64,
    /// Resumes rejected (unknown or expired key).
    pub rejected: u64,
    /// Links whose handshake failed (garbage, wrong version, timeout, ...).
    pub handshake_failures: u64,
    /// The last handshake failure.
    pub last_handshake_error: Option<StableError>,
}

/// The server side: feed it every incoming link with [`handle_link`](StableServer::handle_link)
/// (or let [`serve`](StableServer::serve) accept from a listener); take new sessions with
/// [`StableServerSessions::accept`]. Cloning gives another handle to the same server.
pub struct StableServer<L: Link> {
    inner: Arc<ServerInner<L>>,
}

impl<L: Link> Clone for StableServer<L> {
    fn clone(&self) -> Self {
        StableServer {
            inner: self.inner.clone(),
        }
    }
}

/// The stream of new sessions of a [`StableServer`].
pub struct StableServerSessions {
    rx: mpsc::Receiver<StableConn>,
}

impl StableServerSessions {
    /// The next new session; `None` once every server handle is gone.
    pub async fn accept(&mut self) -> Option<StableConn> {
        self.rx.recv().await
    }
}

impl<L: Link> StableServer<L> {
    /// A server with an empty registry.
    pub fn new(
        config: StableConfig,
        driver: DriverConfig,
    ) -> Result<(StableServer<L>, StableServerSessions), StableError> {
        config.validate()?;
        let (new_sessions, rx) = mpsc::channel(driver.app_queue.max(1));
        Ok((
            StableServer {
                inner: Arc::new(ServerInner {
                    registry: Mutex::new(Registry::new(config.resume_grace)),
                    config,
                    driver,
                    new_sessions,
                    stats: Mutex::new(ServerStats::default()),
                }),
            },
            StableServerSessions { rx },
        ))
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.inner.stats().clone()
    }

    /// Sessions currently registered (with or without a link).
    pub fn sessions(&self) -> usize {
        self.inner.registry().len()
    }

    /// Runs the handshake on a freshly accepted link in a new task: a new session is
    /// created and handed to [`StableServerSessions::accept`]; a resume is routed to its
    /// session; anything else is counted in [`ServerStats`] and the link is closed.
    pub fn handle_link(&self, link: L) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err((e, link)) = server_handshake(&inner, link).await {
                tracing::debug!(error = %e, "stable server: handshake failed");
                {
                    let mut st = inner.stats();
                    st.handshake_failures += 1;
                    st.last_handshake_error = Some(e);
                }
                // Closed only now, so whoever sees the link end also sees the counters.
                drop(link);
            }
        });
    }
}

impl StableServer<crate::links::AnyLink> {
    /// Accepts links from `listener` forever (until accepting fails), handing each to
    /// [`handle_link`](StableServer::handle_link). Spawn it.
    pub async fn serve(self, listener: crate::endpoint::Listener) -> StableError {
        loop {
            match listener.accept().await {
                Ok(link) => self.handle_link(link),
                Err(e) => return StableError::Link(e.into()),
            }
        }
    }
}

/// A failed server handshake: the error, and the link halves (to be dropped by the caller).
type HandshakeFailure<L> = (StableError, Option<(<L as Link>::Tx, <L as Link>::Rx)>);

async fn server_handshake<L: Link>(
    inner: &Arc<ServerInner<L>>,
    link: L,
) -> Result<(), HandshakeFailure<L>> {
    let (tx, mut rx) = link.split();
    let accepting = Accepting::new(now(), &inner.config);
    let first =
        tokio::time::timeout_at(TokioInstant::from_std(accepting.poll_timeout()), rx.recv()).await;
    let hello = match first {
        Err(_) => Err(StableError::HandshakeTimeout),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(None)) => Err(StableError::Link(LinkError::Closed)),
        Ok(Ok(Some(msg))) => accepting.handle_client_hello(now(), &msg),
    };
    match hello {
        Ok(hello) => server_handshake_reply(inner, tx, rx, hello)
            .await
            .map_err(|e| (e, None)),
        Err(e) => Err((e, Some((tx, rx)))),
    }
}

async fn server_handshake_reply<L: Link>(
    inner: &Arc<ServerInner<L>>,
    mut tx: L::Tx,
    rx: L::Rx,
    hello: ClientHello,
) -> Result<(), StableError> {
    match hello.resume_key() {
        None => {
            let sess = Session::server(inner.config.clone())?;
            let (relink_tx, relinks) = mpsc::channel(4);
            let (id, key) = inner.registry().insert(relink_tx)?;
            send_bytes(&mut tx, &ServerHello::accept_new(&key).to_bytes()).await?;
            let (conn, io) = new_conn(&inner.config, &inner.driver);
            io.emit(SessionEvent::SessionUp);
            io.shared.stats().links += 1;
            inner.stats().sessions += 1;
            tokio::spawn(server_task(inner.clone(), id, sess, io, tx, rx, relinks));
            if inner.new_sessions.send(conn).await.is_err() {
                tracing::debug!("stable server: nobody accepts new sessions");
            }
            Ok(())
        }
        Some(key) => {
            let routed = {
                let mut reg = inner.registry();
                match reg.resume(now(), &key)? {
                    Some(r) => Some((r.value.clone(), r.new_key, r.link_number)),
                    None => None,
                }
            };
            let reject = |inner: &ServerInner<L>| inner.stats().rejected += 1;
            match routed {
                Some((to_session, new_key, link_number)) => {
                    let relink = Relink {
                        tx,
                        rx,
                        hello,
                        new_key,
                        link_number,
                    };
                    if let Err(mpsc::error::SendError(relink)) = to_session.send(relink).await {
                        // The session task is gone (it just expired or ended).
                        reject(inner);
                        let mut tx = relink.tx;
                        send_bytes(&mut tx, &ServerHello::rejected().to_bytes()).await?;
                        let _ = tx.close().await;
                    }
                    Ok(())
                }
                None => {
                    reject(inner);
                    send_bytes(&mut tx, &ServerHello::rejected().to_bytes()).await?;
                    let _ = tx.close().await;
                    Ok(())
                }
            }
        }
    }
}

async fn reject_relink<L: Link>(relink: Relink<L>) {
    let mut tx = relink.tx;
    if send_bytes(&mut tx, &ServerHello::rejected().to_bytes())
        .await
        .is_ok()
    {
        let _ = tx.close().await;
    }
}

enum ServerState<L: Link> {
    Linked(L::Tx, L::Rx),
    Waiting,
    Relinking(Relink<L>),
}

async fn server_task<L: Link>(
    inner: Arc<ServerInner<L>>,
    id: SessionId,
    mut sess: Session,
    mut io: AppIo,
    tx: L::Tx,
    rx: L::Rx,
    mut relinks: mpsc::Receiver<Relink<L>>,
) {
    let grace = inner.config.resume_grace;
    let mut link_number = 1;
    let mut state = ServerState::<L>::Linked(tx, rx);
    loop {
        state = match state {
            ServerState::Linked(mut tx, mut rx) => {
                match run_link(&mut sess, &mut io, &mut tx, &mut rx, Some(&mut relinks)).await {
                    LinkEnd::Finished => {
                        let _ = tx.close().await;
                        inner.registry().remove(id);
                        return io.end(&mut sess, StableError::Closed);
                    }
                    LinkEnd::Superseded(relink) => {
                        sess.link_lost();
                        io.shared.stats().link_losses += 1;
                        io.emit(SessionEvent::LinkLost {
                            reason: StableError::Link(LinkError::Closed),
                        });
                        ServerState::Relinking(relink)
                    }
                    LinkEnd::Failed(reason) => {
                        sess.link_lost();
                        io.shared.stats().link_losses += 1;
                        io.emit(SessionEvent::LinkLost { reason });
                        inner.registry().link_lost(id, now(), link_number);
                        ServerState::Waiting
                    }
                }
            }
            ServerState::Waiting => {
                let deadline = TokioInstant::now() + grace;
                let waited = io
                    .intake_until(&mut sess, tokio::time::timeout_at(deadline, relinks.recv()))
                    .await;
                match waited {
                    Ok(Ok(Some(relink))) => ServerState::Relinking(relink),
                    Ok(Ok(None)) => {
                        // The registry dropped us (an expired lookup removed the entry).
                        let err = sess.mark_lost();
                        return io.end(&mut sess, err);
                    }
                    Ok(Err(_elapsed)) => {
                        let expired = {
                            let mut reg = inner.registry();
                            let expired = reg.is_expired(id, now());
                            if expired {
                                reg.remove(id);
                            }
                            expired
                        };
                        if expired {
                            // Links routed to us just before the removal are refused.
                            relinks.close();
                            while let Ok(relink) = relinks.try_recv() {
                                inner.stats().rejected += 1;
                                reject_relink(relink).await;
                            }
                            let err = sess.mark_lost();
                            return io.end(&mut sess, err);
                        }
                        ServerState::Waiting
                    }
                    Err(e) => {
                        inner.registry().remove(id);
                        return io.end(&mut sess, e);
                    }
                }
            }
            ServerState::Relinking(relink) => match sess.handle_resume(&relink.hello) {
                Ok(outcome) => {
                    link_number = relink.link_number;
                    let (mut tx, rx) = (relink.tx, relink.rx);
                    let hello = sess.server_hello_resume(&relink.new_key);
                    match send_bytes(&mut tx, &hello.to_bytes()).await {
                        Ok(()) => {
                            inner.stats().resumes += 1;
                            io.shared.stats().links += 1;
                            if let HandshakeOutcome::Resumed { replayed } = outcome {
                                io.emit(SessionEvent::Resumed { replayed });
                            }
                            ServerState::Linked(tx, rx)
                        }
                        Err(e) => {
                            sess.link_lost();
                            io.emit(SessionEvent::LinkLost { reason: e.into() });
                            inner.registry().link_lost(id, now(), link_number);
                            ServerState::Waiting
                        }
                    }
                }
                Err(e) => {
                    // The client's view of the session contradicts ours: it cannot be
                    // resumed safely. Refuse, and end the session on both sides.
                    tracing::debug!(error = %e, "stable server: inconsistent resume");
                    inner.registry().remove(id);
                    inner.stats().rejected += 1;
                    reject_relink(relink).await;
                    let err = sess.mark_lost();
                    return io.end(&mut sess, err);
                }
            },
        };
    }
}
