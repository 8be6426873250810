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

use crate::context::{Context, ReconcileError};
use crate::crd::{SeqCluster, WorkDivider};
use crate::labels::FIELD_MANAGER;
use crate::{seqcluster, workdivider};

fn owned() -> watcher::Config {
    watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"))
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
    let seqclusters = Controller::for_stream(sc_stream, sc_reader)
        .owns(Api::<StatefulSet>::all(client.clone()), owned())
        .owns(Api::<ConfigMap>::all(client.clone()), owned())
        .owns(Api::<Service>::all(client.clone()), owned())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), owned())
        .owns(Api::<NetworkPolicy>::all(client.clone()), owned())
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
