//! The typed register API: what the sequencer, log streams and the divider build on.
//!
//! A register is a named, versioned value in the quorum store. Calls:
//! - [`Registers::read`]: the current value and its version (linearizable);
//! - [`Registers::compare_and_set`]: replace the value if the version is still the one you read;
//! - [`Registers::create`]: set the value if the register is absent (or deleted);
//! - [`Registers::delete`]: remove the value if the version matches;
//! - [`Registers::list`]: keys under a prefix, in key order, one page at a time;
//! - [`Registers::add`] and [`Registers::counter`]: counter registers (the sequencer's), whose
//!   additions return the range `[before, after)`.
//!
//! # Guarantees
//! - Every call but `list` is linearizable: it takes effect at one instant between its start and
//!   its reply.
//! - Versions strictly increase per register across every write, deletes and re-creations
//!   included (a tombstone keeps counting), so a version is a fencing token: a holder that saw
//!   version `v` can be told apart from every later holder.
//! - A write is applied at most once, even when the proposer retries it after a lost reply (each
//!   write carries a unique id stored with the value; see [`super::change`]).
//! - **A call that fails with [`RegisterError::OutcomeUnknown`] may or may not have taken effect,
//!   now or later** (it reached acceptors, or another member, before the deadline ran out).
//!   Re-read before acting; do not assume it failed. [`RegisterError::Unavailable`] means it was
//!   never applied and never will be.
//! - `list` returns every key whose creation completed before the call started and that was not
//!   deleted before it started; keys created or deleted concurrently may or may not appear. It
//!   reads a read quorum of acceptors without a round, so it is cheap; read a key to act on it.
//!
//! Tests: `sidecar/tests/register_sim.rs` (racing compare-and-set with a linearizability
//! checker on a lossy network, ambiguous outcomes after timeouts), `e2e/tests/registers.rs`
//! (real processes).

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use tokio::time::Instant;

use super::change::{decode_u64, Change, ChangeError, Outcome, Versioned};
use super::proposer::Proposer;
use super::transport::{KeyPage, Peers};
use super::Ballot;
use crate::validate::validate_name;

/// Longest register key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest register value, in bytes (the stored form adds a small header).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most keys in one page of [`Registers::list`].
pub const MAX_PAGE: usize = 1000;

/// A register's value and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Strictly increasing per register (a fencing token).
    pub version: u64,
    /// The value.
    pub value: Vec<u8>,
}

/// What a conditional write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Applied; the register's new version.
    Applied {
        /// Version after the write.
        version: u64,
    },
    /// Not applied: the register was not at the expected version (or, for create, existed).
    Conflict {
        /// What the register holds (`None`: absent or deleted).
        current: Option<Entry>,
    },
}

/// One page of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Keys in order.
    pub keys: Vec<String>,
    /// Pass as `after` for the next page; `None` when this was the last.
    pub next_after: Option<String>,
}

/// Why a register call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The request itself is wrong (key, value size, version, page size).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The change cannot apply to what the register holds (a versioned value where a counter is
    /// expected or the other way round, or a counter that would overflow).
    #[error("register {key:?}: {reason}")]
    Refused {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Not applied, and never will be: no quorum answered.
    #[error("quorum unavailable ({answered} of {total} members answered): {detail}")]
    Unavailable {
        /// Members that answered.
        answered: usize,
        /// Members asked.
        total: usize,
        /// Who answered what.
        detail: String,
    },
    /// May or may not have taken effect: re-read before acting.
    #[error("outcome unknown ({answered} of {total} members answered; re-read before acting): {detail}")]
    OutcomeUnknown {
        /// Members that answered.
        answered: usize,
        /// Members asked.
        total: usize,
        /// Who answered what.
        detail: String,
    },
    /// This sidecar is shutting down.
    #[error("shutting down")]
    Closed,
}

impl RegisterError {
    fn from_change(key: &str, e: ChangeError) -> Self {
        match e {
            ChangeError::Unavailable { answered, total, detail } => Self::Unavailable { answered, total, detail },
            ChangeError::OutcomeUnknown { answered, total, detail } => Self::OutcomeUnknown { answered, total, detail },
            ChangeError::Invalid(reason) => Self::Refused { key: key.to_string(), reason },
            ChangeError::Closed => Self::Closed,
        }
    }
}

/// Checks a register key: 1..=256 bytes of `/`-separated names (see [`validate_name`]).
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("key must be 1..={MAX_KEY_BYTES} bytes, got {}", key.len()));
    }
    for part in key.split('/') {
        validate_name(part).map_err(|e| format!("key {key:?}: {e}"))?;
    }
    Ok(())
}

fn validate_value(value: &[u8]) -> Result<(), RegisterError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(RegisterError::Invalid(format!("value is {} bytes; the limit is {MAX_VALUE_BYTES}", value.len())));
    }
    Ok(())
}

fn entry(v: Option<Versioned>) -> Option<Entry> {
    v.and_then(|v| v.value.map(|value| Entry { version: v.version, value }))
}

/// The typed register API over a [`Proposer`].
pub struct Registers<P: Peers> {
    proposer: Proposer<P>,
    timeout: Duration,
}

impl<P: Peers> Clone for Registers<P> {
    fn clone(&self) -> Self {
        Self { proposer: self.proposer.clone(), timeout: self.timeout }
    }
}

impl<P: Peers> Registers<P> {
    /// Registers served by `proposer`; each call waits at most `timeout`.
    pub fn new(proposer: Proposer<P>, timeout: Duration) -> Self {
        Self { proposer, timeout }
    }

    async fn change(&self, key: &str, change: Change, deadline: Instant) -> Result<Outcome, RegisterError> {
        validate_key(key).map_err(RegisterError::Invalid)?;
        self.proposer.change(key, change, deadline).await.map_err(|e| RegisterError::from_change(key, e))
    }

    async fn run(
        &self,
        key: &str,
        change: Change,
    ) -> Result<(Option<Versioned>, Option<Versioned>, bool), RegisterError> {
        let o = self.change(key, change, Instant::now() + self.timeout).await?;
        let decode = |raw: Option<&[u8]>| {
            Versioned::decode(raw).map_err(|e| RegisterError::Refused { key: key.to_string(), reason: e.to_string() })
        };
        Ok((decode(o.before.as_deref())?, decode(o.after.as_deref())?, o.applied))
    }

    /// Moves the counter register `key` from `max(value, start)` (absent: `start`) on by `n`, by
    /// `deadline`; returns that range. A retried addition after a lost reply skips IDs, never
    /// repeats them.
    pub async fn add(&self, key: &str, n: u64, start: u64, deadline: Instant) -> Result<Range<u64>, RegisterError> {
        let o = self.change(key, Change::Add { n, start }, deadline).await?;
        let refused = || RegisterError::Refused { key: key.to_string(), reason: "does not hold a counter".into() };
        let before = match o.before.as_deref() {
            None => start,
            v => decode_u64(v).ok_or_else(refused)?.max(start),
        };
        let after = decode_u64(o.after.as_deref()).ok_or_else(refused)?;
        Ok(before..after)
    }

    /// The value of the counter register `key`; `None` when absent (linearizable).
    pub async fn counter(&self, key: &str) -> Result<Option<u64>, RegisterError> {
        let o = self.change(key, Change::Read, Instant::now() + self.timeout).await?;
        match o.before.as_deref() {
            None => Ok(None),
            v => decode_u64(v).map(Some).ok_or_else(|| RegisterError::Refused {
                key: key.to_string(),
                reason: "does not hold a counter".into(),
            }),
        }
    }

    async fn write(&self, key: &str, expect_version: u64, value: Option<Vec<u8>>) -> Result<Written, RegisterError> {
        let write_id = rand::random::<u128>();
        let (_, after, applied) = self.run(key, Change::Write { expect_version, value, write_id }).await?;
        Ok(if applied {
            Written::Applied { version: after.map_or(0, |v| v.version) }
        } else {
            Written::Conflict { current: entry(after) }
        })
    }

    /// The register's value and version; `None` when absent or deleted.
    pub async fn read(&self, key: &str) -> Result<Option<Entry>, RegisterError> {
        Ok(entry(self.run(key, Change::Read).await?.1))
    }

    /// Sets `value` if the register is at `version` (as returned by [`Registers::read`]).
    pub async fn compare_and_set(&self, key: &str, version: u64, value: Vec<u8>) -> Result<Written, RegisterError> {
        if version == 0 {
            return Err(RegisterError::Invalid(
                "version must be at least 1 (use create for an absent register)".into(),
            ));
        }
        validate_value(&value)?;
        self.write(key, version, Some(value)).await
    }

    /// Sets `value` if the register is absent or deleted.
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<Written, RegisterError> {
        validate_value(&value)?;
        self.write(key, 0, Some(value)).await
    }

    /// Sets `value` if the register is absent or deleted, or its live value is exactly one of
    /// `replace` (at most [`MAX_REPLACE`](super::change::MAX_REPLACE)): a compare-and-set
    /// against values, in one round where [`Registers::compare_and_set`] needs a read first. On
    /// a conflict, the register's value and version.
    pub async fn replace(&self, key: &str, replace: Vec<Vec<u8>>, value: Vec<u8>) -> Result<Written, RegisterError> {
        if replace.len() > super::change::MAX_REPLACE {
            return Err(RegisterError::Invalid(format!(
                "at most {} values may be replaced, got {}",
                super::change::MAX_REPLACE,
                replace.len()
            )));
        }
        validate_value(&value)?;
        for r in &replace {
            validate_value(r)?;
        }
        let write_id = rand::random::<u128>();
        let (_, after, applied) = self.run(key, Change::Replace { replace, value, write_id }).await?;
        Ok(if applied {
            Written::Applied { version: after.map_or(0, |v| v.version) }
        } else {
            Written::Conflict { current: entry(after) }
        })
    }

    /// Deletes the value if the register is at `version`.
    pub async fn delete(&self, key: &str, version: u64) -> Result<Written, RegisterError> {
        if version == 0 {
            return Err(RegisterError::Invalid("version must be at least 1".into()));
        }
        self.write(key, version, None).await
    }

    /// Up to `limit` keys under `prefix` after `after` (exclusive; `None` from the start).
    pub async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, RegisterError> {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(RegisterError::Invalid(format!("page size must be 1..={MAX_PAGE}, got {limit}")));
        }
        if prefix.len() > MAX_KEY_BYTES || after.is_some_and(|a| a.len() > MAX_KEY_BYTES) {
            return Err(RegisterError::Invalid(format!("prefix and after are limited to {MAX_KEY_BYTES} bytes")));
        }
        let cfg = self.proposer.config();
        let members: Vec<_> = cfg.all_members().into_iter().cloned().collect();
        let deadline = Instant::now() + self.timeout;
        let after = after.unwrap_or("");
        let (peers, epoch) = (self.proposer.peers(), cfg.epoch);
        let calls = members.iter().map(|m| async move {
            let t = deadline.saturating_duration_since(Instant::now());
            (m.id.as_str(), peers.list_keys(m, epoch, prefix, after, limit, t).await)
        });
        let mut pages: Vec<(&str, KeyPage)> = Vec::new();
        let mut failures = Vec::new();
        for (id, r) in futures::future::join_all(calls).await {
            match r {
                Ok(p) => pages.push((id, p)),
                Err(e) => failures.push(format!("{id}: {e}")),
            }
        }
        if !cfg.is_read_quorum(pages.iter().map(|(id, _)| *id)) {
            let answered = pages.len();
            let mut detail = format!("{answered} of {} members answered the list", members.len());
            for f in failures {
                detail.push_str("; ");
                detail.push_str(&f);
            }
            return Err(RegisterError::Unavailable { answered, total: members.len(), detail });
        }
        Ok(merge_pages(pages.into_iter().map(|(_, p)| p).collect(), limit))
    }
}

/// Merges the pages of a read quorum: each key's state is that of its highest accepted ballot
/// among the answers (a write completed before the list started is at a write quorum, which
/// meets every read quorum, so it is seen, or something later is). The page ends where every
/// answer that was cut short is still complete.
pub fn merge_pages(pages: Vec<KeyPage>, limit: usize) -> Page {
    let bound: Option<String> =
        pages.iter().filter(|p| !p.complete).filter_map(|p| p.keys.last().map(|k| k.key.clone())).min();
    let mut best: BTreeMap<String, (Ballot, bool)> = BTreeMap::new();
    for k in pages.into_iter().flat_map(|p| p.keys) {
        if bound.as_ref().is_some_and(|b| k.key > *b) {
            continue;
        }
        let e = best.entry(k.key).or_insert((Ballot::default(), false));
        if k.accepted >= e.0 {
            *e = (k.accepted, k.live);
        }
    }
    let live: Vec<String> = best.into_iter().filter(|(_, (_, live))| *live).map(|(k, _)| k).collect();
    // Keys past `limit` are dropped: the next page starts after the last one returned, or else
    // after the bound up to which every answer was complete.
    let cut = live.len() > limit;
    let keys: Vec<String> = live.into_iter().take(limit).collect();
    let next_after = if cut { keys.last().cloned() } else { bound };
    Page { keys, next_after }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::transport::ListedKey;

    fn listed(key: &str, round: u64, live: bool) -> ListedKey {
        ListedKey { key: key.into(), accepted: Ballot::new(round, "p"), live }
    }

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("log/orders/meta").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key("a//b").is_err());
        assert!(validate_key(&"a".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn merge_takes_the_highest_ballot_and_stops_where_an_answer_was_cut() {
        let a = KeyPage {
            keys: vec![listed("k1", 3, true), listed("k2", 5, false), listed("k3", 1, true)],
            complete: false,
        };
        let b = KeyPage { keys: vec![listed("k1", 2, false), listed("k2", 4, true)], complete: true };
        let page = merge_pages(vec![a, b], 10);
        // k2's newest state is a tombstone; k3 is included (a's page was cut after it).
        assert_eq!(page.keys, vec!["k1".to_string(), "k3".to_string()]);
        assert_eq!(page.next_after.as_deref(), Some("k3"));
        let done = merge_pages(vec![KeyPage { keys: vec![listed("x", 1, true)], complete: true }], 10);
        assert_eq!(done.next_after, None);
    }

    #[test]
    fn merge_respects_the_limit() {
        let a =
            KeyPage { keys: vec![listed("a", 1, true), listed("b", 1, true), listed("c", 1, true)], complete: true };
        let page = merge_pages(vec![a], 2);
        assert_eq!(page.keys, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(page.next_after.as_deref(), Some("b"));
    }
}
