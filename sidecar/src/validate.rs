//! Name validation: [`ordo_contract::validate`], re-exported so `crate::validate` paths keep
//! working.

pub use ordo_contract::validate::*;
