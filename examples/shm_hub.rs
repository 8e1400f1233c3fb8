//! A shared-memory hub with guest processes: the hub spawns N copies of this program in
//! guest mode, every guest sends typed messages over shared memory, the hub echoes them,
//! and the hub prints how many messages each guest sent and why it left.
//!
//! ```text
//! cargo run --example shm_hub -- [guests (default 4)] [messages per guest (default 1000)]
//! ```
//!
//! Guest mode is selected by the environment the hub sets when it spawns a guest
//! ([`HUB_PATH_ENV`], [`HUB_TOKEN_ENV`]); the guest joins with
//! [`ShmConnector::from_env`].

use std::collections::HashMap;
use std::process::Command;

use actix::prelude::*;
use actix_tether::actors::{
    self, Close, HubPeerEvent, Incoming, LinkId, LinkOptions, LinkWriter, Received, ShmHub,
    SpawnGuest,
};
use actix_tether::codec::Postcard;
use actix_tether::shm::hub::{HubConfig, ShmConnector, HUB_PATH_ENV, HUB_TOKEN_ENV};
use serde::{Deserialize, Serialize};

/// The typed message both sides exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Greeting {
    from: u32,
    n: u64,
    text: String,
}

// ------------------------------------------------------------------------------ hub side

/// Echoes every greeting and counts them per guest.
struct Echo {
    writers: HashMap<LinkId, Addr<LinkWriter<Greeting>>>,
    counts: HashMap<u32, u64>,
    guests: usize,
    left: usize,
}

impl Actor for Echo {
    type Context = Context<Self>;
}

impl Handler<Incoming> for Echo {
    type Result = ();
    fn handle(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        let id = incoming.id();
        let link = incoming.accept_with::<Greeting, Greeting, Postcard>(
            ctx.address().recipient(),
            LinkOptions::default(),
        );
        self.writers.insert(id, link.writer);
    }
}

impl Handler<Received<Greeting>> for Echo {
    type Result = ();
    fn handle(&mut self, r: Received<Greeting>, _: &mut Context<Self>) {
        *self.counts.entry(r.msg.from).or_default() += 1;
        if let Some(writer) = self.writers.get(&r.link) {
            writer.do_send(actors::Send(r.msg));
        }
    }
}

impl Handler<HubPeerEvent> for Echo {
    type Result = ();
    fn handle(&mut self, event: HubPeerEvent, _: &mut Context<Self>) {
        match event {
            HubPeerEvent::Joined(j) => println!("hub: guest {} (pid {}) joined", j.peer, j.pid),
            HubPeerEvent::Left(l) => {
                let count = self.counts.get(&l.peer.slot()).copied().unwrap_or(0);
                println!(
                    "hub: guest {} left ({:?}) after {count} messages",
                    l.peer, l.reason
                );
                self.left += 1;
                if self.left == self.guests {
                    System::current().stop();
                }
            }
            other => println!("hub: {other:?}"),
        }
    }
}

fn hub_main(guests: usize, messages: u64) -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("tether-shm-hub-{}.sock", std::process::id()));
    let system = System::new();
    let children = system.block_on(async move {
        let echo = Echo {
            writers: HashMap::new(),
            counts: HashMap::new(),
            guests,
            left: 0,
        }
        .start();
        let config = HubConfig {
            max_guests: guests,
            ..Default::default()
        };
        let (hub, _handle) =
            ShmHub::bind(&path, config, echo.clone().recipient(), echo.recipient())?;
        println!("hub: listening on shm://{}", path.display());
        let mut children = Vec::new();
        for _ in 0..guests {
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.arg(guests.to_string()).arg(messages.to_string());
            children.push(hub.send(SpawnGuest(cmd)).await??);
        }
        Ok::<_, Box<dyn std::error::Error>>((hub, children))
    });
    let (hub, children) = children?;
    // Runs until every guest has left (the echo actor stops the system).
    system.run()?;
    drop(hub);
    for mut child in children {
        child.wait()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------- guest side

/// Counts the echoes.
struct Replies {
    expected: u64,
    got: u64,
    done: Option<tokio::sync::oneshot::Sender<u64>>,
}

impl Actor for Replies {
    type Context = Context<Self>;
}

impl Handler<Received<Greeting>> for Replies {
    type Result = ();
    fn handle(&mut self, _: Received<Greeting>, _: &mut Context<Self>) {
        self.got += 1;
        if self.got == self.expected {
            if let Some(done) = self.done.take() {
                let _ = done.send(self.got);
            }
        }
    }
}

fn guest_main(messages: u64) -> Result<(), Box<dyn std::error::Error>> {
    System::new().block_on(async move {
        let joined = ShmConnector::from_env()?.join_with_info().await?;
        let me = joined.peer_id;
        let (done, echoed) = tokio::sync::oneshot::channel();
        let replies = Replies {
            expected: messages,
            got: 0,
            done: Some(done),
        }
        .start();
        let link = actors::spawn_link::<Greeting, Greeting, Postcard, _>(
            joined.link,
            replies.recipient(),
            LinkOptions::default(),
        );
        for n in 0..messages {
            let text = format!("hello #{n} from guest {me}");
            link.writer
                .send(actors::Send(Greeting { from: me, n, text }))
                .await??;
        }
        let got = if messages == 0 { 0 } else { echoed.await? };
        println!("guest {me} (pid {}): {got} echoes", std::process::id());
        // Close our direction: the hub sees a clean departure.
        link.writer.send(Close).await??;
        Ok(())
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let guests: usize = args.next().map_or(Ok(4), |a| a.parse())?;
    let messages: u64 = args.next().map_or(Ok(1000), |a| a.parse())?;
    if std::env::var_os(HUB_PATH_ENV).is_some() && std::env::var_os(HUB_TOKEN_ENV).is_some() {
        guest_main(messages)
    } else {
        hub_main(guests.max(1), messages)
    }
}
