//! `ordo-sidecar`: the per-pod sidecar of Ordo.
//!
//! Layout: [`quorum`] is the leaderless CASPaxos register store (acceptor, proposer, catch-up,
//! migration), [`sequencer`] builds ID ranges and per-sequence buffers on it, [`api`] holds the
//! thin gRPC/HTTP adapters (one app module per primitive). [`config`], [`membership`] and
//! [`validate`] re-export the contract shared with the operator and the client
//! (`ordo_contract`), so their paths stay as they were.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod divider;
pub mod log;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod quorum;
pub mod sequencer;
pub mod server;
pub mod validate;
