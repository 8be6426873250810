//! Ordo's example app: stock-symbol partitions divided among app processes by a WorkDivider,
//! each owner keeping its partitions' state in memory, stamping trades with sequencer IDs and
//! appending state deltas every `merge_ticks` trades to its partition's log stream with fenced
//! appends; a new owner rebuilds a partition by replaying its log. See `README.md` beside this
//! crate and the "Example app" section of the project's README.
//!
//! Modules: [`model`] (trades, state, log records, serial replay), [`app`] (an owner process),
//! [`generator`] (routes trades to owners), [`check`] (logs against the serial replay), [`local`]
//! (the seed's in-process comparison: serial, mutex, bad, merged every k ticks).

pub mod app;
pub mod check;
pub mod generator;
pub mod local;
pub mod model;
