//! In-process links: the Link conformance suite, and the registry's edge cases.
//!
//! Names are process-global and the tests of this binary run in parallel, so every test
//! uses its own names (see `unique`).

#[macro_use]
mod conformance;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_tether::endpoint::{self, Endpoint, EndpointError};
use actix_tether::links::inproc::{
    self, bound_names, ConnectOptions, InprocConfig, InprocError, InprocLink,
};
use actix_tether::links::{
    send_bytes, AnyLink, Link, LinkError, LinkRx, LinkTx, Permit, WriteSlot,
};
use conformance::guard;
use futures::FutureExt;

/// A name no other test uses.
fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "test/{what}/{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn inproc_pair() -> (InprocLink, InprocLink) {
    let acceptor = inproc::bind(&unique("conformance")).unwrap();
    let client = inproc::connect(acceptor.name()).await.unwrap();
    let server = acceptor.accept().await;
    // Accepted links outlive their acceptor.
    drop(acceptor);
    (client, server)
}

async fn endpoint_pair() -> (AnyLink, AnyLink) {
    let ep = Endpoint::parse(&format!("inproc://{}", unique("conformance-ep"))).unwrap();
    let listener = endpoint::listen(&ep).await.unwrap();
    assert_eq!(listener.local_endpoint(), ep);
    let (client, server) = tokio::join!(endpoint::connect(&ep), listener.accept());
    (client.unwrap(), server.unwrap())
}

suite!(inproc_link, inproc_pair);
suite!(inproc_endpoint, endpoint_pair);

async fn recv<R: LinkRx>(rx: &mut R) -> Option<bytes::Bytes> {
    guard("recv", rx.recv()).await.expect("recv failed")
}

#[tokio::test]
async fn duplicate_bind_fails_and_keeps_first_working() {
    let name = unique("dup");
    let url = format!("inproc://{name}");
    let acceptor = inproc::bind(&name).unwrap();

    for again in [name.as_str(), url.as_str()] {
        let err = inproc::bind(again).unwrap_err();
        assert_eq!(err, InprocError::AddrInUse { name: name.clone() });
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::AddrInUse);
    }
    let err = endpoint::listen(&Endpoint::parse(&url).unwrap())
        .await
        .err()
        .expect("second listen succeeded");
    match &err {
        EndpointError::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::AddrInUse),
        other => panic!("expected an I/O error, got {other}"),
    }
    assert!(err.to_string().contains("already bound"), "{err}");

    // The first binding still accepts, and the link works both ways.
    let client = inproc::connect(&url).await.unwrap();
    let server = guard("accept", acceptor.accept()).await;
    let (mut ctx, mut crx) = client.split();
    let (mut stx, mut srx) = server.split();
    send_bytes(&mut ctx, b"ping").await.unwrap();
    assert_eq!(recv(&mut srx).await.as_deref(), Some(&b"ping"[..]));
    send_bytes(&mut stx, b"pong").await.unwrap();
    assert_eq!(recv(&mut crx).await.as_deref(), Some(&b"pong"[..]));
    assert!(bound_names().contains(&name));
}

#[tokio::test]
async fn dropping_the_acceptor_unbinds() {
    let name = unique("unbind");
    let acceptor = inproc::bind(&name).unwrap();
    assert!(bound_names().contains(&name));
    // An accepted link survives the acceptor.
    let client = inproc::connect(&name).await.unwrap();
    let server = acceptor.accept().await;
    drop(acceptor);

    assert!(!bound_names().contains(&name));
    let err = inproc::connect(&name).await.unwrap_err();
    assert_eq!(err, InprocError::NotFound { name: name.clone() });
    assert_eq!(err.kind(), io::ErrorKind::NotFound);

    let (mut ctx, _crx) = client.split();
    let (_stx, mut srx) = server.split();
    send_bytes(&mut ctx, b"still here").await.unwrap();
    assert_eq!(recv(&mut srx).await.as_deref(), Some(&b"still here"[..]));

    // The name can be bound again, and then connected to.
    let again = inproc::bind(&name).unwrap();
    let _c = inproc::connect(&name).await.unwrap();
    let _s = guard("accept", again.accept()).await;
}

#[tokio::test]
async fn pending_connections_end_when_the_acceptor_is_dropped() {
    let name = unique("pending");
    let acceptor = inproc::bind(&name).unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(inproc::connect(&name).await.unwrap().split());
    }
    drop(acceptor);
    for (mut tx, mut rx) in clients {
        assert_eq!(recv(&mut rx).await, None);
        assert_eq!(recv(&mut rx).await, None);
        assert!(matches!(tx.reserve().await, Err(LinkError::Closed)));
        assert!(matches!(tx.reserve().await, Err(LinkError::Closed)));
    }
}

#[tokio::test]
async fn dropping_a_link_gives_the_peer_everything_then_eof() {
    let name = unique("eof");
    let acceptor = inproc::bind(&name).unwrap();
    let client = inproc::connect(&name).await.unwrap();
    let server = acceptor.accept().await;
    let (mut ctx, crx) = client.split();
    for i in 0..10u8 {
        send_bytes(&mut ctx, &[i; 3]).await.unwrap();
    }
    drop((ctx, crx));
    let (mut stx, mut srx) = server.split();
    for i in 0..10u8 {
        assert_eq!(recv(&mut srx).await.as_deref(), Some(&[i; 3][..]));
    }
    assert_eq!(recv(&mut srx).await, None);
    assert_eq!(recv(&mut srx).await, None);
    // The client's receiving half is gone too: sending to it fails, stickily.
    assert!(matches!(stx.reserve().await, Err(LinkError::Closed)));
    assert!(matches!(stx.reserve().await, Err(LinkError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_each_get_only_their_own_replies() {
    const CLIENTS: usize = 50;
    const MESSAGES: usize = 200;
    let name = unique("fifty");
    let acceptor = inproc::bind(&name).unwrap();
    let server = tokio::spawn(async move {
        let mut echoes = Vec::new();
        for _ in 0..CLIENTS {
            let link = acceptor.accept().await;
            echoes.push(tokio::spawn(async move {
                let (mut tx, mut rx) = link.split();
                while let Some(m) = rx.recv().await.unwrap() {
                    send_bytes(&mut tx, &m).await.unwrap();
                }
                tx.close().await.unwrap();
            }));
        }
        for e in echoes {
            e.await.unwrap();
        }
    });
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let name = name.clone();
        clients.push(tokio::spawn(async move {
            let (mut tx, mut rx) = inproc::connect(&name).await.unwrap().split();
            let reader = tokio::spawn(async move {
                for i in 0..MESSAGES {
                    let m = recv(&mut rx).await.expect("early EOF");
                    assert_eq!(&m[..], format!("client {c} message {i}").as_bytes());
                }
                assert_eq!(recv(&mut rx).await, None);
            });
            for i in 0..MESSAGES {
                send_bytes(&mut tx, format!("client {c} message {i}").as_bytes())
                    .await
                    .unwrap();
            }
            tx.close().await.unwrap();
            guard("reader", reader).await.unwrap();
        }));
    }
    for c in clients {
        guard("client", c).await.unwrap();
    }
    guard("server", server).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn connect_before_bind_succeeds_when_bound_in_time() {
    let name = unique("early");
    let started = tokio::time::Instant::now();
    let connecting = tokio::spawn({
        let name = name.clone();
        async move {
            let options = ConnectOptions {
                wait: Some(Duration::from_secs(10)),
                ..Default::default()
            };
            inproc::connect_with(&format!("inproc://{name}"), options).await
        }
    });
    // Other names being bound meanwhile do not satisfy the waiter.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _other = inproc::bind(&unique("early-other")).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!connecting.is_finished());
    let acceptor = inproc::bind(&name).unwrap();
    let client = connecting.await.unwrap().unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2), "virtual time");
    let server = acceptor.accept().await;
    let (mut ctx, _crx) = client.split();
    let (_stx, mut srx) = server.split();
    send_bytes(&mut ctx, b"made it").await.unwrap();
    assert_eq!(srx.recv().await.unwrap().as_deref(), Some(&b"made it"[..]));
}

#[tokio::test(start_paused = true)]
async fn connect_before_bind_times_out_with_a_clear_error() {
    let name = unique("late");
    let options = ConnectOptions {
        wait: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let err = inproc::connect_with(&name, options).await.unwrap_err();
    match &err {
        InprocError::TimedOut {
            name: n,
            after,
            bound,
        } => {
            assert_eq!(n, &name);
            assert_eq!(*after, Duration::from_secs(5));
            assert!(!bound);
        }
        other => panic!("expected TimedOut, got {other}"),
    }
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    let text = err.to_string();
    assert!(
        text.contains(&name) && text.contains("nothing was bound"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn abandoned_connect_connects_nothing() {
    let name = unique("abandoned");
    let options = ConnectOptions {
        wait: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let attempt =
        tokio::time::timeout(Duration::from_secs(1), inproc::connect_with(&name, options)).await;
    assert!(attempt.is_err(), "connect finished without an acceptor");
    let acceptor = inproc::bind(&name).unwrap();
    assert!(acceptor.accept().now_or_never().is_none());
}

#[tokio::test(start_paused = true)]
async fn backlog_is_bounded() {
    let name = unique("backlog");
    let config = InprocConfig {
        backlog: 2,
        ..Default::default()
    };
    let acceptor = inproc::bind_with(&name, config).unwrap();
    let _a = inproc::connect(&name).await.unwrap();
    let _b = inproc::connect(&name).await.unwrap();
    let err = inproc::connect(&name).await.unwrap_err();
    assert_eq!(
        err,
        InprocError::BacklogFull {
            name: name.clone(),
            backlog: 2
        }
    );
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

    let wait = |secs| ConnectOptions {
        wait: Some(Duration::from_secs(secs)),
        ..Default::default()
    };
    let err = inproc::connect_with(&name, wait(3)).await.unwrap_err();
    assert!(
        matches!(err, InprocError::TimedOut { bound: true, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("backlog"), "{err}");

    // A waiting connect gets in as soon as a connection is accepted.
    let waiting = tokio::spawn({
        let name = name.clone();
        async move { inproc::connect_with(&name, wait(30)).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished());
    let _first = acceptor.accept().await;
    let late = waiting.await.unwrap().unwrap();
    let _second = acceptor.accept().await;
    // The late client's peer is the third in the backlog.
    let (mut ttx, _trx) = acceptor.accept().await.split();
    send_bytes(&mut ttx, b"third").await.unwrap();
    let (_ltx, mut lrx) = late.split();
    assert_eq!(lrx.recv().await.unwrap().as_deref(), Some(&b"third"[..]));
}

#[tokio::test]
async fn unbound_name_is_not_found() {
    let name = unique("nobody");
    let err = inproc::connect(&format!("inproc://{name}"))
        .await
        .unwrap_err();
    assert_eq!(err, InprocError::NotFound { name: name.clone() });
    assert!(err.to_string().contains(&name), "{err}");
    let ep = Endpoint::Inproc(name);
    match endpoint::connect(&ep)
        .await
        .err()
        .expect("connected to nothing")
    {
        EndpointError::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::NotFound),
        other => panic!("expected an I/O error, got {other}"),
    }
}

#[tokio::test]
async fn invalid_names_are_refused() {
    let long = "n".repeat(inproc::MAX_NAME_LEN + 1);
    for bad in [
        "",
        "inproc://",
        "tcp://127.0.0.1:80",
        "unix:///tmp/x",
        "a\nb",
        "inproc://a\0b",
        "a\u{7f}",
        "inproc://a://b",
        long.as_str(),
    ] {
        let err = inproc::bind(bad).unwrap_err();
        assert!(
            matches!(err, InprocError::InvalidName { .. }),
            "{bad:?}: {err}"
        );
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = inproc::connect(bad).await.unwrap_err();
        assert!(
            matches!(err, InprocError::InvalidName { .. }),
            "{bad:?}: {err}"
        );
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidInput);
    }
    let err = inproc::bind("tcp://x:1").unwrap_err().to_string();
    assert!(err.contains("wrong scheme"), "{err}");
    // The longest valid name, and names with spaces and slashes, are fine.
    let longest = format!("{}{}", unique("l"), "n".repeat(inproc::MAX_NAME_LEN));
    let longest = &longest[longest.len() - inproc::MAX_NAME_LEN..];
    let a = inproc::bind(longest).unwrap();
    assert_eq!(a.name(), longest);
    let spaced = unique("with space/and slash");
    let b = inproc::bind(&format!("inproc://{spaced}")).unwrap();
    assert_eq!(b.name(), spaced);
}

#[tokio::test]
async fn receiver_gets_the_very_allocation_the_sender_filled() {
    let name = unique("zero-copy");
    let acceptor = inproc::bind(&name).unwrap();
    let client = inproc::connect(&name).await.unwrap();
    let server = acceptor.accept().await;
    let (mut tx, _crx) = client.split();
    let (_stx, mut rx) = server.split();
    for len in [1usize, 64, 4096, 1 << 20] {
        let mut slot = tx.reserve().await.unwrap().alloc(len).unwrap();
        slot.as_mut_slice().fill(len as u8);
        let filled = slot.as_mut_slice().as_ptr();
        slot.commit();
        let got = recv(&mut rx).await.unwrap();
        assert_eq!(got.as_ptr(), filled, "message of {len} bytes was copied");
        assert_eq!(got.len(), len);
        assert!(got.iter().all(|&b| b == len as u8));
    }

    // Also through `AnyLink` (what `endpoint::connect` returns).
    let (a, b) = InprocLink::pair(&Default::default(), &Default::default());
    let (mut tx, _) = AnyLink::from(a).split();
    let (_, mut rx) = AnyLink::from(b).split();
    let mut slot = tx.reserve().await.unwrap().alloc(1000).unwrap();
    let filled = slot.as_mut_slice().as_ptr();
    slot.commit();
    assert_eq!(recv(&mut rx).await.unwrap().as_ptr(), filled);
}

#[tokio::test]
async fn reserve_waits_at_capacity_in_each_direction() {
    let name = unique("capacity");
    let server_config = InprocConfig {
        capacity: 3,
        ..Default::default()
    };
    let client_config = InprocConfig {
        capacity: 5,
        ..Default::default()
    };
    let acceptor = inproc::bind_with(&name, server_config).unwrap();
    let options = ConnectOptions {
        config: client_config,
        ..Default::default()
    };
    let client = inproc::connect_with(&name, options).await.unwrap();
    let server = acceptor.accept().await;
    let (mut ctx, mut crx) = client.split();
    let (mut stx, mut srx) = server.split();

    // Client → server holds 3 (the acceptor's config), server → client 5 (the client's).
    for (tx, rx, capacity) in [(&mut ctx, &mut srx, 3usize), (&mut stx, &mut crx, 5)] {
        assert_eq!(tx.available(), capacity);
        {
            // A held permit is a real reservation; dropping it gives the place back.
            let _permit = tx.reserve().await.unwrap();
        }
        assert_eq!(tx.available(), capacity);
        let held = tx.reserve().await.unwrap();
        drop(held);
        for i in 0..capacity {
            send_bytes(tx, &[i as u8]).await.unwrap();
        }
        assert_eq!(tx.available(), 0);
        assert!(
            tx.reserve().now_or_never().is_none(),
            "reserve did not wait with {capacity} unread messages"
        );
        assert_eq!(recv(rx).await.as_deref(), Some(&[0u8][..]));
        send_bytes(tx, b"next")
            .now_or_never()
            .expect("reserve still waiting after a receive")
            .unwrap();
        for i in 1..capacity {
            assert_eq!(recv(rx).await.as_deref(), Some(&[i as u8][..]));
        }
        assert_eq!(recv(rx).await.as_deref(), Some(&b"next"[..]));
    }

    // A place held by a permit is taken until the permit goes.
    let permit = ctx.reserve().await.unwrap();
    let _ = &permit;
    drop(permit);
    assert_eq!(ctx.available(), 3);
}

#[tokio::test]
async fn message_size_is_bounded_by_the_receiver() {
    let name = unique("max-len");
    let config = InprocConfig {
        max_message_len: 100,
        ..Default::default()
    };
    let acceptor = inproc::bind_with(&name, config).unwrap();
    let client = inproc::connect(&name).await.unwrap();
    let _server = acceptor.accept().await;
    let (mut tx, _rx) = client.split();
    assert_eq!(tx.max_message_len(), 100);
    assert!(tx.reserve().await.unwrap().alloc(100).is_ok());
    match tx.reserve().await.unwrap().alloc(101) {
        Err(LinkError::TooLarge { len: 101, max: 100 }) => {}
        Err(e) => panic!("expected TooLarge, got {e}"),
        Ok(_) => panic!("alloc above the maximum succeeded"),
    }
    assert_eq!(tx.available(), 64);
}

#[tokio::test]
async fn out_of_range_config_is_clamped() {
    let name = unique("clamp");
    let config = InprocConfig {
        capacity: 0,
        max_message_len: usize::MAX,
        backlog: 0,
    };
    let acceptor = inproc::bind_with(&name, config).unwrap();
    assert_eq!(
        acceptor.config(),
        &InprocConfig {
            capacity: 1,
            max_message_len: inproc::MAX_MESSAGE_LEN,
            backlog: 1,
        }
    );
    let options = ConnectOptions {
        config: InprocConfig {
            capacity: usize::MAX,
            ..Default::default()
        },
        ..Default::default()
    };
    let client = inproc::connect_with(&name, options).await.unwrap();
    let server = acceptor.accept().await;
    assert_eq!(client.split().0.available(), 1);
    assert_eq!(server.split().0.available(), inproc::MAX_CAPACITY);
}

#[tokio::test]
async fn bound_names_lists_live_bindings() {
    let (x, y) = (unique("list-x"), unique("list-y"));
    let ax = inproc::bind(&x).unwrap();
    let ay = inproc::bind(&format!("inproc://{y}")).unwrap();
    let names = bound_names();
    assert!(names.contains(&x) && names.contains(&y), "{names:?}");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    drop(ax);
    let names = bound_names();
    assert!(!names.contains(&x) && names.contains(&y), "{names:?}");
    drop(ay);
    assert!(!bound_names().contains(&y));
}

#[test]
fn works_across_threads_and_runtimes() {
    let name = unique("cross-runtime");
    let rt = |_| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let server_rt = rt(0);
    let acceptor = server_rt.block_on(async { inproc::bind(&name).unwrap() });
    let client = std::thread::spawn({
        let name = name.clone();
        move || {
            rt(1).block_on(async move {
                let options = ConnectOptions {
                    wait: Some(conformance::GUARD),
                    ..Default::default()
                };
                let (mut tx, mut rx) = inproc::connect_with(&name, options).await.unwrap().split();
                for i in 0..1000u32 {
                    send_bytes(&mut tx, &i.to_le_bytes()).await.unwrap();
                    let back = recv(&mut rx).await.unwrap();
                    assert_eq!(&back[..], &(i + 1).to_le_bytes());
                }
            })
        }
    });
    server_rt.block_on(async move {
        let (mut tx, mut rx) = guard("accept", acceptor.accept()).await.split();
        while let Some(m) = recv(&mut rx).await {
            let i = u32::from_le_bytes(m[..].try_into().unwrap());
            send_bytes(&mut tx, &(i + 1).to_le_bytes()).await.unwrap();
        }
    });
    client.join().unwrap();
}

#[tokio::test]
async fn endpoint_listener_serves_inproc() {
    let name = unique("listener");
    let config = InprocConfig {
        capacity: 2,
        ..Default::default()
    };
    let listener = endpoint::listen_inproc(&format!("inproc://{name}"), config).unwrap();
    let ep = listener.local_endpoint();
    assert_eq!(ep, Endpoint::Inproc(name.clone()));
    assert_eq!(ep.to_string(), format!("inproc://{name}"));
    assert_eq!(Endpoint::parse(&ep.to_string()).unwrap(), ep);

    let client = endpoint::connect(&ep).await.unwrap();
    let server = guard("accept", listener.accept()).await.unwrap();
    let (mut ctx, _crx) = client.split();
    let (_stx, mut srx) = server.split();
    send_bytes(&mut ctx, b"1").await.unwrap();
    send_bytes(&mut ctx, b"2").await.unwrap();
    assert!(
        ctx.reserve().now_or_never().is_none(),
        "the listener's capacity of 2 was not applied"
    );
    assert_eq!(recv(&mut srx).await.as_deref(), Some(&b"1"[..]));
    assert!(ctx.reserve().now_or_never().is_some());

    drop(listener);
    assert!(!bound_names().contains(&name));

    for bad in ["", "tcp://x:1", "a\tb"] {
        let err = endpoint::listen_inproc(bad, Default::default())
            .err()
            .unwrap();
        assert!(
            matches!(err, EndpointError::Invalid { .. }),
            "{bad:?}: {err}"
        );
        let err = endpoint::listen(&Endpoint::Inproc(bad.to_string()))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, EndpointError::Invalid { .. }),
            "{bad:?}: {err}"
        );
    }
}
