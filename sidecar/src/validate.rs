//! Validation of names that come from apps, peers and configuration.

/// Longest accepted name (sequence names, member ids, register keys' user part).
pub const MAX_NAME_LEN: usize = 128;

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("name is {0} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    /// The name has a character outside `[A-Za-z0-9._-]`.
    #[error("name has a character outside [A-Za-z0-9._-] at byte {0}")]
    BadChar(usize),
    /// The name does not start with a letter or digit.
    #[error("name must start with a letter or a digit")]
    BadStart,
}

/// Checks a name: 1..=128 bytes of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if let Some(pos) = name.bytes().position(|b| !(b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')) {
        return Err(NameError::BadChar(pos));
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
        assert_eq!(validate_name("a/b"), Err(NameError::BadChar(1)));
        assert_eq!(validate_name("-a"), Err(NameError::BadStart));
        assert_eq!(validate_name("é"), Err(NameError::BadChar(0)));
    }

    proptest! {
        #[test]
        fn never_panics_and_accepted_names_are_clean(s in ".{0,200}") {
            if validate_name(&s).is_ok() {
                prop_assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN);
                prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            }
        }
    }
}
