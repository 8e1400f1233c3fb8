//! Baselines measured in the same run as everything else: the physical floor of
//! cross-core messaging (two threads spinning on shared memory), memcpy bandwidth, and tokio
//! mpsc channels on one runtime and across two.

use std::hint::{black_box, spin_loop};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::harness::{warmup, Contender, Flavor, Role};

/// Two threads ping-ponging one cache line, spinning (64 B only).
pub const CACHE_LINE: &str = "cache-line ping-pong (spin)";
/// Two threads ping-ponging through shared buffers, spinning, one memcpy per hop: the floor
/// of a shared-memory transport that copies once per message, at every size.
pub const SPIN_COPY: &str = "spin ping-pong + memcpy";
/// One memcpy of the message per message.
pub const MEMCPY: &str = "memcpy";

/// Name of the tokio mpsc baseline on `flavor`.
pub fn mpsc_name(flavor: Flavor) -> String {
    format!("tokio mpsc ({})", flavor.label())
}
/// tokio mpsc between a task on one current-thread runtime and a task on another (each on
/// its own thread): every message pays a cross-thread wake-up.
pub const MPSC_2RT: &str = "tokio mpsc (2 runtimes)";

/// Gives up spinning after this long: a peer that died must not hang the run.
const SPIN_DEADLINE: Duration = Duration::from_secs(30);

/// Spins until `cond` holds; panics after [`SPIN_DEADLINE`].
pub fn spin_until(mut cond: impl FnMut() -> bool) {
    let mut spins = 0u32;
    let mut start: Option<Instant> = None;
    while !cond() {
        spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1 << 16) {
            let s = *start.get_or_insert_with(Instant::now);
            assert!(s.elapsed() < SPIN_DEADLINE, "peer stopped answering");
        }
    }
}

#[repr(align(128))]
struct Line(AtomicU64);

/// One cache line bounced between two threads: the requester writes an odd sequence number,
/// the echo thread answers with the next even one.
fn cache_line_round_trips(n: usize) -> Vec<Duration> {
    let _pin = crate::pin::SideA::pin();
    let line = Arc::new(Line(AtomicU64::new(0)));
    let total = (warmup(n) + n) as u64;
    let echo = {
        let line = line.clone();
        std::thread::spawn(move || {
            crate::pin::side_b();
            for i in 0..total {
                let want = 2 * i + 1;
                // Acquire pairs with the requester's Release store of `want`.
                spin_until(|| line.0.load(Ordering::Acquire) == want);
                // Release pairs with the requester's Acquire load of the answer.
                line.0.store(want + 1, Ordering::Release);
            }
        })
    };
    let mut samples = Vec::with_capacity(n);
    for i in 0..total {
        let t = Instant::now();
        // Release pairs with the echo thread's Acquire load.
        line.0.store(2 * i + 1, Ordering::Release);
        // Acquire pairs with the echo thread's Release store of the answer.
        spin_until(|| line.0.load(Ordering::Acquire) == 2 * i + 2);
        if i >= warmup(n) as u64 {
            samples.push(t.elapsed());
        }
    }
    echo.join().expect("echo thread");
    samples
}

/// Two shared buffers (request, response) and a turn flag. Each hop is one memcpy into
/// shared memory: the requester copies its message into the request buffer, the echo
/// thread copies the request buffer into the response buffer, the requester checks the
/// answer in place. Two copies per round trip, as a zero-copy-on-receive shared-memory
/// transport does. The mutexes are never contended (the flag decides whose turn it is);
/// they only make the buffers shareable without `unsafe`.
fn spin_copy_round_trips(size: usize, n: usize) -> Vec<Duration> {
    let _pin = crate::pin::SideA::pin();
    let shared = Arc::new((
        Line(AtomicU64::new(0)),
        Mutex::new(vec![0u8; size]),
        Mutex::new(vec![0u8; size]),
    ));
    let total = (warmup(n) + n) as u64;
    let echo = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            crate::pin::side_b();
            for i in 0..total {
                let want = 2 * i + 1;
                // Acquire pairs with the requester's Release store of `want`.
                spin_until(|| shared.0 .0.load(Ordering::Acquire) == want);
                shared
                    .2
                    .lock()
                    .expect("buffer")
                    .copy_from_slice(&shared.1.lock().expect("buffer"));
                // Release pairs with the requester's Acquire load of the answer.
                shared.0 .0.store(want + 1, Ordering::Release);
            }
        })
    };
    let payload = vec![0x5Au8; size];
    let mut samples = Vec::with_capacity(n);
    for i in 0..total {
        let t = Instant::now();
        shared.1.lock().expect("buffer").copy_from_slice(&payload);
        // Release pairs with the echo thread's Acquire load.
        shared.0 .0.store(2 * i + 1, Ordering::Release);
        // Acquire pairs with the echo thread's Release store of the answer.
        spin_until(|| shared.0 .0.load(Ordering::Acquire) == 2 * i + 2);
        let answer = shared.2.lock().expect("buffer");
        black_box(answer[size.saturating_sub(1).min(answer.len())..].first());
        drop(answer);
        if i >= warmup(n) as u64 {
            samples.push(t.elapsed());
        }
    }
    echo.join().expect("echo thread");
    samples
}

/// `n` copies of a `size`-byte message into a destination buffer.
fn memcpy_one_way(size: usize, n: usize) -> Duration {
    let src = vec![0xA5u8; size];
    let mut dst = vec![0u8; size];
    let start = Instant::now();
    for _ in 0..n {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }
    start.elapsed()
}

/// Round trips through two tokio mpsc channels; the echo task runs on the same runtime as
/// the requester (`remote == false`) or on its own current-thread runtime on another
/// thread. Every send copies the message into fresh `Bytes`, as a transport would.
async fn mpsc_round_trips(size: usize, n: usize, remote: bool) -> Vec<Duration> {
    let _pin = remote.then(crate::pin::SideA::pin);
    let (req_tx, mut req_rx) = mpsc::channel::<Bytes>(64);
    let (resp_tx, mut resp_rx) = mpsc::channel::<Bytes>(64);
    let echo = async move {
        while let Some(m) = req_rx.recv().await {
            if resp_tx.send(Bytes::copy_from_slice(&m)).await.is_err() {
                break;
            }
        }
    };
    let handle = spawn_echo(echo, remote);
    let payload = vec![0x5Au8; size];
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup(n) + n {
        let t = Instant::now();
        req_tx
            .send(Bytes::copy_from_slice(&payload))
            .await
            .expect("send");
        let m = resp_rx.recv().await.expect("echo ended");
        let d = t.elapsed();
        assert_eq!(m.len(), size);
        if i >= warmup(n) {
            samples.push(d);
        }
    }
    drop(req_tx);
    handle.join().await;
    samples
}

/// Streams `n` messages through one tokio mpsc channel (capacity 1024) to a receiver on the
/// same runtime or on another runtime's thread.
async fn mpsc_one_way(size: usize, n: usize, remote: bool) -> Duration {
    let _pin = remote.then(crate::pin::SideA::pin);
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = async move {
        let _ = ready_tx.send(());
        for _ in 0..n {
            let m = rx.recv().await.expect("sender ended");
            assert_eq!(m.len(), size);
        }
        let _ = done_tx.send(());
    };
    let payload = vec![0xA5u8; size];
    let handle = spawn_echo(reader, remote);
    // The clock starts once the reader runs (on another thread: once that thread started).
    if remote {
        ready_rx.await.expect("reader started");
    }
    let start = Instant::now();
    for _ in 0..n {
        tx.send(Bytes::copy_from_slice(&payload))
            .await
            .expect("send");
    }
    done_rx.await.expect("reader ended early");
    let d = start.elapsed();
    handle.join().await;
    d
}

/// A task on the current runtime or a thread with its own current-thread runtime.
enum Spawned {
    Task(tokio::task::JoinHandle<()>),
    Thread(Option<std::thread::JoinHandle<()>>),
}

impl Spawned {
    async fn join(self) {
        match self {
            Spawned::Task(h) => h.await.expect("echo task"),
            Spawned::Thread(mut h) => {
                let h = h.take().expect("joined once");
                tokio::task::spawn_blocking(move || h.join().expect("echo thread"))
                    .await
                    .expect("join");
            }
        }
    }
}

fn spawn_echo<F: std::future::Future<Output = ()> + Send + 'static>(f: F, remote: bool) -> Spawned {
    if remote {
        Spawned::Thread(Some(std::thread::spawn(move || {
            crate::pin::side_b();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f)
        })))
    } else {
        Spawned::Task(tokio::spawn(f))
    }
}

/// The baselines that need no socket.
pub fn contenders() -> Vec<Contender> {
    let mut v = vec![
        Contender::new(CACHE_LINE, Role::Baseline)
            .sizes(&[64])
            .round_trip(|_, _, n| cache_line_round_trips(n)),
        Contender::new(SPIN_COPY, Role::Baseline)
            .vs(CACHE_LINE)
            .round_trip(|_, size, n| spin_copy_round_trips(size, n)),
        Contender::new(MEMCPY, Role::Baseline).one_way(|_, size, n| memcpy_one_way(size, n)),
    ];
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        v.push(
            Contender::new(mpsc_name(flavor), Role::Baseline)
                .round_trip(move |ctx, size, n| {
                    ctx.block_on(flavor, mpsc_round_trips(size, n, false))
                })
                .one_way(move |ctx, size, n| ctx.block_on(flavor, mpsc_one_way(size, n, false))),
        );
    }
    v.push(
        Contender::new(MPSC_2RT, Role::Baseline)
            .round_trip(|ctx, size, n| {
                ctx.block_on(Flavor::CurrentThread, mpsc_round_trips(size, n, true))
            })
            .one_way(|ctx, size, n| {
                ctx.block_on(Flavor::CurrentThread, mpsc_one_way(size, n, true))
            }),
    );
    v
}
