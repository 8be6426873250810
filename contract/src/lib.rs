//! `ordo-contract`: what Ordo's sidecar, operator and client share, in one small crate that all
//! three compile (the operator and `ordo-client` compile only this of the sidecar's side).
//!
//! - [`assign`]: the divider's assignment function (keys to members by affinity);
//! - [`config`]: the sidecar's flags and environment ([`config::SidecarArgs`], one section per
//!   primitive), default ports, addresses and socket;
//! - [`membership`]: the members file (epoch, members, quorum sizes, joint configuration);
//! - [`status`]: the admin `/status` report the operator reads to drive scaling;
//! - [`divider`]: the WorkDivider config file;
//! - [`validate`]: names and work keys.
//!
//! Each contract has a test that joins its producer and its consumer: `operator/tests/contract.rs`
//! (rendered pod arguments, members file and divider config parsed by these parsers) and
//! `e2e/tests/contract.rs` (a running sidecar's `/status` parsed by the operator's probe).
#![forbid(unsafe_code)]

pub mod assign;
pub mod config;
pub mod divider;
pub mod membership;
pub mod status;
pub mod validate;
