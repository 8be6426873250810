//! Fenced appends: a batch may carry a precondition `(divider, key, token)`, and the stream
//! refuses it once an append carrying a higher token for the same `(divider, key)` was
//! appended. A work-divider owner passes the token of its `Start`; a new owner's first fenced
//! append closes the stream to every earlier owner, even one whose app never heard that it lost
//! the key (paused, cut off, or slow to read its Stop).
//!
//! The primary checks and records fences in the order batches take LSNs (its actor is the only
//! writer), so "a higher token was appended before" is decided at one point of the log. The
//! table is rebuilt from the log itself when a primary takes over: the first entry of a batch
//! stores its fence ([`super::segment`]), so a takeover cannot forget a fence that any
//! acknowledged entry carried (the recovered log holds every acknowledged entry, see
//! [`super`]). A refused batch takes no LSN and changes nothing.
//!
//! Test: `tests::a_lower_token_is_refused_after_a_higher_one_and_the_table_is_rebuilt`, the
//! primary's `a_fence_survives_a_takeover`, and in `e2e/tests/log.rs`
//! `a_deposed_divider_owner_cannot_append_with_its_old_token` (real processes: the old owner's
//! token is refused after the new owner appended, also through a forwarding sidecar; verified to
//! fail when the primary skips the check).

use std::collections::HashMap;

use super::{Fence, LogEntry};

/// Largest key of a fence, in bytes (the divider's own limit on keys).
pub const MAX_FENCE_KEY: usize = 256;

/// Checks a fence from a request before it reaches a primary.
pub fn validate(f: &Fence) -> Result<(), String> {
    if f.token == 0 {
        return Err("fence.token must be >= 1 (a divider's Start token)".into());
    }
    if f.key.is_empty() || f.key.len() > MAX_FENCE_KEY {
        return Err(format!("fence.key must be 1..={MAX_FENCE_KEY} bytes, got {}", f.key.len()));
    }
    if f.divider.len() > MAX_FENCE_KEY {
        return Err(format!("fence.divider must be at most {MAX_FENCE_KEY} bytes, got {}", f.divider.len()));
    }
    Ok(())
}

/// The highest token appended per `(divider, key)` of one stream, with the LSN of the first
/// entry that carried it.
#[derive(Debug, Clone, Default)]
pub struct FenceTable {
    highest: HashMap<(String, String), (u64, u64)>,
}

impl FenceTable {
    /// `Err(why)` when `fence` is below a token already appended to `stream`.
    pub fn check(&self, stream: &str, fence: Option<&Fence>) -> Result<(), String> {
        let Some(f) = fence else { return Ok(()) };
        match self.highest.get(&(f.divider.clone(), f.key.clone())) {
            Some(&(h, _)) if f.token < h => Err(format!(
                "fenced: token {} of key {:?} (divider {:?}) is older than token {h} already appended to stream {stream:?}; \
                 this owner lost the key",
                f.token, f.key, f.divider
            )),
            _ => Ok(()),
        }
    }

    /// Records a fence appended at `lsn`.
    pub fn record(&mut self, fence: Option<&Fence>, lsn: u64) {
        if let Some(f) = fence {
            let h = self.highest.entry((f.divider.clone(), f.key.clone())).or_insert((0, 0));
            if f.token > h.0 {
                *h = (f.token, lsn);
            }
        }
    }

    /// Rebuilds the table from entries of the log.
    pub fn observe(&mut self, e: &LogEntry) {
        self.record(e.fence.as_ref(), e.lsn);
    }

    /// The fences whose highest token was appended below `first`, as `(fence, lsn)`: what a
    /// primary needs to remember of the entries a trim at `first` removes.
    pub fn below(&self, first: u64) -> Vec<(Fence, u64)> {
        let mut out: Vec<(Fence, u64)> = self
            .highest
            .iter()
            .filter(|(_, (_, lsn))| *lsn < first)
            .map(|((divider, key), (token, lsn))| {
                (Fence { divider: divider.clone(), key: key.clone(), token: *token }, *lsn)
            })
            .collect();
        out.sort_by_key(|(_, lsn)| *lsn);
        out
    }

    /// Keys with a fence.
    pub fn len(&self) -> usize {
        self.highest.len()
    }

    /// No fence recorded.
    pub fn is_empty(&self) -> bool {
        self.highest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(key: &str, token: u64) -> Fence {
        Fence { divider: "d".into(), key: key.into(), token }
    }

    #[test]
    fn a_lower_token_is_refused_after_a_higher_one_and_the_table_is_rebuilt() {
        let mut t = FenceTable::default();
        assert!(t.check("s", Some(&f("k", 3))).is_ok());
        t.record(Some(&f("k", 3)), 1);
        assert!(t.check("s", Some(&f("k", 3))).is_ok(), "the same owner goes on");
        assert!(t.check("s", Some(&f("k", 5))).is_ok(), "a newer owner is let in");
        t.record(Some(&f("k", 5)), 2);
        let why = t.check("s", Some(&f("k", 3))).unwrap_err();
        assert!(why.starts_with("fenced: token 3 of key \"k\"") && why.contains("token 5"), "{why}");
        assert!(t.check("s", Some(&f("other", 1))).is_ok(), "per key");
        let other_divider = Fence { divider: "e".into(), key: "k".into(), token: 1 };
        assert!(t.check("s", Some(&other_divider)).is_ok(), "per divider");
        assert!(t.check("s", None).is_ok(), "unfenced appends are not checked");

        let mut rebuilt = FenceTable::default();
        for (lsn, token) in [(1, 3), (2, 5), (3, 4)] {
            rebuilt.observe(&LogEntry { lsn, fence: Some(f("k", token)), ..Default::default() });
        }
        assert!(rebuilt.check("s", Some(&f("k", 4))).is_err(), "the highest survives, not the last");
        assert_eq!(rebuilt.len(), 1);
        // The highest token was appended at LSN 2: a trim at 3 must remember it, one at 2 not.
        assert_eq!(rebuilt.below(3), vec![(f("k", 5), 2)]);
        assert!(rebuilt.below(2).is_empty());
    }

    #[test]
    fn bad_fences_are_invalid() {
        assert!(validate(&f("k", 0)).is_err());
        assert!(validate(&f("", 1)).is_err());
        assert!(validate(&f(&"x".repeat(MAX_FENCE_KEY + 1), 1)).is_err());
        assert!(validate(&f("k", 1)).is_ok());
    }
}
