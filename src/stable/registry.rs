//! [`Registry`]: the server's table of resumable sessions, keyed by [`ResumeKey`].
//!
//! * A new session is registered under a fresh key from the OS CSPRNG.
//! * A resume presents a key. The registry compares it with **every** entry's key in
//!   constant time (no early exit, no hash of the secret), so timing does not reveal how
//!   much of a guess was right; this costs O(sessions) per resume, which is fine for the
//!   thousands of sessions a process holds. A match is **re-keyed**: the old key is dead and
//!   the new one is returned for the server's hello, so every later resume works and a
//!   replayed old key is rejected.
//! * A session whose link was lost stays resumable for a grace period
//!   ([`StableConfig::resume_grace`](super::StableConfig::resume_grace)); after that,
//!   resumes are rejected and [`Registry::expire`] hands the entry back for disposal.
//!
//! The registry stores any `T` per session (a channel to the session's task, an actor
//! address, or the [`Session`](super::Session) itself). It never reads the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{ResumeKey, StableError};

/// Identifier of a registered session (not secret; never sent on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

#[derive(Debug)]
struct Entry<T> {
    key: ResumeKey,
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
    /// An empty registry whose sessions stay resumable for `grace` without a link.
    pub fn new(grace: Duration) -> Self {
        Registry {
            grace,
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

    /// Registers a new session (it has its first link now). Returns its id and key.
    pub fn insert(&mut self, value: T) -> Result<(SessionId, ResumeKey), StableError> {
        let key = ResumeKey::generate()?;
        let id = SessionId(self.next_id);
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                key: key.clone(),
                value,
                unlinked_since: None,
                links_handed: 1,
            },
        );
        Ok((id, key))
    }

    /// Looks up `key` for a resume at `now`. Unknown or expired (an expired entry is
    /// removed and dropped) → `Ok(None)`: answer `rejected`. Found → the entry is re-keyed
    /// and marked linked.
    pub fn resume(
        &mut self,
        now: Instant,
        key: &ResumeKey,
    ) -> Result<Option<Resumed<'_, T>>, StableError> {
        let mut found = None;
        for (id, entry) in &self.entries {
            // Every key is compared, whatever the outcome, in constant time.
            if entry.key.ct_eq(key) {
                found = Some(*id);
            }
        }
        let Some(id) = found else { return Ok(None) };
        if self.is_expired_at(id, now) {
            self.entries.remove(&id);
            return Ok(None);
        }
        let new_key = ResumeKey::generate()?;
        let Some(entry) = self.entries.get_mut(&id) else {
            return Ok(None);
        };
        entry.key = new_key.clone();
        entry.unlinked_since = None;
        entry.links_handed += 1;
        Ok(Some(Resumed {
            id,
            new_key,
            link_number: entry.links_handed,
            value: &mut entry.value,
        }))
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

    #[test]
    fn resume_rekeys_and_rejects_old_keys() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(5));
        let (id, k0) = r.insert("a").unwrap();
        let (_, other) = r.insert("b").unwrap();
        let res = r.resume(now, &k0).unwrap().unwrap();
        assert_eq!((res.id, *res.value, res.link_number), (id, "a", 2));
        let k1 = res.new_key;
        assert!(!k1.ct_eq(&k0));
        assert!(r.resume(now, &k0).unwrap().is_none(), "old key is dead");
        let k2 = r.resume(now, &k1).unwrap().unwrap().new_key;
        let k3 = r.resume(now, &k2).unwrap().unwrap().new_key;
        assert!(
            r.resume(now, &k3).unwrap().is_some(),
            "third resume in a row"
        );
        assert_eq!(*r.resume(now, &other).unwrap().unwrap().value, "b");
        assert!(r
            .resume(now, &ResumeKey::from_bytes([0; 16]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn grace_period_expiry_and_stale_link_reports() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        let mut r = Registry::new(grace);
        let (id, k0) = r.insert(1).unwrap();
        assert_eq!(r.poll_timeout(), None);
        assert!(r.link_lost(id, t0, 1));
        assert_eq!(r.poll_timeout(), Some(t0 + grace));
        // Resumed within the grace period.
        let k1 = r.resume(t0 + grace / 2, &k0).unwrap().unwrap().new_key;
        assert_eq!(r.poll_timeout(), None);
        // A late report about link 1 does not mark link 2 lost.
        assert!(!r.link_lost(id, t0 + grace, 1));
        assert!(!r.is_expired(id, t0 + grace * 10));
        assert!(r.link_lost(id, t0 + grace, 2));
        assert!(r.expire(t0 + grace + grace / 2).is_empty());
        // Expired: resume rejected, entry gone.
        assert!(r.resume(t0 + grace * 2, &k1).unwrap().is_none());
        assert!(r.is_empty());
        let (id2, _) = r.insert(2).unwrap();
        r.link_lost(id2, t0, 1);
        assert_eq!(r.expire(t0 + grace), vec![(id2, 2)]);
    }
}
