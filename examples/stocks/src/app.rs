//! The app process: a member of the `stocks` divider that owns some partitions, applies their
//! trades in memory and makes them durable in the partitions' log streams.
//!
//! # What each primitive does here
//!
//! - **Divider**: the app joins with its trade address; `Start{key, token}` gives it a partition
//!   and a fencing token, `Stop` takes it away (the app appends what it has, then confirms).
//! - **Log streams**: partition `stock-N` has stream `stocks-stock-N`. Every append is *fenced*
//!   with `(divider, key, token)`: once a newer owner appended, an older owner's append is
//!   refused (`ClientError::Fenced`), even when its app never heard that it lost the key (it
//!   was paused, or its Stop timed out).
//! - **Sequencer**: every trade is stamped with an ID of sequence `stocks` (one buffered range
//!   per batch of trades); the stamps go into the log with the deltas.
//!
//! # Why no trade is lost or applied twice
//!
//! Trades of a partition carry a dense position `pseq`; an owner applies them in that order,
//! ignores positions it already applied, and refuses a gap. It acknowledges a trade to the
//! sender only once a delta covering it is in the log (acknowledged by the stream's quorum).
//! Every `merge_ticks` trades (or `flush_ms` after the first unflushed one) it appends the delta:
//! the new state of the symbols touched and the trades' range `from..=applied`.
//!
//! A new owner (token `T`) first appends `Open{T}` fenced with `T`, then replays the log up to
//! that entry. Every append of an earlier owner either precedes `Open` in the log (and is
//! replayed) or is refused by the fence, so the replayed state holds every acknowledged trade,
//! and no earlier owner can append a delta computed from a state the new owner never saw. The
//! sender resends unacknowledged trades to the new owner, which skips those the log already has.
//! The checker (`stocks check`) compares the logs' final state with a serial replay.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use ordo_client::divider::{DividerEvent, StopReason};
use ordo_client::{AppenderOptions, Fence, LogStreamAppender};
use ordo_client::{Client, ClientError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::model::{partition_of_key, replay, stream_of, Applied, PartitionState, Record, Trade};

/// Sequence the trades are stamped from.
pub const STAMP_SEQUENCE: &str = "stocks";

/// Settings of an app process.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Sidecar socket.
    pub socket: String,
    /// Divider name.
    pub divider: String,
    /// Member id.
    pub member: String,
    /// Affinity.
    pub affinity: i64,
    /// Where trades arrive (`127.0.0.1:0` picks a port).
    pub listen: SocketAddr,
    /// The address others reach this app at (default: the listening address).
    pub advertise: Option<String>,
    /// Trades applied between two appends of a partition's delta.
    pub merge_ticks: u64,
    /// Longest wait of an applied trade before its delta is appended anyway.
    pub flush: Duration,
    /// Deltas between snapshots (after each snapshot the log is trimmed before it).
    pub snapshot_every: u32,
    /// Where to write the staleness samples at exit (JSON), if anywhere.
    pub stats: Option<std::path::PathBuf>,
    /// Fence appends with the key's token (off only to show what fencing prevents).
    pub fenced: bool,
}

/// A batch of trades of one partition, as the generator sends it (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TradeBatch {
    /// Partition.
    pub partition: u32,
    /// Its trades, in `pseq` order.
    pub trades: Vec<Trade>,
}

/// The answer to a [`TradeBatch`] (one JSON line, in request order per connection).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchReply {
    /// Partition.
    pub partition: u32,
    /// `ok` (every trade of the batch is durable), `not_owner`, or `gap`.
    pub status: String,
    /// The last trade (`pseq`) the owner applied (`ok`: durable).
    pub applied: u64,
}

impl BatchReply {
    fn new(partition: u32, status: &str, applied: u64) -> Self {
        Self { partition, status: status.into(), applied }
    }
}

enum PartCmd {
    Trades(Vec<Trade>, oneshot::Sender<BatchReply>),
    /// Append what is applied, then answer (`true`: appended, the stop can be confirmed).
    Stop(oneshot::Sender<bool>),
}

type Parts = Arc<Mutex<HashMap<u32, mpsc::Sender<PartCmd>>>>;

/// Trades applied in memory and not yet in the log, over all partitions (sampled for staleness).
static UNMERGED: AtomicI64 = AtomicI64::new(0);
/// Trades applied in memory, ever (the sampler skips idle moments).
static APPLIED: AtomicI64 = AtomicI64::new(0);

/// Runs an app process until SIGTERM/SIGINT or the end of its membership.
pub async fn run(cfg: AppConfig) -> Result<()> {
    let client = Client::connect(&cfg.socket).await.context("connecting to the sidecar")?;
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let address = match &cfg.advertise {
        Some(a) => a.clone(),
        None => listener.local_addr()?.to_string(),
    };
    let parts: Parts = Arc::default();
    tokio::spawn(serve(listener, parts.clone()));
    let sampler = tokio::spawn(sample_unmerged());
    let divider = client.divider(&cfg.divider);
    let (confirm_tx, mut confirm_rx) = mpsc::unbounded_channel::<(String, u64)>();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    'session: loop {
        let mut me = join(&divider, &cfg, &address).await?;
        eprintln!("{}: member of divider {:?}, trades at {address}", cfg.member, cfg.divider);
        loop {
            tokio::select! {
                ev = me.next() => {
                    let Some(ev) = ev else { break 'session };
                    match ev {
                        Ok(DividerEvent::Start { key, token }) => {
                            let Some(p) = partition_of_key(&key) else {
                                eprintln!("{}: ignoring key {key:?} (not stock-N)", cfg.member);
                                continue;
                            };
                            let tx = spawn_partition(&client, &cfg, key.clone(), token);
                            parts.lock().expect("parts").insert(p, tx);
                            eprintln!("{}: start {key} token {token}", cfg.member);
                        }
                        Ok(DividerEvent::Stop { key, token, reason }) => {
                            let Some(p) = partition_of_key(&key) else { continue };
                            let tx = parts.lock().expect("parts").remove(&p);
                            eprintln!("{}: stop {key} token {token} ({reason:?})", cfg.member);
                            let dead = matches!(reason, StopReason::Timeout | StopReason::LeaseLost);
                            // Dropping the sender ends the partition's task; a live stop first
                            // appends what was applied, then confirms.
                            if let (Some(tx), false) = (tx, dead) {
                                let confirm = confirm_tx.clone();
                                tokio::spawn(async move {
                                    let (done, appended) = oneshot::channel();
                                    if tx.send(PartCmd::Stop(done)).await.is_ok() {
                                        let _ = appended.await;
                                    }
                                    let _ = confirm.send((key, token));
                                });
                            }
                        }
                        Ok(DividerEvent::LeaseExpired { keys }) => {
                            // No renewal reached this app in time (it or its sidecar was paused,
                            // or the sidecar is gone): every token is dead. Drop the partitions
                            // and join again, so that the divider and this app agree afresh.
                            eprintln!("{}: lease expired: dropping {} partitions and joining again", cfg.member, keys.len());
                            parts.lock().expect("parts").clear();
                            continue 'session;
                        }
                        Ok(DividerEvent::Joined { session, .. }) => eprintln!("{}: joined, session {session}", cfg.member),
                        Err(e) => {
                            eprintln!("{}: the divider session ended: {e}; joining again", cfg.member);
                            parts.lock().expect("parts").clear();
                            continue 'session;
                        }
                    }
                }
                Some((key, token)) = confirm_rx.recv() => {
                    if let Err(e) = me.confirm_stop(&key, token).await {
                        eprintln!("{}: confirming the stop of {key}: {e}", cfg.member);
                    }
                }
                _ = term.recv() => break 'session,
                _ = int.recv() => break 'session,
            }
        }
    }
    parts.lock().expect("parts").clear();
    sampler.abort();
    if let Some(path) = &cfg.stats {
        let samples = SAMPLES.lock().expect("samples").clone();
        std::fs::write(path, serde_json::to_vec(&staleness(&samples))?)?;
    }
    Ok(())
}

/// Joins, retrying for a minute while an earlier session of the same member id is still live
/// or the sidecar does not answer.
async fn join(
    divider: &ordo_client::divider::Divider,
    cfg: &AppConfig,
    address: &str,
) -> Result<ordo_client::divider::Membership> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let err = match divider.join(&cfg.member, Some(cfg.affinity), address).await {
            Ok(m) => return Ok(m),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            bail!("joining divider {:?} as {:?}: {err}", cfg.divider, cfg.member);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Serves generator connections: one JSON line per batch, answers in request order.
async fn serve(listener: TcpListener, parts: Parts) {
    while let Ok((conn, _)) = listener.accept().await {
        let _ = conn.set_nodelay(true);
        tokio::spawn(connection(conn, parts.clone()));
    }
}

async fn connection(conn: TcpStream, parts: Parts) {
    let (r, mut w) = conn.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut replies = FuturesOrdered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if reading && replies.len() < 64 => {
                let Ok(Some(line)) = line else { reading = false; continue };
                let batch: TradeBatch = match serde_json::from_str(&line) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = w.write_all(format!("{{\"error\":\"bad batch: {e}\"}}\n").as_bytes()).await;
                        return;
                    }
                };
                let p = batch.partition;
                let tx = parts.lock().expect("parts").get(&p).cloned();
                let (reply, rx) = oneshot::channel();
                let sent = match tx {
                    Some(tx) => tx.send(PartCmd::Trades(batch.trades, reply)).await.is_ok(),
                    None => false,
                };
                replies.push_back(async move {
                    if sent { rx.await.unwrap_or_else(|_| BatchReply::new(p, "not_owner", 0)) } else { BatchReply::new(p, "not_owner", 0) }
                });
            }
            Some(reply) = replies.next(), if !replies.is_empty() => {
                let mut line = serde_json::to_vec(&reply).expect("reply serializes");
                line.push(b'\n');
                if w.write_all(&line).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

fn spawn_partition(client: &Client, cfg: &AppConfig, key: String, token: u64) -> mpsc::Sender<PartCmd> {
    let (tx, rx) = mpsc::channel(256);
    let part = Partition::new(client.clone(), cfg, key, token);
    tokio::spawn(part.run(rx));
    tx
}

/// One owned partition.
struct Partition {
    client: Client,
    member: String,
    divider: String,
    key: String,
    token: u64,
    partition: u32,
    merge_ticks: u64,
    flush: Duration,
    snapshot_every: u32,
    fenced: bool,
    state: PartitionState,
    /// Last trade in the log.
    durable: u64,
    touched: BTreeSet<String>,
    stamps: Vec<u64>,
    waiters: Vec<(u64, oneshot::Sender<BatchReply>)>,
    deltas: u32,
    unflushed_since: Option<Instant>,
}

/// Why a partition's task ended.
#[derive(Debug)]
enum Ended {
    /// A newer owner appended: this owner lost the key.
    Fenced(String),
    /// The log or sequencer failed past the client's retries.
    Failed(String),
}

fn ended(e: ClientError) -> Ended {
    if e.is_fenced() {
        Ended::Fenced(e.to_string())
    } else {
        Ended::Failed(e.to_string())
    }
}

impl Partition {
    fn new(client: Client, cfg: &AppConfig, key: String, token: u64) -> Self {
        Self {
            client,
            member: cfg.member.clone(),
            divider: cfg.divider.clone(),
            partition: partition_of_key(&key).unwrap_or(0),
            key,
            token,
            merge_ticks: cfg.merge_ticks.max(1),
            flush: cfg.flush,
            snapshot_every: cfg.snapshot_every.max(1),
            fenced: cfg.fenced,
            state: PartitionState::default(),
            durable: 0,
            touched: BTreeSet::new(),
            stamps: Vec::new(),
            waiters: Vec::new(),
            deltas: 0,
            unflushed_since: None,
        }
    }

    fn appender(&self) -> LogStreamAppender {
        let opts = AppenderOptions {
            fence: self.fenced.then(|| Fence {
                divider: self.divider.clone(),
                key: self.key.clone(),
                token: self.token,
            }),
            retry_deadline: Duration::from_secs(10),
            ..Default::default()
        };
        self.client.appender(&stream_of(&self.key), opts)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<PartCmd>) {
        let log = self.appender();
        let outcome = self.serve(&log, &mut rx).await;
        UNMERGED.fetch_sub((self.state.applied - self.durable) as i64, Ordering::Relaxed);
        match outcome {
            Ok(()) => {}
            Err(Ended::Fenced(why)) => eprintln!("{}: {} lost to a newer owner: {why}", self.member, self.key),
            Err(Ended::Failed(why)) => eprintln!("{}: {} failed: {why}", self.member, self.key),
        }
        for (_, w) in self.waiters.drain(..) {
            let _ = w.send(BatchReply::new(self.partition, "not_owner", self.durable));
        }
        // Whatever is still queued goes back to the sender as "not the owner".
        rx.close();
        while let Some(cmd) = rx.recv().await {
            match cmd {
                PartCmd::Trades(_, r) => {
                    let _ = r.send(BatchReply::new(self.partition, "not_owner", self.durable));
                }
                PartCmd::Stop(done) => {
                    let _ = done.send(false);
                }
            }
        }
        log.close().await;
    }

    /// Takes the partition over, then applies trades until stopped.
    async fn serve(&mut self, log: &LogStreamAppender, rx: &mut mpsc::Receiver<PartCmd>) -> Result<(), Ended> {
        self.open(log).await?;
        let mut tick = tokio::time::interval(self.flush.max(Duration::from_millis(1)));
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => return Ok(()),
                    Some(PartCmd::Trades(trades, reply)) => self.apply(log, trades, reply).await?,
                    Some(PartCmd::Stop(done)) => {
                        let r = self.append_delta(log).await;
                        let _ = done.send(r.is_ok());
                        return r;
                    }
                },
                _ = tick.tick() => {
                    if self.unflushed_since.is_some_and(|t| t.elapsed() >= self.flush) {
                        self.append_delta(log).await?;
                    }
                }
            }
        }
    }

    /// `Open` (fenced), replay up to it, then a snapshot (and trim before it).
    async fn open(&mut self, log: &LogStreamAppender) -> Result<(), Ended> {
        let stream = stream_of(&self.key);
        self.client.create_stream(&stream, 0, 0).await.map_err(ended)?;
        let open = Record::Open { member: self.member.clone(), token: self.token };
        let lsn = *log.append(vec![open.encode()]).await.map_err(ended)?.last().unwrap_or(&0);
        let mut records = Vec::new();
        let mut from = self.client.tail(&stream).await.map_err(ended)?.first_lsn;
        while from <= lsn {
            let got = self.client.read(&stream, from, 1000).await.map_err(ended)?;
            let Some(last) = got.last().map(|e| e.lsn) else {
                return Err(Ended::Failed(format!("{stream}: no entry at {from} below the Open at {lsn}")));
            };
            for e in got.into_iter().filter(|e| e.lsn <= lsn) {
                records.push(
                    Record::decode(&e.data).map_err(|why| Ended::Failed(format!("{stream} LSN {}: {why}", e.lsn)))?,
                );
            }
            from = last + 1;
        }
        self.state = replay(&records).map_err(|why| Ended::Failed(format!("{stream}: {why}")))?;
        self.durable = self.state.applied;
        self.snapshot(log).await
    }

    async fn snapshot(&mut self, log: &LogStreamAppender) -> Result<(), Ended> {
        let snap = Record::Snapshot { state: self.state.clone() };
        let lsn = *log.append(vec![snap.encode()]).await.map_err(ended)?.last().unwrap_or(&0);
        self.client.trim(&stream_of(&self.key), lsn).await.map_err(ended)?;
        self.deltas = 0;
        Ok(())
    }

    async fn apply(
        &mut self,
        log: &LogStreamAppender,
        trades: Vec<Trade>,
        reply: oneshot::Sender<BatchReply>,
    ) -> Result<(), Ended> {
        let Some(need) = trades.last().map(|t| t.pseq) else {
            let _ = reply.send(BatchReply::new(self.partition, "ok", self.durable));
            return Ok(());
        };
        let fresh = trades.iter().filter(|t| t.pseq > self.state.applied).count() as u64;
        let stamps =
            if fresh > 0 { self.client.next(STAMP_SEQUENCE, fresh, false).await.map_err(ended)? } else { 0..0 };
        let mut stamps = stamps.into_iter();
        for t in &trades {
            if t.partition != self.partition {
                let _ = reply.send(BatchReply::new(self.partition, "gap", self.state.applied));
                return Ok(());
            }
            if t.pseq <= self.state.applied {
                continue;
            }
            let stamp = stamps.next().unwrap_or(0);
            match self.state.apply(t, stamp) {
                Applied::Yes => {
                    self.touched.insert(t.symbol.clone());
                    self.stamps.push(stamp);
                    UNMERGED.fetch_add(1, Ordering::Relaxed);
                    APPLIED.fetch_add(1, Ordering::Relaxed);
                    self.unflushed_since.get_or_insert_with(Instant::now);
                }
                Applied::Duplicate => {}
                Applied::Gap => {
                    let _ = reply.send(BatchReply::new(self.partition, "gap", self.state.applied));
                    return Ok(());
                }
            }
        }
        if need <= self.durable {
            let _ = reply.send(BatchReply::new(self.partition, "ok", self.durable));
        } else {
            self.waiters.push((need, reply));
        }
        if self.state.applied - self.durable >= self.merge_ticks {
            self.append_delta(log).await?;
        }
        Ok(())
    }

    /// Appends the delta of the trades applied since the last append, then answers the batches
    /// it made durable.
    async fn append_delta(&mut self, log: &LogStreamAppender) -> Result<(), Ended> {
        if self.state.applied == self.durable {
            return Ok(());
        }
        let symbols = self.touched.iter().map(|s| (s.clone(), self.state.symbols[s].clone())).collect();
        let delta = Record::Delta {
            from: self.durable + 1,
            applied: self.state.applied,
            symbols,
            stamps: std::mem::take(&mut self.stamps),
        };
        log.append(vec![delta.encode()]).await.map_err(ended)?;
        UNMERGED.fetch_sub((self.state.applied - self.durable) as i64, Ordering::Relaxed);
        self.durable = self.state.applied;
        self.touched.clear();
        self.unflushed_since = None;
        let durable = self.durable;
        let p = self.partition;
        let (done, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.waiters).into_iter().partition(|(n, _)| *n <= durable);
        self.waiters = keep;
        for (_, w) in done {
            let _ = w.send(BatchReply::new(p, "ok", durable));
        }
        self.deltas += 1;
        if self.deltas >= self.snapshot_every {
            self.snapshot(log).await?;
        }
        Ok(())
    }
}

static SAMPLES: Mutex<Vec<i64>> = Mutex::new(Vec::new());

/// Samples the trades applied but not yet in the log every 10 ms, while trades flow.
async fn sample_unmerged() {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut seen = 0;
    loop {
        tick.tick().await;
        let applied = APPLIED.load(Ordering::Relaxed);
        if applied == seen {
            continue;
        }
        seen = applied;
        let v = UNMERGED.load(Ordering::Relaxed).max(0);
        let mut s = SAMPLES.lock().expect("samples");
        if s.len() < 1_000_000 {
            s.push(v);
        }
    }
}

/// Mean and p99 of staleness samples (trades applied in memory, not yet in the log).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Staleness {
    /// Samples taken.
    pub samples: usize,
    /// Mean.
    pub mean: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Summarises samples.
pub fn staleness(samples: &[i64]) -> Staleness {
    if samples.is_empty() {
        return Staleness::default();
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let mean = s.iter().sum::<i64>() as f64 / s.len() as f64;
    let p99 = s[((s.len() - 1) as f64 * 0.99) as usize] as f64;
    Staleness { samples: s.len(), mean, p99 }
}
