//! `ordo-operator`: reconciles `SeqCluster` and `WorkDivider` objects into StatefulSets running
//! `ordo-sidecar`.
//!
//! Each kind is a pipeline `validate -> build -> apply -> status` under its own module; the
//! builders are pure, so `render` and the tests use exactly what the controllers apply.
#![forbid(unsafe_code)]

pub mod admin;
pub mod children;
pub mod conditions;
pub mod context;
pub mod controller;
pub mod crd;
pub mod crd_wait;
pub mod crdgen;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod pod;
pub mod probe;
pub mod rbac;
pub mod render;
pub mod seqcluster;
pub mod spec_error;
pub mod ssa;
pub mod workdivider;
