//! Standard gRPC tooling works against the app socket: health checking and server reflection
//! (v1 and v1alpha);
//! the admin port serves /live, /ready, /metrics and /status.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use ordo_e2e::cluster::TestOptions;
use ordo_e2e::TestCluster;
use tonic::transport::Endpoint;

async fn socket_channel(path: String) -> tonic::transport::Channel {
    Endpoint::from_static("http://ordo.sock")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap()
}

async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_admin_endpoints() {
    let mut cluster = TestCluster::start(TestOptions { members: 3, ..Default::default() }).await;
    let ch = socket_channel(cluster.dev.member(0).socket.clone()).await;

    let health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "ordo.v1.Sequencer"] {
        ordo_e2e::cluster::eventually(Duration::from_secs(5), &format!("health of {service:?} is SERVING"), || {
            let mut health = health.clone();
            async move {
                let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
                health.check(req).await.is_ok_and(|r| {
                    r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                })
            }
        })
        .await;
    }

    // Both reflection versions: v1alpha is what grpcui, Postman, older grpcurl and
    // grpcio-reflection ask.
    macro_rules! listed_services {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::{
                server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
                ServerReflectionRequest,
            };
            let mut refl = ServerReflectionClient::new(ch.clone());
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut resp = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
            format!("{:?}", resp.message().await.unwrap().unwrap().message_response)
        }};
    }
    for (version, listed) in [("v1", listed_services!(v1)), ("v1alpha", listed_services!(v1alpha))] {
        for s in ["ordo.v1.Sequencer", "ordo.v1.Cluster", "grpc.health.v1.Health"] {
            assert!(listed.contains(s), "reflection {version} lists {s}: {listed}");
        }
    }

    cluster.client(0).await.next("metered", 1, true).await.unwrap();
    let admin = cluster.dev.member(0).admin_addr.clone();
    assert_eq!(http_get(&admin, "/live").await.0, 200);
    assert_eq!(http_get(&admin, "/ready").await.0, 200);
    let (code, metrics) = http_get(&admin, "/metrics").await;
    assert_eq!(code, 200);
    for needle in
        ["ordo_app_requests_total{method=\"NextStrict\",code=\"Ok\"} 1", "ordo_ready 1", "ordo_config_epoch 1"]
    {
        assert!(metrics.contains(needle), "metrics lack {needle}: {metrics}");
    }
    let (_, status) = http_get(&admin, "/status").await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["id"], "dev-0");
    assert_eq!(v["caught_up"], true);

    // Without a quorum, /ready and health turn negative (liveness stays).
    cluster.dev.kill9(1);
    cluster.dev.kill9(2);
    ordo_e2e::cluster::eventually(Duration::from_secs(10), "member 0 not ready", || {
        let admin = admin.clone();
        async move { http_get(&admin, "/ready").await.0 == 503 }
    })
    .await;
    assert_eq!(http_get(&admin, "/live").await.0, 200);
}
