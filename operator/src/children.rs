//! Applying children only when they could differ from what the operator last applied.
//!
//! A SeqCluster or WorkDivider that is not ready is reconciled every
//! [`crate::context::POLL_WHILE_PROGRESSING`]. Re-sending every child each time (a server-side
//! apply of the Service, ConfigMap, StatefulSet, PodDisruptionBudget and NetworkPolicy) cost the
//! API server about one write a second per unready object, for hours if pods stay pending.
//!
//! **Rule.** A child is re-applied unless both hold: (1) the body the reconcile wants is the body
//! this operator process last applied to it (same hash), and (2) the watch cache holds the child
//! at exactly the `resourceVersion` that apply returned. Any change by anyone since (an edit, a
//! deletion, a status write, a restart of the operator, a cache that lags) breaks (2) or empties
//! the record, and the child is applied as before: skipping is exact, never a guess, and drift
//! is corrected as soon as the watch sees it (the same watch triggers the reconcile).
//! The peer-token Secret is not watched (see [`crate::controller`]) and is always applied.
//!
//! Tests: `unchanged_only_when_the_body_and_the_live_version_both_match` below, and
//! `operator/tests/mock_api.rs::unchanged_children_are_not_re_sent_while_the_watch_cache_holds_what_was_applied`.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ssa::apply;

/// Watch caches of the children the operator manages, filled by the controllers' watches.
#[derive(Clone)]
pub struct Children {
    /// StatefulSets.
    pub statefulsets: Store<StatefulSet>,
    /// ConfigMaps.
    pub config_maps: Store<ConfigMap>,
    /// Services.
    pub services: Store<Service>,
    /// PodDisruptionBudgets.
    pub pdbs: Store<PodDisruptionBudget>,
    /// NetworkPolicies.
    pub network_policies: Store<NetworkPolicy>,
}

/// A child kind with a watch cache in [`Children`].
pub trait Cached: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Sized + 'static {
    /// Its cache.
    fn store(children: &Children) -> &Store<Self>;
}

macro_rules! cached {
    ($kind:ty, $field:ident) => {
        impl Cached for $kind {
            fn store(children: &Children) -> &Store<Self> {
                &children.$field
            }
        }
    };
}
cached!(StatefulSet, statefulsets);
cached!(ConfigMap, config_maps);
cached!(Service, services);
cached!(PodDisruptionBudget, pdbs);
cached!(NetworkPolicy, network_policies);

/// Key of one child: kind, namespace, name.
type ChildKey = (String, String, String);

/// What this operator process last applied to each child: the body's hash and the
/// `resourceVersion` the API server answered with.
#[derive(Default)]
pub struct Applied {
    last: Mutex<HashMap<ChildKey, (u64, String)>>,
}

/// Whether a child needs no apply: same body as last applied, and the live object is still the
/// version that apply produced.
pub fn unchanged(last: Option<&(u64, String)>, hash: u64, live_version: Option<&str>) -> bool {
    matches!((last, live_version), (Some((h, applied)), Some(live)) if *h == hash && applied == live)
}

fn body_hash<K: Serialize>(obj: &K) -> Result<u64, kube::Error> {
    let body = serde_json::to_string(obj).map_err(kube::Error::SerdeError)?;
    let mut h = DefaultHasher::new();
    body.hash(&mut h);
    Ok(h.finish())
}

impl Applied {
    /// Applies `obj` unless [`unchanged`] says the watch cache already holds exactly what this
    /// process applied last time (then returns the cached copy). Without caches (`None`: the
    /// controllers are not running, as in tests of one reconcile) it always applies.
    pub async fn apply<K>(&self, client: &Client, children: Option<&Children>, obj: &K) -> Result<K, kube::Error>
    where
        K: Cached + Clone + Debug + Serialize + DeserializeOwned,
    {
        let key: ChildKey = (K::kind(&()).to_string(), obj.namespace().unwrap_or_default(), obj.name_any());
        let hash = body_hash(obj)?;
        if let Some(children) = children {
            let live = K::store(children).get(&ObjectRef::new(&key.2).within(&key.1));
            let last = self.last.lock().expect("applied lock").get(&key).cloned();
            if let Some(live) = live {
                if unchanged(last.as_ref(), hash, live.resource_version().as_deref()) {
                    tracing::debug!(kind = %key.0, name = %key.2, "unchanged since our last apply; not re-sent");
                    return Ok((*live).clone());
                }
            }
        }
        let applied = apply(client, obj).await?;
        let mut last = self.last.lock().expect("applied lock");
        match applied.resource_version() {
            Some(rv) => last.insert(key, (hash, rv)),
            None => last.remove(&key),
        };
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_only_when_the_body_and_the_live_version_both_match() {
        let last = (7u64, "100".to_string());
        assert!(unchanged(Some(&last), 7, Some("100")));
        assert!(!unchanged(Some(&last), 8, Some("100")), "the desired body changed");
        assert!(!unchanged(Some(&last), 7, Some("101")), "someone changed the live object");
        assert!(!unchanged(Some(&last), 7, None), "not in the cache (deleted, or not seen yet)");
        assert!(!unchanged(None, 7, Some("100")), "never applied by this process");
    }
}
