//! The trade generator: sends the trade stream of [`Params`] to the owners of its partitions,
//! routed by the divider (Wallaroo's partition function runs here: symbol -> partition; the
//! divider's `Lookup` says which app owns the partition and where it listens).
//!
//! Each partition has its own sender: it keeps up to `window` batches in flight on one TCP
//! connection to the owner and counts a trade as done only when the owner answers `ok` (the
//! trade is in the partition's log). On `not_owner`, `gap` or a broken connection it looks the
//! owner up again and resends everything not yet acknowledged, from the first such trade: the
//! owner skips what its log already holds. Bounded by a deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use ordo_client::divider::Divider;
use ordo_client::Client;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::app::{BatchReply, TradeBatch};
use crate::model::{generate, key_of, Params, Trade};

/// Settings of a generator run.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Sidecar socket.
    pub socket: String,
    /// Divider name.
    pub divider: String,
    /// The trade stream.
    pub params: Params,
    /// Trades per batch.
    pub batch: usize,
    /// Batches in flight per partition.
    pub window: usize,
    /// Give up after this long.
    pub deadline: Duration,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct GenReport {
    /// Trades acknowledged.
    pub trades: u64,
    /// Seconds from the first send to the last acknowledgement.
    pub secs: f64,
    /// Trades per second.
    pub trades_per_sec: f64,
    /// Times a sender had to look its partition's owner up again.
    pub reroutes: u64,
    /// Owners answered `not_owner`.
    pub not_owner: u64,
}

/// Sends every trade and waits until each is acknowledged.
pub async fn run(cfg: GenConfig) -> Result<GenReport> {
    let client = Client::connect(&cfg.socket).await?;
    let divider = client.divider(&cfg.divider);
    let trades = generate(&cfg.params);
    let mut per_part: Vec<Vec<Trade>> = vec![Vec::new(); cfg.params.partitions as usize];
    for t in trades {
        per_part[t.partition as usize].push(t);
    }
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let until = started + cfg.deadline;
    let progress = tokio::spawn(report_progress(stats.clone(), cfg.params.trades));
    let senders: Vec<_> = per_part
        .into_iter()
        .enumerate()
        .map(|(p, trades)| {
            let s = Sender {
                partition: p as u32,
                trades,
                divider: divider.clone(),
                cfg: cfg.clone(),
                stats: stats.clone(),
            };
            tokio::spawn(s.run(until))
        })
        .collect();
    let mut failed = Vec::new();
    for (p, s) in senders.into_iter().enumerate() {
        match s.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("partition {p}: {e}")),
            Err(e) => failed.push(format!("partition {p}: {e}")),
        }
    }
    progress.abort();
    if !failed.is_empty() {
        bail!("not every trade was acknowledged: {}", failed.join("; "));
    }
    let secs = started.elapsed().as_secs_f64();
    let trades = stats.acked.load(Ordering::Relaxed);
    Ok(GenReport {
        trades,
        secs,
        trades_per_sec: trades as f64 / secs.max(1e-9),
        reroutes: stats.reroutes.load(Ordering::Relaxed),
        not_owner: stats.not_owner.load(Ordering::Relaxed),
    })
}

#[derive(Default)]
struct Stats {
    acked: AtomicU64,
    reroutes: AtomicU64,
    not_owner: AtomicU64,
}

async fn report_progress(stats: Arc<Stats>, total: u64) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("generator: {} of {total} trades acknowledged", stats.acked.load(Ordering::Relaxed));
    }
}

struct Sender {
    partition: u32,
    trades: Vec<Trade>,
    divider: Divider,
    cfg: GenConfig,
    stats: Arc<Stats>,
}

impl Sender {
    async fn run(self, until: Instant) -> Result<()> {
        let key = key_of(self.partition);
        // Trades 1..=acked (pseq) are acknowledged.
        let mut acked = 0u64;
        let total = self.trades.len() as u64;
        let mut backoff = Duration::from_millis(20);
        while acked < total {
            if Instant::now() > until {
                bail!("{key}: {acked} of {total} trades acknowledged at the deadline");
            }
            let owner = match self.divider.lookup(&key).await {
                Ok(l) if l.owner.is_some() && !l.address.is_empty() => l.address,
                _ => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            };
            match self.session(&owner, &mut acked, until).await {
                Ok(()) => backoff = Duration::from_millis(20),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
            if acked < total {
                self.stats.reroutes.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Sends from the first unacknowledged trade until done or the owner refuses.
    async fn session(&self, address: &str, acked: &mut u64, until: Instant) -> Result<()> {
        let conn = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(address)).await??;
        conn.set_nodelay(true)?;
        let (r, mut w) = conn.into_split();
        let mut lines = BufReader::new(r).lines();
        let mut next = *acked as usize; // index of the next trade to send
        let mut inflight = std::collections::VecDeque::new(); // last pseq of each batch sent
        let total = self.trades.len();
        loop {
            while inflight.len() < self.cfg.window.max(1) && next < total {
                let end = (next + self.cfg.batch.max(1)).min(total);
                let batch = TradeBatch { partition: self.partition, trades: self.trades[next..end].to_vec() };
                let mut line = serde_json::to_vec(&batch)?;
                line.push(b'\n');
                w.write_all(&line).await?;
                inflight.push_back(self.trades[end - 1].pseq);
                next = end;
            }
            if inflight.is_empty() {
                return Ok(());
            }
            let left = until.saturating_duration_since(Instant::now());
            // A paused owner keeps the connection open: after 5 s, ask the divider again.
            let line = tokio::time::timeout(left.min(Duration::from_secs(5)), lines.next_line()).await??;
            let Some(line) = line else { bail!("the owner closed the connection") };
            let reply: BatchReply = serde_json::from_str(&line)?;
            let last = inflight.pop_front().unwrap_or(0);
            if reply.status != "ok" {
                if reply.status == "not_owner" {
                    self.stats.not_owner.fetch_add(1, Ordering::Relaxed);
                }
                bail!("{}: {}", key_of(self.partition), reply.status);
            }
            if last > *acked {
                self.stats.acked.fetch_add(last - *acked, Ordering::Relaxed);
                *acked = last;
            }
        }
    }
}
