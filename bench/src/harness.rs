//! The measurement framework: contenders, paired repeats, and the raw samples they produce.
//!
//! A [`Contender`] is a name, a role (baseline, this crate, peer) and up to two measurement
//! functions:
//!
//! * round trip: `(ctx, size, n) -> Vec<Duration>` — `n` request/response round trips of
//!   `size`-byte messages, **one duration per round trip** (percentiles are computed from
//!   them);
//! * one-way: `(ctx, size, n) -> Duration` — the time to stream `n` messages of `size` bytes
//!   from one end to the other, until the last one is received.
//!
//! Every function builds its own pair (sockets, threads, shared memory) outside the timed
//! part and tears it down afterwards. [`run`] calls every contender once per repeat,
//! interleaved (paired repeats), so slow drifts of a shared machine hit all contenders alike.

use std::future::Future;
use std::time::{Duration, Instant};

use actix_tether::links::{send_bytes, Link, LinkRx, LinkTx};

use crate::Settings;

/// Message sizes of every scenario.
pub const SIZES: [usize; 4] = [64, 4 << 10, 64 << 10, 1 << 20];

/// What a contender is, which decides which ratios the table shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A reference point (physical floor, raw tokio); other rows are compared to it.
    Baseline,
    /// A transport of this crate.
    Ours,
    /// A peer crate from crates.io.
    Peer,
}

/// What a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Request/response latency (lower is better).
    RoundTrip,
    /// One-way streaming throughput (higher is better).
    OneWay,
}

/// The tokio runtime a contender runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// One thread, as an actix Arbiter runs: no cross-thread wake-ups inside the process.
    CurrentThread,
    /// Two worker threads: tasks may run on either core.
    MultiThread,
}

impl Flavor {
    /// Short label used in contender names.
    pub fn label(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "ct",
            Flavor::MultiThread => "mt",
        }
    }
}

/// Runtimes shared by all contenders of a run (built once, outside every timed part).
pub struct Ctx {
    ct: tokio::runtime::Runtime,
    mt: tokio::runtime::Runtime,
}

impl Ctx {
    /// Builds the current-thread and the 2-worker multi-thread runtime.
    pub fn new() -> Self {
        Ctx {
            ct: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("current-thread runtime"),
            mt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("multi-thread runtime"),
        }
    }

    /// Runs `fut` to completion on the runtime of `flavor`.
    pub fn block_on<F: Future>(&self, flavor: Flavor, fut: F) -> F::Output {
        match flavor {
            Flavor::CurrentThread => self.ct.block_on(fut),
            Flavor::MultiThread => self.mt.block_on(fut),
        }
    }
}

/// Measures `n` round trips of `size`-byte messages; one duration per round trip.
pub type RoundTripFn = Box<dyn Fn(&Ctx, usize, usize) -> Vec<Duration>>;
/// Measures the time to stream `n` messages of `size` bytes one way.
pub type OneWayFn = Box<dyn Fn(&Ctx, usize, usize) -> Duration>;

/// One contestant of the comparison.
pub struct Contender {
    /// Unique display name, including the runtime flavor where it matters ("StreamLink unix (mt)").
    pub name: String,
    /// Baseline, ours or peer.
    pub role: Role,
    /// Name of the baseline this contender's round-trip ratio is taken against.
    pub baseline: Option<String>,
    /// Name of the baseline for the one-way ratio (default: the same as `baseline`).
    pub baseline_one_way: Option<String>,
    /// Peers are compared within a class ("stream unix (ct)"); None: against every peer.
    pub class: Option<String>,
    /// Message sizes this contender takes part in (default: all of [`SIZES`]).
    pub sizes: Vec<usize>,
    /// Round-trip measurement, if the contender has one.
    pub round_trip: Option<RoundTripFn>,
    /// One-way streaming measurement, if the contender has one.
    pub one_way: Option<OneWayFn>,
}

impl Contender {
    /// A contender with no measurement yet; add them with [`Self::round_trip`] and
    /// [`Self::one_way`].
    pub fn new(name: impl Into<String>, role: Role) -> Self {
        Contender {
            name: name.into(),
            role,
            baseline: None,
            baseline_one_way: None,
            class: None,
            sizes: SIZES.to_vec(),
            round_trip: None,
            one_way: None,
        }
    }

    /// Compares this contender to the baseline named `name` (in both scenarios unless
    /// [`Self::vs_one_way`] names another one for one-way streaming).
    pub fn vs(mut self, name: impl Into<String>) -> Self {
        self.baseline = Some(name.into());
        self
    }

    /// Compares this contender's one-way throughput to the baseline named `name`.
    pub fn vs_one_way(mut self, name: impl Into<String>) -> Self {
        self.baseline_one_way = Some(name.into());
        self
    }

    /// Puts the contender in a class: the "vs best peer" column then takes the best peer of
    /// the same class (for instance `"stream unix (ct)"`).
    pub fn class(mut self, class: impl Into<String>) -> Self {
        self.class = Some(class.into());
        self
    }

    /// Restricts the contender to these message sizes.
    pub fn sizes(mut self, sizes: &[usize]) -> Self {
        self.sizes = sizes.to_vec();
        self
    }

    /// Sets the round-trip measurement.
    pub fn round_trip(mut self, f: impl Fn(&Ctx, usize, usize) -> Vec<Duration> + 'static) -> Self {
        self.round_trip = Some(Box::new(f));
        self
    }

    /// Sets the one-way measurement.
    pub fn one_way(mut self, f: impl Fn(&Ctx, usize, usize) -> Duration + 'static) -> Self {
        self.one_way = Some(Box::new(f));
        self
    }

    /// A contender for any [`Link`] of this crate: `pair` makes a fresh connected pair on the
    /// given runtime, and both the round-trip and the one-way measurement use it through
    /// [`link_round_trips`] and [`link_one_way`]. This is the one line a new transport
    /// needs:
    ///
    /// ```ignore
    /// v.push(Contender::link("ShmLink spin (mt)", Role::Ours, Flavor::MultiThread,
    ///     || async { ShmLink::pair(Default::default()).unwrap() }).vs(CACHE_LINE));
    /// ```
    pub fn link<L, F, Fut>(name: impl Into<String>, role: Role, flavor: Flavor, pair: F) -> Self
    where
        L: Link,
        F: Fn() -> Fut + Clone + 'static,
        Fut: Future<Output = (L, L)>,
    {
        let p2 = pair.clone();
        Contender::new(name, role)
            .round_trip(move |ctx, size, n| {
                ctx.block_on(flavor, async {
                    let (a, b) = pair().await;
                    link_round_trips(a, b, size, n).await
                })
            })
            .one_way(move |ctx, size, n| {
                ctx.block_on(flavor, async {
                    let (a, b) = p2().await;
                    link_one_way(a, b, size, n).await
                })
            })
    }
}

/// Round trips discarded before measuring (connection warm-up, first allocations).
pub fn warmup(n: usize) -> usize {
    (n / 10).clamp(10, 200)
}

/// `n` request/response round trips of `size`-byte messages over any [`Link`] of this crate,
/// after [`warmup`] unmeasured ones. Side `b` echoes every message back in a spawned task.
/// Returns one duration per measured round trip.
pub async fn link_round_trips<L: Link>(a: L, b: L, size: usize, n: usize) -> Vec<Duration> {
    let (mut atx, mut arx) = a.split();
    let (btx, brx) = b.split();
    let echo = tokio::spawn(echo(btx, brx));
    let samples = client_round_trips(&mut atx, &mut arx, size, n).await;
    drop(atx);
    let _ = echo.await;
    samples
}

/// Sends every message received on `rx` back on `tx` until either side ends.
pub async fn echo<T: LinkTx, R: LinkRx>(mut tx: T, mut rx: R) {
    while let Ok(Some(m)) = rx.recv().await {
        if send_bytes(&mut tx, &m).await.is_err() {
            break;
        }
    }
}

/// The requesting side of [`link_round_trips`]: [`warmup`] unmeasured round trips, then `n`
/// measured ones against an echoing peer. One duration per measured round trip.
pub async fn client_round_trips<T: LinkTx, R: LinkRx>(
    tx: &mut T,
    rx: &mut R,
    size: usize,
    n: usize,
) -> Vec<Duration> {
    let payload = vec![0x5Au8; size];
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup(n) + n {
        let t = Instant::now();
        send_bytes(tx, &payload).await.expect("send");
        let m = rx.recv().await.expect("recv").expect("echo ended");
        let d = t.elapsed();
        assert_eq!(m.len(), size);
        if i >= warmup(n) {
            samples.push(d);
        }
    }
    samples
}

/// Time to stream `n` messages of `size` bytes from `a` to `b` over any [`Link`] of this
/// crate, from the first send until the last message is received.
pub async fn link_one_way<L: Link>(a: L, b: L, size: usize, n: usize) -> Duration {
    let (mut tx, _arx) = a.split();
    let (_btx, mut rx) = b.split();
    let payload = vec![0xA5u8; size];
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            let m = rx.recv().await.expect("recv").expect("early EOF");
            assert_eq!(m.len(), size);
        }
        rx
    });
    for _ in 0..n {
        send_bytes(&mut tx, &payload).await.expect("send");
    }
    let _rx = reader.await.expect("reader task");
    start.elapsed()
}

/// Raw samples of one contender in one scenario and size.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    /// Scenario kind.
    pub kind: Kind,
    /// Message size in bytes.
    pub size: usize,
    /// Contender name.
    pub contender: String,
    /// Contender role.
    pub role: Role,
    /// Baseline name for the ratio column.
    pub baseline: Option<String>,
    /// Class for the best-peer comparison.
    #[serde(default)]
    pub class: Option<String>,
    /// Operations per repeat (round trips, or messages streamed).
    pub ops: usize,
    /// Round trip: per repeat, every round trip's duration in nanoseconds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub round_trip_ns: Vec<Vec<u64>>,
    /// One way: per repeat, the total time in nanoseconds for `ops` messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub one_way_total_ns: Vec<u64>,
    /// Error text if the contender failed (panicked) in this scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// Round trips per repeat for `size`-byte messages: fewer for large messages, whose round
/// trips cost more. Tail percentiles pool the samples of all repeats.
pub fn round_trips(s: &Settings, size: usize) -> usize {
    let n = s.round_trips;
    if size >= 1 << 20 {
        (n / 10).max(50)
    } else if size >= 64 << 10 {
        (n / 2).max(50)
    } else {
        n
    }
}

/// Fewest messages in a one-way measurement by default (`--quick`: 100). One-way streams have no warm-up, and every
/// repeat makes a fresh pair (a fresh shared-memory segment, fresh buffers): with 100
/// messages of 1 MiB, first-touch page faults of the new memory were half of ShmLink's time.
/// A thousand messages amortise that setup as a long-lived stream does.
pub const MIN_STREAM_MESSAGES: usize = 1000;

/// Messages per one-way measurement of `size`-byte messages: `stream_bytes` of them, at
/// least `min_stream_messages` and at most `max_stream_messages`.
pub fn one_way_messages(s: &Settings, size: usize) -> usize {
    (s.stream_bytes / size.max(1)).clamp(s.min_stream_messages, s.max_stream_messages)
}

/// Runs every contender in every scenario it has, paired repeats, and returns raw samples.
/// A contender that panics is recorded as failed in that scenario and skipped afterwards.
pub fn run(s: &Settings, ctx: &Ctx, contenders: &[Contender]) -> Vec<Measured> {
    let mut out = Vec::new();
    for kind in [Kind::RoundTrip, Kind::OneWay] {
        for &size in &SIZES {
            let ops = match kind {
                Kind::RoundTrip => round_trips(s, size),
                Kind::OneWay => one_way_messages(s, size),
            };
            let active: Vec<&Contender> = contenders
                .iter()
                .filter(|c| c.sizes.contains(&size) && s.selected(&c.name))
                .filter(|c| match kind {
                    Kind::RoundTrip => c.round_trip.is_some(),
                    Kind::OneWay => c.one_way.is_some(),
                })
                .collect();
            if active.is_empty() {
                continue;
            }
            let mut rows: Vec<Measured> = active
                .iter()
                .map(|c| Measured {
                    kind,
                    size,
                    contender: c.name.clone(),
                    role: c.role,
                    baseline: match kind {
                        Kind::RoundTrip => c.baseline.clone(),
                        Kind::OneWay => c.baseline_one_way.clone().or(c.baseline.clone()),
                    },
                    class: c.class.clone(),
                    ops,
                    round_trip_ns: Vec::new(),
                    one_way_total_ns: Vec::new(),
                    failed: None,
                })
                .collect();
            let t0 = Instant::now();
            for _ in 0..s.repeats {
                for (c, row) in active.iter().zip(rows.iter_mut()) {
                    if row.failed.is_some() {
                        continue;
                    }
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
                        Kind::RoundTrip => {
                            let v = (c.round_trip.as_ref().expect("filtered"))(ctx, size, ops);
                            row.round_trip_ns
                                .push(v.iter().map(|d| d.as_nanos() as u64).collect());
                        }
                        Kind::OneWay => {
                            let d = (c.one_way.as_ref().expect("filtered"))(ctx, size, ops);
                            row.one_way_total_ns.push(d.as_nanos() as u64);
                        }
                    }));
                    if let Err(e) = r {
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panicked".into());
                        eprintln!("  {} failed at {} B: {msg}", c.name, size);
                        row.failed = Some(msg);
                    }
                }
            }
            eprintln!(
                "{:?} {:>7} B: {} contenders × {} repeats in {:.1} s",
                kind,
                size,
                active.len(),
                s.repeats,
                t0.elapsed().as_secs_f64()
            );
            out.extend(rows);
        }
    }
    out
}
