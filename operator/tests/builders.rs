//! Pure builders from YAML fixtures: every object, for minimal and full specs.

mod common;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ordo_contract::divider::DividerConfig;
use ordo_contract::membership::MembersFile;
use ordo_operator::crd::{MemberSetStatus, MembershipPhase, MembershipStatus, SidecarMode};
use ordo_operator::pod::{DIVIDER_KEY, MEMBERS_KEY, SIDECAR_CONTAINER, TOKEN_KEY};
use ordo_operator::seqcluster::{build as sc_build, scaling, validate as sc_validate};
use ordo_operator::workdivider::{build as wd_build, validate as wd_validate};

use common::stable;

fn sidecar_of(spec: &PodSpec) -> &Container {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == SIDECAR_CONTAINER)
        .expect("sidecar present")
}

fn sc_objects(fixture: &str) -> (sc_validate::ValidSeqCluster, sc_build::SeqClusterObjects) {
    let sc = common::seqcluster(fixture);
    let v = sc_validate::validate(&sc).expect("valid");
    let plan = scaling::plan(&v.name, &sc_build::desired_set(&v), None, &Default::default());
    let objects = sc_build::build(&v, &plan.membership, plan.statefulset_replicas, "tok3n");
    (v, objects)
}

#[test]
fn minimal_seqcluster_builds_every_object_with_defaults() {
    let (v, o) = sc_objects("seqcluster-minimal.yaml");
    assert_eq!((v.replicas, v.namespace.as_str()), (3, "prod"));

    let svc = o.service.spec.as_ref().unwrap();
    assert_eq!(o.service.metadata.name.as_deref(), Some("ids-peers"));
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(svc.publish_not_ready_addresses, Some(true));
    let ports: Vec<i32> = svc.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, vec![7071, 7072]);

    let file = MembersFile::parse(&o.config_map.data.as_ref().unwrap()[MEMBERS_KEY]).expect("sidecar parses it");
    assert_eq!(file.epoch, 1);
    let ids: Vec<_> = file.current.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["ids-0", "ids-1", "ids-2"]);
    assert_eq!(file.current.members[1].peer_addr, "ids-1.ids-peers.prod.svc:7071");
    assert!(file.previous.is_none());

    assert_eq!(o.secret.data.as_ref().unwrap()[TOKEN_KEY].0, b"tok3n");

    let sts = &o.statefulset;
    let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("SeqCluster", Some(true)));
    assert_eq!(sts.spec.replicas, Some(3));
    assert_eq!(sts.spec.service_name.as_deref(), Some("ids-peers"));
    assert_eq!(sts.spec.pod_management_policy.as_deref(), Some("Parallel"));
    let claim = &sts.spec.volume_claim_templates.as_ref().unwrap()[0];
    let size = &claim.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"];
    assert_eq!(size.0, "1Gi");
    let pod = sts.spec.template.spec.as_ref().unwrap();
    // No app containers: the sidecar runs as the pod's only (plain) container.
    assert_eq!(pod.containers.len(), 1);
    let sidecar = sidecar_of(pod);
    assert_eq!(sidecar.restart_policy, None);
    let sec = sidecar.security_context.as_ref().unwrap();
    assert_eq!((sec.run_as_non_root, sec.read_only_root_filesystem), (Some(true), Some(true)));
    assert!(sidecar.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref() == Some("/ready"));
    let pod_labels = sts.spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(pod_labels["ordo.dev/seqcluster"], "ids");
    assert_eq!(pod_labels["ordo.dev/role"], "member");
    let spread = &pod.topology_spread_constraints.as_ref().unwrap()[0];
    assert_eq!(spread.topology_key, "kubernetes.io/hostname");

    let pdb = o.pdb.as_ref().unwrap().spec.as_ref().unwrap();
    assert_eq!(pdb.min_available, Some(IntOrString::Int(2)));
    let np = o.network_policy.as_ref().unwrap().spec.as_ref().unwrap();
    let rules = np.ingress.as_ref().unwrap();
    let peer_from = rules[0].from.as_ref().unwrap()[0].pod_selector.as_ref().unwrap();
    assert_eq!(peer_from.match_labels.as_ref().unwrap()["ordo.dev/seqcluster"], "ids");
    assert_eq!(rules[0].ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(7071)));
    assert!(rules[1].from.is_none(), "admin port open to probes and the operator");
}

#[test]
fn full_seqcluster_honours_every_option() {
    let (v, o) = sc_objects("seqcluster-full.yaml");
    assert_eq!((v.replicas, v.read_quorum, v.write_quorum), (5, Some(2), Some(4)));
    let file = MembersFile::parse(&o.config_map.data.as_ref().unwrap()[MEMBERS_KEY]).unwrap();
    assert_eq!((file.current.read_quorum(), file.current.write_quorum()), (2, 4));

    let sts = &o.statefulset;
    let claim = &sts.spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(claim.spec.as_ref().unwrap().storage_class_name.as_deref(), Some("standard"));
    let meta = sts.spec.template.metadata.as_ref().unwrap();
    assert_eq!(meta.labels.as_ref().unwrap()["team"], "payments", "template labels kept");
    let pod = sts.spec.template.spec.as_ref().unwrap();
    // mode: Container puts the sidecar next to the app.
    assert_eq!(pod.containers.len(), 2);
    assert!(pod.init_containers.is_none());
    let app = &pod.containers[0];
    assert!(app
        .env
        .iter()
        .flatten()
        .any(|e| e.name == "ORDO_SOCKET" && e.value.as_deref() == Some("/run/ordo/ordo.sock")));
    assert!(app.volume_mounts.iter().flatten().any(|m| m.mount_path == "/run/ordo"));
    let sidecar = sidecar_of(pod);
    let args = sidecar.args.as_ref().unwrap();
    for expected in
        ["--range-size=256", "--request-timeout-ms=3000", "--log-format=text", "--sequence-range=invoices=16"]
    {
        assert!(args.iter().any(|a| a == expected), "missing {expected} in {args:?}");
    }
    assert_eq!(sidecar.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0, "100m");
    assert_eq!(pod.termination_grace_period_seconds, Some(30), "drain 10s + 10s < default 30s");
    assert_eq!(
        o.pdb.as_ref().unwrap().spec.as_ref().unwrap().min_available,
        Some(IntOrString::Int(4)),
        "keeps the write quorum up"
    );
    let rules = o.network_policy.as_ref().unwrap().spec.as_ref().unwrap().ingress.clone().unwrap();
    let open: Vec<_> = rules[1].ports.iter().flatten().map(|p| p.port.clone()).collect();
    assert!(open.contains(&Some(IntOrString::Int(8080))), "app port stays reachable: {open:?}");
}

#[test]
fn native_sidecar_is_an_init_container_that_always_restarts() {
    let mut sc = common::seqcluster("seqcluster-full.yaml");
    sc.spec.sidecar.mode = SidecarMode::Native;
    let v = sc_validate::validate(&sc).unwrap();
    let o = sc_build::build(&v, &stable(1, 5), 5, "t");
    let pod = o.statefulset.spec.template.spec.unwrap();
    assert_eq!(pod.containers.len(), 1);
    let init = &pod.init_containers.unwrap()[0];
    assert_eq!((init.name.as_str(), init.restart_policy.as_deref()), (SIDECAR_CONTAINER, Some("Always")));
}

#[test]
fn disabled_pdb_and_network_policy_are_not_built() {
    let mut sc = common::seqcluster("seqcluster-minimal.yaml");
    sc.spec.pod_disruption_budget = false;
    sc.spec.network_policy = false;
    let v = sc_validate::validate(&sc).unwrap();
    let o = sc_build::build(&v, &stable(1, 3), 3, "t");
    assert!(o.pdb.is_none() && o.network_policy.is_none());
}

#[test]
fn joint_configuration_is_written_with_previous_members() {
    let (v, _) = sc_objects("seqcluster-minimal.yaml");
    let joint = MembershipStatus {
        epoch: 2,
        current: MemberSetStatus { members: 5, ..Default::default() },
        previous: Some(MemberSetStatus { members: 3, ..Default::default() }),
        phase: MembershipPhase::Joint,
    };
    let o = sc_build::build(&v, &joint, 5, "t");
    let file = MembersFile::parse(&o.config_map.data.as_ref().unwrap()[MEMBERS_KEY]).unwrap();
    assert_eq!(file.epoch, 2);
    assert_eq!(file.current.len(), 5);
    assert_eq!(file.previous.as_ref().map(|p| p.len()), Some(3));
    // Finalizing drops previous from the file but keeps the old pods.
    let fin = MembershipStatus { epoch: 3, phase: MembershipPhase::Finalizing, ..joint };
    let o = sc_build::build(&v, &fin, 5, "t");
    let file = MembersFile::parse(&o.config_map.data.as_ref().unwrap()[MEMBERS_KEY]).unwrap();
    assert!(file.previous.is_none());
    assert_eq!(o.statefulset.spec.replicas, Some(5));
}

#[test]
fn log_stream_settings_default_to_the_cluster_size_and_render_as_flags() {
    let (v, o) = sc_objects("seqcluster-minimal.yaml");
    assert_eq!((v.logs.replication_factor, v.logs.effective_ack_quorum()), (3, 2));
    let args = sidecar_of(o.statefulset.spec.template.spec.as_ref().unwrap()).args.clone().unwrap();
    assert!(args.contains(&"--streams-replication-factor=3".to_string()), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--streams-no-auto-create")));
    assert!(args.contains(&"--streams-rebalance-moves=2".to_string()), "rebalance on by default: {args:?}");
    let (v, o) = sc_objects("seqcluster-full.yaml");
    assert_eq!((v.logs.replication_factor, v.logs.ack_quorum, v.logs.max_batch_entries), (5, Some(3), 512));
    assert_eq!((v.logs.retention_seconds, v.logs.no_auto_create), (86_400, true));
    let args = sidecar_of(o.statefulset.spec.template.spec.as_ref().unwrap()).args.clone().unwrap();
    assert_eq!(v.logs.rebalance_moves, 4);
    for flag in [
        "--streams-ack-quorum=3",
        "--streams-max-entry-bytes=65536",
        "--streams-no-auto-create",
        "--streams-rebalance-moves=4",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag} missing from {args:?}");
    }
    // One member: the default replication factor shrinks to it.
    let mut sc = common::seqcluster("seqcluster-minimal.yaml");
    sc.spec.replicas = 1;
    assert_eq!(sc_validate::validate(&sc).unwrap().logs.replication_factor, 1);
    // Settings the sidecar would refuse are refused here first, naming the field.
    sc.spec.logs.ack_quorum = Some(2);
    let e = sc_validate::validate(&sc).unwrap_err().to_string();
    assert!(e.contains("spec.logs") && e.contains("--streams-ack-quorum must be in 1..=1"), "{e}");
    sc.spec.logs.ack_quorum = None;
    sc.spec.logs.replication_factor = Some(3);
    let e = sc_validate::validate(&sc).unwrap_err().to_string();
    assert!(e.contains("spec.logs.replicationFactor: 3 is more than replicas (1)"), "{e}");
}

#[test]
fn minimal_workdivider_is_a_client_of_its_seqcluster() {
    let wd = common::workdivider("workdivider-minimal.yaml");
    let v = wd_validate::validate(&wd).unwrap();
    let o = wd_build::build(&v, &stable(7, 3), &Default::default());
    let data = o.config_map.data.as_ref().unwrap();
    let members = MembersFile::parse(&data[MEMBERS_KEY]).unwrap();
    assert_eq!(members.epoch, 7);
    assert_eq!(members.current.members[0].peer_addr, "ids-0.ids-peers.prod.svc:7071");
    let divider = DividerConfig::parse(&data[DIVIDER_KEY]).unwrap();
    assert_eq!((divider.keys.partitions, divider.keys.prefix.as_deref()), (Some(8), Some("p-")));
    assert_eq!((divider.divider.as_str(), divider.seq_cluster.as_str()), ("stocks", "ids"));
    assert_eq!((divider.seq_cluster_epoch, divider.default_affinity), (7, 1));
    assert_eq!(
        (divider.lease_ms, divider.stop_timeout_ms),
        (ordo_contract::divider::DEFAULT_LEASE_MS, ordo_contract::divider::DEFAULT_STOP_TIMEOUT_MS)
    );

    assert_eq!(o.service.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));
    let sts = &o.statefulset;
    assert_eq!(sts.spec.replicas, Some(2));
    assert!(sts.spec.volume_claim_templates.is_none(), "clients hold no data");
    let labels = sts.spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!((labels["ordo.dev/seqcluster"].as_str(), labels["ordo.dev/role"].as_str()), ("ids", "client"));
    let pod = sts.spec.template.spec.as_ref().unwrap();
    let token = pod.volumes.iter().flatten().find(|v| v.secret.is_some()).unwrap();
    assert_eq!(token.secret.as_ref().unwrap().secret_name.as_deref(), Some("ids-peer-token"));
    let sidecar = sidecar_of(pod);
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let args = sidecar.args.as_ref().unwrap();
    assert!(args.contains(&"--role=client".to_string()));
    assert!(args.contains(&format!("--divider-config=/etc/ordo/{DIVIDER_KEY}")), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--data-dir")));
    assert!(!sidecar.ports.iter().flatten().any(|p| p.container_port == 7071), "clients serve no peer port");
}

#[test]
fn full_workdivider_keeps_app_settings() {
    let wd = common::workdivider("workdivider-full.yaml");
    let v = wd_validate::validate(&wd).unwrap();
    let o = wd_build::build(&v, &stable(1, 3), &Default::default());
    let divider = DividerConfig::parse(&o.config_map.data.as_ref().unwrap()[DIVIDER_KEY]).unwrap();
    assert_eq!(divider.keys.names.as_ref().unwrap()[1], "us-east");
    assert_eq!(divider.default_affinity, 3);
    let pod = o.statefulset.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("router"));
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(20 + 5 + 5),
        "raised to cover the key handoff: stopTimeoutMs 20s + drainTimeoutMs 5s + margin"
    );
    assert_eq!((divider.lease_ms, divider.stop_timeout_ms), (4000, 20_000));
    let router = &pod.containers[0];
    let socket_envs = router.env.iter().flatten().filter(|e| e.name == "ORDO_SOCKET").count();
    assert_eq!(socket_envs, 1, "a user-set ORDO_SOCKET is not duplicated");
    for c in pod.containers.iter().filter(|c| c.name != SIDECAR_CONTAINER) {
        assert!(c.volume_mounts.iter().flatten().any(|m| m.mount_path == "/run/ordo"), "{} lacks socket", c.name);
    }
    assert_eq!(sidecar_of(pod).image.as_deref(), Some("registry.example/ordo-sidecar:1.2.3"));
    let annotations = o.statefulset.spec.template.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
    assert_eq!(annotations["team"], "maps");
}

#[test]
fn unusable_specs_say_what_to_fix() {
    let mut sc = common::seqcluster("seqcluster-full.yaml");
    sc.spec.template = Some(serde_json::json!({"spec": {"containers": [
        {"name": "ordo-sidecar", "image": "x"},
        {"name": "web", "image": "x", "ports": [{"containerPort": 7072}]}
    ], "volumes": [{"name": "ordo-socket", "emptyDir": {}}]}}));
    let err = sc_validate::validate(&sc).unwrap_err().to_string();
    assert!(err.contains("reserved for the sidecar"), "{err}");
    assert!(err.contains("uses port 7072"), "{err}");
    assert!(err.contains("volume name \"ordo-socket\" is reserved"), "{err}");

    let mut sc = common::seqcluster("seqcluster-minimal.yaml");
    sc.spec.template = Some(serde_json::json!({"spec": {"containers": "not-a-list"}}));
    assert!(sc_validate::validate(&sc).unwrap_err().to_string().contains("not a valid PodTemplateSpec"));

    let mut sc = common::seqcluster("seqcluster-minimal.yaml");
    sc.spec.write_quorum = Some(1);
    assert!(sc_validate::validate(&sc).unwrap_err().to_string().contains("must exceed the 3 members"));

    let mut wd = common::workdivider("workdivider-minimal.yaml");
    wd.spec.template = None;
    let err = wd_validate::validate(&wd).unwrap_err().to_string();
    assert!(err.contains("needs at least one app container"), "{err}");

    let mut wd = common::workdivider("workdivider-full.yaml");
    wd.spec.keys.names = Some(vec!["a".into(), "a".into()]);
    assert!(wd_validate::validate(&wd).unwrap_err().to_string().contains("\"a\" appears twice"));
}

#[test]
fn render_prints_every_object_from_the_same_builders() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;

    let root = common::root().join("examples/k8s");
    let out =
        ordo_operator::render::render_files(&[root.join("seqcluster.yaml"), root.join("workdivider.yaml")]).unwrap();
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&out) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        let kind = v["kind"].as_str().unwrap().to_string();
        assert!(v["apiVersion"].is_string(), "{kind} lacks apiVersion");
        let parsed = match kind.as_str() {
            "Service" => serde_json::from_value::<Service>(v).map(|_| ()),
            "ConfigMap" => serde_json::from_value::<ConfigMap>(v).map(|_| ()),
            "Secret" => serde_json::from_value::<Secret>(v).map(|_| ()),
            "StatefulSet" => serde_json::from_value::<StatefulSet>(v).map(|_| ()),
            "PodDisruptionBudget" => serde_json::from_value::<PodDisruptionBudget>(v).map(|_| ()),
            "NetworkPolicy" => serde_json::from_value::<NetworkPolicy>(v).map(|_| ()),
            other => panic!("unexpected kind {other}"),
        };
        parsed.unwrap_or_else(|e| panic!("{kind}: {e}"));
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "Service",
            "ConfigMap",
            "Secret",
            "StatefulSet",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "Service",
            "ConfigMap",
            "StatefulSet"
        ]
    );

    let wd_only = std::fs::read_to_string(root.join("workdivider.yaml")).unwrap();
    let err = ordo_operator::render::render(&wd_only).unwrap_err().to_string();
    assert!(err.contains("pass it too"), "{err}");
    let err =
        ordo_operator::render::render("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap_err().to_string();
    assert!(err.contains("is not SeqCluster or WorkDivider"), "{err}");
}
