//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of per-kind metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `SeqCluster` or `WorkDivider`.
    pub kind: String,
}

/// Labels of error metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `SeqCluster` or `WorkDivider`.
    pub kind: String,
    /// Error class (conflict, transient, forbidden, rejected) or `invalid_spec`.
    pub class: String,
}

/// The operator's metrics and their registry.
pub struct Metrics {
    /// Registry rendered at `/metrics`.
    pub registry: Registry,
    /// Reconciles started.
    pub reconciles: Family<KindLabels, Counter>,
    /// Reconcile failures and invalid specs.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration.
    pub duration: Family<KindLabels, Histogram>,
    /// Member configurations written (epoch changes).
    pub membership_changes: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ordo_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let membership_changes = Family::<KindLabels, Counter>::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register("reconcile_failures", "Failed reconciles and invalid specs by class", failures.clone());
        registry.register("reconcile_duration_seconds", "Reconcile duration", duration.clone());
        registry.register("membership_changes", "SeqCluster member configurations written", membership_changes.clone());
        Self { registry, reconciles, failures, duration, membership_changes }
    }
}

impl Metrics {
    /// Counts a failure of `kind` with `class`.
    pub fn failure(&self, kind: &str, class: &str) {
        self.failures.get_or_create(&ErrorLabels { kind: kind.into(), class: class.into() }).inc();
    }

    /// Counts a reconcile of `kind` and times it until the returned guard drops.
    pub fn reconcile_started(&self, kind: &str) -> ReconcileTimer {
        let labels = Self::kind(kind);
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer { histogram: self.duration.get_or_create(&labels).clone(), started: std::time::Instant::now() }
    }

    /// Label set of `kind`.
    pub fn kind(kind: &str) -> KindLabels {
        KindLabels { kind: kind.into() }
    }

    /// Text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer {
    histogram: Histogram,
    started: std::time::Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}
