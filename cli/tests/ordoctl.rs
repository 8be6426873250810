//! `ordoctl` as a user runs it: `ordoctl dev` in one terminal, commands in another.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ordoctl(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ordoctl"))
        .args(args)
        .env("ORDO_DEV_DIR", dir)
        .env_remove("ORDO_SOCKET")
        .output()
        .expect("run ordoctl")
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "ordoctl failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn dev_cluster_seq_and_status_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let base = 24000 + (std::process::id() % 500) as u16 * 10;
    let mut dev = Command::new(env!("CARGO_BIN_EXE_ordoctl"))
        .args(["dev", "--base-port", &base.to_string()])
        .env("ORDO_DEV_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "ordoctl dev never said ready: {printed:?}");
        let line = lines.next().expect("ordoctl dev output").unwrap();
        printed.push(line.clone());
        if line.starts_with("ready") {
            break;
        }
    }
    assert!(printed.iter().filter(|l| l.contains("socket")).count() >= 3, "prints the sockets: {printed:?}");

    let next = json(&ordoctl(dir.path(), &["seq", "next", "orders", "--count", "10", "--output", "json"]));
    assert_eq!(next["sequence"], "orders");
    let (start, end) = (next["start"].as_u64().unwrap(), next["end"].as_u64().unwrap());
    assert_eq!(end - start, 10);
    let strict = json(&ordoctl(dir.path(), &["seq", "next", "orders", "--strict", "--output", "json"]));
    assert!(strict["start"].as_u64().unwrap() >= end);
    let current = json(&ordoctl(dir.path(), &["seq", "current", "orders", "-o", "json"]));
    assert!(current["next"].as_u64().unwrap() > strict["start"].as_u64().unwrap());

    // Peers' readiness is what the answering member saw at its last probe (every second).
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let status = json(&ordoctl(dir.path(), &["status", "--output", "json"]));
        let all_ready = status["members"].as_array().is_some_and(|ms| ms.iter().all(|m| m["ready"] == true));
        if all_ready || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["epoch"], 1);
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        for field in ["id", "pid", "peer_addr", "socket", "ready"] {
            assert!(m.get(field).is_some(), "member lacks {field}: {m}");
        }
        assert!(m["pid"].as_u64().unwrap() > 0);
        assert_eq!(m["ready"], true);
    }

    // --socket picks a sidecar; human output is a table.
    let socket = members[2]["socket"].as_str().unwrap().to_string();
    let human = ordoctl(dir.path(), &["--socket", &socket, "status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("epoch 1") && text.contains("dev-2"), "{text}");
    // Bad input: a clear error and a non-zero exit.
    let bad = ordoctl(dir.path(), &["seq", "next", "no/slash"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("InvalidArgument"));

    // Ctrl-C stops every member.
    let pids: Vec<u64> = members.iter().map(|m| m["pid"].as_u64().unwrap()).collect();
    Command::new("kill").args(["-INT", &dev.id().to_string()]).status().unwrap();
    let status = dev.wait().unwrap();
    assert!(status.success(), "ordoctl dev exit {status}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            "member {pid} still running"
        );
    }
    // Without a running cluster, commands say how to start one.
    let none = ordoctl(dir.path(), &["status"]);
    assert!(!none.status.success());
}

fn is_zombie(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
}
