//! One-way throughput of the bare shared-memory ring (no `Link` layer, no runtime) against
//! the full `ShmLink`, 64-byte messages by default, two spinning threads, in one run.
//!
//! ```text
//! cargo run --release -p tether-bench --bin ring_probe [messages] [size] [repeats]
//! ```
//!
//! For each repeat it prints the rate of both, and how often the ring's consumer found the
//! ring empty and its producer found it full: a consumer that finds the ring empty about
//! once per message keeps pace with the producer, so every message costs at least one
//! cross-core cache-line transfer (head and frame written just before they are read); a
//! consumer that rarely finds it empty is the bottleneck itself. Ratios within one run only.

use std::mem::MaybeUninit;
use std::time::Instant;

use actix_tether::links::{send_bytes, Link, LinkRx};
use actix_tether::shm::ring::{self, RingConsumer, RingProducer};
use actix_tether::shm::{Region, ShmConfig, ShmLink};

/// Ring capacity, as `ShmConfig`'s default.
const CAPACITY: usize = 256 * 1024;
/// Grant size, as `ShmLink` asks for (its default `inline_max`).
const GRANT: usize = 4096;

struct RingRun {
    rate: f64,
    empty_polls: u64,
    full_polls: u64,
}

fn ring_one_way(size: usize, n: usize) -> RingRun {
    let region = Region::heap(ring::ring_region_size(CAPACITY));
    ring::init(&region, CAPACITY).expect("init");
    let mut tx = RingProducer::attach(region.clone(), CAPACITY).expect("producer");
    let mut rx = RingConsumer::attach(region, CAPACITY).expect("consumer");
    rx.set_release_batch(CAPACITY / 16);
    let reader = std::thread::spawn(move || {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); GRANT];
        let mut empty = 0u64;
        for _ in 0..n {
            loop {
                match rx.try_read().expect("ring") {
                    Some(frame) => {
                        assert_eq!(frame.copy_payload(&mut buf), Some(size));
                        let _ = frame.release();
                        break;
                    }
                    None => {
                        empty += 1;
                        let _ = rx.flush();
                        std::hint::spin_loop();
                    }
                }
            }
        }
        (Instant::now(), empty)
    });
    let payload = vec![0xA5u8; size];
    let mut full = 0u64;
    let start = Instant::now();
    for _ in 0..n {
        loop {
            if let Some(mut grant) = tx.try_grant(GRANT).expect("ring") {
                grant.as_mut_slice()[..size].copy_from_slice(&payload);
                let _ = grant.commit_inline(size).expect("commit");
                break;
            }
            full += 1;
            std::hint::spin_loop();
        }
    }
    let (end, empty_polls) = reader.join().expect("reader");
    RingRun {
        rate: n as f64 / end.duration_since(start).as_secs_f64(),
        empty_polls,
        full_polls: full,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn link_one_way(size: usize, n: usize) -> f64 {
    let (a, b) = ShmLink::pair(ShmConfig::default()).expect("pair");
    let (_btx, mut brx) = b.split();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        runtime().block_on(async move {
            ready_tx.send(()).expect("ready");
            for _ in 0..n {
                let m = brx.recv().await.expect("recv").expect("early end");
                assert_eq!(m.len(), size);
            }
            Instant::now()
        })
    });
    ready_rx.recv().expect("reader started");
    let (mut atx, _arx) = a.split();
    let payload = vec![0xA5u8; size];
    let start = Instant::now();
    runtime().block_on(async {
        for _ in 0..n {
            send_bytes(&mut atx, &payload).await.expect("send");
        }
    });
    let end = reader.join().expect("reader");
    n as f64 / end.duration_since(start).as_secs_f64()
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let n = args.next().unwrap_or(2_000_000);
    let size = args.next().unwrap_or(64);
    let repeats = args.next().unwrap_or(5);
    assert!(size <= GRANT, "size must be at most {GRANT}");
    for r in 0..repeats {
        let ring = ring_one_way(size, n);
        let link = link_one_way(size, n);
        println!(
            "repeat {r}: ring {:.2} M msg/s (consumer found it empty {} times, producer full {} \
             times, for {n} messages), ShmLink {:.2} M msg/s, link/ring {:.2}",
            ring.rate / 1e6,
            ring.empty_polls,
            ring.full_polls,
            link / 1e6,
            link / ring.rate
        );
    }
}
