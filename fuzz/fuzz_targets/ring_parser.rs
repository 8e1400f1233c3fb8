//! Fuzzes the shared-memory ring's frame parser: the fuzz input *is* the ring (header and
//! data, as a hostile peer could have left it). Both ends attach to it and are driven for a
//! bounded number of steps; every call must return valid frames or `ShmError::Corrupt`,
//! never panic, read out of bounds, or loop forever.
#![no_main]

use actix_tether::shm::ring::{self, FrameKind, RingConsumer, RingProducer};
use actix_tether::shm::slab::{SlabConfig, SlabReceiver, SlabSender};
use actix_tether::shm::Region;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, image)) = data.split_first() else {
        return;
    };
    let cap = 64usize << (shape % 5); // 64 ..= 1024 bytes
    let mut bytes = image.to_vec();
    bytes.resize(ring::ring_region_size(cap), 0);
    let region = Region::heap_from(&bytes);
    // Attach validates the indices found in the image.
    let Ok(mut rx) = RingConsumer::attach(region.clone(), cap) else {
        return;
    };
    let Ok(mut tx) = RingProducer::attach(region, cap) else {
        return;
    };
    // Half the inputs publish released space in batches (0 = after every frame).
    rx.set_release_batch(usize::from(shape >> 4) * 8);
    let cfg = SlabConfig {
        slot_count: 4,
        slot_size: 64,
    };
    let slab_region = Region::heap(cfg.region_size());
    let mut slab_tx = SlabSender::init(slab_region.clone(), cfg).unwrap();
    let slab_rx = SlabReceiver::attach(slab_region, cfg).unwrap();
    if let Some(mut slot) = slab_tx.try_acquire().unwrap() {
        slot.as_mut_slice()[0] = 1;
        let _ = slot.publish(1);
    }
    let max = rx_max(cap);
    for step in 0..64usize {
        match rx.try_read() {
            Ok(Some(frame)) => {
                match frame.kind() {
                    FrameKind::Inline => assert!(frame.payload().len() <= max),
                    FrameKind::Slab { slot } => {
                        // Slot references from the image are validated by the slab.
                        if let Ok(b) = slab_rx.take(slot, frame.len() as u32) {
                            assert!(b.len() <= cfg.slot_size);
                        }
                    }
                    FrameKind::Close => assert!(frame.payload().is_empty()),
                }
                let _ = frame.release();
            }
            Ok(None) => {
                let _ = rx.flush();
            }
            Err(_) => return,
        }
        let len = (step * 7) % (max + 1);
        match tx.try_grant(len) {
            Ok(Some(mut grant)) => {
                grant.as_mut_slice().fill(step as u8);
                let _ = grant.commit_inline(len);
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
});

fn rx_max(cap: usize) -> usize {
    ring::ring_max_inline(cap)
}
