//! `ordoctl`'s library: [`dev`], the local cluster of `ordo-sidecar` processes that
//! `ordoctl dev` runs and the multi-process test suites drive. The `ordoctl` binary is
//! `src/main.rs`; apps link `ordo-client`, which does not depend on this crate or the sidecar.
#![forbid(unsafe_code)]

pub mod dev;
