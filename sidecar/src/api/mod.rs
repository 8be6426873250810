//! Transport adapters: the app gRPC API (Unix socket + loopback TCP; one module per primitive
//! under [`app`]), the peer gRPC API and its client, and the admin HTTP endpoints. Domain logic
//! lives in [`crate::quorum`] and [`crate::sequencer`]; these modules translate and validate.

pub mod admin;
pub mod app;
pub mod authority;
pub mod log_peer;
pub mod peer;

/// Resolves once the sidecar begins to shut down (`stop` turns true), or once the signal's
/// sender is gone. The long-lived streams (peer exchanges, log replication and forwarding, the
/// app's streams) end on it, so they never hold a server's graceful shutdown open.
pub async fn shutdown_begun(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
