//! The typed register API on a simulated lossy network: clients race read-then-compare-and-set
//! on shared registers, and a checker verifies the history (no lost update, versions strictly
//! increasing, every conflict reports a newer version); and the meaning of a timed-out call:
//! `OutcomeUnknown` when acceptors may hold the write (it can turn out applied), `Unavailable`
//! only when it was never sent (it is never applied).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{registers, Drop, SimNet};
use ordo_sidecar::quorum::register::{Entry, RegisterError, Written};

/// What one client saw, for the checker.
#[derive(Debug, Default)]
struct History {
    /// (key, expected version, version written, value) of every applied compare-and-set.
    applied: Vec<(String, u64, u64, Vec<u8>)>,
    /// (key, expected version, version reported) of every conflict.
    conflicts: Vec<(String, u64, u64)>,
    unknown: usize,
    unavailable: usize,
}

#[tokio::test(flavor = "current_thread")]
async fn racing_compare_and_set_never_loses_an_update() {
    for seed in 0..3u64 {
        let cfg = common::members(&["a0".into(), "a1".into(), "a2".into()]);
        let net = Arc::new(SimNet::new(&cfg, seed, 0.1));
        let history = Arc::new(Mutex::new(History::default()));
        let mut tasks = Vec::new();
        for p in 0..3 {
            let regs = registers(&net, &cfg, &format!("p{p}"), Duration::from_millis(400));
            for c in 0..3 {
                let (regs, history) = (regs.clone(), history.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..15u32 {
                        let key = format!("reg/k{}", i % 2);
                        let value = format!("p{p}c{c}i{i}").into_bytes();
                        let seen = match regs.read(&key).await {
                            Ok(e) => e,
                            Err(_) => continue,
                        };
                        let r = match &seen {
                            None => regs.create(&key, value.clone()).await,
                            Some(e) => regs.compare_and_set(&key, e.version, value.clone()).await,
                        };
                        let expected = seen.map_or(0, |e| e.version);
                        let mut h = history.lock().unwrap();
                        match r {
                            Ok(Written::Applied { version }) => h.applied.push((key, expected, version, value)),
                            Ok(Written::Conflict { current }) => {
                                h.conflicts.push((key, expected, current.map_or(0, |e| e.version)))
                            }
                            Err(RegisterError::OutcomeUnknown { .. }) => h.unknown += 1,
                            Err(RegisterError::Unavailable { .. }) => h.unavailable += 1,
                            Err(e) => panic!("unexpected {e}"),
                        }
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let h = std::mem::take(&mut *history.lock().unwrap());
        // No lost update: two applied writes never started from the same version of one key,
        // and each wrote the version after the one it expected.
        let mut seen: HashMap<(String, u64), &Vec<u8>> = HashMap::new();
        for (key, expected, version, value) in &h.applied {
            assert_eq!(*version, expected + 1, "seed {seed}: {key} written at {version} from {expected}");
            assert!(
                seen.insert((key.clone(), *version), value).is_none(),
                "seed {seed}: two writes made {key} v{version}"
            );
        }
        // A conflict reports a version other than the one expected.
        for (key, expected, current) in &h.conflicts {
            assert_ne!(expected, current, "seed {seed}: {key} conflict at the expected version");
        }
        // The final state is the value of the highest version written, or of a write whose
        // outcome was unknown (it may have been applied).
        let reader = registers(&net, &cfg, "checker", Duration::from_secs(5));
        for key in ["reg/k0", "reg/k1"] {
            let Some(Entry { version, value }) = reader.read(key).await.unwrap() else { continue };
            let top = h.applied.iter().filter(|a| a.0 == key).map(|a| a.2).max().unwrap_or(0);
            assert!(version >= top, "seed {seed}: {key} went back from v{top} to v{version}");
            if let Some(v) = seen.get(&(key.to_string(), version)) {
                assert_eq!(**v, value, "seed {seed}: {key} v{version} holds another write's value");
            } else {
                assert!(h.unknown > 0, "seed {seed}: {key} v{version} was written by nobody");
            }
        }
        assert!(!h.applied.is_empty(), "seed {seed}: some writes complete despite the loss");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_timed_out_write_is_unavailable_only_if_it_was_never_sent() {
    let cfg = common::members(&["a0".into(), "a1".into(), "a2".into()]);
    let net = Arc::new(SimNet::new(&cfg, 7, 0.0));
    let regs = registers(&net, &cfg, "p0", Duration::from_millis(150));
    let reader = registers(&net, &cfg, "p1", Duration::from_secs(2));
    regs.create("reg/a", b"v1".to_vec()).await.unwrap();

    // Nothing reaches the acceptors from a proposer with no round in flight (its first round
    // must Prepare, so no accept is ever sent): not applied, and the error says so. (A proposer
    // that chains rounds sends the accept at once; its error would be OutcomeUnknown.)
    net.set_drop(Drop::Requests);
    let fresh = registers(&net, &cfg, "p2", Duration::from_millis(150));
    let e = fresh.compare_and_set("reg/a", 1, b"lost".to_vec()).await.unwrap_err();
    assert!(matches!(e, RegisterError::Unavailable { answered: 0, total: 3, .. }), "{e}");
    net.set_drop(Drop::Random);
    assert_eq!(reader.read("reg/a").await.unwrap().unwrap().value, b"v1");

    // The acceptors take the write but no reply comes back: the outcome is unknown, and it
    // turns out applied. A caller that had taken the error as "failed" would be wrong.
    assert_eq!(regs.read("reg/a").await.unwrap().unwrap().version, 1); // p0 leads the register again
    net.set_drop(Drop::Replies);
    let e = regs.compare_and_set("reg/a", 1, b"v2".to_vec()).await.unwrap_err();
    assert!(matches!(e, RegisterError::OutcomeUnknown { .. }), "{e}");
    assert!(e.to_string().contains("re-read before acting"), "{e}");
    net.set_drop(Drop::Random);
    let now = reader.read("reg/a").await.unwrap().unwrap();
    assert_eq!((now.version, now.value.as_slice()), (2, b"v2".as_slice()));
}

#[tokio::test(flavor = "current_thread")]
async fn versions_keep_counting_through_delete_and_list_sees_live_keys() {
    let cfg = common::members(&["a0".into(), "a1".into(), "a2".into()]);
    let net = Arc::new(SimNet::new(&cfg, 3, 0.0));
    let regs = registers(&net, &cfg, "p0", Duration::from_secs(2));
    for k in ["div/d/keys/a", "div/d/keys/b", "div/d/keys/c", "div/e/keys/x"] {
        assert_eq!(regs.create(k, b"1".to_vec()).await.unwrap(), Written::Applied { version: 1 });
    }
    assert_eq!(regs.delete("div/d/keys/b", 1).await.unwrap(), Written::Applied { version: 2 });
    assert_eq!(regs.read("div/d/keys/b").await.unwrap(), None);
    // Re-created: the version continues (a fencing token never repeats).
    assert_eq!(regs.create("div/d/keys/b", b"2".to_vec()).await.unwrap(), Written::Applied { version: 3 });
    assert_eq!(regs.delete("div/d/keys/c", 1).await.unwrap(), Written::Applied { version: 2 });
    // Paged listing under a prefix: live keys only, in order, across pages of one.
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = regs.list("div/d/", after.as_deref(), 1).await.unwrap();
        keys.extend(page.keys);
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(keys, vec!["div/d/keys/a".to_string(), "div/d/keys/b".to_string()]);
    // Bad input: a clear error, nothing changed.
    for bad in [
        regs.compare_and_set("div/d/keys/a", 0, vec![]).await,
        regs.create("", vec![]).await,
        regs.create(&"k".repeat(300), vec![]).await,
        regs.create("div/huge", vec![0; (1 << 20) + 1]).await,
        regs.delete("div/d/keys/a", 0).await,
    ] {
        assert!(matches!(bad, Err(RegisterError::Invalid(_))), "{bad:?}");
    }
    assert!(matches!(regs.list("div/", None, 0).await, Err(RegisterError::Invalid(_))));
    assert!(matches!(regs.list("div/", None, 100_000).await, Err(RegisterError::Invalid(_))));
    assert_eq!(regs.read("div/d/keys/a").await.unwrap(), Some(Entry { version: 1, value: b"1".to_vec() }));
}
