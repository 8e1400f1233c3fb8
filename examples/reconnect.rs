//! Two stable sessions exchange messages over TCP while a chaos loop keeps killing their
//! link. Every kill is followed by a reconnect, a resume handshake and a replay of what the
//! peer had not acknowledged; at the end each side checks that it received every message
//! exactly once and in order.
//!
//! ```text
//! cargo run --example reconnect [messages-each-way]     # default 200000
//! ```
//!
//! The chaos loop kills the current link every 1–10 ms, so the number of kills depends on
//! how long the exchange takes (a release build kills fewer links than a debug build).

use std::error::Error;
use std::time::Duration;

use actix_tether::codec::{Codec, Postcard};
use actix_tether::endpoint;
use actix_tether::links::fault::{FaultPlan, FaultySource};
use actix_tether::stable::driver::{
    DriverConfig, SessionEvent, StableClient, StableReceiver, StableSender, StableServer,
};
use actix_tether::stable::{RandomSource, ReconnectPolicy, SplitMix64, StableConfig};

/// What the two sides send: a counter and a little text.
type Msg = (u64, String);

/// Sends `n` messages.
async fn send_all(
    tx: StableSender,
    n: u64,
    who: &'static str,
) -> Result<StableSender, Box<dyn Error + Send + Sync>> {
    for i in 0..n {
        let msg: Msg = (i, format!("{who} #{i}"));
        tx.send(Postcard.encode_to_vec(&msg)?).await?;
    }
    Ok(tx)
}

/// Receives `n` messages and counts gaps (lost) and repeats (duplicated).
async fn receive_all(
    mut rx: StableReceiver,
    n: u64,
) -> Result<(u64, u64, u64), Box<dyn Error + Send + Sync>> {
    let (mut received, mut lost, mut duplicated, mut next) = (0, 0, 0, 0);
    while next < n {
        let (i, _text): Msg = Postcard.decode(&rx.recv().await?)?;
        received += 1;
        if i < next {
            duplicated += 1;
        } else {
            lost += i - next;
            next = i + 1;
        }
    }
    Ok((received, lost, duplicated))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let config = StableConfig {
        reconnect: ReconnectPolicy {
            initial_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(50),
            ..Default::default()
        },
        ..Default::default()
    };

    // Server: a registry of sessions behind a TCP listener.
    let listener = endpoint::listen(&"tcp://127.0.0.1:0".parse()?).await?;
    let ep = listener.local_endpoint();
    let (server, mut sessions) = StableServer::new(config.clone(), DriverConfig::default())?;
    tokio::spawn(server.clone().serve(listener));

    // Client: every link it makes goes through the fault injector, so the chaos loop can
    // kill it at any moment.
    let source = FaultySource::new(ep.clone(), FaultPlan::new(42));
    let killer = source.killer();
    let faults = source.stats();
    let mut client = StableClient::connect(source, config, DriverConfig::default())?;
    let mut events = client.take_events().ok_or("events already taken")?;
    let server_side = sessions.accept().await.ok_or("server stopped")?;
    println!("session up: client <-> {ep}");

    let printer = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                SessionEvent::LinkLost { reason } => println!("  link lost: {reason}"),
                SessionEvent::Reconnecting { attempt, delay } => {
                    println!("  reconnecting (attempt {attempt}, after {delay:?})")
                }
                SessionEvent::Resumed { replayed } => {
                    println!("  resumed: replaying {replayed} unacknowledged messages")
                }
                SessionEvent::SessionLost { unacked } => {
                    println!("  SESSION LOST ({unacked} unacknowledged)")
                }
                other => println!("  {other:?}"),
            }
        }
    });

    let chaos = tokio::spawn(async move {
        let mut rng = SplitMix64::new(7);
        loop {
            let pause = 1 + rng.below_or_eq(9);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if killer.kill() {
                println!("chaos: killed the link");
            }
        }
    });

    let (ctx, crx) = client.split();
    let (stx, srx) = server_side.split();
    let c_send = tokio::spawn(send_all(ctx, n, "client"));
    let s_send = tokio::spawn(send_all(stx, n, "server"));
    let c_recv = tokio::spawn(receive_all(crx, n));
    let s_recv = tokio::spawn(receive_all(srx, n));
    let (c_got, c_lost, c_dup) = c_recv.await??;
    let (s_got, s_lost, s_dup) = s_recv.await??;
    let client_tx = c_send.await??;
    let server_tx = s_send.await??;
    chaos.abort();
    printer.abort();
    let (c, s) = (client_tx.stats().session, server_tx.stats().session);
    let resumes = c.resumes;
    let replayed = c.items_replayed + s.items_replayed;

    println!();
    println!(
        "links killed: {}, resumes: {resumes}, messages replayed: {replayed}",
        faults.kills()
    );
    println!("client -> server: {n} sent, {s_got} received, {s_lost} lost, {s_dup} duplicated");
    println!("server -> client: {n} sent, {c_got} received, {c_lost} lost, {c_dup} duplicated");
    let (sent, received, lost, duplicated) = (2 * n, s_got + c_got, s_lost + c_lost, s_dup + c_dup);
    println!("{sent} sent, {received} received, {lost} lost, {duplicated} duplicated");
    if lost != 0 || duplicated != 0 || received != sent {
        return Err("delivery was not exactly-once".into());
    }
    Ok(())
}
