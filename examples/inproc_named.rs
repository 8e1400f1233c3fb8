//! In-process named endpoints with actors: a service bound to `inproc://greeter` on its own
//! Arbiter (thread), and clients on the main Arbiter that reach it by name. Each client
//! gets its own link, so replies never cross.
//!
//! ```text
//! cargo run --example inproc_named
//! ```

use actix::prelude::*;
use actix_tether::actors::{
    self, AcceptError, Acceptor, ActorConfig, Close, Incoming, LinkWriter, Received,
};
use actix_tether::endpoint::{self, Endpoint};
use actix_tether::links::inproc;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Greeting {
    text: String,
}

/// The service: one `Greeter` session per connection.
struct Service;

impl Actor for Service {
    type Context = Context<Self>;
}

impl Handler<Incoming> for Service {
    type Result = ();

    fn handle(&mut self, incoming: Incoming, _: &mut Context<Self>) {
        Greeter::create(|ctx| Greeter {
            writer: incoming.accept(ctx.address().recipient()),
        });
    }
}

impl Handler<AcceptError> for Service {
    type Result = ();

    fn handle(&mut self, e: AcceptError, _: &mut Context<Self>) {
        eprintln!("accept failed: {}", e.error);
    }
}

struct Greeter {
    writer: Addr<LinkWriter<Greeting>>,
}

impl Actor for Greeter {
    type Context = Context<Self>;
}

impl Handler<Received<Hello>> for Greeter {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, hello: Received<Hello>, _: &mut Context<Self>) -> Self::Result {
        let writer = self.writer.clone();
        let text = format!(
            "hello {}, from {:?}",
            hello.msg.name,
            std::thread::current().name().unwrap_or("?")
        );
        AtomicResponse::new(Box::pin(
            async move {
                let _ = writer.send(actors::Send(Greeting { text })).await;
            }
            .into_actor(self),
        ))
    }
}

/// A client's inbox: forwards greetings to `main`.
struct Inbox(mpsc::UnboundedSender<(String, String)>, String);

impl Actor for Inbox {
    type Context = Context<Self>;
}

impl Handler<Received<Greeting>> for Inbox {
    type Result = ();

    fn handle(&mut self, g: Received<Greeting>, _: &mut Context<Self>) {
        let _ = self.0.send((self.1.clone(), g.msg.text));
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name: Endpoint = "inproc://greeter".parse()?;

    // The service runs on its own Arbiter (its own thread).
    let service_arbiter = Arbiter::new();
    let listener = endpoint::listen(&name).await?;
    let service = Service::start_in_arbiter(&service_arbiter.handle(), |_| Service);
    let incoming = service.clone().recipient();
    let errors = service.recipient();
    let _acceptor = Acceptor::start_in_arbiter(&service_arbiter.handle(), move |_| {
        Acceptor::new(listener, incoming, errors, &ActorConfig::default())
    });
    println!("bound names: {:?}", inproc::bound_names());

    // Three clients on the main Arbiter, each with its own link and its own replies.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for who in ["ada", "grace", "linus"] {
        let inbox = Inbox(tx.clone(), who.to_string()).start();
        let writer = actors::connect::<Hello, Greeting>(&name, inbox.recipient()).await?;
        writer
            .send(actors::Send(Hello { name: who.into() }))
            .await??;
        writers.push(writer);
    }
    for _ in 0..writers.len() {
        let (client, text) = rx.recv().await.ok_or("inbox closed")?;
        println!("{client} got: {text}");
    }
    for writer in writers {
        writer.send(Close).await??;
    }
    service_arbiter.stop();
    Ok(())
}
