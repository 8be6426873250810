//! Shared helpers of the operator's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use ordo_operator::crd::{SeqCluster, WorkDivider};
use serde::de::DeserializeOwned;

/// Path of a fixture.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Parses a fixture.
pub fn fixture<T: DeserializeOwned>(name: &str) -> T {
    let text = std::fs::read_to_string(fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A SeqCluster fixture.
pub fn seqcluster(name: &str) -> SeqCluster {
    fixture(name)
}

/// A WorkDivider fixture.
pub fn workdivider(name: &str) -> WorkDivider {
    fixture(name)
}

/// Workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
