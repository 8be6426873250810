//! [`TestCluster`]: a [`DevCluster`] of real `ordo-sidecar` processes in a temporary directory,
//! optionally with a [`FaultProxy`] on every member-to-member link.

use std::future::Future;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use ordo_client::Client;
use ordoctl::dev::{DevCluster, DevOptions};
use tokio::time::Instant;

use crate::proxy::{FaultProxy, Mode};

/// Options of a test cluster.
#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// Members started (slots beyond can be added later).
    pub members: usize,
    /// Member slots prepared (for membership changes); at least `members`.
    pub slots: usize,
    /// Put a fault proxy on every directed member-to-member link.
    pub proxied: bool,
    /// Extra sidecar arguments for every member.
    pub extra_args: Vec<String>,
    /// Extra sidecar arguments per member.
    pub member_args: Vec<Vec<String>>,
}

/// A local cluster for one test; killed when dropped.
pub struct TestCluster {
    /// The processes.
    pub dev: DevCluster,
    /// `[from][to]` proxies when proxied.
    proxies: Vec<Vec<Option<FaultProxy>>>,
    _dir: tempfile::TempDir,
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A base port whose next `count` ports are free right now.
fn free_ports(count: u16) -> u16 {
    let _ = NEXT_PORT.compare_exchange(
        0,
        20000 + (std::process::id() % 400) as u16 * 50,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let base = NEXT_PORT.fetch_add(count, Ordering::SeqCst);
        let base = if base > 60000 { 20000 + base % 40000 } else { base };
        if (base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

/// The Prometheus text of the admin `/metrics` at `admin` (empty when it cannot be read).
pub async fn scrape_metrics(admin: String) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(admin).ok()?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        Some(text)
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

impl TestCluster {
    /// Starts `opts.members` members and waits until each is ready.
    pub async fn start(opts: TestOptions) -> Self {
        let slots = opts.slots.max(opts.members);
        let mut dir = tempfile::tempdir().expect("tempdir");
        if std::env::var_os("ORDO_TEST_KEEP").is_some() {
            // Keep data and logs for a post-mortem.
            dir.disable_cleanup(true);
            eprintln!("test cluster directory: {}", dir.path().display());
        }
        let mut dev_opts = DevOptions::new(dir.path().to_path_buf());
        dev_opts.members = opts.members;
        dev_opts.base_port = free_ports(2 * slots as u16);
        dev_opts.extra_args = opts.extra_args.clone();
        // A test may set its own request timeout (clap refuses the flag twice).
        if !opts.extra_args.iter().any(|a| a.starts_with("--request-timeout-ms")) {
            dev_opts.extra_args.push("--request-timeout-ms=2000".into());
        }
        dev_opts.member_args = opts.member_args.clone();
        dev_opts.log_dir = Some(dir.path().join("logs"));
        let mut proxies = Vec::new();
        if opts.proxied {
            let real: Vec<String> =
                (0..slots).map(|i| format!("127.0.0.1:{}", dev_opts.base_port + 2 * i as u16)).collect();
            let mut views = Vec::new();
            for from in 0..slots {
                let mut row = Vec::new();
                let mut view = Vec::new();
                for (to, target) in real.iter().enumerate() {
                    if from == to {
                        row.push(None);
                        view.push(target.clone());
                    } else {
                        let p = FaultProxy::start(target.clone()).await.expect("proxy");
                        view.push(p.addr().to_string());
                        row.push(Some(p));
                    }
                }
                proxies.push(row);
                views.push(view);
            }
            dev_opts.peer_views = Some(views);
        }
        let mut dev = DevCluster::start(dev_opts).expect("start dev cluster");
        while dev.len() < slots {
            dev.add_member();
        }
        let cluster = Self { dev, proxies, _dir: dir };
        for i in 0..opts.members {
            cluster.wait_ready(i, Duration::from_secs(30)).await;
        }
        cluster
    }

    /// A client of member `i`'s socket (retrying while the socket appears).
    pub async fn client(&self, i: usize) -> Client {
        let socket = self.dev.member(i).socket.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Client::connect(&socket).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("member {i} socket: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until member `i` reports ready.
    pub async fn wait_ready(&self, i: usize, timeout: Duration) {
        let socket = self.dev.member(i).socket.clone();
        eventually(timeout, &format!("member {i} ready"), || {
            let socket = socket.clone();
            async move {
                match Client::connect(&socket).await {
                    Ok(c) => c.status().await.is_ok_and(|s| s.ready),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    /// Waits (up to 30 s) until every member in `members` runs configuration `epoch`, has
    /// migrated its registers for it and is caught up: a membership step has settled.
    pub async fn wait_migrated(&self, members: &[usize], epoch: u64) {
        let sockets: Vec<String> = members.iter().map(|&i| self.dev.member(i).socket.clone()).collect();
        eventually(Duration::from_secs(30), &format!("members {members:?} migrated epoch {epoch}"), || {
            let sockets = sockets.clone();
            async move {
                for s in sockets {
                    let Ok(c) = Client::connect(&s).await else { return false };
                    match c.status().await {
                        Ok(st) if st.epoch == epoch && st.migrated_epoch >= epoch && st.caught_up => {}
                        _ => return false,
                    }
                }
                true
            }
        })
        .await;
    }

    /// Moves the cluster from members `from` to members `to` (started already) the safe way:
    /// the joint epoch, every member of `to` migrated, then `to` alone, migrated too. Returns the
    /// final epoch.
    pub async fn change_members(&mut self, from: &[usize], to: &[usize]) -> u64 {
        let joint = self.dev.write_members(to, Some(from)).expect("write the joint members file");
        self.wait_migrated(to, joint).await;
        let next = self.dev.write_members(to, None).expect("write the new members file");
        self.wait_migrated(to, next).await;
        next
    }

    /// Member `i`'s own status.
    pub async fn status(&self, i: usize) -> Option<ordo_proto::v1::StatusResponse> {
        Client::connect(&self.dev.member(i).socket).await.ok()?.status().await.ok()
    }

    /// Cuts member `i` off from every peer (both directions).
    pub fn partition(&self, i: usize) {
        self.set_links(i, Mode::Blackhole);
    }

    /// Restores member `i`'s links.
    pub fn heal(&self, i: usize) {
        self.set_links(i, Mode::Pass);
    }

    fn set_links(&self, i: usize, mode: Mode) {
        assert!(!self.proxies.is_empty(), "the cluster was started without proxies");
        for (from, row) in self.proxies.iter().enumerate() {
            for (to, p) in row.iter().enumerate() {
                if let Some(p) = p {
                    if from == i || to == i {
                        p.set(mode);
                    }
                }
            }
        }
    }

    /// Starts a client-role sidecar (`id`, its socket in `dir`) proposing to this cluster's
    /// members, and waits until it is ready; it is killed when the guard is dropped.
    pub async fn start_client_sidecar(&self, id: &str, dir: &std::path::Path) -> (String, ChildGuard) {
        let socket = dir.join(format!("{id}.sock"));
        let sidecar = ordoctl::dev::find_sidecar();
        let child = std::process::Command::new(&sidecar[0])
            .args(&sidecar[1..])
            .args(["--role=client", "--app-listen=off", "--admin-listen=127.0.0.1:0", "--log-format=text"])
            .arg(format!("--id={id}"))
            .arg(format!("--members-file={}", self.dev.members_file().display()))
            .arg(format!("--peer-token-file={}", self.dev.token_file().display()))
            .arg(format!("--socket={}", socket.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a client-role sidecar");
        let guard = ChildGuard(child);
        let socket = socket.display().to_string();
        eventually(Duration::from_secs(20), "client-role sidecar ready", || {
            let socket = socket.clone();
            async move {
                match Client::connect(&socket).await {
                    Ok(c) => c.status().await.is_ok_and(|s| s.ready && s.role == "client"),
                    Err(_) => false,
                }
            }
        })
        .await;
        (socket, guard)
    }

    /// The Prometheus text of member `i`'s admin `/metrics` (empty when it does not answer).
    pub async fn scrape_metrics(&self, i: usize) -> String {
        scrape_metrics(self.dev.member(i).admin_addr.clone()).await
    }

    /// The last lines of member `i`'s log (for failure messages).
    pub fn log_tail(&self, i: usize) -> String {
        let path = self._dir.path().join("logs").join(format!("{}.log", self.dev.member(i).id));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Kills a child process when dropped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
