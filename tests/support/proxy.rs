//! A TCP proxy for tests that resets connections (RST) after a random byte budget.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP proxy that forwards connections to `upstream` and resets each one (RST, via
/// SO_LINGER 0) after a random budget of client→server bytes.
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
            let budget = 20_000 + (rng >> 33) % 40_000;
            let counter = counter.clone();
            tokio::spawn(async move {
                let reset = {
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up = async {
                        let mut buf = [0u8; 4096];
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
                        let mut buf = [0u8; 4096];
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
