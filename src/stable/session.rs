//! [`Session`]: one side of a stable session, as a sans-IO state machine.
//!
//! # Driving it
//!
//! ```text
//!  client                                   server
//!  ------                                   ------
//!  new link ─► client_hello(now) ──msg──►   Accepting::handle_client_hello(now, msg)
//!                                           new:    Session::server(); accept_new(now);
//!                                                   send ServerHello::accept_new(key)
//!                                           resume: registry lookup; handle_resume(now, hello);
//!                                                   send server_hello_resume(new key)
//!  handle_server_hello(now, msg) ◄──msg──
//!  ── both sides, while the link is up ───────────────────────────────────────────────
//!  push(item) when can_accept(len)          (application sends)
//!  poll_transmit(now) → Transmit → write it into a link permit
//!    (or next_transmit_len(now) + transmit_into(now, slot): no intermediate copy)
//!  handle_frame(now, msg) → Received::Item / Received::Items → deliver to the application
//!  poll_timeout() → wake up then and call handle_timeout(now)
//!  link fails → link_lost(); the client reconnects and starts over with client_hello
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wire::{self, seq, BatchItems, ClientHello, Frame, ServerHello};
use super::{ResumeKey, StableConfig, StableError};

/// Which side of the handshake a session plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No link.
    Down,
    /// Client: hello sent on a fresh link, waiting for the server's.
    Handshaking { deadline: Instant },
    /// Frames flow.
    Up,
    /// Terminal: the session is gone.
    Lost,
}

/// What a successful handshake did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// A new session was established.
    New,
    /// An existing session was resumed; `replayed` unacknowledged items will be sent again,
    /// in order, before any new item.
    Resumed {
        /// Items queued for replay.
        replayed: usize,
    },
}

/// What [`Session::handle_frame`] found in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The next item in order: deliver it to the application.
    Item(Bytes),
    /// The next items in order, from a batch frame (at least one; any the receiver had
    /// already were dropped): deliver them all, in iteration order.
    Items(BatchItems),
    /// An item received before (its sequence number is behind): dropped.
    Duplicate {
        /// Its sequence number.
        seq: u32,
    },
    /// A standalone ack: nothing for the application.
    Ack,
}

/// One frame to write on the link, encoded: copy it into a slot of
/// [`len`](Transmit::len) bytes with [`write_to`](Transmit::write_to), or take the bytes with
/// [`into_vec`](Transmit::into_vec). ([`Session::transmit_into`] writes a frame straight into
/// a slot instead.)
#[derive(Debug, Clone)]
pub struct Transmit {
    frame: Vec<u8>,
    items: usize,
}

/// The next frame [`Session`] will hand out.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// The item at the cursor, alone in a data frame.
    Data,
    /// `n` items from the cursor on in a batch frame whose body (length prefixes included)
    /// is `body_len` bytes.
    Batch { n: usize, body_len: usize },
    /// A standalone ack.
    Ack,
}

impl Transmit {
    /// Length of the frame in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Items the frame carries (0 for an ack frame).
    pub fn items(&self) -> usize {
        self.items
    }

    /// Writes the frame into `out`, which must be exactly [`len`](Transmit::len) bytes.
    /// A slice of another length is left untouched and `false` is returned.
    pub fn write_to(&self, out: &mut [u8]) -> bool {
        if out.len() != self.len() {
            return false;
        }
        out.copy_from_slice(&self.frame);
        true
    }

    /// Whether this is a standalone ack frame.
    pub fn is_ack(&self) -> bool {
        self.frame[0] == wire::FRAME_ACK
    }

    /// The frame as one `Vec` (for tests and tools).
    pub fn to_vec(&self) -> Vec<u8> {
        self.frame.clone()
    }

    /// The frame's bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.frame
    }
}

/// Counters of a session, for diagnostics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Items accepted by [`Session::push`].
    pub items_pushed: u64,
    /// Data and batch frames handed out by [`Session::poll_transmit`] or written by
    /// [`Session::transmit_into`], replays included.
    pub data_frames_sent: u64,
    /// Items in those frames (replays included): above `data_frames_sent` when items were
    /// batched.
    pub items_sent: u64,
    /// Items queued for replay by resumes, summed over all resumes.
    pub items_replayed: u64,
    /// Standalone ack frames handed out.
    pub acks_sent: u64,
    /// Items delivered in order.
    pub items_received: u64,
    /// Duplicate items dropped.
    pub duplicates_dropped: u64,
    /// Successful resumes.
    pub resumes: u64,
    /// Most items the replay buffer ever held.
    pub replay_high_water_frames: usize,
    /// Most item bytes the replay buffer ever held.
    pub replay_high_water_bytes: usize,
}

/// One side of a stable session. See the [module docs](self) for how to drive it.
#[derive(Debug)]
pub struct Session {
    config: StableConfig,
    role: Role,
    phase: Phase,
    /// Client: the key to present at the next resume.
    key: Option<ResumeKey>,
    /// A handshake succeeded once: later links resume.
    established: bool,
    /// Sent, unacknowledged items; `replay[i]` has sequence number `peer_acked + 1 + i`.
    replay: VecDeque<Bytes>,
    replay_bytes: usize,
    /// Last of our sequence numbers the peer acknowledged.
    peer_acked: u32,
    /// `replay[..cursor]` has been transmitted on the current link.
    cursor: usize,
    /// Last sequence number received in order.
    rx_last: u32,
    /// Items received since we last sent an ack.
    rx_unacked: u32,
    /// Bytes of those items.
    rx_unacked_bytes: usize,
    /// When the oldest of those arrived.
    rx_unacked_since: Option<Instant>,
    /// Largest frame the session's links take, once one refused a batch (see
    /// [`Session::limit_batch`]).
    batch_cap: usize,
    stats: SessionStats,
}

impl Session {
    /// The client side of a new session. Fails if `config` is out of bounds.
    pub fn client(config: StableConfig) -> Result<Session, StableError> {
        Session::new(config, Role::Client)
    }

    /// The server side of a new session, created when a [`ClientHello`] without a resume
    /// key arrived. The session is up at once; answer with
    /// [`ServerHello::accept_new`] carrying the key under which the session was registered.
    pub fn server(config: StableConfig) -> Result<Session, StableError> {
        let mut s = Session::new(config, Role::Server)?;
        s.established = true;
        s.phase = Phase::Up;
        Ok(s)
    }

    fn new(config: StableConfig, role: Role) -> Result<Session, StableError> {
        config.validate()?;
        let before_first = config.initial_seq.wrapping_sub(1);
        Ok(Session {
            config,
            role,
            phase: Phase::Down,
            key: None,
            established: false,
            replay: VecDeque::new(),
            replay_bytes: 0,
            peer_acked: before_first,
            cursor: 0,
            rx_last: before_first,
            rx_unacked: 0,
            rx_unacked_bytes: 0,
            rx_unacked_since: None,
            batch_cap: usize::MAX,
            stats: SessionStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &StableConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Whether frames can flow (handshake done, link not lost).
    pub fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    /// Whether the session is lost for good.
    pub fn is_lost(&self) -> bool {
        self.phase == Phase::Lost
    }

    /// Whether a handshake has ever succeeded (so the next link resumes).
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Items sent and not yet acknowledged by the peer.
    pub fn unacked(&self) -> usize {
        self.replay.len()
    }

    /// Bytes of the items sent and not yet acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.replay_bytes
    }

    /// Items in the replay buffer not yet sent on the current link (all of them while the
    /// link is down).
    pub fn unsent(&self) -> usize {
        self.replay.len() - self.cursor
    }

    /// Sequence number the next pushed item will get.
    pub fn next_seq(&self) -> u32 {
        self.peer_acked
            .wrapping_add(1)
            .wrapping_add(self.replay.len() as u32)
    }

    /// Sequence number of the last item received in order.
    pub fn last_received(&self) -> u32 {
        self.rx_last
    }

    /// Items received in order and not yet acknowledged to the peer. While it is above
    /// zero, the `now` passed to [`handle_frame`](Session::handle_frame) is not used (the
    /// ack deadline runs from the oldest of them), so a driver may pass a recent cached
    /// time instead of reading the clock.
    pub fn received_unacked(&self) -> u32 {
        self.rx_unacked
    }

    // ---- sending -------------------------------------------------------------------

    /// Whether an item of `len` bytes fits in the replay buffer now. When it does not, the
    /// caller must wait (acks free room) — see [`push`](Session::push).
    pub fn can_accept(&self, len: usize) -> bool {
        self.phase != Phase::Lost
            && self.replay.len() < self.config.replay_max_frames
            && self.replay_bytes.saturating_add(len) <= self.config.replay_max_bytes
    }

    /// Checks that an item of `len` bytes could ever be sent.
    pub fn check_item_len(&self, len: usize) -> Result<(), StableError> {
        let max = self.config.effective_max_item();
        if len > max {
            return Err(StableError::ItemTooLarge { len, max });
        }
        Ok(())
    }

    /// Queues an item: it gets the next sequence number, enters the replay buffer, and is
    /// transmitted (now or, while the link is down, after the next resume). Returns its
    /// sequence number.
    ///
    /// Errors: [`StableError::SessionLost`] after the session was lost,
    /// [`StableError::ItemTooLarge`], and [`StableError::ReplayFull`] when
    /// [`can_accept`](Session::can_accept) is false (nothing is queued; retry after acks).
    pub fn push(&mut self, item: Bytes) -> Result<u32, StableError> {
        if self.phase == Phase::Lost {
            return Err(StableError::SessionLost {
                unacked: self.replay.len(),
            });
        }
        self.check_item_len(item.len())?;
        if !self.can_accept(item.len()) {
            return Err(StableError::ReplayFull);
        }
        let seq = self.next_seq();
        self.replay_bytes += item.len();
        self.replay.push_back(item);
        self.stats.items_pushed += 1;
        self.stats.replay_high_water_frames =
            self.stats.replay_high_water_frames.max(self.replay.len());
        self.stats.replay_high_water_bytes =
            self.stats.replay_high_water_bytes.max(self.replay_bytes);
        Ok(seq)
    }

    /// A standalone ack is due: after `ack_every` items, or once the items unacknowledged
    /// fill a quarter of the replay bounds (frames or bytes; the peer is assumed to use the
    /// same bounds, so its replay buffer never fills up waiting for a delayed ack), or
    /// `ack_delay` after the oldest of them.
    fn ack_due(&self, now: Instant) -> bool {
        self.rx_unacked > 0
            && (self.rx_unacked >= self.config.ack_every
                || self.rx_unacked as usize >= (self.config.replay_max_frames / 4).max(1)
                || self.rx_unacked_bytes >= (self.config.replay_max_bytes / 4).max(1)
                || self
                    .rx_unacked_since
                    .is_some_and(|t| now >= t + self.config.ack_delay))
    }

    /// Whether [`poll_transmit`](Session::poll_transmit) would return a frame now.
    pub fn has_transmit(&self, now: Instant) -> bool {
        self.phase == Phase::Up && (self.cursor < self.replay.len() || self.ack_due(now))
    }

    /// How many unsent items, from the cursor on, travel in the next frame, and the size of
    /// their batch body (length prefixes included). One item alone goes in a data frame.
    fn next_batch(&self) -> (usize, usize) {
        let max = self.config.effective_max_batch().min(self.batch_cap);
        let mut len = wire::BATCH_HEADER_LEN;
        let mut n = 0;
        for item in self.replay.range(self.cursor..) {
            let entry = wire::BATCH_ITEM_PREFIX + item.len();
            if n == wire::MAX_BATCH_ITEMS as usize || len.saturating_add(entry) > max {
                break;
            }
            len += entry;
            n += 1;
        }
        (n, len - wire::BATCH_HEADER_LEN)
    }

    /// The next frame to write on the link, if any: first every unacknowledged item not yet
    /// sent on this link (replays, then new items, in sequence order), carrying the current
    /// ack — consecutive items together in one batch frame up to
    /// [`StableConfig::max_batch_bytes`], an item alone in a data frame; otherwise a
    /// standalone ack if one is due.
    ///
    /// Call it once a link permit is held, and write the frame into that permit: a frame
    /// handed out counts as sent on this link.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let plan = self.plan_transmit(now)?;
        let mut frame = vec![0; self.frame_len(&plan)];
        let items = self.write_planned(&plan, &mut frame);
        Some(Transmit { frame, items })
    }

    /// Length in bytes of the frame [`poll_transmit`](Session::poll_transmit) (or
    /// [`transmit_into`](Session::transmit_into)) would hand out now, if any.
    pub fn next_transmit_len(&self, now: Instant) -> Option<usize> {
        self.plan_transmit(now).map(|plan| self.frame_len(&plan))
    }

    /// [`poll_transmit`](Session::poll_transmit) without the intermediate [`Transmit`]:
    /// writes the next frame straight into `out`, which must be exactly
    /// [`next_transmit_len`](Session::next_transmit_len) bytes (a link write slot), and
    /// counts it as sent. Returns `false`, writing and sending nothing, when no frame is due
    /// or `out` has another length.
    pub fn transmit_into(&mut self, now: Instant, out: &mut [u8]) -> bool {
        match self.plan_transmit(now) {
            Some(plan) if out.len() == self.frame_len(&plan) => {
                self.write_planned(&plan, out);
                true
            }
            _ => false,
        }
    }

    /// A link refused a frame: it takes at most `max_frame` bytes
    /// ([`LinkError::TooLarge`](crate::links::LinkError::TooLarge)). From now on batch
    /// frames stay within that size (for the rest of the session: its links are assumed to
    /// share a transport). Returns whether that changes anything, i.e. whether writing the
    /// next frame again is worth a try; `false` means the limit was known already — the
    /// refused frame was a single item too large for the link, and the link must fail.
    pub fn limit_batch(&mut self, max_frame: usize) -> bool {
        let before = self.batch_cap.min(self.config.effective_max_batch());
        self.batch_cap = self.batch_cap.min(max_frame);
        self.batch_cap < before
    }

    /// What the next frame is, if one is due.
    fn plan_transmit(&self, now: Instant) -> Option<Plan> {
        if self.phase != Phase::Up {
            return None;
        }
        if self.cursor < self.replay.len() {
            let (n, body_len) = self.next_batch();
            return Some(if n >= 2 {
                Plan::Batch { n, body_len }
            } else {
                Plan::Data
            });
        }
        self.ack_due(now).then_some(Plan::Ack)
    }

    /// Length in bytes of the planned frame.
    fn frame_len(&self, plan: &Plan) -> usize {
        match plan {
            Plan::Data => wire::DATA_HEADER_LEN + self.replay[self.cursor].len(),
            Plan::Batch { body_len, .. } => wire::BATCH_HEADER_LEN + body_len,
            Plan::Ack => wire::ACK_FRAME_LEN,
        }
    }

    /// Writes the planned frame into `out` (exactly [`frame_len`](Self::frame_len) bytes)
    /// and counts it as sent on this link: the cursor moves past its items, and the current
    /// ack went with it. Returns how many items it carried.
    fn write_planned(&mut self, plan: &Plan, out: &mut [u8]) -> usize {
        let seq = self
            .peer_acked
            .wrapping_add(1)
            .wrapping_add(self.cursor as u32);
        let n = match *plan {
            Plan::Data => {
                let (head, body) = out.split_at_mut(wire::DATA_HEADER_LEN);
                wire::put_data_header(head, seq, self.rx_last);
                body.copy_from_slice(&self.replay[self.cursor]);
                1
            }
            Plan::Batch { n, .. } => {
                let (head, mut rest) = out.split_at_mut(wire::BATCH_HEADER_LEN);
                wire::put_batch_header(head, seq, self.rx_last, n as u32);
                for item in self.replay.range(self.cursor..self.cursor + n) {
                    let (prefix, tail) = rest.split_at_mut(wire::BATCH_ITEM_PREFIX);
                    // A batch is at most `effective_max_batch` (below 4 GiB) long: each
                    // item length fits a u32.
                    prefix.copy_from_slice(&(item.len() as u32).to_le_bytes());
                    let (body, tail) = tail.split_at_mut(item.len());
                    body.copy_from_slice(item);
                    rest = tail;
                }
                n
            }
            Plan::Ack => {
                wire::put_ack_frame(out, self.rx_last);
                self.stats.acks_sent += 1;
                0
            }
        };
        self.rx_unacked = 0;
        self.rx_unacked_bytes = 0;
        self.rx_unacked_since = None;
        if n > 0 {
            self.cursor += n;
            self.stats.data_frames_sent += 1;
            self.stats.items_sent += n as u64;
        }
        n
    }

    // ---- receiving -----------------------------------------------------------------

    /// The peer acknowledged everything up to `ack`: free those replay entries.
    fn apply_ack(&mut self, ack: u32) -> Result<usize, StableError> {
        let d = seq::distance(self.peer_acked, ack) as usize;
        if d > self.replay.len() {
            return Err(StableError::Protocol(format!(
                "peer acknowledged sequence number {ack}, but only up to {} was sent \
                 and {} was already acknowledged",
                self.next_seq().wrapping_sub(1),
                self.peer_acked
            )));
        }
        for _ in 0..d {
            if let Some(item) = self.replay.pop_front() {
                self.replay_bytes -= item.len();
            }
        }
        self.peer_acked = ack;
        self.cursor = self.cursor.saturating_sub(d);
        Ok(d)
    }

    /// Handles one link message received while the session is up.
    ///
    /// Errors ([`StableError::Protocol`]: malformed frame, gap, ack of an item never sent)
    /// mean the link must be closed; call [`link_lost`](Session::link_lost). The session
    /// itself stays resumable: the next handshake resynchronises both sides.
    pub fn handle_frame(&mut self, now: Instant, msg: Bytes) -> Result<Received, StableError> {
        if self.phase != Phase::Up {
            return Err(StableError::State(
                "frame received while the session is not up",
            ));
        }
        match Frame::decode(msg)? {
            Frame::Ack { ack } => {
                self.apply_ack(ack)?;
                Ok(Received::Ack)
            }
            Frame::Data { seq: s, ack, item } => {
                self.apply_ack(ack)?;
                let expected = self.rx_last.wrapping_add(1);
                if s == expected {
                    self.rx_last = s;
                    self.rx_unacked = self.rx_unacked.saturating_add(1);
                    self.rx_unacked_bytes = self.rx_unacked_bytes.saturating_add(item.len());
                    self.rx_unacked_since.get_or_insert(now);
                    self.stats.items_received += 1;
                    Ok(Received::Item(item))
                } else if seq::lt(s, expected) {
                    self.stats.duplicates_dropped += 1;
                    Ok(Received::Duplicate { seq: s })
                } else {
                    Err(StableError::Protocol(format!(
                        "received sequence number {s}, expected {expected} (gap or frame \
                         from the future)"
                    )))
                }
            }
            Frame::Batch {
                first_seq,
                ack,
                mut items,
            } => {
                self.apply_ack(ack)?;
                let count = items.remaining();
                if count as usize > self.config.replay_max_frames {
                    // The peer's replay buffer holds at most that many items (both sides use
                    // the same bounds): a larger batch is not from a well-behaved peer, and
                    // expanding it could hold far more handles than the receiver allows.
                    return Err(StableError::Protocol(format!(
                        "batch of {count} items, more than the {} a replay buffer holds",
                        self.config.replay_max_frames
                    )));
                }
                let expected = self.rx_last.wrapping_add(1);
                // Items `first_seq .. expected` arrived before (a replay overlapping what we
                // had): drop them; a batch starting after `expected` leaves a gap.
                let dup = if first_seq == expected {
                    0
                } else if seq::lt(first_seq, expected) {
                    seq::distance(first_seq, expected)
                } else {
                    return Err(StableError::Protocol(format!(
                        "received a batch from sequence number {first_seq}, expected \
                         {expected} (gap or frame from the future)"
                    )));
                };
                if dup >= count {
                    self.stats.duplicates_dropped += u64::from(count);
                    return Ok(Received::Duplicate { seq: first_seq });
                }
                items.skip_items(dup);
                let fresh = count - dup;
                self.stats.duplicates_dropped += u64::from(dup);
                self.rx_last = first_seq.wrapping_add(count - 1);
                self.rx_unacked = self.rx_unacked.saturating_add(fresh);
                self.rx_unacked_bytes = self
                    .rx_unacked_bytes
                    .saturating_add(items.remaining_bytes());
                self.rx_unacked_since.get_or_insert(now);
                self.stats.items_received += u64::from(fresh);
                Ok(Received::Items(items))
            }
        }
    }

    // ---- timers --------------------------------------------------------------------

    /// When [`handle_timeout`](Session::handle_timeout) must next be called, if ever: the
    /// handshake deadline, or the moment a delayed standalone ack becomes due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Handshaking { deadline } => Some(deadline),
            Phase::Up if self.rx_unacked > 0 => {
                self.rx_unacked_since.map(|t| t + self.config.ack_delay)
            }
            _ => None,
        }
    }

    /// Advances timers. Fails with [`StableError::HandshakeTimeout`] (and returns to "no
    /// link") when the handshake deadline passed; the link must then be closed. A due ack
    /// is reported by [`has_transmit`](Session::has_transmit).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), StableError> {
        if let Phase::Handshaking { deadline } = self.phase {
            if now >= deadline {
                self.phase = Phase::Down;
                return Err(StableError::HandshakeTimeout);
            }
        }
        Ok(())
    }

    // ---- link lifecycle ------------------------------------------------------------

    /// The current link failed or was closed. Everything not acknowledged stays in the
    /// replay buffer for the next link.
    pub fn link_lost(&mut self) {
        if self.phase != Phase::Lost {
            self.phase = Phase::Down;
        }
        self.cursor = 0;
        self.rx_unacked = 0;
        self.rx_unacked_bytes = 0;
        self.rx_unacked_since = None;
    }

    /// Declares the session lost (for instance when reconnecting gave up) and returns the
    /// [`StableError::SessionLost`] to report.
    pub fn mark_lost(&mut self) -> StableError {
        self.phase = Phase::Lost;
        self.cursor = 0;
        StableError::SessionLost {
            unacked: self.replay.len(),
        }
    }

    /// Client: a fresh link is ready; returns the hello to send as its first message and
    /// starts the handshake deadline. Resumes when a previous handshake succeeded.
    pub fn client_hello(&mut self, now: Instant) -> Result<ClientHello, StableError> {
        if self.role != Role::Client {
            return Err(StableError::State("client_hello on a server session"));
        }
        if self.phase == Phase::Lost {
            return Err(StableError::SessionLost {
                unacked: self.replay.len(),
            });
        }
        self.link_lost();
        self.phase = Phase::Handshaking {
            deadline: now + self.config.handshake_timeout,
        };
        Ok(match (&self.key, self.established) {
            (Some(key), true) => ClientHello::resume(key, self.rx_last),
            _ => ClientHello::new_session(),
        })
    }

    /// Client: the server's hello arrived.
    ///
    /// * Accepted → the session is up; on a resume, replay starts with the first item the
    ///   server did not acknowledge.
    /// * Rejected → the session is lost: [`StableError::SessionLost`] with the number of
    ///   items never acknowledged; or, when no session had been established yet (the server
    ///   refused a new session), [`StableError::Refused`].
    /// * Malformed or inconsistent, or past the deadline → an error; the link must be
    ///   closed and the session returns to "no link" (it may reconnect).
    pub fn handle_server_hello(
        &mut self,
        now: Instant,
        msg: &[u8],
    ) -> Result<HandshakeOutcome, StableError> {
        let Phase::Handshaking { deadline } = self.phase else {
            return Err(StableError::State(
                "server hello while no handshake is in progress",
            ));
        };
        if now >= deadline {
            self.phase = Phase::Down;
            return Err(StableError::HandshakeTimeout);
        }
        let hello = match ServerHello::parse(msg) {
            Ok(h) => h,
            Err(e) => {
                self.phase = Phase::Down;
                return Err(e);
            }
        };
        if hello.is_rejected() {
            let lost = self.mark_lost();
            if !self.established {
                // No key was presented: the server refused to create the session.
                return Err(StableError::Refused {
                    unacked: self.replay.len(),
                });
            }
            return Err(lost);
        }
        let key = ResumeKey::from_bytes(hello.resume_key);
        if !self.established {
            if hello.has_last_received() {
                self.phase = Phase::Down;
                return Err(StableError::Protocol(
                    "server claims to resume a session the client never had".into(),
                ));
            }
            self.established = true;
            self.key = Some(key);
            self.phase = Phase::Up;
            return Ok(HandshakeOutcome::New);
        }
        if !hello.has_last_received() {
            // The server started a fresh session instead of resuming ours: never accept
            // that silently.
            return Err(self.mark_lost());
        }
        if let Err(e) = self.apply_ack(hello.last_received.get()) {
            self.phase = Phase::Down;
            return Err(e);
        }
        self.key = Some(key);
        self.cursor = 0;
        self.phase = Phase::Up;
        let replayed = self.replay.len();
        self.stats.resumes += 1;
        self.stats.items_replayed += replayed as u64;
        Ok(HandshakeOutcome::Resumed { replayed })
    }

    /// Server: a client resumes this session on a fresh link (the registry matched its
    /// key). Any previous link of the session is superseded: stop using it. Answer with
    /// [`server_hello_resume`](Session::server_hello_resume).
    pub fn handle_resume(&mut self, hello: &ClientHello) -> Result<HandshakeOutcome, StableError> {
        if self.role != Role::Server {
            return Err(StableError::State("handle_resume on a client session"));
        }
        if self.phase == Phase::Lost {
            return Err(StableError::SessionLost {
                unacked: self.replay.len(),
            });
        }
        if !hello.has_last_received() {
            return Err(StableError::Protocol("resume without last_received".into()));
        }
        self.link_lost();
        self.apply_ack(hello.last_received.get())?;
        self.phase = Phase::Up;
        let replayed = self.replay.len();
        self.stats.resumes += 1;
        self.stats.items_replayed += replayed as u64;
        Ok(HandshakeOutcome::Resumed { replayed })
    }

    /// Server: the hello accepting a resume, carrying the session's new `key`.
    pub fn server_hello_resume(&self, key: &ResumeKey) -> ServerHello {
        ServerHello::accept_resume(key, self.rx_last)
    }
}

/// The server's handshake deadline on a fresh link: the client must send its hello within
/// [`StableConfig::handshake_timeout`].
#[derive(Debug, Clone)]
pub struct Accepting {
    deadline: Instant,
}

impl Accepting {
    /// A fresh link arrived at `now`.
    pub fn new(now: Instant, config: &StableConfig) -> Accepting {
        Accepting {
            deadline: now + config.handshake_timeout,
        }
    }

    /// When the handshake times out.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }

    /// Fails with [`StableError::HandshakeTimeout`] once the deadline passed.
    pub fn handle_timeout(&self, now: Instant) -> Result<(), StableError> {
        if now >= self.deadline {
            Err(StableError::HandshakeTimeout)
        } else {
            Ok(())
        }
    }

    /// The client's first message arrived: parse and validate it.
    pub fn handle_client_hello(
        &self,
        now: Instant,
        msg: &[u8],
    ) -> Result<ClientHello, StableError> {
        self.handle_timeout(now)?;
        ClientHello::parse(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> StableConfig {
        StableConfig {
            ack_every: 4,
            ack_delay: Duration::from_millis(10),
            replay_max_frames: 8,
            replay_max_bytes: 1000,
            ..Default::default()
        }
    }

    /// A client and a server connected by two in-memory queues (one "link").
    struct Pair {
        now: Instant,
        c: Session,
        s: Session,
        key: ResumeKey,
        c2s: VecDeque<Bytes>,
        s2c: VecDeque<Bytes>,
        got_c: Vec<Bytes>,
        got_s: Vec<Bytes>,
    }

    impl Pair {
        fn new(config: StableConfig) -> Pair {
            let now = Instant::now();
            let mut c = Session::client(config.clone()).unwrap();
            let hello = c.client_hello(now).unwrap();
            let acc = Accepting::new(now, &config);
            let hello = acc.handle_client_hello(now, &hello.to_bytes()).unwrap();
            assert!(hello.resume_key().is_none());
            let s = Session::server(config).unwrap();
            let key = ResumeKey::generate().unwrap();
            let out = c
                .handle_server_hello(now, &ServerHello::accept_new(&key).to_bytes())
                .unwrap();
            assert_eq!(out, HandshakeOutcome::New);
            Pair {
                now,
                c,
                s,
                key,
                c2s: VecDeque::new(),
                s2c: VecDeque::new(),
                got_c: vec![],
                got_s: vec![],
            }
        }

        /// Moves every frame both ways until nothing is left to do (acks included when due).
        fn pump(&mut self) {
            loop {
                let mut moved = false;
                while let Some(t) = self.c.poll_transmit(self.now) {
                    self.c2s.push_back(Bytes::from(t.to_vec()));
                    moved = true;
                }
                while let Some(t) = self.s.poll_transmit(self.now) {
                    self.s2c.push_back(Bytes::from(t.to_vec()));
                    moved = true;
                }
                while let Some(m) = self.c2s.pop_front() {
                    let r = self.s.handle_frame(self.now, m).unwrap();
                    self.got_s.extend(delivered(r));
                    moved = true;
                }
                while let Some(m) = self.s2c.pop_front() {
                    let r = self.c.handle_frame(self.now, m).unwrap();
                    self.got_c.extend(delivered(r));
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
        }

        fn cut_and_resume(&mut self) -> (HandshakeOutcome, HandshakeOutcome) {
            self.c2s.clear();
            self.s2c.clear();
            self.c.link_lost();
            self.s.link_lost();
            let hello = self.c.client_hello(self.now).unwrap();
            let hello = ClientHello::parse(&hello.to_bytes()).unwrap();
            assert!(hello.resume_key().unwrap().ct_eq(&self.key));
            let so = self.s.handle_resume(&hello).unwrap();
            self.key = ResumeKey::generate().unwrap();
            let reply = self.s.server_hello_resume(&self.key).to_bytes();
            let co = self.c.handle_server_hello(self.now, &reply).unwrap();
            (co, so)
        }
    }

    fn item(i: u32) -> Bytes {
        Bytes::from(i.to_le_bytes().to_vec())
    }

    /// The items a received frame hands to the application.
    fn delivered(r: Received) -> Vec<Bytes> {
        match r {
            Received::Item(b) => vec![b],
            Received::Items(items) => items.collect(),
            Received::Duplicate { .. } | Received::Ack => vec![],
        }
    }

    #[test]
    fn delivers_in_order_and_acks_drain_replay() {
        let mut p = Pair::new(cfg());
        for i in 0..5 {
            p.c.push(item(i)).unwrap();
        }
        p.pump();
        assert_eq!(p.got_s, (0..5).map(item).collect::<Vec<_>>());
        // 5 >= ack_every items arrived: one standalone ack for all of them.
        assert_eq!(p.c.unacked(), 0);
        assert_eq!(p.s.stats().acks_sent, 1);
        // One more item waits for the ack delay.
        p.c.push(item(5)).unwrap();
        p.pump();
        assert_eq!(p.c.unacked(), 1);
        assert_eq!(p.s.poll_timeout(), Some(p.now + Duration::from_millis(10)));
        p.now += Duration::from_millis(10);
        p.pump();
        assert_eq!(p.c.unacked(), 0);
        assert_eq!(p.c.unacked_bytes(), 0);
        assert_eq!(p.s.stats().acks_sent, 2);
    }

    #[test]
    fn large_items_are_acked_before_the_sender_fills_up() {
        // cfg(): replay_max_bytes 1000, replay_max_frames 8, ack_every 4.
        let mut p = Pair::new(cfg());
        p.c.push(Bytes::from(vec![1; 300])).unwrap();
        let t = p.c.poll_transmit(p.now).unwrap();
        p.s.handle_frame(p.now, Bytes::from(t.to_vec())).unwrap();
        // 300 bytes ≥ a quarter of the byte bound: due now, not after ack_delay.
        assert!(p.s.has_transmit(p.now));
        assert!(p.s.poll_transmit(p.now).unwrap().is_ack());
        // Two small items are a quarter of the frame bound (8 / 4), below ack_every.
        for _ in 0..2 {
            p.c.push(item(0)).unwrap();
            let t = p.c.poll_transmit(p.now).unwrap();
            assert!(!p.s.has_transmit(p.now));
            p.s.handle_frame(p.now, Bytes::from(t.to_vec())).unwrap();
        }
        assert!(p.s.poll_transmit(p.now).unwrap().is_ack());
        assert_eq!(p.s.received_unacked(), 0);
    }

    #[test]
    fn piggybacked_acks() {
        let mut p = Pair::new(cfg());
        p.c.push(item(1)).unwrap();
        p.pump();
        p.s.push(item(2)).unwrap();
        p.pump();
        assert_eq!(p.c.unacked(), 0, "server's data frame carried the ack");
        assert_eq!(p.s.stats().acks_sent, 0);
    }

    #[test]
    fn replay_is_bounded_and_backpressures() {
        let mut p = Pair::new(cfg());
        p.c.link_lost();
        p.s.link_lost();
        for i in 0..8 {
            assert!(p.c.can_accept(4));
            p.c.push(item(i)).unwrap();
        }
        assert!(!p.c.can_accept(4));
        assert!(matches!(p.c.push(item(9)), Err(StableError::ReplayFull)));
        assert_eq!(p.c.unacked(), 8, "nothing dropped, nothing added");
        assert!(matches!(
            p.c.push(Bytes::from(vec![0; 1001])),
            Err(StableError::ItemTooLarge {
                len: 1001,
                max: 1000
            })
        ));
        let (co, _) = p.cut_and_resume();
        assert_eq!(co, HandshakeOutcome::Resumed { replayed: 8 });
        p.pump();
        p.now += Duration::from_secs(1);
        p.pump();
        assert_eq!(p.got_s, (0..8).map(item).collect::<Vec<_>>());
        assert!(p.c.can_accept(4));
    }

    #[test]
    fn byte_bound() {
        let mut p = Pair::new(cfg());
        p.c.push(Bytes::from(vec![1; 600])).unwrap();
        assert!(!p.c.can_accept(401));
        assert!(p.c.can_accept(400));
    }

    #[test]
    fn resume_replays_exactly_the_unacked_in_order_before_new() {
        let mut p = Pair::new(cfg());
        for i in 0..3 {
            p.c.push(item(i)).unwrap();
        }
        p.pump(); // delivered, not yet acked (3 < ack_every)
        p.c.push(item(3)).unwrap();
        p.c.push(item(4)).unwrap();
        // Item 3 is transmitted but lost in flight; item 4 never transmitted.
        let t = p.c.poll_transmit(p.now).unwrap();
        drop(t);
        let (co, so) = p.cut_and_resume();
        // The server had received 0..3: only 3 and 4 are replayed.
        assert_eq!(co, HandshakeOutcome::Resumed { replayed: 2 });
        assert_eq!(so, HandshakeOutcome::Resumed { replayed: 0 });
        p.c.push(item(5)).unwrap();
        p.pump();
        assert_eq!(p.got_s, (0..6).map(item).collect::<Vec<_>>());
        assert_eq!(p.c.stats().resumes, 1);
    }

    /// `cfg()` with one item per frame (no batch frames).
    fn unbatched() -> StableConfig {
        StableConfig {
            max_batch_bytes: 0,
            ..cfg()
        }
    }

    #[test]
    fn three_resumes_in_a_row() {
        let mut p = Pair::new(unbatched());
        let mut n = 0;
        for round in 0..3 {
            for _ in 0..3 {
                p.c.push(item(n)).unwrap();
                p.s.push(item(n + 1000)).unwrap();
                n += 1;
            }
            // Deliver only the first frame each way, then cut.
            let t = p.c.poll_transmit(p.now).unwrap();
            match p.s.handle_frame(p.now, Bytes::from(t.to_vec())).unwrap() {
                Received::Item(b) => p.got_s.push(b),
                other => panic!("{other:?}"),
            }
            let (co, so) = p.cut_and_resume();
            assert!(
                matches!(co, HandshakeOutcome::Resumed { .. }),
                "round {round}"
            );
            assert!(matches!(so, HandshakeOutcome::Resumed { .. }));
            p.pump();
        }
        p.now += Duration::from_secs(1);
        p.pump();
        assert_eq!(p.got_s.len(), 9);
        assert_eq!(p.got_c, (1000..1009).map(item).collect::<Vec<_>>());
        assert_eq!(p.c.stats().resumes, 3);
        assert_eq!(p.c.unacked() + p.s.unacked(), 0);
    }

    #[test]
    fn duplicates_dropped_gaps_and_bad_acks_are_errors() {
        let mut p = Pair::new(unbatched());
        p.c.push(item(0)).unwrap();
        p.c.push(item(1)).unwrap();
        let f0 = Bytes::from(p.c.poll_transmit(p.now).unwrap().to_vec());
        let f1 = Bytes::from(p.c.poll_transmit(p.now).unwrap().to_vec());
        assert!(matches!(
            p.s.handle_frame(p.now, f0.clone()),
            Ok(Received::Item(_))
        ));
        assert_eq!(
            p.s.handle_frame(p.now, f0).unwrap(),
            Received::Duplicate { seq: 1 }
        );
        assert_eq!(p.s.stats().duplicates_dropped, 1);
        // A gap: frame seq 3 when 2 is expected.
        let mut gap = f1.to_vec();
        gap[1..5].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            p.s.handle_frame(p.now, Bytes::from(gap)),
            Err(StableError::Protocol(_))
        ));
        // An ack of an item the client never sent.
        let mut ack = [0u8; wire::ACK_FRAME_LEN];
        wire::put_ack_frame(&mut ack, 5);
        assert!(matches!(
            p.c.handle_frame(p.now, Bytes::copy_from_slice(&ack)),
            Err(StableError::Protocol(_))
        ));
        assert!(matches!(
            p.c.handle_frame(p.now, Bytes::from_static(&[7, 7])),
            Err(StableError::Protocol(_))
        ));
    }

    #[test]
    fn rejected_resume_is_session_lost_with_unacked() {
        let mut p = Pair::new(cfg());
        for i in 0..5 {
            p.c.push(item(i)).unwrap();
        }
        p.c.link_lost();
        let hello = p.c.client_hello(p.now).unwrap();
        assert!(hello.has_resume_key());
        let err =
            p.c.handle_server_hello(p.now, &ServerHello::rejected().to_bytes())
                .unwrap_err();
        assert!(matches!(err, StableError::SessionLost { unacked: 5 }));
        assert!(p.c.is_lost());
        assert!(matches!(
            p.c.push(item(9)),
            Err(StableError::SessionLost { unacked: 5 })
        ));
        assert!(matches!(
            p.c.client_hello(p.now),
            Err(StableError::SessionLost { .. })
        ));
    }

    #[test]
    fn rejected_new_session_is_refused() {
        let now = Instant::now();
        let mut c = Session::client(cfg()).unwrap();
        c.push(item(0)).unwrap();
        c.client_hello(now).unwrap();
        let err = c
            .handle_server_hello(now, &ServerHello::rejected().to_bytes())
            .unwrap_err();
        assert!(matches!(err, StableError::Refused { unacked: 1 }), "{err}");
        assert!(c.is_lost());
        assert!(c.client_hello(now).is_err(), "no retry after a refusal");
    }

    #[test]
    fn fresh_server_hello_on_resume_is_session_lost() {
        let mut p = Pair::new(cfg());
        p.c.push(item(0)).unwrap();
        p.c.client_hello(p.now).unwrap();
        let key = ResumeKey::generate().unwrap();
        let err =
            p.c.handle_server_hello(p.now, &ServerHello::accept_new(&key).to_bytes())
                .unwrap_err();
        assert!(matches!(err, StableError::SessionLost { unacked: 1 }));
    }

    #[test]
    fn handshake_timeouts_and_garbage() {
        let config = cfg();
        let now = Instant::now();
        let mut c = Session::client(config.clone()).unwrap();
        c.client_hello(now).unwrap();
        assert_eq!(c.poll_timeout(), Some(now + config.handshake_timeout));
        c.handle_timeout(now).unwrap();
        assert!(matches!(
            c.handle_timeout(now + config.handshake_timeout),
            Err(StableError::HandshakeTimeout)
        ));
        assert!(!c.is_up() && !c.is_lost());
        // Garbage in place of the server hello: clear error, back to no link.
        c.client_hello(now).unwrap();
        for garbage in [&b""[..], &b"TTSS"[..], &[0xFF; 28][..], &[0; 1000][..]] {
            assert!(c.handle_server_hello(now, garbage).is_err());
            assert!(!c.is_up());
            c.client_hello(now).unwrap();
        }
        let acc = Accepting::new(now, &config);
        assert!(matches!(
            acc.handle_client_hello(
                now + config.handshake_timeout,
                &ClientHello::new_session().to_bytes()
            ),
            Err(StableError::HandshakeTimeout)
        ));
        assert!(acc.handle_client_hello(now, b"GET / HTTP/1.1\r\n").is_err());
    }

    #[test]
    fn pending_items_travel_in_batches_within_the_bound() {
        // 4-byte items: a batch entry is 8 bytes, so 13 + 3 * 8 = 37 fits three.
        let mut p = Pair::new(StableConfig {
            max_batch_bytes: 37,
            ..cfg()
        });
        for i in 0..7 {
            p.c.push(item(i)).unwrap();
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| p.c.poll_transmit(p.now))
            .map(|t| {
                let n = t.items();
                p.c2s.push_back(Bytes::from(t.to_vec()));
                n
            })
            .collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        assert_eq!(p.c.stats().data_frames_sent, 3);
        assert_eq!(p.c.stats().items_sent, 7);
        // The lone last item went in a plain data frame.
        assert_eq!(p.c2s[2][0], wire::FRAME_DATA);
        assert_eq!(p.c2s[0][0], wire::FRAME_BATCH);
        p.pump();
        assert_eq!(p.got_s, (0..7).map(item).collect::<Vec<_>>());
        assert_eq!(p.c.unacked(), 0);
        // An item too large for a batch goes alone; smaller ones around it still batch.
        let big = Bytes::from(vec![9u8; 100]);
        for b in [item(7), big.clone(), item(8), item(9)] {
            p.c.push(b).unwrap();
        }
        let counts: Vec<usize> = std::iter::from_fn(|| p.c.poll_transmit(p.now))
            .map(|t| t.items())
            .collect();
        assert_eq!(counts, vec![1, 1, 2]);
    }

    #[test]
    fn a_link_limit_shrinks_batches_and_oversized_batches_are_refused() {
        let mut p = Pair::new(cfg());
        for i in 0..6 {
            p.c.push(item(i)).unwrap();
        }
        assert_eq!(p.c.next_transmit_len(p.now), Some(13 + 6 * 8));
        // The link takes 40 bytes at most: three items per batch, and a second identical
        // limit changes nothing.
        assert!(p.c.limit_batch(40));
        assert!(!p.c.limit_batch(40));
        assert_eq!(p.c.next_transmit_len(p.now), Some(13 + 3 * 8));
        let mut out = vec![0u8; 37];
        assert!(
            !p.c.transmit_into(p.now, &mut out[..36]),
            "wrong length: nothing sent"
        );
        assert!(p.c.transmit_into(p.now, &mut out));
        assert_eq!(p.c.stats().items_sent, 3);
        let got = delivered(p.s.handle_frame(p.now, Bytes::from(out)).unwrap());
        assert_eq!(got, (0..3).map(item).collect::<Vec<_>>());
        // More items in one batch than a replay buffer holds (8 here): refused.
        let mut huge = vec![0u8; wire::BATCH_HEADER_LEN];
        wire::put_batch_header(&mut huge, 4, 0, 9);
        huge.extend_from_slice(&[0u8; 9 * wire::BATCH_ITEM_PREFIX]);
        assert!(matches!(
            p.s.handle_frame(p.now, Bytes::from(huge)),
            Err(StableError::Protocol(_))
        ));
    }

    #[test]
    fn batches_drop_a_duplicate_prefix_and_refuse_gaps() {
        let mut p = Pair::new(cfg());
        for i in 0..3 {
            p.c.push(item(i)).unwrap();
        }
        let batch = Bytes::from(p.c.poll_transmit(p.now).unwrap().to_vec());
        assert_eq!(batch[0], wire::FRAME_BATCH);
        // The first item arrived before on its own (seq 1).
        let mut single = vec![0u8; wire::DATA_HEADER_LEN + 4];
        wire::put_data_header(&mut single, 1, 0);
        single[wire::DATA_HEADER_LEN..].copy_from_slice(&item(0));
        assert!(matches!(
            p.s.handle_frame(p.now, Bytes::from(single)),
            Ok(Received::Item(_))
        ));
        let got = delivered(p.s.handle_frame(p.now, batch.clone()).unwrap());
        assert_eq!(got, vec![item(1), item(2)]);
        assert_eq!(p.s.stats().duplicates_dropped, 1);
        assert_eq!(p.s.stats().items_received, 3);
        assert_eq!(p.s.last_received(), 3);
        // The whole batch again: all duplicates.
        assert_eq!(
            p.s.handle_frame(p.now, batch.clone()).unwrap(),
            Received::Duplicate { seq: 1 }
        );
        assert_eq!(p.s.stats().duplicates_dropped, 4);
        // A batch starting past the next expected number leaves a gap.
        let mut gap = batch.to_vec();
        gap[1..5].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(
            p.s.handle_frame(p.now, Bytes::from(gap)),
            Err(StableError::Protocol(_))
        ));
        // A batch acknowledging an item never sent is refused like a data frame.
        let mut bad_ack = batch.to_vec();
        bad_ack[5..9].copy_from_slice(&50u32.to_le_bytes());
        assert!(matches!(
            p.c.handle_frame(p.now, Bytes::from(bad_ack)),
            Err(StableError::Protocol(_))
        ));
    }

    #[test]
    fn sequence_wrap_around() {
        let config = StableConfig {
            initial_seq: u32::MAX - 3,
            ..cfg()
        };
        let mut p = Pair::new(config);
        let mut sent = 0;
        for _ in 0..4 {
            for _ in 0..3 {
                p.c.push(item(sent)).unwrap();
                p.s.push(item(sent)).unwrap();
                sent += 1;
            }
            p.pump();
            p.cut_and_resume();
        }
        p.now += Duration::from_secs(1);
        p.pump();
        assert_eq!(p.got_s, (0..sent).map(item).collect::<Vec<_>>());
        assert_eq!(p.got_c, (0..sent).map(item).collect::<Vec<_>>());
        assert!(p.c.next_seq() < 100, "counter wrapped: {}", p.c.next_seq());
        assert_eq!(p.s.last_received(), (u32::MAX - 4).wrapping_add(sent));
    }

    mod model {
        //! Property test: two sessions over a lossy "link" (cut at random points, in-flight
        //! frames lost, resumes in between) deliver every item exactly once, in order, and
        //! never exceed their replay bounds.
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            PushC,
            PushS,
            /// Deliver up to n frames client→server.
            DeliverC2S(u8),
            DeliverS2C(u8),
            TransmitC,
            TransmitS,
            Tick(u8),
            Cut,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => Just(Op::PushC),
                3 => Just(Op::PushS),
                3 => (1u8..8).prop_map(Op::DeliverC2S),
                3 => (1u8..8).prop_map(Op::DeliverS2C),
                3 => Just(Op::TransmitC),
                3 => Just(Op::TransmitS),
                1 => (1u8..20).prop_map(Op::Tick),
                1 => Just(Op::Cut),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn exactly_once_in_order(
                ops in proptest::collection::vec(op(), 1..300),
                start in prop_oneof![Just(1u32), Just(u32::MAX - 20), any::<u32>()],
                // No batches, batches of two 4-byte items, or of up to ten.
                batch in prop_oneof![Just(0usize), Just(30usize), 30usize..100],
            ) {
                let config = StableConfig { initial_seq: start, max_batch_bytes: batch, ..cfg() };
                let mut p = Pair::new(config);
                let (mut next_c, mut next_s) = (0u32, 0u32);
                let mut want_s: Vec<Bytes> = vec![];
                let mut want_c: Vec<Bytes> = vec![];
                for op in ops {
                    match op {
                        Op::PushC => if p.c.can_accept(4) {
                            p.c.push(item(next_c)).unwrap(); want_s.push(item(next_c)); next_c += 1;
                        },
                        Op::PushS => if p.s.can_accept(4) {
                            p.s.push(item(next_s)).unwrap(); want_c.push(item(next_s)); next_s += 1;
                        },
                        Op::TransmitC => if let Some(t) = p.c.poll_transmit(p.now) { p.c2s.push_back(Bytes::from(t.to_vec())); },
                        Op::TransmitS => if let Some(t) = p.s.poll_transmit(p.now) { p.s2c.push_back(Bytes::from(t.to_vec())); },
                        Op::DeliverC2S(n) => for _ in 0..n {
                            if let Some(m) = p.c2s.pop_front() {
                                let r = p.s.handle_frame(p.now, m).unwrap();
                                p.got_s.extend(delivered(r));
                            }
                        },
                        Op::DeliverS2C(n) => for _ in 0..n {
                            if let Some(m) = p.s2c.pop_front() {
                                let r = p.c.handle_frame(p.now, m).unwrap();
                                p.got_c.extend(delivered(r));
                            }
                        },
                        Op::Tick(ms) => p.now += Duration::from_millis(ms as u64),
                        Op::Cut => { p.cut_and_resume(); },
                    }
                    prop_assert!(p.c.unacked() <= 8 && p.s.unacked() <= 8);
                    prop_assert!(want_s.starts_with(&p.got_s));
                    prop_assert!(want_c.starts_with(&p.got_c));
                }
                p.now += Duration::from_secs(1);
                p.pump();
                p.now += Duration::from_secs(1);
                p.pump();
                prop_assert_eq!(&p.got_s, &want_s);
                prop_assert_eq!(&p.got_c, &want_c);
                prop_assert_eq!(p.c.unacked() + p.s.unacked(), 0);
            }
        }
    }
}
