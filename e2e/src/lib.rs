//! Test harness of the local multi-process suite: a [`TestCluster`] of real `ordo-sidecar`
//! processes on 127.0.0.1 (built by cargo for the test run), a TCP [`proxy::FaultProxy`] that
//! cuts or delays traffic between members, and checkers for the sequencer's guarantees.
#![forbid(unsafe_code)]

pub mod checker;
pub mod cluster;
pub mod proxy;
pub mod raw;

pub use cluster::TestCluster;
