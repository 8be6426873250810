//! Admin HTTP: `/live`, `/ready`, `/metrics` (Prometheus text format), `/status` (JSON: an
//! [`ordo_contract::status::StatusReport`], the struct the operator's probe parses) and
//! `/divider?name=D` (JSON: a [`DividerReport`] of a divider this sidecar serves; no name: its
//! configured divider; 404 when it serves no such divider).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use ordo_contract::status::{DividerReport, Report, StatusReport};

use super::peer::GrpcPeers;
use crate::divider::runtime::Dividers;
use crate::node::Node;

type Shared = Arc<Node<GrpcPeers>>;

/// The admin router.
pub fn router(node: Shared, dividers: Arc<Dividers<GrpcPeers>>) -> Router {
    Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(node)
        .route("/divider", get(divider).with_state(dividers))
}

/// The `name` parameter of a query string (divider names need no percent-decoding: a name
/// with `%` in it is served by no sidecar and gets a 404).
fn query_name(query: Option<&str>) -> &str {
    query.unwrap_or_default().split('&').find_map(|p| p.strip_prefix("name=")).unwrap_or_default()
}

async fn divider(
    State(dividers): State<Arc<Dividers<GrpcPeers>>>,
    RawQuery(query): RawQuery,
) -> axum::response::Response {
    let name = query_name(query.as_deref());
    match dividers.running(name) {
        Some(d) => {
            let report: DividerReport = d.report().await;
            ([(header::CONTENT_TYPE, "application/json")], report.to_json()).into_response()
        }
        None => {
            let what = if name.is_empty() {
                "no divider is configured".to_string()
            } else {
                format!("divider {name:?} is not served")
            };
            (StatusCode::NOT_FOUND, format!("{what} on this sidecar\n")).into_response()
        }
    }
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
        migration_error: st.migration_error,
    }
}

async fn status(State(node): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], status_report(&node).to_json())
}

#[cfg(test)]
mod tests {
    use super::query_name;

    #[test]
    fn the_divider_name_comes_from_the_query() {
        assert_eq!(query_name(None), "");
        assert_eq!(query_name(Some("name=orders")), "orders");
        assert_eq!(query_name(Some("x=1&name=orders&y=2")), "orders");
        assert_eq!(query_name(Some("names=orders")), "");
    }
}
