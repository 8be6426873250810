//! WorkDivider reconcile: [`validate`] -> [`build`] -> [`apply`] -> [`status`]. Its pods' sidecars
//! are clients of the referenced SeqCluster, whose member list is copied into this ConfigMap.

pub mod apply;
pub mod build;
pub mod status;
pub mod validate;
