//! SeqCluster reconcile: [`validate`] -> [`build`] (with [`scaling`] deciding the member
//! configuration) -> [`apply`] -> [`status`].

pub mod apply;
pub mod build;
pub mod scaling;
pub mod status;
pub mod validate;
