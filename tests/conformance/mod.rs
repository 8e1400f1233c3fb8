//! The Link conformance suite: one set of checks of the contract in `src/links/mod.rs`, run
//! against every transport.
//!
//! A transport plugs in with
//!
//! ```ignore
//! mod conformance;
//! conformance::suite!(my_transport, || async { make_connected_pair().await });
//! ```
//!
//! where the closure returns a future of two connected links `(a, b)`; it is awaited inside
//! a tokio runtime (multi-thread, 2 workers). Every check becomes its own `#[test]`, named
//! `<transport>::<check>`.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use actix_tether::links::{Link, LinkError, LinkRx, LinkTx, Permit, WriteSlot};
use bytes::Bytes;

/// Deadlock guard for operations that must complete: generous, never a speed assertion.
pub const GUARD: Duration = Duration::from_secs(60);

/// Runs `f` on a fresh multi-thread runtime.
pub fn run<F: Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("deadlock guard: {what} did not complete in {GUARD:?}"),
    }
}

pub async fn send<T: LinkTx>(tx: &mut T, payload: &[u8]) -> Result<(), LinkError> {
    actix_tether::links::send_bytes(tx, payload).await
}

pub async fn recv<R: LinkRx>(rx: &mut R) -> Option<Bytes> {
    guard("recv", rx.recv()).await.expect("recv failed")
}

/// Deterministic payload `i`: length varies from 0 to `max_len`, content depends on `i`.
pub fn payload(i: usize, max_len: usize) -> Vec<u8> {
    let len = (i * 7919) % (max_len + 1);
    (0..len).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect()
}

pub async fn round_trip<L: Link>(a: L, b: L) {
    let (mut atx, mut arx) = a.split();
    let (mut btx, mut brx) = b.split();
    guard("send a→b", send(&mut atx, b"ping")).await.unwrap();
    assert_eq!(recv(&mut brx).await.as_deref(), Some(&b"ping"[..]));
    guard("send b→a", send(&mut btx, b"pong")).await.unwrap();
    assert_eq!(recv(&mut arx).await.as_deref(), Some(&b"pong"[..]));
}

pub async fn many_in_order<L: Link>(a: L, b: L) {
    const N: usize = 10_000;
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            send(&mut atx, &payload(i, 300)).await.unwrap();
        }
        atx
    });
    for i in 0..N {
        let got = recv(&mut brx).await.expect("early EOF");
        assert_eq!(&got[..], &payload(i, 300)[..], "message {i}");
    }
    guard("sender", sender).await.unwrap();
}

pub async fn empty_message<L: Link>(a: L, b: L) {
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    guard("send", send(&mut atx, b"")).await.unwrap();
    guard("send", send(&mut atx, b"x")).await.unwrap();
    guard("send", send(&mut atx, b"")).await.unwrap();
    assert_eq!(recv(&mut brx).await.as_deref(), Some(&b""[..]));
    assert_eq!(recv(&mut brx).await.as_deref(), Some(&b"x"[..]));
    assert_eq!(recv(&mut brx).await.as_deref(), Some(&b""[..]));
}

pub async fn eof_after_close_is_sticky<L: Link>(a: L, b: L) {
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    guard("send", send(&mut atx, b"last")).await.unwrap();
    guard("close", atx.close()).await.unwrap();
    assert_eq!(recv(&mut brx).await.as_deref(), Some(&b"last"[..]));
    assert_eq!(recv(&mut brx).await, None);
    assert_eq!(recv(&mut brx).await, None);
}

pub async fn dropped_permit_sends_nothing<L: Link>(a: L, b: L) {
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    let permit = guard("reserve", atx.reserve()).await.unwrap();
    drop(permit);
    guard("send", send(&mut atx, b"after")).await.unwrap();
    guard("close", atx.close()).await.unwrap();
    assert_eq!(recv(&mut brx).await.as_deref(), Some(&b"after"[..]));
    assert_eq!(recv(&mut brx).await, None);
}

pub async fn dropped_slot_sends_nothing<L: Link>(a: L, b: L) {
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    {
        let permit = guard("reserve", atx.reserve()).await.unwrap();
        let mut slot = permit.alloc(5).unwrap();
        assert_eq!(slot.as_mut_slice().len(), 5);
        slot.as_mut_slice().copy_from_slice(b"never");
        drop(slot);
    }
    guard("send", send(&mut atx, b"after")).await.unwrap();
    guard("close", atx.close()).await.unwrap();
    assert_eq!(recv(&mut brx).await.as_deref(), Some(&b"after"[..]));
    assert_eq!(recv(&mut brx).await, None);
}

pub async fn slot_is_exact_length<L: Link>(a: L, b: L) {
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    for len in [0usize, 1, 63, 64, 65, 4096, 70_000] {
        let permit = guard("reserve", atx.reserve()).await.unwrap();
        let mut slot = permit.alloc(len).unwrap();
        assert_eq!(slot.as_mut_slice().len(), len);
        slot.as_mut_slice().fill(len as u8);
        slot.commit();
    }
    for len in [0usize, 1, 63, 64, 65, 4096, 70_000] {
        let got = recv(&mut brx).await.unwrap();
        assert_eq!(got.len(), len);
        assert!(got.iter().all(|&x| x == len as u8));
    }
}

pub async fn oversize_alloc_is_refused<L: Link>(a: L, b: L) {
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    let permit = guard("reserve", atx.reserve()).await.unwrap();
    match permit.alloc(usize::MAX) {
        Err(LinkError::TooLarge { len, max }) => {
            assert_eq!(len, usize::MAX);
            assert!(max < usize::MAX);
        }
        Err(e) => panic!("expected TooLarge, got {e}"),
        Ok(_) => panic!("alloc(usize::MAX) succeeded"),
    }
    guard("send", send(&mut atx, b"still works")).await.unwrap();
    assert_eq!(recv(&mut brx).await.as_deref(), Some(&b"still works"[..]));
}

/// The sender stops at `reserve` when the peer does not read, and resumes when it does.
pub async fn backpressure<L: Link>(a: L, b: L) {
    const MSG: usize = 16 * 1024;
    const LIMIT: usize = 20_000; // 320 MiB: far above any transport's buffering
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    let msg = vec![7u8; MSG];
    let mut sent = 0usize;
    let pending_reserve = loop {
        assert!(
            sent < LIMIT,
            "reserve never waited after {sent} unread messages"
        );
        match tokio::time::timeout(Duration::from_millis(300), atx.reserve()).await {
            Ok(permit) => {
                let mut slot = permit.unwrap().alloc(MSG).unwrap();
                slot.as_mut_slice().copy_from_slice(&msg);
                slot.commit();
                sent += 1;
            }
            Err(_) => break sent,
        }
    };
    assert!(pending_reserve > 0);
    // Now read: the blocked sender must make progress again.
    let reader = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(m) = guard("recv", brx.recv()).await.unwrap() {
            assert_eq!(m.len(), MSG);
            n += 1;
        }
        n
    });
    for _ in 0..10 {
        guard("send after reader started", send(&mut atx, &msg))
            .await
            .unwrap();
        sent += 1;
    }
    guard("close", atx.close()).await.unwrap();
    assert_eq!(guard("reader", reader).await.unwrap(), sent);
}

/// `recv` dropped inside `select!` after a single poll, over and over, while large frames
/// arrive in pieces: nothing is lost, nothing is duplicated, the framing never desyncs.
pub async fn cancelled_recv_loses_nothing<L: Link>(a: L, b: L) {
    const N: usize = 60;
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            send(&mut atx, &payload(i, 200_000)).await.unwrap();
            if i % 7 == 0 {
                // Longer than any bounded spin inside `recv` (ShmLink's busy-spin spins up
                // to 2 ms): the receiver must find the link empty and return `Pending`, so
                // the cancellation below happens on every transport, not only by chance.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        atx.close().await.unwrap();
    });
    let mut cancelled = 0usize;
    let mut got = Vec::new();
    guard("cancel loop", async {
        loop {
            tokio::select! {
                biased;
                _ = tokio::task::yield_now() => { cancelled += 1; }
                r = brx.recv() => match r.unwrap() {
                    Some(m) => got.push(m),
                    None => break,
                },
            }
        }
    })
    .await;
    guard("sender", sender).await.unwrap();
    assert!(
        cancelled > 0,
        "recv was never cancelled; the test did not test anything"
    );
    assert_eq!(got.len(), N);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(&m[..], &payload(i, 200_000)[..], "message {i}");
    }
}

/// Everything committed before `close` arrives, then a clean end.
pub async fn close_flushes<L: Link>(a: L, b: L) {
    const N: usize = 2_000;
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(m) = guard("recv", brx.recv()).await.unwrap() {
            assert_eq!(&m[..], &payload(n, 1000)[..]);
            n += 1;
        }
        n
    });
    for i in 0..N {
        guard("send", send(&mut atx, &payload(i, 1000)))
            .await
            .unwrap();
    }
    guard("close", atx.close()).await.unwrap();
    assert_eq!(guard("reader", reader).await.unwrap(), N);
}

/// Dropping the sending half ends the peer's stream after everything sent before.
pub async fn dropped_tx_gives_eof<L: Link>(a: L, b: L) {
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    guard("send", send(&mut atx, b"one")).await.unwrap();
    drop(atx);
    assert_eq!(recv(&mut brx).await.as_deref(), Some(&b"one"[..]));
    assert_eq!(recv(&mut brx).await, None);
}

/// Both directions at once, each carrying its own sequence.
pub async fn full_duplex<L: Link>(a: L, b: L) {
    const N: usize = 3_000;
    let (mut atx, mut arx) = a.split();
    let (mut btx, mut brx) = b.split();
    let t1 = tokio::spawn(async move {
        for i in 0..N {
            send(&mut atx, &payload(i, 500)).await.unwrap();
        }
        atx
    });
    let t2 = tokio::spawn(async move {
        for i in 0..N {
            send(&mut btx, &payload(i + 1, 500)).await.unwrap();
        }
        btx
    });
    let r1 = tokio::spawn(async move {
        for i in 0..N {
            assert_eq!(&recv(&mut brx).await.unwrap()[..], &payload(i, 500)[..]);
        }
    });
    for i in 0..N {
        assert_eq!(&recv(&mut arx).await.unwrap()[..], &payload(i + 1, 500)[..]);
    }
    guard("r1", r1).await.unwrap();
    guard("t1", t1).await.unwrap();
    guard("t2", t2).await.unwrap();
}

/// Generates one `#[test]` per conformance check for a transport.
#[macro_export]
macro_rules! suite {
    ($name:ident, $pair:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::suite!(@tests $pair;
                round_trip, many_in_order, empty_message, eof_after_close_is_sticky,
                dropped_permit_sends_nothing, dropped_slot_sends_nothing, slot_is_exact_length,
                oversize_alloc_is_refused, backpressure, cancelled_recv_loses_nothing,
                close_flushes, dropped_tx_gives_eof, full_duplex);
        }
    };
    (@tests $pair:expr; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                $crate::conformance::run(async {
                    let (a, b) = ($pair)().await;
                    $crate::conformance::$check(a, b).await;
                });
            }
        )*
    };
}
