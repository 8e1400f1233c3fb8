//! [`Region`]: a raw view of memory that may be shared with another process.
//!
//! The ring and the slab operate on a region: a pointer, a length, and a keep-alive handle
//! that owns the memory (an `mmap` of a shared segment, or a heap allocation for in-process
//! use and tests). Cloning a region or taking a [sub-region](Region::sub) clones the
//! keep-alive, so memory is unmapped only when the last view of it is gone — in particular a
//! received [`bytes::Bytes`] over a slab slot keeps the mapping alive.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use super::ShmError;

/// Alignment (bytes) of every region and sub-region: one cache line.
pub const REGION_ALIGN: usize = 64;

/// A raw view of `len` bytes of memory, possibly shared with another process.
///
/// A region grants no access by itself: the [`ring`](super::ring) and [`slab`](super::slab)
/// built on it decide who reads and writes which bytes, and validate everything they read.
#[derive(Clone)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    keep_alive: Arc<dyn Send + Sync>,
}

// SAFETY: a `Region` is a pointer plus a keep-alive owner that is itself `Send + Sync`. The
// memory may be accessed from any thread; every access goes through the ring/slab protocols,
// which use atomics (or happens-before established by atomics) for all shared bytes.
unsafe impl Send for Region {}
// SAFETY: see `Send`; `&Region` only exposes the pointer and length.
unsafe impl Sync for Region {}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

/// A zeroed, [`REGION_ALIGN`]-aligned heap allocation, freed on drop.
struct HeapAlloc {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the allocation is exclusively owned by this value; the pointer is only freed in
// `Drop`, and concurrent access to the bytes is governed by the regions viewing it.
unsafe impl Send for HeapAlloc {}
// SAFETY: `&HeapAlloc` gives no access to the bytes.
unsafe impl Sync for HeapAlloc {}

impl Drop for HeapAlloc {
    fn drop(&mut self) {
        // SAFETY: `ptr` was returned by `alloc_zeroed(self.layout)` and is freed only here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

impl Region {
    /// Wraps raw memory.
    ///
    /// Fails with [`ShmError::Misaligned`] if `ptr` is not aligned to [`REGION_ALIGN`].
    ///
    /// # Safety
    ///
    /// `ptr .. ptr + len` must lie within a single allocation or mapping (so that pointer
    /// offsets inside it are in bounds), `len` must be at most `isize::MAX`, the range must be
    /// valid for reads and writes for as long as `keep_alive` lives (for example
    /// `keep_alive` owns the mapping `ptr` points into), and it must not be accessed by this
    /// process other than through regions (another process may access it).
    pub unsafe fn from_raw_parts(
        ptr: *mut u8,
        len: usize,
        keep_alive: Arc<dyn Send + Sync>,
    ) -> Result<Region, ShmError> {
        let ptr = NonNull::new(ptr).ok_or(ShmError::Misaligned {
            offset: 0,
            align: REGION_ALIGN,
        })?;
        if (ptr.as_ptr() as usize) % REGION_ALIGN != 0 {
            return Err(ShmError::Misaligned {
                offset: ptr.as_ptr() as usize,
                align: REGION_ALIGN,
            });
        }
        Ok(Region {
            ptr,
            len,
            keep_alive,
        })
    }

    /// Allocates `len` zeroed bytes on the heap, aligned to [`REGION_ALIGN`] (for in-process
    /// rings, tests and model checking).
    ///
    /// # Panics
    ///
    /// Like any allocation, aborts if memory is exhausted; panics if `len` rounded up to the
    /// alignment overflows `isize`.
    pub fn heap(len: usize) -> Region {
        let layout = Layout::from_size_align(len.max(REGION_ALIGN), REGION_ALIGN)
            .expect("heap region length overflows isize");
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Region {
            ptr,
            len,
            keep_alive: Arc::new(HeapAlloc { ptr, layout }),
        }
    }

    /// Allocates a heap region holding a copy of `bytes` (for tests and fuzzing: a ring or
    /// slab image with arbitrary content).
    pub fn heap_from(bytes: &[u8]) -> Region {
        let region = Region::heap(bytes.len());
        // SAFETY: the fresh allocation holds at least `bytes.len()` bytes and is not shared
        // with anyone yet; `bytes` cannot overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), region.as_ptr(), bytes.len());
        }
        region
    }

    /// A view of `len` bytes starting `offset` bytes into this region.
    ///
    /// `offset` must be a multiple of [`REGION_ALIGN`] and the sub-region must lie inside this
    /// one.
    pub fn sub(&self, offset: usize, len: usize) -> Result<Region, ShmError> {
        if offset % REGION_ALIGN != 0 {
            return Err(ShmError::Misaligned {
                offset,
                align: REGION_ALIGN,
            });
        }
        let end = offset.checked_add(len).ok_or(ShmError::RegionTooSmall {
            need: usize::MAX,
            have: self.len,
        })?;
        if end > self.len {
            return Err(ShmError::RegionTooSmall {
                need: end,
                have: self.len,
            });
        }
        // SAFETY: `offset <= self.len`, so the result stays inside (or one past) the same
        // allocation/mapping, and is non-null.
        let ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(offset)) };
        Ok(Region {
            ptr,
            len,
            keep_alive: Arc::clone(&self.keep_alive),
        })
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of the region.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Fails with [`ShmError::RegionTooSmall`] unless the region holds at least `need` bytes.
    pub(crate) fn require(&self, need: usize) -> Result<(), ShmError> {
        if self.len < need {
            Err(ShmError::RegionTooSmall {
                need,
                have: self.len,
            })
        } else {
            Ok(())
        }
    }
}
