//! StreamLink over stdio, between this test binary and a copy of itself running as a real
//! child process (`harness = false`: the child must own its stdout).
//!
//! Parent: spawns the child with piped stdin/stdout, sends messages of many sizes, checks the
//! echoes, closes, and expects a clean end. Child (env `TETHER_STDIO_CHILD=1`): echoes every
//! message over `StreamLink::stdio` until its input ends, then closes.

use std::process::Stdio;
use std::time::Duration;

use actix_tether::links::stream::StreamLink;
use actix_tether::links::{send_bytes, Link, LinkRx, LinkTx};

fn payload(i: usize) -> Vec<u8> {
    (0..(i * 389) % 70_000).map(|j| (i ^ j) as u8).collect()
}

async fn child() {
    let (mut tx, mut rx) = StreamLink::stdio(Default::default()).split();
    while let Some(m) = rx.recv().await.expect("child recv") {
        send_bytes(&mut tx, &m).await.expect("child send");
    }
    tx.close().await.expect("child close");
}

async fn parent() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .env("TETHER_STDIO_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn child: {e}"))?;
    let w = child.stdin.take().ok_or("no child stdin")?;
    let r = child.stdout.take().ok_or("no child stdout")?;
    let (mut tx, mut rx) = StreamLink::new(r, w, Default::default()).split();
    const N: usize = 300;
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let m = rx.recv().await.map_err(|e| e.to_string())?;
            if m.as_deref() != Some(&payload(i)[..]) {
                return Err(format!("echo {i} differs"));
            }
        }
        match rx.recv().await {
            Ok(None) => Ok(()),
            other => Err(format!("expected a clean end, got {other:?}")),
        }
    });
    for i in 0..N {
        send_bytes(&mut tx, &payload(i))
            .await
            .map_err(|e| e.to_string())?;
    }
    tx.close().await.map_err(|e| e.to_string())?;
    reader.await.map_err(|e| e.to_string())??;
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("child exited with {status}"));
    }
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var_os("TETHER_STDIO_CHILD").is_some() {
        rt.block_on(child());
        return;
    }
    // Deadlock guard only; the exchange takes milliseconds.
    let outcome = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), parent())
            .await
            .unwrap_or_else(|_| Err("deadlock guard: exchange did not finish".into()))
    });
    match outcome {
        Ok(()) => println!("test stdio_echo_through_a_child_process ... ok\n1 passed, 0 failed"),
        Err(e) => {
            println!("test stdio_echo_through_a_child_process ... FAILED: {e}\n0 passed, 1 failed");
            std::process::exit(1);
        }
    }
}
