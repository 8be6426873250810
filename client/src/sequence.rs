//! The leased `Sequence` handle: the fast path an app uses for IDs.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::{Client, ClientError};

/// A lease grows to at most this many times the configured size...
const MAX_GROWTH: u64 = 64;
/// ...and beyond this only if configured so (the sidecar limits one request's count).
const MAX_GROWN_LEASE: u64 = 65_536;

/// Hands out IDs of one sequence in-process from ranges leased from the sidecar, fetching the
/// next lease in the background when half of the current one is used. When callers still had
/// to wait for a lease, the lease doubles (up to 64 times the configured size), so a busy handle
/// does not pay a sidecar round trip per lease. IDs from one handle
/// increase; IDs are unique across every handle and sidecar.
#[derive(Clone)]
pub struct Sequence {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    name: String,
    lease: u64,
    state: Mutex<Lease>,
    refilled: Notify,
}

#[derive(Default)]
struct Lease {
    /// Size of the next lease request (grows while callers wait).
    size: u64,
    current: Range<u64>,
    next: Option<Range<u64>>,
    refilling: bool,
    error: Option<ClientError>,
}

impl Sequence {
    pub(crate) fn new(client: Client, name: String, lease: u64) -> Self {
        let inner =
            Inner { client, name, lease: lease.max(1), state: Mutex::new(Lease::default()), refilled: Notify::new() };
        inner.state.lock().expect("sequence lock").size = inner.lease;
        Self { inner: Arc::new(inner) }
    }

    /// The sequence name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The next ID.
    pub async fn next_id(&self) -> Result<u64, ClientError> {
        loop {
            let notified = self.inner.refilled.notified();
            tokio::pin!(notified);
            {
                let mut s = self.inner.state.lock().expect("sequence lock");
                if s.current.is_empty() {
                    if let Some(n) = s.next.take() {
                        s.current = n;
                    }
                }
                if !s.current.is_empty() {
                    let id = s.current.start;
                    s.current.start += 1;
                    if s.current.end - s.current.start < s.size / 2 + 1 && s.next.is_none() && !s.refilling {
                        self.start_refill(&mut s);
                    }
                    return Ok(id);
                }
                if let Some(e) = s.error.take() {
                    return Err(e);
                }
                // Callers are waiting after a lease ran out: leases are too small for this rate.
                if s.current.end != 0 {
                    let cap = self.inner.lease.saturating_mul(MAX_GROWTH).min(MAX_GROWN_LEASE).max(self.inner.lease);
                    s.size = s.size.saturating_mul(2).min(cap);
                }
                if !s.refilling {
                    self.start_refill(&mut s);
                }
                notified.as_mut().enable();
            }
            notified.await;
        }
    }

    fn start_refill(&self, s: &mut Lease) {
        s.refilling = true;
        let size = s.size;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let r = inner.client.next(&inner.name, size, false).await;
            {
                let mut s = inner.state.lock().expect("sequence lock");
                s.refilling = false;
                match r {
                    Ok(r) => {
                        // Leases from one sidecar increase; never hand out one that goes back.
                        let floor = s.next.as_ref().map_or(s.current.end, |n| n.end);
                        if r.start >= floor {
                            if s.current.is_empty() && s.next.is_none() {
                                s.current = r;
                            } else if s.next.is_none() {
                                s.next = Some(r);
                            }
                        }
                    }
                    Err(e) => s.error = Some(e),
                }
            }
            inner.refilled.notify_waiters();
        });
    }
}
