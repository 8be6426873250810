//! [`ValidWorkDivider`] + the SeqCluster's member configuration -> desired objects. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use ordo_contract::config::LogArgs;
use ordo_contract::divider::DividerConfig;

use super::validate::ValidWorkDivider;
use crate::crd::MembershipStatus;
use crate::labels::{object_labels, selector_labels, Component, ROLE_LABEL, SEQCLUSTER_LABEL};
use crate::pod::{pod_template, PodParts, SidecarRole, DIVIDER_KEY, MEMBERS_KEY};
use crate::seqcluster::build::{members_file, secret_name};

/// Name of the WorkDivider's ConfigMap.
pub fn config_map_name(name: &str) -> String {
    format!("{name}-config")
}

/// Every object of one WorkDivider, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkDividerObjects {
    /// Headless Service (stable pod DNS).
    pub service: Service,
    /// Members file copy and divider config.
    pub config_map: ConfigMap,
    /// The pods.
    pub statefulset: StatefulSet,
}

/// Seconds a leaving pod gets beyond its key handoff (stop timeout + drain timeout).
pub const GRACE_MARGIN_SECONDS: i64 = 5;

/// `terminationGracePeriodSeconds` of a WorkDivider pod: on SIGTERM its sidecar stops every key
/// and waits up to the stop timeout for the app to confirm, then drains requests, so the kubelet
/// must not kill it before both ran out.
pub fn grace_period_seconds(v: &ValidWorkDivider) -> i64 {
    let ms = i64::try_from(v.stop_timeout_ms).unwrap_or(i64::MAX).saturating_add(v.sidecar.drain_timeout_ms);
    (ms.saturating_add(999) / 1000).saturating_add(GRACE_MARGIN_SECONDS)
}

/// Builds every object, given the referenced SeqCluster's applied member configuration and its
/// log stream settings.
pub fn build(v: &ValidWorkDivider, seq_membership: &MembershipStatus, logs: &LogArgs) -> WorkDividerObjects {
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        namespace: Some(v.namespace.clone()),
        labels: Some(object_labels(Component::WorkDivider, &v.name)),
        owner_references: Some(vec![v.owner.clone()]),
        ..Default::default()
    };
    let selector = selector_labels(Component::WorkDivider, &v.name);

    let service = Service {
        metadata: meta(v.name.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };

    let members = members_file(&v.seq_cluster, &v.namespace, seq_membership);
    let divider = DividerConfig {
        divider: v.name.clone(),
        seq_cluster: v.seq_cluster.clone(),
        seq_cluster_epoch: members.epoch,
        default_affinity: v.default_affinity,
        keys: v.keys.clone(),
        lease_ms: v.lease_ms,
        stop_timeout_ms: v.stop_timeout_ms,
    };
    let config_map = ConfigMap {
        metadata: meta(config_map_name(&v.name)),
        data: Some(BTreeMap::from([
            (MEMBERS_KEY.to_string(), members.to_yaml()),
            (DIVIDER_KEY.to_string(), divider.to_yaml()),
        ])),
        ..Default::default()
    };

    let mut pod_labels = object_labels(Component::WorkDivider, &v.name);
    pod_labels.insert(SEQCLUSTER_LABEL.into(), v.seq_cluster.clone());
    pod_labels.insert(ROLE_LABEL.into(), "client".into());
    let template = pod_template(PodParts {
        app: &v.app,
        sidecar: &v.sidecar,
        role: SidecarRole::Client,
        labels: pod_labels,
        selector: selector.clone(),
        config_map: config_map_name(&v.name),
        secret: secret_name(&v.seq_cluster),
        annotations: BTreeMap::new(),
        logs,
        grace_period_seconds: Some(grace_period_seconds(v)),
    });
    let statefulset = StatefulSet {
        metadata: meta(v.name.clone()),
        spec: StatefulSetSpec {
            replicas: Some(v.replicas),
            service_name: Some(v.name.clone()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            template,
            ..Default::default()
        },
        ..Default::default()
    };
    WorkDividerObjects { service, config_map, statefulset }
}
