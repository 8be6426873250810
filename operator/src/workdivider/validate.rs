//! WorkDivider spec -> [`ValidWorkDivider`].

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use ordo_contract::divider::{DividerConfig, DividerKeys};

use crate::crd::{KeySpec, SidecarSpec, WorkDivider};
use crate::spec_error::{check_app_template, check_sidecar, identity, Problems, SpecError};

/// Prefix of numbered keys when `keys.prefix` is unset.
pub const DEFAULT_KEY_PREFIX: &str = "p-";

/// A WorkDivider whose spec can be realised.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidWorkDivider {
    /// Object name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Owner reference put on every child.
    pub owner: OwnerReference,
    /// Referenced SeqCluster (same namespace).
    pub seq_cluster: String,
    /// Pods.
    pub replicas: i32,
    /// Static keys, as the divider config file carries them (the prefix filled in).
    pub keys: DividerKeys,
    /// Default affinity.
    pub default_affinity: i64,
    /// Lease length, ms.
    pub lease_ms: u64,
    /// Stop timeout, ms.
    pub stop_timeout_ms: u64,
    /// Sidecar settings.
    pub sidecar: SidecarSpec,
    /// App containers.
    pub app: PodTemplateSpec,
}

/// Checks everything the builders rely on.
pub fn validate(wd: &WorkDivider) -> Result<ValidWorkDivider, SpecError> {
    let mut problems = Problems::default();
    let (name, namespace, owner) = identity(wd, &mut problems);
    let spec = &wd.spec;
    if spec.replicas < 0 {
        problems.add("spec.replicas", "must not be negative");
    }
    if spec.default_affinity < 0 {
        problems.add("spec.defaultAffinity", "must be 0 (no work) or more");
    }
    let lease_ms = u64::try_from(spec.lease_ms).unwrap_or(0);
    let stop_timeout_ms = u64::try_from(spec.stop_timeout_ms).unwrap_or(u64::MAX);
    let keys = divider_keys(&spec.keys);
    for p in keys.problems() {
        problems.add(&format!("spec.{}", p.field), p.message);
    }
    // The same rules the sidecar applies to its config file, under the spec's field names.
    let probe = DividerConfig {
        divider: "d".into(),
        seq_cluster: "s".into(),
        seq_cluster_epoch: 1,
        default_affinity: 0,
        keys: keys.clone(),
        lease_ms,
        stop_timeout_ms,
    };
    for p in probe.problems() {
        match p.field {
            "lease_ms" => problems.add("spec.leaseMs", p.message),
            "stop_timeout_ms" => problems.add("spec.stopTimeoutMs", p.message),
            _ => {}
        }
    }
    check_sidecar(&spec.sidecar, &mut problems);
    let app = check_app_template(spec.template.as_ref(), &mut problems);
    if app.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        problems.add(
            "spec.template.spec.containers",
            "a WorkDivider needs at least one app container to hand keys to; add your app under spec.template",
        );
    }
    problems.finish(ValidWorkDivider {
        name,
        namespace,
        owner,
        seq_cluster: spec.seq_cluster_ref.name.clone(),
        replicas: spec.replicas,
        keys,
        default_affinity: spec.default_affinity,
        lease_ms,
        stop_timeout_ms,
        sidecar: spec.sidecar.clone(),
        app,
    })
}

/// The spec's keys as the divider config file holds them: numbered keys get their prefix
/// (`p-` when unset). A negative partition count maps to 0, which the key rules reject.
fn divider_keys(keys: &KeySpec) -> DividerKeys {
    let partitions = keys.partitions.map(|p| u32::try_from(p).unwrap_or(0));
    let prefix = match partitions {
        Some(_) => Some(keys.prefix.clone().unwrap_or_else(|| DEFAULT_KEY_PREFIX.into())),
        None => keys.prefix.clone(),
    };
    DividerKeys { partitions, prefix, names: keys.names.clone() }
}
