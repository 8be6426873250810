//! The divider's mixed-version guard, on simulated acceptors: a live member record written by a
//! sidecar of the per-key owner layout (format `m3`, the last one it wrote, byte for byte as it
//! wrote it) makes this sidecar stop every key it holds, refuse new members with a clear error
//! and claim nothing; once that record is `left`, keys are served again. Fails with the guard
//! taken out (`judge_layout` never blocking): the keys are never stopped.

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::SimNet;
use ordo_sidecar::divider::handoff::StopReason;
use ordo_sidecar::divider::lease::LeaseTiming;
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
    let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
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
