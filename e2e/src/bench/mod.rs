//! Modules of the `ordo-bench` binary (declared from the binary only).

pub mod baseline;
pub mod divider;
pub mod etcd;
pub mod hist;
pub mod http;
pub mod log;
pub mod ordo;
pub mod ownership;
pub mod peers;
pub mod report;
pub mod runner;
