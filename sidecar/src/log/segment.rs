//! One stream's copy on one replica: an append-only file of CRC-framed records plus a small
//! file holding the sealed epoch. Pure file I/O with no syncing policy: [`super::store`] groups
//! the `fdatasync`s of many segments and batches into one commit.
//!
//! Record framing: `[u32 body length][u32 CRC-32 of the body][body]`, body =
//! `lsn, epoch, producer_id, producer_epoch, batch_seq` (u64 each), `batch_index, batch_len`
//! (u32 each), then the entry's bytes; all little-endian. A record whose batch carries a fence
//! (the batch's first entry, [`super::fence`]) sets the top bit of the length word, and its body
//! has the fence between the header and the bytes: `[u32 fence length][u64 token][u16 divider
//! length][divider][key]` (a sidecar from before fences would read that bit as a torn length:
//! do not downgrade across it). On open, the file is scanned and cut
//! at the first record that is short, fails its CRC or does not carry the next LSN: a write torn
//! by a crash was never acknowledged (acks follow the fsync), so dropping it loses nothing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{EpochStart, Fence, LogEntry};

/// Bytes of a record's frame header.
const FRAME: usize = 8;
/// Bytes of a record body before the entry's data.
const BODY_HEADER: usize = 5 * 8 + 2 * 4;
/// Top bit of the length word: the body carries a fence.
const FENCED: u32 = 1 << 31;
/// Largest record body accepted when scanning (anything larger is a torn or corrupt length).
pub const MAX_RECORD: usize = 64 << 20;

/// Why a segment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The disk said no.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A caller broke an invariant (a programming error, reported rather than panicking).
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io { path: path.display().to_string(), source }
}

/// CRC-32 (IEEE) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// Encodes one record (frame and body).
pub fn encode_record(e: &LogEntry) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_HEADER + e.data.len());
    for v in [e.lsn, e.epoch, e.producer_id, e.producer_epoch, e.batch_seq] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&e.batch_index.to_le_bytes());
    body.extend_from_slice(&e.batch_len.to_le_bytes());
    let mut word = 0;
    if let Some(f) = &e.fence {
        // Divider names and keys are at most a few hundred bytes (checked at the API).
        let d = &f.divider.as_bytes()[..f.divider.len().min(u16::MAX as usize)];
        let len = 8 + 2 + d.len() + f.key.len();
        body.extend_from_slice(&(len as u32).to_le_bytes());
        body.extend_from_slice(&f.token.to_le_bytes());
        body.extend_from_slice(&(d.len() as u16).to_le_bytes());
        body.extend_from_slice(d);
        body.extend_from_slice(f.key.as_bytes());
        word = FENCED;
    }
    body.extend_from_slice(&e.data);
    let mut out = Vec::with_capacity(FRAME + body.len());
    out.extend_from_slice(&(body.len() as u32 | word).to_le_bytes());
    out.extend_from_slice(&crc32(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Decodes a fence (`[u32 len][u64 token][u16 divider len][divider][key]`) at the start of
/// `b`; returns it and the bytes after it.
fn decode_fence(b: &[u8]) -> Option<(Fence, &[u8])> {
    let len = u32_at(b.get(..4)?, 0) as usize;
    let f = b.get(4..4 + len)?;
    let token = u64_at(f.get(..8)?, 0);
    let dlen = u16::from_le_bytes([*f.get(8)?, *f.get(9)?]) as usize;
    let divider = std::str::from_utf8(f.get(10..10 + dlen)?).ok()?.to_string();
    let key = std::str::from_utf8(f.get(10 + dlen..)?).ok()?.to_string();
    Some((Fence { divider, key, token }, &b[4 + len..]))
}

/// Decodes a record body (its CRC already checked); `fenced`: the length word's top bit.
fn decode_body(body: &[u8], fenced: bool) -> Option<LogEntry> {
    if body.len() < BODY_HEADER {
        return None;
    }
    let (fence, data) = if fenced {
        let (f, rest) = decode_fence(&body[BODY_HEADER..])?;
        (Some(f), rest)
    } else {
        (None, &body[BODY_HEADER..])
    };
    Some(LogEntry {
        lsn: u64_at(body, 0),
        epoch: u64_at(body, 8),
        producer_id: u64_at(body, 16),
        producer_epoch: u64_at(body, 24),
        batch_seq: u64_at(body, 32),
        batch_index: u32_at(body, 40),
        batch_len: u32_at(body, 44),
        fence,
        data: data.to_vec(),
    })
}

/// A stream's records on this replica.
pub struct Segment {
    dir: PathBuf,
    file: File,
    /// Byte offset of each record; index `i` holds LSN `i + 1`.
    offsets: Vec<u64>,
    /// End of the last record.
    end: u64,
    /// Where each epoch's records start, ascending.
    epochs: Vec<EpochStart>,
    /// Highest epoch this replica promised to serve (it refuses lower ones).
    sealed: u64,
    /// Bytes cut from the tail when it was opened (a torn write).
    pub torn_bytes: u64,
    /// The stream was missing here (data lost) and is not yet rebuilt from a primary.
    rebuilding: bool,
}

impl Segment {
    /// Opens (or creates) the segment in `dir`, cutting a torn tail. A segment created here
    /// starts as *rebuilding* unless `fresh_stream` says the stream never had entries: a missing
    /// directory may be a replica whose disk was wiped.
    pub fn open(dir: &Path, fresh_stream: bool) -> Result<Self, SegmentError> {
        let existed = dir.exists();
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let marker = dir.join("rebuilding");
        if !existed && !fresh_stream {
            File::create(&marker).and_then(|f| f.sync_all()).map_err(io(&marker))?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        }
        if !existed {
            if let Some(parent) = dir.parent() {
                File::open(parent).and_then(|d| d.sync_all()).map_err(io(parent))?;
            }
        }
        let path = dir.join("records");
        let file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        let mut seg = Segment {
            dir: dir.to_path_buf(),
            file,
            offsets: Vec::new(),
            end: 0,
            epochs: Vec::new(),
            sealed: read_sealed(dir)?,
            torn_bytes: 0,
            rebuilding: marker.exists(),
        };
        let mut header = [0u8; FRAME];
        let mut at = 0u64;
        while at + FRAME as u64 <= len {
            seg.file.read_exact_at(&mut header, at).map_err(io(&path))?;
            let word = u32_at(&header, 0);
            let body_len = (word & !FENCED) as usize;
            if !(BODY_HEADER..=MAX_RECORD).contains(&body_len) || at + (FRAME + body_len) as u64 > len {
                break;
            }
            let mut body = vec![0u8; body_len];
            seg.file.read_exact_at(&mut body, at + FRAME as u64).map_err(io(&path))?;
            if crc32(&body) != u32_at(&header, 4) {
                break;
            }
            let Some(e) = decode_body(&body, word & FENCED != 0) else { break };
            if e.lsn != seg.last_lsn() + 1 || e.epoch == 0 {
                break;
            }
            seg.push_index(at, e.lsn, e.epoch);
            at += (FRAME + body_len) as u64;
        }
        seg.end = at;
        if at < len {
            seg.torn_bytes = len - at;
            tracing::warn!(dir = %dir.display(), cut = len - at, "cutting a torn or corrupt tail off a log segment");
            seg.file.set_len(at).map_err(io(&path))?;
            seg.file.sync_all().map_err(io(&path))?;
        }
        Ok(seg)
    }

    fn push_index(&mut self, offset: u64, lsn: u64, epoch: u64) {
        self.offsets.push(offset);
        if self.epochs.last().is_none_or(|l| l.epoch != epoch) {
            self.epochs.push(EpochStart { epoch, start_lsn: lsn });
        }
    }

    /// Last LSN held (0: empty).
    pub fn last_lsn(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// Epoch of the entry at `lsn` (0 for LSN 0 or beyond the end).
    pub fn epoch_at(&self, lsn: u64) -> u64 {
        epoch_at(&self.epochs, lsn, self.last_lsn())
    }

    /// Where each epoch's entries start.
    pub fn epochs(&self) -> &[EpochStart] {
        &self.epochs
    }

    /// True while the segment is rebuilding (see [`Segment::open`]).
    pub fn rebuilding(&self) -> bool {
        self.rebuilding
    }

    /// Marks the segment rebuilt (durably).
    pub fn finish_rebuild(&mut self) -> Result<(), SegmentError> {
        if self.rebuilding {
            let marker = self.dir.join("rebuilding");
            std::fs::remove_file(&marker).map_err(io(&marker))?;
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
            self.rebuilding = false;
        }
        Ok(())
    }

    /// The sealed epoch.
    pub fn sealed(&self) -> u64 {
        self.sealed
    }

    /// Persists a higher sealed epoch (write, fsync, rename, fsync the directory).
    pub fn seal(&mut self, epoch: u64) -> Result<(), SegmentError> {
        if epoch <= self.sealed {
            return Ok(());
        }
        let tmp = self.dir.join("sealed.tmp");
        let mut buf = epoch.to_le_bytes().to_vec();
        buf.extend_from_slice(&crc32(&epoch.to_le_bytes()).to_le_bytes());
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&buf).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let dest = self.dir.join("sealed");
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        self.sealed = epoch;
        Ok(())
    }

    /// Appends `e` at the next LSN (written, not yet synced).
    pub fn append(&mut self, e: &LogEntry) -> Result<(), SegmentError> {
        if e.lsn != self.last_lsn() + 1 || e.epoch == 0 {
            return Err(SegmentError::Invalid(format!(
                "append of LSN {} (epoch {}) after LSN {}",
                e.lsn,
                e.epoch,
                self.last_lsn()
            )));
        }
        let rec = encode_record(e);
        let path = self.dir.join("records");
        self.file.write_all(&rec).map_err(io(&path))?;
        let at = self.end;
        self.end += rec.len() as u64;
        self.push_index(at, e.lsn, e.epoch);
        Ok(())
    }

    /// Removes every entry from `lsn` on (written, not yet synced).
    pub fn truncate_from(&mut self, lsn: u64) -> Result<(), SegmentError> {
        if lsn == 0 || lsn > self.last_lsn() {
            return Ok(());
        }
        let at = self.offsets[(lsn - 1) as usize];
        let path = self.dir.join("records");
        self.file.set_len(at).map_err(io(&path))?;
        self.offsets.truncate((lsn - 1) as usize);
        self.end = at;
        while self.epochs.last().is_some_and(|l| l.start_lsn >= lsn) {
            self.epochs.pop();
        }
        Ok(())
    }

    /// Reads entries `from..` (at most `max` entries and about `max_bytes`, at least one).
    pub fn read(&self, from: u64, max: usize, max_bytes: usize) -> Result<Vec<LogEntry>, SegmentError> {
        let path = self.dir.join("records");
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut lsn = from.max(1);
        while lsn <= self.last_lsn() && out.len() < max && (out.is_empty() || bytes < max_bytes) {
            let at = self.offsets[(lsn - 1) as usize];
            let next = self.offsets.get(lsn as usize).copied().unwrap_or(self.end);
            let mut rec = vec![0u8; (next - at) as usize];
            self.file.read_exact_at(&mut rec, at).map_err(io(&path))?;
            let e = decode_body(&rec[FRAME..], u32_at(&rec, 0) & FENCED != 0)
                .ok_or_else(|| SegmentError::Invalid(format!("record of LSN {lsn} is unreadable")))?;
            bytes += e.data.len();
            out.push(e);
            lsn += 1;
        }
        Ok(out)
    }

    /// Makes every write so far durable (`fdatasync`).
    pub fn sync(&self) -> Result<(), SegmentError> {
        self.file.sync_data().map_err(io(&self.dir.join("records")))
    }
}

/// Epoch of `lsn` in a log whose epochs start as listed and whose last LSN is `last`.
pub fn epoch_at(epochs: &[EpochStart], lsn: u64, last: u64) -> u64 {
    if lsn == 0 || lsn > last {
        return 0;
    }
    epochs.iter().rev().find(|e| e.start_lsn <= lsn).map_or(0, |e| e.epoch)
}

/// The last LSN at which two logs (epochs and last LSNs) hold the same entry: by the
/// log-matching property (an LSN and epoch name one entry and everything before it), the largest
/// `l <= min(last)` whose epochs agree.
pub fn matching_prefix(a: &[EpochStart], a_last: u64, b: &[EpochStart], b_last: u64) -> u64 {
    let mut l = a_last.min(b_last);
    while l > 0 {
        let (ea, eb) = (epoch_at(a, l, a_last), epoch_at(b, l, b_last));
        if ea == eb {
            return l;
        }
        // Jump to the end of the earlier of the two epochs' previous boundaries.
        let start_a = a.iter().rev().find(|e| e.start_lsn <= l).map_or(1, |e| e.start_lsn);
        let start_b = b.iter().rev().find(|e| e.start_lsn <= l).map_or(1, |e| e.start_lsn);
        l = start_a.max(start_b) - 1;
    }
    0
}

fn read_sealed(dir: &Path) -> Result<u64, SegmentError> {
    let path = dir.join("sealed");
    match std::fs::read(&path) {
        Ok(b) if b.len() == 12 => {
            let epoch = u64_at(&b, 0);
            if crc32(&b[..8]) != u32_at(&b, 8) {
                return Err(SegmentError::Invalid(format!("{} is corrupt", path.display())));
            }
            Ok(epoch)
        }
        Ok(_) => Err(SegmentError::Invalid(format!("{} is corrupt", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(SegmentError::Io { path: path.display().to_string(), source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(lsn: u64, epoch: u64, data: &[u8]) -> LogEntry {
        LogEntry { lsn, epoch, data: data.to_vec(), ..Default::default() }
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn fences_survive_reopen_and_reads_beside_unfenced_records() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Fence { divider: "stocks".into(), key: "stock-7".into(), token: 42 };
        let mut written = Vec::new();
        {
            let mut s = Segment::open(dir.path(), true).unwrap();
            for lsn in 1..=4 {
                let mut e = entry(lsn, 1, format!("e{lsn}").as_bytes());
                if lsn % 2 == 1 {
                    e.fence = Some(Fence { token: 40 + lsn, ..fence.clone() });
                }
                s.append(&e).unwrap();
                written.push(e);
            }
            assert_eq!(s.read(1, 10, usize::MAX).unwrap(), written);
        }
        let s = Segment::open(dir.path(), false).unwrap();
        assert_eq!(s.torn_bytes, 0, "a fenced record is not a torn one");
        assert_eq!(s.read(1, 10, usize::MAX).unwrap(), written);
        let mut empty_divider = entry(1, 1, b"");
        empty_divider.fence = Some(Fence { divider: String::new(), key: "k".into(), token: 1 });
        assert_eq!(decode_body(&encode_record(&empty_divider)[FRAME..], true), Some(empty_divider));
    }

    #[test]
    fn records_survive_reopen_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::open(dir.path(), true).unwrap();
        for lsn in 1..=5 {
            s.append(&entry(lsn, if lsn < 4 { 1 } else { 2 }, format!("e{lsn}").as_bytes())).unwrap();
        }
        s.sync().unwrap();
        s.seal(3).unwrap();
        assert!(s.append(&entry(9, 2, b"gap")).is_err());
        let s = Segment::open(dir.path(), true).unwrap();
        assert_eq!((s.last_lsn(), s.sealed(), s.epoch_at(3), s.epoch_at(4)), (5, 3, 1, 2));
        let got = s.read(2, 2, 1 << 20).unwrap();
        assert_eq!(got.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), vec![b"e2".to_vec(), b"e3".to_vec()]);
        let mut s = s;
        s.truncate_from(3).unwrap();
        s.append(&entry(3, 3, b"new")).unwrap();
        s.sync().unwrap();
        let s = Segment::open(dir.path(), true).unwrap();
        assert_eq!(s.last_lsn(), 3);
        assert_eq!(s.read(3, 10, 1 << 20).unwrap()[0].data, b"new");
        assert_eq!(s.epochs(), &[EpochStart { epoch: 1, start_lsn: 1 }, EpochStart { epoch: 3, start_lsn: 3 }]);
    }

    /// Every cut of the last record (a crash mid-write) and every flipped bit in it is dropped
    /// on open, and the records before it are kept.
    #[test]
    fn a_torn_or_corrupt_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Segment::open(dir.path(), true).unwrap();
            s.append(&entry(1, 1, b"kept")).unwrap();
            s.append(&entry(2, 1, b"torn-record")).unwrap();
            s.sync().unwrap();
        }
        let path = dir.path().join("records");
        let full = std::fs::read(&path).unwrap();
        let first_len = encode_record(&entry(1, 1, b"kept")).len();
        for cut in first_len..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let s = Segment::open(dir.path(), true).unwrap();
            assert_eq!(s.last_lsn(), 1, "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), first_len as u64);
        }
        for bit in (first_len * 8..full.len() * 8).step_by(7) {
            let mut bad = full.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &bad).unwrap();
            let s = Segment::open(dir.path(), true).unwrap();
            assert_eq!(s.last_lsn(), 1, "bit {bit}");
            assert_eq!(s.read(1, 1, 100).unwrap()[0].data, b"kept");
        }
    }

    #[test]
    fn matching_prefix_follows_epochs() {
        let e =
            |v: &[(u64, u64)]| v.iter().map(|&(epoch, start_lsn)| EpochStart { epoch, start_lsn }).collect::<Vec<_>>();
        // a: 1..=10 at epoch 1; b: 1..=6 at epoch 1, 7..=9 at epoch 2.
        assert_eq!(matching_prefix(&e(&[(1, 1)]), 10, &e(&[(1, 1), (2, 7)]), 9), 6);
        assert_eq!(matching_prefix(&e(&[(1, 1)]), 10, &e(&[(1, 1)]), 4), 4);
        assert_eq!(matching_prefix(&e(&[(2, 1)]), 3, &e(&[(1, 1)]), 3), 0);
        assert_eq!(matching_prefix(&e(&[(1, 1), (3, 5)]), 8, &e(&[(1, 1), (2, 4)]), 9), 3);
        assert_eq!(matching_prefix(&[], 0, &e(&[(1, 1)]), 3), 0);
    }
}
