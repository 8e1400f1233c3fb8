//! 1,000 bootstrap connect/disconnect cycles (successes, refusals, guest-side and hub-side
//! errors) leave this process's descriptor count unchanged and every peer slot free.
//!
//! Its own test binary with a single test: nothing else opens descriptors concurrently.
#![cfg(target_os = "linux")]

mod shm_common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use actix_tether::shm::bootstrap::{
    join, BootstrapConfig, BootstrapError, BootstrapListener, JoinRequest, PeerGone, RefuseReason,
    Welcome, PROTOCOL_VERSION,
};
use actix_tether::shm::peers::{DisconnectReason, PeerTable};
use shm_common::*;

const NAME: &str = "tether-leak";
const MAX_GUESTS: usize = 4;

async fn cycle(l: &BootstrapListener, table: &mut PeerTable, i: usize) {
    let cfg = BootstrapConfig::default();
    let seg = memfd(NAME, b"segment");
    let bells: Vec<OwnedFd> = (0..2).map(|_| eventfd()).collect();
    let fds = [seg.as_fd(), bells[0].as_fd(), bells[1].as_fd()];
    let req = JoinRequest {
        layout_version: 1,
        token: i as u64,
    };
    let path = l.path().to_path_buf();
    match i % 5 {
        // Success; the guest leaves with a goodbye (0) or by dropping everything (1).
        0 | 1 => {
            let guest = tokio::spawn(async move { join(&path, &req, 3, &cfg).await });
            let joining = l.accept().await.unwrap().read_request().await.unwrap();
            let h = table.reserve().unwrap();
            let w = Welcome {
                peer_id: h.slot(),
                generation: h.generation(),
                layout_version: 1,
            };
            let mut conn = joining.welcome(w, &fds).await.unwrap();
            table
                .activate(h, conn.peer_credentials().pid, i as u64)
                .unwrap();
            let joined = guest.await.unwrap().unwrap();
            assert_eq!(joined.fds.len(), 3);
            let (want, reason) = if i % 5 == 0 {
                joined.conn.goodbye().unwrap();
                (PeerGone::Goodbye, DisconnectReason::Clean)
            } else {
                drop(joined);
                (PeerGone::Eof, DisconnectReason::Crashed)
            };
            assert_eq!(conn.gone().await, want);
            table.on_disconnect(h, reason).unwrap();
            table.on_buffers_released(h).unwrap();
        }
        // The guest expects another descriptor count: error, received descriptors closed.
        2 => {
            let guest = tokio::spawn(async move { join(&path, &req, 2, &cfg).await });
            let joining = l.accept().await.unwrap().read_request().await.unwrap();
            let mut conn = joining.welcome(Welcome::default(), &fds).await.unwrap();
            let err = guest.await.unwrap().unwrap_err();
            assert!(matches!(err, BootstrapError::FdCount { .. }), "{err}");
            assert_eq!(conn.gone().await, PeerGone::Eof);
        }
        // Refusal.
        3 => {
            let guest = tokio::spawn(async move { join(&path, &req, 3, &cfg).await });
            let joining = l.accept().await.unwrap().read_request().await.unwrap();
            joining.refuse(RefuseReason::Full, 4).await.unwrap();
            let err = guest.await.unwrap().unwrap_err();
            assert!(
                matches!(
                    err,
                    BootstrapError::Refused {
                        reason: RefuseReason::Full,
                        ..
                    }
                ),
                "{err}"
            );
        }
        // A raw client with a bad version, carrying descriptors the hub must close (Linux
        // 6.16+ refuses them at the sender: the listener has SO_PASSRIGHTS off; the request
        // then goes without them).
        _ => {
            let raw = raw_connect(&path);
            let raw_fds = [seg.as_raw_fd(), bells[0].as_raw_fd()];
            let bytes = request_bytes(PROTOCOL_VERSION + 1, 0, 1, 0);
            let refused = match try_raw_send(&raw, &bytes, &raw_fds) {
                Ok(()) => false,
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    raw_send(&raw, &bytes, &[]);
                    true
                }
                Err(e) => panic!("sendmsg: {e}"),
            };
            let err = l.accept().await.unwrap().read_request().await.unwrap_err();
            if refused {
                assert!(
                    matches!(err, BootstrapError::UnsupportedVersion { .. }),
                    "{err}"
                );
            } else {
                assert!(
                    matches!(err, BootstrapError::UnexpectedAncillary { .. }),
                    "{err}"
                );
            }
        }
    }
}

#[tokio::test]
async fn thousand_cycles_leak_no_descriptor_and_no_slot() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let l = BootstrapListener::bind(sock_path("leak"), BootstrapConfig::default()).unwrap();
        let mut table = PeerTable::new(MAX_GUESTS).unwrap();
        // Warm up (runtime internals, lazily opened files, the closer thread), then measure.
        // The warm-up's last cycle hands rejected descriptors to the closer thread: flush it
        // before counting, or they are counted in `before` and gone from `after`.
        for i in 0..20 {
            cycle(&l, &mut table, i).await;
        }
        actix_tether::shm::flush_descriptor_closer();
        let before = open_fd_count();
        for i in 0..1000 {
            cycle(&l, &mut table, i).await;
        }
        // Rejected descriptors are closed on the closer thread.
        actix_tether::shm::flush_descriptor_closer();
        let after = open_fd_count();
        assert_eq!(
            before, after,
            "open descriptors before and after 1,000 cycles"
        );
        assert_eq!(count_memfds(NAME), 0);
        assert_eq!(table.free_count(), MAX_GUESTS);
        assert_eq!(table.iter().count(), 0);
    })
    .await
    .expect("deadlock guard");
}
