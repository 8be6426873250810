//! Result rows, ratios against the goals, and the markdown / JSON / SVG output.

use std::fmt::Write as _;

use serde::Serialize;

/// rr_seq's published unbuffered rate with 32 concurrent distributed clients
/// (`BenchmarkRRSeq_BufSize0_ConcurrentClients_Distributed-32`: 955,798 ns/op).
pub const RR_SEQ_STRICT_32: f64 = 1e9 / 955_798.0;

/// One measured cell (the median of its repetitions).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Short system key: baseline, lease, next, strict, etcd, sock-next, sock-ping.
    pub key: String,
    /// Human name.
    pub system: String,
    /// "strict", "1", "2", "1024", or "-".
    pub range: String,
    /// Concurrent clients (tasks).
    pub clients: usize,
    /// IDs (or calls) in the timed phase.
    pub ids: u64,
    /// Failed calls.
    pub errors: u64,
    /// Timed phase length in seconds.
    pub secs: f64,
    /// IDs (or calls) per second; `None` when not measured.
    pub ids_per_sec: Option<f64>,
    /// Median latency per ID, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency per ID, microseconds.
    pub p99_us: f64,
    /// Mean latency per ID, microseconds.
    pub mean_us: f64,
    /// IDs/s of every repetition.
    pub runs: Vec<f64>,
    /// Quorum activity of the sidecars during the (median) run, for Ordo rows.
    pub quorum: Option<crate::bench::ordo::QuorumDelta>,
    /// Anything worth knowing (first error, CAS conflicts, why not measured).
    pub note: Option<String>,
}

impl Row {
    /// A row for a cell that could not be measured, saying why.
    pub fn not_measured(key: &str, system: &str, range: &str, clients: usize, runs: Vec<f64>, why: String) -> Self {
        Row {
            key: key.into(),
            system: system.into(),
            range: range.into(),
            clients,
            ids: 0,
            errors: 0,
            secs: 0.0,
            ids_per_sec: None,
            p50_us: 0.0,
            p99_us: 0.0,
            mean_us: 0.0,
            runs,
            quorum: None,
            note: Some(why),
        }
    }
}

/// A ratio against a goal.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// What is compared.
    pub name: String,
    /// The value (None when a side is missing).
    pub value: Option<f64>,
    /// The goal, in words.
    pub goal: String,
    /// Whether the goal is met (None when not measured).
    pub met: Option<bool>,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When, where, how.
    pub meta: serde_json::Value,
    /// Measured cells.
    pub rows: Vec<Row>,
    /// Ratios against the goals.
    pub ratios: Vec<Ratio>,
}

impl Report {
    fn find(&self, key: &str, range: &str, clients: usize) -> Option<&Row> {
        self.rows.iter().find(|r| r.key == key && r.range == range && r.clients == clients)
    }

    fn rate(&self, key: &str, range: &str, clients: usize) -> Option<f64> {
        self.find(key, range, clients).and_then(|r| r.ids_per_sec).filter(|v| *v > 0.0)
    }

    /// Computes the ratios of the goals from the rows.
    pub fn compute_ratios(&mut self) {
        let mut out = Vec::new();
        let lease = self.rate("lease", "1024", 32);
        let base = self.rate("baseline", "1024", 32);
        let v = lease.zip(base).map(|(a, b)| a / b);
        out.push(Ratio {
            name: "ordo-client Sequence (range 1024, 32 tasks) / in-process baseline (1024, 32) IDs/s".into(),
            value: v,
            goal: ">= 0.5 (within 2x)".into(),
            met: v.map(|v| v >= 0.5),
        });
        let strict = self.rate("strict", "strict", 32);
        let v = strict.map(|s| s / RR_SEQ_STRICT_32);
        out.push(Ratio {
            name: format!("ordo strict (32 clients) IDs/s / rr_seq published unbuffered ({RR_SEQ_STRICT_32:.0} IDs/s)"),
            value: v,
            goal: ">= 10".into(),
            met: v.map(|v| v >= 10.0),
        });
        let etcd = self.rate("etcd", "strict", 32);
        let v = strict.zip(etcd).map(|(a, b)| a / b);
        out.push(Ratio {
            name: "ordo strict (32 clients) IDs/s / etcd CAS +1 (32 clients, same run)".into(),
            value: v,
            goal: "> 1".into(),
            met: v.map(|v| v > 1.0),
        });
        for clients in [1, 32] {
            let next = self.find("sock-next", "-", clients).map(|r| r.p50_us);
            let ping = self.find("sock-ping", "-", clients).map(|r| r.p50_us);
            let v = next.zip(ping).filter(|(_, p)| *p > 0.0).map(|(n, p)| n / p);
            out.push(Ratio {
                name: format!("Next (buffered) p50 / Ping p50 on the same socket, {clients} client(s)"),
                value: v,
                goal: "<= 2".into(),
                met: v.map(|v| v <= 2.0),
            });
        }
        self.ratios = out;
    }

    /// The markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.meta;
        let _ = writeln!(s, "# Ordo sequencer benchmark\n");
        let _ = writeln!(
            s,
            "Run {} on {} ({} cores); {} s per cell after {} ms warm-up, at most {} IDs per cell, \
             median of {} run(s). Ordo: 3 `ordo-sidecar` members ({}), clients spread over {} of them{}; \
             etcd: {}. Source: {}.\n",
            m["started"].as_str().unwrap_or("?"),
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"],
            m["cell_secs"],
            m["warmup_ms"],
            m["max_ids"],
            m["repeat"],
            m["sidecar"].as_str().unwrap_or("?"),
            m["spread"],
            m["sidecar_range"]
                .as_u64()
                .map(|r| format!(", sidecar range {r} behind leased Sequences"))
                .unwrap_or_default(),
            m["etcd"].as_str().unwrap_or("?"),
            m["git"].as_str().unwrap_or("?"),
        );
        let _ = writeln!(s, "## IDs/s (p50 / p99 latency per ID)\n");
        let _ = writeln!(
            s,
            "| range | clients | in-process baseline | ordo-client `Sequence` (lease = range) | ordo `Next` per ID (sidecar range; strict: through the quorum) | etcd CAS (3 members) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        let mut cells: Vec<(String, usize)> = Vec::new();
        for r in &self.rows {
            if r.range != "-" && !cells.contains(&(r.range.clone(), r.clients)) {
                cells.push((r.range.clone(), r.clients));
            }
        }
        for (range, clients) in &cells {
            let next_key = if range == "strict" { "strict" } else { "next" };
            let _ = writeln!(
                s,
                "| {range} | {clients} | {} | {} | {} | {} |",
                self.cell("baseline", range, *clients),
                self.cell("lease", range, *clients),
                self.cell(next_key, range, *clients),
                self.cell("etcd", range, *clients),
            );
        }
        let _ = writeln!(s, "\n## One `Next` vs one no-op `Ping` on the same Unix socket\n");
        let _ = writeln!(s, "| clients | call | calls/s | p50 | p99 |");
        let _ = writeln!(s, "|---:|---|---:|---:|---:|");
        for r in self.rows.iter().filter(|r| r.range == "-") {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.clients,
                r.system,
                r.ids_per_sec.map_or("—".into(), fmt_rate),
                fmt_us(r.p50_us),
                fmt_us(r.p99_us)
            );
        }
        let _ = writeln!(s, "\n## Ratios (same run) vs goals\n");
        let _ = writeln!(s, "| ratio | value | goal | met |");
        let _ = writeln!(s, "|---|---:|---|---|");
        for r in &self.ratios {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                r.name,
                r.value.map_or("n/a".into(), |v| format!("{v:.2}")),
                r.goal,
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "n/a",
                }
            );
        }
        let _ = writeln!(s, "\n## Quorum activity behind the Ordo rows (all members, from `/metrics`)\n");
        let _ = writeln!(s, "| system | range | clients | IDs/s | rounds ok | failed | conflicts | ms/round | changes/round | buffer refills | machine CPU busy | clients' CPU s | members' CPU ms/round | store ms/batch |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            if let Some(q) = &r.quorum {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} | {:.0} | {:.0}% | {:.2} | {} | {:.3} |",
                    r.system,
                    r.range,
                    r.clients,
                    r.ids_per_sec.map_or("—".into(), fmt_rate),
                    q.rounds_ok,
                    q.rounds_failed,
                    q.conflicts,
                    q.avg_round_ms,
                    q.avg_batch,
                    q.refills,
                    q.machine_busy * 100.0,
                    q.bench_cpu_secs,
                    // Only strict rows pay a round per allocation; elsewhere the members'
                    // CPU is mostly the calls served from buffers, not rounds.
                    if r.range == "strict" { format!("{:.2}", q.members_cpu_ms_per_round) } else { "—".into() },
                    q.store_batch_ms
                );
            }
        }
        let notes: Vec<&Row> = self.rows.iter().filter(|r| r.note.is_some() || r.errors > 0).collect();
        if !notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for r in notes {
                let _ = writeln!(
                    s,
                    "- {} range {} x {} clients: {} errors{}",
                    r.system,
                    r.range,
                    r.clients,
                    r.errors,
                    r.note.as_deref().map(|n| format!("; {n}")).unwrap_or_default()
                );
            }
        }
        let _ = writeln!(
            s,
            "\nLatency is per ID as seen by the client task (for leased/buffered rows most IDs are \
             in-process and a few wait for a refill). `runs` in sequencer.json lists every repetition."
        );
        s
    }

    fn cell(&self, key: &str, range: &str, clients: usize) -> String {
        match self.find(key, range, clients) {
            None => "—".into(),
            Some(r) => match r.ids_per_sec {
                None => r.note.clone().unwrap_or_else(|| "n/a".into()),
                Some(v) => format!("{} ({} / {})", fmt_rate(v), fmt_us(r.p50_us), fmt_us(r.p99_us)),
            },
        }
    }

    /// A log-scale bar chart of IDs/s with 32 clients, per range and system.
    pub fn svg(&self) -> String {
        let systems = [
            ("baseline", "in-process baseline", "#888888"),
            ("lease", "ordo-client Sequence", "#2b7bb9"),
            ("next", "ordo Next per ID", "#59a14f"),
            ("strict", "ordo strict Next", "#e15759"),
            ("etcd", "etcd CAS", "#f28e2b"),
        ];
        let ranges = ["strict", "1", "2", "1024"];
        let (w, h, left, top, bottom) = (900.0, 420.0, 70.0, 40.0, 60.0);
        let (lo, hi) = (2.0f64, 9.0f64);
        let y = |v: f64| top + (h - top - bottom) * (1.0 - ((v.max(1.0).log10() - lo) / (hi - lo)).clamp(0.0, 1.0));
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{left}\" y=\"20\" font-size=\"14\">IDs/s with 32 clients (log scale), by range size</text>\n"
        );
        for e in lo as i32..=hi as i32 {
            let yy = y(10f64.powi(e));
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">1e{e}</text>",
                w - 10.0,
                left - 5.0,
                yy + 4.0
            );
        }
        let group = (w - left - 20.0) / ranges.len() as f64;
        let bar = group / (systems.len() as f64 + 1.5);
        for (gi, range) in ranges.iter().enumerate() {
            let gx = left + gi as f64 * group + bar * 0.75;
            for (si, (key, _, color)) in systems.iter().enumerate() {
                if let Some(v) = self.rate(key, range, 32) {
                    let x = gx + si as f64 * bar;
                    let yy = y(v);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{x:.1}\" y=\"{yy:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{key} {range}: {v:.0} IDs/s</title></rect>",
                        bar - 2.0,
                        h - bottom - yy
                    );
                }
            }
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">range {range}</text>",
                left + gi as f64 * group + group / 2.0,
                h - bottom + 18.0
            );
        }
        for (si, (_, name, color)) in systems.iter().enumerate() {
            let x = left + si as f64 * 160.0;
            let _ = writeln!(
                s,
                "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{name}</text>",
                h - 25.0,
                x + 16.0,
                h - 15.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// `1,234,567/s`.
pub fn fmt_rate(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out + "/s"
}

/// Microseconds, human-sized.
pub fn fmt_us(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2} µs")
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}
