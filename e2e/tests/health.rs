//! gRPC health over the app socket reports every app service by its full name, and "" for the
//! whole server, following readiness; a name no primitive serves is unknown.

use std::time::Duration;

use ordo_e2e::cluster::{eventually, TestOptions};
use ordo_e2e::TestCluster;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// What health checks know: the whole server and each app service.
const NAMES: [&str; 3] = ["", "ordo.v1.Sequencer", "ordo.v1.Cluster"];

async fn check(health: &HealthClient<Channel>, service: &str) -> Result<ServingStatus, tonic::Status> {
    let req = HealthCheckRequest { service: service.into() };
    let status = health.clone().check(req).await?.into_inner().status;
    Ok(ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown))
}

async fn all_are(health: &HealthClient<Channel>, want: ServingStatus) {
    for name in NAMES {
        eventually(Duration::from_secs(10), &format!("health of {name:?} is {want:?}"), || async move {
            check(health, name).await.is_ok_and(|s| s == want)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_each_app_service_following_readiness() {
    let mut cluster = TestCluster::start(TestOptions { members: 3, ..Default::default() }).await;
    // Over the app socket (the client connects to member 0's socket path).
    let health = HealthClient::new(cluster.client(0).await.channel());
    all_are(&health, ServingStatus::Serving).await;
    for unknown in ["ordo.v1.NoSuchService", "ordo.v1.sequencer", "Sequencer"] {
        let e = check(&health, unknown).await.expect_err("an unknown service name");
        assert_eq!(e.code(), tonic::Code::NotFound, "{unknown}: {e:?}");
    }
    // Watch streams the current status of a known name at once.
    let mut watch =
        health.clone().watch(HealthCheckRequest { service: "ordo.v1.Cluster".into() }).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // Without a quorum the sidecar is not ready: every name turns NOT_SERVING.
    cluster.dev.kill9(1);
    cluster.dev.kill9(2);
    all_are(&health, ServingStatus::NotServing).await;
    // And back once a quorum returns.
    cluster.dev.spawn(1).unwrap();
    all_are(&health, ServingStatus::Serving).await;
}
