//! Accept errors are reported, not swallowed, and the acceptor resumes after them.
//!
//! Runs alone in its own test binary because it lowers the process's open-file limit to
//! make `accept` fail with `EMFILE`.

#![cfg(feature = "actors")]

mod actors_support;

use std::io;

use actix::prelude::*;
use actix_tether::actors::{AcceptError, Acceptor, ActorConfig, Incoming};
use actix_tether::endpoint::EndpointError;
use actors_support::*;
use tokio::sync::mpsc;

struct App {
    incoming: mpsc::UnboundedSender<Incoming>,
    errors: mpsc::UnboundedSender<AcceptError>,
}
impl Actor for App {
    type Context = Context<Self>;
}
impl Handler<Incoming> for App {
    type Result = ();
    fn handle(&mut self, i: Incoming, _: &mut Context<Self>) {
        let _ = self.incoming.send(i);
    }
}
impl Handler<AcceptError> for App {
    type Result = ();
    fn handle(&mut self, e: AcceptError, _: &mut Context<Self>) {
        let _ = self.errors.send(e);
    }
}

/// Soft and hard limits on open files, from /proc/self/limits.
fn nofile() -> (String, String) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().to_string(), f.next().unwrap().to_string())
}

/// Sets this process's open-file limits with util-linux `prlimit` (only used when the
/// soft limit is too high to fill cheaply).
fn set_nofile(soft: &str, hard: &str) {
    let ok = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .expect("prlimit")
        .success();
    assert!(ok, "prlimit failed");
}

#[actix::test]
async fn accept_error_is_reported_and_accepting_resumes() {
    let (itx, mut incoming) = mpsc::unbounded_channel();
    let (etx, mut errors) = mpsc::unbounded_channel();
    let app = App {
        incoming: itx,
        errors: etx,
    }
    .start();
    let (_acceptor, ep) = Acceptor::listen(
        &"tcp://127.0.0.1:0".parse().unwrap(),
        app.clone().recipient(),
        app.recipient(),
        &ActorConfig::default(),
    )
    .await
    .unwrap();
    let addr = ep.to_string().trim_start_matches("tcp://").to_string();

    // Without giving the acceptor a chance to run: connect a client (it waits in the
    // backlog), then open /dev/null until the process has no descriptor left, so the
    // acceptor's `accept` fails with EMFILE.
    let (soft, hard) = nofile();
    let lowered = soft.parse::<u64>().map_or(true, |n| n > 65_536);
    if lowered {
        set_nofile("4096", &hard);
    }
    let _client = std::net::TcpStream::connect(&addr).unwrap();
    let mut fillers = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
        }
    }

    let AcceptError { error } = guard("accept error", errors.recv()).await.unwrap();
    drop(fillers);
    if lowered {
        set_nofile(&soft, &hard);
    }
    match &error {
        EndpointError::Io { source, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::EMFILE), "{error}");
            assert_eq!(
                source.kind(),
                io::Error::from_raw_os_error(libc::EMFILE).kind()
            );
        }
        other => panic!("unexpected error {other}"),
    }

    // With descriptors available again the acceptor, after its retry delay, accepts the
    // waiting client.
    let inc = guard("incoming after retry", incoming.recv())
        .await
        .unwrap();
    assert_eq!(inc.local_endpoint(), &ep);
}
