//! `ordo-bench divider`: the divider's assignment function ([`ordo_contract::assign`]) on its
//! own, in one thread: time to assign 100k keys over 50 members, keys moved on join, leave,
//! affinity change and key additions versus the minimum, and balance (the worst member's
//! distance from its proportional share) at 1k, 10k and 100k keys. Each figure is given for the
//! divider's assignment and, beside it, for plain weighted rendezvous (its first step alone).
//! Writes `<out>/divider-assign.md` and prints the table.
//!
//! ```text
//! ordo-bench divider [--repeat N] [--out DIR]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use ordo_contract::assign::{self, Member};

const USAGE: &str = "usage: ordo-bench divider [--repeat N] [--out DIR]";

/// Key counts of the movement and balance tables.
const KEY_COUNTS: [usize; 3] = [1_000, 10_000, 100_000];

/// Arguments of the divider mode.
#[derive(Debug, Clone)]
pub struct Args {
    /// Timed repetitions of the 100k-key assignment.
    pub repeat: usize,
    /// Output directory.
    pub out: PathBuf,
}

/// Parses the arguments after `divider`.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Args> {
    let mut a = Args { repeat: 21, out: PathBuf::from("bench-out") };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value =
            || inline.clone().or_else(|| it.next()).with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--repeat" => a.repeat = value()?.parse::<usize>()?.clamp(1, 1000),
            "--out" => a.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {arg:?}\n{USAGE}"),
        }
    }
    Ok(a)
}

/// One of the two functions compared.
#[derive(Clone, Copy)]
struct Function {
    name: &'static str,
    run: fn(&[&str], &[Member]) -> Vec<Option<u32>>,
}

const FUNCTIONS: [Function; 2] = [
    Function { name: "divider (wrh + band pass)", run: assign::assign },
    Function { name: "plain weighted rendezvous", run: assign::rendezvous_only },
];

fn members(n: usize, affinity: impl Fn(usize) -> u32) -> Vec<Member> {
    (0..n).map(|i| Member { id: format!("m{i:02}"), affinity: affinity(i) }).collect()
}

fn key_names(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:06}")).collect()
}

/// Owner id of each key.
fn owners<'m>(f: Function, keys: &[&str], m: &'m [Member]) -> Vec<Option<&'m str>> {
    (f.run)(keys, m).into_iter().map(|o| o.map(|i| m[i as usize].id.as_str())).collect()
}

/// `(keys moved, keys moved between two members that are both not `changed`)`.
fn moved(before: &[Option<&str>], after: &[Option<&str>], changed: &str) -> (usize, usize) {
    let mut all = 0;
    let mut bystander = 0;
    for (b, a) in before.iter().zip(after) {
        if b != a {
            all += 1;
            if *b != Some(changed) && *a != Some(changed) {
                bystander += 1;
            }
        }
    }
    (all, bystander)
}

/// Share of `id` among `m` for `n` keys.
fn share(m: &[Member], id: &str, n: usize) -> f64 {
    let total: f64 = m.iter().map(|x| f64::from(x.affinity)).sum();
    m.iter().find(|x| x.id == id).map_or(0.0, |x| n as f64 * f64::from(x.affinity) / total)
}

/// Accumulated movement over several changes of one kind.
#[derive(Default)]
struct Movement {
    moved: usize,
    minimum: f64,
    bystander: usize,
    worst: f64,
}

impl Movement {
    fn add(&mut self, (moved, bystander): (usize, usize), minimum: f64) {
        self.moved += moved;
        self.bystander += bystander;
        self.minimum += minimum;
        self.worst = self.worst.max(moved as f64 / minimum.max(1.0));
    }

    fn cell(&self) -> String {
        format!(
            "{:.3}x (worst {:.3}x, {} bystander)",
            self.moved as f64 / self.minimum.max(1.0),
            self.worst,
            self.bystander
        )
    }
}

/// The four kinds of change over 50 members of affinity 10, five instances of each; and the
/// existing keys moved when 1% more keys are added (the minimum is 0).
fn movement_rows(f: Function, n: usize) -> ([(&'static str, Movement); 4], usize) {
    let keys = key_names(n, "key-");
    let k: Vec<&str> = keys.iter().map(String::as_str).collect();
    let base = members(50, |_| 10);
    let before = owners(f, &k, &base);
    let picks = [0usize, 11, 23, 37, 49];
    let mut leave = Movement::default();
    let mut join = Movement::default();
    let mut up = Movement::default();
    let mut down = Movement::default();
    for &p in &picks {
        let id = base[p].id.clone();
        let held = before.iter().filter(|o| **o == Some(id.as_str())).count();
        let mut left = base.clone();
        left.remove(p);
        leave.add(moved(&before, &owners(f, &k, &left), &id), held as f64);

        let mut joined = base.clone();
        let joiner = format!("j{p:02}");
        joined.push(Member { id: joiner.clone(), affinity: 10 });
        join.add(moved(&before, &owners(f, &k, &joined), &joiner), share(&joined, &joiner, n));

        for (to, acc) in [(15, &mut up), (5, &mut down)] {
            let mut changed = base.clone();
            changed[p].affinity = to;
            let minimum = (share(&changed, &id, n) - share(&base, &id, n)).abs();
            acc.add(moved(&before, &owners(f, &k, &changed), &id), minimum);
        }
    }
    // 1% more keys: the minimum is 0 existing keys moved.
    let more = key_names(n / 100, "new-");
    let mut grown = k.clone();
    grown.extend(more.iter().map(String::as_str));
    let after = owners(f, &grown, &base);
    let existing_moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    (
        [
            ("leave (min = leaver's keys)", leave),
            ("join (min = joiner's share)", join),
            ("affinity 10 -> 15 (min = share change)", up),
            ("affinity 10 -> 5 (min = share change)", down),
        ],
        existing_moved,
    )
}

/// Worst `|n - q| / q` over the members, and that member's `|n - q|` in keys.
fn worst_balance(f: Function, n: usize, m: &[Member]) -> (f64, f64) {
    let keys = key_names(n, "key-");
    let k: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for id in owners(f, &k, m).into_iter().flatten() {
        *load.entry(id).or_default() += 1;
    }
    m.iter()
        .map(|x| {
            let q = share(m, &x.id, n);
            let off = (load.get(x.id.as_str()).copied().unwrap_or(0) as f64 - q).abs();
            (off / q, off)
        })
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
}

/// Milliseconds of `repeat` timed runs of `f` on 100k keys: (p50, min, max).
fn time_100k(f: Function, m: &[Member], repeat: usize) -> (f64, f64, f64) {
    let keys = key_names(100_000, "key-");
    let k: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut ms: Vec<f64> = (0..repeat)
        .map(|_| {
            let t = Instant::now();
            let o = (f.run)(&k, m);
            let e = t.elapsed().as_secs_f64() * 1e3;
            std::hint::black_box(o);
            e
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[0], ms[ms.len() - 1])
}

/// Runs the divider mode.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut md = String::new();
    writeln!(md, "# Divider assignment (`{}`), one thread", assign::ALGORITHM)?;
    writeln!(md, "\nCommand: `ordo-bench divider --repeat {}`", args.repeat)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    writeln!(
        md,
        "Load average at start (the machine is shared): {}\n",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )?;

    writeln!(md, "## Time to assign 100k keys (p50 of {} runs; goal < 25 ms at 50 members)\n", args.repeat)?;
    writeln!(md, "| function | members | p50 ms | min ms | max ms |\n| --- | --- | --- | --- | --- |")?;
    let equal = members(50, |_| 1);
    let mixed = members(50, |i| 1 + (i % 10) as u32);
    let many = members(1000, |i| 1 + (i % 7) as u32);
    for f in FUNCTIONS {
        for (name, m) in [("50 x affinity 1", &equal), ("50 x affinity 1..10", &mixed), ("1000 x affinity 1..7", &many)]
        {
            eprintln!("timing {} / {name}", f.name);
            let (p50, min, max) = time_100k(f, m, args.repeat);
            writeln!(md, "| {} | {name} | {p50:.2} | {min:.2} | {max:.2} |", f.name)?;
        }
    }

    writeln!(
        md,
        "\n## Keys moved vs the minimum (50 members of affinity 10; mean over 5 changes of each \
         kind, worst single change; bystander = moved between two members that did not change)\n"
    )?;
    writeln!(md, "| keys | change | {} | {} |\n| --- | --- | --- | --- |", FUNCTIONS[0].name, FUNCTIONS[1].name)?;
    for n in KEY_COUNTS {
        eprintln!("movement at {n} keys");
        let [(a, added_a), (b, added_b)] = FUNCTIONS.map(|f| movement_rows(f, n));
        for ((kind, ma), (_, mb)) in a.iter().zip(&b) {
            writeln!(md, "| {n} | {kind} | {} | {} |", ma.cell(), mb.cell())?;
        }
        writeln!(md, "| {n} | +1% keys: existing keys moved (min 0) | {added_a} | {added_b} |")?;
    }

    writeln!(md, "\n## Balance: worst member's |keys - share| / share, and in keys (goal <= 5% at 100k keys)\n")?;
    writeln!(md, "| keys | members | {} | {} |\n| --- | --- | --- | --- |", FUNCTIONS[0].name, FUNCTIONS[1].name)?;
    let powers = members(8, |i| 1 << i);
    for n in KEY_COUNTS {
        eprintln!("balance at {n} keys");
        for (name, m) in [("50 x 1", &equal), ("50 x 1..10", &mixed), ("8 x 1,2,4..128", &powers)] {
            let [(a, ka), (b, kb)] = FUNCTIONS.map(|f| worst_balance(f, n, m));
            writeln!(md, "| {n} | {name} | {:.2}% ({ka:.1} keys) | {:.2}% ({kb:.1} keys) |", a * 100.0, b * 100.0)?;
        }
    }
    writeln!(
        md,
        "\nThe divider's bound is max(5% of the share, 1 key): at 1k keys, 50 x 1..10 gives the \
         affinity-1 members a share of 3.6 keys."
    )?;

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let path = args.out.join("divider-assign.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    println!("{md}");
    eprintln!("wrote {}", path.display());
    Ok(())
}
