//! A running sidecar: its configuration (reloaded from the members file), its store (member
//! role), its proposer, and the readiness latch fed by peer probes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::config::Role;
use crate::membership::MembersFile;
use crate::metrics::Metrics;
use crate::quorum::proposer::Proposer;
use crate::quorum::store::RegisterStore;
use crate::quorum::transport::{PeerError, Peers, ProbeInfo};
use crate::quorum::{catchup, migration};

/// How often the members file is checked for changes.
const RELOAD_EVERY: Duration = Duration::from_millis(500);
/// How often peers are probed.
const PROBE_EVERY: Duration = Duration::from_millis(1000);
/// Deadline of one probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// What this sidecar last learned of a peer.
#[derive(Debug, Clone)]
pub enum PeerView {
    /// The peer answered.
    Up(ProbeInfo),
    /// It did not.
    Down(String),
}

/// Addresses this sidecar serves on (reported by status calls).
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// App Unix socket.
    pub app_socket: String,
    /// App TCP listener, empty when off.
    pub app_tcp: String,
    /// Admin HTTP address.
    pub admin_addr: String,
}

/// Work a member does in a joint epoch besides rewriting registers (log streams move their
/// replicas off leaving members): the epoch counts as migrated, and the members that leave may
/// go, only once every step succeeded.
pub trait MigrationStep: Send + Sync {
    /// What it moves, for logs.
    fn name(&self) -> &'static str;
    /// Runs the step for the joint configuration `cfg`; a summary, or why it must be retried.
    fn run<'a>(&'a self, cfg: &'a MembersFile) -> futures::future::BoxFuture<'a, Result<String, String>>;
}

/// Shared state of a running sidecar.
pub struct Node<P: Peers> {
    /// Member or proposer id.
    pub id: String,
    /// Member or client.
    pub role: Role,
    /// Store (member role only).
    pub store: Option<RegisterStore>,
    /// Peer transport.
    pub peers: Arc<P>,
    /// Proposer for this sidecar's requests.
    pub proposer: Proposer<P>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where this sidecar listens.
    pub endpoints: Endpoints,
    config_tx: watch::Sender<Arc<MembersFile>>,
    members_file: PathBuf,
    reload_now: Notify,
    ready_tx: watch::Sender<bool>,
    draining: std::sync::atomic::AtomicBool,
    peer_views: Mutex<BTreeMap<String, PeerView>>,
    migration_steps: Mutex<Vec<Arc<dyn MigrationStep>>>,
}

/// Status of this sidecar and its view of the peers.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// Member or proposer id.
    pub id: String,
    /// `member` or `client`.
    pub role: &'static str,
    /// Configuration epoch.
    pub epoch: u64,
    /// Ready latch.
    pub ready: bool,
    /// Votes (always true in the client role: it has nothing to catch up).
    pub caught_up: bool,
    /// Highest migrated joint epoch.
    pub migrated_epoch: u64,
    /// The configuration.
    pub config: Arc<MembersFile>,
    /// Peers by id.
    pub peers: BTreeMap<String, PeerView>,
}

impl<P: Peers> Node<P> {
    /// Assembles a node from its parts; call [`Node::spawn_background`] to start it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        role: Role,
        store: Option<RegisterStore>,
        peers: Arc<P>,
        config: MembersFile,
        members_file: PathBuf,
        metrics: Arc<Metrics>,
        endpoints: Endpoints,
    ) -> Arc<Self> {
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let proposer = Proposer::new(id.clone(), peers.clone(), config_rx, metrics.clone());
        let (ready_tx, _) = watch::channel(false);
        Arc::new(Self {
            id,
            role,
            store,
            peers,
            proposer,
            metrics,
            endpoints,
            config_tx,
            members_file,
            reload_now: Notify::new(),
            ready_tx,
            draining: std::sync::atomic::AtomicBool::new(false),
            peer_views: Mutex::new(BTreeMap::new()),
            migration_steps: Mutex::new(Vec::new()),
        })
    }

    /// Adds a step every joint epoch's migration runs after the registers' (register before
    /// [`Node::spawn_background`]).
    pub fn add_migration_step(&self, step: Arc<dyn MigrationStep>) {
        self.migration_steps.lock().expect("steps lock").push(step);
    }

    /// Runs every migration step for `cfg`; why the first failing one failed.
    async fn run_migration_steps(&self, cfg: &MembersFile) -> Result<(), String> {
        let steps = self.migration_steps.lock().expect("steps lock").clone();
        for step in steps {
            let summary = step.run(cfg).await.map_err(|e| format!("{}: {e}", step.name()))?;
            tracing::info!(epoch = cfg.epoch, step = step.name(), "{summary}");
        }
        Ok(())
    }

    /// Current configuration.
    pub fn config(&self) -> Arc<MembersFile> {
        self.config_tx.borrow().clone()
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.config_tx.borrow().epoch
    }

    /// Watches the configuration.
    pub fn watch_config(&self) -> watch::Receiver<Arc<MembersFile>> {
        self.config_tx.subscribe()
    }

    /// True when this sidecar's votes count (client role: always).
    pub fn caught_up(&self) -> bool {
        self.store.as_ref().is_none_or(|s| s.meta().caught_up)
    }

    /// Watches the readiness latch.
    pub fn watch_ready(&self) -> watch::Receiver<bool> {
        self.ready_tx.subscribe()
    }

    /// The readiness latch.
    pub fn ready(&self) -> bool {
        *self.ready_tx.borrow()
    }

    /// Stops reporting ready (SIGTERM): load balancers and peers stop counting on us.
    pub fn start_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        self.ready_tx.send_replace(false);
        self.metrics.ready.set(0);
    }

    /// A peer reported a higher epoch: check the members file now.
    pub fn epoch_hint(&self, theirs: u64) {
        if theirs > self.epoch() {
            self.reload_now.notify_one();
        }
    }

    /// Status snapshot.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            id: self.id.clone(),
            role: match self.role {
                Role::Member => "member",
                Role::Client => "client",
            },
            epoch: self.epoch(),
            ready: self.ready(),
            caught_up: self.caught_up(),
            migrated_epoch: self.store.as_ref().map_or(self.epoch(), |s| s.meta().migrated_epoch),
            config: self.config(),
            peers: self.peer_views.lock().expect("peer views").clone(),
        }
    }

    /// Starts the reload, catch-up, migration and probe loops.
    pub fn spawn_background(self: &Arc<Self>) {
        if let Some(store) = &self.store {
            if !store.meta().caught_up {
                tokio::spawn(catchup::run(self.id.clone(), store.clone(), self.peers.clone(), self.watch_config()));
            }
        }
        tokio::spawn(self.clone().reload_loop());
        tokio::spawn(self.clone().probe_loop());
        tokio::spawn(self.clone().migration_loop());
    }

    /// Installs a configuration if it is newer. Returns an error message when it is refused.
    pub async fn install_config(&self, next: MembersFile) -> Result<bool, String> {
        let cur = self.config();
        if next == *cur {
            return Ok(false);
        }
        if next.epoch < cur.epoch {
            return Err(format!(
                "members file has epoch {} but this sidecar is at epoch {}; ignored",
                next.epoch, cur.epoch
            ));
        }
        if next.epoch == cur.epoch {
            return Err(format!(
                "members file changed without an epoch change (still {}); ignored: bump the epoch to change membership",
                cur.epoch
            ));
        }
        if self.role == Role::Member && !next.contains(&self.id) {
            tracing::warn!(id = %self.id, epoch = next.epoch, "this member is not in the new configuration; it stops voting");
        }
        if let Some(store) = &self.store {
            store
                .set_meta(Some(next.epoch), next.previous.is_none().then_some(next.epoch))
                .await
                .map_err(|e| e.to_string())?;
        }
        tracing::info!(
            epoch = next.epoch,
            members = next.current.len(),
            joint = next.previous.is_some(),
            "installed new configuration"
        );
        self.metrics.epoch.set(next.epoch as i64);
        self.config_tx.send_replace(Arc::new(next));
        Ok(true)
    }

    async fn reload_loop(self: Arc<Self>) {
        let mut last_error = String::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
                _ = self.reload_now.notified() => {}
            }
            let result = match MembersFile::load(&self.members_file) {
                Ok(file) => self.install_config(file).await.map(|_| ()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Err(e) if e != last_error => {
                    tracing::error!(error = %e, file = %self.members_file.display(), "members file not applied");
                    last_error = e;
                }
                Err(_) => {}
                Ok(()) => last_error.clear(),
            }
        }
    }

    async fn migration_loop(self: Arc<Self>) {
        let Some(store) = self.store.clone() else { return };
        let mut config = self.watch_config();
        // Progress of the current joint epoch's migration, kept across its retries.
        let mut progress = (0, migration::Progress::default());
        loop {
            let cfg = config.borrow_and_update().clone();
            if cfg.previous.is_some()
                && store.meta().migrated_epoch < cfg.epoch
                && cfg.contains(&self.id)
                && self.caught_up()
            {
                if progress.0 != cfg.epoch {
                    progress = (cfg.epoch, migration::Progress::default());
                }
                let peers = self.peers.as_ref();
                let migrated =
                    migration::migrate(&self.id, &self.proposer, peers, &cfg, migration::PAGE, &mut progress.1).await;
                let migrated = match migrated {
                    Ok(n) => self.run_migration_steps(&cfg).await.map(|()| n).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match migrated {
                    Ok(n) => {
                        if let Err(e) = store.set_meta(None, Some(cfg.epoch)).await {
                            tracing::error!(error = %e, "could not record the migration");
                        } else {
                            tracing::info!(
                                epoch = cfg.epoch,
                                registers = n,
                                "migrated every register to the joint configuration"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, epoch = cfg.epoch, "migration not finished; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            tokio::select! {
                r = config.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn probe_loop(self: Arc<Self>) {
        loop {
            self.probe_once().await;
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// Probes every peer once and updates the readiness latch.
    pub async fn probe_once(&self) {
        let cfg = self.config();
        let epoch = cfg.epoch;
        let probes = futures::future::join_all(
            cfg.all_members()
                .into_iter()
                .filter(|m| m.id != self.id)
                .map(|m| async move { (m.id.clone(), self.peers.probe(m, epoch, PROBE_TIMEOUT).await) }),
        )
        .await;
        let mut views = BTreeMap::new();
        let mut voters: Vec<String> = Vec::new();
        if self.role == Role::Member && self.caught_up() && cfg.contains(&self.id) {
            voters.push(self.id.clone());
        }
        for (id, r) in probes {
            let view = match r {
                Ok(info) => {
                    if info.caught_up && info.epoch == cfg.epoch {
                        voters.push(id.clone());
                    }
                    if info.epoch > cfg.epoch {
                        self.epoch_hint(info.epoch);
                    }
                    PeerView::Up(info)
                }
                Err(PeerError::EpochMismatch { theirs }) => {
                    self.epoch_hint(theirs);
                    PeerView::Down(format!("at epoch {theirs}, this sidecar at {}", cfg.epoch))
                }
                Err(e) => PeerView::Down(e.to_string()),
            };
            views.insert(id, view);
        }
        *self.peer_views.lock().expect("peer views") = views;
        self.proposer.set_live(voters.clone());
        let quorum = cfg.is_read_quorum(voters.iter().map(String::as_str))
            && cfg.is_write_quorum(voters.iter().map(String::as_str));
        let member_ok = self.role == Role::Client || cfg.contains(&self.id);
        let ready = quorum && self.caught_up() && member_ok && !self.draining.load(std::sync::atomic::Ordering::SeqCst);
        self.metrics.peers_reachable.set(voters.len() as i64);
        self.metrics.caught_up.set(i64::from(self.caught_up()));
        self.metrics.ready.set(i64::from(ready));
        if ready != self.ready() {
            tracing::info!(ready, voters = voters.len(), "readiness changed");
        }
        self.ready_tx.send_replace(ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::peer::GrpcPeers;
    use crate::membership::{Member, MemberSet};

    fn file(epoch: u64, ids: &[&str]) -> MembersFile {
        MembersFile {
            epoch,
            current: MemberSet {
                members: ids
                    .iter()
                    .map(|i| Member { id: i.to_string(), peer_addr: format!("127.0.0.1:{}", 1000 + i.len()) })
                    .collect(),
                read_quorum: None,
                write_quorum: None,
            },
            previous: None,
        }
    }

    #[tokio::test]
    async fn configuration_only_moves_to_newer_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegisterStore::open(dir.path(), "a").unwrap();
        let node = Node::new(
            "a".into(),
            Role::Member,
            Some(store.clone()),
            Arc::new(GrpcPeers::new("t".into())),
            file(2, &["a", "b", "c"]),
            dir.path().join("members.yaml"),
            Arc::new(Metrics::new()),
            Endpoints::default(),
        );
        assert_eq!(node.install_config(file(2, &["a", "b", "c"])).await, Ok(false));
        let same_epoch = node.install_config(file(2, &["a", "b"])).await.unwrap_err();
        assert!(same_epoch.contains("without an epoch change"), "{same_epoch}");
        let older = node.install_config(file(1, &["a", "b", "c", "d"])).await.unwrap_err();
        assert!(older.contains("epoch 1"), "{older}");
        assert_eq!(node.epoch(), 2);
        assert_eq!(node.install_config(file(3, &["a", "b", "c", "d", "e"])).await, Ok(true));
        assert_eq!(node.epoch(), 3);
        // The highest epoch is remembered across restarts (a restarted member waits for it).
        assert_eq!(store.meta().max_epoch, 3);
        assert_eq!(store.meta().migrated_epoch, 3, "a non-joint epoch needs no migration");
    }
}
