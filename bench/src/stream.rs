//! StreamLink over Unix sockets and TCP, and the raw tokio baseline it is measured against:
//! `Framed<_, LengthDelimitedCodec>` over the same sockets with the same
//! `[u32 LE len][payload]` wire format.

use std::time::{Duration, Instant};

use actix_tether::links::stream::StreamLink;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::harness::{warmup, Contender, Flavor, Role};

/// A kind of connected socket pair.
#[derive(Clone, Copy, Debug)]
pub enum Net {
    /// A Unix stream socket pair.
    Unix,
    /// TCP over loopback with `TCP_NODELAY`.
    Tcp,
}

impl Net {
    /// Short label used in contender names.
    pub fn label(self) -> &'static str {
        match self {
            Net::Unix => "unix",
            Net::Tcp => "tcp",
        }
    }
}

/// Name of the raw tokio baseline over `net` on `flavor`.
pub fn raw_name(net: Net, flavor: Flavor) -> String {
    format!("raw Framed {} ({})", net.label(), flavor.label())
}

/// The class stream contenders share, so that "best peer" means the best stream peer over
/// the same socket kind on the same runtime.
pub fn stream_class(net: Net, flavor: Flavor) -> String {
    format!("stream {} ({})", net.label(), flavor.label())
}

/// A connected TCP pair on loopback, `TCP_NODELAY` on both ends.
pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("local addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    let (a, b) = (a.expect("connect"), b.expect("accept").0);
    a.set_nodelay(true).expect("nodelay");
    b.set_nodelay(true).expect("nodelay");
    (a, b)
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .little_endian()
        .length_field_length(4)
        .max_frame_length(16 << 20)
        .new_codec()
}

/// Batched `feed` of `n` frames and one `flush`, read by a task on the same runtime.
async fn raw_one_way<R, W>(w: W, r: R, size: usize, n: usize) -> Duration
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
            let m = stream.next().await.expect("early EOF").expect("read");
            assert_eq!(m.len(), size);
        }
    });
    for _ in 0..n {
        sink.feed(payload.clone()).await.expect("feed");
    }
    SinkExt::<Bytes>::flush(&mut sink).await.expect("flush");
    reader.await.expect("reader task");
    start.elapsed()
}

/// `send` (feed + flush) and `next` per round trip; the echo task sends back what it got.
async fn raw_round_trips<S>(a: S, b: S, size: usize, n: usize) -> Vec<Duration>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut client = Framed::new(a, codec());
    let mut server = Framed::new(b, codec());
    let echo = tokio::spawn(async move {
        while let Some(Ok(m)) = server.next().await {
            if server.send(m.freeze()).await.is_err() {
                break;
            }
        }
    });
    let payload = Bytes::from(vec![0x5Au8; size]);
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup(n) + n {
        let t = Instant::now();
        client.send(payload.clone()).await.expect("send");
        let m = client.next().await.expect("echo ended").expect("read");
        let d = t.elapsed();
        assert_eq!(m.len(), size);
        if i >= warmup(n) {
            samples.push(d);
        }
    }
    drop(client);
    let _ = echo.await;
    samples
}

async fn raw_one_way_on(net: Net, size: usize, n: usize) -> Duration {
    match net {
        Net::Unix => {
            let (a, b) = UnixStream::pair().expect("socketpair");
            let (_ar, aw) = a.into_split();
            let (br, _bw) = b.into_split();
            raw_one_way(aw, br, size, n).await
        }
        Net::Tcp => {
            let (a, b) = tcp_pair().await;
            let (_ar, aw) = a.into_split();
            let (br, _bw) = b.into_split();
            raw_one_way(aw, br, size, n).await
        }
    }
}

async fn raw_round_trips_on(net: Net, size: usize, n: usize) -> Vec<Duration> {
    match net {
        Net::Unix => {
            let (a, b) = UnixStream::pair().expect("socketpair");
            raw_round_trips(a, b, size, n).await
        }
        Net::Tcp => {
            let (a, b) = tcp_pair().await;
            raw_round_trips(a, b, size, n).await
        }
    }
}

/// This crate's StreamLink over a Unix socket pair.
type UnixLink = StreamLink<tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf>;
/// This crate's StreamLink over loopback TCP.
type TcpLink = StreamLink<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>;

/// A fresh StreamLink pair over a Unix socket pair.
pub async fn unix_link_pair() -> (UnixLink, UnixLink) {
    StreamLink::unix_pair(Default::default()).expect("unix pair")
}

/// A fresh StreamLink pair over loopback TCP.
pub async fn tcp_link_pair() -> (TcpLink, TcpLink) {
    let (a, b) = tcp_pair().await;
    (
        StreamLink::tcp(a, Default::default()).expect("tcp link"),
        StreamLink::tcp(b, Default::default()).expect("tcp link"),
    )
}

/// Raw tokio baselines and this crate's StreamLink, over Unix and TCP, on both runtimes.
pub fn contenders() -> Vec<Contender> {
    let mut v = Vec::new();
    for net in [Net::Unix, Net::Tcp] {
        for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
            v.push(
                Contender::new(raw_name(net, flavor), Role::Baseline)
                    .round_trip(move |ctx, size, n| {
                        ctx.block_on(flavor, raw_round_trips_on(net, size, n))
                    })
                    .one_way(move |ctx, size, n| {
                        ctx.block_on(flavor, raw_one_way_on(net, size, n))
                    }),
            );
        }
    }
    for flavor in [Flavor::CurrentThread, Flavor::MultiThread] {
        let name = |net: Net| format!("StreamLink {} ({})", net.label(), flavor.label());
        v.push(
            Contender::link(name(Net::Unix), Role::Ours, flavor, unix_link_pair)
                .vs(raw_name(Net::Unix, flavor))
                .class(stream_class(Net::Unix, flavor)),
        );
        v.push(
            Contender::link(name(Net::Tcp), Role::Ours, flavor, tcp_link_pair)
                .vs(raw_name(Net::Tcp, flavor))
                .class(stream_class(Net::Tcp, flavor)),
        );
    }
    v
}
