//! Peer crates from crates.io, measured with the same scenarios as this crate's links:
//! `vox-stream` 0.3.1 and `vox-shm` 0.3.1 (the seed's stream and shared-memory links, through
//! their own `vox_types::Link` trait), `vox-stream` 0.10.0-rc.7 (the latest release, whose
//! `send` waits until the frame is flushed), `ipc-channel` (byte channels over Unix sockets,
//! blocking threads) and `iceoryx2` (zero-copy publish-subscribe, busy-waiting receivers).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use vox_types::{Link as VoxLink, LinkRx as _, LinkTx as _, LinkTxPermit as _, WriteSlot as _};

use crate::baselines::{spin_until, MEMCPY, SPIN_COPY};
use crate::harness::{warmup, Contender, Flavor, Role};
use crate::stream::{raw_name, stream_class, tcp_pair, Net};

// ---- vox (vox-stream, vox-shm): generic over vox_types::Link ----

/// Sends one message through a vox link: reserve, alloc, copy, commit. vox-shm's `alloc`
/// fails with `WouldBlock` when its slot pool is exhausted and asks the caller to retry on
/// the next reserve; this does that (yielding to the runtime in between).
async fn vox_send<T: vox_types::LinkTx>(tx: &T, payload: &[u8]) {
    loop {
        let permit = tx.reserve().await.expect("vox reserve");
        let sent = match permit.alloc(payload.len()) {
            Ok(mut slot) => {
                slot.as_mut_slice().copy_from_slice(payload);
                slot.commit();
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("vox alloc: {e}"),
        };
        if sent {
            return;
        }
        tokio::task::yield_now().await;
    }
}

async fn vox_round_trips<L: VoxLink>(a: L, b: L, size: usize, n: usize) -> Vec<Duration>
where
    L::Tx: Send + 'static,
    L::Rx: Send + 'static,
{
    let (atx, mut arx) = a.split();
    let (btx, mut brx) = b.split();
    let echo = tokio::spawn(async move {
        while let Ok(Some(m)) = brx.recv().await {
            let m = m.as_bytes().to_vec();
            vox_send(&btx, &m).await;
        }
    });
    let payload = vec![0x5Au8; size];
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup(n) + n {
        let t = Instant::now();
        vox_send(&atx, &payload).await;
        let m = arx.recv().await.expect("vox recv").expect("echo ended");
        let d = t.elapsed();
        assert_eq!(m.as_bytes().len(), size);
        drop(m);
        if i >= warmup(n) {
            samples.push(d);
        }
    }
    let _ = atx.close().await;
    echo.abort();
    let _ = echo.await;
    samples
}

async fn vox_one_way<L: VoxLink>(a: L, b: L, size: usize, n: usize) -> Duration
where
    L::Tx: Send + 'static,
    L::Rx: Send + 'static,
{
    let (tx, _arx) = a.split();
    let (_btx, mut rx) = b.split();
    let payload = vec![0xA5u8; size];
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            let m = rx.recv().await.expect("vox recv").expect("early EOF");
            assert_eq!(m.as_bytes().len(), size);
        }
        rx
    });
    for _ in 0..n {
        vox_send(&tx, &payload).await;
    }
    let _rx = reader.await.expect("reader task");
    let d = start.elapsed();
    let _ = tx.close().await;
    d
}

/// A contender for any `vox_types::Link`, the counterpart of [`Contender::link`].
fn vox_contender<L, F, Fut>(name: String, flavor: Flavor, pair: F) -> Contender
where
    L: VoxLink,
    L::Tx: Send + 'static,
    L::Rx: Send + 'static,
    F: Fn() -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = (L, L, Keep)>,
{
    let p2 = pair.clone();
    Contender::new(name, Role::Peer)
        .round_trip(move |ctx, size, n| {
            ctx.block_on(flavor, async {
                let (a, b, _keep) = pair().await;
                vox_round_trips(a, b, size, n).await
            })
        })
        .one_way(move |ctx, size, n| {
            ctx.block_on(flavor, async {
                let (a, b, _keep) = p2().await;
                vox_one_way(a, b, size, n).await
            })
        })
}

/// Whatever must outlive a pair (vox-shm's segment directory).
type Keep = Option<tempfile::TempDir>;

type VoxUnix =
    vox_stream::StreamLink<tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf>;
type VoxTcp =
    vox_stream::StreamLink<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>;

async fn vox_unix_pair() -> (VoxUnix, VoxUnix, Keep) {
    let (a, b) = tokio::net::UnixStream::pair().expect("socketpair");
    (
        vox_stream::StreamLink::unix(a),
        vox_stream::StreamLink::unix(b),
        None,
    )
}

async fn vox_tcp_pair() -> (VoxTcp, VoxTcp, Keep) {
    let (a, b) = tcp_pair().await;
    (
        vox_stream::StreamLink::tcp(a),
        vox_stream::StreamLink::tcp(b),
        None,
    )
}

/// A vox-shm host/guest pair on a fresh file-backed segment: 1 MiB ring per direction,
/// payloads up to 256 B inline in the ring, larger ones in slots (4 KiB, 64 KiB and
/// 1 MiB classes), as the seed configured it for mixed traffic.
async fn vox_shm_pair() -> (vox_shm::ShmLink, vox_shm::ShmLink, Keep) {
    let dir = tempfile::tempdir().expect("tempdir");
    let classes = [
        vox_shm::SizeClassConfig {
            slot_size: 4096 + 64,
            slot_count: 256,
        },
        vox_shm::SizeClassConfig {
            slot_size: (64 << 10) + 64,
            slot_count: 32,
        },
        vox_shm::SizeClassConfig {
            slot_size: (1 << 20) + 64,
            slot_count: 8,
        },
    ];
    let segment = Arc::new(
        vox_shm::Segment::create(
            &dir.path().join("bench.shm"),
            vox_shm::SegmentConfig {
                max_guests: 1,
                bipbuf_capacity: 1 << 20,
                max_payload_size: (1 << 20) + 64,
                inline_threshold: 256,
                heartbeat_interval: 0,
                size_classes: &classes,
            },
            shm_primitives::FileCleanup::Manual,
        )
        .expect("vox-shm segment"),
    );
    let (a, b) = vox_shm::create_test_link_pair(segment)
        .await
        .expect("vox-shm pair");
    (a, b, Some(dir))
}

// ---- vox-stream 0.10.0-rc.7: its Link trait sends owned Vec<u8>s and waits for the flush ----

mod vox10 {
    use super::*;
    use vox_types_rc::{Link, LinkRx as _, LinkTx as _};

    async fn round_trips<L: Link>(a: L, b: L, size: usize, n: usize) -> Vec<Duration>
    where
        L::Tx: Send + 'static,
        L::Rx: Send + 'static,
    {
        let (atx, mut arx) = a.split();
        let (btx, mut brx) = b.split();
        let echo = tokio::spawn(async move {
            while let Ok(Some(m)) = brx.recv().await {
                if btx.send(m.as_bytes().to_vec()).await.is_err() {
                    break;
                }
            }
        });
        let payload = vec![0x5Au8; size];
        let mut samples = Vec::with_capacity(n);
        for i in 0..warmup(n) + n {
            let t = Instant::now();
            atx.send(payload.clone()).await.expect("vox send");
            let m = arx.recv().await.expect("vox recv").expect("echo ended");
            let d = t.elapsed();
            assert_eq!(m.as_bytes().len(), size);
            drop(m);
            if i >= warmup(n) {
                samples.push(d);
            }
        }
        let _ = atx.close().await;
        echo.abort();
        let _ = echo.await;
        samples
    }

    async fn one_way<L: Link>(a: L, b: L, size: usize, n: usize) -> Duration
    where
        L::Tx: Send + 'static,
        L::Rx: Send + 'static,
    {
        let (tx, _arx) = a.split();
        let (_btx, mut rx) = b.split();
        let payload = vec![0xA5u8; size];
        let start = Instant::now();
        let reader = tokio::spawn(async move {
            for _ in 0..n {
                let m = rx.recv().await.expect("vox recv").expect("early EOF");
                assert_eq!(m.as_bytes().len(), size);
            }
            rx
        });
        for _ in 0..n {
            // The copy into an owned Vec is what a caller holding a borrowed message pays.
            tx.send(payload.clone()).await.expect("vox send");
        }
        let _rx = reader.await.expect("reader task");
        let d = start.elapsed();
        let _ = tx.close().await;
        d
    }

    type Unix = vox_stream_rc::StreamLink<
        tokio::net::unix::OwnedReadHalf,
        tokio::net::unix::OwnedWriteHalf,
    >;
    type Tcp =
        vox_stream_rc::StreamLink<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>;

    fn unix_pair() -> (Unix, Unix) {
        let (a, b) = tokio::net::UnixStream::pair().expect("socketpair");
        (
            vox_stream_rc::StreamLink::unix(a),
            vox_stream_rc::StreamLink::unix(b),
        )
    }

    async fn tcp_link_pair() -> (Tcp, Tcp) {
        let (a, b) = tcp_pair().await;
        (
            vox_stream_rc::StreamLink::tcp(a),
            vox_stream_rc::StreamLink::tcp(b),
        )
    }

    /// vox-stream 0.10.0-rc.7 over a Unix socket pair or loopback TCP.
    pub fn contender(net: Net, flavor: Flavor) -> Contender {
        let name = format!("vox-stream 0.10-rc.7 {} ({})", net.label(), flavor.label());
        Contender::new(name, Role::Peer)
            .vs(raw_name(net, flavor))
            .class(stream_class(net, flavor))
            .round_trip(move |ctx, size, n| {
                ctx.block_on(flavor, async move {
                    match net {
                        Net::Unix => {
                            let (a, b) = unix_pair();
                            round_trips(a, b, size, n).await
                        }
                        Net::Tcp => {
                            let (a, b) = tcp_link_pair().await;
                            round_trips(a, b, size, n).await
                        }
                    }
                })
            })
            .one_way(move |ctx, size, n| {
                ctx.block_on(flavor, async move {
                    match net {
                        Net::Unix => {
                            let (a, b) = unix_pair();
                            one_way(a, b, size, n).await
                        }
                        Net::Tcp => {
                            let (a, b) = tcp_link_pair().await;
                            one_way(a, b, size, n).await
                        }
                    }
                })
            })
    }
}

// ---- ipc-channel: blocking byte channels, one thread per side ----

fn ipc_round_trips(size: usize, n: usize) -> Vec<Duration> {
    let _pin = crate::pin::SideA::pin();
    let (req_tx, req_rx) = ipc_channel::ipc::bytes_channel().expect("ipc channel");
    let (resp_tx, resp_rx) = ipc_channel::ipc::bytes_channel().expect("ipc channel");
    let total = warmup(n) + n;
    let echo = std::thread::spawn(move || {
        crate::pin::side_b();
        for _ in 0..total {
            let m = req_rx.recv().expect("ipc recv");
            resp_tx.send(&m).expect("ipc send");
        }
    });
    let payload = vec![0x5Au8; size];
    let mut samples = Vec::with_capacity(n);
    for i in 0..total {
        let t = Instant::now();
        req_tx.send(&payload).expect("ipc send");
        let m = resp_rx.recv().expect("ipc recv");
        let d = t.elapsed();
        assert_eq!(m.len(), size);
        if i >= warmup(n) {
            samples.push(d);
        }
    }
    echo.join().expect("echo thread");
    samples
}

fn ipc_one_way(size: usize, n: usize) -> Duration {
    let _pin = crate::pin::SideA::pin();
    let (tx, rx) = ipc_channel::ipc::bytes_channel().expect("ipc channel");
    let payload = vec![0xA5u8; size];
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        crate::pin::side_b();
        let _ = ready_tx.send(());
        for _ in 0..n {
            let m = rx.recv().expect("ipc recv");
            assert_eq!(m.len(), size);
        }
    });
    // The clock starts once the reader's thread runs.
    ready_rx.recv().expect("reader started");
    let start = Instant::now();
    for _ in 0..n {
        tx.send(&payload).expect("ipc send");
    }
    reader.join().expect("reader thread");
    start.elapsed()
}

// ---- iceoryx2: publish-subscribe, receivers busy-wait ----

mod ice {
    use super::*;
    use iceoryx2::prelude::*;

    static SERVICE_SEQ: AtomicU64 = AtomicU64::new(0);

    fn service_name(what: &str) -> String {
        format!(
            "tether-bench/{}/{}/{what}",
            std::process::id(),
            SERVICE_SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    type Pub = iceoryx2::port::publisher::Publisher<ipc::Service, [u8], ()>;
    type Sub = iceoryx2::port::subscriber::Subscriber<ipc::Service, [u8], ()>;

    /// Opens (or creates) the `[u8]` service `name` with a subscriber queue of `depth`
    /// samples and no overflow (a full queue makes the publisher retry: backpressure).
    fn ports(
        node: &Node<ipc::Service>,
        name: &str,
        size: usize,
        depth: usize,
        publish: bool,
    ) -> (Option<Pub>, Option<Sub>) {
        let service = node
            .service_builder(&name.try_into().expect("service name"))
            .publish_subscribe::<[u8]>()
            .subscriber_max_buffer_size(depth)
            .history_size(0)
            .enable_safe_overflow(false)
            .max_publishers(1)
            .max_subscribers(1)
            .open_or_create()
            .expect("iceoryx2 service");
        if publish {
            let p = service
                .publisher_builder()
                .initial_max_slice_len(size)
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .create()
                .expect("iceoryx2 publisher");
            (Some(p), None)
        } else {
            let s = service
                .subscriber_builder()
                .buffer_size(depth)
                .create()
                .expect("iceoryx2 subscriber");
            (None, Some(s))
        }
    }

    fn node() -> Node<ipc::Service> {
        NodeBuilder::new()
            .create::<ipc::Service>()
            .expect("iceoryx2 node")
    }

    /// Sends one sample. `send` returns how many subscribers got it: right after the
    /// ports were created the subscriber may not be connected yet (0), and the sample would
    /// be lost, so it is sent again until the one subscriber has it.
    fn publish(p: &Pub, payload: &[u8]) {
        spin_until(|| {
            let s = p.loan_slice_uninit(payload.len()).expect("iceoryx2 loan");
            s.write_from_slice(payload).send().expect("iceoryx2 send") > 0
        });
    }

    /// Busy-waits for the next sample and hands its payload to `f`.
    fn receive<R>(s: &Sub, mut f: impl FnMut(&[u8]) -> R) -> R {
        let mut out = None;
        spin_until(|| match s.receive().expect("iceoryx2 receive") {
            Some(sample) => {
                out = Some(f(sample.payload()));
                true
            }
            None => false,
        });
        out.expect("received")
    }

    pub fn round_trips(size: usize, n: usize) -> Vec<Duration> {
        let _pin = crate::pin::SideA::pin();
        set_log_level(LogLevel::Error);
        let (ping, pong) = (service_name("ping"), service_name("pong"));
        let total = warmup(n) + n;
        let ready = Arc::new(Barrier::new(2));
        let echo = {
            let (ping, pong, ready) = (ping.clone(), pong.clone(), ready.clone());
            std::thread::spawn(move || {
                crate::pin::side_b();
                let node = node();
                let (_, sub) = ports(&node, &ping, size, 4, false);
                let (publ, _) = ports(&node, &pong, size, 4, true);
                let (sub, publ) = (sub.expect("sub"), publ.expect("pub"));
                ready.wait();
                ready.wait();
                for _ in 0..total {
                    receive(&sub, |m| publish(&publ, m));
                }
            })
        };
        let node = node();
        let (publ, _) = ports(&node, &ping, size, 4, true);
        let (_, sub) = ports(&node, &pong, size, 4, false);
        let (sub, publ) = (sub.expect("sub"), publ.expect("pub"));
        ready.wait();
        ready.wait();
        let payload = vec![0x5Au8; size];
        let mut samples = Vec::with_capacity(n);
        for i in 0..total {
            let t = Instant::now();
            publish(&publ, &payload);
            let len = receive(&sub, |m| m.len());
            let d = t.elapsed();
            assert_eq!(len, size);
            if i >= warmup(n) {
                samples.push(d);
            }
        }
        echo.join().expect("echo thread");
        samples
    }

    pub fn one_way(size: usize, n: usize) -> Duration {
        let _pin = crate::pin::SideA::pin();
        set_log_level(LogLevel::Error);
        let name = service_name("stream");
        // Queue depth: up to 256 messages, at most ~4 MiB of samples in flight.
        let depth = ((4 << 20) / size).clamp(2, 256);
        let ready = Arc::new(Barrier::new(2));
        let reader = {
            let (name, ready) = (name.clone(), ready.clone());
            std::thread::spawn(move || {
                crate::pin::side_b();
                let node = node();
                let (_, sub) = ports(&node, &name, size, depth, false);
                let sub = sub.expect("sub");
                ready.wait();
                for _ in 0..n {
                    let len = receive(&sub, |m| m.len());
                    assert_eq!(len, size);
                }
            })
        };
        let node = node();
        let (publ, _) = ports(&node, &name, size, depth, true);
        let publ = publ.expect("pub");
        ready.wait();
        let payload = vec![0xA5u8; size];
        let start = Instant::now();
        for _ in 0..n {
            publish(&publ, &payload);
        }
        reader.join().expect("reader thread");
        start.elapsed()
    }
}

/// Names of the peers in the table.
pub const VOX_SHM: &str = "vox-shm 0.3.1";
/// ipc-channel's name in the table.
pub const IPC_CHANNEL: &str = "ipc-channel 0.23";
/// iceoryx2's name in the table.
pub const ICEORYX2: &str = "iceoryx2 0.10 (busy-wait)";

/// Every peer contender.
pub fn contenders() -> Vec<Contender> {
    let mut v = Vec::new();
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        v.push(
            vox_contender(
                format!("vox-stream 0.3.1 unix ({})", flavor.label()),
                flavor,
                vox_unix_pair,
            )
            .vs(raw_name(Net::Unix, flavor))
            .class(stream_class(Net::Unix, flavor)),
        );
        v.push(
            vox_contender(
                format!("vox-stream 0.3.1 tcp ({})", flavor.label()),
                flavor,
                vox_tcp_pair,
            )
            .vs(raw_name(Net::Tcp, flavor))
            .class(stream_class(Net::Tcp, flavor)),
        );
    }
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        v.push(vox10::contender(Net::Unix, flavor));
        v.push(vox10::contender(Net::Tcp, flavor));
    }
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        v.push(
            vox_contender(
                format!("{VOX_SHM} ({})", flavor.label()),
                flavor,
                vox_shm_pair,
            )
            .vs(SPIN_COPY)
            .vs_one_way(MEMCPY),
        );
    }
    v.push(
        Contender::new(IPC_CHANNEL, Role::Peer)
            .vs(SPIN_COPY)
            .vs_one_way(MEMCPY)
            .round_trip(|_, size, n| ipc_round_trips(size, n))
            .one_way(|_, size, n| ipc_one_way(size, n)),
    );
    v.push(
        Contender::new(ICEORYX2, Role::Peer)
            .vs(SPIN_COPY)
            .vs_one_way(MEMCPY)
            .round_trip(|_, size, n| ice::round_trips(size, n))
            .one_way(|_, size, n| ice::one_way(size, n)),
    );
    v
}
