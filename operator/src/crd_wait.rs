//! Startup: wait until Ordo's CRDs are installed and established, saying how to install them.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};

/// Names of the CRDs the controllers watch.
pub const CRD_NAMES: [&str; 2] = ["seqclusters.ordo.dev", "workdividers.ordo.dev"];

/// What the API server says about one CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrdState {
    /// Installed and `Established`.
    Established,
    /// Installed, not established yet.
    Pending,
    /// Not installed.
    Missing,
    /// Could not be read (RBAC, network): the message.
    Unreadable(String),
}

/// How to install the CRDs, for log lines and errors.
pub const INSTALL_HINT: &str =
    "install the CRDs with `kubectl apply -f crds/` (or `helm install ordo charts/ordo`, which ships them)";

/// State of one CRD.
pub async fn crd_state(client: &Client, name: &str) -> CrdState {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api.get_opt(name).await {
        Ok(Some(crd)) => {
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if established {
                CrdState::Established
            } else {
                CrdState::Pending
            }
        }
        Ok(None) => CrdState::Missing,
        Err(e) => CrdState::Unreadable(e.to_string()),
    }
}

/// Polls until every CRD is established, logging what is missing and how to install it.
pub async fn wait_established(client: &Client, poll: Duration) {
    for name in CRD_NAMES {
        loop {
            match crd_state(client, name).await {
                CrdState::Established => break,
                CrdState::Pending => tracing::info!(crd = name, "CRD not established yet"),
                CrdState::Missing => tracing::warn!(crd = name, "CRD is not installed; {INSTALL_HINT}"),
                CrdState::Unreadable(e) => tracing::warn!(crd = name, error = %e, "cannot read CRD"),
            }
            tokio::time::sleep(poll).await;
        }
    }
    tracing::info!("CRDs established");
}
