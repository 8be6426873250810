//! `ordo-bench`: rr_seq's benchmark matrix (range size strict/1/2/1024 x 1 and 32 concurrent
//! clients) on a local 3-member Ordo cluster, side by side in the same run with an in-process
//! baseline (an atomic counter behind a channel, like rr_seq's `SimpleBufSeq`) and a 3-member
//! etcd cluster allocating by compare-and-swap; plus one `Next` vs one no-op `Ping` on the
//! same Unix socket. Writes `bench-out/sequencer.{md,json,svg}` and prints the table.
//!
//! ```text
//! ordo-bench [--secs S] [--warmup-ms MS] [--max-ids N] [--repeat N] [--ranges strict,1,2,1024]
//!            [--clients 1,32] [--only baseline,lease,next,strict,etcd,socket] [--no-etcd]
//!            [--spread N] [--sidecar-range N] [--sidecar PATH] [--etcd PATH] [--out DIR] [--keep]
//! ```
//!
//! `ordo-bench divider [--repeat N] [--out DIR]` measures the divider's assignment function
//! instead (`bench/divider.rs`: time, keys moved, balance; writes `divider-assign.md`).
//! `ordo-bench log ...` runs the log-stream benchmark (`bench/log.rs`: vs NATS JetStream and
//! Redis; writes `log.{md,json,svg}`). `ordo-bench ownership ...` measures the divider's
//! ownership (recovery after `kill -9`, idle quorum writes) next to the etcd recipe
//! (`bench/ownership.rs`).
//!
//! `--spread N` puts the clients on the first N members only (default 3: all of them);
//! `--sidecar-range N` gives the sidecar buffers behind the leased `Sequence` rows N IDs per
//! refill instead of the lease size (both are for diagnosis; the published table uses neither).

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bench::baseline::Baseline;
use bench::etcd::{etcd_binary, EtcdCas, EtcdCluster};
use bench::ordo::{sidecar_binary, Lease, OrdoCluster, PingCall, QuorumDelta};
use bench::report::{fmt_rate, fmt_us, Report, Row};
use bench::runner::{run_cell, Bounds, CellResult, IdSource};

const USAGE: &str = "usage: ordo-bench [--secs S] [--warmup-ms MS] [--max-ids N] [--repeat N] \
[--ranges strict,1,2,1024] [--clients 1,32] [--only baseline,lease,next,strict,etcd,socket] [--no-etcd] \
[--spread N] [--sidecar-range N] [--sidecar PATH] [--etcd PATH] [--out DIR] [--keep]";

#[derive(Debug, Clone)]
struct Args {
    secs: f64,
    warmup_ms: u64,
    max_ids: u64,
    repeat: usize,
    ranges: Vec<String>,
    clients: Vec<usize>,
    only: Option<Vec<String>>,
    no_etcd: bool,
    spread: usize,
    sidecar_range: Option<u64>,
    sidecar: Option<String>,
    etcd: Option<String>,
    out: PathBuf,
    keep: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        secs: 2.0,
        warmup_ms: 200,
        max_ids: 20_000_000,
        repeat: 1,
        ranges: ["strict", "1", "2", "1024"].map(String::from).to_vec(),
        clients: vec![1, 32],
        only: None,
        no_etcd: false,
        spread: 3,
        sidecar_range: None,
        sidecar: None,
        etcd: None,
        out: PathBuf::from("bench-out"),
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || -> anyhow::Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().with_context(|| format!("{flag} needs a value\n{USAGE}")),
            }
        };
        let list = |v: String| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        match flag.as_str() {
            "--secs" => a.secs = value()?.parse()?,
            "--warmup-ms" => a.warmup_ms = value()?.parse()?,
            "--max-ids" => a.max_ids = value()?.parse()?,
            "--repeat" => a.repeat = value()?.parse::<usize>()?.max(1),
            "--ranges" => a.ranges = list(value()?),
            "--clients" => {
                a.clients = list(value()?).into_iter().map(|s: String| s.parse::<usize>()).collect::<Result<_, _>>()?
            }
            "--only" => a.only = Some(list(value()?)),
            "--no-etcd" => a.no_etcd = true,
            "--spread" => a.spread = value()?.parse()?,
            "--sidecar-range" => a.sidecar_range = Some(value()?.parse()?),
            "--sidecar" => a.sidecar = Some(value()?),
            "--etcd" => a.etcd = Some(value()?),
            "--out" => a.out = PathBuf::from(value()?),
            "--keep" => a.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {arg:?}\n{USAGE}"),
        }
    }
    for r in &a.ranges {
        if r != "strict" && r.parse::<u64>().map_or(true, |n| n == 0) {
            bail!("range {r:?} is neither \"strict\" nor a positive number");
        }
    }
    if a.clients.contains(&0) || a.secs.is_nan() || a.secs <= 0.0 {
        bail!("clients and --secs must be positive");
    }
    Ok(a)
}

impl Args {
    fn wants(&self, key: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|k| k == key))
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            duration: Duration::from_secs_f64(self.secs),
            max_ids: self.max_ids,
            warmup: Duration::from_millis(self.warmup_ms),
        }
    }
}

/// A sequence name per system, range and client count, so no cell sees another's buffers.
fn seq_name(key: &str, range: &str, clients: usize) -> String {
    format!("bench-{key}-r{range}-c{clients}")
}

fn range_size(range: &str) -> u64 {
    range.parse().unwrap_or(1)
}

/// Runs a cell `repeat` times (fresh sources each time) and keeps the median by rate.
#[allow(clippy::too_many_arguments)]
async fn measure<S, F, Fut>(
    args: &Args,
    stats: Option<&OrdoCluster>,
    key: &str,
    system: &str,
    range: &str,
    clients: usize,
    check_increasing: bool,
    mut make: F,
) -> Row
where
    S: IdSource,
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<S>, Option<String>)>>,
{
    let mut results: Vec<(CellResult, Option<String>, Option<QuorumDelta>)> = Vec::new();
    let mut setup_error = None;
    for rep in 0..args.repeat {
        match make(rep).await {
            Ok((sources, note)) => {
                let before = match stats {
                    Some(o) => Some(o.quorum_stats().await),
                    None => None,
                };
                let r = run_cell(sources, args.bounds(), check_increasing).await;
                let delta = match (stats, before) {
                    (Some(o), Some(b)) => Some(o.quorum_stats().await.since(&b)),
                    _ => None,
                };
                results.push((r, note, delta));
            }
            Err(e) => {
                setup_error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    let runs: Vec<f64> = results.iter().map(|(r, _, _)| r.rate()).collect();
    results.sort_by(|a, b| a.0.rate().total_cmp(&b.0.rate()));
    let row = match results.len() {
        0 => Row::not_measured(
            key,
            system,
            range,
            clients,
            runs,
            format!("not measured: {}", setup_error.unwrap_or_default()),
        ),
        n => {
            let (r, note, quorum) = &results[n / 2];
            let mut notes: Vec<String> = note.iter().cloned().collect();
            if let Some(e) = &r.first_error {
                notes.push(format!("first error: {e}"));
            }
            if r.not_increasing > 0 {
                notes.push(format!("{} IDs did not increase within a client", r.not_increasing));
            }
            Row {
                key: key.into(),
                system: system.into(),
                range: range.into(),
                clients,
                ids: r.ids,
                errors: r.errors,
                secs: r.elapsed.as_secs_f64(),
                ids_per_sec: Some(r.rate()),
                p50_us: r.hist.quantile(0.5) as f64 / 1e3,
                p99_us: r.hist.quantile(0.99) as f64 / 1e3,
                mean_us: r.hist.mean() / 1e3,
                runs,
                quorum: *quorum,
                note: (!notes.is_empty()).then(|| notes.join("; ")),
            }
        }
    };
    eprintln!(
        "  {:<24} range {:<6} clients {:>2}: {:>14}  p50 {:>9}  p99 {:>9}{}",
        row.system,
        row.range,
        row.clients,
        row.ids_per_sec.map_or("n/a".into(), fmt_rate),
        fmt_us(row.p50_us),
        fmt_us(row.p99_us),
        row.note.as_deref().map(|n| format!("  ({n})")).unwrap_or_default()
    );
    if let Some(q) = &row.quorum {
        eprintln!("    {q}");
    }
    row
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The commit the binaries were (most likely) built from, marked when sidecar/ or client/ differ.
fn git_revision() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        None => "unknown".into(),
        Some(rev) => match run(&["status", "--porcelain", "--", "sidecar", "client", "proto"]) {
            Some(s) if !s.is_empty() => format!("{rev} (with uncommitted changes in sidecar/client/proto)"),
            _ => rev,
        },
    }
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("divider") {
        return bench::divider::run(bench::divider::parse_args(std::env::args().skip(2))?);
    }
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("log") {
        return bench::log::main(&raw[1..]).await;
    }
    if raw.first().map(String::as_str) == Some("ownership") {
        return bench::ownership::main(&raw[1..]).await;
    }
    let args = parse_args()?;
    let started = now_utc();
    let tmp = tempfile::Builder::new().prefix("ordo-bench-").tempdir()?;
    let dir = if args.keep { tmp.keep() } else { tmp.path().to_path_buf() };

    // Ordo: one cluster, a sequence per cell with its own range size.
    let sidecar = sidecar_binary(args.sidecar.as_deref())?;
    let mut seq_ranges = Vec::new();
    for range in args.ranges.iter().filter(|r| *r != "strict") {
        for &c in &args.clients {
            seq_ranges.push((seq_name("lease", range, c), args.sidecar_range.unwrap_or(range_size(range))));
            seq_ranges.push((seq_name("next", range, c), range_size(range)));
        }
    }
    eprintln!("starting 3 ordo-sidecar members ({})", sidecar.display());
    let mut ordo = OrdoCluster::start(&sidecar, &dir.join("ordo"), 3, &seq_ranges).await?;
    ordo.spread = args.spread;

    // etcd, when installed.
    let etcd_note;
    let etcd = if args.no_etcd || !args.wants("etcd") {
        etcd_note = "not run (--no-etcd / --only)".into();
        None
    } else {
        match etcd_binary(args.etcd.as_deref()) {
            None => {
                etcd_note = "etcd: not available (no etcd binary; scripts/bench.sh installs etcd-server)".into();
                None
            }
            Some(bin) => {
                eprintln!("starting 3 etcd members ({})", bin.display());
                match EtcdCluster::start(&bin, &dir.join("etcd"), 3).await {
                    Ok(c) => {
                        etcd_note = c.version.clone();
                        Some(c)
                    }
                    Err(e) => {
                        etcd_note = format!("etcd: not available ({e:#})");
                        None
                    }
                }
            }
        }
    };
    eprintln!("etcd: {etcd_note}");

    let mut rows = Vec::new();
    for range in &args.ranges {
        let strict = range == "strict";
        let r = range_size(range);
        for &clients in &args.clients {
            eprintln!("range {range}, {clients} client(s):");
            if args.wants("baseline") {
                rows.push(
                    measure(&args, None, "baseline", "in-process baseline", range, clients, false, |_| async {
                        let b = Baseline::start(r);
                        Ok(((0..clients).map(|_| b.client()).collect::<Vec<_>>(), None))
                    })
                    .await,
                );
            }
            if !strict && args.wants("lease") {
                let name = seq_name("lease", range, clients);
                rows.push(
                    measure(&args, Some(&ordo), "lease", "ordo-client Sequence", range, clients, true, |_| {
                        let name = name.clone();
                        let ordo = &ordo;
                        async move {
                            let cs = ordo.clients(clients).await?;
                            Ok((cs.iter().map(|c| Lease(c.sequence(&name, r))).collect::<Vec<_>>(), None))
                        }
                    })
                    .await,
                );
            }
            let next_key = if strict { "strict" } else { "next" };
            if args.wants(next_key) {
                let name = seq_name(next_key, range, clients);
                let system = if strict { "ordo strict Next" } else { "ordo Next per ID" };
                rows.push(
                    measure(&args, Some(&ordo), next_key, system, range, clients, true, |_| {
                        let name = name.clone();
                        let ordo = &ordo;
                        async move { Ok((ordo.next_calls(clients, &name, strict).await?, None)) }
                    })
                    .await,
                );
            }
            if args.wants("etcd") {
                match &etcd {
                    Some(e) => {
                        rows.push(
                            measure(&args, None, "etcd", "etcd CAS", range, clients, true, |rep| {
                                let key = format!("{}-{rep}", seq_name("etcd", range, clients));
                                async move {
                                    e.init_counter(&key).await?;
                                    let mut srcs = Vec::new();
                                    for i in 0..clients {
                                        srcs.push(EtcdCas::connect(&e.clients[i % e.clients.len()], &key, r).await?);
                                    }
                                    Ok((srcs, None))
                                }
                            })
                            .await,
                        );
                    }
                    None => rows.push(Row::not_measured(
                        "etcd",
                        "etcd CAS",
                        range,
                        clients,
                        vec![],
                        if etcd_note.starts_with("etcd: not available") {
                            "etcd: not available".into()
                        } else {
                            etcd_note.clone()
                        },
                    )),
                }
            }
        }
    }

    if args.wants("socket") {
        eprintln!("one Next vs one Ping on the same socket:");
        for &clients in &args.clients {
            let name = seq_name("sock", "default", clients);
            rows.push(
                measure(&args, Some(&ordo), "sock-next", "Next (buffered, count 1)", "-", clients, true, |_| {
                    let name = name.clone();
                    let ordo = &ordo;
                    async move { Ok((ordo.next_calls(clients, &name, false).await?, None)) }
                })
                .await,
            );
            rows.push(
                measure(&args, Some(&ordo), "sock-ping", "Ping (no-op)", "-", clients, false, |_| {
                    let ordo = &ordo;
                    async move {
                        let cs = ordo.clients(clients).await?;
                        Ok((cs.into_iter().map(PingCall).collect::<Vec<_>>(), None))
                    }
                })
                .await,
            );
        }
    }

    let mut report = Report {
        meta: serde_json::json!({
            "started": started,
            "cpu": cpu_model(),
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "cell_secs": args.secs,
            "warmup_ms": args.warmup_ms,
            "max_ids": args.max_ids,
            "repeat": args.repeat,
            "sidecar": sidecar.display().to_string(),
            "spread": args.spread,
            "git": git_revision(),
            "sidecar_range": args.sidecar_range,
            "etcd": etcd_note,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
        }),
        rows,
        ratios: Vec::new(),
    };
    report.compute_ratios();
    drop(etcd);
    drop(ordo);

    let md = report.markdown();
    println!("{md}");
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(args.out.join("sequencer.md"), &md)?;
    std::fs::write(args.out.join("sequencer.json"), serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(args.out.join("sequencer.svg"), report.svg())?;
    eprintln!(
        "wrote {0}/sequencer.md, {0}/sequencer.json, {0}/sequencer.svg{1}",
        args.out.display(),
        if args.keep { format!("; cluster data and logs kept in {}", dir.display()) } else { String::new() }
    );
    Ok(())
}
