//! Shared helpers of the operator's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use ordo_operator::crd::{MemberSetStatus, MembershipPhase, MembershipStatus, SeqCluster, WorkDivider};
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

/// A settled configuration of `n` members at `epoch`.
pub fn stable(epoch: i64, n: i32) -> MembershipStatus {
    MembershipStatus {
        epoch,
        current: MemberSetStatus { members: n, ..Default::default() },
        previous: None,
        phase: MembershipPhase::Stable,
    }
}

/// The venv's Python (made by scripts/test-deps.sh), or `None` when the Python-backed tests
/// should skip: only when ORDO_REQUIRE_PY_TESTS is unset (scripts/operator-tests.sh sets it).
pub fn venv_python() -> Option<PathBuf> {
    let python = root().join(".venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("ORDO_REQUIRE_PY_TESTS").is_none(),
        "ORDO_REQUIRE_PY_TESTS is set but {} is missing; run scripts/test-deps.sh",
        python.display()
    );
    eprintln!("SKIPPED: {} missing; run scripts/test-deps.sh (scripts/operator-tests.sh does)", python.display());
    None
}
