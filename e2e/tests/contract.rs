//! Contracts between the operator and the sidecar, joined across real processes: the `/status`
//! a running `ordo-sidecar` serves is what the operator's probe parses, and the WorkDivider pod
//! the operator renders (arguments and divider config) starts a real sidecar whose `/divider`
//! report the operator's probe reads for the WorkDivider's status, while a bad divider config
//! stops it with a message that names what is wrong.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ordo_contract::config::Role;
use ordo_contract::status::DividerReport;
use ordo_e2e::cluster::{eventually, TestOptions};
use ordo_e2e::TestCluster;
use ordo_operator::pod::{DIVIDER_KEY, SIDECAR_CONTAINER};
use ordo_operator::probe::{HttpMemberProbe, MemberProbe};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_served_by_sidecars_is_what_the_operators_probe_reads() {
    let cluster = TestCluster::start(TestOptions { members: 3, ..Default::default() }).await;
    for i in 0..3 {
        let member = cluster.dev.member(i);
        let (host, port) = member.admin_addr.rsplit_once(':').unwrap();
        let probe = HttpMemberProbe { port: port.parse().unwrap(), timeout: Duration::from_secs(5) };
        // The operator's own HTTP client and parser against the sidecar's own handler.
        let report = probe.status(host).await.unwrap_or_else(|| panic!("the probe cannot read {}", member.admin_addr));
        assert_eq!(report.id, member.id);
        assert_eq!(report.role, Role::Member);
        assert_eq!((report.epoch, report.migrated_epoch), (1, 1), "a stable epoch needs no migration");
        assert!(report.caught_up && report.ready, "{report:?}");
        assert_eq!(report.pid, member.pid);
    }
}

/// The sidecar arguments of the WorkDivider pod the operator renders for the examples, and the
/// divider config in its ConfigMap.
fn rendered_workdivider() -> (Vec<String>, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/k8s");
    let out =
        ordo_operator::render::render_files(&[root.join("seqcluster.yaml"), root.join("workdivider.yaml")]).unwrap();
    let docs: Vec<Value> =
        serde_yaml::Deserializer::from_str(&out).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("render has no {kind} {name}"))
    };
    let pod = &find("StatefulSet", "stocks")["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().into_iter().chain(pod["initContainers"].as_array()).flatten();
    let sidecar = containers.into_iter().find(|c| c["name"] == SIDECAR_CONTAINER).expect("a sidecar container");
    let args = sidecar["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let divider = find("ConfigMap", "stocks-config")["data"][DIVIDER_KEY].as_str().unwrap().to_string();
    (args, divider)
}

/// The rendered arguments with the pod's mounts and listeners replaced by this machine's:
/// the test cluster's members file and token, a socket and divider config under `dir`.
fn localized(rendered: &[String], cluster: &TestCluster, dir: &Path, divider_file: &Path) -> Vec<String> {
    let mut args: Vec<String> = rendered
        .iter()
        .map(|a| {
            let flag = a.split_once('=').map_or(a.as_str(), |(f, _)| f);
            match flag {
                "--members-file" => format!("{flag}={}", cluster.dev.members_file().display()),
                "--peer-token-file" => format!("{flag}={}", cluster.dev.token_file().display()),
                "--socket" => format!("{flag}={}", dir.join("ordo.sock").display()),
                "--admin-listen" => format!("{flag}=127.0.0.1:0"),
                "--divider-config" => format!("{flag}={}", divider_file.display()),
                _ => a.clone(),
            }
        })
        .collect();
    assert!(args.iter().any(|a| a.starts_with("--divider-config=")), "the pod passes the divider config: {args:?}");
    args.push("--app-listen=off".into());
    args
}

struct Sidecar(std::process::Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[String], stderr: Stdio) -> Sidecar {
    let sidecar = ordoctl::dev::find_sidecar();
    let child = Command::new(&sidecar[0])
        .args(&sidecar[1..])
        .args(args)
        .env("POD_NAME", "stocks-0")
        .env_remove("ORDO_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Sidecar(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_workdivider_pod_starts_a_sidecar_and_a_bad_divider_config_stops_it() {
    let cluster = TestCluster::start(TestOptions { members: 3, ..Default::default() }).await;
    let (rendered, divider) = rendered_workdivider();
    let dir = tempfile::tempdir().unwrap();
    let divider_file = dir.path().join(DIVIDER_KEY);
    std::fs::write(&divider_file, &divider).unwrap();

    // What the operator rendered starts a client-role sidecar that serves through the members.
    let args = localized(&rendered, &cluster, dir.path(), &divider_file);
    let log = std::fs::File::create(dir.path().join("stocks-0.log")).unwrap();
    let mut good = spawn(&args, log.into());
    let socket = dir.path().join("ordo.sock").display().to_string();
    eventually(Duration::from_secs(20), "the rendered WorkDivider sidecar is ready", || {
        let socket = socket.clone();
        async move {
            match ordo_client::Client::connect(&socket).await {
                Ok(c) => c.status().await.is_ok_and(|s| s.ready && s.role == "client" && s.id == "stocks-0"),
                Err(_) => false,
            }
        }
    })
    .await;
    let client = ordo_client::Client::connect(&socket).await.unwrap();
    let ids = client.next("orders", 3, true).await.unwrap();
    assert_eq!(ids.end - ids.start, 3);

    // Its `/divider` report is what the operator's probe reads for the WorkDivider's status:
    // once the pod's app joined and started every key, all 64 are held here, none unowned.
    let admin = client.status().await.unwrap().admin_addr;
    let (host, port) = admin.rsplit_once(':').unwrap();
    let probe = HttpMemberProbe { port: port.parse().unwrap(), timeout: Duration::from_secs(5) };
    let mut member = client.divider("").join("stocks-0", None, "").await.unwrap();
    let mut started = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while started < 64 && Instant::now() < deadline {
        let next = tokio::time::timeout(Duration::from_secs(5), member.next()).await;
        if let Ok(Some(Ok(ordo_client::divider::DividerEvent::Start { .. }))) = next {
            started += 1;
        }
    }
    assert_eq!(started, 64, "the member started every key");
    let report = probe.divider(host, "").await.expect("the probe reads /divider");
    let counts = DividerReport::merge(std::slice::from_ref(&report)).unwrap();
    assert_eq!((report.divider.as_str(), counts.keys, counts.unowned), ("stocks", 64, 0), "{report:?}");
    let m = &counts.members[0];
    assert_eq!((m.id.as_str(), m.affinity, m.assigned, m.held), ("stocks-0", 1, 64, 64));
    assert_eq!(probe.divider(host, "elsewhere").await, None, "a divider it does not serve");
    drop(member);
    assert_eq!(good.0.try_wait().unwrap(), None, "still running");
    drop(good);

    // The same pod with a broken divider config: the sidecar refuses to start and says why.
    let broken =
        divider.replace("default_affinity: 1", "default_affinity: -1").replace("prefix: stock-", "prefix: a b");
    assert_ne!(broken, divider, "the rendered config has the fields this test breaks: {divider}");
    std::fs::write(&divider_file, broken).unwrap();
    let mut bad = spawn(&args, Stdio::piped());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = bad.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "a sidecar with a bad divider config keeps running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(bad.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    for needle in ["--divider-config (ORDO_DIVIDER_CONFIG)", "default_affinity: must be 0", "keys.prefix"] {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    }
}

/// A membership change that cannot finish says why in the `/status` report the operator reads
/// (and shows in the SeqCluster's status): here a stream with replication factor 3 cannot move
/// when only 2 members stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_cannot_finish_says_why_in_the_status_the_operator_reads() {
    let mut cluster = TestCluster::start(TestOptions { members: 3, ..Default::default() }).await;
    let mut log = ordo_proto::v1::log_client::LogClient::new(cluster.client(0).await.channel());
    let req = ordo_proto::v1::CreateStreamRequest { name: "wide".into(), replication_factor: 3, ack_quorum: 2 };
    log.create_stream(req).await.expect("create");
    let joint = cluster.dev.write_members(&[0, 1], Some(&[0, 1, 2])).expect("joint members file");
    // The stream's mover is one of the two members that stay.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let report = 'found: loop {
        for i in 0..2 {
            let member = cluster.dev.member(i);
            let (host, port) = member.admin_addr.rsplit_once(':').unwrap();
            let probe = HttpMemberProbe { port: port.parse().unwrap(), timeout: Duration::from_secs(5) };
            if let Some(r) = probe
                .status(host)
                .await
                .filter(|r| r.epoch == joint && r.migration_error.as_ref().is_some_and(|e| e.contains("wide")))
            {
                break 'found r;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no member says why stream wide cannot move");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(report.migrated_epoch < joint, "{report:?}");
    let why = report.migration_error.unwrap();
    assert!(why.contains("wide") && why.contains("replication factor 3"), "{why}");
}
