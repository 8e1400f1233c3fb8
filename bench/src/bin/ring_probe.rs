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
//!
//! `BACKOFF=k`: the ring's consumer pauses `k` times (`spin_loop`) after finding the ring
//! empty instead of once, so it reads in batches. `SAME=1`: both ends on one thread instead
//! (256 messages written, then read; the ring and then ShmLink on a current-thread
//! runtime): the software cost of a message with no cross-core traffic.
//!
//! `SLAB=k` (any size, e.g. `SLAB=16 ring_probe 2000 1048576 5`): ShmLink alone with a slab of
//! `k` slots, against one memcpy of the payload into one buffer and into two alternating
//! buffers (the cache cost of a sender that alternates between two slots).
//!
//! `IDLE=busy`, `IDLE=park` or `IDLE=<µs>` picks ShmLink's idle strategy (default:
//! spin-then-park with the default spin). `WARM=k`: ShmLink streams `k` messages untimed
//! first. `VS_STREAM=1`: ShmLink against StreamLink over a Unix socket pair, same placement
//! (instead of the bare ring). `PIN=1`: the sender runs on CPU 0 and its receiver on CPU 1 (on this VM the
//! scheduler kept a freshly spawned reader thread on its spawner's CPU for the first
//! milliseconds, so a short stream measured two spinning threads sharing one core).

#[path = "../pin.rs"]
mod pin;

use std::mem::MaybeUninit;
use std::time::Instant;

use actix_tether::links::stream::StreamLink;
use actix_tether::links::{send_bytes, Link, LinkRx};
use actix_tether::shm::ring::{self, RingConsumer, RingProducer};
use actix_tether::shm::{IdleStrategy, Region, ShmConfig, ShmLink};

/// Ring capacity, as `ShmConfig`'s default.
const CAPACITY: usize = 256 * 1024;
/// Grant size, as `ShmLink` asks for (its default `inline_max`).
const GRANT: usize = 4096;

struct RingRun {
    rate: f64,
    empty_polls: u64,
    full_polls: u64,
}

fn ring_one_way(size: usize, n: usize, backoff: u32) -> RingRun {
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
                        for _ in 0..backoff {
                            std::hint::spin_loop();
                        }
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

/// Both ends on one thread: 256 messages written, then read (the software cost alone).
fn ring_same_thread(size: usize, n: usize) -> f64 {
    let region = Region::heap(ring::ring_region_size(CAPACITY));
    ring::init(&region, CAPACITY).expect("init");
    let mut tx = RingProducer::attach(region.clone(), CAPACITY).expect("producer");
    let mut rx = RingConsumer::attach(region, CAPACITY).expect("consumer");
    rx.set_release_batch(CAPACITY / 16);
    let mut buf = vec![MaybeUninit::<u8>::uninit(); GRANT];
    let payload = vec![0xA5u8; size];
    let start = Instant::now();
    for _ in 0..n / 256 {
        for _ in 0..256 {
            let mut grant = tx.try_grant(GRANT).expect("ring").expect("room");
            grant.as_mut_slice()[..size].copy_from_slice(&payload);
            let _ = grant.commit_inline(size).expect("commit");
        }
        for _ in 0..256 {
            let frame = rx.try_read().expect("ring").expect("frame");
            assert_eq!(frame.copy_payload(&mut buf), Some(size));
            let _ = frame.release();
        }
    }
    (n / 256 * 256) as f64 / start.elapsed().as_secs_f64()
}

/// ShmLink with both halves on one thread: 256 messages sent, then received.
fn link_same_thread(size: usize, n: usize) -> f64 {
    let (a, b) = ShmLink::pair(ShmConfig::default()).expect("pair");
    let (_btx, mut brx) = b.split();
    let (mut atx, _arx) = a.split();
    let payload = vec![0xA5u8; size];
    runtime().block_on(async {
        let start = Instant::now();
        let mut sending = std::time::Duration::ZERO;
        for _ in 0..n / 256 {
            let t = Instant::now();
            for _ in 0..256 {
                send_bytes(&mut atx, &payload).await.expect("send");
            }
            sending += t.elapsed();
            for _ in 0..256 {
                let m = brx.recv().await.expect("recv").expect("early end");
                assert_eq!(m.len(), size);
            }
        }
        let total = start.elapsed();
        let per = |d: std::time::Duration| d.as_nanos() as f64 / (n / 256 * 256) as f64;
        eprintln!(
            "  ShmLink per message: send {:.1} ns, receive {:.1} ns",
            per(sending),
            per(total - sending)
        );
        (n / 256 * 256) as f64 / total.as_secs_f64()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn link_one_way(size: usize, n: usize) -> f64 {
    link_one_way_with(
        ShmConfig {
            idle: idle_from_env(),
            ..ShmConfig::default()
        },
        size,
        n,
    )
}

/// `IDLE=busy|park|<µs>`: the idle strategy (default: spin-then-park for the default spin).
fn idle_from_env() -> IdleStrategy {
    match std::env::var("IDLE").as_deref() {
        Ok("busy") => IdleStrategy::BusySpin,
        Ok("park") => IdleStrategy::Park,
        Ok(us) if us.parse::<u64>().is_ok() => IdleStrategy::SpinThenPark {
            spin: std::time::Duration::from_micros(us.parse().expect("IDLE: µs")),
        },
        _ => IdleStrategy::default(),
    }
}

fn link_one_way_with(config: ShmConfig, size: usize, n: usize) -> f64 {
    let rt = runtime();
    let pair = ShmLink::pair(config).expect("pair");
    one_way_on_two_threads(rt, pair, size, n)
}

/// Streams `n` messages from `a` (this thread, runtime `rt`) to `b` (a thread of its own),
/// after `WARM` untimed ones; `PIN=1` pins the two threads to CPUs 0 and 1.
fn one_way_on_two_threads<L: Link>(
    rt: tokio::runtime::Runtime,
    (a, b): (L, L),
    size: usize,
    n: usize,
) -> f64 {
    let warm: usize = std::env::var("WARM")
        .map(|v| v.parse().expect("WARM"))
        .unwrap_or(0);
    let (_btx, mut brx) = b.split();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let pinned = std::env::var_os("PIN").is_some();
    let reader = std::thread::spawn(move || {
        if pinned {
            pin::side_b();
        }
        runtime().block_on(async move {
            for _ in 0..warm {
                brx.recv().await.expect("recv").expect("early end");
            }
            ready_tx.send(()).expect("ready");
            for _ in 0..n {
                let m = brx.recv().await.expect("recv").expect("early end");
                assert_eq!(m.len(), size);
            }
            done_tx.send(Instant::now()).expect("done");
        })
    });
    let pin_a = pinned.then(pin::SideA::pin);
    let (mut atx, _arx) = a.split();
    let payload = vec![0xA5u8; size];
    // One `block_on` throughout: a socket's readiness is driven by the runtime it was
    // registered with (this one), also for the reader's half.
    let elapsed = rt.block_on(async {
        for _ in 0..warm {
            send_bytes(&mut atx, &payload).await.expect("send");
        }
        ready_rx.await.expect("reader started");
        let start = Instant::now();
        for _ in 0..n {
            send_bytes(&mut atx, &payload).await.expect("send");
        }
        done_rx.await.expect("reader done").duration_since(start)
    });
    reader.join().expect("reader");
    drop(pin_a);
    n as f64 / elapsed.as_secs_f64()
}

/// StreamLink over a Unix socket pair, placed like [`link_one_way`].
fn stream_one_way(size: usize, n: usize) -> f64 {
    let rt = runtime();
    let pair = rt
        .block_on(async { StreamLink::unix_pair(Default::default()) })
        .expect("unix pair");
    one_way_on_two_threads(rt, pair, size, n)
}

/// Copies of a `size`-byte source into `buffers` destination buffers in turn, per second.
fn copies_per_second(size: usize, n: usize, buffers: usize) -> f64 {
    let src = vec![0xA5u8; size];
    let mut dst = vec![vec![0u8; size]; buffers];
    let t = Instant::now();
    for i in 0..n {
        let d = &mut dst[i % buffers];
        d.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(d);
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    pin::init();
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let n = args.next().unwrap_or(2_000_000);
    let size = args.next().unwrap_or(64);
    let repeats = args.next().unwrap_or(5);
    if let Ok(slots) = std::env::var("SLAB") {
        let idle = idle_from_env();
        let config = ShmConfig {
            slot_count: slots.parse().expect("SLAB: a slot count"),
            slot_size: size.next_multiple_of(64).max(64),
            idle,
            ..ShmConfig::default()
        };
        for r in 0..repeats {
            let link = link_one_way_with(config.clone(), size, n);
            let one = copies_per_second(size, n, 1);
            let two = copies_per_second(size, n, 2);
            println!(
                "repeat {r}: ShmLink {:.1} k msg/s = {:.2}x memcpy ({:.1} k/s into one buffer); \
                 memcpy into two alternating buffers {:.2}x",
                link / 1e3,
                link / one,
                one / 1e3,
                two / one
            );
        }
        return;
    }
    assert!(size <= GRANT, "size must be at most {GRANT}");
    let backoff = std::env::var("BACKOFF")
        .map(|v| v.parse::<u32>().expect("BACKOFF: a number"))
        .unwrap_or(1);
    if std::env::var_os("SAME").is_some() {
        for _ in 0..repeats {
            println!(
                "same thread: ring {:.2} M msg/s, ShmLink {:.2} M msg/s",
                ring_same_thread(size, n) / 1e6,
                link_same_thread(size, n) / 1e6
            );
        }
        return;
    }
    if std::env::var_os("VS_STREAM").is_some() {
        for r in 0..repeats {
            let shm = link_one_way(size, n);
            let stream = stream_one_way(size, n);
            println!(
                "repeat {r}: ShmLink {:.2} M msg/s, StreamLink over a Unix socket pair {:.2} M \
                 msg/s, ratio {:.2}",
                shm / 1e6,
                stream / 1e6,
                shm / stream
            );
        }
        return;
    }
    for r in 0..repeats {
        let ring = ring_one_way(size, n, backoff);
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
