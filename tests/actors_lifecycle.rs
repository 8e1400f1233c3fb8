//! What stops each actor and what does not: per-message errors keep the writer, a failed
//! link stops it with the message handed back, refusing closes the connection, `Shutdown`
//! unbinds, a gone recipient stops the reader.

#![cfg(feature = "actors")]

mod actors_support;

use actix::prelude::*;
use actix_tether::actors::{
    self, AcceptError, Acceptor, ActorConfig, ActorError, DownReason, Incoming, LinkEvent,
    LinkOptions, Received, Send, Shutdown, Side,
};
use actix_tether::codec::Postcard;
use actix_tether::endpoint::{self, Endpoint};
use actix_tether::links::{send_bytes, Link, LinkError, LinkRx};
use actors_support::*;
use tokio::sync::mpsc;

async fn writer_down(events: &mut mpsc::UnboundedReceiver<LinkEvent>) -> DownReason {
    loop {
        if let LinkEvent::Down(d) = guard("events", events.recv()).await.unwrap() {
            if d.side == Side::Writer {
                return d.reason;
            }
        }
    }
}

/// A message above the link's maximum is refused and handed back; the writer keeps going.
#[actix::test]
async fn too_large_is_handed_back_and_writer_keeps_working() {
    let listener = endpoint::listen(&"tcp://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (collector, _msgs, _events) = Collector::<String>::start();
    let writer =
        actors::connect::<String, String>(&listener.local_endpoint(), collector.recipient())
            .await
            .unwrap();
    let (_ptx, mut prx) = listener.accept().await.unwrap().split();

    let huge = "x".repeat(17 * 1024 * 1024); // default maximum: 16 MiB
    let err = writer.send(Send(huge.clone())).await.unwrap().unwrap_err();
    assert!(
        matches!(err.error, ActorError::Link(LinkError::TooLarge { .. })),
        "{err}"
    );
    assert!(!err.is_fatal());
    assert_eq!(err.into_message(), huge);

    writer.send(Send("after".into())).await.unwrap().unwrap();
    let bytes = guard("recv", prx.recv()).await.unwrap().unwrap();
    let got: String = actix_tether::codec::Codec::decode(&Postcard, &bytes).unwrap();
    assert_eq!(got, "after");
}

/// The peer goes away: a later `Send` fails with the link's error and gets its message
/// back, the writer stops with `Down(Writer, Error)`, and later sends fail.
#[actix::test]
async fn link_failure_stops_writer_and_hands_message_back() {
    let listener = endpoint::listen(&"tcp://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (collector, _msgs, mut events) = Collector::<String>::start();
    let link = actors::connect_with::<String, String, Postcard>(
        &listener.local_endpoint(),
        collector.clone().recipient(),
        LinkOptions::default().events(collector.recipient()),
    )
    .await
    .unwrap();
    drop(listener.accept().await.unwrap()); // the peer closes at once

    let failed = guard("failure", async {
        for i in 0.. {
            match link.writer.send(Send(format!("m{i}"))).await.unwrap() {
                Ok(()) => {}
                Err(e) => return (i, e),
            }
        }
        unreachable!()
    })
    .await;
    let (i, err) = failed;
    assert!(err.is_fatal(), "{err}");
    assert!(matches!(err.error, ActorError::Link(_)), "{err}");
    assert_eq!(err.message, format!("m{i}"));
    assert!(matches!(
        writer_down(&mut events).await,
        DownReason::Error(ActorError::Link(_))
    ));
    assert!(link.writer.send(Send("late".into())).await.is_err());
}

/// Acceptor that refuses every connection and reports what it saw.
struct Refuser {
    seen: mpsc::UnboundedSender<Endpoint>,
}
impl Actor for Refuser {
    type Context = Context<Self>;
}
impl Handler<Incoming> for Refuser {
    type Result = ();
    fn handle(&mut self, incoming: Incoming, _: &mut Context<Self>) {
        let _ = self.seen.send(incoming.local_endpoint().clone());
        incoming.refuse();
    }
}
impl Handler<AcceptError> for Refuser {
    type Result = ();
    fn handle(&mut self, e: AcceptError, _: &mut Context<Self>) {
        panic!("unexpected accept error: {}", e.error);
    }
}

/// A refused connection is closed (the client's reader sees the end); `Shutdown` unbinds
/// the endpoint so later connects fail.
async fn refuse_then_shutdown(endpoint: &str) {
    let (seen, mut seen_rx) = mpsc::unbounded_channel();
    let refuser = Refuser { seen }.start();
    let (acceptor, ep) = Acceptor::listen(
        &endpoint.parse().unwrap(),
        refuser.clone().recipient(),
        refuser.recipient(),
        &ActorConfig::default(),
    )
    .await
    .unwrap();

    let (collector, _msgs, mut events) = Collector::<String>::start();
    let _link = actors::connect_with::<String, String, Postcard>(
        &ep,
        collector.clone().recipient(),
        LinkOptions::default().events(collector.clone().recipient()),
    )
    .await
    .unwrap();
    assert_eq!(guard("incoming", seen_rx.recv()).await.unwrap(), ep);
    loop {
        if let LinkEvent::Down(d) = guard("reader down", events.recv()).await.unwrap() {
            if d.side == Side::Reader {
                // TCP may report the refusal as a reset rather than a clean end.
                assert!(
                    matches!(d.reason, DownReason::PeerClosed | DownReason::Error(_)),
                    "{d:?}"
                );
                break;
            }
        }
    }

    acceptor.send(Shutdown).await.unwrap();
    assert!(!acceptor.connected() || acceptor.send(Shutdown).await.is_err());
    let err = actors::connect::<String, String>(&ep, collector.recipient()).await;
    assert!(
        matches!(err, Err(ActorError::Endpoint(_))),
        "connect after Shutdown: {:?}",
        err.map(|_| ())
    );
}

#[actix::test]
async fn refuse_then_shutdown_tcp() {
    refuse_then_shutdown("tcp://127.0.0.1:0").await;
}

#[actix::test]
async fn refuse_then_shutdown_unix() {
    refuse_then_shutdown(&unix_endpoint("refuse")).await;
}

#[actix::test]
async fn refuse_then_shutdown_inproc() {
    refuse_then_shutdown("inproc://actors-refuse").await;
}

/// Stops after its first message.
struct OneShot;
impl Actor for OneShot {
    type Context = Context<Self>;
}
impl Handler<Received<String>> for OneShot {
    type Result = ();
    fn handle(&mut self, _: Received<String>, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// The recipient stops: the reader stops with `RecipientGone` at its next message.
#[actix::test]
async fn recipient_gone_stops_reader() {
    let listener = endpoint::listen(&"inproc://actors-gone".parse().unwrap())
        .await
        .unwrap();
    let (collector, _msgs, mut events) = Collector::<String>::start();
    let _link = actors::connect_with::<String, String, Postcard>(
        &listener.local_endpoint(),
        OneShot.start().recipient(),
        LinkOptions::default().events(collector.recipient()),
    )
    .await
    .unwrap();
    let (mut ptx, _prx) = listener.accept().await.unwrap().split();
    let encode = |s: &str| actix_tether::codec::Codec::encode_to_vec(&Postcard, s).unwrap();
    send_bytes(&mut ptx, &encode("first")).await.unwrap();
    loop {
        // Keep sending until the reader notices the recipient is gone.
        let sent = send_bytes(&mut ptx, &encode("more")).await;
        match guard("events", events.recv()).await.unwrap() {
            LinkEvent::Down(d) if d.side == Side::Reader => {
                assert!(matches!(d.reason, DownReason::RecipientGone), "{d:?}");
                break;
            }
            _ => assert!(sent.is_ok()),
        }
    }
}

/// A reader stopped with `Shutdown` reports `Stopped`.
#[actix::test]
async fn shutdown_stops_reader() {
    let listener = endpoint::listen(&"inproc://actors-shutdown-reader".parse().unwrap())
        .await
        .unwrap();
    let (collector, _msgs, mut events) = Collector::<String>::start();
    let link = actors::connect_with::<String, String, Postcard>(
        &listener.local_endpoint(),
        collector.clone().recipient(),
        LinkOptions::default().events(collector.recipient()),
    )
    .await
    .unwrap();
    let _peer = listener.accept().await.unwrap();
    link.reader.send(Shutdown).await.unwrap();
    loop {
        if let LinkEvent::Down(d) = guard("events", events.recv()).await.unwrap() {
            assert_eq!(d.side, Side::Reader);
            assert!(matches!(d.reason, DownReason::Stopped), "{d:?}");
            break;
        }
    }
}

/// `SendAll` commits in order up to a failing message, hands back that one and the rest,
/// and (for a per-message error) leaves the writer working.
#[actix::test]
async fn send_all_stops_at_first_error_and_hands_back_the_rest() {
    let listener = endpoint::listen(&unix_endpoint("sendall").parse().unwrap())
        .await
        .unwrap();
    let (collector, _msgs, _events) = Collector::<String>::start();
    let writer =
        actors::connect::<String, String>(&listener.local_endpoint(), collector.recipient())
            .await
            .unwrap();
    let (_ptx, mut prx) = listener.accept().await.unwrap().split();

    let huge = "x".repeat(17 * 1024 * 1024);
    let batch = vec![
        "a".to_string(),
        "b".to_string(),
        huge.clone(),
        "c".to_string(),
    ];
    let err = writer
        .send(actors::SendAll(batch))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.committed, 2);
    assert_eq!(err.unsent, vec![huge, "c".to_string()]);
    assert!(matches!(
        err.error,
        ActorError::Link(LinkError::TooLarge { .. })
    ));
    assert!(!err.is_fatal());

    let many: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    writer
        .send(actors::SendAll(many.clone()))
        .await
        .unwrap()
        .unwrap();
    writer.send(actors::Close).await.unwrap().unwrap();
    let mut got = Vec::new();
    while let Some(bytes) = guard("recv", prx.recv()).await.unwrap() {
        got.push(actix_tether::codec::Codec::decode::<String>(&Postcard, &bytes).unwrap());
    }
    let want: Vec<String> = ["a", "b"]
        .iter()
        .map(|s| s.to_string())
        .chain(many)
        .collect();
    assert_eq!(got, want);
}
