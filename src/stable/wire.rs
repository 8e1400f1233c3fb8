//! Wire structures of the stable session: the two handshake hellos and the session frames,
//! plus wrap-aware sequence arithmetic. See the [module docs](super) for the byte diagrams.

use bytes::Bytes;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{ResumeKey, StableError};

/// Magic of a [`ClientHello`]: the bytes `"TTSC"` (tether stable, client).
pub const CLIENT_MAGIC: [u8; 4] = *b"TTSC";
/// Magic of a [`ServerHello`]: the bytes `"TTSS"` (tether stable, server).
pub const SERVER_MAGIC: [u8; 4] = *b"TTSS";
/// The only protocol version this implementation speaks. Version 2 added the batch frame
/// ([`FRAME_BATCH`]); version 1 peers are refused at the handshake with
/// [`StableError::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 2;

/// [`ClientHello`] flag: `resume_key` holds the key of the session to resume.
pub const CLIENT_HAS_RESUME_KEY: u16 = 1 << 0;
/// [`ClientHello`] flag: `last_received` is valid.
pub const CLIENT_HAS_LAST_RECEIVED: u16 = 1 << 1;
/// [`ServerHello`] flag: the resume was refused (unknown or expired key); the session is lost.
pub const SERVER_REJECTED: u16 = 1 << 0;
/// [`ServerHello`] flag: `last_received` is valid (set on every successful resume).
pub const SERVER_HAS_LAST_RECEIVED: u16 = 1 << 1;

const CLIENT_KNOWN_FLAGS: u16 = CLIENT_HAS_RESUME_KEY | CLIENT_HAS_LAST_RECEIVED;
const SERVER_KNOWN_FLAGS: u16 = SERVER_REJECTED | SERVER_HAS_LAST_RECEIVED;

/// The first message on a stable link, sent by the client. 28 bytes, little endian.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ClientHello {
    /// [`CLIENT_MAGIC`].
    pub magic: [u8; 4],
    /// [`PROTOCOL_VERSION`].
    pub version: U16,
    /// [`CLIENT_HAS_RESUME_KEY`] | [`CLIENT_HAS_LAST_RECEIVED`]; other bits must be zero.
    pub flags: U16,
    /// Key of the session to resume (zero when starting a new session).
    pub resume_key: [u8; 16],
    /// Sequence number of the last server frame the client received in order.
    pub last_received: U32,
}

/// The server's answer to a [`ClientHello`]. 28 bytes, little endian.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ServerHello {
    /// [`SERVER_MAGIC`].
    pub magic: [u8; 4],
    /// [`PROTOCOL_VERSION`].
    pub version: U16,
    /// [`SERVER_REJECTED`] | [`SERVER_HAS_LAST_RECEIVED`]; other bits must be zero.
    pub flags: U16,
    /// The key the client must present at its next resume (zero when rejected).
    pub resume_key: [u8; 16],
    /// Sequence number of the last client frame the server received in order.
    pub last_received: U32,
}

/// Size of either hello on the wire, in bytes.
pub const HELLO_LEN: usize = 28;
const _: () = assert!(std::mem::size_of::<ClientHello>() == HELLO_LEN);
const _: () = assert!(std::mem::size_of::<ServerHello>() == HELLO_LEN);

fn check_header(
    bytes: &[u8],
    expected_magic: [u8; 4],
    known_flags: u16,
) -> Result<(), StableError> {
    if bytes.len() != HELLO_LEN {
        return Err(StableError::BadHelloSize {
            len: bytes.len(),
            expected: HELLO_LEN,
        });
    }
    let magic: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != expected_magic {
        return Err(StableError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != PROTOCOL_VERSION {
        return Err(StableError::UnsupportedVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
    if flags & !known_flags != 0 {
        return Err(StableError::BadFlags { flags });
    }
    Ok(())
}

impl ClientHello {
    /// A hello for a new session.
    pub fn new_session() -> Self {
        ClientHello {
            magic: CLIENT_MAGIC,
            version: U16::new(PROTOCOL_VERSION),
            flags: U16::new(0),
            resume_key: [0; 16],
            last_received: U32::new(0),
        }
    }

    /// A hello resuming the session `key`, having received everything up to `last_received`.
    pub fn resume(key: &ResumeKey, last_received: u32) -> Self {
        ClientHello {
            magic: CLIENT_MAGIC,
            version: U16::new(PROTOCOL_VERSION),
            flags: U16::new(CLIENT_HAS_RESUME_KEY | CLIENT_HAS_LAST_RECEIVED),
            resume_key: *key.as_bytes(),
            last_received: U32::new(last_received),
        }
    }

    /// Parses and validates a hello: exact size, magic, version and flags.
    pub fn parse(bytes: &[u8]) -> Result<Self, StableError> {
        check_header(bytes, CLIENT_MAGIC, CLIENT_KNOWN_FLAGS)?;
        let hello = ClientHello::read_from_bytes(bytes).map_err(|_| StableError::BadHelloSize {
            len: bytes.len(),
            expected: HELLO_LEN,
        })?;
        if hello.has_resume_key() != hello.has_last_received() {
            return Err(StableError::BadFlags {
                flags: hello.flags.get(),
            });
        }
        Ok(hello)
    }

    /// The resume key, if the client asks to resume.
    pub fn resume_key(&self) -> Option<ResumeKey> {
        self.has_resume_key()
            .then(|| ResumeKey::from_bytes(self.resume_key))
    }

    /// Whether [`CLIENT_HAS_RESUME_KEY`] is set.
    pub fn has_resume_key(&self) -> bool {
        self.flags.get() & CLIENT_HAS_RESUME_KEY != 0
    }

    /// Whether [`CLIENT_HAS_LAST_RECEIVED`] is set.
    pub fn has_last_received(&self) -> bool {
        self.flags.get() & CLIENT_HAS_LAST_RECEIVED != 0
    }

    /// The hello as its 28 wire bytes.
    pub fn to_bytes(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out.copy_from_slice(self.as_bytes());
        out
    }
}

impl ServerHello {
    /// A hello accepting a new session under `key`.
    pub fn accept_new(key: &ResumeKey) -> Self {
        ServerHello {
            magic: SERVER_MAGIC,
            version: U16::new(PROTOCOL_VERSION),
            flags: U16::new(0),
            resume_key: *key.as_bytes(),
            last_received: U32::new(0),
        }
    }

    /// A hello accepting a resume: the next key and the server's `last_received`.
    pub fn accept_resume(key: &ResumeKey, last_received: u32) -> Self {
        ServerHello {
            magic: SERVER_MAGIC,
            version: U16::new(PROTOCOL_VERSION),
            flags: U16::new(SERVER_HAS_LAST_RECEIVED),
            resume_key: *key.as_bytes(),
            last_received: U32::new(last_received),
        }
    }

    /// A hello refusing the resume: the session is unknown or expired.
    pub fn rejected() -> Self {
        ServerHello {
            magic: SERVER_MAGIC,
            version: U16::new(PROTOCOL_VERSION),
            flags: U16::new(SERVER_REJECTED),
            resume_key: [0; 16],
            last_received: U32::new(0),
        }
    }

    /// Parses and validates a hello: exact size, magic, version and flags.
    pub fn parse(bytes: &[u8]) -> Result<Self, StableError> {
        check_header(bytes, SERVER_MAGIC, SERVER_KNOWN_FLAGS)?;
        let hello = ServerHello::read_from_bytes(bytes).map_err(|_| StableError::BadHelloSize {
            len: bytes.len(),
            expected: HELLO_LEN,
        })?;
        if hello.is_rejected() && hello.has_last_received() {
            return Err(StableError::BadFlags {
                flags: hello.flags.get(),
            });
        }
        Ok(hello)
    }

    /// Whether [`SERVER_REJECTED`] is set.
    pub fn is_rejected(&self) -> bool {
        self.flags.get() & SERVER_REJECTED != 0
    }

    /// Whether [`SERVER_HAS_LAST_RECEIVED`] is set.
    pub fn has_last_received(&self) -> bool {
        self.flags.get() & SERVER_HAS_LAST_RECEIVED != 0
    }

    /// The hello as its 28 wire bytes.
    pub fn to_bytes(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out.copy_from_slice(self.as_bytes());
        out
    }
}

/// Frame type byte of a data frame.
pub const FRAME_DATA: u8 = 0;
/// Frame type byte of a standalone ack frame.
pub const FRAME_ACK: u8 = 1;
/// Header length of a data frame: type, seq, ack.
pub const DATA_HEADER_LEN: usize = 9;
/// Length of an ack frame: type, ack.
pub const ACK_FRAME_LEN: usize = 5;
/// Frame type byte of a batch frame: several consecutive items in one link message.
pub const FRAME_BATCH: u8 = 2;
/// Header length of a batch frame: type, first seq, ack, item count.
pub const BATCH_HEADER_LEN: usize = 13;
/// Bytes in front of each item of a batch frame: its length, `u32` LE.
pub const BATCH_ITEM_PREFIX: usize = 4;
/// Most items one batch frame may carry (a larger count is a protocol error).
pub const MAX_BATCH_ITEMS: u32 = 1 << 20;

/// The items of a decoded batch frame, in sequence order: zero-copy slices of the received
/// message. Validated when the frame was decoded, so iterating cannot fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItems {
    /// `[len][item]` entries not yet handed out.
    rest: Bytes,
    /// Entries left in `rest`.
    count: u32,
}

impl BatchItems {
    /// Items not yet handed out.
    pub fn remaining(&self) -> u32 {
        self.count
    }

    /// Bytes of the items not yet handed out (without their length prefixes).
    pub fn remaining_bytes(&self) -> usize {
        self.rest.len() - self.count as usize * BATCH_ITEM_PREFIX
    }

    /// Drops the next `n` items (or all that are left) without handing them out.
    pub fn skip_items(&mut self, n: u32) {
        for _ in 0..n.min(self.count) {
            let len = self.next_len();
            bytes::Buf::advance(&mut self.rest, BATCH_ITEM_PREFIX + len);
            self.count -= 1;
        }
    }

    /// Length of the next item (validated at decode: the prefix and the item are there).
    fn next_len(&self) -> usize {
        let b = &self.rest;
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    }
}

impl Iterator for BatchItems {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.count == 0 {
            return None;
        }
        let len = self.next_len();
        bytes::Buf::advance(&mut self.rest, BATCH_ITEM_PREFIX);
        self.count -= 1;
        Some(self.rest.split_to(len))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.count as usize, Some(self.count as usize))
    }
}

impl ExactSizeIterator for BatchItems {}

/// A decoded session frame (after the handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An application item with its sequence number and the sender's cumulative ack.
    Data {
        /// Sequence number of this item.
        seq: u32,
        /// Last sequence number the sender received in order from us.
        ack: u32,
        /// The item (zero-copy slice of the received message).
        item: Bytes,
    },
    /// A standalone cumulative ack.
    Ack {
        /// Last sequence number the sender received in order from us.
        ack: u32,
    },
    /// Consecutive items: the first has sequence number `first_seq`, the next ones count up
    /// from it (wrapping).
    Batch {
        /// Sequence number of the first item.
        first_seq: u32,
        /// Last sequence number the sender received in order from us.
        ack: u32,
        /// The items, at least one.
        items: BatchItems,
    },
}

impl Frame {
    /// Decodes one link message. Malformed input is a [`StableError::Protocol`].
    pub fn decode(mut msg: Bytes) -> Result<Frame, StableError> {
        let Some(&kind) = msg.first() else {
            return Err(StableError::Protocol("empty session frame".into()));
        };
        let u32_at = |i: usize| u32::from_le_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
        match kind {
            FRAME_DATA => {
                if msg.len() < DATA_HEADER_LEN {
                    return Err(StableError::Protocol(format!(
                        "data frame of {} bytes is shorter than its {DATA_HEADER_LEN}-byte header",
                        msg.len()
                    )));
                }
                let seq = u32_at(1);
                let ack = u32_at(5);
                // Advance in place: no reference-count traffic for a slice.
                bytes::Buf::advance(&mut msg, DATA_HEADER_LEN);
                Ok(Frame::Data {
                    seq,
                    ack,
                    item: msg,
                })
            }
            FRAME_ACK => {
                if msg.len() != ACK_FRAME_LEN {
                    return Err(StableError::Protocol(format!(
                        "ack frame of {} bytes (expected {ACK_FRAME_LEN})",
                        msg.len()
                    )));
                }
                Ok(Frame::Ack { ack: u32_at(1) })
            }
            FRAME_BATCH => {
                if msg.len() < BATCH_HEADER_LEN {
                    return Err(StableError::Protocol(format!(
                        "batch frame of {} bytes is shorter than its {BATCH_HEADER_LEN}-byte \
                         header",
                        msg.len()
                    )));
                }
                let (first_seq, ack, count) = (u32_at(1), u32_at(5), u32_at(9));
                if count == 0 || count > MAX_BATCH_ITEMS {
                    return Err(StableError::Protocol(format!(
                        "batch frame claims {count} items (1 to {MAX_BATCH_ITEMS} allowed)"
                    )));
                }
                // Walk the entries once: every prefix and item must be inside the message,
                // and the last one must end exactly at its end.
                let mut pos = BATCH_HEADER_LEN;
                for i in 0..count {
                    if msg.len() - pos < BATCH_ITEM_PREFIX {
                        return Err(StableError::Protocol(format!(
                            "batch frame of {} bytes ends before the length of item {i} of \
                             {count}",
                            msg.len()
                        )));
                    }
                    let len = u32_at(pos) as usize;
                    pos += BATCH_ITEM_PREFIX;
                    if msg.len() - pos < len {
                        return Err(StableError::Protocol(format!(
                            "batch frame item {i} of {count} claims {len} bytes, {} are left",
                            msg.len() - pos
                        )));
                    }
                    pos += len;
                }
                if pos != msg.len() {
                    return Err(StableError::Protocol(format!(
                        "batch frame has {} bytes after its {count} items",
                        msg.len() - pos
                    )));
                }
                bytes::Buf::advance(&mut msg, BATCH_HEADER_LEN);
                Ok(Frame::Batch {
                    first_seq,
                    ack,
                    items: BatchItems { rest: msg, count },
                })
            }
            other => Err(StableError::Protocol(format!(
                "unknown session frame type {other}"
            ))),
        }
    }
}

/// Writes a data frame header into `out[..9]`.
pub fn put_data_header(out: &mut [u8], seq: u32, ack: u32) {
    out[0] = FRAME_DATA;
    out[1..5].copy_from_slice(&seq.to_le_bytes());
    out[5..9].copy_from_slice(&ack.to_le_bytes());
}

/// Writes a batch frame header into `out[..13]`.
pub fn put_batch_header(out: &mut [u8], first_seq: u32, ack: u32, count: u32) {
    out[0] = FRAME_BATCH;
    out[1..5].copy_from_slice(&first_seq.to_le_bytes());
    out[5..9].copy_from_slice(&ack.to_le_bytes());
    out[9..13].copy_from_slice(&count.to_le_bytes());
}

/// Writes an ack frame into `out[..5]`.
pub fn put_ack_frame(out: &mut [u8], ack: u32) {
    out[0] = FRAME_ACK;
    out[1..5].copy_from_slice(&ack.to_le_bytes());
}

/// Serial-number arithmetic (RFC 1982 style) on `u32` sequence numbers.
///
/// `a` precedes `b` when `b - a` (wrapping) is in `1..2^31`. Two numbers exactly `2^31`
/// apart are unordered; the replay bound (below `2^30` frames) keeps live numbers far closer.
pub mod seq {
    /// `b - a`, wrapping: how many steps forward from `a` to `b`.
    pub fn distance(a: u32, b: u32) -> u32 {
        b.wrapping_sub(a)
    }

    /// Whether `a` comes strictly before `b`.
    pub fn lt(a: u32, b: u32) -> bool {
        let d = b.wrapping_sub(a);
        d != 0 && d < (1 << 31)
    }

    /// Whether `a` comes before or is `b`.
    pub fn le(a: u32, b: u32) -> bool {
        a == b || lt(a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_layout() {
        let key = ResumeKey::from_bytes([7; 16]);
        let h = ClientHello::resume(&key, 0xAABB_CCDD);
        let b = h.to_bytes();
        assert_eq!(&b[0..4], b"TTSC");
        assert_eq!(&b[4..6], &[2, 0]);
        assert_eq!(&b[6..8], &[3, 0]);
        assert_eq!(&b[8..24], &[7; 16]);
        assert_eq!(&b[24..28], &[0xDD, 0xCC, 0xBB, 0xAA]);
        assert_eq!(ClientHello::parse(&b).unwrap(), h);
        let s = ServerHello::accept_resume(&key, 5);
        assert_eq!(ServerHello::parse(&s.to_bytes()).unwrap(), s);
        assert!(ServerHello::parse(&ServerHello::rejected().to_bytes())
            .unwrap()
            .is_rejected());
    }

    #[test]
    fn hello_rejects_bad_input() {
        let good = ClientHello::new_session().to_bytes();
        assert!(matches!(
            ClientHello::parse(&good[..27]),
            Err(StableError::BadHelloSize { len: 27, .. })
        ));
        assert!(matches!(
            ClientHello::parse(&[]),
            Err(StableError::BadHelloSize { len: 0, .. })
        ));
        let mut long = good.to_vec();
        long.push(0);
        assert!(matches!(
            ClientHello::parse(&long),
            Err(StableError::BadHelloSize { len: 29, .. })
        ));
        let mut bad = good;
        bad[0] = b'X';
        assert!(matches!(
            ClientHello::parse(&bad),
            Err(StableError::BadMagic { .. })
        ));
        // A server hello where a client hello is expected is a magic error.
        assert!(matches!(
            ClientHello::parse(&ServerHello::rejected().to_bytes()),
            Err(StableError::BadMagic { .. })
        ));
        for old_or_new in [1u8, 3] {
            let mut v = good;
            v[4] = old_or_new;
            assert!(matches!(
                ClientHello::parse(&v),
                Err(StableError::UnsupportedVersion { found, supported: 2 }) if found == u16::from(old_or_new)
            ));
        }
        let mut flags = good;
        flags[6] = 0x80;
        assert!(matches!(
            ClientHello::parse(&flags),
            Err(StableError::BadFlags { .. })
        ));
        let mut half = good;
        half[6] = CLIENT_HAS_RESUME_KEY as u8;
        assert!(matches!(
            ClientHello::parse(&half),
            Err(StableError::BadFlags { .. })
        ));
    }

    #[test]
    fn frames_decode() {
        let mut buf = vec![0u8; DATA_HEADER_LEN + 3];
        put_data_header(&mut buf, u32::MAX, 9);
        buf[9..].copy_from_slice(b"abc");
        assert_eq!(
            Frame::decode(Bytes::from(buf)).unwrap(),
            Frame::Data {
                seq: u32::MAX,
                ack: 9,
                item: Bytes::from_static(b"abc")
            }
        );
        let mut ack = [0u8; ACK_FRAME_LEN];
        put_ack_frame(&mut ack, 3);
        assert_eq!(
            Frame::decode(Bytes::copy_from_slice(&ack)).unwrap(),
            Frame::Ack { ack: 3 }
        );
        for bad in [
            &b""[..],
            &[0, 1, 2][..],
            &[1, 0, 0, 0][..],
            &[1, 0, 0, 0, 0, 0][..],
            &[9][..],
        ] {
            assert!(matches!(
                Frame::decode(Bytes::copy_from_slice(bad)),
                Err(StableError::Protocol(_))
            ));
        }
    }

    fn batch(first_seq: u32, ack: u32, items: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![0u8; BATCH_HEADER_LEN];
        put_batch_header(&mut v, first_seq, ack, items.len() as u32);
        for i in items {
            v.extend_from_slice(&(i.len() as u32).to_le_bytes());
            v.extend_from_slice(i);
        }
        v
    }

    #[test]
    fn batch_frames_decode_and_iterate() {
        let msg = batch(u32::MAX, 4, &[b"ab", b"", b"cde"]);
        let Frame::Batch {
            first_seq,
            ack,
            mut items,
        } = Frame::decode(Bytes::from(msg)).unwrap()
        else {
            panic!("not a batch")
        };
        assert_eq!((first_seq, ack, items.remaining()), (u32::MAX, 4, 3));
        assert_eq!(items.remaining_bytes(), 5);
        assert_eq!(items.len(), 3);
        items.skip_items(1);
        assert_eq!(items.remaining_bytes(), 3);
        let rest: Vec<Bytes> = items.collect();
        assert_eq!(rest, vec![Bytes::new(), Bytes::from_static(b"cde")]);

        let good = batch(1, 0, &[b"xy", b"z"]);
        let mut bad: Vec<Vec<u8>> = vec![
            good[..BATCH_HEADER_LEN - 1].to_vec(), // short header
            good[..good.len() - 1].to_vec(),       // last item cut
            good[..BATCH_HEADER_LEN + 2].to_vec(), // cut inside a length prefix
            [&good[..], &[0][..]].concat(),        // trailing byte
            batch(1, 0, &[]),                      // zero items
        ];
        let mut huge_len = good.clone();
        huge_len[BATCH_HEADER_LEN..BATCH_HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        bad.push(huge_len);
        let mut huge_count = good.clone();
        huge_count[9..13].copy_from_slice(&(MAX_BATCH_ITEMS + 1).to_le_bytes());
        bad.push(huge_count);
        let mut more_claimed = good;
        more_claimed[9] = 3;
        bad.push(more_claimed);
        for b in bad {
            assert!(
                matches!(
                    Frame::decode(Bytes::from(b.clone())),
                    Err(StableError::Protocol(_))
                ),
                "{b:?}"
            );
        }
    }

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(seq::lt(u32::MAX, 0));
        assert!(seq::lt(u32::MAX - 5, 3));
        assert!(!seq::lt(3, u32::MAX - 5));
        assert!(seq::le(7, 7));
        assert!(!seq::lt(7, 7));
        assert_eq!(seq::distance(u32::MAX, 1), 2);
        assert!(!seq::lt(0, 1 << 31));
        assert!(!seq::lt(1 << 31, 0));
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the parsers; anything accepted re-encodes to itself.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(h) = ClientHello::parse(&bytes) {
                proptest::prop_assert_eq!(&h.to_bytes()[..], &bytes[..]);
            }
            if let Ok(h) = ServerHello::parse(&bytes) {
                proptest::prop_assert_eq!(&h.to_bytes()[..], &bytes[..]);
            }
            let _ = Frame::decode(Bytes::from(bytes));
        }
    }
}
