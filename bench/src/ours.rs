//! This crate's other transports: ShmLink (each idle strategy), inproc, and StreamLink with
//! its two sides on two runtimes (threads), for a like-for-like comparison with ShmLink.
//!
//! Spinning strategies only make sense when the two sides run on different threads, so the
//! shared-memory contenders put the echo (or the reader) on a thread of its own with its own
//! current-thread runtime — as two processes, or two actix Arbiters, would be.

use std::future::Future;
use std::time::Instant;

use actix_tether::links::inproc::{InprocConfig, InprocLink};
use actix_tether::links::{send_bytes, Link, LinkRx};
use actix_tether::shm::{IdleStrategy, ShmConfig, ShmLink};

use crate::baselines::{mpsc_name, CACHE_LINE, MPSC_2RT};
use crate::harness::{client_round_trips, echo, Contender, Flavor, Role};
use crate::stream::unix_link_pair;

/// Name of the StreamLink-over-Unix contender with its sides on two runtimes.
pub const STREAM_UNIX_2RT: &str = "StreamLink unix (2 runtimes)";

fn on_own_thread<F>(f: F) -> std::thread::JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    std::thread::spawn(move || {
        crate::pin::side_b();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
}

async fn join(h: std::thread::JoinHandle<()>) {
    tokio::task::spawn_blocking(move || h.join().expect("peer thread"))
        .await
        .expect("join");
}

/// A contender for any Link whose side `b` runs on its own thread and runtime; side `a`
/// runs on the bench's current-thread runtime. The two threads are pinned to CPUs 0 and 1
/// (see [`crate::pin`]).
pub fn two_runtimes<L, F, Fut>(name: impl Into<String>, pair: F) -> Contender
where
    L: Link,
    F: Fn() -> Fut + Clone + 'static,
    Fut: Future<Output = (L, L)>,
{
    let p2 = pair.clone();
    Contender::new(name, Role::Ours)
        .round_trip(move |ctx, size, n| {
            let _pin = crate::pin::SideA::pin();
            ctx.block_on(Flavor::CurrentThread, async {
                let (a, b) = pair().await;
                let (btx, brx) = b.split();
                let echo = on_own_thread(echo(btx, brx));
                let (mut atx, mut arx) = a.split();
                let samples = client_round_trips(&mut atx, &mut arx, size, n).await;
                drop(atx);
                drop(arx);
                join(echo).await;
                samples
            })
        })
        .one_way(move |ctx, size, n| {
            let _pin = crate::pin::SideA::pin();
            ctx.block_on(Flavor::CurrentThread, async {
                let (a, b) = p2().await;
                let (_btx, mut brx) = b.split();
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
                let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
                let reader = on_own_thread(async move {
                    let _ = ready_tx.send(());
                    for _ in 0..n {
                        let m = brx.recv().await.expect("recv").expect("early EOF");
                        assert_eq!(m.len(), size);
                    }
                    let _ = done_tx.send(Instant::now());
                });
                let (mut atx, _arx) = a.split();
                let payload = vec![0xA5u8; size];
                // The clock starts once the reader's thread runs, as for every contender
                // with a reader thread: its start-up is not streaming.
                ready_rx.await.expect("reader started");
                let start = Instant::now();
                for _ in 0..n {
                    send_bytes(&mut atx, &payload).await.expect("send");
                }
                let end = done_rx.await.expect("reader finished");
                join(reader).await;
                end.duration_since(start)
            })
        })
}

fn shm(idle: IdleStrategy) -> ShmConfig {
    ShmConfig {
        idle,
        ..ShmConfig::default()
    }
}

async fn shm_pair(config: ShmConfig) -> (ShmLink, ShmLink) {
    ShmLink::pair(config).expect("shm pair")
}

async fn inproc_pair() -> (InprocLink, InprocLink) {
    InprocLink::pair(&InprocConfig::default(), &InprocConfig::default())
}

/// ShmLink with each idle strategy, inproc on every runtime, StreamLink on two runtimes.
pub fn contenders() -> Vec<Contender> {
    let mut v = Vec::new();
    let strategies = [
        ("spin-then-park", IdleStrategy::default()),
        ("park", IdleStrategy::Park),
        ("busy-spin", IdleStrategy::BusySpin),
    ];
    for (label, idle) in strategies {
        v.push(
            two_runtimes(format!("ShmLink {label} (2 runtimes)"), move || {
                shm_pair(shm(idle))
            })
            .vs(CACHE_LINE)
            .vs_one_way(STREAM_UNIX_2RT)
            .class("shm"),
        );
    }
    // On one thread the two sides take turns: only parking makes sense there.
    v.push(
        Contender::link(
            "ShmLink park (ct)",
            Role::Ours,
            Flavor::CurrentThread,
            || shm_pair(shm(IdleStrategy::Park)),
        )
        .vs(CACHE_LINE)
        .class("shm"),
    );
    v.push(
        two_runtimes(STREAM_UNIX_2RT, unix_link_pair)
            .vs(MPSC_2RT)
            .class("stream unix (2 runtimes)"),
    );
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        v.push(
            Contender::link(
                format!("inproc ({})", flavor.label()),
                Role::Ours,
                flavor,
                inproc_pair,
            )
            .vs(mpsc_name(flavor))
            .class("in-process"),
        );
    }
    v.push(
        two_runtimes("inproc (2 runtimes)", inproc_pair)
            .vs(MPSC_2RT)
            .class("in-process"),
    );
    v
}
