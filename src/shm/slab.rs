//! A slab of fixed-size slots in shared memory for payloads too large to go inline in a ring.
//!
//! One slab per direction, **owned by the sender**: the sender picks free slots from a
//! sender-local free list (no cross-process allocator, no CAS, no ABA), writes the payload
//! straight into the slot, marks it in flight and sends a slab reference through the ring
//! ([`Grant::commit_slab`](super::ring::Grant::commit_slab)). The receiver turns the reference
//! into a zero-copy [`Bytes`] ([`SlabReceiver::take`]); when the last clone of that `Bytes`
//! is dropped, the slot is handed back through its state word.
//!
//! # Layout
//!
//! ```text
//!  region: [ header: 64 B (sender_parked: u64) ][ states: u32 × slot_count, to 64 B ][ slots: slot_size × slot_count ]
//! ```
//!
//! # Slot state machine (one writer per transition)
//!
//! ```text
//!   FREE ──sender: SlabSlot::publish (then ring commit)──► IN_FLIGHT
//!   IN_FLIGHT ──receiver: last Bytes dropped──► FREE
//!   FREE ──sender: reclaim into its local free list──► (acquired, local only)
//!   any ──sender: reset (peer gone)──► FREE
//! ```
//!
//! The receiver validates every reference: slot number below the slot count, length within
//! the slot size, state `IN_FLIGHT`, and not already held by a live `Bytes` of this receiver
//! (a slot sent twice). Anything else is [`ShmError::Corrupt`].
//!
//! # Waiting for a slot
//!
//! A sender with every slot in flight parks like a ring producer (see
//! [`ring`](super::ring#wake-ups)): [`SlabSender::prepare_park`] announces a park in
//! `sender_parked` (written only by the sender), fences and reclaims; a receiver releasing a
//! slot stores `FREE`, fences, and if the sender is parked and this park was not reported yet
//! calls the notifier installed with [`SlabReceiver::set_release_notifier`] (for example:
//! ring the sender's space-ready doorbell).
//!
//! ```
//! use actix_tether::shm::{slab::{SlabConfig, SlabReceiver, SlabSender}, Region};
//!
//! let cfg = SlabConfig { slot_count: 4, slot_size: 4096 };
//! let region = Region::heap(cfg.region_size());
//! let mut tx = SlabSender::init(region.clone(), cfg).unwrap();
//! let rx = SlabReceiver::attach(region, cfg).unwrap();
//!
//! let mut slot = tx.try_acquire().unwrap().expect("a free slot");
//! slot.as_mut_slice()[..5].copy_from_slice(b"large");
//! let (index, len) = slot.publish(5).unwrap();
//! // ... (index, len) travels through the ring ...
//! let bytes = rx.take(index, len).unwrap();
//! assert_eq!(&bytes[..], b"large");
//! assert_eq!(tx.in_flight(), 1);
//! drop(bytes); // the slot is FREE again; the sender reclaims it when it needs it
//! assert_eq!(tx.reclaim().unwrap(), 1);
//! assert_eq!(tx.in_flight(), 0);
//! ```
#![allow(unsafe_code)]

use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::region::Region;
use super::ring::MAX_SLOT;
use super::ShmError;
use crate::sync::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering, Tracked};

const FREE: u32 = 0;
const IN_FLIGHT: u32 = 1;

/// Alignment and granularity of slot sizes in bytes.
pub const SLOT_ALIGN: usize = 64;
/// Largest slot size in bytes (2 GiB; lengths travel as `u32`).
pub const MAX_SLOT_SIZE: usize = 1 << 31;

/// Geometry of a slab.
///
/// Bounds: `slot_count` in `1 ..= 2^24`, `slot_size` a multiple of 64 in `64 ..= 2 GiB`.
/// The largest payload the slab carries is `slot_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlabConfig {
    /// Number of slots. Bounds the number of large messages in flight (sent and not yet
    /// dropped by the receiver).
    pub slot_count: u32,
    /// Size of one slot in bytes: the largest payload sent through the slab.
    pub slot_size: usize,
}

impl Default for SlabConfig {
    /// 32 slots of 1 MiB.
    fn default() -> Self {
        SlabConfig {
            slot_count: 32,
            slot_size: 1 << 20,
        }
    }
}

/// Per-slot shared state.
#[repr(C)]
struct SlotState {
    state: AtomicU32,
    /// Under loom, tracks accesses to the slot's bytes.
    shadow: Tracked,
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<SlotState>() == 4);

/// The shared header of a slab.
#[repr(C, align(64))]
struct SlabHeader {
    /// `(park number << 1) | parked`, written only by the sender.
    sender_parked: AtomicU64,
}

const HEADER_LEN: usize = std::mem::size_of::<SlabHeader>().next_multiple_of(64);

impl SlabConfig {
    /// Bytes of region this slab needs (saturating: an absurd configuration yields a size no
    /// region has). The region must be aligned to [`REGION_ALIGN`](super::region::REGION_ALIGN).
    pub const fn region_size(&self) -> usize {
        HEADER_LEN
            .saturating_add(self.states_len())
            .saturating_add((self.slot_count as usize).saturating_mul(self.slot_size))
    }

    const fn states_len(&self) -> usize {
        let n = (self.slot_count as usize).saturating_mul(std::mem::size_of::<SlotState>());
        n.saturating_add(63) / 64 * 64
    }

    /// Checks the documented bounds.
    pub fn validate(&self) -> Result<(), ShmError> {
        if self.slot_count == 0 || self.slot_count > MAX_SLOT + 1 {
            return Err(ShmError::InvalidConfig(format!(
                "slab slot count {} must be between 1 and {}",
                self.slot_count,
                MAX_SLOT + 1
            )));
        }
        if self.slot_size == 0 || self.slot_size % SLOT_ALIGN != 0 || self.slot_size > MAX_SLOT_SIZE
        {
            return Err(ShmError::InvalidConfig(format!(
                "slab slot size {} must be a multiple of {SLOT_ALIGN} between {SLOT_ALIGN} and \
                 {MAX_SLOT_SIZE} bytes",
                self.slot_size
            )));
        }
        Ok(())
    }
}

/// The validated slab memory shared by the sender, the receiver and received `Bytes`.
struct Slab {
    region: Region,
    cfg: SlabConfig,
}

impl Slab {
    fn new(region: Region, cfg: SlabConfig) -> Result<Slab, ShmError> {
        cfg.validate()?;
        region.require(cfg.region_size())?;
        Ok(Slab { region, cfg })
    }

    fn header(&self) -> &SlabHeader {
        // SAFETY: the region holds `region_size()` bytes (checked in `new`), is 64-aligned,
        // and lives as long as `self`; the header is initialised by `SlabSender::init`
        // (under loom) or is a plain integer valid for any bit pattern. Only atomic
        // operations are done through it.
        unsafe { &*self.region.as_ptr().cast::<SlabHeader>() }
    }

    /// The state of slot `i` (`i < slot_count`).
    fn state(&self, i: u32) -> &SlotState {
        assert!(i < self.cfg.slot_count, "slot index checked by callers");
        // SAFETY: `i < slot_count`, so the state lies in the states area (inside the region,
        // checked in `new`), aligned to 4 (the area starts 64-aligned); initialised as for
        // `header`.
        unsafe {
            &*self
                .region
                .as_ptr()
                .add(HEADER_LEN)
                .cast::<SlotState>()
                .add(i as usize)
        }
    }

    /// Pointer to the first byte of slot `i` (`i < slot_count`).
    fn slot_ptr(&self, i: u32) -> *mut u8 {
        assert!(i < self.cfg.slot_count, "slot index checked by callers");
        // SAFETY: slot `i` lies inside the region: `region_size()` covers every slot.
        unsafe {
            self.region
                .as_ptr()
                .add(HEADER_LEN + self.cfg.states_len() + i as usize * self.cfg.slot_size)
        }
    }

    /// Initialises the header and every slot state to `FREE`.
    fn init_states(&self) {
        let n = self.cfg.slot_count;
        #[cfg(not(loom))]
        {
            // Relaxed: the slab is handed to the peer through a synchronising channel.
            self.header().sender_parked.store(0, Ordering::Relaxed);
            for i in 0..n {
                self.state(i).state.store(FREE, Ordering::Relaxed);
            }
        }
        #[cfg(loom)]
        {
            // SAFETY: loom atomics must be constructed in place before use; the header and
            // states lie inside the region (checked in `new`) and, under loom, the region is
            // a heap allocation not yet shared with another thread.
            unsafe {
                let base = self.region.as_ptr();
                std::ptr::write(
                    base.cast::<SlabHeader>(),
                    SlabHeader {
                        sender_parked: AtomicU64::new(0),
                    },
                );
                for i in 0..n as usize {
                    std::ptr::write(
                        base.add(HEADER_LEN).cast::<SlotState>().add(i),
                        SlotState {
                            state: AtomicU32::new(FREE),
                            shadow: Tracked::new(),
                        },
                    );
                }
            }
        }
    }
}

/// The sending (owning) end of a slab. See the [module docs](self).
pub struct SlabSender {
    slab: Slab,
    /// Slots known to be free, local to this process.
    free: Vec<u32>,
    /// Slots published and not yet seen `FREE` again, oldest first.
    in_flight: Vec<u32>,
    /// The slot published last.
    newest_published: Option<u32>,
    /// Number of our current or last park.
    park_seq: u64,
}

impl fmt::Debug for SlabSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlabSender")
            .field("cfg", &self.slab.cfg)
            .field("free", &self.free.len())
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

impl SlabSender {
    /// Takes ownership of the slab in `region`: every slot is set `FREE` (shared and local).
    ///
    /// The sender is the only side that initialises the slab. It must happen before the
    /// receiver takes anything, and (when reusing a region) only after every `Bytes` of a
    /// previous receiver over it has been dropped, see [`SlabReceiver::held`].
    pub fn init(region: Region, cfg: SlabConfig) -> Result<SlabSender, ShmError> {
        let slab = Slab::new(region, cfg)?;
        slab.init_states();
        Ok(SlabSender {
            free: (0..cfg.slot_count).rev().collect(),
            in_flight: Vec::new(),
            newest_published: None,
            park_seq: 0,
            slab,
        })
    }

    /// Largest payload in bytes (the slot size).
    pub fn max_payload(&self) -> usize {
        self.slab.cfg.slot_size
    }

    /// The slab's configuration.
    pub fn config(&self) -> SlabConfig {
        self.slab.cfg
    }

    /// Fails with [`ShmError::TooLarge`], naming the slot size, if `len` does not fit a slot.
    pub fn check_len(&self, len: usize) -> Result<(), ShmError> {
        if len > self.slab.cfg.slot_size {
            Err(ShmError::TooLarge {
                len,
                max: self.slab.cfg.slot_size,
            })
        } else {
            Ok(())
        }
    }

    /// Moves every in-flight slot the receiver has freed back to the local free list.
    /// Returns how many were reclaimed. On a state word that is neither FREE nor IN_FLIGHT
    /// (tampered shared memory) it fails with [`ShmError::Corrupt`]: the slots before it
    /// are reclaimed, that one and those after it stay in flight (never handed out).
    ///
    /// Keeps publication order: `in_flight` stays oldest first, and slots freed together
    /// are pushed oldest first, so the most recently published of them ends on top of the
    /// free stack (the slot this sender wrote last: the hottest in its cache).
    pub fn reclaim(&mut self) -> Result<usize, ShmError> {
        let mut kept = 0;
        let mut result = Ok(());
        for i in 0..self.in_flight.len() {
            let slot = self.in_flight[i];
            // Acquire: pairs with the receiver's Release store of FREE in `SlotOwner::drop`;
            // its reads of the slot happen before we write the slot again.
            match self.slab.state(slot).state.load(Ordering::Acquire) {
                FREE => self.free.push(slot),
                IN_FLIGHT => {
                    self.in_flight[kept] = slot;
                    kept += 1;
                }
                other => {
                    // Keep this and every later slot in flight (not reusable), then fail.
                    result = Err(ShmError::Corrupt(format!(
                        "slab slot {slot} has invalid state {other}"
                    )));
                    self.in_flight.copy_within(i.., kept);
                    kept += self.in_flight.len() - i;
                    break;
                }
            }
        }
        let reclaimed = self.in_flight.len() - kept;
        self.in_flight.truncate(kept);
        result.map(|()| reclaimed)
    }

    /// Whether the slot published most recently is still in flight (not yet released by
    /// the receiver), after reclaiming released slots. `Ok(false)` also when nothing is in
    /// flight. Once it is free, [`try_acquire`](Self::try_acquire) hands it out first.
    ///
    /// A sender about to write a large payload can wait briefly for it: rewriting the slot
    /// it wrote last keeps its working set at one slot instead of two or more (at 1 MiB a
    /// copy into a second buffer ran at 71 % of a copy into the same one, 2 MiB L2, see
    /// BENCHMARKS.md).
    ///
    /// Costs one load while that slot is in flight (a spinning caller reads one word), and
    /// a [`reclaim`](Self::reclaim) once it is free.
    pub fn newest_in_flight(&mut self) -> Result<bool, ShmError> {
        // In publication order, the newest published slot can only be the last in flight.
        let Some(&last) = self.in_flight.last() else {
            return Ok(false);
        };
        if Some(last) != self.newest_published {
            return Ok(false);
        }
        // Acquire: pairs with the receiver's Release store of FREE in `SlotOwner::drop`
        // (the slot is then reclaimed, with the same pairing, before it is written).
        match self.slab.state(last).state.load(Ordering::Acquire) {
            IN_FLIGHT => Ok(true),
            FREE => self.reclaim().map(|_| false),
            other => Err(ShmError::Corrupt(format!(
                "slab slot {last} has invalid state {other}"
            ))),
        }
    }

    /// Whether a slot is free now, reclaiming released slots only if the local free list is
    /// empty (cheap: no shared-memory access while the free list is not empty).
    pub fn has_free(&mut self) -> Result<bool, ShmError> {
        if self.free.is_empty() {
            self.reclaim()?;
        }
        Ok(!self.free.is_empty())
    }

    /// A free slot to write a payload into. `Ok(None)`: every slot is in flight; wait with
    /// [`prepare_park`](Self::prepare_park).
    ///
    /// Reclaims released slots first and hands out the slot published last if it is free,
    /// else the most recently reclaimed one (the free list is a stack): a receiver that
    /// drops each message before the next arrives keeps the sender on one or two slots whose
    /// pages are mapped and in cache, instead of cycling through the whole slab. Costs one
    /// load per in-flight slot.
    pub fn try_acquire(&mut self) -> Result<Option<SlabSlot<'_>>, ShmError> {
        self.reclaim()?;
        // The slot published last, if free, goes first even when it was reclaimed before
        // others (it is the one this sender wrote last). It lies near the top: only slots
        // reclaimed after it, before the next acquire, can be above it.
        if let Some(newest) = self.newest_published {
            if self.free.last() != Some(&newest) {
                if let Some(at) = self.free.iter().rposition(|&s| s == newest) {
                    let slot = self.free.remove(at);
                    self.free.push(slot);
                }
            }
        }
        Ok(self.free.pop().map(|index| SlabSlot {
            sender: self,
            index,
            published: false,
        }))
    }

    /// Waiter side of the slot-freed protocol: sets `sender_parked`, fences, reclaims.
    /// `Ok(true)`: still no free slot, sleep until the release notifier fires, then call
    /// [`unpark`](Self::unpark). `Ok(false)`: a slot is free, the flag is cleared.
    pub fn prepare_park(&mut self) -> Result<bool, ShmError> {
        self.park_seq = self.park_seq.wrapping_add(1);
        // Relaxed store, ordered before the re-check by the fence.
        self.slab
            .header()
            .sender_parked
            .store((self.park_seq << 1) | 1, Ordering::Relaxed);
        // SeqCst fence: pairs with the SeqCst fence in `SlotOwner::drop` (after its FREE
        // store): either our reclaim sees FREE, or the receiver sees the announcement.
        fence(Ordering::SeqCst);
        self.reclaim()?;
        if self.free.is_empty() {
            Ok(true)
        } else {
            self.unpark();
            Ok(false)
        }
    }

    /// Withdraws the park announcement after waking up.
    pub fn unpark(&mut self) {
        // Relaxed: the parked word carries no data.
        self.slab
            .header()
            .sender_parked
            .store(self.park_seq << 1, Ordering::Relaxed);
    }

    /// Number of slots published and not yet reclaimed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Number of slots in the local free list (without reclaiming).
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Takes every slot back after the receiver is gone (hub): all states `FREE`, the flag
    /// clear, every slot in the local free list. Must not be used while a receiver (or a
    /// `Bytes` it handed out) may still read the slots.
    pub fn reset(&mut self) {
        // Relaxed: as in `init`, the slab reaches the next receiver through a synchronising
        // channel.
        for i in 0..self.slab.cfg.slot_count {
            self.slab.state(i).state.store(FREE, Ordering::Relaxed);
        }
        self.slab.header().sender_parked.store(0, Ordering::Relaxed);
        self.in_flight.clear();
        self.newest_published = None;
        self.free = (0..self.slab.cfg.slot_count).rev().collect();
        self.park_seq = 0;
    }
}

/// A slot acquired by the sender. Dropping it without [`publish`](Self::publish) returns
/// it to the free list.
pub struct SlabSlot<'a> {
    sender: &'a mut SlabSender,
    index: u32,
    published: bool,
}

impl fmt::Debug for SlabSlot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlabSlot")
            .field("index", &self.index)
            .finish()
    }
}

impl SlabSlot<'_> {
    /// The slot number.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The whole slot (`slot_size` bytes); write the payload at the start. Its initial
    /// content is unspecified.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let slab = &self.sender.slab;
        slab.state(self.index).shadow.write();
        // SAFETY: the slot is in `slot_size` bytes inside the region; it is FREE and owned
        // by this sender (taken from the local free list after the receiver's Release store
        // of FREE was Acquired in `reclaim`, or never sent), so no receiver reads it; the
        // slice borrows `self`, which borrows the sender mutably, so it is unique.
        unsafe { std::slice::from_raw_parts_mut(slab.slot_ptr(self.index), slab.cfg.slot_size) }
    }

    /// Marks the slot in flight with a payload of `len` bytes and returns `(slot, len)` to
    /// pass to [`Grant::commit_slab`](super::ring::Grant::commit_slab), which publishes it.
    ///
    /// Fails with [`ShmError::TooLarge`] (the slot returns to the free list) if `len` is
    /// above the slot size.
    pub fn publish(mut self, len: usize) -> Result<(u32, u32), ShmError> {
        self.sender.check_len(len)?;
        let slab = &self.sender.slab;
        slab.state(self.index).shadow.write();
        // Relaxed: the state and the slot bytes reach the receiver through the ring's
        // Release store of `head` in the following commit (Acquired by the receiver).
        slab.state(self.index)
            .state
            .store(IN_FLIGHT, Ordering::Relaxed);
        self.published = true;
        self.sender.in_flight.push(self.index);
        self.sender.newest_published = Some(self.index);
        Ok((self.index, len as u32))
    }
}

impl Drop for SlabSlot<'_> {
    fn drop(&mut self) {
        if !self.published {
            self.sender.free.push(self.index);
        }
    }
}

/// A callback run when a released slot must wake the parked sender.
pub type ReleaseNotifier = Arc<dyn Fn() + Send + Sync>;

struct RxShared {
    slab: Slab,
    /// Slots currently held by a live `Bytes` of this receiver (local memory).
    held: Box<[AtomicBool]>,
    /// How many entries of `held` are set (so that counting costs one load, not one per slot).
    held_count: AtomicU64,
    notifier: Mutex<Option<ReleaseNotifier>>,
    /// The last `sender_parked` word a release reported (local memory).
    notified: AtomicU64,
}

/// The receiving end of a slab: turns slab references into zero-copy [`Bytes`]. Cheap to
/// clone. See the [module docs](self).
#[derive(Clone)]
pub struct SlabReceiver {
    shared: Arc<RxShared>,
}

impl fmt::Debug for SlabReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlabReceiver")
            .field("cfg", &self.shared.slab.cfg)
            .field("held", &self.held())
            .finish()
    }
}

impl SlabReceiver {
    /// Attaches the receiving end to a slab (initialised by its sender). Writes nothing.
    pub fn attach(region: Region, cfg: SlabConfig) -> Result<SlabReceiver, ShmError> {
        let slab = Slab::new(region, cfg)?;
        Ok(SlabReceiver {
            shared: Arc::new(RxShared {
                held: (0..cfg.slot_count)
                    .map(|_| AtomicBool::new(false))
                    .collect(),
                held_count: AtomicU64::new(0),
                notifier: Mutex::new(None),
                notified: AtomicU64::new(0),
                slab,
            }),
        })
    }

    /// Installs the callback run when dropping a received `Bytes` frees a slot while the
    /// sender is parked waiting for one (replaces any previous callback).
    pub fn set_release_notifier(&self, notifier: ReleaseNotifier) {
        *self
            .shared
            .notifier
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(notifier);
    }

    /// Turns the reference `(slot, len)` read from the ring into the payload, without
    /// copying. The slot is released when the last clone of the returned `Bytes` drops.
    ///
    /// Errors with [`ShmError::Corrupt`] if `slot` is out of range, `len` exceeds the slot
    /// size, the slot is not in flight, or it is already held by a live `Bytes` (the peer sent
    /// it twice).
    pub fn take(&self, slot: u32, len: u32) -> Result<Bytes, ShmError> {
        self.claim(slot, len)?;
        Ok(Bytes::from_owner(SlotOwner {
            shared: Arc::clone(&self.shared),
            slot,
            len: len as usize,
        }))
    }

    /// Like [`take`](Self::take), but copies the payload out and releases the slot at once.
    ///
    /// The copy is a raw copy: no reference to the slot's memory is formed, so this is the
    /// sound way to read a slot a hostile peer process may rewrite concurrently (the copy
    /// may then mix old and new bytes, never more or fewer).
    pub fn take_copied(&self, slot: u32, len: u32) -> Result<Bytes, ShmError> {
        self.claim(slot, len)?;
        let slab = &self.shared.slab;
        slab.state(slot).shadow.read();
        let mut out = bytes::BytesMut::with_capacity(len as usize);
        // SAFETY: `claim` validated `slot < slot_count` and `len <= slot_size`, so the source
        // bytes lie inside the region (kept mapped by `self.shared`); the destination is a
        // fresh allocation of at least `len` bytes, so the ranges do not overlap. The slot is
        // IN_FLIGHT and claimed by us: an honest sender does not write it until the FREE
        // store in `release_slot` below.
        unsafe {
            std::ptr::copy_nonoverlapping(
                slab.slot_ptr(slot).cast_const(),
                out.spare_capacity_mut().as_mut_ptr().cast::<u8>(),
                len as usize,
            );
            out.set_len(len as usize);
        }
        release_slot(&self.shared, slot);
        Ok(out.freeze())
    }

    /// Validates a slab reference and marks the slot held by this receiver.
    fn claim(&self, slot: u32, len: u32) -> Result<(), ShmError> {
        let shared = &self.shared;
        let cfg = shared.slab.cfg;
        if slot >= cfg.slot_count {
            return Err(ShmError::Corrupt(format!(
                "slab slot {slot} out of range (slot count {})",
                cfg.slot_count
            )));
        }
        if len as usize > cfg.slot_size {
            return Err(ShmError::Corrupt(format!(
                "slab payload of {len} bytes exceeds the slot size of {} bytes",
                cfg.slot_size
            )));
        }
        let st = shared.slab.state(slot);
        // Relaxed: the ring's head (Acquired before this call) orders the sender's IN_FLIGHT
        // store and its slot writes before us.
        let state = st.state.load(Ordering::Relaxed);
        if state != IN_FLIGHT {
            return Err(ShmError::Corrupt(format!(
                "slab slot {slot} referenced but not in flight (state {state})"
            )));
        }
        // Relaxed: `held` is local bookkeeping; its clearing in `drop` happens before the
        // FREE store (Release), which the sender Acquires before it can resend the slot.
        if shared.held[slot as usize].swap(true, Ordering::Relaxed) {
            return Err(ShmError::Corrupt(format!(
                "slab slot {slot} received twice without being released"
            )));
        }
        // Relaxed: see `held`.
        shared.held_count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Number of slots currently held by live `Bytes` handed out by this receiver.
    pub fn held(&self) -> usize {
        // Relaxed: a count of local bookkeeping, exact once the drops it races with are done.
        self.shared.held_count.load(Ordering::Relaxed) as usize
    }
}

/// Owner of a received slot inside a `Bytes`; releases the slot on drop.
struct SlotOwner {
    shared: Arc<RxShared>,
    slot: u32,
    len: usize,
}

impl AsRef<[u8]> for SlotOwner {
    fn as_ref(&self) -> &[u8] {
        let slab = &self.shared.slab;
        slab.state(self.slot).shadow.read();
        // SAFETY: `take` validated `slot < slot_count` and `len <= slot_size`, so the bytes
        // are inside the region, which `shared` keeps mapped. The slot is IN_FLIGHT and held
        // by this owner: the sender does not write it until our FREE store in `drop`. (A
        // misbehaving peer process could still scribble on it; that changes the bytes we
        // see, not where we read.)
        unsafe { std::slice::from_raw_parts(slab.slot_ptr(self.slot), self.len) }
    }
}

impl Drop for SlotOwner {
    fn drop(&mut self) {
        release_slot(&self.shared, self.slot);
    }
}

/// Hands a claimed slot back to the sender (FREE) and wakes it if it is parked.
fn release_slot(shared: &RxShared, slot: u32) {
    let st = shared.slab.state(slot);
    st.shadow.read();
    // Relaxed: ordered before the FREE store below by its Release.
    shared.held[slot as usize].store(false, Ordering::Relaxed);
    // Relaxed: see `SlabReceiver::held`.
    shared.held_count.fetch_sub(1, Ordering::Relaxed);
    // Release: pairs with the sender's Acquire load in `SlabSender::reclaim`; every read
    // of the slot through this owner happens before the sender reuses it.
    st.state.store(FREE, Ordering::Release);
    // SeqCst fence: pairs with the SeqCst fence in `SlabSender::prepare_park`.
    fence(Ordering::SeqCst);
    // Relaxed: the parked word carries no data.
    let word = shared.slab.header().sender_parked.load(Ordering::Relaxed);
    // Relaxed swap on local memory: exactly one releaser reports each park.
    if word & 1 == 1 && shared.notified.swap(word, Ordering::Relaxed) != word {
        let notifier = shared
            .notifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(notify) = notifier {
            notify();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn pair(cfg: SlabConfig) -> (SlabSender, SlabReceiver, Region) {
        let region = Region::heap(cfg.region_size());
        (
            SlabSender::init(region.clone(), cfg).unwrap(),
            SlabReceiver::attach(region.clone(), cfg).unwrap(),
            region,
        )
    }

    const CFG: SlabConfig = SlabConfig {
        slot_count: 2,
        slot_size: 128,
    };

    #[test]
    fn config_bounds() {
        for bad in [
            SlabConfig {
                slot_count: 0,
                slot_size: 64,
            },
            SlabConfig {
                slot_count: 1,
                slot_size: 65,
            },
            SlabConfig {
                slot_count: 1,
                slot_size: 0,
            },
            SlabConfig {
                slot_count: MAX_SLOT + 2,
                slot_size: 64,
            },
        ] {
            assert!(matches!(bad.validate(), Err(ShmError::InvalidConfig(_))));
        }
        let small = Region::heap(100);
        assert!(matches!(
            SlabSender::init(small, CFG),
            Err(ShmError::RegionTooSmall { .. })
        ));
        SlabConfig::default().validate().unwrap();
    }

    #[test]
    fn round_trip_and_exhaustion() {
        let (mut tx, rx, _) = pair(CFG);
        let mut refs = Vec::new();
        for i in 0..2u8 {
            let mut s = tx.try_acquire().unwrap().unwrap();
            s.as_mut_slice()[..3].copy_from_slice(&[i; 3]);
            refs.push(s.publish(3).unwrap());
        }
        assert!(tx.try_acquire().unwrap().is_none());
        let a = rx.take(refs[0].0, refs[0].1).unwrap();
        let b = rx.take(refs[1].0, refs[1].1).unwrap();
        assert_eq!((&a[..], &b[..]), (&[0u8; 3][..], &[1u8; 3][..]));
        assert_eq!(rx.held(), 2);
        let a2 = a.slice(1..);
        drop(a);
        assert!(
            tx.try_acquire().unwrap().is_none(),
            "a clone still holds slot 0"
        );
        drop(a2);
        let s = tx.try_acquire().unwrap().unwrap();
        assert_eq!(s.index(), refs[0].0);
        drop(s); // unpublished: back to the free list
        assert_eq!(tx.free(), 1);
        drop(b);
        assert_eq!(rx.held(), 0);
    }

    #[test]
    fn too_large_names_slot_size() {
        let (mut tx, _, _) = pair(CFG);
        assert_eq!(
            tx.check_len(129).unwrap_err(),
            ShmError::TooLarge { len: 129, max: 128 }
        );
        let s = tx.try_acquire().unwrap().unwrap();
        assert!(matches!(s.publish(129), Err(ShmError::TooLarge { .. })));
        assert_eq!(tx.free(), 2, "refused slot went back");
    }

    #[test]
    fn receiver_rejects_bad_references() {
        let (mut tx, rx, _) = pair(CFG);
        assert!(matches!(rx.take(2, 1), Err(ShmError::Corrupt(_))));
        assert!(matches!(rx.take(0, 129), Err(ShmError::Corrupt(_))));
        assert!(
            matches!(rx.take(0, 1), Err(ShmError::Corrupt(_))),
            "not in flight"
        );
        let (slot, len) = tx.try_acquire().unwrap().unwrap().publish(1).unwrap();
        let held = rx.take(slot, len).unwrap();
        assert!(
            matches!(rx.take(slot, len), Err(ShmError::Corrupt(_))),
            "twice"
        );
        drop(held);
    }

    #[test]
    fn release_wakes_parked_sender_once() {
        let (mut tx, rx, _) = pair(CFG);
        let woken = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&woken);
        rx.set_release_notifier(Arc::new(move || {
            w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let r0 = tx.try_acquire().unwrap().unwrap().publish(1).unwrap();
        let r1 = tx.try_acquire().unwrap().unwrap().publish(1).unwrap();
        let b0 = rx.take(r0.0, r0.1).unwrap();
        let b1 = rx.take(r1.0, r1.1).unwrap();
        assert!(tx.prepare_park().unwrap());
        drop(b0);
        drop(b1);
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 1);
        tx.unpark();
        assert!(!tx.prepare_park().unwrap(), "slots are free now");
    }

    /// A slab of `slot_count` 128-byte slots, `n` of them published and held by the
    /// receiver: (sender, receiver, region, references in publication order, held bytes).
    #[allow(clippy::type_complexity)]
    fn held_slots(
        slot_count: u32,
        n: usize,
    ) -> (
        SlabSender,
        SlabReceiver,
        Region,
        Vec<(u32, u32)>,
        Vec<Bytes>,
    ) {
        let (mut tx, rx, region) = pair(SlabConfig {
            slot_count,
            slot_size: 128,
        });
        let refs: Vec<_> = (0..n)
            .map(|_| tx.try_acquire().unwrap().unwrap().publish(1).unwrap())
            .collect();
        let held = refs.iter().map(|r| rx.take(r.0, r.1).unwrap()).collect();
        (tx, rx, region, refs, held)
    }

    #[test]
    fn the_slot_published_last_is_handed_out_first_once_free() {
        let (mut empty, ..) = held_slots(4, 0);
        assert!(!empty.newest_in_flight().unwrap(), "nothing in flight");
        let (mut tx, rx, _, refs, held) = held_slots(4, 3);
        assert!(tx.newest_in_flight().unwrap());
        let [b0, b1, b2] = <[Bytes; 3]>::try_from(held).unwrap();
        // Freed out of publication order, reclaimed together: the newest ends on top.
        drop(b2);
        drop(b0);
        assert!(!tx.newest_in_flight().unwrap(), "the newest was freed");
        assert_eq!(tx.in_flight(), 1, "only the middle one is still held");
        let again = tx.try_acquire().unwrap().unwrap();
        assert_eq!(
            again.index(),
            refs[2].0,
            "the slot written last comes back first"
        );
        drop(again);
        // The one still in flight is now the newest in flight only if it was published last.
        let r3 = tx.try_acquire().unwrap().unwrap().publish(1).unwrap();
        assert!(tx.newest_in_flight().unwrap());
        let b3 = rx.take(r3.0, r3.1).unwrap();
        drop(b3);
        assert!(
            !tx.newest_in_flight().unwrap(),
            "an older slot in flight does not count"
        );
        assert_eq!(tx.in_flight(), 1);
        drop(b1);
        assert_eq!(tx.reclaim().unwrap(), 1);
        assert_eq!((tx.in_flight(), tx.free()), (0, 4));
    }

    #[test]
    fn the_slot_published_last_goes_first_even_when_reclaimed_before_others() {
        let (mut tx, _rx, _, refs, mut held) = held_slots(3, 3);
        // The newest is freed and reclaimed first; older ones are reclaimed on top of it.
        drop(held.pop());
        assert_eq!(tx.reclaim().unwrap(), 1);
        drop(held);
        assert_eq!(tx.reclaim().unwrap(), 2);
        assert_eq!(tx.try_acquire().unwrap().unwrap().index(), refs[2].0);
    }

    #[test]
    fn a_corrupt_state_fails_reclaim_and_keeps_the_slot_out_of_use() {
        let (mut tx, _rx, region, refs, held) = held_slots(3, 3);
        drop(held);
        // A hostile peer scribbles over the middle slot's state word.
        let cfg = SlabConfig {
            slot_count: 3,
            slot_size: 128,
        };
        Slab::new(region, cfg)
            .unwrap()
            .state(refs[1].0)
            .state
            .store(7, Ordering::Relaxed);
        assert!(matches!(tx.reclaim(), Err(ShmError::Corrupt(_))));
        assert!(matches!(tx.newest_in_flight(), Err(ShmError::Corrupt(_))));
        // The slots before the bad one were reclaimed; the bad one and those after stay out.
        assert_eq!((tx.free(), tx.in_flight()), (1, 2));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Acquire a slot (if one is free), write and publish it; the receiver takes it.
        Send,
        /// The application drops the `i % held`-th message it holds.
        Drop(usize),
        Reclaim,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Op::Send),
            any::<usize>().prop_map(Op::Drop),
            Just(Op::Reclaim)
        ]
    }

    proptest::proptest! {
        /// Against a model of the slot states: every slot is free, in flight or held exactly
        /// once; nothing is handed out twice; the newest published slot, once freed, is the
        /// next one handed out; payloads arrive intact.
        #[test]
        fn slab_matches_model(slots in 1u32..6, ops in proptest::collection::vec(op(), 1..200)) {
            let cfg = SlabConfig { slot_count: slots, slot_size: 64 };
            let (mut tx, rx, _) = pair(cfg);
            // Messages the application holds, oldest first: (slot, bytes, payload tag).
            let mut held: Vec<(u32, Bytes, u8)> = Vec::new();
            let mut newest: Option<u32> = None;
            let mut tag = 0u8;
            for op in ops {
                match op {
                    Op::Send => {
                        let newest_free = newest.filter(|n| !held.iter().any(|h| h.0 == *n));
                        match tx.try_acquire().unwrap() {
                            None => proptest::prop_assert_eq!(held.len(), slots as usize),
                            Some(mut slot) => {
                                if let Some(n) = newest_free {
                                    proptest::prop_assert_eq!(slot.index(), n, "newest first");
                                }
                                proptest::prop_assert!(held.iter().all(|h| h.0 != slot.index()));
                                tag = tag.wrapping_add(1);
                                slot.as_mut_slice()[..4].fill(tag);
                                let (index, len) = slot.publish(4).unwrap();
                                newest = Some(index);
                                held.push((index, rx.take(index, len).unwrap(), tag));
                            }
                        }
                    }
                    Op::Drop(i) if !held.is_empty() => {
                        let (_, bytes, tag) = held.remove(i % held.len());
                        proptest::prop_assert_eq!(&bytes[..], &[tag; 4][..]);
                    }
                    Op::Drop(_) => {}
                    Op::Reclaim => {
                        tx.reclaim().unwrap();
                        proptest::prop_assert_eq!(tx.in_flight(), held.len());
                        proptest::prop_assert_eq!(
                            tx.newest_in_flight().unwrap(),
                            newest.is_some_and(|n| held.iter().any(|h| h.0 == n))
                        );
                    }
                }
                proptest::prop_assert!(tx.in_flight() >= held.len());
                // Every slot is exactly once in the free list or in flight.
                let mut all: Vec<u32> = tx.free.iter().chain(&tx.in_flight).copied().collect();
                all.sort_unstable();
                proptest::prop_assert_eq!(all, (0..slots).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn reset_frees_everything() {
        let (mut tx, rx, _) = pair(CFG);
        let r = tx.try_acquire().unwrap().unwrap().publish(1).unwrap();
        drop(rx);
        assert_eq!(tx.in_flight(), 1);
        tx.reset();
        assert_eq!((tx.in_flight(), tx.free()), (0, 2));
        let _ = r;
    }

    #[test]
    fn bytes_outlive_receiver_and_region_handles() {
        let (mut tx, rx, region) = pair(CFG);
        let mut s = tx.try_acquire().unwrap().unwrap();
        s.as_mut_slice()[..2].copy_from_slice(b"ok");
        let (slot, len) = s.publish(2).unwrap();
        let bytes = rx.take(slot, len).unwrap();
        drop((rx, region));
        assert_eq!(&bytes[..], b"ok");
        drop(bytes);
        assert_eq!(tx.reclaim().unwrap(), 1);
    }
}
