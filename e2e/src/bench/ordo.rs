//! Ordo under test: a local 3-member cluster of release `ordo-sidecar` processes, and the ways
//! an app gets IDs from it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ordo_client::dev::{DevCluster, DevOptions};
use ordo_client::{Client, Sequence};
use tokio::time::Instant;

use super::runner::IdSource;

/// The sidecar binary: `explicit`, else `$ORDO_SIDECAR_BIN`, else `ordo-sidecar` beside this
/// executable (both are in `target/release`).
pub fn sidecar_binary(explicit: Option<&str>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os(ordo_client::dev::SIDECAR_BIN_ENV) {
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
    _dev: DevCluster,
    /// Each member's app socket.
    pub sockets: Vec<String>,
}

impl OrdoCluster {
    /// Starts `members` members in `dir` with per-sequence range sizes, and waits until each
    /// member reports ready.
    pub async fn start(sidecar: &Path, dir: &Path, members: usize, ranges: &[(String, u64)]) -> anyhow::Result<Self> {
        let mut opts = DevOptions::new(dir.to_path_buf());
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
        let cluster = Self { _dev: dev, sockets };
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

    /// `n` clients, client `i` connected to member `i % members` (each its own connection).
    pub async fn clients(&self, n: usize) -> anyhow::Result<Vec<Client>> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let s = &self.sockets[i % self.sockets.len()];
            out.push(Client::connect(s).await.with_context(|| format!("connecting to {s}"))?);
        }
        Ok(out)
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
