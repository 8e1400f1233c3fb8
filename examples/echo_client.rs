//! Echo client on the actor layer: sends each word of the command line as a message and
//! prints the echoes.
//!
//! ```text
//! cargo run --example echo_client -- tcp://127.0.0.1:7000 hello actix tether
//! cargo run --example echo_client -- unix:///tmp/tether-echo.sock hello
//! ```

use std::time::Duration;

use actix::prelude::*;
use actix_tether::actors::{self, Close, Received};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The message both examples exchange.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    seq: u64,
    text: String,
}

/// Prints the echoes; signals when all of them arrived.
struct Printer {
    remaining: usize,
    done: Option<oneshot::Sender<()>>,
}

impl Actor for Printer {
    type Context = Context<Self>;
}

impl Handler<Received<Line>> for Printer {
    type Result = ();

    fn handle(&mut self, echo: Received<Line>, _: &mut Context<Self>) {
        println!("echo #{}: {}", echo.msg.seq, echo.msg.text);
        self.remaining = self.remaining.saturating_sub(1);
        if self.remaining == 0 {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "tcp://127.0.0.1:7000".to_string())
        .parse()?;
    let mut words: Vec<String> = args.collect();
    if words.is_empty() {
        words = vec!["hello".into(), "from".into(), "actix-tether".into()];
    }

    let (done, all_echoed) = oneshot::channel();
    let printer = Printer {
        remaining: words.len(),
        done: Some(done),
    }
    .start();
    let writer = actors::connect::<Line, Line>(&endpoint, printer.recipient()).await?;
    for (seq, text) in words.into_iter().enumerate() {
        // `send().await` returns once the message is committed to the link; a full link
        // makes it wait (backpressure) instead of queueing without bound.
        writer
            .send(actors::Send(Line {
                seq: seq as u64,
                text,
            }))
            .await??;
    }
    match tokio::time::timeout(Duration::from_secs(10), all_echoed).await {
        Ok(_) => println!("all echoes received"),
        Err(_) => eprintln!("gave up waiting for the echoes"),
    }
    writer.send(Close).await??; // flush, then close our sending direction
    Ok(())
}
