//! Shared pieces of the actor tests: a message type, a collecting actor, an echo server.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use actix::prelude::*;
use actix_tether::actors::{
    self, AcceptError, Acceptor, ActorConfig, Incoming, LinkEvent, LinkOptions, LinkWriter,
    Received,
};
use actix_tether::codec::Postcard;
use actix_tether::endpoint::Endpoint;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Deadlock guard: generous, never a speed assertion.
pub const GUARD: Duration = Duration::from_secs(60);

pub async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("deadlock guard: {what} did not complete in {GUARD:?}"),
    }
}

/// The typed message of the tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Msg {
    pub client: u32,
    pub seq: u64,
    pub text: String,
    pub blob: Vec<u8>,
}

impl Msg {
    /// Deterministic message `seq` of `client`, with varying sizes.
    pub fn new(client: u32, seq: u64) -> Msg {
        let n = (seq as usize * 7919) % 301;
        Msg {
            client,
            seq,
            text: format!("client {client} message {seq}"),
            blob: (0..n).map(|j| (seq as usize ^ j) as u8).collect(),
        }
    }
}

/// Forwards everything it receives (messages and events) to channels the test reads.
pub struct Collector<M: std::marker::Send + 'static> {
    pub msgs: mpsc::UnboundedSender<Received<M>>,
    pub events: mpsc::UnboundedSender<LinkEvent>,
}

impl<M: std::marker::Send + 'static> Collector<M> {
    pub fn start() -> (
        Addr<Collector<M>>,
        mpsc::UnboundedReceiver<Received<M>>,
        mpsc::UnboundedReceiver<LinkEvent>,
    ) {
        let (msgs, mrx) = mpsc::unbounded_channel();
        let (events, erx) = mpsc::unbounded_channel();
        (Collector { msgs, events }.start(), mrx, erx)
    }
}

impl<M: std::marker::Send + 'static> Actor for Collector<M> {
    type Context = Context<Self>;
}

impl<M: std::marker::Send + 'static> Handler<Received<M>> for Collector<M> {
    type Result = ();
    fn handle(&mut self, msg: Received<M>, _: &mut Context<Self>) {
        let _ = self.msgs.send(msg);
    }
}

impl<M: std::marker::Send + 'static> Handler<LinkEvent> for Collector<M> {
    type Result = ();
    fn handle(&mut self, ev: LinkEvent, _: &mut Context<Self>) {
        let _ = self.events.send(ev);
    }
}

/// Echo server: accepts every connection and starts an [`EchoSession`] for it.
pub struct EchoServer {
    pub events: Option<Recipient<LinkEvent>>,
    pub accept_errors: mpsc::UnboundedSender<AcceptError>,
}

impl Actor for EchoServer {
    type Context = Context<Self>;
}

impl Handler<Incoming> for EchoServer {
    type Result = ();
    fn handle(&mut self, incoming: Incoming, _: &mut Context<Self>) {
        let options = LinkOptions {
            events: self.events.clone(),
            ..Default::default()
        };
        EchoSession::create(|ctx| {
            let link =
                incoming.accept_with::<Msg, Msg, Postcard>(ctx.address().recipient(), options);
            EchoSession {
                writer: link.writer,
            }
        });
    }
}

impl Handler<AcceptError> for EchoServer {
    type Result = ();
    fn handle(&mut self, e: AcceptError, _: &mut Context<Self>) {
        let _ = self.accept_errors.send(e);
    }
}

/// One connection of the echo server: sends every message back, waiting for the writer
/// (so a slow client backpressures this session, and through it the session's reader).
pub struct EchoSession {
    pub writer: Addr<LinkWriter<Msg>>,
}

impl Actor for EchoSession {
    type Context = Context<Self>;
}

impl Handler<Received<Msg>> for EchoSession {
    type Result = AtomicResponse<Self, ()>;
    fn handle(&mut self, msg: Received<Msg>, _: &mut Context<Self>) -> Self::Result {
        let writer = self.writer.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let _ = writer.send(actors::Send(msg.msg)).await;
            }
            .into_actor(self),
        ))
    }
}

/// Starts an echo server on `endpoint`; returns the acceptor, the bound endpoint and the
/// channel of accept errors.
pub async fn echo_server(
    endpoint: &str,
    events: Option<Recipient<LinkEvent>>,
) -> (
    Addr<Acceptor>,
    Endpoint,
    mpsc::UnboundedReceiver<AcceptError>,
) {
    let (accept_errors, errors_rx) = mpsc::unbounded_channel();
    let server = EchoServer {
        events,
        accept_errors,
    }
    .start();
    let (acceptor, local) = Acceptor::listen(
        &endpoint.parse().unwrap(),
        server.clone().recipient(),
        server.recipient(),
        &ActorConfig::default(),
    )
    .await
    .expect("listen");
    (acceptor, local, errors_rx)
}

/// A fresh Unix socket endpoint in the temp directory.
pub fn unix_endpoint(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "tether-{tag}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    format!("unix://{}", path.display())
}

/// Resident set size of this process in bytes (Linux).
pub fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
