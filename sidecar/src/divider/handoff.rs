//! The keys one member session holds and their stop handoff, as a pure state machine (no I/O,
//! time passed in):
//!
//! ```text
//!   start(key, token) -> Owned --stop(reason)--> Stopping --confirm(token)------> Releasing
//!                          |                        `--deadline passed (TIMEOUT)--^   |
//!                          `--release(token) by the app -------------------------^   |
//!                                                   release written to its bucket --> gone
//! ```
//!
//! A key leaves `Owned`/`Stopping` only by the app's confirm or release with the right token, or
//! by the stop timeout (the app is then told its token is dead). While `Releasing`, the owner
//! record still names this session, so no one else can claim the key: the runtime retries the
//! release write until it lands, and only then is the key gone. This is what makes guarantee 3
//! of [`super`] hold on the old owner's side; `tests` below check that no path skips it.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// Why a key is being stopped (mirrors `Stop.Reason` of the proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Assigned to another member.
    Reassigned,
    /// Not confirmed in time: the token is dead.
    Timeout,
    /// The lease was lost: the token is dead.
    LeaseLost,
    /// Removed from the divider.
    Removed,
    /// Flush or Cancel.
    Leaving,
}

/// The state of one held key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// The app works on it.
    Owned {
        /// Its token.
        token: u64,
    },
    /// The app was told to stop; waiting for its confirm until `deadline`.
    Stopping {
        /// Its token.
        token: u64,
        /// When the stop times out.
        deadline: Instant,
    },
    /// The app is done with it; the release write is pending.
    Releasing {
        /// Its token.
        token: u64,
        /// Removed for good (Release DONE): the runtime also removes it from the key set.
        done: bool,
    },
}

impl KeyState {
    /// The key's token.
    pub fn token(&self) -> u64 {
        match *self {
            KeyState::Owned { token } | KeyState::Stopping { token, .. } | KeyState::Releasing { token, .. } => token,
        }
    }
}

/// Why a confirm or release was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// The session does not hold the key.
    #[error("key {0:?} is not held by this member")]
    NotHeld(String),
    /// The token is not the key's current token.
    #[error("key {key:?}: token {given} is not the current token {current}")]
    WrongToken {
        /// The key.
        key: String,
        /// Token given.
        given: u64,
        /// The key's token.
        current: u64,
    },
    /// ConfirmStop of a key that was not asked to stop.
    #[error("key {0:?} was not asked to stop (use Release to give it up)")]
    NotStopping(String),
}

/// The keys one session holds.
#[derive(Debug, Default, Clone)]
pub struct Holdings {
    keys: BTreeMap<String, KeyState>,
}

impl Holdings {
    /// The app was sent `Start{key, token}`.
    pub fn start(&mut self, key: &str, token: u64) {
        self.keys.insert(key.to_string(), KeyState::Owned { token });
    }

    /// A key's state.
    pub fn get(&self, key: &str) -> Option<KeyState> {
        self.keys.get(key).copied()
    }

    /// Every held key and its state.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &KeyState)> {
        self.keys.iter()
    }

    /// Number of held keys (any state).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys the app works on (owned, not asked to stop), with tokens.
    pub fn working(&self) -> Vec<(String, u64)> {
        self.keys
            .iter()
            .filter(|(_, s)| matches!(s, KeyState::Owned { .. }))
            .map(|(k, s)| (k.clone(), s.token()))
            .collect()
    }

    /// Asks the app to stop `key`: returns the token to put in the `Stop` event, or `None` when
    /// the key is not owned (already stopping, releasing, or not held).
    pub fn stop(&mut self, key: &str, now: Instant, timeout: Duration) -> Option<u64> {
        match self.keys.get_mut(key) {
            Some(s @ KeyState::Owned { .. }) => {
                let token = s.token();
                *s = KeyState::Stopping { token, deadline: now + timeout };
                Some(token)
            }
            _ => None,
        }
    }

    fn check(&self, key: &str, token: u64) -> Result<KeyState, HandoffError> {
        let s = self.keys.get(key).ok_or_else(|| HandoffError::NotHeld(key.to_string()))?;
        if s.token() != token {
            return Err(HandoffError::WrongToken { key: key.to_string(), given: token, current: s.token() });
        }
        Ok(*s)
    }

    /// The app confirmed the stop of `key` at `token`. Confirming twice is fine (idempotent
    /// while the release is pending).
    pub fn confirm(&mut self, key: &str, token: u64) -> Result<(), HandoffError> {
        match self.check(key, token)? {
            KeyState::Stopping { .. } => {
                self.keys.insert(key.to_string(), KeyState::Releasing { token, done: false });
                Ok(())
            }
            KeyState::Releasing { .. } => Ok(()),
            KeyState::Owned { .. } => Err(HandoffError::NotStopping(key.to_string())),
        }
    }

    /// The app gives `key` up (`done`: remove it from the divider).
    pub fn release(&mut self, key: &str, token: u64, done: bool) -> Result<(), HandoffError> {
        self.check(key, token)?;
        self.keys.insert(key.to_string(), KeyState::Releasing { token, done });
        Ok(())
    }

    /// Stops whose deadline passed: they move to `Releasing`; returns `(key, token)` to tell
    /// the app (`Stop{TIMEOUT}`).
    pub fn timed_out(&mut self, now: Instant) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (k, s) in self.keys.iter_mut() {
            if let KeyState::Stopping { token, deadline } = *s {
                if now >= deadline {
                    *s = KeyState::Releasing { token, done: false };
                    out.push((k.clone(), token));
                }
            }
        }
        out
    }

    /// Keys whose release write is pending: `(key, token, done)`.
    pub fn releasing(&self) -> Vec<(String, u64, bool)> {
        self.keys
            .iter()
            .filter_map(|(k, s)| match *s {
                KeyState::Releasing { token, done } => Some((k.clone(), token, done)),
                _ => None,
            })
            .collect()
    }

    /// The release write of `key` at `token` landed (or the record moved on): the key is gone.
    pub fn released(&mut self, key: &str, token: u64) {
        if self.keys.get(key).is_some_and(|s| s.token() == token) {
            self.keys.remove(key);
        }
    }

    /// The session's right ended: every key is dropped at once; returns the keys the app still
    /// worked on or was stopping, to tell it (`Stop{LEASE_LOST}`).
    pub fn drop_all(&mut self) -> Vec<(String, u64)> {
        let out = self
            .keys
            .iter()
            .filter(|(_, s)| !matches!(s, KeyState::Releasing { .. }))
            .map(|(k, s)| (k.clone(), s.token()))
            .collect();
        self.keys.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn a_key_is_released_only_after_confirm_release_or_timeout() {
        let t0 = Instant::now();
        let mut h = Holdings::default();
        h.start("a", 3);
        h.start("b", 4);
        h.start("c", 9);
        assert!(h.releasing().is_empty());
        assert_eq!(h.stop("a", t0, TIMEOUT), Some(3));
        assert_eq!(h.stop("a", t0, TIMEOUT), None, "one Stop per key");
        assert_eq!(h.stop("b", t0, TIMEOUT), Some(4));
        // Nothing is released before the confirm or the deadline.
        assert!(h.timed_out(t0 + TIMEOUT - Duration::from_millis(1)).is_empty());
        assert!(h.releasing().is_empty());
        assert_eq!(h.confirm("a", 2), Err(HandoffError::WrongToken { key: "a".into(), given: 2, current: 3 }));
        assert_eq!(h.confirm("zz", 3), Err(HandoffError::NotHeld("zz".into())));
        assert_eq!(h.confirm("c", 9), Err(HandoffError::NotStopping("c".into())));
        h.confirm("a", 3).unwrap();
        h.confirm("a", 3).unwrap();
        assert_eq!(h.timed_out(t0 + TIMEOUT), vec![("b".to_string(), 4)]);
        h.release("c", 9, true).unwrap();
        assert_eq!(h.releasing(), vec![("a".into(), 3, false), ("b".into(), 4, false), ("c".into(), 9, true)]);
        // Still held (the record still names this session) until the release write lands.
        assert_eq!(h.len(), 3);
        h.released("a", 3);
        h.released("b", 99);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn a_lost_lease_drops_everything_and_reports_what_the_app_held() {
        let mut h = Holdings::default();
        h.start("a", 1);
        h.start("b", 2);
        h.start("c", 3);
        h.stop("b", Instant::now(), TIMEOUT);
        h.release("c", 3, false).unwrap();
        assert_eq!(h.drop_all(), vec![("a".to_string(), 1), ("b".to_string(), 2)]);
        assert!(h.is_empty());
    }
}
