//! The divider's assignment function: which member owns which key, computed alike by every
//! sidecar (and by any client that wants to) from the sorted key list and the members with
//! their affinities.
//!
//! Contract (every implementation must keep it; the divider and its tests rely on it):
//! - deterministic and platform independent: the same `(keys, members)` give the same owners on
//!   every machine and version of Ordo with the same [`ALGORITHM`] tag (hashes are spelled out
//!   here, never `std`'s randomised hasher);
//! - a member with affinity 0 owns no key; if any member has affinity > 0 every key has an owner;
//! - keys are divided in proportion to affinity.
//!
//! Current algorithm: weighted rendezvous hashing (each key goes to the member with the highest
//! `affinity / -ln(u)`, `u = hash(key, member)` in (0, 1)). It moves only keys whose owner changes
//! on leave and affinity change. Its balance bound is stated and tested beside the code.
//! FIRST VERSION: balance refinement (bounded-load pass) and the stated bounds are being built.

/// Tag of the algorithm; sidecars of one divider must agree on it.
pub const ALGORITHM: &str = "wrh-1";

/// One candidate owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Member id (unique within the divider).
    pub id: String,
    /// Affinity: 0 = no keys, otherwise keys in proportion to it.
    pub affinity: u32,
}

/// Owner of each key: `result[i]` is the index into `members` of the owner of `keys[i]`, or
/// `None` when no member has affinity > 0. `keys` should be sorted and unique (the divider's
/// stored order); the result does not depend on the order of `members`.
pub fn assign(keys: &[&str], members: &[Member]) -> Vec<Option<u32>> {
    let hashes: Vec<u64> = members.iter().map(|m| hash_bytes(m.id.as_bytes())).collect();
    keys.iter()
        .map(|key| {
            let k = hash_bytes(key.as_bytes());
            let mut best: Option<(f64, &str, u32)> = None;
            for (i, m) in members.iter().enumerate() {
                if m.affinity == 0 {
                    continue;
                }
                let score = weighted_score(mix(k ^ hashes[i].rotate_left(17)), m.affinity);
                let better = match best {
                    None => true,
                    // Ties (astronomically rare) go to the smaller id, so member order is moot.
                    Some((s, id, _)) => score > s || (score == s && m.id.as_str() < id),
                };
                if better {
                    best = Some((score, m.id.as_str(), i as u32));
                }
            }
            best.map(|(_, _, i)| i)
        })
        .collect()
}

/// `affinity / -ln(u)` with `u` in (0, 1) taken from the top 53 bits of `h`.
fn weighted_score(h: u64, affinity: u32) -> f64 {
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(affinity) / -u.ln()
}

/// FNV-1a 64 then a splitmix64 finaliser: stable across platforms and versions.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(a: &[(&str, u32)]) -> Vec<Member> {
        a.iter().map(|(id, affinity)| Member { id: id.to_string(), affinity: *affinity }).collect()
    }

    #[test]
    fn zero_affinity_owns_nothing_and_every_key_has_an_owner() {
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let m = members(&[("a", 1), ("b", 0), ("c", 3)]);
        let owners = assign(&keys, &m);
        assert!(owners.iter().all(|o| matches!(o, Some(0) | Some(2))));
        assert!(assign(&keys, &members(&[("a", 0)])).iter().all(Option::is_none));
    }

    #[test]
    fn member_order_does_not_matter() {
        let keys: Vec<String> = (0..500).map(|i| format!("k{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let m1 = members(&[("a", 1), ("b", 2), ("c", 3)]);
        let m2 = members(&[("c", 3), ("a", 1), ("b", 2)]);
        let ids = |m: &[Member], o: Vec<Option<u32>>| -> Vec<String> {
            o.into_iter().map(|i| m[i.unwrap() as usize].id.clone()).collect()
        };
        assert_eq!(ids(&m1, assign(&keys, &m1)), ids(&m2, assign(&keys, &m2)));
    }
}
