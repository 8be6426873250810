//! Retention: how far a stream's primary trims on its own, by bytes and by age, in whole
//! segment files (a pure function of the primary's files; [`super::router`] runs it on a tick
//! and trims through the same path as an app's `Trim`).
//!
//! Semantics (the README's log-streams section states them for users):
//! - **By bytes** (`--streams-retention-bytes`): the oldest files go while the files left still
//!   hold more than the limit; the active (newest) file always stays. Segment files roll at a
//!   quarter of the limit (at most [`DEFAULT_SEGMENT_BYTES`]), so a replica's files stay under
//!   about 1.25 times the limit, plus what arrives between two ticks.
//! - **By age** (`--streams-retention-seconds`): a file goes once its last write (recorded as
//!   the file's modification time, so it survives restarts) is older than the limit; the active
//!   file always stays, so the newest entries are kept however old they are.
//! - Never past the committed tail: a trim point is at most the last committed LSN + 1.

use std::time::{Duration, SystemTime};

use super::segment::{SegmentInfo, DEFAULT_SEGMENT_BYTES};

/// Smallest segment file size retention asks for.
const MIN_SEGMENT_BYTES: u64 = 64 << 10;

/// A retention policy (both limits off: the app trims).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Bytes of segment files kept per stream (0: no limit).
    pub bytes: u64,
    /// Age after a file's last write at which it goes (`None`: no limit).
    pub age: Option<Duration>,
}

impl Retention {
    /// True when a limit is set.
    pub fn enabled(&self) -> bool {
        self.bytes > 0 || self.age.is_some()
    }

    /// Size at which segment files roll under this policy.
    pub fn segment_bytes(&self) -> u64 {
        if self.bytes == 0 {
            DEFAULT_SEGMENT_BYTES
        } else {
            (self.bytes / 4).clamp(MIN_SEGMENT_BYTES, DEFAULT_SEGMENT_BYTES)
        }
    }

    /// The trim point this policy asks for, given a stream's files (oldest first), the time now
    /// and the last committed LSN; 0 when nothing should go.
    pub fn trim_point(&self, files: &[SegmentInfo], now: SystemTime, commit: u64) -> u64 {
        let Some(active) = files.len().checked_sub(1) else { return 0 };
        let mut keep_from = 0;
        if self.bytes > 0 {
            let mut kept = 0u64;
            keep_from = files.len();
            while keep_from > 0 {
                kept += files[keep_from - 1].bytes;
                if kept > self.bytes && keep_from <= active {
                    break;
                }
                keep_from -= 1;
            }
            keep_from = keep_from.min(active);
        }
        if let Some(age) = self.age {
            let expired =
                files[..active].iter().take_while(|f| now.duration_since(f.written).is_ok_and(|d| d > age)).count();
            keep_from = keep_from.max(expired);
        }
        if keep_from == 0 {
            return 0;
        }
        files[keep_from].first_lsn.min(commit + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(first: u64, last: u64, bytes: u64, age_s: u64, now: SystemTime) -> SegmentInfo {
        SegmentInfo { first_lsn: first, last_lsn: last, bytes, written: now - Duration::from_secs(age_s) }
    }

    #[test]
    fn bytes_keep_the_newest_files_within_the_limit_and_always_the_active_one() {
        let now = SystemTime::now();
        let files =
            [file(1, 10, 100, 0, now), file(11, 20, 100, 0, now), file(21, 30, 100, 0, now), file(31, 35, 50, 0, now)];
        let r = Retention { bytes: 250, age: None };
        // 50 + 100 + 100 = 250 fit; the oldest file goes.
        assert_eq!(r.trim_point(&files, now, 35), 11);
        assert_eq!(Retention { bytes: 149, age: None }.trim_point(&files, now, 35), 31);
        // The active file stays even when it alone is over the limit.
        assert_eq!(Retention { bytes: 10, age: None }.trim_point(&files, now, 35), 31);
        assert_eq!(Retention { bytes: 1000, age: None }.trim_point(&files, now, 35), 0);
        // Never past the committed tail.
        assert_eq!(Retention { bytes: 10, age: None }.trim_point(&files, now, 25), 26);
        assert_eq!(Retention { bytes: 10, age: None }.trim_point(&[], now, 0), 0);
    }

    #[test]
    fn age_drops_files_last_written_before_the_limit_but_never_the_active_one() {
        let now = SystemTime::now();
        let files = [file(1, 10, 100, 300, now), file(11, 20, 100, 200, now), file(21, 30, 100, 100, now)];
        let r = Retention { bytes: 0, age: Some(Duration::from_secs(150)) };
        assert_eq!(r.trim_point(&files, now, 30), 21);
        let all_old = Retention { bytes: 0, age: Some(Duration::from_secs(1)) };
        assert_eq!(all_old.trim_point(&files, now, 30), 21, "the active file stays");
        let young = Retention { bytes: 0, age: Some(Duration::from_secs(1000)) };
        assert_eq!(young.trim_point(&files, now, 30), 0);
        // Both limits: the further trim point wins.
        let both = Retention { bytes: 10_000, age: Some(Duration::from_secs(250)) };
        assert_eq!(both.trim_point(&files, now, 30), 11);
    }

    #[test]
    fn segments_roll_at_a_quarter_of_the_byte_limit() {
        assert_eq!(Retention::default().segment_bytes(), DEFAULT_SEGMENT_BYTES);
        assert_eq!(Retention { bytes: 4 << 20, age: None }.segment_bytes(), 1 << 20);
        assert_eq!(Retention { bytes: 1 << 10, age: None }.segment_bytes(), MIN_SEGMENT_BYTES);
        assert_eq!(Retention { bytes: 1 << 40, age: None }.segment_bytes(), DEFAULT_SEGMENT_BYTES);
    }
}
