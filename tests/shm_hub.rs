//! The shared-memory hub with real guest processes: the test binary re-executes itself as
//! the guests (`harness = false`; the environment variable `TETHER_HUB_TEST_GUEST` names
//! the guest's role), started by the hub ([`SpawnGuest`], token in the environment) and
//! joining with [`ShmConnector::from_env`].
//!
//! * `four_guests_typed_echo_through_actors` — a [`ShmHub`] actor with 4 guest processes;
//!   every guest sends `ECHOES` typed messages through its `LinkWriter` and checks every
//!   echo (order and content), all 4 at once.
//! * `sigkill_one_guest_mid_stream` — 3 guests; one streams without end and is killed with
//!   SIGKILL: `PeerLeft { Crashed }` for it, the two others finish their echo, a new guest
//!   takes the freed slot (the hub is full otherwise) and works.
//! * `scribbling_guest_only_loses_its_own_link` — a guest overwrites the head index of its
//!   ring: `PeerLeft { Corrupt }` for it, the echo guest next to it is unaffected.
//! * `thousand_connect_drop_cycles_leak_nothing` — 1,000 joins and departures (guest in this
//!   process, alternately closing cleanly and dropping only the socket): descriptors,
//!   mappings (`/proc/self/maps`) and free slots back to their starting values.
//!
//! * `spawn_kill_cycles_leak_nothing` — 20 real guest processes spawned by the hub, each
//!   killed with SIGKILL while streaming: `Crashed` each time, nothing leaks.
//! * `hostile_guest_cannot_block_or_starve_the_hub` — a guest clears `O_NONBLOCK` on every
//!   descriptor it received, reads every doorbell end it has (to steal wake-ups) and floods
//!   them: the hub, on a single-threaded runtime, keeps serving an echo guest, and its own
//!   link to the hostile guest keeps working (sends until the ring is full, waits) and
//!   fails with an error once the guest is killed. A watchdog thread fails the test if the
//!   hub's thread ever blocks.
//! * `excess_pending_handshakes_are_closed_at_once` — with `max_pending_handshakes = 3`,
//!   eight clients that connect and say nothing: five are closed at once (counted), three
//!   when their request timeout expires; then a real guest joins.
//! * `undrained_departures_hold_slots_and_are_never_lost` — an event channel of capacity 1
//!   that nobody reads: a departure whose event cannot be queued keeps its slot, the hub
//!   fills up and refuses a join (`Full`); once the application receives, every `Left`
//!   arrives and the slots come back.
//! * `shm_endpoint_connect_listen_and_full_refusal` — `shm://` parse/Display, `connect`
//!   before anything listens (`NotFound`), `listen` + `connect` exchange a message; a hub
//!   with one slot refuses a second guest with `Refused { Full }`.
//!
//! * `fd_passing_guest_cannot_block_the_hub_or_hide_its_death` — a guest sends a TCP
//!   socket whose close lingers 120 s down its doorbells and its bootstrap connection, then
//!   sends its own bootstrap connection into a doorbell and exits without a goodbye. On
//!   Linux 6.16+ every such `sendmsg` fails in the guest (`EPERM`, `SO_PASSRIGHTS` off on
//!   the hub's ends) and the guest's exit is `Crashed`; on older kernels the hub takes the
//!   descriptors, evicts the guest as `Corrupt` and closes them off its thread. Either way
//!   the hub (one thread, watchdog) is never blocked, `Left` arrives, an echo guest is
//!   served meanwhile.
//! * `full_cap_of_silent_connections_does_not_lock_out_guests` — `max_pending_handshakes`
//!   silent connections held open (request timeout far beyond the deadlock guard): a
//!   real guest still joins, because the oldest pending handshake is evicted for it.
//!
//! No wall-clock assertion: every wait has a generous deadlock guard.

#![cfg(all(target_os = "linux", feature = "actors"))]

#[path = "actors_support/mod.rs"]
mod actors_support;
#[path = "shm_common/mod.rs"]
mod shm_common;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use actix::prelude::*;
use actix_tether::actors::{
    self, HubPeerEvent, Incoming, LinkEvent, LinkOptions, LinkWriter, PeerJoined, PeerLeft,
    Received, ShmHub, SpawnGuest,
};
use actix_tether::codec::Postcard;
use actix_tether::links::{send_bytes, Link, LinkError, LinkRx};
use actix_tether::shm::bootstrap::{
    self, BootstrapConfig, BootstrapError, JoinRequest, RefuseReason,
};
use actix_tether::shm::hub::{
    Hub, HubConfig, HubError, HubEvent, HubGuest, HubHandle, ShmConnector,
};
use actix_tether::shm::layout::RegionId;
use actix_tether::shm::layout::LAYOUT_VERSION;
use actix_tether::shm::peers::DisconnectReason;
use actix_tether::shm::segment::Segment;
use actors_support::{guard, Collector, Msg};
use tokio::sync::mpsc;

const GUEST_ENV: &str = "TETHER_HUB_TEST_GUEST";
/// Messages each echo guest sends.
const ECHOES: u64 = 2_000;
/// The `seq` of the message by which a guest tells the hub it checked every echo.
const DONE: u64 = u64::MAX;

fn hub_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tether-hub-{tag}-{}.sock", std::process::id()))
}

fn guest_command(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(GUEST_ENV, role).stdin(Stdio::null());
    cmd
}

// ---------------------------------------------------------------------------------------
// Hub-side application
// ---------------------------------------------------------------------------------------

/// What the hub application reports to the test.
#[derive(Debug)]
enum AppEvent {
    Joined(PeerJoined),
    Left(PeerLeft),
    /// A guest's first message arrived on this link.
    Streaming(actors::LinkId),
    /// A guest said it checked all its echoes (its `client` = its slot).
    Done(u32),
}

/// Echoes every message back on the link it came from.
struct App {
    writers: HashMap<actors::LinkId, Addr<LinkWriter<Msg>>>,
    seen: std::collections::HashSet<actors::LinkId>,
    out: mpsc::UnboundedSender<AppEvent>,
}

impl Actor for App {
    type Context = Context<Self>;
}

impl Handler<Incoming> for App {
    type Result = ();
    fn handle(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        let id = incoming.id();
        let link = incoming
            .accept_with::<Msg, Msg, Postcard>(ctx.address().recipient(), LinkOptions::default());
        self.writers.insert(id, link.writer);
    }
}

impl Handler<Received<Msg>> for App {
    type Result = ();
    fn handle(&mut self, r: Received<Msg>, _: &mut Context<Self>) {
        if self.seen.insert(r.link) {
            let _ = self.out.send(AppEvent::Streaming(r.link));
        }
        if r.msg.seq == DONE {
            let _ = self.out.send(AppEvent::Done(r.msg.client));
            return;
        }
        if let Some(w) = self.writers.get(&r.link) {
            w.do_send(actors::Send(r.msg));
        }
    }
}

impl Handler<HubPeerEvent> for App {
    type Result = ();
    fn handle(&mut self, e: HubPeerEvent, _: &mut Context<Self>) {
        let _ = self.out.send(match e {
            HubPeerEvent::Joined(j) => AppEvent::Joined(j),
            HubPeerEvent::Left(l) => AppEvent::Left(l),
            other => panic!("unknown event {other:?}"),
        });
    }
}

struct Running {
    hub: Addr<ShmHub>,
    handle: HubHandle,
    events: mpsc::UnboundedReceiver<AppEvent>,
}

fn start_hub(tag: &str, max_guests: usize) -> Running {
    let (out, events) = mpsc::unbounded_channel();
    let app = App {
        writers: HashMap::new(),
        seen: Default::default(),
        out,
    }
    .start();
    let config = HubConfig {
        max_guests,
        ..Default::default()
    };
    let (hub, handle) = ShmHub::bind(
        hub_path(tag),
        config,
        app.clone().recipient(),
        app.recipient(),
    )
    .expect("bind hub");
    Running {
        hub,
        handle,
        events,
    }
}

async fn spawn(hub: &Addr<ShmHub>, role: &str) -> Child {
    hub.send(SpawnGuest(guest_command(role)))
        .await
        .expect("hub alive")
        .expect("spawn guest")
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<AppEvent>) -> AppEvent {
    guard("hub event", events.recv())
        .await
        .expect("event channel open")
}

/// Waits for children to exit (blocking wait on a blocking thread) and returns whether
/// each succeeded.
async fn wait_all(children: Vec<Child>) -> Vec<bool> {
    guard(
        "guests exit",
        tokio::task::spawn_blocking(move || {
            children
                .into_iter()
                .map(|mut c| c.wait().map(|s| s.success()).unwrap_or(false))
                .collect::<Vec<_>>()
        }),
    )
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

fn four_guests_typed_echo_through_actors() {
    System::new().block_on(async {
        let mut run = start_hub("four", 4);
        let mut children = Vec::new();
        for _ in 0..4 {
            children.push(spawn(&run.hub, "echo").await);
        }
        let (mut joined, mut done) = (Vec::new(), Vec::new());
        while done.len() < 4 {
            match next_event(&mut run.events).await {
                AppEvent::Joined(j) => joined.push(j.peer.slot()),
                AppEvent::Done(slot) => done.push(slot),
                AppEvent::Streaming(_) => {}
                AppEvent::Left(l) => panic!("guest left early: {l:?}"),
            }
        }
        joined.sort_unstable();
        done.sort_unstable();
        assert_eq!(joined, vec![0, 1, 2, 3]);
        assert_eq!(done, joined, "every guest checked all its echoes");
        assert_eq!(run.handle.free_slots(), 0);
        // Stopping the hub fails every guest's link: they exit (successfully: they were
        // done), and each departure is reported.
        run.hub.do_send(actors::Shutdown);
        assert!(wait_all(children).await.iter().all(|ok| *ok));
    });
}

fn sigkill_one_guest_mid_stream() {
    System::new().block_on(async {
        let mut run = start_hub("kill", 3);
        let mut streamer = spawn(&run.hub, "stream").await;
        let streamer_pid = streamer.id();
        let mut victim = None;
        // Wait until the streamer is streaming.
        let mut joined: HashMap<actors::LinkId, PeerJoined> = HashMap::new();
        while victim.is_none() {
            match next_event(&mut run.events).await {
                AppEvent::Joined(j) => {
                    joined.insert(j.link, j);
                }
                AppEvent::Streaming(link) => victim = Some(joined[&link]),
                other => panic!("unexpected {other:?}"),
            }
        }
        let victim = victim.unwrap();
        assert_eq!(victim.pid, streamer_pid);
        let others = vec![spawn(&run.hub, "echo").await, spawn(&run.hub, "echo").await];
        streamer.kill().expect("SIGKILL");
        let _ = streamer.wait();
        let mut done = 0;
        let mut left = false;
        while !(left && done == 2) {
            match next_event(&mut run.events).await {
                AppEvent::Left(l) => {
                    assert_eq!(l.peer, victim.peer, "only the killed guest leaves");
                    assert_eq!(l.reason, DisconnectReason::Crashed);
                    left = true;
                }
                AppEvent::Done(_) => done += 1,
                AppEvent::Joined(_) | AppEvent::Streaming(_) => {}
            }
        }
        // The two others are still connected: the new guest can only get the freed slot.
        let newcomer = spawn(&run.hub, "echo").await;
        loop {
            match next_event(&mut run.events).await {
                AppEvent::Joined(j) => assert_eq!(j.peer.slot(), victim.peer.slot()),
                AppEvent::Done(slot) => {
                    assert_eq!(slot, victim.peer.slot());
                    break;
                }
                AppEvent::Streaming(_) => {}
                AppEvent::Left(l) => panic!("unexpected departure {l:?}"),
            }
        }
        run.hub.do_send(actors::Shutdown);
        let mut all = others;
        all.push(newcomer);
        assert!(wait_all(all).await.iter().all(|ok| *ok));
    });
}

fn scribbling_guest_only_loses_its_own_link() {
    System::new().block_on(async {
        let mut run = start_hub("corrupt", 2);
        let echo = spawn(&run.hub, "echo").await;
        let scribbler = spawn(&run.hub, "scribble").await;
        let scribbler_pid = scribbler.id();
        let mut corrupt_slot = None;
        let mut pids = HashMap::new();
        let mut done = false;
        while !(done && corrupt_slot.is_some()) {
            match next_event(&mut run.events).await {
                AppEvent::Joined(j) => {
                    pids.insert(j.peer, j.pid);
                }
                AppEvent::Left(l) => {
                    assert_eq!(pids[&l.peer], scribbler_pid, "only the scribbler leaves");
                    assert_eq!(l.reason, DisconnectReason::Corrupt);
                    corrupt_slot = Some(l.peer.slot());
                }
                AppEvent::Done(_) => done = true,
                AppEvent::Streaming(_) => {}
            }
        }
        run.hub.do_send(actors::Shutdown);
        let ok = wait_all(vec![echo, scribbler]).await;
        assert!(ok[0], "the echo guest succeeded");
        assert!(ok[1], "the scribbler saw its link fail");
    });
}

fn count_lines(path: &str) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn thousand_connect_drop_cycles_leak_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = HubConfig {
            max_guests: 2,
            ..Default::default()
        };
        let path = hub_path("cycles");
        let mut hub = Hub::bind(&path, config).expect("bind");
        let mut events = hub.take_events();
        // Cycle 0 is a warm-up, so that lazily created runtime state is in the baseline.
        let mut baseline = None;
        for i in 0..1_001u32 {
            let p = path.clone();
            let expect = if i % 2 == 0 {
                // A guest that exchanges a message each way, then drops its link.
                let guest = tokio::spawn(async move { ShmConnector::connect(p).await });
                let hosted = guard("accept", hub.accept()).await.expect("accept");
                let link = guard("join", guest).await.unwrap().expect("join");
                let (mut gtx, mut grx) = link.split();
                let (mut htx, mut hrx) = hosted.link.split();
                send_bytes(&mut gtx, b"ping").await.unwrap();
                let got = guard("recv", hrx.recv()).await.unwrap();
                assert_eq!(got.as_deref(), Some(&b"ping"[..]));
                send_bytes(&mut htx, b"pong").await.unwrap();
                let got = guard("recv", grx.recv()).await.unwrap();
                assert_eq!(got.as_deref(), Some(&b"pong"[..]));
                drop((gtx, grx));
                // The guest closed its direction: the hub's reader ends cleanly.
                assert_eq!(guard("hub recv ends", hrx.recv()).await.unwrap(), None);
                (hosted.peer, DisconnectReason::Clean)
            } else {
                // A guest that joins and goes away without a word (as if killed): it
                // receives its descriptors and closes them and the socket.
                let guest = tokio::spawn(async move {
                    let req = JoinRequest {
                        layout_version: LAYOUT_VERSION,
                        token: 0,
                    };
                    bootstrap::join(p, &req, 5, &BootstrapConfig::default()).await
                });
                let hosted = guard("accept", hub.accept()).await.expect("accept");
                let (mut htx, mut hrx) = hosted.link.split();
                send_bytes(&mut htx, b"lost").await.unwrap();
                drop(guard("join", guest).await.unwrap().expect("join"));
                // The hub's link fails once the guest is gone.
                assert!(guard("hub recv fails", hrx.recv()).await.is_err());
                (hosted.peer, DisconnectReason::Crashed)
            };
            match guard("left", events.recv()).await.unwrap() {
                HubEvent::Left { peer, reason } => {
                    assert_eq!((peer, reason), expect, "cycle {i}");
                }
                other => panic!("unexpected {other:?}"),
            }
            assert_eq!(hub.free_slots(), 2, "slot freed after cycle {i}");
            if i == 0 {
                baseline = Some((open_descriptors(), count_lines("/proc/self/maps")));
            }
        }
        let (fds, maps) = baseline.unwrap();
        assert_eq!(open_descriptors(), fds, "descriptors leaked");
        assert_eq!(count_lines("/proc/self/maps"), maps, "mappings leaked");
    });
}

/// Real processes: spawn a guest, let it stream, SIGKILL it, 20 times; descriptors,
/// mappings and slots come back to their starting values.
fn spawn_kill_cycles_leak_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = HubConfig {
            max_guests: 1,
            ..Default::default()
        };
        let mut hub = Hub::bind(hub_path("kills"), config).expect("bind");
        let mut events = hub.take_events();
        let mut baseline = None;
        for i in 0..21u32 {
            let mut child = hub.spawn(guest_command("stream")).expect("spawn");
            let hosted = guard("accept", hub.accept()).await.expect("accept");
            assert_eq!(hosted.pid, child.id());
            let (htx, mut hrx) = hosted.link.split();
            // It is streaming.
            assert!(guard("recv", hrx.recv()).await.unwrap().is_some());
            child.kill().unwrap();
            child.wait().unwrap();
            match guard("left", events.recv()).await.unwrap() {
                HubEvent::Left { peer, reason } => {
                    assert_eq!(peer, hosted.peer);
                    assert_eq!(reason, DisconnectReason::Crashed, "cycle {i}");
                }
                other => panic!("unexpected {other:?}"),
            }
            // What it committed before it died is still delivered, then the link fails.
            loop {
                match guard("drain", hrx.recv()).await {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("a killed guest cannot close cleanly"),
                    Err(_) => break,
                }
            }
            drop((htx, hrx));
            assert_eq!(hub.free_slots(), 1, "slot freed after cycle {i}");
            if i == 0 {
                baseline = Some((open_descriptors(), count_lines("/proc/self/maps")));
            }
        }
        let (fds, maps) = baseline.unwrap();
        assert_eq!(open_descriptors(), fds, "descriptors leaked");
        assert_eq!(count_lines("/proc/self/maps"), maps, "mappings leaked");
    });
}

/// Fails the whole process if it is not dropped within `limit`: a deadlock guard for tests
/// where a blocked executor thread would keep tokio's own timers from firing.
struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Watchdog {
    fn arm(what: &'static str, limit: Duration) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                let _ = writeln!(
                    std::io::stderr(),
                    "watchdog: {what} did not finish in {limit:?} (a thread is blocked)"
                );
                std::process::exit(101);
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Messages the raw echo guest exchanges.
const RAW_ECHOES: u32 = 2_000;

fn hostile_guest_cannot_block_or_starve_the_hub() {
    let _watchdog = Watchdog::arm("hostile guest test", Duration::from_secs(120));
    // One thread: any system call of the hub that blocked would stop everything.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = HubConfig {
            max_guests: 2,
            ..Default::default()
        };
        let mut hub = Hub::bind(hub_path("hostile"), config).expect("bind");
        let mut events = hub.take_events();
        let mut cmd = guest_command("hostile");
        cmd.stdout(Stdio::piped());
        let mut hostile = hub.spawn(cmd).expect("spawn hostile guest");
        let hosted = guard("accept hostile", hub.accept()).await.expect("accept");
        assert_eq!(hosted.pid, hostile.id());
        // Wait until it has cleared its flags and started its thieves and flooders.
        let stdout = hostile.stdout.take().unwrap();
        let line = guard(
            "hostile guest ready",
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufReader::new(stdout)
                    .read_line(&mut line)
                    .map(|_| line)
            }),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(line.trim(), "ready", "hostile guest: {line:?}");

        // The hub's own link to it: send until the ring is full (then wait for space, on a
        // doorbell the guest floods), and receive (on a flooded doorbell too).
        let (mut htx, mut hrx) = hosted.link.split();
        let sender = tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                match send_bytes(&mut htx, &[0x5a; 100]).await {
                    Ok(()) => sent += 1,
                    Err(e) => return (sent, e),
                }
            }
        });
        let receiver = tokio::spawn(async move {
            loop {
                match hrx.recv().await {
                    Ok(Some(_)) => {}
                    other => return other,
                }
            }
        });

        // Meanwhile an honest guest is served by the same thread.
        let echo = hub
            .spawn(guest_command("raw_echo"))
            .expect("spawn echo guest");
        let honest = guard("accept echo", hub.accept()).await.expect("accept");
        assert_eq!(honest.pid, echo.id());
        let (mut etx, mut erx) = honest.link.split();
        let mut echoed = 0u32;
        loop {
            match guard("echo recv", erx.recv()).await {
                Ok(Some(m)) => {
                    send_bytes(&mut etx, &m).await.expect("echo back");
                    echoed += 1;
                }
                Ok(None) => break,
                Err(e) => panic!("honest guest's link failed: {e}"),
            }
        }
        assert_eq!(echoed, RAW_ECHOES);
        assert!(wait_all(vec![echo]).await[0], "the echo guest failed");
        match guard("echo left", events.recv()).await.unwrap() {
            HubEvent::Left { peer, reason } => {
                assert_eq!((peer, reason), (honest.peer, DisconnectReason::Clean))
            }
            other => panic!("unexpected {other:?}"),
        }

        // The hostile guest dies: the hub's link to it ends with errors, nothing hangs.
        hostile.kill().unwrap();
        hostile.wait().unwrap();
        let (sent, err) = guard("hostile sender ends", sender).await.unwrap();
        assert!(sent > 0, "the hub could not send at all");
        assert!(matches!(err, LinkError::Closed), "sender: {err}");
        let end = guard("hostile receiver ends", receiver).await.unwrap();
        assert!(end.is_err(), "receiver: {end:?}");
        match guard("hostile left", events.recv()).await.unwrap() {
            HubEvent::Left { peer, reason } => {
                assert_eq!((peer, reason), (hosted.peer, DisconnectReason::Crashed))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(hub.free_slots(), 2);
    });
}

/// Whether this kernel has `SO_PASSRIGHTS` (Linux 6.16+): probed on a throw-away pair.
fn kernel_has_passrights() -> bool {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let off: libc::c_int = 0;
    // SAFETY: `off` is a live int of the size given; `a` is open. 83 is SO_PASSRIGHTS
    // (asm-generic; x86_64 and aarch64 use it).
    unsafe {
        libc::setsockopt(
            a.as_raw_fd(),
            libc::SOL_SOCKET,
            83,
            (&off as *const libc::c_int).cast(),
            4,
        ) == 0
    }
}

fn fd_passing_guest_cannot_block_the_hub_or_hide_its_death() {
    let _watchdog = Watchdog::arm("fd-passing guest test", Duration::from_secs(90));
    current_thread().block_on(async {
        let config = HubConfig {
            max_guests: 2,
            ..Default::default()
        };
        let mut hub = Hub::bind(hub_path("fdpass"), config).expect("bind");
        let mut events = hub.take_events();
        let mut cmd = guest_command("fd_passer");
        cmd.stdout(Stdio::piped());
        let mut passer = hub.spawn(cmd).expect("spawn fd passer");
        let hosted = guard("accept passer", hub.accept()).await.expect("accept");
        // The hub's link to it: a receiver waiting on its data doorbell, and a sender that
        // fills the ring and then waits on its space doorbell (the one the guest stuffs
        // its own connection into).
        let (mut htx, mut hrx) = hosted.link.split();
        let sender = tokio::spawn(async move {
            loop {
                if let Err(e) = send_bytes(&mut htx, &[0x5a; 100]).await {
                    return e;
                }
            }
        });
        let receiver = tokio::spawn(async move {
            loop {
                match hrx.recv().await {
                    Ok(Some(_)) => {}
                    other => return other,
                }
            }
        });
        // An honest guest is served by the same thread meanwhile.
        let echo = hub.spawn(guest_command("raw_echo")).expect("spawn echo");
        let honest = guard("accept echo", hub.accept()).await.expect("accept");
        let (mut etx, mut erx) = honest.link.split();
        let mut echoed = 0u32;
        while let Some(m) = guard("echo recv", erx.recv()).await.expect("echo link") {
            send_bytes(&mut etx, &m).await.expect("echo back");
            echoed += 1;
        }
        assert_eq!(echoed, RAW_ECHOES);
        assert!(wait_all(vec![echo]).await[0], "the echo guest failed");

        let stdout = passer.stdout.take().unwrap();
        let report = guard(
            "fd passer report",
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufReader::new(stdout)
                    .read_line(&mut line)
                    .map(|_| line)
            }),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(wait_all(vec![passer]).await[0], "the fd passer failed");
        let refused = kernel_has_passrights();
        let expected = if refused {
            "bell=EPERM space=EPERM conn=EPERM own_conn=EPERM"
        } else {
            "bell=sent space=sent conn=sent own_conn=sent"
        };
        assert_eq!(report.trim(), expected);
        // Gone, promptly, although its connection may be in flight in our doorbell.
        let mut left = Vec::new();
        while left.len() < 2 {
            match guard("left", events.recv()).await.unwrap() {
                HubEvent::Left { peer, reason } => left.push((peer, reason)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            left.contains(&(honest.peer, DisconnectReason::Clean)),
            "{left:?}"
        );
        let reason = if refused {
            DisconnectReason::Crashed
        } else {
            DisconnectReason::Corrupt
        };
        assert!(left.contains(&(hosted.peer, reason)), "{left:?}");
        let err = guard("hub sender ends", sender).await.unwrap();
        assert!(
            matches!(err, LinkError::Closed | LinkError::Corrupt(_)),
            "sender: {err}"
        );
        let end = guard("hub receiver ends", receiver).await.unwrap();
        assert!(end.is_err(), "receiver: {end:?}");
        assert_eq!(hub.free_slots(), 2);
    });
}

fn full_cap_of_silent_connections_does_not_lock_out_guests() {
    current_thread().block_on(async {
        let config = HubConfig {
            max_pending_handshakes: 4,
            bootstrap: BootstrapConfig {
                // Far beyond the deadlock guard: no silent connection times out in time.
                request_timeout: Duration::from_secs(600),
                ..Default::default()
            },
            ..Default::default()
        };
        let path = hub_path("silentcap");
        let mut hub = Hub::bind(&path, config).expect("bind");
        // The attacker's silent connections fill the cap (accepted first: FIFO backlog).
        let silent: Vec<_> = (0..4).map(|_| shm_common::raw_connect(&path)).collect();
        let guest = tokio::spawn(ShmConnector::connect(path.clone()));
        let hosted = guard("accept", hub.accept()).await.expect("accept");
        let link = guard("join", guest).await.unwrap().expect("join");
        let (mut gtx, _grx) = link.split();
        let (_htx, mut hrx) = hosted.link.split();
        send_bytes(&mut gtx, b"through").await.unwrap();
        let got = guard("recv", hrx.recv()).await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"through"[..]));
        // The oldest silent connection made room, and was closed.
        assert_eq!(hub.handshakes_dropped(), 1);
        let first = silent.into_iter().next().unwrap();
        let end = guard(
            "oldest closed",
            tokio::task::spawn_blocking(move || shm_common::raw_recv(&first).len()),
        )
        .await
        .unwrap();
        assert_eq!(end, 0);
    });
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn excess_pending_handshakes_are_closed_at_once() {
    current_thread().block_on(async {
        let config = HubConfig {
            max_pending_handshakes: 3,
            bootstrap: BootstrapConfig {
                request_timeout: Duration::from_secs(2),
                ..Default::default()
            },
            ..Default::default()
        };
        let path = hub_path("pending");
        let mut hub = Hub::bind(&path, config).expect("bind");
        // Eight clients that connect and say nothing (the kernel queues all of them).
        let silent: Vec<_> = (0..8).map(|_| shm_common::raw_connect(&path)).collect();
        // The hub takes three into handshakes and closes the five others at once; the
        // three are closed when their request timeout expires. Every client sees the end.
        let ends = tokio::task::spawn_blocking(move || {
            silent
                .iter()
                .map(|fd| shm_common::raw_recv(fd).len())
                .collect::<Vec<_>>()
        });
        tokio::select! {
            r = hub.accept() => panic!("a silent client joined: {r:?}"),
            ends = ends => assert_eq!(ends.unwrap(), vec![0; 8], "every client sees EOF"),
        }
        assert_eq!(hub.handshakes_dropped(), 5);
        assert_eq!(hub.handle().handshakes_dropped(), 5);
        // A real guest gets through.
        let guest = tokio::spawn(ShmConnector::connect(path.clone()));
        let hosted = guard("accept", hub.accept()).await.expect("accept");
        let link = guard("join", guest).await.unwrap().expect("join");
        let (mut gtx, _grx) = link.split();
        let (_htx, mut hrx) = hosted.link.split();
        send_bytes(&mut gtx, b"through").await.unwrap();
        let got = guard("recv", hrx.recv()).await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"through"[..]));
        assert_eq!(hub.handshakes_dropped(), 5);
    });
}

/// A guest joined with the raw bootstrap (no link on its side), and the hub's side.
async fn join_raw(hub: &mut Hub, path: &std::path::Path) -> (bootstrap::Joined, HubGuest) {
    let path = path.to_path_buf();
    let guest = tokio::spawn(async move {
        let req = JoinRequest {
            layout_version: LAYOUT_VERSION,
            token: 0,
        };
        bootstrap::join(&path, &req, 5, &BootstrapConfig::default()).await
    });
    let hosted = guard("accept", hub.accept()).await.expect("accept");
    let joined = guard("join", guest).await.unwrap().expect("join");
    (joined, hosted)
}

/// Makes the hub drop a raw guest (it sends a datagram the protocol never sends) and waits
/// until the hub has closed the connection. On a single-threaded runtime that means the
/// hub's watcher has processed the departure: its event is queued, or it waits for room.
async fn leave(mut joined: bootstrap::Joined) {
    // SAFETY: the buffer is live for its length; the descriptor is open.
    let n = unsafe {
        libc::send(
            joined.conn.as_fd().as_raw_fd(),
            b"junk".as_ptr().cast(),
            4,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    assert_eq!(n, 4, "send: {}", std::io::Error::last_os_error());
    let gone = guard("hub closes", joined.conn.gone()).await;
    assert_eq!(gone, bootstrap::PeerGone::Eof);
}

fn undrained_departures_hold_slots_and_are_never_lost() {
    current_thread().block_on(async {
        let config = HubConfig {
            max_guests: 2,
            event_capacity: 1,
            ..Default::default()
        };
        let path = hub_path("undrained");
        let mut hub = Hub::bind(&path, config).expect("bind");
        let mut events = hub.take_events();
        let (a, ha) = join_raw(&mut hub, &path).await;
        let (b, hb) = join_raw(&mut hub, &path).await;
        assert_eq!(hub.free_slots(), 0);
        leave(a).await;
        assert_eq!(hub.free_slots(), 1, "a reported departure frees its slot");
        // The channel (capacity 1) is full now and nobody receives.
        leave(b).await;
        assert_eq!(
            hub.free_slots(),
            1,
            "an unreported departure keeps its slot"
        );
        let (c, hc) = join_raw(&mut hub, &path).await;
        assert_eq!(hc.peer.slot(), ha.peer.slot());
        leave(c).await;
        assert_eq!(hub.free_slots(), 0);
        // The hub is full: a join is refused, clearly.
        let p = path.clone();
        let refused = tokio::spawn(async move {
            let req = JoinRequest {
                layout_version: LAYOUT_VERSION,
                token: 0,
            };
            bootstrap::join(&p, &req, 5, &BootstrapConfig::default()).await
        });
        tokio::select! {
            r = hub.accept() => panic!("a guest joined a full hub: {r:?}"),
            r = refused => match r.unwrap() {
                Err(BootstrapError::Refused { reason: RefuseReason::Full, detail: 2 }) => {}
                other => panic!("expected a Full refusal, got {other:?}"),
            },
        }
        // Receiving delivers every departure; then the slots come back.
        let mut left = Vec::new();
        for _ in 0..3 {
            match guard("left", events.recv()).await.expect("events open") {
                HubEvent::Left { peer, reason } => {
                    // `leave` sends a datagram the protocol never sends: a violation.
                    assert_eq!(reason, DisconnectReason::Corrupt);
                    left.push(peer);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(left[0], ha.peer, "the queued event comes first");
        left.sort();
        let mut expected = vec![ha.peer, hb.peer, hc.peer];
        expected.sort();
        assert_eq!(left, expected, "every departure is reported once");
        assert_eq!(hub.free_slots(), 2);
        let (_d, _hd) = join_raw(&mut hub, &path).await;
    });
}

fn shm_endpoint_connect_listen_and_full_refusal() {
    use actix_tether::endpoint::{self, Endpoint, EndpointError};
    use actix_tether::links::AnyLink;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let path = hub_path("endpoint");
        let ep: Endpoint = format!("shm://{}", path.display()).parse().unwrap();
        assert_eq!(ep.to_string(), format!("shm://{}", path.display()));
        // Nothing listens yet: a clear "not found".
        match endpoint::connect(&ep).await {
            Err(EndpointError::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{source}")
            }
            Err(other) => panic!("expected NotFound, got {other:?}"),
            Ok(_) => panic!("connected to nothing"),
        }
        let listener = endpoint::listen(&ep).await.expect("listen");
        assert_eq!(listener.local_endpoint(), ep);
        let guest = tokio::spawn({
            let ep = ep.clone();
            async move { endpoint::connect(&ep).await }
        });
        let hosted = guard("accept", listener.accept()).await.expect("accept");
        let guest = guard("connect", guest).await.unwrap().expect("connect");
        assert!(matches!(hosted, AnyLink::Shm(_)) && matches!(guest, AnyLink::Shm(_)));
        let (mut gtx, _grx) = guest.split();
        let (_htx, mut hrx) = hosted.split();
        send_bytes(&mut gtx, b"over shm://").await.unwrap();
        let got = guard("recv", hrx.recv()).await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"over shm://"[..]));
        drop(listener);

        // A hub with one slot refuses a second guest with a clear error.
        let path = hub_path("full");
        let mut hub = Hub::bind(
            &path,
            HubConfig {
                max_guests: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let first = tokio::spawn(ShmConnector::connect(path.clone()));
        let _hosted = guard("accept", hub.accept()).await.unwrap();
        let _first = first.await.unwrap().expect("first guest joins");
        let second = tokio::spawn(ShmConnector::connect(path.clone()));
        tokio::select! {
            r = hub.accept() => panic!("a second guest was accepted: {r:?}"),
            r = second => match r.unwrap() {
                Err(HubError::Bootstrap(BootstrapError::Refused {
                    reason: RefuseReason::Full,
                    detail: 1,
                })) => {}
                other => panic!("expected a Full refusal, got {other:?}"),
            },
        }
        assert_eq!(hub.free_slots(), 0);
    });
}

// ---------------------------------------------------------------------------------------
// Guests
// ---------------------------------------------------------------------------------------

/// Echo guest: sends `ECHOES` messages through its actors, checks every echo, reports DONE,
/// then waits until the hub goes away.
async fn echo_guest() -> Result<(), String> {
    let joined = ShmConnector::from_env()
        .map_err(|e| e.to_string())?
        .join_with_info()
        .await
        .map_err(|e| e.to_string())?;
    let me = joined.peer_id;
    let (collector, mut replies, mut events) = Collector::<Msg>::start();
    let link = actors::spawn_link::<Msg, Msg, Postcard, _>(
        joined.link,
        collector.clone().recipient(),
        LinkOptions::default().events(collector.recipient()),
    );
    let writer = link.writer.clone();
    let sender = actix::spawn(async move {
        for seq in 0..ECHOES {
            writer
                .send(actors::Send(Msg::new(me, seq)))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(writer)
    });
    for seq in 0..ECHOES {
        let r = guard("echo", replies.recv())
            .await
            .ok_or("reader stopped")?;
        if r.msg != Msg::new(me, seq) {
            return Err(format!("guest {me}: echo {seq} wrong: {:?}", r.msg));
        }
    }
    let writer = sender.await.map_err(|e| e.to_string())??;
    let done = Msg {
        client: me,
        seq: DONE,
        text: String::new(),
        blob: Vec::new(),
    };
    writer
        .send(actors::Send(done))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    // Wait for the hub to go away (its shutdown fails our reader).
    loop {
        match guard("hub gone", events.recv()).await {
            Some(LinkEvent::Down(d)) if d.side == actors::Side::Reader => return Ok(()),
            Some(_) => {}
            None => return Err("events ended".into()),
        }
    }
}

/// Streaming guest: sends without end (until killed).
async fn stream_guest() -> Result<(), String> {
    let link = ShmConnector::from_env()
        .map_err(|e| e.to_string())?
        .join()
        .await
        .map_err(|e| e.to_string())?;
    let (collector, _replies, _events) = Collector::<Msg>::start();
    let link = actors::spawn_link::<Msg, Msg, Postcard, _>(
        link,
        collector.recipient(),
        LinkOptions::default(),
    );
    for seq in 0.. {
        link.writer
            .send(actors::Send(Msg::new(99, seq)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Scribbling guest: joins with the raw bootstrap, overwrites the head index of its
/// sending ring with a misaligned value, rings the hub's data doorbell, and expects the hub
/// to drop it (end of file on the bootstrap connection).
async fn scribble_guest() -> Result<(), String> {
    use actix_tether::shm::doorbell::Doorbell;
    let c = ShmConnector::from_env().map_err(|e| e.to_string())?;
    let token: u64 = std::env::var(actix_tether::shm::hub::HUB_TOKEN_ENV)
        .unwrap()
        .parse()
        .unwrap();
    let req = JoinRequest {
        layout_version: LAYOUT_VERSION,
        token,
    };
    let mut joined = bootstrap::join(c.path(), &req, 5, &BootstrapConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let seg_fd = joined.fds[0].try_clone().map_err(|e| e.to_string())?;
    let seg = Segment::attach_fd(seg_fd).map_err(|e| e.to_string())?;
    let ring = seg.layout().region(RegionId::RingBtoA);
    let file = std::fs::File::from(joined.fds.remove(0));
    // head (the producer's index, first word of the ring header) = 12345: misaligned.
    file.write_all_at(&12345u64.to_le_bytes(), ring.offset)
        .map_err(|e| e.to_string())?;
    // fds after removing the segment: data A→B, space A→B, data B→A, space B→A.
    let data_ba = Doorbell::from_fd(joined.fds.remove(2)).map_err(|e| e.to_string())?;
    data_ba.ring().map_err(|e| e.to_string())?;
    match guard("hub drops us", joined.conn.gone()).await {
        bootstrap::PeerGone::Eof | bootstrap::PeerGone::Error(_) => Ok(()),
        other => Err(format!("unexpected end {other:?}")),
    }
}

/// Joins the hub named in the environment with the raw bootstrap (as a hostile guest would:
/// the descriptors in hand, no `ShmLink`), on a runtime of its own.
fn raw_join() -> Result<bootstrap::Joined, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let c = ShmConnector::from_env().map_err(|e| e.to_string())?;
    let token: u64 = std::env::var(actix_tether::shm::hub::HUB_TOKEN_ENV)
        .map_err(|e| e.to_string())?
        .parse()
        .map_err(|_| "bad token")?;
    let req = JoinRequest {
        layout_version: LAYOUT_VERSION,
        token,
    };
    let joined = rt
        .block_on(bootstrap::join(
            c.path(),
            &req,
            5,
            &BootstrapConfig::default(),
        ))
        .map_err(|e| e.to_string())?;
    Ok(joined)
}

/// Hostile guest: joins with the raw bootstrap, clears `O_NONBLOCK` on every descriptor it
/// received (with eventfd doorbells this flag was shared with the hub), then, for every
/// doorbell end, runs a thief thread that reads it (blocking) and a flooder thread that
/// writes to it without end (a near-saturating eventfd value and 64 KiB chunks). Prints
/// `ready`, then waits for the hub to go away (or to be killed).
fn hostile_guest() -> Result<(), String> {
    let joined = raw_join()?;
    let conn = joined.conn.into_owned_fd();
    let fds = joined.fds;
    for fd in fds.iter().chain([&conn]) {
        // SAFETY: F_GETFL/F_SETFL take and return integers; `fd` is open.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) < 0 {
                return Err(format!("fcntl: {}", std::io::Error::last_os_error()));
            }
        }
    }
    for fd in &fds[1..] {
        let raw = fd.as_raw_fd();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: `buf` is live and writable; `raw` stays open (the main thread
                // keeps `fds` until the process ends).
                let n = unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) };
                if n == 0
                    || (n < 0
                        && std::io::Error::last_os_error().kind()
                            != std::io::ErrorKind::Interrupted)
                {
                    return;
                }
            }
        });
        std::thread::spawn(move || {
            let near_max = (u64::MAX - 1).to_ne_bytes();
            let chunk = [0xffu8; 65536];
            loop {
                // SAFETY: both buffers are live for their lengths; `raw` stays open.
                let (a, b) = unsafe {
                    (
                        libc::write(raw, near_max.as_ptr().cast(), near_max.len()),
                        libc::write(raw, chunk.as_ptr().cast(), chunk.len()),
                    )
                };
                if a < 0
                    && b < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    // Neither write is possible on this end (e.g. EPIPE): give up on it.
                    return;
                }
            }
        });
    }
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // Blocks until the hub closes the connection (or this process is killed).
    let mut b = [0u8; 64];
    loop {
        // SAFETY: `b` is live and writable; `conn` is open.
        let n = unsafe { libc::recv(conn.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
        if n <= 0 {
            std::process::exit(0);
        }
    }
}

/// Sends one byte with `pass` in an `SCM_RIGHTS` message on `sock` (non-blocking).
fn try_send_fd(sock: std::os::fd::BorrowedFd<'_>, pass: std::os::fd::RawFd) -> std::io::Result<()> {
    let byte = [1u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as _;
    // SAFETY: the 32-byte, 8-aligned control buffer holds CMSG_SPACE(4) = 24 bytes: one
    // header and one descriptor.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as _;
        libc::CMSG_DATA(c)
            .cast::<libc::c_int>()
            .write_unaligned(pass);
    }
    // SAFETY: `msg` points at live buffers; `sock` is open.
    let n = unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A TCP socket whose last close lingers `secs`: connected over loopback to a peer that
/// never reads, its send buffer full, `SO_LINGER {1, secs}`. Keep the peer: closing it
/// resets the connection and ends the linger.
fn lingering_socket(secs: i32) -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    let chunk = [0x55u8; 65536];
    loop {
        match s.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the TCP socket: {e}"),
        }
    }
    set_linger(&s, secs);
    (s, peer)
}

fn set_linger(s: &std::net::TcpStream, secs: i32) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: secs,
    };
    // SAFETY: `linger` is live and sized as given; the socket is open.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Fd-passing guest: joins with the raw bootstrap, then sends a TCP socket lingering 120 s
/// down its data doorbell, its space doorbell and its bootstrap connection, and finally its
/// own bootstrap connection down the space doorbell. Prints what became of each send
/// (`EPERM` or `sent`) and exits without a goodbye, its connection possibly in flight.
fn fd_passer_guest() -> Result<(), String> {
    let joined = raw_join()?;
    let conn = joined.conn.into_owned_fd();
    let (tcp, peer) = lingering_socket(120);
    let outcome = |r: std::io::Result<()>| match r {
        Ok(()) => Ok("sent".to_string()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok("EPERM".to_string()),
        Err(e) => Err(format!("sendmsg: {e}")),
    };
    // fds: segment, data A→B, space A→B (our notifier), data B→A (our notifier), space B→A.
    let bell = outcome(try_send_fd(joined.fds[3].as_fd(), tcp.as_raw_fd()))?;
    let space = outcome(try_send_fd(joined.fds[2].as_fd(), tcp.as_raw_fd()))?;
    let on_conn = outcome(try_send_fd(conn.as_fd(), tcp.as_raw_fd()))?;
    let own = outcome(try_send_fd(joined.fds[2].as_fd(), conn.as_raw_fd()))?;
    println!("bell={bell} space={space} conn={on_conn} own_conn={own}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // Our own copy must not linger at exit (if the hub has one, its close lingers there,
    // off its executor, until `peer` goes with this process and resets the connection).
    set_linger(&tcp, 0);
    drop(tcp);
    drop(peer);
    std::process::exit(0);
}

/// Raw echo guest: `RAW_ECHOES` round trips over its `ShmLink` (no actors), each checked,
/// then closes its link.
async fn raw_echo_guest() -> Result<(), String> {
    let link = ShmConnector::from_env()
        .map_err(|e| e.to_string())?
        .join()
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, mut rx) = link.split();
    for i in 0..RAW_ECHOES {
        let msg = i.to_le_bytes().repeat(1 + (i as usize % 50));
        send_bytes(&mut tx, &msg).await.map_err(|e| e.to_string())?;
        match guard("raw echo", rx.recv()).await {
            Ok(Some(back)) if back[..] == msg[..] => {}
            other => return Err(format!("echo {i}: {other:?}")),
        }
    }
    drop(tx);
    drop(rx);
    Ok(())
}

fn guest_main(role: &str) -> ExitCode {
    if role == "hostile" || role == "fd_passer" {
        let run = if role == "hostile" {
            hostile_guest
        } else {
            fd_passer_guest
        };
        return match run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "guest {role}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = System::new().block_on(async {
        match role {
            "echo" => echo_guest().await,
            "stream" => stream_guest().await,
            "scribble" => scribble_guest().await,
            "raw_echo" => raw_echo_guest().await,
            other => Err(format!("unknown role {other}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "guest {role}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[path = "support/harness.rs"]
mod harness;

fn main() -> ExitCode {
    if let Ok(role) = std::env::var(GUEST_ENV) {
        return guest_main(&role);
    }
    let tests: [(&str, fn()); 11] = [
        (
            "fd_passing_guest_cannot_block_the_hub_or_hide_its_death",
            fd_passing_guest_cannot_block_the_hub_or_hide_its_death,
        ),
        (
            "full_cap_of_silent_connections_does_not_lock_out_guests",
            full_cap_of_silent_connections_does_not_lock_out_guests,
        ),
        (
            "excess_pending_handshakes_are_closed_at_once",
            excess_pending_handshakes_are_closed_at_once,
        ),
        (
            "undrained_departures_hold_slots_and_are_never_lost",
            undrained_departures_hold_slots_and_are_never_lost,
        ),
        (
            "hostile_guest_cannot_block_or_starve_the_hub",
            hostile_guest_cannot_block_or_starve_the_hub,
        ),
        (
            "spawn_kill_cycles_leak_nothing",
            spawn_kill_cycles_leak_nothing,
        ),
        (
            "shm_endpoint_connect_listen_and_full_refusal",
            shm_endpoint_connect_listen_and_full_refusal,
        ),
        (
            "four_guests_typed_echo_through_actors",
            four_guests_typed_echo_through_actors,
        ),
        ("sigkill_one_guest_mid_stream", sigkill_one_guest_mid_stream),
        (
            "scribbling_guest_only_loses_its_own_link",
            scribbling_guest_only_loses_its_own_link,
        ),
        (
            "thousand_connect_drop_cycles_leak_nothing",
            thousand_connect_drop_cycles_leak_nothing,
        ),
    ];
    harness::run(&tests)
}
