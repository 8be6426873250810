//! The divider runtime of one sidecar: the member sessions opened on it, their leases, the
//! handoff of their keys, and the assignment table, driven by three loops per divider.
//!
//! The renewal loop, every `lease / 4`: tend every session: renew its member record (one
//! compare-and-set whatever the number of keys), tell the app how long its right lasts, drop
//! everything when the right ended, re-join with a new session after a lost lease, leave once a
//! cancelled or abandoned session holds nothing, time out unconfirmed stops.
//!
//! The handoff loop, every `lease / 8`, and at the moment an observed member may be declared
//! expired (a join, affinity or key change wakes it at once): (1)
//! read every member record and the key set, expire members whose record did not move for
//! `lease + margin`, compute the [`AssignmentTable`]; (2) per session: stop keys assigned
//! elsewhere, claim keys assigned to it whose owner released them or lost its session. A
//! `Release`, `Flush` or `Cancel` wakes step (2) alone.
//!
//! The release loop, woken by confirms and releases (and every `lease / 8`): writes the
//! releases of keys the apps are done with, one compare-and-set per bucket for every release
//! pending, apart from the handoff loop so that a refresh stalled by a slow quorum does not
//! hold them back. The safety argument is in [`super`]; the locks each loop holds across its
//! awaits are listed there ("Locks").

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use ordo_contract::divider::DividerConfig;
use ordo_contract::status::{DividerMember, DividerReport, HeldKeys};
use tokio::sync::{mpsc, watch, Mutex, Notify};
use tokio::time::Instant;

use super::handoff::{HandoffError, Holdings, StopReason};
use super::keys::{check_batch, key_set, static_keys};
use super::lease::{HolderLease, LeaseTiming, Observed};
use super::metrics::DividerMetrics;
use super::records::{
    check_address, owner_bucket, Layout, MemberRecord, MemberState, OwnerBucket, OwnerRecord, OwnerState, TOKEN_BASE,
};
use super::table::{AssignmentTable, TableMember};
use crate::quorum::register::{Entry, RegisterError, Registers, Written, MAX_PAGE};
use crate::quorum::transport::Peers;
use ordo_contract::validate::validate_name;

/// Register calls one tick runs at once (member reads, key changes).
const PARALLEL: usize = 32;
/// Owner buckets claimed (or released) in at once: each is a read and a compare-and-set of its
/// own bucket register, so the quorum runs them side by side (their Prepares and Accepts travel
/// to each member in bundles, [`crate::quorum::bundle`], and its acceptors group-commit them).
/// At least [`super::records::OWNER_BUCKETS`]: a pass then writes every bucket at once.
const CLAIM_PARALLEL: usize = 512;
/// Compare-and-set attempts of one bucket in one pass (a conflict with another claimer or a
/// release retries on the value the conflict reply carries; what is left waits for the next
/// pass).
const BUCKET_ATTEMPTS: usize = 4;
/// Most sessions remembered as dead (see [`DeadSessions`]).
const MAX_DEAD: usize = 4096;
/// Most dividers one sidecar serves (each has a loop and a table).
pub const MAX_DIVIDERS: usize = 64;
/// Most claims applied at once (the rest keep landing meanwhile).
const CLAIM_BATCH: usize = 256;
/// How long a wake-up waits to gather more confirms before a handoff pass.
const WAKE_GATHER: Duration = Duration::from_millis(10);
/// How long a planned leave (SIGTERM) may take beyond the stop timeout: the releases, the
/// `left` write, a round or two each.
pub const LEAVE_SLACK: Duration = Duration::from_secs(2);
/// Most pages read when listing a prefix (1000 keys each).
const MAX_PAGES: usize = 2_000;

/// Timing of the divider.
#[derive(Debug, Clone, Copy)]
pub struct DividerSettings {
    /// Member lease and drift margin.
    pub timing: LeaseTiming,
    /// How long an app has to confirm a stop before its token is declared dead.
    pub stop_timeout: Duration,
    /// Deadline of one register call.
    pub request_timeout: Duration,
}

impl DividerSettings {
    /// Interval between renewals, and the longest a pass of claims runs before the table is
    /// refreshed.
    pub fn tick(&self) -> Duration {
        self.timing.lease / 4
    }

    /// Interval between refreshes of the member records: an observer's first read of a renewal
    /// lags its write by up to this, and that lag adds to the time a dead member's keys wait.
    pub fn poll(&self) -> Duration {
        self.timing.lease / 8
    }
}

/// What a member session's stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The session is registered (first event, and again after a re-join).
    Joined {
        /// Member id.
        member: String,
        /// Session id.
        session: String,
        /// Affinity.
        affinity: u32,
    },
    /// Start working on a key.
    Start {
        /// Key.
        key: String,
        /// Its fencing token.
        token: u64,
    },
    /// Stop working on a key.
    Stop {
        /// Key.
        key: String,
        /// Its token.
        token: u64,
        /// Why.
        reason: StopReason,
    },
    /// The right to every held key lasts this long from now unless renewed.
    Lease {
        /// Remaining right.
        valid_for: Duration,
    },
}

/// Why a divider call failed.
#[derive(Debug, thiserror::Error)]
pub enum DividerError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Unknown member session or key not held.
    #[error("{0}")]
    NotFound(String),
    /// The member id has a live session.
    #[error("{0}")]
    AlreadyExists(String),
    /// Wrong token or state.
    #[error("{0}")]
    Precondition(String),
    /// A value out of range (affinity overflow).
    #[error("{0}")]
    OutOfRange(String),
    /// The quorum store failed.
    #[error(transparent)]
    Quorum(#[from] RegisterError),
    /// A wait ran out of time.
    #[error("{0}")]
    Timeout(String),
}

impl From<HandoffError> for DividerError {
    fn from(e: HandoffError) -> Self {
        match e {
            HandoffError::NotHeld(_) => DividerError::NotFound(e.to_string()),
            HandoffError::WrongToken { .. } | HandoffError::NotStopping(_) => DividerError::Precondition(e.to_string()),
        }
    }
}

/// Every divider this sidecar serves, by name; created on first use.
pub struct Dividers<P: Peers> {
    registers: Registers<P>,
    settings: DividerSettings,
    config: Option<DividerConfig>,
    sidecar_id: String,
    metrics: DividerMetrics,
    dividers: StdMutex<HashMap<String, Arc<Divider<P>>>>,
}

impl<P: Peers> Dividers<P> {
    /// The dividers of a sidecar; the configured one (if any) starts now.
    pub fn new(
        registers: Registers<P>,
        settings: DividerSettings,
        config: Option<DividerConfig>,
        sidecar_id: String,
        metrics: DividerMetrics,
    ) -> Arc<Self> {
        let d = Arc::new(Self {
            registers,
            settings,
            config,
            sidecar_id,
            metrics,
            dividers: StdMutex::new(HashMap::new()),
        });
        if d.config.is_some() {
            if let Err(e) = d.get("") {
                tracing::warn!(error = %e, "the configured divider cannot start");
            }
        }
        d
    }

    /// The planned leave of every session on this sidecar (SIGTERM, before the app servers
    /// stop, so the apps still get their Stops and can confirm them): each session leaves as by
    /// `Flush` then `Cancel` (see [`Divider::leave_all`]). Returns once every session is gone,
    /// or at the latest after the stop timeout plus [`LEAVE_SLACK`].
    pub async fn leave_all(&self) {
        let deadline = Instant::now() + self.settings.stop_timeout + LEAVE_SLACK;
        let dividers: Vec<Arc<Divider<P>>> =
            self.dividers.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        futures::future::join_all(dividers.iter().map(|d| d.leave_all(deadline))).await;
    }

    /// This sidecar's id (the default member id).
    pub fn sidecar_id(&self) -> &str {
        &self.sidecar_id
    }

    /// The divider `name` (empty: the configured one) if this sidecar serves it already; never
    /// starts one (for reports).
    pub fn running(&self, name: &str) -> Option<Arc<Divider<P>>> {
        let name = if name.is_empty() { self.config.as_ref()?.divider.as_str() } else { name };
        self.dividers.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// The divider `name` (empty: the configured one), started on first use.
    pub fn get(&self, name: &str) -> Result<Arc<Divider<P>>, DividerError> {
        let name = match (name, &self.config) {
            ("", Some(c)) => c.divider.as_str(),
            ("", None) => return Err(DividerError::Invalid("no default divider is configured here: name one".into())),
            (n, _) => n,
        };
        let mut map = self.dividers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(name) {
            return Ok(d.clone());
        }
        if map.len() >= MAX_DIVIDERS {
            return Err(DividerError::Invalid(format!("this sidecar serves at most {MAX_DIVIDERS} dividers")));
        }
        let layout = Layout::new(name).map_err(DividerError::Invalid)?;
        let configured = self.config.as_ref().filter(|c| c.divider == name);
        let d = Arc::new(Divider {
            name: name.to_string(),
            layout,
            registers: self.registers.clone(),
            settings: self.settings,
            static_keys: configured.map(|c| static_keys(&c.keys)).unwrap_or_default(),
            default_affinity: configured.map_or(1, |c| u32::try_from(c.default_affinity).unwrap_or(u32::MAX)),
            sessions: Mutex::new(BTreeMap::new()),
            record_writes: Mutex::new(()),
            view: Mutex::new(ViewState::default()),
            observed: StdMutex::new(HashMap::new()),
            keyset: Mutex::new(KeySetState::default()),
            guard: watch::channel(LayoutGuard::Unknown).0,
            dead: StdMutex::new(DeadSessions::default()),
            blocked: StdMutex::new(HashMap::new()),
            table: watch::channel(Arc::new(AssignmentTable::default())).0,
            wake: Notify::new(),
            refresh_now: std::sync::atomic::AtomicBool::new(false),
            changed: Notify::new(),
            renew_now: Notify::new(),
            release_wake: Notify::new(),
            metrics: self.metrics.clone(),
        });
        tokio::spawn(d.clone().renew_loop());
        tokio::spawn(d.clone().handoff_loop());
        tokio::spawn(d.clone().release_loop());
        map.insert(name.to_string(), d.clone());
        Ok(d)
    }
}

/// One member session on this sidecar.
struct Session {
    session: String,
    affinity: u32,
    address: String,
    /// Version of its member record; `None` when a write's outcome is unknown.
    version: Option<u64>,
    /// The record last written.
    written: Option<MemberRecord>,
    lease: HolderLease,
    holdings: Holdings,
    events: mpsc::UnboundedSender<Event>,
    metrics: DividerMetrics,
    /// When each pending stop was sent (for the handoff duration).
    stops_sent: HashMap<String, Instant>,
    /// Releases written (carried in the member record: [`MemberRecord::released`]).
    releases: u64,
    leaving: bool,
    flushing: bool,
    app_gone: bool,
    lost: bool,
    gone: bool,
}

impl Session {
    fn send(&mut self, e: Event) {
        match &e {
            Event::Start { .. } => self.metrics.handoff("start"),
            Event::Stop { key, reason, .. } => {
                self.metrics.handoff(&format!("stop_{reason:?}").to_lowercase());
                self.stops_sent.entry(key.clone()).or_insert_with(Instant::now);
            }
            Event::Joined { .. } | Event::Lease { .. } => {}
        }
        let _ = self.events.send(e);
    }

    /// The release of `key` at `token` was written.
    fn released(&mut self, key: &str, token: u64) {
        self.holdings.released(key, token);
        self.releases += 1;
        if let Some(sent) = self.stops_sent.remove(key) {
            self.metrics.handoff_seconds.observe(sent.elapsed().as_secs_f64());
        }
    }

    /// The record to write at version `expect`.
    fn record(&self, state: MemberState, expect: u64) -> MemberRecord {
        let timing = self.lease.timing();
        let mut r = MemberRecord {
            session: self.session.clone(),
            state,
            affinity: self.affinity,
            address: self.address.clone(),
            changed: expect + 1,
            lease_ms: u64::try_from(timing.lease.as_millis()).unwrap_or(u64::MAX),
            margin_ms: u64::try_from(timing.margin.as_millis()).unwrap_or(u64::MAX),
            released: self.releases,
            per_key_layout: false,
        };
        if let Some(last) = self.written.as_ref().filter(|last| !last.differs(&r)) {
            r.changed = last.changed;
        }
        r
    }

    /// Notices an app that went away (its stream closed): it can no longer be told anything,
    /// and by the protocol it stops every key once its stream ends (the client library says
    /// `LeaseExpired`). Keys it confirmed or released are released by the release loop at once;
    /// every key it may still work on is treated as told to stop now: released once the stop
    /// timeout passes (a key already stopping keeps its earlier deadline), or when the right
    /// ends, whichever is first. Returns true when it just went away.
    fn notice_app_gone(&mut self, now: Instant, timeout: Duration) -> bool {
        if self.app_gone || !self.events.is_closed() {
            return false;
        }
        self.app_gone = true;
        for (key, _) in self.holdings.working() {
            self.holdings.stop(&key, now, timeout);
        }
        true
    }

    /// Asks the app to stop `key` (when it works on it), with `reason`.
    fn stop(&mut self, key: String, now: Instant, timeout: Duration, reason: StopReason) {
        if let Some(token) = self.holdings.stop(&key, now, timeout) {
            self.send(Event::Stop { key, token, reason });
        }
    }

    /// The right ended or was taken: every key is dropped, the app told.
    fn lose(&mut self) {
        for (key, token) in self.holdings.drop_all() {
            self.send(Event::Stop { key, token, reason: StopReason::LeaseLost });
        }
        self.lost = true;
    }
}

type Sessions = BTreeMap<String, Session>;
/// A release the handoff loop writes: the owner record of `key` at `token` becomes `released`
/// (and the key leaves the key set first when `done`).
struct Release {
    member: String,
    session: String,
    key: String,
    token: u64,
    done: bool,
}

/// A claim to make: (member, session, key).
type Claim = (String, String, String);

/// Member records by id: (version, record).
type Records = BTreeMap<String, (u64, MemberRecord)>;

/// What the handoff loop read from the registers.
#[derive(Default)]
struct ViewState {
    /// Member records read by the last refresh: id -> (version, record).
    records: Arc<Records>,
    /// The key set the table was last computed from.
    keys: Arc<Vec<String>>,
    handbacks: BTreeMap<String, BTreeSet<String>>,
    /// The live session each member had at the last refresh.
    live_seen: HashMap<String, String>,
    /// The earliest moment an observed member may be declared expired.
    next_expiry: Option<Instant>,
}

/// The key set as last read: the key-set counter it was read at, and the keys.
#[derive(Default)]
struct KeySetState {
    version: Option<u64>,
    keys: Arc<Vec<String>>,
}

/// The mixed-version guard's verdict on a divider (see "Mixed versions" in [`super`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum LayoutGuard {
    /// No refresh has read the member records yet.
    Unknown,
    /// No live member of a sidecar of the per-key owner layout.
    Clear,
    /// These members are live sessions of sidecars that may use the per-key owner layout.
    Blocked(Vec<String>),
}

impl LayoutGuard {
    /// The error apps get while the guard blocks the divider.
    fn error(&self, divider: &str) -> Option<DividerError> {
        match self {
            LayoutGuard::Blocked(members) => Some(DividerError::Precondition(format!(
                "divider {divider:?}: member(s) {members:?} run a sidecar of the older per-key owner layout \
                 (member record format before m4), which cannot share a divider with this one (a key could \
                 get two owners); this sidecar serves no keys of it until they are gone: stop every pod of \
                 the divider before upgrading"
            ))),
            LayoutGuard::Unknown | LayoutGuard::Clear => None,
        }
    }
}

/// Sessions known to be over for good: named by a member record that is `left` or `expired`,
/// or seen live by one refresh and replaced in a later one. Sessions never come back, so a
/// claim may take a key whose owner record names one of them without reading its member
/// record again. Knowing a session only from a read made *before* it joined would prove
/// nothing: that is why nothing else goes in. Bounded: the oldest are forgotten (a forgotten
/// session costs a read, never safety).
#[derive(Default)]
struct DeadSessions {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl DeadSessions {
    fn insert(&mut self, session: &str) -> bool {
        if !self.set.insert(session.to_string()) {
            return false;
        }
        self.order.push_back(session.to_string());
        while self.order.len() > MAX_DEAD {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    fn contains(&self, session: &str) -> bool {
        self.set.contains(session)
    }
}

/// Which loops an app call wakes once it changed a session.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// None (a read).
    Nothing,
    /// The release loop (a key the app is done with).
    Releases,
    /// The handoff loop (Stops to send).
    Handoffs,
    /// Both.
    Both,
}

/// The owner of a key as [`Divider::lookup`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Member id (`None`: nobody owns the key now).
    pub member: Option<String>,
    /// Its address.
    pub address: String,
    /// The key's current (or last) token; 0 when never owned.
    pub token: u64,
}

/// One divider on this sidecar.
pub struct Divider<P: Peers> {
    name: String,
    layout: Layout,
    registers: Registers<P>,
    settings: DividerSettings,
    static_keys: Vec<String>,
    default_affinity: u32,
    /// Member sessions; held for short updates only, never across a register call (see
    /// "Locks" in [`super`]): app calls (ConfirmStop, Release, ...) take it.
    sessions: Mutex<Sessions>,
    /// Held across every write of a member record of a session on this sidecar (renewal,
    /// re-join, affinity, join, leave), so each record has one writer at a time. App calls
    /// that do not write a member record never take it.
    record_writes: Mutex<()>,
    /// Held by the handoff loop's refresh (its reads, expiries and marker deletes); no app call
    /// takes it.
    view: Mutex<ViewState>,
    /// When this sidecar first read each member record version (short updates only).
    observed: StdMutex<HashMap<String, Observed>>,
    /// The key set; held across the reads of the key-set counter and lists only.
    keyset: Mutex<KeySetState>,
    /// The mixed-version guard, set by every refresh.
    guard: watch::Sender<LayoutGuard>,
    /// Sessions known dead.
    dead: StdMutex<DeadSessions>,
    /// Keys a claim found owned by a live session: key -> (member, session, its release count
    /// then). The key is not tried again while that session lives with the same count: its
    /// release would move the count ([`MemberRecord::released`]). Saves a round per waiting key
    /// and pass; safety never rests on it.
    blocked: StdMutex<HashMap<String, (String, String, u64)>>,
    table: watch::Sender<Arc<AssignmentTable>>,
    wake: Notify,
    /// The next wake-up runs a full tick.
    refresh_now: std::sync::atomic::AtomicBool,
    changed: Notify,
    /// Wakes the renewal loop early (a leaving session released its last key: write `left`).
    renew_now: Notify,
    /// Wakes the release loop (a confirm, a release, an app gone).
    release_wake: Notify,
    metrics: DividerMetrics,
}

fn new_session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn affinity_from(value: i64) -> Result<u32, DividerError> {
    u32::try_from(value).map_err(|_| DividerError::Invalid(format!("affinity must be 0..={}, got {value}", u32::MAX)))
}

impl<P: Peers> Divider<P> {
    /// The divider's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current assignment table.
    pub fn table(&self) -> Arc<AssignmentTable> {
        self.table.borrow().clone()
    }

    /// Follows the assignment table.
    pub fn follow(&self) -> watch::Receiver<Arc<AssignmentTable>> {
        self.table.subscribe()
    }

    /// This sidecar's report of the divider (`/divider` on the admin port): the assignment
    /// table's members and counts, and the keys its own member sessions hold now.
    pub async fn report(&self) -> DividerReport {
        let table = self.table();
        let mut assigned = vec![0u64; table.members.len()];
        for o in table.owners.iter().flatten() {
            assigned[*o as usize] += 1;
        }
        let members = table
            .members
            .iter()
            .zip(assigned)
            .map(|(m, assigned)| DividerMember { id: m.id.clone(), affinity: m.affinity, assigned })
            .collect();
        let held_here = self
            .sessions
            .lock()
            .await
            .iter()
            .filter(|(_, s)| !s.lost && !s.gone)
            .map(|(id, s)| HeldKeys { id: id.clone(), keys: s.holdings.len() as u64 })
            .collect();
        DividerReport {
            divider: self.name.clone(),
            version: table.version,
            keys: table.keys.len() as u64,
            members,
            held_here,
        }
    }

    /// Renews every session each tick, apart from the handoff work so that a slow tick of
    /// claims never delays a renewal.
    async fn renew_loop(self: Arc<Self>) {
        loop {
            {
                let _writer = self.record_writes.lock().await;
                let names: Vec<String> = self.sessions.lock().await.keys().cloned().collect();
                for m in &names {
                    self.tend(m).await;
                }
                self.sessions.lock().await.retain(|_, s| !s.gone);
            }
            self.changed.notify_waiters();
            tokio::select! {
                _ = tokio::time::sleep(self.settings.tick()) => {}
                _ = self.renew_now.notified() => {}
            }
        }
    }

    /// A full tick (refresh, then handoffs) every `poll`; in between, a wake-up (confirm,
    /// release, affinity change, join) runs the handoffs alone on the last refresh, after a
    /// short pause that gathers a burst of confirms into one pass.
    async fn handoff_loop(self: Arc<Self>) {
        loop {
            self.tick().await;
            // The next refresh comes after a poll interval, or at the moment an observed member
            // may be declared expired, whichever is first: waiting for the next poll past that
            // moment would only delay its keys' takeover.
            let mut next = Instant::now() + self.settings.poll();
            if let Some(at) = self.view.lock().await.next_expiry {
                next = next.min(at);
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    _ = self.wake.notified() => {
                        tokio::time::sleep(WAKE_GATHER).await;
                        if self.refresh_now.swap(false, std::sync::atomic::Ordering::SeqCst) {
                            self.tick().await;
                        } else {
                            let records = self.view.lock().await.records.clone();
                            self.handoffs(&records).await;
                            self.changed.notify_waiters();
                        }
                    }
                }
            }
        }
    }

    /// Wakes the handoff loop for a full tick (members, affinities or keys changed).
    fn refresh_soon(&self) {
        self.refresh_now.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    async fn put(&self, key: &str, expect: u64, value: Vec<u8>) -> Result<Written, RegisterError> {
        if expect == 0 {
            self.registers.create(key, value).await
        } else {
            self.registers.compare_and_set(key, expect, value).await
        }
    }

    async fn list_all(&self, prefix: &str) -> Result<Vec<String>, RegisterError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self.registers.list(prefix, after.as_deref(), MAX_PAGE).await?;
            out.extend(page.keys.into_iter().filter_map(|k| k.strip_prefix(prefix).map(str::to_string)));
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        Ok(out)
    }

    /// The version to write `member`'s record at: the session's known version, or (after a
    /// write whose outcome is unknown) the version a fresh read shows while the record still
    /// names the live session. `None`: the record moved on, the session is over.
    async fn expected_version(
        &self,
        member: &str,
        known: Option<u64>,
        session: &str,
    ) -> Result<Option<u64>, DividerError> {
        if known.is_some() {
            return Ok(known);
        }
        Ok(match self.registers.read(&self.layout.member(member)).await? {
            Some(Entry { version, value })
                if MemberRecord::decode(&value).is_ok_and(|r| r.is_live_session(session)) =>
            {
                Some(version)
            }
            _ => None,
        })
    }

    /// Applies the outcome of writing `record` (with `state`, sent at `sent`) to the session.
    fn apply_write(
        &self,
        member: &str,
        s: &mut Session,
        state: MemberState,
        record: MemberRecord,
        sent: Instant,
        outcome: Result<Written, RegisterError>,
    ) -> Result<bool, DividerError> {
        match outcome {
            Ok(Written::Applied { version }) => {
                s.version = Some(version);
                s.written = Some(record);
                if state == MemberState::Live {
                    // A renewal acknowledged only after the right ran out does not mend the gap:
                    // the app stopped every key at its deadline (it was told how long the right
                    // lasts), so the keys are dropped and the member re-joins, and its keys
                    // become claimable again rather than held by a sidecar whose app stopped.
                    let lapsed = s.lease.right_end().is_some_and(|end| end <= Instant::now());
                    s.lease.renewed(sent);
                    if lapsed && !s.holdings.is_empty() {
                        tracing::warn!(divider = %self.name, member, "the right lapsed before a renewal landed: stopping every key");
                        s.lose();
                    }
                }
                Ok(true)
            }
            Ok(Written::Conflict { .. }) => Ok(false),
            Err(e) => {
                if matches!(e, RegisterError::OutcomeUnknown { .. }) {
                    s.version = None;
                }
                Err(e.into())
            }
        }
    }

    /// Writes the record of a session not shared yet (a join) with `state` at its known version.
    /// `Ok(false)`: the record moved (taken over): the session is over.
    async fn write_session(&self, member: &str, s: &mut Session, state: MemberState) -> Result<bool, DividerError> {
        let Some(expect) = self.expected_version(member, s.version, &s.session).await? else {
            return Ok(false);
        };
        let sent = Instant::now();
        let record = s.record(state, expect);
        let outcome = self.put(&self.layout.member(member), expect, record.encode()).await;
        self.apply_write(member, s, state, record, sent, outcome)
    }

    /// Writes the record of `member`'s session on this sidecar with `state`. The caller holds
    /// `record_writes` (one writer per record); `sessions` is held only to take the record to
    /// write and to apply the outcome, never across the write, so app calls (ConfirmStop,
    /// Release, ...) never wait for a quorum round here. What may change meanwhile cannot
    /// change the record: session, version and affinity change only under `record_writes`; a
    /// release landing meanwhile raises the release count, and its renewal (`renew_now`)
    /// writes it next. `Ok(false)`: the record moved (expired, taken over) or the session is no
    /// longer here.
    async fn write_member(&self, member: &str, state: MemberState) -> Result<bool, DividerError> {
        let (known, session) = match self.sessions.lock().await.get(member) {
            Some(s) => (s.version, s.session.clone()),
            None => return Ok(false),
        };
        let Some(expect) = self.expected_version(member, known, &session).await? else {
            return Ok(false);
        };
        let (record, sent) = match self.sessions.lock().await.get(member).filter(|s| s.session == session) {
            Some(s) => (s.record(state, expect), Instant::now()),
            None => return Ok(false),
        };
        let outcome = self.put(&self.layout.member(member), expect, record.encode()).await;
        let mut sessions = self.sessions.lock().await;
        match sessions.get_mut(member).filter(|s| s.session == session) {
            Some(s) => self.apply_write(member, s, state, record, sent, outcome),
            None => Ok(false),
        }
    }

    /// Starts a new session for `member` over whatever its record holds (the old session, if
    /// any, is dead from this write on: its keys become claimable). The caller holds
    /// `record_writes`.
    async fn rejoin(&self, member: &str) -> Result<(), DividerError> {
        let current = self.registers.read(&self.layout.member(member)).await?;
        match self.sessions.lock().await.get_mut(member) {
            Some(s) => {
                s.version = Some(current.map_or(0, |e| e.version));
                s.session = new_session_id();
            }
            None => return Ok(()),
        }
        if self.write_member(member, MemberState::Live).await? {
            if let Some(s) = self.sessions.lock().await.get_mut(member) {
                s.lost = false;
                s.send(Event::Joined { member: member.to_string(), session: s.session.clone(), affinity: s.affinity });
                s.send(Event::Lease { valid_for: s.lease.valid_for(Instant::now()) });
            }
        }
        Ok(())
    }

    /// One renewal tick of a session (the caller holds `record_writes`): what to write is
    /// judged under `sessions`, the write runs without it.
    async fn tend(&self, member: &str) {
        let now = Instant::now();
        let timeout = self.settings.stop_timeout;
        let leave = {
            let mut sessions = self.sessions.lock().await;
            let Some(s) = sessions.get_mut(member) else { return };
            s.notice_app_gone(now, timeout);
            if s.app_gone {
                for (key, token) in s.holdings.timed_out(now) {
                    tracing::debug!(divider = %self.name, member, key, token, "stop timeout of an abandoned key");
                }
            }
            // Leave once nothing is held (a cancelled session, or an abandoned one whose keys
            // are all released), or once the right of an abandoned session ended.
            let empty = (s.leaving || s.app_gone) && s.holdings.is_empty();
            empty || (s.app_gone && s.lease.ended(now))
        };
        if leave {
            match self.write_member(member, MemberState::Left).await {
                Ok(_) => {
                    if let Some(s) = self.sessions.lock().await.get_mut(member) {
                        s.gone = true;
                    }
                }
                Err(e) => tracing::debug!(divider = %self.name, member, error = %e, "leave not written yet"),
            }
        }
        let lost = {
            let mut sessions = self.sessions.lock().await;
            let Some(s) = sessions.get_mut(member) else { return };
            // An abandoned session is not renewed: its keys are released as their stops time
            // out, and the right ends at the latest by the lease.
            if s.app_gone || s.gone {
                return;
            }
            if !s.lost && s.lease.ended(now) {
                tracing::warn!(divider = %self.name, member, "lease ran out before a renewal: stopping every key");
                s.lose();
            }
            s.lost
        };
        if lost {
            if let Err(e) = self.rejoin(member).await {
                tracing::debug!(divider = %self.name, member, error = %e, "re-join failed");
            }
            return;
        }
        let sent = Instant::now();
        let outcome = self.write_member(member, MemberState::Live).await;
        let mut sessions = self.sessions.lock().await;
        let Some(s) = sessions.get_mut(member) else { return };
        match outcome {
            Ok(true) => {
                self.metrics.renewal("ok", sent.elapsed());
                s.send(Event::Lease { valid_for: s.lease.valid_for(Instant::now()) });
            }
            Ok(false) => {
                self.metrics.renewal("lost", sent.elapsed());
                tracing::warn!(divider = %self.name, member, "member record moved (expired?): stopping every key");
                s.lose();
            }
            Err(e) => {
                self.metrics.renewal("failed", sent.elapsed());
                tracing::debug!(divider = %self.name, member, error = %e, "renewal failed");
            }
        }
        let timed_out = s.holdings.timed_out(Instant::now());
        if !timed_out.is_empty() {
            self.release_wake.notify_one();
        }
        for (key, token) in timed_out {
            s.send(Event::Stop { key, token, reason: StopReason::Timeout });
        }
    }

    async fn tick(&self) {
        let local: BTreeMap<String, String> =
            self.sessions.lock().await.iter().map(|(m, s)| (m.clone(), s.session.clone())).collect();
        let records = {
            let mut view = self.view.lock().await;
            match self.refresh(&mut view, &local).await {
                Ok(()) => Some(view.records.clone()),
                Err(e) => {
                    tracing::debug!(divider = %self.name, error = %e, "refresh failed");
                    None
                }
            }
        };
        if let Some(records) = records {
            self.handoffs(&records).await;
        }
        self.changed.notify_waiters();
    }

    /// The key-set counter and the key set, read again when the counter moved.
    async fn refresh_keys(&self) -> Result<(u64, Arc<Vec<String>>), RegisterError> {
        let mut st = self.keyset.lock().await;
        let kv = self.registers.counter(&self.layout.keyset()).await?.unwrap_or(0);
        if st.version != Some(kv) {
            let added = self.list_all(&self.layout.added_prefix()).await?;
            let removed: BTreeSet<String> = self.list_all(&self.layout.removed_prefix()).await?.into_iter().collect();
            st.keys = Arc::new(key_set(&self.static_keys, &added, &removed));
            st.version = Some(kv);
        }
        Ok((kv, st.keys.clone()))
    }

    async fn refresh(&self, st: &mut ViewState, local: &BTreeMap<String, String>) -> Result<(), RegisterError> {
        let ids = self.list_all(&self.layout.members_prefix()).await?;
        let reads: Vec<(String, Result<Option<Entry>, RegisterError>)> = stream::iter(ids)
            .map(|id| async move {
                let r = self.registers.read(&self.layout.member(&id)).await;
                (id, r)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut records = BTreeMap::new();
        for (id, r) in reads {
            if let Some(e) = r? {
                match MemberRecord::decode(&e.value) {
                    Ok(rec) => {
                        records.insert(id, (e.version, rec));
                    }
                    Err(err) => {
                        tracing::warn!(divider = %self.name, member = %id, error = %err, "skipping a member record")
                    }
                }
            }
        }
        let now = Instant::now();
        let mut expire = Vec::new();
        let mut next_expiry: Option<Instant> = None;
        {
            let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
            for (id, (_, rec)) in &records {
                if rec.state != MemberState::Live {
                    dead.insert(&rec.session);
                }
                if let Some(prev) = st.live_seen.get(id).filter(|prev| !rec.is_live_session(prev)) {
                    dead.insert(prev);
                }
            }
        }
        st.live_seen = records
            .iter()
            .filter(|(_, (_, r))| r.state == MemberState::Live)
            .map(|(id, (_, r))| (id.clone(), r.session.clone()))
            .collect();
        {
            let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            for (id, (v, rec)) in &records {
                let o = Observed::saw(observed.get(id).copied(), *v, now);
                observed.insert(id.clone(), o);
                let local = local.get(id).is_some_and(|s| *s == rec.session);
                if rec.state != MemberState::Live || local {
                    continue;
                }
                let timing = rec.observer_timing(self.settings.timing);
                if o.expired(now, timing) {
                    expire.push((id.clone(), *v, rec.clone()));
                } else {
                    let at = o.expires_at(timing);
                    next_expiry = Some(next_expiry.map_or(at, |n| n.min(at)));
                }
            }
        }
        st.next_expiry = next_expiry;
        for (id, v, mut rec) in expire {
            rec.state = MemberState::Expired;
            rec.changed = v + 1;
            match self.registers.compare_and_set(&self.layout.member(&id), v, rec.encode()).await {
                Ok(Written::Applied { version }) => {
                    tracing::info!(divider = %self.name, member = %id, "member lease expired");
                    self.dead.lock().unwrap_or_else(|e| e.into_inner()).insert(&rec.session);
                    records.insert(id, (version, rec));
                }
                Ok(Written::Conflict { current: Some(e) }) => {
                    if let Ok(r) = MemberRecord::decode(&e.value) {
                        // Expired by another sidecar first (or replaced by a new session).
                        if r.state != MemberState::Live || r.session != rec.session {
                            self.dead.lock().unwrap_or_else(|e| e.into_inner()).insert(&rec.session);
                        }
                        records.insert(id, (e.version, r));
                    }
                }
                Ok(Written::Conflict { current: None }) => {
                    records.remove(&id);
                }
                Err(e) => tracing::debug!(divider = %self.name, member = %id, error = %e, "expiry not written"),
            }
        }
        self.judge_layout(&records);
        let (kv, keys) = self.refresh_keys().await?;
        st.keys = keys;
        let mut handbacks = BTreeMap::new();
        let mut collect = Vec::new();
        for key in self.list_all(&self.layout.handback_prefix()).await? {
            if let Some(e) = self.registers.read(&self.layout.handback(&key)).await? {
                let sessions: BTreeSet<String> =
                    String::from_utf8_lossy(&e.value).lines().map(str::to_string).collect();
                // A marker whose sessions are all dead changes no assignment (dead sessions are
                // no members): it is deleted at the version read, so a handback landing
                // meanwhile makes the delete fail and the marker stays.
                let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
                if sessions.iter().all(|s| dead.contains(s)) {
                    collect.push((key, e.version));
                } else {
                    handbacks.insert(key, sessions);
                }
            }
        }
        for (key, version) in collect.into_iter().take(PARALLEL) {
            if let Err(e) = self.registers.delete(&self.layout.handback(&key), version).await {
                tracing::debug!(divider = %self.name, key, error = %e, "handback marker not collected yet");
            }
        }
        self.metrics
            .handback_markers
            .get_or_create(&super::metrics::DividerLabels { divider: self.name.clone() })
            .set(handbacks.len() as i64);
        let handbacks_changed = st.handbacks != handbacks;
        st.handbacks = handbacks;
        let version = records.values().fold(kv, |acc, (_, r)| acc.saturating_add(r.changed));
        let members: Vec<TableMember> = records
            .iter()
            .filter(|(_, (_, r))| r.state == MemberState::Live)
            .map(|(id, (_, r))| TableMember {
                id: id.clone(),
                session: r.session.clone(),
                affinity: r.affinity,
                address: r.address.clone(),
            })
            .collect();
        st.records = Arc::new(records);
        let current = self.table();
        // The table changes only with its inputs (the version covers members and keys).
        if current.version != version || !Arc::ptr_eq(&current.keys, &st.keys) || handbacks_changed {
            let table = AssignmentTable::compute(version, members, st.keys.clone(), &st.handbacks);
            self.table.send_replace(Arc::new(table));
        }
        Ok(())
    }

    /// The mixed-version guard: blocks the divider while a member record read by this refresh
    /// is a live session of a sidecar that may use the per-key owner layout. Costs nothing
    /// beyond the member reads every refresh makes anyway.
    fn judge_layout(&self, records: &Records) {
        let old: Vec<String> =
            records.iter().filter(|(_, (_, r))| r.live_per_key_layout()).map(|(id, _)| id.clone()).collect();
        self.metrics
            .per_key_layout_members
            .get_or_create(&super::metrics::DividerLabels { divider: self.name.clone() })
            .set(old.len() as i64);
        let verdict = if old.is_empty() { LayoutGuard::Clear } else { LayoutGuard::Blocked(old) };
        self.guard.send_if_modified(|g| {
            if *g == verdict {
                return false;
            }
            match (&verdict, verdict.error(&self.name)) {
                (_, Some(e)) => tracing::error!(divider = %self.name, "{e}"),
                (LayoutGuard::Clear, None) if matches!(g, LayoutGuard::Blocked(_)) => {
                    tracing::info!(divider = %self.name, "no sidecar of the per-key owner layout is live any more: serving keys")
                }
                _ => {}
            }
            *g = verdict;
            true
        });
    }

    /// Waits (up to a request timeout) for the first refresh's verdict of the mixed-version
    /// guard; the error apps get while it blocks the divider.
    async fn layout_refusal(&self) -> Option<DividerError> {
        let mut rx = self.guard.subscribe();
        let _ = tokio::time::timeout(self.settings.request_timeout, rx.wait_for(|g| *g != LayoutGuard::Unknown)).await;
        let g = rx.borrow().clone();
        match g {
            LayoutGuard::Unknown => Some(DividerError::Timeout(format!(
                "divider {:?}: the member records were not read yet; retry",
                self.name
            ))),
            g => g.error(&self.name),
        }
    }

    /// True when the owner record names a session that is live in `records`.
    fn owner_alive(records: &Records, rec: &OwnerRecord) -> bool {
        records.get(&rec.member).is_some_and(|(_, m)| m.is_live_session(&rec.session))
    }

    async fn handoffs(&self, records: &Records) {
        let table = self.table();
        let now = Instant::now();
        let mut claims = Vec::new();
        let blocked = matches!(*self.guard.borrow(), LayoutGuard::Blocked(_));
        let mut sessions = self.sessions.lock().await;
        for (m, s) in sessions.iter_mut() {
            if s.notice_app_gone(now, self.settings.stop_timeout) {
                // Wakes the release loop (what the app confirmed goes now) and the renewal
                // loop (it leaves at once when nothing is held).
                self.release_wake.notify_one();
                self.renew_now.notify_one();
            }
            if s.gone || s.lost || s.lease.ended(now) {
                continue;
            }
            if blocked {
                // A sidecar of the per-key layout ignores these owner buckets and may claim
                // any key: every key held here stops at once (its token dead), and nothing is
                // claimed until the guard clears.
                if !s.holdings.is_empty() {
                    tracing::warn!(divider = %self.name, member = %m, "stopping every key: a sidecar of the per-key owner layout is live");
                    s.lose();
                }
                continue;
            }
            if s.app_gone {
                // Nothing to tell or claim; the release loop releases what the app confirmed or
                // released, and keys whose stop timed out (see `Session::notice_app_gone`).
                continue;
            }
            // One search of the table per held key, and a clone only for the keys that stop
            // (with 100k keys a pass that cloned every held key and searched the table twice per
            // key took the CPU a leave or a claim needed).
            let leaving = s.leaving || s.flushing;
            let stops: Vec<(String, StopReason)> = s
                .holdings
                .iter()
                .filter(|(_, k)| matches!(k, super::handoff::KeyState::Owned { .. }))
                .filter_map(|(key, _)| {
                    let reason = match table.lookup(key) {
                        _ if leaving => StopReason::Leaving,
                        None => StopReason::Removed,
                        Some(owner) if owner.is_none_or(|o| o.id != *m) => StopReason::Reassigned,
                        Some(_) => return None,
                    };
                    Some((key.clone(), reason))
                })
                .collect();
            for (key, reason) in stops {
                s.stop(key, now, self.settings.stop_timeout, reason);
            }
            let current = table.members.iter().any(|t| t.id == *m && t.session == s.session);
            // Claims wait while renewals struggle (less than a tick of right left): they compete
            // for the same quorum.
            let renewing = s.lease.valid_for(now) >= self.settings.tick();
            if current && renewing && !s.leaving && !s.flushing && s.affinity > 0 {
                for key in table.iter_keys_of(m) {
                    if s.holdings.get(key).is_none() {
                        claims.push((m.clone(), s.session.clone(), key.clone()));
                    }
                }
            }
        }
        drop(sessions);
        let claims: Vec<(String, String, String)> = {
            let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
            if blocked.len() > table.keys.len() + MAX_DEAD {
                blocked.clear();
            }
            claims
                .into_iter()
                .filter(|(_, _, key)| match blocked.get(key) {
                    Some((om, os, count))
                        if records.get(om).is_some_and(|(_, r)| r.is_live_session(os) && r.released == *count) =>
                    {
                        false
                    }
                    Some(_) => {
                        blocked.remove(key);
                        true
                    }
                    None => true,
                })
                .collect()
        };
        let table_ref = &table;
        let waiting = claims.len();
        let mut started = 0;
        // Starts go out as claims land (a first tick may claim tens of thousands of keys). A
        // pass issues claims for at most a tick, then the loop refreshes the table at once and
        // goes on with what is left, so a long first pass never hides expiries or moves.
        let budget = Instant::now() + self.settings.tick();
        // One compare-and-set per bucket takes every key of the bucket this sidecar claims. The
        // buckets go in a random order, so two claimers rarely meet on one bucket at once.
        let mut claim_buckets: BTreeMap<u32, Vec<Claim>> = BTreeMap::new();
        for c in claims {
            claim_buckets.entry(owner_bucket(&c.2)).or_default().push(c);
        }
        let mut claim_buckets: Vec<(u64, u32, Vec<Claim>)> =
            claim_buckets.into_iter().map(|(b, group)| (rand::random::<u64>(), b, group)).collect();
        claim_buckets.sort_unstable_by_key(|(order, b, _)| (*order, *b));
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut2 = cut.clone();
        let claimed = stream::iter(claim_buckets)
            .take_while(move |_| {
                let go = Instant::now() < budget;
                if !go {
                    cut2.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                futures::future::ready(go)
            })
            .map(|(_, bucket, group)| async move {
                match self.claim_bucket(records, table_ref, bucket, &group).await {
                    Ok(won) => won,
                    Err(e) => {
                        tracing::debug!(divider = %self.name, bucket, error = %e, "claims failed");
                        Vec::new()
                    }
                }
            })
            .buffer_unordered(CLAIM_PARALLEL)
            .flat_map(stream::iter)
            .ready_chunks(CLAIM_BATCH);
        tokio::pin!(claimed);
        while let Some(batch) = claimed.next().await {
            started += batch.len();
            let now = Instant::now();
            let mut sessions = self.sessions.lock().await;
            // Back off when renewals struggle (the claims left are retried next pass; one cut
            // short may still land: the next pass finds the record naming its session).
            let back_off = !sessions.values().any(|s| s.lease.valid_for(now) >= self.settings.tick());
            for (m, session, key, token) in batch {
                // A claim made for a session that is gone since names a dead session: anyone
                // may claim the key again.
                if let Some(s) = sessions.get_mut(&m).filter(|s| s.session == session) {
                    if !s.lease.ended(now) && !s.lost && !s.app_gone && s.holdings.get(&key).is_none() {
                        s.holdings.start(&key, token);
                        s.send(Event::Start { key, token });
                    }
                }
            }
            if back_off {
                tracing::debug!(divider = %self.name, "renewals are slow: claims wait for the next pass");
                break;
            }
        }
        if cut.load(std::sync::atomic::Ordering::SeqCst) {
            self.refresh_soon();
        }
        let owned: usize = self.sessions.lock().await.values().map(|s| s.holdings.len()).sum();
        self.metrics.keys(&self.name, owned, waiting.saturating_sub(started));
        tracing::debug!(divider = %self.name, waiting, started, owned, ms = now.elapsed().as_millis() as u64, "handoff pass");
    }

    /// Writes the releases of keys the apps are done with (confirmed, released, stop timed
    /// out), apart from the handoff loop, whose refresh a slow quorum can stall: woken by
    /// confirms and releases, it gathers for [`WAKE_GATHER`] and writes every release pending
    /// then by one compare-and-set per bucket, so confirms arriving while a write is in flight
    /// go into the next write of their bucket.
    async fn release_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.release_wake.notified() => tokio::time::sleep(WAKE_GATHER).await,
                _ = tokio::time::sleep(self.settings.poll()) => {}
            }
            self.write_releases().await;
        }
    }

    /// One pass of [`Divider::release_loop`].
    async fn write_releases(&self) {
        let now = Instant::now();
        let mut buckets: BTreeMap<u32, Vec<Release>> = BTreeMap::new();
        {
            let mut sessions = self.sessions.lock().await;
            for (m, s) in sessions.iter_mut() {
                // After its right ended a session writes nothing more but `left`.
                if s.gone || s.lost || s.lease.ended(now) {
                    continue;
                }
                if s.app_gone {
                    s.holdings.timed_out(now);
                }
                for (key, token, done) in s.holdings.releasing() {
                    let r = Release { member: m.clone(), session: s.session.clone(), key, token, done };
                    buckets.entry(owner_bucket(&r.key)).or_default().push(r);
                }
            }
        }
        if buckets.is_empty() {
            return;
        }
        let table = self.table();
        let table_ref = &table;
        let released: Vec<(String, String, u64)> = stream::iter(buckets)
            .map(|(bucket, group)| async move {
                match self.release_bucket(table_ref, bucket, &group).await {
                    Ok(()) => group.into_iter().map(|r| (r.member, r.key, r.token)).collect(),
                    Err(e) => {
                        tracing::debug!(divider = %self.name, bucket, error = %e, "releases not written yet");
                        Vec::new()
                    }
                }
            })
            .buffer_unordered(CLAIM_PARALLEL)
            .flat_map(stream::iter)
            .collect()
            .await;
        if !released.is_empty() {
            let mut sessions = self.sessions.lock().await;
            for (m, key, token) in released {
                if let Some(s) = sessions.get_mut(&m) {
                    s.released(&key, token);
                }
            }
            // Renew now: the record carries the new release count, which tells claimers waiting
            // on these keys to try again (and a leaving session that released its last key
            // writes `left`).
            self.renew_now.notify_one();
        }
        self.changed.notify_waiters();
    }

    /// True when a fresh read shows the owner record's session live.
    async fn session_alive(&self, rec: &OwnerRecord) -> Result<bool, RegisterError> {
        let m = self.registers.read(&self.layout.member(&rec.member)).await?;
        Ok(m.and_then(|m| MemberRecord::decode(&m.value).ok()).is_some_and(|m| m.is_live_session(&rec.session)))
    }

    /// The bucket register `bucket` as read (or as a conflict reply carried it): its version
    /// (0: never written) and its owner records.
    fn bucket_of(&self, bucket: u32, entry: Option<&Entry>) -> Result<(u64, OwnerBucket), DividerError> {
        match entry {
            None => Ok((0, OwnerBucket::default())),
            Some(e) => OwnerBucket::decode(&e.value)
                .map(|b| (e.version, b))
                .map_err(|err| DividerError::Precondition(format!("{}: {err}", self.layout.owners(bucket)))),
        }
    }

    /// Writes bucket `bucket` at `version` (0: create), first pruning released records of keys
    /// no longer in the key set (a key without a record is claimable, as a released one is).
    async fn write_bucket(
        &self,
        table: &AssignmentTable,
        bucket: u32,
        version: u64,
        mut b: OwnerBucket,
    ) -> Result<Written, DividerError> {
        b.owners.retain(|key, r| r.state == OwnerState::Owned || table.contains(key));
        Ok(self.put(&self.layout.owners(bucket), version, b.encode()).await?)
    }

    /// Claims the keys of `claims` (`(member, session, key)`, all in bucket `bucket`) whose
    /// owner released them or lost its session, in one compare-and-set of the bucket at the
    /// version read; returns the keys claimed with their token.
    ///
    /// The token of a claim is the version this write gives the bucket plus [`TOKEN_BASE`] (the
    /// version read plus `TOKEN_BASE + 1`; never below any token the bucket holds plus one), so a key's tokens strictly
    /// increase: a later claim of it is a later write of its bucket. A conflict (another claimer
    /// or a release wrote the bucket meanwhile) is judged again on the value the conflict reply
    /// carries (a linearizable read), up to [`BUCKET_ATTEMPTS`] times.
    async fn claim_bucket(
        &self,
        records: &Records,
        table: &AssignmentTable,
        bucket: u32,
        claims: &[Claim],
    ) -> Result<Vec<(String, String, String, u64)>, DividerError> {
        let mut current = self.registers.read(&self.layout.owners(bucket)).await?;
        // Sessions a fresh read (made after a read of this bucket) found live: skipped.
        let mut alive: HashSet<String> = HashSet::new();
        for _ in 0..BUCKET_ATTEMPTS {
            let (version, mut b) = self.bucket_of(bucket, current.as_ref())?;
            let mut won = Vec::new();
            let mut take = Vec::new();
            for (member, session, key) in claims {
                match b.owners.get(key) {
                    // Ours already: a claim whose reply was lost.
                    Some(r) if r.state == OwnerState::Owned && r.member == *member && r.session == *session => {
                        won.push((member.clone(), session.clone(), key.clone(), r.token));
                    }
                    Some(r) if r.state == OwnerState::Owned && Self::owner_alive(records, r) => {
                        if let Some((_, m)) = records.get(&r.member) {
                            let wait = (r.member.clone(), r.session.clone(), m.released);
                            self.blocked.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), wait);
                        }
                    }
                    Some(r) if r.state == OwnerState::Owned => {
                        // The tick's records may predate the owner's join: only a session known
                        // dead (see [`DeadSessions`]), or a fresh read of its member record made
                        // after this read of the bucket, may declare it dead (sessions never
                        // come back).
                        if alive.contains(&r.session) {
                            continue;
                        }
                        let known_dead = self.dead.lock().unwrap_or_else(|e| e.into_inner()).contains(&r.session);
                        if !known_dead {
                            if self.session_alive(r).await? {
                                alive.insert(r.session.clone());
                                continue;
                            }
                            self.dead.lock().unwrap_or_else(|e| e.into_inner()).insert(&r.session);
                        }
                        take.push((member, session, key));
                    }
                    // Released, or never owned: claimable.
                    _ => take.push((member, session, key)),
                }
            }
            if take.is_empty() {
                return Ok(won);
            }
            let highest = b.owners.values().map(|r| r.token).max().unwrap_or(0);
            let token =
                version.checked_add(TOKEN_BASE).map(|t| t.max(highest)).and_then(|t| t.checked_add(1)).ok_or_else(
                    || DividerError::OutOfRange(format!("{}: token would overflow", self.layout.owners(bucket))),
                )?;
            for (member, session, key) in &take {
                let rec = OwnerRecord {
                    member: member.to_string(),
                    session: session.to_string(),
                    state: OwnerState::Owned,
                    token,
                };
                b.owners.insert(key.to_string(), rec);
            }
            match self.write_bucket(table, bucket, version, b).await? {
                Written::Applied { .. } => {
                    won.extend(take.into_iter().map(|(m, s, k)| (m.clone(), s.clone(), k.clone(), token)));
                    return Ok(won);
                }
                Written::Conflict { current: c } => current = c,
            }
        }
        Err(DividerError::Timeout(format!(
            "{}: {BUCKET_ATTEMPTS} compare-and-sets conflicted; the claims wait for the next pass",
            self.layout.owners(bucket)
        )))
    }

    /// Writes the records of `releases` (all in bucket `bucket`) `released`, in one
    /// compare-and-set of the bucket, removing each `done` key from the key set first. A record
    /// that moved on (another owner, or another token) already counts as released.
    async fn release_bucket(
        &self,
        table: &AssignmentTable,
        bucket: u32,
        releases: &[Release],
    ) -> Result<(), DividerError> {
        let done: Vec<String> = releases.iter().filter(|r| r.done).map(|r| r.key.clone()).collect();
        if !done.is_empty() {
            self.change_keys(&done, false).await?;
        }
        let mut current = self.registers.read(&self.layout.owners(bucket)).await?;
        for _ in 0..BUCKET_ATTEMPTS {
            let (version, mut b) = self.bucket_of(bucket, current.as_ref())?;
            let mut changed = false;
            for r in releases {
                if let Some(o) = b.owners.get_mut(&r.key).filter(|o| {
                    o.state == OwnerState::Owned && o.member == r.member && o.session == r.session && o.token == r.token
                }) {
                    o.state = OwnerState::Released;
                    changed = true;
                }
            }
            if !changed {
                return Ok(());
            }
            match self.write_bucket(table, bucket, version, b).await? {
                Written::Applied { .. } => return Ok(()),
                Written::Conflict { current: c } => current = c,
            }
        }
        Err(DividerError::Timeout(format!(
            "{}: {BUCKET_ATTEMPTS} compare-and-sets conflicted; the releases wait for the next pass",
            self.layout.owners(bucket)
        )))
    }

    // ---- calls from apps ----

    /// Opens a session for `member`; returns its event stream.
    pub async fn watch(
        &self,
        member: &str,
        affinity: Option<i64>,
        address: &str,
    ) -> Result<mpsc::UnboundedReceiver<Event>, DividerError> {
        validate_name(member).map_err(|e| DividerError::Invalid(format!("member {member:?}: {e}")))?;
        check_address(address).map_err(DividerError::Invalid)?;
        let affinity = affinity.map(affinity_from).transpose()?.unwrap_or(self.default_affinity);
        if let Some(e) = self.layout_refusal().await {
            return Err(e);
        }
        // Joins write a member record: `record_writes` (not `sessions`) is held across it, and
        // makes the check below and the insert one step against other joins.
        let _writer = self.record_writes.lock().await;
        if self.sessions.lock().await.contains_key(member) {
            return Err(DividerError::AlreadyExists(format!("member {member:?} already has a live session here")));
        }
        let key = self.layout.member(member);
        let current = self.registers.read(&key).await?;
        let expect = match &current {
            None => 0,
            Some(e) => {
                let rec = MemberRecord::decode(&e.value).ok();
                let live = rec.as_ref().is_some_and(|r| r.state == MemberState::Live);
                let timing = rec.as_ref().map_or(self.settings.timing, |r| r.observer_timing(self.settings.timing));
                let dead = self
                    .observed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(member)
                    .is_some_and(|o| o.version == e.version && o.expired(Instant::now(), timing));
                if live && !dead {
                    return Err(DividerError::AlreadyExists(format!(
                        "member {member:?} has a live session; retry once its lease ({} ms) has run out",
                        self.settings.timing.lease.as_millis()
                    )));
                }
                e.version
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = Session {
            session: new_session_id(),
            affinity,
            address: address.to_string(),
            version: Some(expect),
            written: None,
            lease: HolderLease::new(self.settings.timing),
            holdings: Holdings::default(),
            events: tx,
            metrics: self.metrics.clone(),
            stops_sent: HashMap::new(),
            releases: 0,
            leaving: false,
            flushing: false,
            app_gone: false,
            lost: false,
            gone: false,
        };
        if !self.write_session(member, &mut s, MemberState::Live).await? {
            return Err(DividerError::AlreadyExists(format!("member {member:?} joined elsewhere at the same time")));
        }
        s.send(Event::Joined { member: member.to_string(), session: s.session.clone(), affinity });
        s.send(Event::Lease { valid_for: s.lease.valid_for(Instant::now()) });
        self.sessions.lock().await.insert(member.to_string(), s);
        self.refresh_soon();
        Ok(rx)
    }

    /// Runs `f` on `member`'s session (held by an app that is still there), then wakes the
    /// loops `wake` names.
    async fn with_session<T>(
        &self,
        member: &str,
        wake: Wake,
        f: impl FnOnce(&mut Session) -> Result<T, DividerError>,
    ) -> Result<T, DividerError> {
        let mut sessions = self.sessions.lock().await;
        let s = sessions
            .get_mut(member)
            .filter(|s| !s.gone && !s.app_gone)
            .ok_or_else(|| DividerError::NotFound(format!("member {member:?} has no session on this sidecar")))?;
        let out = f(s)?;
        drop(sessions);
        if matches!(wake, Wake::Releases | Wake::Both) {
            self.release_wake.notify_one();
        }
        if matches!(wake, Wake::Handoffs | Wake::Both) {
            self.wake.notify_one();
        }
        Ok(out)
    }

    /// The app confirmed the stop of `key` at `token`.
    pub async fn confirm_stop(&self, member: &str, key: &str, token: u64) -> Result<(), DividerError> {
        self.with_session(member, Wake::Releases, |s| Ok(s.holdings.confirm(key, token)?)).await
    }

    /// The app confirmed the stops of `stops` (`(key, token)`), in one pass over its session:
    /// each is checked as [`Divider::confirm_stop`] checks it; returns the ones refused with
    /// their error (the others are confirmed). A member without a session refuses the whole
    /// call.
    pub async fn confirm_stops(
        &self,
        member: &str,
        stops: &[(String, u64)],
    ) -> Result<Vec<(String, DividerError)>, DividerError> {
        self.with_session(member, Wake::Releases, |s| {
            Ok(stops
                .iter()
                .filter_map(|(key, token)| s.holdings.confirm(key, *token).err().map(|e| (key.clone(), e.into())))
                .collect())
        })
        .await
    }

    /// The app gives `key` up: `done` removes it from the divider, otherwise it is handed back
    /// (assigned among the other members while this session lives).
    pub async fn release(&self, member: &str, key: &str, token: u64, done: bool) -> Result<(), DividerError> {
        let session = self
            .with_session(member, Wake::Nothing, |s| {
                match s.holdings.get(key) {
                    None => return Err(HandoffError::NotHeld(key.to_string()).into()),
                    Some(k) if k.token() != token => {
                        return Err(
                            HandoffError::WrongToken { key: key.into(), given: token, current: k.token() }.into()
                        )
                    }
                    _ => {}
                }
                Ok(s.session.clone())
            })
            .await?;
        if !done {
            // The handback marker goes first, so no sidecar assigns the key to this session again.
            let hkey = self.layout.handback(key);
            let current = self.registers.read(&hkey).await?;
            let mut sessions: BTreeSet<String> = current
                .as_ref()
                .map(|e| String::from_utf8_lossy(&e.value).lines().map(str::to_string).collect())
                .unwrap_or_default();
            sessions.insert(session);
            let value = sessions.into_iter().collect::<Vec<_>>().join("\n").into_bytes();
            if let Written::Conflict { .. } = self.put(&hkey, current.map_or(0, |e| e.version), value).await? {
                return Err(DividerError::Precondition(format!("key {key:?} was handed back concurrently; retry")));
            }
        }
        self.with_session(member, Wake::Both, |s| Ok(s.holdings.release(key, token, done)?)).await
    }

    /// Keys the member holds and works on (owned or stopping), with tokens.
    pub async fn assigned(&self, member: &str) -> Result<Vec<(String, u64)>, DividerError> {
        self.with_session(member, Wake::Nothing, |s| {
            Ok(s.holdings
                .iter()
                .filter(|(_, k)| !matches!(k, super::handoff::KeyState::Releasing { .. }))
                .map(|(key, k)| (key.clone(), k.token()))
                .collect())
        })
        .await
    }

    /// The member's affinity.
    pub async fn affinity(&self, member: &str) -> Result<u32, DividerError> {
        self.with_session(member, Wake::Nothing, |s| Ok(s.affinity)).await
    }

    /// Sets the member's affinity to `f(current)` and writes it (atomic per member: one
    /// writer). On failure the old affinity stays.
    pub async fn update_affinity(
        &self,
        member: &str,
        f: impl FnOnce(u32) -> Result<u32, DividerError>,
    ) -> Result<u32, DividerError> {
        self.write_affinity(member, f, false).await
    }

    /// [`Divider::update_affinity`]; `abandoned` also allows a session whose app went away (a
    /// planned leave lowers its affinity so the others' tables move its keys at once).
    async fn write_affinity(
        &self,
        member: &str,
        f: impl FnOnce(u32) -> Result<u32, DividerError>,
        abandoned: bool,
    ) -> Result<u32, DividerError> {
        let _writer = self.record_writes.lock().await;
        let not_found = || DividerError::NotFound(format!("member {member:?} has no session on this sidecar"));
        let old = {
            let mut sessions = self.sessions.lock().await;
            // An abandoned session whose right ended is not renewed (it only leaves).
            let s = sessions
                .get_mut(member)
                .filter(|s| !s.gone && (!s.app_gone || (abandoned && !s.lease.ended(Instant::now()))))
                .ok_or_else(not_found)?;
            let old = s.affinity;
            s.affinity = f(old)?;
            old
        };
        let outcome = self.write_member(member, MemberState::Live).await;
        let mut sessions = self.sessions.lock().await;
        let s = sessions.get_mut(member).ok_or_else(not_found)?;
        let ok = match outcome {
            Ok(true) => true,
            Ok(false) => {
                s.lose();
                false
            }
            Err(e) => {
                s.affinity = old;
                return Err(e);
            }
        };
        let affinity = s.affinity;
        drop(sessions);
        self.refresh_soon();
        if !ok {
            return Err(DividerError::Precondition(format!(
                "member {member:?} lost its lease; it re-joins with affinity {affinity}"
            )));
        }
        Ok(affinity)
    }

    /// Sets affinity 0, stops every key, and returns once every stop is confirmed (or timed
    /// out) and the keys are owned by other members (or nobody else has affinity > 0).
    pub async fn flush(&self, member: &str) -> Result<(), DividerError> {
        let held: Vec<String> = self.assigned(member).await?.into_iter().map(|(k, _)| k).collect();
        self.update_affinity(member, |_| Ok(0)).await?;
        self.with_session(member, Wake::Handoffs, |s| {
            s.flushing = true;
            Ok(())
        })
        .await?;
        let deadline = Instant::now() + self.settings.stop_timeout + 3 * self.settings.timing.lease;
        let mut pending: BTreeSet<String> = held.into_iter().collect();
        loop {
            let empty = self.with_session(member, Wake::Nothing, |s| Ok(s.holdings.is_empty())).await?;
            if empty {
                let table = self.table();
                let mut still = BTreeSet::new();
                for key in &pending {
                    if !table.contains(key) || !table.anyone_works() {
                        continue;
                    }
                    let owner = self.lookup(key).await?;
                    if owner.member.is_none() || owner.member.as_deref() == Some(member) {
                        still.insert(key.clone());
                    }
                }
                pending = still;
                if pending.is_empty() {
                    let _ = self
                        .with_session(member, Wake::Nothing, |s| {
                            s.flushing = false;
                            Ok(())
                        })
                        .await;
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(DividerError::Timeout(format!(
                    "flush of {member:?}: {} keys not yet confirmed or moved",
                    pending.len()
                )));
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.changed.notified()).await;
        }
    }

    /// Leaves: stops every key, waits for the confirms (up to the stop timeout), writes the
    /// member record `left` and ends the session's stream.
    pub async fn cancel(&self, member: &str) -> Result<(), DividerError> {
        self.with_session(member, Wake::Handoffs, |s| {
            s.leaving = true;
            Ok(())
        })
        .await?;
        let deadline = Instant::now() + self.settings.stop_timeout + 3 * self.settings.timing.lease;
        loop {
            if !self.sessions.lock().await.contains_key(member) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DividerError::Timeout(format!("cancel of {member:?} did not finish")));
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.changed.notified()).await;
        }
    }

    /// Every session on this sidecar leaves (SIGTERM): `Stop{LEAVING}` for every key goes out at
    /// once, and affinity 0 is written meanwhile, so every other sidecar's table moves the keys
    /// and claims each one at its next pass after its release lands; the releases as the app confirms
    /// (or at the stop timeout, the app being told its token is dead), and `left`. A session
    /// whose app already went away leaves the same way, without the Stops it can no longer get:
    /// what its app confirmed is released at once, the rest at the stop timeout counted from
    /// when the app went away (see `Session::notice_app_gone`), then `left`. Returns once every
    /// session is gone, or at `deadline`.
    pub async fn leave_all(&self, deadline: Instant) {
        let members: Vec<String> =
            self.sessions.lock().await.iter().filter(|(_, s)| !s.gone).map(|(m, _)| m.clone()).collect();
        // The Stops go out at once, not from the handoff loop, whose refresh may be stalled by a
        // slow quorum (a paused member), nor after the affinity writes, which only let the other
        // sidecars move the keys sooner.
        {
            let now = Instant::now();
            let mut sessions = self.sessions.lock().await;
            for m in &members {
                if let Some(s) = sessions.get_mut(m) {
                    s.leaving = true;
                    if !s.app_gone && !s.lost {
                        for (key, _) in s.holdings.working() {
                            s.stop(key, now, self.settings.stop_timeout, StopReason::Leaving);
                        }
                    }
                }
            }
        }
        self.wake.notify_one();
        for m in &members {
            if let Err(e) = self.write_affinity(m, |_| Ok(0), true).await {
                tracing::debug!(divider = %self.name, member = %m, error = %e, "affinity 0 not written before leaving");
            }
        }
        self.refresh_soon();
        loop {
            let left = {
                let sessions = self.sessions.lock().await;
                members.iter().filter(|m| sessions.get(*m).is_some_and(|s| !s.gone)).count()
            };
            if left == 0 {
                tracing::info!(divider = %self.name, sessions = members.len(), "every session left");
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(divider = %self.name, sessions = left, "sessions still leaving at the deadline");
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), self.changed.notified()).await;
        }
    }

    /// The owner of `key` now (linearizable reads of its owner and member records).
    pub async fn lookup(&self, key: &str) -> Result<Owner, DividerError> {
        self.layout.check_key(key).map_err(DividerError::Invalid)?;
        let bucket = owner_bucket(key);
        let entry = self.registers.read(&self.layout.owners(bucket)).await?;
        let (_, b) = self.bucket_of(bucket, entry.as_ref())?;
        let Some(rec) = b.owners.get(key) else {
            return Ok(Owner { member: None, address: String::new(), token: 0 });
        };
        if rec.state == OwnerState::Released {
            return Ok(Owner { member: None, address: String::new(), token: rec.token });
        }
        let member = self.registers.read(&self.layout.member(&rec.member)).await?;
        match member.and_then(|m| MemberRecord::decode(&m.value).ok()) {
            Some(m) if m.is_live_session(&rec.session) => {
                Ok(Owner { member: Some(rec.member.clone()), address: m.address, token: rec.token })
            }
            _ => Ok(Owner { member: None, address: String::new(), token: rec.token }),
        }
    }

    /// Adds (`add`) or removes keys; returns how many changed.
    async fn change_keys(&self, keys: &[String], add: bool) -> Result<u32, DividerError> {
        let results: Vec<Result<bool, RegisterError>> = stream::iter(keys.to_vec())
            .map(|k| async move {
                let k = k.as_str();
                let is_static = self.static_keys.binary_search_by(|s| s.as_str().cmp(k)).is_ok();
                // A static key is present unless marked removed; a run-time key while its
                // register exists.
                let (reg, present_when_exists) =
                    if is_static { (self.layout.removed(k), false) } else { (self.layout.added(k), true) };
                let want_exists = add == present_when_exists;
                if want_exists {
                    // A create conflicts when the register exists: nothing to change.
                    return Ok(matches!(self.registers.create(&reg, Vec::new()).await?, Written::Applied { .. }));
                }
                Ok(match self.registers.read(&reg).await? {
                    Some(e) => matches!(self.registers.delete(&reg, e.version).await?, Written::Applied { .. }),
                    None => false,
                })
            })
            .buffer_unordered(CLAIM_PARALLEL)
            .collect()
            .await;
        let mut changed = 0u32;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        if changed > 0 || first_error.is_some() {
            let deadline = Instant::now() + self.settings.request_timeout;
            self.registers.add(&self.layout.keyset(), 1, 0, deadline).await?;
            self.refresh_soon();
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(changed),
        }
    }

    /// Adds keys at run time; returns how many were not there yet.
    pub async fn add_keys(&self, keys: &[String]) -> Result<u32, DividerError> {
        check_batch(&self.layout, keys).map_err(DividerError::Invalid)?;
        self.change_keys(keys, true).await
    }

    /// Removes keys; returns how many were there.
    pub async fn remove_keys(&self, keys: &[String]) -> Result<u32, DividerError> {
        check_batch(&self.layout, keys).map_err(DividerError::Invalid)?;
        self.change_keys(keys, false).await
    }

    /// Up to `limit` keys under `prefix` after `after`; the next `after` when there are more.
    pub async fn list_keys(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>), DividerError> {
        let (_, keys) = self.refresh_keys().await?;
        Ok(page(&keys, prefix, after, limit))
    }
}

/// One page of sorted `keys` under `prefix` after `after`.
pub fn page(keys: &[String], prefix: &str, after: &str, limit: usize) -> (Vec<String>, Option<String>) {
    let start = keys.partition_point(|k| k.as_str() <= after || k.as_str() < prefix);
    let mut out: Vec<String> =
        keys[start..].iter().take_while(|k| k.starts_with(prefix)).take(limit + 1).cloned().collect();
    let more = out.len() > limit;
    out.truncate(limit);
    let next = if more { out.last().cloned() } else { None };
    (out, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_a_prefix() {
        let keys: Vec<String> = ["a1", "b1", "b2", "b3", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(page(&keys, "b", "", 2), (vec!["b1".into(), "b2".into()], Some("b2".into())));
        assert_eq!(page(&keys, "b", "b2", 2), (vec!["b3".into()], None));
        assert_eq!(page(&keys, "", "", 10).0.len(), 5);
        assert!(affinity_from(-1).is_err() && affinity_from(i64::from(u32::MAX) + 1).is_err());
    }

    #[test]
    fn dead_sessions_are_bounded_and_forget_the_oldest_first() {
        let mut d = DeadSessions::default();
        for i in 0..MAX_DEAD + 10 {
            d.insert(&format!("s{i}"));
        }
        d.insert("s20");
        assert_eq!(d.set.len(), MAX_DEAD);
        assert!(!d.contains("s0") && !d.contains("s9"), "the oldest are forgotten");
        assert!(d.contains("s10") && d.contains(&format!("s{}", MAX_DEAD + 9)));
    }
}
