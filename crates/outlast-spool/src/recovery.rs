//! Lane directories on disk: the root's safety checks, listing and locking lanes, the per-segment
//! index, the cursor file, and recovery of a lane's segments.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use outlast_core::ContentEncoding;

use crate::cursor::{CURSOR_FILE, CURSOR_TMP_FILE, read_cursor, settle_cursor};
use crate::error::SpoolError;
use crate::format::{self, CursorChoice, HeaderCheck, SEGMENT_HEADER_LEN, parse_segment_file_name};
use crate::fs::{DIR_MODE, FILE_MODE, SpoolFs, read_full_at, write_all_at};
use crate::identity::IDENTITY_FILE;
use crate::inspect::EncodingTally;
use crate::scan::{FrameReader, Next, PayloadArena};
use crate::types::RecoveryReport;

/// Name of a lane's lock file.
pub(crate) const LOCK_FILE: &str = "lock";
/// Read size while recovering: large sequential reads keep recovery near disk speed.
const RECOVERY_CHUNK: usize = 4 * 1024 * 1024;

/// What the in-memory index knows about one segment (no per-record state).
#[derive(Debug, Clone)]
pub(crate) struct SegMeta {
    pub(crate) id: u64,
    pub(crate) path: PathBuf,
    /// Bytes of the file that hold valid frames (the writer's committed length).
    pub(crate) len: u64,
    pub(crate) records: u64,
    /// 0: no record.
    pub(crate) first_seq: u64,
    /// 0: no record.
    pub(crate) last_seq: u64,
    /// `u64::MAX`: no record.
    pub(crate) oldest_ns: u64,
    pub(crate) newest_ns: u64,
    /// No more appends go to it.
    pub(crate) sealed: bool,
}

impl SegMeta {
    pub(crate) fn new(id: u64, path: PathBuf, len: u64) -> SegMeta {
        SegMeta {
            id,
            path,
            len,
            records: 0,
            first_seq: 0,
            last_seq: 0,
            oldest_ns: u64::MAX,
            newest_ns: 0,
            sealed: false,
        }
    }

    pub(crate) fn note_record(&mut self, seq: u64, created_ns: u64) {
        self.records += 1;
        if self.first_seq == 0 {
            self.first_seq = seq;
        }
        self.last_seq = seq;
        self.oldest_ns = self.oldest_ns.min(created_ns);
        self.newest_ns = self.newest_ns.max(created_ns);
    }

    /// The framed bytes of `n` of its records, in proportion. Records of one segment are of
    /// similar size in practice; an exact figure would need a per-record index, which the
    /// spool does not keep (memory must not grow with its size).
    pub(crate) fn framed_bytes_of(&self, n: u64) -> u64 {
        proportional(self.len.saturating_sub(SEGMENT_HEADER_LEN), n, self.records)
    }

    /// Records of this segment not yet acknowledged, if `acked` is the lane's ack point.
    /// Exact when sequence numbers in the segment are contiguous (they are unless records
    /// were lost to damage), an upper bound otherwise.
    pub(crate) fn unacked(&self, acked: u64) -> u64 {
        if self.records == 0 || self.last_seq <= acked {
            0
        } else if self.first_seq > acked {
            self.records
        } else {
            (self.last_seq - acked).min(self.records)
        }
    }
}

/// `total * part / whole`, without overflow; `total` when `part >= whole`, 0 when `whole`
/// is 0.
pub(crate) fn proportional(total: u64, part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    if part >= whole {
        return total;
    }
    u64::try_from(u128::from(total) * u128::from(part) / u128::from(whole)).unwrap_or(total)
}

/// How a segment file's header was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegKind {
    /// A version this build reads (its own or version 1), intact header.
    Valid {
        first_seq: u64,
        segment_id: u64,
        version: u16,
    },
    /// Current version, damaged header (or a damaged magic in front of our frames): frames
    /// are still read.
    Damaged,
    /// Shorter than a header: holds no record.
    Short,
    /// Named like a segment, but neither its magic nor any frame is ours: left untouched.
    Foreign,
    /// A newer format version.
    Newer(u16),
}

/// A read-only scan of one segment file.
#[derive(Debug, Clone)]
pub(crate) struct SegScan {
    pub(crate) tally: EncodingTally,
    pub(crate) kind: SegKind,
    pub(crate) file_len: u64,
    pub(crate) meta: SegMeta,
    /// Damaged regions skipped before valid frames (each one may have cost records).
    pub(crate) corrupt: u64,
    /// Bytes after the last valid frame (torn or damaged tail).
    pub(crate) tail_bytes: u64,
}

/// Reads a segment file without changing it; with `bodies`, reads the payloads too (to
/// tally the gzip records' uncompressed sizes).
pub(crate) fn scan_segment(
    fs: &dyn SpoolFs,
    path: &Path,
    id: u64,
    bodies: bool,
) -> io::Result<SegScan> {
    let file = fs.open(path, false)?;
    let file_len = file.len()?;
    let mut head = [0u8; SEGMENT_HEADER_LEN as usize];
    let n = read_full_at(&*file, &mut head, 0)?;
    let kind = match format::check_segment_header(&head[..n]) {
        HeaderCheck::Valid(h) => SegKind::Valid {
            first_seq: h.first_seq,
            segment_id: h.segment_id,
            version: h.version,
        },
        HeaderCheck::Damaged => SegKind::Damaged,
        HeaderCheck::Short => SegKind::Short,
        HeaderCheck::Foreign => SegKind::Foreign,
        HeaderCheck::Newer(v) => SegKind::Newer(v),
    };
    let mut scan = SegScan {
        tally: EncodingTally::default(),
        kind,
        file_len,
        meta: SegMeta::new(id, path.to_path_buf(), file_len.min(SEGMENT_HEADER_LEN)),
        corrupt: 0,
        tail_bytes: 0,
    };
    let last_seq = match kind {
        SegKind::Valid { first_seq, .. } => first_seq.saturating_sub(1),
        // A file named like a segment whose magic is damaged may still hold our frames
        // (one flipped bit): read them rather than lose them.
        SegKind::Damaged | SegKind::Foreign => 0,
        SegKind::Short | SegKind::Newer(_) => return Ok(scan),
    };
    let mut reader = FrameReader::new(file, SEGMENT_HEADER_LEN, file_len, RECOVERY_CHUNK, last_seq);
    let mut arena = PayloadArena::default();
    loop {
        match reader.next(bodies.then_some(&mut arena))? {
            Next::Frame(f) => {
                if f.skipped.is_some() {
                    scan.corrupt += 1;
                }
                let t = &mut scan.tally;
                if f.meta.content_encoding == ContentEncoding::Gzip {
                    t.gzip_records += 1;
                    t.gzip_stored_bytes += f.len;
                    if let Some(p) = &f.payload {
                        t.gzip_uncompressed_bytes += gzip_isize(p.bytes());
                    }
                } else {
                    t.identity_records += 1;
                    t.identity_stored_bytes += f.len;
                }
                scan.meta.note_record(f.seq, f.meta.created_at_unix_nanos);
            }
            Next::End { valid_end, end } => {
                scan.meta.len = valid_end;
                scan.tail_bytes = end.saturating_sub(valid_end);
                break;
            }
        }
    }
    if kind == SegKind::Foreign {
        if scan.meta.records == 0 {
            // Nothing of ours in it: it is left exactly as it is.
            scan.meta.len = file_len.min(SEGMENT_HEADER_LEN);
            scan.tail_bytes = 0;
            scan.corrupt = 0;
            return Ok(scan);
        }
        scan.kind = SegKind::Damaged;
    }
    Ok(scan)
}

/// A segment as recovery or `inspect` placed it: its index entry, and where its header says
/// it starts.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub(crate) meta: SegMeta,
    /// The header's segment id, if the header is intact.
    pub(crate) header_id: Option<u64>,
    /// The header's first sequence number, if the header is intact.
    pub(crate) header_first: Option<u64>,
    /// The header's format version, if the header is intact.
    pub(crate) header_version: Option<u16>,
}

impl Placed {
    /// The sequence number the segment starts at: its header's, else its first record's.
    fn start(&self) -> u64 {
        self.header_first.unwrap_or(self.meta.first_seq)
    }
}

/// What the sequence numbers across a lane's segments say.
#[derive(Debug, Default)]
pub(crate) struct Continuity {
    /// Records whose numbers are missing between two segments, or held twice (the later
    /// copy cannot be delivered): above the ack point only.
    pub(crate) missing: u64,
    /// Segments whose header names another id, or that are out of sequence order by name.
    pub(crate) misplaced: Vec<u64>,
    /// Segments after a counted gap, with the sequence number their header should start at
    /// so that the gap is not found (and counted) again by the next open.
    pub(crate) rebase: Vec<(u64, u64)>,
}

/// Orders a lane's segments (given by id) by sequence number, the order the writer wrote
/// them in, and checks that the numbers run on from one segment to the next.
///
/// The segments' names normally give the same order; when they do not (files swapped or
/// renamed), the records are still delivered in their order and the segments reported as
/// misplaced. A gap between two segments (a segment deleted or emptied, a damaged tail)
/// counts its records as missing; a gap before the first segment does not (eviction,
/// expiry and acknowledgements remove the head of a lane), nor any gap at or below
/// `acked`. With `count_gaps` false (a lane holding newer-version files this build cannot
/// read), gaps are not counted.
pub(crate) fn place_segments(segs: &mut [Placed], acked: u64, count_gaps: bool) -> Continuity {
    let mut out = Continuity::default();
    let has_records = |p: &&Placed| p.meta.records > 0;
    let by_name: Vec<u64> = segs.iter().filter(has_records).map(|p| p.meta.id).collect();
    segs.sort_by_key(|p| (p.start(), p.meta.id));
    for p in segs.iter() {
        if p.header_id.is_some_and(|h| h != p.meta.id) {
            out.misplaced.push(p.meta.id);
        }
    }
    // Out of order by name (among the segments holding records).
    let by_seq = segs.iter().filter(has_records).map(|p| p.meta.id);
    for (id, name) in by_seq.zip(by_name) {
        if id != name && !out.misplaced.contains(&id) {
            out.misplaced.push(id);
        }
    }
    let mut prev_last: Option<u64> = None;
    for p in segs.iter().filter(|p| p.meta.records > 0) {
        let start = p.start().max(1);
        if let Some(prev) = prev_last {
            if count_gaps {
                let gap_from = prev.max(acked).saturating_add(1);
                if start > gap_from {
                    out.missing += start - gap_from;
                    if p.header_id.is_none_or(|h| h == p.meta.id) {
                        out.rebase.push((p.meta.id, gap_from));
                    }
                }
                if start <= prev && prev > acked {
                    // Numbers another segment already holds: these records are skipped.
                    let from = start.max(acked.saturating_add(1));
                    out.missing += (prev - from + 1).min(p.meta.records);
                }
            }
            prev_last = Some(prev.max(p.meta.last_seq));
        } else {
            prev_last = Some(p.meta.last_seq);
        }
    }
    out
}

/// Refuses a root that is a symlink, not a directory, or owned by another user; creates it
/// (0700) if missing.
pub(crate) fn prepare_root(root: &Path, create: bool) -> Result<(), SpoolError> {
    let unsafe_root = |reason: &str| SpoolError::UnsafeRoot {
        path: root.to_path_buf(),
        reason: reason.to_owned(),
    };
    match std::fs::symlink_metadata(root) {
        Ok(m) => {
            if m.file_type().is_symlink() {
                return Err(unsafe_root("is a symbolic link"));
            }
            if !m.is_dir() {
                return Err(unsafe_root("is not a directory"));
            }
            let euid = rustix::process::geteuid().as_raw();
            if m.uid() != euid {
                return Err(unsafe_root(&format!(
                    "is owned by uid {}, not by this process's user (uid {euid})",
                    m.uid()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            let missing: Vec<&Path> = root
                .ancestors()
                .filter(|a| !a.as_os_str().is_empty())
                .take_while(|a| {
                    std::fs::symlink_metadata(a).is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
                })
                .collect();
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(root)
                .map_err(|e| SpoolError::io(root, e))?;
            // Each new directory's entry, outermost first, before anything is stored in it.
            for dir in missing.iter().rev() {
                crate::fs::sync_parent(dir).map_err(|e| SpoolError::io(dir, e))?;
            }
            // Re-check: a racing process could have put a symlink there.
            prepare_root(root, false)
        }
        Err(e) => Err(SpoolError::io(root, e)),
    }
}

/// The directory of lane `n`.
pub(crate) fn lane_dir(root: &Path, n: u32) -> PathBuf {
    root.join(format!("lane-{n}"))
}

/// Lane numbers present under the root, ascending: directories only (never through a
/// symbolic link). Entries named like a lane that are not a directory are returned in the
/// second list, to be reported and left alone.
pub(crate) fn list_lanes(root: &Path) -> Result<(Vec<u32>, Vec<PathBuf>), SpoolError> {
    let mut lanes = Vec::new();
    let mut stray = Vec::new();
    let rd = std::fs::read_dir(root).map_err(|e| SpoolError::io(root, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| SpoolError::io(root, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("lane-")
            .and_then(|d| d.parse::<u32>().ok())
            && format!("lane-{n}") == name
        {
            match entry.file_type() {
                Ok(t) if t.is_dir() => lanes.push(n),
                _ => {
                    tracing::warn!(
                        path = %entry.path().display(),
                        "not a directory where a spool lane is expected: skipped"
                    );
                    stray.push(entry.path());
                }
            }
        }
    }
    lanes.sort_unstable();
    Ok((lanes, stray))
}

/// What a lane directory holds, by the names and types of its entries (never following a
/// link, never opening anything).
#[derive(Debug, Default)]
pub(crate) struct LaneEntries {
    /// Ids of the regular files named like segments, ascending.
    pub(crate) segments: Vec<u64>,
    /// Files whose names are not the spool's.
    pub(crate) unknown: Vec<PathBuf>,
    /// Entries named like a spool file (segment, cursor, lock, identity) that are not
    /// regular files: a FIFO, a directory, a symbolic link, a device. Skipped, never opened.
    pub(crate) not_regular: Vec<PathBuf>,
}

/// Lists a lane directory's entries.
pub(crate) fn list_entries(dir: &Path) -> io::Result<LaneEntries> {
    let mut out = LaneEntries::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            out.unknown.push(entry.path());
            continue;
        };
        let seg = parse_segment_file_name(name);
        let ours = seg.is_some()
            || [LOCK_FILE, CURSOR_FILE, CURSOR_TMP_FILE, IDENTITY_FILE].contains(&name);
        if !ours {
            out.unknown.push(entry.path());
            continue;
        }
        if !entry.file_type()?.is_file() {
            tracing::warn!(
                path = %entry.path().display(),
                "not a regular file where a spool file is expected: skipped, never opened"
            );
            out.not_regular.push(entry.path());
            continue;
        }
        out.segments.extend(seg);
    }
    out.segments.sort_unstable();
    Ok(out)
}

/// Tries to lock lane `n`, creating its directory if `create`. `Ok(None)`: held by someone
/// else (or not usable as a lane).
pub(crate) fn try_lock_lane(root: &Path, n: u32, create: bool) -> Result<Option<File>, SpoolError> {
    let dir = lane_dir(root, n);
    if create {
        match DirBuilder::new().mode(DIR_MODE).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(SpoolError::io(&dir, e)),
        }
        // The lane's entry in the root, durable before the lane takes a record. Always (not
        // only when created here): an earlier attempt may have created it and then failed.
        crate::fs::sync_parent(&dir).map_err(|e| SpoolError::io(root, e))?;
    }
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SpoolError::io(&dir, e)),
    }
    let path = dir.join(LOCK_FILE);
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(crate::fs::safe_open_flags())
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            // A directory, FIFO or link at `lock` (or no permission): this lane cannot be
            // used; the caller takes another.
            tracing::warn!(path = %path.display(), error = %e, "lane lock file unusable: lane skipped");
            return Ok(None);
        }
    };
    let Ok(file) = crate::fs::regular(file) else {
        tracing::warn!(path = %path.display(), "lane lock is not a regular file: lane skipped");
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => return Err(SpoolError::io(&path, e)),
    }
    // The lane may have been removed (and its lock file unlinked) between our open and our
    // lock: only the lock file still at the path counts.
    let held = file.metadata().map_err(|e| SpoolError::io(&path, e))?;
    match std::fs::metadata(&path) {
        Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => Ok(Some(file)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SpoolError::io(&path, e)),
    }
}

/// A lane as recovery left it.
#[derive(Debug)]
pub(crate) struct RecoveredLane {
    pub(crate) segs: Vec<SegMeta>,
    pub(crate) cursor: CursorChoice,
    /// Largest id of any segment-named file (of any version): new segments get larger ids.
    pub(crate) max_file_id: u64,
    /// The last segment if it can be appended to: (id, valid length, next seq).
    pub(crate) resumable: Option<(u64, u64)>,
    /// Next sequence number for the lane's writer.
    pub(crate) next_seq: u64,
    /// Records found missing between its segments (see [`place_segments`]).
    pub(crate) missing: u64,
    /// Damaged regions found in its segments.
    pub(crate) corrupt: u64,
}

/// The ISIZE field of a gzip stream's trailer (its last 4 bytes, little-endian): the
/// uncompressed size of the last member, modulo 2^32. 0 if the stream is too short.
fn gzip_isize(stream: &[u8]) -> u64 {
    match stream.len().checked_sub(4).and_then(|at| stream.get(at..)) {
        Some(&[a, b, c, d]) if stream.len() >= 18 => u64::from(u32::from_le_bytes([a, b, c, d])),
        _ => 0,
    }
}

/// Recovers one scanned segment file: leaves foreign and newer ones alone, removes a stub
/// holding no record, truncates a torn tail, and counts what it found. Returns the segment
/// to index, if it is one.
fn recover_segment(
    fs: &dyn SpoolFs,
    path: PathBuf,
    scan: SegScan,
    report: &mut RecoveryReport,
) -> Result<Option<Placed>, SpoolError> {
    let (header_id, header_first, header_version) = match scan.kind {
        SegKind::Foreign => {
            tracing::warn!(
                path = %path.display(),
                "segment file with a damaged magic and no readable record: left untouched"
            );
            report.corrupt_segments.push(path);
            return Ok(None);
        }
        SegKind::Newer(_) => {
            report.newer_version_files.push(path);
            return Ok(None);
        }
        SegKind::Short => {
            fs.remove_file(&path)
                .map_err(|e| SpoolError::io(&path, e))?;
            report.empty_segments_removed += 1;
            return Ok(None);
        }
        SegKind::Valid {
            first_seq,
            segment_id,
            version,
        } => (Some(segment_id), Some(first_seq), Some(version)),
        SegKind::Damaged => {
            tracing::warn!(
                path = %path.display(),
                "segment header damaged: its records are still read and delivered"
            );
            report.damaged_headers.push(path.clone());
            (None, None, None)
        }
    };
    report.corrupt_frames_skipped += scan.corrupt;
    let mut meta = scan.meta;
    if scan.tail_bytes > 0 {
        let f = fs.open(&path, true).map_err(|e| SpoolError::io(&path, e))?;
        f.set_len(meta.len)
            .and_then(|()| f.sync_data())
            .map_err(|e| SpoolError::io(&path, e))?;
        report.torn_tail_bytes_truncated += scan.tail_bytes;
    } else if meta.records > 0 {
        // A killed writer's last records may be in the page cache only: durable from here
        // on, so that a later sync's promise (every record waiting survives a power loss)
        // holds for the records found too.
        fs.open(&path, false)
            .and_then(|f| f.sync_data())
            .map_err(|e| SpoolError::io(&path, e))?;
    }
    report.records += meta.records;
    report.bytes += meta.len;
    meta.sealed = true;
    Ok(Some(Placed {
        meta,
        header_id,
        header_first,
        header_version,
    }))
}

/// Once the records missing before a segment are counted, its header is rewritten to start
/// right after the segment before it (a 32-byte overwrite, fdatasynced): the records it
/// holds are unchanged, and the next open does not count the same gap again. A failure is
/// logged (the gap would be counted again).
fn rebase_after_gaps(fs: &dyn SpoolFs, dir: &Path, rebase: &[(u64, u64)]) {
    for &(id, first_seq) in rebase {
        let path = dir.join(format::segment_file_name(id));
        let header = format::encode_segment_header(id, first_seq);
        let written = fs
            .open(&path, true)
            .and_then(|f| write_all_at(&*f, &header, 0).and_then(|()| f.sync_data()));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not mark a counted gap in a segment header");
        }
    }
}

/// Reports (and logs) what [`place_segments`] found, and marks counted gaps in the
/// segment headers so that they are counted once.
fn note_continuity(
    fs: &dyn SpoolFs,
    dir: &Path,
    continuity: &Continuity,
    report: &mut RecoveryReport,
) {
    if continuity.missing > 0 || !continuity.misplaced.is_empty() {
        tracing::warn!(
            lane = %dir.display(),
            missing_records = continuity.missing,
            misplaced_segments = ?continuity.misplaced,
            "lane segments are not as the writer left them: records whose numbers are missing are counted as lost; misplaced segments are delivered in sequence order"
        );
    }
    report.missing_records += continuity.missing;
    rebase_after_gaps(fs, dir, &continuity.rebase);
    report.misplaced_segments.extend(
        continuity
            .misplaced
            .iter()
            .map(|&id| dir.join(format::segment_file_name(id))),
    );
}

/// Recovers a lane we hold the lock of: truncates torn tails, removes record-less stubs,
/// skips damage, leaves newer and foreign files alone, orders the segments by sequence
/// number and checks that the numbers run on (see [`place_segments`]), and builds the
/// segment index.
pub(crate) fn recover_lane(
    fs: &dyn SpoolFs,
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<RecoveredLane, SpoolError> {
    let entries = list_entries(dir).map_err(|e| SpoolError::io(dir, e))?;
    report.unknown_files.extend(entries.unknown);
    report.skipped_entries.extend(entries.not_regular);
    let ids = entries.segments;
    let cursor = read_cursor(fs, dir)
        .and_then(|found| settle_cursor(fs, dir, found))
        .map_err(|e| SpoolError::io(dir.join(CURSOR_FILE), e))?;
    if cursor.damaged {
        report.damaged_cursors += 1;
    }
    let acked = cursor.state.acked_through;
    let mut out = RecoveredLane {
        segs: Vec::new(),
        cursor,
        max_file_id: ids.last().copied().unwrap_or(0),
        resumable: None,
        next_seq: cursor.state.next_seq.max(acked + 1).max(1),
        missing: 0,
        corrupt: 0,
    };
    let corrupt_before = report.corrupt_frames_skipped;
    let mut placed = Vec::new();
    let mut newer_here = false;
    for id in ids {
        let path = dir.join(format::segment_file_name(id));
        let scan = scan_segment(fs, &path, id, false).map_err(|e| SpoolError::io(&path, e))?;
        newer_here |= matches!(scan.kind, SegKind::Newer(_));
        if let Some(p) = recover_segment(fs, path, scan, report)? {
            if let Some(first) = p.header_first {
                out.next_seq = out.next_seq.max(first);
            }
            if p.meta.last_seq > 0 {
                out.next_seq = out.next_seq.max(p.meta.last_seq + 1);
            }
            placed.push(p);
        }
    }
    if !placed.is_empty() {
        // Their entries too: a killed writer may have created a segment and died before it
        // synced the directory.
        fs.sync_dir(dir).map_err(|e| SpoolError::io(dir, e))?;
    }
    let continuity = place_segments(&mut placed, acked, !newer_here);
    note_continuity(fs, dir, &continuity, report);
    out.missing = continuity.missing;
    out.corrupt = report.corrupt_frames_skipped - corrupt_before;
    // The last segment can be appended to if it is intact, in its place, the newest by
    // name (new segments get larger ids than any file), and of the version this build
    // writes: a version-1 segment stays sealed, so an older build reading it never meets a
    // record of a newer version in it.
    if let Some(last) = placed.last()
        && last.header_id == Some(last.meta.id)
        && last.header_version == Some(format::FORMAT_VERSION)
        && last.meta.id == out.max_file_id
        && continuity.misplaced.is_empty()
    {
        out.resumable = Some((last.meta.id, last.meta.len));
    }
    out.segs = placed.into_iter().map(|p| p.meta).collect();
    Ok(out)
}
