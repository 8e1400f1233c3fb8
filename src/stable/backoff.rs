//! Reconnect pacing: exponential backoff with jitter, a cap, and a limit.
//!
//! [`ReconnectPolicy::delay`] is a pure function of the attempt number, the time spent
//! reconnecting so far, and a [`RandomSource`]; the driver sleeps for what it returns, or
//! reports the session lost when it returns `None`.

use std::time::Duration;

use super::StableError;

/// A source of random 64-bit numbers (for jitter and fault injection).
pub trait RandomSource {
    /// The next random number.
    fn next_u64(&mut self) -> u64;

    /// A number uniformly-ish distributed in `0..=max` (modulo bias is negligible for the
    /// small ranges used here).
    fn below_or_eq(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            self.next_u64()
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

/// SplitMix64: a tiny, fast, seedable generator. Not cryptographic; resume keys do not use
/// it (they come from the OS, see [`ResumeKey::generate`](super::ResumeKey::generate)).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with the given seed (same seed, same sequence).
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator seeded from the clock and a process-wide counter (for jitter, where
    /// reproducibility does not matter).
    pub fn from_entropy() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        SplitMix64(t ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// How a client reconnects after its link failed.
///
/// Attempt `n` (0-based) waits `base = min(max_delay, initial_delay × 2^n)`, jittered to a
/// uniform value in `[base × (1 − jitter), base]`. Reconnecting gives up (the session is
/// lost) after `max_attempts` attempts or once `max_elapsed` has passed since the link was
/// lost, whichever comes first; `None` means no such limit (at least one must be set).
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// Delay before the first attempt. Default 10 ms.
    pub initial_delay: Duration,
    /// Cap on any one delay. Default 2 s; at least `initial_delay`.
    pub max_delay: Duration,
    /// Fraction of each delay that is randomised, from 0.0 (none) to 1.0 (full jitter).
    /// Default 0.5.
    pub jitter: f64,
    /// Most attempts per outage. Default `Some(50)`.
    pub max_attempts: Option<u32>,
    /// Most time spent reconnecting per outage. Default `Some(60 s)`.
    pub max_elapsed: Option<Duration>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(2),
            jitter: 0.5,
            max_attempts: Some(50),
            max_elapsed: Some(Duration::from_secs(60)),
        }
    }
}

impl ReconnectPolicy {
    /// Checks the documented bounds.
    pub fn validate(&self) -> Result<(), StableError> {
        if self.max_delay < self.initial_delay {
            return Err(StableError::InvalidConfig(
                "reconnect.max_delay must be at least reconnect.initial_delay",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(StableError::InvalidConfig(
                "reconnect.jitter must be from 0.0 to 1.0",
            ));
        }
        if self.max_attempts.is_none() && self.max_elapsed.is_none() {
            return Err(StableError::InvalidConfig(
                "reconnect needs a limit: max_attempts or max_elapsed",
            ));
        }
        Ok(())
    }

    /// The delay before attempt `attempt` (0-based), given `elapsed` time since the link was
    /// lost, or `None` when the policy gives up.
    pub fn delay(
        &self,
        attempt: u32,
        elapsed: Duration,
        rng: &mut dyn RandomSource,
    ) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
        let base = self
            .initial_delay
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        let base_ns = base.as_nanos().min(u64::MAX as u128) as u64;
        let spread = (base_ns as f64 * self.jitter.clamp(0.0, 1.0)) as u64;
        let delay = Duration::from_nanos(base_ns - rng.below_or_eq(spread));
        if let Some(limit) = self.max_elapsed {
            if elapsed.saturating_add(delay) > limit {
                return None;
            }
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_gives_up() {
        let p = ReconnectPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            jitter: 0.0,
            max_attempts: Some(6),
            max_elapsed: None,
        };
        let mut rng = SplitMix64::new(1);
        let d: Vec<_> = (0..7)
            .map(|a| p.delay(a, Duration::ZERO, &mut rng))
            .collect();
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(
            d,
            vec![ms(10), ms(20), ms(40), ms(80), ms(100), ms(100), None]
        );
        // Huge attempt numbers do not overflow.
        let unlimited = ReconnectPolicy {
            max_attempts: None,
            max_elapsed: Some(Duration::from_secs(3600)),
            ..p.clone()
        };
        assert_eq!(unlimited.delay(u32::MAX, Duration::ZERO, &mut rng), ms(100));
        assert_eq!(
            unlimited.delay(3, Duration::from_secs(3600), &mut rng),
            None
        );
    }

    #[test]
    fn jitter_stays_in_range_and_is_reproducible() {
        let p = ReconnectPolicy {
            jitter: 1.0,
            ..Default::default()
        };
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for attempt in 0..20 {
            let x = p.delay(attempt, Duration::ZERO, &mut a).unwrap();
            let y = p.delay(attempt, Duration::ZERO, &mut b).unwrap();
            assert_eq!(x, y);
            assert!(x <= p.max_delay);
        }
        assert!(ReconnectPolicy {
            max_attempts: None,
            max_elapsed: None,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
