//! A tour of actix-tether: run with `cargo run --example tour`.
//!
//! Self-contained: everything runs on loopback inside this process.

use actix_tether::codec::{self, Codec, Postcard};
use actix_tether::endpoint::{self, Endpoint};
use actix_tether::links::{Link, LinkError, LinkRx, LinkTx, Permit};
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    println!("== tour finished ==");
    Ok(())
}
