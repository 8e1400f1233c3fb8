//! A peer that never reads: the writer's memory stays bounded and senders see
//! backpressure (`send().await` stops completing, `try_send` fails handing the message
//! back); once the peer reads, everything committed arrives in order. TCP, Unix, inproc.

#![cfg(feature = "actors")]

mod actors_support;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use actix_tether::actors::{self, ActorConfig, LinkOptions, Send};
use actix_tether::codec::{Codec, Postcard};
use actix_tether::endpoint;
use actix_tether::links::{Link, LinkRx};
use actors_support::*;
use serde::{Deserialize, Serialize};

const CHUNK: usize = 64 * 1024;
/// What the producer tries to push while nobody reads: 100 MiB.
const PUSH: usize = 100 * 1024 * 1024;
/// Upper bound on what may be committed while the peer does not read: kernel socket
/// buffers (a few MiB on loopback), the stream link's buffers (2 × (256 KiB + frame)) and
/// the writer's mailbox. Far below what an unbounded writer would take (all 100 MiB).
const BOUND: usize = 40 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Chunk {
    seq: u64,
    data: String,
}

fn chunk(seq: u64) -> Chunk {
    let c = (b'a' + (seq % 26) as u8) as char;
    Chunk {
        seq,
        data: std::iter::repeat(c).take(CHUNK).collect(),
    }
}

async fn never_reading_peer(endpoint: &str) {
    let listener = endpoint::listen(&endpoint.parse().unwrap()).await.unwrap();
    let ep = listener.local_endpoint();
    let (collector, _msgs, _events) = Collector::<Chunk>::start();
    let config = ActorConfig::default();
    let mailbox = config.writer_mailbox;
    let link = actors::connect_with::<Chunk, Chunk, Postcard>(
        &ep,
        collector.recipient(),
        LinkOptions::default().config(config),
    )
    .await
    .unwrap();
    // The peer accepts and holds the link without reading.
    let peer = guard("accept", listener.accept()).await.unwrap();
    let rss_before = rss_bytes();

    let committed = Rc::new(Cell::new(0u64));
    let stop = Rc::new(Cell::new(false));
    let producer = {
        let (writer, committed, stop) = (link.writer.clone(), committed.clone(), stop.clone());
        actix::spawn(async move {
            for seq in 0..(PUSH / CHUNK) as u64 {
                if stop.get() {
                    break;
                }
                writer
                    .send(Send(chunk(seq)))
                    .await
                    .unwrap()
                    .expect("committed");
                committed.set(seq + 1);
            }
        })
    };

    // Wait until the producer makes no progress for 2 s (it is blocked in send().await).
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !producer.is_finished(),
            "all 100 MiB were committed to a peer that never reads: no backpressure"
        );
        let now = committed.get();
        if now == last {
            let mut still = true;
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                still &= committed.get() == now;
            }
            if still {
                break;
            }
        }
        last = now;
    }
    let stalled_at = committed.get();
    let bytes = stalled_at as usize * CHUNK;
    let rss_growth = rss_bytes().saturating_sub(rss_before);
    eprintln!(
        "{endpoint}: committed {stalled_at} chunks ({} KiB) before backpressure; RSS grew {} KiB",
        bytes / 1024,
        rss_growth / 1024
    );
    assert!(stalled_at > 0, "nothing was ever committed");
    assert!(
        bytes <= BOUND,
        "{bytes} bytes committed while the peer never reads"
    );
    assert!(rss_growth <= BOUND, "RSS grew by {rss_growth} bytes");

    // try_send: the mailbox fills up (the writer takes nothing while its reserve is
    // pending), then try_send fails and hands the message back.
    let mut accepted = 0;
    let handed_back = loop {
        match link.writer.try_send(Send(chunk(1_000_000 + accepted))) {
            Ok(()) => accepted += 1,
            Err(SendError::Full(Send(back))) => break back,
            Err(SendError::Closed(_)) => panic!("writer died"),
        }
        assert!(accepted <= mailbox as u64 + 2, "try_send never failed");
    };
    assert_eq!(handed_back, chunk(1_000_000 + accepted));

    // Now read: the producer's chunks arrive in order, including the one it was blocked
    // on, then the try_sent ones queued behind it; then the producer sees `stop`.
    stop.set(true);
    let (_ptx, mut prx) = peer.split();
    let expected = (0..=stalled_at)
        .map(chunk)
        .chain((0..accepted).map(|i| chunk(1_000_000 + i)));
    for want in expected {
        let bytes = guard("peer read", prx.recv())
            .await
            .unwrap()
            .expect("message");
        let got: Chunk = Postcard.decode(&bytes).unwrap();
        assert_eq!(got.seq, want.seq);
        assert_eq!(got, want);
    }
    guard("producer", producer).await.unwrap();
    assert_eq!(
        committed.get(),
        stalled_at + 1,
        "the blocked send completed"
    );
    guard("close", link.writer.send(actors::Close))
        .await
        .unwrap()
        .expect("close");
    assert!(guard("eof", prx.recv()).await.unwrap().is_none());
}

#[actix::test]
async fn never_reading_peer_tcp() {
    never_reading_peer("tcp://127.0.0.1:0").await;
}

#[actix::test]
async fn never_reading_peer_unix() {
    never_reading_peer(&unix_endpoint("bp")).await;
}

#[actix::test]
async fn never_reading_peer_inproc() {
    never_reading_peer("inproc://actors-backpressure").await;
}
