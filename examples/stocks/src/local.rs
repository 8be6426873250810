//! The seed's comparison, reproduced in one process: the same trade stream through (a) a serial
//! baseline, (b) worker threads sharing one global state behind a mutex, (c) the "bad" per-worker
//! state that is never merged, and (d) per-worker state merged into the global state every `k`
//! ticks. For each: throughput, and how far the global state read at random moments lags the
//! true state (staleness). The Ordo-backed rows (e) are added by the `stocks` binary.
//!
//! # How the runs are built
//! - **Work source.** Trades are pre-split by partition: each worker owns whole partitions
//!   (assigned greedily, heaviest partition to the least-loaded worker) and takes its trades in
//!   stream order, so a partition's trades apply in `pseq` order in every mode, and a merged
//!   worker's delta continues exactly where the global partition is (as a `Record::Delta` on the
//!   log does). A shared index into the stream would let two workers apply one partition's
//!   trades out of order. With more workers than partitions, the extra workers idle.
//! - **Processing.** Each trade first reads its symbol's current state (from the global state
//!   under the lock in (b), from the worker's own state otherwise), then costs `work_ns` of CPU
//!   work derived from what it read, then updates the state. The work is a dependent
//!   multiply/xor loop whose iteration count is calibrated once per [`run_all`], not a sleep and
//!   not a clock-watching spin: a preempted worker does not get its work done while it waits,
//!   so more threads than cores cannot fake a speedup. [`DEFAULT_WORK_NS`] (1.5 us) models a
//!   small request handler, as the seed's handlers are. In (b) only the read and the write hold
//!   the lock (the seed's "every read and write goes through a mutex"); holding it during the
//!   work as well would make (b) serial by construction.
//! - **Merging (d).** A tick is one trade processed by that worker. A worker applies trades to
//!   its own copy of its partitions and remembers the symbols it touched; every `k` ticks it
//!   takes the global lock and copies those symbols' new state (and the partitions' `applied`)
//!   into the global state. Its leftovers (fewer than `k` trades) are merged when its trades run
//!   out, before the run's clock stops.
//! - **Rounds.** Each mode runs 5 times, the rounds going over all modes in turn (so a change in
//!   the machine's load touches every mode alike): the throughput is the fastest round's (a busy
//!   machine only ever slows a round down), the staleness is over the samples of all rounds, and
//!   `correct` requires every round.
//!
//! # Staleness
//! Workers count every trade they finish in one atomic (`processed`): in (b) inside the lock
//! that applies it, in (c) and (d) after applying it locally. Each round draws `samples` random
//! points in `1..=trades`; when a worker's trade brings `processed` to a point, that worker
//! (before its next trade, as a read request served between trades would be) takes the global
//! lock and records `processed - trades in the global state`: trades done but not yet visible
//! to a reader of the global state. So (b) is exactly 0, (c) is everything processed so far
//! (its global state never changes), and (d) is at most `workers * k` (each worker holds at
//! most `k` unmerged trades, counted before it merges them). Samples are taken by the workers
//! rather than by a reader thread of their own because on a loaded two-core machine such a
//! thread was starved through whole short rounds (a 5 ms round of 20k trades gave no sample):
//! this way every point is sampled, mid-run, in every round. The serial baseline has one thread
//! and one state, which every read sees whole: its staleness is 0 by construction and is not
//! sampled. Tests: `staleness_follows_merge_ticks`.
//!
//! # Correctness
//! A run's final global state must equal [`model::serial`] on every partition's market fields
//! ([`PartitionState::market`]) and `applied`: true for (a), (b) and (d), false for (c).
//! Tests: `every_mode_but_bad_ends_in_the_serial_state`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::model::{self, PartitionState, Rng, Trade};

/// Simulated processing per trade when the caller has no better figure, in nanoseconds.
pub const DEFAULT_WORK_NS: u64 = 1_500;
/// Staleness samples per round when the caller has no better figure.
pub const DEFAULT_SAMPLES: usize = 200;
/// The merge intervals of the seed (ticks between merges).
pub const DEFAULT_MERGE_TICKS: [u64; 3] = [4, 10, 30];

/// Rounds per mode; [`run_all`] reports the fastest's throughput.
const ROUNDS: u64 = 5;
const _: () = assert!(ROUNDS > 0);

/// What [`run_all`] runs.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The trade stream.
    pub params: model::Params,
    /// Worker threads of the parallel modes (at least 1 is used).
    pub workers: usize,
    /// Merge intervals of the merged mode, one run each (0 counts as 1).
    pub merge_ticks: Vec<u64>,
    /// Staleness samples per round (each row pools five rounds).
    pub samples: usize,
    /// Simulated processing per trade, in nanoseconds.
    pub work_ns: u64,
}

/// One run of the comparison.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Row {
    /// "serial" | "mutex" | "bad" | "merged" | "ordo".
    pub mode: String,
    /// Threads, or app processes for "ordo".
    pub workers: usize,
    /// Ticks between merges, for the modes that merge.
    pub merge_ticks: Option<u64>,
    /// Trades processed.
    pub trades: u64,
    /// Wall time of the run, in seconds.
    pub secs: f64,
    /// Throughput.
    pub trades_per_sec: f64,
    /// Mean of the staleness samples, in trades.
    pub staleness_mean: f64,
    /// 99th percentile of the staleness samples, in trades.
    pub staleness_p99: f64,
    /// Whether the final global state equals the serial replay (None: not checked).
    pub correct: Option<bool>,
}

/// Runs (a) serial, (b) mutex, (c) bad and (d) merged for each of `opts.merge_ticks`, in that
/// order, on the stream of `opts.params`; each row's throughput is the fastest of five rounds.
pub fn run_all(opts: &LocalOptions) -> Vec<Row> {
    let trades = model::generate(&opts.params);
    let expected = model::serial(&trades, opts.params.partitions);
    let work = Work::calibrate(opts.work_ns);
    let shares = split(&trades, opts.params.partitions, opts.workers.max(1));
    let run = Run {
        trades: &trades,
        shares: &shares,
        partitions: expected.len(),
        work,
        samples: opts.samples,
        seed: opts.params.seed,
    };
    let modes: Vec<Mode> = [Mode::Serial, Mode::Mutex, Mode::Bad]
        .into_iter()
        .chain(opts.merge_ticks.iter().map(|k| Mode::Merged((*k).max(1))))
        .collect();
    // Rounds go over all modes in turn, so that a change in the machine's load touches all alike.
    let mut rounds: Vec<Vec<Outcome>> = modes.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for (mode, outcomes) in modes.iter().zip(&mut rounds) {
            outcomes.push(run.once(*mode, round));
        }
    }
    rounds.into_iter().map(|outcomes| best_of(&expected, outcomes)).collect()
}

/// The rounds of one mode: the throughput of the fastest (a busy machine only ever slows a round
/// down), the staleness samples of all, correct only if every round was.
fn best_of(expected: &[PartitionState], mut rounds: Vec<Outcome>) -> Row {
    let correct = rounds.iter().all(|o| o.is_correct(expected));
    let staleness: Vec<u64> = rounds.iter_mut().flat_map(|o| std::mem::take(&mut o.staleness)).collect();
    let best = rounds.into_iter().min_by(|a, b| a.secs.total_cmp(&b.secs)).expect("ROUNDS > 0");
    best.row(staleness, correct)
}

/// The comparison as a markdown table; speedups are over the first "serial" row.
pub fn table_markdown(rows: &[Row]) -> String {
    let serial = rows.iter().find(|r| r.mode == "serial").map(|r| r.trades_per_sec).filter(|v| *v > 0.0);
    let mut out = String::from(
        "| mode | workers | merge ticks | trades/s | speedup | staleness mean / p99 (trades) | state correct |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let ticks = r.merge_ticks.map_or_else(|| "–".to_owned(), |k| k.to_string());
        let speedup = serial.map_or_else(|| "–".to_owned(), |s| format!("{:.2}x", r.trades_per_sec / s));
        let correct = match r.correct {
            Some(true) => "yes",
            Some(false) => "no",
            None => "–",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {:.1} / {:.0} | {} |",
            r.mode, r.workers, ticks, r.trades_per_sec, speedup, r.staleness_mean, r.staleness_p99, correct
        );
    }
    out
}

/// A self-contained SVG of two panels sharing the merge-ticks axis: throughput (top) and
/// staleness (bottom) of the "merged" and "ordo" rows that have merge ticks, one line per
/// mode and worker count, with every row without merge ticks drawn as a labelled horizontal
/// reference line.
pub fn plot_svg(rows: &[Row]) -> String {
    Plot::new(rows).render()
}

/// The modes [`run_all`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// (a): one thread, one state.
    Serial,
    /// (b): one global state behind a mutex.
    Mutex,
    /// (c): per-worker state, never merged.
    Bad,
    /// (d): per-worker state merged every `k` ticks.
    Merged(u64),
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Serial => "serial",
            Mode::Mutex => "mutex",
            Mode::Bad => "bad",
            Mode::Merged(_) => "merged",
        }
    }
}

/// The simulated processing of a trade: `iters` rounds of a dependent multiply/xor chain.
#[derive(Debug, Clone, Copy)]
struct Work {
    iters: u64,
}

impl Work {
    /// The iteration count that takes `work_ns` on this machine: the fastest of a few probes,
    /// since other load only ever slows a probe down.
    fn calibrate(work_ns: u64) -> Self {
        if work_ns == 0 {
            return Self { iters: 0 };
        }
        const PROBE: u64 = 200_000;
        let best = (0..5)
            .map(|_| {
                let start = Instant::now();
                black_box(spin(black_box(PROBE), 1));
                start.elapsed()
            })
            .min()
            .unwrap_or(Duration::from_nanos(PROBE));
        let ns_per_iter = (best.as_nanos() as f64 / PROBE as f64).max(1e-3);
        Self { iters: ((work_ns as f64 / ns_per_iter).round() as u64).max(1) }
    }

    /// Processes `t`, given the state its symbol was read in; the result is used as the stamp.
    fn run(self, t: &Trade, read: (u64, u64, u64, u64)) -> u64 {
        spin(self.iters, t.id ^ read.0 ^ read.1.rotate_left(32))
    }
}

fn spin(iters: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..iters {
        x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    x
}

/// Each worker's trades, in stream order: whole partitions per worker, heaviest partition to the
/// least-loaded worker.
fn split(trades: &[Trade], partitions: u32, workers: usize) -> Vec<Vec<&Trade>> {
    let n = partitions.max(1) as usize;
    let mut count = vec![0u64; n];
    for t in trades {
        count[t.partition as usize] += 1;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|p| std::cmp::Reverse(count[*p]));
    let mut load = vec![0u64; workers];
    let mut owner = vec![0usize; n];
    for p in order {
        let w = (0..workers).min_by_key(|w| load[*w]).unwrap_or(0);
        owner[p] = w;
        load[w] += count[p];
    }
    let mut shares = vec![Vec::new(); workers];
    for t in trades {
        shares[owner[t.partition as usize]].push(t);
    }
    shares
}

/// The state readers see: every partition, and how many trades it holds in all.
#[derive(Debug, Default)]
struct Global {
    parts: Vec<PartitionState>,
    trades: u64,
}

fn lock(global: &Mutex<Global>) -> MutexGuard<'_, Global> {
    // A worker that panicked is re-raised by the run; the state itself stays readable.
    global.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The market of a symbol as read before processing a trade (zeros for a new symbol).
fn read(parts: &[PartitionState], t: &Trade) -> (u64, u64, u64, u64) {
    parts[t.partition as usize].symbols.get(&t.symbol).map(|s| s.market()).unwrap_or_default()
}

/// What one run measured.
struct Outcome {
    mode: &'static str,
    workers: usize,
    merge_ticks: Option<u64>,
    trades: u64,
    secs: f64,
    staleness: Vec<u64>,
    state: Vec<PartitionState>,
}

impl Outcome {
    /// Whether the final global state is the serial replay's.
    fn is_correct(&self, expected: &[PartitionState]) -> bool {
        self.state.len() == expected.len()
            && self.state.iter().zip(expected).all(|(a, b)| a.applied == b.applied && a.market() == b.market())
    }

    fn row(self, mut staleness: Vec<u64>, correct: bool) -> Row {
        let secs = self.secs.max(1e-9);
        staleness.sort_unstable();
        let s = staleness;
        let mean = if s.is_empty() { 0.0 } else { s.iter().sum::<u64>() as f64 / s.len() as f64 };
        let p99 = s.get((s.len() * 99).div_ceil(100).saturating_sub(1)).map_or(0.0, |v| *v as f64);
        Row {
            mode: self.mode.to_owned(),
            workers: self.workers,
            merge_ticks: self.merge_ticks,
            trades: self.trades,
            secs,
            trades_per_sec: self.trades as f64 / secs,
            staleness_mean: mean,
            staleness_p99: p99,
            correct: Some(correct),
        }
    }
}

/// (a): one thread, one state.
fn run_serial(trades: &[Trade], partitions: usize, work: Work) -> Outcome {
    let mut state = vec![PartitionState::default(); partitions];
    let start = Instant::now();
    for t in trades {
        let stamp = work.run(t, read(&state, t));
        state[t.partition as usize].apply(t, stamp);
    }
    let secs = start.elapsed().as_secs_f64();
    Outcome {
        mode: "serial",
        workers: 1,
        merge_ticks: None,
        trades: trades.len() as u64,
        secs,
        staleness: Vec::new(),
        state,
    }
}

/// What the runs share.
struct Run<'a> {
    /// The whole stream, for the serial baseline.
    trades: &'a [Trade],
    shares: &'a [Vec<&'a Trade>],
    partitions: usize,
    work: Work,
    samples: usize,
    seed: u64,
}

impl<'a> Run<'a> {
    /// Round `round` of `mode`.
    fn once(&self, mode: Mode, round: u64) -> Outcome {
        if mode == Mode::Serial {
            return run_serial(self.trades, self.partitions, self.work);
        }
        let total: u64 = self.shares.iter().map(|s| s.len() as u64).sum();
        let global = Mutex::new(Global { parts: vec![PartitionState::default(); self.partitions], trades: 0 });
        let mut rng = Rng::new(self.seed ^ round.wrapping_mul(0x5a17));
        let mut points: Vec<u64> = (0..self.samples).map(|_| 1 + rng.below(total)).collect();
        points.sort_unstable();
        let sampler = Sampler { points, next: AtomicUsize::new(0), processed: AtomicU64::new(0) };
        let start = Instant::now();
        let staleness: Vec<u64> = thread::scope(|scope| {
            let workers: Vec<_> =
                self.shares.iter().map(|share| scope.spawn(|| self.worker(mode, share, &global, &sampler))).collect();
            let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
            joined.into_iter().flat_map(|j| j.unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        });
        let secs = start.elapsed().as_secs_f64();
        let state = global.into_inner().unwrap_or_else(PoisonError::into_inner).parts;
        Outcome {
            mode: mode.name(),
            workers: self.shares.len(),
            merge_ticks: match mode {
                Mode::Merged(k) => Some(k),
                _ => None,
            },
            trades: total,
            secs,
            staleness,
            state,
        }
    }

    /// One worker's run over its share; returns the staleness samples it took.
    fn worker(&self, mode: Mode, share: &[&'a Trade], global: &Mutex<Global>, sampler: &Sampler) -> Vec<u64> {
        let mut samples = Vec::new();
        if mode == Mode::Mutex {
            for t in share {
                let seen = read(&lock(global).parts, t);
                let stamp = self.work.run(t, seen);
                let done = {
                    let mut g = lock(global);
                    g.parts[t.partition as usize].apply(t, stamp);
                    g.trades += 1;
                    sampler.processed.fetch_add(1, SeqCst) + 1
                };
                sampler.take(done, global, &mut samples);
            }
            return samples;
        }
        let every = match mode {
            Mode::Merged(k) => k,
            _ => u64::MAX,
        };
        let mut local = vec![PartitionState::default(); self.partitions];
        let mut touched: Vec<(u32, &'a str)> = Vec::new();
        for t in share {
            let stamp = self.work.run(t, read(&local, t));
            local[t.partition as usize].apply(t, stamp);
            let done = sampler.processed.fetch_add(1, SeqCst) + 1;
            if every != u64::MAX {
                touched.push((t.partition, t.symbol.as_str()));
                if touched.len() as u64 >= every {
                    merge(global, &local, &mut touched);
                }
            }
            sampler.take(done, global, &mut samples);
        }
        // The leftovers: without them the global state misses up to k-1 trades per worker.
        merge(global, &local, &mut touched);
        black_box(&local);
        samples
    }
}

/// The run's progress and its staleness sampling points (see the module docs).
struct Sampler {
    /// Sampling points: values of `processed`, drawn uniformly in `1..=trades`, sorted.
    points: Vec<u64>,
    /// The first point not sampled yet.
    next: AtomicUsize,
    /// Trades finished by all workers.
    processed: AtomicU64,
}

impl Sampler {
    /// After a worker's trade brought `processed` to `done`: takes a sample for every point up
    /// to `done` that no worker took yet (a read of the global state served between trades).
    fn take(&self, done: u64, global: &Mutex<Global>, out: &mut Vec<u64>) {
        loop {
            let i = self.next.load(SeqCst);
            match self.points.get(i) {
                Some(&point) if point <= done => {}
                _ => return,
            }
            if self.next.compare_exchange(i, i + 1, SeqCst, SeqCst).is_ok() {
                let g = lock(global);
                out.push(self.processed.load(SeqCst).saturating_sub(g.trades));
            }
        }
    }
}

/// Copies the state of the symbols in `touched` (one entry per trade since the last merge) from
/// the worker's `local` partitions into the global state, and empties `touched`.
fn merge(global: &Mutex<Global>, local: &[PartitionState], touched: &mut Vec<(u32, &str)>) {
    if touched.is_empty() {
        return;
    }
    let ticks = touched.len() as u64;
    touched.sort_unstable();
    touched.dedup();
    let mut g = lock(global);
    for (p, symbol) in touched.drain(..) {
        let mine = &local[p as usize];
        let Some(state) = mine.symbols.get(symbol) else { continue };
        let part = &mut g.parts[p as usize];
        match part.symbols.get_mut(symbol) {
            Some(s) => s.clone_from(state),
            None => {
                part.symbols.insert(symbol.to_owned(), state.clone());
            }
        }
        part.applied = mine.applied;
    }
    g.trades += ticks;
}

/// Layout and scales of [`plot_svg`].
struct Plot<'a> {
    /// Lines over merge ticks: (label, points sorted by ticks).
    series: Vec<(String, Vec<&'a Row>)>,
    /// Horizontal references: (label, row).
    references: Vec<(String, &'a Row)>,
    /// Merge-ticks range (log scale).
    x_range: (f64, f64),
    /// Throughput range (linear).
    tps_max: f64,
    /// Staleness range on the log10(1 + s) scale.
    stale_max: f64,
}

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 620.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 560.0;
const PANELS: [(f64, f64); 2] = [(50.0, 270.0), (350.0, 570.0)];
const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
const REF_COLORS: [&str; 6] = ["#555555", "#b8860b", "#008b8b", "#8b008b", "#556b2f", "#a0522d"];
const DASHES: [&str; 3] = ["6,4", "2,3", "10,3,2,3"];

impl<'a> Plot<'a> {
    fn new(rows: &'a [Row]) -> Self {
        let mut groups: BTreeMap<(String, usize), Vec<&Row>> = BTreeMap::new();
        let mut references = Vec::new();
        for r in rows {
            if r.merge_ticks.is_some() {
                groups.entry((r.mode.clone(), r.workers)).or_default().push(r);
            } else {
                references.push((format!("{} ({})", r.mode, who(r)), r));
            }
        }
        let series: Vec<(String, Vec<&Row>)> = groups
            .into_iter()
            .map(|((mode, _), mut points)| {
                points.sort_by_key(|r| r.merge_ticks);
                let label = format!("{mode} ({})", points.first().map(|r| who(r)).unwrap_or_default());
                (label, points)
            })
            .collect();
        let ticks: Vec<f64> =
            series.iter().flat_map(|(_, p)| p.iter().filter_map(|r| r.merge_ticks)).map(|k| k.max(1) as f64).collect();
        let lo = ticks.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ticks.iter().copied().fold(0.0, f64::max);
        let x_range = if ticks.is_empty() { (1.0, 100.0) } else { (lo / 1.5, hi * 1.5) };
        let tps_max = rows.iter().map(|r| r.trades_per_sec).fold(0.0, f64::max).max(1.0) * 1.1;
        let stale_max = rows
            .iter()
            .map(|r| r.staleness_mean.max(r.staleness_p99))
            .map(|s| (1.0 + s.max(0.0)).log10())
            .fold(1.0, f64::max)
            .ceil();
        Self { series, references, x_range, tps_max, stale_max }
    }

    fn x(&self, ticks: u64) -> f64 {
        let (lo, hi) = self.x_range;
        LEFT + (RIGHT - LEFT) * ((ticks.max(1) as f64).ln() - lo.ln()) / (hi.ln() - lo.ln())
    }

    /// The y of a value in panel `panel` (0: throughput, 1: staleness).
    fn y(&self, panel: usize, value: f64) -> f64 {
        let (top, bottom) = PANELS[panel];
        let frac = if panel == 0 { value / self.tps_max } else { (1.0 + value.max(0.0)).log10() / self.stale_max };
        bottom - (bottom - top) * frac.clamp(0.0, 1.0)
    }

    fn value(panel: usize, r: &Row) -> f64 {
        if panel == 0 {
            r.trades_per_sec
        } else {
            r.staleness_mean
        }
    }

    fn render(&self) -> String {
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        self.axes(&mut s);
        for panel in 0..2 {
            for (i, (_, r)) in self.references.iter().enumerate() {
                hline(&mut s, (LEFT, RIGHT), self.y(panel, Self::value(panel, r)), reference_stroke(i));
            }
            for (i, (_, points)) in self.series.iter().enumerate() {
                let stroke = series_stroke(i);
                let xy: Vec<(f64, f64)> = points
                    .iter()
                    .map(|r| (self.x(r.merge_ticks.unwrap_or(1)), self.y(panel, Self::value(panel, r))))
                    .collect();
                let coords: Vec<String> = xy.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    s,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\"/>",
                    coords.join(" "),
                    stroke.color,
                    stroke.width
                );
                for (x, y) in xy {
                    dot(&mut s, x, y, stroke.color);
                }
            }
        }
        self.legend(&mut s);
        s.push_str("</svg>\n");
        s
    }

    fn axes(&self, s: &mut String) {
        let titles = ["Throughput against merge ticks", "Staleness against merge ticks (mean of samples)"];
        let y_labels = ["trades/s", "staleness (trades, log scale)"];
        for (panel, &(top, bottom)) in PANELS.iter().enumerate() {
            let mid = (top + bottom) / 2.0;
            let _ = writeln!(
                s,
                "<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\">{}</text>\n\
                 <rect x=\"{LEFT}\" y=\"{top}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n\
                 <text transform=\"translate(22,{mid:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">merge ticks (trades per merge, log scale)</text>",
                top - 12.0,
                titles[panel],
                RIGHT - LEFT,
                bottom - top,
                y_labels[panel],
                (LEFT + RIGHT) / 2.0,
                bottom + 36.0
            );
            for (value, label) in self.y_ticks(panel) {
                let y = self.y(panel, value);
                hline(s, (LEFT - 5.0, LEFT), y, Stroke { color: "#333", width: 1.0, dash: None });
                hline(s, (LEFT, RIGHT), y, Stroke { color: "#ddd", width: 1.0, dash: None });
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
                    LEFT - 8.0,
                    y + 4.0
                );
            }
            let mut ticks: Vec<u64> =
                self.series.iter().flat_map(|(_, p)| p.iter().filter_map(|r| r.merge_ticks)).collect();
            ticks.sort_unstable();
            ticks.dedup();
            for k in ticks {
                let x = self.x(k);
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{bottom}\" y2=\"{:.1}\" stroke=\"#333\"/>\
                     <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{k}</text>",
                    bottom + 5.0,
                    bottom + 18.0
                );
            }
        }
    }

    /// Tick values and labels of a panel's y axis.
    fn y_ticks(&self, panel: usize) -> Vec<(f64, String)> {
        if panel == 1 {
            let decades = self.stale_max as i32;
            return std::iter::once((0.0, "0".to_owned()))
                .chain((1..=decades).map(|d| 10f64.powi(d)).map(|v| (v, si(v))))
                .filter(|(v, _)| (1.0 + v).log10() <= self.stale_max + 1e-9)
                .collect();
        }
        let raw = self.tps_max / 5.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(raw);
        (0..).map(|i| i as f64 * step).take_while(|v| *v <= self.tps_max).map(|v| (v, si(v))).collect()
    }

    fn legend(&self, s: &mut String) {
        let x = RIGHT + 25.0;
        let mut y = PANELS[0].0 + 10.0;
        let _ = writeln!(s, "<text x=\"{x}\" y=\"{y}\" font-weight=\"bold\">Legend</text>");
        for (i, (label, points)) in self.series.iter().enumerate() {
            y += 22.0;
            hline(s, (x, x + 30.0), y - 4.0, series_stroke(i));
            dot(s, x + 15.0, y - 4.0, series_stroke(i).color);
            let ticks: Vec<String> = points.iter().filter_map(|r| r.merge_ticks).map(|k| k.to_string()).collect();
            let text = format!("{label} at merge ticks {}", ticks.join(", "));
            let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{y}\">{}</text>", x + 38.0, escape(&text));
        }
        for (i, (label, r)) in self.references.iter().enumerate() {
            y += 22.0;
            hline(s, (x, x + 30.0), y - 4.0, reference_stroke(i));
            let text = format!("{label}: {} trades/s, staleness {}", si(r.trades_per_sec), si(r.staleness_mean));
            let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{y}\">{}</text>", x + 38.0, escape(&text));
        }
    }
}

/// How a line is drawn.
#[derive(Debug, Clone, Copy)]
struct Stroke {
    color: &'static str,
    width: f64,
    dash: Option<&'static str>,
}

/// The stroke of the `i`th series: solid, a color each.
fn series_stroke(i: usize) -> Stroke {
    Stroke { color: COLORS[i % COLORS.len()], width: 2.0, dash: None }
}

/// The stroke of the `i`th reference line: dashed, a color and a dash pattern each.
fn reference_stroke(i: usize) -> Stroke {
    Stroke { color: REF_COLORS[i % REF_COLORS.len()], width: 1.5, dash: Some(DASHES[i % DASHES.len()]) }
}

fn hline(s: &mut String, (x1, x2): (f64, f64), y: f64, stroke: Stroke) {
    let dash = stroke.dash.map(|d| format!(" stroke-dasharray=\"{d}\"")).unwrap_or_default();
    let _ = writeln!(
        s,
        "<line x1=\"{x1:.1}\" x2=\"{x2:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{}\" stroke-width=\"{}\"{dash}/>",
        stroke.color, stroke.width
    );
}

fn dot(s: &mut String, x: f64, y: f64, color: &str) {
    let _ = writeln!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{color}\"/>");
}

/// "1 worker", "4 workers", "2 processes".
fn who(r: &Row) -> String {
    let (unit, plural) = if r.mode == "ordo" { ("process", "es") } else { ("worker", "s") };
    format!("{} {unit}{}", r.workers, if r.workers == 1 { "" } else { plural })
}

/// A short human figure: 0, 2.9, 950, 12k, 1.5M.
fn si(v: f64) -> String {
    let (unit, div) = match v.abs() {
        // Thresholds below the round figure so 999_888 reads 1.0M, not 1000k.
        a if a >= 999_500.0 => ("M", 1e6),
        a if a >= 999.5 => ("k", 1e3),
        _ => ("", 1.0),
    };
    let x = v / div;
    let digits = if x.abs() >= 10.0 || x.fract() == 0.0 { 0 } else { 1 };
    format!("{x:.digits$}{unit}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(merge_ticks: Vec<u64>) -> LocalOptions {
        LocalOptions {
            params: model::Params { seed: 11, trades: 20_000, partitions: 8, symbols: 64 },
            workers: 2,
            merge_ticks,
            samples: 100,
            work_ns: 200,
        }
    }

    fn by_mode<'a>(rows: &'a [Row], mode: &str, ticks: Option<u64>) -> &'a Row {
        rows.iter().find(|r| r.mode == mode && r.merge_ticks == ticks).expect("the row is there")
    }

    #[test]
    fn every_mode_but_bad_ends_in_the_serial_state() {
        let rows = run_all(&opts(vec![4, 30]));
        let modes: Vec<(&str, Option<u64>)> = rows.iter().map(|r| (r.mode.as_str(), r.merge_ticks)).collect();
        assert_eq!(
            modes,
            [("serial", None), ("mutex", None), ("bad", None), ("merged", Some(4)), ("merged", Some(30))]
        );
        for r in &rows {
            assert_eq!(r.trades, 20_000, "{r:?}");
            assert!(r.trades_per_sec > 0.0, "{r:?}");
            assert_eq!(r.workers, if r.mode == "serial" { 1 } else { 2 }, "{r:?}");
            assert_eq!(r.correct, Some(r.mode != "bad"), "{r:?}");
        }
    }

    #[test]
    fn the_split_keeps_partitions_whole_and_in_order() {
        let trades = model::generate(&opts(vec![]).params);
        let shares = split(&trades, 8, 3);
        assert_eq!(shares.iter().map(Vec::len).sum::<usize>(), trades.len());
        let mut owner = BTreeMap::new();
        for (w, share) in shares.iter().enumerate() {
            assert!(share.windows(2).all(|p| p[0].id < p[1].id), "worker {w} takes its trades in stream order");
            for t in share {
                assert_eq!(*owner.entry(t.partition).or_insert(w), w, "partition {} has one owner", t.partition);
            }
        }
    }

    #[test]
    fn staleness_follows_merge_ticks() {
        // Three runs each: the reader's samples depend on scheduling, their sums much less.
        let (mut k4, mut k30) = (0.0, 0.0);
        for seed in 0..3 {
            let mut o = opts(vec![4, 30]);
            o.params.seed = seed;
            let rows = run_all(&o);
            assert_eq!(by_mode(&rows, "serial", None).staleness_mean, 0.0);
            // Applied and counted under one lock: a reader never sees a processed trade missing.
            assert_eq!(by_mode(&rows, "mutex", None).staleness_p99, 0.0);
            // Never merged: every sample is at least its sampling point, drawn in 0..20_000.
            assert!(by_mode(&rows, "bad", None).staleness_mean > 5_000.0, "{rows:?}");
            for k in [4, 30] {
                let r = by_mode(&rows, "merged", Some(k));
                let bound = (o.workers as u64 * k) as f64;
                assert!(r.staleness_p99 <= bound && r.staleness_mean <= bound, "at most k per worker: {r:?}");
            }
            k4 += by_mode(&rows, "merged", Some(4)).staleness_mean;
            k30 += by_mode(&rows, "merged", Some(30)).staleness_mean;
        }
        assert!(k30 > k4, "merging every 30 ticks leaves more unmerged than every 4: {k30} vs {k4}");
    }

    fn sample_rows() -> Vec<Row> {
        let row = |mode: &str, workers, merge_ticks, tps: f64, stale: f64, correct| Row {
            mode: mode.to_owned(),
            workers,
            merge_ticks,
            trades: 1_000,
            secs: 1_000.0 / tps,
            trades_per_sec: tps,
            staleness_mean: stale,
            staleness_p99: stale * 2.0,
            correct,
        };
        vec![
            row("serial", 1, None, 500_000.0, 0.0, Some(true)),
            row("mutex", 2, None, 600_000.0, 0.0, Some(true)),
            row("bad", 2, None, 1_000_000.0, 150_000.0, Some(false)),
            row("merged", 2, Some(4), 800_000.0, 3.0, Some(true)),
            row("merged", 2, Some(30), 900_000.0, 29.0, Some(true)),
            row("ordo", 2, Some(10), 20_000.0, 12.0, None),
        ]
    }

    #[test]
    fn the_table_has_a_row_per_run_with_its_speedup() {
        let rows = sample_rows();
        let table = table_markdown(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + rows.len(), "{table}");
        assert!(lines[0].contains("| speedup |") && lines[0].contains("staleness mean / p99"), "{table}");
        assert_eq!(lines[2], "| serial | 1 | – | 500000 | 1.00x | 0.0 / 0 | yes |");
        assert_eq!(lines[4], "| bad | 2 | – | 1000000 | 2.00x | 150000.0 / 300000 | no |");
        assert_eq!(lines[6], "| merged | 2 | 30 | 900000 | 1.80x | 29.0 / 58 | yes |");
        assert_eq!(lines[7], "| ordo | 2 | 10 | 20000 | 0.04x | 12.0 / 24 | – |");
    }

    #[test]
    fn figures_are_short() {
        let cases =
            [(0.0, "0"), (2.94, "2.9"), (950.0, "950"), (999_888.0, "1.0M"), (12_345.0, "12k"), (1_540_000.0, "1.5M")];
        for (v, text) in cases {
            assert_eq!(si(v), text);
        }
    }

    #[test]
    fn the_plot_is_one_svg_with_every_series_and_reference() {
        let svg = plot_svg(&sample_rows());
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{svg}");
        for name in
            ["merged (2 workers)", "ordo (2 processes)", "serial (1 worker)", "mutex (2 workers)", "bad (2 workers)"]
        {
            assert!(svg.contains(name), "{name} missing");
        }
        for label in ["trades/s", "staleness (trades, log scale)", "merge ticks"] {
            assert!(svg.contains(label), "{label} missing");
        }
        // Two panels, each with a line per series and a line per reference.
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("stroke-dasharray").count(), 2 * 3 + 3);
        // Tags balance (no stray or unclosed element).
        let opened = svg.matches("<text").count();
        assert_eq!(opened, svg.matches("</text>").count());
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    /// The measured comparison: `cargo test -p ordo-stocks --release -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: seconds of CPU, numbers vary with the machine"]
    fn measure_the_comparison() {
        let mut rows = Vec::new();
        for workers in [2, 4] {
            let o = LocalOptions {
                params: model::Params { seed: 1, trades: 300_000, partitions: 16, symbols: 200 },
                workers,
                merge_ticks: DEFAULT_MERGE_TICKS.to_vec(),
                samples: DEFAULT_SAMPLES,
                work_ns: DEFAULT_WORK_NS,
            };
            let mut run = run_all(&o);
            if workers != 2 {
                run.retain(|r| r.mode != "serial");
            }
            rows.extend(run);
        }
        println!("{}", table_markdown(&rows));
        let path = std::env::temp_dir().join("stocks-local.svg");
        match std::fs::write(&path, plot_svg(&rows)) {
            Ok(()) => println!("plot: {}", path.display()),
            Err(e) => println!("plot not written to {}: {e}", path.display()),
        }
        assert!(rows.iter().all(|r| r.correct == Some(r.mode != "bad")), "{rows:?}");
    }
}
