//! Validation of names that come from apps, peers and configuration.
//!
//! Two alphabets: names (sequences, member ids, WorkDivider and SeqCluster names) are
//! `[A-Za-z0-9._-]`; work keys of a divider may also hold `/` (e.g. `eu/orders-7`), as the
//! WorkDivider CRD's schema allows. Both start with a letter or digit and hold 1..=128 bytes.

/// Longest accepted name or key (sequence names, member ids, register keys' user part).
pub const MAX_NAME_LEN: usize = 128;

/// Characters of a name besides ASCII letters and digits.
const NAME_PUNCT: &[u8] = b"._-";
/// Characters of a work key besides ASCII letters and digits.
const KEY_PUNCT: &[u8] = b"._/-";

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("name is {0} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    /// The name has a character outside its alphabet.
    #[error("name has a character outside {allowed} at byte {at}")]
    BadChar {
        /// Byte offset of the first bad character.
        at: usize,
        /// The alphabet, as a character class.
        allowed: &'static str,
    },
    /// The name does not start with a letter or digit.
    #[error("name must start with a letter or a digit")]
    BadStart,
}

/// Checks a name: 1..=128 bytes of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    check(name, NAME_PUNCT, "[A-Za-z0-9._-]")
}

/// Checks a work key of a divider: 1..=128 bytes of `[A-Za-z0-9._/-]`, starting with a letter
/// or digit.
pub fn validate_key(key: &str) -> Result<(), NameError> {
    check(key, KEY_PUNCT, "[A-Za-z0-9._/-]")
}

/// True when every byte of `s` is an ASCII letter, digit or one of a work key's punctuation
/// characters (for key prefixes, which may be empty and need not start with a letter).
pub fn is_key_text(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || KEY_PUNCT.contains(&b))
}

fn check(name: &str, punct: &[u8], allowed: &'static str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if let Some(at) = name.bytes().position(|b| !(b.is_ascii_alphanumeric() || punct.contains(&b))) {
        return Err(NameError::BadChar { at, allowed });
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(NameError::BadStart);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_rejects() {
        assert_eq!(validate_name("orders-2024.v1_a"), Ok(()));
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(&"a".repeat(129)), Err(NameError::TooLong(129)));
        assert_eq!(validate_name("a/b"), Err(NameError::BadChar { at: 1, allowed: "[A-Za-z0-9._-]" }));
        assert_eq!(validate_name("-a"), Err(NameError::BadStart));
        assert_eq!(validate_name("é"), Err(NameError::BadChar { at: 0, allowed: "[A-Za-z0-9._-]" }));
    }

    #[test]
    fn keys_may_hold_slashes() {
        assert_eq!(validate_key("eu/orders-7"), Ok(()));
        assert_eq!(validate_key("/eu"), Err(NameError::BadStart));
        assert_eq!(validate_key("a b"), Err(NameError::BadChar { at: 1, allowed: "[A-Za-z0-9._/-]" }));
        assert!(is_key_text("") && is_key_text("p-/x") && !is_key_text("p "));
    }

    proptest! {
        #[test]
        fn never_panics_and_accepted_names_are_clean(s in ".{0,200}") {
            if validate_name(&s).is_ok() {
                prop_assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN);
                prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            }
            if validate_key(&s).is_ok() {
                prop_assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN && is_key_text(&s));
            }
        }
    }
}
