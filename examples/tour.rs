//! A tour of actix-tether: run with `cargo run --example tour`.
//!
//! Self-contained: everything runs on loopback inside this process.

use actix::prelude::*;
use actix_tether::actors::{
    self, AcceptError, Acceptor, ActorConfig, Incoming, LinkWriter, Received,
};
use actix_tether::codec::{self, Codec, Postcard};
use actix_tether::endpoint::{self, Endpoint};
use actix_tether::links::{Link, LinkError, LinkRx, LinkTx, Permit};
use actix_tether::shm::{ShmConfig, ShmLink};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Greet { name: String },
    Add(i64, i64),
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Greeting(String),
    Sum(i64),
}

/// A tiny server: answers each request on the same link until the client closes.
async fn serve(link: actix_tether::links::AnyLink) -> Result<usize, Box<dyn std::error::Error>> {
    let (mut tx, mut rx) = link.split();
    let mut served = 0;
    while let Some(bytes) = rx.recv().await? {
        let reply = match Postcard.decode::<Request>(&bytes)? {
            Request::Greet { name } => Reply::Greeting(format!("hello, {name}")),
            Request::Add(a, b) => Reply::Sum(a + b),
        };
        codec::send(&mut tx, &Postcard, &reply).await?;
        served += 1;
    }
    tx.close().await?;
    Ok(served)
}

async fn exchange(endpoint: &str) -> Result<(), Box<dyn std::error::Error>> {
    let ep = Endpoint::parse(endpoint)?;
    let listener = endpoint::listen(&ep).await?;
    let bound = listener.local_endpoint();
    println!("[{bound}] listening");

    let server = tokio::spawn(async move {
        let link = listener.accept().await.map_err(|e| e.to_string())?;
        serve(link).await.map_err(|e| e.to_string())
    });

    let (mut tx, mut rx) = endpoint::connect(&bound).await?.split();
    let requests = [
        Request::Greet {
            name: "tether".into(),
        },
        Request::Add(40, 2),
    ];
    for req in &requests {
        codec::send(&mut tx, &Postcard, req).await?;
        let reply: Reply = Postcard.decode(&rx.recv().await?.ok_or("server hung up")?)?;
        println!("[{bound}] sent {req:?} -> got {reply:?}");
    }

    // A message above the link's maximum frame length (16 MiB by default) is refused at
    // `alloc`, before anything is written; the link stays usable.
    let permit = tx.reserve().await?;
    match permit.alloc(17 * 1024 * 1024) {
        Err(e @ LinkError::TooLarge { .. }) => println!("[{bound}] oversize frame rejected: {e}"),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("oversize frame was accepted".into()),
    }
    codec::send(&mut tx, &Postcard, &Request::Add(1, 1)).await?;
    let reply: Reply = Postcard.decode(&rx.recv().await?.ok_or("server hung up")?)?;
    println!("[{bound}] link still works after the rejection: {reply:?}");

    tx.close().await?;
    let served = server.await??;
    println!("[{bound}] server answered {served} requests and saw a clean close");
    Ok(())
}

// ---- 2. the same exchange through actors ----

/// Server side, one per connection: answers every request through its link's writer. The
/// `AtomicResponse` waits for the writer, so a slow peer slows this actor down (backpressure)
/// instead of queueing replies without bound.
struct Session(Addr<LinkWriter<Reply>>);

impl Actor for Session {
    type Context = Context<Self>;
}

impl Handler<Received<Request>> for Session {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, req: Received<Request>, _: &mut Context<Self>) -> Self::Result {
        let reply = match req.msg {
            Request::Greet { name } => Reply::Greeting(format!("hello, {name}")),
            Request::Add(a, b) => Reply::Sum(a + b),
        };
        let writer = self.0.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let _ = writer.send(actors::Send(reply)).await;
            }
            .into_actor(self),
        ))
    }
}

/// Accepts every connection by starting a `Session` for it.
struct Server;

impl Actor for Server {
    type Context = Context<Self>;
}

impl Handler<Incoming> for Server {
    type Result = ();

    fn handle(&mut self, incoming: Incoming, _: &mut Context<Self>) {
        println!(
            "[actors] {} accepted on {}",
            incoming.id(),
            incoming.local_endpoint()
        );
        Session::create(|ctx| Session(incoming.accept(ctx.address().recipient())));
    }
}

impl Handler<AcceptError> for Server {
    type Result = ();

    fn handle(&mut self, e: AcceptError, _: &mut Context<Self>) {
        eprintln!("[actors] accept failed: {}", e.error);
    }
}

/// Client side: forwards replies to the tour's main task.
struct Inbox(tokio::sync::mpsc::Sender<Reply>);

impl Actor for Inbox {
    type Context = Context<Self>;
}

impl Handler<Received<Reply>> for Inbox {
    type Result = ();

    fn handle(&mut self, reply: Received<Reply>, _: &mut Context<Self>) {
        let _ = self.0.try_send(reply.msg);
    }
}

async fn actor_exchange(endpoint: &str) -> Result<(), Box<dyn std::error::Error>> {
    let server = Server.start();
    let (acceptor, bound) = Acceptor::listen(
        &Endpoint::parse(endpoint)?,
        server.clone().recipient(),
        server.recipient(),
        &ActorConfig::default(),
    )
    .await?;
    let (replies_tx, mut replies) = tokio::sync::mpsc::channel(16);
    let writer =
        actors::connect::<Request, Reply>(&bound, Inbox(replies_tx).start().recipient()).await?;
    for i in 0..3 {
        let req = Request::Add(i, i * 10);
        println!("[actors {bound}] send {req:?}");
        writer.send(actors::Send(req)).await??; // committed to the link (waits if full)
        let reply = replies.recv().await.ok_or("inbox closed")?;
        println!("[actors {bound}] got {reply:?}");
    }
    writer.send(actors::Close).await??; // flushed, then closed
    acceptor.send(actors::Shutdown).await?;
    Ok(())
}

// ---- 3. a shared-memory link to a child process ----

/// Set in the child's environment: the tour re-executes itself as the SHM peer.
const CHILD_ENV: &str = "TETHER_TOUR_SHM_CHILD";

/// The child: attaches to the segment it inherited and answers requests until the parent
/// closes.
async fn shm_child() -> Result<(), Box<dyn std::error::Error>> {
    let link = ShmLink::from_env(ShmConfig::default())?;
    serve(link.into()).await?;
    Ok(())
}

async fn shm_exchange() -> Result<(), Box<dyn std::error::Error>> {
    let (link, handoff) = ShmLink::create_for_child(ShmConfig::default())?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.env(CHILD_ENV, "1");
    let mut child = handoff.spawn(cmd)?;
    println!(
        "[shm] child process {} attached to a sealed memfd segment",
        child.id()
    );
    let (mut tx, mut rx) = link.split();
    for req in [
        Request::Add(20, 22),
        Request::Greet {
            name: "shared memory".into(),
        },
    ] {
        codec::send(&mut tx, &Postcard, &req).await?;
        let reply: Reply = Postcard.decode(&rx.recv().await?.ok_or("child hung up")?)?;
        println!("[shm] sent {req:?} -> got {reply:?}");
    }
    // A 512 KiB message goes through the zero-copy slab: serialized straight into shared
    // memory, received as `Bytes` over the same memory.
    let big = Request::Greet {
        name: "x".repeat(512 << 10),
    };
    codec::send(&mut tx, &Postcard, &big).await?;
    let reply = rx.recv().await?.ok_or("child hung up")?;
    println!(
        "[shm] a {} byte request through the slab -> a {} byte reply",
        512 << 10,
        reply.len()
    );
    tx.close().await?;
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    println!("[shm] child exited: {status}");
    Ok(())
}

// ---- 4. a stable session that survives its link being killed ----

/// The stable sessions of sections 4 and 5: defaults, but quick reconnects (1–20 ms backoff),
/// since the tour kills links every few KB.
fn stable_config() -> actix_tether::stable::StableConfig {
    use actix_tether::stable::{ReconnectPolicy, StableConfig};
    StableConfig {
        reconnect: ReconnectPolicy {
            initial_delay: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(20),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn stable_exchange() -> Result<(), Box<dyn std::error::Error>> {
    use actix_tether::links::fault::{FaultPlan, FaultySource};
    use actix_tether::stable::driver::{DriverConfig, StableClient, StableServer};

    const N: u64 = 5_000;
    let config = stable_config();
    let listener = endpoint::listen(&Endpoint::parse("tcp://127.0.0.1:0")?).await?;
    let bound = listener.local_endpoint();
    let (server, mut sessions) = StableServer::new(config.clone(), DriverConfig::default())?;
    tokio::spawn(server.clone().serve(listener));
    // The client's links come from a fault injector that kills each one after 2–6 KB sent
    // (a few hundred of these small items; the session batches them into fewer frames).
    let source = FaultySource::new(
        bound.clone(),
        FaultPlan::new(7).kill_after_bytes_between(2_000, 6_000),
    );
    let faults = source.stats();
    let client = StableClient::connect(source, config, DriverConfig::default())?;
    let server_side = sessions.accept().await.ok_or("server stopped")?;

    let (ctx, _crx) = client.split();
    let (_stx, mut srx) = server_side.split();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            ctx.send(Postcard.encode_to_vec(&i)?).await?;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(ctx)
    });
    let (mut lost, mut duplicated, mut next) = (0u64, 0u64, 0u64);
    while next < N {
        let i: u64 = Postcard.decode(&srx.recv().await?)?;
        match i.cmp(&next) {
            std::cmp::Ordering::Equal => next += 1,
            std::cmp::Ordering::Less => duplicated += 1,
            std::cmp::Ordering::Greater => {
                lost += i - next;
                next = i + 1;
            }
        }
    }
    let ctx = sender.await?.map_err(|e| e.to_string())?;
    // A link killed after the last item may still be resuming: the counters are read once
    // the session is back on a link (or after a deadline, which then reports the gap).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ctx.stats().session.resumes < faults.kills() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let stats = ctx.stats();
    println!(
        "[stable {bound}] {} links killed, {} resumes, {} items replayed",
        faults.kills(),
        stats.session.resumes,
        stats.session.items_replayed
    );
    println!("[stable {bound}] {N} sent, {next} received, {lost} lost, {duplicated} duplicated");
    if lost != 0 || duplicated != 0 {
        return Err(format!("stable session: {lost} lost, {duplicated} duplicated").into());
    }
    Ok(())
}

/// The SHM hub: many guest processes join one hub through a Unix socket; each gets its own
/// sealed segment. Here the hub spawns one guest (this program again, in guest mode).
async fn hub_exchange() -> Result<(), Box<dyn std::error::Error>> {
    use actix_tether::shm::hub::{Hub, HubConfig};
    let path = std::env::temp_dir().join(format!("tether-tour-hub-{}.sock", std::process::id()));
    let mut hub = Hub::bind(&path, HubConfig::default())?;
    let mut child = hub.spawn(std::process::Command::new(std::env::current_exe()?))?;
    let guest = hub.accept().await?;
    println!(
        "[hub] guest {} (pid {}) joined over {}",
        guest.peer,
        guest.pid,
        path.display()
    );
    let (mut tx, mut rx) = guest.link.split();
    codec::send(&mut tx, &Postcard, &Request::Add(2, 3)).await?;
    let reply: Reply = Postcard.decode(&rx.recv().await?.ok_or("guest closed")?)?;
    println!("[hub] guest answered {reply:?}");
    tx.close().await?;
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    println!("[hub] guest exited: {status}");
    Ok(())
}

/// Guest mode of `hub_exchange`: join the hub named in the environment and serve.
async fn hub_guest() -> Result<(), Box<dyn std::error::Error>> {
    use actix_tether::shm::hub::ShmConnector;
    let link = ShmConnector::from_env()?.join().await?;
    serve(link.into()).await?;
    Ok(())
}

// ---- 5. the same with supervised actors: the link heals itself ----

/// Section 5: the stable session of section 4, this time as actors. The client side is a
/// `StableSession` actor, the server side a `StableRegistry` actor behind an ordinary
/// `Acceptor`; both run under actix `Supervisor`s. When a link dies the session actor
/// stops, its supervisor restarts it, and the restart reconnects, runs the resume handshake
/// and replays what the peer had not acknowledged. The application actors below contain no
/// reconnect code at all: they only send, receive and count.
mod supervised {
    use std::cmp::Ordering;
    use std::error::Error;
    use std::time::{Duration, Instant};

    use actix::prelude::*;
    use actix_tether::actors::registry::{RegistryStats, SessionWiring, StableRegistry};
    use actix_tether::actors::session::{
        Incoming, Outgoing, SessionOptions, StableEvent, StableSession,
    };
    use actix_tether::actors::{Acceptor, ActorConfig, Shutdown};
    use actix_tether::endpoint::Endpoint;
    use actix_tether::links::fault::{FaultPlan, FaultySource};
    use actix_tether::stable::driver::SessionEvent;
    use serde::{Deserialize, Serialize};
    use tokio::sync::{mpsc, watch};

    /// Notes each side sends.
    const N: u32 = 5_000;
    /// How long the exchange may take before the tour gives up (it takes well under a
    /// second, even in a debug build).
    const DEADLINE: Duration = Duration::from_secs(30);

    /// The typed message both sides exchange.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        n: u32,
        text: String,
    }

    fn note(from: &str, n: u32) -> Note {
        Note {
            n,
            text: format!("{from} note #{n}"),
        }
    }

    /// What one side's application actor has seen so far.
    #[derive(Debug, Default, Clone)]
    struct Tally {
        /// Notes delivered to the application.
        received: u32,
        /// The note expected next (notes must arrive as 0, 1, 2, ...).
        next: u32,
        /// Notes skipped over (never delivered before a later one).
        lost: u32,
        /// Notes delivered again, or after a later one.
        duplicated: u32,
        /// Notes whose content was not what the sender sent.
        garbled: u32,
        /// `LinkLost` events: a link died and the session actor stopped.
        links_lost: u32,
        /// `Reconnecting` events: each comes from a client actor the supervisor just
        /// restarted, about to reconnect.
        reconnecting: u32,
        /// `Resumed` events: the session goes on over a new link.
        resumed: u32,
        /// `SessionLost` or `Refused`: the session is gone for good.
        session_lost: bool,
    }

    /// The application actor of one side: receives the peer's notes, checks that each one
    /// arrives exactly once and in order, and counts the session's events. It publishes its
    /// tally through a watch channel so the tour can wait for it.
    struct Peer {
        /// Who sends the notes this actor receives.
        peer: &'static str,
        tally: watch::Sender<Tally>,
    }

    impl Actor for Peer {
        type Context = Context<Self>;
    }

    impl Handler<Incoming<Note>> for Peer {
        type Result = ();

        fn handle(&mut self, Incoming(got): Incoming<Note>, _: &mut Context<Self>) {
            let expected = note(self.peer, got.n);
            self.tally.send_modify(|t| {
                t.received += 1;
                if got != expected {
                    t.garbled += 1;
                }
                match got.n.cmp(&t.next) {
                    Ordering::Equal => t.next += 1,
                    Ordering::Less => t.duplicated += 1,
                    Ordering::Greater => {
                        t.lost += got.n - t.next;
                        t.next = got.n + 1;
                    }
                }
            });
        }
    }

    impl Handler<StableEvent> for Peer {
        type Result = ();

        fn handle(&mut self, StableEvent(event): StableEvent, _: &mut Context<Self>) {
            self.tally.send_modify(|t| match event {
                SessionEvent::LinkLost { .. } => t.links_lost += 1,
                SessionEvent::Reconnecting { .. } => t.reconnecting += 1,
                SessionEvent::Resumed { .. } => t.resumed += 1,
                SessionEvent::SessionLost { .. } | SessionEvent::Refused { .. } => {
                    t.session_lost = true
                }
                _ => {}
            });
        }
    }

    /// Sends notes `0..N` through a session actor. Each `send` resolves once the note is in
    /// the session's replay buffer (from there it is delivered exactly once); while the
    /// buffer is full it waits: backpressure, never a silent drop. `do_send` would bypass
    /// the mailbox bound, so it is not used.
    async fn send_notes(
        session: Addr<StableSession<Note>>,
        from: &'static str,
    ) -> Result<(), Box<dyn Error>> {
        for n in 0..N {
            session.send(Outgoing(note(from, n))).await??;
        }
        Ok(())
    }

    /// Waits until a side has received every note (or its session was lost) and returns
    /// its tally.
    async fn all_received(seen: &mut watch::Receiver<Tally>) -> Result<Tally, Box<dyn Error>> {
        Ok(seen
            .wait_for(|t| t.next >= N || t.session_lost)
            .await?
            .clone())
    }

    pub async fn exchange() -> Result<(), Box<dyn Error>> {
        let started = Instant::now();
        let config = super::stable_config();

        // Server: a registry of stable sessions. For each new session it asks where the
        // session's notes and events go: to a `Peer` actor of its own. The session's `Addr`
        // stays the same whatever number of links the session goes through.
        let (sessions_tx, mut sessions) = mpsc::unbounded_channel();
        let registry = StableRegistry::new(
            config.clone(),
            SessionOptions::default(),
            move |session: Addr<StableSession<Note>>| {
                let (tally, seen) = watch::channel(Tally::default());
                let peer = Peer {
                    peer: "client",
                    tally,
                }
                .start();
                let _ = sessions_tx.send((session, seen));
                SessionWiring {
                    recipient: peer.clone().recipient(),
                    events: Some(peer.recipient()),
                }
            },
        )?
        .start();
        // The registry takes the connections of an ordinary `Acceptor` (and its errors).
        let (acceptor, bound) = Acceptor::listen(
            &Endpoint::parse("tcp://127.0.0.1:0")?,
            registry.clone().recipient(),
            registry.clone().recipient(),
            &ActorConfig::default(),
        )
        .await?;
        let tag = format!("[stable actors {bound}]");

        // Client: its links come from the fault injector, which kills each one once the
        // client has sent 2-6 KB on it (the server's notes die with it).
        let source = FaultySource::new(
            bound.clone(),
            FaultPlan::new(5).kill_after_bytes_between(2_000, 6_000),
        );
        let faults = source.stats();
        let (tally, mut client_seen) = watch::channel(Tally::default());
        let client_peer = Peer {
            peer: "server",
            tally,
        }
        .start();
        // Started under a `Supervisor`: this is all the "reconnect code" there is.
        let client = StableSession::start_client(
            source,
            config,
            SessionOptions::default(),
            client_peer.clone().recipient(),
            Some(client_peer.recipient()),
        )?;

        // Both sides send at once: the client from one task, the server's session from
        // another, as soon as the registry has created it.
        let upstream = actix::spawn(send_notes(client.clone(), "client"));
        let (server, mut server_seen) = sessions.recv().await.ok_or("the registry stopped")?;
        let downstream = actix::spawn(send_notes(server.clone(), "server"));

        let (at_server, at_client) = tokio::time::timeout(DEADLINE, async {
            let at_server = all_received(&mut server_seen).await?;
            all_received(&mut client_seen).await?;
            upstream.await??;
            downstream.await??;
            // A kill can also hit a link that only carries acks, after the last note:
            // wait until the client has resumed after every kill. (Events reach `Peer`
            // through its mailbox, so they may trail the notes.)
            let at_client = client_seen
                .wait_for(|t| u64::from(t.resumed) >= faults.kills() || t.session_lost)
                .await?
                .clone();
            Ok::<_, Box<dyn Error>>((at_server, at_client))
        })
        .await
        .map_err(|_| {
            format!(
                "{tag} not done after {DEADLINE:?}: {at:?}",
                at = client_seen.borrow().clone()
            )
        })??;
        let server_stats = registry.send(RegistryStats).await?;
        acceptor.send(Shutdown).await?;

        for (direction, t) in [
            ("client -> server", &at_server),
            ("server -> client", &at_client),
        ] {
            println!(
                "{tag} {direction}: {N} sent, {} received, {} lost, {} duplicated",
                t.received, t.lost, t.duplicated
            );
        }
        let kills = faults.kills();
        println!(
            "{tag} {kills} links killed, {} reported lost, {} resumes; the supervisor restarted \
             the client actor {} times",
            at_client.links_lost, at_client.resumed, at_client.reconnecting,
        );
        println!(
            "{tag} the server's registry created {} session and resumed it {} times; {:.0?} in all",
            server_stats.sessions,
            server_stats.resumes,
            started.elapsed()
        );

        // Fail loudly unless both sides got every note exactly once, in order, intact.
        for (side, t) in [("server", &at_server), ("client", &at_client)] {
            if t.session_lost {
                return Err(format!("{tag} the {side}'s session was lost").into());
            }
            if t.received != N || t.lost != 0 || t.duplicated != 0 || t.garbled != 0 {
                return Err(format!(
                    "{tag} the {side} did not get every note exactly once, in order: {t:?}"
                )
                .into());
            }
        }
        if kills == 0 || u64::from(at_client.resumed) < kills {
            return Err(
                format!("{tag} {kills} links killed, {} resumes", at_client.resumed).into(),
            );
        }
        if server_stats.sessions != 1 {
            return Err(format!(
                "{tag} the registry created {} sessions, not 1",
                server_stats.sessions
            )
            .into());
        }
        Ok(())
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return shm_child().await;
    }
    if std::env::var_os(actix_tether::shm::hub::HUB_TOKEN_ENV).is_some() {
        return hub_guest().await;
    }
    println!("== actix-tether tour ==");
    println!(
        "-- 1. links over TCP, a Unix socket and an in-process name, typed messages both ways --"
    );
    exchange("tcp://127.0.0.1:0").await?;
    let dir = std::env::temp_dir().join(format!("tether-tour-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let unix = format!("unix://{}", dir.join("tour.sock").display());
    let result = exchange(&unix).await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    exchange("inproc://tour").await?;

    println!("-- 2. typed actors: Acceptor, LinkWriter, LinkReader over inproc and TCP --");
    actor_exchange("inproc://tour-actors").await?;
    actor_exchange("tcp://127.0.0.1:0").await?;

    println!("-- 3. a zero-copy shared-memory link to a child process --");
    shm_exchange().await?;
    hub_exchange().await?;

    println!("-- 4. a stable session: exactly once, in order, while its link keeps dying --");
    stable_exchange().await?;
    println!("   (cargo run --example reconnect runs the same under a chaos loop, both ways)");

    println!(
        "-- 5. the same with supervised actors: the link heals with no code in the application --"
    );
    supervised::exchange().await?;
    println!("== tour finished ==");
    Ok(())
}
