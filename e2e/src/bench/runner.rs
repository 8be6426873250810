//! Runs one benchmark cell: `n` tasks, each pulling IDs from its own source, bounded in time
//! and in count, recording the latency of every ID.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use tokio::time::Instant;

use super::hist::Hist;

/// Something that hands out one ID per call (or, for `ping`, one no-op call).
pub trait IdSource: Send + 'static {
    /// The next ID.
    fn next_id(&mut self) -> impl Future<Output = anyhow::Result<u64>> + Send;
}

/// Bounds of one cell.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Timed phase length.
    pub duration: Duration,
    /// Most IDs in the timed phase (over all tasks).
    pub max_ids: u64,
    /// Untimed warm-up per task (connections, buffers, workers).
    pub warmup: Duration,
}

/// What one cell measured.
#[derive(Default)]
pub struct CellResult {
    /// IDs obtained in the timed phase.
    pub ids: u64,
    /// Failed calls.
    pub errors: u64,
    /// First error seen.
    pub first_error: Option<String>,
    /// Wall time of the timed phase.
    pub elapsed: Duration,
    /// Per-ID latency.
    pub hist: Hist,
    /// IDs that went backwards within one task (must be 0).
    pub not_increasing: u64,
}

impl CellResult {
    /// IDs per second.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ids as f64 / s
        } else {
            0.0
        }
    }
}

/// Most consecutive errors before a task gives up.
const MAX_CONSECUTIVE_ERRORS: u32 = 50;

struct TaskOut {
    ids: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Hist,
    not_increasing: u64,
}

/// Runs every source in its own task, warm-up first, then a timed phase started together.
pub async fn run_cell<S: IdSource>(sources: Vec<S>, bounds: Bounds, check_increasing: bool) -> CellResult {
    let n = sources.len();
    let barrier = Arc::new(Barrier::new(n + 1));
    let quota = (bounds.max_ids / n as u64).max(1);
    let mut handles = Vec::with_capacity(n);
    for mut src in sources {
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            let warm_until = Instant::now() + bounds.warmup;
            let mut warm_calls = 0;
            while Instant::now() < warm_until && warm_calls < 1000 {
                warm_calls += 1;
                if src.next_id().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            barrier.wait().await;
            let deadline = Instant::now() + bounds.duration;
            let mut out = TaskOut { ids: 0, errors: 0, first_error: None, hist: Hist::default(), not_increasing: 0 };
            let mut last = 0u64;
            let mut consecutive = 0;
            let mut t0 = std::time::Instant::now();
            while out.ids < quota {
                let r = src.next_id().await;
                let t1 = std::time::Instant::now();
                match r {
                    Ok(id) => {
                        out.hist.record((t1 - t0).as_nanos() as u64);
                        out.ids += 1;
                        if check_increasing && id <= last && out.ids > 1 {
                            out.not_increasing += 1;
                        }
                        last = id;
                        consecutive = 0;
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| format!("{e:#}"));
                        consecutive += 1;
                        if consecutive >= MAX_CONSECUTIVE_ERRORS {
                            break;
                        }
                    }
                }
                // Checking the clock costs little next to even the fastest source.
                if tokio::time::Instant::from_std(t1) >= deadline {
                    break;
                }
                t0 = t1;
            }
            out
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut res = CellResult::default();
    for h in handles {
        match h.await {
            Ok(o) => {
                res.ids += o.ids;
                res.errors += o.errors;
                res.not_increasing += o.not_increasing;
                if res.first_error.is_none() {
                    res.first_error = o.first_error;
                }
                res.hist.merge(&o.hist);
            }
            Err(e) => {
                res.errors += 1;
                res.first_error.get_or_insert_with(|| format!("task panicked: {e}"));
            }
        }
    }
    res.elapsed = started.elapsed();
    res
}
