//! `stocks`: the example app's processes (see the crate docs and `examples/stocks/README.md`).
//!
//! - `stocks setup`: adds the partitions (`stock-0` .. `stock-{N-1}`) to the divider.
//! - `stocks app`: an app process (a divider member owning partitions).
//! - `stocks generate`: sends the trade stream to the owners; prints a JSON report.
//! - `stocks check`: compares the logs with a serial replay; prints one line, exit 1 on a mismatch.
//! - `stocks local`: the in-process comparison of the seed (serial, mutex, bad, merged).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ordo_stocks::model::{key_of, Params};
use ordo_stocks::{app, check, generator, local};

#[derive(Parser)]
#[command(name = "stocks", about = "Ordo's example app: stock partitions on the divider, sequencer and log streams")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct Conn {
    /// Sidecar socket (default $ORDO_SOCKET).
    #[arg(long, env = "ORDO_SOCKET")]
    socket: String,
    /// Divider name.
    #[arg(long, default_value = "stocks")]
    divider: String,
}

#[derive(Args, Clone, Copy)]
struct Stream {
    /// Seed of the trade stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Trades.
    #[arg(long, default_value_t = 20_000)]
    trades: u64,
    /// Partitions.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Symbols.
    #[arg(long, default_value_t = 200)]
    symbols: u32,
}

impl Stream {
    fn params(self) -> Params {
        Params { seed: self.seed, trades: self.trades, partitions: self.partitions, symbols: self.symbols }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Add the partitions to the divider (idempotent).
    Setup {
        #[command(flatten)]
        conn: Conn,
        /// Partitions.
        #[arg(long, default_value_t = 12)]
        partitions: u32,
    },
    /// Run an app process.
    App {
        #[command(flatten)]
        conn: Conn,
        /// Member id (default: $POD_NAME, else $HOSTNAME).
        #[arg(long, env = "POD_NAME")]
        member: Option<String>,
        /// Affinity (share of the partitions).
        #[arg(long, default_value_t = 1)]
        affinity: i64,
        /// Where trades arrive.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The address the generator reaches this app at (default: the listening address), e.g.
        /// the pod IP and port.
        #[arg(long, env = "STOCKS_ADVERTISE")]
        advertise: Option<String>,
        /// Trades applied between two delta appends of a partition.
        #[arg(long, default_value_t = 10)]
        merge_ticks: u64,
        /// Longest wait (ms) of an applied trade before its delta is appended anyway.
        #[arg(long, default_value_t = 20)]
        flush_ms: u64,
        /// Deltas between snapshots.
        #[arg(long, default_value_t = 50)]
        snapshot_every: u32,
        /// Write staleness samples (JSON) here at exit.
        #[arg(long)]
        stats: Option<PathBuf>,
        /// Append without fencing tokens (only to show what fencing prevents: the checker fails).
        #[arg(long)]
        no_fence: bool,
    },
    /// Send the trade stream to the partitions' owners.
    Generate {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        stream: Stream,
        /// Trades per batch.
        #[arg(long, default_value_t = 20)]
        batch: usize,
        /// Batches in flight per partition.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        deadline_secs: u64,
    },
    /// The seed's in-process comparison (serial, mutex, bad, merged every k ticks): JSON rows.
    Local {
        #[command(flatten)]
        stream: Stream,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Merge intervals (ticks), comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = local::DEFAULT_MERGE_TICKS)]
        merge_ticks: Vec<u64>,
        /// Simulated processing per trade (ns).
        #[arg(long, default_value_t = local::DEFAULT_WORK_NS)]
        work_ns: u64,
    },
    /// One benchmark row of an Ordo run, from its generator report and the apps' stats files.
    OrdoRow {
        /// The generator's JSON report.
        #[arg(long)]
        generator: PathBuf,
        /// The apps' staleness files.
        #[arg(long, value_delimiter = ',')]
        stats: Vec<PathBuf>,
        /// App processes.
        #[arg(long)]
        processes: usize,
        /// Merge ticks of the apps.
        #[arg(long)]
        merge_ticks: u64,
        /// Whether the checker passed.
        #[arg(long)]
        correct: bool,
    },
    /// Renders JSON rows (files of arrays or single rows) as a Markdown table and an SVG plot.
    Report {
        /// Row files.
        rows: Vec<PathBuf>,
        /// Output directory (stocks-bench.md, stocks-bench.svg).
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare the logs with a serial replay of the same trade stream.
    Check {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        stream: Stream,
        /// Print the report as JSON too.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup { conn, partitions } => {
            let client = ordo_client::Client::connect(&conn.socket).await?;
            let keys: Vec<String> = (0..partitions).map(key_of).collect();
            let added = client.divider(&conn.divider).add_keys(keys).await?;
            println!("divider {:?}: {partitions} partitions ({added} added)", conn.divider);
        }
        Cmd::App {
            conn,
            member,
            affinity,
            listen,
            advertise,
            merge_ticks,
            flush_ms,
            snapshot_every,
            stats,
            no_fence,
        } => {
            let member =
                member.or_else(|| std::env::var("HOSTNAME").ok()).context("no --member, $POD_NAME or $HOSTNAME")?;
            app::run(app::AppConfig {
                socket: conn.socket,
                divider: conn.divider,
                member,
                affinity,
                listen,
                advertise,
                merge_ticks,
                flush: Duration::from_millis(flush_ms),
                snapshot_every,
                stats,
                fenced: !no_fence,
            })
            .await?;
        }
        Cmd::Generate { conn, stream, batch, window, deadline_secs } => {
            let report = generator::run(generator::GenConfig {
                socket: conn.socket,
                divider: conn.divider,
                params: stream.params(),
                batch,
                window,
                deadline: Duration::from_secs(deadline_secs),
            })
            .await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Cmd::Local { stream, workers, merge_ticks, work_ns } => {
            let opts = local::LocalOptions {
                params: stream.params(),
                workers,
                merge_ticks,
                samples: local::DEFAULT_SAMPLES,
                work_ns,
            };
            let rows = tokio::task::spawn_blocking(move || local::run_all(&opts)).await?;
            println!("{}", serde_json::to_string(&rows)?);
        }
        Cmd::OrdoRow { generator, stats, processes, merge_ticks, correct } => {
            let g: serde_json::Value = serde_json::from_slice(&std::fs::read(&generator)?)?;
            let num = |k: &str| g.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
            // Staleness of the whole app set: the apps' means add up (each samples its own
            // unmerged trades); the p99 is the largest app's, a lower bound of the set's.
            let (mut mean, mut p99) = (0.0, 0.0f64);
            for f in &stats {
                let s: app::Staleness = serde_json::from_slice(&std::fs::read(f)?)?;
                mean += s.mean;
                p99 = p99.max(s.p99);
            }
            let row = local::Row {
                mode: "ordo".into(),
                workers: processes,
                merge_ticks: Some(merge_ticks),
                trades: num("trades") as u64,
                secs: num("secs"),
                trades_per_sec: num("trades_per_sec"),
                staleness_mean: mean,
                staleness_p99: p99,
                correct: Some(correct),
            };
            println!("{}", serde_json::to_string(&row)?);
        }
        Cmd::Report { rows, out } => {
            let mut all: Vec<local::Row> = Vec::new();
            for f in rows {
                let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    match serde_json::from_str::<Vec<local::Row>>(line) {
                        Ok(v) => all.extend(v),
                        Err(_) => {
                            all.push(serde_json::from_str(line).with_context(|| format!("a row in {}", f.display()))?)
                        }
                    }
                }
            }
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("stocks-bench.md"), local::table_markdown(&all))?;
            std::fs::write(out.join("stocks-bench.svg"), local::plot_svg(&all))?;
            print!("{}", local::table_markdown(&all));
        }
        Cmd::Check { conn, stream, json } => {
            let report = check::run(&conn.socket, stream.params()).await?;
            println!("{}", report.line());
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            if !report.problems.is_empty() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
