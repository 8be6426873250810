//! The WorkDivider reconcile: validate -> look up the SeqCluster -> build -> apply -> status.

use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use ordo_contract::status::DividerReport;

use super::build::build;
use super::status::{self, SeqClusterProblem};
use super::validate::validate;
use crate::context::{Context, ReconcileError, POLL_WHILE_PROGRESSING, RESYNC, WAIT_FOR_DEPENDENCY};
use crate::crd::{SeqCluster, WorkDivider};
use crate::ssa::apply_status;

/// Kind label for metrics and logs.
pub const KIND: &str = "WorkDivider";

/// Reads `/divider` (the pod's configured divider) of every pod of the WorkDivider.
async fn probe_pods(ctx: &Context, namespace: &str, name: &str, replicas: i32) -> Vec<DividerReport> {
    let hosts: Vec<String> = (0..replicas).map(|i| pod_host(name, namespace, i)).collect();
    join_all(hosts.iter().map(|host| ctx.probe.divider(host, ""))).await.into_iter().flatten().collect()
}

/// Stable DNS name of WorkDivider pod `ordinal` (its StatefulSet's headless Service).
pub fn pod_host(name: &str, namespace: &str, ordinal: i32) -> String {
    format!("{name}-{ordinal}.{name}.{namespace}.svc")
}

/// Reconciles one WorkDivider.
pub async fn reconcile(wd: Arc<WorkDivider>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let _timer = ctx.metrics.reconcile_started(KIND);
    if wd.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let generation = wd.meta().generation;
    let existing = wd.status.as_ref();
    let reference = wd.object_ref(&());
    let now = Timestamp::now();
    let same_generation = existing.and_then(|s| s.observed_generation) == generation;

    let valid = match validate(&wd) {
        Ok(v) => v,
        Err(err) => {
            ctx.metrics.failure(KIND, "invalid_spec");
            let next = status::invalid(existing, generation, &err, now);
            if existing != Some(&next) {
                apply_status(&ctx.client, wd.as_ref(), &next).await.map_err(ReconcileError::api("write status"))?;
            }
            if !same_generation || existing.map(|s| &s.conditions) != Some(&next.conditions) {
                ctx.event(&reference, true, "InvalidSpec", "Validate", err.to_string()).await;
            }
            return Ok(Action::await_change());
        }
    };

    let seqclusters: Api<SeqCluster> = Api::namespaced(ctx.client.clone(), &valid.namespace);
    let sc = seqclusters.get_opt(&valid.seq_cluster).await.map_err(ReconcileError::api("read SeqCluster"))?;
    let membership = match sc.as_ref().and_then(|s| s.status.as_ref()).and_then(|s| s.membership.clone()) {
        Some(m) => m,
        None => {
            let problem = match sc {
                None => SeqClusterProblem::NotFound(valid.seq_cluster.clone()),
                Some(_) => SeqClusterProblem::NotReady(valid.seq_cluster.clone()),
            };
            let next = status::waiting_for_seqcluster(existing, generation, &problem, now);
            if existing != Some(&next) {
                apply_status(&ctx.client, wd.as_ref(), &next).await.map_err(ReconcileError::api("write status"))?;
                let c = &next.conditions.iter().find(|c| c.type_ == crate::conditions::PROGRESSING);
                if let Some(c) = c {
                    ctx.event(&reference, true, &c.reason, "ResolveSeqCluster", c.message.clone()).await;
                }
            }
            return Ok(Action::requeue(WAIT_FOR_DEPENDENCY));
        }
    };

    // The SeqCluster's log stream settings reach the divider's sidecars too (they serve the Log
    // API as clients of the cluster).
    let logs = sc.as_ref().map_or_else(Default::default, |sc| {
        crate::seqcluster::validate::log_args(&sc.spec.logs, u32::try_from(sc.spec.replicas).unwrap_or(1))
    });
    let objects = build(&valid, &membership, &logs);
    ctx.apply_child(&objects.service).await.map_err(ReconcileError::api("apply Service"))?;
    ctx.apply_child(&objects.config_map).await.map_err(ReconcileError::api("apply ConfigMap"))?;
    let sts = ctx.apply_child(&objects.statefulset).await.map_err(ReconcileError::api("apply StatefulSet"))?;

    let reports = probe_pods(&ctx, &valid.namespace, &valid.name, valid.replicas).await;
    let counts = ordo_contract::status::DividerReport::merge(&reports);
    let next =
        status::observed(existing, generation, valid.replicas, membership.epoch, Some(&sts), counts.as_ref(), now);
    if existing != Some(&next) {
        apply_status(&ctx.client, wd.as_ref(), &next).await.map_err(ReconcileError::api("write status"))?;
    }
    if existing.and_then(|s| s.seq_cluster_epoch) != Some(membership.epoch) {
        ctx.event(
            &reference,
            false,
            "MembersCopied",
            "UpdateMembers",
            format!("SeqCluster {} member list at epoch {}", valid.seq_cluster, membership.epoch),
        )
        .await;
    }
    tracing::info!(workdivider = %wd.name_any(), ready = next.ready_replicas, "reconciled");
    // Counts refresh every RESYNC while settled, every few seconds while pods start or while
    // the pods report keys waiting for owners that exist (a handoff under way). Without reports,
    // or without a member that takes keys, waiting faster would change nothing.
    let handoff = counts.as_ref().is_some_and(|c| c.unowned > 0 && c.members.iter().any(|m| m.affinity > 0));
    let settled = next.ready_replicas >= valid.replicas && !handoff;
    Ok(Action::requeue(if settled { RESYNC } else { POLL_WHILE_PROGRESSING }))
}
