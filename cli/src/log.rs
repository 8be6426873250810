//! `ordoctl log`: log streams from the command line, with the JSON shapes scripts rely on
//! (`--output json`): `append` prints `{"stream", "lsns"}` (or, with `--stdin`,
//! `{"stream", "appended", "first_lsn", "last_lsn"}`), `read` prints
//! `{"stream", "entries": [{"lsn", "data": BASE64}]}`, `tail` prints
//! `{"stream", "first_lsn", "last_lsn"}`, `subscribe` prints one `{"lsn", "data"}` per line.

use std::io::BufRead;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use base64::Engine;
use clap::Subcommand;
use futures::StreamExt;
use ordo_client::{AppenderOptions, Client};
use serde_json::json;

/// `ordoctl log` subcommands.
#[derive(Subcommand)]
pub enum LogCmd {
    /// Create a stream (idempotent with the same settings).
    Create {
        /// Stream name.
        name: String,
        /// Replicas (default: the sidecar's default, capped at the member count).
        #[arg(long, default_value_t = 0)]
        replication_factor: u32,
        /// Replicas that must hold an entry before it is acknowledged.
        #[arg(long, default_value_t = 0)]
        ack_quorum: u32,
    },
    /// Append DATA... as one batch, or stdin's lines (one entry each) with --stdin.
    Append {
        /// Stream name.
        name: String,
        /// Entries of the batch.
        data: Vec<String>,
        /// Append one entry per line of standard input.
        #[arg(long)]
        stdin: bool,
        /// Entries per batch with --stdin.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Batches in flight with --stdin (1..=8).
        #[arg(long, default_value_t = 2)]
        pipeline: usize,
    },
    /// Read committed entries.
    Read {
        /// Stream name.
        name: String,
        /// First LSN (0: the first available).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most entries.
        #[arg(long, default_value_t = 100)]
        max: u32,
    },
    /// First available and last committed LSN.
    Tail {
        /// Stream name.
        name: String,
    },
    /// Print every committed entry from LSN on, then follow the stream until Ctrl-C.
    Subscribe {
        /// Stream name.
        name: String,
        /// First LSN (0: the first available).
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Make the entries below LSN unavailable.
    Trim {
        /// Stream name.
        name: String,
        /// First LSN to keep.
        #[arg(long)]
        before: u64,
    },
    /// Settings, replicas, primary and tail of a stream.
    Describe {
        /// Stream name.
        name: String,
    },
    /// Names of all streams.
    List,
    /// Move a stream to other replicas (e.g. onto members that joined); prints it as `describe`.
    Move {
        /// Stream name.
        name: String,
        /// The new replicas: member ids, comma-separated, as many as the replication factor.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<String>,
    },
}

/// What `append --stdin` appended.
#[derive(Debug, Clone, Default)]
struct Totals {
    appended: u64,
    first: u64,
    last: u64,
    error: Option<String>,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn info_json(i: &ordo_proto::v1::StreamInfo) -> serde_json::Value {
    json!({
        "stream": i.name,
        "replication_factor": i.replication_factor,
        "ack_quorum": i.ack_quorum,
        "replicas": i.replicas,
        "primary": i.primary,
        "epoch": i.epoch,
        "first_lsn": i.first_lsn,
        "last_lsn": i.last_lsn,
    })
}

/// Runs one `ordoctl log` command; `json` selects the JSON output.
pub async fn run(client: Client, cmd: LogCmd, json: bool) -> Result<()> {
    match cmd {
        LogCmd::Create { name, replication_factor, ack_quorum } => {
            let i = client.create_stream(&name, replication_factor, ack_quorum).await?;
            if json {
                println!("{}", info_json(&i));
            } else {
                println!(
                    "{}: replication factor {}, ack quorum {}, replicas {}",
                    i.name,
                    i.replication_factor,
                    i.ack_quorum,
                    i.replicas.join(",")
                );
            }
        }
        LogCmd::Append { name, data, stdin: false, .. } => {
            if data.is_empty() {
                bail!("give the entries to append, or --stdin");
            }
            let appender = client.appender(&name, AppenderOptions { pipeline: 1, ..Default::default() });
            let lsns = appender.append(data.into_iter().map(String::into_bytes).collect()).await;
            appender.close().await;
            let lsns = lsns?;
            if json {
                println!("{}", json!({"stream": name, "lsns": lsns}));
            } else {
                println!("appended {} entries to {name} at LSNs {:?}", lsns.len(), lsns);
            }
        }
        LogCmd::Append { name, stdin: true, batch, pipeline, data } => {
            if !data.is_empty() {
                bail!("--stdin takes no entries on the command line");
            }
            if batch == 0 {
                bail!("--batch must be at least 1");
            }
            let appender = client.appender(&name, AppenderOptions { pipeline, ..Default::default() });
            let totals: Arc<Mutex<Totals>> = Arc::default();
            let mut lines = std::io::stdin().lock().lines();
            loop {
                let chunk: Vec<Vec<u8>> = lines
                    .by_ref()
                    .take(batch)
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .map(String::into_bytes)
                    .collect();
                if chunk.is_empty() {
                    break;
                }
                let totals = totals.clone();
                appender
                    .append_batch(chunk, move |r| {
                        let mut t = totals.lock().expect("totals");
                        match r {
                            Ok(lsns) => {
                                t.appended += lsns.len() as u64;
                                if t.first == 0 {
                                    t.first = lsns.first().copied().unwrap_or(0);
                                }
                                t.last = t.last.max(lsns.last().copied().unwrap_or(0));
                            }
                            Err(e) => {
                                t.error.get_or_insert_with(|| e.to_string());
                            }
                        }
                    })
                    .await?;
            }
            appender.close().await;
            let Totals { appended, first, last, error: err } = totals.lock().expect("totals").clone();
            if json {
                println!("{}", json!({"stream": name, "appended": appended, "first_lsn": first, "last_lsn": last}));
            } else {
                println!("appended {appended} entries to {name} (LSNs {first}..={last})");
            }
            if let Some(e) = err {
                bail!("some batches failed: {e}");
            }
        }
        LogCmd::Read { name, from, max } => {
            let entries = client.read(&name, from, max).await?;
            if json {
                let e: Vec<_> = entries.iter().map(|e| json!({"lsn": e.lsn, "data": b64(&e.data)})).collect();
                println!("{}", json!({"stream": name, "entries": e}));
            } else {
                for e in entries {
                    println!("{}\t{}", e.lsn, String::from_utf8_lossy(&e.data));
                }
            }
        }
        LogCmd::Tail { name } => {
            let t = client.tail(&name).await?;
            if json {
                println!("{}", json!({"stream": name, "first_lsn": t.first_lsn, "last_lsn": t.last_lsn}));
            } else {
                println!("{name}: first LSN {}, last committed LSN {}", t.first_lsn, t.last_lsn);
            }
        }
        LogCmd::Subscribe { name, from } => {
            let mut entries = Box::pin(client.subscribe(&name, from).await?);
            while let Some(e) = entries.next().await {
                let e = e?;
                if json {
                    println!("{}", json!({"lsn": e.lsn, "data": b64(&e.data)}));
                } else {
                    println!("{}\t{}", e.lsn, String::from_utf8_lossy(&e.data));
                }
            }
        }
        LogCmd::Trim { name, before } => {
            let first = client.trim(&name, before).await?;
            if json {
                println!("{}", json!({"stream": name, "first_lsn": first}));
            } else {
                println!("{name}: first available LSN is now {first}");
            }
        }
        LogCmd::Describe { name } => print_info(&client.describe_stream(&name).await?, json),
        LogCmd::Move { name, replicas } => print_info(&client.move_stream(&name, &replicas).await?, json),
        LogCmd::List => {
            let names = client.list_streams().await?;
            if json {
                println!("{}", json!({"streams": names}));
            } else {
                for n in names {
                    println!("{n}");
                }
            }
        }
    }
    Ok(())
}

/// Prints a stream's settings, replicas, primary and tail.
fn print_info(i: &ordo_proto::v1::StreamInfo, json: bool) {
    if json {
        println!("{}", info_json(i));
    } else {
        println!(
            "{}: replication factor {}, ack quorum {}, replicas {}, primary {} (epoch {}), LSNs {}..={}",
            i.name,
            i.replication_factor,
            i.ack_quorum,
            i.replicas.join(","),
            if i.primary.is_empty() { "none yet" } else { &i.primary },
            i.epoch,
            i.first_lsn,
            i.last_lsn
        );
    }
}
