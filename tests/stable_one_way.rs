//! One-way traffic of 1,000,000 items through a stable session over TCP: only standalone
//! acks can drain the sender's replay buffer, which must stay within its bound. In its own
//! test binary because it is the one long test (about 25 s in a debug build).

use std::future::Future;
use std::time::Duration;

use actix_tether::endpoint;
use actix_tether::stable::driver::{DriverConfig, StableClient, StableServer};
use actix_tether::stable::StableConfig;
use bytes::Bytes;

const GUARD: Duration = Duration::from_secs(300);

async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("deadlock guard: {what} did not finish in {GUARD:?}"))
}

#[test]
fn one_way_traffic_keeps_replay_bounded() {
    // 1,000,000 items one way: only standalone acks can drain the sender's replay buffer.
    const ONE_WAY: u32 = 1_000_000;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let cfg = StableConfig {
                replay_max_frames: 1024,
                replay_max_bytes: 64 * 1024,
                ..Default::default()
            };
            let listener = endpoint::listen(&"tcp://127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let ep = listener.local_endpoint();
            let (server, mut sessions) =
                StableServer::new(cfg.clone(), DriverConfig::default()).unwrap();
            tokio::spawn(server.serve(listener));
            let client = StableClient::connect(ep, cfg.clone(), DriverConfig::default()).unwrap();
            let mut srv = guard("accept", sessions.accept()).await.unwrap();
            let sender = tokio::spawn(async move {
                for i in 0..ONE_WAY {
                    client
                        .send(Bytes::copy_from_slice(&i.to_le_bytes()))
                        .await
                        .unwrap();
                }
                client
            });
            guard("receive all", async {
                for i in 0..ONE_WAY {
                    let got = srv.recv().await.unwrap();
                    assert_eq!(&got[..], &i.to_le_bytes());
                }
            })
            .await;
            let client = guard("sender", sender).await.unwrap();
            let st = client.stats().session;
            assert_eq!(st.items_pushed, ONE_WAY as u64);
            assert!(
                st.replay_high_water_frames <= cfg.replay_max_frames,
                "{st:?}"
            );
            assert!(st.replay_high_water_bytes <= cfg.replay_max_bytes, "{st:?}");
            assert!(srv.stats().session.acks_sent > 0);
            eprintln!("one-way: {st:?}");
        });
}
