//! Measures, in one process and paired per repeat:
//!
//! 1. throughput of a stable session (plain tokio driver) against the bare link it runs
//!    over (a Unix socket pair, or an in-process link with `LINK=inproc`), items of 64
//!    bytes (or `SIZE` bytes), one way;
//! 2. the time from a link kill to the first replayed item delivered to the peer, with a
//!    zero reconnect backoff (so: failure detection, reconnect, resume handshake, replay).
//!
//! ```text
//! cargo run --release --example stable_bench [items] [repeats]
//! CT=1 cargo run --release --example stable_bench [items] [repeats]   # one thread
//! RT2=1 cargo run --release --example stable_bench [items] [repeats]  # a thread per side
//! SIZE=4096 LINK=inproc cargo run --release --example stable_bench    # 4 KiB items over inproc
//! ```
//!
//! By default the runtime has two worker threads; with `CT=1` it is a current-thread
//! runtime, which measures the CPU cost per item without scheduling noise. With `RT2=1`
//! each side (sender with its session, receiver with its session) runs on a current-thread
//! runtime of its own, on its own thread — as two actix Arbiters would — for the bare link
//! and the session alike (throughput only).
//!
//! Prints the median of the repeats and the median of the per-repeat ratios.

use std::error::Error;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_tether::links::fault::{FaultHandle, FaultPlan, FaultyLink};
use actix_tether::links::inproc::{InprocConfig, InprocLink};
use actix_tether::links::stream::StreamLink;
use actix_tether::links::{send_bytes, FnSource, Link, LinkError, LinkRx};
use actix_tether::stable::driver::{DriverConfig, StableClient, StableServer};
use actix_tether::stable::{ReconnectPolicy, StableConfig};
use bytes::Bytes;

type BoxError = Box<dyn Error + Send + Sync>;
type UnixLink = StreamLink<tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf>;

static PAYLOAD: [u8; 64] = [7; 64];

/// Item size (`SIZE`, default 64 bytes) and transport (`LINK=inproc` for an in-process
/// link, otherwise a Unix socket pair) of the throughput runs.
struct Params {
    size: usize,
    inproc: bool,
}

fn params() -> Params {
    Params {
        size: std::env::var("SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        inproc: std::env::var("LINK").is_ok_and(|v| v == "inproc"),
    }
}

fn inproc_pair() -> (InprocLink, InprocLink) {
    let cfg = InprocConfig::default();
    InprocLink::pair(&cfg, &cfg)
}

async fn bare(items: u32) -> Result<Duration, BoxError> {
    let p = params();
    if p.inproc {
        let (a, b) = inproc_pair();
        bare_over(a, b, items, p.size).await
    } else {
        let (a, b) = StreamLink::unix_pair(Default::default())?;
        bare_over(a, b, items, p.size).await
    }
}

async fn bare_over<L: Link>(a: L, b: L, items: u32, size: usize) -> Result<Duration, BoxError> {
    let (mut tx, _arx) = a.split();
    let (_btx, mut rx) = b.split();
    let payload = vec![7u8; size];
    let t0 = Instant::now();
    let recv = tokio::spawn(async move {
        for _ in 0..items {
            rx.recv().await?.ok_or("closed early")?;
        }
        Ok::<_, BoxError>(())
    });
    let send = tokio::spawn(async move {
        for _ in 0..items {
            send_bytes(&mut tx, &payload).await?;
        }
        Ok::<_, BoxError>(tx)
    });
    let _tx = send.await??;
    recv.await??;
    Ok(t0.elapsed())
}

fn config() -> StableConfig {
    StableConfig {
        reconnect: ReconnectPolicy {
            initial_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            jitter: 0.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn stable(items: u32) -> Result<Duration, BoxError> {
    let p = params();
    if p.inproc {
        stable_over(|| Ok(inproc_pair()), items, p.size).await
    } else {
        stable_over(|| StreamLink::unix_pair(Default::default()), items, p.size).await
    }
}

async fn stable_over<L: Link>(
    pair: impl Fn() -> std::io::Result<(L, L)> + Send + Sync + 'static,
    items: u32,
    size: usize,
) -> Result<Duration, BoxError> {
    let (server, mut sessions) = StableServer::<L>::new(config(), DriverConfig::default())?;
    let source = FnSource(move || {
        let pair = pair();
        let server = server.clone();
        async move {
            let (a, b) = pair?;
            server.handle_link(b);
            Ok(a)
        }
    });
    let client = StableClient::connect(source, config(), DriverConfig::default())?;
    let mut srv = sessions.accept().await.ok_or("no session")?;
    let t0 = Instant::now();
    let recv = tokio::spawn(async move {
        for _ in 0..items {
            srv.recv().await?;
        }
        Ok::<_, BoxError>(srv)
    });
    let payload = Bytes::from(vec![7u8; size]);
    let send = tokio::spawn(async move {
        for _ in 0..items {
            client.send(payload.clone()).await?;
        }
        Ok::<_, BoxError>(client)
    });
    let _client = send.await??;
    let _srv = recv.await??;
    Ok(t0.elapsed())
}

async fn kill_to_replay() -> Result<Duration, BoxError> {
    let (server, mut sessions) =
        StableServer::<FaultyLink<UnixLink>>::new(config(), DriverConfig::default())?;
    let made = Arc::new(AtomicU32::new(0));
    let first: Arc<Mutex<Option<FaultHandle>>> = Arc::default();
    let first2 = first.clone();
    let source = FnSource(move || {
        let pair = StreamLink::unix_pair(Default::default());
        let (server, made, first) = (server.clone(), made.clone(), first2.clone());
        async move {
            let (a, b) = pair?;
            server.handle_link(FaultyLink::new(b, FaultPlan::default()));
            // The first link delivers the client's hello, then nothing more: items sent
            // on it stay in flight until the link is killed.
            let is_first = made.fetch_add(1, Ordering::SeqCst) == 0;
            let plan = if is_first {
                FaultPlan::new(1).stall_sends_after(1)
            } else {
                FaultPlan::default()
            };
            let link = FaultyLink::new(a, plan);
            if is_first {
                *first.lock().unwrap_or_else(|p| p.into_inner()) = Some(link.handle());
            }
            Ok(link)
        }
    });
    let client = StableClient::connect(source, config(), DriverConfig::default())?;
    let mut srv = sessions.accept().await.ok_or("no session")?;
    client.send(Bytes::from_static(&PAYLOAD)).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let handle = first
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or("no first link")?;
    let t0 = Instant::now();
    handle.kill();
    srv.recv().await?;
    Ok(t0.elapsed())
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A connected socket pair as std streams, each to be registered with its own runtime.
fn std_pair() -> Result<
    (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ),
    BoxError,
> {
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((a, b))
}

fn unix_link(s: std::os::unix::net::UnixStream) -> std::io::Result<UnixLink> {
    Ok(StreamLink::unix(
        tokio::net::UnixStream::from_std(s)?,
        Default::default(),
    ))
}

/// Bare link, each end on its own thread and runtime.
fn bare_rt2(items: u32) -> Result<Duration, BoxError> {
    let (a, b) = std_pair()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let reader = std::thread::spawn(move || {
        current_thread().block_on(async move {
            let (_tx, mut rx) = unix_link(b)?.split();
            ready_tx.send(())?;
            for _ in 0..items {
                rx.recv().await?.ok_or("closed early")?;
            }
            let _ = done_tx.send(Instant::now());
            Ok::<_, BoxError>(())
        })
    });
    ready_rx.recv()?;
    let payload = vec![7u8; params().size];
    let took = current_thread().block_on(async move {
        let (mut tx, _rx) = unix_link(a)?.split();
        let t0 = Instant::now();
        for _ in 0..items {
            send_bytes(&mut tx, &payload).await?;
        }
        // Awaited, not joined: this runtime still has to run the link's writer.
        let end = done_rx.await?;
        Ok::<_, BoxError>(end.duration_since(t0))
    })?;
    reader.join().map_err(|_| "reader panicked")??;
    Ok(took)
}

/// Stable session, the client (sending) side on this thread's runtime, the server
/// (receiving) side on another thread's runtime.
fn stable_rt2(items: u32) -> Result<Duration, BoxError> {
    let (links_tx, mut links_rx) =
        tokio::sync::mpsc::unbounded_channel::<std::os::unix::net::UnixStream>();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let server = std::thread::spawn(move || {
        current_thread().block_on(async move {
            let (server, mut sessions) =
                StableServer::<UnixLink>::new(config(), DriverConfig::default())?;
            tokio::spawn(async move {
                while let Some(s) = links_rx.recv().await {
                    if let Ok(link) = unix_link(s) {
                        server.handle_link(link);
                    }
                }
            });
            let mut srv = sessions.accept().await.ok_or("no session")?;
            let _ = up_tx.send(());
            for _ in 0..items {
                srv.recv().await?;
            }
            let _ = done_tx.send(Instant::now());
            Ok::<_, BoxError>(())
        })
    });
    let took = current_thread().block_on(async move {
        let source = FnSource(move || {
            let made = std_pair().and_then(|(a, b)| {
                links_tx.send(b).map_err(|_| "server gone")?;
                Ok(unix_link(a)?)
            });
            async move {
                made.map_err(|e| LinkError::Io(Arc::new(std::io::Error::other(e.to_string()))))
            }
        });
        let client = StableClient::connect(source, config(), DriverConfig::default())?;
        up_rx.await?;
        let payload = Bytes::from(vec![7u8; params().size]);
        let t0 = Instant::now();
        for _ in 0..items {
            client.send(payload.clone()).await?;
        }
        // Awaited, not joined: this runtime still has to run the session's tasks.
        let end = done_rx.await?;
        Ok::<_, BoxError>(end.duration_since(t0))
    })?;
    server.join().map_err(|_| "server panicked")??;
    Ok(took)
}

/// `[items] [repeats]` from the command line (defaults 200000 and 5).
fn args() -> Result<(u32, usize), BoxError> {
    let mut args = std::env::args().skip(1);
    let items = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let repeats = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    Ok((items, repeats))
}

fn run_rt2() -> Result<(), BoxError> {
    if params().inproc {
        return Err(
            "RT2=1 runs over a Unix socket pair only (LINK=inproc is not supported)".into(),
        );
    }
    let (items, repeats) = args()?;
    let (mut bare_rates, mut stable_rates, mut ratios) = (vec![], vec![], vec![]);
    for r in 0..repeats {
        let b = items as f64 / bare_rt2(items)?.as_secs_f64();
        let s = items as f64 / stable_rt2(items)?.as_secs_f64();
        println!(
            "repeat {r} (a thread per side): bare {:.2} M items/s, stable {:.2} M items/s, ratio {:.2}",
            b / 1e6,
            s / 1e6,
            s / b
        );
        bare_rates.push(b);
        stable_rates.push(s);
        ratios.push(s / b);
    }
    println!(
        "median over {repeats} (a thread per side): bare {:.2} M items/s, stable {:.2} M items/s, ratio {:.2}",
        median(bare_rates) / 1e6,
        median(stable_rates) / 1e6,
        median(ratios)
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), BoxError> {
    if std::env::var_os("RT2").is_some() {
        return run_rt2();
    }
    let rt = if std::env::var_os("CT").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    };
    rt.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let (items, repeats) = args()?;
    let (mut bare_rates, mut stable_rates, mut ratios, mut kills) =
        (vec![], vec![], vec![], vec![]);
    for r in 0..repeats {
        let b = items as f64 / bare(items).await?.as_secs_f64();
        let s = items as f64 / stable(items).await?.as_secs_f64();
        let k = kill_to_replay().await?.as_secs_f64() * 1e6;
        println!(
            "repeat {r}: bare {:.2} M items/s, stable {:.2} M items/s, ratio {:.2}, kill→replay {:.0} µs",
            b / 1e6,
            s / 1e6,
            s / b,
            k
        );
        bare_rates.push(b);
        stable_rates.push(s);
        ratios.push(s / b);
        kills.push(k);
    }
    println!(
        "median over {repeats}: bare {:.2} M items/s, stable {:.2} M items/s, ratio {:.2}; kill→first replayed item {:.0} µs",
        median(bare_rates) / 1e6,
        median(stable_rates) / 1e6,
        median(ratios),
        median(kills)
    );
    Ok(())
}
