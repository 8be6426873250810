//! Bad input gets a clear error and changes nothing; nothing panics. Against real processes.

use std::time::Duration;

use ordo_e2e::cluster::TestOptions;
use ordo_e2e::TestCluster;
use ordo_proto::v1 as pb;
use tonic::transport::Endpoint;
use tonic::Code;

async fn peer_client(addr: &str) -> pb::quorum_peer_client::QuorumPeerClient<tonic::transport::Channel> {
    let ch = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    pb::quorum_peer_client::QuorumPeerClient::new(ch)
}

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_requests_with_bad_input_are_rejected_and_change_nothing() {
    let cluster = TestCluster::start(TestOptions { members: 3, ..Default::default() }).await;
    let c = cluster.client(0).await;
    c.next("valid", 5, true).await.unwrap();
    let before = c.current("valid").await.unwrap();

    let long = "x".repeat(129);
    let cases: Vec<(&str, u64, &str)> = vec![
        ("", 1, "empty"),
        (long.as_str(), 1, "limit is 128"),
        ("bad/name", 1, "character outside"),
        ("with space", 1, "character outside"),
        ("-leading", 1, "start with a letter"),
        ("valid", 0, "count must be between 1 and"),
        ("valid", 1_000_001, "count must be between 1 and"),
    ];
    for (name, count, says) in cases {
        for strict in [false, true] {
            let err = c.next(name, count, strict).await.unwrap_err();
            assert_eq!(err.code(), Some(Code::InvalidArgument), "{name:?}/{count}: {err}");
            assert!(err.to_string().contains(says), "{name:?}/{count}: {err} should say {says:?}");
        }
    }
    let err = c.current("never-used").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    assert!(err.to_string().contains("does not exist"));
    let err = c.current("").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    // Nothing changed, and the sidecar still serves.
    assert_eq!(c.current("valid").await.unwrap(), before);
    assert_eq!(c.next("valid", 1, true).await.unwrap().start, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_wrong_token_stale_epoch_or_malformed_messages_are_refused() {
    let cluster = TestCluster::start(TestOptions { members: 3, ..Default::default() }).await;
    let token = std::fs::read_to_string(cluster.dev.token_file()).unwrap();
    let c = cluster.client(0).await;
    c.next("peer-victim", 3, true).await.unwrap();
    let before = c.current("peer-victim").await.unwrap();
    let mut peer = peer_client(&cluster.dev.member(1).peer_addr).await;
    let epoch = cluster.dev.epoch();
    let ballot = Some(pb::Ballot { round: u64::MAX / 2, proposer: "intruder".into(), ..Default::default() });

    // No token, wrong token.
    let prep = pb::PrepareRequest { epoch, key: "seq/peer-victim".into(), ballot: ballot.clone() };
    let err = peer.prepare(prep.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = peer.prepare(authed(prep.clone(), "wrong")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let dump = pb::DumpRequest { epoch, after_key: String::new(), limit: 1 };
    let err = peer.dump(authed(dump.clone(), "wrong")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Stale and future epochs: a typed refusal naming both epochs, nothing promised.
    for e in [epoch - 1, epoch + 7] {
        let r = peer.prepare(authed(pb::PrepareRequest { epoch: e, ..prep.clone() }, &token)).await.unwrap();
        let r = r.into_inner();
        assert!(!r.ok, "{r:?}");
        match r.refusal.and_then(|r| r.reason) {
            Some(pb::refusal::Reason::EpochMismatch(m)) => {
                assert_eq!((m.request_epoch, m.member_epoch), (e, epoch));
            }
            other => panic!("expected an epoch mismatch, got {other:?}"),
        }
    }

    // Malformed messages: missing ballot, zero round, bad key, bad proposer, oversized value,
    // a promise_next of another proposer, an empty forward.
    let bad_prepares = [
        pb::PrepareRequest { epoch, key: "seq/peer-victim".into(), ballot: None },
        pb::PrepareRequest {
            epoch,
            key: "seq/peer-victim".into(),
            ballot: Some(pb::Ballot { round: 0, proposer: "p".into(), ..Default::default() }),
        },
        pb::PrepareRequest { epoch, key: "seq//x".into(), ballot: ballot.clone() },
        pb::PrepareRequest {
            epoch,
            key: "seq/x".into(),
            ballot: Some(pb::Ballot { round: 1, proposer: "has space".into(), ..Default::default() }),
        },
    ];
    for p in bad_prepares {
        let err = peer.prepare(authed(p.clone(), &token)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{p:?}: {err:?}");
    }
    let acc = pb::AcceptRequest {
        epoch,
        key: "seq/peer-victim".into(),
        ballot: Some(pb::Ballot { round: 5, proposer: "p".into(), ..Default::default() }),
        value: vec![0; (2 << 20) + 1],
        absent: false,
        promise_next: None,
        voters: vec![],
    };
    let err = peer.accept(authed(acc.clone(), &token)).await.unwrap_err();
    assert!(matches!(err.code(), Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted), "{err:?}");
    let err = peer
        .accept(authed(
            pb::AcceptRequest {
                value: vec![1],
                promise_next: Some(pb::Ballot { round: 9, proposer: "q".into(), ..Default::default() }),
                ..acc
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = peer
        .propose(authed(pb::ProposeRequest { epoch, key: "seq/x".into(), changes: vec![], timeout_ms: 10 }, &token))
        .await;
    assert_eq!(err.unwrap_err().code(), Code::InvalidArgument);
    // Dump pages: a size of 0 or above 16384, or a malformed cursor, is refused with the reason;
    // a page of one register says where the next page starts.
    for (bad, says) in [
        (pb::DumpRequest { limit: 0, ..dump.clone() }, "page size"),
        (pb::DumpRequest { limit: 16_385, ..dump.clone() }, "page size"),
        (pb::DumpRequest { limit: u32::MAX, ..dump.clone() }, "page size"),
        (pb::DumpRequest { after_key: "seq//x".into(), ..dump.clone() }, "after_key"),
    ] {
        let err = peer.dump(authed(bad.clone(), &token)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains(says), "{bad:?}: {} should say {says:?}", err.message());
    }
    let mut after = String::new();
    for _ in 0..100 {
        let page = peer.dump(authed(pb::DumpRequest { after_key: after.clone(), ..dump.clone() }, &token)).await;
        let page = page.unwrap().into_inner();
        assert!(page.registers.len() <= 1, "a page of one register");
        if page.next_after_key.is_empty() {
            break;
        }
        assert_eq!(page.next_after_key, page.registers[0].key, "the next page starts after this one's key");
        assert!(page.next_after_key > after, "the cursor advances");
        after = page.next_after_key;
    }

    // Raw garbage on the gRPC wire: a frame that is not a protobuf message.
    let ch =
        Endpoint::from_shared(format!("http://{}", cluster.dev.member(1).peer_addr)).unwrap().connect().await.unwrap();
    let mut raw = tonic::client::Grpc::new(ch);
    raw.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/ordo.v1.QuorumPeer/Prepare");
    let garbage = authed(vec![0xffu8, 0xff, 0xff, 0x01, 0x02], &token);
    let r: Result<tonic::Response<pb::PrepareResponse>, _> =
        raw.unary(garbage, path, ordo_e2e::raw::RawCodec::default()).await;
    let err = r.unwrap_err();
    assert!(matches!(err.code(), Code::Internal | Code::InvalidArgument), "{err:?}");

    // The members survive and nothing changed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.current("peer-victim").await.unwrap(), before);
    assert_eq!(c.next("peer-victim", 1, true).await.unwrap().start, before);
}
