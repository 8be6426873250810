//! [`ValidSeqCluster`] + planned configuration -> desired objects. Pure: no client.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, Service, ServicePort, ServiceSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use ordo_contract::config::{DEFAULT_ADMIN_PORT, DEFAULT_PEER_PORT};
use ordo_contract::membership::{Member, MemberSet, MembersFile};

use super::scaling::{member_id, write_quorum};
use super::validate::ValidSeqCluster;
use crate::crd::{MemberSetStatus, MembershipPhase, MembershipStatus};
use crate::labels::{object_labels, selector_labels, Component, ROLE_LABEL, SEQCLUSTER_LABEL};
use crate::pod::{pod_template, PodParts, SidecarRole, DATA_VOLUME, MEMBERS_KEY, TOKEN_KEY};

/// Annotation on the ConfigMap with the epoch of its members file.
pub const EPOCH_ANNOTATION: &str = "ordo.dev/epoch";

/// Name of the headless Service giving members their peer DNS names.
pub fn peers_service_name(name: &str) -> String {
    format!("{name}-peers")
}
/// Name of the ConfigMap holding the members file.
pub fn config_map_name(name: &str) -> String {
    format!("{name}-members")
}
/// Name of the Secret holding the peer token.
pub fn secret_name(name: &str) -> String {
    format!("{name}-peer-token")
}

/// DNS name of member `id` (resolvable in-cluster through the headless Service).
pub fn member_host(name: &str, namespace: &str, id: &str) -> String {
    format!("{id}.{}.{namespace}.svc", peers_service_name(name))
}

fn member_set(name: &str, namespace: &str, set: &MemberSetStatus) -> MemberSet {
    MemberSet {
        members: (0..set.members)
            .map(|i| {
                let id = member_id(name, i);
                Member { peer_addr: format!("{}:{DEFAULT_PEER_PORT}", member_host(name, namespace, &id)), id }
            })
            .collect(),
        read_quorum: set.read_quorum.map(|r| r as usize),
        write_quorum: set.write_quorum.map(|w| w as usize),
    }
}

/// The members file for a configuration; used for the SeqCluster's ConfigMap and copied into
/// the ConfigMaps of WorkDividers that reference it. `previous` is only written while joint.
pub fn members_file(name: &str, namespace: &str, membership: &MembershipStatus) -> MembersFile {
    MembersFile {
        epoch: membership.epoch.max(1) as u64,
        current: member_set(name, namespace, &membership.current),
        previous: match (membership.phase, &membership.previous) {
            (MembershipPhase::Joint, Some(p)) => Some(member_set(name, namespace, p)),
            _ => None,
        },
    }
}

/// The configuration the spec asks for.
pub fn desired_set(v: &ValidSeqCluster) -> MemberSetStatus {
    MemberSetStatus {
        members: v.replicas as i32,
        read_quorum: v.read_quorum.map(|r| r as i32),
        write_quorum: v.write_quorum.map(|w| w as i32),
    }
}

/// Every object of one SeqCluster, in apply order (ConfigMap and Secret before the StatefulSet).
#[derive(Debug, Clone, PartialEq)]
pub struct SeqClusterObjects {
    /// Headless peer Service.
    pub service: Service,
    /// Members file.
    pub config_map: ConfigMap,
    /// Peer token.
    pub secret: Secret,
    /// Members.
    pub statefulset: StatefulSet,
    /// Keeps a write quorum up; `None` when disabled.
    pub pdb: Option<PodDisruptionBudget>,
    /// Limits the peer port; `None` when disabled.
    pub network_policy: Option<NetworkPolicy>,
}

fn meta(v: &ValidSeqCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(v.namespace.clone()),
        labels: Some(object_labels(Component::SeqCluster, &v.name)),
        owner_references: Some(vec![v.owner.clone()]),
        ..Default::default()
    }
}

/// Builds every object. `token` is the peer token (kept from the existing Secret, or new).
pub fn build(
    v: &ValidSeqCluster,
    membership: &MembershipStatus,
    statefulset_replicas: i32,
    token: &str,
) -> SeqClusterObjects {
    let selector = selector_labels(Component::SeqCluster, &v.name);
    let peers = peers_service_name(&v.name);

    let service = Service {
        metadata: meta(v, peers.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Members must resolve each other before they are ready: readiness needs a quorum.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector.clone()),
            ports: Some(vec![
                ServicePort {
                    name: Some("peer".into()),
                    port: DEFAULT_PEER_PORT.into(),
                    target_port: Some(IntOrString::String("peer".into())),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("admin".into()),
                    port: DEFAULT_ADMIN_PORT.into(),
                    target_port: Some(IntOrString::String("admin".into())),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let file = members_file(&v.name, &v.namespace, membership);
    let mut cm_meta = meta(v, config_map_name(&v.name));
    cm_meta.annotations = Some(BTreeMap::from([(EPOCH_ANNOTATION.to_string(), file.epoch.to_string())]));
    let config_map = ConfigMap {
        metadata: cm_meta,
        data: Some(BTreeMap::from([(MEMBERS_KEY.to_string(), file.to_yaml())])),
        ..Default::default()
    };

    let secret = Secret {
        metadata: meta(v, secret_name(&v.name)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(TOKEN_KEY.to_string(), ByteString(token.as_bytes().to_vec()))])),
        ..Default::default()
    };

    let mut pod_labels = object_labels(Component::SeqCluster, &v.name);
    pod_labels.insert(SEQCLUSTER_LABEL.into(), v.name.clone());
    pod_labels.insert(ROLE_LABEL.into(), "member".into());
    let template = pod_template(PodParts {
        app: &v.app,
        sidecar: &v.sidecar,
        role: SidecarRole::Member,
        labels: pod_labels,
        selector: selector.clone(),
        config_map: config_map_name(&v.name),
        secret: secret_name(&v.name),
        annotations: BTreeMap::new(),
        logs: &v.logs,
        grace_period_seconds: None,
    });
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some(DATA_VOLUME.into()), labels: Some(selector.clone()), ..Default::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: v.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), v.storage_size.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let statefulset = StatefulSet {
        metadata: meta(v, v.name.clone()),
        spec: StatefulSetSpec {
            replicas: Some(statefulset_replicas),
            service_name: Some(peers),
            // All members start together: none is ready until a quorum of them runs.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            template,
            volume_claim_templates: Some(vec![claim]),
            // A removed member's data is out of every configuration; a member added later
            // again starts empty and catches up.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_scaled: Some("Delete".into()),
                when_deleted: Some("Retain".into()),
            }),
            ..Default::default()
        },
        ..Default::default()
    };

    let pdb = v.pod_disruption_budget.then(|| {
        let quorum =
            membership.previous.iter().chain(std::iter::once(&membership.current)).map(write_quorum).max().unwrap_or(1);
        PodDisruptionBudget {
            metadata: meta(v, v.name.clone()),
            spec: Some(PodDisruptionBudgetSpec {
                min_available: Some(IntOrString::Int(quorum)),
                selector: Some(LabelSelector { match_labels: Some(selector.clone()), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    });

    let network_policy = v.network_policy.then(|| network_policy(v, &selector));

    SeqClusterObjects { service, config_map, secret, statefulset, pdb, network_policy }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort { port: Some(IntOrString::Int(port)), protocol: Some("TCP".into()), ..Default::default() }
}

/// Peer port: only pods labelled with this SeqCluster (its members and the WorkDividers that
/// reference it). Admin port and the app's declared ports: from anywhere (probes, operator,
/// Prometheus, the app's own clients).
fn network_policy(v: &ValidSeqCluster, selector: &BTreeMap<String, String>) -> NetworkPolicy {
    let mut open_ports = vec![tcp(DEFAULT_ADMIN_PORT.into())];
    for c in v.app.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            open_ports.push(NetworkPolicyPort {
                port: Some(IntOrString::Int(p.container_port)),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                ..Default::default()
            });
        }
    }
    NetworkPolicy {
        metadata: meta(v, peers_service_name(&v.name)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector.clone()), ..Default::default() }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(SEQCLUSTER_LABEL.to_string(), v.name.clone())])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ports: Some(vec![tcp(DEFAULT_PEER_PORT.into())]),
                },
                NetworkPolicyIngressRule { from: None, ports: Some(open_ports) },
            ]),
            ..Default::default()
        }),
    }
}
