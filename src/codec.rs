//! Message codecs, as a plain library: serde values to link messages and back.
//!
//! A [`Codec`] first computes the encoded size of a value, then serializes it straight into a
//! [`WriteSlot`] of exactly that size — no intermediate buffer. On shared-memory links the
//! slot *is* shared memory, so the send is zero-copy. Decoding reads from the received
//! [`Bytes`](bytes::Bytes) and refuses trailing bytes.
//!
//! * [`Postcard`] (default): compact varint format of the `postcard` crate (stable wire
//!   format, version 1).
//! * [`Bincode`] (feature `bincode`): the bincode 2 "standard" configuration (varint
//!   integers, little endian), for wire compatibility with bincode peers.
//!
//! ```
//! use actix_tether::codec::{Codec, Postcard};
//!
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct Hello { name: String, n: u32 }
//!
//! let codec = Postcard;
//! let v = Hello { name: "tether".into(), n: 7 };
//! let mut buf = vec![0; codec.encoded_len(&v).unwrap()];
//! codec.encode_into(&v, &mut buf).unwrap();
//! let back: Hello = codec.decode(&buf).unwrap();
//! assert_eq!(back, v);
//! ```
//!
//! Decode errors are [`CodecError`] values; malformed input never panics, and a hostile
//! length inside a message cannot make the decoder allocate more than the message's size
//! allows (serde preallocates cautiously; the bincode codec also sets a byte limit).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::links::{LinkError, LinkTx, Permit, WriteSlot};

/// Errors of the codec layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be serialized (for instance a map with non-string keys in a
    /// format that needs them, or a serializer-specific limit).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The bytes are not a valid encoding of the expected type.
    #[error("cannot decode message: {0}")]
    Decode(String),
    /// A valid value was decoded but `extra` bytes followed it.
    #[error("message has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Number of bytes left over after the value.
        extra: usize,
    },
    /// The link refused or failed the send.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// A serde wire format usable on links. See the [module docs](self).
pub trait Codec: Clone + Default + Send + Sync + Unpin + 'static {
    /// Exact number of bytes [`encode_into`](Codec::encode_into) will write for `value`.
    fn encoded_len<T: Serialize + ?Sized>(&self, value: &T) -> Result<usize, CodecError>;

    /// Serializes `value` into `out`, which is exactly `encoded_len(value)` bytes long.
    fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut [u8],
    ) -> Result<(), CodecError>;

    /// Deserializes one value that must occupy all of `bytes`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;

    /// Serializes `value` into a freshly allocated `Vec` (for tests and tools; links use
    /// [`write_permit`]).
    fn encode_to_vec<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut buf = vec![0; self.encoded_len(value)?];
        self.encode_into(value, &mut buf)?;
        Ok(buf)
    }
}

/// Encodes `value` straight into the slot of `permit` and commits it as one message.
///
/// If encoding fails, the slot is dropped and nothing is sent.
pub fn write_permit<P, C, T>(permit: P, codec: &C, value: &T) -> Result<(), CodecError>
where
    P: Permit,
    C: Codec,
    T: Serialize + ?Sized,
{
    let len = codec.encoded_len(value)?;
    let mut slot = permit.alloc(len)?;
    codec.encode_into(value, slot.as_mut_slice())?;
    slot.commit();
    Ok(())
}

/// Reserves room on `tx`, then encodes and commits `value` as one message.
///
/// ```
/// # use actix_tether::{codec::{self, Postcard, Codec}, links::{stream::StreamLink, Link, LinkRx}};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (a, b) = StreamLink::duplex_pair(4096);
/// let (mut tx, _) = a.split();
/// let (_, mut rx) = b.split();
/// codec::send(&mut tx, &Postcard, &(1u8, "two")).await?;
/// let msg = rx.recv().await?.unwrap();
/// let v: (u8, String) = Postcard.decode(&msg)?;
/// assert_eq!(v, (1, "two".to_string()));
/// # Ok(()) }
/// ```
pub async fn send<Tx, C, T>(tx: &mut Tx, codec: &C, value: &T) -> Result<(), CodecError>
where
    Tx: LinkTx,
    C: Codec,
    T: Serialize + ?Sized,
{
    let permit = tx.reserve().await?;
    write_permit(permit, codec, value)
}

/// The postcard wire format (default codec).
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Codec for Postcard {
    fn encoded_len<T: Serialize + ?Sized>(&self, value: &T) -> Result<usize, CodecError> {
        postcard::experimental::serialized_size(value)
            .map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        let expected = out.len();
        let written = postcard::to_slice(value, out)
            .map_err(|e| CodecError::Encode(e.to_string()))?
            .len();
        if written != expected {
            return Err(CodecError::Encode(format!(
                "value encoded to {written} bytes, {expected} were computed (non-deterministic Serialize impl)"
            )));
        }
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (value, rest) =
            postcard::take_from_bytes(bytes).map_err(|e| CodecError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CodecError::TrailingBytes { extra: rest.len() });
        }
        Ok(value)
    }
}

/// The bincode 2 wire format (`bincode::config::standard()`, with a decode limit of
/// [`Bincode::DECODE_LIMIT`] bytes of claimed container content).
#[cfg(feature = "bincode")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

#[cfg(feature = "bincode")]
impl Bincode {
    /// Upper bound on what one decoded message may claim to contain, in bytes (16 MiB, the
    /// default maximum frame length).
    pub const DECODE_LIMIT: usize = 16 * 1024 * 1024;

    fn config() -> impl bincode::config::Config {
        bincode::config::standard().with_limit::<{ Bincode::DECODE_LIMIT }>()
    }
}

#[cfg(feature = "bincode")]
impl Codec for Bincode {
    fn encoded_len<T: Serialize + ?Sized>(&self, value: &T) -> Result<usize, CodecError> {
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::serde::encode_into_writer(value, &mut size, bincode::config::standard())
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        Ok(size.bytes_written)
    }

    fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        let expected = out.len();
        let written = bincode::serde::encode_into_slice(value, out, bincode::config::standard())
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        if written != expected {
            return Err(CodecError::Encode(format!(
                "value encoded to {written} bytes, {expected} were computed (non-deterministic Serialize impl)"
            )));
        }
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (value, read) = bincode::serde::decode_from_slice(bytes, Self::config())
            .map_err(|e| CodecError::Decode(e.to_string()))?;
        if read != bytes.len() {
            return Err(CodecError::TrailingBytes {
                extra: bytes.len() - read,
            });
        }
        Ok(value)
    }
}
