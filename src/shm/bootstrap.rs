//! Hub bootstrap: a guest process joins a shared-memory hub over a Unix `SOCK_SEQPACKET`
//! socket and receives its file descriptors (segment, doorbell ends, ...) in one `SCM_RIGHTS`
//! message. Plain library, Linux only, no actix.
//!
//! # Handshake
//!
//! ```text
//!   guest                                   hub (BootstrapListener)
//!     |  connect(path)  ------------------>  accept4 → Incoming      (SO_PEERCRED taken)
//!     |  JoinRequest (24 B)  ------------->  Incoming::read_request → Joining (uid checked)
//!     |                                      (bounded wait: BootstrapConfig::request_timeout)
//!     |  <------------  Response (40 B) + SCM_RIGHTS [fd; n]   Joining::welcome → BootstrapConn
//!     |  <------------  Response (40 B), status = refusal       Joining::refuse
//!     |
//!     |  ...the connection stays open: it is the liveness signal...
//!     |  Goodbye (16 B), close  ---------->  BootstrapConn::gone() = PeerGone::Goodbye
//!     |  (or the process dies)  ---------->  BootstrapConn::gone() = PeerGone::Eof
//! ```
//!
//! Every datagram has an exact size; anything else (short, long, with unexpected ancillary
//! data, unknown magic or version, non-zero reserved fields) is a [`BootstrapError`], and
//! every descriptor that came with it is closed (received descriptors are wrapped in
//! [`OwnedFd`] the moment `recvmsg` returns). Received descriptors are close-on-exec
//! (`MSG_CMSG_CLOEXEC`). All sockets are non-blocking and driven by tokio's [`AsyncFd`]: no
//! call blocks an executor thread.
//!
//! # Descriptors the peer was not asked for
//!
//! Only the hub's welcome carries descriptors. Against a peer that sends some anyway (the
//! kernel would otherwise release them inside our `recv`, closing them in our thread —
//! a lingering TCP socket blocks it for as long as the peer chose):
//!
//! * every socket of this module has `SO_PASSRIGHTS` off where the kernel supports it
//!   (Linux 6.16+), as soon as it may: on the hub's listening socket before `listen`
//!   (connections waiting for `accept` inherit it when they connect), again on each
//!   accepted connection, and on the guest's socket once the welcome (which must carry
//!   descriptors) has arrived. A peer's `sendmsg` with descriptors then fails at the peer
//!   with `EPERM`;
//! * every read (the request, the response, the connection after the handshake) is a
//!   `recvmsg` with room for 253 descriptors (`SCM_MAX_FD`), so the kernel hands them to
//!   us even on older kernels, including with a request queued before `accept`. They are
//!   closed on a dedicated closer thread, never on the caller's, and the message is
//!   rejected: a request with descriptors is refused as malformed
//!   ([`BootstrapError::UnexpectedAncillary`]), a datagram after the handshake is
//!   [`PeerGone::Violation`].
//!
//! The set of descriptors is opaque to this module: the hub passes any borrowed descriptors
//! ([`Joining::welcome`]), the guest says how many it expects ([`join`]) and gets them back
//! as a `Vec<OwnedFd>` in the same order. Their kinds are checked by whoever uses them (the
//! shared-memory link checks that its doorbell ends are `AF_UNIX` stream sockets).
//!
//! # Versions
//!
//! [`PROTOCOL_VERSION`] covers this framing **and** the meaning of the descriptor set the
//! hub ([`super::hub`]) sends with a welcome, so that a guest and a hub of different
//! versions refuse each other with [`RefuseReason::UnsupportedVersion`] instead of failing
//! on a descriptor:
//!
//! * 1 — the doorbells were eventfds shared by hub and guest (withdrawn: a guest could
//!   clear their `O_NONBLOCK` flag and block the hub's threads).
//! * 2 — the doorbells are socket pairs and the guest receives only its own ends (see
//!   [`super::doorbell`]). Same framing as version 1.
//!
//! # Wire layout
//!
//! All integers little-endian, no padding, no alignment requirement. The first 12 bytes
//! (magic, version and, in responses, status) keep their meaning in every future version.
//!
//! **Join request** (guest → hub, [`REQUEST_LEN`] = 24 bytes, no ancillary data):
//!
//! ```text
//!  0        8         10        12               16                              24
//!  +--------+---------+---------+----------------+-------------------------------+
//!  | magic  | version | flags   | layout_version | token                         |
//!  | 8 B    | u16     | u16 = 0 | u32            | u64                           |
//!  +--------+---------+---------+----------------+-------------------------------+
//!  magic = "TTHRJOIN" (REQUEST_MAGIC), version = PROTOCOL_VERSION
//!  layout_version: the shared-memory layout version the guest speaks (checked by the hub
//!  application, not by this module); token: opaque to this module (e.g. a spawn token
//!  matching a slot the hub reserved for a child it started; 0 = none).
//! ```
//!
//! **Response** (hub → guest, [`RESPONSE_LEN`] = 40 bytes, one `SCM_RIGHTS` control message
//! with exactly `fd_count` descriptors when `status` is 0, none otherwise):
//!
//! ```text
//!  0        8         10        12         16        20               24
//!  +--------+---------+---------+----------+---------+----------------+
//!  | magic  | version | status  | fd_count | peer_id | layout_version |
//!  | 8 B    | u16     | u16     | u32      | u32     | u32            |
//!  +--------+---------+---------+----------+---------+----------------+
//!  24                  32        36         40
//!  +-------------------+---------+----------+
//!  | generation        | detail  | reserved |
//!  | u64               | u32     | u32 = 0  |
//!  +-------------------+---------+----------+
//!  magic = "TTHRWELC" (RESPONSE_MAGIC), version = PROTOCOL_VERSION
//!  status: 0 = welcome, otherwise a RefuseReason code (peer_id, generation,
//!  layout_version, fd_count are 0 and `detail` qualifies the refusal, see RefuseReason)
//! ```
//!
//! **Goodbye** (either side, after the handshake, [`GOODBYE_LEN`] = 16 bytes, then close):
//!
//! ```text
//!  0        8         10        16
//!  +--------+---------+---------+
//!  | magic  | version | zero    |
//!  | 8 B    | u16     | 6 B     |
//!  +--------+---------+---------+
//!  magic = "TTHRBYE!" (GOODBYE_MAGIC)
//! ```
//!
//! Nothing else is ever sent after the handshake: end-of-file (or a socket error) means the
//! peer is gone; a goodbye first means it left on purpose; any other datagram is a protocol
//! violation, also reported as gone.
//!
//! # Refusals
//!
//! The hub answers a request it understands but does not grant with a refusal response
//! ([`RefuseReason`]): a full hub, an unsupported protocol version, a malformed request, a
//! peer of another uid. A request with an unknown magic gets no answer (it is not this
//! protocol): the hub just closes the connection.
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::scm::{close_off_thread, recv_guarded, refuse_passed_fds};

/// Magic tag of a join request.
pub const REQUEST_MAGIC: [u8; 8] = *b"TTHRJOIN";
/// Magic tag of a response (welcome or refusal).
pub const RESPONSE_MAGIC: [u8; 8] = *b"TTHRWELC";
/// Magic tag of a goodbye datagram.
pub const GOODBYE_MAGIC: [u8; 8] = *b"TTHRBYE!";
/// The bootstrap protocol version this library speaks (see the [module docs](self#versions)).
pub const PROTOCOL_VERSION: u16 = 2;
/// Size of a join request datagram in bytes.
pub const REQUEST_LEN: usize = size_of::<RequestWire>();
/// Size of a response datagram in bytes.
pub const RESPONSE_LEN: usize = size_of::<ResponseWire>();
/// Size of a goodbye datagram in bytes.
pub const GOODBYE_LEN: usize = size_of::<GoodbyeWire>();
/// Maximum number of descriptors in one welcome (well below the kernel's `SCM_MAX_FD`, 253).
pub const MAX_FDS: usize = 32;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RequestWire {
    magic: [u8; 8],
    version: U16,
    flags: U16,
    layout_version: U32,
    token: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ResponseWire {
    magic: [u8; 8],
    version: U16,
    status: U16,
    fd_count: U32,
    peer_id: U32,
    layout_version: U32,
    generation: U64,
    detail: U32,
    reserved: U32,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct GoodbyeWire {
    magic: [u8; 8],
    version: U16,
    zero: [u8; 6],
}

const _: () = assert!(size_of::<RequestWire>() == 24);
const _: () = assert!(size_of::<ResponseWire>() == 40);
const _: () = assert!(size_of::<GoodbyeWire>() == 16);
const _: () = assert!(offset_of!(ResponseWire, generation) == 24);

/// Configuration of both sides of the bootstrap.
#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    /// Hub: how long an accepted connection may take to send its request before it is
    /// dropped ([`BootstrapError::RequestTimeout`]). Guest: bound on the whole [`join`]
    /// (connect, request, response; [`BootstrapError::ResponseTimeout`]). Default 5 s; must
    /// be non-zero.
    pub request_timeout: Duration,
    /// Which uid the other side must run under, checked with `SO_PEERCRED` (the hub checks
    /// the guest, the guest checks the hub). Default [`UidCheck::Same`].
    pub peer_uid: UidCheck,
    /// Listen backlog of the hub socket (pending, not yet accepted connections). Default
    /// 128, clamped to `1..=65535`.
    pub backlog: u32,
    /// File mode of the hub's socket file (connecting needs write permission). Default
    /// `0o600`: only the owner may connect.
    pub socket_mode: u32,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            request_timeout: Duration::from_secs(5),
            peer_uid: UidCheck::Same,
            backlog: 128,
            socket_mode: 0o600,
        }
    }
}

/// The `SO_PEERCRED` uid check of [`BootstrapConfig::peer_uid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UidCheck {
    /// No check (the socket file's mode still decides who may connect).
    Any,
    /// The other side must run under this process's effective uid.
    #[default]
    Same,
    /// The other side must run under exactly this uid.
    Only(u32),
}

/// Errors of the hub bootstrap (both sides).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// A system call failed; `op` names it.
    #[error("bootstrap {op} failed: {source}")]
    Io {
        /// What was attempted (e.g. "bind", "accept", "connect", "sendmsg", "recvmsg").
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The socket path is empty, contains a NUL byte or is too long for `sockaddr_un`.
    #[error("invalid bootstrap socket path {path:?}: {reason}")]
    InvalidPath {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A configuration value is out of its documented bounds.
    #[error("invalid bootstrap configuration: {0}")]
    InvalidConfig(&'static str),
    /// The peer runs under a uid that [`BootstrapConfig::peer_uid`] does not allow.
    #[error("peer runs as uid {found}, expected uid {expected}")]
    PeerUid {
        /// The uid required.
        expected: u32,
        /// The peer's uid (`SO_PEERCRED`).
        found: u32,
    },
    /// Hub: the guest sent no request within the configured time; the connection was dropped.
    #[error("no join request within {after:?}")]
    RequestTimeout {
        /// The configured wait.
        after: Duration,
    },
    /// Guest: the join did not complete within the configured time.
    #[error("no response from the hub within {after:?}")]
    ResponseTimeout {
        /// The configured wait.
        after: Duration,
    },
    /// Hub: the response could not be sent within the configured time.
    #[error("could not send the response within {after:?}")]
    SendTimeout {
        /// The configured wait.
        after: Duration,
    },
    /// The other side closed the connection before its message arrived.
    #[error("connection closed before the {what} arrived")]
    Closed {
        /// The awaited message ("request" or "response").
        what: &'static str,
    },
    /// A datagram does not have the exact size of its message.
    #[error("{what} of {len} bytes, expected exactly {expected} bytes")]
    WrongSize {
        /// Which message ("request" or "response").
        what: &'static str,
        /// Its actual size in bytes (at least this many, if the kernel truncated it).
        len: usize,
        /// Its required size in bytes.
        expected: usize,
    },
    /// A datagram carried ancillary data it must not carry (descriptors on a request, a
    /// control message other than `SCM_RIGHTS`, or more descriptors than fit: `MSG_CTRUNC`).
    /// Every descriptor that arrived was closed.
    #[error("unexpected ancillary data on the {what}: {reason}")]
    UnexpectedAncillary {
        /// Which message.
        what: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// A datagram does not start with the expected magic: the peer does not speak this
    /// protocol.
    #[error("{what} has unknown magic {found:02x?}")]
    BadMagic {
        /// Which message.
        what: &'static str,
        /// The first 8 bytes received.
        found: [u8; 8],
    },
    /// The peer speaks another version of the bootstrap protocol.
    #[error("{what} has protocol version {found}, this library speaks version {supported}")]
    UnsupportedVersion {
        /// Which message.
        what: &'static str,
        /// The version received.
        found: u16,
        /// [`PROTOCOL_VERSION`].
        supported: u16,
    },
    /// A field of a message has a value the protocol does not allow.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// Which field is wrong and how.
        reason: &'static str,
    },
    /// Guest: the welcome did not carry exactly the expected number of descriptors. Every
    /// descriptor that arrived was closed.
    #[error("expected {expected} descriptors, the hub announced {announced} and sent {received}")]
    FdCount {
        /// The count the guest asked for.
        expected: usize,
        /// The count in the response's `fd_count` field.
        announced: u32,
        /// The count that actually arrived.
        received: usize,
    },
    /// More descriptors than [`MAX_FDS`] were asked for or offered.
    #[error("{count} descriptors requested, at most {max} can be passed")]
    TooManyFds {
        /// The count asked for.
        count: usize,
        /// [`MAX_FDS`].
        max: usize,
    },
    /// Guest: the hub refused the join.
    #[error("the hub refused the join: {reason} (detail {detail})")]
    Refused {
        /// Why.
        reason: RefuseReason,
        /// The response's `detail` field (see [`RefuseReason`]).
        detail: u32,
    },
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> BootstrapError {
    move |source| BootstrapError::Io { op, source }
}

/// Why a hub refuses a join (the response's `status` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefuseReason {
    /// Every peer slot is taken (code 1; `detail` = the hub's maximum number of guests).
    Full,
    /// The request's protocol version is not supported (code 2; `detail` = the hub's version).
    UnsupportedVersion,
    /// The request has the wrong size, reserved bits set or ancillary data (code 3).
    Malformed,
    /// The guest runs under a uid the hub does not accept (code 4).
    PermissionDenied,
    /// The guest's shared-memory layout version is not supported (code 5; `detail` = the
    /// hub's layout version).
    UnsupportedLayout,
    /// The hub is shutting down (code 6).
    ShuttingDown,
    /// The token does not match anything the hub expects (code 7).
    UnknownToken,
    /// A code this version of the library does not know.
    Other(u16),
}

impl RefuseReason {
    /// The wire code (never 0: 0 is a welcome).
    pub fn code(self) -> u16 {
        match self {
            RefuseReason::Full => 1,
            RefuseReason::UnsupportedVersion => 2,
            RefuseReason::Malformed => 3,
            RefuseReason::PermissionDenied => 4,
            RefuseReason::UnsupportedLayout => 5,
            RefuseReason::ShuttingDown => 6,
            RefuseReason::UnknownToken => 7,
            RefuseReason::Other(c) => c,
        }
    }

    /// The reason for a non-zero wire code.
    pub fn from_code(code: u16) -> RefuseReason {
        match code {
            1 => RefuseReason::Full,
            2 => RefuseReason::UnsupportedVersion,
            3 => RefuseReason::Malformed,
            4 => RefuseReason::PermissionDenied,
            5 => RefuseReason::UnsupportedLayout,
            6 => RefuseReason::ShuttingDown,
            7 => RefuseReason::UnknownToken,
            c => RefuseReason::Other(c),
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseReason::Full => f.write_str("hub is full"),
            RefuseReason::UnsupportedVersion => f.write_str("protocol version not supported"),
            RefuseReason::Malformed => f.write_str("malformed request"),
            RefuseReason::PermissionDenied => f.write_str("permission denied"),
            RefuseReason::UnsupportedLayout => f.write_str("shared-memory layout not supported"),
            RefuseReason::ShuttingDown => f.write_str("hub is shutting down"),
            RefuseReason::UnknownToken => f.write_str("unknown token"),
            RefuseReason::Other(c) => write!(f, "refusal code {c}"),
        }
    }
}

/// Credentials of the other end of a connection (`SO_PEERCRED`, taken when it connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id, in this process's pid namespace (0 if the kernel cannot map it).
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// What a guest asks for when joining (see the wire layout in the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JoinRequest {
    /// The shared-memory layout version the guest speaks; the hub application checks it.
    pub layout_version: u32,
    /// Opaque to the bootstrap (e.g. a spawn token); 0 = none.
    pub token: u64,
}

/// What the hub grants a guest (carried in the welcome response next to the descriptors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Welcome {
    /// The guest's peer id (its slot in the hub).
    pub peer_id: u32,
    /// The generation of that slot (see the peer table); distinguishes reuses of a slot.
    pub generation: u64,
    /// The shared-memory layout version of the segment the descriptors refer to.
    pub layout_version: u32,
}

/// How the other side of a [`BootstrapConn`] went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerGone {
    /// It sent a goodbye ([`BootstrapConn::goodbye`]): it left on purpose.
    Goodbye,
    /// End of file (or `ECONNRESET`: it died before reading what we sent) without a
    /// goodbye: the process closed the socket or died.
    Eof,
    /// It sent something other than a goodbye (the protocol sends nothing else), or a
    /// datagram with descriptors (closed on the closer thread). The hub reports it as
    /// `DisconnectReason::Corrupt`.
    Violation,
    /// The socket failed (e.g. `ECONNRESET`); the peer is treated as gone.
    Error(io::ErrorKind),
}

// ---------------------------------------------------------------------------------------
// System calls
// ---------------------------------------------------------------------------------------

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A new non-blocking, close-on-exec `AF_UNIX` `SOCK_SEQPACKET` socket.
fn seqpacket_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; the arguments are valid constants.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: `fd` was just returned by socket: open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_un(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t), BootstrapError> {
    let invalid = |reason| BootstrapError::InvalidPath {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data (integers and a byte array): all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if bytes.is_empty() {
        return Err(invalid("empty path"));
    }
    if bytes.contains(&0) {
        return Err(invalid("path contains a NUL byte"));
    }
    if bytes.len() >= addr.sun_path.len() {
        return Err(invalid(
            "path is too long for a Unix socket address (max 107 bytes)",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live, writable and correctly sized for SO_PEERCRED; the
    // descriptor is open for the duration of the borrow.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    if len as usize != size_of::<libc::ucred>() {
        return Err(io::Error::other("SO_PEERCRED returned a short ucred"));
    }
    Ok(PeerCred {
        pid: u32::try_from(cred.pid).unwrap_or(0),
        uid: cred.uid,
        gid: cred.gid,
    })
}

fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

fn check_uid(config: &BootstrapConfig, cred: &PeerCred) -> Result<(), BootstrapError> {
    let expected = match config.peer_uid {
        UidCheck::Any => return Ok(()),
        UidCheck::Same => euid(),
        UidCheck::Only(uid) => uid,
    };
    if cred.uid != expected {
        return Err(BootstrapError::PeerUid {
            expected,
            found: cred.uid,
        });
    }
    Ok(())
}

/// Space in bytes of a control buffer holding `n` descriptors in one `SCM_RIGHTS` message.
fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic; n <= MAX_FDS keeps it far from overflow.
    unsafe { libc::CMSG_SPACE((n * size_of::<RawFd>()) as libc::c_uint) as usize }
}

/// Sends one datagram with `fds` in one `SCM_RIGHTS` control message (none if empty).
/// Non-blocking, no `SIGPIPE`. A datagram is sent whole or not at all.
fn send_msg(fd: RawFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    debug_assert!(fds.len() <= MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // u64 elements: the control buffer must be aligned for cmsghdr (alignment <= 8).
    let mut control = vec![0u64; cmsg_space(fds.len()).div_ceil(8)];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: msg_control points at a zeroed, 8-aligned buffer of msg_controllen bytes,
        // large enough (CMSG_SPACE) for one header plus `fds.len()` descriptors, so
        // CMSG_FIRSTHDR is non-null and CMSG_DATA has room for every descriptor; the data
        // pointer may be unaligned for c_int, hence write_unaligned.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * size_of::<RawFd>()) as _) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    // SAFETY: `msg` points at `iov` (valid for `bytes.len()` bytes of reading) and at the
    // control buffer prepared above; all outlive the call. `fd` is an open socket.
    let n = cvt_size(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) })?;
    if n != bytes.len() {
        return Err(io::Error::other("sendmsg sent a partial datagram"));
    }
    Ok(())
}

/// One received datagram.
struct Received {
    /// Its real length (may exceed the buffer when `truncated`).
    len: usize,
    /// `MSG_TRUNC`: the datagram was longer than the buffer.
    truncated: bool,
    /// `MSG_CTRUNC`: control data did not fit (the kernel released what did not fit).
    ctrunc: bool,
    /// A control message other than `SCM_RIGHTS` arrived.
    foreign_cmsg: bool,
    /// Every received descriptor, owned, close-on-exec. Those still here when the
    /// `Received` is dropped are closed on the closer thread, never on the caller's.
    fds: Vec<OwnedFd>,
}

impl Received {
    /// Whether the datagram carried ancillary data of any kind.
    fn has_ancillary(&self) -> bool {
        self.ctrunc || self.foreign_cmsg || !self.fds.is_empty()
    }

    /// End of file: nothing at all arrived. (A zero-length datagram looks the same.)
    fn is_eof(&self) -> bool {
        self.len == 0 && !self.has_ancillary()
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        close_off_thread(std::mem::take(&mut self.fds));
    }
}

/// Receives one datagram into `buf`, and any descriptors that came with it (up to
/// `SCM_MAX_FD`, the most one message can carry: the kernel never has to release any in
/// this thread, see [`super::scm`]). Non-blocking.
fn recv_msg(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    // MSG_TRUNC makes the length the datagram's real length.
    let g = recv_guarded(fd, buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC)?;
    Ok(Received {
        len: g.len,
        truncated: g.flags & libc::MSG_TRUNC != 0 || g.len > buf.len(),
        ctrunc: g.flags & libc::MSG_CTRUNC != 0,
        foreign_cmsg: g.foreign_cmsg,
        fds: g.fds,
    })
}

async fn send_async(
    afd: &AsyncFd<OwnedFd>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    loop {
        let mut guard = afd.writable().await?;
        match guard.try_io(|fd| send_msg(fd.as_raw_fd(), bytes, fds)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn recv_async(afd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<Received> {
    loop {
        let mut guard = afd.readable().await?;
        match guard.try_io(|fd| recv_msg(fd.as_raw_fd(), buf)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Registers a descriptor with the current tokio runtime (an error, not a panic, outside one).
fn register(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, BootstrapError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(BootstrapError::Io {
            op: "register with tokio",
            source: io::Error::other("no tokio runtime is running on this thread"),
        });
    }
    // `try_new` is deprecated in newer tokio because a generic `T: AsRawFd` may not own its
    // descriptor; an `OwnedFd` does, for as long as the `AsyncFd` lives, so the concern does
    // not apply (and the replacement, `register`, needs tokio 1.54).
    #[allow(deprecated)]
    let registered = AsyncFd::try_new(fd);
    registered.map_err(|e| BootstrapError::Io {
        op: "register with tokio",
        source: e.into_parts().1,
    })
}

fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL takes and returns plain integers; `fd` is open.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        cvt(libc::fcntl(fd, libc::F_SETFL, flags))?;
    }
    Ok(())
}

/// Connects to the hub. The first attempt is non-blocking; when the hub's backlog is full
/// (`EAGAIN`) the connect is retried as a blocking call with a send timeout on a blocking
/// thread (`spawn_blocking`), so no executor thread waits.
async fn connect(path: &Path, timeout: Duration) -> Result<OwnedFd, BootstrapError> {
    let (addr, len) = sockaddr_un(path)?;
    let fd = seqpacket_socket().map_err(io_err("socket"))?;
    let raw = fd.as_raw_fd();
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; `raw` is an open socket.
    let ret = unsafe { libc::connect(raw, (&addr as *const libc::sockaddr_un).cast(), len) };
    if ret == 0 {
        return Ok(fd);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EAGAIN) {
        return Err(BootstrapError::Io {
            op: "connect",
            source: err,
        });
    }
    let blocking = move || -> io::Result<OwnedFd> {
        let raw = fd.as_raw_fd();
        set_nonblocking(raw, false)?;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: `tv` is a live timeval of the size given; `raw` is an open socket.
        cvt(unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        // SAFETY: as above; a blocking AF_UNIX connect waits for backlog room, bounded by
        // SO_SNDTIMEO.
        cvt(unsafe { libc::connect(raw, (&addr as *const libc::sockaddr_un).cast(), len) })?;
        set_nonblocking(raw, true)?;
        Ok(fd)
    };
    tokio::task::spawn_blocking(blocking)
        .await
        .map_err(|e| BootstrapError::Io {
            op: "connect",
            source: io::Error::other(e),
        })?
        .map_err(io_err("connect"))
}

// ---------------------------------------------------------------------------------------
// Hub side
// ---------------------------------------------------------------------------------------

/// The hub's listening socket. See the [module docs](self).
///
/// Dropping it closes the socket and removes the socket file (if the file is still the one
/// this listener created). Established [`BootstrapConn`]s are not affected.
#[derive(Debug)]
pub struct BootstrapListener {
    // Field order matters: the socket closes before the file is removed.
    fd: AsyncFd<OwnedFd>,
    config: BootstrapConfig,
    unlink: UnlinkIfOurs,
}

impl BootstrapListener {
    /// Binds and listens on `path` (`SOCK_SEQPACKET`, non-blocking, close-on-exec), then sets
    /// the socket file's mode to [`BootstrapConfig::socket_mode`].
    ///
    /// A stale socket file (nothing listening on it) is replaced; a live one is
    /// `AddrInUse`. Must be called within a tokio runtime with I/O enabled.
    pub fn bind(
        path: impl AsRef<Path>,
        config: BootstrapConfig,
    ) -> Result<BootstrapListener, BootstrapError> {
        let path = path.as_ref();
        if config.request_timeout.is_zero() {
            return Err(BootstrapError::InvalidConfig(
                "request_timeout must be non-zero",
            ));
        }
        let (addr, len) = sockaddr_un(path)?;
        let fd = seqpacket_socket().map_err(io_err("socket"))?;
        // Linux creates the socket file with the socket inode's mode (minus the umask):
        // restricting it before bind leaves no window in which others may connect. Best
        // effort; the exact mode is set after bind.
        // SAFETY: fchmod takes no pointers; `fd` is an open socket.
        let _ =
            unsafe { libc::fchmod(fd.as_raw_fd(), (config.socket_mode & 0o777) as libc::mode_t) };
        let bind = || {
            // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; `fd` is an open socket.
            cvt(unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast(),
                    len,
                )
            })
        };
        match bind() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && is_stale(path, &addr, len) => {
                std::fs::remove_file(path).map_err(io_err("remove stale socket"))?;
                bind().map_err(io_err("bind"))?;
            }
            Err(e) => {
                return Err(BootstrapError::Io {
                    op: "bind",
                    source: e,
                })
            }
        }
        let meta = std::fs::symlink_metadata(path).map_err(io_err("stat socket"))?;
        let inode = (meta.dev(), meta.ino());
        let unlink = UnlinkIfOurs {
            path: path.to_path_buf(),
            inode,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))
            .map_err(io_err("chmod socket"))?;
        // Before `listen`: connections inherit it at `connect` time (Linux 6.16+), so a
        // client cannot slip descriptors in before `accept` either.
        refuse_passed_fds(fd.as_raw_fd()).map_err(io_err("SO_PASSRIGHTS"))?;
        let backlog = config.backlog.clamp(1, 65535) as libc::c_int;
        // SAFETY: listen takes no pointers; `fd` is a bound socket.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map_err(io_err("listen"))?;
        let fd = register(fd)?;
        Ok(BootstrapListener { fd, config, unlink })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.unlink.path
    }

    /// The configuration.
    pub fn config(&self) -> &BootstrapConfig {
        &self.config
    }

    /// Accepts the next connection (`accept4`, non-blocking, close-on-exec). Reads nothing:
    /// call [`Incoming::read_request`] (typically in a task of its own, so that a silent
    /// client does not hold up the accept loop). Cancel-safe; `&self`, so several tasks may
    /// accept concurrently. The listener stays usable after any error; after `EMFILE` /
    /// `ENFILE` (descriptor limit) the pending connection stays queued, so a caller looping
    /// on `accept` should back off before retrying.
    pub async fn accept(&self) -> Result<Incoming, BootstrapError> {
        let fd = loop {
            // `poll_read_ready` (unlike `readable().await`) takes a unit of the task's
            // cooperative budget, so a caller that loops on `accept` while connections keep
            // arriving (e.g. the hub closing connections beyond its handshake cap) still
            // yields to its executor.
            let mut guard = std::future::poll_fn(|cx| self.fd.poll_read_ready(cx))
                .await
                .map_err(io_err("accept"))?;
            let res = guard.try_io(|l| {
                // SAFETY: null address pointers are allowed (the peer address is not wanted);
                // `l` is the open listening socket.
                let ret = unsafe {
                    libc::accept4(
                        l.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    )
                };
                cvt(ret)
            });
            match res {
                // SAFETY: accept4 returned a new descriptor that nobody else owns.
                Ok(Ok(raw)) => break unsafe { OwnedFd::from_raw_fd(raw) },
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Ok(Err(e)) => {
                    return Err(BootstrapError::Io {
                        op: "accept",
                        source: e,
                    })
                }
                Err(_would_block) => continue,
            }
        };
        // Inherited from the listener on Linux 6.16+ already; set again in case the
        // listener's option was changed. Older kernels: see `read_request`.
        refuse_passed_fds(fd.as_raw_fd()).map_err(io_err("SO_PASSRIGHTS"))?;
        let cred = peer_cred(fd.as_fd()).map_err(io_err("SO_PEERCRED"))?;
        let fd = register(fd)?;
        Ok(Incoming {
            fd,
            cred,
            config: self.config.clone(),
        })
    }
}

/// Removes a socket file if it is still the inode we bound.
#[derive(Debug)]
struct UnlinkIfOurs {
    path: PathBuf,
    inode: (u64, u64),
}

impl Drop for UnlinkIfOurs {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.inode {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Whether `addr` names a socket file nothing listens on (a non-blocking connect is
/// refused). Files of other types are never stale: they are not ours to remove.
fn is_stale(path: &Path, addr: &libc::sockaddr_un, len: libc::socklen_t) -> bool {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {}
        _ => return false,
    }
    let Ok(probe) = seqpacket_socket() else {
        return false;
    };
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; `probe` is an open socket.
    let ret = unsafe {
        libc::connect(
            probe.as_raw_fd(),
            (addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    ret < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECONNREFUSED)
}

fn response_bytes(status: u16, fd_count: usize, welcome: Welcome, detail: u32) -> ResponseWire {
    ResponseWire {
        magic: RESPONSE_MAGIC,
        version: PROTOCOL_VERSION.into(),
        status: status.into(),
        fd_count: (fd_count as u32).into(),
        peer_id: welcome.peer_id.into(),
        layout_version: welcome.layout_version.into(),
        generation: welcome.generation.into(),
        detail: detail.into(),
        reserved: 0.into(),
    }
}

/// Best-effort refusal on a connection that is about to be dropped (never waits).
fn refuse_now(fd: &AsyncFd<OwnedFd>, reason: RefuseReason, detail: u32) {
    let resp = response_bytes(reason.code(), 0, Welcome::default(), detail);
    let _ = send_msg(fd.as_raw_fd(), resp.as_bytes(), &[]);
}

/// A connection the hub accepted; its request is not read yet.
#[derive(Debug)]
pub struct Incoming {
    fd: AsyncFd<OwnedFd>,
    cred: PeerCred,
    config: BootstrapConfig,
}

impl Incoming {
    /// The connecting process's credentials (`SO_PEERCRED`).
    pub fn credentials(&self) -> PeerCred {
        self.cred
    }

    /// Waits at most [`BootstrapConfig::request_timeout`] for the join request, then checks
    /// the peer's uid ([`BootstrapConfig::peer_uid`]) and validates the request.
    ///
    /// On error the connection is dropped; before that, a uid mismatch, a malformed request
    /// and an unsupported version are answered with a refusal response (an unknown magic
    /// gets no answer). Any descriptors sent with the request are closed.
    pub async fn read_request(self) -> Result<Joining, BootstrapError> {
        let after = self.config.request_timeout;
        let mut buf = [0u8; REQUEST_LEN];
        // A request queued before the accepted socket's SO_PASSRIGHTS was set may carry
        // descriptors (kernels before 6.16): they are taken and closed off this thread.
        let received = tokio::time::timeout(after, recv_async(&self.fd, &mut buf))
            .await
            .map_err(|_| BootstrapError::RequestTimeout { after })?
            .map_err(io_err("recvmsg"))?;
        let what = "request";
        let malformed = |e| {
            refuse_now(&self.fd, RefuseReason::Malformed, 0);
            Err(e)
        };
        if received.is_eof() {
            return Err(BootstrapError::Closed { what });
        }
        // Checked after the request is read: closing a connection with unread data would
        // reset it, and the guest would see ECONNRESET instead of the refusal.
        if let Err(e) = check_uid(&self.config, &self.cred) {
            refuse_now(&self.fd, RefuseReason::PermissionDenied, 0);
            return Err(e);
        }
        if received.has_ancillary() {
            return malformed(BootstrapError::UnexpectedAncillary {
                what,
                reason: "a join request carries no ancillary data",
            });
        }
        if received.truncated || received.len != REQUEST_LEN {
            return malformed(BootstrapError::WrongSize {
                what,
                len: received.len,
                expected: REQUEST_LEN,
            });
        }
        let Ok(req) = RequestWire::read_from_bytes(&buf[..]) else {
            return malformed(BootstrapError::WrongSize {
                what,
                len: received.len,
                expected: REQUEST_LEN,
            });
        };
        if req.magic != REQUEST_MAGIC {
            return Err(BootstrapError::BadMagic {
                what,
                found: req.magic,
            });
        }
        if req.version.get() != PROTOCOL_VERSION {
            refuse_now(
                &self.fd,
                RefuseReason::UnsupportedVersion,
                PROTOCOL_VERSION.into(),
            );
            return Err(BootstrapError::UnsupportedVersion {
                what,
                found: req.version.get(),
                supported: PROTOCOL_VERSION,
            });
        }
        if req.flags.get() != 0 {
            return malformed(BootstrapError::Malformed {
                what,
                reason: "flags must be zero",
            });
        }
        Ok(Joining {
            fd: self.fd,
            cred: self.cred,
            request: JoinRequest {
                layout_version: req.layout_version.get(),
                token: req.token.get(),
            },
            timeout: after,
        })
    }
}

/// A guest whose valid join request the hub has read; the hub answers with
/// [`welcome`](Joining::welcome) or [`refuse`](Joining::refuse). Dropping it closes the
/// connection without an answer (the guest sees [`BootstrapError::Closed`]).
#[derive(Debug)]
pub struct Joining {
    fd: AsyncFd<OwnedFd>,
    cred: PeerCred,
    request: JoinRequest,
    timeout: Duration,
}

impl Joining {
    /// The guest's request.
    pub fn request(&self) -> &JoinRequest {
        &self.request
    }

    /// The guest process's credentials (`SO_PEERCRED`).
    pub fn credentials(&self) -> PeerCred {
        self.cred
    }

    /// Grants the join: sends the welcome response and `fds` (duplicated into the guest by
    /// the kernel; the caller keeps its own) in one `SCM_RIGHTS` message, and returns the
    /// connection, which from now on is the liveness signal.
    pub async fn welcome(
        self,
        welcome: Welcome,
        fds: &[BorrowedFd<'_>],
    ) -> Result<BootstrapConn, BootstrapError> {
        if fds.len() > MAX_FDS {
            return Err(BootstrapError::TooManyFds {
                count: fds.len(),
                max: MAX_FDS,
            });
        }
        let resp = response_bytes(0, fds.len(), welcome, 0);
        self.send(resp.as_bytes(), fds).await?;
        Ok(BootstrapConn {
            fd: self.fd,
            cred: self.cred,
            gone: None,
        })
    }

    /// Refuses the join with `reason` and `detail` (see [`RefuseReason`] for what `detail`
    /// carries), then closes the connection.
    pub async fn refuse(self, reason: RefuseReason, detail: u32) -> Result<(), BootstrapError> {
        if reason.code() == 0 {
            return Err(BootstrapError::InvalidConfig("refusal code 0 is a welcome"));
        }
        let resp = response_bytes(reason.code(), 0, Welcome::default(), detail);
        self.send(resp.as_bytes(), &[]).await
    }

    /// Sends the response, bounded by the request timeout (a fresh connection always has
    /// room, so the bound only matters against a misbehaving kernel or peer).
    async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), BootstrapError> {
        let after = self.timeout;
        tokio::time::timeout(after, send_async(&self.fd, bytes, fds))
            .await
            .map_err(|_| BootstrapError::SendTimeout { after })?
            .map_err(io_err("sendmsg"))
    }
}

// ---------------------------------------------------------------------------------------
// Both sides after the handshake
// ---------------------------------------------------------------------------------------

/// An established bootstrap connection (hub side after [`Joining::welcome`], guest side from
/// [`join`]). It carries nothing after the handshake: it is the liveness signal. Dropping it
/// closes it, which the other side sees as [`PeerGone::Eof`].
#[derive(Debug)]
pub struct BootstrapConn {
    fd: AsyncFd<OwnedFd>,
    cred: PeerCred,
    gone: Option<PeerGone>,
}

impl BootstrapConn {
    /// The other side's credentials (`SO_PEERCRED`, taken at connect time).
    pub fn peer_credentials(&self) -> PeerCred {
        self.cred
    }

    /// Completes when the other side is gone: it sent a goodbye, closed the connection, or
    /// its process died (the kernel closes a dead process's descriptors at once). No polling:
    /// it waits for readability through the runtime. Cancel-safe; once it has completed it
    /// returns the same answer again at once.
    pub async fn gone(&mut self) -> PeerGone {
        std::future::poll_fn(|cx| self.poll_gone(cx)).await
    }

    /// Poll form of [`gone`](Self::gone), for hand-written futures and streams.
    pub fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<PeerGone> {
        if let Some(gone) = self.gone {
            return Poll::Ready(gone);
        }
        loop {
            let mut guard = match ready!(self.fd.poll_read_ready(cx)) {
                Ok(guard) => guard,
                Err(e) => {
                    let gone = PeerGone::Error(e.kind());
                    self.gone = Some(gone);
                    return Poll::Ready(gone);
                }
            };
            let mut buf = [0u8; GOODBYE_LEN];
            // Descriptors sent with a datagram are a violation; `Received` closes them on
            // the closer thread.
            let res = guard.try_io(|fd| recv_msg(fd.as_raw_fd(), &mut buf));
            let gone = match res {
                Err(_would_block) => continue,
                // A peer that dies with our datagrams unread resets the connection.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => PeerGone::Eof,
                Ok(Err(e)) => PeerGone::Error(e.kind()),
                Ok(Ok(r)) if r.is_eof() => PeerGone::Eof,
                Ok(Ok(r)) if is_goodbye(&r, &buf) => PeerGone::Goodbye,
                Ok(Ok(_)) => PeerGone::Violation,
            };
            self.gone = Some(gone);
            return Poll::Ready(gone);
        }
    }

    /// Says goodbye (the other side's [`gone`](Self::gone) returns [`PeerGone::Goodbye`]) and
    /// closes the connection. Never waits. An error means the goodbye could not be sent (for
    /// instance the other side is already gone); the connection is closed either way.
    pub fn goodbye(self) -> Result<(), BootstrapError> {
        let bye = GoodbyeWire {
            magic: GOODBYE_MAGIC,
            version: PROTOCOL_VERSION.into(),
            zero: [0; 6],
        };
        send_msg(self.fd.as_raw_fd(), bye.as_bytes(), &[]).map_err(io_err("sendmsg"))
    }

    /// The socket, for a caller that watches liveness itself (readable = gone).
    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd.into_inner()
    }
}

/// The connection's descriptor (e.g. to duplicate it as a link's liveness socket before
/// the welcome is sent).
impl AsFd for Joining {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

impl AsFd for BootstrapConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

fn is_goodbye(r: &Received, buf: &[u8; GOODBYE_LEN]) -> bool {
    if r.len != GOODBYE_LEN || r.truncated || r.has_ancillary() {
        return false;
    }
    match GoodbyeWire::read_from_bytes(&buf[..]) {
        Ok(bye) => {
            bye.magic == GOODBYE_MAGIC
                && bye.version.get() == PROTOCOL_VERSION
                && bye.zero == [0; 6]
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------
// Guest side
// ---------------------------------------------------------------------------------------

/// What a guest gets from a successful [`join`].
#[derive(Debug)]
pub struct Joined {
    /// What the hub granted.
    pub welcome: Welcome,
    /// Exactly the expected number of descriptors, in the order the hub sent them, each
    /// close-on-exec and owned by the caller.
    pub fds: Vec<OwnedFd>,
    /// The connection to keep open for as long as the guest is attached.
    pub conn: BootstrapConn,
}

/// Guest side: connects to the hub at `path`, sends `request`, and receives the welcome with
/// exactly `expected_fds` descriptors (at most [`MAX_FDS`]).
///
/// The whole exchange is bounded by [`BootstrapConfig::request_timeout`]. Every check of the
/// [module docs](self) applies; on any error every received descriptor is closed. A refusal
/// is [`BootstrapError::Refused`]. Needs a tokio runtime with I/O and time enabled.
pub async fn join(
    path: impl AsRef<Path>,
    request: &JoinRequest,
    expected_fds: usize,
    config: &BootstrapConfig,
) -> Result<Joined, BootstrapError> {
    if expected_fds > MAX_FDS {
        return Err(BootstrapError::TooManyFds {
            count: expected_fds,
            max: MAX_FDS,
        });
    }
    if config.request_timeout.is_zero() {
        return Err(BootstrapError::InvalidConfig(
            "request_timeout must be non-zero",
        ));
    }
    let after = config.request_timeout;
    tokio::time::timeout(
        after,
        join_inner(path.as_ref(), request, expected_fds, config),
    )
    .await
    .map_err(|_| BootstrapError::ResponseTimeout { after })?
}

async fn join_inner(
    path: &Path,
    request: &JoinRequest,
    expected_fds: usize,
    config: &BootstrapConfig,
) -> Result<Joined, BootstrapError> {
    let fd = connect(path, config.request_timeout).await?;
    let cred = peer_cred(fd.as_fd()).map_err(io_err("SO_PEERCRED"))?;
    check_uid(config, &cred)?;
    let fd = register(fd)?;
    let req = RequestWire {
        magic: REQUEST_MAGIC,
        version: PROTOCOL_VERSION.into(),
        flags: 0.into(),
        layout_version: request.layout_version.into(),
        token: request.token.into(),
    };
    match send_async(&fd, req.as_bytes(), &[]).await {
        Ok(()) => {}
        // The hub may refuse before reading the request (uid check) and hang up; its
        // refusal is still queued for us, so read it rather than report a broken pipe.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {}
        Err(e) => {
            return Err(BootstrapError::Io {
                op: "sendmsg",
                source: e,
            })
        }
    }
    let mut buf = [0u8; RESPONSE_LEN];
    // Room for SCM_MAX_FD descriptors: a wrong count is reported exactly, and the kernel
    // never releases any in this thread.
    let mut received = match recv_async(&fd, &mut buf).await {
        // A reset is reported once, before data still queued (the hub's answer): read again.
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => recv_async(&fd, &mut buf).await,
        other => other,
    }
    .map_err(io_err("recvmsg"))?;
    let resp = validate_response(&received, &buf, expected_fds)?;
    // The welcome was the only message allowed to carry descriptors.
    refuse_passed_fds(fd.as_raw_fd()).map_err(io_err("SO_PASSRIGHTS"))?;
    Ok(Joined {
        welcome: resp,
        fds: std::mem::take(&mut received.fds),
        conn: BootstrapConn {
            fd,
            cred,
            gone: None,
        },
    })
}

/// Checks a received response. On error the caller drops `received`, closing its descriptors.
fn validate_response(
    received: &Received,
    buf: &[u8; RESPONSE_LEN],
    expected_fds: usize,
) -> Result<Welcome, BootstrapError> {
    let what = "response";
    if received.is_eof() {
        return Err(BootstrapError::Closed { what });
    }
    if received.truncated || received.len != RESPONSE_LEN {
        return Err(BootstrapError::WrongSize {
            what,
            len: received.len,
            expected: RESPONSE_LEN,
        });
    }
    if received.ctrunc {
        return Err(BootstrapError::UnexpectedAncillary {
            what,
            reason: "control data truncated",
        });
    }
    if received.foreign_cmsg {
        return Err(BootstrapError::UnexpectedAncillary {
            what,
            reason: "a control message other than SCM_RIGHTS",
        });
    }
    let resp = ResponseWire::read_from_bytes(&buf[..]).map_err(|_| BootstrapError::WrongSize {
        what,
        len: received.len,
        expected: RESPONSE_LEN,
    })?;
    if resp.magic != RESPONSE_MAGIC {
        return Err(BootstrapError::BadMagic {
            what,
            found: resp.magic,
        });
    }
    if resp.version.get() != PROTOCOL_VERSION {
        return Err(BootstrapError::UnsupportedVersion {
            what,
            found: resp.version.get(),
            supported: PROTOCOL_VERSION,
        });
    }
    if resp.reserved.get() != 0 {
        return Err(BootstrapError::Malformed {
            what,
            reason: "reserved field must be zero",
        });
    }
    let status = resp.status.get();
    if status != 0 {
        if !received.fds.is_empty() || resp.fd_count.get() != 0 {
            return Err(BootstrapError::Malformed {
                what,
                reason: "a refusal carries no descriptors",
            });
        }
        return Err(BootstrapError::Refused {
            reason: RefuseReason::from_code(status),
            detail: resp.detail.get(),
        });
    }
    if resp.detail.get() != 0 {
        return Err(BootstrapError::Malformed {
            what,
            reason: "detail must be zero in a welcome",
        });
    }
    let announced = resp.fd_count.get();
    if received.fds.len() != expected_fds || announced as usize != expected_fds {
        return Err(BootstrapError::FdCount {
            expected: expected_fds,
            announced,
            received: received.fds.len(),
        });
    }
    Ok(Welcome {
        peer_id: resp.peer_id.get(),
        generation: resp.generation.get(),
        layout_version: resp.layout_version.get(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A blocking `SOCK_SEQPACKET` client connected to `path`.
    pub(crate) fn raw_seqpacket_connect(path: &Path) -> OwnedFd {
        let fd = seqpacket_socket().unwrap();
        let (addr, len) = sockaddr_un(path).unwrap();
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; `fd` is an open socket.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        assert_eq!(r, 0, "connect: {}", io::Error::last_os_error());
        set_nonblocking(fd.as_raw_fd(), false).unwrap();
        fd
    }

    /// Sends one datagram with one descriptor.
    pub(crate) fn send_with_fd(
        fd: BorrowedFd<'_>,
        bytes: &[u8],
        pass: BorrowedFd<'_>,
    ) -> io::Result<()> {
        send_msg(fd.as_raw_fd(), bytes, &[pass])
    }

    /// Blocking read (at most 30 s) of a response: its status, or `None` if none came.
    pub(crate) fn read_status(fd: OwnedFd) -> Option<u16> {
        let tv = libc::timeval {
            tv_sec: 30,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a live timeval of the size given; `fd` is an open socket.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let mut buf = [0u8; RESPONSE_LEN];
        let g = recv_guarded(fd.as_raw_fd(), &mut buf, 0).ok()?;
        assert!(g.fds.is_empty());
        (g.len == RESPONSE_LEN).then(|| u16::from_le_bytes([buf[10], buf[11]]))
    }

    #[test]
    fn wire_layout_is_fixed() {
        let req = RequestWire {
            magic: REQUEST_MAGIC,
            version: 0x0102.into(),
            flags: 0.into(),
            layout_version: 0x0304_0506.into(),
            token: 0x0708_090a_0b0c_0d0e.into(),
        };
        let b = req.as_bytes();
        assert_eq!(&b[..8], b"TTHRJOIN");
        assert_eq!(&b[8..10], &[0x02, 0x01]);
        assert_eq!(&b[10..12], &[0, 0]);
        assert_eq!(&b[12..16], &[0x06, 0x05, 0x04, 0x03]);
        assert_eq!(
            &b[16..24],
            &[0x0e, 0x0d, 0x0c, 0x0b, 0x0a, 0x09, 0x08, 0x07]
        );

        let welcome = Welcome {
            peer_id: 0x11,
            generation: 0x2233,
            layout_version: 0x44,
        };
        let resp = response_bytes(5, 3, welcome, 0x55);
        let b = resp.as_bytes();
        assert_eq!(b.len(), 40);
        assert_eq!(&b[..8], b"TTHRWELC");
        assert_eq!(&b[8..10], &PROTOCOL_VERSION.to_le_bytes());
        assert_eq!(&b[10..12], &[5, 0]);
        assert_eq!(&b[12..16], &[3, 0, 0, 0]);
        assert_eq!(&b[16..20], &[0x11, 0, 0, 0]);
        assert_eq!(&b[20..24], &[0x44, 0, 0, 0]);
        assert_eq!(&b[24..32], &[0x33, 0x22, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[32..36], &[0x55, 0, 0, 0]);
        assert_eq!(&b[36..40], &[0, 0, 0, 0]);
    }

    #[test]
    fn refuse_codes_round_trip() {
        for code in 1..=20u16 {
            assert_eq!(RefuseReason::from_code(code).code(), code);
        }
    }

    #[test]
    fn path_checks() {
        assert!(matches!(
            sockaddr_un(Path::new("")),
            Err(BootstrapError::InvalidPath { .. })
        ));
        assert!(matches!(
            sockaddr_un(Path::new(&"x".repeat(200))),
            Err(BootstrapError::InvalidPath { .. })
        ));
        assert!(sockaddr_un(Path::new("/tmp/ok.sock")).is_ok());
    }
}
