//! The in-process baseline, like rr_seq's `SimpleBufSeq`: one task owns a buffer of IDs taken
//! from an atomic counter `range` at a time, and hands them out one per request through a
//! channel (an mpsc of oneshot reply senders). Range "strict" is a buffer of 1 (each ID is a
//! `fetch_add` of the counter).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::runner::IdSource;

/// The counter owner; dropped (and its task ends) with the last client.
pub struct Baseline {
    tx: mpsc::Sender<oneshot::Sender<u64>>,
}

impl Baseline {
    /// Starts the owner task with a buffer of `range` IDs.
    pub fn start(range: u64) -> Self {
        let counter = Arc::new(AtomicU64::new(1));
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<u64>>(1024);
        let range = range.max(1);
        tokio::spawn(async move {
            let mut buf: Range<u64> = 0..0;
            while let Some(reply) = rx.recv().await {
                if buf.is_empty() {
                    let start = counter.fetch_add(range, Ordering::Relaxed);
                    buf = start..start + range;
                }
                let id = buf.start;
                buf.start += 1;
                let _ = reply.send(id);
            }
        });
        Self { tx }
    }

    /// A client handle.
    pub fn client(&self) -> BaselineClient {
        BaselineClient { tx: self.tx.clone() }
    }
}

/// One client of the baseline.
pub struct BaselineClient {
    tx: mpsc::Sender<oneshot::Sender<u64>>,
}

impl IdSource for BaselineClient {
    async fn next_id(&mut self) -> anyhow::Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(reply).await.map_err(|_| anyhow::anyhow!("baseline owner gone"))?;
        Ok(rx.await?)
    }
}
