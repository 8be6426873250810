//! Transport adapters: the app gRPC API (Unix socket + loopback TCP; one module per primitive
//! under [`app`]), the peer gRPC API and its client, and the admin HTTP endpoints. Domain logic
//! lives in [`crate::quorum`] and [`crate::sequencer`]; these modules translate and validate.

pub mod admin;
pub mod app;
pub mod authority;
pub mod log_peer;
pub mod peer;
