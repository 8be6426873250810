//! Stock gRPC clients of other languages work on the app socket with default channel settings:
//! Python `grpcio` (which sends the socket path as `:authority`, refused by h2 unless the
//! sidecar fixes it, see `sidecar/src/api/authority.rs`) and Node `@grpc/grpc-js`. Each runs
//! `e2e/foreign/sequencer_client.{py,js}` (health Check, Next buffered and strict, Stream,
//! Current; Registers, Log with a pipelined Append stream, Divider with a Watch; the Python one
//! also lists services through reflection v1alpha) against a real local cluster, and this test
//! checks what they report.
//!
//! The clients are installed by `scripts/test-deps.sh`. When they are missing the test says
//! so and skips, unless ORDO_REQUIRE_PY_TESTS is set (`scripts/test.sh` sets it): then it fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ordo_e2e::cluster::TestOptions;
use ordo_e2e::TestCluster;
use serde::Deserialize;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `path` when it exists; `None` (skip) when it does not and ORDO_REQUIRE_PY_TESTS is unset.
fn installed(path: PathBuf) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("ORDO_REQUIRE_PY_TESTS").is_none(),
        "ORDO_REQUIRE_PY_TESTS is set but {} is missing; run scripts/test-deps.sh",
        path.display()
    );
    eprintln!("SKIPPED: {} missing; run scripts/test-deps.sh", path.display());
    None
}

/// What a client script prints.
#[derive(Debug, Deserialize)]
struct Report {
    ranges: Vec<[u64; 2]>,
    current: u64,
    health: String,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    registers: Option<String>,
    /// `ok` once the client used ordo.v1.Log.
    #[serde(default)]
    log: Option<String>,
    /// `ok` once the client used ordo.v1.Divider.
    #[serde(default)]
    divider: Option<String>,
}

/// Runs a client script against `socket` for `sequence` and parses its report.
async fn run_client(program: &Path, script: &str, socket: &str, sequence: &str) -> Report {
    let script = root().join("e2e/foreign").join(script);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(program)
            .arg(&script)
            .arg(socket)
            .arg(root().join("proto"))
            .arg(sequence)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} did not finish within 60 s", script.display()))
    .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} failed ({}):\n{stderr}\n{stdout}", script.display(), out.status);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("report of {}: {e}: {stdout}", script.display()))
}

/// The report shows sane, increasing ranges, a Current above them and a SERVING health check.
fn check(report: &Report, who: &str) {
    assert_eq!(report.health, "SERVING", "{who}: health");
    assert_eq!(report.ranges.len(), 11, "{who}: 6 Next calls and 5 Stream messages: {report:?}");
    let mut prev_end = 1;
    for [start, end] in &report.ranges {
        assert!(start < end && *start >= prev_end, "{who}: ranges increase through one sidecar: {report:?}");
        prev_end = *end;
    }
    assert!(report.current >= prev_end, "{who}: Current is above every ID handed out: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_and_node_grpc_js_work_on_the_socket_with_default_settings() {
    let python = installed(root().join(".venv/bin/python"));
    let node_modules = installed(root().join("e2e/foreign/node_modules/@grpc/grpc-js"));
    let (Some(python), Some(_)) = (python, node_modules) else { return };
    let opts = TestOptions { members: 3, extra_args: vec!["--registers-api".into()], ..Default::default() };
    let cluster = TestCluster::start(opts).await;

    let socket = cluster.dev.member(0).socket.clone();
    let py = run_client(&python, "sequencer_client.py", &socket, "foreign").await;
    check(&py, "python grpcio");
    for s in ["ordo.v1.Sequencer", "ordo.v1.Cluster", "ordo.v1.Registers", "grpc.health.v1.Health"] {
        assert!(py.services.iter().any(|x| x == s), "python grpcio: reflection v1alpha lists {s}: {py:?}");
    }
    assert_eq!(py.registers.as_deref(), Some("ok"), "python grpcio: Create, Read, CompareAndSet on Registers");
    assert_eq!(py.log.as_deref(), Some("ok"), "python grpcio: CreateStream, pipelined Append, Read, Tail on Log");
    assert_eq!(
        py.divider.as_deref(),
        Some("ok"),
        "python grpcio: AddKeys, Watch, Lookup, ConfirmStops, Cancel on Divider"
    );

    // Node on another member, same sequence: its IDs are all new.
    let socket = cluster.dev.member(1).socket.clone();
    let js = run_client(Path::new("node"), "sequencer_client.js", &socket, "foreign").await;
    check(&js, "node grpc-js");
    assert_eq!(js.registers.as_deref(), Some("ok"), "node grpc-js: Create, Read, CompareAndSet on Registers");
    assert_eq!(js.log.as_deref(), Some("ok"), "node grpc-js: CreateStream, pipelined Append, Read, Tail on Log");
    assert_eq!(js.divider.as_deref(), Some("ok"), "node grpc-js: AddKeys, Watch, Lookup, Cancel on Divider");
    let seen: Vec<_> = py.ranges.iter().chain(&js.ranges).collect();
    for (i, a) in seen.iter().enumerate() {
        for b in &seen[i + 1..] {
            assert!(a[1] <= b[0] || b[1] <= a[0], "no ID handed out twice: {a:?} and {b:?}");
        }
    }
}
