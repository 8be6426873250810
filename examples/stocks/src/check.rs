//! The checker: regenerates the trade stream, replays it serially, reads every partition's log
//! stream back, replays it, and compares: the final state of every symbol must equal the serial
//! replay's (no trade lost, none applied twice). Also checks the sequencer stamps the log holds:
//! unique, and increasing within each delta (one owner stamps a batch from one sidecar).

use std::collections::HashSet;

use anyhow::Result;
use ordo_client::Client;
use serde::Serialize;

use crate::model::{generate, key_of, replay, serial, stream_of, Params, Record};

/// What the checker found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Trades in the stream.
    pub trades: u64,
    /// Partitions.
    pub partitions: u32,
    /// Symbols that traded.
    pub symbols: usize,
    /// `Open` records read: owners that took a partition over (in the retained log).
    pub takeovers: usize,
    /// Stamps checked.
    pub stamps: usize,
    /// Everything that differs; empty when the check passed.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// The one line the demo prints.
    pub fn line(&self) -> String {
        if self.problems.is_empty() {
            format!(
                "stocks check: OK: every one of {} symbols in {} partitions equals the serial replay of {} trades \
                 (no trade lost, none applied twice); {} sequencer stamps in the retained log, all unique",
                self.symbols, self.partitions, self.trades, self.stamps
            )
        } else {
            format!(
                "stocks check: FAILED: {} problems; first: {}",
                self.problems.len(),
                self.problems.iter().take(5).cloned().collect::<Vec<_>>().join(" | ")
            )
        }
    }
}

/// Reads a whole stream's retained records.
pub async fn read_records(client: &Client, stream: &str) -> Result<Vec<Record>> {
    let tail = client.tail(stream).await?;
    let mut from = tail.first_lsn.max(1);
    let mut out = Vec::new();
    while from <= tail.last_lsn {
        let got = client.read(stream, from, 1000).await?;
        let Some(last) = got.last().map(|e| e.lsn) else { break };
        for e in got {
            out.push(Record::decode(&e.data).map_err(|why| anyhow::anyhow!("{stream} LSN {}: {why}", e.lsn))?);
        }
        from = last + 1;
    }
    Ok(out)
}

/// Checks the logs against the serial replay of `params`' trades.
pub async fn run(socket: &str, params: Params) -> Result<CheckReport> {
    let client = Client::connect(socket).await?;
    let trades = generate(&params);
    let expected = serial(&trades, params.partitions);
    let mut report = CheckReport {
        trades: params.trades,
        partitions: params.partitions,
        symbols: expected.iter().map(|p| p.symbols.len()).sum(),
        takeovers: 0,
        stamps: 0,
        problems: Vec::new(),
    };
    let mut seen = HashSet::new();
    for (p, want) in expected.iter().enumerate() {
        let stream = stream_of(&key_of(p as u32));
        let records = match read_records(&client, &stream).await {
            Ok(r) => r,
            Err(e) => {
                report.problems.push(format!("{stream}: {e}"));
                continue;
            }
        };
        for r in &records {
            match r {
                Record::Open { .. } => report.takeovers += 1,
                Record::Delta { from, applied, stamps, .. } => {
                    if stamps.len() as u64 != applied + 1 - from {
                        report.problems.push(format!("{stream}: delta {from}..={applied} has {} stamps", stamps.len()));
                    }
                    if stamps.windows(2).any(|w| w[0] >= w[1]) {
                        report.problems.push(format!("{stream}: stamps of delta {from}..={applied} do not increase"));
                    }
                    for s in stamps {
                        report.stamps += 1;
                        if !seen.insert(*s) {
                            report.problems.push(format!("{stream}: stamp {s} was handed out twice"));
                        }
                    }
                }
                Record::Snapshot { .. } => {}
            }
        }
        let got = match replay(&records) {
            Ok(s) => s,
            Err(why) => {
                report.problems.push(format!("{stream}: {why}"));
                continue;
            }
        };
        if got.applied != want.applied {
            report
                .problems
                .push(format!("{stream}: the log holds trades 1..={}, the stream has {}", got.applied, want.applied));
        }
        let (g, w) = (got.market(), want.market());
        for (sym, ws) in &w {
            match g.get(sym) {
                Some(gs) if gs == ws => {}
                Some(gs) => report.problems.push(format!(
                    "{sym}: (last price, volume, notional, trades) is {gs:?} in the log, {ws:?} in the serial replay"
                )),
                None => report.problems.push(format!("{sym}: missing from the log")),
            }
        }
        for sym in g.keys().filter(|s| !w.contains_key(*s)) {
            report.problems.push(format!("{sym}: in the log of {stream} but never traded there"));
        }
    }
    Ok(report)
}
