//! The register API between real processes: clients on every member race read-then-
//! compare-and-set on shared keys through `ordo.v1.Registers` while a member is killed, and a
//! checker verifies the history; a write that runs out of time says whether it may have been
//! applied, and a re-read tells the truth; bad input gets a clear error and changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ordo_e2e::cluster::{TestCluster, TestOptions};
use ordo_proto::v1 as pb;
use tonic::Code;

fn opts() -> TestOptions {
    TestOptions { members: 3, extra_args: vec!["--registers-api".into()], ..Default::default() }
}

#[derive(Default)]
struct History {
    /// (key, version expected, version written, value) of each applied write.
    applied: Vec<(String, u64, u64, Vec<u8>)>,
    /// (key, version expected, version the conflict reported).
    conflicts: Vec<(String, u64, u64)>,
    /// Writes whose outcome is unknown (DEADLINE_EXCEEDED) or that failed in transport.
    unknown: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_set_races_across_members_and_a_kill9_never_lose_an_update() {
    let mut cluster = TestCluster::start(opts()).await;
    let history = Arc::new(Mutex::new(History::default()));
    let mut tasks = Vec::new();
    for member in 0..3 {
        for c in 0..2 {
            let mut regs = cluster.client(member).await.registers();
            let history = history.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..40u32 {
                    let key = format!("race/k{}", i % 2);
                    let value = format!("m{member}c{c}i{i}").into_bytes();
                    let Ok(seen) = regs.read(pb::RegisterReadRequest { key: key.clone() }).await else {
                        if member == 2 {
                            return; // its sidecar was killed
                        }
                        continue;
                    };
                    let seen = seen.into_inner();
                    let r = if seen.found {
                        let req =
                            pb::CompareAndSetRequest { key: key.clone(), version: seen.version, value: value.clone() };
                        regs.compare_and_set(req).await
                    } else {
                        regs.create(pb::RegisterCreateRequest { key: key.clone(), value: value.clone() }).await
                    };
                    let expected = if seen.found { seen.version } else { 0 };
                    let mut h = history.lock().unwrap();
                    match r {
                        Ok(w) if w.get_ref().applied => h.applied.push((key, expected, w.get_ref().version, value)),
                        Ok(w) => {
                            let current = w.into_inner().current.unwrap_or_default();
                            h.conflicts.push((key, expected, if current.found { current.version } else { 0 }));
                        }
                        Err(s) if s.code() == Code::Unavailable && !s.message().contains("transport") => {}
                        Err(_) => h.unknown += 1,
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.dev.kill9(2);
    for t in tasks {
        t.await.unwrap();
    }
    let h = std::mem::take(&mut *history.lock().unwrap());
    let mut written: HashMap<(String, u64), &Vec<u8>> = HashMap::new();
    for (key, expected, version, value) in &h.applied {
        assert_eq!(*version, expected + 1, "{key}: written at v{version} from v{expected}");
        assert!(written.insert((key.clone(), *version), value).is_none(), "two writes made {key} v{version}");
    }
    for (key, expected, current) in &h.conflicts {
        assert_ne!(expected, current, "{key}: a conflict at the version expected");
    }
    let mut regs = cluster.client(0).await.registers();
    for key in ["race/k0", "race/k1"] {
        let now = regs.read(pb::RegisterReadRequest { key: key.into() }).await.unwrap().into_inner();
        assert!(now.found, "{key} was written");
        let top = h.applied.iter().filter(|a| a.0 == key).map(|a| a.2).max().unwrap_or(0);
        assert!(now.version >= top, "{key} went back from v{top} to v{}", now.version);
        match written.get(&(key.to_string(), now.version)) {
            Some(v) => assert_eq!(**v, now.value, "{key} v{} holds another write's value", now.version),
            None => assert!(h.unknown > 0, "{key} v{} was written by nobody", now.version),
        }
    }
    assert!(h.applied.len() > 40, "most writes complete: {} applied", h.applied.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_write_says_whether_it_may_have_applied_and_a_reread_tells() {
    let cluster = TestCluster::start(opts()).await;
    let mut regs = cluster.client(0).await.registers();
    let created = regs.create(pb::RegisterCreateRequest { key: "t/a".into(), value: b"v1".to_vec() }).await.unwrap();
    assert_eq!((created.get_ref().applied, created.get_ref().version), (true, 1));
    cluster.dev.signal(1, "STOP");
    cluster.dev.signal(2, "STOP");
    let started = std::time::Instant::now();
    let err = regs
        .compare_and_set(pb::CompareAndSetRequest { key: "t/a".into(), version: 1, value: b"v2".to_vec() })
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(6), "answered within the request deadline");
    cluster.dev.signal(1, "CONT");
    cluster.dev.signal(2, "CONT");
    cluster.wait_ready(1, Duration::from_secs(20)).await;
    let now = regs.read(pb::RegisterReadRequest { key: "t/a".into() }).await.unwrap().into_inner();
    match err.code() {
        // Not applied, and never will be.
        Code::Unavailable => assert_eq!((now.version, now.value.as_slice()), (1, b"v1".as_slice()), "{err:?}"),
        // May or may not have been applied: the re-read is the truth, and it is one of the two.
        Code::DeadlineExceeded => {
            assert!(err.message().contains("outcome unknown"), "{err:?}");
            assert!(matches!((now.version, now.value.as_slice()), (1, b"v1") | (2, b"v2")), "{now:?}");
        }
        other => panic!("unexpected {other:?}: {err:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_register_requests_get_clear_errors_and_change_nothing() {
    let cluster = TestCluster::start(opts()).await;
    let mut regs = cluster.client(1).await.registers();
    regs.create(pb::RegisterCreateRequest { key: "b/a".into(), value: b"keep".to_vec() }).await.unwrap();
    let bad: Vec<(&str, Result<(), tonic::Status>)> = vec![
        ("empty key", regs.read(pb::RegisterReadRequest { key: String::new() }).await.map(drop)),
        ("bad key", regs.read(pb::RegisterReadRequest { key: "b//a".into() }).await.map(drop)),
        ("huge key", regs.read(pb::RegisterReadRequest { key: "k".repeat(400) }).await.map(drop)),
        (
            "version 0",
            regs.compare_and_set(pb::CompareAndSetRequest { key: "b/a".into(), version: 0, value: vec![] })
                .await
                .map(drop),
        ),
        (
            "huge value",
            regs.compare_and_set(pb::CompareAndSetRequest {
                key: "b/a".into(),
                version: 1,
                value: vec![7; (1 << 20) + 1],
            })
            .await
            .map(drop),
        ),
        ("delete version 0", regs.delete(pb::RegisterDeleteRequest { key: "b/a".into(), version: 0 }).await.map(drop)),
        (
            "page size 0",
            regs.list(pb::RegisterListRequest { prefix: "b/".into(), after: String::new(), limit: 0 }).await.map(drop),
        ),
        (
            "page size 1M",
            regs.list(pb::RegisterListRequest { prefix: "b/".into(), after: String::new(), limit: 1_000_000 })
                .await
                .map(drop),
        ),
    ];
    for (what, r) in bad {
        let e = r.expect_err(what);
        assert!(matches!(e.code(), Code::InvalidArgument | Code::OutOfRange), "{what}: {e:?}");
        assert!(!e.message().is_empty(), "{what}: says what is wrong");
    }
    let now = regs.read(pb::RegisterReadRequest { key: "b/a".into() }).await.unwrap().into_inner();
    assert_eq!((now.version, now.value.as_slice()), (1, b"keep".as_slice()));
    let page =
        regs.list(pb::RegisterListRequest { prefix: "b/".into(), after: String::new(), limit: 10 }).await.unwrap();
    assert_eq!(page.get_ref().keys, vec!["b/a".to_string()]);
    // Off by default: a sidecar without --registers-api does not serve it.
    let plain = TestCluster::start(TestOptions { members: 1, ..Default::default() }).await;
    let e = plain.client(0).await.registers().read(pb::RegisterReadRequest { key: "x".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
}
