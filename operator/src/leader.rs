//! Leader election on a `coordination.k8s.io` Lease, so only one replica reconciles.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Namespace of the lease (the operator's).
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
}

/// Outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease.
    Held,
    /// Someone else holds a valid lease.
    HeldByOther,
}

/// Decides whether `lease` may be taken by `identity` at `now`.
pub fn may_take(lease: &Lease, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    if spec.holder_identity.as_deref().is_none_or(|h| h.is_empty() || h == identity) {
        return true;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
    renewed.is_none_or(|r| r + duration < now)
}

/// One try to acquire or renew. Uses resourceVersion preconditions, so two replicas can never
/// both succeed in taking the same expired lease.
pub async fn try_acquire(client: &Client, cfg: &LeaseConfig) -> Result<Attempt, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let now = Timestamp::now();
    let existing = api.get_opt(&cfg.name).await?;
    let mine = |prev: Option<&LeaseSpec>, rv: Option<String>| {
        let same_holder = prev.and_then(|p| p.holder_identity.as_deref()) == Some(cfg.identity.as_str());
        Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                resource_version: rv,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(cfg.duration.as_secs() as i32),
                acquire_time: if same_holder {
                    prev.and_then(|p| p.acquire_time.clone())
                } else {
                    Some(MicroTime(now))
                },
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(
                    prev.and_then(|p| p.lease_transitions).unwrap_or(0) + i32::from(!same_holder && prev.is_some()),
                ),
                ..Default::default()
            }),
        }
    };
    match existing {
        None => match api.create(&PostParams::default(), &mine(None, None)).await {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther),
            Err(e) => Err(e),
        },
        Some(lease) if may_take(&lease, &cfg.identity, now) => {
            let next = mine(lease.spec.as_ref(), lease.metadata.resource_version.clone());
            match api.replace(&cfg.name, &PostParams::default(), &next).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther),
                Err(e) => Err(e),
            }
        }
        Some(_) => Ok(Attempt::HeldByOther),
    }
}

/// Waits until this replica holds the lease.
pub async fn acquire(client: &Client, cfg: &LeaseConfig) {
    loop {
        match try_acquire(client, cfg).await {
            Ok(Attempt::Held) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                return;
            }
            Ok(Attempt::HeldByOther) => tracing::debug!(lease = %cfg.name, "another replica leads"),
            Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renews the lease until renewal fails for longer than the lease lasts; returns then (the
/// caller stops reconciling, since another replica may now lead).
pub async fn hold(client: &Client, cfg: &LeaseConfig) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        match try_acquire(client, cfg).await {
            Ok(Attempt::Held) => last_ok = tokio::time::Instant::now(),
            Ok(Attempt::HeldByOther) => {
                tracing::error!(lease = %cfg.name, "lost the lease to another replica");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                if last_ok.elapsed() >= cfg.duration {
                    tracing::error!(lease = %cfg.name, "could not renew the lease in time");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: &str, secs: i32) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                lease_duration_seconds: Some(secs),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_respected() {
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        assert!(!may_take(&lease("b", "2026-01-01T00:00:00Z", 15), "a", now));
        assert!(may_take(&lease("b", "2026-01-01T00:00:00Z", 5), "a", now), "expired");
        assert!(may_take(&lease("a", "2026-01-01T00:00:00Z", 15), "a", now), "renewal");
        assert!(may_take(&lease("", "2026-01-01T00:00:00Z", 15), "a", now), "released");
    }
}
