//! The segment layout: a fixed `#[repr(C)]` header at offset 0 that describes every region.
//!
//! ```text
//!  offset 0      SegmentHeader (magic, layout version, parameters, region table)
//!  page-aligned  Control   — per-direction "closed" flags of the link
//!  page-aligned  Ring A→B  — SPSC ring, written by side A
//!  page-aligned  Ring B→A  — SPSC ring, written by side B
//!  page-aligned  Slab A→B  — large-payload slots, owned by side A
//!  page-aligned  Slab B→A  — large-payload slots, owned by side B
//!  total_len     end of the segment
//! ```
//!
//! The creator computes the layout from [`LayoutParams`] and writes the header once. An
//! attaching process copies the header out of shared memory (so a peer changing it later
//! cannot change what was validated), recomputes the layout from the parameters it found,
//! and refuses the segment unless every field matches: magic, version, header length, total
//! length (also against the real size of the mapping), every region's offset and length,
//! alignment, and that regions lie inside the mapping without overlapping. Each mismatch is
//! a distinct [`ShmError`] variant.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::region::REGION_ALIGN;
use super::ring::{ring_region_size, RING_MAX_CAPACITY, RING_MIN_CAPACITY};
use super::slab::SlabConfig;
use super::ShmError;

/// The eight bytes every segment starts with.
pub const MAGIC: [u8; 8] = *b"TETHRSHM";

/// Version of this layout. Bumped on any incompatible change to the header or a region.
pub const LAYOUT_VERSION: u32 = 2;

/// Alignment of every region's start (one page), in bytes.
pub const SEGMENT_ALIGN: u64 = 4096;

/// Largest number of slots per slab accepted in a segment.
pub const MAX_SLOT_COUNT: u64 = 1 << 16;

/// Number of regions in the region table.
pub const REGION_COUNT: usize = 5;

/// Where one region lives, in bytes from the start of the segment.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct RegionDesc {
    /// Offset of the region's first byte.
    pub offset: u64,
    /// Length of the region.
    pub len: u64,
}

/// The names of the regions, in region-table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionId {
    /// Link control flags (closed flags of each direction).
    Control = 0,
    /// The ring written by side A.
    RingAtoB = 1,
    /// The ring written by side B.
    RingBtoA = 2,
    /// The slab owned by side A.
    SlabAtoB = 3,
    /// The slab owned by side B.
    SlabBtoA = 4,
}

impl RegionId {
    /// Every region, in table order.
    pub const ALL: [RegionId; REGION_COUNT] = [
        RegionId::Control,
        RegionId::RingAtoB,
        RegionId::RingBtoA,
        RegionId::SlabAtoB,
        RegionId::SlabBtoA,
    ];

    /// A short name for error messages.
    pub fn name(self) -> &'static str {
        match self {
            RegionId::Control => "control",
            RegionId::RingAtoB => "ring A→B",
            RegionId::RingBtoA => "ring B→A",
            RegionId::SlabAtoB => "slab A→B",
            RegionId::SlabBtoA => "slab B→A",
        }
    }
}

/// The segment header, at offset 0. Native byte order (both peers run on the same host).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SegmentHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`LAYOUT_VERSION`].
    pub version: u32,
    /// `size_of::<SegmentHeader>()`.
    pub header_len: u32,
    /// Length of the whole segment in bytes.
    pub total_len: u64,
    /// Data capacity of each ring in bytes.
    pub ring_capacity: u64,
    /// Size of each slab slot in bytes (the largest slab payload).
    pub slot_size: u64,
    /// Number of slots in each slab.
    pub slot_count: u64,
    /// Where each region lives, indexed by [`RegionId`].
    pub regions: [RegionDesc; REGION_COUNT],
}

const _: () = assert!(std::mem::size_of::<RegionDesc>() == 16);
const _: () = assert!(std::mem::size_of::<SegmentHeader>() == 48 + 16 * REGION_COUNT);
const _: () = assert!(std::mem::align_of::<SegmentHeader>() == 8);
const _: () = assert!(std::mem::size_of::<SegmentHeader>() as u64 <= SEGMENT_ALIGN);
const _: () = assert!(SEGMENT_ALIGN % REGION_ALIGN as u64 == 0);

/// The parameters a layout is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutParams {
    /// Data capacity of each ring in bytes.
    pub ring_capacity: u64,
    /// Size of each slab slot in bytes.
    pub slot_size: u64,
    /// Number of slots in each slab (may be 0: no slab).
    pub slot_count: u64,
}

/// Length in bytes of the control region.
pub const CONTROL_LEN: u64 = SEGMENT_ALIGN;

/// A computed layout: the header a segment with these parameters must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The header.
    pub header: SegmentHeader,
}

/// Region length of a ring of `capacity` data bytes, after checking the capacity.
fn ring_region_len(capacity: u64) -> Result<u64, ShmError> {
    let ok = capacity.is_power_of_two()
        && capacity >= RING_MIN_CAPACITY as u64
        && capacity <= RING_MAX_CAPACITY as u64;
    if !ok {
        return Err(ShmError::InvalidConfig(format!(
            "ring capacity {capacity} must be a power of two in {RING_MIN_CAPACITY}..={RING_MAX_CAPACITY}"
        )));
    }
    Ok(ring_region_size(capacity as usize) as u64)
}

/// Region length of a slab of `count` slots of `size` bytes, after checking both.
fn slab_region_len(size: u64, count: u64) -> Result<u64, ShmError> {
    if count > MAX_SLOT_COUNT {
        return Err(ShmError::InvalidConfig(format!(
            "slab slot count {count} is above the maximum of {MAX_SLOT_COUNT}"
        )));
    }
    let cfg = SlabConfig {
        slot_count: count as u32,
        slot_size: usize::try_from(size)
            .map_err(|_| ShmError::InvalidConfig(format!("slot size {size} is too large")))?,
    };
    cfg.validate()?;
    // Bounded: at most 2^16 slots of at most 2 GiB.
    Ok(cfg.region_size() as u64)
}

fn align_up(x: u64) -> Option<u64> {
    x.checked_add(SEGMENT_ALIGN - 1)
        .map(|v| v & !(SEGMENT_ALIGN - 1))
}

impl Layout {
    /// Computes the layout for `params`. Fails with [`ShmError::InvalidConfig`] when a size is
    /// invalid for the ring or slab, or the total overflows.
    pub fn compute(params: LayoutParams) -> Result<Layout, ShmError> {
        let ring_len = ring_region_len(params.ring_capacity)?;
        let slab_len = slab_region_len(params.slot_size, params.slot_count)?;
        let lens = [CONTROL_LEN, ring_len, ring_len, slab_len, slab_len];
        let mut regions = [RegionDesc { offset: 0, len: 0 }; REGION_COUNT];
        let mut at = SEGMENT_ALIGN; // the header's page
        for (desc, len) in regions.iter_mut().zip(lens) {
            *desc = RegionDesc { offset: at, len };
            at = at
                .checked_add(len)
                .and_then(align_up)
                .ok_or_else(|| ShmError::InvalidConfig("segment size overflows".into()))?;
        }
        if usize::try_from(at).is_err() {
            return Err(ShmError::InvalidConfig(format!(
                "segment of {at} bytes does not fit the address space"
            )));
        }
        Ok(Layout {
            header: SegmentHeader {
                magic: MAGIC,
                version: LAYOUT_VERSION,
                header_len: std::mem::size_of::<SegmentHeader>() as u32,
                total_len: at,
                ring_capacity: params.ring_capacity,
                slot_size: params.slot_size,
                slot_count: params.slot_count,
                regions,
            },
        })
    }

    /// Total length of the segment in bytes.
    pub fn total_len(&self) -> u64 {
        self.header.total_len
    }

    /// The parameters this layout was computed from.
    pub fn params(&self) -> LayoutParams {
        LayoutParams {
            ring_capacity: self.header.ring_capacity,
            slot_size: self.header.slot_size,
            slot_count: self.header.slot_count,
        }
    }

    /// Where region `id` lives.
    pub fn region(&self, id: RegionId) -> RegionDesc {
        self.header.regions[id as usize]
    }

    /// Validates a header read from a mapping of `mapping_len` bytes and returns the layout
    /// it describes. Every field is checked; see the [module docs](self).
    pub fn validate(bytes: &[u8], mapping_len: u64) -> Result<Layout, ShmError> {
        let header = SegmentHeader::read_from_prefix(bytes)
            .map(|(h, _)| h)
            .map_err(|_| ShmError::SegmentTooSmall {
                len: bytes.len() as u64,
                min: std::mem::size_of::<SegmentHeader>() as u64,
            })?;
        if header.magic != MAGIC {
            return Err(ShmError::BadMagic(header.magic));
        }
        if header.version != LAYOUT_VERSION {
            return Err(ShmError::UnsupportedVersion {
                found: header.version,
                expected: LAYOUT_VERSION,
            });
        }
        if header.header_len as usize != std::mem::size_of::<SegmentHeader>() {
            return Err(ShmError::HeaderLenMismatch {
                found: header.header_len,
                expected: std::mem::size_of::<SegmentHeader>() as u32,
            });
        }
        if header.total_len != mapping_len {
            return Err(ShmError::SizeMismatch {
                header: header.total_len,
                actual: mapping_len,
            });
        }
        // Every region inside the mapping, aligned, after the header and not overlapping
        // the previous one (the table is in address order).
        let mut prev_end = SEGMENT_ALIGN;
        for id in RegionId::ALL {
            let r = header.regions[id as usize];
            let end = r.offset.checked_add(r.len);
            match end {
                Some(end) if r.offset >= prev_end && end <= mapping_len => prev_end = end,
                _ => {
                    return Err(ShmError::RegionOutOfBounds {
                        region: id.name(),
                        offset: r.offset,
                        len: r.len,
                        mapping_len,
                    })
                }
            }
            if r.offset % SEGMENT_ALIGN != 0 {
                return Err(ShmError::RegionMisaligned {
                    region: id.name(),
                    offset: r.offset,
                    align: SEGMENT_ALIGN,
                });
            }
        }
        // The parameters must be valid and produce exactly this table.
        let expected = Layout::compute(LayoutParams {
            ring_capacity: header.ring_capacity,
            slot_size: header.slot_size,
            slot_count: header.slot_count,
        })?;
        for id in RegionId::ALL {
            let (found, want) = (header.regions[id as usize], expected.region(id));
            if found != want {
                return Err(ShmError::RegionMismatch {
                    region: id.name(),
                    found: (found.offset, found.len),
                    expected: (want.offset, want.len),
                });
            }
        }
        if expected.header.total_len != header.total_len {
            return Err(ShmError::SizeMismatch {
                header: header.total_len,
                actual: expected.header.total_len,
            });
        }
        Ok(Layout { header })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> LayoutParams {
        LayoutParams {
            ring_capacity: 64 * 1024,
            slot_size: 64 * 1024,
            slot_count: 4,
        }
    }

    fn header_bytes(l: &Layout) -> Vec<u8> {
        l.header.as_bytes().to_vec()
    }

    #[test]
    fn computed_layout_validates() {
        let l = Layout::compute(params()).unwrap();
        let back = Layout::validate(&header_bytes(&l), l.total_len()).unwrap();
        assert_eq!(back, l);
        for id in RegionId::ALL {
            assert_eq!(l.region(id).offset % SEGMENT_ALIGN, 0);
        }
    }

    #[test]
    fn each_mismatch_has_its_own_error() {
        let l = Layout::compute(params()).unwrap();
        let total = l.total_len();

        let mut h = l.header;
        h.magic[0] ^= 1;
        assert!(matches!(
            Layout::validate(h.as_bytes(), total),
            Err(ShmError::BadMagic(_))
        ));

        let mut h = l.header;
        h.version = 99;
        assert!(matches!(
            Layout::validate(h.as_bytes(), total),
            Err(ShmError::UnsupportedVersion { found: 99, .. })
        ));

        let mut h = l.header;
        h.header_len = 7;
        assert!(matches!(
            Layout::validate(h.as_bytes(), total),
            Err(ShmError::HeaderLenMismatch { found: 7, .. })
        ));

        assert!(matches!(
            Layout::validate(l.header.as_bytes(), total - 1),
            Err(ShmError::SizeMismatch { .. })
        ));

        let mut h = l.header;
        h.regions[RegionId::SlabBtoA as usize].len = total;
        assert!(matches!(
            Layout::validate(h.as_bytes(), total),
            Err(ShmError::RegionOutOfBounds { .. })
        ));

        let mut h = l.header;
        h.regions[RegionId::RingAtoB as usize].offset = u64::MAX;
        assert!(matches!(
            Layout::validate(h.as_bytes(), total),
            Err(ShmError::RegionOutOfBounds { .. })
        ));

        let mut h = l.header;
        h.regions[RegionId::Control as usize].offset += 8;
        assert!(matches!(
            Layout::validate(h.as_bytes(), total),
            Err(ShmError::RegionMisaligned { .. })
        ));

        let mut h = l.header;
        h.regions[RegionId::Control as usize].len -= 8;
        assert!(matches!(
            Layout::validate(h.as_bytes(), total),
            Err(ShmError::RegionMismatch { .. })
        ));

        assert!(matches!(
            Layout::validate(&header_bytes(&l)[..10], total),
            Err(ShmError::SegmentTooSmall { .. })
        ));
    }
}
