//! The divider runtime of one sidecar on simulated acceptors (`common::SimNet`):
//!
//! - app calls never wait for a quorum write: with the network stalled while a renewal is in
//!   flight, every `ConfirmStop` still returns at once, and the confirms gathered meanwhile are
//!   released by one write per owner bucket once the network moves again;
//! - the mixed-version guard: a live member record written by a sidecar of the per-key owner
//!   layout (format `m3`, the last one it wrote, byte for byte as it wrote it) makes this
//!   sidecar stop every key it holds, refuse new members with a clear error and claim nothing;
//!   once that record is `left`, keys are served again.

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{Drop, SimNet};
use ordo_sidecar::divider::handoff::StopReason;
use ordo_sidecar::divider::lease::LeaseTiming;
use ordo_sidecar::divider::records::{owner_bucket, OWNER_BUCKETS};
use ordo_sidecar::divider::runtime::{DividerError, DividerSettings, Dividers, Event};
use ordo_sidecar::metrics::Metrics;
use ordo_sidecar::quorum::register::Written;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

/// The record a sidecar of the per-key layout writes for a live member (its `MemberRecord::encode`
/// before owner buckets: tag, session, state, affinity, changed, lease ms, margin ms, releases,
/// address), written at version `expect` (`changed` is one more, as its writer sets it). Its
/// lease is long, so nobody expires it during the test.
fn per_key_layout_record(state: &str, expect: u64) -> Vec<u8> {
    format!("m3\nold-session\n{state}\n1\n{}\n600000\n300\n0\nold:1", expect + 1).into_bytes()
}

/// Events until `done` says so, or panics after `limit`.
async fn events_until(
    rx: &mut UnboundedReceiver<Event>,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&Event) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if done(&e) => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the session's stream ended while waiting for: {what}"),
            Err(_) => panic!("not within {limit:?}: {what}"),
        }
    }
}

/// Keys `k0000`.. of a test divider.
fn test_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i:04}")).collect()
}

/// Fails with the renewal holding `sessions` across its write (the lock app calls take): the
/// first confirm then waits for the stalled renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_never_wait_for_a_quorum_write_and_are_released_by_one_write_per_bucket() {
    let cfg = common::members(&["a0".into(), "a1".into(), "a2".into()]);
    let net = Arc::new(SimNet::new(&cfg, 11, 0.0));
    let registers = common::registers(&net, &cfg, "p0", Duration::from_secs(20));
    let settings = DividerSettings {
        timing: LeaseTiming { lease: Duration::from_millis(2000), margin: Duration::from_millis(200) },
        stop_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(20),
    };
    let metrics = Metrics::new().divider.clone();
    let dividers = Dividers::new(registers.clone(), settings, None, "side-0".into(), metrics);
    let d = dividers.get("d").expect("divider");
    // About 8 keys per owner bucket: one write per confirm would write each bucket ~8 times.
    let keys = test_keys(8 * OWNER_BUCKETS as usize);
    for chunk in keys.chunks(1000) {
        d.add_keys(chunk).await.expect("add keys");
    }
    let mut rx = d.watch("m", Some(1), "m:1").await.expect("watch");
    let mut started = 0;
    events_until(&mut rx, Duration::from_secs(60), "every key started", |e| {
        started += usize::from(matches!(e, Event::Start { .. }));
        started == keys.len()
    })
    .await;
    let bucket_versions = || async {
        let mut v = Vec::new();
        for b in 0..OWNER_BUCKETS {
            let e = registers.read(&format!("divider/d/owners/{b}")).await.expect("read bucket");
            v.push(e.map_or(0, |e| e.version));
        }
        v
    };
    d.update_affinity("m", |_| Ok(0)).await.expect("affinity 0");
    let mut stops = Vec::new();
    events_until(&mut rx, Duration::from_secs(60), "every key asked to stop", |e| {
        if let Event::Stop { key, token, .. } = e {
            stops.push((key.clone(), *token));
        }
        stops.len() == keys.len()
    })
    .await;
    let before = bucket_versions().await;

    // Stall the network and wait until a renewal is surely in flight (they run every lease / 4).
    net.set_drop(Drop::Stall);
    tokio::time::sleep(settings.timing.lease / 4 + Duration::from_millis(200)).await;
    for (key, token) in &stops {
        // Half the request timeout: a confirm that waited for the stalled write would not return.
        tokio::time::timeout(settings.request_timeout / 2, d.confirm_stop("m", key, *token))
            .await
            .unwrap_or_else(|_| panic!("ConfirmStop({key}) waited for a stalled quorum write"))
            .expect("confirm");
    }
    net.set_drop(Drop::Random);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.assigned("m").await.expect("assigned").is_empty()
        || !d.report().await.held_here.iter().all(|h| h.keys == 0)
    {
        assert!(Instant::now() < deadline, "the confirmed keys were not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = bucket_versions().await;
    let mut per_bucket = vec![0usize; OWNER_BUCKETS as usize];
    for (key, _) in &stops {
        per_bucket[owner_bucket(key) as usize] += 1;
    }
    for b in 0..OWNER_BUCKETS as usize {
        // One release write per bucket, maybe two (a pass in flight when the network stalled
        // carries the confirms it had gathered; the next one carries the rest).
        assert!(
            after[b] - before[b] <= 2,
            "bucket {b}: {} writes released its {} keys",
            after[b] - before[b],
            per_bucket[b]
        );
    }
}

/// Fails with the guard taken out (`judge_layout` never blocking): the keys are never stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_member_of_the_per_key_layout_stops_every_key_here_until_it_is_gone() {
    let cfg = common::members(&["a0".into(), "a1".into(), "a2".into()]);
    let net = Arc::new(SimNet::new(&cfg, 7, 0.0));
    let registers = common::registers(&net, &cfg, "p0", Duration::from_millis(800));
    let settings = DividerSettings {
        timing: LeaseTiming { lease: Duration::from_millis(1600), margin: Duration::from_millis(150) },
        stop_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
    };
    let metrics = Metrics::new().divider.clone();
    let dividers = Dividers::new(registers.clone(), settings, None, "side-0".into(), metrics);
    let d = dividers.get("d").expect("divider");
    let keys = test_keys(6);
    d.add_keys(&keys).await.expect("add keys");
    let mut rx = d.watch("new-1", Some(1), "new:1").await.expect("watch");
    let mut started = 0;
    events_until(&mut rx, Duration::from_secs(20), "every key started", |e| {
        started += usize::from(matches!(e, Event::Start { .. }));
        started == keys.len()
    })
    .await;

    // A sidecar of the per-key layout joins the divider.
    let member = "divider/d/members/old-1";
    let created = registers.create(member, per_key_layout_record("live", 0)).await.expect("create");
    let Written::Applied { version } = created else { panic!("the old record exists already") };
    let mut stopped = 0;
    events_until(&mut rx, Duration::from_secs(20), "every key stopped, its token dead", |e| {
        stopped += usize::from(matches!(e, Event::Stop { reason: StopReason::LeaseLost, .. }));
        stopped == keys.len()
    })
    .await;
    match d.watch("new-2", Some(1), "new:2").await {
        Err(DividerError::Precondition(msg)) => {
            assert!(msg.contains("per-key owner layout") && msg.contains("old-1"), "unclear error: {msg}")
        }
        other => panic!("a join while an old-layout sidecar is live: {:?}", other.map(|_| ())),
    }
    // Nothing is claimed meanwhile (the session re-joins, but starts no key).
    let quiet = Instant::now() + 3 * settings.timing.lease / 2;
    while let Ok(Some(e)) = tokio::time::timeout_at(quiet, rx.recv()).await {
        assert!(!matches!(e, Event::Start { .. }), "{e:?} while an old-layout sidecar is live");
    }

    // It leaves: the keys are served again.
    let left = registers.compare_and_set(member, version, per_key_layout_record("left", version)).await.expect("leave");
    assert!(matches!(left, Written::Applied { .. }));
    let mut restarted = 0;
    events_until(&mut rx, Duration::from_secs(20), "every key started again", |e| {
        restarted += usize::from(matches!(e, Event::Start { .. }));
        restarted == keys.len()
    })
    .await;
    let _joined = d.watch("new-2", Some(1), "new:2").await.expect("a join once the old sidecar left");
}
