//! Echo server on the actor layer: every connection gets its own session actor that sends
//! each message back.
//!
//! ```text
//! cargo run --example echo_server -- tcp://127.0.0.1:7000
//! cargo run --example echo_server -- unix:///tmp/tether-echo.sock
//! ```
//!
//! Then run `echo_client` against the same endpoint. Ctrl-C stops the server.

use actix::prelude::*;
use actix_tether::actors::{
    self, AcceptError, Acceptor, ActorConfig, Incoming, LinkEvent, LinkOptions, LinkWriter,
    Received, Shutdown,
};
use actix_tether::codec::Postcard;
use serde::{Deserialize, Serialize};

/// The message both examples exchange.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    seq: u64,
    text: String,
}

/// Accepts every connection, starting a [`Session`] for it; prints link events.
struct Server;

impl Actor for Server {
    type Context = Context<Self>;
}

impl Handler<Incoming> for Server {
    type Result = ();

    fn handle(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        let events = ctx.address().recipient();
        Session::create(|session| {
            let link = incoming.accept_with::<Line, Line, Postcard>(
                session.address().recipient(),
                LinkOptions::default().events(events),
            );
            Session {
                writer: link.writer,
            }
        });
    }
}

impl Handler<AcceptError> for Server {
    type Result = ();

    fn handle(&mut self, e: AcceptError, _: &mut Context<Self>) {
        eprintln!("accept failed (will retry): {}", e.error);
    }
}

impl Handler<LinkEvent> for Server {
    type Result = ();

    fn handle(&mut self, event: LinkEvent, _: &mut Context<Self>) {
        match event {
            LinkEvent::Up(up) => println!("{} up", up.link),
            LinkEvent::Down(down) => {
                println!("{} {:?} down: {:?}", down.link, down.side, down.reason)
            }
            LinkEvent::FrameRejected(r) => println!("{} rejected a frame: {}", r.link, r.reason),
            other => println!("{other:?}"),
        }
    }
}

/// One connection: echoes each message, waiting for the writer to commit it, so a client
/// that does not read slows this session down instead of filling memory.
struct Session {
    writer: Addr<LinkWriter<Line>>,
}

impl Actor for Session {
    type Context = Context<Self>;
}

impl Handler<Received<Line>> for Session {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Received<Line>, _: &mut Context<Self>) -> Self::Result {
        let writer = self.writer.clone();
        AtomicResponse::new(Box::pin(
            async move {
                if let Ok(Err(e)) = writer.send(actors::Send(msg.msg)).await {
                    eprintln!("echo not sent: {e}");
                }
            }
            .into_actor(self),
        ))
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:7000".to_string())
        .parse()?;
    let server = Server.start();
    let (acceptor, local) = Acceptor::listen(
        &endpoint,
        server.clone().recipient(),
        server.recipient(),
        &ActorConfig::default(),
    )
    .await?;
    println!("echo server listening on {local} (Ctrl-C to stop)");
    tokio::signal::ctrl_c().await?;
    acceptor.send(Shutdown).await?;
    println!("stopped");
    Ok(())
}
