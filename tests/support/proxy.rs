//! A TCP proxy for tests that resets connections (RST) after a random byte budget.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Smallest client→server byte budget of a proxied connection.
pub const BUDGET_MIN: u64 = 20_000;
/// Budgets are drawn from `BUDGET_MIN..BUDGET_MIN + BUDGET_SPAN`.
pub const BUDGET_SPAN: u64 = 40_000;
/// The proxy forwards in reads of at most this many bytes.
pub const READ_CHUNK: usize = 4096;

/// Most client→server bytes one proxied connection forwards: the budget is checked after
/// each read, so the read that reaches it is forwarded whole.
pub const MAX_FORWARDED: u64 = BUDGET_MIN + BUDGET_SPAN - 1 + READ_CHUNK as u64 - 1;

/// A TCP proxy that forwards connections to `upstream` and resets each one (RST, via
/// SO_LINGER 0) after a random budget of client→server bytes (see [`BUDGET_MIN`] and
/// [`MAX_FORWARDED`]).
pub async fn reset_proxy(upstream: SocketAddr, seed: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resets = Arc::new(AtomicU64::new(0));
    let counter = resets.clone();
    tokio::spawn(async move {
        let mut rng = seed;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let budget = BUDGET_MIN + (rng >> 33) % BUDGET_SPAN;
            let counter = counter.clone();
            tokio::spawn(async move {
                let reset = {
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up = async {
                        let mut buf = [0u8; READ_CHUNK];
                        let mut forwarded = 0u64;
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return false,
                                Ok(n) => n,
                            };
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return false;
                            }
                            forwarded += n as u64;
                            if forwarded >= budget {
                                return true;
                            }
                        }
                    };
                    let down = async {
                        let mut buf = [0u8; READ_CHUNK];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return false,
                                Ok(n) => n,
                            };
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return false;
                            }
                        }
                    };
                    tokio::select! { r = up => r, r = down => r }
                };
                if reset {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                }
            });
        }
    });
    (addr, resets)
}
