//! The shared-memory hub: one process (the hub) holding links to many guest processes.
//!
//! ```text
//!   guest 1 ─┐  bootstrap (SOCK_SEQPACKET, stays open: liveness)   ┌─ Hub::accept → HubGuest { link }
//!   guest 2 ─┼──────────────────────────────────────────────────────┤
//!   guest n ─┘  SCM_RIGHTS: segment memfd + 4 doorbell ends         └─ HubEvent::Left { reason }
//! ```
//!
//! # Joining
//!
//! A guest connects to the hub's Unix socket ([`ShmConnector`]) and sends a join request
//! (see [`super::bootstrap`]). The hub takes a peer slot in its
//! [`PeerTable`] (or refuses: [`RefuseReason::Full`] when `max_guests` slots are taken),
//! creates the guest's shared state and replies, in **one** `SCM_RIGHTS` message, with the
//! segment descriptor and the guest's ends of the four doorbell socket pairs (the hub keeps
//! the other ends and closes the guest's once they are sent: neither side can touch the
//! other's doorbell descriptors, see [`super::doorbell`]). Both sides then build a
//! [`ShmLink`] over it: the hub is side A, the guest side B.
//!
//! Handshakes run concurrently. At most [`HubConfig::max_pending_handshakes`] connections
//! wait for their join request at once, each bounded by the bootstrap's request timeout;
//! when one more arrives, the **oldest** waiting connection is closed to make room (counted
//! by [`HubHandle::handshakes_dropped`] and logged). Honest guests send their request right
//! after connecting, so silent connections cost a bounded amount of memory and evict only
//! each other: an attacker holding (and renewing) a full cap of silent connections does not
//! keep a guest out, unless it opens `max_pending_handshakes` new connections between the
//! guest's connect and the hub's read of its already queued request. A join whose request
//! was read is never evicted (it is being granted or refused, without waiting on the
//! guest). The bootstrap connection stays open for
//! the life of the guest and is each link's liveness socket: its end of file (the guest
//! closed it or died) fails the hub's link at once, and the hub's watcher task sees it too.
//!
//! # Descriptors a guest passes
//!
//! A guest may try to send descriptors (`SCM_RIGHTS`) down its doorbells or its bootstrap
//! connection, to make the hub close a file whose close blocks (a lingering TCP socket)
//! in an executor thread, or to park its own bootstrap connection in the hub's queue so
//! that its death goes unseen. On Linux 6.16+ every hub socket a guest can send to has
//! `SO_PASSRIGHTS` off: the guest's `sendmsg` fails with `EPERM`. On older kernels the hub
//! takes such descriptors with `recvmsg` (see [`super::doorbell`] and
//! [`super::bootstrap`]), closes them on a dedicated thread, and evicts the guest with
//! [`DisconnectReason::Corrupt`]: on a doorbell, its link half fails with
//! `LinkError::Corrupt`; on the bootstrap connection, the watcher sees
//! [`PeerGone::Violation`]. Not guaranteed on those older kernels: descriptors sent down a
//! doorbell are found only when the hub's link half that owns it next waits on it (the
//! receiving half whenever the application waits in `recv`, the sending half when the ring
//! or the slab is full), so a guest that parks its own connection there and exits is seen
//! to leave only then.
//!
//! # One segment per guest occupancy
//!
//! Each guest gets its own memfd segment (the [`Segment`](super::segment::Segment) layout
//! of [`ShmLink`]: control flags, two rings, two slabs), created when it joins, rather than
//! one hub-wide segment carved into per-guest areas. Reasons:
//!
//! * **Isolation by the MMU.** A guest maps only its own rings and slabs, so a guest that
//!   scribbles over shared memory can only corrupt its own link ([`DisconnectReason::Corrupt`]);
//!   with a single segment every guest could overwrite every other guest's rings.
//! * **No reuse hazard.** A guest that left cleanly, or closed its bootstrap socket without
//!   exiting, may still have its segment mapped. Memory handed to the next guest of that
//!   slot is therefore fresh: a former guest can never write into a later guest's link.
//!   "Resetting" a departed guest's rings is dropping the hub's references to them.
//! * **Reuse of the validated layout**: the segment header, region table and link code are
//!   exactly those of a two-process [`ShmLink`]; there is no second ring driver.
//!
//! The cost is one `memfd_create` + `mmap` per join, and address space per guest (the
//! segment size of [`ShmConfig`]; memory is used only for the pages touched).
//!
//! # Leaving
//!
//! The hub's watcher task of each guest (a tokio task) waits for the bootstrap connection
//! to end or for the hub's link to report corruption, then:
//!
//! 1. decides the reason: [`Clean`](DisconnectReason::Clean) if the guest said goodbye or
//!    had closed its sending direction (dropped its link) before its connection ended,
//!    [`Crashed`](DisconnectReason::Crashed) otherwise, [`Corrupt`](DisconnectReason::Corrupt)
//!    if the hub's link found the guest's ring or slab malformed;
//! 2. shuts the connection down (`shutdown(2)`), which fails both sides' links even though
//!    other descriptors of the socket are still open: the hub's link halves return their
//!    remaining messages and then an error, the guest's link (if it is alive) sees its
//!    peer gone;
//! 3. moves the slot to `Draining` and reports [`HubEvent::Left`].
//!
//! A `Draining` slot becomes free once its [`HubEvent::Left`] is queued and the hub
//! application holds no zero-copy `Bytes` over the guest's slab any more
//! (`SlabReceiver::held() == 0`): such buffers stay valid (they keep the mapping alive) and
//! the slot, hence the memory accounted to it, is reused only after they are dropped.
//!
//! # Departure events are bounded and never lost
//!
//! [`Hub::take_events`] returns a channel of [`HubConfig::event_capacity`] events. When it
//! is full (the application does not receive), the watcher of a departed guest waits for
//! room before reporting, and its slot stays `Draining` until its event is queued. So an
//! application that stops receiving ends up with a full hub — joins are refused with
//! [`RefuseReason::Full`] — never with unbounded memory and never with a lost `Left`: at
//! most `event_capacity` events are queued and at most `max_guests` watchers wait. Once the
//! application receives again, the waiting events are delivered and their slots freed. Draining slots are swept whenever a slot is needed and by
//! [`Hub::free_slots`]. The segment itself is unmapped when the last of the hub's link
//! halves and buffers over it is dropped.
//!
//! # Spawning guests
//!
//! [`Hub::spawn`] reserves a slot for a child process and starts it with two environment
//! variables: [`HUB_PATH_ENV`] (the socket path) and [`HUB_TOKEN_ENV`] (a random 64-bit
//! token, decimal). No descriptor is inherited. The child calls
//! [`ShmConnector::from_env`] and joins with the token, which gets it the reserved slot. A
//! reservation that is not claimed within [`HubConfig::spawn_join_timeout`] is released.
//!
//! # Not guaranteed
//!
//! * Departure is detected through the socket: a guest that is alive but stuck is not gone.
//! * Departures are recorded only once [`Hub::take_events`] was called; with no receiver
//!   (never taken, or dropped) they are not reported. A second `take_events` ends the first
//!   receiver; an event a watcher was about to queue on it is lost.
//! * A watcher waiting for room in the event channel keeps waiting after the hub is
//!   dropped, until the application receives or drops the receiver.
//! * `Crashed` versus `Clean` is a best effort: a guest that exits without dropping its link
//!   (e.g. `std::process::exit`) counts as crashed.
//! * `max_guests` bounds the slots, not the address space: a departed guest's segment stays
//!   mapped while the hub application still holds that guest's link halves (or buffers
//!   over its slab). Drop a link once it has failed.
//! * A spawned child that dies before joining keeps its reserved slot until
//!   [`HubConfig::spawn_join_timeout`] expires.
//! * Joins progress only while [`Hub::accept`] is being polled (the `ShmHub` actor always
//!   polls it, except while the application's mailbox is full); departures are detected
//!   by per-guest tasks regardless.
//! * Messages the guest committed before it died are still delivered to the hub's
//!   application before the link reports the error; messages the hub sent that the guest
//!   had not read are lost.

#![allow(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::{AbortHandle, Abortable, Aborted, BoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use super::bootstrap::{
    self, BootstrapConfig, BootstrapConn, BootstrapError, BootstrapListener, JoinRequest, Joining,
    PeerGone, RefuseReason, Welcome,
};
use super::doorbell::Liveness;
use super::layout::LAYOUT_VERSION;
use super::link::{HubSide, ShmConfig, ShmLink};
use super::peers::{DisconnectReason, PeerError, PeerHandle, PeerTable, SlotState};
use super::segment::io_err;
use super::slab::SlabReceiver;
use super::ShmError;

/// Environment variable naming the hub's socket path, set by [`Hub::spawn`].
pub const HUB_PATH_ENV: &str = "ACTIX_TETHER_HUB";
/// Environment variable carrying the join token of a spawned guest (decimal `u64`), set by
/// [`Hub::spawn`].
pub const HUB_TOKEN_ENV: &str = "ACTIX_TETHER_HUB_TOKEN";

/// Number of descriptors a welcome carries: segment, data A→B, space A→B, data B→A,
/// space B→A.
const GUEST_FDS: usize = 5;

/// Configuration of a [`Hub`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Most guests at once (joined, joining, spawned-but-not-joined, or draining). From 1 to
    /// [`MAX_GUESTS`](super::peers::MAX_GUESTS). Default 64.
    pub max_guests: usize,
    /// Geometry of each guest's segment and the hub side's local link settings. Default
    /// [`ShmConfig::default`] (about 33 MiB of address space per guest) **with
    /// `max_held_slots: 0`**: the hub copies every slab payload out of shared memory instead
    /// of handing the application a zero-copy `Bytes` over it, because a guest is not
    /// trusted and could rewrite a slot while the application reads it (Rust assumes the
    /// bytes behind a `&[u8]` do not change). Raise it only for guests you trust.
    pub link: ShmConfig,
    /// The bootstrap socket's settings (request timeout, uid check, socket mode).
    pub bootstrap: BootstrapConfig,
    /// How long a slot reserved by [`Hub::spawn`] waits for its child to join before it is
    /// released. Default 30 s; must be non-zero.
    pub spawn_join_timeout: Duration,
    /// Capacity of the departure channel returned by [`Hub::take_events`], in events.
    /// Default 64; at least 1. When it is full, departed guests keep their slots until
    /// their event can be queued (see the [module docs](self#departure-events-are-bounded-and-never-lost)).
    pub event_capacity: usize,
    /// Most accepted connections waiting for their join request at once (each bounded by
    /// `bootstrap.request_timeout`). When one more arrives, the oldest waiting connection
    /// is closed without an answer (that client sees its join fail and may retry), see the
    /// [module docs](self#joining). Default 64; at least 1.
    pub max_pending_handshakes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_guests: 64,
            link: ShmConfig {
                max_held_slots: 0,
                ..ShmConfig::default()
            },
            bootstrap: BootstrapConfig::default(),
            spawn_join_timeout: Duration::from_secs(30),
            event_capacity: 64,
            max_pending_handshakes: 64,
        }
    }
}

/// Errors of the hub and of [`ShmConnector`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The bootstrap failed (bind, accept, handshake, or the hub refused the join).
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// Creating or attaching the shared memory failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// The peer table refused an operation (bad configuration, or an internal stale handle).
    #[error(transparent)]
    Peers(#[from] PeerError),
    /// Every peer slot is taken.
    #[error("the hub is full ({max} guests)")]
    Full {
        /// The configured maximum.
        max: usize,
    },
    /// A configuration value is out of its documented bounds.
    #[error("invalid hub configuration: {0}")]
    InvalidConfig(&'static str),
    /// [`ShmConnector::from_env`]: a variable is missing or malformed.
    #[error("bad hub environment: {0}")]
    Env(String),
    /// Spawning a guest process failed.
    #[error("spawning the guest failed: {0}")]
    Spawn(#[source] io::Error),
}

/// What happened to a guest (see [`Hub::take_events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubEvent {
    /// A guest left; its slot is draining and then free.
    Left {
        /// Which occupancy ended.
        peer: PeerHandle,
        /// Why.
        reason: DisconnectReason,
    },
}

/// A guest that joined: hand `link` to the application.
#[derive(Debug)]
pub struct HubGuest {
    /// The guest's slot and generation.
    pub peer: PeerHandle,
    /// The guest's process id (`SO_PEERCRED`, 0 if unknown).
    pub pid: u32,
    /// The hub's side of the guest's link.
    pub link: ShmLink,
}

/// Per-slot IO state kept next to the peer table.
struct SlotIo {
    handle: PeerHandle,
    /// The hub's receiving slab of this occupancy (to see when buffers are released).
    slab: Option<SlabReceiver>,
    /// A duplicate of the bootstrap connection, to shut it down (hub drop).
    conn: Option<OwnedFd>,
    /// The guest's departure was reported (its `Left` queued, or nobody listens): only then
    /// may a draining slot be freed.
    reported: bool,
}

struct State {
    table: PeerTable,
    io: HashMap<u32, SlotIo>,
    /// Tokens of slots reserved by `spawn`, with the reservation deadline.
    tokens: HashMap<u64, (PeerHandle, Instant)>,
    next_conn: u64,
    closed: bool,
    /// Where departures go, once `take_events` was called (before that they are dropped).
    events: Option<mpsc::Sender<HubEvent>>,
    /// Waiting connections evicted because `max_pending_handshakes` were waiting.
    handshakes_dropped: u64,
}

impl State {
    /// Frees draining slots whose buffers were released, and expired spawn reservations.
    fn sweep(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .tokens
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            if let Some((h, _)) = self.tokens.remove(&t) {
                let _ = self.table.cancel(h);
            }
        }
        let mut released = Vec::new();
        for (slot, io) in &self.io {
            if let Ok(SlotState::Draining { .. }) = self.table.state(io.handle) {
                if io.reported && io.slab.as_ref().map_or(0, |s| s.held()) == 0 {
                    released.push(*slot);
                }
            }
        }
        for slot in released {
            if let Some(io) = self.io.remove(&slot) {
                let _ = self.table.on_buffers_released(io.handle);
            }
        }
    }

    fn reserve(&mut self) -> Result<PeerHandle, HubError> {
        self.sweep();
        match self.table.reserve() {
            Ok(h) => Ok(h),
            Err(PeerError::Full { .. }) => Err(HubError::Full {
                max: self.table.max_guests(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

type Handshake = BoxFuture<'static, Result<HubGuest, HubError>>;
/// A connection waiting for its request: its id, and the request (or `Aborted`: evicted).
type Reading = BoxFuture<'static, (u64, Result<Result<Joining, BootstrapError>, Aborted>)>;

/// Handshakes in progress: connections whose request is not read yet (capped, oldest
/// first, each abortable), and joins being granted.
#[derive(Default)]
struct Handshakes {
    /// Connections waiting for their request.
    reading: FuturesUnordered<Reading>,
    /// Live reads by id.
    aborts: HashMap<u64, AbortHandle>,
    /// Ids in arrival order (may hold ids of finished reads, skipped when met).
    order: VecDeque<u64>,
    next_id: u64,
    /// Joins whose request was read: being granted or refused (no wait on the guest, each
    /// bounded by the request timeout; never evicted, so a reserved slot is never lost).
    granting: FuturesUnordered<Handshake>,
}

impl Handshakes {
    /// Connections waiting for their request.
    fn waiting(&self) -> usize {
        self.aborts.len()
    }

    /// Aborts the oldest live read (its connection is closed when its future is next
    /// polled). Whether there was one.
    fn evict_oldest(&mut self) -> bool {
        while let Some(id) = self.order.pop_front() {
            if let Some(abort) = self.aborts.remove(&id) {
                abort.abort();
                return true;
            }
        }
        false
    }

    fn push(&mut self, incoming: bootstrap::Incoming) {
        let id = self.next_id;
        self.next_id += 1;
        let (abort, registration) = AbortHandle::new_pair();
        self.aborts.insert(id, abort);
        self.order.push_back(id);
        // Forget the ids of finished reads now and then (bounded: at most twice the live).
        if self.order.len() > 2 * self.aborts.len() + 16 {
            let aborts = &self.aborts;
            self.order.retain(|id| aborts.contains_key(id));
        }
        let read = Abortable::new(incoming.read_request(), registration);
        self.reading.push(Box::pin(async move { (id, read.await) }));
    }

    /// Forgets a read that finished.
    fn finished(&mut self, id: u64) {
        self.aborts.remove(&id);
    }
}

/// The hub: a bootstrap listener, the peer table and each guest's watcher. See the
/// [module docs](self).
///
/// Needs a tokio runtime with IO and time enabled (it spawns one watcher task per guest).
/// Dropping the hub unlinks its socket, shuts every guest's connection down (their links
/// fail) and refuses nothing further.
pub struct Hub {
    listener: BootstrapListener,
    state: Arc<Mutex<State>>,
    config: HubConfig,
    /// Handshakes in progress. Boxed: keeps `Hub` small (it sits in an enum of listeners).
    handshakes: Box<Handshakes>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("path", &self.listener.path())
            .field("max_guests", &self.config.max_guests)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Binds the hub's socket at `path` (a stale socket file nobody listens on is replaced).
    pub fn bind(path: impl AsRef<Path>, config: HubConfig) -> Result<Hub, HubError> {
        if config.spawn_join_timeout.is_zero() {
            return Err(HubError::InvalidConfig(
                "spawn_join_timeout must be non-zero",
            ));
        }
        if config.event_capacity == 0 {
            return Err(HubError::InvalidConfig("event_capacity must be at least 1"));
        }
        if config.max_pending_handshakes == 0 {
            return Err(HubError::InvalidConfig(
                "max_pending_handshakes must be at least 1",
            ));
        }
        let table = PeerTable::new(config.max_guests)?;
        // Checks the link configuration once, up front (a throw-away in-process pair would
        // cost a segment; the geometry check is what matters).
        if config.link.inline_max > super::ring::ring_max_inline(config.link.ring_capacity)
            || config.link.inline_max > config.link.slot_size
        {
            return Err(HubError::InvalidConfig(
                "link.inline_max must be at most ring_capacity / 2 - 8 and at most slot_size",
            ));
        }
        let listener = BootstrapListener::bind(path, config.bootstrap.clone())?;
        Ok(Hub {
            listener,
            state: Arc::new(Mutex::new(State {
                table,
                io: HashMap::new(),
                tokens: HashMap::new(),
                next_conn: 1,
                closed: false,
                events: None,
                handshakes_dropped: 0,
            })),
            config,
            handshakes: Box::default(),
        })
    }

    /// The socket path guests connect to.
    pub fn path(&self) -> &Path {
        self.listener.path()
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The departures of guests from now on. Before the first call departures are not
    /// recorded; a second call replaces the first receiver (which then ends). The channel
    /// holds at most [`HubConfig::event_capacity`] events: keep receiving from it — while it
    /// is full, departed guests keep their slots (see the
    /// [module docs](self#departure-events-are-bounded-and-never-lost)).
    pub fn take_events(&mut self) -> mpsc::Receiver<HubEvent> {
        let (tx, rx) = mpsc::channel(self.config.event_capacity);
        lock(&self.state).events = Some(tx);
        rx
    }

    /// See [`HubHandle::handshakes_dropped`].
    pub fn handshakes_dropped(&self) -> u64 {
        lock(&self.state).handshakes_dropped
    }

    /// A cloneable handle for spawning guests and inspecting slots while another task
    /// owns the hub (e.g. runs [`accept`](Self::accept) in a loop).
    pub fn handle(&self) -> HubHandle {
        HubHandle {
            state: self.state.clone(),
            path: self.listener.path().to_path_buf(),
            spawn_join_timeout: self.config.spawn_join_timeout,
        }
    }

    /// Peer slots free now (after sweeping draining slots whose buffers were released).
    pub fn free_slots(&self) -> usize {
        self.handle().free_slots()
    }

    /// See [`HubHandle::spawn`].
    pub fn spawn(&self, command: Command) -> Result<Child, HubError> {
        self.handle().spawn(command)
    }

    /// Waits for the next guest to complete its join. Connections are handshaken
    /// concurrently (a silent client delays nobody); at most
    /// [`HubConfig::max_pending_handshakes`] wait for their request at once: one more
    /// evicts the oldest (closed, counted and logged). A failed handshake is skipped (logged at debug level), so
    /// this only returns an error when the listener itself fails. Cancel-safe: handshakes
    /// in progress continue at the next call.
    pub async fn accept(&mut self) -> Result<HubGuest, HubError> {
        loop {
            tokio::select! {
                incoming = self.listener.accept() => {
                    let incoming = match incoming {
                        Ok(i) => i,
                        // A connection that failed before we could read its credentials.
                        Err(BootstrapError::Io { op: "SO_PEERCRED" | "SO_PASSRIGHTS", .. }) => {
                            continue
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if self.handshakes.waiting() >= self.config.max_pending_handshakes
                        && self.handshakes.evict_oldest()
                    {
                        let dropped = {
                            let mut st = lock(&self.state);
                            st.handshakes_dropped += 1;
                            st.handshakes_dropped
                        };
                        let max = self.config.max_pending_handshakes;
                        // Every eviction at debug level; a warning at the first and at every
                        // power of two, so a flood cannot flood the log.
                        tracing::debug!(
                            "shm hub: {max} handshakes pending, closed the oldest connection"
                        );
                        if dropped.is_power_of_two() {
                            tracing::warn!(
                                "shm hub {}: {max} handshakes pending, closed the oldest \
                                 connection that had not sent its request ({dropped} closed \
                                 so far)",
                                self.listener.path().display()
                            );
                        }
                    }
                    self.handshakes.push(incoming);
                }
                Some((id, read)) = self.handshakes.reading.next(), if !self.handshakes.reading.is_empty() => {
                    self.handshakes.finished(id);
                    match read {
                        Ok(Ok(joining)) => {
                            let state = self.state.clone();
                            let config = self.config.clone();
                            self.handshakes
                                .granting
                                .push(Box::pin(handshake(joining, state, config)));
                        }
                        Ok(Err(e)) => tracing::debug!("shm hub: a join failed: {e}"),
                        // Evicted (counted when evicted); dropping it closed the connection.
                        Err(Aborted) => {}
                    }
                }
                Some(done) = self.handshakes.granting.next(), if !self.handshakes.granting.is_empty() => {
                    match done {
                        Ok(guest) => return Ok(guest),
                        Err(e) => tracing::debug!("shm hub: a join failed: {e}"),
                    }
                }
            }
        }
    }
}

/// A cloneable handle on a [`Hub`]'s slots (see [`Hub::handle`]). It does not keep the
/// hub's socket open.
#[derive(Clone)]
pub struct HubHandle {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    spawn_join_timeout: Duration,
}

impl fmt::Debug for HubHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubHandle")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl HubHandle {
    /// Peer slots free now (after sweeping draining slots whose buffers were released).
    pub fn free_slots(&self) -> usize {
        let mut st = lock(&self.state);
        st.sweep();
        st.table.free_count()
    }

    /// The state of every slot that is not free.
    pub fn slots(&self) -> Vec<(PeerHandle, SlotState)> {
        lock(&self.state).table.iter().collect()
    }

    /// How many connections waiting for their join request were closed, since the hub was
    /// bound, to make room for a newer one ([`HubConfig::max_pending_handshakes`]; the
    /// oldest waiting connection is closed).
    pub fn handshakes_dropped(&self) -> u64 {
        lock(&self.state).handshakes_dropped
    }

    /// Starts `command` as a guest: reserves a slot for it and sets [`HUB_PATH_ENV`] and
    /// [`HUB_TOKEN_ENV`] in its environment (nothing else is inherited). The child joins
    /// with [`ShmConnector::from_env`]; its link arrives through [`Hub::accept`]. Fails
    /// with [`HubError::Full`] when no slot is free. Spawning forks: call it from a thread
    /// that may block for a moment (the `Command` machinery waits for `exec`).
    pub fn spawn(&self, mut command: Command) -> Result<Child, HubError> {
        let token = random_token();
        let handle = {
            let mut st = lock(&self.state);
            let h = st.reserve()?;
            let deadline = Instant::now() + self.spawn_join_timeout;
            st.tokens.insert(token, (h, deadline));
            h
        };
        command
            .env(HUB_PATH_ENV, &self.path)
            .env(HUB_TOKEN_ENV, token.to_string());
        match command.spawn() {
            Ok(child) => Ok(child),
            Err(e) => {
                let mut st = lock(&self.state);
                st.tokens.remove(&token);
                let _ = st.table.cancel(handle);
                Err(HubError::Spawn(e))
            }
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        st.closed = true;
        for io in st.io.values() {
            if let Some(fd) = &io.conn {
                shutdown(fd.as_fd());
            }
        }
    }
}

/// A random, non-zero token (std's randomly keyed SipHash, fed with a counter and the time).
fn random_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish().max(1)
}

/// `shutdown(SHUT_RDWR)`: ends the connection for every descriptor of the socket.
fn shutdown(fd: BorrowedFd<'_>) {
    // SAFETY: `fd` is a socket descriptor kept open by the borrow for the duration of the
    // call; shutdown touches no memory of ours.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Grants (or refuses) one join.
async fn handshake(
    joining: Joining,
    state: Arc<Mutex<State>>,
    config: HubConfig,
) -> Result<HubGuest, HubError> {
    let req = *joining.request();
    let pid = joining.credentials().pid;
    if req.layout_version != LAYOUT_VERSION {
        joining
            .refuse(RefuseReason::UnsupportedLayout, LAYOUT_VERSION)
            .await?;
        return Err(HubError::Bootstrap(BootstrapError::Refused {
            reason: RefuseReason::UnsupportedLayout,
            detail: req.layout_version,
        }));
    }
    let taken = {
        let mut st = lock(&state);
        if st.closed {
            Err((RefuseReason::ShuttingDown, 0))
        } else if req.token != 0 {
            st.sweep();
            match st.tokens.remove(&req.token) {
                Some((h, _)) => Ok(h),
                None => Err((RefuseReason::UnknownToken, 0)),
            }
        } else {
            match st.reserve() {
                Ok(h) => Ok(h),
                Err(_) => Err((RefuseReason::Full, st.table.max_guests() as u32)),
            }
        }
    };
    let handle = match taken {
        Ok(h) => h,
        Err((reason, detail)) => {
            joining.refuse(reason, detail).await?;
            return Err(HubError::Bootstrap(BootstrapError::Refused {
                reason,
                detail,
            }));
        }
    };
    let cancel = |e: HubError| {
        let _ = lock(&state).table.cancel(handle);
        e
    };
    match grant(joining, handle, &config).await {
        Ok((conn, link, side)) => {
            let conn_dup = conn.as_fd().try_clone_to_owned().ok();
            {
                let mut st = lock(&state);
                let conn_id = st.next_conn;
                st.next_conn += 1;
                if let Err(e) = st.table.activate(handle, pid, conn_id) {
                    let _ = st.table.cancel(handle);
                    return Err(e.into());
                }
                if st.closed {
                    if let Some(fd) = &conn_dup {
                        shutdown(fd.as_fd());
                    }
                }
                st.io.insert(
                    handle.slot(),
                    SlotIo {
                        handle,
                        slab: Some(side.slab.clone()),
                        conn: conn_dup,
                        reported: false,
                    },
                );
            }
            tokio::spawn(watch(conn, side, handle, state.clone()));
            Ok(HubGuest {
                peer: handle,
                pid,
                link,
            })
        }
        Err(e) => Err(cancel(e)),
    }
}

/// Builds the guest's link and sends the welcome.
async fn grant(
    joining: Joining,
    handle: PeerHandle,
    config: &HubConfig,
) -> Result<(BootstrapConn, ShmLink, HubSide), HubError> {
    // The link's liveness is a duplicate of the bootstrap connection (kept by both halves).
    // Until the welcome is sent the guest cannot use the segment; if sending fails, all of
    // it is dropped here.
    let live_fd = joining
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_err("dup"))?;
    let liveness = Liveness::from_fd(live_fd).map_err(io_err("liveness"))?;
    let (link, mut side) = ShmLink::hub_side(&config.link, liveness)?;
    let welcome = Welcome {
        peer_id: handle.slot(),
        generation: handle.generation(),
        layout_version: LAYOUT_VERSION,
    };
    // The guest's doorbell ends leave with the welcome and are closed here right after
    // (on every path): the hub keeps only its own ends, so the guest can neither read nor
    // block them, and the hub sees the guest's ends close when it goes.
    let guest_bells = std::mem::take(&mut side.bells);
    let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(GUEST_FDS);
    fds.push(side.segment.fd());
    fds.extend(guest_bells.iter().map(|f| f.as_fd()));
    let conn = joining.welcome(welcome, &fds).await;
    drop(fds);
    drop(guest_bells);
    Ok((conn?, link, side))
}

/// Watches one guest until it leaves, then cleans up and reports it.
async fn watch(
    mut conn: BootstrapConn,
    side: HubSide,
    handle: PeerHandle,
    state: Arc<Mutex<State>>,
) {
    let reason = tokio::select! {
        gone = conn.gone() => {
            // A datagram after the handshake (anything but a goodbye, or descriptors) is a
            // protocol violation: the guest misbehaved, like one that corrupts its ring.
            if side.fault.is_corrupt() || gone == PeerGone::Violation {
                DisconnectReason::Corrupt
            } else if gone == PeerGone::Goodbye || side.guest_closed() {
                DisconnectReason::Clean
            } else {
                DisconnectReason::Crashed
            }
        }
        _ = side.fault.notify.notified() => DisconnectReason::Corrupt,
    };
    // Fail both sides' links, whatever other descriptors of the socket are still open.
    shutdown(conn.as_fd());
    drop(conn);
    let events = {
        let mut st = lock(&state);
        if let Some(io) = st.io.get_mut(&handle.slot()) {
            if io.handle == handle {
                io.conn = None;
            }
        }
        let _ = st.table.on_disconnect(handle, reason);
        st.events.clone()
    };
    // Room for the event first (waiting while the application does not receive; the slot
    // stays draining meanwhile), then, under the lock, queue it and let the slot go: once
    // the application sees the event, the slot is free (or waits only for its buffers).
    let permit = match &events {
        Some(events) => events.reserve().await.ok(),
        None => None,
    };
    let mut st = lock(&state);
    if let Some(permit) = permit {
        permit.send(HubEvent::Left {
            peer: handle,
            reason,
        });
    }
    if let Some(io) = st.io.get_mut(&handle.slot()) {
        if io.handle == handle {
            io.reported = true;
        }
    }
    st.sweep();
}

/// The guest side: joins a hub and returns the guest's [`ShmLink`].
///
/// ```no_run
/// # async fn f() -> Result<(), actix_tether::shm::hub::HubError> {
/// use actix_tether::shm::hub::ShmConnector;
/// // In a process started by `Hub::spawn`:
/// let link = ShmConnector::from_env()?.join().await?;
/// // Or, to join a hub by its socket path:
/// let link = ShmConnector::connect("/run/my-hub.sock").await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ShmConnector {
    path: PathBuf,
    token: u64,
    link: ShmConfig,
    bootstrap: BootstrapConfig,
}

/// What a guest learns when it joins (see [`ShmConnector::join_with_info`]).
#[derive(Debug)]
pub struct GuestLink {
    /// The link to the hub.
    pub link: ShmLink,
    /// The guest's peer id (slot) in the hub.
    pub peer_id: u32,
    /// The generation of that slot.
    pub generation: u64,
}

impl ShmConnector {
    /// A connector for the hub listening at `path` (no token: any free slot).
    pub fn new(path: impl Into<PathBuf>) -> ShmConnector {
        ShmConnector {
            path: path.into(),
            token: 0,
            link: ShmConfig::default(),
            bootstrap: BootstrapConfig::default(),
        }
    }

    /// A connector from [`HUB_PATH_ENV`] and [`HUB_TOKEN_ENV`] (set by [`Hub::spawn`]; the
    /// token is optional).
    pub fn from_env() -> Result<ShmConnector, HubError> {
        let path = std::env::var_os(HUB_PATH_ENV)
            .ok_or_else(|| HubError::Env(format!("{HUB_PATH_ENV} is not set")))?;
        if path.is_empty() {
            return Err(HubError::Env(format!("{HUB_PATH_ENV} is empty")));
        }
        let token = match std::env::var(HUB_TOKEN_ENV) {
            Ok(t) => t.parse::<u64>().map_err(|_| {
                HubError::Env(format!("{HUB_TOKEN_ENV} is not a decimal u64: {t:?}"))
            })?,
            Err(std::env::VarError::NotPresent) => 0,
            Err(e) => return Err(HubError::Env(format!("{HUB_TOKEN_ENV}: {e}"))),
        };
        Ok(ShmConnector::new(PathBuf::from(path)).token(token))
    }

    /// Joins `path` with the default configuration.
    pub async fn connect(path: impl Into<PathBuf>) -> Result<ShmLink, HubError> {
        ShmConnector::new(path).join().await
    }

    /// Sets the join token (0 = none).
    pub fn token(mut self, token: u64) -> ShmConnector {
        self.token = token;
        self
    }

    /// Sets the local link settings (`inline_max`, `max_held_slots`, `idle`; the geometry
    /// comes from the hub's segment).
    pub fn link_config(mut self, config: ShmConfig) -> ShmConnector {
        self.link = config;
        self
    }

    /// Sets the bootstrap settings (timeout, uid check of the hub).
    pub fn bootstrap_config(mut self, config: BootstrapConfig) -> ShmConnector {
        self.bootstrap = config;
        self
    }

    /// The hub's socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Joins the hub and returns the link.
    pub async fn join(&self) -> Result<ShmLink, HubError> {
        self.join_with_info().await.map(|g| g.link)
    }

    /// Joins the hub and returns the link with the guest's peer id.
    pub async fn join_with_info(&self) -> Result<GuestLink, HubError> {
        let req = JoinRequest {
            layout_version: LAYOUT_VERSION,
            token: self.token,
        };
        let joined = bootstrap::join(&self.path, &req, GUEST_FDS, &self.bootstrap).await?;
        let liveness =
            Liveness::from_fd(joined.conn.into_owned_fd()).map_err(io_err("liveness"))?;
        let link = ShmLink::guest_side(joined.fds, liveness, &self.link)?;
        Ok(GuestLink {
            link,
            peer_id: joined.welcome.peer_id,
            generation: joined.welcome.generation,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Hostile guests in this process, with `SO_PASSRIGHTS` left on for the hub's sockets
    //! (as on kernels before 6.16), so that descriptors do reach the hub: it must take them,
    //! evict the guest as `Corrupt`, close them off its thread, and keep serving others.
    //! (The kernel's refusal itself, and real processes, are in `tests/shm_hub.rs`.)

    use super::*;
    use crate::links::{send_bytes, Link, LinkError, LinkRx};
    use crate::shm::scm::test_support as scm;

    const GUARD: Duration = Duration::from_secs(30);

    async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(GUARD, f)
            .await
            .unwrap_or_else(|_| panic!("deadlock guard: {what}"))
    }

    fn path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tether-hubunit-{tag}-{}.sock", std::process::id()))
    }

    /// A guest joined with the raw bootstrap (its descriptors in hand), and the hub's side.
    async fn join_raw(hub: &mut Hub) -> (bootstrap::Joined, HubGuest) {
        let p = hub.path().to_path_buf();
        let guest = tokio::spawn(async move {
            let req = JoinRequest {
                layout_version: LAYOUT_VERSION,
                token: 0,
            };
            bootstrap::join(&p, &req, GUEST_FDS, &BootstrapConfig::default()).await
        });
        let hosted = guard("accept", hub.accept()).await.expect("accept");
        let joined = guard("join", guest).await.unwrap().expect("join");
        (joined, hosted)
    }

    /// An honest guest joins and exchanges a message both ways.
    async fn honest_round_trip(hub: &mut Hub) {
        let guest = tokio::spawn(ShmConnector::connect(hub.path().to_path_buf()));
        let hosted = guard("accept honest", hub.accept()).await.expect("accept");
        let link = guard("join honest", guest).await.unwrap().expect("join");
        let (mut gtx, mut grx) = link.split();
        let (mut htx, mut hrx) = hosted.link.split();
        send_bytes(&mut gtx, b"ping").await.unwrap();
        let got = guard("hub recv", hrx.recv()).await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"ping"[..]));
        send_bytes(&mut htx, b"pong").await.unwrap();
        let got = guard("guest recv", grx.recv()).await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"pong"[..]));
    }

    async fn next_left(events: &mut mpsc::Receiver<HubEvent>) -> (PeerHandle, DisconnectReason) {
        match guard("left", events.recv()).await.expect("events") {
            HubEvent::Left { peer, reason } => (peer, reason),
        }
    }

    /// A guest sends a lingering TCP socket down its data-ready doorbell while the hub's
    /// receiving half waits on it: that half fails with `Corrupt`, the guest is evicted
    /// as `Corrupt`, the hub's thread is not blocked by the close, and another guest is
    /// served.
    #[test]
    fn descriptor_down_a_doorbell_evicts_the_guest_as_corrupt() {
        crate::shm::scm::on_thread_keeping_passrights(
            GUARD + GUARD,
            "the hub's thread",
            || async {
                let mut hub = Hub::bind(path("bell"), HubConfig::default()).expect("bind");
                let mut events = hub.take_events();
                let (joined, hosted) = join_raw(&mut hub).await;
                let (_htx, mut hrx) = hosted.link.split();
                let receiver = tokio::spawn(async move { hrx.recv().await });
                tokio::task::yield_now().await;
                let (tcp, peer) = scm::lingering_socket(120);
                // fds: segment, data A→B, space A→B, data B→A (the guest's notifier), space B→A.
                scm::send_fd(joined.fds[3].as_fd(), tcp.as_fd()).unwrap();
                // In flight now: ours is not the last reference, the receiver's will be.
                drop(tcp);
                drop(joined.fds);
                let r = guard("hub recv fails", receiver).await.unwrap();
                assert!(matches!(r, Err(LinkError::Corrupt(_))), "{r:?}");
                assert_eq!(
                    next_left(&mut events).await,
                    (hosted.peer, DisconnectReason::Corrupt)
                );
                honest_round_trip(&mut hub).await;
                drop(joined.conn);
                std::thread::spawn(move || drop(peer));
            },
        );
    }

    /// A guest sends a lingering TCP socket on its bootstrap connection after the
    /// handshake: evicted as `Corrupt`, not blocking the hub, others served.
    #[test]
    fn descriptor_on_the_bootstrap_connection_evicts_the_guest_as_corrupt() {
        crate::shm::scm::on_thread_keeping_passrights(
            GUARD + GUARD,
            "the hub's thread",
            || async {
                let mut hub = Hub::bind(path("conn"), HubConfig::default()).expect("bind");
                let mut events = hub.take_events();
                let (mut joined, hosted) = join_raw(&mut hub).await;
                let (tcp, peer) = scm::lingering_socket(120);
                scm::send_fd(joined.conn.as_fd(), tcp.as_fd()).unwrap();
                // In flight now: ours is not the last reference, the receiver's will be.
                drop(tcp);
                assert_eq!(
                    next_left(&mut events).await,
                    (hosted.peer, DisconnectReason::Corrupt)
                );
                // The hub shut the connection down.
                guard("hub closes", joined.conn.gone()).await;
                honest_round_trip(&mut hub).await;
                std::thread::spawn(move || drop(peer));
            },
        );
    }

    /// A join request carrying a lingering TCP socket, queued before the hub accepts the
    /// connection: refused as malformed, the hub's thread not blocked, others served.
    #[test]
    fn descriptor_with_a_queued_join_request_is_refused() {
        crate::shm::scm::on_thread_keeping_passrights(
            GUARD + GUARD,
            "the hub's thread",
            || async {
                let mut hub = Hub::bind(path("req"), HubConfig::default()).expect("bind");
                // A raw SOCK_SEQPACKET client: connect, then the request with a descriptor,
                // all before the hub accepts.
                let fd = bootstrap::tests::raw_seqpacket_connect(hub.path());
                let (tcp, peer) = scm::lingering_socket(120);
                let mut req = [0u8; bootstrap::REQUEST_LEN];
                req[..8].copy_from_slice(&bootstrap::REQUEST_MAGIC);
                req[8..10].copy_from_slice(&bootstrap::PROTOCOL_VERSION.to_le_bytes());
                req[12..16].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
                bootstrap::tests::send_with_fd(fd.as_fd(), &req, tcp.as_fd()).unwrap();
                // In flight now: ours is not the last reference, the receiver's will be.
                drop(tcp);
                // The hub reads it, refuses it, and serves an honest guest next.
                honest_round_trip(&mut hub).await;
                let status = guard(
                    "refusal",
                    tokio::task::spawn_blocking(move || bootstrap::tests::read_status(fd)),
                )
                .await
                .unwrap();
                assert_eq!(status, Some(RefuseReason::Malformed.code()));
                std::thread::spawn(move || drop(peer));
            },
        );
    }
}
