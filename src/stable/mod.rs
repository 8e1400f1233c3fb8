//! Stable sessions: a session layered on any [`Link`](crate::links::Link) that survives
//! link failure. Every item is delivered exactly once and in order across reconnects, or the
//! application is told, explicitly, that the session is lost.
//!
//! This module is a **sans-IO** state machine in the quinn style: it never touches a socket,
//! a timer or the clock. Inputs are `handle_*` calls, outputs are `poll_*` calls, and time is
//! passed in as [`Instant`]s. [`driver`] runs it over real links with tokio; the
//! `StableSession` actor (feature `actors`) runs it under an actix `Supervisor`.
//!
//! * [`Session`] — one side's state: sequence numbers, cumulative acks, the bounded replay
//!   buffer, the handshake of each new link.
//! * [`Registry`] — the server's table of sessions by [`ResumeKey`], re-keyed at every
//!   resume, expired after a grace period without a link.
//! * [`ReconnectPolicy`] — exponential backoff with jitter, a cap and a limit.
//! * [`Accepting`] — the server's handshake deadline for a fresh link.
//!
//! # Protocol
//!
//! Every link of a session starts with a handshake: the client sends one [`ClientHello`]
//! message, the server answers with one [`ServerHello`] message. Both are 28 bytes, little
//! endian, fixed layout:
//!
//! ```text
//!  ClientHello / ServerHello (one link message each, 28 bytes)
//!  0        4        6        8                                24       28
//!  +--------+--------+--------+--------------------------------+--------+
//!  | magic  |version | flags  |          resume_key            | last_  |
//!  | 4 B    | u16 LE | u16 LE |            16 B                | recvd  |
//!  +--------+--------+--------+--------------------------------+ u32 LE +
//!  magic: "TTSC" (client) / "TTSS" (server); version: 2 (1 had no batch frame)
//!  client flags: bit 0 has_resume_key, bit 1 has_last_received (both or neither)
//!  server flags: bit 0 rejected,       bit 1 has_last_received (never both)
//!  other flag bits must be zero
//! ```
//!
//! * **New session**: the client sends no key. The server creates a session, draws a fresh
//!   16-byte key from the OS CSPRNG and returns it.
//! * **Resume**: the client sends the key it was last given and the sequence number of the
//!   last server frame it received in order. The server looks the key up (constant-time
//!   comparison). Unknown or expired → `rejected`, and the client reports
//!   [`StableError::SessionLost`] with the number of its items never acknowledged — it never
//!   silently starts a fresh session. Known → the server **re-keys** the session, answers
//!   with the new key and its own `last_received`, and both sides drop what the other has
//!   acknowledged and replay the rest, in order, before any new item. Older keys are dead,
//!   except the one the client just presented: it stays valid until the client presents the
//!   new one, so a server hello lost with its link does not lose the session (the client
//!   resumes again with the key it has).
//! * **Refusal**: a server holding [`StableConfig::max_sessions`] sessions answers a new
//!   session's hello with `rejected`; the client reports [`StableError::Refused`]. (A
//!   `rejected` answer to a hello without a key can only mean that.)
//!
//! Anything else — wrong size, wrong magic, an unknown version, unknown flag bits — is a
//! typed error and the link is closed. Each side gives up on a handshake after
//! [`StableConfig::handshake_timeout`].
//!
//! After the handshake, every link message is one frame:
//!
//! ```text
//!  data frame                                  ack frame
//!  +------+----------+----------+---------+    +------+----------+
//!  | 0x00 | seq      | ack      | item... |    | 0x01 | ack      |
//!  | 1 B  | u32 LE   | u32 LE   |         |    | 1 B  | u32 LE   |
//!  +------+----------+----------+---------+    +------+----------+
//!
//!  batch frame: `count` consecutive items, sequence numbers first_seq, first_seq + 1, ...
//!  +------+-----------+----------+----------+---------+--------+-----+---------+--------+
//!  | 0x02 | first_seq | ack      | count    | len_1   | item_1 | ... | len_n   | item_n |
//!  | 1 B  | u32 LE    | u32 LE   | u32 LE   | u32 LE  |        |     | u32 LE  |        |
//!  +------+-----------+----------+----------+---------+--------+-----+---------+--------+
//!  count: 1 to 2^20; the last item ends exactly at the end of the message
//! ```
//!
//! * **Batching**: when several items wait to be sent (the application sent a burst, the
//!   link was full, or a resume replays), consecutive ones travel in one batch frame of at
//!   most [`StableConfig::max_batch_bytes`]; one item alone goes in a data frame. Per item
//!   the receiver then pays a slice of the message instead of a whole link message. A
//!   receiver drops the prefix of a batch it already has (a replay overlapping what it
//!   received) and refuses a batch that starts after the next expected number (a gap).
//! * `seq` numbers each item; the first item of a session has sequence number 1 and they
//!   count up, wrapping after `u32::MAX` to 0. Comparisons use serial-number arithmetic
//!   ([`wire::seq`]).
//! * `ack` is cumulative: the sequence number of the last item received in order (0 before
//!   any, i.e. "the number before the first").
//! * A receiver accepts exactly the next sequence number; an older one is a duplicate and is
//!   dropped; a newer one (a gap) is [`StableError::Protocol`]. An ack of an item never
//!   sent is a protocol error too.
//! * Acks ride on data frames. A receiver with unacknowledged items and nothing to send
//!   emits a standalone ack frame after [`StableConfig::ack_every`] items, once they fill a
//!   quarter of the replay bounds ([`StableConfig::replay_max_frames`],
//!   [`StableConfig::replay_max_bytes`]; both sides are assumed to use the same), or after
//!   [`StableConfig::ack_delay`], whichever comes first, so one-way traffic drains the
//!   sender's replay buffer without stalling it.
//!
//! # Replay buffer and backpressure
//!
//! Every item sent stays in the sender's replay buffer until the peer acknowledges it. The
//! buffer is bounded by [`StableConfig::replay_max_frames`] and
//! [`StableConfig::replay_max_bytes`]. When it is full, [`Session::can_accept`] is false and
//! drivers make the application's send wait: nothing is ever dropped silently, and memory
//! never grows without bound — in particular while the link is down.
#![allow(clippy::module_name_repetitions)]

use std::fmt;
use std::time::Duration;

pub mod backoff;
pub mod driver;
pub mod registry;
pub mod session;
pub mod wire;

pub use backoff::{RandomSource, ReconnectPolicy, SplitMix64};
pub use registry::{Registry, SessionId};
pub use session::{Accepting, HandshakeOutcome, Received, Session, SessionStats, Transmit};
pub use wire::{ClientHello, ServerHello};

#[doc(no_inline)]
pub use std::time::Instant;

use crate::codec::CodecError;
use crate::links::LinkError;

/// Errors of the stable session layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StableError {
    /// A hello had the wrong length for its fixed layout.
    #[error("handshake message of {len} bytes (expected {expected})")]
    BadHelloSize {
        /// Length received.
        len: usize,
        /// The fixed hello length.
        expected: usize,
    },
    /// A hello did not start with the expected magic bytes (not a stable-session peer, or
    /// a hello of the wrong role).
    #[error("handshake has unknown magic {found:02x?}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The peer speaks a protocol version this implementation does not.
    #[error("peer speaks stable protocol version {found}, this side only {supported}")]
    UnsupportedVersion {
        /// The peer's version.
        found: u16,
        /// The version this side speaks.
        supported: u16,
    },
    /// A hello had unknown or contradictory flag bits.
    #[error("handshake has invalid flags {flags:#06x}")]
    BadFlags {
        /// The flags field.
        flags: u16,
    },
    /// The handshake did not complete within [`StableConfig::handshake_timeout`].
    #[error("handshake did not complete in time")]
    HandshakeTimeout,
    /// The peer broke the session protocol (malformed frame, gap in sequence numbers, ack
    /// of an item never sent, inconsistent resume). The link is closed.
    #[error("stable session protocol violation: {0}")]
    Protocol(String),
    /// The session cannot continue: the server did not know it (restarted, or the grace
    /// period expired), or reconnecting gave up. `unacked` items sent by this side were
    /// never acknowledged by the peer and may not have been delivered.
    #[error("stable session lost ({unacked} items never acknowledged)")]
    SessionLost {
        /// Items this side sent that the peer never acknowledged.
        unacked: usize,
    },
    /// Server: a new session was refused because [`StableConfig::max_sessions`] sessions
    /// are registered already (the client is answered `rejected`).
    #[error("too many stable sessions (the maximum is {max})")]
    TooManySessions {
        /// The configured maximum.
        max: usize,
    },
    /// Client: the server refused to start a new session (it holds
    /// [`StableConfig::max_sessions`] sessions already). Terminal, like
    /// [`SessionLost`](StableError::SessionLost): the client does not retry on its own
    /// (start a new client later). `unacked` items sent before the refusal were never
    /// delivered.
    #[error("the server refused a new stable session ({unacked} items never delivered)")]
    Refused {
        /// Items sent before the refusal, none of them delivered.
        unacked: usize,
    },
    /// An item is larger than the session can ever accept (see
    /// [`StableConfig::max_item_len`] and [`StableConfig::replay_max_bytes`]).
    #[error("item of {len} bytes is larger than the maximum of {max} bytes")]
    ItemTooLarge {
        /// Item length in bytes.
        len: usize,
        /// The largest acceptable item in bytes.
        max: usize,
    },
    /// [`Session::push`] was called while [`Session::can_accept`] was false.
    #[error("replay buffer is full")]
    ReplayFull,
    /// An operation needs a phase the session is not in (for instance a hello while no
    /// handshake is in progress).
    #[error("session is in the wrong state: {0}")]
    State(&'static str),
    /// The configuration is out of bounds; the text names the field.
    #[error("invalid stable session configuration: {0}")]
    InvalidConfig(&'static str),
    /// The underlying link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// An item could not be encoded or decoded.
    #[error(transparent)]
    Codec(CodecError),
    /// The OS random source could not be read to draw a resume key.
    #[error("cannot read the OS random source: {0}")]
    Random(String),
    /// The session was closed locally, or its driver stopped.
    #[error("stable session is closed")]
    Closed,
}

impl From<CodecError> for StableError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Link(l) => StableError::Link(l),
            other => StableError::Codec(other),
        }
    }
}

/// Configuration of a stable session (both sides).
#[derive(Debug, Clone)]
pub struct StableConfig {
    /// How long either side waits for the other's hello on a fresh link. Default 10 s;
    /// must be above zero.
    pub handshake_timeout: Duration,
    /// Most items the replay buffer holds (sent, not yet acknowledged). Default 16384; from 1
    /// to 2^30. This is the sender's window for small items: it must cover everything in
    /// flight between the two sides (link buffers, socket buffers, items the peer holds
    /// before its next ack) or the sender waits for acks it would otherwise not need. With
    /// 64-byte items over a Unix socket, each side on a thread of its own, 4096 kept the
    /// session at about 0.6x the bare link and 16384 at about 0.9x (BENCHMARKS.md); raise it
    /// for links with a large bandwidth-delay product. The memory it allows is bounded by
    /// `replay_max_bytes` plus about 32 bytes per item.
    pub replay_max_frames: usize,
    /// Most item bytes the replay buffer holds. Default 8 MiB; at least 1. An item larger
    /// than this can never be sent.
    pub replay_max_bytes: usize,
    /// Largest item, in bytes. Default 16 MiB − 64 (fits the default link frame limit with
    /// the 9-byte frame header). The effective limit is the smaller of this and
    /// `replay_max_bytes`.
    pub max_item_len: usize,
    /// A standalone ack is sent once this many items arrived unacknowledged and there is no
    /// outgoing data to carry the ack. Default 32; at least 1. (One is also sent, whatever
    /// this says, once the unacknowledged items reach a quarter of `replay_max_frames` or of
    /// `replay_max_bytes`: with large items the sender's replay buffer would otherwise fill
    /// up and wait for `ack_delay`.)
    pub ack_every: u32,
    /// A standalone ack is sent this long after the oldest unacknowledged arrival if none
    /// was sent otherwise. Default 5 ms.
    pub ack_delay: Duration,
    /// Largest batch frame, in bytes: when several items wait to be sent, consecutive ones
    /// travel in one link message ([`wire::FRAME_BATCH`]) as long as the frame stays within
    /// this size (an item that would not fit goes in the next frame; an item larger than it
    /// alone goes in a data frame of its own). Default 16 KiB; 0, or anything below 21
    /// bytes (a batch header and two empty items), disables batching. Clamped to
    /// `max_item_len` + 9 (and to 4 GiB): like `max_item_len`, it must fit the frame limit of
    /// the links and of the peer's receiver. A link that refuses a batch at `alloc` (its
    /// maximum payload is smaller) is handled: batches shrink to that link's maximum
    /// ([`Session::limit_batch`]). A receiver keeps a batch's link message alive while the
    /// application holds any item of it, and refuses a batch of more items than
    /// `replay_max_frames`.
    pub max_batch_bytes: usize,
    /// Server side: how long a session without a link stays resumable. Default 30 s.
    pub resume_grace: Duration,
    /// Server side: most sessions registered at once, with a link or within their grace
    /// period. A new session beyond it is answered `rejected` (the client reports
    /// [`StableError::Refused`]) and counted as refused in the server's stats. Default 4096;
    /// at least 1.
    pub max_sessions: usize,
    /// Client side: how reconnects are paced and when they give up.
    pub reconnect: ReconnectPolicy,
    /// Sequence number of this side's first item (and, on the peer, what it expects).
    /// **Test hook**: both sides must use the same value; it exists so tests can start the
    /// counters near `u32::MAX` and exercise the wrap. Default 1.
    #[doc(hidden)]
    pub initial_seq: u32,
}

impl Default for StableConfig {
    fn default() -> Self {
        StableConfig {
            handshake_timeout: Duration::from_secs(10),
            replay_max_frames: 16384,
            replay_max_bytes: 8 * 1024 * 1024,
            max_item_len: 16 * 1024 * 1024 - 64,
            ack_every: 32,
            ack_delay: Duration::from_millis(5),
            max_batch_bytes: 16 * 1024,
            resume_grace: Duration::from_secs(30),
            max_sessions: 4096,
            reconnect: ReconnectPolicy::default(),
            initial_seq: 1,
        }
    }
}

impl StableConfig {
    /// Checks every bound documented on the fields.
    pub fn validate(&self) -> Result<(), StableError> {
        if self.handshake_timeout.is_zero() {
            return Err(StableError::InvalidConfig(
                "handshake_timeout must be above zero",
            ));
        }
        if self.replay_max_frames == 0 || self.replay_max_frames > 1 << 30 {
            return Err(StableError::InvalidConfig(
                "replay_max_frames must be from 1 to 2^30",
            ));
        }
        if self.replay_max_bytes == 0 {
            return Err(StableError::InvalidConfig(
                "replay_max_bytes must be at least 1",
            ));
        }
        if self.ack_every == 0 {
            return Err(StableError::InvalidConfig("ack_every must be at least 1"));
        }
        if self.max_sessions == 0 {
            return Err(StableError::InvalidConfig(
                "max_sessions must be at least 1",
            ));
        }
        self.reconnect.validate()
    }

    /// The largest item this configuration can send, in bytes.
    pub fn effective_max_item(&self) -> usize {
        self.max_item_len.min(self.replay_max_bytes)
    }

    /// The largest batch frame this configuration sends, in bytes (see
    /// [`max_batch_bytes`](StableConfig::max_batch_bytes)).
    pub fn effective_max_batch(&self) -> usize {
        self.max_batch_bytes
            .min(self.max_item_len.saturating_add(wire::DATA_HEADER_LEN))
            .min(u32::MAX as usize)
    }
}

/// A 16-byte resume key drawn from the OS CSPRNG. Compared in constant time only (no
/// `PartialEq`: a derived `==` would short-circuit); its `Debug` output does not reveal it.
#[derive(Clone)]
pub struct ResumeKey([u8; 16]);

impl ResumeKey {
    /// Draws a fresh key from the operating system's CSPRNG: the `getrandom(2)` system call
    /// on Linux (retried on `EINTR`, continued after a short read; `/dev/urandom` only when
    /// the kernel lacks the call), `/dev/urandom` elsewhere.
    ///
    /// A system call: callers draw keys *before* taking any lock other tasks contend for
    /// (the [`Registry`] takes keys as arguments for that reason).
    pub fn generate() -> Result<ResumeKey, StableError> {
        let mut key = [0u8; 16];
        crate::sync::os_random(&mut key).map_err(|e| StableError::Random(e.to_string()))?;
        Ok(ResumeKey(key))
    }

    /// A key from raw bytes (as received on the wire).
    pub fn from_bytes(bytes: [u8; 16]) -> ResumeKey {
        ResumeKey(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Constant-time equality: the time taken does not depend on where the keys differ.
    pub fn ct_eq(&self, other: &ResumeKey) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff |= a ^ b;
        }
        // Keep the optimiser from turning the fold into an early-exit comparison.
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_compare() {
        let a = ResumeKey::generate().unwrap();
        let b = ResumeKey::generate().unwrap();
        assert!(!a.ct_eq(&b));
        assert!(a.ct_eq(&a.clone()));
        assert_eq!(format!("{a:?}"), "ResumeKey(..)");
    }

    #[test]
    fn config_bounds() {
        StableConfig::default().validate().unwrap();
        let bad = [
            StableConfig {
                replay_max_frames: 0,
                ..Default::default()
            },
            StableConfig {
                replay_max_frames: (1 << 30) + 1,
                ..Default::default()
            },
            StableConfig {
                replay_max_bytes: 0,
                ..Default::default()
            },
            StableConfig {
                ack_every: 0,
                ..Default::default()
            },
            StableConfig {
                handshake_timeout: Duration::ZERO,
                ..Default::default()
            },
            StableConfig {
                max_sessions: 0,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(StableError::InvalidConfig(_))));
        }
    }
}
