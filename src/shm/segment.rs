//! The shared-memory segment: one sealed `memfd` (or a mode-0600 file under `/dev/shm`),
//! mapped read-write and shared, laid out as described in [`super::layout`].
//!
//! # Creating
//!
//! [`Segment::create`] makes an anonymous `memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING)`,
//! sizes it once with `ftruncate`, seals it with `F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`
//! (so neither side can ever change its size: no `SIGBUS` from a peer shrinking the file
//! under our mapping), maps it with memmap2, writes the header and initialises the regions.
//!
//! [`Segment::create_named`] does the same with a file `/dev/shm/<name>` created with mode
//! `0600` (never group- or world-accessible). The file is prepared under a temporary name
//! and published with `link(2)`, which refuses to replace an existing file, so an attacher
//! never sees a half-written header. The creator unlinks the file when its `Segment` is
//! dropped. Files under `/dev/shm` cannot be sealed; see [`Segment::attach_path`].
//!
//! # Attaching
//!
//! [`Segment::attach_fd`] takes a descriptor (inherited or passed over a socket), requires
//! the grow/shrink seals, maps it and validates the header ([`Layout::validate`]): magic,
//! version, sizes, the size of the file itself, and every region's bounds. Each mismatch is a
//! distinct [`ShmError`].
//!
//! [`Segment::attach_path`] opens `/dev/shm/<name>` (no symlinks followed), refuses it
//! unless it is a regular file owned by this user with no group/other permission bits, and
//! validates it the same way. Such a file is not sealed: a process of the same user could
//! truncate it, which would make accesses fault — use fd passing where that matters.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

use super::layout::{Layout, LayoutParams, RegionDesc, RegionId, SegmentHeader, SEGMENT_ALIGN};
use super::{Region, ShmError};

/// The seals a segment created by [`Segment::create`] carries and an fd attach requires.
const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK;

/// A mapped shared-memory segment. See the [module docs](self).
///
/// The mapping stays valid for the lifetime of the `Segment`; link halves and received
/// messages keep it alive through an `Arc`.
#[derive(Debug)]
pub struct Segment {
    map: MmapRaw,
    file: File,
    layout: Layout,
    /// Set on the creator of a named segment: the file to unlink on drop.
    unlink_on_drop: Option<PathBuf>,
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ShmError {
    move |e| ShmError::Io {
        what,
        kind: e.kind(),
        message: e.to_string(),
    }
}

impl Segment {
    /// Creates a sealed anonymous segment (`memfd`) laid out for `params`.
    pub fn create(params: LayoutParams) -> Result<Segment, ShmError> {
        let layout = Layout::compute(params)?;
        let name = c"actix-tether-shm";
        // SAFETY: `name` is a valid NUL-terminated string; the flags are valid constants.
        #[allow(unsafe_code)]
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(io_err("memfd_create")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by memfd_create, is open and owned by nobody else.
        #[allow(unsafe_code)]
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(layout.total_len())
            .map_err(io_err("ftruncate"))?;
        let seals = REQUIRED_SEALS | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS takes an integer argument and touches no memory.
        #[allow(unsafe_code)]
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
        if r < 0 {
            return Err(io_err("F_ADD_SEALS")(io::Error::last_os_error()));
        }
        Segment::init(file, layout, None)
    }

    /// Creates a segment backed by the file `/dev/shm/<name>` with mode `0600`.
    ///
    /// `name` must be a single path component of printable ASCII without `/`. Fails with
    /// an I/O error of kind `AlreadyExists` if the file exists. The file is unlinked when the
    /// returned segment is dropped.
    pub fn create_named(name: &str, params: LayoutParams) -> Result<Segment, ShmError> {
        let path = shm_path(name)?;
        let layout = Layout::compute(params)?;
        let tmp = path.with_file_name(format!(
            ".{name}.{}.{:x}.tmp",
            std::process::id(),
            rand_u64()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err("create segment file"))?;
        let result = (|| {
            file.set_len(layout.total_len())
                .map_err(io_err("ftruncate"))?;
            let seg = Segment::init(file, layout, None)?;
            // Publish atomically: link() never replaces an existing file.
            std::fs::hard_link(&tmp, &path).map_err(io_err("publish segment file"))?;
            Ok(seg)
        })();
        let _ = std::fs::remove_file(&tmp);
        let mut seg = result?;
        seg.unlink_on_drop = Some(path);
        Ok(seg)
    }

    /// Maps `file` (already sized), writes the header and initialises every region.
    fn init(
        file: File,
        layout: Layout,
        unlink_on_drop: Option<PathBuf>,
    ) -> Result<Segment, ShmError> {
        let map = map_file(&file, layout.total_len())?;
        let seg = Segment {
            map,
            file,
            layout,
            unlink_on_drop,
        };
        let header = zerocopy::IntoBytes::as_bytes(&seg.layout.header);
        // SAFETY: the mapping is at least one page (SEGMENT_ALIGN) long, larger than the
        // header; nobody else has the descriptor yet, so nothing accesses it concurrently;
        // source and destination do not overlap (the source is on our stack/heap).
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(header.as_ptr(), seg.map.as_mut_ptr(), header.len());
        }
        Ok(seg)
    }

    /// Attaches to a segment by descriptor (inherited, or received over a socket).
    ///
    /// Requires the `F_SEAL_GROW | F_SEAL_SHRINK` seals and validates the header; see the
    /// [module docs](self).
    pub fn attach_fd(fd: OwnedFd) -> Result<Segment, ShmError> {
        let file = File::from(fd);
        // SAFETY: F_GET_SEALS takes no argument and touches no memory.
        #[allow(unsafe_code)]
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & REQUIRED_SEALS != REQUIRED_SEALS {
            return Err(ShmError::NotSealed);
        }
        super::doorbell::set_cloexec(file.as_raw_fd(), true).map_err(io_err("F_SETFD"))?;
        Segment::attach_file(file)
    }

    /// Attaches to the named segment `/dev/shm/<name>` created by
    /// [`Segment::create_named`]. Refuses a file that is not a regular file owned by this
    /// user with mode `0600` or stricter ([`ShmError::Insecure`]).
    pub fn attach_path(name: &str) -> Result<Segment, ShmError> {
        let path = shm_path(name)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err("open segment file"))?;
        let meta = file.metadata().map_err(io_err("fstat"))?;
        // SAFETY: geteuid has no preconditions.
        #[allow(unsafe_code)]
        let uid = unsafe { libc::geteuid() };
        if !meta.file_type().is_file() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return Err(ShmError::Insecure {
                mode: meta.mode() & 0o7777,
                owner: meta.uid(),
            });
        }
        Segment::attach_file(file)
    }

    fn attach_file(file: File) -> Result<Segment, ShmError> {
        let len = file.metadata().map_err(io_err("fstat"))?.len();
        let min = SEGMENT_ALIGN;
        if len < min {
            return Err(ShmError::SegmentTooSmall { len, min });
        }
        let map = map_file(&file, len)?;
        let mut buf = [0u8; std::mem::size_of::<SegmentHeader>()];
        // SAFETY: the mapping is `len >= SEGMENT_ALIGN` bytes, more than the header; the
        // peer may write it concurrently, but we copy plain bytes (any value is valid for
        // the `FromBytes` header) into a private buffer and validate only the copy.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(map.as_ptr(), buf.as_mut_ptr(), buf.len());
        }
        let layout = Layout::validate(&buf, len)?;
        Ok(Segment {
            map,
            file,
            layout,
            unlink_on_drop: None,
        })
    }

    /// The validated layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The descriptor of the segment (to hand it to another process).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Total length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: a segment holds at least its header page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Region `id` as a [`Region`] that keeps this segment (its mapping) alive.
    pub fn region(self: &Arc<Segment>, id: RegionId) -> Result<Region, ShmError> {
        let (ptr, len) = self.region_ptr(id);
        let keep_alive: Arc<dyn Send + Sync> = self.clone();
        // SAFETY: the region lies inside the one mapping of this segment (validated on
        // attach, by construction on create), whose length fits `isize` (mmap cannot map
        // more), and the mapping lives as long as `keep_alive`, an `Arc` of this segment;
        // this process touches segment memory only through regions (the header was copied
        // out once, before any region existed).
        #[allow(unsafe_code)]
        unsafe {
            Region::from_raw_parts(ptr.as_ptr(), len, keep_alive)
        }
    }

    /// Start and length of region `id` inside the mapping.
    ///
    /// The pointer is valid for `len` bytes for as long as `self` lives; the layout was
    /// validated to lie inside the mapping.
    fn region_ptr(&self, id: RegionId) -> (NonNull<u8>, usize) {
        let RegionDesc { offset, len } = self.layout.region(id);
        // SAFETY: `offset + len <= map.len()` was checked by `Layout::validate` (attach) or
        // holds by construction (create), so the offset stays inside the mapping.
        #[allow(unsafe_code)]
        let p = unsafe { self.map.as_mut_ptr().add(offset as usize) };
        (
            NonNull::new(p).expect("a mapping is never at address 0"),
            len as usize,
        )
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some(path) = self.unlink_on_drop.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn map_file(file: &File, len: u64) -> Result<MmapRaw, ShmError> {
    let len = usize::try_from(len)
        .map_err(|_| ShmError::InvalidConfig(format!("segment of {len} bytes is too large")))?;
    MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map_err(io_err("mmap"))
}

/// `/dev/shm/<name>` after checking `name`.
fn shm_path(name: &str) -> Result<PathBuf, ShmError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if !ok {
        return Err(ShmError::InvalidConfig(format!(
            "invalid segment name {name:?}: use one path component of printable ASCII"
        )));
    }
    Ok(Path::new("/dev/shm").join(name))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use crate::shm::layout::{SegmentHeader, MAGIC};

    fn params() -> LayoutParams {
        LayoutParams {
            ring_capacity: 4096,
            slot_size: 4096,
            slot_count: 2,
        }
    }

    fn dup(seg: &Segment) -> OwnedFd {
        seg.fd().try_clone_to_owned().unwrap()
    }

    /// Overwrites header bytes at `offset` of a live segment (as a hostile peer would).
    fn scribble(seg: &Segment, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= std::mem::size_of::<SegmentHeader>());
        // SAFETY: the range lies inside the header page of the mapping; nothing else in this
        // test accesses the header concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                seg.map.as_mut_ptr().add(offset),
                bytes.len(),
            )
        };
    }

    fn memfd(len: u64, seal: bool) -> File {
        // SAFETY: a valid NUL-terminated name and valid flags.
        let fd = unsafe {
            libc::memfd_create(
                c"test".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        assert!(fd >= 0);
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len).unwrap();
        if seal {
            // SAFETY: F_ADD_SEALS takes an integer and touches no memory.
            let r = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, REQUIRED_SEALS) };
            assert_eq!(r, 0);
        }
        file
    }

    fn write_header(file: &File, header: &SegmentHeader) {
        use std::os::unix::fs::FileExt;
        file.write_all_at(zerocopy::IntoBytes::as_bytes(header), 0)
            .unwrap();
    }

    #[test]
    fn create_then_attach_by_fd() {
        let seg = Segment::create(params()).unwrap();
        let other = Segment::attach_fd(dup(&seg)).unwrap();
        assert_eq!(other.layout(), seg.layout());
        assert_eq!(other.len() as u64, seg.layout().total_len());
    }

    #[test]
    fn each_header_mismatch_is_refused_with_its_own_error() {
        let seg = Segment::create(params()).unwrap();
        scribble(&seg, 0, b"NOTTETHR");
        assert!(matches!(
            Segment::attach_fd(dup(&seg)),
            Err(ShmError::BadMagic(_))
        ));
        scribble(&seg, 0, &MAGIC);

        scribble(&seg, 8, &7u32.to_ne_bytes());
        assert!(matches!(
            Segment::attach_fd(dup(&seg)),
            Err(ShmError::UnsupportedVersion { found: 7, .. })
        ));
        scribble(&seg, 8, &super::super::layout::LAYOUT_VERSION.to_ne_bytes());

        scribble(&seg, 16, &1u64.to_ne_bytes()); // total_len
        assert!(matches!(
            Segment::attach_fd(dup(&seg)),
            Err(ShmError::SizeMismatch { .. })
        ));
        scribble(&seg, 16, &seg.layout().total_len().to_ne_bytes());

        // The last region's length pushed past the end of the mapping.
        let last = 48 + 16 * 4 + 8;
        scribble(&seg, last, &(1u64 << 40).to_ne_bytes());
        assert!(matches!(
            Segment::attach_fd(dup(&seg)),
            Err(ShmError::RegionOutOfBounds { .. })
        ));
        let len = seg.layout().region(RegionId::SlabBtoA).len;
        scribble(&seg, last, &len.to_ne_bytes());

        // A ring capacity that is not a power of two.
        scribble(&seg, 24, &1000u64.to_ne_bytes());
        assert!(matches!(
            Segment::attach_fd(dup(&seg)),
            Err(ShmError::InvalidConfig(_))
        ));
        scribble(&seg, 24, &4096u64.to_ne_bytes());

        Segment::attach_fd(dup(&seg)).expect("restored header attaches again");
    }

    #[test]
    fn unsealed_or_foreign_descriptors_are_refused() {
        let layout = Layout::compute(params()).unwrap();
        let file = memfd(layout.total_len(), false);
        write_header(&file, &layout.header);
        assert!(matches!(
            Segment::attach_fd(file.into()),
            Err(ShmError::NotSealed)
        ));

        let dir = std::env::temp_dir().join(format!("tether-seg-{}", std::process::id()));
        std::fs::write(&dir, vec![0u8; 8192]).unwrap();
        let plain = File::open(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert!(matches!(
            Segment::attach_fd(plain.into()),
            Err(ShmError::NotSealed)
        ));
    }

    #[test]
    fn wrong_sizes_are_refused() {
        assert!(matches!(
            Segment::attach_fd(memfd(100, true).into()),
            Err(ShmError::SegmentTooSmall { len: 100, .. })
        ));
        // A valid header in a file one page longer than it says.
        let layout = Layout::compute(params()).unwrap();
        let file = memfd(layout.total_len() + SEGMENT_ALIGN, false);
        write_header(&file, &layout.header);
        // SAFETY: F_ADD_SEALS takes an integer and touches no memory.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, REQUIRED_SEALS) };
        assert_eq!(r, 0);
        assert!(matches!(
            Segment::attach_fd(file.into()),
            Err(ShmError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn named_segment_is_private_and_unlinked_on_drop() {
        let name = format!("actix-tether-test-{}-{:x}", std::process::id(), rand_u64());
        let seg = Segment::create_named(&name, params()).unwrap();
        let path = Path::new("/dev/shm").join(&name);
        let mode = std::fs::metadata(&path).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = Segment::attach_path(&name).unwrap();
        assert_eq!(other.layout(), seg.layout());
        // A second create under the same name fails instead of replacing it.
        assert!(Segment::create_named(&name, params()).is_err());

        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        assert!(matches!(
            Segment::attach_path(&name),
            Err(ShmError::Insecure { .. })
        ));
        drop(seg);
        assert!(!path.exists());
        drop(other);

        for bad in ["", ".", "..", "a/b", ".hidden", "sp ace"] {
            assert!(matches!(
                Segment::attach_path(bad),
                Err(ShmError::InvalidConfig(_))
            ));
        }
    }
}
