//! A plain tokio driver for stable sessions (no actix): [`StableClient::connect`] on one
//! side, [`StableServer`] on the other, and a [`StableConn`] per session on both, with
//! `send` and `recv` of byte items.
//!
//! # Design: the application's calls drive the session
//!
//! The [`Session`] state machine and the current link's two halves sit behind one short
//! lock shared by the application's handles and a small background task (the rest of a
//! received batch frame is held by the receiving handle itself, outside the lock). There is
//! **no channel and no task hop per item**:
//!
//! ```text
//!  send(item) ──lock──► Session::push ──► (coalesce) ──► transmit_into ──► link permit (now_or_never) ──► peer
//!                         └ replay full: wait for acks (Notify)           └ link full: hand over to the task
//!  recv() ──lock──► link.recv (poll) ──► Session::handle_frame ──► item(s) to the caller
//!                                          └ ack due: written on the link right here
//!  background task: connect / handshake / resume (client), relinks and grace (server),
//!                   delayed acks, coalesced writes, waiting for link room, reading the
//!                   link while the application is not inside recv (acks, failure
//!                   detection)
//! ```
//!
//! * **`send`** pushes the item into the replay buffer. An item with nothing else
//!   unacknowledged (nothing in flight: a request, the first item after a pause) is written
//!   at once, from the caller's own task. Otherwise items are **coalesced**
//!   ([`DriverConfig::coalesce_sends`]): the first of a burst wakes the background task,
//!   which writes everything then pending as one batch frame when it runs (right after the
//!   sending task yields; it lingers up to two scheduler trips while the sender is still
//!   pushing); the send that brings the pending count to the limit writes the batch itself,
//!   when the link takes it without waiting. When the
//!   replay buffer is full (the peer has not acknowledged enough, or the link is down) `send`
//!   waits: **backpressure, never a drop**. Memory is bounded by the replay bound. When the
//!   link itself is full, the background task takes the link's sending half, waits for room
//!   and writes everything pending; the `send` that found it full has already returned (its
//!   item is in the replay buffer and will be delivered exactly once unless the session is
//!   lost), and later `send`s wait until the link took what was pending, as they would on
//!   the bare link. (Without that wait a sender on a current-thread runtime filled the
//!   whole replay buffer before the link's writer or the reading of acks got a turn.)
//! * **`recv`** polls the link from the caller's task and feeds each message to the state
//!   machine; a data item is returned at once, an ack frees replay room and wakes waiting
//!   senders, and a standalone ack that became due (after
//!   [`StableConfig::ack_every`](super::StableConfig::ack_every) items) is written
//!   right away. While the application is **not** inside `recv`, the background task reads
//!   the link instead (so one-way senders still see acks, and a dead link is noticed), and
//!   holds the items it reads for the next `recv`, at most [`DriverConfig::app_queue`] of
//!   them (plus at most one batch frame's items: a batch is never split); beyond that it
//!   stops reading and the link's own backpressure takes over. The
//!   background task never reads while the application is parked in `recv`, so in steady
//!   traffic each message wakes exactly one task: the application's.
//! * Both are **cancel-safe**: `send` has no await after the item enters the replay buffer
//!   (a `send` dropped while waiting for room queued nothing), and `recv` hands over every
//!   message it takes from the link within the same poll (a dropped `recv` loses nothing; the
//!   background task takes over reading).
//! * The background task wakes only for what the application cannot do: the delayed-ack
//!   timer (one long-lived `Sleep`, re-armed only when the deadline moves), link room, link
//!   failure, reconnects and resumes, writing coalesced sends, and — at most once per
//!   [`StableConfig::ack_delay`](super::StableConfig::ack_delay) — looking at the link
//!   again after the application's reads took it over (so a link that fails after the
//!   last `recv` is noticed without any traffic).
//! * The client reconnects by itself through its [`LinkSource`], pacing attempts with the
//!   [`ReconnectPolicy`](super::ReconnectPolicy), resumes and replays. When the server
//!   rejects the resume (it restarted, or the grace period expired) or the policy gives up,
//!   `send` and `recv` fail with [`StableError::SessionLost`]. When the server refuses a new
//!   session (it holds [`StableConfig::max_sessions`](super::StableConfig::max_sessions)
//!   already) they fail with [`StableError::Refused`].
//! * The server hands each new session out through [`StableServerSessions::accept`]; links that
//!   resume a session are routed to that session's task (the newest link wins; a link it
//!   superseded is dropped).
//!
//! Dropping the sending half (a [`StableSender`], or the whole [`StableConn`]) ends the
//! session once everything sent has been acknowledged: the driver then closes the link, and
//! a server forgets the session. There is no close frame in protocol version 2: the peer
//! sees its link end and, when it tries to resume, gets [`StableError::SessionLost`] with
//! `unacked` counting what it sent that was never acknowledged (0 when nothing is missing).
//!
//! Events ([`SessionEvent`]) are diagnostics, delivered best-effort through a bounded
//! channel (dropped when the application does not read them); the counters of
//! [`StableConn::stats`] are exact and current.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use futures::{FutureExt, Stream};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant as TokioInstant;

use super::backoff::SplitMix64;
use super::registry::{Registry, SessionId};
use super::session::{Accepting, HandshakeOutcome, Received, Session, SessionStats};
use super::wire::{BatchItems, ClientHello, ServerHello};
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
    /// Client: the server refused to create the session (it is at its
    /// [`StableConfig::max_sessions`](super::StableConfig::max_sessions) limit); `unacked`
    /// items sent before were never delivered.
    Refused {
        /// Items never delivered.
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
    /// Most received items held for the application while it is not inside `recv` (the
    /// background task reads the link then, for acks and failure detection); beyond it the
    /// link is not read until the application catches up. Also the capacity of the server's
    /// queue of new sessions not yet accepted. Default 64; at least 1.
    pub app_queue: usize,
    /// Capacity of the events channel; events beyond it are dropped. Default 256.
    pub event_queue: usize,
    /// Send coalescing, in items: `send` leaves up to this many items for the background
    /// task, which writes everything pending as one batch frame (up to
    /// [`StableConfig::max_batch_bytes`](super::StableConfig::max_batch_bytes)) when it next
    /// runs — right after the sending task yields, on the same thread when the runtime
    /// allows. The send that reaches the count writes the batch itself. Sending stays
    /// non-blocking either way, and the items are in the replay buffer (safe) as soon as
    /// `send` returns. Costs about one task switch of latency per burst; 0 or 1 writes
    /// every item from the caller's task at once, one link message each (lowest latency,
    /// lowest throughput for small items; items that pile up anyway — the link was full, or
    /// a resume replays them — still travel in batch frames). Default 64.
    pub coalesce_sends: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            app_queue: 64,
            event_queue: 256,
            coalesce_sends: 64,
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

// ---- the shared core ------------------------------------------------------------------

/// Most link messages one poll handles before yielding (fairness with other tasks).
const BATCH: usize = 64;

/// The receiving half of the current link as a stream: one boxed state machine per link, so
/// a `recv` in progress survives the caller's future being dropped (nothing is lost) and
/// whichever task holds the lock can poll it.
pub(crate) type RxStream = Pin<Box<dyn Stream<Item = Result<Bytes, LinkError>> + Send>>;

pub(crate) fn rx_stream<R: LinkRx>(rx: R) -> RxStream {
    // The half is boxed so that each step moves a pointer, not the whole receiver.
    Box::pin(futures::stream::unfold(Box::new(rx), |mut rx| async move {
        let r = match rx.recv().await {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(LinkError::Closed),
            Err(e) => Err(e),
        };
        Some((r, rx))
    }))
}

/// The sending half of the current link, type-erased so the application's handles are not
/// generic over the link.
trait DynTx: Send {
    /// Writes every frame the session has ready, as long as the link takes them without
    /// waiting. `Ok(true)`: nothing is left; `Ok(false)`: the link is full.
    fn write_ready(
        &mut self,
        sess: &mut Session,
        now: std::time::Instant,
    ) -> Result<bool, LinkError>;

    /// Waits for link room and writes what is ready until nothing is left, then puts itself
    /// back into the core (if link `gen` is still the current one). Used by the background
    /// task when the link is full.
    fn flush_wait(
        self: Box<Self>,
        core: Arc<Core>,
        gen: u64,
    ) -> BoxFuture<'static, Result<(), LinkError>>;

    /// Flushes and closes the sending direction.
    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), LinkError>>;
}

struct TxHalf<T>(T);

fn write_frame<P: Permit>(
    permit: P,
    sess: &mut Session,
    now: std::time::Instant,
) -> Result<(), LinkError> {
    let Some(len) = sess.next_transmit_len(now) else {
        return Ok(());
    };
    let mut slot = match permit.alloc(len) {
        Ok(slot) => slot,
        // A batch above the link's maximum payload: batches shrink to it, and the caller's
        // loop writes the next (smaller) frame with a new permit. A single item too large
        // for the link fails it, as before.
        Err(LinkError::TooLarge { max, .. }) if sess.limit_batch(max) => return Ok(()),
        Err(e) => return Err(e),
    };
    // The session is not touched between the two calls: the frame is the planned one, and
    // the slot is exactly `len` bytes (the `WriteSlot` contract).
    if !sess.transmit_into(now, slot.as_mut_slice()) {
        return Err(LinkError::Corrupt(format!(
            "link write slot is not the {len} bytes asked for"
        )));
    }
    slot.commit();
    Ok(())
}

impl<T: LinkTx> DynTx for TxHalf<T> {
    fn write_ready(
        &mut self,
        sess: &mut Session,
        now: std::time::Instant,
    ) -> Result<bool, LinkError> {
        while sess.has_transmit(now) {
            match self.0.reserve().now_or_never() {
                Some(Ok(permit)) => write_frame(permit, sess, now)?,
                Some(Err(e)) => return Err(e),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    fn flush_wait(
        self: Box<Self>,
        core: Arc<Core>,
        gen: u64,
    ) -> BoxFuture<'static, Result<(), LinkError>> {
        Box::pin(async move {
            let mut me = self;
            loop {
                let permit = me.0.reserve().await?;
                let mut st = core.st();
                if st.gen != gen || !st.link_up {
                    // The link was replaced or failed meanwhile: this half is dropped.
                    return Ok(());
                }
                let now = now();
                st.clock = now;
                write_frame(permit, &mut st.sess, now)?;
                if me.write_ready(&mut st.sess, now)? {
                    // Put back under the same lock that saw nothing left: a sender that
                    // pushes after this finds the half in place and writes itself.
                    st.tx = Some(me);
                    core.link_room(&mut st);
                    return Ok(());
                }
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), LinkError>> {
        Box::pin(self.0.close())
    }
}

impl State {
    /// The link is up but refused the last write: frames wait for room, and the background
    /// task has been asked to (or does) wait for it.
    fn link_full(&self) -> bool {
        self.link_up && (self.flush_requested || self.tx.is_none())
    }

    /// Whether `send` may queue an item of `len` bytes now: room in the replay buffer, and a
    /// link that is not full. A sender faster than the link waits for the link, as it would
    /// on the bare link, instead of filling the whole replay buffer first (on a
    /// current-thread runtime that delayed the link's writer and the reading of acks until
    /// the buffer was full, so the link idled while the sender filled it).
    fn accepts(&self, len: usize) -> bool {
        self.sess.can_accept(len) && !self.link_full()
    }
}

/// Everything about one session, behind one short lock: the state machine, the link's two
/// halves, the items read for the application, and the bookkeeping around them.
///
/// One lock, not two: polling the receiving half under it is fine because a poll never
/// blocks (at worst it makes one non-blocking `recv` system call per read buffer, about
/// every thousand small messages), and it saves a lock round trip per received item.
struct State {
    sess: Session,
    /// The current link's sending half; `None` while no link is up, or while the background
    /// task holds it waiting for room.
    tx: Option<Box<dyn DynTx>>,
    /// The current link's receiving half, tagged with its generation.
    stream: Option<(u64, RxStream)>,
    /// Generation of the current (or last) link.
    gen: u64,
    link_up: bool,
    /// Why the current link failed (for the `LinkLost` event).
    failure: Option<StableError>,
    /// The background task was asked to wait for link room.
    flush_requested: bool,
    /// The background task was woken to write coalesced sends (cleared when it looks).
    write_scheduled: bool,
    /// Some `send` waits for replay room.
    senders_blocked: bool,
    /// Some `send` waits for the link to take what is pending ([`State::link_full`]).
    senders_wait_link: bool,
    /// The sending half was dropped: end once everything is acknowledged.
    senders_gone: bool,
    /// Items the background task read while the application was not inside `recv`.
    stash: VecDeque<Bytes>,
    /// The application is parked inside `recv` (its waker is registered with the link):
    /// the background task leaves the link alone.
    app_reading: bool,
    /// The background task wanted to read but left it to the application: wake it when the
    /// application leaves `recv`.
    bg_wants: bool,
    /// The background task's waker is registered with the link (its last read found
    /// nothing). An application read replaces that registration; it then sets `rx_watch`.
    bg_registered: bool,
    /// The background task looks at the link again by then (its waker is no longer
    /// registered with it): a link that fails after the application's last `recv` is
    /// noticed within [`StableConfig::ack_delay`](super::StableConfig::ack_delay) even
    /// when no timer or send would wake the task. At most one wake-up per period, however
    /// many reads the application makes.
    rx_watch: Option<std::time::Instant>,
    /// The receiving handle was dropped: items are acknowledged and discarded.
    receiver_gone: bool,
    /// The background task will look at the session again by then (`None`: it will not
    /// unless woken).
    timer: Option<std::time::Instant>,
    /// Why the session ended, once it did.
    end: Option<StableError>,
    /// The latest clock reading. The per-item paths use it instead of reading the clock
    /// (which costs as much as the rest of a send): it only decides whether a delayed ack
    /// is due by *time*, and a reading that is a little old only makes that decision late,
    /// never early; the background task's timer, which reads the clock, sends it on time.
    clock: std::time::Instant,
    stats: DriverStats,
}

struct Core {
    st: Mutex<State>,
    /// The application's `recv`, parked.
    app_waker: AtomicWaker,
    /// Wakes the background task (a stored permit: no wake-up is lost).
    bg: Notify,
    /// Wakes senders waiting for replay room.
    room: Notify,
    events: mpsc::Sender<SessionEvent>,
    stash_cap: usize,
    /// [`DriverConfig::coalesce_sends`].
    coalesce: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one poll of the receiving half produced.
enum Polled {
    /// An item for the application.
    Item(Bytes),
    /// Items for the application, in order (at least one).
    Items(BatchItems),
    /// A message with nothing for the application (an ack, a duplicate).
    Other,
    /// The link failed (already recorded).
    Failed,
    /// Nothing now; the caller's waker is registered.
    Pending,
    /// No current link to read.
    NoLink,
}

impl Core {
    fn new(sess: Session, driver: &DriverConfig) -> (Arc<Core>, mpsc::Receiver<SessionEvent>) {
        let (events, ev_rx) = mpsc::channel(driver.event_queue.max(1));
        let core = Arc::new(Core {
            st: Mutex::new(State {
                sess,
                tx: None,
                stream: None,
                gen: 0,
                link_up: false,
                failure: None,
                flush_requested: false,
                write_scheduled: false,
                senders_blocked: false,
                senders_wait_link: false,
                senders_gone: false,
                stash: VecDeque::new(),
                app_reading: false,
                bg_wants: false,
                bg_registered: false,
                rx_watch: None,
                receiver_gone: false,
                timer: None,
                end: None,
                clock: now(),
                stats: DriverStats::default(),
            }),
            app_waker: AtomicWaker::new(),
            bg: Notify::new(),
            room: Notify::new(),
            events,
            stash_cap: driver.app_queue.max(1),
            coalesce: driver.coalesce_sends,
        });
        (core, ev_rx)
    }

    fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.st)
    }

    fn emit(&self, ev: SessionEvent) {
        tracing::debug!(?ev, "stable session event");
        let _ = self.events.try_send(ev);
    }

    fn wake_bg(&self) {
        self.bg.notify_one();
    }

    fn stats(&self) -> DriverStats {
        let st = self.st();
        let mut stats = st.stats.clone();
        stats.session = st.sess.stats().clone();
        stats
    }

    /// Writes what is ready on the link, if the link takes it now; otherwise asks the
    /// background task to wait for room.
    fn write_ready(&self, st: &mut State, now: std::time::Instant) {
        let State { tx, sess, .. } = st;
        let Some(tx) = tx.as_mut() else { return };
        match tx.write_ready(sess, now) {
            Ok(true) => {}
            Ok(false) => {
                if !st.flush_requested {
                    st.flush_requested = true;
                    self.wake_bg();
                }
            }
            Err(e) => {
                let gen = st.gen;
                self.fail_link(st, gen, e.into());
            }
        }
    }

    /// Replay room was freed (acks arrived).
    ///
    /// Blocked senders are woken only once the replay buffer is down to half its bounds (or
    /// empty), not at every ack: acks come every [`StableConfig::ack_every`] items, and
    /// waking the sender for so few would make it write — and the link flush — in batches
    /// that small (silly window syndrome). Senders re-check the room themselves, so this
    /// only decides how early they try; the buffer always drains to empty once the peer
    /// has acknowledged everything, so a blocked sender is always woken.
    ///
    /// [`StableConfig::ack_every`]: super::StableConfig::ack_every
    fn room_freed(&self, st: &mut State) {
        if st.senders_blocked {
            let config = st.sess.config();
            let low = st.sess.unacked() == 0
                || (st.sess.unacked() <= config.replay_max_frames / 2
                    && st.sess.unacked_bytes() <= config.replay_max_bytes / 2);
            if low {
                st.senders_blocked = false;
                self.room.notify_waiters();
            }
        }
        if st.senders_gone && st.sess.unacked() == 0 {
            self.wake_bg();
        }
    }

    /// The link took what was pending, failed, or was replaced: senders waiting for it may
    /// go on.
    fn link_room(&self, st: &mut State) {
        if st.senders_wait_link && !st.link_full() {
            st.senders_wait_link = false;
            self.room.notify_waiters();
        }
    }

    /// Feeds one link message to the session. Returns what it carried for the application.
    fn on_message(&self, st: &mut State, msg: Bytes) -> Result<Polled, StableError> {
        // The clock matters only to start the ack delay at the first unacknowledged item.
        if st.sess.received_unacked() == 0 {
            st.clock = now();
        }
        let now = st.clock;
        let unacked = st.sess.unacked();
        let received = st.sess.handle_frame(now, msg)?;
        if st.sess.unacked() < unacked {
            self.room_freed(st);
        }
        if st.sess.has_transmit(now) {
            // A standalone ack is due (or frames wait): write it from this task.
            self.write_ready(st, now);
        }
        if let Some(deadline) = st.sess.poll_timeout() {
            // A delayed ack: make sure the background task's timer fires by then. It is
            // woken only when its timer is later (or off), so about once per ack delay.
            if st.timer.map_or(true, |t| t > deadline) {
                st.timer = Some(deadline);
                self.wake_bg();
            }
        }
        Ok(match received {
            Received::Item(item) => Polled::Item(item),
            Received::Items(items) => Polled::Items(items),
            Received::Duplicate { .. } | Received::Ack => Polled::Other,
        })
    }

    /// Polls the current link's receiving half once and feeds what arrives to the session.
    fn poll_link(&self, st: &mut State, cx: &mut Context<'_>) -> Polled {
        // Taken out for the poll (the session is borrowed mutably meanwhile), put back
        // unless the link failed.
        let Some((gen, mut stream)) = st.stream.take() else {
            return Polled::NoLink;
        };
        if gen != st.gen || !st.link_up {
            return Polled::NoLink;
        }
        match stream.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(msg))) => {
                st.stream = Some((gen, stream));
                match self.on_message(st, msg) {
                    Ok(polled) => polled,
                    Err(e) => {
                        self.fail_link(st, gen, e);
                        Polled::Failed
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
                self.fail_link(st, gen, e.into());
                Polled::Failed
            }
            Poll::Ready(None) => {
                self.fail_link(st, gen, LinkError::Closed.into());
                Polled::Failed
            }
            Poll::Pending => {
                st.stream = Some((gen, stream));
                Polled::Pending
            }
        }
    }

    /// Link `gen` failed. Returns whether it was the current link.
    fn fail_link(&self, st: &mut State, gen: u64, reason: StableError) -> bool {
        if st.gen != gen || !st.link_up {
            return false;
        }
        st.link_up = false;
        st.tx = None;
        st.stream = None;
        st.sess.link_lost();
        st.failure = Some(reason);
        st.flush_requested = false;
        st.stats.link_losses += 1;
        self.link_room(st);
        self.wake_bg();
        self.app_waker.wake();
        true
    }

    /// A handshake completed: the link becomes the session's current link, and everything
    /// unacknowledged is replayed on it. `None` if the session ended meanwhile.
    fn install(&self, tx: Box<dyn DynTx>, stream: RxStream) -> Option<u64> {
        let mut st = self.st();
        if st.end.is_some() {
            return None;
        }
        st.gen += 1;
        let gen = st.gen;
        st.tx = Some(tx);
        st.stream = Some((gen, stream));
        st.link_up = true;
        st.failure = None;
        st.flush_requested = false;
        st.stats.links += 1;
        // The handshake dropped what the peer had acknowledged: senders waiting for room
        // may go on (nothing else would tell them when nothing is left to replay).
        self.room_freed(&mut st);
        st.clock = now();
        let clock = st.clock;
        self.write_ready(&mut st, clock);
        self.link_room(&mut st);
        drop(st);
        self.app_waker.wake();
        Some(gen)
    }

    /// The session is over: `send` fails with `err`, `recv` after the held items.
    fn end(&self, err: StableError) {
        let mut st = self.st();
        if st.end.is_some() {
            return;
        }
        match err {
            StableError::SessionLost { unacked } => {
                self.emit(SessionEvent::SessionLost { unacked })
            }
            StableError::Refused { unacked } => self.emit(SessionEvent::Refused { unacked }),
            _ => {}
        }
        st.end = Some(err);
        st.tx = None;
        st.stream = None;
        st.link_up = false;
        drop(st);
        self.app_waker.wake();
        self.room.notify_waiters();
    }

    /// Declares the session lost and ends it.
    fn lose(&self) {
        let err = self.st().sess.mark_lost();
        self.end(err);
    }

    // ---- the application's calls --------------------------------------------------

    /// One step of `send`: `Ok(None)` when the item was taken; `Ok(Some(item))` when it
    /// must wait for replay room.
    fn try_send(&self, item: Bytes) -> Result<Option<Bytes>, StableError> {
        let mut st = self.st();
        if let Some(e) = &st.end {
            return Err(e.clone());
        }
        st.sess.check_item_len(item.len())?;
        if !st.accepts(item.len()) {
            return Ok(Some(item));
        }
        st.sess.push(item)?;
        if st.tx.is_some() {
            // Written at once when the batch is full, or when this item is the only one not
            // acknowledged (nothing in flight: waiting would only add latency).
            if st.sess.unsent() >= self.coalesce || st.sess.unacked() == 1 {
                let clock = st.clock;
                self.write_ready(&mut st, clock);
            } else if !st.write_scheduled {
                st.write_scheduled = true;
                self.wake_bg();
            }
        }
        Ok(None)
    }

    /// `send` when the replay buffer is full: wait for room.
    async fn send_slow(&self, mut item: Bytes) -> Result<(), StableError> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut st = self.st();
                if st.end.is_some() || st.accepts(item.len()) {
                    drop(st);
                    item = match self.try_send(item)? {
                        None => return Ok(()),
                        Some(item) => item,
                    };
                    continue;
                }
                if st.link_full() {
                    st.senders_wait_link = true;
                }
                if !st.sess.can_accept(item.len()) {
                    st.senders_blocked = true;
                }
            }
            // Someone must read the peer's acks: the background task does when the
            // application is not inside `recv`.
            self.wake_bg();
            room.await;
            item = match self.try_send(item)? {
                None => return Ok(()),
                Some(item) => item,
            };
        }
    }

    /// The application leaves `recv` (with an item, an error, or by dropping the future).
    fn leave_recv(&self, st: &mut State, parked: &mut bool) {
        if *parked {
            st.app_reading = false;
            *parked = false;
        }
        if st.bg_wants {
            st.bg_wants = false;
            self.wake_bg();
        }
    }

    /// `local` holds the rest of a batch frame this receiver took from the link: items
    /// older than anything in the stash, handed out first and without the lock.
    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        parked: &mut bool,
        local: &mut Option<BatchItems>,
    ) -> Poll<Result<Bytes, StableError>> {
        if let Some(item) = local.as_mut().and_then(Iterator::next) {
            // `parked` is false: `local` only fills in a poll that returns an item.
            return Poll::Ready(Ok(item));
        }
        let mut guard = self.st();
        let st = &mut *guard;
        if let Some(item) = st.stash.pop_front() {
            self.leave_recv(st, parked);
            return Poll::Ready(Ok(item));
        }
        if st.bg_registered {
            st.bg_registered = false;
            if st.rx_watch.is_none() {
                let at = st.clock + st.sess.config().ack_delay;
                st.rx_watch = Some(at);
                if st.timer.map_or(true, |t| t > at) {
                    st.timer = Some(at);
                    self.wake_bg();
                }
            }
        }
        for _ in 0..BATCH {
            match self.poll_link(st, cx) {
                Polled::Item(item) => {
                    self.leave_recv(st, parked);
                    return Poll::Ready(Ok(item));
                }
                Polled::Items(mut items) => {
                    let first = items.next();
                    *local = Some(items);
                    self.leave_recv(st, parked);
                    if let Some(item) = first {
                        return Poll::Ready(Ok(item));
                    }
                }
                Polled::Other | Polled::Failed => {}
                Polled::Pending | Polled::NoLink => {
                    // Nothing now: park (registered before the last check, so nothing is
                    // missed: every change that matters happens under this lock).
                    self.app_waker.register(cx.waker());
                    if let Some(e) = &st.end {
                        let e = e.clone();
                        self.leave_recv(st, parked);
                        return Poll::Ready(Err(e));
                    }
                    st.app_reading = true;
                    *parked = true;
                    return Poll::Pending;
                }
            }
        }
        // Only acks and duplicates so far: let other tasks run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    // ---- the background task's reading ----------------------------------------------

    /// Reads the link while the application is not inside `recv`. `Ready` after handling
    /// something (the caller re-examines the session), `Pending` when there is nothing to
    /// read or it is not ours to read.
    fn bg_poll_rx(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut guard = self.st();
        let st = &mut *guard;
        if st.app_reading {
            st.bg_wants = true;
            return Poll::Pending;
        }
        st.bg_registered = false;
        let mut handled = 0;
        while handled < BATCH {
            if !st.receiver_gone && st.stash.len() >= self.stash_cap {
                // The application is behind: stop reading until it catches up.
                st.bg_wants = true;
                break;
            }
            match self.poll_link(st, cx) {
                Polled::Item(item) => {
                    if !st.receiver_gone {
                        st.stash.push_back(item);
                        self.app_waker.wake();
                    }
                }
                Polled::Items(items) => {
                    // One batch may take the stash past its cap; reading stops right after.
                    if !st.receiver_gone {
                        st.stash.extend(items);
                        self.app_waker.wake();
                    }
                }
                Polled::Other => {}
                Polled::Failed => return Poll::Ready(()),
                Polled::Pending => {
                    st.bg_registered = true;
                    st.rx_watch = None;
                    break;
                }
                Polled::NoLink => break,
            }
            handled += 1;
        }
        if handled > 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Most scheduler trips the background task waits for a sender that is still pushing.
const MAX_LINGER: usize = 2;

/// Coalesced sends are due: while a sender keeps pushing items (it writes a full batch
/// itself), give it up to [`MAX_LINGER`] scheduler trips before writing a partial batch, so
/// that a background task running on another thread does not cut a burst into small
/// frames. Returns at once when nothing is scheduled or the sender has paused.
async fn linger(core: &Core) {
    for _ in 0..MAX_LINGER {
        let pushed = {
            let st = core.st();
            if !st.write_scheduled || st.sess.unsent() == 0 {
                return;
            }
            st.sess.stats().items_pushed
        };
        tokio::task::yield_now().await;
        if core.st().sess.stats().items_pushed == pushed {
            return;
        }
    }
}

/// Why [`run_link`] returned.
enum LinkEnd<T> {
    /// The link failed (or the peer closed it).
    Failed(StableError),
    /// A newer link for this session arrived (server).
    Superseded(T),
    /// The application is done and everything was acknowledged; the link's sending half,
    /// to be closed.
    Finished(Option<Box<dyn DynTx>>),
}

/// The background task's work while link `gen` is up: delayed acks, waiting for link room,
/// reading while the application does not, and watching for the end.
async fn run_link<T>(
    core: &Arc<Core>,
    gen: u64,
    mut newer: Option<&mut mpsc::Receiver<T>>,
) -> LinkEnd<T> {
    let far = || TokioInstant::now() + Duration::from_secs(365 * 24 * 3600);
    let sleep = tokio::time::sleep_until(far());
    tokio::pin!(sleep);
    let mut armed: Option<std::time::Instant> = None;
    let mut flushing: Option<BoxFuture<'static, Result<(), LinkError>>> = None;
    loop {
        linger(core).await;
        let deadline = {
            let mut st = core.st();
            if st.gen != gen || !st.link_up {
                let reason = st
                    .failure
                    .take()
                    .unwrap_or(StableError::Link(LinkError::Closed));
                return LinkEnd::Failed(reason);
            }
            let now = now();
            st.clock = now;
            st.write_scheduled = false;
            if st.rx_watch.is_some_and(|t| now >= t) {
                // Due: this turn's read below registers us with the link again.
                st.rx_watch = None;
            }
            if flushing.is_none() {
                st.flush_requested = false;
                let State { tx, sess, .. } = &mut *st;
                let written = match tx.as_mut() {
                    Some(tx) if sess.has_transmit(now) => Some(tx.write_ready(sess, now)),
                    _ => None,
                };
                match written {
                    Some(Ok(false)) => {
                        if let Some(tx) = st.tx.take() {
                            flushing = Some(tx.flush_wait(core.clone(), gen));
                        }
                    }
                    Some(Err(e)) => {
                        core.fail_link(&mut st, gen, e.into());
                        continue;
                    }
                    Some(Ok(true)) | None => core.link_room(&mut st),
                }
            }
            if st.senders_gone && st.sess.unacked() == 0 && flushing.is_none() {
                // Acknowledge what was received before closing (a delayed ack would be
                // lost with the link): a time past the ack delay makes it due now.
                if st.sess.received_unacked() > 0 {
                    let later = now + st.sess.config().ack_delay;
                    core.write_ready(&mut st, later);
                }
                return LinkEnd::Finished(st.tx.take());
            }
            // The ack timer runs only while nothing waits for the link: a deadline already
            // past would otherwise spin while the link is full (frames waiting carry the ack).
            if flushing.is_some() {
                st.timer = Some(now);
                None
            } else {
                let deadline = match (st.sess.poll_timeout(), st.rx_watch) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                st.timer = deadline;
                deadline
            }
        };
        if deadline != armed {
            let at = deadline.map_or_else(far, TokioInstant::from_std);
            sleep.as_mut().reset(at);
            armed = deadline;
        }
        let newer_recv = async {
            match newer.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            n = newer_recv => match n {
                Some(link) => {
                    core.fail_link(&mut core.st(), gen, StableError::Link(LinkError::Closed));
                    return LinkEnd::Superseded(link);
                }
                None => newer = None,
            },
            r = async { flushing.as_mut().expect("guarded").await }, if flushing.is_some() => {
                flushing = None;
                if let Err(e) = r {
                    core.fail_link(&mut core.st(), gen, e.into());
                }
            }
            () = core.bg.notified() => {}
            () = std::future::poll_fn(|cx| core.bg_poll_rx(cx)) => {}
            () = &mut sleep, if armed.is_some() => armed = None,
        }
    }
}

// ---- application handles ----------------------------------------------------------------

/// The sending half of a [`StableConn`].
pub struct StableSender {
    core: Arc<Core>,
}

impl StableSender {
    /// Sends one item: it enters the replay buffer and is written on the link from the
    /// caller's task when the link has room. Waits while the replay buffer is full
    /// (backpressure: the peer has not acknowledged enough, or the link is down) and while
    /// the link is full (frames written earlier still wait for room). Fails once
    /// the session ended ([`StableError::SessionLost`], ...) or for an item above the
    /// maximum size.
    ///
    /// Cancel-safe: if the future is dropped before it completes, the item was not queued.
    pub async fn send(&self, item: impl Into<Bytes>) -> Result<(), StableError> {
        match self.core.try_send(item.into())? {
            None => Ok(()),
            // Boxed: the waiting future is large, and a large `send` future is copied into
            // place on every call, even when the item is queued at once.
            Some(item) => Box::pin(self.core.send_slow(item)).await,
        }
    }

    /// A snapshot of the session's counters.
    pub fn stats(&self) -> DriverStats {
        self.core.stats()
    }
}

impl Drop for StableSender {
    fn drop(&mut self) {
        self.core.st().senders_gone = true;
        self.core.wake_bg();
    }
}

/// The future of [`StableReceiver::recv`].
struct Recv<'a> {
    core: &'a Core,
    parked: bool,
    local: &'a mut Option<BatchItems>,
}

impl Future for Recv<'_> {
    type Output = Result<Bytes, StableError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.core.poll_recv(cx, &mut this.parked, this.local)
    }
}

impl Drop for Recv<'_> {
    fn drop(&mut self) {
        if self.parked {
            // Cancelled while parked: the background task takes over reading the link.
            let mut st = self.core.st();
            st.app_reading = false;
            st.bg_wants = false;
            drop(st);
            self.core.wake_bg();
        }
    }
}

/// The receiving half of a [`StableConn`].
pub struct StableReceiver {
    core: Arc<Core>,
    /// The rest of the last batch frame `recv` took from the link (see `Core::poll_recv`).
    local: Option<BatchItems>,
}

impl StableReceiver {
    /// The next item, in order. After the session ended and every delivered item was read,
    /// fails with why it ended. Cancel-safe: a dropped `recv` loses no item.
    pub async fn recv(&mut self) -> Result<Bytes, StableError> {
        Recv {
            core: &self.core,
            parked: false,
            local: &mut self.local,
        }
        .await
    }

    /// A snapshot of the session's counters.
    pub fn stats(&self) -> DriverStats {
        self.core.stats()
    }
}

impl Drop for StableReceiver {
    fn drop(&mut self) {
        let mut st = self.core.st();
        st.receiver_gone = true;
        st.stash.clear();
        st.app_reading = false;
        drop(st);
        self.core.wake_bg();
    }
}

/// One stable session, as the application sees it. See the [module docs](self).
pub struct StableConn {
    sender: StableSender,
    receiver: StableReceiver,
    events: Option<mpsc::Receiver<SessionEvent>>,
    core: Arc<Core>,
}

impl StableConn {
    /// Sends one item; see [`StableSender::send`].
    pub fn send<'a>(
        &'a self,
        item: impl Into<Bytes> + 'a,
    ) -> impl Future<Output = Result<(), StableError>> + 'a {
        // Not an `async fn` wrapping the sender's: that would hold the item twice and copy
        // the inner future into the outer one on every call.
        self.sender.send(item)
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
        self.core.stats()
    }

    /// Splits into independently usable halves (the session ends when both are dropped).
    pub fn split(self) -> (StableSender, StableReceiver) {
        (self.sender, self.receiver)
    }
}

fn new_conn(sess: Session, driver: &DriverConfig) -> (StableConn, Arc<Core>) {
    let (core, events) = Core::new(sess, driver);
    (
        StableConn {
            sender: StableSender { core: core.clone() },
            receiver: StableReceiver {
                core: core.clone(),
                local: None,
            },
            events: Some(events),
            core: core.clone(),
        },
        core,
    )
}

fn boxed_tx<T: LinkTx>(tx: T) -> Box<dyn DynTx> {
    Box::new(TxHalf(tx))
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
        let sess = Session::client(config)?;
        let (conn, core) = new_conn(sess, &driver);
        tokio::spawn(client_task(source, core));
        Ok(conn)
    }
}

/// The two halves of a link from a source.
type Halves<S> = (
    <<S as LinkSource>::Link as Link>::Tx,
    <<S as LinkSource>::Link as Link>::Rx,
);

/// Makes a link and runs the client handshake on it.
async fn client_handshake<S: LinkSource>(
    source: &mut S,
    core: &Core,
) -> Result<(Halves<S>, HandshakeOutcome), StableError> {
    let link = source.connect().await?;
    let (mut tx, mut rx) = link.split();
    let (hello, deadline) = {
        let mut st = core.st();
        let hello = st.sess.client_hello(now())?;
        let deadline = st
            .sess
            .poll_timeout()
            .ok_or(StableError::State("no handshake deadline"))?;
        (hello, deadline)
    };
    let exchange = async {
        send_bytes(&mut tx, &hello.to_bytes()).await?;
        match rx.recv().await? {
            Some(msg) => Ok(msg),
            None => Err(StableError::Link(LinkError::Closed)),
        }
    };
    let result = tokio::time::timeout_at(TokioInstant::from_std(deadline), exchange).await;
    let mut st = core.st();
    match result {
        Ok(Ok(msg)) => {
            let outcome = st.sess.handle_server_hello(now(), &msg)?;
            drop(st);
            Ok(((tx, rx), outcome))
        }
        Ok(Err(e)) => {
            st.sess.link_lost();
            Err(e)
        }
        Err(_) => {
            st.sess.handle_timeout(now().max(deadline))?;
            Err(StableError::HandshakeTimeout)
        }
    }
}

async fn client_task<S: LinkSource>(mut source: S, core: Arc<Core>) {
    let mut rng = SplitMix64::from_entropy();
    let (policy, mut established) = {
        let st = core.st();
        (st.sess.config().reconnect.clone(), st.sess.is_established())
    };
    let mut had_link = false;
    loop {
        // Get a link, with backoff. Items sent meanwhile wait in the replay buffer.
        let outage_start = now();
        let mut attempt: u32 = 0;
        let gen = loop {
            if had_link || attempt > 0 {
                let elapsed = now().saturating_duration_since(outage_start);
                let Some(delay) = policy.delay(attempt, elapsed, &mut rng) else {
                    return core.lose();
                };
                core.emit(SessionEvent::Reconnecting { attempt, delay });
                core.st().stats.reconnect_attempts += 1;
                // A zero delay must not wait for the next timer tick (about 1 ms).
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            attempt = attempt.saturating_add(1);
            match client_handshake(&mut source, &core).await {
                Ok(((tx, rx), outcome)) => {
                    established = true;
                    match outcome {
                        HandshakeOutcome::New => core.emit(SessionEvent::SessionUp),
                        HandshakeOutcome::Resumed { replayed } => {
                            core.emit(SessionEvent::Resumed { replayed })
                        }
                    }
                    match core.install(boxed_tx(tx), rx_stream(rx)) {
                        Some(gen) => break gen,
                        None => return,
                    }
                }
                Err(e @ (StableError::SessionLost { .. } | StableError::Refused { .. })) => {
                    return core.end(e)
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "stable client: link attempt failed");
                    if !had_link && !established && attempt == 1 {
                        // Still report the first failure so the application can see it.
                        core.emit(SessionEvent::LinkLost { reason: e });
                    }
                }
            }
        };
        had_link = true;
        match run_link::<()>(&core, gen, None).await {
            LinkEnd::Finished(tx) => {
                if let Some(tx) = tx {
                    let _ = tx.close().await;
                }
                return core.end(StableError::Closed);
            }
            LinkEnd::Failed(reason) => core.emit(SessionEvent::LinkLost { reason }),
            // The client passes no channel of newer links.
            LinkEnd::Superseded(()) => {}
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
    fn registry(&self) -> MutexGuard<'_, SessionRegistry<L>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn stats(&self) -> MutexGuard<'_, ServerStats> {
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
    /// New sessions refused because [`StableConfig::max_sessions`] were registered (the
    /// client was answered `rejected` and reports [`StableError::Refused`]). The actor
    /// registry (`actors::registry::StableRegistry`) also counts here the sessions it
    /// refused because the application's `on_session` callback panicked.
    pub refused: u64,
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
                    registry: Mutex::new(Registry::new(config.resume_grace, config.max_sessions)),
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
            // Drawn before the registry lock is taken: a system call.
            let key = ResumeKey::generate()?;
            let (relink_tx, relinks) = mpsc::channel(4);
            let inserted = inner.registry().insert(now(), key.clone(), relink_tx);
            let id = match inserted {
                Ok(id) => id,
                Err(StableError::TooManySessions { max }) => {
                    tracing::debug!(max, "stable server: session limit reached, refusing");
                    inner.stats().refused += 1;
                    send_bytes(&mut tx, &ServerHello::rejected().to_bytes()).await?;
                    let _ = tx.close().await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = send_bytes(&mut tx, &ServerHello::accept_new(&key).to_bytes()).await {
                inner.registry().remove(id);
                return Err(e.into());
            }
            let (conn, core) = new_conn(sess, &inner.driver);
            core.emit(SessionEvent::SessionUp);
            let Some(gen) = core.install(boxed_tx(tx), rx_stream(rx)) else {
                inner.registry().remove(id);
                return Err(StableError::Closed);
            };
            inner.stats().sessions += 1;
            tokio::spawn(server_task(inner.clone(), id, core, gen, relinks));
            if inner.new_sessions.send(conn).await.is_err() {
                tracing::debug!("stable server: nobody accepts new sessions");
            }
            Ok(())
        }
        Some(key) => {
            // Drawn before the registry lock is taken: a system call.
            let new_key = ResumeKey::generate()?;
            let routed = inner
                .registry()
                .resume(now(), &key, new_key)
                .map(|r| (r.value.clone(), r.new_key, r.link_number));
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
    Linked(u64),
    Waiting,
    Relinking(Relink<L>),
}

async fn server_task<L: Link>(
    inner: Arc<ServerInner<L>>,
    id: SessionId,
    core: Arc<Core>,
    gen: u64,
    mut relinks: mpsc::Receiver<Relink<L>>,
) {
    let grace = inner.config.resume_grace;
    let mut link_number = 1;
    let mut state = ServerState::<L>::Linked(gen);
    loop {
        state = match state {
            ServerState::Linked(gen) => match run_link(&core, gen, Some(&mut relinks)).await {
                LinkEnd::Finished(tx) => {
                    if let Some(tx) = tx {
                        let _ = tx.close().await;
                    }
                    inner.registry().remove(id);
                    return core.end(StableError::Closed);
                }
                LinkEnd::Superseded(relink) => {
                    core.emit(SessionEvent::LinkLost {
                        reason: StableError::Link(LinkError::Closed),
                    });
                    ServerState::Relinking(relink)
                }
                LinkEnd::Failed(reason) => {
                    core.emit(SessionEvent::LinkLost { reason });
                    inner.registry().link_lost(id, now(), link_number);
                    ServerState::Waiting
                }
            },
            ServerState::Waiting => {
                let deadline = TokioInstant::now() + grace;
                match tokio::time::timeout_at(deadline, relinks.recv()).await {
                    Ok(Some(relink)) => ServerState::Relinking(relink),
                    Ok(None) => {
                        // The registry dropped us (an expired lookup removed the entry).
                        return core.lose();
                    }
                    Err(_elapsed) => {
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
                            return core.lose();
                        }
                        ServerState::Waiting
                    }
                }
            }
            ServerState::Relinking(relink) => {
                let resumed = {
                    let mut st = core.st();
                    st.sess
                        .handle_resume(&relink.hello)
                        .map(|outcome| (outcome, st.sess.server_hello_resume(&relink.new_key)))
                };
                match resumed {
                    Ok((outcome, hello)) => {
                        link_number = relink.link_number;
                        let (mut tx, rx) = (relink.tx, relink.rx);
                        match send_bytes(&mut tx, &hello.to_bytes()).await {
                            Ok(()) => {
                                inner.stats().resumes += 1;
                                if let HandshakeOutcome::Resumed { replayed } = outcome {
                                    core.emit(SessionEvent::Resumed { replayed });
                                }
                                match core.install(boxed_tx(tx), rx_stream(rx)) {
                                    Some(gen) => ServerState::Linked(gen),
                                    None => return,
                                }
                            }
                            Err(e) => {
                                core.st().sess.link_lost();
                                core.emit(SessionEvent::LinkLost { reason: e.into() });
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
                        return core.lose();
                    }
                }
            }
        };
    }
}
