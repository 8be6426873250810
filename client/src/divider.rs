//! The work divider from an app: a [`Divider`] handle for one named divider, a [`Membership`]
//! (one member session) whose [`Membership::next`] yields Start/Stop events and enforces the
//! lease on the app's side, and a [`RoutingCache`] that follows the assignment.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ordo_client::ClientError> {
//! use ordo_client::divider::DividerEvent;
//! let client = ordo_client::Client::connect_default().await?;
//! let mut me = client.divider("stocks").join("worker-1", Some(1), "10.0.0.7:8080").await?;
//! while let Some(event) = me.next().await {
//!     match event? {
//!         DividerEvent::Start { key, token } => { /* start work; pass `token` downstream */ }
//!         DividerEvent::Stop { key, token, .. } => { /* finish */ me.confirm_stop(&key, token).await?; }
//!         DividerEvent::LeaseExpired { keys } => { /* stop every key in `keys` at once */ }
//!         DividerEvent::Joined { .. } => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! With many keys, a member that leaves sends a burst of Stops; confirming each by its own call
//! bounds the handover by the app's round trips. Take the Stops already received with
//! [`Membership::next_ready`] and confirm them in one [`Membership::confirm_stops`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ordo_proto::v1 as pb;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::ClientError;

pub use pb::stop::Reason as StopReason;

/// Stops one `ConfirmStops` call carries at most (the sidecar refuses more).
const CONFIRMS_PER_CALL: usize = 10_000;

/// An event of a member session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DividerEvent {
    /// The session is registered (again after a lost lease, with a new session id).
    Joined {
        /// Member id.
        member: String,
        /// Session id.
        session: String,
    },
    /// Start working on `key`; pass `token` to downstream systems.
    Start {
        /// Key.
        key: String,
        /// Fencing token (strictly increasing per key).
        token: u64,
    },
    /// Stop working on `key`; confirm with [`Membership::confirm_stop`] unless `reason` says the
    /// token is already dead (`Timeout`, `LeaseLost`).
    Stop {
        /// Key.
        key: String,
        /// Its token.
        token: u64,
        /// Why.
        reason: StopReason,
    },
    /// The lease ran out without a renewal (the sidecar is paused, dead or cut off), or the
    /// stream ended: stop every listed key now; their tokens are dead.
    LeaseExpired {
        /// Keys and tokens held until now.
        keys: Vec<(String, u64)>,
    },
}

/// A handle on one divider (empty name: the sidecar's configured divider).
#[derive(Clone)]
pub struct Divider {
    api: pb::divider_client::DividerClient<Channel>,
    name: String,
}

/// The owner of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Member id; `None` when nobody owns the key now.
    pub owner: Option<String>,
    /// The owner's address.
    pub address: String,
    /// The key's current token (0: never owned).
    pub token: u64,
}

/// The assignment a sidecar computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Grows with every change of members, affinities or keys.
    pub version: u64,
    /// Members: id -> (affinity, address).
    pub members: BTreeMap<String, (u64, String)>,
    /// Key -> assigned member (`None`: no member with affinity > 0).
    pub keys: BTreeMap<String, Option<String>>,
}

impl Divider {
    pub(crate) fn new(channel: Channel, name: &str) -> Self {
        Self { api: pb::divider_client::DividerClient::new(channel), name: name.to_string() }
    }

    /// The divider's name (empty: the configured one).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Joins as `member` (empty: the sidecar's id) with `affinity` (`None`: the divider's
    /// default) and an `address` others can reach it at.
    pub async fn join(&self, member: &str, affinity: Option<i64>, address: &str) -> Result<Membership, ClientError> {
        let req =
            pb::WatchRequest { divider: self.name.clone(), member: member.into(), affinity, address: address.into() };
        let mut stream = self.api.clone().watch(req).await?.into_inner();
        // Read the stream as it arrives, stamping each message, so that a Lease read late
        // still counts from its arrival (an app busy elsewhere never extends its right).
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let msg = stream.message().await;
                let last = !matches!(msg, Ok(Some(_)));
                if tx.send((Instant::now(), msg)).is_err() || last {
                    break;
                }
            }
        });
        Ok(Membership {
            divider: self.clone(),
            member: member.to_string(),
            events,
            reader,
            deadline: None,
            held: BTreeMap::new(),
            ended: None,
        })
    }

    /// Adds keys; returns how many were new.
    pub async fn add_keys(&self, keys: Vec<String>) -> Result<u32, ClientError> {
        let req = pb::KeysRequest { divider: self.name.clone(), keys };
        Ok(self.api.clone().add_keys(req).await?.into_inner().changed)
    }

    /// Removes keys; returns how many were there.
    pub async fn remove_keys(&self, keys: Vec<String>) -> Result<u32, ClientError> {
        let req = pb::KeysRequest { divider: self.name.clone(), keys };
        Ok(self.api.clone().remove_keys(req).await?.into_inner().changed)
    }

    /// Every key under `prefix`, in order (all pages).
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, ClientError> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let req = pb::DividerListKeysRequest {
                divider: self.name.clone(),
                prefix: prefix.into(),
                after_key: after,
                limit: 10_000,
            };
            let page = self.api.clone().list_keys(req).await?.into_inner();
            out.extend(page.keys);
            if page.next_after_key.is_empty() {
                return Ok(out);
            }
            after = page.next_after_key;
        }
    }

    /// The owner of `key` now.
    pub async fn lookup(&self, key: &str) -> Result<Lookup, ClientError> {
        let req = pb::LookupRequest { divider: self.name.clone(), key: key.into() };
        let r = self.api.clone().lookup(req).await?.into_inner();
        Ok(Lookup { owner: (!r.owner.is_empty()).then_some(r.owner), address: r.address, token: r.token })
    }

    /// The whole assignment (all pages; retried from the start if the version moves meanwhile).
    pub async fn assignment(&self) -> Result<Assignment, ClientError> {
        'again: for _ in 0..10 {
            let mut out = Assignment::default();
            let mut after = String::new();
            loop {
                let req = pb::AssignmentRequest { divider: self.name.clone(), after_key: after, limit: 10_000 };
                let page = self.api.clone().assignment(req).await?.into_inner();
                if out.keys.is_empty() {
                    out.version = page.version;
                    out.members = page.members.into_iter().map(|m| (m.id, (m.affinity, m.address))).collect();
                } else if page.version != out.version {
                    continue 'again;
                }
                out.keys.extend(page.keys.into_iter().map(|k| (k.key, (!k.member.is_empty()).then_some(k.member))));
                if page.next_after_key.is_empty() {
                    return Ok(out);
                }
                after = page.next_after_key;
            }
        }
        Err(ClientError::Status(tonic::Status::aborted("the assignment kept changing while it was read")))
    }

    fn member_req(&self, member: &str) -> pb::MemberRequest {
        pb::MemberRequest { divider: self.name.clone(), member: member.into() }
    }
}

/// A stream message and when it arrived.
type Stamped = (Instant, Result<Option<pb::DividerEvent>, tonic::Status>);

/// One member session: its events, and the calls that act on it.
pub struct Membership {
    divider: Divider,
    member: String,
    events: tokio::sync::mpsc::UnboundedReceiver<Stamped>,
    reader: tokio::task::JoinHandle<()>,
    deadline: Option<Instant>,
    held: BTreeMap<String, u64>,
    /// Why the stream ended (returned after the `LeaseExpired` for what was held).
    ended: Option<Option<tonic::Status>>,
}

impl Membership {
    /// The member id.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// Keys held now (started, not yet confirmed stopped), with tokens.
    pub fn held(&self) -> &BTreeMap<String, u64> {
        &self.held
    }

    fn expire(&mut self) -> DividerEvent {
        self.deadline = None;
        DividerEvent::LeaseExpired { keys: std::mem::take(&mut self.held).into_iter().collect() }
    }

    /// The next event; `None` once the session ended (after Cancel, or the sidecar went away).
    pub async fn next(&mut self) -> Option<Result<DividerEvent, ClientError>> {
        loop {
            if let Some(end) = &mut self.ended {
                if !self.held.is_empty() {
                    return Some(Ok(self.expire()));
                }
                return end.take().map(|s| Err(ClientError::Status(s)));
            }
            let deadline = self.deadline.filter(|_| !self.held.is_empty());
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Messages that already arrived go first: their Lease may extend the deadline.
                biased;
                msg = self.events.recv() => match msg.unwrap_or((Instant::now(), Ok(None))) {
                    (at, Ok(Some(pb::DividerEvent { event: Some(e) }))) => {
                        use pb::divider_event::Event as E;
                        match e {
                            E::Lease(l) => self.deadline = Some(at + Duration::from_millis(l.valid_for_ms)),
                            E::Joined(j) => return Some(Ok(DividerEvent::Joined { member: j.member, session: j.session })),
                            E::Start(s) => {
                                self.held.insert(s.key.clone(), s.token);
                                return Some(Ok(DividerEvent::Start { key: s.key, token: s.token }));
                            }
                            E::Stop(s) => {
                                let reason = StopReason::try_from(s.reason).unwrap_or_default();
                                if matches!(reason, StopReason::Timeout | StopReason::LeaseLost) {
                                    self.held.remove(&s.key);
                                }
                                return Some(Ok(DividerEvent::Stop { key: s.key, token: s.token, reason }));
                            }
                        }
                    }
                    (_, Ok(Some(_))) => {}
                    (_, Ok(None)) => self.ended = Some(None),
                    (_, Err(s)) => self.ended = Some(Some(s)),
                },
                _ = expired => return Some(Ok(self.expire())),
            }
        }
    }

    /// Confirms that the app stopped `key` (after a `Stop`).
    pub async fn confirm_stop(&mut self, key: &str, token: u64) -> Result<(), ClientError> {
        let d = &self.divider;
        let req = pb::KeyTokenRequest { divider: d.name.clone(), member: self.member.clone(), key: key.into(), token };
        d.api.clone().confirm_stop(req).await?;
        self.held.remove(key);
        Ok(())
    }

    /// Confirms the stops of `stops` (`(key, token)`) in one call: after a burst of Stops (a
    /// leave, a Flush, a rebalance), one call per key would bound the handover by the app's round
    /// trips. Returns the keys refused with their error (as [`Membership::confirm_stop`] would
    /// have returned it); the others are confirmed. Take the Stops already received with
    /// [`Membership::next_ready`].
    pub async fn confirm_stops(&mut self, stops: &[(String, u64)]) -> Result<Vec<(String, ClientError)>, ClientError> {
        let d = &self.divider;
        let mut refused = Vec::new();
        for chunk in stops.chunks(CONFIRMS_PER_CALL) {
            let req = pb::ConfirmStopsRequest {
                divider: d.name.clone(),
                member: self.member.clone(),
                stops: chunk.iter().map(|(key, token)| pb::KeyToken { key: key.clone(), token: *token }).collect(),
            };
            let r = d.api.clone().confirm_stops(req).await?.into_inner();
            let no: HashMap<String, ClientError> = r
                .refused
                .into_iter()
                .map(|k| (k.key, ClientError::Status(tonic::Status::new(tonic::Code::from(k.code), k.message))))
                .collect();
            for (key, _) in chunk {
                if !no.contains_key(key) {
                    self.held.remove(key);
                }
            }
            refused.extend(no);
        }
        Ok(refused)
    }

    /// The next event if one has already arrived (or the lease's end is already due), without
    /// waiting: with [`Membership::confirm_stops`], an app gathers a burst of Stops and confirms
    /// them together.
    pub fn next_ready(&mut self) -> Option<Result<DividerEvent, ClientError>> {
        use futures::FutureExt;
        self.next().now_or_never().flatten()
    }

    /// Gives `key` up: `done` removes it from the divider, otherwise it goes to another member.
    pub async fn release(&mut self, key: &str, token: u64, done: bool) -> Result<(), ClientError> {
        let d = &self.divider;
        let mode = if done { pb::release_request::Mode::Done } else { pb::release_request::Mode::Handback };
        let req = pb::ReleaseRequest {
            divider: d.name.clone(),
            member: self.member.clone(),
            key: key.into(),
            token,
            mode: mode as i32,
        };
        d.api.clone().release(req).await?;
        self.held.remove(key);
        Ok(())
    }

    /// A handle for the calls that may run while [`Membership::next`] is awaited elsewhere
    /// (Flush and Cancel need the event loop to keep confirming stops).
    pub fn control(&self) -> MemberControl {
        MemberControl { divider: self.divider.clone(), member: self.member.clone() }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Closing the stream tells the sidecar the app went away.
        self.reader.abort();
    }
}

/// Calls on a member session that do not touch its event stream.
#[derive(Clone)]
pub struct MemberControl {
    divider: Divider,
    member: String,
}

impl MemberControl {
    /// Keys the member holds, with tokens, as the sidecar sees them.
    pub async fn assigned(&self) -> Result<Vec<(String, u64)>, ClientError> {
        let r = self.divider.api.clone().list_assigned(self.divider.member_req(&self.member)).await?.into_inner();
        Ok(r.keys.into_iter().map(|k| (k.key, k.token)).collect())
    }

    /// The member's affinity.
    pub async fn affinity(&self) -> Result<u64, ClientError> {
        Ok(self.divider.api.clone().get_affinity(self.divider.member_req(&self.member)).await?.into_inner().affinity)
    }

    /// Sets the affinity (0: no keys).
    pub async fn set_affinity(&self, affinity: i64) -> Result<u64, ClientError> {
        let req = pb::SetAffinityRequest { divider: self.divider.name.clone(), member: self.member.clone(), affinity };
        Ok(self.divider.api.clone().set_affinity(req).await?.into_inner().affinity)
    }

    /// Adds `delta` to the affinity atomically.
    pub async fn alter_affinity(&self, delta: i64) -> Result<u64, ClientError> {
        let req = pb::AlterAffinityRequest { divider: self.divider.name.clone(), member: self.member.clone(), delta };
        Ok(self.divider.api.clone().alter_affinity(req).await?.into_inner().affinity)
    }

    /// Stops every key and returns once they are confirmed and moved (keep reading events and
    /// confirming stops meanwhile).
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.divider.api.clone().flush(self.divider.member_req(&self.member)).await?;
        Ok(())
    }

    /// Leaves (keep reading events and confirming stops until the stream ends).
    pub async fn cancel(&self) -> Result<(), ClientError> {
        self.divider.api.clone().cancel(self.divider.member_req(&self.member)).await?;
        Ok(())
    }
}

impl Divider {
    /// Calls on `member`'s session from anywhere (its event loop may run elsewhere).
    pub fn member(&self, member: &str) -> MemberControl {
        MemberControl { divider: self.clone(), member: member.to_string() }
    }
}

/// A routing cache for producers: who is assigned which key, refreshed whenever the
/// assignment's version moves. It gives the *assigned* owner; during a handoff the key may
/// still be with the previous owner, so ask [`Divider::lookup`] when exactness matters.
pub struct RoutingCache {
    routes: Arc<RwLock<Assignment>>,
    task: tokio::task::JoinHandle<()>,
}

impl RoutingCache {
    /// Loads the assignment and follows it.
    pub async fn start(divider: Divider) -> Result<Self, ClientError> {
        let routes = Arc::new(RwLock::new(divider.assignment().await?));
        let req = pb::FollowAssignmentRequest { divider: divider.name.clone() };
        let mut follow = divider.api.clone().follow_assignment(req).await?.into_inner();
        let r = routes.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(change)) = follow.message().await {
                let current = r.read().map(|a| a.version).unwrap_or(0);
                if change.version != current {
                    if let Ok(a) = divider.assignment().await {
                        if let Ok(mut w) = r.write() {
                            *w = a;
                        }
                    }
                }
            }
        });
        Ok(Self { routes, task })
    }

    /// The member assigned `key` and its address.
    pub fn owner_of(&self, key: &str) -> Option<(String, String)> {
        let a = self.routes.read().ok()?;
        let member = a.keys.get(key)?.clone()?;
        let address = a.members.get(&member).map(|(_, addr)| addr.clone()).unwrap_or_default();
        Some((member, address))
    }

    /// The assignment version the cache holds.
    pub fn version(&self) -> u64 {
        self.routes.read().map(|a| a.version).unwrap_or(0)
    }

    /// Key counts per assigned member.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        if let Ok(a) = self.routes.read() {
            for m in a.keys.values().flatten() {
                *out.entry(m.clone()).or_insert(0) += 1;
            }
        }
        out
    }
}

impl Drop for RoutingCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}
