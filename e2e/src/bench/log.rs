//! `ordo-bench log`: appends to replicated log streams, Ordo side by side with its real peers in
//! the same run.
//!
//! Matrix: streams (1, 16) x entry size (100 B, 1 KB) x batch (1, 16, 256 entries) x pipeline
//! (1, 2, 8 batches in flight per appender), one appender per stream, closed loop for `--secs`.
//! Systems: Ordo R3 with ack quorum 2 (every ack after fdatasync on two replicas), NATS
//! JetStream R3 with `sync_interval: always` and with its default (which does not fsync per
//! message), Redis `XADD` with `appendfsync always` (one node, pipelined), and the disk's raw
//! `write + fdatasync` rate. For peers without batches, a "batch" is that many messages written
//! at once and counted when its last acknowledgement arrives. Then Ordo's peak cell is run again
//! open loop at half its peak rate, for the p99 goal: the appenders' sends spread evenly over
//! the interval, each batch's latency measured from the time it was due.
//!
//! ```text
//! ordo-bench log [--secs S] [--streams 1,16] [--entry-bytes 100,1024] [--batches 1,16,256]
//!                [--pipelines 1,2,8] [--only ordo,jetstream-always,jetstream-default,redis,fsync]
//!                [--sidecar PATH] [--nats-server PATH] [--redis-server PATH] [--out DIR]
//!                [--half-peak-rate ENTRIES_PER_SEC]
//! ```
//! `--half-peak-rate` skips Ordo's closed-loop cells and runs only the open-loop row, at that
//! rate, in the shape of the one cell given: two sidecar binaries compared at the same offered
//! load. The open-loop row also reports, from the sidecars' latency histograms, where the time
//! went (the sidecar the app writes to, the primary's queue to commit, each replica's round
//! trip, the store's wait and group commit, the segments per commit).
//! Writes `log.md`, `log.json` and `log.svg` (entries/s per cell and system) under `--out`.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use ordo_proto::v1 as pb;
use pb::log_client::LogClient;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::ordo::{sidecar_binary, OrdoCluster};
use super::peers::{self, Measured, NatsCluster, Redis};

const USAGE: &str = "usage: ordo-bench log [--secs S] [--streams 1,16] [--entry-bytes 100,1024] \
[--batches 1,16,256] [--pipelines 1,2,8] [--only ordo,jetstream-always,jetstream-default,redis,fsync] \
[--sidecar PATH] [--nats-server PATH] [--redis-server PATH] [--out DIR] [--half-peak-rate ENTRIES_PER_SEC]";

/// Systems in table order.
const SYSTEMS: [&str; 5] = ["ordo", "jetstream-always", "jetstream-default", "redis", "fsync"];

struct Args {
    secs: f64,
    streams: Vec<usize>,
    entry_bytes: Vec<usize>,
    batches: Vec<usize>,
    pipelines: Vec<usize>,
    only: Vec<String>,
    sidecar: Option<String>,
    nats: Option<String>,
    redis: Option<String>,
    out: PathBuf,
    /// Run only Ordo's open-loop row, at this many entries/s, in the shape of the one cell.
    half_peak_rate: Option<f64>,
}

fn list(v: &str) -> anyhow::Result<Vec<usize>> {
    v.split(',').map(|s| s.trim().parse::<usize>().with_context(|| format!("{s:?} is not a number"))).collect()
}

fn parse(args: &[String]) -> anyhow::Result<Args> {
    let mut a = Args {
        secs: 2.0,
        streams: vec![1, 16],
        entry_bytes: vec![100, 1024],
        batches: vec![1, 16, 256],
        pipelines: vec![1, 2, 8],
        only: SYSTEMS.iter().map(|s| s.to_string()).collect(),
        sidecar: None,
        nats: None,
        redis: None,
        out: PathBuf::from("bench-out"),
        half_peak_rate: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().with_context(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--secs" => a.secs = value()?.parse()?,
            "--streams" => a.streams = list(&value()?)?,
            "--entry-bytes" => a.entry_bytes = list(&value()?)?,
            "--batches" => a.batches = list(&value()?)?,
            "--pipelines" => a.pipelines = list(&value()?)?,
            "--only" => a.only = value()?.split(',').map(String::from).collect(),
            "--sidecar" => a.sidecar = Some(value()?),
            "--nats-server" => a.nats = Some(value()?),
            "--redis-server" => a.redis = Some(value()?),
            "--out" => a.out = PathBuf::from(value()?),
            "--half-peak-rate" => a.half_peak_rate = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {arg:?}\n{USAGE}"),
        }
    }
    if a.half_peak_rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--half-peak-rate must be positive");
    }
    if a.secs.is_nan() || a.secs <= 0.0 {
        bail!("--secs must be positive");
    }
    let counts = [&a.streams, &a.entry_bytes, &a.batches, &a.pipelines];
    if counts.iter().any(|v| v.is_empty() || v.contains(&0)) {
        bail!("--streams, --entry-bytes, --batches and --pipelines take positive numbers");
    }
    if a.pipelines.iter().any(|p| *p > 8) {
        bail!("Ordo's pipeline is 1..=8");
    }
    if let Some(bad) = a.only.iter().find(|s| !SYSTEMS.contains(&s.as_str())) {
        bail!("unknown system {bad:?} (one of {})", SYSTEMS.join(", "));
    }
    Ok(a)
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cell {
    streams: usize,
    entry: usize,
    batch: usize,
    pipeline: usize,
}

impl Cell {
    fn label(&self) -> String {
        format!("s{} e{} b{} p{}", self.streams, self.entry, self.batch, self.pipeline)
    }
}

/// What one system did in one cell.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    system: String,
    streams: usize,
    entry_bytes: usize,
    batch: usize,
    pipeline: usize,
    entries_per_sec: f64,
    mb_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    note: Option<String>,
}

fn row(system: &str, cell: Cell, m: &Measured, secs: f64) -> Row {
    Row {
        system: system.into(),
        streams: cell.streams,
        entry_bytes: cell.entry,
        batch: cell.batch,
        pipeline: cell.pipeline,
        entries_per_sec: m.entries as f64 / secs,
        mb_per_sec: m.bytes as f64 / secs / 1e6,
        p50_us: m.hist.quantile(0.50) as f64 / 1e3,
        p99_us: m.hist.quantile(0.99) as f64 / 1e3,
        note: None,
    }
}

fn failed(system: &str, cell: Cell, why: String) -> Row {
    Row { note: Some(why), ..row(system, cell, &Measured::default(), 1.0) }
}

/// When an open-loop appender sends: one batch every `interval`, the first at `phase` after the
/// start (appenders of one run are spread evenly over the interval rather than all sending at
/// the same instant, which would offer the rate as bursts).
#[derive(Debug, Clone, Copy)]
struct Pacing {
    interval: Duration,
    phase: Duration,
}

/// Appends to one Ordo stream through `socket` until `until`: up to `pipeline` batches in flight
/// on one Append stream, or, with `pacing`, open loop (still at most `pipeline` in flight). A
/// sender task sends; this task reads the results.
///
/// Open loop, a batch's latency runs from the time it was due, not from when it was sent: a
/// batch held back by a full pipeline (or a late timer) counts its wait (no coordinated
/// omission).
async fn ordo_appender(
    socket: &str,
    stream: &str,
    payload: &[u8],
    cell: Cell,
    pacing: Option<Pacing>,
    until: Instant,
) -> anyhow::Result<Measured> {
    let client = ordo_client::Client::connect(socket).await?;
    let mut log = LogClient::new(client.channel());
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AppendRequest>(cell.pipeline + 1);
    let mut responses = log.append(ReceiverStream::new(rx)).await?.into_inner();
    let permits = Arc::new(Semaphore::new(cell.pipeline));
    // Per batch in flight: its sequence number, its due time, and when it could go (see
    // `Measured::from_send`).
    let sent: Arc<Mutex<VecDeque<(u64, Instant, Instant)>>> = Arc::default();
    let mut sender = {
        let (permits, sent, stream) = (permits.clone(), sent.clone(), stream.to_string());
        let entries: Vec<Vec<u8>> = vec![payload.to_vec(); cell.batch];
        let producer_id = rand::random::<u64>() | 1;
        tokio::spawn(async move {
            let mut next = Instant::now() + pacing.map_or(Duration::ZERO, |p| p.phase);
            for seq in 0u64.. {
                // Open loop: due at `next`, whether or not the pipeline has room then.
                let due = next;
                if pacing.is_some() && due >= until {
                    break;
                }
                permits.acquire().await?.forget();
                // The pipeline had room by the due time: any later send is the timer's doing.
                let room_in_time = Instant::now() <= due;
                if let Some(p) = pacing {
                    tokio::time::sleep_until(due).await;
                    next += p.interval;
                }
                let now = Instant::now();
                if pacing.is_none() && now >= until {
                    break;
                }
                let due = if pacing.is_some() { due } else { now };
                let could_go = if room_in_time { now } else { due };
                let req = pb::AppendRequest {
                    stream: stream.clone(),
                    entries: entries.clone(),
                    pipeline_size: cell.pipeline as u32,
                    producer_id,
                    producer_epoch: 1,
                    batch_seq: seq,
                    fence: None,
                };
                sent.lock().expect("sent").push_back((seq, due, could_go));
                tx.send(req).await.context("the Append stream closed")?;
            }
            anyhow::Ok(())
        })
    };
    let mut m = Measured::default();
    let mut sender_done = false;
    loop {
        if sender_done && sent.lock().expect("sent").is_empty() {
            return Ok(m);
        }
        let r = tokio::select! {
            done = &mut sender, if !sender_done => {
                done.context("sender task")??;
                sender_done = true;
                continue;
            }
            r = tokio::time::timeout(Duration::from_secs(10), responses.message()) => r,
        };
        let Some(r) = r.context("no append result within 10 s")?? else {
            // The sender finished and the sidecar answered everything: a normal end.
            if sent.lock().expect("sent").is_empty() {
                return Ok(m);
            }
            bail!("the Append stream ended with batches unanswered");
        };
        if let Some(e) = r.error {
            bail!("append refused: {} (code {})", e.message, e.code);
        }
        let (want, t, could_go) = sent.lock().expect("sent").pop_front().context("a result with nothing in flight")?;
        if r.batch_seq != want || r.lsns.len() != cell.batch {
            bail!(
                "result for batch {} with {} LSNs, expected batch {want} with {}",
                r.batch_seq,
                r.lsns.len(),
                cell.batch
            );
        }
        permits.add_permits(1);
        m.hist.record(t.elapsed().as_nanos() as u64);
        m.from_send.record(could_go.elapsed().as_nanos() as u64);
        m.entries += cell.batch as u64;
        m.bytes += (cell.batch * payload.len()) as u64;
    }
}

/// Ordo open loop at `rate` entries/s in `cell`'s shape on fresh streams; returns the figures
/// and where the time went (the sidecars' stage histograms over the run, all members).
async fn open_loop(
    ordo: &OrdoCluster,
    log: &mut LogClient<tonic::transport::Channel>,
    cell: Cell,
    rate: f64,
    secs: Duration,
) -> anyhow::Result<(Measured, String)> {
    let batches_per_sec = rate / cell.batch as f64 / cell.streams as f64;
    let interval = Duration::from_secs_f64(1.0 / batches_per_sec.max(1.0));
    let names: Vec<String> = (0..cell.streams).map(|s| format!("bench-half-{s}")).collect();
    for n in &names {
        let req = pb::CreateStreamRequest { name: n.clone(), replication_factor: 3, ack_quorum: 2 };
        log.create_stream(req).await?;
    }
    let before = Stages::scrape(ordo).await;
    let until = Instant::now() + secs;
    let payload = vec![0x6fu8; cell.entry];
    let sockets = ordo.sockets.clone();
    let m = run_all(cell.streams, |s| {
        let (socket, name, payload) = (sockets[s % sockets.len()].clone(), names[s].clone(), payload.clone());
        let pacing = Pacing { interval, phase: interval.mul_f64(s as f64 / cell.streams as f64) };
        async move { ordo_appender(&socket, &name, &payload, cell, Some(pacing), until).await }
    })
    .await?;
    let stages = Stages::scrape(ordo).await.since(&before);
    Ok((m, stages.to_string()))
}

/// The sidecars' per-stage histograms, in the order a batch passes them: name, what it covers,
/// and whether it is in seconds (else a count).
const STAGES: [(&str, &str, bool); 7] = [
    ("ordo_log_ack_seconds", "sidecar the app writes to: batch queued to answer (forwarding included)", true),
    ("ordo_log_primary_ack_seconds", "primary: batch on its queue to commit", true),
    ("ordo_log_replicate_seconds", "primary to a replica (its own disk too): message to durable answer", true),
    ("ordo_log_write_seconds", "a member's store: write queued to durable (wait + group commit)", true),
    ("ordo_log_commit_seconds", "a member's store: one group commit (writes + fdatasyncs)", true),
    ("ordo_log_sync_seconds", "a member's store: the fdatasyncs of one group commit", true),
    ("ordo_log_commit_segments", "segments fdatasynced per group commit", false),
];

/// The sidecars' counters reported beside [`STAGES`].
const COUNTERS: [(&str, &str); 2] = [
    ("ordo_log_appended_entries_total", "entries appended by primaries"),
    ("ordo_log_replicated_from_store_total", "entries a primary read back from its store to replicate"),
];

/// One Prometheus histogram summed over members: cumulative counts per upper bound, sum, count.
#[derive(Debug, Clone, Default)]
struct PromHist {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl PromHist {
    /// The smallest bucket bound at or above the `q` quantile.
    fn quantile(&self, q: f64) -> f64 {
        let target = q * self.count;
        self.buckets.iter().find(|(_, c)| *c >= target).map_or(f64::NAN, |(le, _)| *le)
    }
}

/// [`STAGES`] and [`COUNTERS`] as the members report them.
#[derive(Debug, Clone, Default)]
struct Stages(Vec<PromHist>, Vec<f64>);

impl Stages {
    async fn scrape(ordo: &OrdoCluster) -> Self {
        let empty = || Stages(vec![PromHist::default(); STAGES.len()], vec![0.0; COUNTERS.len()]);
        let mut s = empty();
        for text in ordo.metrics().await {
            let mut member = empty();
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some((name, value)) = line.rsplit_once(' ') else { continue };
                let Ok(v) = value.trim().parse::<f64>() else { continue };
                let (metric, labels) = name.split_once('{').unwrap_or((name, ""));
                if let Some(i) = COUNTERS.iter().position(|(c, _)| *c == metric) {
                    member.1[i] += v;
                }
                for (i, (stage, _, _)) in STAGES.iter().enumerate() {
                    let Some(suffix) = metric.strip_prefix(stage) else { continue };
                    let h = &mut member.0[i];
                    match suffix {
                        "_sum" => h.sum = v,
                        "_count" => h.count = v,
                        "_bucket" => {
                            let le = labels.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
                            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
                            h.buckets.push((le, v));
                        }
                        _ => {}
                    }
                }
            }
            s = s.combine(&member, 1.0);
        }
        s
    }

    /// Adds `sign` times `o` (bucket bounds are the same on every member and scrape).
    fn combine(&self, o: &Stages, sign: f64) -> Stages {
        let add = |a: &PromHist, b: &PromHist| {
            let buckets = if a.buckets.is_empty() {
                b.buckets.iter().map(|(le, c)| (*le, sign * c)).collect()
            } else {
                a.buckets.iter().zip(&b.buckets).map(|((le, x), (_, y))| (*le, x + sign * y)).collect()
            };
            PromHist { buckets, sum: a.sum + sign * b.sum, count: a.count + sign * b.count }
        };
        Stages(
            self.0.iter().zip(&o.0).map(|(a, b)| add(a, b)).collect(),
            self.1.iter().zip(&o.1).map(|(a, b)| a + sign * b).collect(),
        )
    }

    fn since(&self, before: &Stages) -> Stages {
        self.combine(before, -1.0)
    }
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for ((_, what, seconds), h) in STAGES.iter().zip(&self.0) {
            let (scale, unit) = if *seconds { (1e3, " ms") } else { (1.0, "") };
            let mean = if h.count > 0.0 { h.sum / h.count } else { 0.0 };
            writeln!(
                f,
                "  - {what}: {:.0} observed, mean {:.2}{unit}, p50 <= {:.2}{unit}, p99 <= {:.2}{unit}",
                h.count,
                mean * scale,
                h.quantile(0.5) * scale,
                h.quantile(0.99) * scale
            )?;
        }
        for ((_, what), v) in COUNTERS.iter().zip(&self.1) {
            writeln!(f, "  - {what}: {v:.0}")?;
        }
        Ok(())
    }
}

/// Runs `streams` appenders at once and merges their figures.
async fn run_all<F, Fut>(streams: usize, mut make: F) -> anyhow::Result<Measured>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Measured>> + Send + 'static,
{
    let tasks: Vec<_> = (0..streams).map(|i| tokio::spawn(make(i))).collect();
    let mut total = Measured::default();
    for t in tasks {
        total.merge(&t.await.context("appender task")??);
    }
    Ok(total)
}

/// Entry point of `ordo-bench log`.
pub async fn main(raw: &[String]) -> anyhow::Result<()> {
    let args = parse(raw)?;
    let wants = |s: &str| args.only.iter().any(|o| o == s);
    let secs = Duration::from_secs_f64(args.secs);
    let tmp = tempfile::Builder::new().prefix("ordo-bench-log-").tempdir()?;
    let mut cells = Vec::new();
    for &streams in &args.streams {
        for &entry in &args.entry_bytes {
            for &batch in &args.batches {
                for &pipeline in &args.pipelines {
                    cells.push(Cell { streams, entry, batch, pipeline });
                }
            }
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    if args.half_peak_rate.is_some() && cells.len() != 1 {
        bail!(
            "--half-peak-rate runs one cell: give one value each of --streams, --entry-bytes, --batches, --pipelines"
        );
    }

    if wants("fsync") {
        for &entry in &args.entry_bytes {
            let m = peers::fdatasync_rate(tmp.path(), entry, secs)?;
            let cell = Cell { streams: 1, entry, batch: 1, pipeline: 1 };
            let r = row("fsync", cell, &m, args.secs);
            eprintln!("fsync e{entry}: {:.0} fdatasync/s, p50 {:.0} us", r.entries_per_sec, r.p50_us);
            rows.push(r);
        }
    }

    if wants("ordo") {
        let sidecar = sidecar_binary(args.sidecar.as_deref())?;
        eprintln!("starting 3 ordo-sidecar members ({})", sidecar.display());
        let ordo = OrdoCluster::start(&sidecar, &tmp.path().join("ordo"), 3, &[]).await?;
        let client = ordo_client::Client::connect(&ordo.sockets[0]).await?;
        let mut log = LogClient::new(client.channel());
        let closed_loop = if args.half_peak_rate.is_some() { &[][..] } else { &cells[..] };
        for (i, cell) in closed_loop.iter().enumerate() {
            let names: Vec<String> = (0..cell.streams).map(|s| format!("bench-{i}-{s}")).collect();
            let mut created = Ok(());
            for n in &names {
                let req = pb::CreateStreamRequest { name: n.clone(), replication_factor: 3, ack_quorum: 2 };
                if let Err(e) = log.create_stream(req).await {
                    created = Err(anyhow::anyhow!("creating stream {n}: {e}"));
                    break;
                }
            }
            if let Err(e) = created {
                push(&mut rows, "ordo", *cell, Err(e), args.secs);
                continue;
            }
            let until = Instant::now() + secs;
            let payload = vec![0x6fu8; cell.entry];
            let sockets = ordo.sockets.clone();
            let c = *cell;
            let result = run_all(cell.streams, |s| {
                let (socket, name, payload) = (sockets[s % sockets.len()].clone(), names[s].clone(), payload.clone());
                async move { ordo_appender(&socket, &name, &payload, c, None, until).await }
            })
            .await;
            push(&mut rows, "ordo", *cell, result, args.secs);
        }
        // p99 at half the peak rate, open loop, in the peak cell's shape (or at the rate given).
        let half = match args.half_peak_rate {
            Some(rate) => Some((cells[0], rate)),
            None => rows
                .iter()
                .filter(|r| r.system == "ordo" && r.note.is_none())
                .max_by(|a, b| a.entries_per_sec.total_cmp(&b.entries_per_sec))
                .map(|peak| {
                    let cell = Cell { streams: peak.streams, entry: peak.entry_bytes, batch: peak.batch, pipeline: 8 };
                    (cell, peak.entries_per_sec / 2.0)
                }),
        };
        if let Some((cell, rate)) = half {
            let offered = if args.half_peak_rate.is_some() { "given" } else { "half the peak" };
            match open_loop(&ordo, &mut log, cell, rate, secs).await {
                Ok((m, stages)) => {
                    let r = row("ordo-half-peak", cell, &m, args.secs);
                    let note = format!(
                        "Ordo at half its peak rate ({}, open loop, {rate:.0} entries/s offered ({offered}), latency \
                         from each batch's due time): {:.0} entries/s, p50 {:.2} ms, p99 {:.2} ms (goal: p99 <= 5 ms); \
                         from the send (the generator's own timer lateness left out, waits for a pipeline slot \
                         counted): p50 {:.2} ms, p99 {:.2} ms",
                        cell.label(),
                        r.entries_per_sec,
                        r.p50_us / 1e3,
                        r.p99_us / 1e3,
                        m.from_send.quantile(0.5) as f64 / 1e6,
                        m.from_send.quantile(0.99) as f64 / 1e6
                    );
                    eprintln!("{note}\n{stages}");
                    notes.push(note);
                    notes.push(format!("Where the time went at half the peak rate (all members):\n{stages}"));
                    rows.push(r);
                }
                Err(e) => notes.push(format!("Ordo at half its peak rate: failed: {e:#}")),
            }
        }
    }

    for (system, sync_always) in [("jetstream-always", true), ("jetstream-default", false)] {
        if !wants(system) {
            continue;
        }
        let Some(bin) = peers::find_binary(args.nats.as_deref(), "nats-server") else {
            notes.push(format!("{system}: not run (no nats-server; scripts/bench.sh builds one)"));
            continue;
        };
        eprintln!("starting a 3-node JetStream cluster ({}, sync_always={sync_always})", bin.display());
        let nats = match NatsCluster::start(&bin, sync_always).await {
            Ok(n) => n,
            Err(e) => {
                notes.push(format!("{system}: not run: the cluster did not start: {e:#}"));
                continue;
            }
        };
        for (i, cell) in cells.iter().enumerate() {
            let names: Vec<String> = (0..cell.streams).map(|s| format!("b{i}s{s}")).collect();
            let mut created = Ok(());
            for n in &names {
                if let Err(e) = nats.create_stream(n).await {
                    created = Err(e);
                    break;
                }
            }
            let result = match created {
                Err(e) => Err(e),
                Ok(()) => {
                    let until = Instant::now() + secs;
                    let payload = vec![0x6fu8; cell.entry];
                    let ports = nats.ports.clone();
                    let c = *cell;
                    run_all(cell.streams, |s| {
                        let (port, name, payload) = (ports[s % ports.len()], names[s].clone(), payload.clone());
                        async move { peers::nats_appender(port, &name, &payload, c.batch, c.pipeline, until).await }
                    })
                    .await
                }
            };
            push(&mut rows, system, *cell, result, args.secs);
            for n in &names {
                nats.delete_stream(n).await;
            }
        }
    }

    if wants("redis") {
        match peers::find_binary(args.redis.as_deref(), "redis-server") {
            None => notes.push("redis: not run (no redis-server; scripts/bench.sh installs it)".into()),
            Some(bin) => match Redis::start(&bin).await {
                Err(e) => notes.push(format!("redis: not run: it did not start: {e:#}")),
                Ok(redis) => {
                    for (i, cell) in cells.iter().enumerate() {
                        let until = Instant::now() + secs;
                        let payload = vec![0x6fu8; cell.entry];
                        let port = redis.port;
                        let c = *cell;
                        let result = run_all(cell.streams, |s| {
                            let (key, payload) = (format!("b{i}s{s}"), payload.clone());
                            async move { peers::redis_appender(port, &key, &payload, c.batch, c.pipeline, until).await }
                        })
                        .await;
                        push(&mut rows, "redis", *cell, result, args.secs);
                    }
                }
            },
        }
    }

    std::fs::create_dir_all(&args.out)?;
    let md = markdown(&cells, &rows, &notes, &args);
    std::fs::write(args.out.join("log.md"), &md)?;
    std::fs::write(
        args.out.join("log.json"),
        serde_json::to_string_pretty(&serde_json::json!({"rows": rows, "notes": notes}))?,
    )?;
    std::fs::write(args.out.join("log.svg"), svg(&cells, &rows))?;
    println!("{md}");
    eprintln!("wrote {0}/log.md, {0}/log.json, {0}/log.svg", args.out.display());
    Ok(())
}

fn push(rows: &mut Vec<Row>, system: &str, cell: Cell, result: anyhow::Result<Measured>, secs: f64) {
    let r = match result {
        Ok(m) => row(system, cell, &m, secs),
        Err(e) => failed(system, cell, format!("{e:#}")),
    };
    eprintln!(
        "{system:18} {:18} {:>10.0} entries/s {:>7.1} MB/s p50 {:>8.2} ms p99 {:>8.2} ms{}",
        cell.label(),
        r.entries_per_sec,
        r.mb_per_sec,
        r.p50_us / 1e3,
        r.p99_us / 1e3,
        r.note.as_deref().map(|n| format!("  FAILED: {n}")).unwrap_or_default()
    );
    rows.push(r);
}

fn find<'a>(rows: &'a [Row], system: &str, c: &Cell) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.system == system
            && r.streams == c.streams
            && r.entry_bytes == c.entry
            && r.batch == c.batch
            && r.pipeline == c.pipeline
    })
}

fn cell_text(r: Option<&Row>) -> String {
    match r {
        None => "—".into(),
        Some(r) if r.note.is_some() => "failed".into(),
        Some(r) => format!(
            "{:.0}/s, {:.1} MB/s ({:.2} / {:.2} ms)",
            r.entries_per_sec,
            r.mb_per_sec,
            r.p50_us / 1e3,
            r.p99_us / 1e3
        ),
    }
}

fn markdown(cells: &[Cell], rows: &[Row], notes: &[String], args: &Args) -> String {
    let mut s = String::new();
    s.push_str("# Log streams: appends, Ordo and its peers in the same run\n\n");
    s.push_str(&format!(
        "{} s per cell, one appender per stream, closed loop. Cells are entries/s, MB/s (p50 / p99 \
         ack latency per batch). Ordo: R3, ack quorum 2 (fdatasync on 2 replicas before the ack). \
         JetStream: R3, `sync_interval: always` / default. Redis: one node, `appendfsync always`, \
         XADD pipelined. Ratio columns: Ordo entries/s over the peer's in the same cell.\n\n",
        args.secs
    ));
    s.push_str("| streams | entry | batch | pipeline | Ordo | JetStream always | JetStream default | Redis always | Ordo / JS always | Ordo / JS default |\n");
    s.push_str("|---:|---:|---:|---:|---|---|---|---|---:|---:|\n");
    let ratio = |a: Option<&Row>, b: Option<&Row>| match (a, b) {
        (Some(a), Some(b)) if a.note.is_none() && b.note.is_none() && b.entries_per_sec > 0.0 => {
            format!("{:.2}", a.entries_per_sec / b.entries_per_sec)
        }
        _ => "—".into(),
    };
    for c in cells {
        let o = find(rows, "ordo", c);
        let ja = find(rows, "jetstream-always", c);
        let jd = find(rows, "jetstream-default", c);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.streams,
            c.entry,
            c.batch,
            c.pipeline,
            cell_text(o),
            cell_text(ja),
            cell_text(jd),
            cell_text(find(rows, "redis", c)),
            ratio(o, ja),
            ratio(o, jd)
        ));
    }
    let best = |system: &str| {
        rows.iter().filter(|r| r.system == system && r.note.is_none()).map(|r| r.entries_per_sec).fold(0.0f64, f64::max)
    };
    s.push_str("\n## Peaks (best cell of each system)\n\n| system | entries/s |\n|---|---:|\n");
    for system in ["ordo", "jetstream-always", "jetstream-default", "redis"] {
        s.push_str(&format!("| {system} | {:.0} |\n", best(system)));
    }
    for r in rows.iter().filter(|r| r.system == "fsync") {
        s.push_str(&format!(
            "| raw write+fdatasync ({} B, one at a time) | {:.0} (p50 {:.0} us) |\n",
            r.entry_bytes, r.entries_per_sec, r.p50_us
        ));
    }
    let goals: BTreeMap<&str, String> = BTreeMap::from([
        ("Ordo peak / JetStream-always peak (goal >= 3)", peak_ratio(best("ordo"), best("jetstream-always"))),
        ("Ordo peak / JetStream-default peak (goal >= 1)", peak_ratio(best("ordo"), best("jetstream-default"))),
    ]);
    s.push_str("\n## Goals\n\n");
    for (k, v) in goals {
        s.push_str(&format!("- {k}: {v}\n"));
    }
    for n in notes {
        s.push_str(&format!("- {n}\n"));
    }
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.note
                .as_ref()
                .map(|n| format!("{} s{} e{} b{} p{}: {n}", r.system, r.streams, r.entry_bytes, r.batch, r.pipeline))
        })
        .collect();
    if !failures.is_empty() {
        s.push_str("\n## Failed cells\n\n");
        for f in failures {
            s.push_str(&format!("- {f}\n"));
        }
    }
    s
}

fn peak_ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "not measured".into()
    }
}

/// Entries/s per cell (log scale), one line per system.
fn svg(cells: &[Cell], rows: &[Row]) -> String {
    let (w, h, left, bottom, top) = (1000.0f64, 420.0f64, 70.0f64, 110.0f64, 30.0f64);
    let plot_h = h - bottom - top;
    let max = rows.iter().map(|r| r.entries_per_sec).fold(10.0f64, f64::max).log10().ceil();
    let y = |v: f64| top + plot_h * (1.0 - (v.max(1.0).log10() / max));
    let step = (w - left - 20.0) / cells.len().max(1) as f64;
    let x = |i: usize| left + step * (i as f64 + 0.5);
    let colors =
        [("ordo", "#d62728"), ("jetstream-always", "#1f77b4"), ("jetstream-default", "#aec7e8"), ("redis", "#2ca02c")];
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"10\">\n");
    s.push_str(&format!(
        "<text x=\"{left}\" y=\"18\" font-size=\"13\">Log appends: entries/s per cell (log scale)</text>\n"
    ));
    for e in 0..=(max as i32) {
        let yy = y(10f64.powi(e));
        s.push_str(&format!("<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"5\" y=\"{:.1}\">1e{e}</text>\n", w - 20.0, yy + 3.0));
    }
    for (i, c) in cells.iter().enumerate() {
        s.push_str(&format!(
            "<text transform=\"translate({:.1},{:.1}) rotate(60)\">{}</text>\n",
            x(i) - 3.0,
            h - bottom + 8.0,
            c.label()
        ));
    }
    for (k, (system, color)) in colors.iter().enumerate() {
        let pts: Vec<String> = cells
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                find(rows, system, c)
                    .filter(|r| r.note.is_none())
                    .map(|r| format!("{:.1},{:.1}", x(i), y(r.entries_per_sec)))
            })
            .collect();
        if !pts.is_empty() {
            s.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                pts.join(" ")
            ));
        }
        s.push_str(&format!(
            "<rect x=\"{}\" y=\"22\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"31\">{system}</text>\n",
            left + 380.0 + 140.0 * k as f64,
            left + 394.0 + 140.0 * k as f64
        ));
    }
    s.push_str("</svg>\n");
    s
}
