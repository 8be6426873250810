//! Bundling of peer calls: Prepares (Accepts) of *different* registers bound for one member at
//! the same time travel in one message ([`Bundler`]), so a burst of rounds (a divider member
//! claiming thousands of keys after another one died) costs a few messages per member instead
//! of one per register and phase.
//!
//! # Why it changes nothing for safety
//!
//! A bundle is a transport detail. Every register is still its own CASPaxos instance, and every
//! Prepare or Accept in a bundle is the message its round would have sent alone: same register,
//! ballot, value and voters. The receiving acceptor handles each one exactly as a lone message
//! (its own state machine step, persisted before the bundle's reply is sent), and each reply
//! goes back to the one call that sent the request. Paxos already tolerates messages that are
//! delayed, reordered, lost or delivered together, which is all a bundle can do to them (a call
//! whose caller gave up before its bundle left is dropped, as a lost message). So every safety
//! argument of [`super`] and [`super::round`] holds per register as before.
//!
//! What would break it is a reply handed to the wrong call (a promise counted for a register
//! that never gave it): replies are matched to requests by position, and a bundle whose reply
//! count differs is failed whole. *Test*: `replies_go_to_the_calls_that_sent_them` below (fails
//! when the replies are handed out in any other order), and every quorum e2e test, which runs
//! over bundles.
//!
//! # Latency
//!
//! No call waits for a bundle to fill: a call goes out at once while fewer than [`DEPTH`]
//! bundles to that member are in flight; calls made meanwhile queue and leave together as soon
//! as one returns. A lone round therefore pays nothing, and a burst is bundled by the load.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::transport::PeerError;

/// Bundles in flight per member and kind; calls made while this many are out wait for the next.
pub const DEPTH: usize = 4;
/// Most calls in one bundle.
pub const MAX_CALLS: usize = 4096;
/// Most encoded bytes of the calls in one bundle (a larger call travels alone).
pub const MAX_BYTES: usize = 1 << 20;

/// A queued call.
struct Call<Req, Rep> {
    req: Req,
    size: usize,
    deadline: Instant,
    reply: oneshot::Sender<Result<Rep, PeerError>>,
}

/// The calls queued for one member and how many bundles are in flight to it.
struct Lane<Req, Rep> {
    queue: VecDeque<Call<Req, Rep>>,
    in_flight: usize,
}

type Shared<Req, Rep> = Arc<Mutex<Lane<Req, Rep>>>;

/// Bundles calls of one kind per destination.
pub struct Bundler<Req, Rep> {
    lanes: Mutex<HashMap<String, Shared<Req, Rep>>>,
}

impl<Req, Rep> Default for Bundler<Req, Rep> {
    fn default() -> Self {
        Self { lanes: Mutex::new(HashMap::new()) }
    }
}

impl<Req: Send + 'static, Rep: Send + 'static> Bundler<Req, Rep> {
    /// Sends `req` (`size` encoded bytes) to `to`, in a bundle with the calls queued for it
    /// meanwhile; `send` delivers a bundle and returns one reply per request, in order. The
    /// bundles of one destination may go out through any of its callers' `send`: it must
    /// depend on the destination alone (`to` names the member and the epoch).
    pub async fn call<S, Fut>(
        &self,
        to: &str,
        req: Req,
        size: usize,
        timeout: Duration,
        send: S,
    ) -> Result<Rep, PeerError>
    where
        S: Fn(Vec<Req>, Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Result<Rep, PeerError>>, PeerError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let lane = self
            .lanes
            .lock()
            .expect("bundle lanes")
            .entry(to.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Lane { queue: VecDeque::new(), in_flight: 0 })))
            .clone();
        let start = {
            let mut l = lane.lock().expect("bundle lane");
            l.queue.push_back(Call { req, size, deadline: Instant::now() + timeout, reply: tx });
            let start = l.in_flight < DEPTH;
            if start {
                l.in_flight += 1;
            }
            start
        };
        if start {
            tokio::spawn(drain(lane, send));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(PeerError::Unreachable("the call's bundle was dropped".into())),
            Err(_) => Err(PeerError::Unreachable(format!("no answer within {} ms", timeout.as_millis()))),
        }
    }
}

/// Takes the next bundle off the lane: calls whose caller is still waiting, up to the limits.
fn next_bundle<Req, Rep>(lane: &mut Lane<Req, Rep>, now: Instant) -> Vec<Call<Req, Rep>> {
    // A call whose caller gave up (its round had its quorum, or timed out) is dropped: a lost
    // message, which Paxos tolerates.
    lane.queue.retain(|c| !c.reply.is_closed() && c.deadline > now);
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(c) = lane.queue.front() {
        if !out.is_empty() && (out.len() >= MAX_CALLS || bytes + c.size > MAX_BYTES) {
            break;
        }
        bytes += c.size;
        out.extend(lane.queue.pop_front());
    }
    out
}

/// Sends bundles off the lane until it is empty.
async fn drain<Req, Rep, S, Fut>(lane: Shared<Req, Rep>, send: S)
where
    S: Fn(Vec<Req>, Duration) -> Fut,
    Fut: Future<Output = Result<Vec<Result<Rep, PeerError>>, PeerError>>,
{
    loop {
        let now = Instant::now();
        let calls = {
            let mut l = lane.lock().expect("bundle lane");
            let calls = next_bundle(&mut l, now);
            if calls.is_empty() {
                l.in_flight -= 1;
                return;
            }
            calls
        };
        let timeout =
            calls.iter().map(|c| c.deadline).max().map_or(Duration::ZERO, |d| d.saturating_duration_since(now));
        let (reqs, replies): (Vec<Req>, Vec<_>) = calls.into_iter().map(|c| (c.req, c.reply)).unzip();
        let n = reqs.len();
        match send(reqs, timeout).await {
            Ok(out) if out.len() == n => {
                for (reply, r) in replies.into_iter().zip(out) {
                    let _ = reply.send(r);
                }
            }
            Ok(out) => {
                let e = PeerError::Refused(format!("a bundle of {n} calls came back with {} replies", out.len()));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Reply = std::pin::Pin<Box<dyn Future<Output = Result<Vec<Result<String, PeerError>>, PeerError>> + Send>>;

    /// A member that answers each request with its own key after a pause, counting bundles.
    fn member(bundles: Arc<AtomicUsize>) -> impl Fn(Vec<String>, Duration) -> Reply + Send + Sync + 'static {
        move |reqs: Vec<String>, _| {
            bundles.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(reqs.into_iter().map(|k| Ok(format!("reply to {k}"))).collect())
            })
        }
    }

    #[tokio::test]
    async fn replies_go_to_the_calls_that_sent_them() {
        let b = Arc::new(Bundler::<String, String>::default());
        let bundles = Arc::new(AtomicUsize::new(0));
        let calls = (0..500).map(|i| {
            let (b, bundles) = (b.clone(), bundles.clone());
            async move {
                let key = format!("k{i}");
                let r = b.call("m-1", key.clone(), 10, Duration::from_secs(5), member(bundles)).await;
                (key, r)
            }
        });
        for (key, r) in futures::future::join_all(calls).await {
            assert_eq!(r.unwrap(), format!("reply to {key}"));
        }
        let n = bundles.load(Ordering::SeqCst);
        assert!(n < 100, "500 concurrent calls went in {n} bundles: they were not bundled");
    }

    #[tokio::test]
    async fn a_bundle_with_the_wrong_reply_count_fails_every_call_and_limits_hold() {
        let b = Bundler::<String, String>::default();
        // One reply short: no call may get another one's reply, so every call fails.
        let short = |reqs: Vec<String>, _| async move {
            Ok(reqs.into_iter().skip(1).map(Ok).collect::<Vec<Result<String, PeerError>>>())
        };
        let calls = (0..20).map(|i| b.call("m", format!("k{i}"), 1, Duration::from_secs(1), short));
        for r in futures::future::join_all(calls).await {
            assert!(r.is_err(), "{r:?}");
        }
        // Limits: a large call travels alone, the byte budget splits the rest; calls whose
        // caller gave up are dropped.
        let mut lane = Lane { queue: VecDeque::new(), in_flight: 0 };
        let now = Instant::now();
        let mut waiting = Vec::new();
        for size in [MAX_BYTES, 10, 7, MAX_BYTES / 2, MAX_BYTES / 2, 1] {
            let (tx, rx) = oneshot::channel::<Result<(), PeerError>>();
            if size != 7 {
                waiting.push(rx);
            }
            lane.queue.push_back(Call { req: size, size, deadline: now + Duration::from_secs(1), reply: tx });
        }
        let sizes = |v: Vec<Call<usize, ()>>| v.into_iter().map(|c| c.req).collect::<Vec<_>>();
        assert_eq!(sizes(next_bundle(&mut lane, now)), [MAX_BYTES]);
        assert_eq!(sizes(next_bundle(&mut lane, now)), [10, MAX_BYTES / 2]);
        assert_eq!(sizes(next_bundle(&mut lane, now)), [MAX_BYTES / 2, 1]);
    }
}
