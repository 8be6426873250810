//! What the divider stores in registers: register names and the member and owner records,
//! encoded as a few newline-separated fields (`m1`/`o1` tagged, so a later format can differ).

use std::time::Duration;

use super::lease::LeaseTiming;
use crate::quorum::register::validate_key as validate_register_key;
use ordo_contract::validate::{validate_key as validate_work_key, validate_name};

/// Longest divider name (keeps every register name within the register key limit).
pub const MAX_DIVIDER_NAME: usize = 64;
/// Longest member address.
pub const MAX_ADDRESS: usize = 256;

/// Register names of one divider.
#[derive(Debug, Clone)]
pub struct Layout {
    base: String,
}

impl Layout {
    /// The layout of divider `name` (checked: a name of at most [`MAX_DIVIDER_NAME`] bytes).
    pub fn new(name: &str) -> Result<Self, String> {
        validate_name(name).map_err(|e| format!("divider name {name:?}: {e}"))?;
        if name.len() > MAX_DIVIDER_NAME {
            return Err(format!("divider name is {} bytes; the limit is {MAX_DIVIDER_NAME}", name.len()));
        }
        Ok(Self { base: format!("divider/{name}/") })
    }

    /// `divider/D/members/M`.
    pub fn member(&self, member: &str) -> String {
        format!("{}members/{member}", self.base)
    }
    /// Prefix of every member record.
    pub fn members_prefix(&self) -> String {
        format!("{}members/", self.base)
    }
    /// `divider/D/owners/N`: the owner records of the keys of bucket `N` ([`owner_bucket`]).
    pub fn owners(&self, bucket: u32) -> String {
        format!("{}owners/{bucket}", self.base)
    }
    /// The bucket register holding `key`'s owner record.
    pub fn owners_of(&self, key: &str) -> String {
        self.owners(owner_bucket(key))
    }
    /// `divider/D/keys/K` (a key added at run time).
    pub fn added(&self, key: &str) -> String {
        format!("{}keys/{key}", self.base)
    }
    /// Prefix of the added keys.
    pub fn added_prefix(&self) -> String {
        format!("{}keys/", self.base)
    }
    /// `divider/D/removed/K` (a static key removed at run time).
    pub fn removed(&self, key: &str) -> String {
        format!("{}removed/{key}", self.base)
    }
    /// Prefix of the removed static keys.
    pub fn removed_prefix(&self) -> String {
        format!("{}removed/", self.base)
    }
    /// `divider/D/handback/K`: the sessions that handed the key back (newline-separated).
    pub fn handback(&self, key: &str) -> String {
        format!("{}handback/{key}", self.base)
    }
    /// Prefix of the handed-back keys.
    pub fn handback_prefix(&self) -> String {
        format!("{}handback/", self.base)
    }
    /// `divider/D/keyset`: a counter bumped by every change of the run-time key set.
    pub fn keyset(&self) -> String {
        format!("{}keyset", self.base)
    }

    /// Checks a work key: a divider key (1..=128 bytes of `[A-Za-z0-9._/-]`) whose `/`-separated
    /// parts are names, so it fits in a register name.
    pub fn check_key(&self, key: &str) -> Result<(), String> {
        validate_work_key(key).map_err(|e| format!("key {key:?}: {e}"))?;
        validate_register_key(&self.added(key))
            .map_err(|_| format!("key {key:?}: every `/`-separated part must start with a letter or digit"))
    }
}

/// Number of owner buckets of a divider: every sidecar must agree on it (it is part of the
/// register layout). 256 buckets keep a bucket of a 100k-key divider at about 400 records
/// (~10 KB), and a dead member's keys are claimed in at most 256 writes per claimer.
pub const OWNER_BUCKETS: u32 = 256;

/// Tokens start above this: a token is its bucket write's version plus `TOKEN_BASE`. The per-key
/// layout before owner buckets used a key's own register version as its token, which never
/// comes near 2^32 (4 billion changes of one key's owner), so tokens issued after an upgrade
/// from it still exceed every token issued before, and a downstream that keeps the highest token
/// per key accepts the new owners.
pub const TOKEN_BASE: u64 = 1 << 32;

/// The owner bucket of `key` (a stable hash, the same on every sidecar and version).
pub fn owner_bucket(key: &str) -> u32 {
    (ordo_contract::assign::hash_bytes(key.as_bytes()) % u64::from(OWNER_BUCKETS)) as u32
}

/// State of a member session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Joined and renewing.
    Live,
    /// Left on its own, after its right to its keys ended.
    Left,
    /// Declared dead by an observer who saw its lease run out.
    Expired,
}

/// `divider/D/members/M`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// Random id of the session (one Watch, or its automatic re-join after a lost lease).
    pub session: String,
    /// Live, left or expired.
    pub state: MemberState,
    /// Affinity (0: no keys).
    pub affinity: u32,
    /// Where the member can be reached.
    pub address: String,
    /// One more than the record version replaced by the last write that changed session,
    /// state, affinity or address (renewals keep it): the sum over every member record, plus the key-set counter,
    /// is the assignment's version, which therefore grows only when the assignment's inputs do.
    pub changed: u64,
    /// The holder's lease and drift margin, ms (0: not recorded, a record of format `m1`).
    /// Observers wait at least these before they expire the member, whatever their own timing.
    pub lease_ms: u64,
    /// See `lease_ms`.
    pub margin_ms: u64,
    /// Owner records this session has released so far (0 in formats `m1`, `m2`). Only a
    /// hint for claimers: a claim that found a key owned by this live session waits until the
    /// count moves rather than retrying every pass (no safety rests on it).
    pub released: u64,
    /// Read from a record of format `m1`, `m2` or `m3`: written by a sidecar that may keep its
    /// owner records per key (`divider/D/owner/K`, the layout before owner buckets), which
    /// this sidecar cannot see. Sidecars of the bucket layout write `m4` from now on (see
    /// [`MemberRecord::encode`]); while such a record is live, they serve no keys (the mixed-
    /// version guard of [`super`]). Never encoded.
    pub per_key_layout: bool,
}

/// State of a key's ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// Owned by the named session (the record's version is the token).
    Owned,
    /// Given up by the named session (stop confirmed, timed out, or released by the app).
    Released,
}

/// The owner record of one key, inside its bucket ([`OwnerBucket`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRecord {
    /// Member id.
    pub member: String,
    /// Its session.
    pub session: String,
    /// Owned or released.
    pub state: OwnerState,
    /// Token of the ownership this record is about: the bucket's version written by the claim
    /// that made this owner.
    pub token: u64,
}

/// `divider/D/owners/N`: the owner records of the keys of bucket `N`, by key. A key without a
/// record was never owned (or its released record was pruned after the key left the key set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerBucket {
    /// Owner record of each key.
    pub owners: std::collections::BTreeMap<String, OwnerRecord>,
}

/// A record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed divider record: {0}")]
pub struct RecordError(String);

fn fields(raw: &[u8], tag: &str, n: usize) -> Result<Vec<String>, RecordError> {
    let text = std::str::from_utf8(raw).map_err(|_| RecordError("not UTF-8".into()))?;
    let f: Vec<String> = text.split('\n').map(str::to_string).collect();
    if f.len() != n || f[0] != tag {
        return Err(RecordError(format!("expected {n} fields tagged {tag}, got {text:?}")));
    }
    Ok(f)
}

impl MemberRecord {
    /// Encoded form.
    pub fn encode(&self) -> Vec<u8> {
        let state = match self.state {
            MemberState::Live => "live",
            MemberState::Left => "left",
            MemberState::Expired => "expired",
        };
        // `m4` has the fields of `m3`; its tag says "owner buckets" (sidecars of the per-key
        // layout cannot decode it, so they skip these records: see the guard in [`super`]).
        format!(
            "m4\n{}\n{state}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.session, self.affinity, self.changed, self.lease_ms, self.margin_ms, self.released, self.address
        )
        .into_bytes()
    }

    /// Decodes [`MemberRecord::encode`]'s output.
    pub fn decode(raw: &[u8]) -> Result<Self, RecordError> {
        // `m4` is `m3` written by a sidecar of the bucket layout; `m3` adds the release count to
        // `m2`, which added the holder's timing to `m1`; older formats read with zeros.
        let (f, per_key_layout) = match fields(raw, "m4", 9) {
            Ok(f) => (f, false),
            Err(_) => match fields(raw, "m3", 9) {
                Ok(f) => (f, true),
                Err(_) => {
                    let (mut f, missing) = match fields(raw, "m2", 8) {
                        Ok(f) => (f, 1),
                        Err(_) => (fields(raw, "m1", 6)?, 3),
                    };
                    let address = f.pop().unwrap_or_default();
                    f.extend(std::iter::repeat_n("0".to_string(), missing));
                    f.push(address);
                    (f, true)
                }
            },
        };
        let state = match f[2].as_str() {
            "live" => MemberState::Live,
            "left" => MemberState::Left,
            "expired" => MemberState::Expired,
            s => return Err(RecordError(format!("member state {s:?}"))),
        };
        let affinity = f[3].parse().map_err(|_| RecordError(format!("affinity {:?}", f[3])))?;
        let changed = f[4].parse().map_err(|_| RecordError(format!("changed {:?}", f[4])))?;
        let lease_ms = f[5].parse().map_err(|_| RecordError(format!("lease_ms {:?}", f[5])))?;
        let margin_ms = f[6].parse().map_err(|_| RecordError(format!("margin_ms {:?}", f[6])))?;
        let released = f[7].parse().map_err(|_| RecordError(format!("released {:?}", f[7])))?;
        Ok(Self {
            session: f[1].clone(),
            state,
            affinity,
            address: f[8].clone(),
            changed,
            lease_ms,
            margin_ms,
            released,
            per_key_layout,
        })
    }

    /// True when this record is a live session of a sidecar that may use the per-key owner
    /// layout (see [`MemberRecord::per_key_layout`]).
    pub fn live_per_key_layout(&self) -> bool {
        self.per_key_layout && self.state == MemberState::Live
    }

    /// The timing an observer judges this member's lease by: its own, lengthened to the holder's
    /// recorded lease and margin. Waiting longer than the holder's right is always safe; waiting
    /// by a shorter lease than the holder's would not be, so sidecars of one divider need not
    /// share their timing flags.
    pub fn observer_timing(&self, own: LeaseTiming) -> LeaseTiming {
        LeaseTiming {
            lease: own.lease.max(Duration::from_millis(self.lease_ms)),
            margin: own.margin.max(Duration::from_millis(self.margin_ms)),
        }
    }

    /// True when `other` differs in what the assignment depends on.
    pub fn differs(&self, other: &MemberRecord) -> bool {
        (&self.session, self.state, self.affinity, &self.address)
            != (&other.session, other.state, other.affinity, &other.address)
    }

    /// True when this record is the live session `session`.
    pub fn is_live_session(&self, session: &str) -> bool {
        self.state == MemberState::Live && self.session == session
    }
}

impl OwnerBucket {
    /// Encoded form: `b1`, then one line per `(member, session)` named (`s MEMBER SESSION`),
    /// then one per key (`k KEY SESSION_INDEX o|r TOKEN`), so a session shared by hundreds of
    /// keys is written once.
    pub fn encode(&self) -> Vec<u8> {
        let mut sessions: std::collections::BTreeMap<(&str, &str), usize> = std::collections::BTreeMap::new();
        let mut head = String::from("b1");
        let mut body = String::new();
        for (key, r) in &self.owners {
            let next = sessions.len();
            let i = *sessions.entry((r.member.as_str(), r.session.as_str())).or_insert_with(|| {
                head.push_str(&format!("\ns {} {}", r.member, r.session));
                next
            });
            let state = match r.state {
                OwnerState::Owned => 'o',
                OwnerState::Released => 'r',
            };
            body.push_str(&format!("\nk {key} {i} {state} {}", r.token));
        }
        head.push_str(&body);
        head.into_bytes()
    }

    /// Decodes [`OwnerBucket::encode`]'s output.
    pub fn decode(raw: &[u8]) -> Result<Self, RecordError> {
        let text = std::str::from_utf8(raw).map_err(|_| RecordError("not UTF-8".into()))?;
        let mut lines = text.split('\n');
        if lines.next() != Some("b1") {
            return Err(RecordError("owner bucket: expected tag b1".into()));
        }
        let bad = |l: &str| RecordError(format!("owner bucket line {l:?}"));
        let mut sessions: Vec<(String, String)> = Vec::new();
        let mut owners = std::collections::BTreeMap::new();
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["s", member, session] => sessions.push((member.to_string(), session.to_string())),
                ["k", key, i, state, token] => {
                    let (member, session) =
                        i.parse::<usize>().ok().and_then(|i| sessions.get(i)).ok_or_else(|| bad(line))?;
                    let state = match *state {
                        "o" => OwnerState::Owned,
                        "r" => OwnerState::Released,
                        _ => return Err(bad(line)),
                    };
                    let token = token.parse().map_err(|_| bad(line))?;
                    let rec = OwnerRecord { member: member.clone(), session: session.clone(), state, token };
                    if owners.insert(key.to_string(), rec).is_some() {
                        return Err(bad(line));
                    }
                }
                _ => return Err(bad(line)),
            }
        }
        Ok(Self { owners })
    }
}

/// Checks a member address: at most [`MAX_ADDRESS`] bytes, no line breaks.
pub fn check_address(address: &str) -> Result<(), String> {
    if address.len() > MAX_ADDRESS || address.contains(['\n', '\r']) {
        return Err(format!("address must be at most {MAX_ADDRESS} bytes without line breaks"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observers_wait_at_least_the_holders_recorded_lease() {
        let own = LeaseTiming { lease: Duration::from_millis(1000), margin: Duration::from_millis(100) };
        let mut m = MemberRecord {
            session: "s".into(),
            state: MemberState::Live,
            affinity: 1,
            address: String::new(),
            changed: 1,
            lease_ms: 10_000,
            margin_ms: 500,
            released: 0,
            per_key_layout: false,
        };
        let t = m.observer_timing(own);
        assert_eq!((t.lease, t.margin), (Duration::from_millis(10_000), Duration::from_millis(500)));
        m.lease_ms = 0;
        m.margin_ms = 0;
        assert_eq!(m.observer_timing(own).lease, own.lease, "an m1 record: the observer's own timing");
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let m = MemberRecord {
            session: "s1".into(),
            state: MemberState::Expired,
            affinity: 7,
            address: "10.0.0.1:80".into(),
            changed: 4,
            lease_ms: 3000,
            margin_ms: 300,
            released: 12,
            per_key_layout: false,
        };
        assert_eq!(MemberRecord::decode(&m.encode()).unwrap(), m);
        let m2 = MemberRecord::decode(b"m2\ns1\nexpired\n7\n4\n3000\n300\n10.0.0.1:80").unwrap();
        assert_eq!(m2, MemberRecord { released: 0, per_key_layout: true, ..m.clone() });
        // What a sidecar of the per-key owner layout wrote (its last format, `m3`) reads as such.
        let m3 = MemberRecord::decode(b"m3\ns1\nlive\n7\n4\n3000\n300\n12\n10.0.0.1:80").unwrap();
        assert_eq!(m3, MemberRecord { state: MemberState::Live, per_key_layout: true, ..m.clone() });
        assert!(m3.live_per_key_layout() && !m2.live_per_key_layout());
        assert!(m.encode().starts_with(b"m4\n"), "this layout writes m4");
        // A record written before the timing was recorded still reads, with no timing.
        let old = MemberRecord::decode(b"m1\ns1\nlive\n7\n4\n10.0.0.1:80").unwrap();
        assert_eq!((old.lease_ms, old.margin_ms, old.address.as_str()), (0, 0, "10.0.0.1:80"));
        let rec = |m: &str, s: &str, state, token| OwnerRecord { member: m.into(), session: s.into(), state, token };
        let mut b = OwnerBucket::default();
        b.owners.insert("k1".into(), rec("a", "s1", OwnerState::Owned, 9));
        b.owners.insert("k2".into(), rec("b", "s2", OwnerState::Released, 4));
        b.owners.insert("eu/k3".into(), rec("a", "s1", OwnerState::Owned, 7));
        assert_eq!(OwnerBucket::decode(&b.encode()).unwrap(), b);
        assert_eq!(OwnerBucket::decode(b"b1").unwrap(), OwnerBucket::default());
        assert!(MemberRecord::decode(b"m1\ns\nzombie\n1\n0\n").is_err());
        for bad in
            [&b"x"[..], &[0xff, 0xfe], b"b1\nk k1 0 o 1", b"b1\ns a s\nk k1 0 x 1", b"b1\ns a s\nk k 0 o 1\nk k 0 o 2"]
        {
            assert!(OwnerBucket::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn buckets_are_stable_and_spread_keys() {
        // Part of the register layout: a change would split one key's records over two buckets.
        assert_eq!(owner_bucket("k-000000"), owner_bucket("k-000000"));
        let mut count = vec![0u32; OWNER_BUCKETS as usize];
        for i in 0..100_000 {
            count[owner_bucket(&format!("k-{i:06}")) as usize] += 1;
        }
        let (lo, hi) = (count.iter().min().unwrap(), count.iter().max().unwrap());
        assert!(*lo > 300 && *hi < 500, "bucket sizes {lo}..{hi} at 100k keys");
    }

    #[test]
    fn keys_must_fit_a_register_name() {
        let l = Layout::new("stocks").unwrap();
        assert!(l.check_key("eu/west-1").is_ok());
        assert!(l.check_key("a//b").is_err());
        assert!(l.check_key(&"k".repeat(129)).is_err());
        assert!(Layout::new(&"d".repeat(65)).is_err());
        assert!(check_address("a\nb").is_err());
    }
}
