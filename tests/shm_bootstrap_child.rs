//! Hub bootstrap with real guest processes: this test binary re-executes itself as the guest
//! (`harness = false`; env `TETHER_BS_CHILD=<mode>`, `TETHER_BS_SOCK=<path>`).
//!
//! The hub passes a memfd and two eventfds; the child checks it got the hub's file (reads
//! what the hub wrote, writes back), rings the first eventfd, then per mode: says goodbye,
//! exits without goodbye, waits to be killed (SIGKILL), or waits for the hub to go away.

#[cfg(target_os = "linux")]
mod shm_common;

#[cfg(target_os = "linux")]
mod imp {
    use std::os::fd::AsFd;
    use std::process::ExitCode;
    use std::time::Duration;

    use actix_tether::shm::bootstrap::{
        join, BootstrapConfig, BootstrapListener, JoinRequest, PeerGone, Welcome,
    };

    use super::shm_common::*;

    const GUARD: Duration = Duration::from_secs(30);
    const SEGMENT_TEXT: &[u8] = b"segment written by the hub";

    pub async fn child(mode: &str) -> Result<(), String> {
        let path = std::env::var("TETHER_BS_SOCK").map_err(|e| e.to_string())?;
        let request = JoinRequest {
            layout_version: 3,
            token: std::process::id().into(),
        };
        let mut joined = join(&path, &request, 3, &BootstrapConfig::default())
            .await
            .map_err(|e| format!("join: {e}"))?;
        if joined.welcome.peer_id != 5 || joined.welcome.layout_version != 3 {
            return Err(format!("unexpected welcome {:?}", joined.welcome));
        }
        for fd in &joined.fds {
            if !is_cloexec(fd.as_fd()) {
                return Err("received descriptor is not close-on-exec".into());
            }
        }
        let seg = joined.fds[0].as_fd();
        if read_at(seg, 0, SEGMENT_TEXT.len()) != SEGMENT_TEXT {
            return Err("segment content differs".into());
        }
        write_at(seg, 100, b"child was here");
        eventfd_write(joined.fds[1].as_fd(), 7);
        match mode {
            "goodbye" => joined.conn.goodbye().map_err(|e| e.to_string()),
            "exit" => std::process::exit(0),
            "wait" | "hub-gone" => {
                println!("ready");
                let gone = joined.conn.gone().await;
                if gone == PeerGone::Eof {
                    Ok(())
                } else {
                    Err(format!("expected the hub's EOF, got {gone:?}"))
                }
            }
            other => Err(format!("unknown mode {other}")),
        }
    }

    async fn scenario(l: &BootstrapListener, mode: &str) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(exe)
            .env("TETHER_BS_CHILD", mode)
            .env("TETHER_BS_SOCK", l.path())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let child_pid = child.id().ok_or("child has no pid")?;

        let seg = memfd("tether-child-seg", SEGMENT_TEXT);
        let (bell_a, bell_b) = (eventfd(), eventfd());
        let incoming = l.accept().await.map_err(|e| e.to_string())?;
        if incoming.credentials().pid != child_pid {
            return Err(format!(
                "SO_PEERCRED pid {} is not the child's {child_pid}",
                incoming.credentials().pid
            ));
        }
        let joining = incoming.read_request().await.map_err(|e| e.to_string())?;
        if joining.request().token != u64::from(child_pid) {
            return Err("token differs".into());
        }
        let welcome = Welcome {
            peer_id: 5,
            generation: 1,
            layout_version: joining.request().layout_version,
        };
        let mut conn = joining
            .welcome(welcome, &[seg.as_fd(), bell_a.as_fd(), bell_b.as_fd()])
            .await
            .map_err(|e| e.to_string())?;

        match mode {
            "goodbye" | "exit" => {
                let gone = conn.gone().await;
                let want = if mode == "goodbye" {
                    PeerGone::Goodbye
                } else {
                    PeerGone::Eof
                };
                if gone != want {
                    return Err(format!("{mode}: hub saw {gone:?}, expected {want:?}"));
                }
                let status = child.wait().await.map_err(|e| e.to_string())?;
                if !status.success() {
                    return Err(format!("{mode}: child exited with {status}"));
                }
                if eventfd_read(bell_a.as_fd()) != 7 {
                    return Err("the child's eventfd write did not arrive".into());
                }
                if read_at(seg.as_fd(), 100, 14) != b"child was here" {
                    return Err("the child's segment write did not arrive".into());
                }
            }
            "wait" => {
                // Kill it once it has everything and is waiting (it says so on stdout).
                use tokio::io::AsyncBufReadExt;
                let out = child.stdout.take().ok_or("no stdout")?;
                let mut line = String::new();
                tokio::io::BufReader::new(out)
                    .read_line(&mut line)
                    .await
                    .map_err(|e| e.to_string())?;
                if line != "ready\n" {
                    return Err(format!("child said {line:?}"));
                }
                child.start_kill().map_err(|e| e.to_string())?;
                let gone = conn.gone().await;
                if gone != PeerGone::Eof {
                    return Err(format!("killed child: hub saw {gone:?}"));
                }
                let status = child.wait().await.map_err(|e| e.to_string())?;
                use std::os::unix::process::ExitStatusExt;
                if status.signal() != Some(libc::SIGKILL) {
                    return Err(format!("child was not killed: {status}"));
                }
            }
            "hub-gone" => {
                drop(conn);
                let status = child.wait().await.map_err(|e| e.to_string())?;
                if !status.success() {
                    return Err(format!("hub-gone: child exited with {status}"));
                }
            }
            _ => unreachable!(),
        }
        Ok(())
    }

    pub async fn parent() -> Result<(), String> {
        let l = BootstrapListener::bind(sock_path("child"), BootstrapConfig::default())
            .map_err(|e| e.to_string())?;
        for mode in ["goodbye", "exit", "wait", "hub-gone"] {
            tokio::time::timeout(GUARD, scenario(&l, mode))
                .await
                .map_err(|_| format!("{mode}: deadlock guard expired"))??;
            println!("test shm_bootstrap_child::{mode} ... ok");
        }
        Ok(())
    }

    pub fn main() -> ExitCode {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let result = match std::env::var("TETHER_BS_CHILD") {
            Ok(mode) => rt.block_on(child(&mode)),
            Err(_) => rt.block_on(parent()),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shm_bootstrap_child failed: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    imp::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {}
