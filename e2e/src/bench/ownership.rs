//! `ordo-bench ownership`: keeping keys owned, and getting them owned again after a member dies,
//! Ordo's divider side by side with the usual etcd recipe in the same run.
//!
//! Ordo: a 3-member SeqCluster plus `apps` client-role sidecars (WorkDivider pods), one member
//! session (`Watch`) per app, every key of the divider owned; then `kill -9` of one app's sidecar
//! and the time until every key it owned has a new owner (`Start` on a survivor). Also the quorum
//! rounds per second (every round writes a quorum of acceptors) while nothing changes, with 100
//! and with many keys: leases are per member, so the rate should not grow with the keys. Then a
//! planned scale-down: SIGTERM of a second app's sidecar, which hands its keys over before it
//! exits; the longest a key of it stayed unowned (its old app's Stop to the new owner's Start)
//! and the time until every one of them has a new owner. Phase limits grow with the keys
//! (100k keys work). Each Ordo run also prints where its recovery went: detection (the kill to
//! the first orphan's new `Start`) and claims (from there to the last), with the quorum rounds,
//! conflicts and forwards the surviving apps' sidecars and the members ran meanwhile.
//!
//! etcd: 3 members; each app holds a lease (TTL = the divider's lease) kept alive every TTL/3 and
//! owns a key by a transaction `create_revision(key) == 0 -> put(key, app, lease)`; survivors poll
//! the keyspace every 100 ms and claim unowned keys of their share (rendezvous over live apps).
//! The same two figures are measured.
//!
//! ```text
//! ordo-bench ownership [--keys 100,10000] [--runs 5] [--apps 3] [--lease-ms 3000]
//!                      [--idle-secs 10] [--only ordo,etcd] [--sidecar PATH] [--etcd PATH] [--out DIR]
//!                      [--pause-member-at-leave]
//! ```
//! `--pause-member-at-leave` pauses (SIGSTOP) one quorum member during the planned scale-down,
//! so quorum rounds routed to it stall (up to a second): the leaving app's confirms show whether
//! they wait for the leaving sidecar's quorum writes.
//! Writes `ownership.md` and `ownership.json` under `--out`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use ordo_client::divider::DividerEvent;
use ordo_client::Client;
use tokio::time::Instant;

use super::etcd::{b64, etcd_binary, EtcdCluster};
use super::hist::Hist;
use super::http::Http;
use super::ordo::{quorum_stats_of, sidecar_binary, OrdoCluster};

const USAGE: &str = "usage: ordo-bench ownership [--keys 100,10000] [--runs 5] [--apps 3] [--lease-ms 3000] \
[--idle-secs 10] [--only ordo,etcd] [--sidecar PATH] [--etcd PATH] [--out DIR] [--pause-member-at-leave] \
[--confirm batch|one]";
const DIVIDER: &str = "bench";

struct Args {
    keys: Vec<usize>,
    runs: usize,
    apps: usize,
    lease_ms: u64,
    idle_secs: f64,
    only: Vec<String>,
    sidecar: Option<String>,
    etcd: Option<String>,
    out: PathBuf,
    pause_member_at_leave: bool,
    /// The apps confirm the Stops already received in one ConfirmStops (`true`, the default)
    /// or each by its own ConfirmStop.
    confirm_batch: bool,
}

fn parse(raw: &[String]) -> anyhow::Result<Args> {
    let mut a = Args {
        keys: vec![100, 10_000],
        runs: 5,
        apps: 3,
        lease_ms: 3000,
        idle_secs: 10.0,
        only: vec!["ordo".into(), "etcd".into()],
        sidecar: None,
        etcd: None,
        out: PathBuf::from("bench-out"),
        pause_member_at_leave: false,
        confirm_batch: true,
    };
    let mut it = raw.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().with_context(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--keys" => {
                a.keys = value()?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
            }
            "--runs" => a.runs = value()?.parse()?,
            "--apps" => a.apps = value()?.parse()?,
            "--lease-ms" => a.lease_ms = value()?.parse()?,
            "--idle-secs" => a.idle_secs = value()?.parse()?,
            "--only" => a.only = value()?.split(',').map(String::from).collect(),
            "--sidecar" => a.sidecar = Some(value()?),
            "--etcd" => a.etcd = Some(value()?),
            "--out" => a.out = PathBuf::from(value()?),
            "--pause-member-at-leave" => a.pause_member_at_leave = true,
            "--confirm" => {
                a.confirm_batch = match value()?.as_str() {
                    "batch" => true,
                    "one" => false,
                    other => bail!("--confirm must be batch or one, got {other:?}"),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {arg:?}\n{USAGE}"),
        }
    }
    if a.keys.is_empty() || a.keys.contains(&0) || a.runs == 0 || a.apps < 2 || a.lease_ms < 1000 {
        bail!("--keys and --runs must be positive, --apps at least 2, --lease-ms at least 1000");
    }
    if a.idle_secs.is_nan() || a.idle_secs <= 0.0 {
        bail!("--idle-secs must be positive");
    }
    Ok(a)
}

/// One system at one key count.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    system: String,
    keys: usize,
    /// Time until every key is owned after the start, ms (median over runs).
    initial_ms: f64,
    /// Time until every key of the killed member has a new owner, ms: p50 and p99 over runs.
    recovery_p50_ms: f64,
    recovery_p99_ms: f64,
    /// Quorum writes per second while nothing changes (Ordo: consensus rounds; etcd: requests
    /// that write: keepalives and transactions).
    idle_writes_per_sec: f64,
    /// Planned scale-down (Ordo: SIGTERM of a second app's sidecar, after the kill -9): the
    /// longest time one of its keys stayed unowned (from the Stop its app got to the Start on
    /// the new owner), ms, p50 and p99 over runs; and until every one of its keys had a new
    /// owner, counted from the SIGTERM, median.
    gap_p50_ms: f64,
    gap_p99_ms: f64,
    scale_down_ms: f64,
    /// Planned scale-down: the leaving app's confirms per second, one call per Stop (median).
    leave_confirms_per_sec: f64,
    runs: usize,
    note: Option<String>,
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k-{i:06}")).collect()
}

/// How long a phase may take with `n` keys (bounded, and generous: the benchmark reports the
/// time, the limit only ends a hung run).
fn limit(n: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(5 * n as u64)
}

async fn eventually<F: FnMut() -> bool>(limit: Duration, what: &str, mut done: F) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(start.elapsed())
}

// ---------------------------------------------------------------------------------------------
// Ordo

/// A client-role sidecar (a WorkDivider pod's), killed on drop.
struct AppSidecar {
    child: std::process::Child,
    socket: String,
    /// Its admin HTTP address (for its quorum counters: app sidecars propose too).
    admin: String,
}

impl Drop for AppSidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn app_sidecar(
    cluster: &OrdoCluster,
    sidecar: &Path,
    dir: &Path,
    id: &str,
    extra: &[String],
) -> anyhow::Result<AppSidecar> {
    let socket = dir.join(format!("{id}.sock")).display().to_string();
    let log = std::fs::File::create(dir.join(format!("{id}.log")))?;
    // A free port picked now (a race with other processes is harmless: the sidecar then fails
    // to start and the run reports it).
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let child = std::process::Command::new(sidecar)
        .arg("--role=client")
        .arg(format!("--id={id}"))
        .arg(format!("--members-file={}", cluster.dev.members_file().display()))
        .arg(format!("--peer-token-file={}", cluster.dev.token_file().display()))
        .arg(format!("--socket={socket}"))
        .arg("--app-listen=off")
        .arg(format!("--admin-listen={admin}"))
        .arg("--log-format=text")
        .args(extra)
        .env_remove("ORDO_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting a client-role sidecar")?;
    Ok(AppSidecar { child, socket, admin })
}

async fn ready_client(socket: &str) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(socket).await {
            Ok(c) if c.status().await.is_ok_and(|s| s.ready) => return Ok(c),
            _ if Instant::now() > deadline => bail!("sidecar at {socket} not ready within 30 s"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Owners as the apps see them: key -> member, from Start/Stop events.
type Owners = Arc<Mutex<HashMap<String, String>>>;

/// When each key last got a Start and a Stop (any app).
#[derive(Default)]
struct Times {
    start: HashMap<String, Instant>,
    stop: HashMap<String, Instant>,
    /// Each accepted `ConfirmStop`: (member, when its reply came, how long the call took).
    confirmed: Vec<(String, Instant, Duration)>,
}

type SharedTimes = Arc<Mutex<Times>>;

/// Runs one app's session: records Starts, confirms Stops at once: with `batch`, the Stops
/// already received together in one ConfirmStops, otherwise each by its own call.
fn run_app(
    mut m: ordo_client::divider::Membership,
    owners: Owners,
    times: SharedTimes,
    batch: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let me = m.member().to_string();
        while let Some(ev) = m.next().await {
            let mut stops = Vec::new();
            let mut ev = Some(ev);
            while let Some(e) = ev.take() {
                match e {
                    Ok(DividerEvent::Start { key, .. }) => {
                        times.lock().expect("times").start.insert(key.clone(), Instant::now());
                        owners.lock().expect("owners").insert(key, me.clone());
                    }
                    Ok(DividerEvent::Stop { key, token, .. }) => {
                        times.lock().expect("times").stop.insert(key.clone(), Instant::now());
                        let mut o = owners.lock().expect("owners");
                        if o.get(&key) == Some(&me) {
                            o.remove(&key);
                        }
                        stops.push((key, token));
                    }
                    Ok(DividerEvent::LeaseExpired { keys }) => {
                        let mut o = owners.lock().expect("owners");
                        for (k, _) in keys {
                            if o.get(&k) == Some(&me) {
                                o.remove(&k);
                            }
                        }
                    }
                    Ok(DividerEvent::Joined { .. }) => {}
                    Err(_) => return,
                }
                if batch && stops.len() < 10_000 {
                    ev = m.next_ready();
                }
            }
            if stops.is_empty() {
                continue;
            }
            let sent = Instant::now();
            let confirmed: Vec<String> = if batch {
                let Ok(refused) = m.confirm_stops(&stops).await else { continue };
                let refused: std::collections::HashSet<String> = refused.into_iter().map(|(k, _)| k).collect();
                stops.into_iter().map(|(k, _)| k).filter(|k| !refused.contains(k)).collect()
            } else {
                let (key, token) = stops.pop().expect("one stop");
                match m.confirm_stop(&key, token).await {
                    Ok(()) => vec![key],
                    Err(_) => Vec::new(),
                }
            };
            let (at, took) = (Instant::now(), sent.elapsed());
            times.lock().expect("times").confirmed.extend(confirmed.into_iter().map(|_| (me.clone(), at, took)));
        }
    })
}

struct OrdoRun {
    initial: Duration,
    recovery: Duration,
    idle_rounds_per_sec: Option<f64>,
    /// Planned scale-down: the longest gap of one key, and the time until all moved.
    scale_down: Option<(Duration, Duration)>,
    /// Planned scale-down: the leaving app's accepted confirms per second (it confirms the Stops
    /// received so far in one ConfirmStops, or each by its own call with `--confirm one`, one
    /// call at a time), from its first Stop to its last confirm, and the p50 / p99 / max of one
    /// call's latency, ms (per key confirmed).
    leave_confirms_per_sec: Option<f64>,
    leave_confirm_ms: Option<(f64, f64, f64)>,
    /// Planned scale-down: when its phases (Stops read, confirms, new Starts) ran.
    leave_timeline: Option<String>,
    /// Where the recovery's time went: the first orphan's new Start (detection) and the rest
    /// (claims), with the quorum rounds the survivors and the members ran meanwhile.
    detail: Option<String>,
}

async fn ordo_run(args: &Args, sidecar: &Path, dir: &Path, n: usize, measure_idle: bool) -> anyhow::Result<OrdoRun> {
    let timing = vec![
        format!("--divider-lease-ms={}", args.lease_ms),
        format!("--divider-drift-margin-ms={}", args.lease_ms / 10),
        "--divider-stop-timeout-ms=2000".to_string(),
    ];
    let cluster = OrdoCluster::start_with(sidecar, &dir.join("ordo"), 3, &[], &timing).await?;
    let mut apps = Vec::new();
    for i in 0..args.apps {
        apps.push(app_sidecar(&cluster, sidecar, dir, &format!("app-{i}"), &timing)?);
    }
    let first = ready_client(&apps[0].socket).await?;
    let divider = first.divider(DIVIDER);
    for chunk in keys(n).chunks(1000) {
        divider.add_keys(chunk.to_vec()).await.context("adding keys")?;
    }
    let owners: Owners = Arc::new(Mutex::new(HashMap::new()));
    let times: SharedTimes = Arc::default();
    let started = Instant::now();
    let mut sessions = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let c = ready_client(&app.socket).await?;
        let m = c.divider(DIVIDER).join(&format!("app-{i}"), Some(1), &format!("app-{i}:0")).await?;
        sessions.push(run_app(m, owners.clone(), times.clone(), args.confirm_batch));
    }
    let o = owners.clone();
    eventually(limit(n), "every key owned", || o.lock().expect("owners").len() == n).await?;
    let initial = started.elapsed();
    // Wait for the handoffs to settle: the last app to join owns about its share.
    let victim = format!("app-{}", args.apps - 1);
    let share = n / args.apps;
    let o = owners.clone();
    eventually(limit(n), "the assignment settled", || {
        let o = o.lock().expect("owners");
        o.len() == n && o.values().filter(|m| **m == victim).count() * 10 >= share * 9
    })
    .await?;
    let idle_rounds_per_sec = if measure_idle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = cluster.quorum_stats().await;
        tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
        let delta = cluster.quorum_stats().await.since(&before);
        Some((delta.rounds_ok + delta.rounds_failed) / args.idle_secs)
    } else {
        None
    };
    // kill -9 the last app's sidecar; its app goes with it.
    let orphans: Vec<String> = {
        let o = owners.lock().expect("owners");
        o.iter().filter(|(_, m)| **m == victim).map(|(k, _)| k.clone()).collect()
    };
    let survivors: Vec<String> = apps[..apps.len() - 1].iter().map(|a| a.admin.clone()).collect();
    let (apps_before, members_before) = (quorum_stats_of(&survivors).await, cluster.quorum_stats().await);
    let mut dead = apps.pop().context("an app")?;
    let killed = Instant::now();
    let _ = dead.child.kill();
    let _ = dead.child.wait();
    if let Some(s) = sessions.pop() {
        s.abort();
    }
    {
        let mut o = owners.lock().expect("owners");
        for k in &orphans {
            o.remove(k);
        }
    }
    let o = owners.clone();
    // Only the keys not yet seen owned again are checked (a new owner of an orphan keeps it
    // while nothing else changes), so the check does not cost O(orphans) every 5 ms on the
    // machine whose sidecars are being measured.
    let mut waiting: Vec<&String> = orphans.iter().collect();
    eventually(limit(n), "every orphaned key owned again", || {
        let o = o.lock().expect("owners");
        waiting.retain(|k| o.get(*k).is_none_or(|m| *m == victim));
        waiting.is_empty()
    })
    .await?;
    let recovery = killed.elapsed();
    let detail = {
        let first = {
            let t = times.lock().expect("times");
            orphans.iter().filter_map(|k| t.start.get(k)).filter(|s| **s >= killed).min().copied()
        };
        let apps_delta = quorum_stats_of(&survivors).await.since(&apps_before);
        let members_delta = cluster.quorum_stats().await.since(&members_before);
        first.map(|f| {
            format!(
                "{} orphans; first new Start {:.0} ms after the kill, the last {:.0} ms after the first; \
                 surviving apps' {apps_delta}; members' {members_delta}",
                orphans.len(),
                (f - killed).as_secs_f64() * 1e3,
                (recovery.saturating_sub(f - killed)).as_secs_f64() * 1e3,
            )
        })
    };
    // Planned scale-down: SIGTERM of the next app's sidecar (as when Kubernetes removes its
    // pod); its sidecar stops the app's keys, releases them as they are confirmed, leaves.
    let mut leave_confirms_per_sec = None;
    let mut leave_confirm_ms = None;
    let mut leave_timeline = None;
    let scale_down = if apps.len() >= 2 {
        let leaver = format!("app-{}", apps.len() - 1);
        let moving: Vec<String> = {
            let o = owners.lock().expect("owners");
            o.iter().filter(|(_, m)| **m == leaver).map(|(k, _)| k.clone()).collect()
        };
        let app = apps.last().context("an app")?;
        let paused = args.pause_member_at_leave.then_some(2);
        if let Some(i) = paused {
            cluster.dev.signal(i, "STOP");
        }
        let term = Instant::now();
        let sent = std::process::Command::new("kill").arg("-TERM").arg(app.child.id().to_string()).status()?;
        if !sent.success() {
            bail!("kill -TERM failed");
        }
        let o = owners.clone();
        let mut waiting: Vec<&String> = moving.iter().collect();
        eventually(limit(n), "every key of the leaving app owned again", || {
            let o = o.lock().expect("owners");
            waiting.retain(|k| o.get(*k).is_none_or(|m| *m == leaver));
            waiting.is_empty()
        })
        .await?;
        let all_moved = term.elapsed();
        if let Some(i) = paused {
            cluster.dev.signal(i, "CONT");
        }
        // The leaving app reads its Stops one by one (confirming each); a slow app may still be
        // reading them when a key's new owner starts it (a Stop it did not confirm in time
        // timed out, and the key moved). Wait until it has read its stream to the end.
        if let Some(task) = sessions.last_mut() {
            let _ = tokio::time::timeout(limit(n), task).await;
        }
        let t = times.lock().expect("times");
        let mut worst = Duration::ZERO;
        let mut first_stop: Option<Instant> = None;
        for k in &moving {
            let (Some(stop), Some(start)) = (t.stop.get(k), t.start.get(k)) else {
                bail!("key {k} moved without a Stop at its old owner (it should have been told to stop)");
            };
            worst = worst.max(start.saturating_duration_since(*stop));
            first_stop = Some(first_stop.map_or(*stop, |f| f.min(*stop)));
        }
        let confirms: Vec<(Instant, Duration)> = t
            .confirmed
            .iter()
            .filter(|(m, at, _)| *m == leaver && *at >= term)
            .map(|(_, at, took)| (*at, *took))
            .collect();
        leave_confirms_per_sec = match (first_stop, confirms.iter().map(|(at, _)| at).max()) {
            (Some(f), Some(last)) if *last > f => Some(confirms.len() as f64 / (*last - f).as_secs_f64()),
            _ => None,
        };
        let mut took: Vec<f64> = confirms.iter().map(|(_, d)| d.as_secs_f64() * 1e3).collect();
        took.sort_by(f64::total_cmp);
        let q = |p: f64| took[((took.len() - 1) as f64 * p) as usize];
        leave_confirm_ms = (!took.is_empty()).then(|| (q(0.5), q(0.99), q(1.0)));
        // Where the leave's time went: each phase's first and last moment, from the SIGTERM.
        let span = |at: &mut dyn Iterator<Item = Instant>| {
            let ms: Vec<f64> = at.map(|i| i.saturating_duration_since(term).as_secs_f64() * 1e3).collect();
            let (lo, hi) = ms.iter().fold((f64::MAX, 0f64), |(lo, hi), m| (lo.min(*m), hi.max(*m)));
            if ms.is_empty() {
                "-".to_string()
            } else {
                format!("{lo:.0}..{hi:.0} ms")
            }
        };
        leave_timeline = Some(format!(
            "{} keys; after the SIGTERM: Stops read {}, confirms answered {}, new owners' Starts {}",
            moving.len(),
            span(&mut moving.iter().filter_map(|k| t.stop.get(k).copied())),
            span(&mut confirms.iter().map(|(at, _)| *at)),
            span(&mut moving.iter().filter_map(|k| t.start.get(k).copied()))
        ));
        Some((worst, all_moved))
    } else {
        None
    };
    for s in sessions {
        s.abort();
    }
    Ok(OrdoRun {
        initial,
        recovery,
        idle_rounds_per_sec,
        scale_down,
        leave_confirms_per_sec,
        leave_confirm_ms,
        leave_timeline,
        detail,
    })
}

// ---------------------------------------------------------------------------------------------
// etcd: a lease per app, a transaction per key

/// Rendezvous owner of `key` among `apps` (the etcd apps' share rule).
fn rendezvous<'a>(key: &str, apps: &'a [String]) -> &'a str {
    apps.iter()
        .max_by_key(|a| ordo_contract::assign::hash_bytes(format!("{a}/{key}").as_bytes()))
        .map(String::as_str)
        .unwrap_or("")
}

/// One etcd app: its lease, kept alive; claims its share of unowned keys.
struct EtcdApp {
    name: String,
    lease: i64,
}

async fn etcd_post(
    h: &mut Http,
    path: &str,
    body: &str,
    writes: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<String> {
    writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    h.post(path, body).await
}

fn json_i64(v: &serde_json::Value, field: &str) -> Option<i64> {
    v.get(field).and_then(|x| x.as_str().and_then(|s| s.parse().ok()).or_else(|| x.as_i64()))
}

/// Current owners: key -> app, by a range read over the prefix.
async fn etcd_owners(h: &mut Http) -> anyhow::Result<HashMap<String, String>> {
    let body = format!("{{\"key\":\"{}\",\"range_end\":\"{}\"}}", b64(b"k-"), b64(b"k."));
    let text = h.post("/v3/kv/range", &body).await?;
    let v: serde_json::Value = serde_json::from_str(&text).context("etcd range reply")?;
    let mut out = HashMap::new();
    for kv in v.get("kvs").and_then(|k| k.as_array()).into_iter().flatten() {
        let k = kv.get("key").and_then(|k| k.as_str()).map(super::etcd::unb64).transpose()?;
        let val = kv.get("value").and_then(|k| k.as_str()).map(super::etcd::unb64).transpose()?;
        if let (Some(k), Some(val)) = (k, val) {
            out.insert(String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&val).into_owned());
        }
    }
    Ok(out)
}

/// Transactions one etcd app keeps in flight while claiming (one connection each).
const ETCD_CLAIMS_IN_FLIGHT: usize = 16;

/// One app's loop: keepalive every TTL/3; every 100 ms claim the unowned keys of its share, a
/// transaction per key, [`ETCD_CLAIMS_IN_FLIGHT`] at a time.
fn etcd_app(
    addr: String,
    app: EtcdApp,
    all: Arc<Mutex<Vec<String>>>,
    keys: Arc<Vec<String>>,
    ttl: Duration,
    writes: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let mut h = Http::connect(&addr).await?;
        let mut pool = Vec::new();
        for _ in 0..ETCD_CLAIMS_IN_FLIGHT {
            pool.push(Http::connect(&addr).await?);
        }
        // Keepalives on their own connection, beside the claims (both end with this task).
        let mut k = Http::connect(&addr).await?;
        let (lease, kw) = (app.lease, writes.clone());
        let keepalive = async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                etcd_post(&mut k, "/v3/lease/keepalive", &format!("{{\"ID\":\"{lease}\"}}"), &kw).await?;
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        };
        let claims = async move {
            loop {
                let owners = etcd_owners(&mut h).await?;
                let live = all.lock().expect("apps").clone();
                let mine: Vec<&String> =
                    keys.iter().filter(|k| !owners.contains_key(*k) && rendezvous(k, &live) == app.name).collect();
                let claims = pool.iter_mut().enumerate().map(|(i, conn)| {
                let (mine, app, writes) = (&mine, &app, &writes);
                async move {
                    for k in mine.iter().skip(i).step_by(ETCD_CLAIMS_IN_FLIGHT) {
                        let body = format!(
                            "{{\"compare\":[{{\"key\":\"{key}\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}}],\
                             \"success\":[{{\"request_put\":{{\"key\":\"{key}\",\"value\":\"{val}\",\"lease\":\"{lease}\"}}}}]}}",
                            key = b64(k.as_bytes()),
                            val = b64(app.name.as_bytes()),
                            lease = app.lease
                        );
                        etcd_post(conn, "/v3/kv/txn", &body, writes).await?;
                    }
                    anyhow::Ok(())
                }
            });
                for r in futures::future::join_all(claims).await {
                    r?;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        };
        tokio::try_join!(keepalive, claims)?;
        Ok(())
    })
}

async fn etcd_run(args: &Args, bin: &Path, dir: &Path, n: usize, measure_idle: bool) -> anyhow::Result<OrdoRun> {
    let cluster = EtcdCluster::start(bin, &dir.join("etcd"), 3).await?;
    let ttl = Duration::from_millis(args.lease_ms);
    let names: Vec<String> = (0..args.apps).map(|i| format!("app-{i}")).collect();
    let all = Arc::new(Mutex::new(names.clone()));
    let keys = Arc::new(keys(n));
    let writes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let addr = cluster.clients[i % cluster.clients.len()].clone();
        let mut h = Http::connect(&addr).await?;
        let ttl_s = (args.lease_ms / 1000).max(1);
        let reply = etcd_post(&mut h, "/v3/lease/grant", &format!("{{\"TTL\":\"{ttl_s}\"}}"), &writes).await?;
        let v: serde_json::Value = serde_json::from_str(&reply)?;
        let lease = json_i64(&v, "ID").with_context(|| format!("lease grant reply {reply}"))?;
        let app = EtcdApp { name: name.clone(), lease };
        tasks.push(etcd_app(addr, app, all.clone(), keys.clone(), ttl, writes.clone()));
    }
    let mut h = Http::connect(&cluster.clients[0]).await?;
    let initial = loop {
        if etcd_owners(&mut h).await?.len() == n {
            break started.elapsed();
        }
        if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
            let end = tasks.remove(i).await;
            bail!("etcd app {i} stopped: {:?}", end.map(|r| r.map_err(|e| format!("{e:#}"))));
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("etcd: not every key owned within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let idle = if measure_idle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = writes.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
        Some((writes.load(std::sync::atomic::Ordering::Relaxed) - before) as f64 / args.idle_secs)
    } else {
        None
    };
    let victim = names.last().cloned().context("an app")?;
    let before = etcd_owners(&mut h).await?;
    let orphans: Vec<String> = before.iter().filter(|(_, a)| **a == victim).map(|(k, _)| k.clone()).collect();
    // The victim dies: it stops keeping its lease alive; the others learn it is gone when its
    // keys disappear (lease expiry), and then count only the live apps.
    let killed = Instant::now();
    if let Some(t) = tasks.pop() {
        t.abort();
    }
    let recovery = loop {
        let owners = etcd_owners(&mut h).await?;
        if orphans.iter().any(|k| !owners.contains_key(k)) {
            all.lock().expect("apps").retain(|a| *a != victim);
        }
        if orphans.iter().all(|k| owners.get(k).is_some_and(|a| *a != victim)) {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(120) {
            bail!("etcd: orphaned keys not owned again within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for t in tasks {
        t.abort();
    }
    Ok(OrdoRun {
        initial,
        recovery,
        idle_rounds_per_sec: idle,
        scale_down: None,
        leave_confirms_per_sec: None,
        leave_confirm_ms: None,
        leave_timeline: None,
        detail: None,
    })
}

// ---------------------------------------------------------------------------------------------

/// Entry point of `ordo-bench ownership`.
pub async fn main(raw: &[String]) -> anyhow::Result<()> {
    let args = parse(raw)?;
    let tmp = tempfile::Builder::new().prefix("ordo-bench-own-").tempdir()?;
    let mut rows = Vec::new();
    for &n in &args.keys {
        for system in ["ordo", "etcd"] {
            if !args.only.iter().any(|o| o == system) {
                continue;
            }
            let bin = match system {
                "ordo" => Some(sidecar_binary(args.sidecar.as_deref())?),
                _ => etcd_binary(args.etcd.as_deref()),
            };
            let Some(bin) = bin else {
                rows.push(not_run(system, n, "no etcd binary (scripts/bench.sh installs etcd-server)".into()));
                continue;
            };
            let mut initial = Vec::new();
            let mut recovery = Hist::default();
            let mut gap = Hist::default();
            let mut moved = Vec::new();
            let mut confirms = Vec::new();
            let mut idle = None;
            let mut failure = None;
            for run in 0..args.runs {
                let dir = tmp.path().join(format!("{system}-{n}-{run}"));
                std::fs::create_dir_all(&dir)?;
                let r = match system {
                    "ordo" => ordo_run(&args, &bin, &dir, n, run == 0).await,
                    _ => etcd_run(&args, &bin, &dir, n, run == 0).await,
                };
                match r {
                    Ok(r) => {
                        eprintln!(
                            "{system} {n} keys run {run}: all owned after {:.0} ms, orphans owned again {:.0} ms after the kill{}{}{}{}",
                            r.initial.as_secs_f64() * 1e3,
                            r.recovery.as_secs_f64() * 1e3,
                            r.idle_rounds_per_sec.map(|w| format!(", idle {w:.1} writes/s")).unwrap_or_default(),
                            r.scale_down
                                .map(|(g, all)| format!(
                                    ", scale-down: longest unowned gap {:.0} ms, all moved {:.0} ms after SIGTERM",
                                    g.as_secs_f64() * 1e3,
                                    all.as_secs_f64() * 1e3
                                ))
                                .unwrap_or_default(),
                            r.leave_confirms_per_sec
                                .map(|c| format!(", the leaving app confirmed {c:.0} stops/s"))
                                .unwrap_or_default(),
                            r.leave_confirm_ms
                                .map(|(p50, p99, max)| format!(
                                    " (one confirm call: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms)"
                                ))
                                .unwrap_or_default()
                        );
                        if let Some(c) = r.leave_confirms_per_sec {
                            confirms.push(c);
                        }
                        if let Some(d) = &r.detail {
                            eprintln!("  recovery: {d}");
                        }
                        if let Some(l) = &r.leave_timeline {
                            eprintln!("  scale-down: {l}");
                        }
                        if let Some((g, all)) = r.scale_down {
                            gap.record(g.as_nanos() as u64);
                            moved.push(all.as_secs_f64() * 1e3);
                        }
                        initial.push(r.initial.as_secs_f64() * 1e3);
                        recovery.record(r.recovery.as_nanos() as u64);
                        idle = idle.or(r.idle_rounds_per_sec);
                    }
                    Err(e) => {
                        eprintln!("{system} {n} keys run {run}: FAILED: {e:#}");
                        failure = Some(format!("{e:#}"));
                    }
                }
            }
            initial.sort_by(f64::total_cmp);
            moved.sort_by(f64::total_cmp);
            confirms.sort_by(f64::total_cmp);
            rows.push(Row {
                system: system.into(),
                keys: n,
                initial_ms: initial.get(initial.len() / 2).copied().unwrap_or(0.0),
                recovery_p50_ms: recovery.quantile(0.5) as f64 / 1e6,
                recovery_p99_ms: recovery.quantile(0.99) as f64 / 1e6,
                idle_writes_per_sec: idle.unwrap_or(0.0),
                gap_p50_ms: gap.quantile(0.5) as f64 / 1e6,
                gap_p99_ms: gap.quantile(0.99) as f64 / 1e6,
                scale_down_ms: moved.get(moved.len() / 2).copied().unwrap_or(0.0),
                leave_confirms_per_sec: confirms.get(confirms.len() / 2).copied().unwrap_or(0.0),
                runs: initial.len(),
                note: failure,
            });
        }
    }
    std::fs::create_dir_all(&args.out)?;
    let md = markdown(&rows, &args);
    std::fs::write(args.out.join("ownership.md"), &md)?;
    std::fs::write(args.out.join("ownership.json"), serde_json::to_string_pretty(&rows)?)?;
    println!("{md}");
    Ok(())
}

fn not_run(system: &str, keys: usize, why: String) -> Row {
    Row {
        system: system.into(),
        keys,
        initial_ms: 0.0,
        recovery_p50_ms: 0.0,
        recovery_p99_ms: 0.0,
        idle_writes_per_sec: 0.0,
        gap_p50_ms: 0.0,
        gap_p99_ms: 0.0,
        scale_down_ms: 0.0,
        leave_confirms_per_sec: 0.0,
        runs: 0,
        note: Some(why),
    }
}

fn ms_or_dash(ms: f64) -> String {
    if ms > 0.0 {
        format!("{ms:.0} ms")
    } else {
        "-".into()
    }
}

fn markdown(rows: &[Row], args: &Args) -> String {
    let mut s = format!(
        "# Divider ownership: Ordo vs etcd (lease per member, transaction per key), same run\n\n\
         {} apps, lease {} ms, {} runs per cell; `kill -9` of one app's sidecar (etcd: its lease is no \
         longer kept alive). Recovery: until every key the dead app owned has a new owner. Goal for \
         Ordo: recovery <= lease + 1 s = {} ms. Idle writes: quorum rounds (Ordo) or writing requests \
         (etcd) per second while every key is owned and nothing changes. Planned scale-down (Ordo): \
         SIGTERM of a second app's sidecar after the kill; the longest a key of it stayed unowned \
         (its old app's Stop to the new owner's Start), the time until all its keys moved, and the \
         leaving app's confirms per second ({}, each call awaited).\n\n\
         | system | keys | all owned after start (median) | recovery p50 | recovery p99 | idle writes/s | \
         scale-down gap p50 | gap p99 | all moved (median) | leave confirms/s | runs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        args.apps,
        args.lease_ms,
        args.runs,
        args.lease_ms + 1000,
        if args.confirm_batch {
            "the Stops received so far confirmed together in one `ConfirmStops` call"
        } else {
            "one `ConfirmStop` call per Stop"
        }
    );
    if args.pause_member_at_leave {
        s = s.replacen(
            "\n\n| system |",
            "\n\nDuring the scale-down, one quorum member was paused (SIGSTOP).\n\n| system |",
            1,
        );
    }
    for r in rows {
        match &r.note {
            Some(n) if r.runs == 0 => {
                s.push_str(&format!("| {} | {} | not run: {n} | | | | | | | | 0 |\n", r.system, r.keys))
            }
            _ => s.push_str(&format!(
                "| {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} | {} | {} | {} | {} | {}{} |\n",
                r.system,
                r.keys,
                r.initial_ms,
                r.recovery_p50_ms,
                r.recovery_p99_ms,
                r.idle_writes_per_sec,
                ms_or_dash(r.gap_p50_ms),
                ms_or_dash(r.gap_p99_ms),
                ms_or_dash(r.scale_down_ms),
                if r.leave_confirms_per_sec > 0.0 { format!("{:.0}", r.leave_confirms_per_sec) } else { "-".into() },
                r.runs,
                r.note.as_ref().map(|n| format!(" (a run failed: {n})")).unwrap_or_default()
            )),
        }
    }
    let by: BTreeMap<(String, usize), &Row> = rows.iter().map(|r| ((r.system.clone(), r.keys), r)).collect();
    let ordo: Vec<&&Row> = by.iter().filter(|((s, _), _)| s == "ordo").map(|(_, r)| r).collect();
    if let (Some(lo), Some(hi)) = (ordo.first(), ordo.last()) {
        if lo.keys != hi.keys && lo.idle_writes_per_sec > 0.0 {
            s.push_str(&format!(
                "\nOrdo idle writes with {} keys / with {} keys: {:.2} (leases per member: should stay near 1).\n",
                hi.keys,
                lo.keys,
                hi.idle_writes_per_sec / lo.idle_writes_per_sec
            ));
        }
    }
    s
}
