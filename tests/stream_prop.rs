//! Property tests of the stream framing: arbitrary payload sequences (including empty and
//! maximum-sized payloads), written through arbitrary chunkings of the byte stream, arrive
//! intact and in order; and what StreamTx writes is exactly the reference encoding.

use actix_tether::frame::FrameCodec;
use actix_tether::links::stream::{StreamConfig, StreamLink};
use actix_tether::links::{send_bytes, Link, LinkRx, LinkTx};
use bytes::BytesMut;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Encoder;

const MAX: usize = 2048;

fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let one = prop_oneof![
        1 => Just(Vec::new()),
        1 => Just(vec![0xAB; MAX]),
        6 => proptest::collection::vec(any::<u8>(), 0..=MAX),
    ];
    proptest::collection::vec(one, 0..40)
}

fn reference_wire(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut codec = FrameCodec::new(MAX);
    let mut wire = BytesMut::new();
    for p in payloads {
        codec.encode(&p[..], &mut wire).unwrap();
    }
    wire.to_vec()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_chunking_decodes_to_the_same_messages(
        payloads in payloads(),
        chunk_sizes in proptest::collection::vec(1usize..700, 1..50),
    ) {
        let wire = reference_wire(&payloads);
        let received = rt().block_on(async {
            let (mut raw, peer) = tokio::io::duplex(256);
            let (r, w) = tokio::io::split(peer);
            let config = StreamConfig { max_frame_len: MAX, ..Default::default() };
            let (_tx, mut rx) = StreamLink::new(r, w, config).split();
            let writer = tokio::spawn(async move {
                let mut rest = &wire[..];
                let mut i = 0;
                while !rest.is_empty() {
                    let n = chunk_sizes[i % chunk_sizes.len()].min(rest.len());
                    raw.write_all(&rest[..n]).await.unwrap();
                    raw.flush().await.unwrap();
                    rest = &rest[n..];
                    i += 1;
                }
                raw.shutdown().await.unwrap();
                raw
            });
            let mut got = Vec::new();
            while let Some(m) = rx.recv().await.unwrap() {
                got.push(m.to_vec());
            }
            drop(writer.await.unwrap());
            got
        });
        prop_assert_eq!(received, payloads);
    }

    #[test]
    fn stream_tx_writes_the_reference_encoding(payloads in payloads()) {
        let expected = reference_wire(&payloads);
        let wire = rt().block_on(async {
            let (mut raw, peer) = tokio::io::duplex(1 << 20);
            let (r, w) = tokio::io::split(peer);
            let config = StreamConfig {
                max_frame_len: MAX,
                write_buffer: 1000,
                ..Default::default()
            };
            let (mut tx, _rx) = StreamLink::new(r, w, config).split();
            let reader = tokio::spawn(async move {
                let mut all = Vec::new();
                raw.read_to_end(&mut all).await.unwrap();
                all
            });
            for p in &payloads {
                send_bytes(&mut tx, p).await.unwrap();
            }
            tx.close().await.unwrap();
            reader.await.unwrap()
        });
        prop_assert_eq!(wire, expected);
    }
}
