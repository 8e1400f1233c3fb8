//! [`ShmLink`]: a [`Link`] between two peers (threads or processes) sharing one
//! [`Segment`].
//!
//! # Structure
//!
//! Side A (the creator) and side B each own one direction:
//!
//! ```text
//!        ring A→B + slab A→B   ──►   data-ready A→B (doorbell), rung by A, waited on by B
//!   A                                space-ready A→B (doorbell), rung by B, waited on by A  B
//!        ring B→A + slab B→A   ◄──   (and the same pair for B→A)
//!        liveness socketpair   ───   EOF when every descriptor of the other end is closed
//! ```
//!
//! Each doorbell is a socket pair (see [`super::doorbell`]): each side holds only its own
//! ends — the notifying end of the doorbells it rings, the waiting end of those it waits on
//! — so neither side can block, drain or otherwise tamper with the other's descriptors.
//!
//! # Sending
//!
//! [`LinkTx::reserve`] waits until the ring has room for one inline frame of `inline_max`
//! bytes **and** a slab slot is free, and holds both: the [`Permit`] owns a ring grant and
//! the slab (only this half takes slots, so the free slot stays free). [`Permit::alloc`]
//! then picks: a payload of at most `inline_max` bytes is written in the ring itself, a
//! larger one (up to `slot_size`) straight into a slab slot — the one written last if it is
//! free again, else the most recently released one: still in cache — so the codec serializes
//! into shared memory, no copy, and the ring
//! carries an 8-byte reference to it. Anything larger is refused with
//! [`LinkError::TooLarge`] naming `slot_size`. Commit publishes the frame and, only if the
//! receiver is parked, rings its data-ready doorbell.
//!
//! # Receiving
//!
//! `recv` copies an inline payload out of the ring into an allocation of its own (small;
//! the ring space is released at once, and published to the sender in batches of a
//! sixteenth of the ring or when the ring is found empty) and hands a slab payload out **zero-copy**: a [`Bytes`] over the slot, which goes
//! back to the sender when the last clone of the `Bytes` is dropped. So that a receiver that
//! keeps many messages alive cannot starve the sender of slots, a slab payload is copied
//! (and its slot released at once) when `max_held_slots` zero-copy messages are already
//! alive (with `max_held_slots: 0`, as the hub uses for untrusted guests, every slab payload
//! is copied out with a raw copy that never forms a reference to the peer-writable slot).
//! `recv` is cancel-safe: a frame is consumed only within a single poll.
//!
//! # Waiting
//!
//! A half that finds nothing to do follows its [`IdleStrategy`]: it may spin (re-checking
//! shared memory, never sleeping or yielding), then parks: it sets its parked flag in
//! shared memory, re-checks, and awaits its doorbell through tokio's `AsyncFd` together with
//! the liveness socket. The notifier rings the doorbell only when the flag is set, so a busy
//! link makes no system call per message. A doorbell whose notifying end is closed (the
//! peer's half is gone) wakes its waiter once, then fails the wait.
//!
//! # Closing and peer death
//!
//! * `close()` or dropping the [`ShmTx`] sets this direction's `producer_closed` flag in the
//!   control region and rings the peer: the peer receives every committed message, then
//!   `Ok(None)`. (Everything committed is already in shared memory; nothing to flush.)
//! * Dropping the [`ShmRx`] sets `consumer_closed`: the peer's `reserve` fails with
//!   [`LinkError::Closed`].
//! * If the peer's process dies (or drops both halves without the flags being seen), the
//!   liveness socket reports end-of-file at once: a waiting `recv` returns the messages
//!   still in the ring and then [`LinkError::Io`] (`ConnectionAborted`); a waiting
//!   `reserve` fails with [`LinkError::Closed`]. A half that is not waiting learns of the
//!   death from its sibling half or at its next wait; a sender never waits forever on a dead
//!   peer (once the ring or the slab is full it waits, and the wait watches the socket).
//!
//! # Two processes
//!
//! [`ShmLink::create_for_child`] returns the parent's link and a [`ChildHandoff`] that spawns
//! the child with the segment, its ends of the four doorbells and its liveness end
//! inherited (the parent keeps only its own ends); the child
//! calls [`ShmLink::from_env`]. See [`ChildHandoff::spawn`] for why the descriptors are
//! made inheritable with `pre_exec` (race-free) rather than by clearing close-on-exec in the
//! parent.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::doorbell::{self, fd_is_open, Doorbell, DoorbellWaiter, Liveness};
use super::layout::{LayoutParams, RegionId, CONTROL_LEN};
use super::ring::{self, FrameKind, Grant, ReadFrame, RingConsumer, RingProducer};
use super::segment::Segment;
use super::slab::{SlabConfig, SlabReceiver, SlabSender, SlabSlot};
use super::{Region, ShmError};
use crate::links::{Link, LinkError, LinkRx, LinkTx, Permit, WriteSlot};

/// The environment variable through which [`ChildHandoff::spawn`] tells the child which
/// inherited descriptors to use. Format: `2 <segment> <data A→B> <space A→B> <data B→A>
/// <space B→A> <liveness>` (decimal descriptor numbers, separated by spaces; the four
/// doorbells are the child's ends: waiting, notifying, notifying, waiting). Version 1
/// passed shared eventfds and is refused.
pub const HANDOFF_ENV: &str = "ACTIX_TETHER_SHM";

/// Default spin time of [`IdleStrategy::SpinThenPark`]: 50 µs, about half a thread wake-up
/// on the machines this was measured on, and several cross-core round trips.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// Upper bound on one spin of [`IdleStrategy::BusySpin`] (and of any configured spin): 2 ms.
pub const MAX_SPIN: Duration = Duration::from_millis(2);

/// What a link half does when it has to wait (for a message, or for room to send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdleStrategy {
    /// Park at once: set the parked flag and await the doorbell. Lowest CPU use; every wait
    /// costs a thread wake-up (tens to hundreds of µs).
    Park,
    /// Re-check shared memory in a tight loop for a bounded time, then park. The default
    /// (with [`DEFAULT_SPIN`]). While spinning, the task holds its executor thread: other
    /// tasks on that thread wait up to `spin` (up to twice that for a payload of 256 KiB or
    /// more, whose `alloc` may also spin briefly for the slab slot written last).
    ///
    /// The spin adapts between `spin / 64` and `spin` (capped at [`MAX_SPIN`]): it halves
    /// after each spin that ended in a park, from the fourth such in a row on (a few late
    /// messages do not shrink it), and doubles after one that found work; after 16
    /// parks in a row one wait probes with the full spin. On an oversubscribed machine (the
    /// peer cannot run while we spin, e.g. both share a core) a fixed spin would add the
    /// whole spin time to every wait; the adaptive one falls back to almost parking at
    /// once, and returns to full spins when they pay off again.
    SpinThenPark {
        /// How long to spin before parking.
        spin: Duration,
    },
    /// Spin for up to [`MAX_SPIN`] per wait before parking — for a half that runs on a
    /// dedicated core (its own single-threaded runtime), where burning the core buys the
    /// lowest latency. It is still bounded: an async task must not hold an executor thread
    /// forever, so an idle link parks after [`MAX_SPIN`] and the next message pays one
    /// wake-up. Never use it on a shared executor thread.
    BusySpin,
}

impl Default for IdleStrategy {
    fn default() -> Self {
        IdleStrategy::SpinThenPark { spin: DEFAULT_SPIN }
    }
}

impl IdleStrategy {
    fn spin_time(self) -> Duration {
        match self {
            IdleStrategy::Park => Duration::ZERO,
            IdleStrategy::SpinThenPark { spin } => spin.min(MAX_SPIN),
            IdleStrategy::BusySpin => MAX_SPIN,
        }
    }
}

/// Configuration of a [`ShmLink`].
///
/// The segment fields (`ring_capacity`, `slot_size`, `slot_count`) are fixed by the side
/// that creates the segment; an attaching side reads them from the segment header and uses
/// only its own local fields (`inline_max`, `max_held_slots`, `idle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmConfig {
    /// Data bytes of each ring (one per direction). A power of two from 64 B to 2 GiB.
    /// Default 256 KiB.
    pub ring_capacity: usize,
    /// Largest payload sent inline in the ring, in bytes; larger payloads go to the slab.
    /// At most `ring_capacity / 2 - 8` and at most `slot_size`. Default 4 KiB. Each
    /// `reserve` holds `inline_max + 8` bytes of ring.
    pub inline_max: usize,
    /// Size of each slab slot in bytes: the largest message the link carries. A multiple of
    /// 64, at most 2 GiB. Default 1 MiB.
    pub slot_size: usize,
    /// Slots per slab (one slab per direction), 1 to 65536. Default 16. With the defaults a
    /// segment is about 33 MiB of address space; memory is used only for pages touched.
    pub slot_count: u32,
    /// How many zero-copy slab messages the receiver lets the application hold at once
    /// before it copies further ones out of the slab (so that held messages never block the
    /// sender). Default 8; values above `slot_count - 1` are clamped to it. 0 copies every
    /// slab payload: use it when the peer is not trusted, since a zero-copy `Bytes` lets the
    /// peer's process rewrite bytes the application is reading (the [`Hub`](super::hub)
    /// does this by default).
    pub max_held_slots: usize,
    /// What a waiting half does. Default [`IdleStrategy::SpinThenPark`] for
    /// [`DEFAULT_SPIN`].
    pub idle: IdleStrategy,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            ring_capacity: 256 * 1024,
            inline_max: 4096,
            slot_size: 1024 * 1024,
            slot_count: 16,
            max_held_slots: 8,
            idle: IdleStrategy::default(),
        }
    }
}

impl ShmConfig {
    fn layout_params(&self) -> LayoutParams {
        LayoutParams {
            ring_capacity: self.ring_capacity as u64,
            slot_size: self.slot_size as u64,
            slot_count: u64::from(self.slot_count),
        }
    }

    /// Checks the local fields against the segment's parameters.
    fn check_local(&self, params: &LayoutParams) -> Result<(), ShmError> {
        let ring_max = ring::ring_max_inline(params.ring_capacity as usize);
        if self.inline_max > ring_max || self.inline_max as u64 > params.slot_size {
            return Err(ShmError::InvalidConfig(format!(
                "inline_max {} must be at most {ring_max} (ring_capacity / 2 - 8) and at most \
                 slot_size {}",
                self.inline_max, params.slot_size
            )));
        }
        Ok(())
    }
}

/// Which end of the segment a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// Per-direction flags in the control region: `producer_closed` and `consumer_closed`, each
/// on its own cache line; direction A→B first, then B→A.
const DIR_CONTROL_LEN: usize = 128;
const _: () = assert!(2 * DIR_CONTROL_LEN as u64 <= CONTROL_LEN);

/// The control flags of one direction.
#[derive(Debug, Clone)]
struct Control {
    region: Region,
    dir: usize,
}

impl Control {
    fn flag(&self, which: usize) -> &AtomicU32 {
        debug_assert!(self.dir < 2 && which < 2);
        let offset = self.dir * DIR_CONTROL_LEN + which * 64;
        // SAFETY: `dir` is 0 or 1 (set from `Side` in `build`) and `which` is 0 or 1 (the two
        // callers below), so `offset <= DIR_CONTROL_LEN + 64` and `offset + 4 <=
        // 2 * DIR_CONTROL_LEN <= CONTROL_LEN` (const-asserted), the control region's length
        // (checked by the segment's layout validation); regions are 64-aligned (a Region
        // invariant) and `offset` is a multiple of 64, so the pointer is 4-aligned; the memory lives
        // as long as `self.region`; it is only ever accessed atomically (by both processes),
        // and any bit pattern is a valid u32.
        #[allow(unsafe_code)]
        unsafe {
            AtomicU32::from_ptr(self.region.as_ptr().add(offset).cast::<u32>())
        }
    }

    fn producer_closed(&self) -> &AtomicU32 {
        self.flag(0)
    }

    fn consumer_closed(&self) -> &AtomicU32 {
        self.flag(1)
    }
}

#[inline]
fn link_err(e: ShmError) -> LinkError {
    match e {
        ShmError::Corrupt(s) => LinkError::Corrupt(s),
        ShmError::TooLarge { len, max } => LinkError::TooLarge { len, max },
        other => LinkError::Io(Arc::new(io::Error::other(other))),
    }
}

fn peer_died() -> LinkError {
    LinkError::from(io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "shared-memory peer went away without closing the link",
    ))
}

/// Raised by a link half that finds its shared state corrupt (the hub watches it to fail the
/// guest with `Corrupt`). Set once; `notify_one` stores a permit if nobody waits yet.
#[derive(Debug, Default)]
pub(crate) struct Fault {
    corrupt: AtomicBool,
    pub(crate) notify: tokio::sync::Notify,
}

impl Fault {
    fn raise(&self, e: &LinkError) {
        if matches!(e, LinkError::Corrupt(_)) && !self.corrupt.swap(true, Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }

    /// Whether a half reported corruption.
    pub(crate) fn is_corrupt(&self) -> bool {
        self.corrupt.load(Ordering::Relaxed)
    }
}

/// What the hub keeps about the hub side of a guest's link (see `ShmLink::hub_side`).
pub(crate) struct HubSide {
    /// The segment (its descriptor goes to the guest).
    pub(crate) segment: Arc<Segment>,
    /// The guest's ends of the four doorbells, in handoff order (data A→B, space A→B,
    /// data B→A, space B→A). The hub sends them with the welcome and must then close them:
    /// it keeps only its own ends.
    pub(crate) bells: Vec<OwnedFd>,
    /// The hub's receiving slab: `held()` says whether the application still pins slots.
    pub(crate) slab: SlabReceiver,
    /// Raised when a half of the hub's link finds the guest's state corrupt.
    pub(crate) fault: Arc<Fault>,
    control: Control,
}

impl HubSide {
    /// Whether the guest closed its sending direction (its `ShmTx` was dropped): a guest
    /// whose connection ends after this left cleanly.
    pub(crate) fn guest_closed(&self) -> bool {
        // Acquire: pairs with the Release store in `ShmTx::drop` of the guest.
        self.control.producer_closed().load(Ordering::Acquire) != 0
    }
}

/// One side's ends of the four doorbells of a link, in handoff order. Side A holds the
/// notifying ends of data A→B and space B→A and the waiting ends of space A→B and data
/// B→A; side B the other ends.
struct Bells {
    data_ab: OwnedFd,
    space_ab: OwnedFd,
    data_ba: OwnedFd,
    space_ba: OwnedFd,
}

impl Bells {
    /// Four new doorbells: side A's ends and side B's ends.
    fn pairs() -> io::Result<(Bells, Bells)> {
        // (notifier, waiter) of each doorbell.
        let (data_ab_n, data_ab_w) = doorbell::pair()?;
        let (space_ab_n, space_ab_w) = doorbell::pair()?;
        let (data_ba_n, data_ba_w) = doorbell::pair()?;
        let (space_ba_n, space_ba_w) = doorbell::pair()?;
        let a = Bells {
            data_ab: data_ab_n,
            space_ab: space_ab_w,
            data_ba: data_ba_w,
            space_ba: space_ba_n,
        };
        let b = Bells {
            data_ab: data_ab_w,
            space_ab: space_ab_n,
            data_ba: data_ba_n,
            space_ba: space_ba_w,
        };
        Ok((a, b))
    }

    /// From descriptors in handoff order (at least four; the first four are taken).
    fn from_iter(fds: &mut impl Iterator<Item = OwnedFd>) -> Result<Bells, ShmError> {
        let mut next = || {
            fds.next()
                .ok_or_else(|| ShmError::BadHandoff("doorbell descriptor missing".into()))
        };
        Ok(Bells {
            data_ab: next()?,
            space_ab: next()?,
            data_ba: next()?,
            space_ba: next()?,
        })
    }

    fn into_vec(self) -> Vec<OwnedFd> {
        vec![self.data_ab, self.space_ab, self.data_ba, self.space_ba]
    }

    /// Wraps `side`'s ends, checking each is a doorbell socket: (notifier of our sending
    /// direction's data-ready, waiter of its space-ready, waiter of our receiving
    /// direction's data-ready, notifier of its space-ready).
    fn wrap(
        self,
        side: Side,
    ) -> Result<(Doorbell, DoorbellWaiter, DoorbellWaiter, Doorbell), ShmError> {
        let bad = |what: &str, e: io::Error| ShmError::BadHandoff(format!("doorbell {what}: {e}"));
        let notifier = |fd, what| Doorbell::from_fd(fd).map_err(|e| bad(what, e));
        let waiter = |fd, what| DoorbellWaiter::from_fd(fd).map_err(|e| bad(what, e));
        let Bells {
            data_ab,
            space_ab,
            data_ba,
            space_ba,
        } = self;
        Ok(match side {
            Side::A => (
                notifier(data_ab, "data A→B")?,
                waiter(space_ab, "space A→B")?,
                waiter(data_ba, "data B→A")?,
                notifier(space_ba, "space B→A")?,
            ),
            Side::B => (
                notifier(data_ba, "data B→A")?,
                waiter(space_ba, "space B→A")?,
                waiter(data_ab, "data A→B")?,
                notifier(space_ab, "space A→B")?,
            ),
        })
    }
}

/// The space-ready notifier of a receiving half. Its waiter belongs to the peer's sending
/// half; once that half is gone nobody needs waking, and the receiver must still deliver
/// the frames left in the ring (then the close, or the error the liveness socket reports),
/// so a closed waiting end is not an error here.
#[derive(Debug)]
struct SpaceBell(Doorbell);

impl SpaceBell {
    fn ring(&self) -> Result<(), LinkError> {
        match self.0.ring() {
            Err(LinkError::Closed) => Ok(()),
            other => other,
        }
    }
}

/// A shared-memory link. See the [module docs](self).
///
/// ```
/// use actix_tether::links::{send_bytes, Link, LinkRx};
/// use actix_tether::shm::link::ShmLink;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (a, b) = ShmLink::pair(Default::default())?;
/// let (mut atx, _arx) = a.split();
/// let (_btx, mut brx) = b.split();
/// send_bytes(&mut atx, b"hello").await?;
/// assert_eq!(brx.recv().await?.as_deref(), Some(&b"hello"[..]));
/// # Ok(()) }
/// ```
pub struct ShmLink {
    tx: ShmTx,
    rx: ShmRx,
}

impl std::fmt::Debug for ShmLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmLink").finish_non_exhaustive()
    }
}

/// Creates a segment for `config` and initialises both rings.
fn create_segment(config: &ShmConfig) -> Result<Arc<Segment>, ShmError> {
    let params = config.layout_params();
    config.check_local(&params)?;
    let seg = Arc::new(Segment::create(params)?);
    for id in [RegionId::RingAtoB, RegionId::RingBtoA] {
        ring::init(&seg.region(id)?, config.ring_capacity)?;
    }
    // Each slab is initialised by its sender when it builds its link half (before it can
    // send anything through it).
    Ok(seg)
}

impl ShmLink {
    /// Two connected links in this process (for threads or tasks of one process, and tests).
    pub fn pair(config: ShmConfig) -> Result<(ShmLink, ShmLink), ShmError> {
        ShmLink::pair_with_segment(config).map(|(a, b, _)| (a, b))
    }

    fn pair_with_segment(config: ShmConfig) -> Result<(ShmLink, ShmLink, Arc<Segment>), ShmError> {
        let seg = create_segment(&config)?;
        let (bells, bells_b) = Bells::pairs().map_err(super::segment::io_err("socketpair"))?;
        let (live_a, live_b) = Liveness::pair().map_err(super::segment::io_err("socketpair"))?;
        let a = ShmLink::build(seg.clone(), Side::A, bells, live_a, &config, None)?;
        let b = ShmLink::build(seg.clone(), Side::B, bells_b, live_b, &config, None)?;
        Ok((a, b, seg))
    }

    /// The parent's side of a link to a child process, and the [`ChildHandoff`] that spawns
    /// the child with the other side.
    pub fn create_for_child(config: ShmConfig) -> Result<(ShmLink, ChildHandoff), ShmError> {
        let seg = create_segment(&config)?;
        let (bells, child_bells) = Bells::pairs().map_err(super::segment::io_err("socketpair"))?;
        let (live_a, live_b) = Liveness::pair().map_err(super::segment::io_err("socketpair"))?;
        let dup = |fd: std::os::fd::BorrowedFd<'_>| dup_above_stdio(fd.as_raw_fd());
        // The child's own ends, renumbered above stdio; the originals close here, so the
        // parent keeps only its own ends.
        let mut fds = vec![dup(seg.fd())];
        fds.extend(child_bells.into_vec().iter().map(|fd| dup(fd.as_fd())));
        fds.push(dup_above_stdio(live_b.raw_fd()));
        let handoff = ChildHandoff {
            fds: fds
                .into_iter()
                .collect::<io::Result<Vec<OwnedFd>>>()
                .map_err(super::segment::io_err("dup"))?,
        };
        drop(live_b);
        let link = ShmLink::build(seg, Side::A, bells, live_a, &config, None)?;
        Ok((link, handoff))
    }

    /// The child's side of a link set up by [`ChildHandoff::spawn`] in the parent.
    ///
    /// Reads [`HANDOFF_ENV`], takes ownership of the descriptors it names (marking them
    /// close-on-exec again), validates the segment and attaches as side B. The segment's
    /// geometry comes from its header; of `config` only the local fields (`inline_max`,
    /// `max_held_slots`, `idle`) are used. Succeeds at most once per process: the
    /// descriptors are owned by the first link built from them.
    pub fn from_env(config: ShmConfig) -> Result<ShmLink, ShmError> {
        static TAKEN: AtomicBool = AtomicBool::new(false);
        let var = std::env::var(HANDOFF_ENV)
            .map_err(|_| ShmError::BadHandoff(format!("{HANDOFF_ENV} is not set")))?;
        let fds = parse_handoff(&var)?;
        // AcqRel: the swap is the only access to `TAKEN`; it pairs with itself (the Release
        // half of the winning swap with the Acquire half of any later one), so a second
        // caller that loses sees the winner's claim. No other data is published through it:
        // Relaxed would do, AcqRel documents the claim.
        if TAKEN.swap(true, Ordering::AcqRel) {
            return Err(ShmError::BadHandoff(
                "the handed-off descriptors were already taken by this process".into(),
            ));
        }
        let owned: Vec<OwnedFd> = fds
            .iter()
            .map(|&fd| {
                // SAFETY: the handoff protocol transfers ownership of these descriptors to
                // this process: they were inherited from the parent for this purpose, are
                // open (checked by `parse_handoff`), are pairwise distinct (checked too), and
                // are taken at most once per process (the `TAKEN` flag above).
                #[allow(unsafe_code)]
                unsafe {
                    OwnedFd::from_raw_fd(fd)
                }
            })
            .collect();
        let mut it = owned.into_iter();
        let missing = || ShmError::BadHandoff("descriptor missing".into());
        let seg = Arc::new(Segment::attach_fd(it.next().ok_or_else(missing)?)?);
        let bells = Bells::from_iter(&mut it)?;
        let live = Liveness::from_fd(it.next().ok_or_else(missing)?)
            .map_err(|e| ShmError::BadHandoff(format!("liveness socket: {e}")))?;
        ShmLink::build(seg, Side::B, bells, live, &config, None)
    }

    /// The hub's side (A) of a new guest's link: a fresh segment and doorbells; `liveness`
    /// is (a duplicate of) the guest's bootstrap connection.
    pub(crate) fn hub_side(
        config: &ShmConfig,
        liveness: Liveness,
    ) -> Result<(ShmLink, HubSide), ShmError> {
        let seg = create_segment(config)?;
        let (bells, guest_bells) = Bells::pairs().map_err(super::segment::io_err("socketpair"))?;
        let fault = Arc::new(Fault::default());
        let link = ShmLink::build(
            seg.clone(),
            Side::A,
            bells,
            liveness,
            config,
            Some(fault.clone()),
        )?;
        let side = HubSide {
            segment: seg,
            bells: guest_bells.into_vec(),
            slab: link.rx.slab.clone(),
            fault,
            control: Control {
                region: link.rx.control.region.clone(),
                dir: 1,
            },
        };
        Ok((link, side))
    }

    /// A guest's side (B) of a hub link from the descriptors the bootstrap delivered, in
    /// order: segment, then the guest's ends of data A→B, space A→B, data B→A, space B→A
    /// (each checked to be an `AF_UNIX` stream socket). `liveness` is the bootstrap
    /// connection.
    pub(crate) fn guest_side(
        fds: Vec<OwnedFd>,
        liveness: Liveness,
        config: &ShmConfig,
    ) -> Result<ShmLink, ShmError> {
        if fds.len() != 5 {
            return Err(ShmError::BadHandoff(format!(
                "expected 5 descriptors, got {}",
                fds.len()
            )));
        }
        let mut it = fds.into_iter();
        let seg = it
            .next()
            .ok_or_else(|| ShmError::BadHandoff("descriptor missing".into()))?;
        let seg = Arc::new(Segment::attach_fd(seg)?);
        let bells = Bells::from_iter(&mut it)?;
        ShmLink::build(seg, Side::B, bells, liveness, config, None)
    }

    fn build(
        seg: Arc<Segment>,
        side: Side,
        bells: Bells,
        liveness: Liveness,
        config: &ShmConfig,
        fault: Option<Arc<Fault>>,
    ) -> Result<ShmLink, ShmError> {
        let params = seg.layout().params();
        config.check_local(&params)?;
        let capacity = params.ring_capacity as usize;
        let slab_cfg = SlabConfig {
            slot_count: params.slot_count as u32,
            slot_size: params.slot_size as usize,
        };
        let (tx_ring, rx_ring, tx_slab, rx_slab, tx_dir, rx_dir) = match side {
            Side::A => (
                RegionId::RingAtoB,
                RegionId::RingBtoA,
                RegionId::SlabAtoB,
                RegionId::SlabBtoA,
                0,
                1,
            ),
            Side::B => (
                RegionId::RingBtoA,
                RegionId::RingAtoB,
                RegionId::SlabBtoA,
                RegionId::SlabAtoB,
                1,
                0,
            ),
        };
        // (ring to wake the peer's receiver, wait for space) for our sending direction;
        // (wait for data, ring to wake the peer's sender) for our receiving direction.
        let (tx_data, tx_space, rx_data, rx_space) = bells.wrap(side)?;
        let control = seg.region(RegionId::Control)?;
        let peer_gone = Arc::new(AtomicBool::new(false));
        let rx_space = Arc::new(SpaceBell(rx_space));
        let slab = SlabReceiver::attach(seg.region(rx_slab)?, slab_cfg)?;
        let notifier = rx_space.clone();
        slab.set_release_notifier(Arc::new(move || {
            // A failed ring cannot be reported from a drop; the sender's next wait still
            // watches the liveness socket, so nothing hangs on it.
            let _ = notifier.ring();
        }));
        let tx = ShmTx {
            ring: RingProducer::attach(seg.region(tx_ring)?, capacity)?,
            slab: SlabSender::init(seg.region(tx_slab)?, slab_cfg)?,
            data_ready: tx_data,
            space_ready: tx_space,
            liveness: liveness
                .try_clone()
                .map_err(super::segment::io_err("dup"))?,
            control: Control {
                region: control.clone(),
                dir: tx_dir,
            },
            peer_gone: peer_gone.clone(),
            inline_max: config.inline_max,
            spinner: Spinner::new(config.idle),
            hot_slot: HotSlot::new(config.idle),
            error: None,
            fault: fault.clone(),
        };
        let rx = ShmRx {
            ring: {
                let mut ring = RingConsumer::attach(seg.region(rx_ring)?, capacity)?;
                ring.set_release_batch(capacity / RELEASE_BATCH_DIVISOR);
                ring
            },
            slab,
            data_ready: rx_data,
            space_ready: rx_space,
            liveness,
            control: Control {
                region: control,
                dir: rx_dir,
            },
            peer_gone,
            max_held: config
                .max_held_slots
                .min((params.slot_count as usize).saturating_sub(1)),
            spinner: Spinner::new(config.idle),
            done: None,
            fault,
        };
        Ok(ShmLink { tx, rx })
    }
}

impl Link for ShmLink {
    type Tx = ShmTx;
    type Rx = ShmRx;

    fn split(self) -> (ShmTx, ShmRx) {
        (self.tx, self.rx)
    }
}

/// The spin budget of one link half (see [`IdleStrategy::SpinThenPark`]).
#[derive(Debug, Clone, Copy)]
struct Spinner {
    idle: IdleStrategy,
    max: Duration,
    current: Duration,
    /// Waits in a row that ended in a park.
    misses: u32,
}

/// After this many parks in a row, one wait spins for the full time again (a probe), so
/// that the budget recovers when spinning starts to pay off again. Was 64: a 1 MiB stream
/// that had collapsed to parking then spent 64 messages parked before it recovered. At 16 a
/// fully oversubscribed link wastes about two full spins per 16 waits (the probe, then the
/// halving spins after it).
const SPIN_PROBE_EVERY: u32 = 16;

/// The adaptive spin shrinks from the fourth park in a row on: a few waits that outlasted
/// the spin (hiccups of the peer) must not halve it, or a stream whose messages arrive at a
/// good fraction of the spin time (1 MiB payloads: 35 µs each on the Intel host, against the
/// 50 µs default) collapses to parking on every message. With 2 (the earlier value) the
/// receiver of such a stream parked for 8–12 % of its messages (`ring_probe` SLAB=16 IDLE=50,
/// 2026-12-05), with 4 (and a probe every 16 parks) for 2–4 %.
const SPIN_SHRINK_AFTER: u32 = 4;

/// The adaptive spin never drops below `spin / SPIN_FLOOR_DIVISOR`.
const SPIN_FLOOR_DIVISOR: u32 = 64;

impl Spinner {
    fn new(idle: IdleStrategy) -> Spinner {
        let max = idle.spin_time();
        Spinner {
            idle,
            max,
            current: max,
            misses: 0,
        }
    }

    /// How long the next wait may spin.
    fn budget(&self) -> Duration {
        self.current
    }

    /// Adapts the budget after a spin that found work (`true`) or ended in a park.
    fn record(&mut self, found: bool) {
        if let IdleStrategy::SpinThenPark { .. } = self.idle {
            if found {
                self.misses = 0;
                self.current = (self.current * 2).min(self.max);
            } else {
                self.misses = self.misses.wrapping_add(1);
                if self.misses % SPIN_PROBE_EVERY == 0 {
                    self.current = self.max;
                } else if self.misses >= SPIN_SHRINK_AFTER {
                    self.current = (self.current / 2).max(self.max / SPIN_FLOOR_DIVISOR);
                }
            }
        }
    }
}

/// Re-checks shared memory in a tight, bounded loop (no sleep, no yield): `Ok(true)` as soon
/// as `check` reports progress, `Ok(false)` once `spin` has elapsed without it.
fn spin_until(
    spin: Duration,
    mut check: impl FnMut() -> Result<bool, LinkError>,
) -> Result<bool, LinkError> {
    if spin.is_zero() {
        return Ok(false);
    }
    let start = Instant::now();
    loop {
        for _ in 0..32 {
            if check()? {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= spin {
            return Ok(false);
        }
    }
}

/// Payloads from this size on wait briefly for the slab slot the sender wrote last (see
/// [`HotSlot`]): 256 KiB. On the 2 MiB L2 measured, a copy into two alternating buffers
/// against one ran at 1.00× at 256 KiB, 0.93× at 512 KiB, 0.75× at 768 KiB and 0.72× at
/// 1 MiB; on the common L2 sizes of 512 KiB–1 MiB the effect starts lower, and the wait
/// costs at most 1 µs here against an 8 µs copy.
const HOT_SLOT_MIN: usize = 256 * 1024;

/// How long a large payload may wait for the sender's last slot: one nanosecond per 256
/// bytes of payload (4 µs at 1 MiB, about a tenth of the copy itself).
const HOT_SLOT_WAIT_BYTES_PER_NS: u64 = 256;

/// After a wait for the last slot timed out (the receiver holds its messages), this many
/// large payloads take whatever slot is free without waiting.
const HOT_SLOT_BACKOFF: u32 = 4;

/// The sender's policy for large payloads: prefer the slab slot it wrote last.
///
/// A receiver that drops each message soon frees the slot the sender just filled while the
/// sender starts the next message; taking another free slot then makes the sender alternate
/// between two slots, and at 1 MiB the source plus two slots no longer fit in a 2 MiB L2
/// cache: a copy into alternating buffers ran at 71 % of a copy into one (`bench/`, 2026-12-05).
/// So a payload of at least [`HOT_SLOT_MIN`] first spins, for at most one nanosecond per 256
/// bytes and at most the idle strategy's spin time, until that slot is free again. A
/// receiver that keeps messages makes the wait time out; the next [`HOT_SLOT_BACKOFF`]
/// large payloads then do not wait. Never under [`IdleStrategy::Park`] (no spinning at all).
///
/// Kept this simple on purpose: capping the wait by the adaptive spin budget and skipping
/// it while the receiver is parked (both tried) made the inline send path of every small
/// message 10–12 ns slower (23 → 35 ns per send, `SAME=1 ring_probe`: the extra state and
/// argument changed how `alloc` was compiled), for no gain measurable at 1 MiB.
#[derive(Debug, Clone, Copy)]
struct HotSlot {
    /// The idle strategy's spin time (zero for [`IdleStrategy::Park`]): a cap on the wait.
    max: Duration,
    /// Large payloads left to send without waiting.
    skip: u32,
}

impl HotSlot {
    fn new(idle: IdleStrategy) -> HotSlot {
        HotSlot {
            max: idle.spin_time(),
            skip: 0,
        }
    }

    /// Before acquiring a slot for `len` bytes: waits (bounded) for the last slot.
    fn wait(&mut self, slab: &mut SlabSender, len: usize) -> Result<(), LinkError> {
        if len < HOT_SLOT_MIN || self.max.is_zero() {
            return Ok(());
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(());
        }
        let budget = Duration::from_nanos(len as u64 / HOT_SLOT_WAIT_BYTES_PER_NS).min(self.max);
        let freed = spin_until(budget, || {
            slab.newest_in_flight().map(|busy| !busy).map_err(link_err)
        })?;
        if !freed {
            self.skip = HOT_SLOT_BACKOFF;
        }
        Ok(())
    }
}

/// Sending half of a [`ShmLink`].
pub struct ShmTx {
    ring: RingProducer,
    slab: SlabSender,
    /// Rung (only when the receiver is parked) after a commit.
    data_ready: Doorbell,
    /// Awaited when there is no room.
    space_ready: DoorbellWaiter,
    liveness: Liveness,
    control: Control,
    /// Set by either half of this side when the liveness socket reported the peer gone.
    peer_gone: Arc<AtomicBool>,
    inline_max: usize,
    spinner: Spinner,
    hot_slot: HotSlot,
    /// Sticky error.
    error: Option<LinkError>,
    /// Hub side only: told about corruption.
    fault: Option<Arc<Fault>>,
}

impl std::fmt::Debug for ShmTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmTx")
            .field("inline_max", &self.inline_max)
            .field("idle", &self.spinner.idle)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl ShmTx {
    /// Whether a frame grant and a slot are both available now (takes neither).
    #[inline]
    fn ready(&mut self) -> Result<bool, LinkError> {
        // Acquire: pairs with the Release store in `ShmRx::drop`; nothing is read after it,
        // but it keeps the check ordered before our own later loads of the ring.
        if self.control.consumer_closed().load(Ordering::Acquire) != 0 {
            return Err(LinkError::Closed);
        }
        if self.peer_gone.load(Ordering::Relaxed) {
            return Err(LinkError::Closed);
        }
        if self
            .ring
            .try_grant(self.inline_max)
            .map_err(link_err)?
            .is_none()
        {
            return Ok(false);
        }
        self.slab.has_free().map_err(link_err)
    }

    /// Waits until [`ready`](Self::ready): checks, spins for the budget, then parks.
    ///
    /// The parking part is boxed, so that the future of `reserve` stays a few words long:
    /// a large future is copied into place on every call, which cost more than the rest of
    /// a send (a park costs a system call and a wake-up anyway).
    #[inline]
    async fn wait_ready(&mut self) -> Result<(), LinkError> {
        if self.ready()? {
            return Ok(());
        }
        let found = spin_until(self.spinner.budget(), || self.ready())?;
        self.spinner.record(found);
        if found {
            return Ok(());
        }
        Box::pin(self.park_until_ready()).await
    }

    /// The parking part of [`wait_ready`](Self::wait_ready).
    async fn park_until_ready(&mut self) -> Result<(), LinkError> {
        loop {
            // Announce the park on whichever resource is missing, then re-check.
            let ring_room = self
                .ring
                .try_grant(self.inline_max)
                .map_err(link_err)?
                .is_some();
            let sleep = if !ring_room {
                self.ring.prepare_park(self.inline_max).map_err(link_err)?
            } else {
                self.slab.prepare_park().map_err(link_err)?
            };
            if sleep {
                tokio::select! {
                    r = self.space_ready.wait() => r?,
                    r = self.liveness.gone() => {
                        r?;
                        self.peer_gone.store(true, Ordering::Relaxed);
                    }
                }
                // Withdraw the announcement (`prepare_park` already did when it said no).
                if ring_room {
                    self.slab.unpark();
                } else {
                    self.ring.unpark();
                }
            }
            if self.ready()? {
                return Ok(());
            }
        }
    }
}

impl Drop for ShmTx {
    fn drop(&mut self) {
        // Release: pairs with the Acquire load in `ShmRx::recv_inner`, so every frame
        // committed before is visible to the consumer once it sees the flag.
        self.control.producer_closed().store(1, Ordering::Release);
        let _ = self.data_ready.ring();
    }
}

impl LinkTx for ShmTx {
    type Permit<'a> = ShmPermit<'a>;

    #[inline]
    async fn reserve(&mut self) -> Result<ShmPermit<'_>, LinkError> {
        if let Some(e) = &self.error {
            if let Some(f) = &self.fault {
                f.raise(e);
            }
            return Err(e.clone());
        }
        if let Err(e) = self.wait_ready().await {
            if let Some(f) = &self.fault {
                f.raise(&e);
            }
            self.error = Some(e.clone());
            return Err(e);
        }
        let ShmTx {
            ring,
            slab,
            data_ready,
            inline_max,
            hot_slot,
            error,
            ..
        } = self;
        // Only this half consumes ring space, so what `ready` saw is still there.
        let grant = match ring.try_grant(*inline_max) {
            Ok(Some(g)) => g,
            Ok(None) => return Err(vanished()),
            Err(e) => return Err(link_err(e)),
        };
        Ok(ShmPermit {
            grant,
            slab,
            inline_max: *inline_max,
            data_ready,
            hot_slot,
            error,
        })
    }

    async fn close(mut self) -> Result<(), LinkError> {
        // Dropping `self` publishes the close; committed frames are already in shared memory.
        match self.error.take() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// Only the sending half consumes ring room and slab slots, so room or a slot it saw cannot
/// disappear; if it does, shared memory was tampered with.
fn vanished() -> LinkError {
    LinkError::Corrupt("ring room or slab slot vanished after check".into())
}

/// A reservation on a [`ShmTx`]: ring room for one inline frame, and a slab with at least one
/// free slot (only this permit can take it: `reserve` borrows the sender mutably).
pub struct ShmPermit<'a> {
    grant: Grant<'a>,
    slab: &'a mut SlabSender,
    inline_max: usize,
    data_ready: &'a Doorbell,
    hot_slot: &'a mut HotSlot,
    error: &'a mut Option<LinkError>,
}

impl<'a> Permit for ShmPermit<'a> {
    type Slot = ShmSlot<'a>;

    #[inline]
    fn alloc(self, len: usize) -> Result<ShmSlot<'a>, LinkError> {
        let ShmPermit {
            grant,
            slab,
            inline_max,
            data_ready,
            hot_slot,
            error,
        } = self;
        let body = if len <= inline_max {
            Body::Inline(grant)
        } else {
            let slot_size = slab.max_payload();
            if len > slot_size {
                return Err(LinkError::TooLarge {
                    len,
                    max: slot_size.max(inline_max),
                });
            }
            // `reserve` saw a free slot and only this permit takes slots; the slot handed out
            // is the one written last if it is free, else the most recently released one:
            // hot in cache (a large payload first waits briefly for the one written last,
            // see `HotSlot`). A failure here means shared memory was tampered with: sticky,
            // like every other link error.
            if let Err(e) = hot_slot.wait(slab, len) {
                return Err(error.get_or_insert(e).clone());
            }
            let slot = match slab.try_acquire() {
                Ok(Some(slot)) => slot,
                Ok(None) => return Err(error.get_or_insert(vanished()).clone()),
                Err(e) => return Err(error.get_or_insert(link_err(e)).clone()),
            };
            Body::Slab(grant, slot)
        };
        Ok(ShmSlot {
            body,
            len,
            data_ready,
            error,
        })
    }
}

enum Body<'a> {
    Inline(Grant<'a>),
    Slab(Grant<'a>, SlabSlot<'a>),
}

/// A message being written into a [`ShmLink`]: ring memory (inline) or a slab slot.
pub struct ShmSlot<'a> {
    body: Body<'a>,
    len: usize,
    data_ready: &'a Doorbell,
    error: &'a mut Option<LinkError>,
}

impl WriteSlot for ShmSlot<'_> {
    #[inline]
    fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        match &mut self.body {
            Body::Inline(g) => &mut g.as_mut_slice()[..len],
            Body::Slab(_, s) => &mut s.as_mut_slice()[..len],
        }
    }

    #[inline]
    fn commit(self) {
        let ShmSlot {
            body,
            len,
            data_ready,
            error,
        } = self;
        let wake = match body {
            Body::Inline(g) => g.commit_inline(len),
            Body::Slab(g, s) => s
                .publish(len)
                .and_then(|(slot, len)| g.commit_slab(slot, len)),
        };
        let outcome = match wake {
            Ok(w) if w.is_needed() => data_ready.ring(),
            Ok(_) => Ok(()),
            Err(e) => Err(link_err(e)),
        };
        if let Err(e) = outcome {
            error.get_or_insert(e);
        }
    }
}

/// Receiving half of a [`ShmLink`].
pub struct ShmRx {
    ring: RingConsumer,
    slab: SlabReceiver,
    /// Awaited when the ring is empty.
    data_ready: DoorbellWaiter,
    /// Rung (only when the sender is parked) after a release; shared with the slab's
    /// release notifier.
    space_ready: Arc<SpaceBell>,
    liveness: Liveness,
    control: Control,
    peer_gone: Arc<AtomicBool>,
    max_held: usize,
    spinner: Spinner,
    /// Sticky outcome once the link ended.
    done: Option<Result<(), LinkError>>,
    /// Hub side only: told about corruption.
    fault: Option<Arc<Fault>>,
}

impl std::fmt::Debug for ShmRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmRx")
            .field("max_held", &self.max_held)
            .field("idle", &self.spinner.idle)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The receiver publishes consumed ring space once `ring_capacity / RELEASE_BATCH_DIVISOR`
/// bytes are pending, or when it finds the ring empty (see
/// [`RingConsumer::set_release_batch`]).
const RELEASE_BATCH_DIVISOR: usize = 16;

/// Copies an inline frame's payload out of the ring into an allocation of its own.
///
/// Measured against a shared receive arena (16 KiB chunks handed out as `Bytes` slices):
/// one exact allocation and one free per message cost less than the arena's two atomic
/// reference-count updates (both halves on one thread, 64 B: 41 → 33 ns per receive), and a
/// message the application keeps pins only its own bytes.
#[inline]
fn copy_inline(frame: &ReadFrame<'_>) -> Bytes {
    let mut buf = BytesMut::with_capacity(frame.len());
    let n = frame.copy_payload(buf.spare_capacity_mut()).unwrap_or(0);
    // SAFETY: `copy_payload` initialised the first `n` bytes of the spare capacity (it
    // returns `None` and copies nothing only if the room is short, ruled out by the
    // capacity of `frame.len()` bytes).
    #[allow(unsafe_code)]
    unsafe {
        buf.set_len(n)
    };
    buf.freeze()
}

/// What one look at the ring found. A message itself goes to the caller's `out` slot: the
/// per-message path moves no nested `Result<Option<..>>` around (cheaper to return).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A message was stored in `out`.
    Message,
    /// The link ended cleanly.
    End,
    /// Nothing yet: keep looking.
    Empty,
}

impl ShmRx {
    /// Takes one frame if there is one: [`Step::Message`] (stored in `out`), [`Step::End`]
    /// for a close marker, [`Step::Empty`].
    #[inline]
    fn try_take(&mut self, out: &mut Option<Bytes>) -> Result<Step, LinkError> {
        let Some(frame) = self.ring.try_read().map_err(link_err)? else {
            // Publish the space released in batches before anyone waits on it.
            if self.ring.flush().is_needed() {
                self.space_ready.ring()?;
            }
            return Ok(Step::Empty);
        };
        let (step, wake) = match frame.kind() {
            FrameKind::Inline => {
                *out = Some(copy_inline(&frame));
                (Step::Message, frame.release())
            }
            FrameKind::Slab { slot } => {
                let len = u32::try_from(frame.len()).map_err(|_| {
                    LinkError::Corrupt(format!("slab payload length {} too large", frame.len()))
                })?;
                let msg = if self.slab.held() >= self.max_held {
                    // As many zero-copy messages alive as allowed (or none allowed: an
                    // untrusted peer): copy this one out, freeing its slot at once.
                    self.slab.take_copied(slot, len)
                } else {
                    self.slab.take(slot, len)
                }
                .map_err(link_err)?;
                *out = Some(msg);
                (Step::Message, frame.release())
            }
            FrameKind::Close => (Step::End, frame.release()),
        };
        if wake.is_needed() {
            self.space_ready.ring()?;
        }
        Ok(step)
    }

    /// A message (in `out`), the end, or [`Step::Empty`] to keep looking.
    #[inline]
    fn poll_ring(&mut self, out: &mut Option<Bytes>) -> Result<Step, LinkError> {
        let step = self.try_take(out)?;
        if step != Step::Empty {
            return Ok(step);
        }
        // Acquire: pairs with the Release store in `ShmTx::drop`: every frame committed
        // before the close is visible now, so an empty ring after this load means the end.
        if self.control.producer_closed().load(Ordering::Acquire) != 0 {
            return match self.try_take(out)? {
                Step::Message => Ok(Step::Message),
                Step::End | Step::Empty => Ok(Step::End),
            };
        }
        if self.peer_gone.load(Ordering::Relaxed) {
            return Err(peer_died());
        }
        Ok(Step::Empty)
    }

    /// Checks, spins for the budget, then parks (boxed, as in [`ShmTx::wait_ready`]).
    /// Returns [`Step::Message`] (in `out`) or [`Step::End`].
    #[inline]
    async fn recv_inner(&mut self, out: &mut Option<Bytes>) -> Result<Step, LinkError> {
        let step = self.poll_ring(out)?;
        if step != Step::Empty {
            return Ok(step);
        }
        let mut step = Step::Empty;
        let spun = spin_until(self.spinner.budget(), || {
            step = self.poll_ring(out)?;
            Ok(step != Step::Empty)
        })?;
        self.spinner.record(spun);
        if step != Step::Empty {
            return Ok(step);
        }
        Box::pin(self.park_until_message(out)).await
    }

    /// The parking part of [`recv_inner`](Self::recv_inner).
    async fn park_until_message(&mut self, out: &mut Option<Bytes>) -> Result<Step, LinkError> {
        loop {
            if self.ring.prepare_park().map_err(link_err)? {
                tokio::select! {
                    r = self.data_ready.wait() => match r {
                        // The peer's sending half closed its doorbell end without closing
                        // the link (its process died): deliver what is left, then fail.
                        Err(LinkError::Closed) => self.peer_gone.store(true, Ordering::Relaxed),
                        r => r?,
                    },
                    r = self.liveness.gone() => {
                        r?;
                        self.peer_gone.store(true, Ordering::Relaxed);
                    }
                }
                // Withdraw the announcement (`prepare_park` already did when it said no).
                self.ring.unpark();
            }
            let step = self.poll_ring(out)?;
            if step != Step::Empty {
                return Ok(step);
            }
        }
    }
}

impl Drop for ShmRx {
    fn drop(&mut self) {
        // Release: pairs with the Acquire load in `ShmTx::ready`.
        self.control.consumer_closed().store(1, Ordering::Release);
        let _ = self.space_ready.ring();
    }
}

impl LinkRx for ShmRx {
    #[inline]
    async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        if let Some(done) = &self.done {
            return done.clone().map(|()| None);
        }
        let mut out = None;
        match self.recv_inner(&mut out).await {
            Ok(Step::Message) => Ok(out),
            Ok(_) => {
                self.done = Some(Ok(()));
                Ok(None)
            }
            Err(e) => {
                if let Some(f) = &self.fault {
                    f.raise(&e);
                }
                self.done = Some(Err(e.clone()));
                Err(e)
            }
        }
    }
}

/// The child's half of a link made by [`ShmLink::create_for_child`]: the descriptors the
/// child inherits. Use [`ChildHandoff::spawn`].
#[derive(Debug)]
pub struct ChildHandoff {
    /// Segment, side B's ends of data A→B, space A→B, data B→A, space B→A, liveness end B.
    /// All close-on-exec and numbered above 2.
    fds: Vec<OwnedFd>,
}

impl ChildHandoff {
    /// Spawns `command` as the child, handing it the link: sets [`HANDOFF_ENV`] and makes
    /// exactly these descriptors inheritable by exactly this child. The child calls
    /// [`ShmLink::from_env`]. The parent's copies are closed when this returns, so the
    /// parent's liveness socket reports the child's death.
    ///
    /// # How the descriptors are inherited
    ///
    /// They stay close-on-exec in the parent at all times; close-on-exec is cleared in the
    /// forked child only, just before `exec` (a `pre_exec` hook doing nothing but
    /// `fcntl(F_SETFD)`, which is async-signal-safe). The simpler alternative — clearing
    /// close-on-exec on a dup in the parent and closing it after `spawn` — would let any
    /// process spawned concurrently by another thread inherit the child's liveness end and
    /// keep it open, so the death of our child would go unnoticed. (A `pre_exec` hook makes
    /// std use `fork` + `exec` instead of `posix_spawn`; that costs nothing that matters
    /// here.) `command` is taken by value so the hook cannot run again in a later spawn.
    pub fn spawn(self, mut command: Command) -> io::Result<Child> {
        let raw: Vec<RawFd> = self.fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let mut value = String::from(HANDOFF_VERSION);
        for fd in &raw {
            value.push(' ');
            value.push_str(&fd.to_string());
        }
        command.env(HANDOFF_ENV, value);
        let hook = move || {
            for &fd in &raw {
                // SAFETY: fcntl(F_SETFD) is async-signal-safe and touches no memory; `fd` is
                // open in the forked child (inherited from the parent, where `self.fds`
                // keeps it open until after `spawn` returns).
                #[allow(unsafe_code)]
                let r = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: the hook only calls fcntl, which is async-signal-safe, allocates nothing
        // and takes no lock, as required between fork and exec.
        #[allow(unsafe_code)]
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, hook);
        }
        let child = command.spawn();
        drop(self);
        child
    }
}

/// The version of the [`HANDOFF_ENV`] format (2: socket-pair doorbells, each side holding
/// its own ends).
const HANDOFF_VERSION: &str = "2";

/// Parses [`HANDOFF_ENV`]: version 2 and six distinct open descriptors above 2.
fn parse_handoff(value: &str) -> Result<Vec<RawFd>, ShmError> {
    let bad = |why: &str| ShmError::BadHandoff(format!("{HANDOFF_ENV}={value:?}: {why}"));
    let mut parts = value.split(' ');
    if parts.next() != Some(HANDOFF_VERSION) {
        return Err(bad("unsupported version"));
    }
    let fds = parts
        .map(|p| {
            p.parse::<RawFd>()
                .map_err(|_| bad("not a descriptor number"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if fds.len() != 6 {
        return Err(bad("expected six descriptors"));
    }
    for (i, &fd) in fds.iter().enumerate() {
        // Stdio is never handed off (`create_for_child` numbers everything above 2), so a
        // handoff naming 0..=2 is malformed, and taking ownership would close stdio.
        if fd < 3 || fds[..i].contains(&fd) {
            return Err(bad("descriptor numbers must be distinct and above 2"));
        }
        if !fd_is_open(fd) {
            return Err(bad("a descriptor is not open in this process"));
        }
    }
    Ok(fds)
}

/// `dup` of `fd` numbered 3 or above (so that the child's stdio setup cannot clobber it),
/// close-on-exec.
fn dup_above_stdio(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer argument and touches no memory.
    #[allow(unsafe_code)]
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by fcntl(F_DUPFD_CLOEXEC): open and owned by nobody.
    #[allow(unsafe_code)]
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_parsing_rejects_garbage() {
        for v in [
            "",
            // Version 1 (shared eventfds) is refused.
            "1 3 4 5 6 7 8",
            "3 3 4 5 6 7 8",
            "2 3 4",
            "2 a b c d e f",
            "2 3 3 4 5 6 7",
            "2 -1 3 4 5 6 7",
        ] {
            assert!(
                matches!(parse_handoff(v), Err(ShmError::BadHandoff(_))),
                "{v:?}"
            );
        }
        // Well-formed but not open here.
        assert!(parse_handoff("2 100000 100001 100002 100003 100004 100005").is_err());
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Whether `b` points into region `id` of `seg`.
    fn inside(seg: &Arc<Segment>, id: RegionId, b: &[u8]) -> bool {
        let r = seg.region(id).unwrap();
        let start = r.as_ptr() as usize;
        let p = b.as_ptr() as usize;
        p >= start && p + b.len() <= start + r.len()
    }

    async fn send(tx: &mut ShmTx, payload: &[u8]) -> Result<(), LinkError> {
        crate::links::send_bytes(tx, payload).await
    }

    #[test]
    fn a_large_payload_waits_briefly_for_the_slot_written_last_then_backs_off() {
        use crate::shm::slab::{SlabConfig, SlabReceiver};
        use crate::shm::Region;
        let cfg = SlabConfig {
            slot_count: 3,
            slot_size: HOT_SLOT_MIN,
        };
        let region = Region::heap(cfg.region_size());
        let mut tx = SlabSender::init(region.clone(), cfg).unwrap();
        let rx = SlabReceiver::attach(region, cfg).unwrap();
        let mut hot = HotSlot::new(IdleStrategy::default());
        let (slot, len) = tx.try_acquire().unwrap().unwrap().publish(1).unwrap();
        let held = rx.take(slot, len).unwrap();

        // Small payloads never wait.
        hot.wait(&mut tx, HOT_SLOT_MIN - 1).unwrap();
        assert_eq!(hot.skip, 0);
        // The slot written last is held: the wait times out (1 µs at 256 KiB) and backs off.
        hot.wait(&mut tx, HOT_SLOT_MIN).unwrap();
        assert_eq!(hot.skip, HOT_SLOT_BACKOFF);
        for left in (0..HOT_SLOT_BACKOFF).rev() {
            hot.wait(&mut tx, HOT_SLOT_MIN).unwrap();
            assert_eq!(hot.skip, left);
        }
        let other = tx.try_acquire().unwrap().unwrap();
        assert_ne!(other.index(), slot, "another free slot is used meanwhile");
        drop(other);

        // Released: no back-off, and the freed slot is the one handed out.
        drop(held);
        hot.wait(&mut tx, HOT_SLOT_MIN).unwrap();
        assert_eq!(hot.skip, 0);
        assert_eq!(tx.try_acquire().unwrap().unwrap().index(), slot);

        // Parking links never spin.
        let mut park = HotSlot::new(IdleStrategy::Park);
        let (slot, len) = tx.try_acquire().unwrap().unwrap().publish(1).unwrap();
        let _held = rx.take(slot, len).unwrap();
        park.wait(&mut tx, HOT_SLOT_MIN).unwrap();
        assert_eq!(park.skip, 0);
    }

    #[test]
    fn large_payloads_flow_while_the_receiver_holds_some() {
        rt().block_on(async {
            let config = ShmConfig {
                slot_size: 1 << 20,
                slot_count: 4,
                max_held_slots: 3,
                ..ShmConfig::default()
            };
            let (a, b) = ShmLink::pair(config).unwrap();
            let (mut atx, _arx) = a.split();
            let (_btx, mut brx) = b.split();
            let intact = |i: u32, m: &Bytes| m.len() == 1 << 20 && m.iter().all(|&b| b == i as u8);
            let reader = tokio::spawn(async move {
                let mut kept = std::collections::VecDeque::new();
                for i in 0..64u32 {
                    let m = brx.recv().await.unwrap().unwrap();
                    assert!(intact(i, &m), "message {i}");
                    // Keep the last two, zero-copy (held slots stay in flight): a slot the
                    // sender reused while held would change them under our feet.
                    kept.push_back((i, m));
                    if kept.len() > 2 {
                        let (j, old) = kept.pop_front().unwrap();
                        assert!(intact(j, &old), "message {j} changed while held");
                    }
                }
                for (j, old) in kept {
                    assert!(intact(j, &old), "message {j} changed while held");
                }
            });
            for i in 0..64u32 {
                send(&mut atx, &vec![i as u8; 1 << 20]).await.unwrap();
            }
            reader.await.unwrap();
        });
    }

    #[test]
    fn slab_payloads_are_zero_copy_until_too_many_are_held() {
        rt().block_on(async {
            let config = ShmConfig {
                slot_count: 4,
                max_held_slots: 2,
                ..ShmConfig::default()
            };
            let (a, b, seg) = ShmLink::pair_with_segment(config).unwrap();
            let (mut atx, _arx) = a.split();
            let (_btx, mut brx) = b.split();
            let big = vec![5u8; 10_000];
            send(&mut atx, b"small").await.unwrap();
            let small = brx.recv().await.unwrap().unwrap();
            assert!(
                !inside(&seg, RegionId::RingAtoB, &small),
                "inline payloads are copied"
            );

            let mut held = Vec::new();
            for _ in 0..2 {
                send(&mut atx, &big).await.unwrap();
                let m = brx.recv().await.unwrap().unwrap();
                assert_eq!(m[..], big[..]);
                assert!(
                    inside(&seg, RegionId::SlabAtoB, &m),
                    "slab payload was copied"
                );
                held.push(m);
            }
            // A third one while two are held: copied, and its slot is free again at once.
            send(&mut atx, &big).await.unwrap();
            let m = brx.recv().await.unwrap().unwrap();
            assert_eq!(m[..], big[..]);
            assert!(!inside(&seg, RegionId::SlabAtoB, &m));
            // The sender can still use every slot not held: 4 slots, 2 held.
            for _ in 0..2 {
                send(&mut atx, &big).await.unwrap();
            }
            drop(held);
            for _ in 0..2 {
                assert_eq!(brx.recv().await.unwrap().unwrap()[..], big[..]);
            }
        });
    }

    /// Inline messages are copies: messages kept while thousands more pass through the ring
    /// (many laps of a small ring) keep their bytes.
    #[test]
    fn kept_inline_messages_survive_ring_reuse() {
        rt().block_on(async {
            let config = ShmConfig {
                ring_capacity: 16 * 1024,
                inline_max: 1024,
                ..ShmConfig::default()
            };
            let (a, b) = ShmLink::pair(config).unwrap();
            let (mut atx, _arx) = a.split();
            let (_btx, mut brx) = b.split();
            let msg = |i: usize| vec![(i % 251) as u8; 100 + i % 300];
            let mut kept = Vec::new();
            // About 500 KB of payloads: some thirty laps of the 16 KiB ring.
            for i in 0..2_000 {
                send(&mut atx, &msg(i)).await.unwrap();
                let got = brx.recv().await.unwrap().unwrap();
                assert_eq!(&got[..], &msg(i)[..]);
                // Keep every seventh message; drop the rest at once.
                if i % 7 == 0 {
                    kept.push((i, got));
                }
            }
            for (i, got) in kept {
                assert_eq!(&got[..], &msg(i)[..], "kept message {i}");
            }
        });
    }

    #[test]
    fn codec_serializes_straight_into_the_slab() {
        use crate::codec::{Codec, Postcard};
        rt().block_on(async {
            let (a, b, seg) = ShmLink::pair_with_segment(ShmConfig::default()).unwrap();
            let (mut atx, _arx) = a.split();
            let (_btx, mut brx) = b.split();
            let value: (String, Vec<u32>) = ("tether".into(), (0..20_000).collect());
            crate::codec::send(&mut atx, &Postcard, &value)
                .await
                .unwrap();
            let got = brx.recv().await.unwrap().unwrap();
            assert!(
                inside(&seg, RegionId::SlabAtoB, &got),
                "not received in place"
            );
            let back: (String, Vec<u32>) = Postcard.decode(&got).unwrap();
            assert_eq!(back, value);
        });
    }

    #[test]
    fn dropped_receiver_fails_the_peers_reserve() {
        rt().block_on(async {
            let (a, b) = ShmLink::pair(ShmConfig::default()).unwrap();
            let (mut atx, _arx) = a.split();
            let (_btx, brx) = b.split();
            send(&mut atx, b"one").await.unwrap();
            drop(brx);
            assert!(matches!(
                send(&mut atx, b"two").await,
                Err(LinkError::Closed)
            ));
            assert!(matches!(
                send(&mut atx, b"two").await,
                Err(LinkError::Closed)
            ));
        });
    }

    /// Rewrites the u64 at byte `offset` of region `id`, as a hostile peer would.
    fn scribble(seg: &Arc<Segment>, id: RegionId, offset: usize, f: impl Fn(u64) -> u64) {
        let r = seg.region(id).unwrap();
        assert!(offset + 8 <= r.len() && offset % 8 == 0);
        // SAFETY: in bounds and 8-aligned (checked above; regions are 64-aligned); the
        // ring's own accesses to this word are atomic or volatile, and this racy write is
        // exactly the hostile-peer scenario the ring must survive.
        #[allow(unsafe_code)]
        unsafe {
            let p = r.as_ptr().add(offset).cast::<u64>();
            std::ptr::write_volatile(p, f(std::ptr::read_volatile(p)))
        };
    }

    #[test]
    fn corrupt_ring_fails_the_link_without_panic() {
        rt().block_on(async {
            // A head index that is not 8-aligned.
            let (a, b, seg) = ShmLink::pair_with_segment(ShmConfig::default()).unwrap();
            let (_atx, _arx) = a.split();
            let (_btx, mut brx) = b.split();
            scribble(&seg, RegionId::RingAtoB, 0, |_| 12_345);
            let e = brx.recv().await.unwrap_err();
            assert!(matches!(e, LinkError::Corrupt(_)), "{e}");
            assert!(
                matches!(brx.recv().await, Err(LinkError::Corrupt(_))),
                "not sticky"
            );

            // A frame header with an unknown kind, published by a valid head.
            let (a, b, seg) = ShmLink::pair_with_segment(ShmConfig::default()).unwrap();
            let (mut atx, _arx) = a.split();
            let (_btx, mut brx) = b.split();
            send(&mut atx, b"12345678").await.unwrap();
            scribble(&seg, RegionId::RingAtoB, ring::ring_region_size(0), |h| {
                h | (0x77 << 32)
            });
            assert!(matches!(brx.recv().await, Err(LinkError::Corrupt(_))));

            // A slab reference to a slot that does not exist.
            let (a, b, seg) = ShmLink::pair_with_segment(ShmConfig::default()).unwrap();
            let (mut atx, _arx) = a.split();
            let (_btx, mut brx) = b.split();
            send(&mut atx, &[1u8; 10_000]).await.unwrap();
            // Frame header: len (bits 0..32) | kind (32..40) | slot (40..64).
            scribble(&seg, RegionId::RingAtoB, ring::ring_region_size(0), |h| {
                (h & ((1 << 40) - 1)) | (999 << 40)
            });
            assert!(matches!(brx.recv().await, Err(LinkError::Corrupt(_))));
        });
    }

    #[test]
    fn spin_budget_adapts_within_bounds() {
        let max = Duration::from_micros(64);
        let mut s = Spinner::new(IdleStrategy::SpinThenPark { spin: max });
        assert_eq!(s.budget(), max);
        for _ in 0..10 {
            s.record(false);
        }
        assert_eq!(s.budget(), max / 64, "floor");
        for _ in 10..SPIN_PROBE_EVERY - 1 {
            s.record(false);
        }
        assert_eq!(s.budget(), max / 64);
        s.record(false);
        assert_eq!(
            s.budget(),
            max,
            "probe after {SPIN_PROBE_EVERY} parks in a row"
        );
        s.record(false);
        assert_eq!(s.budget(), max / 2);
        for _ in 0..10 {
            s.record(false);
        }
        s.record(true);
        assert_eq!(s.budget(), max / 32);
        for _ in 0..10 {
            s.record(true);
        }
        assert_eq!(s.budget(), max, "ceiling");
        s.record(false);
        assert_eq!(s.budget(), max, "one late message does not shrink the spin");
        s.record(true);
        for _ in 1..SPIN_SHRINK_AFTER {
            s.record(false);
        }
        assert_eq!(s.budget(), max, "a few late messages do not shrink it");
        s.record(false);
        assert_eq!(
            s.budget(),
            max / 2,
            "park number {SPIN_SHRINK_AFTER} in a row does"
        );

        let mut busy = Spinner::new(IdleStrategy::BusySpin);
        busy.record(false);
        assert_eq!(busy.budget(), MAX_SPIN, "busy-spin does not adapt");
        let mut park = Spinner::new(IdleStrategy::Park);
        park.record(true);
        assert_eq!(park.budget(), Duration::ZERO);
        let capped = Spinner::new(IdleStrategy::SpinThenPark {
            spin: Duration::from_secs(5),
        });
        assert_eq!(capped.budget(), MAX_SPIN);
    }

    /// A guest handed descriptors of the wrong kind refuses them with `BadHandoff` and
    /// closes every one of them (the peers of the socket ends see end of file).
    #[test]
    fn guest_side_refuses_wrong_descriptor_kinds_and_closes_them() {
        rt().block_on(async {
            let seg = create_segment(&ShmConfig::default()).unwrap();
            for bad_at in 0..4 {
                let (_hub_ends, guest_ends) = Bells::pairs().unwrap();
                let mut fds = vec![seg.fd().try_clone_to_owned().unwrap()];
                let mut peers = Vec::new();
                for (i, end) in guest_ends.into_vec().into_iter().enumerate() {
                    if i == bad_at {
                        // A datagram socket where a stream doorbell end belongs.
                        let (d, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
                        fds.push(OwnedFd::from(d));
                        drop(peer);
                        drop(end);
                    } else {
                        // Watch this descriptor through a duplicate we can test.
                        let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
                        fds.push(OwnedFd::from(theirs));
                        peers.push(mine);
                        drop(end);
                    }
                }
                let (live, _live_peer) = Liveness::pair().unwrap();
                let e = ShmLink::guest_side(fds, live, &ShmConfig::default()).unwrap_err();
                assert!(matches!(e, ShmError::BadHandoff(_)), "{e}");
                for p in peers {
                    p.set_nonblocking(true).unwrap();
                    let mut b = [0u8; 1];
                    // End of file: our descriptor was closed.
                    assert_eq!(std::io::Read::read(&mut &p, &mut b).unwrap(), 0, "{bad_at}");
                }
            }
        });
    }

    #[test]
    fn bad_local_config_is_refused() {
        let config = ShmConfig {
            inline_max: 1 << 30,
            ..ShmConfig::default()
        };
        assert!(matches!(
            ShmLink::pair(config),
            Err(ShmError::InvalidConfig(_))
        ));
        let config = ShmConfig {
            ring_capacity: 1000,
            ..ShmConfig::default()
        };
        assert!(matches!(
            ShmLink::pair(config),
            Err(ShmError::InvalidConfig(_))
        ));
    }
}
