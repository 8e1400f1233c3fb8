//! ShmLink between two real processes: the test binary re-executes itself as the child
//! (`harness = false`; the environment variable `TETHER_SHM_TEST_CHILD` switches `main` into
//! child mode), and the child attaches to the segment by inherited descriptors
//! ([`ShmLink::from_env`]).
//!
//! * `exchange_random_sizes_both_directions` — both processes send `MESSAGES` messages of
//!   random sizes (0 B to 3× the inline threshold, so inline and slab payloads) at the same
//!   time, and check every received message byte for byte against the content its sequence
//!   number determines; then each closes and sees the other's clean end.
//! * `sigkill_mid_stream_ends_parent_link` — the child streams without end; the parent
//!   kills it with SIGKILL and its `recv` must end with an error and its `reserve` must fail
//!   (deadlock guard only, no timing assertion).
//!
//! Run alone with `cargo test --test shm_process`; set `TETHER_SHM_MESSAGES` to change the
//! message count.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use actix_tether::links::{Link, LinkError, LinkRx, LinkTx, Permit, WriteSlot};
use actix_tether::shm::link::{ShmConfig, ShmLink};

/// Messages per direction in the exchange test.
const MESSAGES: u64 = 1_000_000;
const CHILD_ENV: &str = "TETHER_SHM_TEST_CHILD";
const COUNT_ENV: &str = "TETHER_SHM_MESSAGES";
/// Deadlock guard: generous, never a speed assertion.
const GUARD: Duration = Duration::from_secs(300);

/// The inline threshold of the default configuration; sizes go up to three times it.
fn inline_max() -> usize {
    ShmConfig::default().inline_max
}

/// 64 KiB of pseudo-random bytes every message is cut from.
fn pattern() -> &'static [u8] {
    static P: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..64 * 1024)
            .map(|_| {
                x = splitmix(x);
                x as u8
            })
            .collect()
    })
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Message `seq` of direction `dir`: its content is a slice of the pattern at an offset and
/// of a length both derived from `(dir, seq)`. Lengths: half 0..=64 B, a third up to the
/// inline threshold, the rest above it (slab), up to 3× the threshold.
fn message(dir: u64, seq: u64) -> &'static [u8] {
    let r = splitmix(dir.wrapping_mul(0x1_0000_0001) ^ seq);
    let max = inline_max();
    let len = match r % 6 {
        0..=2 => (r >> 8) as usize % 65,
        3 | 4 => (r >> 8) as usize % (max + 1),
        _ => max + 1 + (r >> 8) as usize % (2 * max),
    };
    let off = (r >> 40) as usize % (pattern().len() - len);
    &pattern()[off..off + len]
}

async fn send_one<T: LinkTx>(tx: &mut T, dir: u64, seq: u64) -> Result<(), LinkError> {
    let m = message(dir, seq);
    let mut slot = tx.reserve().await?.alloc(m.len())?;
    slot.as_mut_slice().copy_from_slice(m);
    slot.commit();
    Ok(())
}

async fn send_all<T: LinkTx>(tx: &mut T, dir: u64, n: u64) -> Result<(), LinkError> {
    for seq in 0..n {
        send_one(tx, dir, seq).await?;
    }
    Ok(())
}

async fn recv_all<R: LinkRx>(rx: &mut R, dir: u64, n: u64) -> Result<(), String> {
    for seq in 0..n {
        match rx.recv().await {
            Ok(Some(got)) => {
                if got[..] != *message(dir, seq) {
                    return Err(format!(
                        "message {seq} of direction {dir} differs ({} bytes, expected {})",
                        got.len(),
                        message(dir, seq).len()
                    ));
                }
            }
            other => return Err(format!("message {seq} of direction {dir}: got {other:?}")),
        }
    }
    match rx.recv().await {
        Ok(None) => Ok(()),
        other => Err(format!(
            "expected a clean end after {n} messages, got {other:?}"
        )),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn message_count() -> u64 {
    std::env::var(COUNT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MESSAGES)
}

// ---------------------------------------------------------------------------------------
// Child side

fn child_main(role: &str) -> ExitCode {
    if role == "bad_handoff" {
        // The parent set a malformed handoff: attaching must fail with an error, not crash.
        return match ShmLink::from_env(ShmConfig::default()) {
            Err(e) => {
                eprintln!("shm_process child (bad_handoff): refused as expected: {e}");
                ExitCode::from(3)
            }
            Ok(_) => ExitCode::SUCCESS,
        };
    }
    let result = runtime().block_on(async {
        let link = ShmLink::from_env(ShmConfig::default()).map_err(|e| e.to_string())?;
        let (mut tx, mut rx) = link.split();
        match role {
            "exchange" => {
                let n = message_count();
                let sender = tokio::spawn(async move {
                    send_all(&mut tx, 1, n).await?;
                    tx.close().await
                });
                recv_all(&mut rx, 0, n).await?;
                sender
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            "stream" => {
                // Send until the link fails; the parent kills us long before that.
                tokio::spawn(async move { while rx.recv().await.is_ok_and(|m| m.is_some()) {} });
                let mut seq = 0;
                loop {
                    send_one(&mut tx, 1, seq)
                        .await
                        .map_err(|e| format!("after {seq}: {e}"))?;
                    seq += 1;
                }
            }
            "sink" => {
                // Attach, say hello, then never read: the parent's sender fills the ring.
                send_one(&mut tx, 1, 0).await.map_err(|e| e.to_string())?;
                std::future::pending::<()>().await;
                drop(rx);
                Ok(())
            }
            other => Err(format!("unknown child role {other:?}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm_process child ({role}): {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parent side (the tests)

fn spawn_child(role: &str, n: u64) -> (ShmLink, std::process::Child) {
    let (link, handoff) = ShmLink::create_for_child(ShmConfig::default()).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD_ENV, role)
        .env(COUNT_ENV, n.to_string())
        .stdin(Stdio::null());
    let child = handoff.spawn(cmd).unwrap();
    (link, child)
}

/// Kills the child if the test panics (so a failure never leaves a stray process).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn exchange_random_sizes_both_directions() {
    let n = message_count();
    let (link, child) = spawn_child("exchange", n);
    let mut child = KillOnDrop(child);
    let started = Instant::now();
    runtime().block_on(async {
        tokio::time::timeout(GUARD, async {
            let (mut tx, mut rx) = link.split();
            let sender = tokio::spawn(async move {
                send_all(&mut tx, 0, n).await.unwrap();
                tx.close().await.unwrap();
            });
            recv_all(&mut rx, 1, n).await.unwrap();
            sender.await.unwrap();
        })
        .await
        .expect("deadlock guard: the exchange did not finish");
    });
    let status = child.0.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    eprintln!(
        "  {n} messages each way in {:.2?} (debug builds are slow; not an assertion)",
        started.elapsed()
    );
}

fn sigkill_mid_stream_ends_parent_link() {
    let (link, child) = spawn_child("stream", 0);
    let mut child = KillOnDrop(child);
    runtime().block_on(async {
        tokio::time::timeout(GUARD, async {
            let (mut tx, mut rx) = link.split();
            // The child is streaming: take a good number of messages first.
            for seq in 0..2_000 {
                let got = rx.recv().await.unwrap().expect("child ended early");
                assert!(got[..] == *message(1, seq), "message {seq} differs");
            }
            child.0.kill().unwrap();
            // Everything the child committed before it died is delivered; then an error.
            let mut seq = 2_000;
            let end = loop {
                match rx.recv().await {
                    Ok(Some(got)) => {
                        assert!(got[..] == *message(1, seq), "message {seq} differs");
                        seq += 1;
                    }
                    other => break other,
                }
            };
            assert!(
                end.is_err(),
                "recv after SIGKILL returned {end:?}, not an error"
            );
            assert!(rx.recv().await.is_err(), "the error is not sticky");
            // The sending half fails too (at once, or when the ring fills).
            let mut sent = 0u64;
            let err = loop {
                match send_one(&mut tx, 0, sent).await {
                    Ok(()) => sent += 1,
                    Err(e) => break e,
                }
                assert!(
                    sent < 10_000_000,
                    "reserve never failed after the peer died"
                );
            };
            assert!(matches!(err, LinkError::Closed), "unexpected error {err}");
        })
        .await
        .expect("deadlock guard: the link did not end after SIGKILL");
    });
}

fn sigkill_wakes_a_blocked_reserve() {
    let (link, child) = spawn_child("sink", 0);
    let mut child = KillOnDrop(child);
    runtime().block_on(async {
        tokio::time::timeout(GUARD, async {
            let (mut tx, mut rx) = link.split();
            // The child is attached once its hello arrives. Keep `rx` idle from now on, so
            // that only the sender's own wait can notice the death.
            assert!(rx.recv().await.unwrap().is_some());
            let mut seq = 0;
            loop {
                match tokio::time::timeout(Duration::from_millis(300), send_one(&mut tx, 0, seq))
                    .await
                {
                    Ok(r) => r.unwrap(),
                    Err(_) => break, // `reserve` is parked: ring or slab full
                }
                seq += 1;
                assert!(seq < 10_000_000, "reserve never waited");
            }
            child.0.kill().unwrap();
            let err = send_one(&mut tx, 0, seq).await.unwrap_err();
            assert!(matches!(err, LinkError::Closed), "unexpected error {err}");
            drop(rx);
        })
        .await
        .expect("deadlock guard: a parked reserve was not woken by the peer's death");
    });
}

fn malformed_handoff_is_refused_by_the_child() {
    for value in [
        "",
        "2 3 4",
        // Version 1 (shared eventfds) is no longer accepted.
        "1 3 4 5 6 7 8",
        "3 3 4 5 6 7 8",
        "2 0 1 2 3 4 5",
        "2 3 3 4 5 6 7",
        "2 900 901 902 903 904 905",
    ] {
        let status = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, "bad_handoff")
            .env(actix_tether::shm::link::HANDOFF_ENV, value)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(3), "handoff {value:?}: child {status}");
    }
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn links_leak_no_descriptors() {
    let rt = runtime();
    let before = open_descriptors();
    rt.block_on(async {
        for _ in 0..100 {
            let (a, b) = ShmLink::pair(ShmConfig::default()).unwrap();
            let (mut atx, mut arx) = a.split();
            let (mut btx, mut brx) = b.split();
            send_one(&mut atx, 0, 1).await.unwrap();
            send_one(&mut btx, 1, 1).await.unwrap();
            assert!(brx.recv().await.unwrap().is_some());
            assert!(arx.recv().await.unwrap().is_some());
        }
        for _ in 0..3 {
            let (link, child) = spawn_child("exchange", 10);
            let mut child = KillOnDrop(child);
            let (mut tx, mut rx) = link.split();
            send_all(&mut tx, 0, 10).await.unwrap();
            tx.close().await.unwrap();
            recv_all(&mut rx, 1, 10).await.unwrap();
            drop(rx);
            assert!(child.0.wait().unwrap().success());
        }
    });
    assert_eq!(open_descriptors(), before, "descriptors leaked");
}

#[path = "support/harness.rs"]
mod harness;

fn main() -> ExitCode {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        return child_main(&role);
    }
    let tests: [(&str, fn()); 5] = [
        (
            "exchange_random_sizes_both_directions",
            exchange_random_sizes_both_directions,
        ),
        (
            "sigkill_mid_stream_ends_parent_link",
            sigkill_mid_stream_ends_parent_link,
        ),
        (
            "sigkill_wakes_a_blocked_reserve",
            sigkill_wakes_a_blocked_reserve,
        ),
        (
            "malformed_handoff_is_refused_by_the_child",
            malformed_handoff_is_refused_by_the_child,
        ),
        ("links_leak_no_descriptors", links_leak_no_descriptors),
    ];
    harness::run(&tests)
}
