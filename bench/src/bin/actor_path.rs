//! Throughput of the actor path (producer → `LinkWriter` → link → `LinkReader` → consumer
//! actor) against the bare link with the same codec, in the same process and run.
//!
//! ```text
//! cargo run --release -p tether-bench --bin actor_path [messages] [repeats]
//! ```
//!
//! Prints the median messages/s of each path per transport and the ratio actor/bare. Only
//! ratios within one run mean anything on a shared machine.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_tether::actors::{self, LinkWriter, Received};
use actix_tether::codec::{self, Codec, Postcard};
use actix_tether::endpoint::{self, Endpoint};
use actix_tether::links::{Link, LinkRx};
use tokio::sync::oneshot;

type Payload = Vec<u8>;

const WIN: usize = 16;
/// Messages per `SendAll` batch.
const BATCH: usize = 64;

fn payload() -> Payload {
    vec![0xA5; 64]
}

/// Counts received messages; fires `done` at `target`.
struct Sink {
    seen: u64,
    target: u64,
    done: Option<oneshot::Sender<()>>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<Received<Payload>> for Sink {
    type Result = ();
    fn handle(&mut self, m: Received<Payload>, _: &mut Context<Self>) {
        debug_assert_eq!(m.msg.len(), 64);
        self.seen += 1;
        if self.seen == self.target {
            if let Some(d) = self.done.take() {
                let _ = d.send(());
            }
        }
    }
}

async fn bare(ep: &Endpoint, n: u64) -> Duration {
    let listener = endpoint::listen(ep).await.unwrap();
    let client = endpoint::connect(&listener.local_endpoint()).await.unwrap();
    let server = listener.accept().await.unwrap();
    let (mut tx, _crx) = client.split();
    let (_stx, mut rx) = server.split();
    let start = Instant::now();
    let sender = actix::spawn(async move {
        let p = payload();
        for _ in 0..n {
            codec::send(&mut tx, &Postcard, &p).await.unwrap();
        }
        tx
    });
    for _ in 0..n {
        let b = rx.recv().await.unwrap().unwrap();
        let v: Payload = Postcard.decode(&b).unwrap();
        debug_assert_eq!(v.len(), 64);
    }
    let elapsed = start.elapsed();
    drop(sender.await.unwrap());
    elapsed
}

/// `window` sends in flight at once (1 = one `send().await` at a time).
async fn actor(ep: &Endpoint, n: u64, window: usize) -> Duration {
    let listener = endpoint::listen(ep).await.unwrap();
    let local = listener.local_endpoint();
    let server = actix::spawn(async move { listener.accept().await.unwrap() });
    // The sink on the server side: a LinkReader into a counting actor.
    let (done, finished) = oneshot::channel();
    let sink = Sink {
        seen: 0,
        target: n,
        done: Some(done),
    }
    .start();
    let client_sink = Sink {
        seen: 0,
        target: u64::MAX,
        done: None,
    }
    .start();
    let writer: Addr<LinkWriter<Payload>> =
        actors::connect::<Payload, Payload>(&local, client_sink.recipient())
            .await
            .unwrap();
    let server_link = server.await.unwrap();
    let _server_actors = actors::spawn_link::<Payload, Payload, Postcard, _>(
        server_link,
        sink.recipient(),
        Default::default(),
    );
    let start = Instant::now();
    let p = payload();
    let mut sent = 0;
    while sent < n {
        if window == 0 {
            let k = (n - sent).min(BATCH as u64);
            let batch = (0..k).map(|_| p.clone()).collect();
            writer.send(actors::SendAll(batch)).await.unwrap().unwrap();
            sent += k;
            continue;
        }
        let k = (n - sent).min(window as u64);
        let batch: Vec<_> = (0..k)
            .map(|_| writer.send(actors::Send(p.clone())))
            .collect();
        for r in futures::future::join_all(batch).await {
            r.unwrap().unwrap();
        }
        sent += k;
    }
    finished.await.unwrap();
    start.elapsed()
}

/// Writer half only: actor producer → LinkWriter → link → bare receiver.
async fn writer_only(ep: &Endpoint, n: u64, window: usize) -> Duration {
    let listener = endpoint::listen(ep).await.unwrap();
    let local = listener.local_endpoint();
    let server = actix::spawn(async move { listener.accept().await.unwrap() });
    let client_sink = Sink {
        seen: 0,
        target: u64::MAX,
        done: None,
    }
    .start();
    let writer: Addr<LinkWriter<Payload>> =
        actors::connect::<Payload, Payload>(&local, client_sink.recipient())
            .await
            .unwrap();
    let (_stx, mut rx) = server.await.unwrap().split();
    let start = Instant::now();
    let recv = actix::spawn(async move {
        for _ in 0..n {
            let b = rx.recv().await.unwrap().unwrap();
            let v: Payload = Postcard.decode(&b).unwrap();
            debug_assert_eq!(v.len(), 64);
        }
    });
    let p = payload();
    let mut sent = 0;
    while sent < n {
        let k = (n - sent).min(window as u64);
        let batch: Vec<_> = (0..k)
            .map(|_| writer.send(actors::Send(p.clone())))
            .collect();
        for r in futures::future::join_all(batch).await {
            r.unwrap().unwrap();
        }
        sent += k;
    }
    recv.await.unwrap();
    start.elapsed()
}

/// Reader half only: bare sender → link → LinkReader → counting actor.
async fn reader_only(ep: &Endpoint, n: u64) -> Duration {
    let listener = endpoint::listen(ep).await.unwrap();
    let client = endpoint::connect(&listener.local_endpoint()).await.unwrap();
    let server = listener.accept().await.unwrap();
    let (mut tx, _crx) = client.split();
    let (done, finished) = oneshot::channel();
    let sink = Sink {
        seen: 0,
        target: n,
        done: Some(done),
    }
    .start();
    let _actors = actors::spawn_link::<Payload, Payload, Postcard, _>(
        server,
        sink.recipient(),
        Default::default(),
    );
    let start = Instant::now();
    let sender = actix::spawn(async move {
        let p = payload();
        for _ in 0..n {
            codec::send(&mut tx, &Postcard, &p).await.unwrap();
        }
        tx
    });
    finished.await.unwrap();
    let elapsed = start.elapsed();
    drop(sender.await.unwrap());
    elapsed
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(200_000, |s| s.parse().unwrap());
    let repeats: usize = args.next().map_or(5, |s| s.parse().unwrap());
    let sys = actix::System::new();
    sys.block_on(async move {
        let sock = std::env::temp_dir().join(format!("tether-bench-{}.sock", std::process::id()));
        let transports: Vec<(&str, Endpoint)> = vec![
            ("inproc", "inproc://bench-actor-path".parse().unwrap()),
            (
                "unix",
                format!("unix://{}", sock.display()).parse().unwrap(),
            ),
            ("tcp", "tcp://127.0.0.1:0".parse().unwrap()),
        ];
        println!("{n} messages of 64 B, median of {repeats} paired repeats, msg/s");
        println!("transport  bare-link  actor(w=1)  actor(w=16)  actor(SendAll 64)  ratios");
        for (name, ep) in transports {
            let (mut b, mut a1, mut a16, mut ab) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..repeats {
                ab.push(n as f64 / actor(&ep, n, 0).await.as_secs_f64());
                b.push(n as f64 / bare(&ep, n).await.as_secs_f64());
                a1.push(n as f64 / actor(&ep, n, 1).await.as_secs_f64());
                a16.push(n as f64 / actor(&ep, n, WIN).await.as_secs_f64());
            }
            let (mut w16, mut r) = (Vec::new(), Vec::new());
            for _ in 0..repeats {
                w16.push(n as f64 / writer_only(&ep, n, WIN).await.as_secs_f64());
                r.push(n as f64 / reader_only(&ep, n).await.as_secs_f64());
            }
            println!(
                "  {name}: writer half only (w=16) {:.0} msg/s, reader half only {:.0} msg/s",
                median(w16),
                median(r)
            );
            let (b, a1, a16, ab) = (median(b), median(a1), median(a16), median(ab));
            println!(
                "{name:<9} {b:>10.0} {a1:>11.0} {a16:>12.0} {ab:>18.0}  {:.2} / {:.2} / {:.2}",
                a1 / b,
                a16 / b,
                ab / b
            );
        }
    });
}
