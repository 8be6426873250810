//! Names and labels shared by every object the operator creates.

use std::collections::BTreeMap;

/// The one field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "ordo-operator";
/// Label naming the SeqCluster a pod belongs to or is a client of (NetworkPolicy uses it).
pub const SEQCLUSTER_LABEL: &str = "ordo.dev/seqcluster";
/// Label naming the sidecar role of a pod (`member` or `client`).
pub const ROLE_LABEL: &str = "ordo.dev/role";

/// Which of Ordo's kinds owns an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// A SeqCluster.
    SeqCluster,
    /// A WorkDivider.
    WorkDivider,
}

impl Component {
    /// Value of `app.kubernetes.io/component`.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::SeqCluster => "seqcluster",
            Component::WorkDivider => "workdivider",
        }
    }
}

/// Labels that select the pods of one owner (stable: StatefulSet selectors are immutable).
pub fn selector_labels(component: Component, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "ordo".to_string()),
        ("app.kubernetes.io/instance".to_string(), instance.to_string()),
        ("app.kubernetes.io/component".to_string(), component.as_str().to_string()),
    ])
}

/// Selector labels plus `managed-by` and `part-of`: put on every object.
pub fn object_labels(component: Component, instance: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(component, instance);
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels.insert("app.kubernetes.io/part-of".into(), "ordo".into());
    labels
}
