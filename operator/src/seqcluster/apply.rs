//! The SeqCluster reconcile: validate -> plan + build -> apply -> status.

use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use rand::Rng;

use super::build::{build, desired_set, member_host, peers_service_name, secret_name};
use super::scaling::{member_id, plan, Reports, Step};
use super::status;
use super::validate::validate;
use crate::context::{Context, ReconcileError, POLL_WHILE_PROGRESSING, RESYNC};
use crate::crd::{MembershipPhase, SeqCluster};
use crate::pod::TOKEN_KEY;
use crate::ssa::{apply, apply_status, delete_if_exists};

/// Kind label for metrics and logs.
pub const KIND: &str = "SeqCluster";

/// A fresh peer token: 32 random bytes, hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The existing peer token, if the Secret exists and holds one. The token is created once and
/// kept: every member and client must keep agreeing on it.
async fn existing_token(ctx: &Context, namespace: &str, name: &str) -> Result<Option<String>, ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets.get_opt(&secret_name(name)).await.map_err(ReconcileError::api("read peer-token Secret"))?;
    Ok(secret
        .and_then(|s| s.data)
        .and_then(|d| d.get(TOKEN_KEY).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .filter(|t| !t.is_empty()))
}

/// Reads `/status` of every pod that may run a member.
async fn probe_members(ctx: &Context, namespace: &str, name: &str, width: i32) -> Reports {
    let hosts: Vec<(String, String)> = (0..width)
        .map(|i| {
            let id = member_id(name, i);
            (member_host(name, namespace, &id), id)
        })
        .collect();
    let answers = join_all(hosts.iter().map(|(host, _)| ctx.probe.status(host))).await;
    hosts.into_iter().zip(answers).filter_map(|((_, id), report)| report.map(|r| (id, r))).collect()
}

/// Reconciles one SeqCluster.
pub async fn reconcile(sc: Arc<SeqCluster>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let _timer = ctx.metrics.reconcile_started(KIND);
    if sc.meta().deletion_timestamp.is_some() {
        // Children carry owner references: garbage collection removes them.
        return Ok(Action::await_change());
    }
    // Plan from the API server's copy, not the watch cache: the cache may not have our last
    // status write yet, and planning from a stale membership could write an older configuration.
    let api: Api<SeqCluster> = Api::namespaced(ctx.client.clone(), &sc.namespace().unwrap_or_default());
    let Some(sc) = api.get_opt(&sc.name_any()).await.map_err(ReconcileError::api("read SeqCluster"))? else {
        return Ok(Action::await_change());
    };
    if sc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let generation = sc.meta().generation;
    let existing = sc.status.as_ref();
    let reference = sc.object_ref(&());
    let now = Timestamp::now();

    let valid = match validate(&sc) {
        Ok(v) => v,
        Err(err) => {
            ctx.metrics.failure(KIND, "invalid_spec");
            let degraded_before = existing
                .map(|s| crate::conditions::is_true(&s.conditions, crate::conditions::DEGRADED) == Some(true))
                .unwrap_or(false);
            let next = status::invalid(existing, generation, &err, now);
            if existing.map(|s| &s.conditions) != Some(&next.conditions)
                || existing.and_then(|s| s.observed_generation) != generation
            {
                apply_status(&ctx.client, &sc, &next).await.map_err(ReconcileError::api("write status"))?;
            }
            if !degraded_before || existing.and_then(|s| s.observed_generation) != generation {
                ctx.event(&reference, true, "InvalidSpec", "Validate", err.to_string()).await;
            }
            // Nothing to retry until the spec changes.
            return Ok(Action::await_change());
        }
    };

    let applied = existing.and_then(|s| s.membership.as_ref());
    let desired = desired_set(&valid);
    let width = [
        Some(desired.members),
        applied.map(|m| m.current.members),
        applied.and_then(|m| m.previous.as_ref().map(|p| p.members)),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    let reports = if applied.is_some() {
        probe_members(&ctx, &valid.namespace, &valid.name, width).await
    } else {
        Reports::new()
    };
    let plan = plan(&valid.name, &desired, applied, &reports);

    let token = match existing_token(&ctx, &valid.namespace, &valid.name).await? {
        Some(t) => t,
        None => new_token(),
    };
    let objects = build(&valid, &plan.membership, plan.statefulset_replicas, &token);

    // The status is the record of the configuration: it is written before the ConfigMap, so an
    // operator that restarts in between re-applies the same epoch rather than planning anew
    // (two different configurations must never share an epoch).
    let next = status::observed(&valid.name, existing, generation, &plan, &reports, now);
    if existing != Some(&next) {
        apply_status(&ctx.client, &sc, &next).await.map_err(ReconcileError::api("write status"))?;
    }

    ctx.apply_child(&objects.service).await.map_err(ReconcileError::api("apply peer Service"))?;
    ctx.apply_child(&objects.config_map).await.map_err(ReconcileError::api("apply members ConfigMap"))?;
    apply(&ctx.client, &objects.secret).await.map_err(ReconcileError::api("apply peer-token Secret"))?;
    ctx.apply_child(&objects.statefulset).await.map_err(ReconcileError::api("apply StatefulSet"))?;
    match &objects.pdb {
        Some(pdb) => ctx.apply_child(pdb).await.map(|_| ()),
        None => delete_if_exists::<PodDisruptionBudget>(&ctx.client, &valid.namespace, &valid.name).await,
    }
    .map_err(ReconcileError::api("apply PodDisruptionBudget"))?;
    match &objects.network_policy {
        Some(np) => ctx.apply_child(np).await.map(|_| ()),
        None => {
            delete_if_exists::<NetworkPolicy>(&ctx.client, &valid.namespace, &peers_service_name(&valid.name)).await
        }
    }
    .map_err(ReconcileError::api("apply NetworkPolicy"))?;

    if let Step::Advanced(reason, msg) = &plan.step {
        ctx.metrics.membership_changes.get_or_create(&crate::metrics::Metrics::kind(KIND)).inc();
        ctx.event(&reference, false, reason, "UpdateMembers", msg.clone()).await;
    }
    tracing::info!(seqcluster = %sc.name_any(), epoch = plan.membership.epoch, step = ?plan.step, "reconciled");

    let settled = plan.step == Step::Steady
        && plan.membership.phase == MembershipPhase::Stable
        && next.members.iter().all(|m| m.ready);
    Ok(Action::requeue(if settled { RESYNC } else { POLL_WHILE_PROGRESSING }))
}
