//! Paths built on top of links: the actor path (producer → `LinkWriter` → link →
//! `LinkReader` → consumer actor) and a stable session, both over inproc (the fastest
//! in-process transport), compared with the bare inproc link in the same run.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_tether::actors::{self, LinkWriter, Received};
use actix_tether::codec::Postcard;
use actix_tether::links::inproc::{InprocConfig, InprocLink};
use actix_tether::links::{AnyLink, FnSource};
use actix_tether::stable::driver::{DriverConfig, StableClient, StableConn, StableServer};
use actix_tether::stable::StableConfig;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::harness::{warmup, Contender, Flavor, Role};

/// The bare link the paths are compared with.
const BARE: &str = "inproc (ct)";

type Payload = Vec<u8>;

/// Counts received messages and fires `done` at `target`.
struct Sink {
    seen: u64,
    target: u64,
    done: Option<oneshot::Sender<Instant>>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<Received<Payload>> for Sink {
    type Result = ();

    fn handle(&mut self, _: Received<Payload>, _: &mut Context<Self>) {
        self.seen += 1;
        if self.seen == self.target {
            if let Some(d) = self.done.take() {
                let _ = d.send(Instant::now());
            }
        }
    }
}

/// One-way through the actors: `window` sends in flight at once, or `SendAll` batches of 64
/// when `window` is 0. Runs in a fresh actix system (one Arbiter, as an application would).
fn actor_one_way(size: usize, n: usize, window: usize) -> Duration {
    actix::System::new().block_on(async move {
        let cfg = InprocConfig::default();
        let (a, b) = InprocLink::pair(&cfg, &cfg);
        let (done, finished) = oneshot::channel();
        let sink = Sink {
            seen: 0,
            target: n as u64,
            done: Some(done),
        }
        .start();
        let ignore = Sink {
            seen: 0,
            target: u64::MAX,
            done: None,
        }
        .start();
        let writer: Addr<LinkWriter<Payload, Postcard, _>> =
            actors::spawn_link::<Payload, Payload, Postcard, _>(
                a,
                ignore.recipient(),
                Default::default(),
            )
            .writer;
        let _reader = actors::spawn_link::<Payload, Payload, Postcard, _>(
            b,
            sink.recipient(),
            Default::default(),
        );
        let p = vec![0xA5u8; size];
        let start = Instant::now();
        let mut sent = 0;
        while sent < n {
            if window == 0 {
                let k = (n - sent).min(64);
                let batch = (0..k).map(|_| p.clone()).collect();
                writer
                    .send(actors::SendAll(batch))
                    .await
                    .expect("mailbox")
                    .expect("send all");
                sent += k;
            } else {
                let k = (n - sent).min(window);
                let pending: Vec<_> = (0..k)
                    .map(|_| writer.send(actors::Send(p.clone())))
                    .collect();
                for r in futures::future::join_all(pending).await {
                    r.expect("mailbox").expect("send");
                }
                sent += k;
            }
        }
        let end = finished.await.expect("sink finished");
        end.duration_since(start)
    })
}

/// A stable session over inproc: each (re)connect makes a fresh inproc pair and hands the
/// server half to the server.
async fn stable_pair() -> (StableConn, StableConn) {
    let (server, mut sessions) =
        StableServer::<AnyLink>::new(StableConfig::default(), DriverConfig::default())
            .expect("stable server");
    let source = FnSource(move || {
        let server = server.clone();
        async move {
            let cfg = InprocConfig::default();
            let (client, server_half) = InprocLink::pair(&cfg, &cfg);
            server.handle_link(AnyLink::from(server_half));
            Ok(AnyLink::from(client))
        }
    });
    let client = StableClient::connect(source, StableConfig::default(), DriverConfig::default())
        .expect("stable client");
    let server_side = sessions.accept().await.expect("session");
    (client, server_side)
}

async fn stable_round_trips(size: usize, n: usize) -> Vec<Duration> {
    let (mut client, mut server) = stable_pair().await;
    let echo = tokio::spawn(async move {
        while let Ok(m) = server.recv().await {
            if server.send(m).await.is_err() {
                break;
            }
        }
    });
    let payload = Bytes::from(vec![0x5Au8; size]);
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup(n) + n {
        let t = Instant::now();
        client.send(payload.clone()).await.expect("send");
        let m = client.recv().await.expect("recv");
        let d = t.elapsed();
        assert_eq!(m.len(), size);
        if i >= warmup(n) {
            samples.push(d);
        }
    }
    drop(client);
    echo.abort();
    samples
}

async fn stable_one_way(size: usize, n: usize) -> Duration {
    let (client, server) = stable_pair().await;
    let (_srx_tx, mut srx) = server.split();
    let payload = Bytes::from(vec![0xA5u8; size]);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            let m = srx.recv().await.expect("recv");
            assert_eq!(m.len(), size);
        }
    });
    for _ in 0..n {
        client.send(payload.clone()).await.expect("send");
    }
    reader.await.expect("reader");
    start.elapsed()
}

/// The actor path (three ways of sending) and a stable session, over inproc.
pub fn contenders() -> Vec<Contender> {
    let mut v = Vec::new();
    // Vec<u8> goes through serde element by element (and the bare link encodes nothing):
    // only 64 B messages compare the paths, not serde.
    for (label, window) in [
        ("send().await ×1", 1usize),
        ("send().await ×16", 16),
        ("SendAll ×64", 0),
    ] {
        v.push(
            Contender::new(format!("actor path inproc, {label}"), Role::Ours)
                .sizes(&[64])
                .one_way(move |_, size, n| actor_one_way(size, n, window))
                .vs_one_way(BARE)
                .class("in-process"),
        );
    }
    v.push(
        Contender::new("stable session over inproc (ct)", Role::Ours)
            .round_trip(|ctx, size, n| {
                ctx.block_on(Flavor::CurrentThread, stable_round_trips(size, n))
            })
            .one_way(|ctx, size, n| ctx.block_on(Flavor::CurrentThread, stable_one_way(size, n)))
            .vs(BARE)
            .class("in-process"),
    );
    v
}
