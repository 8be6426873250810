//! The key set of a divider: the static keys of its config, plus the keys added at run time,
//! minus the static keys removed at run time; and the checks on a batch of keys from an app.

use std::collections::BTreeSet;

use ordo_contract::divider::DividerKeys;

use super::records::Layout;

/// Most keys in one AddKeys or RemoveKeys call.
pub const MAX_KEYS_PER_CALL: usize = 10_000;

/// The static keys of a config, sorted.
pub fn static_keys(keys: &DividerKeys) -> Vec<String> {
    let mut out: Vec<String> = match (&keys.partitions, &keys.prefix, &keys.names) {
        (Some(n), Some(prefix), _) => (0..*n).map(|i| format!("{prefix}{i}")).collect(),
        (_, _, Some(names)) => names.clone(),
        _ => Vec::new(),
    };
    out.sort();
    out.dedup();
    out
}

/// The key set: `static_keys` (sorted) plus `added`, minus `removed`, sorted and unique.
pub fn key_set(static_keys: &[String], added: &[String], removed: &BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> =
        static_keys.iter().filter(|k| !removed.contains(*k)).chain(added.iter()).cloned().collect();
    out.sort();
    out.dedup();
    out
}

/// Checks a batch of keys from an app: 1..=[`MAX_KEYS_PER_CALL`] valid keys, no duplicates;
/// every problem is named (up to ten), so a bad batch changes nothing.
pub fn check_batch(layout: &Layout, keys: &[String]) -> Result<(), String> {
    if keys.is_empty() || keys.len() > MAX_KEYS_PER_CALL {
        return Err(format!("a call takes 1 to {MAX_KEYS_PER_CALL} keys, got {}", keys.len()));
    }
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for k in keys {
        if let Err(e) = layout.check_key(k) {
            problems.push(e);
        } else if !seen.insert(k.as_str()) {
            problems.push(format!("key {k:?} appears twice"));
        }
        if problems.len() == 10 {
            problems.push("...".into());
            break;
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_set_merges_static_added_and_removed() {
        let keys = DividerKeys { partitions: Some(3), prefix: Some("p-".into()), names: None };
        let s = static_keys(&keys);
        assert_eq!(s, vec!["p-0", "p-1", "p-2"]);
        let removed: BTreeSet<String> = ["p-1".to_string()].into();
        assert_eq!(key_set(&s, &["a".into(), "p-2".into()], &removed), vec!["a", "p-0", "p-2"]);
    }

    #[test]
    fn a_bad_batch_names_its_problems() {
        let l = Layout::new("d").unwrap();
        assert!(check_batch(&l, &[]).is_err());
        let e = check_batch(&l, &["a".into(), "a".into(), "".into(), "x".repeat(200)]).unwrap_err();
        assert!(e.contains("appears twice") && e.contains("\"\"") && e.contains("xxx"), "{e}");
        let many: Vec<String> = (0..=MAX_KEYS_PER_CALL).map(|i| format!("k{i}")).collect();
        assert!(check_batch(&l, &many).unwrap_err().contains("1 to 10000"));
        assert!(check_batch(&l, &many[..MAX_KEYS_PER_CALL]).is_ok());
    }
}
