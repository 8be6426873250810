//! The sequencer's guarantees, shown against real `ordo-sidecar` processes on 127.0.0.1.
//! Run `cargo build --bins` first (the top-level test script does).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ordo_client::{Client, ClientError};
use ordo_e2e::checker::{
    check_increasing_per_client, check_increasing_per_sidecar, check_strict_real_time, check_unique, Allocation,
};
use ordo_e2e::cluster::{eventually, TestOptions};
use ordo_e2e::TestCluster;

type Log = Arc<Mutex<Vec<Allocation>>>;

/// How a load client asks for IDs.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `Next(count)` from the sidecar's buffer.
    Buffered(u64),
    /// `Next(count, strict)`.
    Strict(u64),
    /// The leased in-process `Sequence` handle with this lease size.
    Leased(u64),
}

/// Runs one client of sidecar `sidecar` for `ops` requests, recording every allocation.
#[allow(clippy::too_many_arguments)]
async fn load(
    client: Client,
    sidecar: usize,
    id: usize,
    kind: Kind,
    seq: &'static str,
    ops: usize,
    log: Log,
    tolerate_errors: bool,
) -> usize {
    let mut errors = 0;
    let handle = client.sequence(
        seq,
        match kind {
            Kind::Leased(n) => n,
            _ => 1,
        },
    );
    for _ in 0..ops {
        let invoked = Instant::now();
        let r = match kind {
            Kind::Buffered(n) => client.next(seq, n, false).await,
            Kind::Strict(n) => client.next(seq, n, true).await,
            Kind::Leased(_) => handle.next_id().await.map(|id| id..id + 1),
        };
        match r {
            Ok(ids) => log.lock().unwrap().push(Allocation {
                client: id,
                sidecar: (!matches!(kind, Kind::Leased(_))).then_some(sidecar),
                ids,
                strict: matches!(kind, Kind::Strict(_)),
                invoked,
                completed: Instant::now(),
            }),
            Err(e) if tolerate_errors => {
                errors += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("client {id} ({kind:?}): {e}"),
        }
    }
    errors
}

fn check_all(log: &Log) -> u64 {
    let allocs = log.lock().unwrap().clone();
    let n = check_unique(&allocs).unwrap_or_else(|v| panic!("{}", v.0));
    check_increasing_per_client(&allocs).unwrap_or_else(|v| panic!("{}", v.0));
    check_increasing_per_sidecar(&allocs).unwrap_or_else(|v| panic!("{}", v.0));
    check_strict_real_time(&allocs).unwrap_or_else(|v| panic!("{}", v.0));
    n
}

fn opts(members: usize) -> TestOptions {
    TestOptions { members, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_id_twice_with_racing_range_sizes_and_strict() {
    // Different buffer range sizes per member, too: 1, 3 and 1000.
    let mut o = opts(3);
    o.member_args =
        vec![vec!["--range-size=1".into()], vec!["--range-size=3".into()], vec!["--range-size=1000".into()]];
    let cluster = TestCluster::start(o).await;
    let log: Log = Arc::default();
    let kinds = [
        Kind::Buffered(1),
        Kind::Buffered(2),
        Kind::Buffered(3),
        Kind::Buffered(1000),
        Kind::Buffered(1024),
        Kind::Strict(1),
        Kind::Strict(2),
        Kind::Strict(1024),
        Kind::Leased(1),
        Kind::Leased(2),
        Kind::Leased(3),
        Kind::Leased(1000),
        Kind::Leased(1024),
    ];
    let mut tasks = Vec::new();
    for member in 0..3 {
        for (k, kind) in kinds.iter().enumerate() {
            let client = cluster.client(member).await;
            let id = member * 100 + k;
            tasks.push(tokio::spawn(load(client, member, id, *kind, "race", 60, log.clone(), false)));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ids = check_all(&log);
    assert!(ids > 3 * 13 * 60, "every request returned IDs ({ids})");
    // Current is above every ID handed out.
    let max_end = log.lock().unwrap().iter().map(|a| a.ids.end).max().unwrap();
    let current = cluster.client(0).await.current("race").await.unwrap();
    assert!(current >= max_end, "current {current} below an issued ID {max_end}");
}

/// Through one sidecar, a range never starts below an ID that sidecar returned before, across
/// buffered calls, strict calls and calls larger than the buffer from several clients (before
/// the fix, a strict call followed by a buffered one went back below the strict range).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_from_one_sidecar_never_go_backwards() {
    let mut o = opts(3);
    // Small buffers refill often, so refills race with the direct rounds; two members keep
    // several allocations in flight (which may complete out of order), one keeps the default.
    o.member_args = vec![
        vec!["--range-size=16".into(), "--sequence-allocations-in-flight=4".into()],
        vec!["--range-size=64".into(), "--sequence-allocations-in-flight=16".into()],
        vec![],
    ];
    let cluster = TestCluster::start(o).await;
    let log: Log = Arc::default();
    let (clients, calls) = (12, 30);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let sidecar = c % 3;
        let client = cluster.client(sidecar).await;
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for call in 0..calls {
                // Sizes within and beyond each buffer; every fifth call strict.
                let count = [1u64, 3, 5, 20, 100, 1500][(c + call) % 6];
                let strict = call % 5 == 4;
                let invoked = Instant::now();
                let ids = client
                    .next("mixed", count, strict)
                    .await
                    .unwrap_or_else(|e| panic!("client {c}: next({count}, strict: {strict}): {e}"));
                assert_eq!(ids.end - ids.start, count);
                let completed = Instant::now();
                log.lock().unwrap().push(Allocation {
                    client: c,
                    sidecar: Some(sidecar),
                    ids,
                    strict,
                    invoked,
                    completed,
                });
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(log.lock().unwrap().len(), clients * calls);
    check_all(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_one_member_under_load_then_it_catches_up() {
    let mut cluster = TestCluster::start(opts(3)).await;
    let log: Log = Arc::default();
    let mut tasks = Vec::new();
    for member in 0..2 {
        for (k, kind) in [Kind::Strict(1), Kind::Buffered(5), Kind::Leased(16)].into_iter().enumerate() {
            let client = cluster.client(member).await;
            tasks.push(tokio::spawn(load(client, member, member * 10 + k, kind, "k9", 400, log.clone(), false)));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.dev.kill9(2);
    // Clients on the two survivors keep succeeding (load() panics on any error).
    for t in tasks {
        t.await.unwrap();
    }
    cluster.dev.spawn(2).unwrap();
    cluster.wait_ready(2, Duration::from_secs(20)).await;
    let st = cluster.status(2).await.unwrap();
    assert!(st.caught_up);
    // The restarted member serves, and nothing it hands out was handed out before.
    let c2 = cluster.client(2).await;
    for _ in 0..50 {
        let invoked = Instant::now();
        let ids = c2.next("k9", 1, true).await.unwrap();
        log.lock().unwrap().push(Allocation {
            client: 99,
            sidecar: Some(2),
            ids,
            strict: true,
            invoked,
            completed: Instant::now(),
        });
    }
    check_all(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_all_members_loses_nothing_acknowledged() {
    let mut cluster = TestCluster::start(opts(3)).await;
    let log: Log = Arc::default();
    let mut tasks = Vec::new();
    for member in 0..3 {
        let client = cluster.client(member).await;
        tasks.push(tokio::spawn(load(client, member, member, Kind::Strict(3), "all", 100, log.clone(), false)));
        let client = cluster.client(member).await;
        tasks.push(tokio::spawn(load(client, member, 10 + member, Kind::Buffered(7), "all", 100, log.clone(), false)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let acknowledged = log.lock().unwrap().iter().map(|a| a.ids.end).max().unwrap();
    for i in 0..3 {
        cluster.dev.kill9(i);
    }
    for i in 0..3 {
        cluster.dev.spawn(i).unwrap();
    }
    for i in 0..3 {
        cluster.wait_ready(i, Duration::from_secs(20)).await;
    }
    let c = cluster.client(1).await;
    let current = c.current("all").await.unwrap();
    assert!(current >= acknowledged, "after restart current {current} < acknowledged end {acknowledged}");
    for member in 0..3 {
        let c = cluster.client(member).await;
        for strict in [true, false] {
            let invoked = Instant::now();
            let ids = c.next("all", 2, strict).await.unwrap();
            assert!(ids.start >= acknowledged, "reissued {ids:?} (acknowledged up to {acknowledged})");
            log.lock().unwrap().push(Allocation {
                client: 50 + member,
                sidecar: Some(member),
                ids,
                strict,
                invoked,
                completed: Instant::now(),
            });
        }
    }
    check_all(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_member_catches_up_before_voting_and_nothing_is_reissued() {
    let mut cluster = TestCluster::start(opts(3)).await;
    let log: Log = Arc::default();
    let c0 = cluster.client(0).await;
    for _ in 0..50 {
        let invoked = Instant::now();
        let ids = c0.next("wipe", 10, true).await.unwrap();
        log.lock().unwrap().push(Allocation {
            client: 0,
            sidecar: Some(0),
            ids,
            strict: true,
            invoked,
            completed: Instant::now(),
        });
    }
    drop(c0);
    // Member 0 loses its disk.
    cluster.dev.kill9(0);
    cluster.dev.wipe(0).unwrap();
    cluster.dev.spawn(0).unwrap();
    cluster.wait_ready(0, Duration::from_secs(20)).await;
    // Now only member 0's copied state and member 1 remain: stop member 2 for good, so every
    // quorum includes the wiped member.
    cluster.dev.kill9(2);
    let c1 = cluster.client(1).await;
    let after_loss = c1.next("wipe", 1, true).await.unwrap();
    let acknowledged = log.lock().unwrap().iter().map(|a| a.ids.end).max().unwrap();
    assert!(
        after_loss.start >= acknowledged,
        "reissued {after_loss:?} after a wipe; acknowledged up to {acknowledged}"
    );
    // And member 1 down, member 2 back: quorum {0, 2} still never goes back.
    cluster.dev.kill9(1);
    cluster.dev.spawn(2).unwrap();
    cluster.wait_ready(2, Duration::from_secs(20)).await;
    let c2 = cluster.client(2).await;
    let later = c2.next("wipe", 1, true).await.unwrap();
    assert!(later.start >= after_loss.end, "{later:?} not after {after_loss:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_member_answers_unavailable_within_its_deadline_and_heals() {
    let mut o = opts(3);
    o.proxied = true;
    let cluster = TestCluster::start(o).await;
    let c0 = cluster.client(0).await;
    c0.next("part", 1, true).await.unwrap();
    cluster.partition(0);
    let started = Instant::now();
    let err = c0.next("part", 1, true).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert!(err.to_string().contains("of 3 members answered"), "says how many answered: {err}");
    // The request deadline is 2 s; allow generous scheduling slack, but never a hang.
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    // The others still form a quorum.
    let c1 = cluster.client(1).await;
    let during = c1.next("part", 1, true).await.unwrap();
    cluster.heal(0);
    let healed = Arc::new(Mutex::new(None));
    eventually(Duration::from_secs(20), "member 0 serves again", || {
        let (c0, healed) = (c0.clone(), healed.clone());
        async move {
            match c0.next("part", 1, true).await {
                Ok(r) => {
                    *healed.lock().unwrap() = Some(r);
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await;
    let healed = healed.lock().unwrap().clone().unwrap();
    assert!(healed.start >= during.end);
    cluster.wait_ready(0, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_change_3_to_5_to_3_keeps_ids_unique() {
    let mut o = opts(3);
    o.slots = 5;
    let mut cluster = TestCluster::start(o).await;
    let log: Log = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Load on members 0 and 1, which stay throughout; errors are tolerated during epoch
    // switches (members reload the file at slightly different times) but IDs must stay unique.
    let mut tasks = Vec::new();
    for member in 0..2 {
        for (k, kind) in [Kind::Strict(1), Kind::Buffered(3)].into_iter().enumerate() {
            let client = cluster.client(member).await;
            let (log, stop) = (log.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut errors = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    errors +=
                        load(client.clone(), member, member * 10 + k, kind, "members", 10, log.clone(), true).await;
                }
                errors
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 3 -> 5: start the new members, joint epoch, wait for migration, then the new set alone.
    cluster.dev.spawn(3).unwrap();
    cluster.dev.spawn(4).unwrap();
    let joint = cluster.dev.write_members(&[0, 1, 2, 3, 4], Some(&[0, 1, 2])).unwrap();
    cluster.wait_migrated(&[0, 1, 2, 3, 4], joint).await;
    let five = cluster.dev.write_members(&[0, 1, 2, 3, 4], None).unwrap();
    for i in 0..5 {
        cluster.wait_ready(i, Duration::from_secs(20)).await;
    }
    eventually(Duration::from_secs(10), "member 4 on the five-member epoch", || async {
        cluster.status(4).await.is_some_and(|s| s.epoch == five)
    })
    .await;
    // The new members serve too.
    let c4 = cluster.client(4).await;
    let invoked = Instant::now();
    let ids = c4.next("members", 1, true).await.unwrap();
    log.lock().unwrap().push(Allocation {
        client: 400,
        sidecar: Some(4),
        ids,
        strict: true,
        invoked,
        completed: Instant::now(),
    });
    // 5 -> 3: drop members 3 and 4 (and the original 2 stays), same two steps, then stop them.
    let joint = cluster.dev.write_members(&[0, 1, 2], Some(&[0, 1, 2, 3, 4])).unwrap();
    cluster.wait_migrated(&[0, 1, 2], joint).await;
    let three = cluster.dev.write_members(&[0, 1, 2], None).unwrap();
    eventually(Duration::from_secs(10), "members on the final epoch", || async {
        cluster.status(0).await.is_some_and(|s| s.epoch == three)
    })
    .await;
    cluster.dev.stop(3, Duration::from_secs(5));
    cluster.dev.stop(4, Duration::from_secs(5));
    // Member 2 was never loaded by clients: a quorum with it must still know everything.
    cluster.dev.kill9(1);
    let c2 = cluster.client(2).await;
    let invoked = Instant::now();
    let ids = c2.next("members", 1, true).await.unwrap();
    log.lock().unwrap().push(Allocation {
        client: 200,
        sidecar: Some(2),
        ids,
        strict: true,
        invoked,
        completed: Instant::now(),
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let n = check_unique(&log.lock().unwrap()).unwrap_or_else(|v| panic!("{}", v.0));
    assert!(n > 100, "load made progress through the changes ({n} IDs)");
    check_strict_real_time(&log.lock().unwrap()).unwrap_or_else(|v| panic!("{}", v.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly_and_stream_works() {
    let mut cluster = TestCluster::start(opts(3)).await;
    let c = cluster.client(0).await;
    let mut stream = c.stream("streamed", 4).await.unwrap();
    let mut prev = 0;
    for _ in 0..10 {
        let m = stream.message().await.unwrap().unwrap();
        assert_eq!(m.end - m.start, 4);
        assert!(m.start >= prev);
        prev = m.end;
    }
    drop(stream);
    // Strict calls through every member: the members hold exchange streams to one another.
    for i in 0..3 {
        cluster.client(i).await.next("streamed", 1, true).await.unwrap();
    }
    let status = cluster.dev.stop(1, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "SIGTERM exit status {status}");
    // The peers' long-lived streams did not hold the drain open until its timeout.
    let log = cluster.log_tail(1);
    assert!(log.contains("stopped") && !log.contains("drain timed out"), "{log}");
    // Two of three still serve.
    c.next("streamed", 1, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_quorum_is_reported_promptly() {
    let mut cluster = TestCluster::start(opts(3)).await;
    let c = cluster.client(0).await;
    c.next("lonely", 1, true).await.unwrap();
    cluster.dev.kill9(1);
    cluster.dev.kill9(2);
    let started = Instant::now();
    let err: ClientError = c.next("lonely", 1, true).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable));
    assert!(err.to_string().contains("of 3 members answered"), "{err}");
    assert!(err.to_string().contains("dev-1: unreachable") && err.to_string().contains("dev-2: unreachable"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(6));
    let err = c.current("lonely").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_role_sidecar_serves_the_same_api_through_the_members() {
    let cluster = TestCluster::start(opts(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let (socket, _guard) = cluster.start_client_sidecar("wdiv-0", dir.path()).await;
    let log: Log = Arc::default();
    let mut tasks = Vec::new();
    for (k, kind) in [Kind::Strict(1), Kind::Buffered(4), Kind::Leased(32)].into_iter().enumerate() {
        let client = Client::connect(&socket).await.unwrap();
        tasks.push(tokio::spawn(load(client, 9, k, kind, "via-client", 100, log.clone(), false)));
        let member = cluster.client(k).await;
        tasks.push(tokio::spawn(load(member, k, 10 + k, kind, "via-client", 100, log.clone(), false)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    check_all(&log);
    let st = Client::connect(&socket).await.unwrap().status().await.unwrap();
    assert_eq!(st.members.len(), 3);
    assert!(st.members.iter().all(|m| m.reachable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigstop_of_a_member_does_not_stall_the_others() {
    let cluster = TestCluster::start(opts(3)).await;
    let log: Log = Arc::default();
    // Whatever member is home for the sequence, freezing any one must not stop the other two.
    for frozen in 0..3 {
        cluster.dev.signal(frozen, "STOP");
        let mut tasks = Vec::new();
        for member in (0..3).filter(|m| *m != frozen) {
            let client = cluster.client(member).await;
            tasks.push(tokio::spawn(load(
                client,
                member,
                frozen * 10 + member,
                Kind::Strict(1),
                "frozen",
                30,
                log.clone(),
                false,
            )));
        }
        for t in tasks {
            t.await.unwrap();
        }
        cluster.dev.signal(frozen, "CONT");
        cluster.wait_ready(frozen, Duration::from_secs(20)).await;
    }
    check_all(&log);
}
