//! The supervised `StableSession` actor and the `StableRegistry` actor over real links:
//! exactly-once in-order delivery while the fault injector kills links, server restart →
//! `SessionLost`, and panicking user codecs that must not kill the session.
#![cfg(feature = "actors")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_tether::actors::registry::{RegistryStats, SessionWiring, StableRegistry};
use actix_tether::actors::session::{
    Incoming, Outgoing, SessionOptions, StableEvent, StableSession,
};
use actix_tether::endpoint::{self, Endpoint};
use actix_tether::links::fault::{FaultPlan, FaultySource};
use actix_tether::links::FnSource;
use actix_tether::stable::driver::SessionEvent;
use actix_tether::stable::{ReconnectPolicy, StableConfig, StableError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[path = "support/proxy.rs"]
mod proxy;

const GUARD: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Msg {
    i: u32,
    pad: Vec<u8>,
}

fn msg(i: u32) -> Msg {
    Msg {
        i,
        pad: vec![i as u8; (i % 50) as usize],
    }
}

/// Checks that items arrive as 0, 1, 2, ... and reports each index (or a violation).
struct Collector {
    next: u32,
    report: mpsc::UnboundedSender<Result<u32, String>>,
}

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<Incoming<Msg>> for Collector {
    type Result = ();
    fn handle(&mut self, Incoming(m): Incoming<Msg>, _: &mut Context<Self>) {
        let r = if m == msg(self.next) {
            self.next += 1;
            Ok(m.i)
        } else {
            Err(format!("expected item {}, got {:?}", self.next, m.i))
        };
        let _ = self.report.send(r);
    }
}

/// Forwards events into a channel.
struct Events(mpsc::UnboundedSender<SessionEvent>);

impl Actor for Events {
    type Context = Context<Self>;
}

impl Handler<StableEvent> for Events {
    type Result = ();
    fn handle(&mut self, StableEvent(ev): StableEvent, _: &mut Context<Self>) {
        let _ = self.0.send(ev);
    }
}

fn config() -> StableConfig {
    StableConfig {
        reconnect: ReconnectPolicy {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn expect_in_order(rx: &mut mpsc::UnboundedReceiver<Result<u32, String>>, n: u32) {
    tokio::time::timeout(GUARD, async {
        for i in 0..n {
            match rx.recv().await {
                Some(Ok(got)) => assert_eq!(got, i),
                Some(Err(e)) => panic!("{e}"),
                None => panic!("collector gone"),
            }
        }
    })
    .await
    .expect("deadlock guard");
}

struct Server {
    registry: Addr<StableRegistry<Msg>>,
    sessions: mpsc::UnboundedReceiver<Addr<StableSession<Msg>>>,
    received: mpsc::UnboundedReceiver<Result<u32, String>>,
    events: mpsc::UnboundedReceiver<SessionEvent>,
}

async fn start_server(config: StableConfig) -> (Endpoint, Server) {
    start_server_on("tcp://127.0.0.1:0".parse().unwrap(), config).await
}

async fn start_server_on(at: Endpoint, config: StableConfig) -> (Endpoint, Server) {
    let listener = endpoint::listen(&at).await.unwrap();
    let ep = listener.local_endpoint();
    let server = new_server(&config);
    StableRegistry::serve(&server.registry, listener, &config);
    (ep, server)
}

/// A registry whose sessions report to collector actors (no listener yet).
fn new_server(config: &StableConfig) -> Server {
    let (sess_tx, sessions) = mpsc::unbounded_channel();
    let (rep_tx, received) = mpsc::unbounded_channel();
    let (ev_tx, events) = mpsc::unbounded_channel();
    let registry = StableRegistry::new(config.clone(), SessionOptions::default(), move |addr| {
        let _ = sess_tx.send(addr);
        SessionWiring {
            recipient: Collector {
                next: 0,
                report: rep_tx.clone(),
            }
            .start()
            .recipient(),
            events: Some(Events(ev_tx.clone()).start().recipient()),
        }
    })
    .unwrap()
    .start();
    Server {
        registry,
        sessions,
        received,
        events,
    }
}

/// The application's side of an `Acceptor` that hands every connection to the registry.
struct ToRegistry {
    registry: Addr<StableRegistry<Msg>>,
    config: StableConfig,
}

impl Actor for ToRegistry {
    type Context = Context<Self>;
}

impl Handler<actix_tether::actors::Incoming> for ToRegistry {
    type Result = ();

    fn handle(&mut self, incoming: actix_tether::actors::Incoming, _: &mut Context<Self>) {
        StableRegistry::handle_link(&self.registry, incoming.into_link(), &self.config);
    }
}

impl Handler<actix_tether::actors::AcceptError> for ToRegistry {
    type Result = ();

    fn handle(&mut self, e: actix_tether::actors::AcceptError, _: &mut Context<Self>) {
        panic!("accept failed: {}", e.error);
    }
}

/// Stable sessions behind the general-purpose `Acceptor` (instead of the registry's own
/// accept loop): every link the acceptor takes goes to the registry, which creates or
/// resumes the session.
#[actix::test]
async fn acceptor_hands_incoming_links_to_the_registry() {
    let config = config();
    let server = new_server(&config);
    let app = ToRegistry {
        registry: server.registry.clone(),
        config: config.clone(),
    }
    .start();
    let (_acceptor, ep) = actix_tether::actors::Acceptor::listen(
        &"tcp://127.0.0.1:0".parse().unwrap(),
        app.clone().recipient(),
        app.recipient(),
        &Default::default(),
    )
    .await
    .unwrap();
    exchange_with_kills(
        ep,
        server,
        5_000,
        FaultPlan::new(44).kill_after_frames_between(300, 900),
    )
    .await;
}

#[actix::test]
async fn actors_exchange_exactly_once_while_links_are_killed() {
    let (ep, server) = start_server(config()).await;
    exchange_with_kills(
        ep,
        server,
        100_000,
        FaultPlan::new(21).kill_after_frames_between(300, 900),
    )
    .await;
}

#[actix::test]
async fn actors_through_a_resetting_tcp_proxy() {
    let (ep, server) = start_server(config()).await;
    let Endpoint::Tcp { port, .. } = ep else {
        unreachable!()
    };
    let (proxy, resets) =
        proxy::reset_proxy(std::net::SocketAddr::from(([127, 0, 0, 1], port)), 9).await;
    let proxied: Endpoint = format!("tcp://{proxy}").parse().unwrap();
    exchange_with_kills(proxied, server, 10_000, FaultPlan::new(1)).await;
    assert!(resets.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}

#[actix::test]
async fn actors_over_unix_sockets_with_mid_frame_cuts() {
    let dir = std::env::temp_dir().join(format!("tether-actor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ep, server) = start_server_on(Endpoint::Unix(dir.join("s.sock")), config()).await;
    exchange_with_kills(
        ep,
        server,
        3_000,
        FaultPlan::new(8)
            .kill_after_frames_between(200, 600)
            .cut_mid_frame(),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn exchange_with_kills(ep: Endpoint, mut server: Server, n: u32, plan: FaultPlan) {
    let source = FaultySource::new(ep, plan);
    let faults = source.stats();
    let (rep_tx, mut client_received) = mpsc::unbounded_channel();
    let (ev_tx, mut client_events) = mpsc::unbounded_channel();
    let collector = Collector {
        next: 0,
        report: rep_tx,
    }
    .start();
    let client = StableSession::<Msg>::start_client(
        source,
        config(),
        SessionOptions::default(),
        collector.recipient(),
        Some(Events(ev_tx).start().recipient()),
    )
    .unwrap();
    // Client → server, sent from a separate task.
    let c = client.clone();
    let sender = actix::spawn(async move {
        for i in 0..n {
            c.send(Outgoing(msg(i))).await.unwrap().unwrap();
        }
    });
    let srv_session = tokio::time::timeout(GUARD, server.sessions.recv())
        .await
        .unwrap()
        .unwrap();
    let s = srv_session.clone();
    let back = actix::spawn(async move {
        for i in 0..n {
            s.send(Outgoing(msg(i))).await.unwrap().unwrap();
        }
    });
    expect_in_order(&mut server.received, n).await;
    expect_in_order(&mut client_received, n).await;
    sender.await.unwrap();
    back.await.unwrap();
    let _ = faults;
    // Events travel through an actor: wait for them rather than peek.
    let mut resumed = 0;
    while resumed < 3 {
        let ev = tokio::time::timeout(GUARD, client_events.recv())
            .await
            .expect("deadlock guard: fewer than 3 resumes")
            .expect("events channel closed");
        match ev {
            SessionEvent::Resumed { .. } => resumed += 1,
            SessionEvent::SessionLost { .. } => panic!("{ev:?}"),
            _ => {}
        }
    }
    let stats = server.registry.send(RegistryStats).await.unwrap();
    assert_eq!(stats.sessions, 1, "{stats:?}");
    assert!(stats.resumes >= 3);
    assert!(server.sessions.try_recv().is_err(), "one session only");
    let _ = server.events.try_recv();
}

#[actix::test]
async fn actor_server_restart_is_session_lost() {
    // The first server never acknowledges, so every client item stays unacked.
    let silent = StableConfig {
        ack_every: u32::MAX,
        ack_delay: Duration::from_secs(3600),
        ..config()
    };
    let (ep1, mut server1) = start_server(silent).await;
    let current = Arc::new(Mutex::new(ep1));
    let cur = current.clone();
    let source = FaultySource::new(
        FnSource(move || {
            let ep = cur.lock().unwrap().clone();
            async move { Ok(endpoint::connect(&ep).await?) }
        }),
        FaultPlan::new(1),
    );
    let killer = source.killer();
    let (rep_tx, _client_received) = mpsc::unbounded_channel();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let client = StableSession::<Msg>::start_client(
        source,
        config(),
        SessionOptions::default(),
        Collector {
            next: 0,
            report: rep_tx,
        }
        .start()
        .recipient(),
        Some(Events(ev_tx).start().recipient()),
    )
    .unwrap();
    for i in 0..7 {
        client.send(Outgoing(msg(i))).await.unwrap().unwrap();
    }
    expect_in_order(&mut server1.received, 7).await;
    // Restart: a new server (empty registry) at a new address; the old link dies.
    let (ep2, server2) = start_server(config()).await;
    *current.lock().unwrap() = ep2;
    assert!(killer.kill());
    let unacked = tokio::time::timeout(GUARD, async {
        loop {
            match events.recv().await.unwrap() {
                SessionEvent::SessionLost { unacked } => break unacked,
                _ => continue,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(unacked, 7);
    let r = client.send(Outgoing(msg(8))).await.unwrap();
    assert!(
        matches!(r, Err(StableError::SessionLost { unacked: 7 })),
        "{r:?}"
    );
    let stats = server2.registry.send(RegistryStats).await.unwrap();
    assert_eq!((stats.sessions, stats.rejected), (0, 1));
}

/// An item whose `Serialize` panics for one value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Touchy(u32);

impl Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            panic!("unlucky");
        }
        s.serialize_u32(self.0)
    }
}

struct TouchyCollector(mpsc::UnboundedSender<u32>);
impl Actor for TouchyCollector {
    type Context = Context<Self>;
}
impl Handler<Incoming<Touchy>> for TouchyCollector {
    type Result = ();
    fn handle(&mut self, Incoming(t): Incoming<Touchy>, _: &mut Context<Self>) {
        let _ = self.0.send(t.0);
    }
}

#[actix::test]
async fn panicking_codec_is_an_error_not_a_dead_session() {
    let listener = endpoint::listen(&"tcp://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ep = listener.local_endpoint();
    let (tx, mut got) = mpsc::unbounded_channel();
    let registry = StableRegistry::<Touchy>::new(config(), SessionOptions::default(), move |_| {
        SessionWiring {
            recipient: TouchyCollector(tx.clone()).start().recipient(),
            events: None,
        }
    })
    .unwrap()
    .start();
    StableRegistry::serve(&registry, listener, &config());
    let (sink, _) = mpsc::unbounded_channel();
    let client = StableSession::<Touchy>::start_client(
        ep,
        config(),
        SessionOptions::default(),
        TouchyCollector(sink).start().recipient(),
        None,
    )
    .unwrap();
    client.send(Outgoing(Touchy(12))).await.unwrap().unwrap();
    let r = client.send(Outgoing(Touchy(13))).await.unwrap();
    assert!(matches!(r, Err(StableError::Codec(_))), "{r:?}");
    client.send(Outgoing(Touchy(14))).await.unwrap().unwrap();
    let first = tokio::time::timeout(GUARD, got.recv()).await.unwrap();
    let second = tokio::time::timeout(GUARD, got.recv()).await.unwrap();
    assert_eq!((first, second), (Some(12), Some(14)));
}

#[actix::test]
async fn actor_backpressure_while_link_down_then_delivers_everything() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (ep, mut server) = start_server(config()).await;
    let up = Arc::new(AtomicBool::new(false));
    let up2 = up.clone();
    let source = FnSource(move || {
        let (ep, up) = (ep.clone(), up2.load(Ordering::SeqCst));
        async move {
            if up {
                Ok(endpoint::connect(&ep).await?)
            } else {
                Err(actix_tether::links::LinkError::Closed)
            }
        }
    });
    let cfg = StableConfig {
        replay_max_frames: 8,
        reconnect: ReconnectPolicy {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(10),
            max_attempts: None,
            max_elapsed: Some(Duration::from_secs(600)),
            ..Default::default()
        },
        ..config()
    };
    let (rep_tx, _r) = mpsc::unbounded_channel();
    let client = StableSession::<Msg>::start_client(
        source,
        cfg,
        SessionOptions::default(),
        Collector {
            next: 0,
            report: rep_tx,
        }
        .start()
        .recipient(),
        None,
    )
    .unwrap();
    let (acc_tx, mut accepted) = mpsc::unbounded_channel();
    let c = client.clone();
    let sender = actix::spawn(async move {
        for i in 0..30u32 {
            c.send(Outgoing(msg(i))).await.unwrap().unwrap();
            let _ = acc_tx.send(i);
        }
    });
    // The replay buffer takes 8 items while no link can be made...
    for i in 0..8 {
        let got = tokio::time::timeout(GUARD, accepted.recv()).await.unwrap();
        assert_eq!(got, Some(i));
    }
    // ...and the 9th send waits (backpressure, not loss).
    let ninth = tokio::time::timeout(Duration::from_millis(300), accepted.recv()).await;
    assert!(ninth.is_err(), "the 9th send must wait: {ninth:?}");
    up.store(true, Ordering::SeqCst);
    expect_in_order(&mut server.received, 30).await;
    tokio::time::timeout(GUARD, sender).await.unwrap().unwrap();
    for i in 8..30 {
        assert_eq!(accepted.recv().await, Some(i));
    }
}

#[actix::test]
async fn registry_rejects_bad_handshakes_with_clear_errors() {
    use actix_tether::links::{send_bytes, Link, LinkRx};
    let cfg = StableConfig {
        handshake_timeout: Duration::from_millis(200),
        ..config()
    };
    let (ep, server) = start_server(cfg).await;
    let mut wrong_version = actix_tether::stable::ClientHello::new_session().to_bytes();
    wrong_version[4] = 7;
    for bytes in [&b"garbage!"[..], &wrong_version[..]] {
        let (mut tx, mut rx) = endpoint::connect(&ep).await.unwrap().split();
        send_bytes(&mut tx, bytes).await.unwrap();
        let r = tokio::time::timeout(GUARD, rx.recv()).await.unwrap();
        assert!(matches!(r, Ok(None) | Err(_)), "{r:?}");
    }
    let stats = server.registry.send(RegistryStats).await.unwrap();
    assert_eq!(stats.handshake_failures, 2);
    assert!(matches!(
        stats.last_handshake_error,
        Some(StableError::UnsupportedVersion { found: 7, .. })
    ));
    // Silence times out.
    let (_tx, mut rx) = endpoint::connect(&ep).await.unwrap().split();
    let _ = tokio::time::timeout(GUARD, rx.recv()).await.unwrap();
    let stats = server.registry.send(RegistryStats).await.unwrap();
    assert!(matches!(
        stats.last_handshake_error,
        Some(StableError::HandshakeTimeout)
    ));
}

/// A client session, the items it received, and its events.
type ActorClient = (
    Addr<StableSession<Msg>>,
    mpsc::UnboundedReceiver<Result<u32, String>>,
    mpsc::UnboundedReceiver<SessionEvent>,
);

/// A client of the registry, with its received items and events.
fn actor_client(ep: Endpoint) -> ActorClient {
    let (rep_tx, received) = mpsc::unbounded_channel();
    let (ev_tx, events) = mpsc::unbounded_channel();
    let addr = StableSession::<Msg>::start_client(
        ep,
        config(),
        SessionOptions::default(),
        Collector {
            next: 0,
            report: rep_tx,
        }
        .start()
        .recipient(),
        Some(Events(ev_tx).start().recipient()),
    )
    .unwrap();
    (addr, received, events)
}

#[actix::test]
async fn registry_refuses_sessions_beyond_its_limit() {
    let cfg = StableConfig {
        max_sessions: 1,
        ..config()
    };
    let (ep, mut server) = start_server(cfg).await;
    let (first, _first_received, _first_events) = actor_client(ep.clone());
    first.send(Outgoing(msg(0))).await.unwrap().unwrap();
    expect_in_order(&mut server.received, 1).await;
    // The second session is refused: a terminal, distinct error and event.
    let (second, _received, mut events) = actor_client(ep);
    let refused = tokio::time::timeout(GUARD, async {
        loop {
            match events.recv().await.unwrap() {
                SessionEvent::Refused { unacked } => break unacked,
                SessionEvent::SessionUp => panic!("a session beyond the limit was created"),
                _ => continue,
            }
        }
    })
    .await
    .expect("deadlock guard");
    assert_eq!(refused, 0);
    let r = second.send(Outgoing(msg(0))).await.unwrap();
    assert!(
        matches!(r, Err(StableError::Refused { unacked: 0 })),
        "{r:?}"
    );
    let stats = server.registry.send(RegistryStats).await.unwrap();
    assert_eq!(
        (stats.sessions, stats.refused, stats.rejected),
        (1, 1, 0),
        "{stats:?}"
    );
    // The first session is unaffected.
    first.send(Outgoing(msg(1))).await.unwrap().unwrap();
    tokio::time::timeout(GUARD, server.received.recv())
        .await
        .expect("deadlock guard")
        .unwrap()
        .unwrap();
}
