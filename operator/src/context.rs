//! What every reconcile shares, the error classes and the requeue policy per class.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

use crate::children::{Applied, Cached, Children};
use crate::metrics::Metrics;
use crate::probe::MemberProbe;

/// Shared state of the controllers.
#[derive(Clone)]
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events about our objects.
    pub recorder: Recorder,
    /// Reads members' `/status`.
    pub probe: Arc<dyn MemberProbe>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Watch caches of the children, set once the controllers run.
    pub children: Arc<OnceLock<Children>>,
    /// What this process last applied to each child.
    pub applied: Arc<Applied>,
}

impl Context {
    /// A context with the default reporter name.
    pub fn new(client: Client, probe: Arc<dyn MemberProbe>, metrics: Arc<Metrics>) -> Self {
        let reporter =
            Reporter { controller: crate::labels::FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            probe,
            metrics,
            children: Arc::new(OnceLock::new()),
            applied: Arc::new(Applied::default()),
        }
    }

    /// Applies a child unless it is unchanged since this process applied it ([`crate::children`]).
    pub async fn apply_child<K>(&self, obj: &K) -> Result<K, kube::Error>
    where
        K: Cached + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
    {
        self.applied.apply(&self.client, self.children.get(), obj).await
    }

    /// Publishes an Event; a failure to publish is logged, never fails the reconcile.
    pub async fn event(&self, regarding: &ObjectReference, warning: bool, reason: &str, action: &str, note: String) {
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, regarding).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// Why a reconcile failed. Invalid specs are not errors: they become a `Degraded` condition.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call failed.
    #[error("{step}: {source}")]
    Api {
        /// What the reconcile was doing.
        step: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// Wraps an API error with the step that failed.
    pub fn api(step: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let step = step.into();
        move |source| ReconcileError::Api { step, source }
    }

    /// Error class, for metrics and the requeue policy.
    pub fn class(&self) -> ErrorClass {
        match self {
            ReconcileError::Api { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => ErrorClass::Conflict,
                kube::Error::Api(s) if s.code == 429 || s.code >= 500 => ErrorClass::Transient,
                kube::Error::Api(s) if s.code == 401 || s.code == 403 => ErrorClass::Forbidden,
                kube::Error::Api(_) => ErrorClass::Rejected,
                _ => ErrorClass::Transient,
            },
        }
    }
}

/// Classes of reconcile errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Someone else changed the object: retry soon.
    Conflict,
    /// Network, throttling, 5xx: short backoff.
    Transient,
    /// RBAC is missing something: retrying fast will not help.
    Forbidden,
    /// The API server rejected what we sent (a bug or an admission policy): retry slowly.
    Rejected,
}

impl ErrorClass {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Conflict => "conflict",
            ErrorClass::Transient => "transient",
            ErrorClass::Forbidden => "forbidden",
            ErrorClass::Rejected => "rejected",
        }
    }

    /// Requeue delay.
    pub fn requeue(self) -> Action {
        Action::requeue(match self {
            ErrorClass::Conflict => Duration::from_secs(1),
            ErrorClass::Transient => Duration::from_secs(5),
            ErrorClass::Forbidden => Duration::from_secs(120),
            ErrorClass::Rejected => Duration::from_secs(300),
        })
    }
}

/// Requeue while a change is in flight (member states are polled, not watched).
pub const POLL_WHILE_PROGRESSING: Duration = Duration::from_secs(5);
/// Periodic resync of a settled object (member health is not a watch event).
pub const RESYNC: Duration = Duration::from_secs(60);
/// Retry for a WorkDivider whose SeqCluster is missing (its creation also triggers a reconcile).
pub const WAIT_FOR_DEPENDENCY: Duration = Duration::from_secs(30);
