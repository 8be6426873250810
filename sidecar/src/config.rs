//! The sidecar's flags, environment and default addresses: [`ordo_contract::config`], re-exported
//! so `crate::config` paths keep working.

pub use ordo_contract::config::*;
