//! Mocked-API-server scenarios (kube's tower-test pattern): each reconcile must make exactly
//! the scripted calls, in order, with our field manager and the expected bodies; calls that
//! were expected but never made, or made but not expected, fail the test. Every call made is
//! also checked against the RBAC rules the chart grants (operator/src/rbac.rs).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use ordo_contract::config::Role;
use ordo_contract::status::{DividerMember, DividerReport, HeldKeys, StatusReport};
use ordo_operator::context::{Context, ErrorClass, ReconcileError};
use ordo_operator::crd::{
    MemberSetStatus, MembershipPhase, MembershipStatus, SeqCluster, SeqClusterStatus, WorkDivider,
};
use ordo_operator::metrics::Metrics;
use ordo_operator::probe::MemberProbe;
use ordo_operator::{rbac, seqcluster, workdivider};
use serde_json::{json, Value};

type Check = Box<dyn Fn(&Value) + Send>;

/// One expected request and the response to give.
struct Expect {
    method: &'static str,
    path: String,
    check: Check,
    status: u16,
    response: Value,
}

fn expect(method: &'static str, path: impl Into<String>) -> Expect {
    Expect { method, path: path.into(), check: Box::new(|_| {}), status: 200, response: json!({}) }
}

impl Expect {
    fn check(mut self, f: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Box::new(f);
        self
    }
    fn respond(mut self, status: u16, body: Value) -> Self {
        self.status = status;
        self.response = body;
        self
    }
    fn not_found(self) -> Self {
        self.respond(404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}))
    }
}

/// Answers the scripted calls in order; returns the (method, path, query) of every call.
fn verifier(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    script: Vec<Expect>,
    reconciled: Value,
) -> tokio::task::JoinHandle<Vec<(String, String, String)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        for (i, step) in script.into_iter().enumerate() {
            let (request, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("expected call {i} ({} {}) was never made", step.method, step.path));
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or_default().to_string();
            assert_eq!((method.as_str(), path.as_str()), (step.method, step.path.as_str()), "call {i}");
            if method == "PATCH" {
                assert!(
                    query.contains("fieldManager=ordo-operator"),
                    "call {i} {path}: field manager missing: {query}"
                );
                assert!(query.contains("force=true"), "call {i} {path}: apply must force: {query}");
                let ct = request.headers().get("content-type").unwrap().to_str().unwrap().to_string();
                assert_eq!(ct, "application/apply-patch+yaml", "call {i} {path}: server-side apply");
            }
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            (step.check)(&body);
            // An apply answers with the object itself, as the API server does.
            let response = if step.response == json!({}) && method == "PATCH" {
                if path.ends_with("/status") {
                    // The status subresource answers with the whole object.
                    let mut whole = reconciled.clone();
                    whole["status"] = body["status"].clone();
                    whole
                } else {
                    body.clone()
                }
            } else {
                step.response
            };
            let reply = Response::builder()
                .status(step.status)
                .body(Body::from(serde_json::to_vec(&response).unwrap()))
                .unwrap();
            send.send_response(reply);
            seen.push((method, path, query));
        }
        seen
    })
}

/// Member and divider reports by host, fixed for the test.
#[derive(Default)]
struct TableProbe(Mutex<BTreeMap<String, StatusReport>>, Mutex<BTreeMap<String, DividerReport>>);

impl MemberProbe for TableProbe {
    fn status<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<StatusReport>> {
        let r = self.0.lock().unwrap().get(host).cloned();
        Box::pin(async move { r })
    }

    fn divider<'a>(&'a self, host: &'a str, name: &'a str) -> BoxFuture<'a, Option<DividerReport>> {
        let r = if name.is_empty() { self.1.lock().unwrap().get(host).cloned() } else { None };
        Box::pin(async move { r })
    }
}

fn reports(name: &str, ids: std::ops::Range<i32>, epoch: u64, migrated: u64, caught_up: bool) -> TableProbe {
    let probe = TableProbe::default();
    for i in ids {
        let id = format!("{name}-{i}");
        probe.0.lock().unwrap().insert(
            format!("{id}.{name}-peers.prod.svc"),
            StatusReport {
                id,
                role: Role::Member,
                epoch,
                caught_up,
                migrated_epoch: migrated,
                ready: caught_up,
                pid: 1,
                migration_error: None,
            },
        );
    }
    probe
}

/// Runs one reconcile against the script; checks every call against RBAC.
async fn run<K: serde::Serialize, F, Fut>(
    obj: &Arc<K>,
    script: Vec<Expect>,
    probe: TableProbe,
    reconcile: F,
) -> Result<Action, ReconcileError>
where
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, ReconcileError>>,
{
    run_in(obj, script, probe, reconcile, |_| {}).await
}

/// [`run`] with a context adjusted by `setup` (watch caches, what was applied before).
async fn run_in<K: serde::Serialize, F, Fut>(
    obj: &Arc<K>,
    script: Vec<Expect>,
    probe: TableProbe,
    reconcile: F,
    setup: impl FnOnce(&mut Context),
) -> Result<Action, ReconcileError>
where
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, ReconcileError>>,
{
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "prod");
    let mut ctx = Context::new(client, Arc::new(probe), Arc::new(Metrics::default()));
    setup(&mut ctx);
    let ctx = Arc::new(ctx);
    let expected = script.len();
    let verifier = verifier(handle, script, serde_json::to_value(obj.as_ref()).unwrap());
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(obj.clone(), ctx.clone()))
        .await
        .expect("reconcile hangs");
    drop(ctx); // the mock service closes: any further call fails instead of hanging
    let seen =
        tokio::time::timeout(Duration::from_secs(10), verifier).await.expect("verifier hangs").expect("verifier");
    assert_eq!(seen.len(), expected);
    for (method, path, query) in &seen {
        for (group, resource, verb) in rbac::request_permissions(method, path, query).expect("a Kubernetes API path") {
            assert!(
                rbac::covers(&group, &resource, &verb),
                "{method} {path} needs {verb} on {group}/{resource}, which RBAC does not grant"
            );
        }
    }
    result
}

const SC: &str = "/apis/ordo.dev/v1alpha1/namespaces/prod/seqclusters";
const WD: &str = "/apis/ordo.dev/v1alpha1/namespaces/prod/workdividers";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/prod/events";

fn seqc_with(replicas: i32, membership: Option<MembershipStatus>) -> SeqCluster {
    let mut sc = common::seqcluster("seqcluster-minimal.yaml");
    sc.spec.replicas = replicas;
    sc.status = membership.map(|m| SeqClusterStatus { membership: Some(m), ..Default::default() });
    sc
}

fn members_yaml(body: &Value) -> ordo_contract::membership::MembersFile {
    ordo_contract::membership::MembersFile::parse(body["data"]["members.yaml"].as_str().unwrap()).unwrap()
}

use common::stable;

fn secret_with_token() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ids-peer-token", "namespace": "prod"}, "data": {"token": "a2VwdC10b2tlbg=="}})
}

/// Moves the status write (pushed by a test after the applies) to where the reconcile makes it:
/// right after reading the token, before any child is applied.
fn status_first(mut script: Vec<Expect>) -> Vec<Expect> {
    let reads_token_first = script.first().is_some_and(|e| e.method == "GET" && e.path.contains("/secrets/"));
    if let Some(i) = script.iter().position(|e| e.path.ends_with("/status")).filter(|_| reads_token_first) {
        let status = script.remove(i);
        script.insert(1, status);
    }
    script
}

/// A SeqCluster reconcile's script: it first reads the object fresh from the API server.
fn sc_script(sc: &SeqCluster, script: Vec<Expect>) -> Vec<Expect> {
    let mut script = status_first(script);
    script.insert(
        0,
        expect("GET", format!("{SC}/{}", sc.metadata.name.as_ref().unwrap()))
            .respond(200, serde_json::to_value(sc).unwrap()),
    );
    script
}

/// The apply calls of one SeqCluster reconcile, with checks on the ConfigMap and StatefulSet.
fn sc_applies(secret: Expect, check_cm: impl Fn(&Value) + Send + 'static, replicas: i64) -> Vec<Expect> {
    vec![
        secret,
        expect("PATCH", "/api/v1/namespaces/prod/services/ids-peers").check(|b| {
            assert_eq!(b["kind"], "Service");
            assert_eq!(b["spec"]["clusterIP"], "None");
        }),
        expect("PATCH", "/api/v1/namespaces/prod/configmaps/ids-members").check(check_cm),
        expect("PATCH", "/api/v1/namespaces/prod/secrets/ids-peer-token"),
        expect("PATCH", "/apis/apps/v1/namespaces/prod/statefulsets/ids").check(move |b| {
            assert_eq!(b["spec"]["replicas"], replicas, "StatefulSet replicas");
            assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "SeqCluster");
        }),
        expect("PATCH", "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/ids"),
        expect("PATCH", "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/ids-peers"),
    ]
}

#[tokio::test]
async fn seqcluster_first_reconcile_creates_everything_and_records_epoch_one() {
    let sc = Arc::new(seqc_with(3, None));
    let mut script = sc_applies(
        expect("GET", "/api/v1/namespaces/prod/secrets/ids-peer-token").not_found(),
        |b| assert_eq!(members_yaml(b).epoch, 1),
        3,
    );
    // A fresh random token, 64 hex characters.
    script[3] = expect("PATCH", "/api/v1/namespaces/prod/secrets/ids-peer-token").check(|b| {
        use base64_free::decode_len;
        assert_eq!(decode_len(b["data"]["token"].as_str().unwrap()), 64);
    });
    script.push(expect("PATCH", format!("{SC}/ids/status")).check(|b| {
        assert_eq!(b["status"]["membership"]["epoch"], 1);
        assert_eq!(b["status"]["membership"]["phase"], "Stable");
        assert_eq!(b["status"]["observedGeneration"], 1);
        let conds = b["status"]["conditions"].as_array().unwrap();
        let progressing = conds.iter().find(|c| c["type"] == "Progressing").unwrap();
        assert_eq!(
            (progressing["status"].as_str(), progressing["reason"].as_str()),
            (Some("True"), Some("Bootstrapped"))
        );
    }));
    script.push(expect("POST", EVENTS).check(|b| assert_eq!(b["reason"], "Bootstrapped")));
    let action = run(&sc, sc_script(&sc, script), TableProbe::default(), seqcluster::apply::reconcile).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
}

/// Base64 length without a base64 dependency: 4 chars per 3 bytes, minus padding.
mod base64_free {
    pub fn decode_len(s: &str) -> usize {
        s.len() / 4 * 3 - s.chars().rev().take_while(|c| *c == '=').count()
    }
}

#[tokio::test]
async fn seqcluster_scale_up_grows_pods_and_writes_the_joint_configuration() {
    let sc = Arc::new(seqc_with(5, Some(stable(1, 3))));
    let mut probe = reports("ids", 0..3, 1, 1, true);
    for (k, v) in reports("ids", 3..5, 1, 1, false).0.into_inner().unwrap() {
        probe.0.get_mut().unwrap().insert(k, v);
    }
    let mut script = sc_applies(
        expect("GET", "/api/v1/namespaces/prod/secrets/ids-peer-token").respond(200, secret_with_token()),
        |b| {
            let f = members_yaml(b);
            assert_eq!((f.epoch, f.current.len()), (2, 5));
            assert_eq!(f.previous.map(|p| p.len()), Some(3));
        },
        5,
    );
    // The existing token is kept.
    script[3] = expect("PATCH", "/api/v1/namespaces/prod/secrets/ids-peer-token")
        .check(|b| assert_eq!(b["data"]["token"], "a2VwdC10b2tlbg=="));
    script.push(expect("PATCH", format!("{SC}/ids/status")).check(|b| {
        assert_eq!(b["status"]["membership"]["phase"], "Joint");
        assert_eq!(b["status"]["membership"]["previous"]["members"], 3);
    }));
    script.push(expect("POST", EVENTS).check(|b| assert_eq!(b["reason"], "JointConfiguration")));
    let action = run(&sc, sc_script(&sc, script), probe, seqcluster::apply::reconcile).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
}

#[tokio::test]
async fn seqcluster_scale_down_removes_pods_only_after_the_final_configuration() {
    // Joint 5 -> 3 at epoch 2; everyone migrated: write epoch 3, keep 5 pods.
    let joint = MembershipStatus {
        epoch: 2,
        current: MemberSetStatus { members: 3, ..Default::default() },
        previous: Some(MemberSetStatus { members: 5, ..Default::default() }),
        phase: MembershipPhase::Joint,
    };
    let sc = Arc::new(seqc_with(3, Some(joint)));
    let mut script = sc_applies(
        expect("GET", "/api/v1/namespaces/prod/secrets/ids-peer-token").respond(200, secret_with_token()),
        |b| {
            let f = members_yaml(b);
            assert_eq!((f.epoch, f.current.len(), f.previous.is_none()), (3, 3, true));
        },
        5,
    );
    script.push(
        expect("PATCH", format!("{SC}/ids/status"))
            .check(|b| assert_eq!(b["status"]["membership"]["phase"], "Finalizing")),
    );
    script.push(expect("POST", EVENTS).check(|b| assert_eq!(b["reason"], "NewConfiguration")));
    run(&sc, sc_script(&sc, script), reports("ids", 0..5, 2, 2, true), seqcluster::apply::reconcile).await.unwrap();

    // Finalizing; the three remaining members run epoch 3: shrink the StatefulSet to 3.
    let fin = MembershipStatus {
        epoch: 3,
        current: MemberSetStatus { members: 3, ..Default::default() },
        previous: Some(MemberSetStatus { members: 5, ..Default::default() }),
        phase: MembershipPhase::Finalizing,
    };
    let sc = Arc::new(seqc_with(3, Some(fin)));
    let mut script = sc_applies(
        expect("GET", "/api/v1/namespaces/prod/secrets/ids-peer-token").respond(200, secret_with_token()),
        |b| assert_eq!(members_yaml(b).epoch, 3),
        3,
    );
    script.push(expect("PATCH", format!("{SC}/ids/status")).check(|b| {
        assert_eq!(b["status"]["membership"]["phase"], "Stable");
        assert!(b["status"]["membership"].get("previous").is_none());
    }));
    script.push(expect("POST", EVENTS).check(|b| assert_eq!(b["reason"], "ScaledTo")));
    run(&sc, sc_script(&sc, script), reports("ids", 0..3, 3, 2, true), seqcluster::apply::reconcile).await.unwrap();
}

#[tokio::test]
async fn seqcluster_scale_down_waits_without_a_quorum_of_caught_up_members() {
    let sc = Arc::new(seqc_with(3, Some(stable(4, 5))));
    let mut script = sc_applies(
        expect("GET", "/api/v1/namespaces/prod/secrets/ids-peer-token").respond(200, secret_with_token()),
        |b| assert_eq!(members_yaml(b).epoch, 4, "configuration unchanged"),
        5,
    );
    script.push(expect("PATCH", format!("{SC}/ids/status")).check(|b| {
        let conds = b["status"]["conditions"].as_array().unwrap();
        let p = conds.iter().find(|c| c["type"] == "Progressing").unwrap();
        assert_eq!(p["reason"], "WaitingForQuorum");
        let a = conds.iter().find(|c| c["type"] == "Available").unwrap();
        assert_eq!(a["status"], "False");
    }));
    // Only two members answer.
    run(&sc, sc_script(&sc, script), reports("ids", 0..2, 4, 4, true), seqcluster::apply::reconcile).await.unwrap();
}

#[tokio::test]
async fn seqcluster_status_is_only_written_when_it_changes() {
    let mut sc = seqc_with(3, Some(stable(1, 3)));
    let probe = reports("ids", 0..3, 1, 1, true);
    let plan = seqcluster::scaling::plan(
        "ids",
        &MemberSetStatus { members: 3, ..Default::default() },
        Some(&stable(1, 3)),
        &probe.0.lock().unwrap().values().map(|r| (r.id.clone(), r.clone())).collect(),
    );
    let now = k8s_openapi::jiff::Timestamp::now();
    let reports_by_id = probe.0.lock().unwrap().values().map(|r| (r.id.clone(), r.clone())).collect();
    sc.status = Some(seqcluster::status::observed("ids", None, Some(1), &plan, &reports_by_id, now));
    let sc = Arc::new(sc);
    let script = sc_applies(
        expect("GET", "/api/v1/namespaces/prod/secrets/ids-peer-token").respond(200, secret_with_token()),
        |_| {},
        3,
    );
    // No status PATCH, no Event: a settled cluster resyncs slowly.
    let action = run(&sc, sc_script(&sc, script), probe, seqcluster::apply::reconcile).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
}

/// What the API server holds after our apply: the applied body at `version`.
fn live(body: &Value, version: &str) -> Value {
    let mut obj = body.clone();
    obj["metadata"]["resourceVersion"] = json!(version);
    obj
}

#[tokio::test]
async fn unchanged_children_are_not_re_sent_while_the_watch_cache_holds_what_was_applied() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;
    use ordo_operator::children::{Applied, Children};

    let mut sc = seqc_with(3, Some(stable(1, 3)));
    let probe = || reports("ids", 0..3, 1, 1, true);
    let plan = seqcluster::scaling::plan(
        "ids",
        &MemberSetStatus { members: 3, ..Default::default() },
        Some(&stable(1, 3)),
        &probe().0.lock().unwrap().values().map(|r| (r.id.clone(), r.clone())).collect(),
    );
    let reports_by_id = probe().0.lock().unwrap().values().map(|r| (r.id.clone(), r.clone())).collect();
    let now = k8s_openapi::jiff::Timestamp::now();
    sc.status = Some(seqcluster::status::observed("ids", None, Some(1), &plan, &reports_by_id, now));
    let sc = Arc::new(sc);

    // Watch caches the test fills as the API server's watch would.
    let (sts, mut sts_w) = store::<StatefulSet>();
    let (cms, mut cms_w) = store::<ConfigMap>();
    let (svcs, mut svcs_w) = store::<Service>();
    let (pdbs, mut pdbs_w) = store::<PodDisruptionBudget>();
    let (nps, mut nps_w) = store::<NetworkPolicy>();
    let children = Children { statefulsets: sts, config_maps: cms, services: svcs, pdbs, network_policies: nps };
    let applied = Arc::new(Applied::default());
    let setup = |children: &Children, applied: &Arc<Applied>| {
        let (children, applied) = (children.clone(), applied.clone());
        move |ctx: &mut Context| {
            let _ = ctx.children.set(children);
            ctx.applied = applied;
        }
    };
    // The API server answers each apply with the object at resourceVersion "7".
    let bodies: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let answered = |path: &str, bodies: &Arc<Mutex<BTreeMap<String, Value>>>| {
        let (path, bodies) = (path.to_string(), bodies.clone());
        expect("PATCH", path.clone()).check(move |b| {
            bodies.lock().unwrap().insert(path.clone(), b.clone());
        })
    };
    let token = || expect("GET", "/api/v1/namespaces/prod/secrets/ids-peer-token").respond(200, secret_with_token());
    let paths = [
        "/api/v1/namespaces/prod/services/ids-peers",
        "/api/v1/namespaces/prod/configmaps/ids-members",
        "/apis/apps/v1/namespaces/prod/statefulsets/ids",
        "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/ids",
        "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/ids-peers",
    ];
    // 1. Nothing in the caches yet: everything is applied. The mock echoes each body; the
    //    test records them to build what the watch will show.
    let mut script = vec![token()];
    script.extend(paths[..2].iter().map(|p| answered(p, &bodies)));
    script.push(expect("PATCH", "/api/v1/namespaces/prod/secrets/ids-peer-token"));
    script.extend(paths[2..].iter().map(|p| answered(p, &bodies)));
    run_in(&sc, sc_script(&sc, script), probe(), seqcluster::apply::reconcile, setup(&children, &applied))
        .await
        .unwrap();
    // The echoed bodies carried no resourceVersion, so nothing is recorded as applied yet: the
    // next reconcile applies again, this time answered at version "7".
    let mut script = vec![token()];
    for (i, p) in paths.iter().enumerate() {
        if i == 2 {
            script.push(expect("PATCH", "/api/v1/namespaces/prod/secrets/ids-peer-token"));
        }
        let body = bodies.lock().unwrap()[*p].clone();
        script.push(expect("PATCH", *p).respond(200, live(&body, "7")));
    }
    run_in(&sc, sc_script(&sc, script), probe(), seqcluster::apply::reconcile, setup(&children, &applied))
        .await
        .unwrap();
    // 2. The watch shows every child at version 7: only the unwatched Secret is applied.
    fn show<K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned>(
        w: &mut kube::runtime::reflector::store::Writer<K>,
        v: Value,
    ) {
        w.apply_watcher_event(&Event::Apply(serde_json::from_value(v).unwrap()));
    }
    let at = |p: &str, v: &str| live(&bodies.lock().unwrap()[p], v);
    show(&mut svcs_w, at(paths[0], "7"));
    show(&mut cms_w, at(paths[1], "7"));
    show(&mut sts_w, at(paths[2], "7"));
    show(&mut pdbs_w, at(paths[3], "7"));
    show(&mut nps_w, at(paths[4], "7"));
    let script = vec![token(), expect("PATCH", "/api/v1/namespaces/prod/secrets/ids-peer-token")];
    run_in(&sc, sc_script(&sc, script), probe(), seqcluster::apply::reconcile, setup(&children, &applied))
        .await
        .unwrap();
    // 3. Someone edits the ConfigMap (version 8): it alone is applied again.
    show(&mut cms_w, at(paths[1], "8"));
    let script = vec![
        token(),
        expect("PATCH", paths[1]).respond(200, at(paths[1], "8")),
        expect("PATCH", "/api/v1/namespaces/prod/secrets/ids-peer-token"),
    ];
    run_in(&sc, sc_script(&sc, script), probe(), seqcluster::apply::reconcile, setup(&children, &applied))
        .await
        .unwrap();
}

#[tokio::test]
async fn invalid_spec_sets_degraded_publishes_a_warning_and_does_not_requeue() {
    let mut sc = seqc_with(3, None);
    sc.spec.template = Some(json!({"spec": {"containers": [{"name": "ordo-sidecar", "image": "x"}]}}));
    let sc = Arc::new(sc);
    let script = vec![
        expect("PATCH", format!("{SC}/ids/status")).check(|b| {
            let conds = b["status"]["conditions"].as_array().unwrap();
            let d = conds.iter().find(|c| c["type"] == "Degraded").unwrap();
            assert_eq!((d["status"].as_str(), d["reason"].as_str()), (Some("True"), Some("InvalidSpec")));
            assert!(d["message"].as_str().unwrap().contains("reserved for the sidecar"));
        }),
        expect("POST", EVENTS).check(|b| {
            assert_eq!((b["type"].as_str(), b["reason"].as_str()), (Some("Warning"), Some("InvalidSpec")));
        }),
    ];
    let action = run(&sc, sc_script(&sc, script), TableProbe::default(), seqcluster::apply::reconcile).await.unwrap();
    assert_eq!(action, Action::await_change());

    // Reconciled again with its Degraded status already recorded: no call at all (no hot loop).
    let mut again = (*sc).clone();
    let err = seqcluster::validate::validate(&again).unwrap_err();
    again.status = Some(seqcluster::status::invalid(None, Some(1), &err, k8s_openapi::jiff::Timestamp::now()));
    let script = sc_script(&again, vec![]);
    let action = run(&Arc::new(again), script, TableProbe::default(), seqcluster::apply::reconcile).await.unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn deleted_objects_are_left_to_garbage_collection() {
    let mut sc = seqc_with(3, Some(stable(1, 3)));
    sc.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    let action = run(&Arc::new(sc), vec![], TableProbe::default(), seqcluster::apply::reconcile).await.unwrap();
    assert_eq!(action, Action::await_change());
    let mut wd = common::workdivider("workdivider-minimal.yaml");
    wd.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    let action = run(&Arc::new(wd), vec![], TableProbe::default(), workdivider::apply::reconcile).await.unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn workdivider_with_a_missing_seqcluster_reports_a_condition() {
    let wd = Arc::new(common::workdivider("workdivider-minimal.yaml"));
    let script = vec![
        expect("GET", format!("{SC}/ids")).not_found(),
        expect("PATCH", format!("{WD}/stocks/status")).check(|b| {
            let conds = b["status"]["conditions"].as_array().unwrap();
            let d = conds.iter().find(|c| c["type"] == "Degraded").unwrap();
            assert_eq!((d["status"].as_str(), d["reason"].as_str()), (Some("True"), Some("SeqClusterNotFound")));
            assert!(d["message"].as_str().unwrap().contains("create it or fix spec.seqClusterRef.name"));
        }),
        expect("POST", EVENTS).check(|b| assert_eq!(b["reason"], "SeqClusterNotFound")),
    ];
    let action = run(&wd, script, TableProbe::default(), workdivider::apply::reconcile).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
}

#[tokio::test]
async fn workdivider_first_reconcile_copies_the_seqcluster_members() {
    let wd = Arc::new(common::workdivider("workdivider-minimal.yaml"));
    let mut sc = seqc_with(3, Some(stable(4, 3)));
    sc.metadata.name = Some("ids".into());
    let script = vec![
        expect("GET", format!("{SC}/ids")).respond(200, serde_json::to_value(&sc).unwrap()),
        expect("PATCH", "/api/v1/namespaces/prod/services/stocks"),
        expect("PATCH", "/api/v1/namespaces/prod/configmaps/stocks-config").check(|b| {
            let f = members_yaml(b);
            assert_eq!((f.epoch, f.current.len()), (4, 3));
            assert!(b["data"]["divider.yaml"].as_str().unwrap().contains("partitions: 8"));
        }),
        expect("PATCH", "/apis/apps/v1/namespaces/prod/statefulsets/stocks").check(|b| {
            assert_eq!(b["spec"]["template"]["metadata"]["labels"]["ordo.dev/seqcluster"], "ids");
        }),
        expect("PATCH", format!("{WD}/stocks/status")).check(|b| {
            assert_eq!(b["status"]["seqClusterEpoch"], 4);
            assert_eq!(b["status"]["observedGeneration"], 1);
        }),
        expect("POST", EVENTS).check(|b| assert_eq!(b["reason"], "MembersCopied")),
    ];
    let action = run(&wd, script, TableProbe::default(), workdivider::apply::reconcile).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)), "pods not ready yet: poll");
}

#[tokio::test]
async fn workdivider_status_counts_the_keys_its_pods_hold() {
    let wd = Arc::new(common::workdivider("workdivider-minimal.yaml"));
    let mut sc = seqc_with(3, Some(stable(4, 3)));
    sc.metadata.name = Some("ids".into());
    let member = |id: &str, assigned| DividerMember { id: id.into(), affinity: 1, assigned };
    let probe = TableProbe::default();
    // Pod 0 answers and holds all 4 keys of its member; pod 1 does not answer, so the keys its
    // member would hold count as unowned.
    probe.1.lock().unwrap().insert(
        workdivider::apply::pod_host("stocks", "prod", 0),
        DividerReport {
            divider: "stocks".into(),
            version: 7,
            keys: 8,
            members: vec![member("stocks-0", 4), member("stocks-1", 4)],
            held_here: vec![HeldKeys { id: "stocks-0".into(), keys: 4 }],
        },
    );
    let script = vec![
        expect("GET", format!("{SC}/ids")).respond(200, serde_json::to_value(&sc).unwrap()),
        expect("PATCH", "/api/v1/namespaces/prod/services/stocks"),
        expect("PATCH", "/api/v1/namespaces/prod/configmaps/stocks-config"),
        expect("PATCH", "/apis/apps/v1/namespaces/prod/statefulsets/stocks"),
        expect("PATCH", format!("{WD}/stocks/status")).check(|b| {
            let st = &b["status"];
            assert_eq!((st["keys"].as_i64(), st["unownedKeys"].as_i64()), (Some(8), Some(4)), "{st}");
            assert_eq!(st["members"][0], json!({"id": "stocks-0", "affinity": 1, "assignedKeys": 4, "keys": 4}));
            assert_eq!(st["members"][1]["keys"], 0);
            let c = st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "KeysOwned").unwrap();
            assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("KeysUnowned")));
            assert!(c["message"].as_str().unwrap().contains("4 of 8 keys"), "{c}");
        }),
        expect("POST", EVENTS).check(|b| assert_eq!(b["reason"], "MembersCopied")),
    ];
    let action = run(&wd, script, probe, workdivider::apply::reconcile).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)), "keys wait for owners: poll");
}

#[tokio::test]
async fn api_failures_are_classified_for_the_requeue_policy() {
    for (code, class, delay) in [
        (500, ErrorClass::Transient, 5),
        (409, ErrorClass::Conflict, 1),
        (403, ErrorClass::Forbidden, 120),
        (422, ErrorClass::Rejected, 300),
    ] {
        let wd = Arc::new(common::workdivider("workdivider-minimal.yaml"));
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "X", "code": code, "message": "boom"});
        let script = vec![expect("GET", format!("{SC}/ids")).respond(code, status)];
        let err = run(&wd, script, TableProbe::default(), workdivider::apply::reconcile).await.unwrap_err();
        assert_eq!(err.class(), class, "HTTP {code}");
        assert_eq!(err.class().requeue(), Action::requeue(Duration::from_secs(delay)));
        assert!(err.to_string().contains("read SeqCluster"), "{err}");
    }
}

#[test]
fn watch_of_seqclusters_maps_to_referencing_workdividers() {
    let sc: WorkDivider = common::workdivider("workdivider-minimal.yaml");
    let mut other = common::workdivider("workdivider-full.yaml");
    other.spec.seq_cluster_ref.name = "elsewhere".into();
    let seqc = seqc_with(3, None);
    let refs = ordo_operator::controller::referencing(&[Arc::new(sc), Arc::new(other)], &seqc);
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].name, "stocks");
}

#[tokio::test]
async fn disabled_pdb_and_network_policy_are_deleted() {
    let mut sc = seqc_with(3, Some(stable(1, 3)));
    sc.spec.pod_disruption_budget = false;
    sc.spec.network_policy = false;
    let sc = Arc::new(sc);
    let mut script = sc_applies(
        expect("GET", "/api/v1/namespaces/prod/secrets/ids-peer-token").respond(200, secret_with_token()),
        |_| {},
        3,
    );
    script.truncate(script.len() - 2);
    // The first is gone already (404 is fine), the second is removed.
    script.push(expect("DELETE", "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/ids").not_found());
    script.push(
        expect("DELETE", "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/ids-peers")
            .check(|b| assert_eq!(b["propagationPolicy"], "Background"))
            .respond(200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
    );
    script.push(expect("PATCH", format!("{SC}/ids/status")));
    run(&sc, sc_script(&sc, script), reports("ids", 0..3, 1, 1, true), seqcluster::apply::reconcile).await.unwrap();
}

#[tokio::test]
async fn workdivider_waits_for_a_seqcluster_without_members() {
    let wd = Arc::new(common::workdivider("workdivider-minimal.yaml"));
    let sc = seqc_with(3, None);
    let script = vec![
        expect("GET", format!("{SC}/ids")).respond(200, serde_json::to_value(&sc).unwrap()),
        expect("PATCH", format!("{WD}/stocks/status")).check(|b| {
            let conds = b["status"]["conditions"].as_array().unwrap();
            let p = conds.iter().find(|c| c["type"] == "Progressing").unwrap();
            assert_eq!((p["status"].as_str(), p["reason"].as_str()), (Some("True"), Some("SeqClusterNotReady")));
            let d = conds.iter().find(|c| c["type"] == "Degraded").unwrap();
            assert_eq!(d["status"], "False", "a SeqCluster that is starting is not a fault");
        }),
        expect("POST", EVENTS).check(|b| assert_eq!(b["reason"], "SeqClusterNotReady")),
    ];
    let action = run(&wd, script, TableProbe::default(), workdivider::apply::reconcile).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
}

#[tokio::test]
async fn plans_from_the_api_servers_copy_not_a_stale_cache() {
    // The watch cache still shows the joint configuration; the API server already has epoch 3.
    let joint = MembershipStatus {
        epoch: 2,
        current: MemberSetStatus { members: 5, ..Default::default() },
        previous: Some(MemberSetStatus { members: 3, ..Default::default() }),
        phase: MembershipPhase::Joint,
    };
    let finalizing = MembershipStatus { epoch: 3, phase: MembershipPhase::Finalizing, ..joint.clone() };
    let stale = Arc::new(seqc_with(5, Some(joint)));
    let fresh = seqc_with(5, Some(finalizing));
    let mut script = sc_applies(
        expect("GET", "/api/v1/namespaces/prod/secrets/ids-peer-token").respond(200, secret_with_token()),
        |b| assert_eq!(members_yaml(b).epoch, 3, "never back to the joint epoch 2"),
        5,
    );
    script.push(expect("PATCH", format!("{SC}/ids/status")).check(|b| {
        assert_eq!(b["status"]["membership"]["epoch"], 3);
        assert_eq!(b["status"]["membership"]["phase"], "Stable");
    }));
    script.push(expect("POST", EVENTS).check(|b| assert_eq!(b["reason"], "ScaledTo")));
    run(&stale, sc_script(&fresh, script), reports("ids", 0..5, 3, 2, true), seqcluster::apply::reconcile)
        .await
        .unwrap();
}
