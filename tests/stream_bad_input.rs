//! Hostile and malformed byte streams against StreamLink's receiver, over real TCP sockets:
//! each case ends with a clear error, and the rest of the process is unharmed.

use std::time::Duration;

use actix_tether::endpoint::{self, Endpoint};
use actix_tether::links::stream::{StreamConfig, StreamLink};
use actix_tether::links::{AnyLink, Link, LinkError, LinkRx, LinkTx};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const GUARD: Duration = Duration::from_secs(60);

/// A listener that accepts one StreamLink and a raw client socket connected to it.
async fn raw_client_and_link(config: StreamConfig) -> (TcpStream, AnyLink) {
    let listener = endpoint::listen_with(&Endpoint::parse("tcp://127.0.0.1:0").unwrap(), config)
        .await
        .unwrap();
    let Endpoint::Tcp { host, port } = listener.local_endpoint() else {
        unreachable!("tcp listener has a tcp endpoint")
    };
    let (raw, link) = tokio::join!(
        TcpStream::connect(format!("{host}:{port}")),
        listener.accept()
    );
    (raw.unwrap(), link.unwrap())
}

async fn recv_with_guard<R: LinkRx>(rx: &mut R) -> Result<Option<bytes::Bytes>, LinkError> {
    tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("deadlock guard: recv did not complete")
}

#[tokio::test]
async fn max_u32_prefix_is_refused_before_any_payload() {
    let (mut raw, link) = raw_client_and_link(StreamConfig::default()).await;
    let (_tx, mut rx) = link.split();
    // Only the four prefix bytes are sent; the connection stays open and no payload byte
    // ever arrives. The error must come from the prefix alone, i.e. before anything could
    // have been allocated for a 4 GiB payload.
    raw.write_all(&[0xFF, 0xFF, 0xFF, 0xFF]).await.unwrap();
    match recv_with_guard(&mut rx).await {
        Err(LinkError::FrameTooLarge { len, max }) => {
            assert_eq!(len, 0xFFFF_FFFF);
            assert_eq!(max, 16 * 1024 * 1024);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // Sticky.
    assert!(matches!(
        recv_with_guard(&mut rx).await,
        Err(LinkError::FrameTooLarge { .. })
    ));
    drop(raw);
}

#[tokio::test]
async fn prefix_over_configured_max_is_refused() {
    let config = StreamConfig {
        max_frame_len: 1000,
        ..Default::default()
    };
    let (mut raw, link) = raw_client_and_link(config).await;
    let (_tx, mut rx) = link.split();
    let mut wire = Vec::new();
    wire.extend_from_slice(&1000u32.to_le_bytes());
    wire.extend_from_slice(&[1; 1000]); // exactly the maximum: accepted
    wire.extend_from_slice(&1001u32.to_le_bytes()); // one more: refused
    raw.write_all(&wire).await.unwrap();
    assert_eq!(recv_with_guard(&mut rx).await.unwrap().unwrap().len(), 1000);
    assert!(matches!(
        recv_with_guard(&mut rx).await,
        Err(LinkError::FrameTooLarge {
            len: 1001,
            max: 1000
        })
    ));
}

#[tokio::test]
async fn eof_mid_prefix_is_an_error_not_a_clean_close() {
    let (mut raw, link) = raw_client_and_link(StreamConfig::default()).await;
    let (_tx, mut rx) = link.split();
    raw.write_all(&[5, 0]).await.unwrap();
    raw.shutdown().await.unwrap();
    assert!(matches!(
        recv_with_guard(&mut rx).await,
        Err(LinkError::Truncated { buffered: 2 })
    ));
    assert!(matches!(
        recv_with_guard(&mut rx).await,
        Err(LinkError::Truncated { .. })
    ));
}

#[tokio::test]
async fn eof_mid_payload_is_an_error_after_complete_frames() {
    let (mut raw, link) = raw_client_and_link(StreamConfig::default()).await;
    let (_tx, mut rx) = link.split();
    let mut wire = Vec::new();
    wire.extend_from_slice(&3u32.to_le_bytes());
    wire.extend_from_slice(b"abc");
    wire.extend_from_slice(&10u32.to_le_bytes());
    wire.extend_from_slice(b"12345");
    raw.write_all(&wire).await.unwrap();
    raw.shutdown().await.unwrap();
    assert_eq!(
        recv_with_guard(&mut rx).await.unwrap().as_deref(),
        Some(&b"abc"[..])
    );
    assert!(matches!(
        recv_with_guard(&mut rx).await,
        Err(LinkError::Truncated { buffered: 9 })
    ));
}

#[tokio::test]
async fn garbage_ends_in_an_error_or_frames_and_other_links_keep_working() {
    // A healthy link on the side, to show the process is unharmed.
    let (a, b) = StreamLink::unix_pair(Default::default()).unwrap();
    let (mut atx, _) = a.split();
    let (_, mut brx) = b.split();

    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..20 {
        let config = StreamConfig {
            max_frame_len: 64 * 1024,
            ..Default::default()
        };
        let (mut raw, link) = raw_client_and_link(config).await;
        let (_tx, mut rx) = link.split();
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        raw.write_all(&garbage).await.unwrap();
        raw.shutdown().await.unwrap();
        let mut frames = 0usize;
        let mut bytes = 0usize;
        let end = loop {
            match recv_with_guard(&mut rx).await {
                Ok(Some(m)) => {
                    frames += 1;
                    bytes += 4 + m.len();
                }
                other => break other,
            }
        };
        assert!(bytes <= garbage.len());
        match end {
            Err(LinkError::FrameTooLarge { .. }) | Err(LinkError::Truncated { .. }) => {}
            Ok(None) => assert_eq!(bytes, garbage.len(), "clean end only on a frame boundary"),
            other => panic!("round {round}: unexpected end {other:?} after {frames} frames"),
        }
        actix_tether::links::send_bytes(&mut atx, b"alive")
            .await
            .unwrap();
        assert_eq!(
            recv_with_guard(&mut brx).await.unwrap().as_deref(),
            Some(&b"alive"[..])
        );
    }
}

#[tokio::test]
async fn write_error_is_reported_at_reserve_or_close() {
    let (raw, link) = raw_client_and_link(StreamConfig::default()).await;
    let (mut tx, _rx) = link.split();
    // The peer goes away (RST because of unread data is not needed: writing to a closed
    // socket fails with EPIPE/ECONNRESET after a write or two).
    drop(raw);
    let mut saw_error = None;
    for _ in 0..10_000 {
        match tokio::time::timeout(GUARD, actix_tether::links::send_bytes(&mut tx, &[0; 1024]))
            .await
            .expect("deadlock guard: send")
        {
            Ok(()) => tokio::task::yield_now().await,
            Err(e) => {
                saw_error = Some(e);
                break;
            }
        }
    }
    let e = saw_error.expect("writing to a closed peer never failed");
    assert!(matches!(e, LinkError::Io(_)), "{e:?}");
    // Sticky, and close reports it too.
    assert!(actix_tether::links::send_bytes(&mut tx, b"x")
        .await
        .is_err());
    assert!(tx.close().await.is_err());
}

#[test]
fn reserve_fails_instead_of_hanging_when_the_writer_runtime_is_gone() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (a, b) = first.block_on(async { StreamLink::unix_pair(Default::default()).unwrap() });
    let (mut tx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    first.block_on(async {
        actix_tether::links::send_bytes(&mut tx, b"before")
            .await
            .unwrap();
        assert_eq!(brx.recv().await.unwrap().as_deref(), Some(&b"before"[..]));
    });
    // The writer task lived on `first`; dropping the runtime drops it.
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let r = tokio::time::timeout(GUARD, tx.reserve())
            .await
            .expect("deadlock guard: reserve hung on a dead writer");
        assert!(matches!(r, Err(LinkError::Closed)), "{:?}", r.err());
    });
}
