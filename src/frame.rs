//! Length-prefix framing for byte streams, as a plain library (no I/O, no runtime).
//!
//! # Wire format
//!
//! Every message travels as one frame:
//!
//! ```text
//! +--------+--------+--------+--------+--------------------------+
//! |        len: u32, little endian    |  payload: `len` bytes    |
//! +--------+--------+--------+--------+--------------------------+
//!   byte 0                    byte 3    byte 4 ..
//! ```
//!
//! `len` counts the payload only (not the prefix); `len == 0` is a legal, empty message.
//! This is byte-compatible with the seed's `StreamLink`.
//!
//! # Decoding rules
//!
//! * [`FrameCodec`] implements tokio-util's [`Decoder`]: it returns `Ok(None)` when more
//!   bytes are needed, and a frame as [`Bytes`] split off the read buffer (no copy) when one
//!   is complete.
//! * The announced length is checked against `max_frame_len` **before** any space is
//!   reserved for the payload, so a hostile prefix such as `0xFFFF_FFFF` is refused with
//!   [`FrameError::TooLarge`] after reading four bytes, without allocating.
//! * At end of stream, leftover bytes (part of a prefix or of a payload) are
//!   [`FrameError::Truncated`], never a clean close.
//!
//! ```
//! use actix_tether::frame::FrameCodec;
//! use bytes::BytesMut;
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = FrameCodec::new(1024);
//! let mut wire = BytesMut::new();
//! codec.encode(&b"hi"[..], &mut wire).unwrap();
//! assert_eq!(&wire[..], &[2, 0, 0, 0, b'h', b'i']);
//! assert_eq!(codec.decode(&mut wire).unwrap().as_deref(), Some(&b"hi"[..]));
//! ```

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Size of the length prefix in bytes.
pub const PREFIX_LEN: usize = 4;

/// Default maximum payload length of one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Most the decoder reserves ahead of the bytes that have arrived, in bytes (64 KiB).
const RESERVE_STEP: usize = 64 * 1024;

/// Largest payload the prefix can describe (`u32::MAX` bytes).
pub const WIRE_MAX_FRAME_LEN: usize = u32::MAX as usize;

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A length prefix announced more than the configured maximum.
    #[error("frame of {len} bytes announced, above the maximum of {max} bytes")]
    TooLarge {
        /// Announced payload length in bytes.
        len: u64,
        /// Configured maximum in bytes.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes of an incomplete frame)")]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// The underlying stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The `[len: u32 LE][payload]` codec. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_len: usize,
}

impl FrameCodec {
    /// A codec that refuses frames whose payload is longer than `max_frame_len` bytes.
    /// Values above [`WIRE_MAX_FRAME_LEN`] are clamped to it.
    pub fn new(max_frame_len: usize) -> Self {
        FrameCodec {
            max_frame_len: max_frame_len.min(WIRE_MAX_FRAME_LEN),
        }
    }

    /// The maximum payload length in bytes.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Checks that a payload of `len` bytes may be sent.
    pub fn check_len(&self, len: usize) -> Result<(), FrameError> {
        if len > self.max_frame_len {
            Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_frame_len,
            })
        } else {
            Ok(())
        }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_LEN)
    }
}

/// Appends the prefix for a payload of `len` bytes. The caller guarantees `len` fits in a
/// `u32` (checked by [`FrameCodec::check_len`]).
pub fn put_prefix(dst: &mut BytesMut, len: usize) {
    debug_assert!(len <= WIRE_MAX_FRAME_LEN);
    dst.put_u32_le(len as u32);
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < PREFIX_LEN {
            return Ok(None);
        }
        let len = u32::from_le_bytes([src[0], src[1], src[2], src[3]]) as usize;
        // Checked before anything is reserved for the payload.
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_frame_len,
            });
        }
        // Cannot overflow: `len <= max_frame_len <= u32::MAX`; saturating for 32-bit targets.
        let total = PREFIX_LEN.saturating_add(len);
        if src.len() < total {
            // Make room for more of this frame, but at most RESERVE_STEP at a time: a peer
            // that announces a large frame must send its bytes before we hold memory for
            // them (the buffer then grows with what actually arrives).
            src.reserve((total - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        self.check_len(item.len())?;
        dst.reserve(PREFIX_LEN + item.len());
        put_prefix(dst, item.len());
        dst.extend_from_slice(item);
        Ok(())
    }
}

impl From<FrameError> for crate::links::LinkError {
    fn from(e: FrameError) -> Self {
        use crate::links::LinkError;
        match e {
            FrameError::TooLarge { len, max } => LinkError::FrameTooLarge { len, max },
            FrameError::Truncated { buffered } => LinkError::Truncated { buffered },
            FrameError::Io(e) => LinkError::from(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_prefix_is_refused_without_reserving() {
        let mut c = FrameCodec::default();
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF][..]);
        let cap_before = buf.capacity();
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len: 0xFFFF_FFFF,
                ..
            }
        ));
        assert_eq!(
            buf.capacity(),
            cap_before,
            "no space reserved for a refused frame"
        );
    }

    #[test]
    fn a_large_announced_frame_does_not_reserve_its_size_up_front() {
        let mut c = FrameCodec::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(10u32 * 1024 * 1024).to_le_bytes());
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= 2 * RESERVE_STEP,
            "reserved {} bytes for a frame whose payload has not arrived",
            buf.capacity()
        );
    }

    #[test]
    fn partial_prefix_and_payload_need_more() {
        let mut c = FrameCodec::new(10);
        let mut buf = BytesMut::from(&[3, 0][..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[0, 0, b'a']);
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"bc");
        assert_eq!(c.decode(&mut buf).unwrap().as_deref(), Some(&b"abc"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn eof_inside_frame_is_truncated() {
        let mut c = FrameCodec::new(10);
        for partial in [&[1u8][..], &[3, 0, 0, 0, 1][..]] {
            let mut buf = BytesMut::from(partial);
            let err = c.decode_eof(&mut buf).unwrap_err();
            assert!(matches!(err, FrameError::Truncated { buffered } if buffered == partial.len()));
        }
        let mut empty = BytesMut::new();
        assert!(c.decode_eof(&mut empty).unwrap().is_none());
    }

    #[test]
    fn empty_frame_and_exact_max() {
        let mut c = FrameCodec::new(3);
        let mut buf = BytesMut::new();
        c.encode(&b""[..], &mut buf).unwrap();
        c.encode(&b"xyz"[..], &mut buf).unwrap();
        assert!(c.encode(&b"four"[..], &mut buf).is_err());
        assert_eq!(c.decode(&mut buf).unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(c.decode(&mut buf).unwrap().as_deref(), Some(&b"xyz"[..]));
    }
}
