//! The real peers of the log benchmark, driven over their own wire protocols by minimal clients
//! written here (no client crates): a 3-node NATS JetStream cluster on loopback (R3 streams,
//! with `sync_interval: always` or the server's default), a Redis with `appendfsync always`
//! (pipelined `XADD`), and the disk's raw `fdatasync` rate.
//!
//! Every process listens on 127.0.0.1 only, lives in a temporary directory and is killed on drop.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::hist::Hist;
use super::ordo::free_ports;

/// Processes killed (and reaped) on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

async fn wait_for_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not listen on 127.0.0.1:{port} within 30 s")
}

/// What one appender task measured.
#[derive(Default)]
pub struct Measured {
    /// Entries acknowledged.
    pub entries: u64,
    /// Payload bytes acknowledged.
    pub bytes: u64,
    /// Per-batch acknowledgement latency.
    pub hist: Hist,
    /// Open loop only: the latency from the moment the batch could go, i.e. its due time when
    /// the pipeline was full then (the system held it back: counted), else the moment the
    /// generator's own timer let it go (its lateness, up to a timer tick, is not the system's).
    pub from_send: Hist,
}

impl Measured {
    /// Adds another task's figures.
    pub fn merge(&mut self, o: &Measured) {
        self.entries += o.entries;
        self.bytes += o.bytes;
        self.hist.merge(&o.hist);
        self.from_send.merge(&o.from_send);
    }
}

/// Batches in flight of one appender whose peer acknowledges message by message: a batch counts
/// when the last acknowledgement of its messages arrives.
struct InFlight {
    sent: VecDeque<Instant>,
    acks: usize,
    batch: usize,
    entry_bytes: usize,
}

impl InFlight {
    fn new(batch: usize, entry_bytes: usize) -> Self {
        Self { sent: VecDeque::new(), acks: 0, batch, entry_bytes }
    }

    /// Records one acknowledgement.
    fn acked(&mut self, m: &mut Measured) -> anyhow::Result<()> {
        self.acks += 1;
        if self.acks == self.batch {
            self.acks = 0;
            let t = self.sent.pop_front().context("more acknowledgements than messages sent")?;
            m.hist.record(t.elapsed().as_nanos() as u64);
            m.entries += self.batch as u64;
            m.bytes += (self.batch * self.entry_bytes) as u64;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// NATS JetStream

/// A 3-node JetStream cluster.
pub struct NatsCluster {
    _procs: Procs,
    /// Client ports of the nodes.
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts three `nats-server` nodes clustered over loopback routes, with JetStream file
    /// storage; `sync_always` sets `sync_interval: always` (fsync before every ack).
    pub async fn start(bin: &Path, sync_always: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let base = free_ports(6, 28300)?;
        let client = |i: u16| base + i;
        let route = |i: u16| base + 3 + i;
        let mut procs = Vec::new();
        for i in 0..3u16 {
            let routes: Vec<String> = (0..3u16).map(|j| format!("\"nats-route://127.0.0.1:{}\"", route(j))).collect();
            let store = dir.path().join(format!("js{i}"));
            let sync = if sync_always { "\n  sync_interval: always" } else { "" };
            let conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{\n  store_dir: \"{}\"{sync}\n}}\n\
                 cluster {{\n  name: bench\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                client(i),
                store.display(),
                route(i),
                routes.join(", ")
            );
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, conf)?;
            procs.push(spawn(bin, &["-c".into(), path.display().to_string()], &dir.path().join(format!("n{i}.log")))?);
        }
        let procs = Procs(procs);
        for i in 0..3 {
            wait_for_port(client(i), "nats-server").await?;
        }
        Ok(Self { _procs: procs, ports: (0..3).map(client).collect(), _dir: dir })
    }

    /// Creates stream `name` (subject `name`, R3, file storage), retrying while the cluster
    /// elects its meta leader.
    pub async fn create_stream(&self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut c = NatsConn::connect(self.ports[0]).await?;
            let cfg = format!(
                "{{\"name\":\"{name}\",\"subjects\":[\"{name}\"],\"num_replicas\":3,\"storage\":\"file\",\"retention\":\"limits\"}}"
            );
            c.publish(&format!("$JS.API.STREAM.CREATE.{name}"), cfg.as_bytes()).await?;
            match tokio::time::timeout(Duration::from_secs(5), c.next_reply()).await {
                Ok(Ok(reply)) if !reply.contains("\"error\"") || reply.contains("already in use") => return Ok(()),
                Ok(Ok(reply)) => last = reply,
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no reply within 5 s".into(),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bail!("creating JetStream stream {name}: {last}")
    }
}

impl NatsCluster {
    /// Deletes stream `name` (best effort: cells clean up after themselves, so the cluster does
    /// not slow down as hundreds of streams pile up).
    pub async fn delete_stream(&self, name: &str) {
        if let Ok(mut c) = NatsConn::connect(self.ports[0]).await {
            if c.publish(&format!("$JS.API.STREAM.DELETE.{name}"), b"").await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), c.next_reply()).await;
            }
        }
    }
}

/// One NATS connection with one reply inbox (`_INBOX.bench.<n>`).
pub struct NatsConn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    inbox: String,
}

impl NatsConn {
    /// Connects, subscribes to its inbox, and checks the round trip with PING.
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let inbox = format!("_INBOX.bench.{:016x}", rand::random::<u64>());
        let mut c = Self { rd: BufReader::with_capacity(1 << 16, rd), wr, inbox };
        let mut info = String::new();
        c.rd.read_line(&mut info).await?;
        if !info.starts_with("INFO") {
            bail!("expected INFO from nats-server, got {info:?}");
        }
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"lang\":\"ordo-bench\",\"version\":\"0\",\"protocol\":1}}\r\n\
             SUB {} 1\r\nPING\r\n",
            c.inbox
        );
        c.wr.write_all(hello.as_bytes()).await?;
        loop {
            let mut line = String::new();
            if c.rd.read_line(&mut line).await? == 0 {
                bail!("nats-server closed the connection");
            }
            if line.starts_with("PONG") {
                return Ok(c);
            }
            if line.starts_with("-ERR") {
                bail!("nats-server: {}", line.trim());
            }
        }
    }

    /// Publishes `payload` to `subject` with this connection's inbox as the reply subject.
    pub async fn publish(&mut self, subject: &str, payload: &[u8]) -> anyhow::Result<()> {
        let mut buf = Vec::with_capacity(payload.len() + 64);
        buf.extend_from_slice(format!("PUB {subject} {} {}\r\n", self.inbox, payload.len()).as_bytes());
        buf.extend_from_slice(payload);
        buf.extend_from_slice(b"\r\n");
        self.wr.write_all(&buf).await?;
        Ok(())
    }

    /// Writes several publishes with one syscall.
    pub async fn publish_many(&mut self, subject: &str, payload: &[u8], n: usize) -> anyhow::Result<()> {
        let header = format!("PUB {subject} {} {}\r\n", self.inbox, payload.len());
        let mut buf = Vec::with_capacity(n * (header.len() + payload.len() + 2));
        for _ in 0..n {
            buf.extend_from_slice(header.as_bytes());
            buf.extend_from_slice(payload);
            buf.extend_from_slice(b"\r\n");
        }
        self.wr.write_all(&buf).await?;
        Ok(())
    }

    /// The next message on the inbox, as text (answers PINGs on the way).
    pub async fn next_reply(&mut self) -> anyhow::Result<String> {
        loop {
            let mut line = String::new();
            if self.rd.read_line(&mut line).await? == 0 {
                bail!("nats-server closed the connection");
            }
            if line.starts_with("PING") {
                self.wr.write_all(b"PONG\r\n").await?;
                continue;
            }
            if line.starts_with("-ERR") {
                bail!("nats-server: {}", line.trim());
            }
            if let Some(rest) = line.strip_prefix("MSG ") {
                let size: usize = rest
                    .split_whitespace()
                    .last()
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("bad MSG line {line:?}"))?;
                let mut body = vec![0u8; size + 2];
                self.rd.read_exact(&mut body).await?;
                body.truncate(size);
                return Ok(String::from_utf8_lossy(&body).into_owned());
            }
        }
    }
}

/// Publishes to JetStream stream `name` until `until`: `batch` messages written at once, up to
/// `pipeline` batches unacknowledged; a batch counts when its last PubAck arrives.
pub async fn nats_appender(
    port: u16,
    name: &str,
    payload: &[u8],
    batch: usize,
    pipeline: usize,
    until: Instant,
) -> anyhow::Result<Measured> {
    let mut c = NatsConn::connect(port).await?;
    let mut m = Measured::default();
    let mut flight = InFlight::new(batch, payload.len());
    loop {
        while flight.sent.len() < pipeline && Instant::now() < until {
            c.publish_many(name, payload, batch).await?;
            flight.sent.push_back(Instant::now());
        }
        if flight.sent.is_empty() {
            return Ok(m);
        }
        let reply = tokio::time::timeout(Duration::from_secs(10), c.next_reply())
            .await
            .context("no JetStream ack within 10 s")??;
        if reply.contains("\"error\"") {
            bail!("JetStream refused a publish: {reply}");
        }
        flight.acked(&mut m)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

/// One Redis with an append-only file fsynced before every reply (`appendfsync always`).
pub struct Redis {
    _procs: Procs,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts `redis-server` on loopback with AOF and `appendfsync always`.
    pub async fn start(bin: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_ports(1, 28400)?;
        let args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--dir",
            &dir.path().display().to_string(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--protected-mode",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let procs = Procs(vec![spawn(bin, &args, &dir.path().join("redis.log"))?]);
        wait_for_port(port, "redis-server").await?;
        Ok(Self { _procs: procs, port, _dir: dir })
    }
}

/// `XADD key * d <payload>` until `until`: `batch` commands written at once (pipelined), up to
/// `pipeline` batches unanswered.
pub async fn redis_appender(
    port: u16,
    key: &str,
    payload: &[u8],
    batch: usize,
    pipeline: usize,
    until: Instant,
) -> anyhow::Result<Measured> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(1 << 16, rd);
    let mut cmd = Vec::new();
    cmd.extend_from_slice(format!("*5\r\n$4\r\nXADD\r\n${}\r\n{key}\r\n$1\r\n*\r\n$1\r\nd\r\n", key.len()).as_bytes());
    cmd.extend_from_slice(format!("${}\r\n", payload.len()).as_bytes());
    cmd.extend_from_slice(payload);
    cmd.extend_from_slice(b"\r\n");
    let batch_bytes: Vec<u8> = cmd.repeat(batch);
    let mut m = Measured::default();
    let mut flight = InFlight::new(batch, payload.len());
    loop {
        while flight.sent.len() < pipeline && Instant::now() < until {
            wr.write_all(&batch_bytes).await?;
            flight.sent.push_back(Instant::now());
        }
        if flight.sent.is_empty() {
            return Ok(m);
        }
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut line))
            .await
            .context("no Redis reply within 10 s")??;
        if n == 0 {
            bail!("redis closed the connection");
        }
        match line.as_bytes().first() {
            // An entry id as a bulk string: its length line, then the id.
            Some(b'$') => {
                let mut id = String::new();
                rd.read_line(&mut id).await?;
            }
            Some(b'-') => bail!("redis: {}", line.trim()),
            _ => bail!("unexpected Redis reply {line:?}"),
        }
        flight.acked(&mut m)?;
    }
}

// ---------------------------------------------------------------------------------------------
// The disk

/// The disk's raw rate of small durable appends: `write` of `bytes` then `fdatasync`, one at a
/// time, on a file in `dir` (the physical limit of an fsync-per-ack design).
pub fn fdatasync_rate(dir: &Path, bytes: usize, duration: Duration) -> anyhow::Result<Measured> {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let payload = vec![0x5au8; bytes];
    let mut m = Measured::default();
    let until = std::time::Instant::now() + duration;
    let mut n = 0u64;
    while std::time::Instant::now() < until && n < 10_000_000 {
        let t = std::time::Instant::now();
        f.write_all(&payload)?;
        f.sync_data()?;
        m.hist.record(t.elapsed().as_nanos() as u64);
        m.entries += 1;
        m.bytes += bytes as u64;
        n += 1;
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(m)
}

/// A binary on `PATH` (or at `explicit`), or `None`.
pub fn find_binary(explicit: Option<&str>, name: &str) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
}
