//! The stock model, shared by the app, the generator, the checker and the benchmark: trades,
//! the state of a symbol (last price, volume, VWAP), partitions of symbols, and the records an
//! owner appends to its partition's log stream.
//!
//! Everything here is deterministic: the trade stream is a function of its [`Params`], so the
//! checker regenerates it and replays it serially to get the state every symbol must end in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a trade stream is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Seed of the generator.
    pub seed: u64,
    /// Number of trades.
    pub trades: u64,
    /// Number of partitions (divider keys `stock-0` .. `stock-{N-1}`).
    pub partitions: u32,
    /// Number of symbols.
    pub symbols: u32,
}

/// One trade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    /// Position in the whole stream (0-based).
    pub id: u64,
    /// Its partition.
    pub partition: u32,
    /// Position in its partition (1-based, dense): owners apply a partition's trades in this order.
    pub pseq: u64,
    /// Symbol.
    pub symbol: String,
    /// Price in cents.
    pub price: u64,
    /// Shares.
    pub qty: u64,
}

/// The divider key of a partition.
pub fn key_of(partition: u32) -> String {
    format!("stock-{partition}")
}

/// The partition of a divider key.
pub fn partition_of_key(key: &str) -> Option<u32> {
    key.strip_prefix("stock-")?.parse().ok()
}

/// The log stream of a partition's key.
pub fn stream_of(key: &str) -> String {
    format!("stocks-{key}")
}

/// Wallaroo's partition function: which partition a symbol belongs to (FNV-1a).
pub fn partition_of(symbol: &str, partitions: u32) -> u32 {
    let h = symbol.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (h % u64::from(partitions.max(1))) as u32
}

/// The name of symbol `i`.
pub fn symbol_name(i: u32) -> String {
    format!("SYM{i:04}")
}

/// A small, fast, seedable generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n >= 1).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The trade stream of `p`: symbols drawn with a skew (a few are hot, as on a real exchange),
/// prices a random walk per symbol, 1..=100 shares each.
pub fn generate(p: &Params) -> Vec<Trade> {
    let mut rng = Rng::new(p.seed);
    let symbols: Vec<String> = (0..p.symbols.max(1)).map(symbol_name).collect();
    let parts: Vec<u32> = symbols.iter().map(|s| partition_of(s, p.partitions)).collect();
    let mut price: Vec<u64> = (0..symbols.len()).map(|_| 1_000 + rng.below(99_000)).collect();
    let mut pseq = vec![0u64; p.partitions.max(1) as usize];
    (0..p.trades)
        .map(|id| {
            // Half the trades go to the first eighth of the symbols.
            let n = symbols.len() as u64;
            let i = if rng.below(2) == 0 { rng.below(n.div_ceil(8)) } else { rng.below(n) } as usize;
            let step = rng.below(21) as i64 - 10;
            price[i] = (price[i] as i64 + step).max(1) as u64;
            let part = parts[i];
            pseq[part as usize] += 1;
            Trade {
                id,
                partition: part,
                pseq: pseq[part as usize],
                symbol: symbols[i].clone(),
                price: price[i],
                qty: 1 + rng.below(100),
            }
        })
        .collect()
}

/// The state of one symbol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolState {
    /// Price of the last trade, in cents.
    pub last_price: u64,
    /// Shares traded.
    pub volume: u64,
    /// Sum of price * shares, in cents (VWAP = notional / volume).
    pub notional: u64,
    /// Trades applied.
    pub trades: u64,
    /// Sequencer ID stamped on the last trade applied (0 in a serial replay).
    #[serde(default)]
    pub last_stamp: u64,
}

impl SymbolState {
    /// Volume-weighted average price, in cents.
    pub fn vwap(&self) -> f64 {
        if self.volume == 0 {
            0.0
        } else {
            self.notional as f64 / self.volume as f64
        }
    }

    /// Applies a trade.
    pub fn apply(&mut self, t: &Trade, stamp: u64) {
        self.last_price = t.price;
        self.volume += t.qty;
        self.notional += t.price * t.qty;
        self.trades += 1;
        self.last_stamp = stamp;
    }

    /// The market state, without the stamp (which depends on who applied the trade).
    pub fn market(&self) -> (u64, u64, u64, u64) {
        (self.last_price, self.volume, self.notional, self.trades)
    }
}

/// What applying a trade to a partition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied.
    Yes,
    /// Already applied earlier (a retry): ignored.
    Duplicate,
    /// A trade before it is missing: refused (the sender resends from `applied + 1`).
    Gap,
}

/// The state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// `pseq` of the last trade applied (trades apply in `pseq` order, so this says which).
    pub applied: u64,
    /// Per symbol.
    pub symbols: BTreeMap<String, SymbolState>,
}

impl PartitionState {
    /// Applies `t` if it is the next trade of the partition.
    pub fn apply(&mut self, t: &Trade, stamp: u64) -> Applied {
        if t.pseq <= self.applied {
            return Applied::Duplicate;
        }
        if t.pseq != self.applied + 1 {
            return Applied::Gap;
        }
        self.symbols.entry(t.symbol.clone()).or_default().apply(t, stamp);
        self.applied = t.pseq;
        Applied::Yes
    }

    /// The market state of every symbol (no stamps).
    pub fn market(&self) -> BTreeMap<&str, (u64, u64, u64, u64)> {
        self.symbols.iter().map(|(k, v)| (k.as_str(), v.market())).collect()
    }
}

/// A record of a partition's log stream (one entry, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A new owner took the partition (appended fenced with its token, before it replays: every
    /// earlier owner's append either precedes this entry or is refused).
    Open {
        /// Member id of the owner.
        member: String,
        /// Its token.
        token: u64,
    },
    /// The whole state of the partition; replay starts at the latest one.
    Snapshot {
        /// The state.
        state: PartitionState,
    },
    /// Trades `from..=applied` applied: the new state of the symbols they touched and the
    /// sequencer ID of each trade.
    Delta {
        /// First trade (`pseq`) of the delta.
        from: u64,
        /// Last trade.
        applied: u64,
        /// New state of the symbols touched.
        symbols: BTreeMap<String, SymbolState>,
        /// Sequencer IDs of trades `from..=applied`, in order.
        stamps: Vec<u64>,
    },
}

impl Record {
    /// The entry's bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records serialize")
    }

    /// A record from an entry's bytes.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(b).map_err(|e| format!("not a stocks record: {e}"))
    }
}

/// Replays records in log order into a partition's state. A delta must continue exactly where
/// the state is (`from == applied + 1`): anything else means a trade was lost or applied twice.
pub fn replay<'a>(records: impl IntoIterator<Item = &'a Record>) -> Result<PartitionState, String> {
    let mut s = PartitionState::default();
    for r in records {
        match r {
            Record::Open { .. } => {}
            Record::Snapshot { state } => s = state.clone(),
            Record::Delta { from, applied, symbols, .. } => {
                if *from != s.applied + 1 || applied < from {
                    return Err(format!(
                        "a delta of trades {from}..={applied} follows state at trade {}: a trade was lost or applied twice",
                        s.applied
                    ));
                }
                for (k, v) in symbols {
                    s.symbols.insert(k.clone(), v.clone());
                }
                s.applied = *applied;
            }
        }
    }
    Ok(s)
}

/// The state of every partition after applying `trades` one by one (the serial baseline).
pub fn serial(trades: &[Trade], partitions: u32) -> Vec<PartitionState> {
    let mut out = vec![PartitionState::default(); partitions.max(1) as usize];
    for t in trades {
        out[t.partition as usize].apply(t, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params { seed: 7, trades: 5_000, partitions: 8, symbols: 64 }
    }

    #[test]
    fn the_stream_is_deterministic_and_dense_per_partition() {
        let a = generate(&params());
        assert_eq!(a, generate(&params()));
        assert_ne!(a, generate(&Params { seed: 8, ..params() }));
        let mut next = [1u64; 8];
        for t in &a {
            assert_eq!(t.partition, partition_of(&t.symbol, 8));
            assert_eq!(t.pseq, next[t.partition as usize]);
            next[t.partition as usize] += 1;
        }
        assert!(next.iter().all(|n| *n > 1), "every partition gets trades");
    }

    #[test]
    fn replaying_deltas_and_snapshots_equals_the_serial_state() {
        let trades = generate(&params());
        let expected = serial(&trades, 8);
        for p in 0..8u32 {
            let mine: Vec<&Trade> = trades.iter().filter(|t| t.partition == p).collect();
            let mut state = PartitionState::default();
            let mut records = vec![Record::Open { member: "a".into(), token: 1 }];
            for chunk in mine.chunks(7) {
                let from = state.applied + 1;
                let mut touched = BTreeMap::new();
                for t in chunk {
                    assert_eq!(state.apply(t, t.id + 1), Applied::Yes);
                    touched.insert(t.symbol.clone(), state.symbols[&t.symbol].clone());
                }
                let stamps = chunk.iter().map(|t| t.id + 1).collect();
                records.push(Record::Delta { from, applied: state.applied, symbols: touched, stamps });
                if records.len() % 5 == 0 {
                    records.push(Record::Snapshot { state: state.clone() });
                }
            }
            let decoded: Vec<Record> = records.iter().map(|r| Record::decode(&r.encode()).unwrap()).collect();
            let replayed = replay(&decoded).unwrap();
            assert_eq!(replayed.market(), expected[p as usize].market(), "partition {p}");
            assert_eq!(replayed.applied, expected[p as usize].applied);
        }
    }

    #[test]
    fn a_lost_or_doubled_delta_is_caught_by_replay() {
        let trades = generate(&params());
        let t: Vec<&Trade> = trades.iter().filter(|t| t.partition == 0).take(3).collect();
        let delta = |from: u64, applied: u64| Record::Delta { from, applied, symbols: BTreeMap::new(), stamps: vec![] };
        assert!(replay(&[delta(1, 2), delta(3, 3)]).is_ok());
        assert!(replay(&[delta(1, 2), delta(2, 3)]).is_err(), "trade 2 twice");
        assert!(replay(&[delta(1, 1), delta(3, 3)]).is_err(), "trade 2 lost");
        let mut s = PartitionState::default();
        assert_eq!(s.apply(t[1], 0), Applied::Gap);
        assert_eq!(s.apply(t[0], 0), Applied::Yes);
        assert_eq!(s.apply(t[0], 0), Applied::Duplicate);
    }
}
