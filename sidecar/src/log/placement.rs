//! Which members hold a stream: the `replication_factor` members with the highest
//! rendezvous hash of (stream, member id). Deterministic (every sidecar computes the same
//! list) and spread (each member is equally likely to hold any stream, and to be its first
//! replica, the preferred primary).

/// FNV-1a, 64 bits: stable across processes and versions (unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix, so that ids differing in one character spread over the whole range.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The `rf` members of `members` that hold `stream`, preferred primary first.
pub fn replicas(stream: &str, members: &[String], rf: usize) -> Vec<String> {
    let mut scored: Vec<(u64, &String)> =
        members.iter().map(|m| (fnv1a(&[stream.as_bytes(), m.as_bytes()]), m)).collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().take(rf).map(|(_, m)| m.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_deterministic_and_spread() {
        let members: Vec<String> = (0..5).map(|i| format!("m-{i}")).collect();
        assert_eq!(replicas("orders", &members, 3), replicas("orders", &members, 3));
        let mut first = std::collections::HashMap::new();
        let mut held = std::collections::HashMap::new();
        for s in 0..1000 {
            let r = replicas(&format!("s{s}"), &members, 3);
            assert_eq!(r.len(), 3);
            *first.entry(r[0].clone()).or_insert(0) += 1;
            for m in r {
                *held.entry(m).or_insert(0) += 1;
            }
        }
        // 1000 streams over 5 members: 200 first replicas and 600 copies each on average.
        for m in &members {
            assert!((140..=260).contains(&first[m]), "{m} first for {} streams", first[m]);
            assert!((520..=680).contains(&held[m]), "{m} holds {} streams", held[m]);
        }
    }
}
