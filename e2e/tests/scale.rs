//! Scale measurement (not in the default run: `bash scripts/scale.sh`, or
//! `cargo test -p ordo-e2e --test scale -- --ignored --nocapture`): three real members hold
//! 1M small registers (`ORDO_SCALE_REGISTERS` to change); one is wiped and catches up, then a
//! fourth member joins through a joint epoch (it catches up, and every member rewrites its
//! share). Reports each sidecar's peak RSS (`VmHWM` in `/proc/<pid>/status`) and the wall
//! times, into `bench-out/scale.md`. It asserts correctness (every register copied, values read
//! back through the rebuilt member), never timings.

use std::fmt::Write as _;
use std::time::Duration;

use ordo_e2e::cluster::{eventually, TestOptions};
use ordo_e2e::TestCluster;
use ordo_sidecar::quorum::acceptor::RegisterState;
use ordo_sidecar::quorum::store::RegisterStore;
use ordo_sidecar::quorum::Ballot;
use tokio::time::Instant;

/// Registers written per install while preloading.
const PRELOAD_CHUNK: usize = 20_000;

fn sequence(i: usize) -> String {
    format!("s{i:07}")
}

fn value(i: usize) -> u64 {
    1_000 + i as u64
}

/// Peak resident set size of a process, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

/// Writes `n` sequence registers into a stopped member's store, as if a quorum chose them.
async fn preload(data_dir: &str, id: &str, n: usize) {
    let store = RegisterStore::open(std::path::Path::new(data_dir), id).unwrap();
    assert!(store.meta().caught_up, "{id} was caught up before it stopped");
    let ballot = Ballot::new(1, "preload");
    for chunk in (0..n).collect::<Vec<_>>().chunks(PRELOAD_CHUNK) {
        let page = chunk
            .iter()
            .map(|&i| {
                let reg = RegisterState {
                    promised: ballot.clone(),
                    accepted: ballot.clone(),
                    value: Some(value(i).to_be_bytes().to_vec()),
                };
                (format!("seq/{}", sequence(i)), reg)
            })
            .collect();
        store.install_page(page).await.unwrap();
    }
    store.close().await.unwrap();
}

/// Registers in a stopped member's store.
async fn count(data_dir: &str, id: &str) -> u64 {
    let store = RegisterStore::open(std::path::Path::new(data_dir), id).unwrap();
    let n = store.register_count().await.unwrap();
    store.close().await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "scale measurement (minutes): bash scripts/scale.sh"]
async fn a_million_registers_catch_up_and_migrate_in_bounded_memory() {
    let n: usize = std::env::var("ORDO_SCALE_REGISTERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let mut cluster = TestCluster::start(TestOptions { members: 3, slots: 4, ..Default::default() }).await;
    let mut report =
        format!("# Scale: {n} registers\n\n| step | wall time | peak RSS (VmHWM) per sidecar |\n| --- | --- | --- |\n");
    let mut row = |cluster: &TestCluster, step: &str, took: Duration, members: &[usize]| {
        let rss: Vec<String> = members
            .iter()
            .map(|&i| format!("{}: {:.0} MiB", cluster.dev.member(i).id, peak_rss_mib(cluster.dev.member(i).pid)))
            .collect();
        let line = format!("| {step} | {:.1} s | {} |", took.as_secs_f64(), rss.join(", "));
        println!("{line}");
        writeln!(report, "{line}").unwrap();
    };

    // Preload every member's store while it is stopped, then start them again.
    for i in 0..3 {
        cluster.dev.stop(i, Duration::from_secs(10));
    }
    let started = Instant::now();
    futures::future::join_all((0..3).map(|i| {
        let m = cluster.dev.member(i).clone();
        async move { preload(&m.data_dir, &m.id, n).await }
    }))
    .await;
    println!("preloaded {n} registers on 3 members in {:.1} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    for i in 0..3 {
        cluster.dev.spawn(i).unwrap();
    }
    for i in 0..3 {
        cluster.wait_ready(i, Duration::from_secs(120)).await;
    }
    row(&cluster, "restart with the registers, ready", started.elapsed(), &[0, 1, 2]);

    // Wipe member 0: it copies every register from members 1 and 2, page by page.
    cluster.dev.stop(0, Duration::from_secs(10));
    cluster.dev.wipe(0).unwrap();
    let started = Instant::now();
    cluster.dev.spawn(0).unwrap();
    eventually(Duration::from_secs(1800), "member 0 caught up", || async {
        cluster.status(0).await.is_some_and(|s| s.caught_up)
    })
    .await;
    row(&cluster, "wiped member 0 caught up (copier 0; sources 1, 2)", started.elapsed(), &[0, 1, 2]);
    cluster.wait_ready(0, Duration::from_secs(60)).await;
    // Values read through member 0 (any quorum may include it) are the preloaded ones.
    let c0 = cluster.client(0).await;
    for i in (0..n).step_by((n / 200).max(1)) {
        assert_eq!(c0.current(&sequence(i)).await.unwrap(), value(i), "sequence {}", sequence(i));
    }

    // 3 -> 4: member 3 joins through a joint epoch; it catches up, then every member of the new
    // set rewrites its share of the registers through joint quorums.
    let started = Instant::now();
    cluster.dev.spawn(3).unwrap();
    let joint = cluster.dev.write_members(&[0, 1, 2, 3], Some(&[0, 1, 2])).unwrap();
    let sockets: Vec<String> = (0..4).map(|i| cluster.dev.member(i).socket.clone()).collect();
    eventually(Duration::from_secs(3600), "every member migrated the joint epoch", || {
        let sockets = sockets.clone();
        async move {
            for s in sockets {
                let Ok(c) = ordo_client::Client::connect(&s).await else { return false };
                match c.status().await {
                    Ok(st) if st.epoch == joint && st.migrated_epoch >= joint && st.caught_up => {}
                    _ => return false,
                }
            }
            true
        }
    })
    .await;
    row(
        &cluster,
        "member 3 joined, joint epoch migrated by all (3 copies, then rewrites)",
        started.elapsed(),
        &[0, 1, 2, 3],
    );

    // Every register reached the rebuilt and the new member.
    for i in [0, 3] {
        cluster.dev.stop(i, Duration::from_secs(10));
        let m = cluster.dev.member(i).clone();
        assert!(count(&m.data_dir, &m.id).await >= n as u64, "{} holds every register", m.id);
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("scale.md"), &report).unwrap();
    println!("\n{report}");
}
