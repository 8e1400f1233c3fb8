//! The error type of the shared-memory layer.

/// Errors of the shared-memory layer (regions, rings, slabs).
///
/// `Corrupt` means the peer left shared state that cannot be valid (an index out of range, a
/// malformed frame, a slot that was never sent); the link that owns the structure must fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// Shared state written by the peer is malformed; the structure cannot be used any more.
    #[error("shared memory is corrupt: {0}")]
    Corrupt(String),

    /// A payload is larger than the configured maximum of the ring (inline) or slab (slot).
    #[error("payload of {len} bytes is larger than the maximum of {max} bytes")]
    TooLarge {
        /// Requested payload length in bytes.
        len: usize,
        /// The configured maximum in bytes.
        max: usize,
    },

    /// A ring or slab configuration is out of its documented bounds.
    #[error("invalid shared-memory configuration: {0}")]
    InvalidConfig(String),

    /// A memory region is smaller than the structure placed in it needs.
    #[error("region of {have} bytes is too small, {need} bytes are needed")]
    RegionTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },

    /// A memory region (or a sub-region offset) is not aligned as required.
    #[error("region at offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        /// The offending address or offset.
        offset: usize,
        /// The required alignment in bytes.
        align: usize,
    },

    /// The segment is smaller than its header, or than the size the caller requires.
    #[error("segment of {len} bytes is too small, at least {min} bytes are needed")]
    SegmentTooSmall {
        /// Actual size in bytes.
        len: u64,
        /// Minimum size in bytes.
        min: u64,
    },

    /// The segment does not start with the segment magic: it is not an actix-tether segment.
    #[error("not an actix-tether segment (magic {0:02x?})")]
    BadMagic([u8; 8]),

    /// The segment was laid out by an incompatible version of this library.
    #[error("segment layout version {found} is not supported (expected {expected})")]
    UnsupportedVersion {
        /// Version found in the header.
        found: u32,
        /// Version this library implements.
        expected: u32,
    },

    /// The header length recorded in the segment is not this library's header length.
    #[error("segment header length {found} does not match the expected {expected}")]
    HeaderLenMismatch {
        /// Length found in the header.
        found: u32,
        /// Expected length.
        expected: u32,
    },

    /// The total length recorded in the header differs from the real size of the segment (or
    /// from the size its parameters imply).
    #[error("segment header says {header} bytes but the segment has {actual}")]
    SizeMismatch {
        /// Length recorded in the header.
        header: u64,
        /// Actual (or implied) length.
        actual: u64,
    },

    /// A region of the segment lies (partly) outside the mapping, or overlaps another.
    #[error("region {region} at {offset}+{len} is outside the {mapping_len}-byte segment or overlaps another region")]
    RegionOutOfBounds {
        /// Name of the region.
        region: &'static str,
        /// Offset recorded in the header.
        offset: u64,
        /// Length recorded in the header.
        len: u64,
        /// Length of the mapping.
        mapping_len: u64,
    },

    /// A region of the segment does not start on the required boundary.
    #[error("region {region} at offset {offset} is not aligned to {align} bytes")]
    RegionMisaligned {
        /// Name of the region.
        region: &'static str,
        /// Offset recorded in the header.
        offset: u64,
        /// Required alignment in bytes.
        align: u64,
    },

    /// A region's offset or length differs from what the header's own parameters imply.
    #[error("region {region} is at {found:?} (offset, len) but the parameters imply {expected:?}")]
    RegionMismatch {
        /// Name of the region.
        region: &'static str,
        /// (offset, len) found in the header.
        found: (u64, u64),
        /// (offset, len) the parameters imply.
        expected: (u64, u64),
    },

    /// A segment passed by descriptor is not sealed against growing and shrinking, so the
    /// peer could truncate it under our mapping.
    #[error("segment descriptor is not sealed against grow and shrink")]
    NotSealed,

    /// A named segment file is not a regular file owned by this user with mode 0600 or
    /// stricter.
    #[error("segment file is insecure (mode {mode:o}, owner uid {owner})")]
    Insecure {
        /// Permission bits of the file.
        mode: u32,
        /// Owner uid of the file.
        owner: u32,
    },

    /// A system call on the segment, a doorbell or the liveness socket failed.
    #[error("{what} failed: {message}")]
    Io {
        /// The operation that failed.
        what: &'static str,
        /// The kind of the I/O error.
        kind: std::io::ErrorKind,
        /// The error's message.
        message: String,
    },

    /// The descriptors handed to a child process (environment variable
    /// `ACTIX_TETHER_SHM`) are missing or malformed.
    #[error("bad shared-memory handoff: {0}")]
    BadHandoff(String),
}
