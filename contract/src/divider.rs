//! The WorkDivider config file: what a WorkDivider's ConfigMap holds for its pods
//! (`divider.yaml`): which divider and SeqCluster, the static keys, the default affinity, the
//! lease and stop timeout.
//!
//! The operator validates the spec's keys with [`DividerKeys::problems`] and renders the file
//! with [`DividerConfig::to_yaml`]; the sidecar reads it at startup (`--divider-config`) with
//! [`DividerConfig::load`], which refuses a file that does not parse or breaks a rule, naming
//! every broken rule at once. Fields are required (no serde defaults), so a field renamed on
//! one side is an error, not a silent default; unknown fields are ignored so a newer operator
//! may add some. Its divider is the sidecar's default for `ordo.v1.Divider` calls that name none,
//! and its `lease_ms` and `stop_timeout_ms` set the divider's timing.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::validate::{is_key_text, validate_key, validate_name};

/// Most static keys a divider may have (numbered partitions or names).
pub const MAX_STATIC_KEYS: usize = 65_536;
/// Longest prefix of numbered keys.
pub const MAX_PREFIX_LEN: usize = 64;
/// Default length of a member's lease on its keys, in milliseconds.
pub const DEFAULT_LEASE_MS: u64 = 10_000;
/// Shortest lease (renewals must fit well inside it on a loaded node).
pub const MIN_LEASE_MS: u64 = 1_000;
/// Longest lease.
pub const MAX_LEASE_MS: u64 = 600_000;
/// Default time a key's old owner gets to confirm its stop before the key moves without it.
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 30_000;
/// Longest stop timeout.
pub const MAX_STOP_TIMEOUT_MS: u64 = 3_600_000;

/// The divider config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DividerConfig {
    /// The WorkDivider's name (the key space).
    pub divider: String,
    /// The SeqCluster whose quorum store holds keys and leases.
    pub seq_cluster: String,
    /// Epoch of the SeqCluster member list copied beside this file.
    pub seq_cluster_epoch: u64,
    /// Affinity of a pod until it sets its own: higher means proportionally more keys, 0 none.
    pub default_affinity: i64,
    /// Static keys.
    pub keys: DividerKeys,
    /// Length of a member's lease on its keys, ms: a member that cannot renew it stops its keys
    /// before it can expire; after it expires its keys move.
    pub lease_ms: u64,
    /// How long a key's old owner has to confirm a stop; after it the old token is dead and the
    /// key moves anyway.
    pub stop_timeout_ms: u64,
}

/// Static keys: `partitions` numbered keys `<prefix><i>` (`i` in `0..partitions`), or `names`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DividerKeys {
    /// Number of numbered keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Prefix of numbered keys (present exactly when `partitions` is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Explicit key names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

/// One broken rule: the field (as the file spells it) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path in the file, e.g. `keys.names`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a divider config file is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DividerConfigError {
    /// The file could not be read.
    #[error("divider config {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// YAML/JSON syntax or shape.
    #[error("divider config does not parse: {0}")]
    Parse(String),
    /// Broken rules, all of them.
    #[error("divider config is invalid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

impl DividerKeys {
    /// Every broken rule of the static keys (empty when they are usable).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut add = |field, message: String| out.push(Problem { field, message });
        match (&self.partitions, &self.names) {
            (Some(_), Some(_)) | (None, None) => add("keys", "set exactly one of partitions or names".into()),
            (Some(p), None) if *p < 1 || *p as usize > MAX_STATIC_KEYS => {
                add("keys.partitions", format!("must be between 1 and {MAX_STATIC_KEYS}, got {p}"))
            }
            _ => {}
        }
        match (&self.partitions, &self.prefix) {
            (Some(_), None) => add("keys.prefix", "is required with keys.partitions".into()),
            (None, Some(_)) => add("keys.prefix", "only applies to keys.partitions".into()),
            (Some(_), Some(prefix)) if prefix.len() > MAX_PREFIX_LEN || !is_key_text(prefix) => {
                add("keys.prefix", format!("{prefix:?} must be at most {MAX_PREFIX_LEN} characters of [A-Za-z0-9._/-]"))
            }
            _ => {}
        }
        if let Some(names) = &self.names {
            if names.is_empty() || names.len() > MAX_STATIC_KEYS {
                add("keys.names", format!("must hold 1 to {MAX_STATIC_KEYS} names, got {}", names.len()));
            }
            let mut seen = BTreeSet::new();
            for n in names {
                if let Err(e) = validate_key(n) {
                    add("keys.names", format!("{n:?}: {e}"));
                } else if !seen.insert(n) {
                    add("keys.names", format!("{n:?} appears twice"));
                }
            }
        }
        out
    }
}

impl DividerConfig {
    /// Every broken rule of the file (empty when it is usable).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (field, name) in [("divider", &self.divider), ("seq_cluster", &self.seq_cluster)] {
            if let Err(e) = validate_name(name) {
                out.push(Problem { field, message: format!("{name:?}: {e}") });
            }
        }
        if self.seq_cluster_epoch == 0 {
            out.push(Problem { field: "seq_cluster_epoch", message: "must be at least 1".into() });
        }
        if self.default_affinity < 0 {
            out.push(Problem {
                field: "default_affinity",
                message: format!("must be 0 (no work) or more, got {}", self.default_affinity),
            });
        }
        if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&self.lease_ms) {
            out.push(Problem {
                field: "lease_ms",
                message: format!("must be between {MIN_LEASE_MS} and {MAX_LEASE_MS}, got {}", self.lease_ms),
            });
        }
        if self.stop_timeout_ms > MAX_STOP_TIMEOUT_MS {
            out.push(Problem {
                field: "stop_timeout_ms",
                message: format!("must be at most {MAX_STOP_TIMEOUT_MS}, got {}", self.stop_timeout_ms),
            });
        }
        out.extend(self.keys.problems());
        out
    }

    /// Checks every rule.
    pub fn validate(&self) -> Result<(), DividerConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DividerConfigError::Invalid(problems))
        }
    }

    /// Parses and validates YAML or JSON.
    pub fn parse(text: &str) -> Result<Self, DividerConfigError> {
        let file: DividerConfig = serde_yaml::from_str(text).map_err(|e| DividerConfigError::Parse(e.to_string()))?;
        file.validate()?;
        Ok(file)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, DividerConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DividerConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(&text)
    }

    /// Serializes as YAML (what the operator writes into the ConfigMap).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a divider config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions(n: u32) -> DividerConfig {
        DividerConfig {
            divider: "stocks".into(),
            seq_cluster: "ids".into(),
            seq_cluster_epoch: 3,
            default_affinity: 1,
            keys: DividerKeys { partitions: Some(n), prefix: Some("p-".into()), names: None },
            lease_ms: DEFAULT_LEASE_MS,
            stop_timeout_ms: DEFAULT_STOP_TIMEOUT_MS,
        }
    }

    #[test]
    fn round_trips_through_yaml() {
        let c = partitions(8);
        let yaml = c.to_yaml();
        assert!(yaml.contains("partitions: 8") && !yaml.contains("names"), "{yaml}");
        assert_eq!(DividerConfig::parse(&yaml).unwrap(), c);
        let named = DividerConfig {
            keys: DividerKeys { partitions: None, prefix: None, names: Some(vec!["eu/west".into(), "us".into()]) },
            ..c
        };
        assert_eq!(DividerConfig::parse(&named.to_yaml()).unwrap(), named);
    }

    #[test]
    fn every_broken_rule_is_named() {
        let mut c = partitions(0);
        c.default_affinity = -1;
        c.divider = "no space".into();
        c.keys.prefix = Some("p q".into());
        c.lease_ms = 10;
        c.stop_timeout_ms = MAX_STOP_TIMEOUT_MS + 1;
        let e = c.validate().unwrap_err().to_string();
        for needle in [
            "lease_ms: must be between 1000",
            "stop_timeout_ms: must be at most",
            "divider: \"no space\"",
            "default_affinity: must be 0",
            "keys.partitions: must be between 1",
            "keys.prefix",
        ] {
            assert!(e.contains(needle), "{needle} missing from {e}");
        }
        let both = DividerKeys { partitions: Some(2), prefix: Some("p".into()), names: Some(vec!["a".into()]) };
        assert!(both.problems().iter().any(|p| p.message.contains("exactly one")));
        let names =
            DividerKeys { partitions: None, prefix: None, names: Some(vec!["a".into(), "a".into(), "/x".into()]) };
        let p: Vec<String> = names.problems().iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("\"a\" appears twice") && p[1].contains("\"/x\""), "{p:?}");
        let prefixless = DividerKeys { partitions: Some(2), prefix: None, names: None };
        assert!(prefixless.problems()[0].message.contains("required"));
    }

    #[test]
    fn a_renamed_field_or_bad_shape_is_refused() {
        let yaml = partitions(4).to_yaml().replace("default_affinity", "defaultAffinity");
        assert!(
            matches!(DividerConfig::parse(&yaml), Err(DividerConfigError::Parse(m)) if m.contains("default_affinity"))
        );
        assert!(matches!(DividerConfig::parse("keys: [1"), Err(DividerConfigError::Parse(_))));
        let negative = partitions(4).to_yaml().replace("partitions: 4", "partitions: -4");
        assert!(matches!(DividerConfig::parse(&negative), Err(DividerConfigError::Parse(_))));
        let missing = Path::new("/nonexistent/divider.yaml");
        assert!(DividerConfig::load(missing).unwrap_err().to_string().contains("/nonexistent/divider.yaml"));
    }
}
