//! The Link conformance suite on every stream transport: in-memory duplex, TCP, Unix.

#[macro_use]
mod conformance;

use actix_tether::endpoint::{self, Endpoint};
use actix_tether::links::{stream::StreamLink, AnyLink};

async fn tcp_pair() -> (AnyLink, AnyLink) {
    let listener = endpoint::listen(&Endpoint::parse("tcp://127.0.0.1:0").unwrap())
        .await
        .unwrap();
    let ep = listener.local_endpoint();
    let (client, server) = tokio::join!(endpoint::connect(&ep), listener.accept());
    (client.unwrap(), server.unwrap())
}

async fn unix_pair() -> (AnyLink, AnyLink) {
    let dir = std::env::temp_dir().join(format!(
        "tether-conf-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ep = Endpoint::Unix(dir.join("s.sock"));
    let listener = endpoint::listen(&ep).await.unwrap();
    let (client, server) = tokio::join!(endpoint::connect(&ep), listener.accept());
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
    (client.unwrap(), server.unwrap())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
}

suite!(duplex, || async { StreamLink::duplex_pair(64 * 1024) });
suite!(unix_socketpair, || async {
    StreamLink::unix_pair(Default::default()).unwrap()
});
suite!(tcp, tcp_pair);
suite!(unix, unix_pair);
