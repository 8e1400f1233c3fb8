//! Hub bootstrap over real `SOCK_SEQPACKET` sockets, hub and guest in this process: the
//! round trip with descriptors, liveness, and every bad input on both sides.
#![cfg(target_os = "linux")]

mod shm_common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use actix_tether::shm::bootstrap::{
    join, BootstrapConfig, BootstrapConn, BootstrapError, BootstrapListener, JoinRequest, PeerGone,
    RefuseReason, UidCheck, Welcome, MAX_FDS, PROTOCOL_VERSION, REQUEST_LEN, RESPONSE_LEN,
};
use actix_tether::shm::peers::{DisconnectReason, PeerTable};
use shm_common::*;

/// Deadlock guard only (never a performance assertion).
const GUARD: Duration = Duration::from_secs(30);

fn listener(tag: &str) -> BootstrapListener {
    BootstrapListener::bind(sock_path(tag), BootstrapConfig::default()).unwrap()
}

fn req(layout_version: u32, token: u64) -> JoinRequest {
    JoinRequest {
        layout_version,
        token,
    }
}

/// Hub side of one handshake: accept, read, welcome with `fds`.
async fn hub_welcome(l: &BootstrapListener, w: Welcome, fds: &[BorrowedFd<'_>]) -> BootstrapConn {
    let incoming = l.accept().await.unwrap();
    assert_eq!(incoming.credentials().pid, std::process::id());
    let joining = incoming.read_request().await.unwrap();
    joining.welcome(w, fds).await.unwrap()
}

#[tokio::test]
async fn round_trip_passes_three_descriptors() {
    tokio::time::timeout(GUARD, async {
        let l = listener("rt");
        let path = l.path().to_path_buf();
        let seg = memfd("tether-rt-seg", b"written by the hub");
        let (bell_a, bell_b) = (eventfd(), eventfd());
        let welcome = Welcome {
            peer_id: 3,
            generation: 42,
            layout_version: 7,
        };
        let guest = tokio::spawn(async move {
            join(&path, &req(7, 0xfeed), 3, &BootstrapConfig::default()).await
        });

        let incoming = l.accept().await.unwrap();
        let cred = incoming.credentials();
        assert_eq!(cred.pid, std::process::id());
        // Same uid as this process: the owner of the socket file it just created.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(cred.uid, std::fs::metadata(l.path()).unwrap().uid());
        let joining = incoming.read_request().await.unwrap();
        assert_eq!(*joining.request(), req(7, 0xfeed));
        let mut hub_conn = joining
            .welcome(welcome, &[seg.as_fd(), bell_a.as_fd(), bell_b.as_fd()])
            .await
            .unwrap();

        let joined = guest.await.unwrap().unwrap();
        assert_eq!(joined.welcome, welcome);
        assert_eq!(joined.fds.len(), 3);
        for fd in &joined.fds {
            assert!(
                is_cloexec(fd.as_fd()),
                "received descriptors are close-on-exec"
            );
        }
        // Same file: the guest reads what the hub wrote, and the reverse.
        assert_eq!(read_at(joined.fds[0].as_fd(), 0, 18), b"written by the hub");
        write_at(joined.fds[0].as_fd(), 100, b"guest");
        assert_eq!(read_at(seg.as_fd(), 100, 5), b"guest");
        // Same eventfds, in order.
        eventfd_write(joined.fds[1].as_fd(), 5);
        eventfd_write(joined.fds[2].as_fd(), 9);
        assert_eq!(eventfd_read(bell_a.as_fd()), 5);
        assert_eq!(eventfd_read(bell_b.as_fd()), 9);
        assert_eq!(
            joined.conn.peer_credentials().pid,
            std::process::id(),
            "guest sees the hub's credentials"
        );

        joined.conn.goodbye().unwrap();
        assert_eq!(hub_conn.gone().await, PeerGone::Goodbye);
        // Stable answer once gone.
        assert_eq!(hub_conn.gone().await, PeerGone::Goodbye);
    })
    .await
    .expect("deadlock guard");
}

#[tokio::test]
async fn liveness_both_directions() {
    tokio::time::timeout(GUARD, async {
        let l = listener("live");
        // Guest drops its connection without a goodbye: the hub sees EOF.
        let path = l.path().to_path_buf();
        let guest =
            tokio::spawn(
                async move { join(&path, &req(1, 0), 0, &BootstrapConfig::default()).await },
            );
        let mut hub_conn = hub_welcome(&l, Welcome::default(), &[]).await;
        let joined = guest.await.unwrap().unwrap();
        assert!(joined.fds.is_empty());
        drop(joined);
        assert_eq!(hub_conn.gone().await, PeerGone::Eof);

        // The hub drops its side: the guest sees EOF; the hub says goodbye: Goodbye.
        for bye in [false, true] {
            let path = l.path().to_path_buf();
            let guest = tokio::spawn(async move {
                let mut j = join(&path, &req(1, 0), 0, &BootstrapConfig::default())
                    .await
                    .unwrap();
                j.conn.gone().await
            });
            let hub_conn = hub_welcome(&l, Welcome::default(), &[]).await;
            if bye {
                hub_conn.goodbye().unwrap();
            } else {
                drop(hub_conn);
            }
            let want = if bye {
                PeerGone::Goodbye
            } else {
                PeerGone::Eof
            };
            assert_eq!(guest.await.unwrap(), want);
        }
    })
    .await
    .expect("deadlock guard");
}

#[tokio::test]
async fn gone_is_cancel_safe_and_not_early() {
    tokio::time::timeout(GUARD, async {
        let l = listener("cancel");
        let path = l.path().to_path_buf();
        let guest =
            tokio::spawn(
                async move { join(&path, &req(1, 0), 0, &BootstrapConfig::default()).await },
            );
        let mut hub_conn = hub_welcome(&l, Welcome::default(), &[]).await;
        let joined = guest.await.unwrap().unwrap();
        // While the guest is alive, gone() does not complete (a zero-length timeout polls it
        // once and cancels it).
        for _ in 0..3 {
            assert!(tokio::time::timeout(Duration::ZERO, hub_conn.gone())
                .await
                .is_err());
        }
        joined.conn.goodbye().unwrap();
        assert_eq!(hub_conn.gone().await, PeerGone::Goodbye);
    })
    .await
    .expect("deadlock guard");
}

#[tokio::test]
async fn a_datagram_after_the_handshake_is_a_violation() {
    tokio::time::timeout(GUARD, async {
        let l = listener("viol");
        let raw = raw_connect(l.path());
        raw_send(&raw, &request_bytes(PROTOCOL_VERSION, 0, 1, 0), &[]);
        let mut hub_conn = hub_welcome(&l, Welcome::default(), &[]).await;
        assert_eq!(raw_recv(&raw).len(), RESPONSE_LEN);
        raw_send(&raw, b"hello?", &[]);
        assert_eq!(hub_conn.gone().await, PeerGone::Violation);
    })
    .await
    .expect("deadlock guard");
}

/// Sends `bytes` (and `fds`) as a raw client; returns the hub's error and what the client
/// then receives (`None` = nothing queued, `Some(empty)` = EOF).
async fn hub_rejects(bytes: &[u8], fds: &[OwnedFd]) -> (BootstrapError, Vec<u8>, Vec<u8>) {
    let l = listener("bad");
    let raw = raw_connect(l.path());
    let raw_fds: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    raw_send(&raw, bytes, &raw_fds);
    let err = l
        .accept()
        .await
        .unwrap()
        .read_request()
        .await
        .expect_err("the hub must reject this request");
    // The hub dropped the connection: whatever it answered, then EOF.
    let first = raw_recv_now(&raw).expect("an answer or EOF is queued");
    let second = if first.is_empty() {
        Vec::new()
    } else {
        raw_recv_now(&raw).expect("EOF after the answer")
    };
    (err, first, second)
}

fn assert_refusal(resp: &[u8], code: u16, detail: u32) {
    assert_eq!(resp.len(), RESPONSE_LEN);
    assert_eq!(&resp[..8], b"TTHRWELC");
    assert_eq!(u16::from_le_bytes([resp[8], resp[9]]), PROTOCOL_VERSION);
    assert_eq!(u16::from_le_bytes([resp[10], resp[11]]), code);
    assert_eq!(u32::from_le_bytes(resp[12..16].try_into().unwrap()), 0);
    assert_eq!(u32::from_le_bytes(resp[32..36].try_into().unwrap()), detail);
}

#[tokio::test]
async fn hub_rejects_wrong_magic_without_answer() {
    let mut bytes = request_bytes(PROTOCOL_VERSION, 0, 1, 0);
    bytes[..8].copy_from_slice(b"GET / HT");
    let (err, first, _) = hub_rejects(&bytes, &[]).await;
    assert!(
        matches!(err, BootstrapError::BadMagic { found, .. } if &found == b"GET / HT"),
        "{err}"
    );
    assert!(
        first.is_empty(),
        "no answer to a foreign protocol, just EOF"
    );
}

#[tokio::test]
async fn hub_refuses_wrong_version() {
    let (err, first, second) = hub_rejects(&request_bytes(99, 0, 1, 0), &[]).await;
    assert!(
        matches!(
            err,
            BootstrapError::UnsupportedVersion {
                found: 99,
                supported: PROTOCOL_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert_refusal(
        &first,
        RefuseReason::UnsupportedVersion.code(),
        PROTOCOL_VERSION.into(),
    );
    assert!(second.is_empty());
}

#[tokio::test]
async fn hub_refuses_truncated_and_oversized_requests() {
    let good = request_bytes(PROTOCOL_VERSION, 0, 1, 0);
    for len in [1, 10, REQUEST_LEN - 1] {
        let (err, first, _) = hub_rejects(&good[..len], &[]).await;
        assert!(
            matches!(err, BootstrapError::WrongSize { len: l, expected: REQUEST_LEN, .. } if l == len),
            "{err}"
        );
        assert_refusal(&first, RefuseReason::Malformed.code(), 0);
    }
    for len in [REQUEST_LEN + 1, 4096, 60_000] {
        let mut big = good.clone();
        big.resize(len, 0xAB);
        let (err, first, _) = hub_rejects(&big, &[]).await;
        assert!(
            matches!(err, BootstrapError::WrongSize { len: l, expected: REQUEST_LEN, .. } if l == len),
            "{err}"
        );
        assert_refusal(&first, RefuseReason::Malformed.code(), 0);
    }
}

#[tokio::test]
async fn hub_refuses_nonzero_flags() {
    let (err, first, _) = hub_rejects(&request_bytes(PROTOCOL_VERSION, 1, 1, 0), &[]).await;
    assert!(matches!(err, BootstrapError::Malformed { .. }), "{err}");
    assert_refusal(&first, RefuseReason::Malformed.code(), 0);
}

#[tokio::test]
async fn hub_closes_descriptors_sent_with_a_request() {
    let name = "tether-req-fds";
    let fds = vec![memfd(name, b"x"), memfd(name, b"y")];
    let l = listener("reqfds");
    // Connected, not yet accepted.
    let raw = raw_connect(l.path());
    let raw_fds: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    match try_raw_send(&raw, &request_bytes(PROTOCOL_VERSION, 0, 1, 0), &raw_fds) {
        // Linux 6.16+: the listener's SO_PASSRIGHTS (off) was inherited at connect time,
        // before accept: the kernel refuses the descriptors at the sender.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Ok(()) => {
            // Older kernels: the hub takes them (recvmsg with room for SCM_MAX_FD), refuses
            // the request as malformed and closes them off its thread.
            let err = l
                .accept()
                .await
                .unwrap()
                .read_request()
                .await
                .expect_err("the hub must reject this request");
            assert!(
                matches!(err, BootstrapError::UnexpectedAncillary { .. }),
                "{err}"
            );
            let first = raw_recv_now(&raw).expect("an answer is queued");
            assert_refusal(&first, RefuseReason::Malformed.code(), 0);
        }
        Err(e) => panic!("sendmsg: {e}"),
    }
    drop(fds);
    actix_tether::shm::flush_descriptor_closer();
    assert_eq!(
        count_memfds(name),
        0,
        "no copy of the sent descriptors is left open"
    );
}

#[tokio::test(start_paused = true)]
async fn silent_client_is_dropped_after_the_timeout() {
    let cfg = BootstrapConfig {
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let l = BootstrapListener::bind(sock_path("silent"), cfg).unwrap();
    let raw = raw_connect(l.path());
    let incoming = l.accept().await.unwrap();
    // Time is paused: the runtime advances the clock to the deadline once it is idle.
    let err = incoming.read_request().await.unwrap_err();
    assert!(
        matches!(err, BootstrapError::RequestTimeout { after } if after == Duration::from_secs(3)),
        "{err}"
    );
    assert_eq!(raw_recv_now(&raw), Some(Vec::new()), "client sees EOF");
    // The listener still works.
    let path = l.path().to_path_buf();
    let guest =
        tokio::spawn(async move { join(&path, &req(1, 0), 0, &BootstrapConfig::default()).await });
    let _conn = hub_welcome(&l, Welcome::default(), &[]).await;
    guest.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn guest_times_out_on_a_silent_hub() {
    let l = listener("mute");
    let cfg = BootstrapConfig {
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let path = l.path().to_path_buf();
    let guest = tokio::spawn(async move { join(&path, &req(1, 0), 1, &cfg).await });
    // The hub accepts and reads the request but never answers.
    let joining = l.accept().await.unwrap().read_request().await.unwrap();
    let err = guest.await.unwrap().unwrap_err();
    assert!(
        matches!(err, BootstrapError::ResponseTimeout { after } if after == Duration::from_secs(2)),
        "{err}"
    );
    drop(joining);
}

#[tokio::test]
async fn hub_full_refusal_and_slot_reuse() {
    tokio::time::timeout(GUARD, async {
        const MAX: usize = 2;
        let l = listener("full");
        let mut table = PeerTable::new(MAX).unwrap();
        let mut conns = Vec::new();
        // A tiny hub step: accept one guest, grant a slot or refuse with Full.
        async fn step(
            l: &BootstrapListener,
            table: &mut PeerTable,
        ) -> Option<(actix_tether::shm::peers::PeerHandle, BootstrapConn)> {
            let joining = l.accept().await.unwrap().read_request().await.unwrap();
            match table.reserve() {
                Ok(h) => {
                    let w = Welcome {
                        peer_id: h.slot(),
                        generation: h.generation(),
                        layout_version: 1,
                    };
                    let conn = joining.welcome(w, &[]).await.unwrap();
                    table
                        .activate(h, conn.peer_credentials().pid, h.generation())
                        .unwrap();
                    Some((h, conn))
                }
                Err(_) => {
                    joining
                        .refuse(RefuseReason::Full, table.max_guests() as u32)
                        .await
                        .unwrap();
                    None
                }
            }
        }
        let mut guests = Vec::new();
        for _ in 0..MAX {
            let path = l.path().to_path_buf();
            let g = tokio::spawn(async move {
                join(&path, &req(1, 0), 0, &BootstrapConfig::default()).await
            });
            conns.push(step(&l, &mut table).await.expect("a free slot"));
            guests.push(g.await.unwrap().unwrap());
        }
        // One more than the maximum: a clear refusal.
        let path = l.path().to_path_buf();
        let g =
            tokio::spawn(
                async move { join(&path, &req(1, 0), 0, &BootstrapConfig::default()).await },
            );
        assert!(step(&l, &mut table).await.is_none());
        let err = g.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                BootstrapError::Refused {
                    reason: RefuseReason::Full,
                    detail: 2
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("hub is full"), "{err}");

        // Guest 0 leaves; the hub drains and frees its slot; a new guest gets it.
        let (h0, mut c0) = conns.remove(0);
        let old = guests.remove(0);
        assert_eq!(old.welcome.peer_id, h0.slot());
        drop(old);
        assert_eq!(c0.gone().await, PeerGone::Eof);
        table.on_disconnect(h0, DisconnectReason::Crashed).unwrap();
        table.on_buffers_released(h0).unwrap();
        let path = l.path().to_path_buf();
        let g =
            tokio::spawn(
                async move { join(&path, &req(1, 0), 0, &BootstrapConfig::default()).await },
            );
        let (h, _c) = step(&l, &mut table).await.expect("the freed slot");
        let j = g.await.unwrap().unwrap();
        assert_eq!(h.slot(), h0.slot());
        assert_eq!(j.welcome.peer_id, h0.slot());
        assert!(j.welcome.generation > h0.generation());
    })
    .await
    .expect("deadlock guard");
}

#[tokio::test]
async fn guest_rejects_wrong_descriptor_count_and_closes_them() {
    tokio::time::timeout(GUARD, async {
        let l = listener("count");
        for (sent, expected) in [(2usize, 3usize), (2, 1), (1, 0), (0, 2)] {
            let name = format!("tether-count-{sent}-{expected}");
            let fds: Vec<OwnedFd> = (0..sent).map(|_| memfd(&name, b"z")).collect();
            let path = l.path().to_path_buf();
            let guest = tokio::spawn(async move {
                join(&path, &req(1, 0), expected, &BootstrapConfig::default()).await
            });
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            let _conn = hub_welcome(&l, Welcome::default(), &borrowed).await;
            let err = guest.await.unwrap().unwrap_err();
            assert!(
                matches!(err, BootstrapError::FdCount { expected: e, announced: a, received: r }
                    if e == expected && a as usize == sent && r == sent),
                "{err}"
            );
            drop(borrowed);
            drop(fds);
            // Rejected descriptors are closed on the closer thread.
            actix_tether::shm::flush_descriptor_closer();
            assert_eq!(
                count_memfds(&name),
                0,
                "every received descriptor was closed"
            );
        }
    })
    .await
    .expect("deadlock guard");
}

#[tokio::test]
async fn descriptor_limits() {
    let l = listener("limits");
    let err = join(
        l.path(),
        &req(1, 0),
        MAX_FDS + 1,
        &BootstrapConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BootstrapError::TooManyFds { .. }), "{err}");

    let path = l.path().to_path_buf();
    let guest =
        tokio::spawn(async move { join(&path, &req(1, 0), 1, &BootstrapConfig::default()).await });
    let joining = l.accept().await.unwrap().read_request().await.unwrap();
    let many: Vec<OwnedFd> = (0..MAX_FDS + 1).map(|_| eventfd()).collect();
    let borrowed: Vec<_> = many.iter().map(|f| f.as_fd()).collect();
    let err = joining
        .welcome(Welcome::default(), &borrowed)
        .await
        .unwrap_err();
    assert!(matches!(err, BootstrapError::TooManyFds { .. }), "{err}");
    // The hub dropped the connection without answering.
    let err = guest.await.unwrap().unwrap_err();
    assert!(matches!(err, BootstrapError::Closed { .. }), "{err}");
}

/// A fake hub (raw socket, on a blocking thread) that answers the request with `response`
/// and `fds`; returns the guest's error.
async fn guest_rejects(response: Vec<u8>, fds: Vec<OwnedFd>, expected: usize) -> BootstrapError {
    let path = sock_path("fake");
    let raw_l = raw_listen(&path);
    let fake = tokio::task::spawn_blocking(move || {
        let c = raw_accept(&raw_l);
        assert_eq!(raw_recv(&c).len(), REQUEST_LEN);
        let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        if response.is_empty() {
            return; // hang up without answering
        }
        raw_send(&c, &response, &raw);
        drop(fds);
        // Keep the connection until the guest has judged the answer and hung up.
        let _ = raw_recv(&c);
    });
    let err = join(&path, &req(1, 0), expected, &BootstrapConfig::default())
        .await
        .expect_err("the guest must reject this answer");
    fake.await.unwrap();
    let _ = std::fs::remove_file(&path);
    err
}

fn welcome_bytes(fd_count: u32) -> Vec<u8> {
    response_bytes(b"TTHRWELC", PROTOCOL_VERSION, 0, fd_count, 1, 1, 1, 0)
}

#[tokio::test]
async fn guest_rejects_bad_responses_and_closes_descriptors() {
    tokio::time::timeout(GUARD, async {
        let name = "tether-bad-resp";
        let fds = |n: usize| (0..n).map(|_| memfd(name, b"q")).collect::<Vec<_>>();

        let mut bad_magic = welcome_bytes(2);
        bad_magic[..8].copy_from_slice(b"NOTTHER!");
        let err = guest_rejects(bad_magic, fds(2), 2).await;
        assert!(matches!(err, BootstrapError::BadMagic { .. }), "{err}");

        let bad_version = response_bytes(b"TTHRWELC", 9, 0, 2, 1, 1, 1, 0);
        let err = guest_rejects(bad_version, fds(2), 2).await;
        assert!(
            matches!(err, BootstrapError::UnsupportedVersion { found: 9, .. }),
            "{err}"
        );

        let mut short = welcome_bytes(2);
        short.truncate(RESPONSE_LEN - 4);
        let err = guest_rejects(short, fds(2), 2).await;
        assert!(matches!(err, BootstrapError::WrongSize { .. }), "{err}");

        let mut long = welcome_bytes(2);
        long.resize(RESPONSE_LEN + 100, 0);
        let err = guest_rejects(long, fds(2), 2).await;
        assert!(
            matches!(err, BootstrapError::WrongSize { len, .. } if len == RESPONSE_LEN + 100),
            "{err}"
        );

        // Announced count disagrees with what arrived.
        let err = guest_rejects(welcome_bytes(3), fds(2), 2).await;
        assert!(
            matches!(
                err,
                BootstrapError::FdCount {
                    announced: 3,
                    received: 2,
                    ..
                }
            ),
            "{err}"
        );

        // More descriptors than MAX_FDS: all taken (room for SCM_MAX_FD), counted, closed.
        let err = guest_rejects(welcome_bytes(40), fds(40), 2).await;
        assert!(
            matches!(
                err,
                BootstrapError::FdCount {
                    announced: 40,
                    received: 40,
                    ..
                }
            ),
            "{err}"
        );

        // A refusal that carries descriptors.
        let refusal = response_bytes(b"TTHRWELC", PROTOCOL_VERSION, 1, 0, 0, 0, 0, 2);
        let err = guest_rejects(refusal, fds(1), 0).await;
        assert!(matches!(err, BootstrapError::Malformed { .. }), "{err}");

        // An unknown refusal code is still a clear refusal.
        let refusal = response_bytes(b"TTHRWELC", PROTOCOL_VERSION, 77, 0, 0, 0, 0, 5);
        let err = guest_rejects(refusal, fds(0), 0).await;
        assert!(
            matches!(
                err,
                BootstrapError::Refused {
                    reason: RefuseReason::Other(77),
                    detail: 5
                }
            ),
            "{err}"
        );

        // Non-zero reserved field.
        let mut reserved = welcome_bytes(0);
        reserved[36] = 1;
        let err = guest_rejects(reserved, fds(0), 0).await;
        assert!(matches!(err, BootstrapError::Malformed { .. }), "{err}");

        // No answer at all: the hub hangs up.
        let err = guest_rejects(Vec::new(), fds(0), 0).await;
        assert!(matches!(err, BootstrapError::Closed { .. }), "{err}");

        // Rejected descriptors are closed on the closer thread.
        actix_tether::shm::flush_descriptor_closer();
        assert_eq!(count_memfds(name), 0, "no received descriptor leaked");
    })
    .await
    .expect("deadlock guard");
}

#[tokio::test(flavor = "current_thread")]
async fn joins_succeed_when_the_backlog_is_full() {
    tokio::time::timeout(GUARD, async {
        let cfg = BootstrapConfig {
            backlog: 1,
            ..Default::default()
        };
        let l = BootstrapListener::bind(sock_path("backlog"), cfg).unwrap();
        const N: usize = 6;
        // All guests try to connect before the hub accepts anything (current-thread runtime:
        // the tasks run when this task first waits); the backlog holds two, the others take
        // the blocking-connect path.
        let guests: Vec<_> = (0..N)
            .map(|i| {
                let path = l.path().to_path_buf();
                tokio::spawn(async move {
                    join(&path, &req(1, i as u64), 0, &BootstrapConfig::default()).await
                })
            })
            .collect();
        let mut conns = Vec::new();
        for i in 0..N {
            let joining = l.accept().await.unwrap().read_request().await.unwrap();
            let w = Welcome {
                peer_id: i as u32,
                generation: joining.request().token,
                layout_version: 1,
            };
            conns.push(joining.welcome(w, &[]).await.unwrap());
        }
        for g in guests {
            let j = g.await.unwrap().unwrap();
            let _ = j;
        }
    })
    .await
    .expect("deadlock guard");
}

#[tokio::test]
async fn bind_checks() {
    // A live socket path is not stolen.
    let l = listener("bind");
    let err = BootstrapListener::bind(l.path(), BootstrapConfig::default()).unwrap_err();
    assert!(
        matches!(&err, BootstrapError::Io { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse),
        "{err}"
    );
    // The socket file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(l.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Dropping the listener removes the file; a stale file is replaced.
    let path = l.path().to_path_buf();
    drop(l);
    assert!(!path.exists());
    let stale = raw_listen(&path);
    drop(stale); // the file stays, nobody listens
    assert!(path.exists());
    let l = BootstrapListener::bind(&path, BootstrapConfig::default()).unwrap();
    drop(l);

    // A file that is not a socket is never removed.
    let regular = sock_path("regular");
    std::fs::write(&regular, b"precious").unwrap();
    let err = BootstrapListener::bind(&regular, BootstrapConfig::default()).unwrap_err();
    assert!(
        matches!(err, BootstrapError::Io { op: "bind", .. }),
        "{err}"
    );
    assert_eq!(std::fs::read(&regular).unwrap(), b"precious");
    std::fs::remove_file(&regular).unwrap();

    let err = BootstrapListener::bind("", BootstrapConfig::default()).unwrap_err();
    assert!(matches!(err, BootstrapError::InvalidPath { .. }), "{err}");
    let cfg = BootstrapConfig {
        request_timeout: Duration::ZERO,
        ..Default::default()
    };
    let err = BootstrapListener::bind(sock_path("zero"), cfg).unwrap_err();
    assert!(matches!(err, BootstrapError::InvalidConfig(_)), "{err}");
    let err = join(
        sock_path("nobody"),
        &req(1, 0),
        0,
        &BootstrapConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, BootstrapError::Io { op: "connect", .. }),
        "{err}"
    );
}

#[tokio::test]
async fn peer_uid_is_checked_on_both_sides() {
    use std::os::unix::fs::MetadataExt;
    tokio::time::timeout(GUARD, async {
        // Real SO_PEERCRED credentials against a uid this process does not run under.
        let hub_cfg = BootstrapConfig {
            peer_uid: UidCheck::Only(u32::MAX - 7),
            ..Default::default()
        };
        let l = BootstrapListener::bind(sock_path("uid"), hub_cfg).unwrap();
        let my_uid = std::fs::metadata(l.path()).unwrap().uid();
        let path = l.path().to_path_buf();
        let guest =
            tokio::spawn(async move { join(&path, &req(1, 0), 0, &BootstrapConfig::default()).await });
        let err = l.accept().await.unwrap().read_request().await.unwrap_err();
        assert!(
            matches!(err, BootstrapError::PeerUid { expected, found } if expected == u32::MAX - 7 && found == my_uid),
            "{err}"
        );
        let err = guest.await.unwrap().unwrap_err();
        assert!(
            matches!(err, BootstrapError::Refused { reason: RefuseReason::PermissionDenied, .. }),
            "{err}"
        );

        // The guest checks the hub the same way.
        let l = listener("uid2");
        let guest_cfg = BootstrapConfig {
            peer_uid: UidCheck::Only(u32::MAX - 7),
            ..Default::default()
        };
        let err = join(l.path(), &req(1, 0), 0, &guest_cfg).await.unwrap_err();
        assert!(matches!(err, BootstrapError::PeerUid { .. }), "{err}");
        // With the check off, or set to our own uid, it passes.
        for check in [UidCheck::Any, UidCheck::Only(my_uid), UidCheck::Same] {
            let cfg = BootstrapConfig {
                peer_uid: check,
                ..Default::default()
            };
            let path = l.path().to_path_buf();
            let guest = tokio::spawn(async move { join(&path, &req(1, 0), 0, &cfg).await });
            // The rejected guest above left a pending connection on the first round.
            loop {
                let incoming = l.accept().await.unwrap();
                match incoming.read_request().await {
                    Ok(j) => {
                        let _conn = j.welcome(Welcome::default(), &[]).await.unwrap();
                        guest.await.unwrap().unwrap();
                        break;
                    }
                    Err(BootstrapError::Closed { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }
    })
    .await
    .expect("deadlock guard");
}
