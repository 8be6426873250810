//! Admin HTTP: `/live`, `/ready`, `/metrics` (Prometheus text format) and `/status` (JSON: an
//! [`ordo_contract::status::StatusReport`], the struct the operator's probe parses).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use ordo_contract::status::StatusReport;

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

/// This sidecar's `/status` report.
pub fn status_report(node: &Node<GrpcPeers>) -> StatusReport {
    let st = node.status();
    StatusReport {
        id: st.id,
        role: node.role,
        epoch: st.epoch,
        caught_up: st.caught_up,
        migrated_epoch: st.migrated_epoch,
        ready: st.ready,
        pid: std::process::id(),
    }
}

async fn status(State(node): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], status_report(&node).to_json())
}
