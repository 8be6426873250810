//! Ordo under test: a local 3-member cluster of release `ordo-sidecar` processes, and the ways
//! an app gets IDs from it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ordo_client::{Client, Sequence};
use ordoctl::dev::{DevCluster, DevOptions};
use tokio::time::Instant;

use super::runner::IdSource;

/// The sidecar binary: `explicit`, else `$ORDO_SIDECAR_BIN`, else `ordo-sidecar` beside this
/// executable (both are in `target/release`).
pub fn sidecar_binary(explicit: Option<&str>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os(ordoctl::dev::SIDECAR_BIN_ENV) {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()?.parent().context("executable has no directory")?.join("ordo-sidecar"),
        },
    };
    if !path.is_file() {
        bail!(
            "sidecar binary {} not found (run `cargo build --release -p ordo-sidecar` or pass --sidecar)",
            path.display()
        );
    }
    Ok(path)
}

/// `count` consecutive free TCP ports on 127.0.0.1.
pub fn free_ports(count: u16, from: u16) -> anyhow::Result<u16> {
    let mut base = from;
    while base < 60000 {
        if (base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(base);
        }
        base += count;
    }
    bail!("no {count} consecutive free ports")
}

/// A running 3-member cluster.
pub struct OrdoCluster {
    /// The processes (killed on drop).
    pub dev: DevCluster,
    /// Each member's app socket.
    pub sockets: Vec<String>,
    /// Each member's admin HTTP address.
    admin: Vec<String>,
    /// Clients are spread over the first `spread` members.
    pub spread: usize,
}

impl OrdoCluster {
    /// Starts `members` members in `dir` with per-sequence range sizes, and waits until each
    /// member reports ready.
    pub async fn start(sidecar: &Path, dir: &Path, members: usize, ranges: &[(String, u64)]) -> anyhow::Result<Self> {
        Self::start_with(sidecar, dir, members, ranges, &[]).await
    }

    /// [`OrdoCluster::start`] with extra sidecar flags.
    pub async fn start_with(
        sidecar: &Path,
        dir: &Path,
        members: usize,
        ranges: &[(String, u64)],
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut opts = DevOptions::new(dir.to_path_buf());
        opts.extra_args.extend(extra.iter().cloned());
        opts.members = members;
        opts.base_port = free_ports(2 * members as u16, 27100)?;
        opts.sidecar = vec![sidecar.display().to_string()];
        opts.log_dir = Some(dir.join("logs"));
        if !ranges.is_empty() {
            let list: Vec<String> = ranges.iter().map(|(n, r)| format!("{n}={r}")).collect();
            opts.extra_args.push(format!("--sequence-range={}", list.join(",")));
        }
        let dev = DevCluster::start(opts).context("starting the sidecars")?;
        let sockets: Vec<String> = (0..members).map(|i| dev.member(i).socket.clone()).collect();
        let admin = (0..members).map(|i| dev.member(i).admin_addr.clone()).collect();
        let cluster = Self { dev, sockets, admin, spread: members };
        let deadline = Instant::now() + Duration::from_secs(60);
        for s in &cluster.sockets {
            loop {
                let ready = match Client::connect(s).await {
                    Ok(c) => c.status().await.is_ok_and(|st| st.ready),
                    Err(_) => false,
                };
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("member at {s} not ready after 60 s (logs in {})", dir.join("logs").display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(cluster)
    }

    /// `n` clients, client `i` connected to member `i % spread` (each its own connection).
    pub async fn clients(&self, n: usize) -> anyhow::Result<Vec<Client>> {
        let mut out = Vec::with_capacity(n);
        let spread = self.spread.clamp(1, self.sockets.len());
        for i in 0..n {
            let s = &self.sockets[i % spread];
            out.push(Client::connect(s).await.with_context(|| format!("connecting to {s}"))?);
        }
        Ok(out)
    }

    /// `n` [`NextCall`] sources of sequence `name`, spread like [`OrdoCluster::clients`].
    pub async fn next_calls(&self, n: usize, name: &str, strict: bool) -> anyhow::Result<Vec<NextCall>> {
        let clients = self.clients(n).await?;
        Ok(clients.into_iter().map(|client| NextCall { client, name: name.to_string(), strict }).collect())
    }
}

/// IDs from `ordo-client`'s leased [`Sequence`] handle (in-process).
pub struct Lease(pub Sequence);

impl IdSource for Lease {
    async fn next_id(&mut self) -> anyhow::Result<u64> {
        Ok(self.0.next_id().await?)
    }
}

/// One `Next(name, 1)` call per ID, buffered in the sidecar (`strict = false`) or through the
/// quorum (`strict = true`).
pub struct NextCall {
    /// The connection.
    pub client: Client,
    /// Sequence name.
    pub name: String,
    /// Bypass the sidecar's buffer.
    pub strict: bool,
}

impl IdSource for NextCall {
    async fn next_id(&mut self) -> anyhow::Result<u64> {
        Ok(self.client.next(&self.name, 1, self.strict).await?.start)
    }
}

/// One no-op `Ping` per call (the socket's round trip).
pub struct PingCall(pub Client);

impl IdSource for PingCall {
    async fn next_id(&mut self) -> anyhow::Result<u64> {
        self.0.ping().await?;
        Ok(0)
    }
}

/// Quorum counters summed over the members (from their Prometheus `/metrics`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct QuorumStats {
    /// Rounds that reached a quorum.
    pub rounds_ok: f64,
    /// Rounds that failed (conflict or no quorum).
    pub rounds_failed: f64,
    /// Rounds pre-empted by a higher ballot.
    pub conflicts: f64,
    /// Sum of round durations, seconds.
    pub round_secs: f64,
    /// Changes folded into rounds.
    pub batched: f64,
    /// Sidecar buffer refills.
    pub refills: f64,
    /// Batches of changes forwarded to another member's proposer.
    pub forwards: f64,
    /// CPU time of the machine: busy and in all (every core), seconds, from `/proc/stat`.
    pub machine_busy_secs: f64,
    /// See `machine_busy_secs`.
    pub machine_total_secs: f64,
    /// CPU time of this benchmark process (the clients), seconds.
    pub bench_cpu_secs: f64,
    /// CPU time of the members (their `process_cpu_seconds_total`), seconds.
    pub members_cpu_secs: f64,
    /// Batches the members' quorum stores made durable, and their summed time, seconds.
    pub store_batches: f64,
    /// See `store_batches`.
    pub store_batch_secs: f64,
}

/// Clock ticks per second of `/proc` CPU times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

impl QuorumStats {
    /// Reads the machine's and this process's CPU times (zero where `/proc` is missing).
    fn add_cpu(&mut self) {
        if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
            let ticks: Vec<f64> = stat
                .lines()
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .skip(1)
                .filter_map(|t| t.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            let total: f64 = ticks.iter().take(8).sum();
            let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
            self.machine_busy_secs = (total - idle) / USER_HZ;
            self.machine_total_secs = total / USER_HZ;
        }
        if let Ok(me) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces): utime and stime are the
            // 12th and 13th.
            let rest = me.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<f64> = rest.split_whitespace().filter_map(|t| t.parse().ok()).collect();
            self.bench_cpu_secs = (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / USER_HZ;
        }
    }

    fn add_metrics(&mut self, text: &str) {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let Ok(v) = value.trim().parse::<f64>() else { continue };
            let metric = name.split('{').next().unwrap_or(name);
            match metric {
                "ordo_quorum_rounds_total" if name.contains("result=\"ok\"") => self.rounds_ok += v,
                "ordo_quorum_rounds_total" => self.rounds_failed += v,
                "ordo_quorum_conflicts_total" => self.conflicts += v,
                "ordo_quorum_round_seconds_sum" => self.round_secs += v,
                "ordo_quorum_round_batch_sum" => self.batched += v,
                "ordo_sequence_buffer_refills_total" => self.refills += v,
                "ordo_quorum_forwards_total" => self.forwards += v,
                "process_cpu_seconds_total" => self.members_cpu_secs += v,
                "ordo_quorum_store_batch_seconds_sum" => self.store_batch_secs += v,
                "ordo_quorum_store_batch_seconds_count" => self.store_batches += v,
                _ => {}
            }
        }
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &QuorumStats) -> QuorumDelta {
        let rounds = (self.rounds_ok - before.rounds_ok) + (self.rounds_failed - before.rounds_failed);
        let per_round = |v: f64| if rounds > 0.0 { v / rounds } else { 0.0 };
        QuorumDelta {
            rounds_ok: self.rounds_ok - before.rounds_ok,
            rounds_failed: self.rounds_failed - before.rounds_failed,
            conflicts: self.conflicts - before.conflicts,
            avg_round_ms: per_round(self.round_secs - before.round_secs) * 1e3,
            avg_batch: per_round(self.batched - before.batched),
            refills: self.refills - before.refills,
            forwards: self.forwards - before.forwards,
            machine_busy: {
                let total = self.machine_total_secs - before.machine_total_secs;
                if total > 0.0 {
                    (self.machine_busy_secs - before.machine_busy_secs) / total
                } else {
                    0.0
                }
            },
            bench_cpu_secs: self.bench_cpu_secs - before.bench_cpu_secs,
            members_cpu_ms_per_round: per_round(self.members_cpu_secs - before.members_cpu_secs) * 1e3,
            store_batch_ms: {
                let batches = self.store_batches - before.store_batches;
                if batches > 0.0 {
                    (self.store_batch_secs - before.store_batch_secs) / batches * 1e3
                } else {
                    0.0
                }
            },
        }
    }
}

/// Quorum activity during one cell (all members).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct QuorumDelta {
    /// Rounds that reached a quorum.
    pub rounds_ok: f64,
    /// Failed rounds.
    pub rounds_failed: f64,
    /// Rounds pre-empted by a higher ballot.
    pub conflicts: f64,
    /// Mean round time, milliseconds.
    pub avg_round_ms: f64,
    /// Mean changes per round.
    pub avg_batch: f64,
    /// Sidecar buffer refills.
    pub refills: f64,
    /// Batches forwarded to another member's proposer.
    pub forwards: f64,
    /// Fraction of the machine's CPU (all cores) busy meanwhile, whoever used it.
    pub machine_busy: f64,
    /// CPU seconds the benchmark process (the clients) used meanwhile.
    pub bench_cpu_secs: f64,
    /// CPU the members used meanwhile per round, milliseconds (all members; includes serving
    /// the clients' calls).
    pub members_cpu_ms_per_round: f64,
    /// Mean time of a quorum store batch (apply and make durable), milliseconds.
    pub store_batch_ms: f64,
}

impl std::fmt::Display for QuorumDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quorum: {:.0} rounds ok, {:.0} failed, {:.0} conflicts, {:.2} ms/round, {:.1} changes/round, {:.0} refills, {:.0} forwards; machine CPU {:.0}% busy, clients {:.2} CPU s, members {:.2} CPU ms/round, store {:.3} ms/batch",
            self.rounds_ok,
            self.rounds_failed,
            self.conflicts,
            self.avg_round_ms,
            self.avg_batch,
            self.refills,
            self.forwards,
            self.machine_busy * 100.0,
            self.bench_cpu_secs,
            self.members_cpu_ms_per_round,
            self.store_batch_ms
        )
    }
}

impl OrdoCluster {
    /// Sums the quorum counters of every member (members that do not answer are skipped).
    pub async fn quorum_stats(&self) -> QuorumStats {
        quorum_stats_of(&self.admin).await
    }

    /// Each member's Prometheus `/metrics` text (members that do not answer are skipped).
    pub async fn metrics(&self) -> Vec<String> {
        metrics_of(&self.admin).await
    }
}

/// The Prometheus `/metrics` text of the sidecars at these admin addresses (those that do not
/// answer are skipped).
pub async fn metrics_of(admin: &[String]) -> Vec<String> {
    let mut texts = Vec::new();
    for addr in admin {
        if let Ok(mut h) = super::http::Http::connect(addr).await {
            if let Ok(text) = h.get("/metrics").await {
                texts.push(text);
            }
        }
    }
    texts
}

/// Sums the quorum counters of the sidecars at these admin addresses (those that do not answer
/// are skipped).
pub async fn quorum_stats_of(admin: &[String]) -> QuorumStats {
    let mut s = QuorumStats::default();
    for text in metrics_of(admin).await {
        s.add_metrics(&text);
    }
    s.add_cpu();
    s
}
