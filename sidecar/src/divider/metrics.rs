//! The divider's Prometheus metrics (registered in the sidecar's registry by
//! [`crate::metrics::Metrics`]): keys owned here, keys waiting to be claimed here, handoffs and
//! their durations, lease renewals and their latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a handoff event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandoffLabels {
    /// `start`, or `stop_<reason>`.
    pub event: String,
}

/// Labels naming a divider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DividerLabels {
    /// Divider name.
    pub divider: String,
}

/// Labels of a renewal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenewalLabels {
    /// `ok`, `lost` (the record moved: expired or taken over) or `failed`.
    pub result: String,
}

/// The divider's metrics.
#[derive(Clone)]
pub struct DividerMetrics {
    /// Keys held by the member sessions on this sidecar (owned or stopping).
    pub keys_owned: Family<DividerLabels, Gauge>,
    /// Keys assigned to members on this sidecar and not started yet (the owner has not
    /// released them, or the claim is under way).
    pub keys_waiting: Family<DividerLabels, Gauge>,
    /// Starts and stops by reason.
    pub handoffs: Family<HandoffLabels, Counter>,
    /// From a Stop sent to the release written (confirm or timeout included).
    pub handoff_seconds: Histogram,
    /// Lease renewals by result.
    pub renewals: Family<RenewalLabels, Counter>,
    /// Renewal latency (one compare-and-set of the member record).
    pub renewal_seconds: Histogram,
    /// Handback markers this sidecar last read (markers whose sessions are all dead are
    /// collected).
    pub handback_markers: Family<DividerLabels, Gauge>,
    /// Live member sessions of sidecars that may use the per-key owner layout, as the last
    /// refresh read them: while above 0, this sidecar serves no keys of the divider.
    pub per_key_layout_members: Family<DividerLabels, Gauge>,
}

impl DividerMetrics {
    /// Creates the metrics and registers them (prefix `divider_`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            keys_owned: Family::default(),
            keys_waiting: Family::default(),
            handoffs: Family::default(),
            handoff_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            renewals: Family::default(),
            renewal_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            handback_markers: Family::default(),
            per_key_layout_members: Family::default(),
        };
        registry.register("divider_keys_owned", "Keys held by member sessions on this sidecar", m.keys_owned.clone());
        registry.register(
            "divider_keys_waiting",
            "Keys assigned to members on this sidecar, not started yet",
            m.keys_waiting.clone(),
        );
        registry.register("divider_handoffs", "Starts and stops by reason", m.handoffs.clone());
        registry.register(
            "divider_handoff_seconds",
            "From a Stop sent to the key's release written",
            m.handoff_seconds.clone(),
        );
        registry.register("divider_lease_renewals", "Member lease renewals by result", m.renewals.clone());
        registry.register("divider_lease_renewal_seconds", "Lease renewal latency", m.renewal_seconds.clone());
        registry.register(
            "divider_handback_markers",
            "Handback markers read by the last refresh (collected once their sessions are dead)",
            m.handback_markers.clone(),
        );
        registry.register(
            "divider_per_key_layout_members",
            "Live members of sidecars of the per-key owner layout (while above 0, no keys are served here)",
            m.per_key_layout_members.clone(),
        );
        m
    }

    /// Sets the key gauges of `divider`.
    pub fn keys(&self, divider: &str, owned: usize, waiting: usize) {
        let l = DividerLabels { divider: divider.to_string() };
        self.keys_owned.get_or_create(&l).set(owned as i64);
        self.keys_waiting.get_or_create(&l).set(waiting as i64);
    }

    /// Counts a handoff event.
    pub fn handoff(&self, event: &str) {
        self.handoffs.get_or_create(&HandoffLabels { event: event.to_string() }).inc();
    }

    /// Counts a renewal.
    pub fn renewal(&self, result: &str, took: std::time::Duration) {
        self.renewals.get_or_create(&RenewalLabels { result: result.to_string() }).inc();
        self.renewal_seconds.observe(took.as_secs_f64());
    }
}
