//! Defences against descriptors passed by an untrusted peer (`SCM_RIGHTS`) on the Unix
//! sockets this library *reads*: doorbell waiting ends, liveness ends, bootstrap
//! connections.
//!
//! # The threat
//!
//! A peer holding the other end of one of our Unix sockets can `sendmsg` descriptors with
//! `SCM_RIGHTS`. A `recv` without a control buffer does not refuse them: the kernel
//! installs nothing and *releases* them inside our `recv` — and if that was the last
//! reference, the file is closed in our thread. A TCP socket with unsent data and
//! `SO_LINGER {1, N}` then blocks that thread (an executor thread) for N seconds. A
//! descriptor parked in our receive queue also stays open for as long as nobody reads it:
//! a guest that sends its own bootstrap connection into one of our doorbells keeps that
//! connection alive after it died, hiding its departure.
//!
//! # The two defences
//!
//! 1. **`SO_PASSRIGHTS` off** ([`refuse_passed_fds`], Linux 6.16+): the kernel refuses, at
//!    the *sender*, any `SCM_RIGHTS` message to our socket (`sendmsg` fails with `EPERM`),
//!    so no descriptor ever reaches our queue. It is set on every socket end we receive on
//!    before its peer end is handed out (socket pairs), on the hub's listening socket (a
//!    connection queued for `accept` inherits it at `connect` time) and again on each
//!    accepted connection. On older kernels the option does not exist (`ENOPROTOOPT`), which
//!    is not an error: defence 2 still holds.
//! 2. **Every read takes the descriptors** ([`recv_guarded`]): `recvmsg` with
//!    `MSG_CMSG_CLOEXEC` and a control buffer for [`SCM_MAX_FD`] descriptors — the most one
//!    `SCM_RIGHTS` message can carry, and a stream `recvmsg` never returns descriptors of
//!    two messages — so the kernel installs them in our table instead of releasing them.
//!    The caller treats any descriptor as a protocol violation, and the descriptors are
//!    closed by [`close_off_thread`] on a dedicated thread, never on the caller's.
//!
//! # Not defended
//!
//! * If our process is at its descriptor limit (`RLIMIT_NOFILE`) when descriptors arrive
//!   (defence 2 only, kernels before 6.16), the kernel cannot install them and releases
//!   the rest in our thread (`MSG_CTRUNC`).
//! * On kernels before 6.16, a descriptor waits in our receive queue until that socket is
//!   read: a doorbell is read when the link half that owns it waits on it. Until then the
//!   descriptor (and whatever it keeps alive, e.g. the guest's own bootstrap connection,
//!   whose end of file is how the hub sees a guest go) stays open.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// `SO_PASSRIGHTS` (Linux 6.16, commit 77cbe1a6d873 "af_unix: Introduce SO_PASSRIGHTS."),
/// not yet in the `libc` crate. Values from the kernel's UAPI headers:
/// `include/uapi/asm-generic/socket.h` and `arch/{alpha,mips}/include/uapi/asm/socket.h`:
/// 83; `arch/sparc/include/uapi/asm/socket.h`: 0x005c (`arch/parisc`: 0x4051, but Rust
/// has no parisc target).
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
pub(crate) const SO_PASSRIGHTS: libc::c_int = 0x005c;
/// See above.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
pub(crate) const SO_PASSRIGHTS: libc::c_int = 83;

/// The most descriptors one `SCM_RIGHTS` message can carry (the kernel's `SCM_MAX_FD`,
/// `include/net/scm.h`).
pub const SCM_MAX_FD: usize = 253;

#[cfg(test)]
thread_local! {
    /// Tests only: leave `SO_PASSRIGHTS` on for sockets made on this thread, to exercise
    /// defence 2 on kernels that support defence 1.
    pub(crate) static KEEP_PASSRIGHTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Turns `SO_PASSRIGHTS` off on `fd`, so that a peer's `SCM_RIGHTS` message to it fails at
/// the sender (`EPERM`). `Ok(true)` if set, `Ok(false)` if the kernel does not know the
/// option (`ENOPROTOOPT`, before Linux 6.16; `EINVAL`/`EOPNOTSUPP` are treated alike).
pub(crate) fn refuse_passed_fds(fd: RawFd) -> io::Result<bool> {
    #[cfg(test)]
    if KEEP_PASSRIGHTS.with(|k| k.get()) {
        return Ok(false);
    }
    let off: libc::c_int = 0;
    // SAFETY: `off` is a live int of the size given; `fd` is an open socket owned by the
    // caller for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            (&off as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOPROTOOPT) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

/// Whether the kernel refuses descriptors sent to `fd` (`SO_PASSRIGHTS` is known and off).
#[cfg(test)]
pub(crate) fn refuses_passed_fds(fd: RawFd) -> bool {
    let mut v: libc::c_int = 1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live and sized for an int option; `fd` is open.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && v == 0
}

/// What one [`recv_guarded`] call got.
#[derive(Debug)]
pub(crate) struct Guarded {
    /// Bytes received (0 at end of file; for a datagram socket with `MSG_TRUNC`, the
    /// datagram's real length).
    pub(crate) len: usize,
    /// `msg_flags` (`MSG_TRUNC`, `MSG_CTRUNC`, ...).
    pub(crate) flags: libc::c_int,
    /// A control message other than `SCM_RIGHTS` arrived.
    pub(crate) foreign_cmsg: bool,
    /// Every descriptor that arrived, owned and close-on-exec. The caller must not drop
    /// them on an executor thread: hand them to [`close_off_thread`] (or keep them).
    pub(crate) fds: Vec<OwnedFd>,
}

impl Guarded {
    /// Whether ancillary data arrived (descriptors, a truncated control buffer, or another
    /// control message).
    pub(crate) fn has_ancillary(&self) -> bool {
        !self.fds.is_empty() || self.foreign_cmsg || self.flags & libc::MSG_CTRUNC != 0
    }
}

/// Control buffer for `SCM_MAX_FD` descriptors plus room for one more header (some other
/// control message); `u64` elements keep it aligned for `cmsghdr`.
const CONTROL_WORDS: usize = (SCM_MAX_FD * size_of::<RawFd>() + 64).div_ceil(8);

/// `recvmsg(fd, buf, flags | MSG_CMSG_CLOEXEC)` with a control buffer large enough for the
/// largest `SCM_RIGHTS` message, so that the kernel installs any descriptor in our table
/// (close-on-exec) instead of releasing it in this thread. `EINTR` is retried; other
/// errors (including `EAGAIN`) are returned.
pub(crate) fn recv_guarded(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<Guarded> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; CONTROL_WORDS];
    loop {
        // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = (CONTROL_WORDS * 8) as _;
        // SAFETY: `msg` points at `iov` (valid for `buf.len()` bytes of writing) and at a
        // control buffer of `CONTROL_WORDS * 8` bytes, 8-aligned; both outlive the call.
        // `fd` is an open socket owned by the caller for the duration of the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        let mut out = Guarded {
            len: n as usize,
            flags: msg.msg_flags,
            foreign_cmsg: false,
            fds: Vec::new(),
        };
        // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_FIRSTHDR/CMSG_NXTHDR
        // only return headers lying entirely within msg_controllen bytes of the buffer (or
        // null). An SCM_RIGHTS header is followed, within its cmsg_len, by
        // cmsg_len - CMSG_LEN(0) bytes of descriptors at CMSG_DATA; each is read unaligned
        // and wrapped in an OwnedFd at once (the kernel installed it in our table and we
        // are its only owner).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let hdr = &*cmsg;
                if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                    let data_len =
                        (hdr.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..data_len / size_of::<RawFd>() {
                        out.fds
                            .push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                } else {
                    out.foreign_cmsg = true;
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        return Ok(out);
    }
}

/// Work for the closer thread.
enum Job {
    Close(Vec<OwnedFd>),
    /// Answered once every job queued before it is done.
    Flush(mpsc::Sender<()>),
}

/// The closer thread's queue (`None` if the thread could not be started).
fn closer() -> &'static Option<Mutex<mpsc::Sender<Job>>> {
    static CLOSER: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    CLOSER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tether-fd-closer".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Close(fds) => drop(fds),
                        Job::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    })
}

/// Closes descriptors received from a peer on a dedicated thread (`tether-fd-closer`,
/// started on first use), never on the caller's: closing the last reference of a file can
/// block for as long as the file wants (a lingering TCP socket, a FUSE file, ...).
///
/// The queue is unbounded in entries but not in descriptors: every queued descriptor is
/// open in this process, so the descriptor limit bounds it. Descriptors wait behind a
/// blocking close; they all came from peers that violated the protocol. If the thread
/// cannot be started, a one-off thread is tried per call, and if that fails too the
/// descriptors are closed on the caller's thread (the only case where the caller may
/// block).
pub(crate) fn close_off_thread(fds: Vec<OwnedFd>) {
    if fds.is_empty() {
        return;
    }
    let fds = match closer() {
        Some(tx) => match tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Job::Close(fds))
        {
            Ok(()) => return,
            Err(mpsc::SendError(Job::Close(fds))) => fds,
            Err(mpsc::SendError(Job::Flush(_))) => return,
        },
        None => fds,
    };
    let holder = std::sync::Arc::new(Mutex::new(Some(fds)));
    let theirs = holder.clone();
    let spawned = std::thread::Builder::new()
        .name("tether-fd-closer".into())
        .spawn(move || drop(theirs.lock().unwrap_or_else(|e| e.into_inner()).take()));
    if spawned.is_err() {
        drop(holder.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// Blocks until every descriptor that a peer sent against the protocol and that was handed
/// to the closer thread before this call is closed.
///
/// Descriptors a peer passes where the protocol allows none (see the `shm` module docs:
/// doorbells, liveness sockets, bootstrap connections; Linux before 6.16 only, later kernels
/// refuse them at the sender) and descriptors of a rejected welcome are closed on a
/// dedicated thread, so that a close that blocks (a lingering TCP socket) never blocks an
/// executor thread. This waits for that thread: for descriptor-leak checks (tests,
/// accounting). It blocks as long as a pending close does: never call it on an executor
/// thread. Returns at once if nothing was ever handed over (or if the closer thread could
/// not be started: those descriptors are closed by one-off threads, not waited for).
pub fn flush_descriptor_closer() {
    let Some(tx) = closer() else { return };
    let (done_tx, done_rx) = mpsc::channel();
    let sent = tx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Job::Flush(done_tx));
    if sent.is_ok() {
        let _ = done_rx.recv();
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Senders of hostile descriptors for the tests.

    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, BorrowedFd};

    /// A TCP socket whose last close blocks for `linger_secs`: connected over loopback to
    /// a peer that never reads, its send buffer full (unsent data), `SO_LINGER {1, secs}`.
    /// Returns the socket and the peer (keep the peer alive: closing it would reset the
    /// connection and end the linger).
    pub(crate) fn lingering_socket(linger_secs: i32) -> (OwnedFd, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let chunk = [0x55u8; 65536];
        let mut filled = false;
        for _ in 0..100_000 {
            match s.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    filled = true;
                    break;
                }
                Err(e) => panic!("filling the TCP socket: {e}"),
            }
        }
        assert!(filled, "the TCP send buffer never filled");
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: linger_secs,
        };
        // SAFETY: `linger` is live and sized as given; the socket is open.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_LINGER: {}", io::Error::last_os_error());
        (OwnedFd::from(s), peer)
    }

    /// Sends one byte with `fd_to_pass` in an `SCM_RIGHTS` message on `sock`.
    pub(crate) fn send_fd(sock: BorrowedFd<'_>, fd_to_pass: BorrowedFd<'_>) -> io::Result<()> {
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
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as _;
        // SAFETY: the control buffer (32 bytes, 8-aligned) holds CMSG_SPACE(4) = 24 bytes,
        // so the first header and its one descriptor fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            libc::CMSG_DATA(cmsg)
                .cast::<RawFd>()
                .write_unaligned(fd_to_pass.as_raw_fd());
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
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Test helper: runs `f` on a thread of its own with a current-thread runtime and
/// `SO_PASSRIGHTS` left on for sockets made there (as on kernels before 6.16), and panics
/// naming `who` if that thread does not finish within `guard` (a lingering close run on it
/// would block it).
#[cfg(test)]
pub(crate) fn on_thread_keeping_passrights<F, Fut>(guard: std::time::Duration, who: &str, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        KEEP_PASSRIGHTS.with(|k| k.set(true));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f());
        done_tx.send(()).unwrap();
    });
    match done_rx.recv_timeout(guard) {
        Ok(()) => t.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(t.join().unwrap_err())
        }
        Err(e) => panic!("{who} is blocked: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;

    #[test]
    fn passrights_off_makes_the_sender_fail_with_eperm() {
        let (a, b) = UnixStream::pair().unwrap();
        let set = refuse_passed_fds(a.as_raw_fd()).unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let r = send_fd(b.as_fd(), x.as_fd());
        if set {
            assert!(refuses_passed_fds(a.as_raw_fd()));
            let e = r.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        } else {
            // Old kernel: the descriptor arrives and is taken, not released.
            r.unwrap();
            let mut buf = [0u8; 4];
            let g = recv_guarded(a.as_raw_fd(), &mut buf, libc::MSG_DONTWAIT).unwrap();
            assert_eq!((g.len, g.fds.len()), (1, 1));
            close_off_thread(g.fds);
        }
    }

    /// Linux 6.16+ (`SO_PASSRIGHTS` known): a listener's setting is inherited by the
    /// connections queued for `accept` at `connect` time, so a client cannot slip a
    /// descriptor in before the accepted socket's own setting.
    #[test]
    fn listener_setting_covers_connections_before_accept() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("tether-scm-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let l = UnixListener::bind(&dir).unwrap();
        let set = refuse_passed_fds(l.as_raw_fd()).unwrap();
        let c = UnixStream::connect(&dir).unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let r = send_fd(c.as_fd(), x.as_fd());
        let _ = std::fs::remove_file(&dir);
        if set {
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EPERM));
        } else {
            r.unwrap();
        }
        drop(l);
    }

    /// With the option on (old kernels), a descriptor is received, not released in the
    /// reading thread: the lingering socket's close happens on the closer thread. A blocked
    /// reader would trip the guard (the linger is longer than the guard).
    #[test]
    fn received_descriptors_are_closed_off_thread() {
        let (a, b) = UnixStream::pair().unwrap();
        let (tcp, _peer) = lingering_socket(120);
        send_fd(b.as_fd(), tcp.as_fd()).unwrap();
        // In flight now: ours is not the last reference, the receiver's will be.
        drop(tcp);
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4];
            let g = recv_guarded(a.as_raw_fd(), &mut buf, 0).unwrap();
            let n = g.fds.len();
            close_off_thread(g.fds);
            done_tx.send(n).unwrap();
        });
        let n = done_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the reading thread blocked");
        assert_eq!(n, 1);
    }
}
