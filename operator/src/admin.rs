//! The operator's own HTTP endpoints: `/metrics`, `/healthz` (live), `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Shared state of the admin endpoints.
#[derive(Clone)]
pub struct AdminState {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// True once the CRDs are established (leader or standby alike).
    pub ready: Arc<AtomicBool>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move {
                ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.render())
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AdminState>| async move {
                if s.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "waiting for CRDs")
                }
            }),
        )
        .with_state(state)
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoints listening");
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
