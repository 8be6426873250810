//! Admin HTTP: `/live`, `/ready`, `/metrics` (Prometheus text format) and `/status` (JSON).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::peer::GrpcPeers;
use crate::node::Node;

type Shared = Arc<Node<GrpcPeers>>;

/// The admin router.
pub fn router(node: Shared) -> Router {
    Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(node)
}

async fn ready(State(node): State<Shared>) -> impl IntoResponse {
    if node.ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        let why =
            if !node.caught_up() { "catching up" } else { "no quorum of caught-up members reachable, or draining" };
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"))
    }
}

async fn metrics(State(node): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], node.metrics.encode())
}

async fn status(State(node): State<Shared>) -> impl IntoResponse {
    let st = node.status();
    let body = serde_json::json!({
        "id": st.id,
        "role": st.role,
        "epoch": st.epoch,
        "caught_up": st.caught_up,
        "migrated_epoch": st.migrated_epoch,
        "ready": st.ready,
        "pid": std::process::id(),
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}
