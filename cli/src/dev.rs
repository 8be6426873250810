//! A local cluster of `ordo-sidecar` processes on 127.0.0.1, each with its own data
//! directory: what `ordoctl dev` runs, and what the multi-process tests drive (kill, restart,
//! wipe, membership changes).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ordo_contract::membership::{Member, MemberSet, MembersFile};
use serde::{Deserialize, Serialize};

/// Environment variable overriding the dev cluster's directory.
pub const DEV_DIR_ENV: &str = "ORDO_DEV_DIR";
/// Environment variable naming the sidecar binary to run.
pub const SIDECAR_BIN_ENV: &str = "ORDO_SIDECAR_BIN";

/// Errors of the dev cluster.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// I/O while preparing or starting processes.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevError {
    let what = what.into();
    move |source| DevError::Io { what, source }
}

/// The default directory of the dev cluster: `$ORDO_DEV_DIR`, else `<tmp>/ordo-dev`.
pub fn default_dir() -> PathBuf {
    std::env::var_os(DEV_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("ordo-dev"))
}

/// How a member process is started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Member id.
    pub id: String,
    /// Process id (0 when not running).
    pub pid: u32,
    /// Peer address.
    pub peer_addr: String,
    /// App socket.
    pub socket: String,
    /// Admin HTTP address.
    pub admin_addr: String,
    /// Data directory.
    pub data_dir: String,
}

/// What `cluster.json` in the dev directory records, for `ordoctl` commands without `--socket`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Members.
    pub members: Vec<MemberInfo>,
}

/// Options of a dev cluster.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Directory for data, sockets, token and members file.
    pub dir: PathBuf,
    /// Number of members.
    pub members: usize,
    /// First port: member i uses `base + 2i` (peer) and `base + 2i + 1` (admin).
    pub base_port: u16,
    /// The sidecar program and any leading arguments (e.g. `ordoctl sidecar`).
    pub sidecar: Vec<String>,
    /// Extra sidecar arguments for every member.
    pub extra_args: Vec<String>,
    /// Where member logs go (`None`: inherit stderr).
    pub log_dir: Option<PathBuf>,
    /// Extra sidecar arguments per member index.
    pub member_args: Vec<Vec<String>>,
    /// Peer addresses as each member sees them (`[viewer][member]`), e.g. through fault
    /// proxies; `None`: every member uses the real addresses (one shared members file).
    pub peer_views: Option<Vec<Vec<String>>>,
}

impl DevOptions {
    /// Defaults: 3 members, ports from 17100, the sidecar found by [`find_sidecar`].
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            members: 3,
            base_port: 17100,
            sidecar: find_sidecar(),
            extra_args: Vec::new(),
            log_dir: None,
            member_args: Vec::new(),
            peer_views: None,
        }
    }
}

/// The sidecar command: `$ORDO_SIDECAR_BIN`, else `ordo-sidecar` beside this executable (or one
/// directory up, for test binaries under `deps/`), else this executable's `sidecar` subcommand
/// when it is `ordoctl`, else `ordo-sidecar` from `PATH`.
pub fn find_sidecar() -> Vec<String> {
    if let Some(bin) = std::env::var_os(SIDECAR_BIN_ENV) {
        return vec![bin.to_string_lossy().into_owned()];
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("ordo-sidecar");
            if candidate.is_file() {
                return vec![candidate.to_string_lossy().into_owned()];
            }
        }
        if exe.file_name().is_some_and(|n| n == "ordoctl") {
            return vec![exe.to_string_lossy().into_owned(), "sidecar".into()];
        }
    }
    vec!["ordo-sidecar".into()]
}

struct Proc {
    info: MemberInfo,
    child: Option<Child>,
}

/// A running local cluster.
pub struct DevCluster {
    opts: DevOptions,
    procs: Vec<Proc>,
    token_file: PathBuf,
    members_file: PathBuf,
    epoch: u64,
}

impl DevCluster {
    /// Prepares the directory and the members file (epoch 1) and starts every member.
    pub fn start(opts: DevOptions) -> Result<Self, DevError> {
        std::fs::create_dir_all(&opts.dir).map_err(io(format!("creating {}", opts.dir.display())))?;
        let token_file = opts.dir.join("peer-token");
        if !token_file.exists() {
            let token: String = (0..32).map(|_| format!("{:x}", rand::random::<u8>() & 15)).collect();
            std::fs::write(&token_file, token).map_err(io("writing the peer token"))?;
        }
        let members_file = opts.dir.join("members.yaml");
        let mut cluster = Self { procs: Vec::new(), token_file, members_file, epoch: 0, opts };
        let n = cluster.opts.members;
        for i in 0..n {
            let info = cluster.member_info(i);
            cluster.procs.push(Proc { info, child: None });
        }
        let ids: Vec<usize> = (0..n).collect();
        cluster.write_members(&ids, None)?;
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.write_cluster_file()?;
        Ok(cluster)
    }

    fn member_info(&self, i: usize) -> MemberInfo {
        let dir = self.opts.dir.join(format!("dev-{i}"));
        let port = self.opts.base_port + 2 * i as u16;
        MemberInfo {
            id: format!("dev-{i}"),
            pid: 0,
            peer_addr: format!("127.0.0.1:{port}"),
            socket: dir.join("ordo.sock").display().to_string(),
            admin_addr: format!("127.0.0.1:{}", port + 1),
            data_dir: dir.join("data").display().to_string(),
        }
    }

    /// Adds a member slot (not started, not in the members file) and returns its index.
    pub fn add_member(&mut self) -> usize {
        let i = self.procs.len();
        let info = self.member_info(i);
        self.procs.push(Proc { info, child: None });
        i
    }

    /// Number of member slots.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// True when there are no members.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Member `i`'s info.
    pub fn member(&self, i: usize) -> &MemberInfo {
        &self.procs[i].info
    }

    /// The current configuration epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The members file path.
    pub fn members_file(&self) -> &Path {
        &self.members_file
    }

    /// The peer token file.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    fn member_set(&self, idx: &[usize], viewer: Option<usize>) -> MemberSet {
        let addr = |i: usize| match (viewer, &self.opts.peer_views) {
            (Some(v), Some(views)) if v != i => views[v][i].clone(),
            _ => self.procs[i].info.peer_addr.clone(),
        };
        MemberSet {
            members: idx.iter().map(|&i| Member { id: self.procs[i].info.id.clone(), peer_addr: addr(i) }).collect(),
            read_quorum: None,
            write_quorum: None,
        }
    }

    /// The members file member `i` reads.
    pub fn members_file_of(&self, i: usize) -> PathBuf {
        match self.opts.peer_views {
            Some(_) => self.opts.dir.join(format!("members-{i}.yaml")),
            None => self.members_file.clone(),
        }
    }

    /// Writes the next epoch of the members file: `current` members, and `previous` for a
    /// joint configuration. Written atomically (rename), as a ConfigMap update would be.
    pub fn write_members(&mut self, current: &[usize], previous: Option<&[usize]>) -> Result<u64, DevError> {
        let epoch = self.epoch + 1;
        let viewers: Vec<Option<usize>> = match self.opts.peer_views {
            Some(ref v) => (0..v.len()).map(Some).collect(),
            None => vec![None],
        };
        for viewer in viewers {
            let file = MembersFile {
                epoch,
                current: self.member_set(current, viewer),
                previous: previous.map(|p| self.member_set(p, viewer)),
            };
            file.validate().map_err(|e| DevError::Other(e.to_string()))?;
            let path = viewer.map_or_else(|| self.members_file.clone(), |v| self.members_file_of(v));
            let tmp = path.with_extension("yaml.tmp");
            std::fs::write(&tmp, file.to_yaml()).map_err(io("writing the members file"))?;
            std::fs::rename(&tmp, &path).map_err(io("replacing the members file"))?;
        }
        self.epoch = epoch;
        Ok(self.epoch)
    }

    /// Starts member `i` (its data directory is kept).
    pub fn spawn(&mut self, i: usize) -> Result<u32, DevError> {
        let info = &self.procs[i].info;
        let data_dir = PathBuf::from(&info.data_dir);
        std::fs::create_dir_all(&data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
        let (program, lead) =
            self.opts.sidecar.split_first().ok_or_else(|| DevError::Other("no sidecar command".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(lead)
            .arg("--role=member")
            .arg(format!("--id={}", info.id))
            .arg(format!("--data-dir={}", info.data_dir))
            .arg(format!("--members-file={}", self.members_file_of(i).display()))
            .arg(format!("--peer-listen={}", info.peer_addr))
            .arg(format!("--peer-token-file={}", self.token_file.display()))
            .arg(format!("--socket={}", info.socket))
            .arg("--app-listen=off")
            .arg(format!("--admin-listen={}", info.admin_addr))
            .arg("--log-format=text")
            .args(&self.opts.extra_args)
            .args(self.opts.member_args.get(i).into_iter().flatten())
            .env_remove("ORDO_SOCKET")
            .stdin(Stdio::null());

        if let Some(dir) = &self.opts.log_dir {
            std::fs::create_dir_all(dir).map_err(io("creating the log directory"))?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{}.log", info.id)))
                .map_err(io("opening a member log"))?;
            cmd.stdout(log.try_clone().map_err(io("log"))?).stderr(log);
        }
        let child = cmd.spawn().map_err(io(format!("starting {program} (build it with `cargo build`)")))?;
        let pid = child.id();
        self.procs[i].child = Some(child);
        self.procs[i].info.pid = pid;
        self.write_cluster_file()?;
        Ok(pid)
    }

    /// `kill -9` member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.procs[i].info.pid = 0;
        let _ = self.write_cluster_file();
    }

    /// Sends a signal (`TERM`, `STOP`, `CONT`, ...) to member `i`.
    pub fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = &self.procs[i].child {
            let _ = Command::new("kill").arg(format!("-{sig}")).arg(c.id().to_string()).status();
        }
    }

    /// SIGTERM member `i` and wait for it to exit (up to `timeout`, then SIGKILL).
    pub fn stop(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(i, "TERM");
        let mut child = self.procs[i].child.take()?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        self.procs[i].info.pid = 0;
        let _ = self.write_cluster_file();
        status
    }

    /// Deletes member `i`'s data directory (it must be stopped).
    pub fn wipe(&mut self, i: usize) -> Result<(), DevError> {
        let dir = PathBuf::from(&self.procs[i].info.data_dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
        }
        Ok(())
    }

    /// True when member `i`'s process is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.procs[i].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Members whose process exited on its own: `(index, status)`.
    pub fn exited(&mut self) -> Vec<(usize, std::process::ExitStatus)> {
        let mut out = Vec::new();
        for (i, p) in self.procs.iter_mut().enumerate() {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    out.push((i, s));
                    p.child = None;
                    p.info.pid = 0;
                }
            }
        }
        out
    }

    fn write_cluster_file(&self) -> Result<(), DevError> {
        let file = ClusterFile { members: self.procs.iter().map(|p| p.info.clone()).collect() };
        let text = serde_json::to_string_pretty(&file).map_err(|e| DevError::Other(e.to_string()))?;
        std::fs::write(self.opts.dir.join("cluster.json"), text).map_err(io("writing cluster.json"))
    }

    /// Stops every member (SIGTERM, then SIGKILL after `timeout`).
    pub fn shutdown(&mut self, timeout: Duration) {
        for i in 0..self.procs.len() {
            self.signal(i, "TERM");
        }
        for i in 0..self.procs.len() {
            self.stop(i, timeout);
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Reads `cluster.json` of the dev cluster in `dir`.
pub fn read_cluster_file(dir: &Path) -> Option<ClusterFile> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).ok()?).ok()
}
