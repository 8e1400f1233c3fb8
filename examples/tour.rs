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

async fn stable_exchange() -> Result<(), Box<dyn std::error::Error>> {
    use actix_tether::links::fault::{FaultPlan, FaultySource};
    use actix_tether::stable::driver::{DriverConfig, StableClient, StableServer};
    use actix_tether::stable::{ReconnectPolicy, StableConfig};

    const N: u64 = 5_000;
    let config = StableConfig {
        reconnect: ReconnectPolicy {
            initial_delay: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(20),
            ..Default::default()
        },
        ..Default::default()
    };
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
    let stats = ctx.stats();
    println!(
        "[stable {bound}] {} links killed, {} resumes, {} items replayed",
        faults.kills(),
        stats.session.resumes,
        stats.session.items_replayed
    );
    println!("[stable {bound}] {N} sent, {next} received, {lost} lost, {duplicated} duplicated");
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
    println!("== tour finished ==");
    Ok(())
}
