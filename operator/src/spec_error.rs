//! Problems with a spec that passed the API server's schema but cannot be realised.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::crd::SidecarSpec;
use crate::pod::{RESERVED_PORTS, RESERVED_VOLUMES, SIDECAR_CONTAINER};

/// Every problem found in one spec, each saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct SpecError {
    /// One message per problem, `field: what is wrong and what to do`.
    pub problems: Vec<String>,
}

/// Collects problems while validating.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records a problem at `field`.
    pub fn add(&mut self, field: &str, message: impl std::fmt::Display) {
        self.0.push(format!("{field}: {message}"));
    }

    /// `Ok(value)` when nothing was recorded.
    pub fn finish<T>(self, value: T) -> Result<T, SpecError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(SpecError { problems: self.0 })
        }
    }
}

/// Longest object name whose StatefulSet pods still get valid names and revision labels.
pub const MAX_NAME_LEN: usize = 52;

/// Name, namespace and controller owner reference (for its children) of an object read from
/// the API server; records a problem when the name is too long or the uid is missing.
pub fn identity<K: Resource<DynamicType = ()>>(obj: &K, problems: &mut Problems) -> (String, String, OwnerReference) {
    let name = obj.name_any();
    check_name(&name, problems);
    let namespace = obj.namespace().unwrap_or_else(|| "default".into());
    let owner = obj.controller_owner_ref(&()).unwrap_or_else(|| {
        problems.add("metadata.uid", "missing; the object must come from the API server");
        OwnerReference::default()
    });
    (name, namespace, owner)
}

/// Checks an object name.
fn check_name(name: &str, problems: &mut Problems) {
    if name.len() > MAX_NAME_LEN {
        problems.add(
            "metadata.name",
            format!("{name:?} is longer than {MAX_NAME_LEN} characters; pod and revision names would not fit, recreate it with a shorter name"),
        );
    }
}

/// Parses `spec.template` into a pod template and checks it does not collide with what the
/// operator adds.
pub fn check_app_template(value: Option<&serde_json::Value>, problems: &mut Problems) -> PodTemplateSpec {
    let Some(value) = value else {
        return PodTemplateSpec::default();
    };
    let template: PodTemplateSpec = match serde_json::from_value(value.clone()) {
        Ok(t) => t,
        Err(e) => {
            problems.add("spec.template", format!("is not a valid PodTemplateSpec: {e}"));
            return PodTemplateSpec::default();
        }
    };
    let Some(spec) = &template.spec else {
        return template;
    };
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        if c.name == SIDECAR_CONTAINER {
            problems.add(
                "spec.template.spec.containers",
                format!("container name {SIDECAR_CONTAINER:?} is reserved for the sidecar; rename the container"),
            );
        }
        for p in c.ports.iter().flatten() {
            if RESERVED_PORTS.iter().any(|r| i32::from(*r) == p.container_port) {
                problems.add(
                    "spec.template.spec.containers",
                    format!(
                        "container {:?} uses port {}, which the sidecar needs (peer 7071, admin 7072); pick another port",
                        c.name, p.container_port
                    ),
                );
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if RESERVED_VOLUMES.contains(&v.name.as_str()) {
            problems.add(
                "spec.template.spec.volumes",
                format!("volume name {:?} is reserved for the operator; rename the volume", v.name),
            );
        }
    }
    if spec.restart_policy.as_deref().is_some_and(|p| p != "Always") {
        problems.add(
            "spec.template.spec.restartPolicy",
            "StatefulSet pods must use restartPolicy Always; remove the field",
        );
    }
    template
}

/// Checks sidecar settings the schema cannot.
pub fn check_sidecar(sidecar: &SidecarSpec, problems: &mut Problems) {
    if sidecar.image.trim().is_empty() {
        problems.add("spec.sidecar.image", "is empty; set an ordo-sidecar image");
    }
    if let Some(policy) = &sidecar.image_pull_policy {
        if !["Always", "IfNotPresent", "Never"].contains(&policy.as_str()) {
            problems.add("spec.sidecar.imagePullPolicy", format!("{policy:?} is not Always, IfNotPresent or Never"));
        }
    }
    for name in sidecar.sequence_ranges.keys() {
        if let Err(e) = ordo_contract::validate::validate_name(name) {
            problems.add("spec.sidecar.sequenceRanges", format!("{name:?}: {e}"));
        }
    }
}
