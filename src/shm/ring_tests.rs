//! Property, corruption and two-thread tests of the ring and slab (normal builds; the loom
//! models are in `loom_tests.rs`). They live inside the crate because scribbling over shared
//! memory needs `unsafe`, which is confined to `src/shm`.
//!
//! `cargo test --lib shm::` runs them in a few seconds.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use proptest::prelude::*;

use super::region::Region;
use super::ring::{self, FrameKind, RingConsumer, RingProducer, FRAME_HEADER_LEN};
use super::slab::{SlabConfig, SlabReceiver, SlabSender};
use super::ShmError;

#[derive(Debug, Clone)]
enum Op {
    /// Grant `max_len` (scaled to the ring), then commit `commit` bytes of it inline (scaled
    /// to `max_len`), or a slab reference, or a close marker, or drop the grant.
    Send {
        max_len: u16,
        commit: u16,
        how: u8,
    },
    /// Read the next frame; release it or drop it.
    Recv {
        release: bool,
    },
    ConsumerPark,
    ConsumerUnpark,
    ProducerPark {
        max_len: u16,
    },
    ProducerUnpark,
    /// `RingConsumer::flush` (publishes space released in a batch).
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u16>(), any::<u16>(), any::<u8>())
            .prop_map(|(max_len, commit, how)| Op::Send { max_len, commit, how }),
        4 => any::<bool>().prop_map(|release| Op::Recv { release }),
        1 => Just(Op::ConsumerPark),
        1 => Just(Op::ConsumerUnpark),
        1 => any::<u16>().prop_map(|max_len| Op::ProducerPark { max_len }),
        1 => Just(Op::ProducerUnpark),
        1 => Just(Op::Flush),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Inline(Vec<u8>),
    Slab { slot: u32, len: u32 },
    Close,
}

/// An independent model of the ring's space accounting, written from the format spec.
struct Model {
    cap: u64,
    head: u64,
    /// The consumer's own tail: past released frames and past padding it has skipped.
    tail: u64,
    /// The tail the producer sees (published by a release reaching the batch, a flush, or a
    /// park on an empty ring).
    published: u64,
    /// Release batch in bytes (already clamped to a quarter of the ring).
    batch: u64,
    /// A wake-up found by a park's publication, reported by the next release or flush.
    owed: bool,
    /// Queued frames with the padding before them (zeroed once the consumer skipped it) and
    /// their own footprint.
    frames: VecDeque<(Expected, u64, u64)>,
    consumer_parked: bool,
    producer_parked: bool,
}

impl Model {
    fn foot(len: usize) -> u64 {
        (FRAME_HEADER_LEN + len.next_multiple_of(8)) as u64
    }

    /// (bytes needed, padding) for a frame of footprint `foot` at the model head.
    fn need(&self, foot: u64) -> (u64, u64) {
        let to_end = self.cap - self.head % self.cap;
        if foot <= to_end {
            (foot, 0)
        } else {
            (to_end + foot, to_end)
        }
    }

    fn room(&self, foot: u64) -> bool {
        self.need(foot).0 <= self.cap - (self.head - self.published)
    }

    /// Publishes the consumer's tail; whether the producer's park is reported by it.
    fn publish(&mut self) -> bool {
        self.published = self.tail;
        std::mem::take(&mut self.producer_parked)
    }
}

fn pattern(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq.wrapping_mul(31).wrapping_add(i as u64 * 7)) as u8)
        .collect()
}

fn run_model(cap: usize, batch: usize, ops: Vec<Op>) {
    let region = Region::heap(ring::ring_region_size(cap));
    ring::init(&region, cap).unwrap();
    let mut tx = RingProducer::attach(region.clone(), cap).unwrap();
    let mut rx = RingConsumer::attach(region, cap).unwrap();
    rx.set_release_batch(batch);
    let max_inline = tx.max_inline();
    let mut m = Model {
        cap: cap as u64,
        head: 0,
        tail: 0,
        published: 0,
        batch: batch.min(cap / 4) as u64,
        owed: false,
        frames: VecDeque::new(),
        consumer_parked: false,
        producer_parked: false,
    };
    let mut seq = 0u64;
    for op in ops {
        match op {
            Op::Send {
                max_len,
                commit,
                how,
            } => {
                let max_len = max_len as usize % (max_inline + 1);
                let (_, pad) = m.need(Model::foot(max_len));
                let room = m.room(Model::foot(max_len));
                let Some(mut g) = tx.try_grant(max_len).unwrap() else {
                    assert!(
                        !room,
                        "grant refused with room (model head {}, tail {})",
                        m.head, m.tail
                    );
                    assert!(
                        !m.frames.is_empty() || m.published != m.tail,
                        "an empty ring whose space is published must grant any inline size"
                    );
                    continue;
                };
                assert!(room, "grant given without room");
                assert_eq!(g.as_mut_slice().len(), max_len);
                seq += 1;
                let (expected, foot, wake) = match how % 8 {
                    // Abort: the grant goes out of scope unpublished.
                    0 => continue,
                    1 => {
                        let (slot, len) = (u32::from(commit) % 1000, u32::from(commit) * 3);
                        let w = g.commit_slab(slot, len).unwrap();
                        (Expected::Slab { slot, len }, FRAME_HEADER_LEN as u64, w)
                    }
                    2 => (Expected::Close, FRAME_HEADER_LEN as u64, g.commit_close()),
                    _ => {
                        let len = commit as usize % (max_len + 1);
                        let data = pattern(seq, len);
                        g.as_mut_slice()[..len].copy_from_slice(&data);
                        let w = g.commit_inline(len).unwrap();
                        (Expected::Inline(data), Model::foot(len), w)
                    }
                };
                // Padding depends on the granted size, the head advance on the actual one.
                assert_eq!(wake.is_needed(), m.consumer_parked, "data-ready wake");
                m.consumer_parked = false;
                m.head += pad + foot;
                m.frames.push_back((expected, pad, foot));
            }
            Op::Recv { release } => {
                let got = rx.try_read().unwrap();
                let Some(f) = got else {
                    assert!(m.frames.is_empty(), "frame lost");
                    continue;
                };
                let (expected, pad, foot) = m.frames.front().cloned().expect("phantom frame");
                // Reading skips the padding in front of the frame (once).
                m.tail += pad;
                m.frames.front_mut().expect("front").1 = 0;
                let actual = match f.kind() {
                    FrameKind::Inline => Expected::Inline(f.payload().to_vec()),
                    FrameKind::Slab { slot } => Expected::Slab {
                        slot,
                        len: f.len() as u32,
                    },
                    FrameKind::Close => Expected::Close,
                };
                assert_eq!(actual, expected);
                if release {
                    let wake = f.release();
                    m.tail += foot;
                    m.frames.pop_front();
                    let owed = std::mem::take(&mut m.owed);
                    let published = m.tail - m.published >= m.batch && m.publish();
                    assert_eq!(wake.is_needed(), published || owed, "space-ready wake");
                }
            }
            Op::ConsumerPark => {
                let park = rx.prepare_park().unwrap();
                let mut expected = m.frames.is_empty();
                if expected && m.published != m.tail {
                    // Refuses to sleep on unpublished space; publishes, owes the wake-up.
                    let reported = m.publish();
                    m.owed |= reported;
                    expected = false;
                }
                assert_eq!(park, expected);
                m.consumer_parked = park;
            }
            Op::Flush => {
                let wake = rx.flush();
                let owed = std::mem::take(&mut m.owed);
                let published = m.published != m.tail && m.publish();
                assert_eq!(wake.is_needed(), published || owed, "flush wake");
            }
            Op::ConsumerUnpark => {
                rx.unpark();
                m.consumer_parked = false;
            }
            Op::ProducerPark { max_len } => {
                let max_len = max_len as usize % (max_inline + 1);
                let park = tx.prepare_park(max_len).unwrap();
                assert_eq!(park, !m.room(Model::foot(max_len)));
                m.producer_parked = park;
            }
            Op::ProducerUnpark => {
                tx.unpark();
                m.producer_parked = false;
            }
        }
    }
    // Drain: everything sent arrives, in order.
    while let Some((expected, _, _)) = m.frames.pop_front() {
        let f = rx.try_read().unwrap().expect("queued frame");
        if let Expected::Inline(data) = expected {
            assert_eq!(f.payload(), &data[..]);
        }
        let _ = f.release();
    }
    assert!(rx.try_read().unwrap().is_none());
    let _ = rx.flush();
    assert!(tx.is_drained().unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random grant/commit/abort/read/release/park sequences against a `VecDeque` model.
    #[test]
    fn ring_matches_model(cap_shift in 6u32..11, ops in proptest::collection::vec(op(), 1..300)) {
        run_model(1 << cap_shift, 0, ops);
    }

    /// The same with the consumer publishing released space in batches (up to the clamp of a
    /// quarter of the ring, and above it to check the clamp).
    #[test]
    fn batched_release_matches_model(
        cap_shift in 6u32..11,
        batch in 0usize..1024,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        run_model(1 << cap_shift, batch, ops);
    }

    /// Scribbles random bytes over a ring (header and data) in the middle of traffic; every
    /// later call returns valid frames or `Corrupt`, never panics, never reads out of bounds,
    /// and the drive loop always terminates.
    #[test]
    fn ring_survives_scribbling(
        cap_shift in 6u32..9,
        sizes in proptest::collection::vec(0usize..200, 1..20),
        scribbles in proptest::collection::vec((any::<u16>(), any::<u64>(), 1usize..9), 1..4),
        header_bias in any::<bool>(),
    ) {
        let cap = 1usize << cap_shift;
        let region = Region::heap(ring::ring_region_size(cap));
        ring::init(&region, cap).unwrap();
        let mut tx = RingProducer::attach(region.clone(), cap).unwrap();
        let mut rx = RingConsumer::attach(region.clone(), cap).unwrap();
        let max = tx.max_inline();
        let send = |tx: &mut RingProducer, len: usize| -> Result<bool, ShmError> {
            let len = len % (max + 1);
            match tx.try_grant(len)? {
                Some(mut g) => {
                    g.as_mut_slice().fill(0xAB);
                    let _ = g.commit_inline(len)?;
                    Ok(true)
                }
                None => Ok(false),
            }
        };
        // Some traffic so that the ring has wrapped and holds frames.
        for &len in &sizes {
            if !send(&mut tx, len).unwrap() {
                let _ = rx.try_read().unwrap().map(|f| f.release());
            }
        }
        let total = region.len();
        for (at, value, n) in scribbles {
            let span = if header_bias { 256 } else { total };
            let at = at as usize % span;
            let n = n.min(total - at);
            let bytes = value.to_ne_bytes();
            // SAFETY: `at + n <= region.len()`; no frame or slice of this ring is alive (the
            // handles are only used between scribbles, on this thread).
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), region.as_ptr().add(at), n);
            }
        }
        // Drive both ends for a bounded number of steps.
        let mut failed = false;
        for step in 0..(4 * sizes.len() + 64) {
            match rx.try_read() {
                Ok(Some(f)) => {
                    match f.kind() {
                        FrameKind::Inline => prop_assert!(f.payload().len() <= max),
                        FrameKind::Slab { .. } | FrameKind::Close => {
                            prop_assert!(f.payload().is_empty())
                        }
                    }
                    let _ = f.release();
                }
                Ok(None) => {}
                Err(ShmError::Corrupt(_)) => { failed = true; break; }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
            match send(&mut tx, step * 13) {
                Ok(_) => {}
                Err(ShmError::Corrupt(_)) => { failed = true; break; }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
        let _ = failed;
    }
}

/// A std stand-in for an eventfd doorbell.
#[derive(Default)]
struct Bell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Bell {
    fn ring(&self) {
        *self.rung.lock().unwrap() = true;
        self.cv.notify_one();
    }
    fn wait(&self) {
        let mut r = self.rung.lock().unwrap();
        while !*r {
            r = self.cv.wait(r).unwrap();
        }
        *r = false;
    }
}

/// Two real threads, parking on doorbells through the ring's wake protocol: 20,000 frames
/// of random sizes (inline and through the slab) arrive intact and in order.
#[test]
fn two_threads_inline_and_slab_with_parking() {
    const N: u64 = 20_000;
    const CAP: usize = 4096;
    let region = Region::heap(ring::ring_region_size(CAP));
    ring::init(&region, CAP).unwrap();
    let mut tx = RingProducer::attach(region.clone(), CAP).unwrap();
    let mut rx = RingConsumer::attach(region, CAP).unwrap();
    let cfg = SlabConfig {
        slot_count: 4,
        slot_size: 4096,
    };
    let slab_region = Region::heap(cfg.region_size());
    let mut slab_tx = SlabSender::init(slab_region.clone(), cfg).unwrap();
    let slab_rx = SlabReceiver::attach(slab_region, cfg).unwrap();
    let (data, space) = (Arc::new(Bell::default()), Arc::new(Bell::default()));
    let s = Arc::clone(&space);
    slab_rx.set_release_notifier(Arc::new(move || s.ring()));
    let threshold = 256usize;
    let size = |i: u64| ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 3000) as usize;

    let (d, sp) = (Arc::clone(&data), Arc::clone(&space));
    let producer = std::thread::spawn(move || {
        for i in 0..N {
            let len = size(i);
            let payload = pattern(i, len);
            // Reserve ring room for the largest inline frame (as ShmLink's reserve does).
            loop {
                if let Some(mut g) = tx.try_grant(threshold).unwrap() {
                    let wake = if len <= threshold {
                        g.as_mut_slice()[..len].copy_from_slice(&payload);
                        g.commit_inline(len).unwrap()
                    } else {
                        let (slot, n) = loop {
                            if let Some(mut s) = slab_tx.try_acquire().unwrap() {
                                s.as_mut_slice()[..len].copy_from_slice(&payload);
                                break s.publish(len).unwrap();
                            }
                            if slab_tx.prepare_park().unwrap() {
                                sp.wait();
                                slab_tx.unpark();
                            }
                        };
                        g.commit_slab(slot, n).unwrap()
                    };
                    if wake.is_needed() {
                        d.ring();
                    }
                    break;
                }
                if tx.prepare_park(threshold).unwrap() {
                    sp.wait();
                    tx.unpark();
                }
            }
        }
    });
    let mut held = VecDeque::new();
    for i in 0..N {
        let got = loop {
            if let Some(f) = rx.try_read().unwrap() {
                let b = match f.kind() {
                    FrameKind::Inline => bytes::Bytes::copy_from_slice(f.payload()),
                    FrameKind::Slab { slot } => slab_rx.take(slot, f.len() as u32).unwrap(),
                    FrameKind::Close => panic!("unexpected close"),
                };
                if f.release().is_needed() {
                    space.ring();
                }
                break b;
            }
            if rx.prepare_park().unwrap() {
                data.wait();
                rx.unpark();
            }
        };
        assert_eq!(&got[..], &pattern(i, size(i))[..], "message {i}");
        // Keep a few received slab payloads alive for a while, so the sender runs out of
        // slots and has to park on the slab.
        held.push_back(got);
        if held.len() > 3 {
            held.pop_front();
        }
    }
    drop(held);
    producer.join().unwrap();
    assert_eq!(slab_rx.held(), 0);
}
