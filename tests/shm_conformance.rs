//! The Link conformance suite on the shared-memory link (two peers in one process).

#[macro_use]
mod conformance;

use actix_tether::links::AnyLink;
use actix_tether::shm::link::{IdleStrategy, ShmConfig, ShmLink};

suite!(shm, || async {
    ShmLink::pair(ShmConfig::default()).unwrap()
});
suite!(shm_park, || async {
    ShmLink::pair(ShmConfig {
        idle: IdleStrategy::Park,
        ..ShmConfig::default()
    })
    .unwrap()
});
suite!(shm_small, || async {
    // Tiny ring and slab: wrap-around, full rings, slot exhaustion and the copy fallback
    // on every other message.
    ShmLink::pair(ShmConfig {
        ring_capacity: 16 * 1024,
        inline_max: 1024,
        slot_size: 256 * 1024,
        slot_count: 2,
        max_held_slots: 1,
        idle: IdleStrategy::SpinThenPark {
            spin: std::time::Duration::from_micros(5),
        },
    })
    .unwrap()
});
suite!(shm_busy_spin, || async {
    ShmLink::pair(ShmConfig {
        idle: IdleStrategy::BusySpin,
        ..ShmConfig::default()
    })
    .unwrap()
});
suite!(any_shm, || async {
    let (a, b) = ShmLink::pair(ShmConfig::default()).unwrap();
    (AnyLink::from(a), AnyLink::from(b))
});
