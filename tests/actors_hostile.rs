//! Raw socket peers sending a hostile length prefix or garbage: that link's reader stops
//! with `FrameRejected` and `LinkDown`, nothing panics, and the acceptor and every other
//! link keep working.

#![cfg(feature = "actors")]

mod actors_support;

use std::collections::HashSet;

use actix::prelude::*;
use actix_tether::actors::{self, ActorError, DownReason, LinkEvent, LinkId, Received, Send, Side};
use actix_tether::codec::CodecError;
use actix_tether::endpoint::Endpoint;
use actix_tether::links::LinkError;
use actors_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

fn tcp_addr(ep: &Endpoint) -> String {
    ep.to_string().trim_start_matches("tcp://").to_string()
}

/// Sends `seq` through a client link and waits for its echo.
async fn echo_once(
    writer: &Addr<actors::LinkWriter<Msg>>,
    replies: &mut mpsc::UnboundedReceiver<Received<Msg>>,
    seq: u64,
) {
    writer
        .send(Send(Msg::new(9, seq)))
        .await
        .unwrap()
        .expect("committed");
    let got = guard("echo", replies.recv()).await.expect("reply");
    assert_eq!(got.msg, Msg::new(9, seq));
}

/// Waits for the rejection of one link: `FrameRejected` then the reader's `Down` with
/// the same error. Returns the rejected link and the reason.
async fn next_rejection(
    events: &mut mpsc::UnboundedReceiver<LinkEvent>,
    good: &HashSet<LinkId>,
) -> (LinkId, ActorError) {
    loop {
        match guard("server events", events.recv()).await.expect("events") {
            LinkEvent::FrameRejected(r) => {
                assert!(!good.contains(&r.link), "a good link was rejected: {r:?}");
                loop {
                    match guard("reader down", events.recv()).await.unwrap() {
                        LinkEvent::Down(d) if d.link == r.link && d.side == Side::Reader => {
                            assert!(matches!(d.reason, DownReason::Error(_)), "{d:?}");
                            return (r.link, r.reason);
                        }
                        LinkEvent::Down(d) => assert!(!good.contains(&d.link), "{d:?}"),
                        _ => {}
                    }
                }
            }
            LinkEvent::Down(d) => assert!(!good.contains(&d.link), "good link down: {d:?}"),
            _ => {}
        }
    }
}

/// The hostile peer's connection is closed by the server after the rejection: reading
/// ends (EOF or reset), it does not hang.
async fn expect_closed(mut sock: tokio::net::TcpStream) {
    let mut buf = [0u8; 64];
    loop {
        match guard("hostile peer read", sock.read(&mut buf)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[actix::test]
async fn hostile_peers_are_rejected_others_keep_working() {
    let (server_events, _, mut events) = Collector::<Msg>::start();
    let (_acceptor, ep, _errors) =
        echo_server("tcp://127.0.0.1:0", Some(server_events.recipient())).await;

    // A well-behaved client, before and after the attacks.
    let (collector, mut replies, _) = Collector::<Msg>::start();
    let good = actors::connect_with::<Msg, Msg, actix_tether::codec::Postcard>(
        &ep,
        collector.recipient(),
        Default::default(),
    )
    .await
    .unwrap();
    echo_once(&good.writer, &mut replies, 0).await;
    // The server-side id of the good link is the one of its first Up event.
    let mut good_ids = HashSet::new();
    match guard("up", events.recv()).await.unwrap() {
        LinkEvent::Up(up) => good_ids.insert(up.link),
        other => panic!("expected Up, got {other:?}"),
    };

    // 1. A length prefix of 0xFFFF_FFFF: refused before allocating anything.
    let mut hostile = tokio::net::TcpStream::connect(tcp_addr(&ep)).await.unwrap();
    hostile
        .write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3])
        .await
        .unwrap();
    let (_, reason) = next_rejection(&mut events, &good_ids).await;
    assert!(
        matches!(
            reason,
            ActorError::Link(LinkError::FrameTooLarge {
                len: 0xFFFF_FFFF,
                ..
            })
        ),
        "{reason:?}"
    );
    expect_closed(hostile).await;
    echo_once(&good.writer, &mut replies, 1).await;

    // 2. A well-framed message whose payload is garbage for the message type.
    let mut garbage = tokio::net::TcpStream::connect(tcp_addr(&ep)).await.unwrap();
    garbage
        .write_all(&[6, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        .await
        .unwrap();
    let (_, reason) = next_rejection(&mut events, &good_ids).await;
    assert!(
        matches!(reason, ActorError::Codec(CodecError::Decode(_))),
        "{reason:?}"
    );
    expect_closed(garbage).await;

    // 3. Text that is not our protocol at all ("GET " is a 542 MB length prefix).
    let mut http = tokio::net::TcpStream::connect(tcp_addr(&ep)).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (_, reason) = next_rejection(&mut events, &good_ids).await;
    assert!(
        matches!(reason, ActorError::Link(LinkError::FrameTooLarge { .. })),
        "{reason:?}"
    );
    expect_closed(http).await;

    // The existing link and the acceptor still work.
    echo_once(&good.writer, &mut replies, 2).await;
    let (collector2, mut replies2, _) = Collector::<Msg>::start();
    let late = actors::connect::<Msg, Msg>(&ep, collector2.recipient())
        .await
        .unwrap();
    echo_once(&late, &mut replies2, 3).await;
}
