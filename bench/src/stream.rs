//! StreamLink over Unix sockets and TCP vs raw tokio `Framed<_, LengthDelimitedCodec>` over
//! the same sockets (same `[u32 LE len][payload]` wire format).

use std::time::{Duration, Instant};

use actix_tether::links::stream::StreamLink;
use actix_tether::links::{send_bytes, Link, LinkRx};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::report::{Kind, Report, Row};
use crate::{Flavor, Settings};

pub const SIZES: [usize; 3] = [64, 4096, 65536];

const RAW: &str = "raw Framed<LengthDelimited>";
const OURS: &str = "StreamLink";

/// A connected socket pair of one kind.
#[derive(Clone, Copy)]
enum Net {
    Unix,
    Tcp,
}

impl Net {
    fn name(self) -> &'static str {
        match self {
            Net::Unix => "unix",
            Net::Tcp => "tcp",
        }
    }
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    let (a, b) = (a.unwrap(), b.unwrap().0);
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .little_endian()
        .length_field_length(4)
        .max_frame_length(16 << 20)
        .new_codec()
}

// ---- generic link measurements (used for every transport of this crate) ----

/// Time to stream `n` messages of `size` bytes from `a` to `b`.
pub async fn link_throughput<L: Link>(a: L, b: L, size: usize, n: usize) -> Duration {
    let (mut tx, _arx) = a.split();
    let (_btx, mut rx) = b.split();
    let payload = vec![0xA5u8; size];
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            let m = rx.recv().await.unwrap().expect("early EOF");
            assert_eq!(m.len(), size);
        }
        rx
    });
    for _ in 0..n {
        send_bytes(&mut tx, &payload).await.unwrap();
    }
    let _rx = reader.await.unwrap();
    start.elapsed()
}

/// Time for `n` request/response round trips of `size`-byte messages.
pub async fn link_round_trips<L: Link>(a: L, b: L, size: usize, n: usize) -> Duration {
    let (mut atx, mut arx) = a.split();
    let (mut btx, mut brx) = b.split();
    let echo = tokio::spawn(async move {
        while let Ok(Some(m)) = brx.recv().await {
            if send_bytes(&mut btx, &m).await.is_err() {
                break;
            }
        }
    });
    let payload = vec![0x5Au8; size];
    let start = Instant::now();
    for _ in 0..n {
        send_bytes(&mut atx, &payload).await.unwrap();
        let m = arx.recv().await.unwrap().expect("echo ended");
        assert_eq!(m.len(), size);
    }
    let t = start.elapsed();
    drop(atx);
    let _ = echo.await;
    t
}

// ---- raw tokio-util baseline ----

async fn raw_throughput<R, W>(w: W, r: R, size: usize, n: usize) -> Duration
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut sink = FramedWrite::new(w, codec());
    let mut stream = FramedRead::new(r, codec());
    let payload = Bytes::from(vec![0xA5u8; size]);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            let m = stream.next().await.unwrap().unwrap();
            assert_eq!(m.len(), size);
        }
    });
    for _ in 0..n {
        sink.feed(payload.clone()).await.unwrap();
    }
    SinkExt::<Bytes>::flush(&mut sink).await.unwrap();
    reader.await.unwrap();
    start.elapsed()
}

async fn raw_round_trips<S>(a: S, b: S, size: usize, n: usize) -> Duration
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut client = tokio_util::codec::Framed::new(a, codec());
    let mut server = tokio_util::codec::Framed::new(b, codec());
    let echo = tokio::spawn(async move {
        while let Some(Ok(m)) = server.next().await {
            if server.send(m.freeze()).await.is_err() {
                break;
            }
        }
    });
    let payload = Bytes::from(vec![0x5Au8; size]);
    let start = Instant::now();
    for _ in 0..n {
        client.send(payload.clone()).await.unwrap();
        let m = client.next().await.unwrap().unwrap();
        assert_eq!(m.len(), size);
    }
    let t = start.elapsed();
    drop(client);
    let _ = echo.await;
    t
}

async fn ours_throughput(net: Net, size: usize, n: usize) -> Duration {
    match net {
        Net::Unix => {
            let (a, b) = StreamLink::unix_pair(Default::default()).unwrap();
            link_throughput(a, b, size, n).await
        }
        Net::Tcp => {
            let (a, b) = tcp_pair().await;
            let a = StreamLink::tcp(a, Default::default()).unwrap();
            let b = StreamLink::tcp(b, Default::default()).unwrap();
            link_throughput(a, b, size, n).await
        }
    }
}

async fn ours_round_trips(net: Net, size: usize, n: usize) -> Duration {
    match net {
        Net::Unix => {
            let (a, b) = StreamLink::unix_pair(Default::default()).unwrap();
            link_round_trips(a, b, size, n).await
        }
        Net::Tcp => {
            let (a, b) = tcp_pair().await;
            let a = StreamLink::tcp(a, Default::default()).unwrap();
            let b = StreamLink::tcp(b, Default::default()).unwrap();
            link_round_trips(a, b, size, n).await
        }
    }
}

async fn baseline_throughput(net: Net, size: usize, n: usize) -> Duration {
    match net {
        Net::Unix => {
            let (a, b) = UnixStream::pair().unwrap();
            let (_ar, aw) = a.into_split();
            let (br, _bw) = b.into_split();
            raw_throughput(aw, br, size, n).await
        }
        Net::Tcp => {
            let (a, b) = tcp_pair().await;
            let (_ar, aw) = a.into_split();
            let (br, _bw) = b.into_split();
            raw_throughput(aw, br, size, n).await
        }
    }
}

async fn baseline_round_trips(net: Net, size: usize, n: usize) -> Duration {
    match net {
        Net::Unix => {
            let (a, b) = UnixStream::pair().unwrap();
            raw_round_trips(a, b, size, n).await
        }
        Net::Tcp => {
            let (a, b) = tcp_pair().await;
            raw_round_trips(a, b, size, n).await
        }
    }
}

/// Runs the stream scenarios.
pub async fn run(s: &Settings, flavor: Flavor, report: &mut Report) {
    for net in [Net::Unix, Net::Tcp] {
        for size in SIZES {
            let n = s.stream_messages(size);
            let (mut raw, mut ours) = (Vec::new(), Vec::new());
            for _ in 0..s.repeats {
                raw.push(baseline_throughput(net, size, n).await);
                ours.push(ours_throughput(net, size, n).await);
            }
            let scenario = format!("stream {} one-way ({})", net.name(), flavor.label());
            push_pair(report, &scenario, size, Kind::Throughput, n, raw, ours);

            let n = s.round_trips;
            let (mut raw, mut ours) = (Vec::new(), Vec::new());
            for _ in 0..s.repeats {
                raw.push(baseline_round_trips(net, size, n).await);
                ours.push(ours_round_trips(net, size, n).await);
            }
            let scenario = format!("stream {} round trip ({})", net.name(), flavor.label());
            push_pair(report, &scenario, size, Kind::RoundTrip, n, raw, ours);
        }
    }
}

fn push_pair(
    report: &mut Report,
    scenario: &str,
    size: usize,
    kind: Kind,
    ops: usize,
    raw: Vec<Duration>,
    ours: Vec<Duration>,
) {
    report.push(Row {
        scenario: scenario.into(),
        size,
        contender: RAW.into(),
        kind,
        samples: raw,
        ops,
        baseline: None,
    });
    report.push(Row {
        scenario: scenario.into(),
        size,
        contender: OURS.into(),
        kind,
        samples: ours,
        ops,
        baseline: Some(RAW.into()),
    });
}
