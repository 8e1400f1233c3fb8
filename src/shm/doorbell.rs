//! Doorbells (socket pairs) and the liveness socket of a shared-memory link.
//!
//! # Doorbells
//!
//! A doorbell is a connected Unix socket pair ([`pair`]): a notifying end ([`Doorbell`]) and
//! a waiting end ([`DoorbellWaiter`]). Each side of a link holds **only its own ends**; the
//! other ends live in the peer's process. A link uses one doorbell per direction per event:
//!
//! ```text
//!   direction A→B   data-ready  : notifier held by A (producer), waiter held by B
//!                   space-ready : notifier held by B (consumer), waiter held by A
//!   direction B→A   data-ready  : notifier held by B,            waiter held by A
//!                   space-ready : notifier held by A,            waiter held by B
//! ```
//!
//! Ringing is gated by "parked" flags that live in the ring's shared memory (see
//! [`super::ring`]): a waiter sets its flag, re-checks the ring, and only then waits on its
//! end; a notifier publishes, then rings only if the flag is set. In the steady state (the
//! peer is busy or spinning) no system call is made at all.
//!
//! **Ringing** is one `send` of one byte with `MSG_DONTWAIT | MSG_NOSIGNAL`. `EAGAIN` (the
//! socket buffer is full) means wake-ups are already pending: success. `EPIPE` /
//! `ECONNRESET` means the waiting end is closed — nobody is left to wake — and is reported
//! as [`LinkError::Closed`].
//!
//! **Waiting** goes through tokio's [`AsyncFd`], registered lazily on the first wait (so a
//! doorbell can be created outside a runtime). A wake-up drains what is pending with
//! `recv(MSG_DONTWAIT)` in a **bounded** loop (at most [`DRAIN_MAX`] bytes per wake-up), so
//! a peer that writes without end cannot hold the waiter in the drain loop: what is left
//! costs further (spurious) wake-ups, each of which consumes tokio's cooperative budget, so
//! the waiting task yields to its executor regularly. A stale ring costs one spurious
//! wake-up (the waiter re-checks and parks again), never a lost one. End of file on the
//! waiting end (every copy of the peer's notifier is closed) is reported once as a wake-up
//! — the peer's last act may have been a change to re-check — and as [`LinkError::Closed`]
//! from then on.
//!
//! ## Why socket pairs, and why `SOCK_STREAM`
//!
//! A doorbell crosses a trust boundary (the hub's guests are not trusted), so neither side
//! may be able to stall or starve the other through it:
//!
//! * **No shared open file description.** An eventfd shared by both processes shares its
//!   `O_NONBLOCK` flag: the peer could clear it with `fcntl(F_SETFL)` and the next `read`
//!   of an empty eventfd (or `write` of a nearly saturated one) would block our executor
//!   thread for ever; it could also read the counter and steal our wake-ups. Each end of a
//!   socket pair is its own open file description: the peer cannot change our flags, and
//!   it cannot read what is sent to our end. Every call passes `MSG_DONTWAIT` anyway, so
//!   even our own descriptor's `O_NONBLOCK` does not matter.
//! * **One direction only.** The waiting end is `shutdown(SHUT_WR)` when the pair is
//!   created: the peer holding it can never send into our notifier end (its `send` fails
//!   with `EPIPE`), so nothing accumulates on a socket we never read.
//! * **`SOCK_STREAM` rather than `SOCK_DGRAM`**: one `recv` drains many pending one-byte
//!   rings at once (a datagram socket returns one datagram per call, so draining costs a
//!   system call per ring); closing one end is a clean end of file on the other and
//!   `EPIPE` on sends (a datagram pair has no end of file: a waiter could not tell that
//!   its notifier is gone); and a full buffer is a plain `EAGAIN`. Every send is charged
//!   to the sender's own socket buffer, so a peer that floods our waiting end spends its
//!   own memory, bounded by its `SO_SNDBUF`.
//!
//! ## Descriptors sent by the peer
//!
//! A Unix socket also carries descriptors (`SCM_RIGHTS`). A plain `recv` would make the
//! kernel release any that arrive inside our call — closing them in our thread if ours
//! was the last reference, which for a lingering TCP socket blocks the executor thread for
//! as long as the peer chose — and a descriptor left in our queue keeps its file open (a
//! guest could park its own bootstrap connection there to hide its death). So (see
//! `scm.rs` for the details):
//!
//! * **`SO_PASSRIGHTS` is off** on both ends of every pair, set by [`pair`] and
//!   [`Liveness::pair`] before any end is handed out, and again by every `from_fd`: on
//!   Linux 6.16+ the peer's `sendmsg` with descriptors fails at the peer (`EPERM`) and
//!   nothing reaches us. Older kernels do not know the option; that is not an error.
//! * **Every read is a `recvmsg` with `MSG_CMSG_CLOEXEC` and room for 253 descriptors**
//!   (`SCM_MAX_FD`, the most one message carries): the kernel hands them to us instead of
//!   releasing them. Any descriptor (or other control message) on a doorbell is a protocol
//!   violation: [`DoorbellWaiter::wait`] returns [`LinkError::Corrupt`] from then on, so
//!   the link fails like a link whose peer corrupted its ring (the hub evicts the guest
//!   with `DisconnectReason::Corrupt`). On a liveness socket it counts as the peer gone.
//!   The descriptors are closed on a dedicated thread (`tether-fd-closer`), never on the
//!   caller's.
//!
//! Not defended: on kernels before 6.16, descriptors stay in our queue until the waiter
//! drains it, i.e. until the link half that owns the doorbell waits on it; and a process
//! at its descriptor limit cannot take them (the kernel then releases them in our thread).
//!
//! # Liveness
//!
//! A [`Liveness`] is one end of a Unix `socketpair` whose other end the peer holds. Nothing is
//! ever written on it: it becomes readable with end-of-file exactly when every copy of the
//! peer's end is closed — the peer dropped both halves of its link, or its process died
//! (the kernel closes a dead process's descriptors at once, so death is seen within
//! milliseconds). Every waiting link half watches it alongside its doorbell.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::task::{ready, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::scm::{close_off_thread, recv_guarded, refuse_passed_fds};
use crate::links::LinkError;

/// Most bytes (pending rings) one wake-up of a [`DoorbellWaiter`] drains: 4 KiB, in at most
/// eight `recv` calls. Honest peers leave a handful of bytes at most.
pub const DRAIN_MAX: usize = DRAIN_CHUNK * DRAIN_ROUNDS;
const DRAIN_CHUNK: usize = 512;
const DRAIN_ROUNDS: usize = 8;

/// Creates a doorbell: a connected `AF_UNIX` `SOCK_STREAM` socket pair (close-on-exec,
/// non-blocking) whose waiting end is shut down for writing. Returns `(notifier, waiter)`
/// as raw descriptors, to be wrapped with [`Doorbell::from_fd`] and
/// [`DoorbellWaiter::from_fd`] by whichever process holds each end.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a live array of two ints, as socketpair requires; the other
    // arguments are valid constants.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded: both descriptors are open and owned by nobody else.
    #[allow(unsafe_code)]
    let (notifier, waiter) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: shutdown takes no pointers; `waiter` is an open, connected socket.
    #[allow(unsafe_code)]
    let r = unsafe { libc::shutdown(waiter.as_raw_fd(), libc::SHUT_WR) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // Before either end leaves this function: nobody can pass descriptors to the waiting
    // end (nor to the notifier, which never reads) on kernels that support it.
    refuse_passed_fds(waiter.as_raw_fd())?;
    refuse_passed_fds(notifier.as_raw_fd())?;
    Ok((notifier, waiter))
}

/// The notifying end of a doorbell. See the [module docs](self).
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// Wraps a notifying end (made by [`pair`], inherited or passed over a socket). Makes it
    /// non-blocking and close-on-exec, and turns `SO_PASSRIGHTS` off where the kernel has
    /// it. Fails unless it is an `AF_UNIX` `SOCK_STREAM` socket.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Doorbell> {
        check_unix_stream(fd.as_raw_fd())?;
        set_nonblocking(fd.as_raw_fd())?;
        set_cloexec(fd.as_raw_fd(), true)?;
        refuse_passed_fds(fd.as_raw_fd())?;
        Ok(Doorbell { fd })
    }

    /// Rings: sends one byte, waking the waiter. One non-blocking `send` system call.
    ///
    /// A full socket buffer (`EAGAIN`) means wake-ups are already pending, which is
    /// success. [`LinkError::Closed`] if the waiting end is closed (`EPIPE`,
    /// `ECONNRESET`): the peer half that would wait on it is gone. Never blocks, whatever
    /// the descriptor's flags.
    pub fn ring(&self) -> Result<(), LinkError> {
        let one = 1u8;
        loop {
            // SAFETY: the buffer is one live byte; the fd is owned by `self` and open.
            #[allow(unsafe_code)]
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    (&one as *const u8).cast::<libc::c_void>(),
                    1,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n == 1 {
                return Ok(());
            }
            if n >= 0 {
                return Err(io::Error::other("doorbell send wrote nothing").into());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(()),
                Some(libc::EPIPE) | Some(libc::ECONNRESET) => return Err(LinkError::Closed),
                _ => return Err(e.into()),
            }
        }
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
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

/// The waiting end of a doorbell. Owned by exactly one link half. See the
/// [module docs](self).
#[derive(Debug)]
pub struct DoorbellWaiter {
    state: LazyFd,
    /// End of file was seen (and reported once as a wake-up).
    eof_seen: bool,
    /// The peer sent descriptors: the doorbell is failed for good.
    violated: bool,
}

impl DoorbellWaiter {
    /// Wraps a waiting end (made by [`pair`], inherited or passed over a socket). Makes it
    /// non-blocking and close-on-exec, and turns `SO_PASSRIGHTS` off where the kernel has
    /// it (an end made by [`pair`] has it off already, before the peer got its end). Fails
    /// unless it is an `AF_UNIX` `SOCK_STREAM` socket.
    pub fn from_fd(fd: OwnedFd) -> io::Result<DoorbellWaiter> {
        check_unix_stream(fd.as_raw_fd())?;
        set_nonblocking(fd.as_raw_fd())?;
        set_cloexec(fd.as_raw_fd(), true)?;
        refuse_passed_fds(fd.as_raw_fd())?;
        Ok(DoorbellWaiter {
            state: LazyFd::new(fd),
            eof_seen: false,
            violated: false,
        })
    }

    /// Waits until the doorbell has been rung since the last wait, then drains it (at most
    /// [`DRAIN_MAX`] pending rings; what is left makes the next wait return at once).
    ///
    /// The first end of file (every copy of the notifier closed) also returns `Ok`: a last
    /// wake-up, so the caller re-checks what the peer did before it went. From then on
    /// [`LinkError::Closed`]. Each completed wait consumes a unit of tokio's cooperative
    /// budget. Cancel-safe: dropping the future consumes no ring that was not yet observed.
    /// Needs a tokio runtime with I/O enabled. Never blocks, whatever the descriptor's flags.
    ///
    /// [`LinkError::Corrupt`] (now and from then on) if the peer sent descriptors
    /// (`SCM_RIGHTS`) down the doorbell — possible only on kernels without
    /// `SO_PASSRIGHTS` — a protocol violation; they were closed on another thread (see
    /// the [module docs](self#descriptors-sent-by-the-peer)).
    pub async fn wait(&mut self) -> Result<(), LinkError> {
        if self.violated {
            return Err(descriptors_sent());
        }
        let afd = self.state.registered()?;
        let eof_seen = &mut self.eof_seen;
        let violated = &mut self.violated;
        std::future::poll_fn(|cx| loop {
            // `poll_read_ready` (unlike `readable().await`) takes a unit of the task's
            // cooperative budget: a peer that keeps our end readable cannot keep this task
            // from yielding.
            let mut guard = match ready!(afd.poll_read_ready(cx)) {
                Ok(g) => g,
                Err(e) => return Poll::Ready(Err(e.into())),
            };
            match guard.try_io(|fd| match drain_fd(fd.as_raw_fd()) {
                Ok(Drained::Empty) => Err(io::ErrorKind::WouldBlock.into()),
                other => other,
            }) {
                Ok(Ok(Drained::Closed)) if *eof_seen => return Poll::Ready(Err(LinkError::Closed)),
                Ok(Ok(Drained::Closed)) => {
                    *eof_seen = true;
                    return Poll::Ready(Ok(()));
                }
                Ok(Ok(Drained::Descriptors)) => {
                    *violated = true;
                    return Poll::Ready(Err(descriptors_sent()));
                }
                Ok(Ok(_)) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e.into())),
                Err(_would_block) => continue,
            }
        })
        .await
    }

    /// Drains pending rings without waiting (at most [`DRAIN_MAX`]). `Ok(true)` if any was
    /// pending; `Ok(false)` if none, or at end of file. An `InvalidData` error if the peer
    /// sent descriptors (closed on another thread; see [`wait`](Self::wait)).
    pub fn drain(&mut self) -> io::Result<bool> {
        if self.violated {
            return Err(io::Error::new(io::ErrorKind::InvalidData, DESCRIPTORS_SENT));
        }
        match drain_fd(self.state.raw())? {
            Drained::Descriptors => {
                self.violated = true;
                Err(io::Error::new(io::ErrorKind::InvalidData, DESCRIPTORS_SENT))
            }
            d => Ok(d == Drained::Rung),
        }
    }

    /// Ensures the descriptor is registered with the current tokio runtime, so that later
    /// waits cannot fail for lack of one.
    pub fn register(&mut self) -> io::Result<()> {
        self.state.registered().map(|_| ())
    }
}

const DESCRIPTORS_SENT: &str =
    "the peer sent descriptors (SCM_RIGHTS) down a doorbell: protocol violation";

fn descriptors_sent() -> LinkError {
    LinkError::Corrupt(DESCRIPTORS_SENT.into())
}

/// What one bounded drain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// At least one ring was consumed.
    Rung,
    /// Nothing pending.
    Empty,
    /// End of file (or a reset): every copy of the notifier is closed.
    Closed,
    /// Descriptors (or other ancillary data) arrived: a protocol violation. They were
    /// handed to the closer thread.
    Descriptors,
}

/// Consumes pending rings: at most `DRAIN_ROUNDS` non-blocking `recvmsg` calls of
/// `DRAIN_CHUNK` bytes, each with room for `SCM_MAX_FD` descriptors (see [`super::scm`]).
/// Stops early when a call returns less than a chunk (the queue is empty: a stream read
/// gathers queued bytes up to the buffer size, stopping after a message with descriptors).
fn drain_fd(fd: RawFd) -> io::Result<Drained> {
    let mut buf = [0u8; DRAIN_CHUNK];
    let mut got = false;
    for _ in 0..DRAIN_ROUNDS {
        let (n, errno) = match recv_guarded(fd, &mut buf, libc::MSG_DONTWAIT) {
            Ok(g) if g.has_ancillary() => {
                close_off_thread(g.fds);
                return Ok(Drained::Descriptors);
            }
            Ok(g) => (g.len as isize, None),
            Err(e) => (-1, Some(e)),
        };
        if n > 0 {
            got = true;
            if (n as usize) < buf.len() {
                return Ok(Drained::Rung);
            }
            continue;
        }
        if n == 0 {
            // End of file after the queued bytes: report the bytes first.
            return Ok(if got { Drained::Rung } else { Drained::Closed });
        }
        let e = errno.unwrap_or_else(|| io::Error::other("recvmsg failed"));
        match e.raw_os_error() {
            // Only a definite "nothing queued" may report `Empty` (the caller then clears
            // the descriptor's readiness).
            Some(libc::EAGAIN) => return Ok(if got { Drained::Rung } else { Drained::Empty }),
            Some(libc::ECONNRESET) => return Ok(if got { Drained::Rung } else { Drained::Closed }),
            _ => return Err(e),
        }
    }
    // The bound was reached: more may be queued. Reported as a wake-up (spurious at worst);
    // the readiness stays set, so the next wait drains on.
    Ok(Drained::Rung)
}

/// One end of the liveness socket pair. See the [module docs](self).
#[derive(Debug)]
pub struct Liveness {
    state: LazyFd,
}

impl Liveness {
    /// A connected pair of liveness ends (`socketpair(AF_UNIX, SOCK_STREAM)`, close-on-exec,
    /// non-blocking, `SO_PASSRIGHTS` off where the kernel has it).
    pub fn pair() -> io::Result<(Liveness, Liveness)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        a.set_nonblocking(true)?;
        b.set_nonblocking(true)?;
        refuse_passed_fds(a.as_raw_fd())?;
        refuse_passed_fds(b.as_raw_fd())?;
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
    /// close-on-exec, and turns `SO_PASSRIGHTS` off where the kernel has it; fails if it is
    /// not an `AF_UNIX` stream or `SOCK_SEQPACKET` socket (the hub bootstrap connection,
    /// whose end of file also means the peer is gone).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Liveness> {
        let ty = unix_socket_type(fd.as_raw_fd())?;
        if ty != libc::SOCK_STREAM && ty != libc::SOCK_SEQPACKET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "descriptor is not a stream or seqpacket socket",
            ));
        }
        set_nonblocking(fd.as_raw_fd())?;
        set_cloexec(fd.as_raw_fd(), true)?;
        refuse_passed_fds(fd.as_raw_fd())?;
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

    /// Completes when the peer's end is closed (every copy of it), when the socket fails,
    /// or when anything arrives on it (the protocol sends nothing: bytes or descriptors are
    /// a violation, treated as the peer gone; descriptors are closed on another thread).
    /// Cancel-safe. Needs a tokio runtime with I/O enabled.
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
    /// Bytes or descriptors arrived. The protocol never writes any, so this is treated as
    /// a dead peer.
    Data,
}

/// Peeks at the liveness socket without consuming anything. A peek of a message with
/// descriptors installs copies of them: the control buffer takes them (the kernel would
/// otherwise release its copies in this thread, possibly the last references if another
/// reader consumed the message meanwhile) and they are closed on the closer thread.
fn peek_fd(fd: RawFd) -> io::Result<PeekResult> {
    let mut b = [0u8; 1];
    match recv_guarded(fd, &mut b, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Ok(g) if g.has_ancillary() => {
            close_off_thread(g.fds);
            Ok(PeekResult::Data)
        }
        Ok(g) if g.len == 0 => Ok(PeekResult::Eof),
        Ok(_) => Ok(PeekResult::Data),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(PeekResult::Empty),
        Err(e) => Err(e),
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

/// An integer socket option of `fd` (`SOL_SOCKET` level).
fn sockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live and correctly sized for an int option.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::c_int>() {
        return Err(io::Error::other("getsockopt returned a short value"));
    }
    Ok(v)
}

/// The `SO_TYPE` of `fd` if it is an `AF_UNIX` socket (`SO_DOMAIN`); `InvalidInput`
/// otherwise (not a socket, or another family).
fn unix_socket_type(fd: RawFd) -> io::Result<libc::c_int> {
    let not = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    match sockopt_int(fd, libc::SO_DOMAIN) {
        Ok(d) if d == libc::AF_UNIX => {}
        Ok(_) => return Err(not("descriptor is not an AF_UNIX socket")),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            return Err(not("descriptor is not a socket"))
        }
        Err(e) => return Err(e),
    }
    sockopt_int(fd, libc::SO_TYPE)
}

/// Checks that `fd` is an `AF_UNIX` `SOCK_STREAM` socket (a doorbell end).
fn check_unix_stream(fd: RawFd) -> io::Result<()> {
    if unix_socket_type(fd)? != libc::SOCK_STREAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "doorbell descriptor is not an AF_UNIX SOCK_STREAM socket",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::scm::test_support as scm;
    use std::time::Duration;

    const GUARD: Duration = Duration::from_secs(30);

    fn bell() -> (Doorbell, DoorbellWaiter) {
        let (n, w) = pair().unwrap();
        (
            Doorbell::from_fd(n).unwrap(),
            DoorbellWaiter::from_fd(w).unwrap(),
        )
    }

    fn clear_nonblocking(fd: RawFd) {
        let fl = fcntl_get(fd, libc::F_GETFL).unwrap();
        fcntl_set(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK).unwrap();
    }

    /// Sends raw bytes on `fd` (non-blocking); returns how many went.
    fn raw_send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
        // SAFETY: `bytes` is live for its length; `fd` is open.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast::<libc::c_void>(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    #[tokio::test]
    async fn ring_then_wait_then_drained() {
        let (bell, mut waiter) = bell();
        bell.ring().unwrap();
        bell.ring().unwrap();
        tokio::time::timeout(GUARD, waiter.wait())
            .await
            .unwrap()
            .unwrap();
        // Both rings were consumed by the one wait.
        assert!(!waiter.drain().unwrap());
    }

    #[tokio::test]
    async fn wait_pends_until_rung() {
        let (bell, mut waiter) = bell();
        let pending = tokio::time::timeout(Duration::from_millis(50), waiter.wait());
        assert!(pending.await.is_err(), "wait completed without a ring");
        bell.ring().unwrap();
        tokio::time::timeout(GUARD, waiter.wait())
            .await
            .unwrap()
            .unwrap();
    }

    /// The descriptors' own `O_NONBLOCK` does not matter: with it cleared on both ends, an
    /// empty doorbell's wait pends (it does not block the thread), and ringing a full one
    /// returns at once.
    #[tokio::test]
    async fn cleared_nonblocking_flags_never_block() {
        let (bell, mut waiter) = bell();
        clear_nonblocking(bell.as_fd().as_raw_fd());
        clear_nonblocking(waiter.state.raw());
        assert!(!waiter.drain().unwrap());
        let pending = tokio::time::timeout(Duration::from_millis(50), waiter.wait());
        assert!(pending.await.is_err(), "wait completed without a ring");
        // Fill the socket buffer: rings keep succeeding (a wake-up is pending).
        let mut sent = 0usize;
        while raw_send(bell.as_fd().as_raw_fd(), &[7u8; 4096]).is_ok() {
            sent += 1;
            assert!(sent < 1_000_000, "socket buffer never filled");
        }
        for _ in 0..10 {
            bell.ring().unwrap();
        }
        tokio::time::timeout(GUARD, waiter.wait())
            .await
            .unwrap()
            .unwrap();
    }

    /// A flood is drained in bounded steps: each wait consumes at most `DRAIN_MAX` bytes.
    #[tokio::test]
    async fn flood_is_drained_in_bounded_steps() {
        let (bell, mut waiter) = bell();
        let mut queued = 0usize;
        while let Ok(n) = raw_send(bell.as_fd().as_raw_fd(), &[1u8; 4096]) {
            queued += n;
            if queued >= 16 * DRAIN_MAX {
                break;
            }
        }
        assert!(queued > DRAIN_MAX, "could not queue more than one drain");
        let mut waits = 0usize;
        loop {
            tokio::time::timeout(GUARD, waiter.wait())
                .await
                .unwrap()
                .unwrap();
            waits += 1;
            if !matches!(peek_fd(waiter.state.raw()), Ok(PeekResult::Data)) {
                break;
            }
        }
        // Each wait took at most DRAIN_MAX bytes.
        assert!(
            waits * DRAIN_MAX >= queued,
            "{waits} waits for {queued} bytes"
        );
    }

    #[test]
    fn the_waiting_end_cannot_send_back() {
        let (n, w) = pair().unwrap();
        let e = raw_send(w.as_raw_fd(), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE), "{e}");
        drop(n);
    }

    #[test]
    fn ringing_a_closed_waiter_is_closed() {
        let (bell, waiter) = bell();
        bell.ring().unwrap();
        drop(waiter);
        assert!(matches!(bell.ring(), Err(LinkError::Closed)));
        assert!(matches!(bell.ring(), Err(LinkError::Closed)));
    }

    #[tokio::test]
    async fn closed_notifier_wakes_once_then_reports_closed() {
        let (bell, mut waiter) = bell();
        bell.ring().unwrap();
        drop(bell);
        // The queued ring first, then the end of file as a last wake-up, then `Closed`.
        for _ in 0..2 {
            tokio::time::timeout(GUARD, waiter.wait())
                .await
                .unwrap()
                .unwrap();
        }
        let r = tokio::time::timeout(GUARD, waiter.wait()).await.unwrap();
        assert!(matches!(r, Err(LinkError::Closed)), "{r:?}");
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
        tokio::time::timeout(GUARD, a.gone())
            .await
            .unwrap()
            .unwrap();
    }

    /// Kernels with `SO_PASSRIGHTS` (6.16+): a doorbell's peer cannot pass descriptors at
    /// all, on either end.
    #[test]
    fn the_kernel_refuses_descriptors_on_doorbells() {
        let (n, w) = pair().unwrap();
        if !crate::shm::scm::refuses_passed_fds(w.as_raw_fd()) {
            return; // older kernel: see the next test
        }
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = scm::send_fd(n.as_fd(), x.as_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        let (ln, lw) = Liveness::pair().unwrap();
        let e = scm::send_fd(ln.state.fd.as_ref().unwrap().as_fd(), x.as_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        drop(lw);
    }

    /// Without kernel help: a descriptor down a doorbell fails the wait with `Corrupt` (for
    /// good), and its close — a TCP socket lingering 120 s, whose last reference the
    /// waiter received — does not run on the waiting thread.
    #[test]
    fn a_descriptor_down_a_doorbell_is_a_violation_closed_off_thread() {
        crate::shm::scm::on_thread_keeping_passrights(GUARD, "the waiting thread", || async {
            let (bell, mut waiter) = bell();
            bell.ring().unwrap();
            let (tcp, peer) = scm::lingering_socket(120);
            scm::send_fd(bell.as_fd(), tcp.as_fd()).unwrap();
            // In flight now: ours is not the last reference, the receiver's will be.
            drop(tcp);
            // The ring queued before it is reported first (a stream read stops after a
            // message with descriptors, not before it).
            let mut results = Vec::new();
            for _ in 0..3 {
                results.push(waiter.wait().await);
            }
            assert!(
                results
                    .iter()
                    .any(|r| matches!(r, Err(LinkError::Corrupt(_)))),
                "{results:?}"
            );
            assert!(matches!(waiter.wait().await, Err(LinkError::Corrupt(_))));
            assert_eq!(
                waiter.drain().unwrap_err().kind(),
                io::ErrorKind::InvalidData
            );
            // The lingering close ends when the TCP peer goes (reset).
            std::thread::spawn(move || drop(peer));
        });
    }

    /// Without kernel help: a descriptor on a liveness socket counts as the peer gone, and
    /// is closed off the waiting thread.
    #[test]
    fn a_descriptor_on_a_liveness_socket_is_the_peer_gone() {
        crate::shm::scm::on_thread_keeping_passrights(GUARD, "the waiting thread", || async {
            let (mut a, b) = Liveness::pair().unwrap();
            let (tcp, peer) = scm::lingering_socket(120);
            scm::send_fd(b.state.fd.as_ref().unwrap().as_fd(), tcp.as_fd()).unwrap();
            // In flight now: ours is not the last reference, the receiver's will be.
            drop(tcp);
            assert!(a.peer_gone());
            tokio::time::timeout(GUARD, a.gone())
                .await
                .unwrap()
                .unwrap();
            drop(b);
            std::thread::spawn(move || drop(peer));
        });
    }

    #[test]
    fn from_fd_checks_kind() {
        // SAFETY: eventfd takes no pointers.
        #[allow(unsafe_code)]
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(efd >= 0);
        // SAFETY: just returned by eventfd, owned by nobody else.
        #[allow(unsafe_code)]
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        let e = Doorbell::from_fd(efd.try_clone().unwrap()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(DoorbellWaiter::from_fd(efd.try_clone().unwrap()).is_err());
        assert!(Liveness::from_fd(efd).is_err());
        let (d, _d2) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let d = OwnedFd::from(d);
        assert!(Doorbell::from_fd(d.try_clone().unwrap()).is_err());
        assert!(DoorbellWaiter::from_fd(d).is_err());
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(Doorbell::from_fd(OwnedFd::from(tcp)).is_err());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Doorbell::from_fd(OwnedFd::from(a)).is_ok());
    }
}
