//! gRPC health checking (`grpc.health.v1.Health`) for the app API.
//!
//! Every app service is reported under its full name (`ordo.v1.Sequencer`, `ordo.v1.Cluster`,
//! ...), and `""` stands for the whole server. All of them are SERVING exactly while the
//! sidecar's readiness latch is up (caught up, a quorum of caught-up members reachable, not
//! draining), NOT_SERVING otherwise; a name no primitive serves is unknown (`Check` answers
//! NOT_FOUND). Shown by `e2e/tests/health.rs`.

use tokio::sync::watch;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// The health service for `names` (and `""`), following `ready` until it closes.
pub async fn following_readiness(
    names: &[&'static str],
    mut ready: watch::Receiver<bool>,
) -> HealthServer<HealthService> {
    let reporter = HealthReporter::new();
    let names: Vec<&'static str> = std::iter::once("").chain(names.iter().copied()).collect();
    // The reporter starts "" as SERVING; set every name before the service is handed out.
    set_all(&reporter, &names, *ready.borrow_and_update()).await;
    let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    tokio::spawn(async move {
        while ready.changed().await.is_ok() {
            let now = *ready.borrow_and_update();
            set_all(&reporter, &names, now).await;
        }
    });
    service
}

async fn set_all(reporter: &HealthReporter, names: &[&'static str], ready: bool) {
    let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
    for name in names {
        reporter.set_service_status(name, status).await;
    }
}
