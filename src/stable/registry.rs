//! [`Registry`]: the server's table of resumable sessions, keyed by [`ResumeKey`].
//!
//! * A new session is registered under a fresh key the caller drew from the OS CSPRNG
//!   ([`ResumeKey::generate`]). The registry never draws keys itself: it is usually kept
//!   under a lock, and a system call does not belong inside one.
//! * At most `max_sessions` sessions are registered at once
//!   ([`StableConfig::max_sessions`](super::StableConfig::max_sessions)); when full,
//!   [`Registry::insert`] first drops sessions whose grace period is over, then refuses with
//!   [`StableError::TooManySessions`] (the server answers the client `rejected`, and the
//!   client reports [`StableError::Refused`]).
//! * A resume presents a key. The registry compares it with **every** entry's key in
//!   constant time (no early exit, no hash of the secret), so timing does not reveal how
//!   much of a guess was right; this costs O(sessions) per resume, which is fine for the
//!   thousands of sessions a process holds. A match is **re-keyed** with the fresh key the
//!   caller passes, so every later resume works and older keys are rejected. One exception
//!   keeps a lost hello from losing the session: the key the client presented last stays
//!   valid until it presents the newer one. If the server's hello carrying the new key dies
//!   with its link (the client never saw it), the client resumes again with the key it
//!   has, and that works (and re-keys again); once the client presents the newer key, the
//!   one before is dead.
//! * A session whose link was lost stays resumable for a grace period
//!   ([`StableConfig::resume_grace`](super::StableConfig::resume_grace)); after that,
//!   resumes are rejected and [`Registry::expire`] hands the entry back for disposal.
//!
//! The registry stores any `T` per session (a channel to the session's task, an actor
//! address, or the [`Session`](super::Session) itself). It never reads the clock and never
//! calls the operating system.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{ResumeKey, StableError};

/// Identifier of a registered session (not secret; never sent on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

#[derive(Debug)]
struct Entry<T> {
    /// The newest key, sent in the last server hello.
    key: ResumeKey,
    /// The key the client presented at the last resume: still accepted, in case the hello
    /// carrying `key` never reached it.
    confirmed: Option<ResumeKey>,
    value: T,
    /// When the session's last link was lost, if it has none now.
    unlinked_since: Option<Instant>,
    /// Links handed to the session so far (the first one included).
    links_handed: u64,
}

/// The server's sessions by resume key. See the [module docs](self).
#[derive(Debug)]
pub struct Registry<T> {
    grace: Duration,
    max_sessions: usize,
    entries: HashMap<SessionId, Entry<T>>,
    next_id: u64,
}

/// A successful [`Registry::resume`].
#[derive(Debug)]
pub struct Resumed<'a, T> {
    /// The session.
    pub id: SessionId,
    /// The session's new key, to send in the server's hello.
    pub new_key: ResumeKey,
    /// How many links have been handed to the session, this one included (pass it back to
    /// [`Registry::link_lost`]).
    pub link_number: u64,
    /// The value stored for the session.
    pub value: &'a mut T,
}

impl<T> Registry<T> {
    /// An empty registry whose sessions stay resumable for `grace` without a link, holding
    /// at most `max_sessions` sessions (0 is taken as 1).
    pub fn new(grace: Duration, max_sessions: usize) -> Self {
        Registry {
            grace,
            max_sessions: max_sessions.max(1),
            entries: HashMap::new(),
            next_id: 1,
        }
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most sessions this registry holds at once.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// Registers a new session under `key` (draw it with [`ResumeKey::generate`] before
    /// taking any lock the registry lives under); the session has its first link now.
    ///
    /// When `max_sessions` are registered, sessions whose grace period is over at `now` are
    /// dropped first; if the registry is still full, the session is refused with
    /// [`StableError::TooManySessions`] and `value` is dropped.
    pub fn insert(
        &mut self,
        now: Instant,
        key: ResumeKey,
        value: T,
    ) -> Result<SessionId, StableError> {
        if self.entries.len() >= self.max_sessions {
            drop(self.expire(now));
            if self.entries.len() >= self.max_sessions {
                return Err(StableError::TooManySessions {
                    max: self.max_sessions,
                });
            }
        }
        let id = SessionId(self.next_id);
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                key,
                confirmed: None,
                value,
                unlinked_since: None,
                links_handed: 1,
            },
        );
        Ok(id)
    }

    /// Looks up `key` for a resume at `now`. Unknown or expired (an expired entry is
    /// removed and dropped) → `None`: answer `rejected`. Found → the entry is re-keyed with
    /// `new_key` (drawn by the caller, like [`insert`](Registry::insert)'s) and marked linked.
    pub fn resume(
        &mut self,
        now: Instant,
        key: &ResumeKey,
        new_key: ResumeKey,
    ) -> Option<Resumed<'_, T>> {
        let mut found = None;
        for (id, entry) in &self.entries {
            // Every key is compared, whatever the outcome, in constant time (no `||`).
            let newest = entry.key.ct_eq(key);
            let confirmed = entry.confirmed.as_ref().is_some_and(|c| c.ct_eq(key));
            if newest | confirmed {
                found = Some((*id, newest));
            }
        }
        let (id, newest) = found?;
        if self.is_expired_at(id, now) {
            self.entries.remove(&id);
            return None;
        }
        let entry = self.entries.get_mut(&id)?;
        let presented = std::mem::replace(&mut entry.key, new_key.clone());
        if newest {
            // The client has the newest key: the one before is dead from now on.
            entry.confirmed = Some(presented);
        }
        entry.unlinked_since = None;
        entry.links_handed += 1;
        Some(Resumed {
            id,
            new_key,
            link_number: entry.links_handed,
            value: &mut entry.value,
        })
    }

    fn is_expired_at(&self, id: SessionId, now: Instant) -> bool {
        self.entries
            .get(&id)
            .and_then(|e| e.unlinked_since)
            .is_some_and(|since| now >= since + self.grace)
    }

    /// The session lost link number `link_number` at `now`; its grace period starts —
    /// unless a newer link was already handed to it (then this is a stale report and is
    /// ignored, returning `false`).
    pub fn link_lost(&mut self, id: SessionId, now: Instant, link_number: u64) -> bool {
        match self.entries.get_mut(&id) {
            Some(e) if e.links_handed == link_number => {
                e.unlinked_since.get_or_insert(now);
                true
            }
            _ => false,
        }
    }

    /// Whether the session is unknown, or has been without a link for the grace period.
    pub fn is_expired(&self, id: SessionId, now: Instant) -> bool {
        !self.entries.contains_key(&id) || self.is_expired_at(id, now)
    }

    /// Removes a session (closed by the application, or expired).
    pub fn remove(&mut self, id: SessionId) -> Option<T> {
        self.entries.remove(&id).map(|e| e.value)
    }

    /// Removes and returns every session whose grace period is over at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<(SessionId, T)> {
        let expired: Vec<SessionId> = self
            .entries
            .keys()
            .copied()
            .filter(|id| self.is_expired_at(*id, now))
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.entries.remove(&id).map(|e| (id, e.value)))
            .collect()
    }

    /// When the next grace period ends, if any session is without a link.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| e.unlinked_since.map(|t| t + self.grace))
            .min()
    }

    /// The value stored for a session, mutably.
    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut T> {
        self.entries.get_mut(&id).map(|e| &mut e.value)
    }

    /// The value stored for a session.
    pub fn get(&self, id: SessionId) -> Option<&T> {
        self.entries.get(&id).map(|e| &e.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ResumeKey {
        ResumeKey::generate().unwrap()
    }

    #[test]
    fn resume_rekeys_and_rejects_old_keys() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(5), 16);
        let k0 = key();
        let id = r.insert(now, k0.clone(), "a").unwrap();
        let other = key();
        r.insert(now, other.clone(), "b").unwrap();
        let res = r.resume(now, &k0, key()).unwrap();
        assert_eq!((res.id, *res.value, res.link_number), (id, "a", 2));
        let k1 = res.new_key;
        assert!(!k1.ct_eq(&k0));
        let k2 = r.resume(now, &k1, key()).unwrap().new_key;
        assert!(r.resume(now, &k0, key()).is_none(), "old key is dead");
        let k3 = r.resume(now, &k2, key()).unwrap().new_key;
        assert!(r.resume(now, &k3, key()).is_some(), "third resume in a row");
        assert_eq!(*r.resume(now, &other, key()).unwrap().value, "b");
        assert!(r
            .resume(now, &ResumeKey::from_bytes([0; 16]), key())
            .is_none());
    }

    #[test]
    fn a_lost_server_hello_does_not_lose_the_session() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(5), 16);
        let k0 = key();
        r.insert(now, k0.clone(), "a").unwrap();
        // The hello carrying k1 never reaches the client: it resumes with k0 again.
        let _k1 = r.resume(now, &k0, key()).unwrap().new_key;
        let k2 = r.resume(now, &k0, key()).unwrap().new_key;
        // The client got k2 this time; k0 is dead from now on (and k1 never was known).
        let k3 = r.resume(now, &k2, key()).unwrap().new_key;
        assert!(r.resume(now, &k0, key()).is_none());
        assert!(r.resume(now, &_k1, key()).is_none());
        // k2 stays valid until the client presents k3.
        let k4 = r.resume(now, &k2, key()).unwrap().new_key;
        assert!(
            r.resume(now, &k3, key()).is_none(),
            "k3 was superseded by k4"
        );
        let k5 = r.resume(now, &k4, key()).unwrap().new_key;
        assert!(r.resume(now, &k2, key()).is_none());
        assert!(r.resume(now, &k5, key()).is_some());
    }

    #[test]
    fn grace_period_expiry_and_stale_link_reports() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        let mut r = Registry::new(grace, 16);
        let k0 = key();
        let id = r.insert(t0, k0.clone(), 1).unwrap();
        assert_eq!(r.poll_timeout(), None);
        assert!(r.link_lost(id, t0, 1));
        assert_eq!(r.poll_timeout(), Some(t0 + grace));
        // Resumed within the grace period.
        let k1 = r.resume(t0 + grace / 2, &k0, key()).unwrap().new_key;
        assert_eq!(r.poll_timeout(), None);
        // A late report about link 1 does not mark link 2 lost.
        assert!(!r.link_lost(id, t0 + grace, 1));
        assert!(!r.is_expired(id, t0 + grace * 10));
        assert!(r.link_lost(id, t0 + grace, 2));
        assert!(r.expire(t0 + grace + grace / 2).is_empty());
        // Expired: resume rejected, entry gone.
        assert!(r.resume(t0 + grace * 2, &k1, key()).is_none());
        assert!(r.is_empty());
        let id2 = r.insert(t0, key(), 2).unwrap();
        r.link_lost(id2, t0, 1);
        assert_eq!(r.expire(t0 + grace), vec![(id2, 2)]);
    }

    #[test]
    fn max_sessions_refuses_then_makes_room_from_expired_entries() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        let mut r = Registry::new(grace, 2);
        assert_eq!(r.max_sessions(), 2);
        let a = r.insert(t0, key(), "a").unwrap();
        r.insert(t0, key(), "b").unwrap();
        assert!(matches!(
            r.insert(t0, key(), "c"),
            Err(StableError::TooManySessions { max: 2 })
        ));
        assert_eq!(r.len(), 2);
        // A session without a link still counts while its grace period lasts...
        r.link_lost(a, t0, 1);
        assert!(matches!(
            r.insert(t0 + grace / 2, key(), "c"),
            Err(StableError::TooManySessions { .. })
        ));
        // ...and makes room once it is over.
        let c = r.insert(t0 + grace, key(), "c").unwrap();
        assert_eq!(r.len(), 2);
        assert!(r.get(a).is_none());
        assert_eq!(r.get(c), Some(&"c"));
        // Removing a session frees its place too.
        r.remove(c);
        r.insert(t0 + grace, key(), "d").unwrap();
        assert_eq!(Registry::<()>::new(grace, 0).max_sessions(), 1);
    }
}
