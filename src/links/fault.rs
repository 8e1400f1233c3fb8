//! Fault injection: [`FaultyLink`] wraps any [`Link`] and breaks it on purpose, from a seeded
//! random generator or a fixed plan; [`FaultySource`] does the same to every link a
//! [`LinkSource`] makes. Use it to test how an application copes with links that die.
//!
//! A [`FaultPlan`] can:
//!
//! * **kill** the link after N frames or N payload bytes sent by this side (a fixed number
//!   or one drawn from a range per link), or at random with a per-frame probability;
//! * **cut mid-frame**: when a kill triggers on a frame, that frame is not delivered (for a
//!   generic link, "cut in the middle" means: the peer never sees it and the link fails);
//! * **delay** every frame sent by a random duration in a range;
//! * **stall** the peer's reads (after N frames sent, nothing more leaves this side; sends
//!   wait) or this side's reads (after N frames received, `recv` waits), until the link is
//!   killed.
//!
//! A [`FaultHandle`] kills a link from outside at any moment (a chaos loop).
//!
//! A killed link fails both halves at once with a sticky
//! [`LinkError::Io`] of kind `ConnectionReset` whose message starts with "fault injected";
//! a pending `reserve` or `recv` is woken. The wrapped link is dropped as soon as each half
//! notices, so the peer sees its end of the link close.
//!
//! ```
//! use actix_tether::links::{fault::{FaultPlan, FaultyLink}, stream::StreamLink, Link, LinkRx, send_bytes};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (a, b) = StreamLink::duplex_pair(4096);
//! let a = FaultyLink::new(a, FaultPlan::new(7).kill_after_frames(2));
//! let (mut tx, _rx) = a.split();
//! let (_btx, mut brx) = b.split();
//! send_bytes(&mut tx, b"one").await.unwrap();
//! send_bytes(&mut tx, b"two").await.unwrap();
//! assert!(send_bytes(&mut tx, b"three").await.is_err()); // killed after 2 frames
//! assert_eq!(brx.recv().await.unwrap().as_deref(), Some(&b"one"[..]));
//! # }
//! ```

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::source::LinkSource;
use super::{Link, LinkError, LinkRx, LinkTx, Permit, WriteSlot};
use crate::stable::backoff::{RandomSource, SplitMix64};

/// What to break, and when. Build it with [`FaultPlan::new`] and the builder methods; the
/// default plan injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// Seed of the random generator (same seed, same faults for the same traffic).
    pub seed: u64,
    /// Kill after this many frames sent: a number drawn uniformly from `lo..=hi` for each
    /// link (`(n, n)` for exactly `n`).
    pub kill_after_frames: Option<(u64, u64)>,
    /// Kill once this many payload bytes were sent: a number drawn uniformly from `lo..=hi`
    /// for each link (`(n, n)` for exactly `n`).
    pub kill_after_bytes: Option<(u64, u64)>,
    /// Probability, from 0.0 to 1.0, that any one frame sent triggers a kill.
    pub reset_probability: f64,
    /// A kill triggered by a frame cuts that frame (it is not delivered) instead of
    /// delivering it first.
    pub cut_mid_frame: bool,
    /// Delay every frame sent by a duration drawn uniformly from this range (inclusive).
    pub delay: Option<(Duration, Duration)>,
    /// After this many frames sent, sending stalls: the peer's reads see nothing more.
    pub stall_sends_after: Option<u64>,
    /// After this many frames received, `recv` stalls.
    pub stall_recv_after: Option<u64>,
}

impl FaultPlan {
    /// A plan that injects nothing yet, with the given random seed.
    pub fn new(seed: u64) -> Self {
        FaultPlan {
            seed,
            ..Default::default()
        }
    }

    /// Kill the link after exactly `n` frames sent.
    pub fn kill_after_frames(mut self, n: u64) -> Self {
        self.kill_after_frames = Some((n, n));
        self
    }

    /// Kill each link after a number of frames sent drawn from `lo..=hi`.
    pub fn kill_after_frames_between(mut self, lo: u64, hi: u64) -> Self {
        self.kill_after_frames = Some((lo.min(hi), hi.max(lo)));
        self
    }

    /// Kill the link once `n` payload bytes were sent.
    pub fn kill_after_bytes(mut self, n: u64) -> Self {
        self.kill_after_bytes = Some((n, n));
        self
    }

    /// Kill each link once a number of payload bytes drawn from `lo..=hi` were sent
    /// (independent of how the traffic is split into frames: a session that batches items
    /// into fewer, larger frames is killed as often per item as one that does not).
    pub fn kill_after_bytes_between(mut self, lo: u64, hi: u64) -> Self {
        self.kill_after_bytes = Some((lo.min(hi), hi.max(lo)));
        self
    }

    /// Kill the link at random: each frame sent triggers a kill with probability `p`.
    pub fn reset_probability(mut self, p: f64) -> Self {
        self.reset_probability = p.clamp(0.0, 1.0);
        self
    }

    /// Kills triggered by a frame cut that frame instead of delivering it.
    pub fn cut_mid_frame(mut self) -> Self {
        self.cut_mid_frame = true;
        self
    }

    /// Delay every frame sent by a duration from `min..=max`.
    pub fn delay(mut self, min: Duration, max: Duration) -> Self {
        self.delay = Some((min.min(max), max.max(min)));
        self
    }

    /// Stall sending (the peer's reads) after `n` frames.
    pub fn stall_sends_after(mut self, n: u64) -> Self {
        self.stall_sends_after = Some(n);
        self
    }

    /// Stall receiving after `n` frames.
    pub fn stall_recv_after(mut self, n: u64) -> Self {
        self.stall_recv_after = Some(n);
        self
    }
}

/// Counters of injected faults, shared by a [`FaultySource`] and its links.
#[derive(Debug, Default)]
pub struct FaultStats {
    links: AtomicU64,
    kills: AtomicU64,
    frames_sent: AtomicU64,
    frames_cut: AtomicU64,
}

impl FaultStats {
    /// Links made (wrapped).
    pub fn links(&self) -> u64 {
        self.links.load(Ordering::Relaxed)
    }
    /// Links killed by the injector or a [`FaultHandle`].
    pub fn kills(&self) -> u64 {
        self.kills.load(Ordering::Relaxed)
    }
    /// Frames delivered to the wrapped links.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent.load(Ordering::Relaxed)
    }
    /// Frames cut by a mid-frame kill (not delivered).
    pub fn frames_cut(&self) -> u64 {
        self.frames_cut.load(Ordering::Relaxed)
    }
}

struct State {
    rng: SplitMix64,
    sent_frames: u64,
    sent_bytes: u64,
    recv_frames: u64,
    kill_at_frame: Option<u64>,
    /// Drawn from `plan.kill_after_bytes` when the link was made.
    kill_at_bytes: Option<u64>,
}

struct Ctl {
    plan: FaultPlan,
    state: Mutex<State>,
    killed: watch::Sender<Option<String>>,
    stats: Arc<FaultStats>,
}

enum OnCommit {
    Deliver,
    DeliverThenKill(String),
    Cut(String),
}

impl Ctl {
    fn new(plan: FaultPlan, stats: Arc<FaultStats>) -> Arc<Ctl> {
        let mut rng = SplitMix64::new(plan.seed);
        let kill_at_frame = plan
            .kill_after_frames
            .map(|(a, b)| a.min(b) + rng.below_or_eq(a.max(b) - a.min(b)));
        let kill_at_bytes = plan
            .kill_after_bytes
            .map(|(a, b)| a.min(b) + rng.below_or_eq(a.max(b) - a.min(b)));
        stats.links.fetch_add(1, Ordering::Relaxed);
        Arc::new(Ctl {
            plan,
            state: Mutex::new(State {
                rng,
                sent_frames: 0,
                sent_bytes: 0,
                recv_frames: 0,
                kill_at_frame,
                kill_at_bytes,
            }),
            killed: watch::channel(None).0,
            stats,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kill(&self, reason: String) {
        let first = self.killed.send_if_modified(|k| {
            if k.is_none() {
                *k = Some(reason);
                true
            } else {
                false
            }
        });
        if first {
            self.stats.kills.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn error(&self) -> Option<LinkError> {
        self.killed.borrow().as_ref().map(|reason| {
            LinkError::from(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("fault injected: {reason}"),
            ))
        })
    }

    /// Waits until the link is killed and returns the error.
    async fn wait_killed(&self) -> LinkError {
        let mut rx = self.killed.subscribe();
        loop {
            if let Some(e) = self.error() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`; unreachable while `self` is borrowed.
                return LinkError::Closed;
            }
        }
    }

    fn next_delay(&self) -> Option<Duration> {
        let (a, b) = self.plan.delay?;
        let (min, max) = (a.min(b), a.max(b));
        let spread = (max - min).as_nanos().min(u64::MAX as u128) as u64;
        let extra = self.lock().rng.below_or_eq(spread);
        Some(min + Duration::from_nanos(extra))
    }

    fn sends_stalled(&self) -> bool {
        self.plan
            .stall_sends_after
            .is_some_and(|n| self.lock().sent_frames >= n)
    }

    fn recv_stalled(&self) -> bool {
        self.plan
            .stall_recv_after
            .is_some_and(|n| self.lock().recv_frames >= n)
    }

    fn on_commit(&self, len: usize) -> OnCommit {
        if self.killed.borrow().is_some() {
            return OnCommit::Cut("link already killed".into());
        }
        let mut st = self.lock();
        let frame = st.sent_frames + 1;
        let bytes = st.sent_bytes + len as u64;
        let reason = if st.kill_at_frame.is_some_and(|k| frame >= k) {
            Some(format!("killed after {frame} frames"))
        } else if st.kill_at_bytes.is_some_and(|k| bytes >= k) {
            Some(format!("killed after {bytes} bytes"))
        } else if self.plan.reset_probability > 0.0
            && (st.rng.next_u64() as f64 / u64::MAX as f64) < self.plan.reset_probability
        {
            Some(format!("random reset at frame {frame}"))
        } else {
            None
        };
        match reason {
            Some(r) if self.plan.cut_mid_frame => {
                self.stats.frames_cut.fetch_add(1, Ordering::Relaxed);
                OnCommit::Cut(format!("{r} (frame {frame} cut)"))
            }
            other => {
                st.sent_frames = frame;
                st.sent_bytes = bytes;
                self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                match other {
                    Some(r) => OnCommit::DeliverThenKill(r),
                    None => OnCommit::Deliver,
                }
            }
        }
    }
}

/// Kills a [`FaultyLink`] from outside (both halves fail at once).
#[derive(Clone)]
pub struct FaultHandle {
    ctl: Arc<Ctl>,
}

impl FaultHandle {
    /// Kills the link now. Idempotent.
    pub fn kill(&self) {
        self.ctl.kill("killed by FaultHandle".into());
    }

    /// Whether the link was killed (by the plan or a handle).
    pub fn is_killed(&self) -> bool {
        self.ctl.killed.borrow().is_some()
    }
}

impl std::fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultHandle")
            .field("killed", &self.is_killed())
            .finish()
    }
}

/// A [`Link`] that breaks according to a [`FaultPlan`]. See the [module docs](self).
pub struct FaultyLink<L> {
    inner: L,
    ctl: Arc<Ctl>,
}

impl<L: Link> FaultyLink<L> {
    /// Wraps `link`.
    pub fn new(link: L, plan: FaultPlan) -> Self {
        Self::with_stats(link, plan, Arc::default())
    }

    fn with_stats(link: L, plan: FaultPlan, stats: Arc<FaultStats>) -> Self {
        FaultyLink {
            inner: link,
            ctl: Ctl::new(plan, stats),
        }
    }

    /// A handle that kills this link on demand.
    pub fn handle(&self) -> FaultHandle {
        FaultHandle {
            ctl: self.ctl.clone(),
        }
    }

    /// Counters of this link.
    pub fn stats(&self) -> Arc<FaultStats> {
        self.ctl.stats.clone()
    }
}

impl<L: Link> Link for FaultyLink<L> {
    type Tx = FaultyTx<L::Tx>;
    type Rx = FaultyRx<L::Rx>;

    fn split(self) -> (Self::Tx, Self::Rx) {
        let (tx, rx) = self.inner.split();
        (
            FaultyTx {
                inner: Some(tx),
                ctl: self.ctl.clone(),
            },
            FaultyRx {
                inner: Some(rx),
                ctl: self.ctl,
            },
        )
    }
}

/// Sending half of a [`FaultyLink`].
pub struct FaultyTx<T> {
    inner: Option<T>,
    ctl: Arc<Ctl>,
}

impl<T: LinkTx> LinkTx for FaultyTx<T> {
    type Permit<'a> = FaultyPermit<'a, T::Permit<'a>>;

    async fn reserve(&mut self) -> Result<Self::Permit<'_>, LinkError> {
        if let Some(e) = self.ctl.error() {
            self.inner = None; // the peer sees the link go away
            return Err(e);
        }
        if let Some(d) = self.ctl.next_delay() {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                e = self.ctl.wait_killed() => return Err(e),
            }
        }
        if self.ctl.sends_stalled() {
            return Err(self.ctl.wait_killed().await);
        }
        let ctl = &self.ctl;
        let inner = self.inner.as_mut().ok_or(LinkError::Closed)?;
        tokio::select! {
            p = inner.reserve() => Ok(FaultyPermit { inner: p?, ctl }),
            e = ctl.wait_killed() => Err(e),
        }
    }

    async fn close(self) -> Result<(), LinkError> {
        if let Some(e) = self.ctl.error() {
            return Err(e);
        }
        match self.inner {
            Some(inner) => inner.close().await,
            None => Err(LinkError::Closed),
        }
    }
}

/// Permit of a [`FaultyTx`].
pub struct FaultyPermit<'a, P> {
    inner: P,
    ctl: &'a Arc<Ctl>,
}

impl<'a, P: Permit> Permit for FaultyPermit<'a, P> {
    type Slot = FaultySlot<'a, P::Slot>;

    fn alloc(self, len: usize) -> Result<Self::Slot, LinkError> {
        Ok(FaultySlot {
            inner: self.inner.alloc(len)?,
            ctl: self.ctl,
            len,
        })
    }
}

/// Write slot of a [`FaultyTx`].
pub struct FaultySlot<'a, S> {
    inner: S,
    ctl: &'a Arc<Ctl>,
    len: usize,
}

impl<S: WriteSlot> WriteSlot for FaultySlot<'_, S> {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.inner.as_mut_slice()
    }

    fn commit(self) {
        match self.ctl.on_commit(self.len) {
            OnCommit::Deliver => self.inner.commit(),
            OnCommit::DeliverThenKill(reason) => {
                self.inner.commit();
                self.ctl.kill(reason);
            }
            OnCommit::Cut(reason) => {
                drop(self.inner);
                self.ctl.kill(reason);
            }
        }
    }
}

/// Receiving half of a [`FaultyLink`].
pub struct FaultyRx<R> {
    inner: Option<R>,
    ctl: Arc<Ctl>,
}

impl<R: LinkRx> LinkRx for FaultyRx<R> {
    async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        if let Some(e) = self.ctl.error() {
            self.inner = None;
            return Err(e);
        }
        if self.ctl.recv_stalled() {
            return Err(self.ctl.wait_killed().await);
        }
        let ctl = &self.ctl;
        let inner = self.inner.as_mut().ok_or(LinkError::Closed)?;
        tokio::select! {
            r = inner.recv() => {
                if let Ok(Some(_)) = &r {
                    ctl.lock().recv_frames += 1;
                }
                r
            }
            e = ctl.wait_killed() => Err(e),
        }
    }
}

/// A [`LinkSource`] whose every link is a [`FaultyLink`] with the same plan (each link gets
/// its own seed, derived from the plan's seed and the link's number).
pub struct FaultySource<S> {
    inner: S,
    plan: FaultPlan,
    stats: Arc<FaultStats>,
    current: Arc<Mutex<Option<FaultHandle>>>,
}

impl<S: LinkSource> FaultySource<S> {
    /// Wraps `source`.
    pub fn new(source: S, plan: FaultPlan) -> Self {
        FaultySource {
            inner: source,
            plan,
            stats: Arc::default(),
            current: Arc::default(),
        }
    }

    /// Counters over every link made.
    pub fn stats(&self) -> Arc<FaultStats> {
        self.stats.clone()
    }

    /// A handle that kills whichever link the source made last.
    pub fn killer(&self) -> SourceKiller {
        SourceKiller {
            current: self.current.clone(),
        }
    }
}

/// Kills the latest link of a [`FaultySource`] on demand (for chaos loops).
#[derive(Clone, Debug)]
pub struct SourceKiller {
    current: Arc<Mutex<Option<FaultHandle>>>,
}

impl SourceKiller {
    /// Kills the source's latest link, if it is still alive. Returns whether it killed one.
    pub fn kill(&self) -> bool {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some(h) if !h.is_killed() => {
                h.kill();
                true
            }
            _ => false,
        }
    }
}

impl<S: LinkSource> LinkSource for FaultySource<S> {
    type Link = FaultyLink<S::Link>;

    async fn connect(&mut self) -> Result<Self::Link, LinkError> {
        let link = self.inner.connect().await?;
        let n = self.stats.links();
        let plan = FaultPlan {
            seed: self
                .plan
                .seed
                .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ..self.plan.clone()
        };
        let link = FaultyLink::with_stats(link, plan, self.stats.clone());
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(link.handle());
        Ok(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::send_bytes;
    use crate::links::stream::StreamLink;
    use crate::links::FnSource;

    #[tokio::test]
    async fn kill_after_frames_and_cut_mid_frame() {
        for cut in [false, true] {
            let (a, b) = StreamLink::duplex_pair(4096);
            let mut plan = FaultPlan::new(1).kill_after_frames(3);
            if cut {
                plan = plan.cut_mid_frame();
            }
            let a = FaultyLink::new(a, plan);
            let stats = a.stats();
            let (mut tx, mut rx) = a.split();
            let (_btx, mut brx) = b.split();
            for i in 0..3u8 {
                send_bytes(&mut tx, &[i]).await.unwrap();
            }
            let err = send_bytes(&mut tx, b"x").await.unwrap_err();
            assert!(err.to_string().contains("fault injected"), "{err}");
            assert!(rx.recv().await.is_err(), "both halves fail");
            assert_eq!(brx.recv().await.unwrap().as_deref(), Some(&[0u8][..]));
            assert_eq!(brx.recv().await.unwrap().as_deref(), Some(&[1u8][..]));
            let third = brx.recv().await.unwrap();
            if cut {
                assert_eq!(third, None, "frame 3 cut, then the link ended");
                assert_eq!(stats.frames_cut(), 1);
            } else {
                assert_eq!(third.as_deref(), Some(&[2u8][..]));
                assert_eq!(brx.recv().await.unwrap(), None);
            }
            assert_eq!(stats.kills(), 1);
        }
    }

    #[tokio::test]
    async fn kill_after_bytes() {
        let (a, _b) = StreamLink::duplex_pair(4096);
        let (mut tx, _rx) = FaultyLink::new(a, FaultPlan::new(1).kill_after_bytes(10)).split();
        send_bytes(&mut tx, &[0; 6]).await.unwrap();
        send_bytes(&mut tx, &[0; 6]).await.unwrap();
        assert!(send_bytes(&mut tx, &[0; 1]).await.is_err());
    }

    #[tokio::test]
    async fn kill_after_bytes_between_draws_a_threshold_per_link() {
        // Kill points from 10..=40 bytes, drawn per link: 1-byte frames die exactly there.
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let (a, _b) = StreamLink::duplex_pair(4096);
            let plan = FaultPlan::new(seed).kill_after_bytes_between(40, 10);
            assert_eq!(plan.kill_after_bytes, Some((10, 40)));
            let (mut tx, _rx) = FaultyLink::new(a, plan).split();
            let mut sent = 0u64;
            while send_bytes(&mut tx, &[0]).await.is_ok() {
                sent += 1;
                assert!(sent <= 40, "never killed");
            }
            // The frame that reached the threshold was delivered, then the link died.
            assert!((10..=40).contains(&sent), "killed after {sent} bytes");
            seen.insert(sent);
        }
        assert!(seen.len() > 5, "thresholds vary between links: {seen:?}");
    }

    #[tokio::test]
    async fn handle_kill_wakes_pending_recv() {
        let (a, _b) = StreamLink::duplex_pair(4096);
        let a = FaultyLink::new(a, FaultPlan::default());
        let h = a.handle();
        let (_tx, mut rx) = a.split();
        let pending = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        h.kill();
        assert!(pending.await.unwrap().is_err());
        assert!(h.is_killed());
    }

    #[tokio::test(start_paused = true)]
    async fn random_resets_are_reproducible_and_stalls_stall() {
        let kills_at = |seed| async move {
            let (a, _b) = StreamLink::duplex_pair(1 << 20);
            let (mut tx, _rx) =
                FaultyLink::new(a, FaultPlan::new(seed).reset_probability(0.05)).split();
            let mut n = 0;
            while send_bytes(&mut tx, b"z").await.is_ok() {
                n += 1;
            }
            n
        };
        assert_eq!(kills_at(9).await, kills_at(9).await);
        // Stalled sends wait until killed.
        let (a, _b) = StreamLink::duplex_pair(4096);
        let a = FaultyLink::new(a, FaultPlan::new(1).stall_sends_after(1));
        let h = a.handle();
        let (mut tx, _rx) = a.split();
        send_bytes(&mut tx, b"1").await.unwrap();
        let stalled = tokio::time::timeout(Duration::from_secs(5), send_bytes(&mut tx, b"2")).await;
        assert!(stalled.is_err(), "second send stalls");
        h.kill();
        assert!(send_bytes(&mut tx, b"2").await.is_err());
        // Delays delay (virtual time).
        let (a, b) = StreamLink::duplex_pair(4096);
        let (mut tx, _rx) = FaultyLink::new(
            a,
            FaultPlan::new(1).delay(Duration::from_millis(100), Duration::from_millis(100)),
        )
        .split();
        let (_btx, mut brx) = b.split();
        let t0 = tokio::time::Instant::now();
        send_bytes(&mut tx, b"late").await.unwrap();
        assert!(brx.recv().await.unwrap().is_some());
        assert!(t0.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn source_wraps_every_link() {
        let mut src = FaultySource::new(
            FnSource(|| async { Ok(StreamLink::duplex_pair(4096).0) }),
            FaultPlan::new(3).kill_after_frames_between(1, 4),
        );
        let killer = src.killer();
        for _ in 0..3 {
            let (mut tx, _rx) = src.connect().await.unwrap().split();
            while send_bytes(&mut tx, b".").await.is_ok() {}
        }
        assert_eq!(src.stats().links(), 3);
        assert_eq!(src.stats().kills(), 3);
        let _l = src.connect().await.unwrap();
        assert!(killer.kill());
        assert!(!killer.kill());
        assert_eq!(src.stats().kills(), 4);
    }
}
