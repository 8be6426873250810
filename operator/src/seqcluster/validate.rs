//! SeqCluster spec -> [`ValidSeqCluster`], the only input the builders read.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use ordo_contract::config::LogArgs;
use ordo_contract::membership::check_quorum_sizes;

use crate::crd::{LogsSpec, SeqCluster, SidecarSpec};
use crate::spec_error::{check_app_template, check_sidecar, identity, Problems, SpecError};

/// A SeqCluster whose spec can be realised.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSeqCluster {
    /// Object name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Owner reference put on every child.
    pub owner: OwnerReference,
    /// Desired members.
    pub replicas: u32,
    /// Read quorum override.
    pub read_quorum: Option<u32>,
    /// Write quorum override.
    pub write_quorum: Option<u32>,
    /// Sidecar settings.
    pub sidecar: SidecarSpec,
    /// Volume size per member.
    pub storage_size: Quantity,
    /// Storage class.
    pub storage_class: Option<String>,
    /// App containers.
    pub app: PodTemplateSpec,
    /// Whether to create the PodDisruptionBudget.
    pub pod_disruption_budget: bool,
    /// Whether to create the NetworkPolicy.
    pub network_policy: bool,
    /// Log stream settings every sidecar of this cluster (and of its WorkDividers) gets.
    pub logs: LogArgs,
}

impl ValidSeqCluster {
    /// Write quorum of a configuration of `n` members with this spec's override.
    pub fn write_quorum_of(&self, n: u32) -> u32 {
        self.write_quorum.filter(|w| *w <= n).unwrap_or(n / 2 + 1)
    }
}

/// Checks everything the builders rely on.
pub fn validate(sc: &SeqCluster) -> Result<ValidSeqCluster, SpecError> {
    let mut problems = Problems::default();
    let (name, namespace, owner) = identity(sc, &mut problems);
    let spec = &sc.spec;
    let replicas = u32::try_from(spec.replicas).unwrap_or(0);
    if !(1..=31).contains(&replicas) {
        problems.add("spec.replicas", format!("{} is not between 1 and 31", spec.replicas));
    }
    let read_quorum = spec.read_quorum.map(|r| u32::try_from(r).unwrap_or(0));
    let write_quorum = spec.write_quorum.map(|w| u32::try_from(w).unwrap_or(0));
    if replicas >= 1 {
        let n = replicas as usize;
        let r = read_quorum.map_or(n / 2 + 1, |r| r as usize);
        let w = write_quorum.map_or(n / 2 + 1, |w| w as usize);
        if let Err(e) = check_quorum_sizes(n, r, w) {
            problems.add("spec.readQuorum/writeQuorum", e);
        }
    }
    check_sidecar(&spec.sidecar, &mut problems);
    if spec.storage.size.trim().is_empty() {
        problems.add("spec.storage.size", "is empty; set a size such as 1Gi");
    }
    let app = check_app_template(spec.template.as_ref(), &mut problems);
    let logs = log_args(&spec.logs, replicas);
    if let Some(rf) = spec.logs.replication_factor.filter(|rf| *rf > spec.replicas) {
        problems.add("spec.logs.replicationFactor", format!("{rf} is more than replicas ({})", spec.replicas));
    }
    if let Err(e) = logs.validate() {
        problems.add("spec.logs", e);
    }
    problems.finish(ValidSeqCluster {
        name,
        namespace,
        owner,
        replicas,
        read_quorum,
        write_quorum,
        sidecar: spec.sidecar.clone(),
        storage_size: Quantity(spec.storage.size.clone()),
        storage_class: spec.storage.storage_class_name.clone(),
        app,
        pod_disruption_budget: spec.pod_disruption_budget,
        network_policy: spec.network_policy,
        logs,
    })
}

/// The sidecar's log stream settings for a cluster of `replicas` members: the spec's values,
/// with the replication factor defaulting to `min(3, replicas)` and the ack quorum to a
/// majority of it. Values that do not fit the flags' types map to 0, which validation rejects.
pub fn log_args(logs: &LogsSpec, replicas: u32) -> LogArgs {
    let bytes = |v: i64| u64::try_from(v).unwrap_or(0);
    LogArgs {
        replication_factor: logs
            .replication_factor
            .map_or(replicas.clamp(1, ordo_contract::config::DEFAULT_REPLICATION_FACTOR), |rf| {
                u32::try_from(rf).unwrap_or(0)
            }),
        ack_quorum: logs.ack_quorum.map(|a| u32::try_from(a).unwrap_or(0)),
        max_entry_bytes: bytes(logs.max_entry_bytes),
        max_batch_bytes: bytes(logs.max_batch_bytes),
        max_batch_entries: u32::try_from(logs.max_batch_entries).unwrap_or(0),
        max_inflight_bytes: bytes(logs.max_inflight_bytes),
        retention_seconds: bytes(logs.retention_seconds),
        retention_bytes: bytes(logs.retention_bytes),
        no_auto_create: !logs.auto_create,
        rebalance_moves: u32::try_from(logs.rebalance_moves).unwrap_or(u32::MAX),
    }
}
