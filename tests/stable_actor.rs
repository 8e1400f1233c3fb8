//! The supervised `StableSession` actor and the `StableRegistry` actor over real links:
//! exactly-once in-order delivery while links are killed (fault injector over TCP, inproc,
//! Unix sockets and shared memory through the `ShmHub`; a resetting TCP proxy), the
//! registry fed by an `Acceptor` and by a `ShmHub` directly, server restart →
//! `SessionLost`, reconnect backoff events, and panicking user code (codec, `on_session`)
//! that must not kill a session or the registry.
//!
//! Kill counts are checked against a floor derived from the traffic: a client must put at
//! least [`min_wire_bytes`] payload bytes on its links, and one link carries at most
//! [`KILL_MAX_PER_LINK`] (fault injector) or [`proxy::MAX_FORWARDED`] (proxy) of them.
#![cfg(feature = "actors")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_tether::actors::registry::{RegistryStats, SessionWiring, StableRegistry};
use actix_tether::actors::session::{
    Incoming, Outgoing, SessionOptions, StableEvent, StableSession,
};
use actix_tether::codec::{Codec, Postcard};
use actix_tether::endpoint::{self, Endpoint};
use actix_tether::links::fault::{FaultPlan, FaultySource};
use actix_tether::links::{FnSource, LinkSource};
use actix_tether::stable::driver::{ServerStats, SessionEvent};
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

/// Link payload bytes a client must send, at the least, for the server to receive items
/// `0..n`: every item's encoding plus 4 bytes (the length in front of each item of a batch
/// frame; a data frame of one item has a 9-byte header), each at least once.
fn min_wire_bytes(n: u32) -> u64 {
    (0..n)
        .map(|i| Postcard.encode_to_vec(&msg(i)).unwrap().len() as u64 + 4)
        .sum()
}

/// The fewest links that must have been killed for the server to receive items `0..n`
/// when one link carries at most `max_per_link` client payload bytes: every link but the
/// last was killed.
fn min_kills(n: u32, max_per_link: u64) -> u64 {
    min_wire_bytes(n).div_ceil(max_per_link) - 1
}

/// Batch frames of the kill tests: at most this many bytes (about 120 items), so that the
/// frame that reaches a kill threshold overshoots it by little.
const KILL_BATCH: usize = 4096;
/// The fault injector kills a link once the client sent a number of payload bytes drawn
/// from this range: about 430 to 800 items of about 32 bytes, and as many the other way.
const KILL_BYTES: (u64, u64) = (14_000, 26_000);
/// Most client payload bytes one link carries under [`kill_plan`]: below the threshold
/// before its last frame, plus that frame.
const KILL_MAX_PER_LINK: u64 = KILL_BYTES.1 - 1 + KILL_BATCH as u64;

/// Items each way over inproc, Unix sockets and shared memory: half the 100,000 that TCP
/// carries (the same code path above the link), to keep this test binary under ~20 s in a
/// debug build on a loaded 2-core machine (about 12 s unloaded; an exchange of 100,000
/// takes 3.5-4 s alone). Still more than 50 kills each.
const SIDE_N: u32 = 50_000;

fn kill_config() -> StableConfig {
    StableConfig {
        max_batch_bytes: KILL_BATCH,
        ..config()
    }
}

fn kill_plan(seed: u64) -> FaultPlan {
    FaultPlan::new(seed).kill_after_bytes_between(KILL_BYTES.0, KILL_BYTES.1)
}

/// Checks every `Reconnecting { attempt, delay }` against the policy: the delay is in
/// `[base × (1 − jitter), base]` for `base = min(max_delay, initial_delay × 2^attempt)`;
/// the first attempt after the session came up (or resumed) is 0 and each further attempt
/// of the same outage is the previous one plus 1. Returns how many there were.
fn check_reconnecting(events: &[SessionEvent], policy: &ReconnectPolicy) -> usize {
    // The attempt number the next `Reconnecting` must carry (`None`: before the session
    // was first up, where it counts failed first connects).
    let mut expected: Option<u32> = None;
    let mut count = 0;
    for ev in events {
        match ev {
            SessionEvent::Reconnecting { attempt, delay } => {
                if let Some(want) = expected {
                    assert_eq!(*attempt, want, "attempt numbers: {events:?}");
                }
                let base = policy
                    .initial_delay
                    .checked_mul(1u32.checked_shl(*attempt).unwrap_or(u32::MAX))
                    .unwrap_or(policy.max_delay)
                    .min(policy.max_delay);
                let base_ns = base.as_nanos() as u64;
                let spread = (base_ns as f64 * policy.jitter) as u64;
                let ns = delay.as_nanos() as u64;
                assert!(
                    (base_ns - spread..=base_ns).contains(&ns),
                    "attempt {attempt}: delay {delay:?} outside the policy's [{:?}, {base:?}]",
                    Duration::from_nanos(base_ns - spread)
                );
                expected = Some(attempt + 1);
                count += 1;
            }
            SessionEvent::SessionUp | SessionEvent::Resumed { .. } => expected = Some(0),
            _ => {}
        }
    }
    count
}

/// What one exchange saw.
struct Exchanged {
    /// Links the fault injector killed (on the client's side).
    kills: u64,
    /// Links broken in all: `kills` plus those broken otherwise (a resetting proxy).
    breaks: u64,
    /// `Resumed` among them.
    resumed: u64,
    /// `Reconnecting` among them (checked against the policy).
    reconnecting: u64,
    /// The registry's counters at the end.
    stats: ServerStats,
}

/// Sends items `0..n` each way between a client session on `source` and the one session of
/// `server`, and checks that both sides receive every item once, in order. Then waits for
/// the client to have resumed after every link break (the injector's kills plus
/// `other_breaks()`), and checks its events.
async fn exchange<S: LinkSource>(
    source: FaultySource<S>,
    client_config: StableConfig,
    mut server: Server,
    n: u32,
    other_breaks: impl Fn() -> u64,
) -> Exchanged {
    let faults = source.stats();
    let policy = client_config.reconnect.clone();
    let (rep_tx, mut client_received) = mpsc::unbounded_channel();
    let (ev_tx, mut client_events) = mpsc::unbounded_channel();
    let collector = Collector {
        next: 0,
        report: rep_tx,
    }
    .start();
    let client = StableSession::<Msg>::start_client(
        source,
        client_config,
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
    // Every break so far is followed by exactly one resume (a break needs thousands of
    // bytes on a link, so none can hit a handshake). Events travel through an actor: wait
    // for them rather than peek.
    let kills = faults.kills();
    let breaks = kills + other_breaks();
    let mut events = Vec::new();
    let mut resumed = 0;
    while resumed < breaks {
        let ev = tokio::time::timeout(GUARD, client_events.recv())
            .await
            .unwrap_or_else(|_| panic!("deadlock guard: {resumed} resumes for {breaks} breaks"))
            .expect("events channel closed");
        match ev {
            SessionEvent::Resumed { .. } => resumed += 1,
            SessionEvent::SessionLost { .. } | SessionEvent::Refused { .. } => panic!("{ev:?}"),
            _ => {}
        }
        events.push(ev);
    }
    let reconnecting = check_reconnecting(&events, &policy) as u64;
    let stats = server.registry.send(RegistryStats).await.unwrap();
    // Shown with `--nocapture`.
    println!(
        "{n} items each way: {breaks} breaks ({kills} kills) over {} links, {resumed} \
         resumes, {reconnecting} reconnects; server {stats:?}",
        faults.links()
    );
    assert_eq!(stats.sessions, 1, "{stats:?}");
    assert!(stats.resumes >= breaks, "{stats:?}, {breaks} breaks");
    assert!(
        reconnecting >= breaks,
        "{reconnecting} reconnects, {breaks} breaks"
    );
    assert!(server.sessions.try_recv().is_err(), "one session only");
    while let Ok(ev) = server.events.try_recv() {
        assert!(
            !matches!(
                ev,
                SessionEvent::SessionLost { .. } | SessionEvent::ItemUndecodable { .. }
            ),
            "server: {ev:?}"
        );
    }
    Exchanged {
        kills,
        breaks,
        resumed,
        reconnecting,
        stats,
    }
}

/// Asserts that the links were killed at least as often as the traffic demands
/// ([`min_kills`]), that each kill was followed by a `Reconnecting` and a `Resumed`, and
/// returns the kill count.
fn assert_killed_often(x: &Exchanged, n: u32, max_per_link: u64) -> u64 {
    let floor = min_kills(n, max_per_link);
    assert!(
        x.kills >= floor,
        "{} kills for {n} items each way; at least {floor} expected",
        x.kills
    );
    assert!(x.resumed >= x.kills && x.reconnecting >= x.kills);
    assert!(x.stats.resumes >= x.kills);
    x.kills
}

/// [`exchange`] of `n` items each way with the fault injector (`plan`) killing the client's
/// links to `ep`, then [`assert_killed_often`]; returns the kill count.
async fn exchange_with_injector(ep: Endpoint, plan: FaultPlan, server: Server, n: u32) -> u64 {
    let x = exchange(FaultySource::new(ep, plan), kill_config(), server, n, || 0).await;
    assert_killed_often(&x, n, KILL_MAX_PER_LINK)
}

/// 100,000 items each way over TCP, the fault injector killing the link every ~430-800
/// client items (and as many server items): at least 100 kills, each followed by a
/// reconnect and a resume.
#[actix::test]
async fn actors_exchange_exactly_once_while_links_are_killed() {
    const N: u32 = 100_000;
    let (ep, server) = start_server(kill_config()).await;
    let floor = min_kills(N, KILL_MAX_PER_LINK);
    assert!(
        floor >= 100,
        "the plan must kill ~every 1,000 items: {floor}"
    );
    exchange_with_injector(ep, kill_plan(21), server, N).await;
}

/// 100,000 items each way through a TCP proxy that resets every connection after 20-60 KB
/// of client bytes (no fault injector).
#[actix::test]
async fn actors_through_a_resetting_tcp_proxy() {
    const N: u32 = 100_000;
    let (ep, server) = start_server(config()).await;
    let Endpoint::Tcp { port, .. } = ep else {
        unreachable!()
    };
    let (proxy, resets) =
        proxy::reset_proxy(std::net::SocketAddr::from(([127, 0, 0, 1], port)), 9).await;
    let proxied: Endpoint = format!("tcp://{proxy}").parse().unwrap();
    let count = resets.clone();
    let x = exchange(
        FaultySource::new(proxied, FaultPlan::new(1)),
        config(),
        server,
        N,
        move || count.load(std::sync::atomic::Ordering::Relaxed),
    )
    .await;
    assert_eq!(x.kills, 0);
    // Every connection but the last one was reset (nothing else closes them).
    let resets = resets.load(std::sync::atomic::Ordering::Relaxed);
    let floor = min_kills(N, proxy::MAX_FORWARDED);
    assert!(floor >= 45, "{floor}");
    assert!(
        resets >= floor,
        "{resets} resets, at least {floor} expected"
    );
    assert!(x.breaks >= floor && x.resumed >= floor && x.reconnecting >= floor);
}

/// Over Unix sockets, every kill cutting the frame that triggers it (never delivered).
#[actix::test]
async fn actors_over_unix_sockets_with_mid_frame_cuts() {
    const N: u32 = SIDE_N;
    let dir = std::env::temp_dir().join(format!("tether-actor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ep, server) = start_server_on(Endpoint::Unix(dir.join("s.sock")), kill_config()).await;
    exchange_with_injector(ep, kill_plan(8).cut_mid_frame(), server, N).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A registry fed by an `Acceptor` listening at `at`; `n` items each way through injector
/// kills (seeded with `seed`).
async fn exchange_through_an_acceptor(at: &str, seed: u64, n: u32) {
    let server = new_server(&kill_config());
    let (_acceptor, ep) = actix_tether::actors::Acceptor::listen(
        &at.parse().unwrap(),
        server.registry.clone().recipient(),
        server.registry.clone().recipient(),
        &Default::default(),
    )
    .await
    .unwrap();
    exchange_with_injector(ep, kill_plan(seed), server, n).await;
}

/// Stable sessions behind the general-purpose `Acceptor` (instead of the registry's own
/// accept loop), over `inproc://`: the registry is the acceptor's `incoming` and `errors`
/// recipient and creates or resumes the session for every link it is handed.
#[actix::test]
async fn actors_over_inproc_through_an_acceptor_with_kills() {
    exchange_through_an_acceptor("inproc://stable-actor-kills", 44, SIDE_N).await;
}

/// The same over TCP (a shorter exchange).
#[actix::test]
async fn acceptor_hands_incoming_links_to_the_registry() {
    exchange_through_an_acceptor("tcp://127.0.0.1:0", 45, 5_000).await;
}

/// Forwards the hub's peer events into a channel.
#[cfg(target_os = "linux")]
struct HubEvents(mpsc::UnboundedSender<actix_tether::actors::HubPeerEvent>);

#[cfg(target_os = "linux")]
impl Actor for HubEvents {
    type Context = Context<Self>;
}

#[cfg(target_os = "linux")]
impl Handler<actix_tether::actors::HubPeerEvent> for HubEvents {
    type Result = ();
    fn handle(&mut self, ev: actix_tether::actors::HubPeerEvent, _: &mut Context<Self>) {
        let _ = self.0.send(ev);
    }
}

/// Stable sessions over shared memory: the `ShmHub` actor hands every guest's link to the
/// registry (its `incoming` recipient); the client joins the hub as a guest in this process
/// for every link, and the fault injector kills its links.
#[cfg(target_os = "linux")]
#[actix::test]
async fn shm_hub_hands_incoming_stable_links_to_the_registry() {
    use actix_tether::actors::{HubPeerEvent, ShmHub};
    const N: u32 = SIDE_N;
    let path = std::env::temp_dir().join(format!("tether-stable-hub-{}.sock", std::process::id()));
    let server = new_server(&kill_config());
    let (ev_tx, mut hub_events) = mpsc::unbounded_channel();
    let (_hub, _handle) = ShmHub::bind(
        &path,
        Default::default(),
        server.registry.clone().recipient(),
        HubEvents(ev_tx).start().recipient(),
    )
    .unwrap();
    let ep = Endpoint::Shm(path.clone());
    let kills = exchange_with_injector(ep, kill_plan(46), server, N).await;
    // Every link was a guest that joined the hub: the first one and one per resume.
    let mut joined = 0;
    while joined < kills + 1 {
        match tokio::time::timeout(GUARD, hub_events.recv()).await {
            Ok(Some(HubPeerEvent::Joined(_))) => joined += 1,
            Ok(Some(_)) => {}
            other => panic!("{joined} guests joined for {kills} kills: {other:?}"),
        }
    }
    let _ = std::fs::remove_file(&path);
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

/// An item whose `Deserialize` panics for one value (its `Serialize` is fine).
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Fragile(u32);

impl<'de> Deserialize<'de> for Fragile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if v == 13 {
            panic!("unlucky on the way in");
        }
        Ok(Fragile(v))
    }
}

impl Handler<Incoming<Fragile>> for TouchyCollector {
    type Result = ();
    fn handle(&mut self, Incoming(t): Incoming<Fragile>, _: &mut Context<Self>) {
        let _ = self.0.send(t.0);
    }
}

/// Waits for the next `ItemUndecodable` among `events` and returns its error.
async fn next_undecodable(events: &mut mpsc::UnboundedReceiver<SessionEvent>) -> StableError {
    tokio::time::timeout(GUARD, async {
        loop {
            match events.recv().await.expect("events channel closed") {
                SessionEvent::ItemUndecodable { error } => break error,
                ev @ (SessionEvent::LinkLost { .. } | SessionEvent::SessionLost { .. }) => {
                    panic!("the session was hurt: {ev:?}")
                }
                _ => continue,
            }
        }
    })
    .await
    .expect("deadlock guard")
}

/// A `Deserialize` impl that panics on the receiving side (server, then client): the item
/// is reported as `ItemUndecodable` with a decode error naming the panic, the items around
/// it are delivered, and the session and its link live on (no relink, no loss).
#[actix::test]
async fn panicking_deserialize_is_reported_not_a_dead_session() {
    let listener = endpoint::listen(&"tcp://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ep = listener.local_endpoint();
    let (srv_tx, mut srv_got) = mpsc::unbounded_channel();
    let (srv_ev_tx, mut srv_events) = mpsc::unbounded_channel();
    let (sess_tx, mut sessions) = mpsc::unbounded_channel();
    let registry = StableRegistry::<Fragile>::new(config(), SessionOptions::default(), move |a| {
        let _ = sess_tx.send(a);
        SessionWiring {
            recipient: TouchyCollector(srv_tx.clone()).start().recipient(),
            events: Some(Events(srv_ev_tx.clone()).start().recipient()),
        }
    })
    .unwrap()
    .start();
    StableRegistry::serve(&registry, listener, &config());
    let (cli_tx, mut cli_got) = mpsc::unbounded_channel();
    let (cli_ev_tx, mut cli_events) = mpsc::unbounded_channel();
    let client = StableSession::<Fragile>::start_client(
        ep,
        config(),
        SessionOptions::default(),
        TouchyCollector(cli_tx).start().recipient(),
        Some(Events(cli_ev_tx).start().recipient()),
    )
    .unwrap();
    let is_decode_panic = |e: &StableError| matches!(e, StableError::Codec(actix_tether::codec::CodecError::Decode(m)) if m.contains("panicked"));
    // Client → server: 13 encodes fine and panics in the server's decode.
    for i in [12, 13, 14] {
        client.send(Outgoing(Fragile(i))).await.unwrap().unwrap();
    }
    let e = next_undecodable(&mut srv_events).await;
    assert!(is_decode_panic(&e), "{e:?}");
    let got = tokio::time::timeout(GUARD, async {
        (srv_got.recv().await, srv_got.recv().await)
    })
    .await
    .unwrap();
    assert_eq!(got, (Some(12), Some(14)));
    // Server → client: the same on the client's side, through the same session.
    let server = tokio::time::timeout(GUARD, sessions.recv())
        .await
        .unwrap()
        .unwrap();
    for i in [13, 15] {
        server.send(Outgoing(Fragile(i))).await.unwrap().unwrap();
    }
    let e = next_undecodable(&mut cli_events).await;
    assert!(is_decode_panic(&e), "{e:?}");
    let got = tokio::time::timeout(GUARD, cli_got.recv()).await.unwrap();
    assert_eq!(got, Some(15));
    // Both still work, on the first link.
    client.send(Outgoing(Fragile(16))).await.unwrap().unwrap();
    let got = tokio::time::timeout(GUARD, srv_got.recv()).await.unwrap();
    assert_eq!(got, Some(16));
    let stats = registry.send(RegistryStats).await.unwrap();
    assert_eq!((stats.sessions, stats.resumes), (1, 0), "{stats:?}");
    assert!(sessions.try_recv().is_err(), "one session only");
    while let Ok(ev) = cli_events.try_recv() {
        assert!(matches!(ev, SessionEvent::SessionUp), "{ev:?}");
    }
}

/// The application's `on_session` callback panics for the second session: that client is
/// refused (a terminal error, not a session that never comes up), the registry survives,
/// the first session is unaffected and a third client gets a session.
#[actix::test]
async fn registry_survives_a_panicking_on_session_callback() {
    let listener = endpoint::listen(&"tcp://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ep = listener.local_endpoint();
    let (rep_tx, mut received) = mpsc::unbounded_channel();
    let mut calls = 0;
    let registry = StableRegistry::<Msg>::new(config(), SessionOptions::default(), move |_| {
        calls += 1;
        if calls == 2 {
            panic!("on_session fails on purpose");
        }
        SessionWiring {
            recipient: Collector {
                next: 0,
                report: rep_tx.clone(),
            }
            .start()
            .recipient(),
            events: None,
        }
    })
    .unwrap()
    .start();
    StableRegistry::serve(&registry, listener, &config());
    let (first, _r1, _e1) = actor_client(ep.clone());
    first.send(Outgoing(msg(0))).await.unwrap().unwrap();
    expect_in_order(&mut received, 1).await;
    // The second session's callback panics: its client is refused.
    let (second, _r2, mut events) = actor_client(ep.clone());
    expect_refused(
        &second,
        &mut events,
        "a session whose callback panicked came up",
    )
    .await;
    // The registry is alive and serves new sessions; the first one still works.
    let (third, _r3, _e3) = actor_client(ep);
    third.send(Outgoing(msg(0))).await.unwrap().unwrap();
    first.send(Outgoing(msg(1))).await.unwrap().unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(GUARD, received.recv()).await.unwrap();
        got.push(r.unwrap().unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, [0, 1]);
    let stats = registry.send(RegistryStats).await.unwrap();
    assert_eq!(
        (stats.sessions, stats.refused, stats.resumes),
        (2, 1, 0),
        "{stats:?}"
    );
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
    let policy = cfg.reconnect.clone();
    let (rep_tx, _r) = mpsc::unbounded_channel();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
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
        Some(Events(ev_tx).start().recipient()),
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
    // The client keeps retrying with growing delays: wait for the 5th retry (its delay
    // reaches the 10 ms cap) before the links come back.
    let mut seen = Vec::new();
    tokio::time::timeout(GUARD, async {
        loop {
            let ev = events.recv().await.expect("events channel closed");
            let fifth = matches!(ev, SessionEvent::Reconnecting { attempt: 5, .. });
            seen.push(ev);
            if fifth {
                break;
            }
        }
    })
    .await
    .expect("deadlock guard");
    up.store(true, Ordering::SeqCst);
    expect_in_order(&mut server.received, 30).await;
    tokio::time::timeout(GUARD, sender).await.unwrap().unwrap();
    for i in 8..30 {
        assert_eq!(accepted.recv().await, Some(i));
    }
    tokio::time::timeout(GUARD, async {
        loop {
            let ev = events.recv().await.expect("events channel closed");
            let up = matches!(ev, SessionEvent::SessionUp);
            seen.push(ev);
            if up {
                break;
            }
        }
    })
    .await
    .expect("deadlock guard");
    // The first connect fails without a delay (attempt 0, no event); the retries are
    // attempts 1, 2, 3, ... of that outage, each delayed as the policy says (checked), and
    // every failure is reported.
    let attempts: Vec<u32> = seen
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Reconnecting { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts[..5], [1, 2, 3, 4, 5], "{seen:?}");
    assert!(check_reconnecting(&seen, &policy) >= 5);
    let lost = seen
        .iter()
        .filter(|e| matches!(e, SessionEvent::LinkLost { .. }))
        .count();
    assert_eq!(
        lost,
        attempts.len(),
        "one LinkLost per failed connect: {seen:?}"
    );
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

/// Asserts that the session of `client` was refused: a `Refused { unacked: 0 }` event (never
/// `SessionUp`, which fails with `up`) and a send that fails with the same, terminal error.
async fn expect_refused(
    client: &Addr<StableSession<Msg>>,
    events: &mut mpsc::UnboundedReceiver<SessionEvent>,
    up: &str,
) {
    let refused = tokio::time::timeout(GUARD, async {
        loop {
            match events.recv().await.expect("events channel closed") {
                SessionEvent::Refused { unacked } => break unacked,
                SessionEvent::SessionUp => panic!("{up}"),
                _ => continue,
            }
        }
    })
    .await
    .expect("deadlock guard");
    assert_eq!(refused, 0);
    let r = client.send(Outgoing(msg(0))).await.unwrap();
    assert!(
        matches!(r, Err(StableError::Refused { unacked: 0 })),
        "{r:?}"
    );
}

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
    expect_refused(
        &second,
        &mut events,
        "a session beyond the limit was created",
    )
    .await;
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
