//! Wiring: watches -> reconcile -> error policy, for both kinds.

use std::sync::Arc;

use futures::{Future, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{predicates, watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use crate::children::Children;
use crate::context::{Context, ReconcileError};
use crate::crd::{SeqCluster, WorkDivider};
use crate::labels::FIELD_MANAGER;
use crate::{seqcluster, workdivider};

fn owned() -> watcher::Config {
    watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"))
}

/// A watch of the children of kind `K` the operator manages, feeding a cache; the stream
/// triggers their owners' reconciles.
fn cached_children<K>(
    client: &Client,
) -> (reflector::Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = watcher(Api::<K>::all(client.clone()), owned()).default_backoff().reflect(writer).touched_objects();
    (reader, stream)
}

fn error_policy<K>(kind: &'static str) -> impl Fn(Arc<K>, &ReconcileError, Arc<Context>) -> Action {
    move |_obj, err, ctx| {
        let class = err.class();
        ctx.metrics.failure(kind, class.as_str());
        tracing::warn!(kind, error = %err, class = class.as_str(), "reconcile failed");
        class.requeue()
    }
}

/// Runs both controllers until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client: Client = ctx.client.clone();
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));

    // Status writes bump resourceVersion but not generation: filter them out of the main
    // stream so a status write never triggers another reconcile.
    let (sc_reader, sc_writer) = reflector::store::<SeqCluster>();
    let sc_stream = watcher(Api::<SeqCluster>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(sc_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    // Secrets are not watched (that would need list/watch on every Secret in the cluster): the
    // peer token is re-applied on every reconcile and the periodic resync restores a deleted one.
    // The SeqCluster controller's watches of children also fill the caches that let both
    // controllers skip re-applying unchanged children (`crate::children`).
    let (sts_store, sts_stream) = cached_children::<StatefulSet>(&client);
    let (cm_store, cm_stream) = cached_children::<ConfigMap>(&client);
    let (svc_store, svc_stream) = cached_children::<Service>(&client);
    let (pdb_store, pdb_stream) = cached_children::<PodDisruptionBudget>(&client);
    let (np_store, np_stream) = cached_children::<NetworkPolicy>(&client);
    let _ = ctx.children.set(Children {
        statefulsets: sts_store,
        config_maps: cm_store,
        services: svc_store,
        pdbs: pdb_store,
        network_policies: np_store,
    });
    let seqclusters = Controller::for_stream(sc_stream, sc_reader)
        .owns_stream(sts_stream)
        .owns_stream(cm_stream)
        .owns_stream(svc_stream)
        .owns_stream(pdb_stream)
        .owns_stream(np_stream)
        .graceful_shutdown_on(shutdown.clone())
        .run(seqcluster::apply::reconcile, error_policy::<SeqCluster>(seqcluster::apply::KIND), ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "seqcluster controller event");
            }
        });

    let (wd_reader, wd_writer) = reflector::store::<WorkDivider>();
    let wd_stream = watcher(Api::<WorkDivider>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(wd_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let wd_store = wd_reader.clone();
    // A SeqCluster's member configuration changes (its status) must reach the WorkDividers that
    // copy it, so this watch is not filtered by generation.
    let workdividers = Controller::for_stream(wd_stream, wd_reader)
        .owns(Api::<StatefulSet>::all(client.clone()), owned())
        .owns(Api::<ConfigMap>::all(client.clone()), owned())
        .owns(Api::<Service>::all(client.clone()), owned())
        .watches(Api::<SeqCluster>::all(client.clone()), watcher::Config::default(), move |sc| {
            referencing(&wd_store.state(), &sc)
        })
        .graceful_shutdown_on(shutdown)
        .run(workdivider::apply::reconcile, error_policy::<WorkDivider>(workdivider::apply::KIND), ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "workdivider controller event");
            }
        });

    futures::join!(seqclusters, workdividers);
}

/// WorkDividers that reference `sc`.
pub fn referencing(dividers: &[Arc<WorkDivider>], sc: &SeqCluster) -> Vec<ObjectRef<WorkDivider>> {
    dividers
        .iter()
        .filter(|wd| wd.namespace() == sc.namespace() && wd.spec.seq_cluster_ref.name == sc.name_any())
        .map(|wd| ObjectRef::from_obj(wd.as_ref()))
        .collect()
}
