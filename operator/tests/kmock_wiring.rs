//! The controllers' wiring (watch -> reconcile -> apply children -> status) running for real
//! over HTTP against the PyPI `kmock` emulator (0.8) plus the small layer in
//! `tests/py/kmock_server.py` (resourceVersion/uid/generation stamping, create-on-apply, PUT).
//!
//! What this shows: the watches, generation predicates, owned-object triggers, the
//! SeqCluster -> WorkDivider mapping, status writes, scaling through joint consensus with
//! sidecars that load each members file at once, no reconcile loop on an invalid spec, every
//! request covered by the chart's RBAC, and graceful shutdown. What it does not: server-side
//! apply field ownership, garbage collection, defaulting or schema validation (kmock merges JSON).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use ordo_contract::membership::MembersFile;
use ordo_contract::status::StatusReport;
use ordo_operator::context::Context;
use ordo_operator::crd::{MembershipPhase, SeqCluster, WorkDivider};
use ordo_operator::metrics::Metrics;
use ordo_operator::probe::MemberProbe;
use ordo_operator::{controller, rbac};
use serde_json::json;

const NS: &str = "wiring";

struct Emulator {
    child: Child,
    operator_url: String,
    test_url: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_emulator() -> Option<Emulator> {
    let python = common::venv_python()?;
    // Under the target directory, not /tmp: other suites on the machine clean /tmp.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = dir.path().join("requests.log");
    let mut child = Command::new(python)
        .arg(common::root().join("operator/tests/py/kmock_server.py"))
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kmock_server.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let urls: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(urls.first(), Some(&"URLS"), "kmock_server.py said {line:?}");
    Some(Emulator { operator_url: urls[1].to_string(), test_url: urls[2].to_string(), child, log, _dir: dir })
}

fn client(url: &str) -> Client {
    let mut config = kube::Config::new(url.parse().unwrap());
    config.default_namespace = NS.into();
    Client::try_from(config).unwrap()
}

/// Sidecars that load every members file at once: members report the ConfigMap's epoch,
/// caught up and migrated; pods beyond the file but within the StatefulSet answer, not caught up.
struct FollowingProbe(Client, SeenFiles);

/// Members files the probe has read: (epoch, members, previous members).
type SeenFiles = Arc<std::sync::Mutex<std::collections::BTreeSet<(u64, usize, Option<usize>)>>>;

impl MemberProbe for FollowingProbe {
    fn status<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<StatusReport>> {
        Box::pin(async move {
            let id = host.split('.').next()?.to_string();
            let (name, ordinal) = id.rsplit_once('-')?;
            let ordinal: i32 = ordinal.parse().ok()?;
            let cms: Api<ConfigMap> = Api::namespaced(self.0.clone(), NS);
            let cm = cms.get_opt(&format!("{name}-members")).await.ok()??;
            let file = MembersFile::parse(cm.data?.get("members.yaml")?).ok()?;
            self.1.lock().unwrap().insert((file.epoch, file.current.len(), file.previous.as_ref().map(|p| p.len())));
            let sts: Api<StatefulSet> = Api::namespaced(self.0.clone(), NS);
            let pods = sts.get_opt(name).await.ok()??.spec.replicas.unwrap_or(0);
            if ordinal >= pods {
                return None;
            }
            let member = file.contains(&id);
            Some(StatusReport {
                id,
                epoch: file.epoch,
                caught_up: member,
                role: ordo_contract::config::Role::Member,
                migrated_epoch: file.epoch,
                ready: member,
                pid: ordinal as u32 + 1,
                migration_error: None,
            })
        })
    }
}

/// Polls `check` until it returns `Some`, or fails after the deadline with `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn requests(log: &std::path::Path) -> Vec<(u16, String, String, String)> {
    std::fs::read_to_string(log)
        .expect("request log")
        .lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let port = parts.next().unwrap().parse().unwrap();
            let method = parts.next().unwrap().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            (port, method, path, parts.next().unwrap_or_default().to_string())
        })
        .collect()
}

async fn members_epoch(client: &Client, cm: &str) -> Option<u64> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let cm = cms.get_opt(cm).await.ok()??;
    Some(MembersFile::parse(cm.data?.get("members.yaml")?).ok()?.epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_reconcile_through_a_stateful_api_emulator() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let Some(emulator) = start_emulator() else { return };
    let log_path = emulator.log.clone();
    let _dump = DumpOnPanic(log_path);
    let test = client(&emulator.test_url);
    let operator = client(&emulator.operator_url);

    let seqclusters: Api<SeqCluster> = Api::namespaced(test.clone(), NS);
    let dividers: Api<WorkDivider> = Api::namespaced(test.clone(), NS);
    let mut sc: SeqCluster = common::seqcluster("seqcluster-minimal.yaml");
    sc.metadata = kube::api::ObjectMeta { name: Some("ids".into()), namespace: Some(NS.into()), ..Default::default() };
    seqclusters.create(&PostParams::default(), &sc).await.unwrap();

    let metrics = Arc::new(Metrics::default());
    let seen_files: SeenFiles = Default::default();
    let ctx = Arc::new(Context::new(
        operator.clone(),
        Arc::new(FollowingProbe(test.clone(), seen_files.clone())),
        metrics.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(controller::run(ctx, async move {
        let _ = stop_rx.await;
    }));

    // First reconcile: every child exists, the status records epoch 1.
    eventually("SeqCluster status epoch 1", || async {
        let m = seqclusters.get("ids").await.ok()?.status?.membership?;
        (m.epoch == 1 && m.phase == MembershipPhase::Stable).then_some(())
    })
    .await;
    // The status is recorded first, then the children; the NetworkPolicy is applied last.
    let netpols: Api<NetworkPolicy> = Api::namespaced(test.clone(), NS);
    eventually("children applied", || async { netpols.get_opt("ids-peers").await.ok()? }).await;
    let sts: Api<StatefulSet> = Api::namespaced(test.clone(), NS);
    assert_eq!(sts.get("ids").await.unwrap().spec.replicas, Some(3));
    Api::<Service>::namespaced(test.clone(), NS).get("ids-peers").await.unwrap();
    Api::<PodDisruptionBudget>::namespaced(test.clone(), NS).get("ids").await.unwrap();
    let token =
        Api::<Secret>::namespaced(test.clone(), NS).get("ids-peer-token").await.unwrap().data.unwrap()["token"].clone();

    // A WorkDivider copies the member list.
    let mut wd: WorkDivider = common::workdivider("workdivider-minimal.yaml");
    wd.metadata =
        kube::api::ObjectMeta { name: Some("stocks".into()), namespace: Some(NS.into()), ..Default::default() };
    dividers.create(&PostParams::default(), &wd).await.unwrap();
    eventually("WorkDivider copies epoch 1", || async {
        let s = dividers.get("stocks").await.ok()?.status?;
        (s.seq_cluster_epoch == Some(1)).then_some(())
    })
    .await;
    assert_eq!(members_epoch(&test, "stocks-config").await, Some(1));

    // Scale 3 -> 5: joint configuration, then the new one alone; the WorkDivider follows.
    seqclusters.patch("ids", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 5}}))).await.unwrap();
    eventually("SeqCluster scaled to 5 members at epoch 3", || async {
        let m = seqclusters.get("ids").await.ok()?.status?.membership?;
        (m.epoch == 3 && m.current.members == 5 && m.phase == MembershipPhase::Stable).then_some(())
    })
    .await;
    eventually("StatefulSet shrunk back to the final 5", || async {
        (sts.get("ids").await.ok()?.spec.replicas == Some(5)).then_some(())
    })
    .await;
    eventually("WorkDivider ConfigMap at epoch 3", || async {
        (members_epoch(&test, "stocks-config").await? == 3).then_some(())
    })
    .await;
    // The sidecars saw every step: 3 members, joint 5 with previous 3, then 5 alone.
    let seen: Vec<_> = seen_files.lock().unwrap().iter().cloned().collect();
    assert_eq!(seen, vec![(1, 3, None), (2, 5, Some(3)), (3, 5, None)], "members files seen by the sidecars");
    let op_port: u16 = emulator.operator_url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap();
    assert_eq!(
        Api::<Secret>::namespaced(test.clone(), NS).get("ids-peer-token").await.unwrap().data.unwrap()["token"],
        token,
        "the peer token survives reconciles"
    );

    // An unusable spec: Degraded, then quiet (no reconcile loop on our own status writes).
    seqclusters
        .patch(
            "ids",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": {"spec": {"containers": [{"name": "ordo-sidecar", "image": "x"}]}}}}),
            ),
        )
        .await
        .unwrap();
    eventually("Degraded condition", || async {
        let s = seqclusters.get("ids").await.ok()?.status?;
        s.conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "InvalidSpec")
            .then_some(())
    })
    .await;
    let status_writes = |log: &[(u16, String, String, String)]| {
        log.iter()
            .filter(|(p, m, path, _)| *p == op_port && m == "PATCH" && path.ends_with("seqclusters/ids/status"))
            .count()
    };
    let before = status_writes(&requests(&emulator.log));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_writes(&requests(&emulator.log)), before, "status writes kept coming: a reconcile loop");

    // Graceful shutdown: the controllers return once asked.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running).await.expect("controllers stop").unwrap();

    // Every request the operator made is granted by the chart's RBAC.
    let mut verbs = std::collections::BTreeSet::new();
    for (port, method, path, query) in requests(&emulator.log) {
        if port != op_port {
            continue;
        }
        for (group, resource, verb) in rbac::request_permissions(&method, &path, &query).expect("API path") {
            assert!(rbac::covers(&group, &resource, &verb), "{method} {path}?{query} needs {verb} {group}/{resource}");
            verbs.insert(format!("{verb} {group}/{resource}"));
        }
    }
    for expected in [
        "watch ordo.dev/seqclusters",
        "list apps/statefulsets",
        "patch ordo.dev/seqclusters/status",
        "create events.k8s.io/events",
    ] {
        assert!(verbs.contains(expected), "operator never did {expected}: {verbs:?}");
    }
}

/// Prints the emulator's request log when the test fails, for diagnosis.
struct DumpOnPanic(std::path::PathBuf);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- emulator request log ---\n{}", std::fs::read_to_string(&self.0).unwrap_or_default());
        }
    }
}

#[tokio::test]
async fn leader_election_hands_the_lease_over_only_after_it_expires() {
    use ordo_operator::leader::{try_acquire, Attempt, LeaseConfig};
    let Some(emulator) = start_emulator() else { return };
    let client = client(&emulator.operator_url);
    let cfg = |identity: &str| LeaseConfig {
        name: "ordo-operator".into(),
        namespace: NS.into(),
        identity: identity.into(),
        duration: Duration::from_secs(1),
        renew_every: Duration::from_millis(200),
    };
    let (a, b) = (cfg("a"), cfg("b"));
    assert_eq!(try_acquire(&client, &a).await.unwrap(), Attempt::Held, "created");
    assert_eq!(try_acquire(&client, &b).await.unwrap(), Attempt::HeldByOther);
    assert_eq!(try_acquire(&client, &a).await.unwrap(), Attempt::Held, "renewed");
    // Lease times have second precision; wait past expiry.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(try_acquire(&client, &b).await.unwrap(), Attempt::Held, "taken over after expiry");
    assert_eq!(try_acquire(&client, &a).await.unwrap(), Attempt::HeldByOther);
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client, NS).get("ordo-operator").await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!((spec.holder_identity.as_deref(), spec.lease_transitions), (Some("b"), Some(1)));
}

#[tokio::test]
async fn startup_waits_until_the_crds_are_established() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    use ordo_operator::crd_wait::{crd_state, wait_established, CrdState};
    let Some(emulator) = start_emulator() else { return };
    let client = client(&emulator.operator_url);
    assert_eq!(crd_state(&client, "seqclusters.ordo.dev").await, CrdState::Missing);
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { wait_established(&client, Duration::from_millis(50)).await }
    });
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for mut crd in [SeqCluster::crd(), WorkDivider::crd()] {
        crd.status = None;
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(crd_state(&client, "seqclusters.ordo.dev").await, CrdState::Pending);
    assert!(!waiting.is_finished(), "installed but not established is not enough");
    for name in ordo_operator::crd_wait::CRD_NAMES {
        let established = json!({"status": {"conditions": [{"type": "Established", "status": "True"}]}});
        crds.patch_status(name, &PatchParams::default(), &Patch::Merge(established)).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("wait returns once established").unwrap();
}

/// `GET http://addr/path` over a raw TCP stream: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.ok()?;
    let code = raw.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, raw.split_once("\r\n\r\n")?.1.to_string()))
}

#[tokio::test]
async fn the_binary_waits_for_crds_leads_reconciles_and_stops_on_sigterm() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    let Some(emulator) = start_emulator() else { return };
    let test = client(&emulator.test_url);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: kmock, cluster: {{server: '{}'}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: kmock, user: u, namespace: {NS}}}}}]\n\
             current-context: c\n",
            emulator.operator_url.trim_end_matches('/')
        ),
    )
    .unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_ordo-operator"))
        .arg("run")
        .env("KUBECONFIG", &kubeconfig)
        .env("ORDO_OPERATOR_ADMIN_LISTEN", admin.to_string())
        .env("POD_NAMESPACE", NS)
        .env("POD_NAME", "operator-0")
        .env("ORDO_OPERATOR_LOG_FORMAT", "text")
        .env("ORDO_OPERATOR_CRD_POLL_MS", "100")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop<'a>(&'a mut Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    let guard = KillOnDrop(&mut operator);

    // Live at once, not ready while the CRDs are missing.
    let (code, _) = eventually("admin endpoint up", || http_get(admin, "/healthz")).await;
    assert_eq!(code, 200);
    assert_eq!(http_get(admin, "/readyz").await.unwrap().0, 503);
    let crds: Api<CustomResourceDefinition> = Api::all(test.clone());
    for crd in [SeqCluster::crd(), WorkDivider::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
        let established = json!({"status": {"conditions": [{"type": "Established", "status": "True"}]}});
        crds.patch_status(&crd.metadata.name.unwrap(), &PatchParams::default(), &Patch::Merge(established))
            .await
            .unwrap();
    }
    eventually("ready once CRDs are established", || async {
        (http_get(admin, "/readyz").await?.0 == 200).then_some(())
    })
    .await;

    // It takes the Lease and reconciles.
    let seqclusters: Api<SeqCluster> = Api::namespaced(test.clone(), NS);
    let mut sc: SeqCluster = common::seqcluster("seqcluster-minimal.yaml");
    sc.metadata = kube::api::ObjectMeta { name: Some("ids".into()), namespace: Some(NS.into()), ..Default::default() };
    seqclusters.create(&PostParams::default(), &sc).await.unwrap();
    eventually("the binary reconciles", || async {
        (seqclusters.get("ids").await.ok()?.status?.membership?.epoch == 1).then_some(())
    })
    .await;
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(test.clone(), NS)
        .get("ordo-operator")
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("operator-0"));
    let (_, metrics) = http_get(admin, "/metrics").await.unwrap();
    assert!(metrics.contains(r#"ordo_operator_reconciles_total{kind="SeqCluster"}"#), "{metrics}");
    assert!(metrics.contains(r#"ordo_operator_reconcile_duration_seconds_count{kind="SeqCluster"}"#), "{metrics}");

    // SIGTERM: graceful shutdown, exit 0.
    let pid = guard.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "operator did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "operator exited with {status}");
}
