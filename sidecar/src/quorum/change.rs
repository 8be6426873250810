//! The change algebra: what a round does to a register's value. Pure functions, no I/O.
//!
//! A proposer folds every change of a batch, in order, into one new value ([`apply_batch`]).
//! A change may be applied more than once to successive values when a round that carried it
//! failed after some acceptor took its accept (a later round may adopt that value) and the change
//! is retried. Each kind handles that:
//! - [`Change::Add`] (counters): the retry allocates a new range; the first one is skipped (a
//!   gap, never a reuse).
//! - [`Change::Write`] (versioned registers): every write carries a unique `write_id`, stored with
//!   the value; a write that finds its own id in the current value reports success without
//!   writing again. So a retried write is applied once.
//! - [`Change::Replace`] (versioned registers) carries a write id too: applied once.
//! - [`Change::Read`] changes nothing.

/// A change to a register's value, applied by the proposer to the current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Leave the value as it is (a linearizable read).
    Read,
    /// Treat the value as a big-endian u64 counter and move it from `max(value, start)` (absent:
    /// `start`) to that plus `n`: the range `[max(value, start), max(value, start) + n)`.
    Add {
        /// Amount to add.
        n: u64,
        /// Lowest value the range may start at (and the value of an absent register): skipping
        /// up to it leaves a gap, never a reuse.
        start: u64,
    },
    /// A versioned write (see [`Versioned`]): applies when the register's live version equals
    /// `expect_version` (0: absent or deleted).
    Write {
        /// Version the caller saw (0: absent).
        expect_version: u64,
        /// The new value; `None` deletes (leaves a tombstone that keeps the version counting).
        value: Option<Vec<u8>>,
        /// Unique id of this write (makes retries idempotent).
        write_id: u128,
    },
    /// A versioned write conditioned on the value instead of the version: applies when the
    /// register is absent or deleted, or its live value is exactly one of `replace`. One round
    /// where a compare-and-set needs a read first (the divider's claim of a key whose record
    /// names a session known dead: any version of that record may be replaced). The version
    /// still counts up by one, like every write.
    Replace {
        /// Live values that may be replaced (at most [`MAX_REPLACE`]).
        replace: Vec<Vec<u8>>,
        /// The new value.
        value: Vec<u8>,
        /// Unique id of this write (makes retries idempotent).
        write_id: u128,
    },
}

/// Most values one [`Change::Replace`] may replace.
pub const MAX_REPLACE: usize = 16;

/// What one change saw and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Value before the change.
    pub before: Option<Vec<u8>>,
    /// Value after the change (equal to `before` when not applied).
    pub after: Option<Vec<u8>>,
    /// False for a write whose expected version did not match.
    pub applied: bool,
}

/// Why a change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// No quorum answered before the deadline, and no acceptor was ever asked to take the
    /// change: it was not applied and never will be.
    #[error("quorum unavailable: {detail}")]
    Unavailable {
        /// Members that answered in the last attempt.
        answered: usize,
        /// Members asked.
        total: usize,
        /// Human-readable account of who answered what.
        detail: String,
    },
    /// The deadline passed after the change was sent to acceptors (or to another member): it
    /// may or may not have been applied, now or later. Re-read before acting.
    #[error("outcome unknown (the change may or may not have been applied; re-read before acting): {detail}")]
    OutcomeUnknown {
        /// Members that answered in the last attempt.
        answered: usize,
        /// Members asked.
        total: usize,
        /// Human-readable account of who answered what.
        detail: String,
    },
    /// The change cannot apply to the current value.
    #[error("{0}")]
    Invalid(String),
    /// This sidecar is shutting down.
    #[error("shutting down")]
    Closed,
}

impl ChangeError {
    /// The same failure, marked as possibly applied.
    pub fn maybe_applied(self) -> Self {
        match self {
            ChangeError::Unavailable { answered, total, detail } => {
                ChangeError::OutcomeUnknown { answered, total, detail }
            }
            other => other,
        }
    }

    /// True for failures of the quorum (retryable), false for a change that cannot apply.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ChangeError::Unavailable { .. } | ChangeError::OutcomeUnknown { .. } | ChangeError::Closed)
    }
}

/// Decodes a counter register value.
pub fn decode_u64(v: Option<&[u8]>) -> Option<u64> {
    v.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes)
}

/// The stored form of a versioned register: a version that increases with every write
/// (tombstones included, so a deleted and re-created register never repeats a version), the id
/// of the write that made it, and the value (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Number of writes so far (1 after the first).
    pub version: u64,
    /// Id of the write that produced this state.
    pub write_id: u128,
    /// The value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// First byte of an encoded [`Versioned`] (counters are exactly 8 bytes, so never confused:
/// an encoded [`Versioned`] is at least 26 bytes).
const VERSIONED_TAG: u8 = 0xA7;
const VERSIONED_HEADER: usize = 1 + 1 + 8 + 16;

impl Versioned {
    /// Encodes for storage in a register.
    pub fn encode(&self) -> Vec<u8> {
        let payload = self.value.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(VERSIONED_HEADER + payload.len());
        out.push(VERSIONED_TAG);
        out.push(u8::from(self.value.is_some()));
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.write_id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Decodes a register's value; `Ok(None)` for an absent register, `Err` for a register
    /// holding something else (a counter).
    pub fn decode(raw: Option<&[u8]>) -> Result<Option<Self>, ChangeError> {
        let Some(raw) = raw else { return Ok(None) };
        let bad = || ChangeError::Invalid("register does not hold a versioned value".into());
        if raw.len() < VERSIONED_HEADER || raw[0] != VERSIONED_TAG || raw[1] > 1 {
            return Err(bad());
        }
        let version = u64::from_be_bytes(raw[2..10].try_into().map_err(|_| bad())?);
        let write_id = u128::from_be_bytes(raw[10..26].try_into().map_err(|_| bad())?);
        let value = (raw[1] == 1).then(|| raw[VERSIONED_HEADER..].to_vec());
        Ok(Some(Self { version, write_id, value }))
    }

    /// The version a caller compares against: 0 when absent or deleted.
    pub fn live_version(v: Option<&Self>) -> u64 {
        v.filter(|v| v.value.is_some()).map_or(0, |v| v.version)
    }
}

impl Change {
    /// Applies the change to `current`.
    pub fn apply(&self, current: Option<&[u8]>) -> Result<Outcome, ChangeError> {
        let before = current.map(<[u8]>::to_vec);
        let unchanged = |applied| Ok(Outcome { after: before.clone(), before: before.clone(), applied });
        match self {
            Change::Read => unchanged(true),
            Change::Add { n, start } => {
                let x = match current {
                    None => *start,
                    Some(_) => decode_u64(current)
                        .ok_or_else(|| ChangeError::Invalid("register does not hold a counter".into()))?
                        .max(*start),
                };
                let y = x.checked_add(*n).ok_or_else(|| ChangeError::Invalid("counter would overflow u64".into()))?;
                Ok(Outcome { before: before.clone(), after: Some(y.to_be_bytes().to_vec()), applied: true })
            }
            Change::Write { expect_version, value, write_id } => {
                versioned_write(current, *write_id, value, |cur| Versioned::live_version(cur) == *expect_version)
            }
            Change::Replace { replace, value, write_id } => {
                let value = Some(value.clone());
                versioned_write(current, *write_id, &value, |cur| match cur.and_then(|c| c.value.as_ref()) {
                    None => true,
                    Some(live) => replace.iter().any(|r| r == live),
                })
            }
        }
    }
}

/// A write of `value` with id `write_id` to the versioned register holding `current`, applied
/// when `applies` holds for its state; reported applied without writing again when the
/// register already holds this very write (an earlier round of it was chosen).
fn versioned_write(
    current: Option<&[u8]>,
    write_id: u128,
    value: &Option<Vec<u8>>,
    applies: impl FnOnce(Option<&Versioned>) -> bool,
) -> Result<Outcome, ChangeError> {
    let before = current.map(<[u8]>::to_vec);
    let cur = Versioned::decode(current)?;
    if cur.as_ref().is_some_and(|c| c.write_id == write_id) {
        return Ok(Outcome { after: before.clone(), before, applied: true });
    }
    if !applies(cur.as_ref()) {
        return Ok(Outcome { after: before.clone(), before, applied: false });
    }
    let base = cur.map_or(0, |c| c.version);
    let version =
        base.checked_add(1).ok_or_else(|| ChangeError::Invalid("register version would overflow u64".into()))?;
    let next = Versioned { version, write_id, value: value.clone() };
    Ok(Outcome { before, after: Some(next.encode()), applied: true })
}

/// Applies `changes` in order to `current`; returns the new value and each outcome. A change
/// that cannot apply fails alone and leaves the value as it was.
pub fn apply_batch<'a>(
    changes: impl IntoIterator<Item = &'a Change>,
    current: Option<Vec<u8>>,
) -> (Option<Vec<u8>>, Vec<Result<Outcome, ChangeError>>) {
    let mut value = current;
    let outcomes = changes
        .into_iter()
        .map(|c| {
            let o = c.apply(value.as_deref());
            if let Ok(o) = &o {
                value = o.after.clone();
            }
            o
        })
        .collect();
    (value, outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn add_counts_from_start_and_checks_overflow() {
        let o = Change::Add { n: 5, start: 1 }.apply(None).unwrap();
        assert_eq!(decode_u64(o.after.as_deref()), Some(6));
        let o = Change::Add { n: 1, start: 1 }.apply(Some(&u64::MAX.to_be_bytes())).unwrap_err();
        assert!(o.to_string().contains("overflow"));
        assert!(Change::Add { n: 1, start: 1 }.apply(Some(b"abc")).is_err());
        // A lower bound above the counter skips up to it; below it changes nothing.
        let o = Change::Add { n: 2, start: 100 }.apply(Some(&7u64.to_be_bytes())).unwrap();
        assert_eq!((decode_u64(o.after.as_deref())), Some(102));
        let o = Change::Add { n: 2, start: 3 }.apply(Some(&7u64.to_be_bytes())).unwrap();
        assert_eq!((decode_u64(o.after.as_deref())), Some(9));
    }

    fn write(expect_version: u64, value: Option<&[u8]>, write_id: u128) -> Change {
        Change::Write { expect_version, value: value.map(<[u8]>::to_vec), write_id }
    }

    fn state(o: &Outcome) -> Versioned {
        Versioned::decode(o.after.as_deref()).unwrap().unwrap()
    }

    #[test]
    fn versions_count_every_write_including_deletes() {
        let created = write(0, Some(b"a"), 1).apply(None).unwrap();
        assert!(created.applied);
        assert_eq!(state(&created).version, 1);
        // Create again: the register exists, not applied.
        assert!(!write(0, Some(b"b"), 2).apply(created.after.as_deref()).unwrap().applied);
        // A stale version is refused, the current one applies.
        assert!(!write(7, Some(b"b"), 3).apply(created.after.as_deref()).unwrap().applied);
        let updated = write(1, Some(b"b"), 4).apply(created.after.as_deref()).unwrap();
        assert_eq!(state(&updated), Versioned { version: 2, write_id: 4, value: Some(b"b".to_vec()) });
        let deleted = write(2, None, 5).apply(updated.after.as_deref()).unwrap();
        assert_eq!(state(&deleted).value, None);
        assert_eq!(Versioned::live_version(Some(&state(&deleted))), 0);
        // Re-created after a delete: the version keeps counting (fencing tokens never repeat).
        let again = write(0, Some(b"c"), 6).apply(deleted.after.as_deref()).unwrap();
        assert_eq!(state(&again).version, 4);
    }

    #[test]
    fn replace_applies_only_to_an_absent_register_or_a_listed_value_and_counts_versions() {
        let replace = |values: &[&[u8]], value: &[u8], id| Change::Replace {
            replace: values.iter().map(|v| v.to_vec()).collect(),
            value: value.to_vec(),
            write_id: id,
        };
        // Absent: applies, version 1.
        let first = replace(&[b"dead"], b"mine", 1).apply(None).unwrap();
        assert!(first.applied);
        assert_eq!(state(&first).version, 1);
        // A live value not listed: not applied, nothing changes.
        let other = replace(&[b"dead"], b"theirs", 2).apply(first.after.as_deref()).unwrap();
        assert!(!other.applied);
        assert_eq!(other.after, first.after);
        // A listed value: applied at the next version (a fencing token above the last one).
        let taken = replace(&[b"x", b"mine"], b"next", 3).apply(first.after.as_deref()).unwrap();
        assert!(taken.applied);
        assert_eq!(state(&taken), Versioned { version: 2, write_id: 3, value: Some(b"next".to_vec()) });
        // The same write again (its round adopted by a later one): applied once.
        let retry = replace(&[b"x", b"mine"], b"next", 3).apply(taken.after.as_deref()).unwrap();
        assert!(retry.applied);
        assert_eq!(retry.after, taken.after);
        // Deleted: applies, and the version keeps counting.
        let deleted = write(2, None, 4).apply(taken.after.as_deref()).unwrap();
        let again = replace(&[], b"new", 5).apply(deleted.after.as_deref()).unwrap();
        assert!(again.applied);
        assert_eq!(state(&again).version, 4);
        // A counter is refused.
        let counter = Change::Add { n: 1, start: 1 }.apply(None).unwrap();
        assert!(replace(&[], b"v", 6).apply(counter.after.as_deref()).is_err());
    }

    #[test]
    fn a_retried_write_is_applied_once() {
        let first = write(0, Some(b"a"), 42).apply(None).unwrap();
        // The same write again (its first round's value was adopted by a later round).
        let retry = write(0, Some(b"a"), 42).apply(first.after.as_deref()).unwrap();
        assert!(retry.applied);
        assert_eq!(retry.after, first.after);
    }

    #[test]
    fn writes_refuse_counters_and_counters_refuse_versioned_values() {
        let counter = Change::Add { n: 1, start: 1 }.apply(None).unwrap();
        assert!(write(0, Some(b"x"), 1).apply(counter.after.as_deref()).is_err());
        let v = write(0, Some(b"x"), 1).apply(None).unwrap();
        assert!(Change::Add { n: 1, start: 1 }.apply(v.after.as_deref()).is_err());
    }

    #[test]
    fn a_failed_change_leaves_the_batch_going() {
        let changes = [write(0, Some(b"a"), 1), Change::Add { n: 1, start: 0 }, write(1, Some(b"b"), 2)];
        let (value, outcomes) = apply_batch(&changes, None);
        assert!(outcomes[0].as_ref().unwrap().applied);
        assert!(outcomes[1].is_err());
        assert!(outcomes[2].as_ref().unwrap().applied);
        assert_eq!(Versioned::decode(value.as_deref()).unwrap().unwrap().version, 2);
    }

    proptest! {
        #[test]
        fn versioned_codec_round_trips(version in any::<u64>(), id in any::<u128>(), v in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))) {
            let s = Versioned { version, write_id: id, value: v };
            prop_assert_eq!(Versioned::decode(Some(&s.encode())).unwrap(), Some(s));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Versioned::decode(Some(&bytes));
        }
    }
}
