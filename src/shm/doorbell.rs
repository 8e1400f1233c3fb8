//! Doorbells (eventfds) and the liveness socket of a shared-memory link.
//!
//! # Doorbells
//!
//! A [`Doorbell`] is a Linux `eventfd` (created `EFD_NONBLOCK | EFD_CLOEXEC`). A link uses
//! one per direction per event:
//!
//! ```text
//!   direction A→B   data-ready  : rung by A (producer) after a commit,  waited on by B
//!                   space-ready : rung by B (consumer) after a release, waited on by A
//!   direction B→A   data-ready  : rung by B,                            waited on by A
//!                   space-ready : rung by A,                            waited on by B
//! ```
//!
//! Ringing is gated by "parked" flags that live in the ring's shared memory (see
//! [`super::ring`]): a waiter sets its flag, re-checks the ring, and only then waits on the
//! eventfd; a notifier publishes, then rings only if the flag is set. In the steady state
//! (the peer is busy or spinning) no system call is made at all.
//!
//! Waiting goes through tokio's [`AsyncFd`], registered lazily on the first wait, so that a
//! doorbell can be created outside a runtime. The eventfd counter is drained on every wake,
//! so a stale ring costs one spurious wake-up (the waiter re-checks and parks again), never a
//! lost one.
//!
//! # Liveness
//!
//! A [`Liveness`] is one end of a Unix `socketpair` whose other end the peer holds. Nothing is
//! ever written on it: it becomes readable with end-of-file exactly when every copy of the
//! peer's end is closed — the peer dropped both halves of its link, or its process died
//! (the kernel closes a dead process's descriptors at once, so death is seen within
//! milliseconds). Every waiting link half watches it alongside its doorbell.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// An eventfd doorbell. See the [module docs](self).
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// Creates a new eventfd (counter 0, non-blocking, close-on-exec).
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; the flags are valid constants.
        #[allow(unsafe_code)]
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd, is open and owned by nobody else.
        #[allow(unsafe_code)]
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Doorbell { fd })
    }

    /// Wraps an eventfd received from elsewhere (inherited or passed over a socket).
    ///
    /// Makes it non-blocking and close-on-exec. Fails if the descriptor is not an eventfd.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Doorbell> {
        if !is_eventfd(fd.as_raw_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "descriptor is not an eventfd",
            ));
        }
        set_nonblocking(fd.as_raw_fd())?;
        set_cloexec(fd.as_raw_fd(), true)?;
        Ok(Doorbell { fd })
    }

    /// A second handle on the same eventfd (`dup`, close-on-exec).
    pub fn try_clone(&self) -> io::Result<Doorbell> {
        Ok(Doorbell {
            fd: self.fd.try_clone()?,
        })
    }

    /// Rings: adds 1 to the eventfd counter, waking a waiter. One `write` system call.
    ///
    /// A saturated counter (`EAGAIN`) means a wake-up is already pending, which is success.
    pub fn ring(&self) -> io::Result<()> {
        let one: u64 = 1;
        loop {
            // SAFETY: the buffer is a live, properly aligned u64 of exactly 8 bytes, which is
            // what an eventfd write requires; the fd is owned by `self` and open.
            #[allow(unsafe_code)]
            let n = unsafe {
                libc::write(
                    self.fd.as_raw_fd(),
                    (&one as *const u64).cast::<libc::c_void>(),
                    8,
                )
            };
            if n == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(()),
                _ => return Err(e),
            }
        }
    }

    /// Resets the counter without waiting. Returns whether it was non-zero.
    pub fn drain(&self) -> io::Result<bool> {
        drain_fd(self.fd.as_raw_fd())
    }

    /// Turns this doorbell into a waiter (registered with tokio at the first wait).
    pub fn into_waiter(self) -> DoorbellWaiter {
        DoorbellWaiter {
            state: LazyFd::new(self.fd),
        }
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A descriptor that is registered with the tokio reactor on first use.
#[derive(Debug)]
struct LazyFd {
    /// The descriptor while not registered (also kept here if registration failed).
    fd: Option<OwnedFd>,
    /// The descriptor once registered.
    afd: Option<AsyncFd<OwnedFd>>,
}

impl LazyFd {
    fn new(fd: OwnedFd) -> LazyFd {
        LazyFd {
            fd: Some(fd),
            afd: None,
        }
    }

    fn raw(&self) -> RawFd {
        match (&self.fd, &self.afd) {
            (Some(fd), _) => fd.as_raw_fd(),
            (None, Some(a)) => a.get_ref().as_raw_fd(),
            (None, None) => -1,
        }
    }

    /// Registers with the current runtime if not done yet.
    fn registered(&mut self) -> io::Result<&AsyncFd<OwnedFd>> {
        if let Some(fd) = self.fd.take() {
            if tokio::runtime::Handle::try_current().is_err() {
                self.fd = Some(fd);
                return Err(io::Error::other(
                    "shared-memory link needs a tokio runtime (none is running on this thread)",
                ));
            }
            // `try_with_interest` is deprecated in newer tokio because a generic `T: AsRawFd`
            // may not own its descriptor; an `OwnedFd` does, for as long as the `AsyncFd`
            // lives, so the concern does not apply (and the replacement needs tokio 1.54).
            #[allow(deprecated)]
            let registered = AsyncFd::try_with_interest(fd, Interest::READABLE);
            match registered {
                Ok(a) => self.afd = Some(a),
                Err(e) => {
                    let (fd, err) = e.into_parts();
                    self.fd = Some(fd);
                    return Err(err);
                }
            }
        }
        self.afd
            .as_ref()
            .ok_or_else(|| io::Error::other("descriptor lost"))
    }
}

/// The waiting side of a [`Doorbell`]. Owned by exactly one link half.
#[derive(Debug)]
pub struct DoorbellWaiter {
    state: LazyFd,
}

impl DoorbellWaiter {
    /// Waits until the doorbell has been rung since the last wait, then resets it.
    ///
    /// Cancel-safe: dropping the future consumes no ring that was not yet observed.
    /// Needs a tokio runtime with I/O enabled.
    pub async fn wait(&mut self) -> io::Result<()> {
        let afd = self.state.registered()?;
        loop {
            let mut guard = afd.readable().await?;
            match guard.try_io(|fd| match drain_fd(fd.as_raw_fd()) {
                Ok(true) => Ok(()),
                Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Resets the counter without waiting. Returns whether it was non-zero.
    pub fn drain(&self) -> io::Result<bool> {
        drain_fd(self.state.raw())
    }

    /// Ensures the descriptor is registered with the current tokio runtime, so that later
    /// waits cannot fail for lack of one.
    pub fn register(&mut self) -> io::Result<()> {
        self.state.registered().map(|_| ())
    }
}

/// Reads the eventfd counter (non-blocking). `Ok(false)` if it was zero.
fn drain_fd(fd: RawFd) -> io::Result<bool> {
    let mut buf: u64 = 0;
    loop {
        // SAFETY: the buffer is a live u64 of 8 bytes, as an eventfd read requires; `fd` is
        // an open eventfd owned by the caller for the duration of the call.
        #[allow(unsafe_code)]
        let n = unsafe { libc::read(fd, (&mut buf as *mut u64).cast::<libc::c_void>(), 8) };
        if n == 8 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// One end of the liveness socket pair. See the [module docs](self).
#[derive(Debug)]
pub struct Liveness {
    state: LazyFd,
}

impl Liveness {
    /// A connected pair of liveness ends (`socketpair(AF_UNIX, SOCK_STREAM)`, close-on-exec,
    /// non-blocking).
    pub fn pair() -> io::Result<(Liveness, Liveness)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        a.set_nonblocking(true)?;
        b.set_nonblocking(true)?;
        Ok((
            Liveness {
                state: LazyFd::new(a.into()),
            },
            Liveness {
                state: LazyFd::new(b.into()),
            },
        ))
    }

    /// Wraps a liveness end received from elsewhere. Makes it non-blocking and
    /// close-on-exec; fails if it is not a stream or a `SOCK_SEQPACKET` socket (the hub
    /// bootstrap connection, whose end of file also means the peer is gone).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Liveness> {
        if !is_stream_socket(fd.as_raw_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "descriptor is not a stream or seqpacket socket",
            ));
        }
        set_nonblocking(fd.as_raw_fd())?;
        set_cloexec(fd.as_raw_fd(), true)?;
        Ok(Liveness {
            state: LazyFd::new(fd),
        })
    }

    /// A second handle on the same end (`dup`, close-on-exec, not yet registered).
    pub fn try_clone(&self) -> io::Result<Liveness> {
        let raw = self.state.raw();
        if raw < 0 {
            return Err(io::Error::other("liveness descriptor lost"));
        }
        // SAFETY: `raw` is open for the lifetime of `self`, which outlives this borrow.
        #[allow(unsafe_code)]
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        Ok(Liveness {
            state: LazyFd::new(borrowed.try_clone_to_owned()?),
        })
    }

    /// The raw descriptor (for handing it to a child process).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.state.raw()
    }

    /// Whether the peer's end is already closed (non-blocking check).
    pub fn peer_gone(&self) -> bool {
        !matches!(peek_fd(self.state.raw()), Ok(PeekResult::Empty))
    }

    /// Completes when the peer's end is closed (every copy of it), or when the socket
    /// fails. Cancel-safe. Needs a tokio runtime with I/O enabled.
    pub async fn gone(&mut self) -> io::Result<()> {
        let afd = self.state.registered()?;
        loop {
            let mut guard = afd.readable().await?;
            match guard.try_io(|fd| match peek_fd(fd.as_raw_fd()) {
                Ok(PeekResult::Empty) => Err(io::ErrorKind::WouldBlock.into()),
                Ok(PeekResult::Eof) | Ok(PeekResult::Data) => Ok(()),
                Err(e) => Err(e),
            }) {
                Ok(Ok(())) => return Ok(()),
                // A socket error (ECONNRESET and the like) also means the peer is gone.
                Ok(Err(_)) => return Ok(()),
                Err(_would_block) => continue,
            }
        }
    }
}

enum PeekResult {
    /// Nothing to read: the peer is alive.
    Empty,
    /// End of file: every copy of the peer's end is closed.
    Eof,
    /// Bytes arrived. The protocol never writes any, so this is treated as a dead peer.
    Data,
}

fn peek_fd(fd: RawFd) -> io::Result<PeekResult> {
    let mut b = 0u8;
    loop {
        // SAFETY: the buffer is one live byte; `fd` is an open socket owned by the caller.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::recv(
                fd,
                (&mut b as *mut u8).cast::<libc::c_void>(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return Ok(PeekResult::Eof),
            n if n > 0 => return Ok(PeekResult::Data),
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(PeekResult::Empty),
                    _ => return Err(e),
                }
            }
        }
    }
}

fn fcntl_get(fd: RawFd, cmd: libc::c_int) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFD/F_GETFL take no argument and touch no memory.
    #[allow(unsafe_code)]
    let r = unsafe { libc::fcntl(fd, cmd) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fcntl_set(fd: RawFd, cmd: libc::c_int, arg: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETFD/F_SETFL take an integer argument and touch no memory.
    #[allow(unsafe_code)]
    let r = unsafe { libc::fcntl(fd, cmd, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets `O_NONBLOCK` on the open file description.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let fl = fcntl_get(fd, libc::F_GETFL)?;
    if fl & libc::O_NONBLOCK == 0 {
        fcntl_set(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)?;
    }
    Ok(())
}

/// Sets or clears `FD_CLOEXEC` on the descriptor.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let fl = fcntl_get(fd, libc::F_GETFD)?;
    let new = if on {
        fl | libc::FD_CLOEXEC
    } else {
        fl & !libc::FD_CLOEXEC
    };
    if new != fl {
        fcntl_set(fd, libc::F_SETFD, new)?;
    }
    Ok(())
}

/// Whether `fd` is open.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    fcntl_get(fd, libc::F_GETFD).is_ok()
}

/// Whether `fd` is an eventfd (checked through `/proc/self/fd`).
fn is_eventfd(fd: RawFd) -> bool {
    match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        Ok(target) => target.as_os_str() == "anon_inode:[eventfd]",
        // No /proc: fall back to "it is open".
        Err(_) => fd_is_open(fd),
    }
}

/// Whether `fd` is a stream socket.
fn is_stream_socket(fd: RawFd) -> bool {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `ty` and `len` are live and correctly sized for SO_TYPE, an int option.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    };
    r == 0 && (ty == libc::SOCK_STREAM || ty == libc::SOCK_SEQPACKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ring_then_wait_then_drained() {
        let bell = Doorbell::new().unwrap();
        let other = bell.try_clone().unwrap();
        let mut waiter = bell.into_waiter();
        other.ring().unwrap();
        other.ring().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), waiter.wait())
            .await
            .unwrap()
            .unwrap();
        // Both rings were consumed by the one wait.
        assert!(!waiter.drain().unwrap());
    }

    #[tokio::test]
    async fn wait_pends_until_rung() {
        let bell = Doorbell::new().unwrap();
        let other = bell.try_clone().unwrap();
        let mut waiter = bell.into_waiter();
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), waiter.wait());
        assert!(pending.await.is_err(), "wait completed without a ring");
        other.ring().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), waiter.wait())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn liveness_sees_peer_drop() {
        let (mut a, b) = Liveness::pair().unwrap();
        let b2 = b.try_clone().unwrap();
        assert!(!a.peer_gone());
        drop(b);
        // A copy of the peer's end is still open: the peer is alive.
        assert!(!a.peer_gone());
        drop(b2);
        assert!(a.peer_gone());
        tokio::time::timeout(std::time::Duration::from_secs(30), a.gone())
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn from_fd_checks_kind() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Doorbell::from_fd(OwnedFd::from(a)).is_err());
        let bell = Doorbell::new().unwrap();
        assert!(Liveness::from_fd(bell.fd).is_err());
    }
}
