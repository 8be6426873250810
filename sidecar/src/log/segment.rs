//! One stream's copy on one replica: append-only segment files of CRC-framed records
//! (`seg-<first LSN>`, the last one active, a new one started once it holds the roll size), a
//! small file holding the sealed epoch and one holding the base (the last deleted LSN and its
//! epoch; see "Trimming" in [`super`]). A stream written before segments existed (one file,
//! `records`) is renamed to its first segment on open. Pure file I/O with no syncing policy:
//! [`super::store`] groups the `fdatasync`s of many segments and batches into one commit.
//!
//! Record framing: `[u32 body length][u32 CRC-32 of the body][body]`, body =
//! `lsn, epoch, producer_id, producer_epoch, batch_seq` (u64 each), `batch_index, batch_len`
//! (u32 each), then the entry's bytes; all little-endian. A record whose batch carries a fence
//! (the batch's first entry, [`super::fence`]) sets the top bit of the length word, and its body
//! has the fence between the header and the bytes: `[u32 fence length][u64 token][u16 divider
//! length][divider][key]` (a sidecar from before fences would read that bit as a torn length:
//! do not downgrade across it). On open, the files are scanned in order and the log is cut
//! (the rest of that file and every later file) at the first record that is short, fails its CRC or does not carry the next LSN: a write torn
//! by a crash was never acknowledged (acks follow the fsync), so dropping it loses nothing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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
    // A byte-at-a-time table took 12% of the CPU of a peak append benchmark; crc32fast computes
    // the same checksum (the standard check value is tested below) with SIMD where present.
    crc32fast::hash(data)
}

/// Encodes one record (frame and body).
pub fn encode_record(e: &LogEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME + BODY_HEADER + e.data.len());
    encode_record_into(&mut out, e);
    out
}

/// Appends one encoded record (frame and body) to `out`; returns its length.
pub fn encode_record_into(out: &mut Vec<u8>, e: &LogEntry) -> usize {
    let start = out.len();
    // The frame goes first and is filled in once the body's length and CRC are known.
    out.extend_from_slice(&[0u8; FRAME]);
    let body_at = out.len();
    let body = out;
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
    let body_len = body.len() - body_at;
    let crc = crc32(&body[body_at..]);
    body[start..start + 4].copy_from_slice(&(body_len as u32 | word).to_le_bytes());
    body[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    body.len() - start
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

/// Size at which a segment file is closed and the next one started, unless the store is told
/// otherwise (JetStream's file store uses blocks of the same size).
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;
/// Name prefix of segment files (followed by the first LSN, zero-padded to 20 digits).
const SEGMENT_PREFIX: &str = "seg-";
/// The single file of a stream written before segments existed (it starts at LSN 1).
const LEGACY_RECORDS: &str = "records";

/// One file of a stream's log: consecutive records from `start`.
struct SegmentFile {
    start: u64,
    path: PathBuf,
    file: File,
    /// Byte offset of each record; index `i` holds LSN `start + i`.
    offsets: Vec<u64>,
    /// End of the last record.
    end: u64,
    /// Time of the last write (the file's mtime after a restart): retention by age reads it.
    written: SystemTime,
}

impl SegmentFile {
    /// Last LSN in this file (`start - 1` when it is empty).
    fn last(&self) -> u64 {
        self.start + self.offsets.len() as u64 - 1
    }
}

/// What retention and metrics see of one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// First LSN in the file.
    pub first_lsn: u64,
    /// Last LSN in the file (`first_lsn - 1` when empty).
    pub last_lsn: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Time of the last write.
    pub written: SystemTime,
}

/// A stream's records on this replica: segment files `seg-<first LSN>`, the last one active.
/// Entries up to the **base** LSN are gone (trimmed, see [`Segment::trim`] and
/// [`Segment::reset`]); the base's epoch is kept so that log matching still works at the base.
pub struct Segment {
    dir: PathBuf,
    /// Ascending by first LSN; contiguous from `base + 1`.
    files: Vec<SegmentFile>,
    /// Every entry up to here was deleted.
    base: u64,
    /// Last LSN held (`base` when no entry is).
    last: u64,
    /// Where each epoch's records start, ascending; with a base, the first element starts at
    /// the base and holds its epoch (`epoch_at` is 0 below the base: unknown).
    epochs: Vec<EpochStart>,
    /// Highest epoch this replica promised to serve (it refuses lower ones).
    sealed: u64,
    /// Bytes cut from the tail when it was opened (a torn write).
    pub torn_bytes: u64,
    /// The stream was missing here (data lost) and is not yet rebuilt from a primary.
    rebuilding: bool,
    /// The active file is closed once it holds this many bytes.
    roll_bytes: u64,
    /// Files written since the last sync (by first LSN).
    unsynced: Vec<u64>,
    /// Files were created or removed since the last sync.
    dir_changed: bool,
    /// Records appended to the active file but not yet written to it: [`Segment::append`]
    /// gathers a write's records into one `write` call (one per record cost a third of a peak
    /// benchmark's CPU). Written before a sync, a cut and a roll; reads see them here. Records
    /// still pending when the segment is dropped were never synced, so never acknowledged: they
    /// are lost as in a crash (a stale handle must not write into a file another one owns).
    pending: Vec<u8>,
}

/// The `fdatasync`s that make a segment's writes durable ([`Segment::prepare_sync`]): the
/// files written, then the directory when files were created or removed.
pub struct SyncJob {
    files: Vec<(File, PathBuf)>,
    dir: Option<PathBuf>,
}

impl SyncJob {
    /// Runs the syncs, in order.
    pub fn run(self) -> Result<(), SegmentError> {
        for (f, path) in &self.files {
            f.sync_data().map_err(io(path))?;
        }
        if let Some(dir) = &self.dir {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

fn segment_name(start: u64) -> String {
    format!("{SEGMENT_PREFIX}{start:020}")
}

fn sync_dir(dir: &Path) -> Result<(), SegmentError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Writes `bytes` to `dir/name` atomically and durably (write, fsync, rename, fsync the dir).
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SegmentError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    let dest = dir.join(name);
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    sync_dir(dir)
}

/// `values` followed by the CRC-32 of their bytes.
fn checked(values: &[u64]) -> Vec<u8> {
    let mut buf: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let crc = crc32(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Reads a file written by [`checked`] with `n` values (`None` if it does not exist).
fn read_checked(path: &Path, n: usize) -> Result<Option<Vec<u64>>, SegmentError> {
    match std::fs::read(path) {
        Ok(b) if b.len() == n * 8 + 4 && crc32(&b[..n * 8]) == u32_at(&b, n * 8) => {
            Ok(Some((0..n).map(|i| u64_at(&b, i * 8)).collect()))
        }
        Ok(_) => Err(SegmentError::Invalid(format!("{} is corrupt", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SegmentError::Io { path: path.display().to_string(), source: e }),
    }
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
            sync_dir(dir)?;
        }
        if !existed {
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let legacy = dir.join(LEGACY_RECORDS);
        if legacy.exists() {
            let dest = dir.join(segment_name(1));
            std::fs::rename(&legacy, &dest).map_err(io(&dest))?;
            sync_dir(dir)?;
        }
        let (base, base_epoch) = match read_checked(&dir.join("base"), 2)? {
            Some(v) => (v[0], v[1]),
            None => (0, 0),
        };
        let mut starts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let Some(start) = name.to_str().and_then(|n| n.strip_prefix(SEGMENT_PREFIX)).and_then(|n| n.parse().ok())
            else {
                continue;
            };
            starts.push(start);
        }
        starts.sort_unstable();
        let mut seg = Segment {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            base,
            last: base,
            epochs: if base > 0 { vec![EpochStart { epoch: base_epoch, start_lsn: base }] } else { Vec::new() },
            sealed: read_checked(&dir.join("sealed"), 1)?.map_or(0, |v| v[0]),
            torn_bytes: 0,
            rebuilding: marker.exists(),
            roll_bytes: DEFAULT_SEGMENT_BYTES,
            unsynced: Vec::new(),
            dir_changed: false,
            pending: Vec::new(),
        };
        let mut broken = false;
        for start in starts {
            let path = dir.join(segment_name(start));
            if start <= base {
                // Left over from a trim or reset that crashed before deleting it.
                std::fs::remove_file(&path).map_err(io(&path))?;
                seg.dir_changed = true;
                continue;
            }
            if broken || start != seg.last + 1 {
                // After a torn file, or not continuing the log: never acknowledged.
                let len = std::fs::metadata(&path).map_err(io(&path))?.len();
                seg.torn_bytes += len;
                tracing::warn!(file = %path.display(), "removing a log segment file that does not continue the log");
                std::fs::remove_file(&path).map_err(io(&path))?;
                seg.dir_changed = true;
                broken = true;
                continue;
            }
            broken = seg.scan_file(start, path)?;
        }
        if seg.dir_changed {
            sync_dir(dir)?;
            seg.dir_changed = false;
        }
        Ok(seg)
    }

    /// Adds the file of `start` and indexes its records; true when its tail was cut.
    fn scan_file(&mut self, start: u64, path: PathBuf) -> Result<bool, SegmentError> {
        let file = OpenOptions::new().read(true).append(true).open(&path).map_err(io(&path))?;
        let meta = file.metadata().map_err(io(&path))?;
        let len = meta.len();
        let written = meta.modified().unwrap_or_else(|_| SystemTime::now());
        self.files.push(SegmentFile { start, path: path.clone(), file, offsets: Vec::new(), end: 0, written });
        let mut header = [0u8; FRAME];
        let mut at = 0u64;
        while at + FRAME as u64 <= len {
            let f = &self.files.last().expect("pushed above").file;
            f.read_exact_at(&mut header, at).map_err(io(&path))?;
            let word = u32_at(&header, 0);
            let body_len = (word & !FENCED) as usize;
            if !(BODY_HEADER..=MAX_RECORD).contains(&body_len) || at + (FRAME + body_len) as u64 > len {
                break;
            }
            let mut body = vec![0u8; body_len];
            f.read_exact_at(&mut body, at + FRAME as u64).map_err(io(&path))?;
            if crc32(&body) != u32_at(&header, 4) {
                break;
            }
            let Some(e) = decode_body(&body, word & FENCED != 0) else { break };
            if e.lsn != self.last + 1 || e.epoch == 0 {
                break;
            }
            self.push_index(at, e.lsn, e.epoch);
            at += (FRAME + body_len) as u64;
        }
        let active = self.files.last_mut().expect("pushed above");
        active.end = at;
        if at < len {
            self.torn_bytes += len - at;
            tracing::warn!(file = %path.display(), cut = len - at, "cutting a torn or corrupt tail off a log segment");
            active.file.set_len(at).map_err(io(&path))?;
            active.file.sync_all().map_err(io(&path))?;
            return Ok(true);
        }
        Ok(false)
    }

    fn push_index(&mut self, offset: u64, lsn: u64, epoch: u64) {
        if let Some(f) = self.files.last_mut() {
            f.offsets.push(offset);
        }
        self.last = lsn;
        if self.epochs.last().is_none_or(|l| l.epoch != epoch) {
            self.epochs.push(EpochStart { epoch, start_lsn: lsn });
        }
    }

    /// Sets the size at which the active file is closed (at least 4 KiB).
    pub fn set_roll_bytes(&mut self, bytes: u64) {
        self.roll_bytes = bytes.max(4096);
    }

    /// Last LSN held (0: empty).
    pub fn last_lsn(&self) -> u64 {
        self.last
    }

    /// Every entry up to this LSN was deleted (0: none).
    pub fn base_lsn(&self) -> u64 {
        self.base
    }

    /// Epoch of the entry at `lsn` (0 for LSN 0, below the base or beyond the end).
    pub fn epoch_at(&self, lsn: u64) -> u64 {
        epoch_at(&self.epochs, lsn, self.last_lsn())
    }

    /// Where each epoch's entries start (from the base on).
    pub fn epochs(&self) -> &[EpochStart] {
        &self.epochs
    }

    /// The segment files, oldest first.
    pub fn files(&self) -> Vec<SegmentInfo> {
        self.files
            .iter()
            .map(|f| SegmentInfo { first_lsn: f.start, last_lsn: f.last(), bytes: f.end, written: f.written })
            .collect()
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
            sync_dir(&self.dir)?;
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
        write_durably(&self.dir, "sealed", &checked(&[epoch]))?;
        self.sealed = epoch;
        Ok(())
    }

    /// Appends `e` at the next LSN (written, not yet synced), starting a new file when the
    /// active one is full.
    pub fn append(&mut self, e: &LogEntry) -> Result<(), SegmentError> {
        if e.lsn != self.last_lsn() + 1 || e.epoch == 0 {
            return Err(SegmentError::Invalid(format!(
                "append of LSN {} (epoch {}) after LSN {}",
                e.lsn,
                e.epoch,
                self.last_lsn()
            )));
        }
        if self.files.last().is_none_or(|f| f.end >= self.roll_bytes && !f.offsets.is_empty()) {
            self.flush_pending()?;
            let path = self.dir.join(segment_name(e.lsn));
            let file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io(&path))?;
            file.set_len(0).map_err(io(&path))?;
            let written = SystemTime::now();
            self.files.push(SegmentFile { start: e.lsn, path, file, offsets: Vec::new(), end: 0, written });
            self.dir_changed = true;
        }
        let len = encode_record_into(&mut self.pending, e);
        let active = self.files.last_mut().expect("a file exists");
        let at = active.end;
        active.end += len as u64;
        if self.unsynced.last() != Some(&active.start) {
            self.unsynced.push(active.start);
        }
        self.push_index(at, e.lsn, e.epoch);
        Ok(())
    }

    /// Writes the records gathered by [`Segment::append`] to the active file (one `write`).
    pub fn flush_pending(&mut self) -> Result<(), SegmentError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let active = self.files.last_mut().expect("pending records belong to the active file");
        active.file.write_all(&self.pending).map_err(io(&active.path))?;
        active.written = SystemTime::now();
        self.pending.clear();
        Ok(())
    }

    /// Removes every entry from `lsn` on (written, not yet synced); `lsn` must be above the base.
    pub fn truncate_from(&mut self, lsn: u64) -> Result<(), SegmentError> {
        self.flush_pending()?;
        if lsn > self.last_lsn() {
            return Ok(());
        }
        if lsn <= self.base {
            return Err(SegmentError::Invalid(format!(
                "cannot cut at LSN {lsn}: entries up to {} are trimmed",
                self.base
            )));
        }
        while self.files.last().is_some_and(|f| f.start >= lsn) {
            let f = self.files.pop().expect("checked above");
            std::fs::remove_file(&f.path).map_err(io(&f.path))?;
            self.dir_changed = true;
        }
        if let Some(f) = self.files.last_mut() {
            let keep = (lsn - f.start) as usize;
            if keep < f.offsets.len() {
                let at = f.offsets[keep];
                f.file.set_len(at).map_err(io(&f.path))?;
                f.offsets.truncate(keep);
                f.end = at;
                if self.unsynced.last() != Some(&f.start) {
                    self.unsynced.push(f.start);
                }
            }
        }
        self.last = lsn - 1;
        while self.epochs.last().is_some_and(|l| l.start_lsn >= lsn) {
            self.epochs.pop();
        }
        Ok(())
    }

    /// Reads entries `from..` (at most `max` entries and about `max_bytes`, at least one); an
    /// entry at or below the base is never returned (reads start after it).
    pub fn read(&self, from: u64, max: usize, max_bytes: usize) -> Result<Vec<LogEntry>, SegmentError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut lsn = from.max(self.base + 1);
        let mut i = self.files.partition_point(|f| f.last() < lsn);
        while lsn <= self.last_lsn() && out.len() < max && (out.is_empty() || bytes < max_bytes) {
            let Some(f) = self.files.get(i) else { break };
            if lsn > f.last() {
                i += 1;
                continue;
            }
            let k = (lsn - f.start) as usize;
            let at = f.offsets[k];
            let next = f.offsets.get(k + 1).copied().unwrap_or(f.end);
            let mut rec = vec![0u8; (next - at) as usize];
            // Records not yet written to the active file are read from the pending buffer.
            let written_end = if i + 1 == self.files.len() { f.end - self.pending.len() as u64 } else { f.end };
            if at >= written_end {
                let (from, n) = ((at - written_end) as usize, rec.len());
                rec.copy_from_slice(&self.pending[from..from + n]);
            } else {
                f.file.read_exact_at(&mut rec, at).map_err(io(&f.path))?;
            }
            let e = decode_body(&rec[FRAME..], u32_at(&rec, 0) & FENCED != 0)
                .ok_or_else(|| SegmentError::Invalid(format!("record of LSN {lsn} is unreadable")))?;
            bytes += e.data.len();
            out.push(e);
            lsn += 1;
        }
        Ok(out)
    }

    /// Makes every write so far durable (`fdatasync` of the files written, and of the
    /// directory when files were created or removed).
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        self.prepare_sync()?.run()
    }

    /// Makes every record in every file durable, also those whose syncs an earlier group
    /// commit still runs ([`Segment::prepare_sync`] handed them out): for a fact that needs the
    /// whole log on disk, such as the end of a rebuild.
    pub fn sync_every_file(&mut self) -> Result<(), SegmentError> {
        self.flush_pending()?;
        self.unsynced.clear();
        for f in &self.files {
            f.file.sync_data().map_err(io(&f.path))?;
        }
        self.dir_changed = false;
        sync_dir(&self.dir)
    }

    /// Writes what is pending and returns the `fdatasync`s that make every write so far
    /// durable, detached from the segment so that a group commit runs the syncs of many
    /// segments side by side ([`super::store`]). Until the returned job ran without error,
    /// nothing written so far may be acknowledged.
    pub fn prepare_sync(&mut self) -> Result<SyncJob, SegmentError> {
        self.flush_pending()?;
        let mut files = Vec::new();
        for start in std::mem::take(&mut self.unsynced) {
            if let Some(f) = self.files.iter().find(|f| f.start == start) {
                files.push((f.file.try_clone().map_err(io(&f.path))?, f.path.clone()));
            }
        }
        let dir = std::mem::take(&mut self.dir_changed).then(|| self.dir.clone());
        Ok(SyncJob { files, dir })
    }

    /// Deletes every file whose entries all lie below `first` (the trim point), never the
    /// active one. The new base is durable before any file goes. Returns the files and bytes
    /// deleted.
    pub fn trim(&mut self, first: u64) -> Result<(usize, u64), SegmentError> {
        let n = self.files.len().saturating_sub(1);
        let gone = self.files[..n].iter().take_while(|f| f.last() < first).count();
        if gone == 0 {
            return Ok((0, 0));
        }
        let base = self.files[gone].start - 1;
        let base_epoch = self.epoch_at(base);
        write_durably(&self.dir, "base", &checked(&[base, base_epoch]))?;
        let mut bytes = 0;
        for f in self.files.drain(..gone) {
            bytes += f.end;
            std::fs::remove_file(&f.path).map_err(io(&f.path))?;
        }
        sync_dir(&self.dir)?;
        self.unsynced.retain(|s| *s > base);
        self.base = base;
        let keep = self.epochs.iter().rposition(|e| e.start_lsn <= base).unwrap_or(0);
        self.epochs.drain(..keep);
        if let Some(e) = self.epochs.first_mut() {
            e.start_lsn = e.start_lsn.max(base);
        }
        Ok((gone, bytes))
    }

    /// Drops the whole log and continues after `base`, whose entry has `base_epoch` (a primary
    /// that no longer holds what this replica lacks sends it from its own trimmed log; see
    /// `store`). Durable on return.
    pub fn reset(&mut self, base: u64, base_epoch: u64) -> Result<(), SegmentError> {
        write_durably(&self.dir, "base", &checked(&[base, base_epoch]))?;
        self.pending.clear();
        for f in self.files.drain(..) {
            std::fs::remove_file(&f.path).map_err(io(&f.path))?;
        }
        sync_dir(&self.dir)?;
        self.unsynced.clear();
        self.dir_changed = false;
        self.base = base;
        self.last = base;
        self.epochs = if base > 0 { vec![EpochStart { epoch: base_epoch, start_lsn: base }] } else { Vec::new() };
        Ok(())
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
            s.sync().unwrap();
        }
        let s = Segment::open(dir.path(), false).unwrap();
        assert_eq!(s.torn_bytes, 0, "a fenced record is not a torn one");
        assert_eq!(s.read(1, 10, usize::MAX).unwrap(), written);
        let mut empty_divider = entry(1, 1, b"");
        empty_divider.fence = Some(Fence { divider: String::new(), key: "k".into(), token: 1 });
        assert_eq!(decode_body(&encode_record(&empty_divider)[FRAME..], true), Some(empty_divider));
    }

    #[test]
    fn records_gathered_for_one_write_are_readable_cut_and_written_at_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::open(dir.path(), true).unwrap();
        s.set_roll_bytes(4096);
        let data = vec![7u8; 1000];
        for lsn in 1..=10 {
            s.append(&entry(lsn, 1, &data)).unwrap();
        }
        // Rolled past 4 KiB: earlier files were written at the roll, the active one's tail
        // is still gathered; reads see all of it.
        assert!(s.files().len() > 1);
        let got = s.read(1, 100, 1 << 20).unwrap();
        assert_eq!(got.iter().map(|e| e.lsn).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
        s.truncate_from(9).unwrap();
        s.append(&entry(9, 2, b"after the cut")).unwrap();
        assert_eq!(s.read(9, 10, 1 << 20).unwrap()[0].data, b"after the cut");
        s.sync().unwrap();
        let s = Segment::open(dir.path(), false).unwrap();
        assert_eq!((s.last_lsn(), s.epoch_at(9)), (9, 2));
        assert_eq!(s.read(8, 10, 1 << 20).unwrap().iter().map(|e| e.lsn).collect::<Vec<_>>(), vec![8, 9]);
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
        let path = dir.path().join(segment_name(1));
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

#[cfg(test)]
mod trim_tests {
    use super::tests::entry;
    use super::*;

    fn disk_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    }

    fn filled(dir: &Path, n: u64) -> Segment {
        let mut s = Segment::open(dir, true).unwrap();
        s.set_roll_bytes(4096);
        for lsn in 1..=n {
            s.append(&entry(lsn, if lsn <= n / 2 { 1 } else { 2 }, &[b'x'; 100])).unwrap();
        }
        s.sync().unwrap();
        s
    }

    /// Trim deletes the files wholly below the trim point (never the active one), keeps every
    /// entry from it on, and the base survives a restart. Deleting nothing (the old logical
    /// trim) fails the size check.
    #[test]
    fn trim_deletes_whole_files_below_the_trim_point_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = filled(dir.path(), 300);
        assert!(s.files().len() >= 8, "small files roll: {}", s.files().len());
        let before = disk_bytes(dir.path());
        let (gone, bytes) = s.trim(200).unwrap();
        assert!(gone > 0 && bytes > 0);
        let after = disk_bytes(dir.path());
        assert!(after < before / 2, "disk {before} -> {after} bytes");
        let base = s.base_lsn();
        assert!(base > 150 && base < 200, "base {base} is a file boundary below the trim point");
        assert_eq!(s.read(1, 1, usize::MAX).unwrap()[0].lsn, base + 1, "reads start after the base");
        assert_eq!((s.epoch_at(base), s.epoch_at(base + 1), s.epoch_at(300)), (2, 2, 2));
        let all: Vec<u64> = s.read(0, 1000, usize::MAX).unwrap().iter().map(|e| e.lsn).collect();
        assert_eq!(all, (base + 1..=300).collect::<Vec<_>>());
        // Trimming past the tail keeps the active file (the last entry stays).
        s.trim(1000).unwrap();
        assert_eq!(s.last_lsn(), 300);
        assert!(s.read(300, 1, 100).unwrap()[0].lsn == 300);
        let (base, files) = (s.base_lsn(), s.files());
        drop(s);
        let s = Segment::open(dir.path(), false).unwrap();
        assert_eq!((s.base_lsn(), s.last_lsn(), s.files().len(), s.torn_bytes), (base, 300, files.len(), 0));
        assert_eq!(s.epochs(), &[EpochStart { epoch: 2, start_lsn: base }]);
        // A cut into a trimmed range is refused; above it, it works across files.
        let mut s = s;
        assert!(s.truncate_from(base).is_err());
    }

    #[test]
    fn truncation_and_reads_cross_files_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = filled(dir.path(), 100);
        let files = s.files().len();
        s.truncate_from(30).unwrap();
        assert!(s.files().len() < files);
        s.append(&entry(30, 3, b"new")).unwrap();
        s.sync().unwrap();
        drop(s);
        let s = Segment::open(dir.path(), false).unwrap();
        assert_eq!(s.last_lsn(), 30);
        let got = s.read(1, 100, usize::MAX).unwrap();
        assert_eq!(got.iter().map(|e| e.lsn).collect::<Vec<_>>(), (1..=30).collect::<Vec<_>>());
        assert_eq!(got[29].data, b"new");
    }

    /// A reset drops the whole log durably and continues after the given base; a file left
    /// behind by a crash in the middle of it is removed on open.
    #[test]
    fn reset_continues_after_the_base_and_crash_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = filled(dir.path(), 50);
        s.reset(120, 4).unwrap();
        assert_eq!((s.base_lsn(), s.last_lsn(), s.epoch_at(120)), (120, 120, 4));
        assert!(s.append(&entry(120, 4, b"x")).is_err());
        s.append(&entry(121, 5, b"y")).unwrap();
        s.sync().unwrap();
        drop(s);
        std::fs::write(dir.path().join(segment_name(7)), b"left over").unwrap();
        let s = Segment::open(dir.path(), false).unwrap();
        assert_eq!((s.base_lsn(), s.last_lsn(), s.epoch_at(120), s.epoch_at(121)), (120, 121, 4, 5));
        assert!(!dir.path().join(segment_name(7)).exists());
    }

    #[test]
    fn a_file_from_before_segments_is_read_as_the_first_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for lsn in 1..=3 {
            bytes.extend(encode_record(&entry(lsn, 1, b"old")));
        }
        std::fs::write(dir.path().join(LEGACY_RECORDS), bytes).unwrap();
        let s = Segment::open(dir.path(), false).unwrap();
        assert_eq!((s.last_lsn(), s.base_lsn()), (3, 0));
        assert!(!dir.path().join(LEGACY_RECORDS).exists());
        assert_eq!(s.read(1, 10, usize::MAX).unwrap().len(), 3);
    }
}
