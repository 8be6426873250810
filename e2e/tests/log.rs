//! Log streams between real processes: idempotent appenders on several members with a
//! pipeline, `kill -9` of the primary mid-pipeline, `kill -9` of every member and a restart,
//! a subscriber across a primary change, and bad input. A checker compares every acknowledged
//! append with the stream read back: nothing acknowledged lost, nothing duplicated, LSNs dense,
//! each producer's batches in order.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures::StreamExt;
use ordo_e2e::cluster::{eventually, TestCluster, TestOptions};
use ordo_proto::v1 as pb;
use ordo_proto::v1::log_client::LogClient;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

fn opts() -> TestOptions {
    TestOptions { members: 3, ..Default::default() }
}

async fn log_client(cluster: &TestCluster, i: usize) -> LogClient<Channel> {
    LogClient::new(cluster.client(i).await.channel())
}

/// One acknowledged batch.
#[derive(Debug, Clone)]
struct Acked {
    producer: u64,
    seq: u64,
    lsns: Vec<u64>,
    payloads: Vec<String>,
}

fn payload(producer: u64, seq: u64, i: usize) -> String {
    format!("p{producer}-b{seq}-e{i}")
}

/// Appends `batches` batches of `per_batch` entries as idempotent producer `producer` with a
/// pipeline of `pipeline`, reconnecting and resending unacknowledged batches (same sequence
/// numbers) after any failure, until every batch is acknowledged or `deadline`.
async fn run_appender(
    channel: Channel,
    stream: String,
    producer: u64,
    batches: u64,
    per_batch: usize,
    pipeline: usize,
    deadline: Instant,
) -> (Vec<Acked>, usize) {
    let mut acked = Vec::new();
    let mut pending: VecDeque<u64> = VecDeque::new();
    let mut next_seq = 0u64;
    let mut reconnects = 0usize;
    let request = |seq: u64| pb::AppendRequest {
        stream: stream.clone(),
        entries: (0..per_batch).map(|i| payload(producer, seq, i).into_bytes()).collect(),
        pipeline_size: pipeline as u32,
        producer_id: producer,
        producer_epoch: 1,
        batch_seq: seq,
        fence: None,
    };
    while (next_seq < batches || !pending.is_empty()) && Instant::now() < deadline {
        let mut client = LogClient::new(channel.clone());
        let (tx, rx) = mpsc::channel(16);
        for &seq in &pending {
            let _ = tx.send(request(seq)).await;
        }
        let mut responses =
            match tokio::time::timeout(Duration::from_secs(5), client.append(ReceiverStream::new(rx))).await {
                Ok(Ok(r)) => r.into_inner(),
                _ => {
                    reconnects += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
        loop {
            while pending.len() < pipeline && next_seq < batches {
                if tx.send(request(next_seq)).await.is_err() {
                    break;
                }
                pending.push_back(next_seq);
                next_seq += 1;
            }
            if pending.is_empty() {
                break;
            }
            let r = match tokio::time::timeout(Duration::from_secs(10), responses.next()).await {
                Ok(Some(Ok(r))) => r,
                _ => break,
            };
            if let Some(e) = r.error {
                assert_ne!(e.code, Code::InvalidArgument as i32, "a valid batch was refused: {}", e.message);
                assert_ne!(e.code, Code::FailedPrecondition as i32, "an idempotent retry was refused: {}", e.message);
                break; // a primary change: reconnect and resend everything unacknowledged
            }
            let seq = pending.pop_front().expect("a pending batch");
            assert_eq!(r.batch_seq, seq, "results come back in request order");
            acked.push(Acked {
                producer,
                seq,
                lsns: r.lsns,
                payloads: (0..per_batch).map(|i| payload(producer, seq, i)).collect(),
            });
        }
        if !pending.is_empty() || next_seq < batches {
            reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (acked, reconnects)
}

/// The whole stream, read from member `i` (retrying while its primary settles).
async fn read_all(cluster: &TestCluster, i: usize, stream: &str) -> Vec<pb::LogEntry> {
    read_from(cluster, i, stream, 1).await
}

/// The stream from `first` on, read from member `i` (retrying while its primary settles).
async fn read_from(cluster: &TestCluster, i: usize, stream: &str, first: u64) -> Vec<pb::LogEntry> {
    let mut c = log_client(cluster, i).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out: Vec<pb::LogEntry> = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "reading {stream} did not finish");
        let from = out.last().map_or(first, |e| e.lsn + 1);
        match c.read(pb::ReadRequest { stream: stream.into(), from, max: 1000 }).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.entries.is_empty() && from > r.last_lsn {
                    return out;
                }
                out.extend(r.entries);
            }
            Err(s) if s.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => panic!("read failed: {s}"),
        }
    }
}

/// The checker: every acknowledged entry is in the log at its LSN, LSNs are dense from 1, no
/// payload appears twice, and each producer's batches have increasing LSNs.
fn check(acked: &[Acked], log: &[pb::LogEntry]) {
    check_from(acked, log, 1);
}

/// [`check`] of a stream trimmed below `first`: the log read from `first` is dense from there,
/// and every acknowledged entry at or above `first` is in it.
fn check_from(acked: &[Acked], log: &[pb::LogEntry], first: u64) {
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.lsn, i as u64 + first, "LSNs are dense from {first}");
    }
    let mut seen = HashMap::new();
    for e in log {
        let text = String::from_utf8(e.data.clone()).expect("utf-8 payload");
        if let Some(first) = seen.insert(text.clone(), e.lsn) {
            panic!("{text} is in the log twice (LSNs {first} and {})", e.lsn);
        }
    }
    let mut last_by_producer: HashMap<u64, (u64, u64)> = HashMap::new();
    for a in acked {
        for (lsn, p) in a.lsns.iter().zip(&a.payloads).filter(|(lsn, _)| **lsn >= first) {
            let got = log.get((*lsn - first) as usize).map(|e| String::from_utf8_lossy(&e.data).to_string());
            assert_eq!(got.as_deref(), Some(p.as_str()), "acknowledged entry {p} at LSN {lsn} is lost or moved");
        }
        assert_eq!(a.lsns.len(), a.payloads.len());
        if let Some(&(seq, lsn)) = last_by_producer.get(&a.producer) {
            if a.seq > seq {
                assert!(a.lsns[0] > lsn, "producer {} batch {} is before batch {seq}", a.producer, a.seq);
            }
        }
        last_by_producer.insert(a.producer, (a.seq, a.lsns[0]));
    }
}

async fn describe(cluster: &TestCluster, i: usize, stream: &str) -> pb::StreamInfo {
    let mut c = log_client(cluster, i).await;
    c.describe_stream(pb::DescribeStreamRequest { name: stream.into() }).await.expect("describe").into_inner()
}

/// Creates `stream` through member 0 with replication factor 3 and ack quorum 2.
async fn create_rf3(cluster: &TestCluster, stream: &str) -> pb::StreamInfo {
    let req = pb::CreateStreamRequest { name: stream.into(), replication_factor: 3, ack_quorum: 2 };
    log_client(cluster, 0).await.create_stream(req).await.expect("create").into_inner()
}

/// `kill -9` of the three members, then all restart and become ready.
async fn kill9_all_and_restart(cluster: &mut TestCluster) {
    for i in 0..3 {
        cluster.dev.kill9(i);
    }
    for i in 0..3 {
        cluster.dev.spawn(i).expect("restart");
    }
    for i in 0..3 {
        cluster.wait_ready(i, Duration::from_secs(30)).await;
    }
}

fn member_index(cluster: &TestCluster, id: &str) -> usize {
    (0..cluster.dev.len()).find(|&i| cluster.dev.member(i).id == id).expect("a member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_the_primary_mid_pipeline_loses_and_duplicates_nothing() {
    let mut cluster = TestCluster::start(opts()).await;
    let stream = "orders";
    let info = create_rf3(&cluster, stream).await;
    assert_eq!((info.replication_factor, info.ack_quorum, info.replicas.len()), (3, 2, 3));
    assert!(!info.primary.is_empty(), "describing a stream settles its primary: {info:?}");
    let primary = member_index(&cluster, &info.primary);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();

    // A subscriber on a member that survives, from the start.
    let mut sub = log_client(&cluster, others[0])
        .await
        .subscribe(pb::SubscribeRequest { stream: stream.into(), from: 1 })
        .await
        .expect("subscribe")
        .into_inner();
    let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = sub.next().await {
            for e in m.entries {
                if sub_tx.send(e).is_err() {
                    return;
                }
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut tasks = Vec::new();
    for (k, &m) in others.iter().enumerate() {
        for j in 0..2u64 {
            let channel = cluster.client(m).await.channel();
            let producer = 100 + k as u64 * 10 + j;
            tasks.push(tokio::spawn(run_appender(channel, stream.into(), producer, 120, 4, 4, deadline)));
        }
    }
    // Kill the primary once appends are flowing.
    let mut c = log_client(&cluster, others[0]).await;
    eventually(Duration::from_secs(30), "appends flowing", || {
        let mut c = c.clone();
        async move { c.tail(pb::TailRequest { stream: stream.into() }).await.is_ok_and(|t| t.get_ref().last_lsn > 200) }
    })
    .await;
    cluster.dev.kill9(primary);
    let mut acked = Vec::new();
    let mut reconnects = 0;
    for t in tasks {
        let (a, r) = t.await.expect("appender");
        acked.extend(a);
        reconnects += r;
    }
    assert_eq!(acked.len(), 4 * 120, "every batch acknowledged in the end ({reconnects} reconnects)");
    assert!(reconnects > 0, "the kill happened while batches were in flight");
    let log = read_all(&cluster, others[1], stream).await;
    check(&acked, &log);
    assert_eq!(log.len(), 4 * 120 * 4, "exactly the acknowledged entries: retries were written once");
    let new_primary = describe(&cluster, others[0], stream).await;
    assert_ne!(new_primary.primary, info.primary, "a new primary took over");
    assert!(new_primary.epoch > info.epoch);

    // The subscriber saw every committed entry once, in order, across the primary change.
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while got.len() < log.len() && Instant::now() < until {
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(1), sub_rx.recv()).await {
            got.push(e);
        }
    }
    assert_eq!(got, log, "the subscription delivers the log exactly");
    let _ = c.tail(pb::TailRequest { stream: stream.into() }).await;
}

/// SIGTERM of members that replicate a stream and forward appends: the long-lived replication
/// and forwarding streams end with the sidecar, so its drain does not wait for its timeout
/// (they held it for the full 5 s before), and the rest of the cluster goes on appending.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_of_a_replica_is_not_held_open_by_the_peers_streams() {
    let mut cluster = TestCluster::start(opts()).await;
    let stream = "drained";
    let info = create_rf3(&cluster, stream).await;
    let primary = member_index(&cluster, &info.primary);
    let replica = (0..3).find(|&i| i != primary).expect("a replica");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Through the replica: its appends are forwarded to the primary, which replicates to it.
    let channel = cluster.client(replica).await.channel();
    let (mut acked, _) = run_appender(channel, stream.into(), 3, 20, 4, 4, deadline).await;
    assert_eq!(acked.len(), 20);
    let status = cluster.dev.stop(replica, Duration::from_secs(10)).expect("stopped");
    assert!(status.success(), "SIGTERM exit status {status}");
    let log = cluster.log_tail(replica);
    assert!(log.contains("stopped") && !log.contains("drain timed out"), "{log}");
    let channel = cluster.client(primary).await.channel();
    let (more, _) = run_appender(channel, stream.into(), 4, 10, 4, 4, deadline).await;
    assert_eq!(more.len(), 10, "the two members left go on");
    acked.extend(more);
    check(&acked, &read_all(&cluster, primary, stream).await);
}

/// SIGTERM ends an app's long-lived streams (a Subscribe that waits for more, an Append
/// stream with nothing in flight) with a clean UNAVAILABLE, so they neither hold the drain
/// open until its timeout nor break as a transport error (fails without
/// `api::app::shutdown`: the member logs "drain timed out" and the subscriber sees a broken
/// stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_ends_the_apps_long_lived_streams_with_unavailable() {
    let mut cluster = TestCluster::start(opts()).await;
    let stream = "closing";
    create_rf3(&cluster, stream).await;
    let member = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = cluster.client(member).await.channel();
    let (acked, _) = run_appender(channel, stream.into(), 5, 4, 2, 2, deadline).await;
    assert_eq!(acked.len(), 4);
    let mut c = log_client(&cluster, member).await;
    let mut sub =
        c.subscribe(pb::SubscribeRequest { stream: stream.into(), from: 1 }).await.expect("subscribe").into_inner();
    let mut seen = 0;
    while seen < 8 {
        let m = tokio::time::timeout(Duration::from_secs(20), sub.next()).await.expect("entries in time");
        seen += m.expect("a message").expect("entries").entries.len();
    }
    let (_tx, rx) = mpsc::channel::<pb::AppendRequest>(1);
    let mut appends = c.append(ReceiverStream::new(rx)).await.expect("append").into_inner();

    let status = cluster.dev.stop(member, Duration::from_secs(10)).expect("stopped");
    assert!(status.success(), "SIGTERM exit status {status}");
    let log = cluster.log_tail(member);
    assert!(log.contains("stopped") && !log.contains("drain timed out"), "{log}");
    let ends =
        [("subscribe", sub.next().await.map(|r| r.map(drop))), ("append", appends.next().await.map(|r| r.map(drop)))];
    for (what, end) in ends {
        match end {
            Some(Err(s)) => assert!(
                s.code() == Code::Unavailable && s.message().contains("shutting down"),
                "{what} ended with {s:?}"
            ),
            other => panic!("{what} ended with {other:?}, not UNAVAILABLE"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_every_member_and_a_restart_keep_every_acknowledged_entry() {
    let mut cluster = TestCluster::start(opts()).await;
    let stream = "events";
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = cluster.client(1).await.channel();
    let (mut acked, _) = run_appender(channel, stream.into(), 7, 60, 8, 8, deadline).await;
    assert_eq!(acked.len(), 60, "an unknown stream is created on first append");
    kill9_all_and_restart(&mut cluster).await;
    let log = read_all(&cluster, 2, stream).await;
    check(&acked, &log);
    assert_eq!(log.len(), 60 * 8);
    // The producer goes on where it was after the restart: batch 60 follows densely, and a
    // retry of batch 59 is answered with its original LSNs.
    let mut c = log_client(&cluster, 0).await;
    let (tx, rx) = mpsc::channel(4);
    let mut responses = c.append(ReceiverStream::new(rx)).await.expect("append").into_inner();
    let req = |seq: u64| pb::AppendRequest {
        stream: stream.into(),
        entries: (0..8).map(|i| payload(7, seq, i).into_bytes()).collect(),
        pipeline_size: 2,
        producer_id: 7,
        producer_epoch: 1,
        batch_seq: seq,
        fence: None,
    };
    tx.send(req(59)).await.unwrap();
    tx.send(req(60)).await.unwrap();
    let retry = responses.next().await.expect("a result").expect("ok");
    assert_eq!(retry.lsns, acked[59].lsns, "a retried batch gets its original LSNs: {retry:?}");
    let next = responses.next().await.expect("a result").expect("ok");
    assert_eq!(next.lsns, (481..=488).collect::<Vec<_>>(), "{next:?}");
    acked.push(Acked { producer: 7, seq: 60, lsns: next.lsns, payloads: (0..8).map(|i| payload(7, 60, i)).collect() });
    check(&acked, &read_all(&cluster, 1, stream).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_error_and_the_stream_goes_on() {
    let cluster = TestCluster::start(TestOptions {
        members: 3,
        extra_args: vec!["--streams-max-entry-bytes=1000".into(), "--streams-max-batch-bytes=4000".into()],
        ..Default::default()
    })
    .await;
    let mut c = log_client(&cluster, 1).await;
    let (tx, rx) = mpsc::channel(16);
    let mut responses = c.append(ReceiverStream::new(rx)).await.expect("append").into_inner();
    let req = |stream: &str, entries: Vec<Vec<u8>>, pipeline: u32| pb::AppendRequest {
        stream: stream.into(),
        entries,
        pipeline_size: pipeline,
        ..Default::default()
    };
    let cases: Vec<(pb::AppendRequest, &str)> = vec![
        (req("bad", vec![b"first".to_vec()], 1), ""),
        (req("bad", vec![], 1), "empty"),
        (req("bad", vec![vec![0; 1001]], 1), "entry 0 is 1001 bytes; the limit is 1000"),
        (req("bad", vec![vec![0; 900]; 5], 1), "the batch is 4500 bytes; the limit is 4000"),
        (req("bad", vec![b"x".to_vec()], 9), "pipeline_size must be 1..=8"),
        (req("no/such name", vec![b"x".to_vec()], 1), "stream name"),
        (req("", vec![b"x".to_vec()], 1), "stream name"),
        (req("bad", vec![b"second".to_vec()], 1), ""),
    ];
    for (r, _) in &cases {
        tx.send(r.clone()).await.unwrap();
    }
    let mut lsns = Vec::new();
    for (_, want) in &cases {
        let r = responses.next().await.expect("a result").expect("the stream goes on");
        match (&r.error, want.is_empty()) {
            (None, true) => lsns.extend(r.lsns),
            (Some(e), false) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
                assert!(e.message.contains(want), "{:?} should say {want:?}", e.message);
            }
            _ => panic!("unexpected result {r:?} (wanted error {want:?})"),
        }
    }
    assert_eq!(lsns, vec![1, 2], "good batches around the bad ones are appended");

    // Trim beyond the tail; trim; read below the trimmed point names the first LSN.
    let e = c.trim(pb::TrimRequest { stream: "bad".into(), before: 4 }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("last committed LSN of bad is 2"), "{e}");
    let t = c.trim(pb::TrimRequest { stream: "bad".into(), before: 2 }).await.expect("trim").into_inner();
    assert_eq!(t.first_lsn, 2);
    let e = c.read(pb::ReadRequest { stream: "bad".into(), from: 1, max: 10 }).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e}");
    assert!(e.message().contains("first available LSN is 2"), "{e}");
    let mut other = log_client(&cluster, 2).await;
    let e = other.read(pb::ReadRequest { stream: "bad".into(), from: 1, max: 10 }).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "from another member too: {e}");
    assert!(e.message().contains("first available LSN is 2"), "{e}");
    let tail = other.tail(pb::TailRequest { stream: "bad".into() }).await.expect("tail").into_inner();
    assert_eq!((tail.first_lsn, tail.last_lsn), (2, 2));
    let e = c.read(pb::ReadRequest { stream: "nope".into(), from: 1, max: 10 }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = c.read(pb::ReadRequest { stream: "bad".into(), from: 2, max: 100_000 }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // Creating again with the same settings is fine; with others it is refused.
    let again =
        c.create_stream(pb::CreateStreamRequest { name: "bad".into(), replication_factor: 3, ack_quorum: 2 }).await;
    assert!(again.is_ok(), "{again:?}");
    let e = c
        .create_stream(pb::CreateStreamRequest { name: "bad".into(), replication_factor: 3, ack_quorum: 3 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    let e = c
        .create_stream(pb::CreateStreamRequest { name: "x".into(), replication_factor: 5, ack_quorum: 1 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let names = c.list_streams(pb::ListStreamsRequest {}).await.expect("list").into_inner().names;
    assert_eq!(names, vec!["bad".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_primary_gets_no_append_acknowledged_after_a_new_epoch_is_sealed() {
    let cluster = TestCluster::start(TestOptions { members: 3, proxied: true, ..Default::default() }).await;
    let stream = "fenced";
    let info = create_rf3(&cluster, stream).await;
    let old = member_index(&cluster, &info.primary);
    let other = (0..3).find(|&i| i != old).expect("another member");
    let append = |c: LogClient<Channel>, data: &'static str| async move {
        let mut c = c;
        let (tx, rx) = mpsc::channel(1);
        tx.send(pb::AppendRequest { stream: stream.into(), entries: vec![data.into()], ..Default::default() })
            .await
            .unwrap();
        let mut resp = c.append(ReceiverStream::new(rx)).await?.into_inner();
        let r = resp.next().await.ok_or_else(|| tonic::Status::unavailable("no result"))??;
        Ok::<_, tonic::Status>(r)
    };
    let first = append(log_client(&cluster, old).await, "before").await.expect("append").lsns;
    assert_eq!(first, vec![1]);

    // The primary is cut off but still believes it leads; appends to it are not acknowledged.
    cluster.partition(old);
    let stale = tokio::spawn(append(log_client(&cluster, old).await, "stale-1"));
    // Another member takes over (once it sees the old primary down) and seals a new epoch.
    let mut acked_new = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked_new.is_none() && Instant::now() < deadline {
        match append(log_client(&cluster, other).await, "after").await {
            Ok(r) if r.error.is_none() => acked_new = Some(r.lsns),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let acked_new = acked_new.expect("the new primary acknowledges appends");
    let described = describe(&cluster, other, stream).await;
    assert_ne!(described.primary, info.primary);
    assert!(described.epoch > info.epoch);
    // Still cut off, and after it heals: the old primary acknowledges nothing of its epoch.
    let stale2 = tokio::spawn(append(log_client(&cluster, old).await, "stale-2"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.heal(old);
    for (name, t) in [("stale-1", stale), ("stale-2", stale2)] {
        let r = t.await.expect("task");
        let acked = matches!(&r, Ok(resp) if resp.error.is_none());
        assert!(!acked, "{name} was acknowledged by the deposed primary: {r:?}");
    }
    let log = read_all(&cluster, other, stream).await;
    let data: Vec<String> = log.iter().map(|e| String::from_utf8_lossy(&e.data).to_string()).collect();
    assert_eq!(data[0], "before");
    assert_eq!(log[(acked_new[0] - 1) as usize].data, b"after");
    assert!(!data.iter().any(|d| d.starts_with("stale")), "a deposed primary's entry is in the log: {data:?}");
    // The healed member serves the stream again, through the new primary.
    let healed = loop {
        match append(log_client(&cluster, old).await, "healed").await {
            Ok(r) if r.error.is_none() => break r.lsns,
            _ if Instant::now() > deadline + Duration::from_secs(30) => panic!("the healed member never appended"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(healed[0], log.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_through_a_paused_and_replaced_primary_are_not_stale() {
    let cluster = TestCluster::start(TestOptions { members: 3, ..Default::default() }).await;
    let stream = "stale-reads";
    let info = create_rf3(&cluster, stream).await;
    let old = member_index(&cluster, &info.primary);
    let other = (0..3).find(|&i| i != old).expect("another member");
    let client = |i: usize| {
        let c = &cluster;
        async move { c.client(i).await }
    };
    let before = client(old).await.appender(stream, Default::default());
    assert_eq!(before.append(vec![b"before".to_vec()]).await.expect("append"), vec![1]);
    before.close().await;

    // The primary is paused (its connections stay open and it serves no append meanwhile, so
    // nothing tells it that it lost the stream); another member takes over and acknowledges more.
    let signal = |sig: &str| {
        let pid = cluster.dev.member(old).pid.to_string();
        std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid).status().expect("kill");
    };
    signal("STOP");
    // Appends go straight to a takeover once `other` sees the old primary down (before that
    // they would be forwarded to it and, on SIGCONT, tell it that it was replaced).
    let old_id = cluster.dev.member(old).id.clone();
    eventually(Duration::from_secs(20), "the paused primary is seen down", || async {
        let st = cluster.status(other).await;
        st.is_some_and(|s| s.members.iter().any(|m| m.id == old_id && !m.reachable))
    })
    .await;
    let newer = client(other).await.appender(stream, Default::default());
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.len() < 3 && Instant::now() < deadline {
        match newer.append(vec![format!("after-{}", acked.len()).into_bytes()]).await {
            Ok(l) => acked.extend(l),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(acked, vec![2, 3, 4], "the new primary acknowledges appends");
    newer.close().await;
    signal("CONT");
    // Reads through the old primary's member see every acknowledged entry at once.
    let c = client(old).await;
    let tail = c.tail(stream).await.expect("tail");
    assert_eq!(tail.last_lsn, 4, "a replaced primary answered a stale tail");
    let got = c.read(stream, 1, 10).await.expect("read");
    assert_eq!(got.len(), 4, "a replaced primary answered a stale read: {got:?}");
}

/// Pages of committed entries are read from any replica's own disk: with the primary paused
/// (SIGSTOP), both other members answer a page of 50 entries at once, equal to what was
/// acknowledged. Verified to fail (the reads wait on the paused primary) without replica reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn committed_pages_are_read_from_any_replica_while_the_primary_is_paused() {
    let cluster = TestCluster::start(opts()).await;
    let stream = "replica-reads";
    create_rf3(&cluster, stream).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (acked, _) = run_appender(cluster.client(0).await.channel(), stream.into(), 7, 20, 5, 4, deadline).await;
    assert_eq!(acked.len(), 20);
    let primary = member_index(&cluster, &describe(&cluster, 0, stream).await.primary);
    // The replicas learn the last commit point shortly after the last append: wait until each
    // answers the page itself (its replica-read counter moves), however loaded the machine.
    for i in (0..3).filter(|&i| i != primary) {
        eventually(Duration::from_secs(20), &format!("member {i} knows the commit point"), || async {
            let before = sample(&cluster.scrape_metrics(i).await, "ordo_log_replica_reads_total").unwrap_or(0.0);
            let req = pb::ReadRequest { stream: stream.into(), from: 51, max: 50 };
            let _ = log_client(&cluster, i).await.read(req).await;
            sample(&cluster.scrape_metrics(i).await, "ordo_log_replica_reads_total").unwrap_or(0.0) > before
        })
        .await;
    }
    let pid = cluster.dev.member(primary).pid.to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill").arg(format!("-{sig}")).arg(&pid).status().expect("kill");
    };
    signal("STOP");
    let expected: Vec<String> = acked.iter().flat_map(|a| a.payloads.clone()).collect();
    for i in (0..3).filter(|&i| i != primary) {
        let mut c = log_client(&cluster, i).await;
        let req = pb::ReadRequest { stream: stream.into(), from: 51, max: 50 };
        let got = tokio::time::timeout(Duration::from_secs(2), c.read(req)).await;
        let got = got.unwrap_or_else(|_| panic!("member {i} waited on the paused primary")).expect("read").into_inner();
        let data: Vec<String> = got.entries.iter().map(|e| String::from_utf8_lossy(&e.data).to_string()).collect();
        assert_eq!(data, expected[50..100].to_vec(), "member {i} answered the acknowledged entries 51..=100");
        assert_eq!(got.entries[0].lsn, 51);
        assert!(got.last_lsn >= 100, "its commit point {} covers the page", got.last_lsn);
    }
    signal("CONT");
    let mut served = 0.0;
    for i in (0..3).filter(|&i| i != primary) {
        served += sample(&cluster.scrape_metrics(i).await, "ordo_log_replica_reads_total").unwrap_or(0.0);
    }
    assert!(served >= 4.0, "the replicas counted the reads they served ({served})");
}

/// The next Start of a member session (skipping Joined), within 30 s.
async fn next_start(m: &mut ordo_client::divider::Membership) -> (String, u64) {
    use ordo_client::divider::DividerEvent;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, m.next()).await.expect("a Start within 30 s") {
            Some(Ok(DividerEvent::Start { key, token })) => return (key, token),
            Some(Ok(_)) => {}
            other => panic!("the session ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_divider_owner_cannot_append_with_its_old_token() {
    use ordo_client::{AppenderOptions, Client, Fence};
    let cluster = TestCluster::start(opts()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The apps' sidecars are client-role (the WorkDivider pod layout): pausing one never
    // stalls the quorum.
    let (sock_x, guard_x) = cluster.start_client_sidecar("owner-x", dir.path()).await;
    let (sock_y, _guard_y) = cluster.start_client_sidecar("owner-y", dir.path()).await;
    let (cx, cy) = (Client::connect(&sock_x).await.unwrap(), Client::connect(&sock_y).await.unwrap());
    let stream = "partition-k";
    cx.create_stream(stream, 3, 2).await.expect("create");
    cx.divider("d").add_keys(vec!["k".into()]).await.expect("add key");
    let fenced = |c: &Client, token: u64| {
        let fence = Some(Fence { divider: "d".into(), key: "k".into(), token });
        c.appender(stream, AppenderOptions { fence, retry_deadline: Duration::from_secs(20), ..Default::default() })
    };

    // x owns k and writes with its token.
    let mut x = cx.divider("d").join("x", Some(1), "x:1").await.expect("join x");
    let (key, t1) = next_start(&mut x).await;
    assert_eq!(key, "k");
    let x_log = fenced(&cx, t1);
    x_log.append(vec![b"x-1".to_vec()]).await.expect("x appends with its token");

    // y joins, and x's sidecar freezes past its lease: y takes k with a higher token.
    let mut y = cy.divider("d").join("y", Some(1), "y:1").await.expect("join y");
    let pid = guard_x.0.id().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill").arg(format!("-{sig}")).arg(&pid).status().expect("kill");
    };
    // (If rendezvous moves k to y at its join, x's app never confirms the Stop: y still gets k
    // once x's lease expired or the stop timed out.)
    signal("STOP");
    let (key, t2) = next_start(&mut y).await;
    assert_eq!(key, "k");
    assert!(t2 > t1, "tokens increase: {t1} then {t2}");
    let y_log = fenced(&cy, t2);
    let y_lsns = y_log.append(vec![b"y-1".to_vec()]).await.expect("y appends with the new token");
    signal("CONT");

    // x's app never handled a Stop, and still holds t1: its append is refused, clearly.
    let refused = x_log.append(vec![b"x-zombie".to_vec()]).await.expect_err("the deposed owner's append");
    assert!(refused.is_fenced(), "not a fencing refusal: {refused}");
    let msg = refused.to_string();
    assert!(msg.contains(&format!("token {t1}")) && msg.contains(&format!("token {t2}")), "{msg}");
    // y goes on; the log holds x's entry before y's, and no zombie entry.
    assert_eq!(y_log.append(vec![b"y-2".to_vec()]).await.expect("y goes on"), vec![y_lsns[0] + 1]);
    let data: Vec<Vec<u8>> = cy.read(stream, 1, 10).await.expect("read").into_iter().map(|e| e.data).collect();
    assert_eq!(data, vec![b"x-1".to_vec(), b"y-1".to_vec(), b"y-2".to_vec()]);
    // Through another sidecar (forwarded to the primary) the old token is refused as well.
    let other = cluster.client(0).await;
    let via_member = fenced(&other, t1).append(vec![b"x-again".to_vec()]).await.expect_err("refused via a member");
    assert!(via_member.is_fenced(), "{via_member}");
    drop(x);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_appender_pipelines_retries_across_a_kill9_and_drains_on_close() {
    use std::sync::{Arc, Mutex};

    use ordo_client::AppenderOptions;

    let mut cluster = TestCluster::start(TestOptions {
        members: 3,
        extra_args: vec!["--streams-max-entry-bytes=1000".into()],
        ..Default::default()
    })
    .await;
    let stream = "appender";
    let client = cluster.client(0).await;
    let info = client.create_stream(stream, 3, 2).await.expect("create");
    let primary = member_index(&cluster, &info.primary);
    let at = (0..3).find(|&i| i != primary).expect("another member");
    let client = cluster.client(at).await;
    let opts = AppenderOptions { pipeline: 8, producer_id: Some(77), producer_epoch: 1, ..Default::default() };
    let appender = client.appender(stream, opts);
    // (batch index, result) in the order callbacks ran.
    type Outcome = (usize, Result<Vec<u64>, String>);
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    for i in 0..300usize {
        if i == 100 {
            cluster.dev.kill9(primary);
        }
        let batch: Vec<Vec<u8>> = if i == 50 {
            vec![vec![b'x'; 1001]] // too large: fails alone
        } else {
            (0..3).map(|k| format!("a-{i}-{k}").into_bytes()).collect()
        };
        let results = results.clone();
        appender
            .append_batch(batch, move |r| results.lock().unwrap().push((i, r.map_err(|e| e.to_string()))))
            .await
            .expect("queued");
    }
    let empty = appender.append_batch(vec![], |_| {}).await;
    assert!(empty.is_err(), "an empty batch is refused at once");
    appender.close().await;
    let after = appender.append_batch(vec![b"late".to_vec()], |_| panic!("never called")).await;
    assert!(after.is_err(), "appending after close fails at once");

    let results = std::mem::take(&mut *results.lock().unwrap());
    assert_eq!(results.len(), 300, "close() returned after every callback ran");
    assert!(results.iter().enumerate().all(|(k, (i, _))| k == *i), "callbacks ran in append order");
    let mut acked = Vec::new();
    for (i, r) in results {
        match r {
            Err(e) if i == 50 => assert!(e.contains("limit is 1000"), "{e}"),
            Err(e) => panic!("batch {i} failed: {e}"),
            Ok(lsns) if i != 50 => acked.push(Acked {
                producer: 77,
                seq: i as u64,
                lsns,
                payloads: (0..3).map(|k| format!("a-{i}-{k}")).collect(),
            }),
            Ok(l) => panic!("the oversized batch was appended at {l:?}"),
        }
    }
    let log = read_all(&cluster, at, stream).await;
    check(&acked, &log);
    assert_eq!(log.len(), 299 * 3, "every batch but the bad one, once");
}

/// The `ordoctl` binary built beside this test.
fn ordoctl() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("ordoctl"))
        .find(|p| p.is_file())
        .expect("ordoctl is built (cargo build --bins)")
}

fn ordoctl_json(socket: &str, args: &[&str], stdin: Option<&str>) -> serde_json::Value {
    use std::io::Write;
    let mut cmd = std::process::Command::new(ordoctl());
    cmd.args(["--socket", socket, "--output", "json", "log"]).args(args);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("ordoctl runs");
    if let Some(text) = stdin {
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("ordoctl finishes");
    assert!(out.status.success(), "ordoctl log {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordoctl_log_prints_the_documented_json_shapes() {
    use serde_json::json;

    let cluster = TestCluster::start(opts()).await;
    let socket = cluster.dev.member(1).socket.clone();
    let s = socket.clone();
    let run = move |args: Vec<&'static str>, stdin: Option<&'static str>| {
        let s = s.clone();
        tokio::task::spawn_blocking(move || ordoctl_json(&s, &args, stdin))
    };
    let created = run(vec!["create", "cli", "--replication-factor", "3", "--ack-quorum", "2"], None).await.unwrap();
    assert_eq!((created["stream"].clone(), created["replication_factor"].clone()), (json!("cli"), json!(3)));
    let appended = run(vec!["append", "cli", "a", "b"], None).await.unwrap();
    assert_eq!(appended, json!({"stream": "cli", "lsns": [1, 2]}));
    let piped =
        run(vec!["append", "cli", "--stdin", "--batch", "2", "--pipeline", "4"], Some("c\nd\ne\n")).await.unwrap();
    assert_eq!(piped, json!({"stream": "cli", "appended": 3, "first_lsn": 3, "last_lsn": 5}));
    let read = run(vec!["read", "cli", "--from", "2", "--max", "2"], None).await.unwrap();
    assert_eq!(read, json!({"stream": "cli", "entries": [{"lsn": 2, "data": "Yg=="}, {"lsn": 3, "data": "Yw=="}]}));
    let tail = run(vec!["tail", "cli"], None).await.unwrap();
    assert_eq!(tail, json!({"stream": "cli", "first_lsn": 1, "last_lsn": 5}));
    let trimmed = run(vec!["trim", "cli", "--before", "3"], None).await.unwrap();
    assert_eq!(trimmed, json!({"stream": "cli", "first_lsn": 3}));
    let described = run(vec!["describe", "cli"], None).await.unwrap();
    assert_eq!((described["first_lsn"].clone(), described["last_lsn"].clone()), (json!(3), json!(5)));
    let listed = run(vec!["list"], None).await.unwrap();
    assert_eq!(listed, json!({"streams": ["cli"]}));
    // subscribe prints one {"lsn", "data"} per line and follows the tail.
    let mut child = std::process::Command::new(ordoctl())
        .args(["--socket", &socket, "--output", "json", "log", "subscribe", "cli", "--from", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("subscribe runs");
    let stdout = child.stdout.take().expect("stdout");
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().take(2).map(|l| l.expect("a line")).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let parsed: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(parsed, vec![json!({"lsn": 4, "data": "ZA=="}), json!({"lsn": 5, "data": "ZQ=="})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_replica_that_takes_over_recovers_every_acknowledged_entry() {
    let mut cluster = TestCluster::start(TestOptions { members: 3, proxied: true, ..Default::default() }).await;
    let stream = "lagging";
    let info = create_rf3(&cluster, stream).await;
    let primary = member_index(&cluster, &info.primary);
    let lagging = (0..3).find(|&i| i != primary).expect("a replica");
    // The replica is cut off while the primary and the third member acknowledge appends.
    cluster.partition(lagging);
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = cluster.client(primary).await.channel();
    let (mut acked, _) = run_appender(channel, stream.into(), 5, 40, 5, 4, deadline).await;
    assert_eq!(acked.len(), 40);
    // The primary dies; the lagging replica comes back and takes over (appends go through it).
    cluster.dev.kill9(primary);
    cluster.heal(lagging);
    let channel = cluster.client(lagging).await.channel();
    let (more, _) = run_appender(channel, stream.into(), 6, 10, 5, 4, deadline).await;
    assert_eq!(more.len(), 10);
    acked.extend(more);
    let described = describe(&cluster, lagging, stream).await;
    assert_eq!(described.primary, cluster.dev.member(lagging).id, "the lagging replica is the new primary");
    let log = read_all(&cluster, lagging, stream).await;
    check(&acked, &log);
    assert_eq!(log.len(), 50 * 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_role_sidecar_forwards_appends_and_reads_to_the_primary() {
    let cluster = TestCluster::start(opts()).await;
    let dir = tempfile::tempdir().unwrap();
    let (socket, _guard) = cluster.start_client_sidecar("wdiv-0", dir.path()).await;
    let client = ordo_client::Client::connect(&socket).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (acked, _) = run_appender(client.channel(), "via-client".into(), 3, 50, 4, 8, deadline).await;
    assert_eq!(acked.len(), 50, "an unknown stream is created through the client-role sidecar");
    let info = client.describe_stream("via-client").await.expect("describe");
    assert!(!info.replicas.iter().any(|r| r == "wdiv-0"), "only members hold streams: {info:?}");
    assert_ne!(info.primary, "wdiv-0", "a client-role sidecar holds no data and is never primary");
    let mut entries = Vec::new();
    let mut sub = Box::pin(client.subscribe("via-client", 1).await.expect("subscribe"));
    while entries.len() < 200 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("an entry").expect("open");
        entries.push(pb::LogEntry { lsn: e.as_ref().map_or(0, |e| e.lsn), data: e.expect("ok").data });
    }
    check(&acked, &entries);
    assert_eq!(client.tail("via-client").await.expect("tail").last_lsn, 200);
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_stays_bounded_while_clients_flood_appends() {
    let cluster = TestCluster::start(opts()).await;
    let stream = "flood";
    create_rf3(&cluster, stream).await;
    // Six connections on two members each push 256 KiB batches as fast as the sidecar reads
    // them, for a few seconds; nobody waits for results before sending more.
    let until = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for k in 0..6usize {
        let mut c = log_client(&cluster, k % 2).await;
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(64);
            let feeder = tokio::spawn(async move {
                let entry = vec![b'f'; 64 * 1024];
                while Instant::now() < until {
                    let req = pb::AppendRequest {
                        stream: stream.into(),
                        entries: vec![entry.clone(); 4],
                        pipeline_size: 8,
                        ..Default::default()
                    };
                    if tx.send(req).await.is_err() {
                        return;
                    }
                }
            });
            let mut responses = c.append(ReceiverStream::new(rx)).await.expect("append").into_inner();
            let mut ok = 0u64;
            while let Some(Ok(r)) = responses.next().await {
                ok += u64::from(r.error.is_none());
            }
            let _ = feeder.await;
            ok
        }));
    }
    let mut peak = 0u64;
    while Instant::now() < until {
        for i in 0..3 {
            peak = peak.max(rss_bytes(cluster.dev.member(i).pid));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut appended = 0;
    for t in tasks {
        appended += t.await.expect("flooder");
    }
    assert!(appended > 0, "the flood was appended");
    // Bounded: at most 8 batches of 256 KiB per connection in flight; a generous bound.
    assert!(peak < 512 << 20, "a member's RSS reached {} MiB under the flood", peak >> 20);
    eprintln!("flood: {appended} batches of 256 KiB appended; peak member RSS {} MiB", peak >> 20);
}

/// Two appenders (through members 0 and 1) writing rounds of 20 batches to `stream`, each round
/// a new producer and every batch acknowledged within `per_round`, until the returned flag is
/// set; each task returns what it got acknowledged.
async fn appenders_until_stopped(
    cluster: &TestCluster,
    stream: &str,
    per_round: Duration,
) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, Vec<tokio::task::JoinHandle<Vec<Acked>>>) {
    use std::sync::atomic::{AtomicBool, Ordering};

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for member in 0..2usize {
        let channel = cluster.client(member).await.channel();
        let (stop, stream) = (stop.clone(), stream.to_string());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut round = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let producer = 1000 * (member as u64 + 1) + round;
                let deadline = Instant::now() + per_round;
                let (a, _) = run_appender(channel.clone(), stream.clone(), producer, 20, 2, 4, deadline).await;
                assert_eq!(a.len(), 20, "producer {producer} got every batch acknowledged");
                acked.extend(a);
                round += 1;
            }
            acked
        }));
    }
    (stop, tasks)
}

/// Replicas each member of `ids` holds over `streams`, as `describe` through member 0 reports.
async fn replica_counts(cluster: &TestCluster, streams: &[&str], ids: &[String]) -> Vec<usize> {
    let mut counts = vec![0; ids.len()];
    for s in streams {
        let Ok(info) =
            log_client(cluster, 0).await.describe_stream(pb::DescribeStreamRequest { name: s.to_string() }).await
        else {
            return vec![0; ids.len()];
        };
        for r in &info.get_ref().replicas {
            if let Some(i) = ids.iter().position(|id| id == r) {
                counts[i] += 1;
            }
        }
    }
    counts
}

/// Three streams appended to while the cluster grows 3 -> 5 and shrinks back: the rebalance
/// moves replicas of the existing streams onto the two new members (the fewest moves that leave
/// every member within one of the mean: 9 replicas over 5 members, 3 moves), the moves off the
/// leaving members bring them back, and the checker finds every acknowledged append once in
/// each stream. With `--streams-rebalance-moves=0` the new members get nothing and the bounded
/// wait fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_3_to_5_to_3_while_appending_loses_and_duplicates_nothing() {
    use std::sync::atomic::Ordering;

    let mut cluster = TestCluster::start(TestOptions { members: 3, slots: 5, ..Default::default() }).await;
    let streams = ["members", "members-b", "members-c"];
    let mut running = Vec::new();
    for s in streams {
        create_rf3(&cluster, s).await;
        running.push(appenders_until_stopped(&cluster, s, Duration::from_secs(60)).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.dev.spawn(3).unwrap();
    cluster.dev.spawn(4).unwrap();
    let ids: Vec<String> = (0..5).map(|i| cluster.dev.member(i).id.clone()).collect();
    let started = Instant::now();
    cluster.change_members(&[0, 1, 2], &[0, 1, 2, 3, 4]).await;
    let changed = started.elapsed();
    // A new member serves the stream too (through the primary).
    let tail = log_client(&cluster, 4).await.tail(pb::TailRequest { stream: streams[0].into() }).await;
    assert!(tail.is_ok_and(|t| t.get_ref().last_lsn > 0));
    // The rebalance spreads the existing streams: each member holds 1 or 2 of the 9 replicas.
    let mut counts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        counts = replica_counts(&cluster, &streams, &ids).await;
        if counts.iter().all(|c| (1..=2).contains(c)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counts.iter().all(|c| (1..=2).contains(c)), "replicas per member after growing to 5: {counts:?}");
    let balanced = started.elapsed();
    let mut moved = 0.0;
    for i in 0..5 {
        moved += sample(&cluster.scrape_metrics(i).await, "ordo_log_rebalance_moves_total").unwrap_or(0.0);
    }
    assert_eq!(moved, 3.0, "the fewest replica moves: three members over their share of 9 over 5");
    eprintln!(
        "rebalance 3 -> 5 while appending: the change settled in {} ms, then the replicas spread to {counts:?} in {} ms",
        changed.as_millis(),
        (balanced - changed).as_millis()
    );
    cluster.change_members(&[0, 1, 2, 3, 4], &[0, 1, 2]).await;
    cluster.dev.stop(3, Duration::from_secs(5));
    cluster.dev.stop(4, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (stop, _) in &running {
        stop.store(true, Ordering::SeqCst);
    }
    for (s, (_, tasks)) in streams.iter().zip(running) {
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.expect("appender"));
        }
        let log = read_all(&cluster, 2, s).await;
        check(&acked, &log);
        assert_eq!(log.len(), acked.len() * 2, "{s}: every acknowledged batch once, nothing else");
    }
}

/// Two moves of one stream at once, to different targets and through different members (what
/// two rebalance drivers would do), while an appender writes to it: each either applies or
/// fails cleanly, the stream ends on one of the two targets, and the checker finds every
/// acknowledged append once. (Both run at the same primary: its move lock runs them in turn,
/// so both apply; without the lock one loses the compare-and-set and fails. The interleaving
/// the lock exists for, a move un-pausing appends while the other is between its quiet check
/// and its write, is not forced here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_moves_of_one_stream_at_once_lose_and_duplicate_nothing() {
    let mut cluster = TestCluster::start(TestOptions { members: 3, slots: 5, ..Default::default() }).await;
    let stream = "contested";
    let info = create_rf3(&cluster, stream).await;
    cluster.dev.spawn(3).unwrap();
    cluster.dev.spawn(4).unwrap();
    cluster.change_members(&[0, 1, 2], &[0, 1, 2, 3, 4]).await;
    let ids: Vec<String> = (0..5).map(|i| cluster.dev.member(i).id.clone()).collect();
    let (a, b) = (ids[3].clone(), ids[4].clone());
    let to_a = vec![info.replicas[0].clone(), info.replicas[1].clone(), a];
    let to_b = vec![info.replicas[0].clone(), info.replicas[2].clone(), b];
    let channel = cluster.client(2).await.channel();
    let appender =
        tokio::spawn(run_appender(channel, stream.into(), 21, 60, 2, 4, Instant::now() + Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut moves = Vec::new();
    for (via, target) in [(0, to_a.clone()), (1, to_b.clone())] {
        let mut c = log_client(&cluster, via).await;
        moves.push(tokio::spawn(async move {
            c.move_stream(pb::MoveStreamRequest { name: stream.into(), replicas: target }).await
        }));
    }
    let mut applied = 0;
    for m in moves {
        match m.await.expect("move task") {
            Ok(_) => applied += 1,
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "a losing move fails as retryable: {e}"),
        }
    }
    assert!(applied >= 1, "at least one of the two moves applied");
    eprintln!("two moves at once: {applied} applied");
    let (acked, _) = appender.await.expect("appender");
    assert_eq!(acked.len(), 60, "every batch acknowledged across the moves");
    let now = describe(&cluster, 0, stream).await.replicas;
    assert!(now == to_a || now == to_b, "the stream lives on one of the targets, not {now:?}");
    let log = read_all(&cluster, 0, stream).await;
    check(&acked, &log);
    assert_eq!(log.len(), acked.len() * 2);
}

/// A stream placed on both members that leave a 5 -> 3 change moves to the staying members
/// during the joint epoch, while two appenders write to it; then both leaving members are
/// killed with `kill -9` and the stream goes on, with every acknowledged entry. Without the move
/// the stream keeps one replica of three (ack quorum 2) and every later append fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_move_off_members_that_leave_while_appending() {
    use std::sync::atomic::Ordering;

    let mut cluster = TestCluster::start(TestOptions { members: 3, slots: 5, ..Default::default() }).await;
    cluster.dev.spawn(3).unwrap();
    cluster.dev.spawn(4).unwrap();
    cluster.change_members(&[0, 1, 2], &[0, 1, 2, 3, 4]).await;
    let ids: Vec<String> = (0..5).map(|i| cluster.dev.member(i).id.clone()).collect();
    let leaving = [ids[3].clone(), ids[4].clone()];
    // A stream name whose three replicas include both leaving members.
    let stream = (0..10_000)
        .map(|i| format!("moving-{i}"))
        .find(|s| {
            let r = ordo_sidecar::log::placement::replicas(s, &ids, 3);
            leaving.iter().all(|l| r.contains(l))
        })
        .expect("a stream name placed on both leaving members");
    let info = create_rf3(&cluster, &stream).await;
    assert!(leaving.iter().all(|l| info.replicas.contains(l)), "placed on {:?}", info.replicas);
    let (stop, tasks) = appenders_until_stopped(&cluster, &stream, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.change_members(&[0, 1, 2, 3, 4], &[0, 1, 2]).await;
    let moved = describe(&cluster, 0, &stream).await;
    assert!(
        moved.replicas.iter().all(|r| ids[..3].contains(r)),
        "after the change the stream lives on the staying members, not {:?}",
        moved.replicas
    );
    // The stream's primary moved it once (it may run on a member that leaves).
    let mut moves = 0.0;
    for i in 0..5 {
        moves += sample(&cluster.scrape_metrics(i).await, "ordo_log_moves_total").unwrap_or(0.0);
    }
    assert_eq!(moves, 1.0, "one primary moved the stream");
    cluster.dev.kill9(3);
    cluster.dev.kill9(4);
    // Appends go on without the members that left.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("appender"));
    }
    let log = read_all(&cluster, 2, &stream).await;
    check(&acked, &log);
    assert_eq!(log.len(), acked.len() * 2, "every acknowledged batch once, nothing else");
}

/// `ordoctl log move` moves a stream onto two members that joined while an appender writes to
/// it; then the two members it left are killed with `kill -9` and the stream goes on with every
/// acknowledged entry. Bad targets are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_moves_onto_members_that_joined_through_ordoctl() {
    let mut cluster = TestCluster::start(TestOptions { members: 3, slots: 5, ..Default::default() }).await;
    let stream = "rebalanced";
    let info = create_rf3(&cluster, stream).await;
    cluster.dev.spawn(3).unwrap();
    cluster.dev.spawn(4).unwrap();
    cluster.change_members(&[0, 1, 2], &[0, 1, 2, 3, 4]).await;
    let ids: Vec<String> = (0..5).map(|i| cluster.dev.member(i).id.clone()).collect();
    // Keep one old replica (not member 0, which the appender uses), add both new members.
    let kept = info.replicas.iter().find(|r| **r != ids[0]).expect("a replica besides member 0").clone();
    let target = vec![kept.clone(), ids[3].clone(), ids[4].clone()];
    let dropped: Vec<usize> = (0..3).filter(|&i| ids[i] != kept).collect();
    let socket = cluster.dev.member(0).socket.clone();

    // Bad targets: refused, nothing moves.
    let mut c = log_client(&cluster, 0).await;
    for bad in [vec![kept.clone(), ids[3].clone()], vec![kept.clone(), ids[3].clone(), "nobody".into()]] {
        let r = c.move_stream(pb::MoveStreamRequest { name: stream.into(), replicas: bad.clone() }).await;
        let e = r.expect_err("a bad target is refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e}");
    }
    assert_eq!(describe(&cluster, 0, stream).await.replicas, info.replicas);

    let channel = cluster.client(0).await.channel();
    let appender = tokio::spawn(run_appender(
        channel.clone(),
        stream.into(),
        11,
        60,
        2,
        4,
        Instant::now() + Duration::from_secs(60),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replicas = target.join(",");
    let moved =
        tokio::task::spawn_blocking(move || ordoctl_json(&socket, &["move", stream, "--replicas", &replicas], None))
            .await
            .unwrap();
    assert_eq!(moved["replicas"], serde_json::json!(target), "{moved}");
    let (mut acked, _) = appender.await.expect("appender");
    assert_eq!(acked.len(), 60, "every batch acknowledged across the move");
    for &i in dropped.iter().filter(|&&i| i != 0) {
        cluster.dev.kill9(i);
    }
    // Member 0 left the stream's replicas too but stays in the cluster: it forwards.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (more, _) = run_appender(channel, stream.into(), 12, 10, 2, 4, deadline).await;
    assert_eq!(more.len(), 10, "the stream goes on without the replicas it left");
    acked.extend(more);
    let log = read_all(&cluster, 3, stream).await;
    check(&acked, &log);
    assert_eq!(log.len(), acked.len() * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_replica_is_rebuilt_and_then_carries_a_takeover() {
    let mut cluster = TestCluster::start(opts()).await;
    let stream = "wiped";
    let info = create_rf3(&cluster, stream).await;
    let primary = member_index(&cluster, &info.primary);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    let (writer, wiped) = (others[0], others[1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut acked, _) =
        run_appender(cluster.client(writer).await.channel(), stream.into(), 1, 30, 4, 4, deadline).await;
    assert_eq!(acked.len(), 30);
    // The replica loses its disk and comes back empty.
    cluster.dev.stop(wiped, Duration::from_secs(5));
    cluster.dev.wipe(wiped).expect("wipe");
    cluster.dev.spawn(wiped).expect("restart");
    cluster.wait_ready(wiped, Duration::from_secs(30)).await;
    let (more, _) = run_appender(cluster.client(writer).await.channel(), stream.into(), 2, 10, 4, 4, deadline).await;
    acked.extend(more);
    // It is rebuilt from the primary (its marker goes once it holds the committed log).
    let marker =
        std::path::PathBuf::from(&cluster.dev.member(wiped).data_dir).join("log").join(stream).join("rebuilding");
    eventually(Duration::from_secs(20), "the wiped replica is rebuilt", || {
        let marker = marker.clone();
        async move { marker.parent().is_some_and(|d| d.exists()) && !marker.exists() }
    })
    .await;
    // Now the primary dies: the writer and the rebuilt replica recover everything.
    cluster.dev.kill9(primary);
    let (more, _) = run_appender(cluster.client(writer).await.channel(), stream.into(), 3, 10, 4, 4, deadline).await;
    assert_eq!(more.len(), 10);
    acked.extend(more);
    let log = read_all(&cluster, wiped, stream).await;
    check(&acked, &log);
    assert_eq!(log.len(), 50 * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_the_wire_gets_an_error_and_the_sidecar_goes_on() {
    use ordo_e2e::raw::RawCodec;
    use prost::Message;

    let cluster = TestCluster::start(opts()).await;
    let channel = cluster.client(0).await.channel();
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    let garbage = vec![0xffu8, 0xff, 0xff, 0x01, 0x02];
    // A unary call whose message is not protobuf.
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/ordo.v1.Log/Read");
    let r: Result<tonic::Response<pb::ReadResponse>, _> =
        raw.unary(tonic::Request::new(garbage.clone()), path, RawCodec::default()).await;
    let err = r.unwrap_err();
    assert!(matches!(err.code(), Code::Internal | Code::InvalidArgument), "{err:?}");
    // An Append stream: a good batch, then garbage: the good one is answered, then the error.
    let good = pb::AppendRequest { stream: "wire".into(), entries: vec![b"ok".to_vec()], ..Default::default() };
    let msgs = futures::stream::iter(vec![good.encode_to_vec(), garbage]);
    raw.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/ordo.v1.Log/Append");
    let resp = raw.streaming(tonic::Request::new(msgs), path, RawCodec::<pb::AppendResponse>::default()).await;
    let mut responses = resp.expect("the stream opens").into_inner();
    let first = responses.next().await.expect("a result").expect("the good batch");
    assert_eq!(first.lsns, vec![1]);
    let err = responses.next().await.expect("an error").unwrap_err();
    assert!(matches!(err.code(), Code::InvalidArgument | Code::Internal), "{err:?}");
    // The sidecar goes on.
    let client = cluster.client(0).await;
    let appender = client.appender("wire", ordo_client::AppenderOptions::default());
    assert_eq!(appender.append(vec![b"after".to_vec()]).await.expect("append"), vec![2]);
    appender.close().await;
}

// ---------------------------------------------------------------------------------------------
// Trim, retention, metrics and backpressure.

/// Appends `batches` batches of `per_batch` entries of `entry_bytes` bytes (each starts with
/// its [`payload`] name, for the checker) as idempotent producer `producer`, pipeline 8,
/// waiting `pace` between batches. No faults are expected: every batch must be acknowledged.
async fn fill(
    channel: Channel,
    stream: &str,
    producer: u64,
    batches: u64,
    per_batch: usize,
    entry_bytes: usize,
    pace: Duration,
) -> Vec<Acked> {
    let padded = move |seq: u64, i: usize| {
        let mut p = payload(producer, seq, i);
        p.extend(std::iter::repeat_n('.', entry_bytes.saturating_sub(p.len())));
        p
    };
    let (tx, rx) = mpsc::channel(4);
    let stream_name = stream.to_string();
    let feeder = tokio::spawn(async move {
        for seq in 0..batches {
            let req = pb::AppendRequest {
                stream: stream_name.clone(),
                entries: (0..per_batch).map(|i| padded(seq, i).into_bytes()).collect(),
                pipeline_size: 8,
                producer_id: producer,
                producer_epoch: 1,
                batch_seq: seq,
                fence: None,
            };
            if tx.send(req).await.is_err() {
                return;
            }
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
    });
    let mut responses = LogClient::new(channel).append(ReceiverStream::new(rx)).await.expect("append").into_inner();
    let mut acked = Vec::new();
    for seq in 0..batches {
        let r = tokio::time::timeout(Duration::from_secs(30), responses.next())
            .await
            .expect("a result in time")
            .expect("a result")
            .expect("the stream stays up");
        assert!(r.error.is_none(), "batch {seq} failed: {:?}", r.error);
        assert_eq!(r.batch_seq, seq);
        acked.push(Acked { producer, seq, lsns: r.lsns, payloads: (0..per_batch).map(|i| padded(seq, i)).collect() });
    }
    feeder.await.expect("feeder");
    acked
}

/// Bytes of the files under `dir` (recursively; 0 when it does not exist).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The directory of `stream` on member `i`.
fn stream_dir(cluster: &TestCluster, i: usize, stream: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(&cluster.dev.member(i).data_dir).join("log").join(stream)
}

/// The value of the sample named exactly `sample` (with its labels), or `None`.
fn sample(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Trim reclaims disk on every replica (one that was down learns the trim point when it comes
/// back), reads below it name the first available LSN, and the trim point survives `kill -9`
/// of every member (a new primary). Verified to fail when replicas do not delete files (the
/// size check) and when the replicas' base is not durable (the restart check).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trim_reclaims_disk_on_every_replica_and_survives_a_restart() {
    let mut cluster = TestCluster::start(opts()).await;
    let stream = "trimmed";
    let info = create_rf3(&cluster, stream).await;
    let primary = member_index(&cluster, &info.primary);
    let down = (0..3).find(|&i| i != primary).expect("a replica");
    // Producer 2 writes one batch, then 24 MiB: 96 batches of 8 entries of 32 KiB (segment
    // files roll at 8 MiB).
    let channel = cluster.client(primary).await.channel();
    let early = fill(channel.clone(), stream, 2, 1, 1, 16, Duration::ZERO).await;
    let mut acked = fill(channel, stream, 1, 96, 8, 32 << 10, Duration::ZERO).await;
    acked.extend(early.clone());
    let last = acked.iter().flat_map(|a| a.lsns.iter().copied()).max().expect("acknowledged");
    assert_eq!(last, 96 * 8 + 1);
    let before: Vec<u64> = (0..3).map(|i| dir_bytes(&stream_dir(&cluster, i, stream))).collect();
    assert!(before.iter().all(|b| *b >= 24 << 20), "every replica holds the stream: {before:?}");
    // One replica is down while the stream is trimmed.
    cluster.dev.kill9(down);
    let first = last - 49;
    let mut c = log_client(&cluster, primary).await;
    let t = c.trim(pb::TrimRequest { stream: stream.into(), before: first }).await.expect("trim").into_inner();
    assert_eq!(t.first_lsn, first);
    for i in (0..3).filter(|&i| i != down) {
        eventually(Duration::from_secs(20), "the replica deletes its files below the trim point", || {
            let dir = stream_dir(&cluster, i, stream);
            async move { dir_bytes(&dir) <= 9 << 20 }
        })
        .await;
    }
    // The replica that was down learns the trim point from the primary when it is back.
    cluster.dev.spawn(down).expect("restart");
    cluster.wait_ready(down, Duration::from_secs(30)).await;
    eventually(Duration::from_secs(30), "the replica that was down deletes its files too", || {
        let dir = stream_dir(&cluster, down, stream);
        async move { dir_bytes(&dir) <= 9 << 20 }
    })
    .await;
    let after: Vec<u64> = (0..3).map(|i| dir_bytes(&stream_dir(&cluster, i, stream))).collect();
    eprintln!("trim: stream directory bytes per replica before {before:?}, after {after:?}");
    let below = c.read(pb::ReadRequest { stream: stream.into(), from: 1, max: 10 }).await.unwrap_err();
    assert_eq!(below.code(), Code::OutOfRange);
    assert!(below.message().contains(&format!("first available LSN is {first}")), "{below:?}");
    check_from(&acked, &read_from(&cluster, down, stream, first).await, first);
    // Every member restarts: the new primary serves from the trim point, nothing comes back.
    kill9_all_and_restart(&mut cluster).await;
    let mut c = log_client(&cluster, down).await;
    let tail = loop {
        match c.tail(pb::TailRequest { stream: stream.into() }).await {
            Ok(t) => break t.into_inner(),
            Err(s) if s.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => panic!("tail: {s}"),
        }
    };
    assert_eq!((tail.first_lsn, tail.last_lsn), (first, last));
    let below = c.read(pb::ReadRequest { stream: stream.into(), from: first - 1, max: 1 }).await.unwrap_err();
    assert!(below.message().contains(&format!("first available LSN is {first}")), "{below:?}");
    let log = read_from(&cluster, 0, stream, first).await;
    assert_eq!(log.len(), 50);
    check_from(&acked, &log, first);
    let restarted: Vec<u64> = (0..3).map(|i| dir_bytes(&stream_dir(&cluster, i, stream))).collect();
    assert!(restarted.iter().all(|b| *b <= 9 << 20), "nothing trimmed came back: {restarted:?}");
    // A late retry of producer 2's only batch, trimmed from every replica: the new primary
    // knows it from the history stored at the trim and answers its original LSN (verified to
    // write it again without the history).
    let retry = pb::AppendRequest {
        stream: stream.into(),
        entries: early[0].payloads.iter().map(|p| p.clone().into_bytes()).collect(),
        pipeline_size: 1,
        producer_id: 2,
        producer_epoch: 1,
        batch_seq: 0,
        fence: None,
    };
    let mut responses = c.append(tokio_stream::iter(vec![retry])).await.expect("append").into_inner();
    let r = responses.next().await.expect("a result").expect("the stream stays up");
    assert!(r.error.is_none(), "the retry failed: {:?}", r.error);
    assert_eq!(r.lsns, early[0].lsns, "the retried batch was written again");
    assert_eq!(c.tail(pb::TailRequest { stream: stream.into() }).await.expect("tail").into_inner().last_lsn, last);
}

/// With `--streams-retention-bytes` of 4 MiB, a stream appended at a steady rate far past that
/// stays bounded on every replica (files roll at 1 MiB; a replica keeps about 1.25 times the
/// limit plus what arrives between two retention ticks), and reads from the first available
/// LSN see every acknowledged entry there. Verified to fail (the bound) when the primary does
/// not run retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_by_bytes_keeps_disk_bounded_while_appending() {
    let cluster = TestCluster::start(TestOptions {
        members: 3,
        extra_args: vec!["--streams-retention-bytes=4194304".into()],
        ..Default::default()
    })
    .await;
    let stream = "retained";
    let info = create_rf3(&cluster, stream).await;
    let primary = member_index(&cluster, &info.primary);
    // 32 MiB at about 4 MiB/s: 256 batches of 4 entries of 32 KiB, one every 30 ms.
    let channel = cluster.client(primary).await.channel();
    let appender = tokio::spawn(fill(channel, stream, 3, 256, 4, 32 << 10, Duration::from_millis(30)));
    let mut peak = 0u64;
    while !appender.is_finished() {
        for i in 0..3 {
            peak = peak.max(dir_bytes(&stream_dir(&cluster, i, stream)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked = appender.await.expect("appender");
    eprintln!("retention: 32 MiB appended; peak stream directory on a replica {} KiB", peak >> 10);
    assert!(peak <= 14 << 20, "a replica held {} KiB with a 4 MiB retention", peak >> 10);
    for i in 0..3 {
        eventually(Duration::from_secs(20), "each replica settles within 1.25 x the limit", || {
            let dir = stream_dir(&cluster, i, stream);
            async move { dir_bytes(&dir) <= (5 << 20) + (256 << 10) }
        })
        .await;
    }
    let tail = log_client(&cluster, primary).await.tail(pb::TailRequest { stream: stream.into() }).await;
    let tail = tail.expect("tail").into_inner();
    assert_eq!(tail.last_lsn, 256 * 4);
    assert!(tail.first_lsn > 1, "retention trimmed the stream: {tail:?}");
    let log = read_from(&cluster, primary, stream, tail.first_lsn).await;
    check_from(&acked, &log, tail.first_lsn);
    let text = cluster.scrape_metrics(primary).await;
    assert!(sample(&text, "ordo_log_trims_total{cause=\"retention\"}").unwrap_or(0.0) >= 1.0, "{text}");
    assert!(sample(&text, "ordo_log_segments_deleted_total").unwrap_or(0.0) >= 1.0, "{text}");
}

/// Retention by age: a segment file goes once its last write is older than the limit, on every
/// replica; the active file stays however old it is, so the newest entries remain readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_by_age_drops_old_files_and_keeps_the_active_one() {
    let age = Duration::from_secs(4);
    let cluster = TestCluster::start(TestOptions {
        members: 3,
        extra_args: vec![format!("--streams-retention-seconds={}", age.as_secs())],
        ..Default::default()
    })
    .await;
    let stream = "aged";
    let info = create_rf3(&cluster, stream).await;
    let primary = member_index(&cluster, &info.primary);
    // 9 MiB: one full 8 MiB segment file and the start of the next, as fast as it goes.
    let channel = cluster.client(primary).await.channel();
    let started = Instant::now();
    let acked = fill(channel, stream, 5, 36, 8, 32 << 10, Duration::ZERO).await;
    let tail = || {
        let c = &cluster;
        async move {
            let t = log_client(c, primary).await.tail(pb::TailRequest { stream: stream.into() }).await;
            t.expect("tail").into_inner()
        }
    };
    let young = tail().await;
    if started.elapsed() < age {
        assert_eq!(young.first_lsn, 1, "nothing is older than {age:?} yet");
    }
    assert_eq!(young.last_lsn, 36 * 8);
    eventually(Duration::from_secs(30), "the old file is trimmed", || async { tail().await.first_lsn > 1 }).await;
    let first = tail().await.first_lsn;
    assert!(first <= 36 * 8, "the active file stays: first LSN {first}");
    for i in 0..3 {
        eventually(Duration::from_secs(20), "every replica deletes the old file", || {
            let dir = stream_dir(&cluster, i, stream);
            async move { dir_bytes(&dir) < 4 << 20 }
        })
        .await;
    }
    // Older than the limit now, but the newest entries stay.
    tokio::time::sleep(age + Duration::from_secs(2)).await;
    let later = tail().await;
    assert_eq!((later.first_lsn, later.last_lsn), (first, 36 * 8), "the active file is never trimmed by age");
    let log = read_from(&cluster, primary, stream, first).await;
    check_from(&acked, &log, first);
    let text = cluster.scrape_metrics(primary).await;
    assert!(sample(&text, "ordo_log_trims_total{cause=\"retention\"}").unwrap_or(0.0) >= 1.0, "{text}");
}

/// The log metrics move: appends, batch sizes and ack latency on the sidecars that served
/// them, a seal on each surviving replica and a recovery on the new primary after `kill -9` of
/// the old one, and an app trim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_metrics_count_appends_seals_recoveries_and_trims() {
    let mut cluster = TestCluster::start(opts()).await;
    let stream = "metered";
    let info = create_rf3(&cluster, stream).await;
    let primary = member_index(&cluster, &info.primary);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = cluster.client(others[0]).await.channel();
    let (mut acked, _) = run_appender(channel.clone(), stream.into(), 1, 20, 5, 4, deadline).await;
    let before: Vec<String> = futures::future::join_all(others.iter().map(|&i| cluster.scrape_metrics(i))).await;
    cluster.dev.kill9(primary);
    let (more, _) = run_appender(channel, stream.into(), 2, 20, 5, 4, deadline).await;
    acked.extend(more);
    assert_eq!(acked.len(), 40);
    let new_primary = member_index(&cluster, &describe(&cluster, others[0], stream).await.primary);
    let t = log_client(&cluster, new_primary).await.trim(pb::TrimRequest { stream: stream.into(), before: 11 }).await;
    assert_eq!(t.expect("trim").into_inner().first_lsn, 11);
    let value = |text: &str, name: &str| sample(text, name).unwrap_or(0.0);
    let text = cluster.scrape_metrics(new_primary).await;
    let was = &before[others.iter().position(|&i| i == new_primary).expect("a survivor")];
    for name in ["ordo_log_appended_entries_total", "ordo_log_appended_bytes_total", "ordo_log_batch_entries_count"] {
        assert!(value(&text, name) > value(was, name), "{name} did not move on the new primary: {text}");
    }
    assert!(value(&text, "ordo_log_appended_entries_total") >= 100.0, "{text}");
    assert!(value(&text, "ordo_log_recoveries_total{result=\"ok\"}") >= 1.0, "{text}");
    assert_eq!(value(&text, "ordo_log_trims_total{cause=\"app\"}"), 1.0, "{text}");
    for (k, &i) in others.iter().enumerate() {
        let text = cluster.scrape_metrics(i).await;
        assert!(
            value(&text, "ordo_log_seals_total") > value(&before[k], "ordo_log_seals_total"),
            "no seal on {i}: {text}"
        );
        for present in
            ["ordo_log_replica_lag_entries ", "ordo_log_batches_in_flight ", "ordo_log_segments_deleted_total "]
        {
            assert!(text.contains(present), "{present} missing: {text}");
        }
    }
    // The client's sidecar measured the acknowledgements of the batches it queued.
    let served = cluster.scrape_metrics(others[0]).await;
    assert!(value(&served, "ordo_log_ack_seconds_count") >= 40.0, "{served}");
    check_from(&acked, &read_from(&cluster, new_primary, stream, 11).await, 11);
}

/// `--streams-max-inflight-bytes` of 1 MiB holds a flooding client back: while the stream
/// cannot commit (both other replicas paused), the sidecar reads exactly 1 MiB of batches (4 of
/// 256 KiB, although the client asked for a pipeline of 8) and then stops reading, so the
/// client's sends block; its memory stays bounded; once the replicas are back every batch is
/// acknowledged and the checker finds each one once, in order. Verified to fail (8 batches in
/// flight, and the client's sends go on) when the in-flight byte limit is not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_inflight_limit_holds_a_flooding_client_back() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let cluster = TestCluster::start(TestOptions {
        members: 3,
        extra_args: vec![
            "--streams-max-inflight-bytes=1048576".into(),
            "--streams-max-batch-bytes=262144".into(),
            "--streams-max-entry-bytes=65536".into(),
            // Batches held back must not time out while the replicas are paused.
            "--request-timeout-ms=15000".into(),
        ],
        ..Default::default()
    })
    .await;
    let stream = "held-back";
    let info = create_rf3(&cluster, stream).await;
    let primary = member_index(&cluster, &info.primary);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    let batches = 200u64;
    let padded = |seq: u64, i: usize| {
        let mut p = payload(9, seq, i);
        p.extend(std::iter::repeat_n('.', (64 << 10) - p.len()));
        p
    };
    // The client sends as fast as the stream takes its messages (a channel of one).
    let sent = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel(1);
    let feeder = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for seq in 0..batches {
                let req = pb::AppendRequest {
                    stream: stream.into(),
                    entries: (0..4).map(|i| padded(seq, i).into_bytes()).collect(),
                    pipeline_size: 8,
                    producer_id: 9,
                    producer_epoch: 1,
                    batch_seq: seq,
                    fence: None,
                };
                if tx.send(req).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut client = log_client(&cluster, primary).await;
    let mut responses = client.append(ReceiverStream::new(rx)).await.expect("append").into_inner();
    let mut acked = Vec::new();
    let next_result = |acked: &mut Vec<Acked>, r: pb::AppendResponse| {
        assert!(r.error.is_none(), "batch {} failed: {:?}", r.batch_seq, r.error);
        let seq = acked.len() as u64;
        assert_eq!(r.batch_seq, seq, "results in order");
        acked.push(Acked { producer: 9, seq, lsns: r.lsns, payloads: (0..4).map(|i| padded(seq, i)).collect() });
    };
    for _ in 0..10 {
        let r = responses.next().await.expect("a result").expect("ok");
        next_result(&mut acked, r);
    }
    // The stream stalls: nothing commits without another replica.
    for &i in &others {
        cluster.dev.signal(i, "STOP");
    }
    let in_flight = |text: &str| sample(text, "ordo_log_batches_in_flight").unwrap_or(-1.0);
    eventually(Duration::from_secs(10), "the sidecar holds 1 MiB of batches", || async {
        in_flight(&cluster.scrape_metrics(primary).await) == 4.0
    })
    .await;
    // The buffers between the client and the sidecar fill, then the client's sends stop.
    let mut held = sent.load(Ordering::SeqCst);
    let mut steady = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(Ordering::SeqCst);
        steady = if now == held { steady + 1 } else { 0 };
        held = now;
        if steady == 5 {
            break;
        }
    }
    assert_eq!(steady, 5, "the client's sends did not stop");
    // Batches committed between the 10th answer and the stall were answered: read those
    // answers (none follow while the stall lasts), so the bound below counts only what waits.
    while let Ok(r) = tokio::time::timeout(Duration::from_millis(300), responses.next()).await {
        next_result(&mut acked, r.expect("a result").expect("ok"));
    }
    let mut peak_rss = 0u64;
    for _ in 0..15 {
        peak_rss = peak_rss.max(rss_bytes(cluster.dev.member(primary).pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = cluster.scrape_metrics(primary).await;
    assert_eq!(in_flight(&text), 4.0, "4 batches of 256 KiB fill the 1 MiB limit (pipeline 8)");
    let still = sent.load(Ordering::SeqCst);
    assert_eq!(still, held, "the client's sends are blocked while the sidecar does not read");
    // What the client could push beyond the sidecar's 4: the HTTP/2 windows and buffers.
    assert!(still - acked.len() as u64 <= 24, "{still} sent, {} answered", acked.len());
    assert!(peak_rss < 256 << 20, "the primary's RSS reached {} MiB", peak_rss >> 20);
    eprintln!(
        "backpressure: {} batches answered, {still} sent while stalled, 4 in flight at the sidecar, RSS {} MiB",
        acked.len(),
        peak_rss >> 20
    );
    for &i in &others {
        cluster.dev.signal(i, "CONT");
    }
    while (acked.len() as u64) < batches {
        let r = tokio::time::timeout(Duration::from_secs(30), responses.next())
            .await
            .expect("a result in time")
            .expect("a result")
            .expect("ok");
        next_result(&mut acked, r);
    }
    feeder.await.expect("feeder");
    check(&acked, &read_all(&cluster, primary, stream).await);
}
