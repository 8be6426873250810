//! The etcd peer: a 3-member etcd cluster on 127.0.0.1 (Debian's `etcd-server`), allocating
//! ranges by compare-and-swap through etcd's v3 HTTP/JSON gateway, with a minimal HTTP/1.1
//! keep-alive client (one connection per benchmark client, nothing spawned per request).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::http::Http;
use super::ordo::free_ports;
use super::runner::IdSource;

/// Finds the etcd binary: `explicit`, else `etcd` on `PATH`.
pub fn etcd_binary(explicit: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("etcd")).find(|p| p.is_file())
}

/// A running etcd cluster (killed on drop).
pub struct EtcdCluster {
    children: Vec<Child>,
    /// Client addresses (`127.0.0.1:PORT`).
    pub clients: Vec<String>,
    /// `etcd --version` first line.
    pub version: String,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl EtcdCluster {
    /// Starts `members` etcd processes with data under `dir` and waits until the cluster
    /// answers a linearizable read through every member.
    pub async fn start(bin: &Path, dir: &Path, members: usize) -> anyhow::Result<Self> {
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_default();
        let base = free_ports(2 * members as u16, 28100)?;
        let client_port = |i: usize| base + 2 * i as u16;
        let peer_port = |i: usize| base + 2 * i as u16 + 1;
        let initial: Vec<String> = (0..members).map(|i| format!("e{i}=http://127.0.0.1:{}", peer_port(i))).collect();
        let mut cluster = Self {
            children: Vec::new(),
            clients: (0..members).map(|i| format!("127.0.0.1:{}", client_port(i))).collect(),
            version,
        };
        std::fs::create_dir_all(dir.join("logs"))?;
        for i in 0..members {
            let log = std::fs::File::create(dir.join("logs").join(format!("etcd-{i}.log")))?;
            let child = Command::new(bin)
                .arg(format!("--name=e{i}"))
                .arg(format!("--data-dir={}", dir.join(format!("etcd-{i}")).display()))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{}", client_port(i)))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{}", client_port(i)))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", peer_port(i)))
                .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{}", peer_port(i)))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=ordo-bench")
                .env_remove("ETCDCTL_API")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            cluster.children.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for addr in cluster.clients.clone() {
            loop {
                let ok = async {
                    let mut h = Http::connect(&addr).await?;
                    h.post("/v3/kv/range", &json!({ "key": b64(b"ordo-bench-probe") }).to_string()).await
                }
                .await;
                if ok.is_ok() {
                    break;
                }
                for c in &mut cluster.children {
                    if let Ok(Some(st)) = c.try_wait() {
                        bail!("etcd exited early ({st}); logs in {}", dir.join("logs").display());
                    }
                }
                if Instant::now() > deadline {
                    bail!("etcd at {addr} not ready after 60 s: {:#}", ok.unwrap_err());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(cluster)
    }

    /// Creates counter `key` (next free ID = 1).
    pub async fn init_counter(&self, key: &str) -> anyhow::Result<()> {
        let mut h = Http::connect(&self.clients[0]).await?;
        h.post("/v3/kv/put", &json!({ "key": b64(key.as_bytes()), "value": b64(b"1") }).to_string()).await?;
        Ok(())
    }
}

/// A client allocating `range` IDs at a time from counter `key` by compare-and-swap, handing
/// them out locally (range 1 = every ID is a CAS).
pub struct EtcdCas {
    http: Http,
    key: String,
    range: u64,
    known: Option<u64>,
    buf: Range<u64>,
    /// CAS attempts that lost to another client.
    pub conflicts: u64,
}

impl EtcdCas {
    /// Connects to `addr`.
    pub async fn connect(addr: &str, key: &str, range: u64) -> anyhow::Result<Self> {
        Ok(Self {
            http: Http::connect(addr).await?,
            key: b64(key.as_bytes()),
            range: range.max(1),
            known: None,
            buf: 0..0,
            conflicts: 0,
        })
    }

    async fn read(&mut self) -> anyhow::Result<u64> {
        let body = self.http.post("/v3/kv/range", &json!({ "key": self.key }).to_string()).await?;
        let v: Value = serde_json::from_str(&body)?;
        counter_of(&v["kvs"])
    }

    async fn allocate(&mut self) -> anyhow::Result<Range<u64>> {
        for _ in 0..10_000 {
            let cur = match self.known {
                Some(c) => c,
                None => self.read().await?,
            };
            let new = cur + self.range;
            let req = json!({
                "compare": [{ "key": self.key, "result": "EQUAL", "target": "VALUE", "value": b64(cur.to_string().as_bytes()) }],
                "success": [{ "request_put": { "key": self.key, "value": b64(new.to_string().as_bytes()) } }],
                "failure": [{ "request_range": { "key": self.key } }],
            });
            let body = self.http.post("/v3/kv/txn", &req.to_string()).await?;
            let v: Value = serde_json::from_str(&body)?;
            if v["succeeded"].as_bool().unwrap_or(false) {
                self.known = Some(new);
                return Ok(cur..new);
            }
            self.conflicts += 1;
            self.known = Some(counter_of(&v["responses"][0]["response_range"]["kvs"])?);
        }
        bail!("compare-and-swap kept losing")
    }
}

fn counter_of(kvs: &Value) -> anyhow::Result<u64> {
    let value = kvs[0]["value"].as_str().ok_or_else(|| anyhow!("counter missing: {kvs}"))?;
    let text = String::from_utf8(unb64(value)?)?;
    Ok(text.parse()?)
}

impl IdSource for EtcdCas {
    async fn next_id(&mut self) -> anyhow::Result<u64> {
        if self.buf.is_empty() {
            self.buf = self.allocate().await?;
        }
        let id = self.buf.start;
        self.buf.start += 1;
        Ok(id)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(B64[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional).
pub fn unb64(s: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for ch in s.bytes().filter(|&b| b != b'=') {
        let v = B64.iter().position(|&c| c == ch).ok_or_else(|| anyhow!("bad base64 {s:?}"))? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar", "ordo-bench/seq-1024"] {
            assert_eq!(unb64(&b64(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64(b"fo"), "Zm8=");
    }
}
