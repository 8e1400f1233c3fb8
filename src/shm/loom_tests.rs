//! Loom models of the ring, the slab and the parked-flag wake-up protocol.
//!
//! The ring and slab use their atomics through `crate::sync`, which is loom under
//! `--cfg loom`, and they "touch" a loom `UnsafeCell` for every ring word and slab slot they
//! read or write, so loom also reports any access to frame or slot bytes that is not ordered
//! by the index/flag protocol. Doorbells (socket pairs in production) are modelled by a loom
//! `Mutex<bool>` + `Condvar`: a lost wake-up makes loom report a deadlock. (A socket-pair
//! doorbell keeps what the model needs: a ring before a wait is not lost, several rings
//! before one wait coalesce into one wake-up, and a wake-up may be spurious.)
//!
//! These models are compiled by the separate crate `tests/loom` (which includes this file and
//! the ring/slab sources by path), because `--cfg loom` reaches every dependency and tokio
//! configures its networking out under it. Run:
//!
//! ```text
//! cd tests/loom && RUSTFLAGS="--cfg loom" cargo test --release --lib
//! ```

use std::sync::Arc as StdArc;

use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use super::region::Region;
use super::ring::{self, FrameKind, RingConsumer, RingProducer};
use super::slab::{SlabConfig, SlabReceiver, SlabSender};

/// A doorbell stand-in: `ring` sets it, `wait` blocks until set and drains it.
#[derive(Default)]
struct Doorbell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Doorbell {
    fn ring(&self) {
        *self.rung.lock().unwrap() = true;
        self.cv.notify_one();
    }

    fn wait(&self) {
        let mut rung = self.rung.lock().unwrap();
        while !*rung {
            rung = self.cv.wait(rung).unwrap();
        }
        *rung = false;
    }
}

const CAP: usize = 64;

/// Runs a model with at most 6 preemptions per execution (`LOOM_MAX_PREEMPTIONS` overrides
/// it), which keeps all three models at about ten seconds. Unbounded, the parked-flag model
/// takes about six minutes on a 2-core VM (it passes too).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(6);
    }
    builder.check(f);
}

fn ring_pair() -> (RingProducer, RingConsumer) {
    ring_pair_of(CAP)
}

fn ring_pair_of(cap: usize) -> (RingProducer, RingConsumer) {
    let region = Region::heap(ring::ring_region_size(cap));
    ring::init(&region, cap).unwrap();
    (
        RingProducer::attach(region.clone(), cap).unwrap(),
        RingConsumer::attach(region, cap).unwrap(),
    )
}

/// Sends `payload` inline, parking on `space` while the ring is full and ringing `data` when
/// the consumer is parked.
fn send_parking(tx: &mut RingProducer, payload: &[u8], data: &Doorbell, space: &Doorbell) {
    loop {
        if let Some(mut g) = tx.try_grant(payload.len()).unwrap() {
            g.as_mut_slice().copy_from_slice(payload);
            if g.commit_inline(payload.len()).unwrap().is_needed() {
                data.ring();
            }
            return;
        }
        if tx.prepare_park(payload.len()).unwrap() {
            space.wait();
            tx.unpark();
        }
    }
}

/// Receives one inline frame, parking on `data` while the ring is empty and ringing `space`
/// when the producer is parked.
fn recv_parking(rx: &mut RingConsumer, data: &Doorbell, space: &Doorbell) -> Vec<u8> {
    loop {
        if let Some(f) = rx.try_read().unwrap() {
            assert_eq!(f.kind(), FrameKind::Inline);
            let v = f.payload().to_vec();
            if f.release().is_needed() {
                space.ring();
            }
            return v;
        }
        // Publishes space released in a batch (see `RingConsumer::set_release_batch`).
        if rx.flush().is_needed() {
            space.ring();
        }
        if rx.prepare_park().unwrap() {
            data.wait();
            rx.unpark();
        }
    }
}

/// Ring with a busy-polling consumer and producer: three frames of 24, 8 and 24 bytes in a
/// 64-byte ring. The first two fill 48 bytes; the third needs padding (16 bytes) at the wrap
/// plus 32 bytes at the start, so the producer sees a full ring until the consumer has
/// released the first frame. Loom checks every interleaving, the frame contents, and that
/// every ring word write/read pair is ordered by `head`/`tail`.
#[test]
fn ring_wrap_with_padding_and_full() {
    model(|| {
        let (mut tx, mut rx) = ring_pair();
        let msgs: [&[u8]; 3] = [&[1; 24], &[2; 8], &[3; 24]];
        let producer = thread::spawn(move || {
            for m in msgs {
                loop {
                    if let Some(mut g) = tx.try_grant(m.len()).unwrap() {
                        g.as_mut_slice().copy_from_slice(m);
                        let _ = g.commit_inline(m.len()).unwrap();
                        break;
                    }
                    thread::yield_now();
                }
            }
            tx
        });
        for m in msgs {
            loop {
                if let Some(f) = rx.try_read().unwrap() {
                    assert_eq!(f.payload(), m);
                    let _ = f.release();
                    break;
                }
                thread::yield_now();
            }
        }
        let mut tx = producer.join().unwrap();
        assert!(tx.is_drained().unwrap());
        assert!(rx.try_read().unwrap().is_none());
    });
}

/// Batched release (see `RingConsumer::set_release_batch`): a 128-byte ring whose consumer
/// publishes released space in batches of 32 bytes. After a 48-byte frame (56 bytes), the
/// producer sends an 8-byte frame (16 bytes, which the consumer releases without publishing)
/// and a 56-byte frame (64 bytes), which at offset 72 needs 56 bytes of padding plus 64: it
/// fits only once the small frame's space is published — by the consumer's `flush` on
/// finding the ring empty. If that space could stay unpublished while the consumer
/// parks, both sides would sleep and loom would report the deadlock.
#[test]
fn ring_batched_release_no_lost_wakeup() {
    model(|| {
        let (mut tx, mut rx) = ring_pair_of(2 * CAP);
        rx.set_release_batch(32);
        let (data, space) = (Arc::new(Doorbell::default()), Arc::new(Doorbell::default()));
        send_parking(&mut tx, &[7; 48], &data, &space);
        assert_eq!(recv_parking(&mut rx, &data, &space), vec![7; 48]);
        let (d, s) = (Arc::clone(&data), Arc::clone(&space));
        let producer = thread::spawn(move || {
            for m in [&[8; 8][..], &[8; 56]] {
                send_parking(&mut tx, m, &d, &s);
            }
        });
        for m in [&[8; 8][..], &[8; 56]] {
            assert_eq!(recv_parking(&mut rx, &data, &space), m.to_vec());
        }
        producer.join().unwrap();
    });
}

/// The parked-flag protocol in both directions: the consumer parks on an empty ring, the
/// producer parks on a full one. The ring is first advanced to offset 48 (on one thread),
/// so the first 24-byte frame (32 bytes) needs 16 bytes of padding at the wrap and the
/// second one does not fit until the first is released. Both sides sleep on doorbells that
/// are rung only when `Wake::is_needed()`: if a wake-up could be lost, some execution
/// blocks forever and loom reports a deadlock.
#[test]
fn ring_parked_flags_no_lost_wakeup() {
    model(|| {
        let (mut tx, mut rx) = ring_pair();
        let (data, space) = (Arc::new(Doorbell::default()), Arc::new(Doorbell::default()));
        for m in [&[9u8; 24][..], &[9; 8]] {
            send_parking(&mut tx, m, &data, &space);
            recv_parking(&mut rx, &data, &space);
        }
        let (d, s) = (Arc::clone(&data), Arc::clone(&space));
        let producer = thread::spawn(move || {
            for i in 0..2u8 {
                send_parking(&mut tx, &[i; 24], &d, &s);
            }
        });
        for i in 0..2u8 {
            assert_eq!(recv_parking(&mut rx, &data, &space), vec![i; 24]);
        }
        producer.join().unwrap();
    });
}

/// The slab flag protocol with a single slot, so the second payload must reuse the slot the
/// receiver is still reading: the sender parks until the receiver's `Bytes` drop stores
/// FREE and fires the release notifier. Loom checks that the receiver's reads of the slot
/// happen before the sender's second write (slot access tracking), that the content is
/// right, and that the sender's wake-up is never lost.
#[test]
fn slab_slot_reuse_and_release_wakeup() {
    model(|| {
        let cfg = SlabConfig {
            slot_count: 1,
            slot_size: 64,
        };
        let slab_region = Region::heap(cfg.region_size());
        let mut slab_tx = SlabSender::init(slab_region.clone(), cfg).unwrap();
        let slab_rx = SlabReceiver::attach(slab_region, cfg).unwrap();
        let (mut tx, mut rx) = ring_pair();
        let slot_freed = Arc::new(Doorbell::default());
        let notify = Arc::clone(&slot_freed);
        slab_rx.set_release_notifier(StdArc::new(move || notify.ring()));

        let sender = thread::spawn(move || {
            for i in 1..=2u8 {
                let (slot, len) = loop {
                    if let Some(mut s) = slab_tx.try_acquire().unwrap() {
                        s.as_mut_slice()[..4].copy_from_slice(&[i; 4]);
                        break s.publish(4).unwrap();
                    }
                    if slab_tx.prepare_park().unwrap() {
                        slot_freed.wait();
                        slab_tx.unpark();
                    }
                };
                // The 64-byte ring always has room for two slab frames.
                let g = tx.try_grant(0).unwrap().expect("room for a slab frame");
                let _ = g.commit_slab(slot, len).unwrap();
            }
        });
        for i in 1..=2u8 {
            let bytes = loop {
                if let Some(f) = rx.try_read().unwrap() {
                    let FrameKind::Slab { slot } = f.kind() else {
                        panic!("expected a slab frame")
                    };
                    let b = slab_rx.take(slot, f.len() as u32).unwrap();
                    let _ = f.release();
                    break b;
                }
                thread::yield_now();
            };
            assert_eq!(&bytes[..], &[i; 4]);
            drop(bytes);
        }
        sender.join().unwrap();
        assert_eq!(slab_rx.held(), 0);
    });
}
