//! A single-producer single-consumer ring of variable-length frames in shared memory.
//!
//! # Layout
//!
//! ```text
//!  region: [ RingHeader (512 B)                                  ][ data: capacity bytes ]
//!            bytes   0..128: head            (u64, written only by the producer)
//!            bytes 128..256: tail            (u64, written only by the consumer)
//!            bytes 256..384: consumer_parked (u64, written only by the consumer)
//!            bytes 384..512: producer_parked (u64, written only by the producer)
//! ```
//!
//! `head` and `tail` are free-running byte counters (never reduced modulo the capacity); the
//! byte at counter `i` lives at `data[i % capacity]`. The ring holds `head - tail` bytes, and
//! `tail <= head <= tail + capacity` always. Both are multiples of [`FRAME_ALIGN`]. Each side
//! keeps a local copy of the index it writes and a cached copy of the peer's index, so the
//! steady state touches the peer's cache line only when the cached value is exhausted.
//!
//! # Frames
//!
//! Every frame starts with an 8-byte header at an 8-byte aligned position and never wraps:
//!
//! ```text
//!  header (u64, native endian) = len (bits 0..32) | kind (bits 32..40) | slot (bits 40..64)
//!
//!  kind INLINE  len = payload bytes, followed by the payload padded to 8 bytes; slot = 0
//!  kind SLAB    len = payload bytes in slab slot `slot`; nothing follows
//!  kind CLOSE   len = 0; the producer closed this direction cleanly; slot = 0
//!  kind PAD     len = bytes to the end of the data area after this header; slot = 0.
//!               Written when the next frame does not fit before the wrap; skipped by the
//!               consumer.
//! ```
//!
//! An inline frame occupies at most `capacity / 2` bytes ([`ring_max_inline`] payload
//! bytes), so an empty ring always has room for the largest frame plus the padding in front
//! of it: a waiting producer is always unblocked once the consumer catches up.
//!
//! # Validation
//!
//! Everything read from shared memory is checked before use, and read exactly once (volatile
//! reads into locals): the peer's index must be aligned, within `capacity` of ours and must
//! not move backwards; a frame header must have a known kind, zero reserved bits, a length
//! within [`ring_max_inline`] (inline), within what the producer published and within the
//! data area; a padding frame must reach exactly the end of the data area. Anything else is
//! [`ShmError::Corrupt`]: never a panic, an out-of-bounds access, or a stall on a frame that
//! can never complete. (Slab slot numbers and lengths are checked by
//! [`SlabReceiver::take`](super::slab::SlabReceiver::take).)
//!
//! # Wake-ups
//!
//! A side that finds nothing to do parks: it announces a new park in its parked word, issues
//! a `SeqCst` fence, re-checks the ring, and sleeps only if there is still nothing to do
//! ([`RingConsumer::prepare_park`], [`RingProducer::prepare_park`]). A side that publishes
//! (a commit; a release, or a batch of releases — see [`RingConsumer::set_release_batch`])
//! stores its index, issues a `SeqCst` fence and then reads the peer's parked word; if the
//! peer is parked, and this park has not been reported yet, it returns a [`Wake`] saying the
//! peer must be woken (for example by ringing its doorbell). The two fences make the classic
//! store-buffer pattern safe: either the waiter's re-check sees the new index, or the
//! notifier sees the announcement, so no wake-up is lost.
//!
//! Each parked word has a single writer, its waiter: it holds `(park number << 1) | parked`.
//! The notifier only reads it and remembers (locally) the last park it reported, so a peer
//! that sleeps costs one system call, not one per frame, and no index or flag in shared
//! memory is written by both sides.
//!
//! ```
//! use actix_tether::shm::{ring, Region};
//! use actix_tether::shm::ring::{FrameKind, RingConsumer, RingProducer};
//!
//! let region = Region::heap(ring::ring_region_size(1024));
//! ring::init(&region, 1024).unwrap();
//! let mut tx = RingProducer::attach(region.clone(), 1024).unwrap();
//! let mut rx = RingConsumer::attach(region, 1024).unwrap();
//!
//! let mut grant = tx.try_grant(5).unwrap().expect("room");
//! grant.as_mut_slice().copy_from_slice(b"hello");
//! let _wake = grant.commit_inline(5).unwrap();
//!
//! let frame = rx.try_read().unwrap().expect("a frame");
//! assert_eq!(frame.kind(), FrameKind::Inline);
//! assert_eq!(frame.payload(), b"hello");
//! let _wake = frame.release();
//! assert!(rx.try_read().unwrap().is_none());
//! ```
#![allow(unsafe_code)]

use std::fmt;
use std::ptr;

use super::region::Region;
use super::ShmError;
#[cfg(loom)]
use crate::sync::Tracked;
use crate::sync::{fence, AtomicU64, Ordering};

/// Alignment in bytes of every frame (header and inline payload).
pub const FRAME_ALIGN: usize = 8;
/// Size in bytes of a frame header.
pub const FRAME_HEADER_LEN: usize = 8;
/// Smallest ring capacity in bytes.
pub const RING_MIN_CAPACITY: usize = 64;
/// Largest ring capacity in bytes (2 GiB).
pub const RING_MAX_CAPACITY: usize = 1 << 31;
/// Largest slab slot number a frame can carry (24 bits).
pub const MAX_SLOT: u32 = (1 << 24) - 1;

/// Under loom, one access tracker per 8-byte word of data; loom rings are at most this big.
#[cfg(loom)]
const LOOM_WORDS: usize = 16;

const KIND_INLINE: u32 = 1;
const KIND_SLAB: u32 = 2;
const KIND_CLOSE: u32 = 3;
const KIND_PAD: u32 = 4;

/// One index or flag on two cache lines of its own: 128 bytes, so that the adjacent-line
/// prefetcher (which pulls 128-byte pairs of lines) does not make the producer's and the
/// consumer's words share a pair. Measured: with 64-byte lines, a consumer's `tail` store
/// stalled on the pair holding the producer's `head`.
#[repr(C, align(64))]
struct Line<T>(T, [u64; LINE_PAD_WORDS]);

/// Padding words after an 8-byte word to fill 128 bytes.
const LINE_PAD_WORDS: usize = 15;

impl<T> Line<T> {
    #[cfg(loom)]
    fn new(value: T) -> Line<T> {
        Line(value, [0; LINE_PAD_WORDS])
    }
}

/// The shared header of a ring. Placed at the start of the ring's region.
#[repr(C)]
struct RingHeader {
    head: Line<AtomicU64>,
    tail: Line<AtomicU64>,
    consumer_parked: Line<AtomicU64>,
    producer_parked: Line<AtomicU64>,
    #[cfg(loom)]
    shadow: [Tracked; LOOM_WORDS],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<RingHeader>() == 512);
    assert!(std::mem::align_of::<RingHeader>() == 64);
};

/// Size of the header, rounded to a cache line.
const HEADER_LEN: usize = std::mem::size_of::<RingHeader>().next_multiple_of(64);

/// Bytes of region a ring of `capacity` data bytes needs (header plus data). The region must
/// be aligned to [`REGION_ALIGN`](super::region::REGION_ALIGN).
pub const fn ring_region_size(capacity: usize) -> usize {
    HEADER_LEN.saturating_add(capacity)
}

/// Largest inline payload, in bytes, of a ring of `capacity` bytes: `capacity / 2 - 8`.
pub const fn ring_max_inline(capacity: usize) -> usize {
    (capacity / 2).saturating_sub(FRAME_HEADER_LEN)
}

/// Whether the peer must be woken after a [`commit`](Grant::commit_inline) or a
/// [`release`](ReadFrame::release).
#[must_use = "a parked peer must be woken, or it may sleep forever"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake(bool);

impl Wake {
    /// `true` if the peer had announced it was parked: write its doorbell now. Reported
    /// once per park of the peer.
    #[inline]
    pub fn is_needed(self) -> bool {
        self.0
    }
}

/// The kind of a frame read from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// The payload is inline, see [`ReadFrame::payload`].
    Inline,
    /// The payload is in slab slot `slot`; its length is [`ReadFrame::len`].
    Slab {
        /// Slab slot number (validated by the slab, not by the ring).
        slot: u32,
    },
    /// The producer closed this direction cleanly; nothing follows.
    Close,
}

#[cold]
#[inline(never)]
fn corrupt(msg: String) -> ShmError {
    ShmError::Corrupt(msg)
}

fn check_capacity(capacity: usize) -> Result<(), ShmError> {
    if !capacity.is_power_of_two() || !(RING_MIN_CAPACITY..=RING_MAX_CAPACITY).contains(&capacity) {
        return Err(ShmError::InvalidConfig(format!(
            "ring capacity {capacity} must be a power of two between {RING_MIN_CAPACITY} and \
             {RING_MAX_CAPACITY} bytes"
        )));
    }
    #[cfg(loom)]
    if capacity > LOOM_WORDS * FRAME_ALIGN {
        return Err(ShmError::InvalidConfig(format!(
            "loom rings are at most {} bytes",
            LOOM_WORDS * FRAME_ALIGN
        )));
    }
    Ok(())
}

/// Initialises the ring header in `region`: `head = tail = 0`, both parked flags clear.
///
/// Exactly one side initialises a ring, before the peer attaches (the segment creator), or
/// when a peer is gone and its ring is reused (the hub). Initialising a ring that a live
/// peer uses corrupts its stream (which the peer then detects), nothing worse.
pub fn init(region: &Region, capacity: usize) -> Result<(), ShmError> {
    check_capacity(capacity)?;
    region.require(ring_region_size(capacity))?;
    #[cfg(not(loom))]
    {
        // Std atomics are plain integers, so the header is usable before its first store.
        Ring::new(region.clone(), capacity)?.zero_header();
        // Release fence: orders the zeroing before every later store of this thread, including
        // the Release half of whatever hands the ring to its attacher (a channel, a thread
        // spawn); across processes the hand-off (fd passing, process spawn) synchronises by
        // itself. (The Acquire loads in `attach` pair with earlier owners' index stores, not
        // with this fence.)
        fence(Ordering::Release);
    }
    #[cfg(loom)]
    {
        let hdr = region.as_ptr().cast::<RingHeader>();
        // SAFETY: loom atomics must be constructed before use; the region is valid and
        // aligned for a `RingHeader` (checked above), and under loom the region is a heap
        // allocation not yet shared with another thread.
        unsafe {
            ptr::write(
                hdr,
                RingHeader {
                    head: Line::new(AtomicU64::new(0)),
                    tail: Line::new(AtomicU64::new(0)),
                    consumer_parked: Line::new(AtomicU64::new(0)),
                    producer_parked: Line::new(AtomicU64::new(0)),
                    shadow: std::array::from_fn(|_| Tracked::new()),
                },
            )
        };
    }
    Ok(())
}

/// What both ends share: the region and the validated geometry.
struct Ring {
    region: Region,
    capacity: u64,
    mask: u64,
    max_inline: usize,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Ring {
    fn new(region: Region, capacity: usize) -> Result<Ring, ShmError> {
        check_capacity(capacity)?;
        region.require(ring_region_size(capacity))?;
        Ok(Ring {
            region,
            capacity: capacity as u64,
            mask: capacity as u64 - 1,
            max_inline: ring_max_inline(capacity),
        })
    }

    #[inline]
    fn header(&self) -> &RingHeader {
        // SAFETY: the region holds at least `HEADER_LEN` bytes, is 64-aligned and lives as
        // long as `self`; the header was initialised by `init` (under loom) or consists of
        // plain integers valid for any bit pattern (std atomics). Only atomic operations
        // are performed through this reference.
        unsafe { &*self.region.as_ptr().cast::<RingHeader>() }
    }

    /// The shared `(head, tail)` as an attaching end finds them, validated.
    fn indices_at_attach(&self) -> Result<(u64, u64), ShmError> {
        let h = self.header();
        // Acquire: pairs with the Release stores of `head` (producer) and `tail` (consumer)
        // of the ends that used the ring before.
        let head = h.head.0.load(Ordering::Acquire);
        let tail = h.tail.0.load(Ordering::Acquire);
        if head % 8 != 0 || tail % 8 != 0 || head.wrapping_sub(tail) > self.capacity {
            return Err(corrupt(format!(
                "ring indices head={head} tail={tail} are inconsistent at attach"
            )));
        }
        Ok((head, tail))
    }

    /// Zeroes both indices and both parked words in shared memory (for reuse after the peer
    /// is gone).
    fn zero_header(&self) {
        let h = self.header();
        // Relaxed: the ring is handed to its next user through a synchronising channel (fd
        // passing or thread spawn).
        h.head.0.store(0, Ordering::Relaxed);
        h.tail.0.store(0, Ordering::Relaxed);
        h.consumer_parked.0.store(0, Ordering::Relaxed);
        h.producer_parked.0.store(0, Ordering::Relaxed);
    }

    /// Pointer to data byte `offset` (`offset <= capacity`).
    #[inline]
    fn data(&self, offset: u64) -> *mut u8 {
        debug_assert!(offset <= self.capacity);
        // SAFETY: the region holds `HEADER_LEN + capacity` bytes and `offset <= capacity`,
        // so the result is inside the region or one past its end.
        unsafe { self.region.as_ptr().add(HEADER_LEN + offset as usize) }
    }

    /// Asks the CPU to fetch the cache line at data `offset` (no access: nothing is read).
    ///
    /// The consumer issues it for the next frame's header just before it re-reads `head`:
    /// the two cache-line transfers from the producer's core then overlap instead of
    /// following one another (the header can only be read once `head` says it is there).
    #[inline]
    fn prefetch(&self, offset: u64) {
        #[cfg(all(target_arch = "x86_64", not(loom)))]
        // SAFETY: `_mm_prefetch` needs the `sse` target feature, part of the x86-64
        // baseline. A prefetch is a hint, not a memory access of the language: it cannot
        // fault and is no data race, whoever writes the line. The address is inside the data
        // area anyway: every caller masks `offset` with `mask` (`< capacity`).
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                self.data(offset).cast_const().cast::<i8>(),
            );
        }
        #[cfg(not(all(target_arch = "x86_64", not(loom))))]
        let _ = offset;
    }

    #[inline]
    fn read_word(&self, offset: u64) -> u64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= self.capacity);
        // SAFETY: `offset` is 8-aligned and `offset + 8 <= capacity`, so the 8 bytes are in
        // the data area and aligned (the data area starts 64-aligned). A volatile read makes
        // this exactly one load: the value is validated once and then only the local copy is
        // used, even if the peer rewrites the word concurrently.
        unsafe { ptr::read_volatile(self.data(offset).cast::<u64>()) }
    }

    #[inline]
    fn write_word(&self, offset: u64, value: u64) {
        debug_assert!(offset % 8 == 0 && offset + 8 <= self.capacity);
        // SAFETY: as in `read_word`; the producer only writes bytes between `head` and
        // `tail + capacity`, which the consumer does not read until `head` is published.
        unsafe { ptr::write_volatile(self.data(offset).cast::<u64>(), value) }
    }

    /// Under loom, records an access to the `len` data bytes from free-running position
    /// `from`.
    #[cfg(loom)]
    fn track(&self, from: u64, len: u64, write: bool) {
        for i in (0..len).step_by(FRAME_ALIGN) {
            let pos = from.wrapping_add(i);
            let t = &self.header().shadow[((pos & self.mask) / 8) as usize];
            if write {
                t.write()
            } else {
                t.read()
            }
        }
    }

    #[cfg(not(loom))]
    #[inline(always)]
    fn track(&self, _from: u64, _len: u64, _write: bool) {}
}

#[inline]
fn footprint(len: usize) -> u64 {
    (FRAME_HEADER_LEN + len.next_multiple_of(FRAME_ALIGN)) as u64
}

#[inline]
fn encode(kind: u32, slot: u32, len: u32) -> u64 {
    u64::from(len) | (u64::from(kind) << 32) | (u64::from(slot) << 40)
}

/// Waiter half of the parked-flag protocol (the single writer of its parked word).
#[derive(Debug, Default)]
struct Waiter {
    /// Number of the current or last park.
    seq: u64,
}

impl Waiter {
    /// Continues the park numbering found in shared memory.
    fn attach(flag: &AtomicU64) -> Waiter {
        Waiter {
            // Relaxed: only our own earlier incarnation wrote it.
            seq: flag.load(Ordering::Relaxed) >> 1,
        }
    }

    /// Announces a new park; the caller re-checks the ring afterwards.
    fn announce(&mut self, flag: &AtomicU64) {
        self.seq = self.seq.wrapping_add(1);
        // Relaxed store; ordered before the re-check by the SeqCst fence below.
        flag.store((self.seq << 1) | 1, Ordering::Relaxed);
        // SeqCst fence: pairs with the SeqCst fence in the peer's `Notifier::notify` (after
        // its index store). Either our re-check sees the peer's new index, or its load of
        // the parked word sees this announcement: no lost wake-up.
        fence(Ordering::SeqCst);
    }

    /// Withdraws the announcement (work appeared, or we woke up).
    fn clear(&self, flag: &AtomicU64) {
        // Relaxed: the parked word carries no data; a notifier that still sees the
        // announcement causes one harmless spurious wake-up.
        flag.store(self.seq << 1, Ordering::Relaxed);
    }
}

/// Notifier half of the parked-flag protocol: reads the peer's parked word after publishing.
#[derive(Debug, Default)]
struct Notifier {
    /// The last parked word we reported a wake-up for.
    last: u64,
}

impl Notifier {
    /// Run right after publishing an index (Release store).
    #[inline]
    fn notify(&mut self, flag: &AtomicU64) -> Wake {
        // SeqCst fence: pairs with the SeqCst fence in the peer's `Waiter::announce`.
        fence(Ordering::SeqCst);
        // Relaxed: the parked word carries no data; the index (Release) and the doorbell do.
        let word = flag.load(Ordering::Relaxed);
        if word & 1 == 1 && word != self.last {
            self.last = word;
            Wake(true)
        } else {
            Wake(false)
        }
    }
}

/// Ring footprint (header and payload) up to which an inline frame counts as small for the
/// consumer's prefetch (see [`RingConsumer::try_read`]): two cache lines' worth (a frame
/// that does not start on a line boundary spans three; the prefetch covers the first two).
const SMALL_FRAME: u64 = 128;

/// How far ahead of the frame it reads the consumer prefetches published frames, in bytes.
const READ_AHEAD: u64 = 1024;

/// The producing end of a ring. See the [module docs](self).
#[derive(Debug)]
pub struct RingProducer {
    ring: Ring,
    /// Authoritative head (we are its only writer).
    head: u64,
    /// Last tail read from shared memory.
    cached_tail: u64,
    /// Our side of `producer_parked`.
    waiter: Waiter,
    /// Our view of `consumer_parked`.
    notifier: Notifier,
}

impl RingProducer {
    /// Attaches the producing end to an [initialised](init) ring of `capacity` data bytes.
    ///
    /// `capacity` must come from local, validated configuration (not re-read from shared
    /// memory later). The current shared `head` and `tail` are validated.
    pub fn attach(region: Region, capacity: usize) -> Result<RingProducer, ShmError> {
        let ring = Ring::new(region, capacity)?;
        let (head, tail) = ring.indices_at_attach()?;
        let waiter = Waiter::attach(&ring.header().producer_parked.0);
        Ok(RingProducer {
            ring,
            head,
            cached_tail: tail,
            waiter,
            notifier: Notifier::default(),
        })
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.ring.capacity as usize
    }

    /// Largest inline payload a grant may ask for, in bytes ([`ring_max_inline`]).
    pub fn max_inline(&self) -> usize {
        self.ring.max_inline
    }

    /// Re-reads the consumer's tail and validates it.
    #[inline]
    fn refresh_tail(&mut self) -> Result<(), ShmError> {
        // Acquire: pairs with the consumer's Release store of `tail` in
        // `RingConsumer::publish_tail`,
        // so its reads of the freed bytes happen before we overwrite them.
        let tail = self.ring.header().tail.0.load(Ordering::Acquire);
        let used = self.head.wrapping_sub(tail);
        if tail % 8 != 0
            || used > self.ring.capacity
            || tail.wrapping_sub(self.cached_tail) > self.head.wrapping_sub(self.cached_tail)
        {
            return Err(corrupt(format!(
                "ring tail {tail} is invalid (head {}, previous tail {}, capacity {})",
                self.head, self.cached_tail, self.ring.capacity
            )));
        }
        self.cached_tail = tail;
        Ok(())
    }

    /// Bytes needed for a frame of up to `max_len` payload bytes at the current head,
    /// including padding to the wrap, and the padding alone.
    #[inline]
    fn need(&self, max_len: usize) -> (u64, u64) {
        let foot = footprint(max_len);
        let to_end = self.ring.capacity - (self.head & self.ring.mask);
        if foot <= to_end {
            (foot, 0)
        } else {
            (to_end + foot, to_end)
        }
    }

    #[inline]
    fn has_room(&self, need: u64) -> bool {
        self.ring.capacity - self.head.wrapping_sub(self.cached_tail) >= need
    }

    /// Reserves room for one frame whose inline payload is at most `max_len` bytes.
    ///
    /// `Ok(None)`: not enough room now; wait with [`prepare_park`](Self::prepare_park) and
    /// try again. The returned [`Grant`] holds the room until it is committed (as an inline
    /// frame of at most `max_len` bytes, a slab reference, or a close marker) or dropped
    /// (nothing is published).
    ///
    /// Errors: [`ShmError::TooLarge`] if `max_len` exceeds [`max_inline`](Self::max_inline);
    /// [`ShmError::Corrupt`] if the consumer's index is invalid.
    #[inline]
    pub fn try_grant(&mut self, max_len: usize) -> Result<Option<Grant<'_>>, ShmError> {
        if max_len > self.ring.max_inline {
            return Err(ShmError::TooLarge {
                len: max_len,
                max: self.ring.max_inline,
            });
        }
        let (need, pad) = self.need(max_len);
        if !self.has_room(need) {
            self.refresh_tail()?;
            if !self.has_room(need) {
                return Ok(None);
            }
        }
        Ok(Some(Grant {
            producer: self,
            pad,
            max_len,
        }))
    }

    /// Waiter side of the space-ready protocol (see the [module docs](self)).
    ///
    /// Announces the park in `producer_parked`, fences, and re-checks for room for `max_len`
    /// bytes.
    /// `Ok(true)`: still no room, the flag is set — sleep on the space-ready doorbell, then
    /// call [`unpark`](Self::unpark) and retry. `Ok(false)`: room appeared and the flag is
    /// cleared — retry at once.
    pub fn prepare_park(&mut self, max_len: usize) -> Result<bool, ShmError> {
        if max_len > self.ring.max_inline {
            return Err(ShmError::TooLarge {
                len: max_len,
                max: self.ring.max_inline,
            });
        }
        self.waiter.announce(&self.ring.header().producer_parked.0);
        self.refresh_tail()?;
        if self.has_room(self.need(max_len).0) {
            self.waiter.clear(&self.ring.header().producer_parked.0);
            Ok(false)
        } else {
            Ok(true)
        }
    }

    /// Withdraws the park announcement after waking up.
    pub fn unpark(&mut self) {
        self.waiter.clear(&self.ring.header().producer_parked.0);
    }

    /// Whether the consumer has released every frame committed so far.
    pub fn is_drained(&mut self) -> Result<bool, ShmError> {
        self.refresh_tail()?;
        Ok(self.cached_tail == self.head)
    }

    /// Resets the ring for reuse after the consumer is gone (hub): both indices and both
    /// flags to zero, locally and in shared memory. Must not be used while a consumer is
    /// attached.
    pub fn reset(&mut self) {
        self.ring.zero_header();
        self.head = 0;
        self.cached_tail = 0;
        self.waiter = Waiter::default();
        self.notifier = Notifier::default();
    }

    /// Writes the padding (if any) and the frame header, then publishes.
    #[inline]
    fn publish(&mut self, pad: u64, header: u64, foot: u64) -> Wake {
        let ring = &self.ring;
        let start = self.head;
        if pad > 0 {
            ring.write_word(
                start & ring.mask,
                encode(KIND_PAD, 0, (pad - FRAME_HEADER_LEN as u64) as u32),
            );
        }
        let frame = start.wrapping_add(pad);
        ring.write_word(frame & ring.mask, header);
        let new_head = frame.wrapping_add(foot);
        ring.track(start, pad + foot, true);
        self.head = new_head;
        // Release: pairs with the consumer's Acquire load of `head` in `refresh_head`; the
        // frame header and payload written above become visible with the index.
        ring.header().head.0.store(new_head, Ordering::Release);
        self.notifier.notify(&ring.header().consumer_parked.0)
    }
}

/// Room for one frame, reserved by [`RingProducer::try_grant`]. Dropping it publishes
/// nothing and releases the room.
pub struct Grant<'a> {
    producer: &'a mut RingProducer,
    pad: u64,
    max_len: usize,
}

impl fmt::Debug for Grant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("max_len", &self.max_len)
            .field("pad", &self.pad)
            .finish()
    }
}

impl Grant<'_> {
    /// Maximum inline payload of this grant in bytes.
    #[inline]
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The inline payload area: exactly [`max_len`](Self::max_len) bytes of ring memory.
    /// Its initial content is unspecified.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let ring = &self.producer.ring;
        let offset = self.producer.head.wrapping_add(self.pad) & ring.mask;
        // SAFETY: the grant reserved `footprint(max_len)` bytes at `offset` inside the data
        // area (frames never wrap: `offset + footprint <= capacity`), which the consumer does
        // not read until they are published; the slice borrows the grant, which borrows the
        // producer mutably, so no other slice of this ring's writable area exists.
        unsafe {
            std::slice::from_raw_parts_mut(
                ring.data(offset + FRAME_HEADER_LEN as u64),
                self.max_len,
            )
        }
    }

    /// Publishes the first `len` bytes of the payload area as one inline frame.
    ///
    /// Fails with [`ShmError::TooLarge`] (publishing nothing) if `len > max_len`.
    #[inline]
    pub fn commit_inline(self, len: usize) -> Result<Wake, ShmError> {
        if len > self.max_len {
            return Err(ShmError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        Ok(self
            .producer
            .publish(self.pad, encode(KIND_INLINE, 0, len as u32), footprint(len)))
    }

    /// Publishes a reference to slab slot `slot` holding `len` payload bytes.
    ///
    /// Fails with [`ShmError::InvalidConfig`] (publishing nothing) if `slot > MAX_SLOT`.
    #[inline]
    pub fn commit_slab(self, slot: u32, len: u32) -> Result<Wake, ShmError> {
        if slot > MAX_SLOT {
            return Err(ShmError::InvalidConfig(format!(
                "slab slot {slot} is above the ring's maximum of {MAX_SLOT}"
            )));
        }
        Ok(self.producer.publish(
            self.pad,
            encode(KIND_SLAB, slot, len),
            FRAME_HEADER_LEN as u64,
        ))
    }

    /// Publishes the close marker: this direction ends cleanly after the frames before it.
    pub fn commit_close(self) -> Wake {
        self.producer
            .publish(self.pad, encode(KIND_CLOSE, 0, 0), FRAME_HEADER_LEN as u64)
    }
}

/// The consuming end of a ring. See the [module docs](self).
#[derive(Debug)]
pub struct RingConsumer {
    ring: Ring,
    /// Authoritative tail (we are its only writer); runs ahead of the shared tail by skipped
    /// padding frames and by releases not yet published (see `release_batch`).
    tail: u64,
    /// The tail last stored to shared memory.
    published_tail: u64,
    /// Released bytes are published once at least this many are pending (0: every release).
    release_batch: u64,
    /// A wake-up found by `prepare_park`'s publication, reported by the next release or
    /// `flush`.
    owed_wake: bool,
    /// Last head read from shared memory.
    cached_head: u64,
    /// Whether the last frame released was a small inline one (at most [`SMALL_FRAME`]
    /// bytes of ring): then the next one probably is too, and a consumer that has caught up
    /// prefetches its first two lines before each re-read of `head`.
    small_frames: bool,
    /// Our side of `consumer_parked`.
    waiter: Waiter,
    /// Our view of `producer_parked`.
    notifier: Notifier,
}

impl RingConsumer {
    /// Attaches the consuming end to an [initialised](init) ring of `capacity` data bytes.
    /// See [`RingProducer::attach`].
    pub fn attach(region: Region, capacity: usize) -> Result<RingConsumer, ShmError> {
        let ring = Ring::new(region, capacity)?;
        let (head, tail) = ring.indices_at_attach()?;
        let waiter = Waiter::attach(&ring.header().consumer_parked.0);
        Ok(RingConsumer {
            ring,
            tail,
            published_tail: tail,
            release_batch: 0,
            owed_wake: false,
            cached_head: head,
            small_frames: true,
            waiter,
            notifier: Notifier::default(),
        })
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.ring.capacity as usize
    }

    /// Batches the publication of released space: [`ReadFrame::release`] stores the shared
    /// `tail` (and checks whether the producer is parked) only once `bytes` of released space
    /// are pending, instead of after every frame. A busy consumer then writes the line holding
    /// `tail` — which the producer reads — once per `bytes` rather than once per frame.
    ///
    /// Clamped to `capacity / 4`. Space released but not yet published is invisible to the
    /// producer: a producer waiting for room (a large frame plus padding at the wrap can
    /// need almost the whole ring) waits for the consumer's next publication, which comes at
    /// the latest when the consumer finds the ring empty. With a batch, the caller **must** call
    /// [`flush`](Self::flush) whenever [`try_read`](Self::try_read) returns `Ok(None)`, before
    /// waiting: that is what publishes the last frames of a burst. ([`prepare_park`](
    /// Self::prepare_park) refuses to park — returns `Ok(false)` — while released space is
    /// unpublished, and leaves the wake-up to the next `flush`.)
    pub fn set_release_batch(&mut self, bytes: usize) {
        self.release_batch = (bytes as u64).min(self.ring.capacity / 4);
    }

    /// Publishes released space not yet published (see
    /// [`set_release_batch`](Self::set_release_batch)) and tells whether the producer must be
    /// woken. Cheap when nothing is pending.
    #[inline]
    pub fn flush(&mut self) -> Wake {
        let owed = std::mem::take(&mut self.owed_wake);
        if self.published_tail == self.tail {
            return Wake(owed);
        }
        Wake(self.publish_tail().is_needed() || owed)
    }

    #[inline]
    fn publish_tail(&mut self) -> Wake {
        self.published_tail = self.tail;
        let h = self.ring.header();
        // Release: pairs with the producer's Acquire load of `tail` in `refresh_tail`; our
        // reads of the released bytes happen before it overwrites them.
        h.tail.0.store(self.tail, Ordering::Release);
        self.notifier.notify(&h.producer_parked.0)
    }

    /// Re-reads the producer's head and validates it.
    #[inline]
    fn refresh_head(&mut self) -> Result<(), ShmError> {
        // Acquire: pairs with the producer's Release store of `head` in `publish`; the
        // frames up to `head` are fully written once we see it.
        let head = self.ring.header().head.0.load(Ordering::Acquire);
        let avail = head.wrapping_sub(self.tail);
        if head % 8 != 0
            || avail > self.ring.capacity
            || avail < self.cached_head.wrapping_sub(self.tail)
        {
            return Err(corrupt(format!(
                "ring head {head} is invalid (tail {}, previous head {}, capacity {})",
                self.tail, self.cached_head, self.ring.capacity
            )));
        }
        self.cached_head = head;
        Ok(())
    }

    /// Returns the next frame without consuming it, or `Ok(None)` if the ring is empty.
    ///
    /// Padding frames are skipped. Dropping the returned frame without
    /// [`release`](ReadFrame::release) leaves it in the ring: the next call returns it again.
    /// Errors with [`ShmError::Corrupt`] on any malformed index or frame; the ring must then
    /// not be used any more.
    #[inline]
    pub fn try_read(&mut self) -> Result<Option<ReadFrame<'_>>, ShmError> {
        loop {
            if self.tail == self.cached_head {
                if self.small_frames {
                    // The next frame's header and the line after it (a 64 B payload's end).
                    self.ring.prefetch(self.tail & self.ring.mask);
                    self.ring
                        .prefetch(self.tail.wrapping_add(64) & self.ring.mask);
                }
                self.refresh_head()?;
                if self.tail == self.cached_head {
                    return Ok(None);
                }
            }
            let ring = &self.ring;
            let avail = self.cached_head.wrapping_sub(self.tail);
            let offset = self.tail & ring.mask;
            let to_end = ring.capacity - offset;
            // `avail >= 8` and `to_end >= 8`: all indices are multiples of 8, `avail != 0`,
            // and `offset < capacity`.
            ring.track(self.tail, FRAME_HEADER_LEN as u64, false);
            let word = ring.read_word(offset);
            let len = word as u32;
            let kind = (word >> 32) as u8 as u32;
            let slot = (word >> 40) as u32;
            let at = self.tail;
            let bad = |what: &str| {
                corrupt(format!(
                    "bad ring frame at {at} (header {word:#018x}): {what}"
                ))
            };
            let (foot, frame_kind) = match kind {
                KIND_PAD => {
                    if slot != 0 || u64::from(len) + FRAME_HEADER_LEN as u64 != to_end {
                        return Err(bad("padding does not reach the end of the ring"));
                    }
                    if to_end > avail {
                        return Err(bad("padding extends past the published head"));
                    }
                    self.tail = self.tail.wrapping_add(to_end);
                    continue;
                }
                KIND_INLINE => {
                    if slot != 0 {
                        return Err(bad("reserved bits set"));
                    }
                    if len as usize > ring.max_inline {
                        return Err(bad("inline length above the ring's maximum"));
                    }
                    (footprint(len as usize), FrameKind::Inline)
                }
                KIND_SLAB => (FRAME_HEADER_LEN as u64, FrameKind::Slab { slot }),
                KIND_CLOSE => {
                    if slot != 0 || len != 0 {
                        return Err(bad("close marker with a payload"));
                    }
                    (FRAME_HEADER_LEN as u64, FrameKind::Close)
                }
                _ => return Err(bad("unknown frame kind")),
            };
            if foot > avail {
                return Err(bad("frame extends past the published head"));
            }
            if foot > to_end {
                return Err(bad("frame crosses the end of the ring"));
            }
            ring.track(self.tail, foot, false);
            // Read ahead: published frames a kilobyte on are fetched from the producer's core
            // while this one is copied (a streaming ShmLink receiver of 64 B messages went
            // from 25-27 to 29-32 M msg/s; the hardware prefetcher alone left the copy
            // waiting on each line).
            if avail > foot + READ_AHEAD {
                ring.prefetch(self.tail.wrapping_add(foot + READ_AHEAD) & ring.mask);
            }
            return Ok(Some(ReadFrame {
                consumer: self,
                kind: frame_kind,
                len: len as usize,
                offset,
                foot,
            }));
        }
    }

    /// Waiter side of the data-ready protocol (see the [module docs](self)).
    ///
    /// Announces the park in `consumer_parked`, fences, and re-checks for a frame. `Ok(true)`: still empty,
    /// the flag is set — sleep on the data-ready doorbell, then call
    /// [`unpark`](Self::unpark) and retry. `Ok(false)`: data arrived and the flag is cleared
    /// — retry at once.
    pub fn prepare_park(&mut self) -> Result<bool, ShmError> {
        self.waiter.announce(&self.ring.header().consumer_parked.0);
        self.refresh_head()?;
        if self.tail != self.cached_head {
            self.waiter.clear(&self.ring.header().consumer_parked.0);
            return Ok(false);
        }
        // Never sleep on unpublished space: a producer waiting for it would wait for us while
        // we wait for it. A caller that forgot to `flush` gets `false` (retry) and the wake-up
        // at its next `flush`.
        if self.published_tail != self.tail {
            self.owed_wake |= self.publish_tail().is_needed();
            self.waiter.clear(&self.ring.header().consumer_parked.0);
            return Ok(false);
        }
        Ok(true)
    }

    /// Withdraws the park announcement after waking up.
    pub fn unpark(&mut self) {
        self.waiter.clear(&self.ring.header().consumer_parked.0);
    }

    /// Resets the consumer's view for reuse after the producer is gone (hub): both indices
    /// and flags to zero. Must not be used while a producer is attached.
    pub fn reset(&mut self) {
        self.ring.zero_header();
        self.tail = 0;
        self.published_tail = 0;
        self.owed_wake = false;
        self.cached_head = 0;
        self.small_frames = true;
        self.waiter = Waiter::default();
        self.notifier = Notifier::default();
    }
}

/// A frame returned by [`RingConsumer::try_read`]. [`release`](Self::release) consumes it;
/// dropping it leaves it in the ring.
pub struct ReadFrame<'a> {
    consumer: &'a mut RingConsumer,
    kind: FrameKind,
    len: usize,
    offset: u64,
    foot: u64,
}

impl fmt::Debug for ReadFrame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadFrame")
            .field("kind", &self.kind)
            .field("len", &self.len)
            .finish()
    }
}

impl ReadFrame<'_> {
    /// The frame's kind.
    #[inline]
    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    /// Payload length in bytes (inline bytes, or the slab payload's length; 0 for close).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The inline payload (empty for slab references and close markers), in place.
    ///
    /// For a ring shared with another process prefer [`copy_payload`](Self::copy_payload):
    /// a slice is a promise that the bytes do not change while it lives, which a hostile
    /// peer can break.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        if self.kind != FrameKind::Inline {
            return &[];
        }
        let ring = &self.consumer.ring;
        // SAFETY: validated in `try_read`: `offset + 8 + len <= offset + foot <= capacity`
        // and the bytes lie before the published head, so the producer wrote them before its
        // Release store of `head` (which we Acquired) and will not touch them until we
        // release them. (A misbehaving peer process could still scribble on them; that can
        // change the bytes we see, not where we read.)
        unsafe {
            std::slice::from_raw_parts(ring.data(self.offset + FRAME_HEADER_LEN as u64), self.len)
        }
    }

    /// Copies the inline payload (empty for slab references and close markers) to the start
    /// of `dst` and returns its length, or `None` (copying nothing) if `dst` is shorter.
    ///
    /// Unlike [`payload`](Self::payload), this never forms a reference to ring memory, so
    /// it stays sound when a hostile peer process rewrites the bytes while they are copied
    /// (the copy may then hold a mix of old and new bytes — never more or fewer).
    #[inline]
    pub fn copy_payload(&self, dst: &mut [std::mem::MaybeUninit<u8>]) -> Option<usize> {
        if self.kind != FrameKind::Inline {
            return Some(0);
        }
        if dst.len() < self.len {
            return None;
        }
        let ring = &self.consumer.ring;
        // SAFETY: the source is `len` bytes inside the data area (validated in `try_read`:
        // `offset + 8 + len <= offset + foot <= capacity`); the destination is a distinct,
        // exclusively borrowed buffer of at least `len` bytes (checked above), so the ranges
        // do not overlap. The raw copy reads bytes the producer published before its Release
        // store of `head` (Acquired by us); a concurrent write by a misbehaving peer only
        // changes the values copied, as for any shared-memory read.
        unsafe {
            ptr::copy_nonoverlapping(
                ring.data(self.offset + FRAME_HEADER_LEN as u64)
                    .cast_const(),
                dst.as_mut_ptr().cast::<u8>(),
                self.len,
            )
        };
        Some(self.len)
    }

    /// Consumes the frame: frees its ring space (and any padding before it) and tells
    /// whether the producer must be woken. With a [release
    /// batch](RingConsumer::set_release_batch), the space is published to the producer only
    /// once the batch is full or at [`RingConsumer::flush`].
    #[inline]
    pub fn release(self) -> Wake {
        let c = self.consumer;
        c.tail = c.tail.wrapping_add(self.foot);
        c.small_frames = self.kind == FrameKind::Inline && self.foot <= SMALL_FRAME;
        // A wake-up owed by `prepare_park` goes out with the next release or flush.
        let owed = std::mem::take(&mut c.owed_wake);
        if c.tail.wrapping_sub(c.published_tail) >= c.release_batch {
            Wake(c.publish_tail().is_needed() || owed)
        } else {
            Wake(owed)
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn pair(cap: usize) -> (RingProducer, RingConsumer, Region) {
        let region = Region::heap(ring_region_size(cap));
        init(&region, cap).unwrap();
        (
            RingProducer::attach(region.clone(), cap).unwrap(),
            RingConsumer::attach(region.clone(), cap).unwrap(),
            region,
        )
    }

    fn send(tx: &mut RingProducer, data: &[u8]) -> bool {
        match tx.try_grant(data.len()).unwrap() {
            Some(mut g) => {
                g.as_mut_slice().copy_from_slice(data);
                let _ = g.commit_inline(data.len()).unwrap();
                true
            }
            None => false,
        }
    }

    #[test]
    fn rejects_bad_capacity_and_small_region() {
        let r = Region::heap(4096);
        assert!(matches!(init(&r, 100), Err(ShmError::InvalidConfig(_))));
        assert!(matches!(init(&r, 32), Err(ShmError::InvalidConfig(_))));
        assert!(matches!(
            init(&r, 4096),
            Err(ShmError::RegionTooSmall { .. })
        ));
    }

    #[test]
    fn too_large_names_the_maximum() {
        let (mut tx, _, _) = pair(256);
        assert_eq!(tx.max_inline(), 120);
        assert_eq!(
            tx.try_grant(121).unwrap_err(),
            ShmError::TooLarge { len: 121, max: 120 }
        );
        let g = tx.try_grant(10).unwrap().unwrap();
        assert_eq!(
            g.commit_inline(11).unwrap_err(),
            ShmError::TooLarge { len: 11, max: 10 }
        );
    }

    #[test]
    fn wraps_with_padding_and_fills_up() {
        let (mut tx, mut rx, _) = pair(64);
        // 24-byte payloads: 32-byte frames; two fill the ring.
        assert!(send(&mut tx, &[1; 24]));
        assert!(send(&mut tx, &[2; 24]));
        assert!(!send(&mut tx, &[3; 1]), "ring is full");
        let f = rx.try_read().unwrap().unwrap();
        assert_eq!(f.payload(), &[1; 24]);
        let _ = f.release();
        // 8 bytes: fits at offset 0 after the wrap.
        assert!(send(&mut tx, &[3; 8]));
        // Offset now 16; a 24-byte payload needs 32 bytes, only 16 are free.
        assert!(!send(&mut tx, &[4; 24]));
        let _ = rx.try_read().unwrap().unwrap().release();
        // Used: 64..80 (offset 0..16); a 16-byte payload (24 bytes) fits at 16..40.
        assert!(send(&mut tx, &[4; 16]));
        let f = rx.try_read().unwrap().unwrap();
        assert_eq!(f.payload(), &[3; 8]);
        let _ = f.release();
        let f = rx.try_read().unwrap().unwrap();
        assert_eq!(f.payload(), &[4; 16]);
        let _ = f.release();
        // offset 40: a 24-byte payload needs padding 40..64 and 0..32.
        assert!(send(&mut tx, &[5; 24]));
        let f = rx.try_read().unwrap().unwrap();
        assert_eq!(f.payload(), &[5; 24]);
        let _ = f.release();
        assert!(tx.is_drained().unwrap());
        assert!(rx.try_read().unwrap().is_none());
    }

    #[test]
    fn unreleased_frame_is_returned_again() {
        let (mut tx, mut rx, _) = pair(256);
        assert!(send(&mut tx, b"abc"));
        assert_eq!(rx.try_read().unwrap().unwrap().payload(), b"abc");
        assert_eq!(rx.try_read().unwrap().unwrap().payload(), b"abc");
        let _ = rx.try_read().unwrap().unwrap().release();
        assert!(rx.try_read().unwrap().is_none());
    }

    #[test]
    fn slab_and_close_frames() {
        let (mut tx, mut rx, _) = pair(256);
        let _ = tx
            .try_grant(0)
            .unwrap()
            .unwrap()
            .commit_slab(7, 99)
            .unwrap();
        assert!(tx
            .try_grant(0)
            .unwrap()
            .unwrap()
            .commit_slab(MAX_SLOT + 1, 1)
            .is_err());
        let _ = tx.try_grant(0).unwrap().unwrap().commit_close();
        let f = rx.try_read().unwrap().unwrap();
        assert_eq!((f.kind(), f.len()), (FrameKind::Slab { slot: 7 }, 99));
        assert!(f.payload().is_empty());
        let _ = f.release();
        let f = rx.try_read().unwrap().unwrap();
        assert_eq!(f.kind(), FrameKind::Close);
        let _ = f.release();
    }

    #[test]
    fn parked_flags_request_exactly_one_wake() {
        let (mut tx, mut rx, _) = pair(64);
        assert!(rx.prepare_park().unwrap(), "empty ring: park");
        let mut g = tx.try_grant(1).unwrap().unwrap();
        g.as_mut_slice()[0] = 9;
        assert!(g.commit_inline(1).unwrap().is_needed());
        assert!(send(&mut tx, &[1]));
        // The first notifier cleared the flag; a second commit makes no wake-up.
        assert!(!tx
            .try_grant(0)
            .unwrap()
            .unwrap()
            .commit_inline(0)
            .unwrap()
            .is_needed());
        assert!(!rx.prepare_park().unwrap(), "data present: do not park");
        rx.unpark();
        // Fill the ring, producer parks, a release wakes it.
        while send(&mut tx, &[0; 8]) {}
        assert!(tx.prepare_park(8).unwrap());
        assert!(rx.try_read().unwrap().unwrap().release().is_needed());
        assert!(!rx.try_read().unwrap().unwrap().release().is_needed());
        tx.unpark();
    }

    #[test]
    fn corrupt_indices_are_reported() {
        let (mut tx, mut rx, region) = pair(64);
        assert!(send(&mut tx, &[1; 24]));
        assert!(send(&mut tx, &[2; 24]));
        let hdr = region.as_ptr().cast::<RingHeader>();
        // SAFETY: test-only access to the header of a live heap region, through atomics.
        let h = unsafe { &*hdr };
        h.tail.0.store(72, Ordering::Relaxed); // beyond head
        assert!(matches!(
            tx.try_grant(8).map(|g| g.is_some()),
            Err(ShmError::Corrupt(_))
        ));
        h.head.0.store(1000, Ordering::Relaxed); // more than a capacity ahead
        assert!(matches!(
            rx.try_read().map(|f| f.is_some()),
            Err(ShmError::Corrupt(_))
        ));
    }

    #[test]
    fn malformed_frames_are_reported() {
        let cases: [(u64, &str); 6] = [
            (encode(9, 0, 0), "unknown kind"),
            (encode(KIND_INLINE, 1, 0), "reserved bits"),
            (encode(KIND_INLINE, 0, 25), "inline above max"),
            (encode(KIND_CLOSE, 0, 1), "close with payload"),
            (encode(KIND_PAD, 0, 8), "short padding"),
            (encode(0, 0, 0), "zero header"),
        ];
        for (word, what) in cases {
            let (mut tx, mut rx, _) = pair(64);
            assert!(send(&mut tx, &[1; 8]));
            tx.ring.write_word(0, word);
            assert!(
                matches!(
                    rx.try_read().map(|f| f.is_some()),
                    Err(ShmError::Corrupt(_))
                ),
                "{what}"
            );
        }
        // An inline frame longer than what was published.
        let (mut tx, mut rx, _) = pair(64);
        assert!(send(&mut tx, &[1; 8]));
        tx.ring.write_word(0, encode(KIND_INLINE, 0, 16));
        assert!(rx.try_read().is_err());
    }

    #[test]
    fn free_running_indices_wrap_around_u64() {
        let region = Region::heap(ring_region_size(64));
        init(&region, 64).unwrap();
        let start = u64::MAX - 15; // 8-aligned, 16 bytes before the counters wrap
        {
            // SAFETY: test-only access to the header of a heap region, through atomics.
            let h = unsafe { &*region.as_ptr().cast::<RingHeader>() };
            h.head.0.store(start, Ordering::Relaxed);
            h.tail.0.store(start, Ordering::Relaxed);
        }
        let mut tx = RingProducer::attach(region.clone(), 64).unwrap();
        let mut rx = RingConsumer::attach(region, 64).unwrap();
        for i in 0..20u8 {
            assert!(send(&mut tx, &[i; 20]));
            let f = rx.try_read().unwrap().unwrap();
            assert_eq!(f.payload(), &[i; 20]);
            let _ = f.release();
        }
        assert!(tx.is_drained().unwrap());
    }

    #[test]
    fn reset_empties_the_ring() {
        let (mut tx, mut rx, _) = pair(64);
        assert!(send(&mut tx, &[1; 8]));
        tx.reset();
        rx.reset();
        assert!(rx.try_read().unwrap().is_none());
        assert!(send(&mut tx, &[2; 8]));
        assert_eq!(rx.try_read().unwrap().unwrap().payload(), &[2; 8]);
    }

    #[test]
    fn batched_release_publishes_at_the_batch_or_on_flush() {
        let (mut tx, mut rx, _) = pair(256);
        rx.set_release_batch(1 << 20);
        assert_eq!(rx.release_batch, 64, "clamped to a quarter of the ring");
        // 24-byte payloads: 32-byte frames; eight fill the ring.
        for i in 0..8 {
            assert!(send(&mut tx, &[i; 24]));
        }
        assert!(!send(&mut tx, &[9; 24]));
        let _ = rx.try_read().unwrap().unwrap().release();
        assert!(
            !send(&mut tx, &[9; 24]),
            "32 bytes released, not yet published"
        );
        assert!(tx.prepare_park(24).unwrap(), "the producer parks");
        // The second release reaches the batch: published, and the producer was parked.
        let wake = rx.try_read().unwrap().unwrap().release();
        assert!(wake.is_needed());
        tx.unpark();
        assert!(send(&mut tx, &[9; 24]));
        assert!(send(&mut tx, &[10; 24]));
        assert!(!send(&mut tx, &[11; 24]), "full again");
        // One more release stays pending until the consumer flushes.
        assert_eq!(rx.try_read().unwrap().unwrap().payload(), &[2; 24]);
        let _ = rx.try_read().unwrap().unwrap().release();
        assert!(!send(&mut tx, &[11; 24]));
        assert!(!rx.flush().is_needed());
        assert!(send(&mut tx, &[11; 24]));
        assert!(!rx.flush().is_needed(), "nothing pending");
    }

    #[test]
    fn prepare_park_refuses_to_sleep_on_unpublished_space() {
        let (mut tx, mut rx, _) = pair(256);
        rx.set_release_batch(64);
        for i in 0..8 {
            assert!(send(&mut tx, &[i; 24]));
        }
        assert!(
            tx.prepare_park(24).unwrap(),
            "ring full: the producer parks"
        );
        let _ = rx.try_read().unwrap().unwrap().release();
        // The consumer did not flush: prepare_park publishes, refuses to sleep, and the
        // owed wake-up comes out of the next flush.
        assert!(!rx.prepare_park().unwrap());
        assert!(rx.flush().is_needed());
        tx.unpark();
        assert!(send(&mut tx, &[9; 24]));
    }

    #[test]
    fn an_owed_wake_goes_out_with_the_next_release() {
        let (mut tx, mut rx, _) = pair(256);
        // Bring head and the published tail to offset 120 (15 empty frames, no batching).
        for _ in 0..15 {
            assert!(send(&mut tx, &[]));
            let _ = rx.try_read().unwrap().unwrap().release();
        }
        rx.set_release_batch(64);
        // A 32-byte frame at 120..152, read and released but not published (32 < 64).
        assert!(send(&mut tx, &[1; 24]));
        let _ = rx.try_read().unwrap().unwrap().release();
        // The largest frame (128 bytes) at offset 152 needs 104 bytes of padding too: 232 >
        // the 224 the producer sees free. It parks.
        assert!(tx.try_grant(120).unwrap().is_none());
        assert!(tx.prepare_park(120).unwrap());
        // The consumer finds the ring empty and parks without flushing: refused, and the
        // publication owes the parked producer a wake-up.
        assert!(rx.try_read().unwrap().is_none());
        assert!(!rx.prepare_park().unwrap());
        tx.unpark();
        assert!(send(&mut tx, &[2; 120]));
        // The next release carries the owed wake-up.
        let f = rx.try_read().unwrap().unwrap();
        assert_eq!(f.payload(), &[2; 120]);
        assert!(f.release().is_needed());
    }
}
