//! Typed echo through the actors over real sockets: order and content of 10,000 messages,
//! 50 concurrent clients on one acceptor, and `Close` flushing.

#![cfg(feature = "actors")]

mod actors_support;

use actix_tether::actors::{self, Close, DownReason, LinkEvent, LinkOptions, Received, Send, Side};
use actix_tether::codec::{Codec, Postcard};
use actix_tether::endpoint;
use actix_tether::links::{Link, LinkRx};
use actors_support::*;

const N: u64 = 10_000;

/// One client sends `n` messages through its `LinkWriter` while its `LinkReader` collects
/// the echoes; every echo must be its own, in order, with the right content. Then `Close`
/// and wait for the server to close back.
async fn echo_client(endpoint: &actix_tether::endpoint::Endpoint, client: u32, n: u64) {
    let (collector, mut replies, mut events) = Collector::<Msg>::start();
    let link = actors::connect_with::<Msg, Msg, Postcard>(
        endpoint,
        collector.clone().recipient(),
        LinkOptions::default().events(collector.recipient()),
    )
    .await
    .expect("connect");
    let writer = link.writer.clone();
    let sender = actix::spawn(async move {
        for seq in 0..n {
            writer
                .send(Send(Msg::new(client, seq)))
                .await
                .expect("writer alive")
                .expect("committed");
        }
        writer
    });
    for seq in 0..n {
        let Received { link: from, msg } = guard("echo", replies.recv()).await.expect("reply");
        assert_eq!(from, link.id);
        assert_eq!(msg, Msg::new(client, seq), "client {client} reply {seq}");
    }
    let writer = guard("sender", sender).await.unwrap();
    guard("close", writer.send(Close))
        .await
        .unwrap()
        .expect("close");

    // Up, then one Down per half: the writer closed, the reader saw the server's EOF.
    let mut downs = Vec::new();
    match guard("up", events.recv()).await.unwrap() {
        LinkEvent::Up(up) => assert_eq!(up.link, link.id),
        other => panic!("expected Up, got {other:?}"),
    }
    while downs.len() < 2 {
        match guard("down", events.recv()).await.unwrap() {
            LinkEvent::Down(d) => {
                assert_eq!(d.link, link.id);
                downs.push((d.side, d.reason));
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(downs
        .iter()
        .any(|(s, r)| *s == Side::Writer && matches!(r, DownReason::Closed)));
    assert!(downs
        .iter()
        .any(|(s, r)| *s == Side::Reader && matches!(r, DownReason::PeerClosed)));
    assert!(replies.try_recv().is_err(), "no extra replies");
}

#[actix::test]
async fn echo_10k_in_order_tcp() {
    let (_acceptor, ep, _errors) = echo_server("tcp://127.0.0.1:0", None).await;
    echo_client(&ep, 1, N).await;
}

#[actix::test]
async fn echo_10k_in_order_unix() {
    let (_acceptor, ep, _errors) = echo_server(&unix_endpoint("echo"), None).await;
    echo_client(&ep, 1, N).await;
}

#[actix::test]
async fn echo_10k_in_order_inproc() {
    let (_acceptor, ep, _errors) = echo_server("inproc://actors-echo-10k", None).await;
    echo_client(&ep, 1, N).await;
}

async fn many_clients(endpoint: &str) {
    const CLIENTS: u32 = 50;
    const PER_CLIENT: u64 = 200;
    let (_acceptor, ep, _errors) = echo_server(endpoint, None).await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let ep = ep.clone();
            actix::spawn(async move { echo_client(&ep, c, PER_CLIENT).await })
        })
        .collect();
    for c in clients {
        guard("client", c).await.expect("client task");
    }
}

#[actix::test]
async fn fifty_concurrent_clients_tcp() {
    many_clients("tcp://127.0.0.1:0").await;
}

#[actix::test]
async fn fifty_concurrent_clients_unix() {
    many_clients(&unix_endpoint("many")).await;
}

#[actix::test]
async fn fifty_concurrent_clients_inproc() {
    many_clients("inproc://actors-fifty").await;
}

/// A writer sends N messages then `Close`: the raw peer receives all N, in order, then a
/// clean end of stream.
async fn close_flushes_then_eof(endpoint: &str) {
    const COUNT: u64 = 2_000;
    let listener = endpoint::listen(&endpoint.parse().unwrap()).await.unwrap();
    let ep = listener.local_endpoint();
    let (collector, _replies, mut events) = Collector::<Msg>::start();
    let link = actors::connect_with::<Msg, Msg, Postcard>(
        &ep,
        collector.clone().recipient(),
        LinkOptions::default().events(collector.recipient()),
    )
    .await
    .unwrap();
    let (_peer_tx, mut peer_rx) = guard("accept", listener.accept()).await.unwrap().split();
    let peer = actix::spawn(async move {
        let mut got = Vec::new();
        while let Some(bytes) = peer_rx.recv().await.expect("clean stream") {
            got.push(Postcard.decode::<Msg>(&bytes).expect("decodes"));
        }
        got
    });
    // Many sends in flight at once, then Close behind them (it is enqueued on its first
    // poll, after every Send): messages committed but not yet written when Close runs
    // must all be flushed before the end of stream.
    let sends: Vec<_> = (0..COUNT)
        .map(|seq| link.writer.send(Send(Msg::new(7, seq))))
        .collect();
    let close = link.writer.send(Close);
    for s in futures::future::join_all(sends).await {
        s.unwrap().expect("committed");
    }
    guard("close", close).await.unwrap().expect("close ok");
    let got = guard("peer", peer).await.unwrap();
    assert_eq!(got.len(), COUNT as usize);
    for (seq, m) in got.iter().enumerate() {
        assert_eq!(*m, Msg::new(7, seq as u64));
    }
    // The writer is gone: further sends fail, and its Down says it closed cleanly.
    assert!(link.writer.send(Send(Msg::new(7, 0))).await.is_err());
    loop {
        match guard("events", events.recv()).await.unwrap() {
            LinkEvent::Down(d) if d.side == Side::Writer => {
                assert!(matches!(d.reason, DownReason::Closed), "{:?}", d.reason);
                break;
            }
            _ => {}
        }
    }
}

#[actix::test]
async fn close_flushes_then_eof_tcp() {
    close_flushes_then_eof("tcp://127.0.0.1:0").await;
}

#[actix::test]
async fn close_flushes_then_eof_unix() {
    close_flushes_then_eof(&unix_endpoint("close")).await;
}

#[actix::test]
async fn close_flushes_then_eof_inproc() {
    close_flushes_then_eof("inproc://actors-close").await;
}
