//! Prometheus metrics of the sidecar (served on the admin port at `/metrics`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of an app request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// gRPC method.
    pub method: String,
    /// gRPC status code name.
    pub code: String,
}

/// Labels with just a method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// gRPC method.
    pub method: String,
}

/// Labels of a quorum round.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoundLabels {
    /// `ok` or `failed`.
    pub result: String,
}

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    /// App requests by method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// App request latency by method.
    pub request_seconds: Family<MethodLabels, Histogram>,
    /// Quorum rounds by result.
    pub rounds: Family<RoundLabels, Counter>,
    /// Quorum round latency.
    pub round_seconds: Histogram,
    /// Changes folded into each round.
    pub round_batch: Histogram,
    /// Rounds pre-empted by another proposer's ballot.
    pub conflicts: Counter,
    /// Batches of changes forwarded to a register's home (or the proposer that beat us).
    pub forwards: Counter,
    /// Sequence buffer refills.
    pub refills: Counter,
    /// Sequence allocations whose range came back below IDs this sidecar had already returned
    /// (overtaken by a later one): their requests were allocated again.
    pub allocations_overtaken: Counter,
    /// IDs handed out to apps.
    pub ids_issued: Counter,
    /// Peers that answered the last probe.
    pub peers_reachable: Gauge,
    /// 1 when this member votes.
    pub caught_up: Gauge,
    /// 1 when ready.
    pub ready: Gauge,
    /// Configuration epoch.
    pub epoch: Gauge,
    /// The work divider's metrics.
    pub divider: crate::divider::metrics::DividerMetrics,
    /// The log streams' metrics.
    pub log: crate::log::metrics::LogMetrics,
    /// The quorum store's writes (this member's acceptor).
    pub store: crate::quorum::store::StoreMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `ordo` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ordo");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds =
            Family::<MethodLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let rounds = Family::<RoundLabels, Counter>::default();
        let round_seconds = latency_histogram();
        let round_batch = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        let conflicts = Counter::default();
        let forwards = Counter::default();
        let refills = Counter::default();
        let allocations_overtaken = Counter::default();
        let ids_issued = Counter::default();
        let peers_reachable = Gauge::default();
        let caught_up = Gauge::default();
        let ready = Gauge::default();
        let epoch = Gauge::default();
        registry.register("app_requests", "App API requests by method and status", requests.clone());
        registry.register("app_request_seconds", "App API request latency", request_seconds.clone());
        registry.register("quorum_rounds", "Quorum rounds by result", rounds.clone());
        registry.register("quorum_round_seconds", "Quorum round latency", round_seconds.clone());
        registry.register("quorum_round_batch", "Changes folded into one quorum round", round_batch.clone());
        registry.register("quorum_conflicts", "Rounds pre-empted by a higher ballot", conflicts.clone());
        registry.register(
            "quorum_forwards",
            "Batches of changes forwarded to a contended register's home or to the proposer that won",
            forwards.clone(),
        );
        registry.register("sequence_buffer_refills", "Sequence buffer refills", refills.clone());
        registry.register(
            "sequence_allocations_overtaken",
            "Sequence allocations that came back below IDs already returned here (allocated again)",
            allocations_overtaken.clone(),
        );
        registry.register("sequence_ids_issued", "IDs handed out to apps", ids_issued.clone());
        registry.register(
            "peers_reachable",
            "Members that answered the last probe (self included)",
            peers_reachable.clone(),
        );
        registry.register("caught_up", "1 when this member counts in quorums", caught_up.clone());
        registry.register("ready", "1 when ready (caught up, quorum reachable)", ready.clone());
        registry.register("config_epoch", "Configuration epoch", epoch.clone());
        let divider = crate::divider::metrics::DividerMetrics::register(&mut registry);
        let log = crate::log::metrics::LogMetrics::register(&mut registry);
        let store = crate::quorum::store::StoreMetrics::register(&mut registry);
        Self {
            registry,
            requests,
            request_seconds,
            rounds,
            round_seconds,
            round_batch,
            conflicts,
            forwards,
            refills,
            allocations_overtaken,
            ids_issued,
            peers_reachable,
            caught_up,
            ready,
            epoch,
            divider,
            log,
            store,
        }
    }

    /// Records one quorum round.
    pub fn observe_round(&self, took: Duration, ok: bool, batch: usize) {
        let result = if ok { "ok" } else { "failed" };
        self.rounds.get_or_create(&RoundLabels { result: result.into() }).inc();
        self.round_seconds.observe(took.as_secs_f64());
        self.round_batch.observe(batch as f64);
    }

    /// Records one app request.
    pub fn observe_request(&self, method: &str, code: tonic::Code, took: Duration) {
        self.requests.get_or_create(&RequestLabels { method: method.into(), code: format!("{code:?}") }).inc();
        self.request_seconds.get_or_create(&MethodLabels { method: method.into() }).observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String cannot fail");
        if let Some(process) = process_metrics() {
            // Before the terminating `# EOF` line of the OpenMetrics text.
            let at = out.rfind("# EOF").unwrap_or(out.len());
            out.insert_str(at, &process);
        }
        out
    }
}

/// The standard `process_*` metrics of this process, from `/proc/self` (Linux; `None`
/// elsewhere): CPU seconds (user + system), resident memory and threads.
fn process_metrics() -> Option<String> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces and parentheses); utime and stime
    // are fields 14 and 15 of the file, in USER_HZ ticks (100 on Linux).
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let cpu = (ticks(11)? + ticks(12)?) as f64 / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse::<u64>().ok()
    };
    let rss = field("VmRSS:")? * 1024;
    let threads = field("Threads:")?;
    Some(format!(
        "# HELP process_cpu_seconds Total user and system CPU time spent in seconds.\n\
         # TYPE process_cpu_seconds counter\n\
         # UNIT process_cpu_seconds seconds\n\
         process_cpu_seconds_total {cpu}\n\
         # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
         # TYPE process_resident_memory_bytes gauge\n\
         process_resident_memory_bytes {rss}\n\
         # HELP process_threads Number of OS threads in the process.\n\
         # TYPE process_threads gauge\n\
         process_threads {threads}\n"
    ))
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 18))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_carries_process_metrics_before_its_end() {
        let text = Metrics::new().encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for name in ["process_cpu_seconds_total ", "process_resident_memory_bytes ", "process_threads "] {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing"));
            let v: f64 = line[name.len()..].parse().unwrap();
            assert!(v >= 0.0, "{line}");
        }
        let rss: f64 =
            text.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")).unwrap().parse().unwrap();
        assert!(rss > 1e6, "a running test process holds more than 1 MB: {rss}");
    }
}
