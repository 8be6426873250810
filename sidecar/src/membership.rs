//! The members file: [`ordo_contract::membership`], re-exported so `crate::membership` paths keep
//! working. The joint-consensus steps it describes are driven by `quorum::migration`.

pub use ordo_contract::membership::*;
