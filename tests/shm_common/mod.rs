//! Helpers shared by the shared-memory bootstrap tests: memfds, eventfds, descriptor
//! inspection through /proc, and a raw `SOCK_SEQPACKET` peer for sending malformed bytes.
#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A socket path unique to this process and call.
pub fn sock_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("tether-{tag}-{}-{n}.sock", std::process::id()))
}

fn cvt(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A memfd named `name` holding `content`.
pub fn memfd(name: &str, content: &[u8]) -> OwnedFd {
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: `cname` is a valid NUL-terminated string; flags are valid constants.
    let fd = cvt(unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) }).unwrap();
    // SAFETY: `fd` was just returned by memfd_create and nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = File::from(fd);
    file.write_all_at(content, 0).unwrap();
    file.into()
}

/// A non-blocking, close-on-exec eventfd.
pub fn eventfd() -> OwnedFd {
    // SAFETY: eventfd takes no pointers.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }).unwrap();
    // SAFETY: `fd` was just returned by eventfd and nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Adds `n` to an eventfd's counter.
pub fn eventfd_write(fd: BorrowedFd<'_>, n: u64) {
    let b = n.to_ne_bytes();
    // SAFETY: `b` is 8 live bytes; `fd` is open for the borrow.
    let r = unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), 8) };
    assert_eq!(r, 8, "eventfd write: {}", io::Error::last_os_error());
}

/// Reads (and resets) an eventfd's counter; 0 if it was zero (non-blocking fd).
pub fn eventfd_read(fd: BorrowedFd<'_>) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: `b` is 8 writable bytes; `fd` is open for the borrow.
    let r = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
    if r == 8 {
        u64::from_ne_bytes(b)
    } else {
        0
    }
}

/// Reads `len` bytes at `offset` of a file descriptor (without moving any offset).
pub fn read_at(fd: BorrowedFd<'_>, offset: u64, len: usize) -> Vec<u8> {
    let file = File::from(fd.try_clone_to_owned().unwrap());
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Writes bytes at `offset` of a file descriptor.
pub fn write_at(fd: BorrowedFd<'_>, offset: u64, data: &[u8]) {
    let file = File::from(fd.try_clone_to_owned().unwrap());
    file.write_all_at(data, offset).unwrap();
}

/// Whether a descriptor has FD_CLOEXEC set.
pub fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: F_GETFD takes no pointer; `fd` is open for the borrow.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    assert!(flags >= 0);
    flags & libc::FD_CLOEXEC != 0
}

/// Whether the descriptor is an eventfd (per /proc).
pub fn link_of(fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// How many of this process's descriptors refer to a memfd named `name`.
pub fn count_memfds(name: &str) -> usize {
    let want = format!("/memfd:{name} (deleted)");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.as_os_str().as_bytes() == want.as_bytes())
                .unwrap_or(false)
        })
        .count()
}

/// The number of open descriptors of this process.
pub fn open_fd_count() -> usize {
    // The directory handle itself is one descriptor while listing; it is the same every time.
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn sockaddr(path: &Path) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    (addr, len as libc::socklen_t)
}

fn raw_socket() -> OwnedFd {
    // SAFETY: socket takes no pointers.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })
            .unwrap();
    // SAFETY: fresh descriptor, nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Deadlock guard for blocking calls: 30 s receive timeout.
    let tv = libc::timeval {
        tv_sec: 30,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a live timeval of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })
    .unwrap();
    fd
}

/// A raw, blocking seqpacket client connected to `path`.
pub fn raw_connect(path: &Path) -> OwnedFd {
    let fd = raw_socket();
    let (addr, len) = sockaddr(path);
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })
    .unwrap();
    fd
}

/// A raw, blocking seqpacket listener on `path` (a fake hub).
pub fn raw_listen(path: &Path) -> OwnedFd {
    let fd = raw_socket();
    let (addr, len) = sockaddr(path);
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })
    .unwrap();
    // SAFETY: no pointers.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 8) }).unwrap();
    fd
}

/// Accepts one connection on a raw listener (blocking).
pub fn raw_accept(listener: &OwnedFd) -> OwnedFd {
    // SAFETY: null address pointers are allowed.
    let fd = cvt(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })
    .unwrap();
    // SAFETY: fresh descriptor, nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sends one datagram, with `fds` in one SCM_RIGHTS message if not empty.
pub fn raw_send(fd: &OwnedFd, bytes: &[u8], fds: &[RawFd]) {
    try_raw_send(fd, bytes, fds).unwrap_or_else(|e| panic!("sendmsg: {e}"));
}

/// [`raw_send`] returning the error (e.g. `EPERM`: the receiver has `SO_PASSRIGHTS` off).
pub fn try_raw_send(fd: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE((fds.len() * 4) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is 8-aligned and CMSG_SPACE bytes long.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as _;
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, f) in fds.iter().enumerate() {
                data.add(i).write_unaligned(*f);
            }
        }
    }
    // SAFETY: `msg` points at live buffers.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    assert_eq!(n, bytes.len() as isize, "sendmsg sent a partial datagram");
    Ok(())
}

/// Receives one datagram without waiting (`None` if nothing is queued); `Some(empty)` is EOF.
pub fn raw_recv_now(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// Receives one datagram (blocking, 30 s guard); empty = EOF.
pub fn raw_recv(fd: &OwnedFd) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(n >= 0, "recv: {}", io::Error::last_os_error());
    buf.truncate(n as usize);
    buf
}

/// A well-formed join request with the given version and flags.
pub fn request_bytes(version: u16, flags: u16, layout: u32, token: u64) -> Vec<u8> {
    let mut b = b"TTHRJOIN".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&layout.to_le_bytes());
    b.extend_from_slice(&token.to_le_bytes());
    b
}

/// A response datagram (any field values).
#[allow(clippy::too_many_arguments)]
pub fn response_bytes(
    magic: &[u8; 8],
    version: u16,
    status: u16,
    fd_count: u32,
    peer_id: u32,
    layout: u32,
    generation: u64,
    detail: u32,
) -> Vec<u8> {
    let mut b = magic.to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&status.to_le_bytes());
    b.extend_from_slice(&fd_count.to_le_bytes());
    b.extend_from_slice(&peer_id.to_le_bytes());
    b.extend_from_slice(&layout.to_le_bytes());
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&detail.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}
