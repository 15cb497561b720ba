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
use crate::seqset::SeqSet;
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
    /// Numbers between its first and last record that recovery found missing (lost to
    /// damage, counted then): not in `records`.
    pub(crate) holes: SeqSet,
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
            holes: SeqSet::default(),
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
    /// Exact: numbers missing inside the segment are known (`holes`).
    pub(crate) fn unacked(&self, acked: u64) -> u64 {
        if self.records == 0 || self.last_seq <= acked {
            0
        } else if self.first_seq > acked {
            self.records
        } else {
            let span = self.last_seq - acked;
            span.saturating_sub(self.holes.count_in(acked + 1, self.last_seq))
                .min(self.records)
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
    /// The numbers of the records those regions destroyed (between the frames around
    /// them); in `meta.holes` too.
    pub(crate) holes: SeqSet,
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
        holes: SeqSet::default(),
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
                    // Before the first frame of a segment whose header is damaged, where
                    // the segment began is unknown: the continuity check counts that gap.
                    let known = f.prev_seq > 0 || matches!(kind, SegKind::Valid { .. });
                    if known {
                        scan.holes.insert(f.prev_seq + 1, f.seq - 1);
                    }
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
            scan.holes = SeqSet::default();
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
    /// A file the spool cannot place by its name (see [`RecoveryReport::stranded_files`]):
    /// its records are on disk, so their numbers are neither a gap nor a cut tail, but it
    /// is never read for delivery (nor checked for its place).
    pub(crate) stranded: bool,
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
    /// Of `missing`, the records cut from the end of the lane: numbers below the lane's
    /// written mark (the cursor's `next_seq`, or a segment header's first number) that no
    /// segment holds any more.
    pub(crate) tail_missing: u64,
    /// With a tail missing: the number the lane's writer goes on from (right after what is
    /// on disk or acknowledged), so that the numbers counted are not found missing again.
    pub(crate) resume_at: Option<u64>,
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
///
/// `written_next` is the cursor's `next_seq`: the lane's writer had written every number
/// below it (it is recorded at every fsync point). Numbers below it and above everything
/// the segments hold (and the ack point, and the start of the first segment: eviction and
/// expiry remove heads, never tails) are records cut from the end of the lane: counted as
/// missing too ([`Continuity::tail_missing`]).
pub(crate) fn place_segments(
    segs: &mut [Placed],
    acked: u64,
    written_next: u64,
    count_gaps: bool,
) -> Continuity {
    let mut out = Continuity::default();
    let has_records = |p: &&Placed| p.meta.records > 0 && !p.stranded;
    let by_name: Vec<u64> = segs.iter().filter(has_records).map(|p| p.meta.id).collect();
    segs.sort_by_key(|p| (p.start(), p.meta.id));
    for p in segs.iter().filter(|p| !p.stranded) {
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
                    if !p.stranded && p.header_id.is_none_or(|h| h == p.meta.id) {
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
    if count_gaps {
        count_tail(segs, acked, written_next, &mut out);
    }
    out
}

/// Counts the records cut from the end of a lane (see [`place_segments`]); `segs` in
/// sequence order.
fn count_tail(segs: &[Placed], acked: u64, written_next: u64, out: &mut Continuity) {
    // Every number below a header's first number was written before that segment began.
    let mark = segs
        .iter()
        .filter_map(|p| p.header_first)
        .chain(std::iter::once(written_next))
        .max()
        .unwrap_or(0)
        .saturating_sub(1);
    // With no segment left at all, nothing tells a tail cut off from a head evicted or
    // expired: nothing is counted.
    let Some(first) = segs
        .iter()
        .find(|p| p.meta.records > 0 || p.header_first.is_some())
    else {
        return;
    };
    let on_disk = segs.iter().map(|p| p.meta.last_seq).max().unwrap_or(0);
    let held = acked.max(on_disk).max(first.start().saturating_sub(1));
    if mark <= held {
        return;
    }
    out.tail_missing = mark - held;
    out.missing += mark - held;
    let resume = held + 1;
    out.resume_at = Some(resume);
    // A segment begun after the cut, still empty, starts where the writer goes on.
    for p in segs {
        if p.meta.records == 0
            && p.header_first.is_some_and(|f| f > resume)
            && p.header_id == Some(p.meta.id)
        {
            out.rebase.push((p.meta.id, resume));
        }
    }
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
    /// Regular files named `<digits>.seg` that are not a segment name the spool writes (not
    /// 20 digits, or a number beyond `u64`): checked for records (see
    /// [`misnamed_segment_records`]).
    pub(crate) misnamed: Vec<PathBuf>,
}

/// Whether `name` looks like a segment the spool cannot place: `<digits>.seg`, but not a
/// name [`format::segment_file_name`] gives.
fn is_misnamed_segment(name: &str) -> bool {
    name.strip_suffix(".seg").is_some_and(|d| {
        !d.is_empty()
            && d.bytes().all(|b| b.is_ascii_digit())
            && parse_segment_file_name(name).is_none()
    })
}

/// What to do with a file named like a segment but not as the spool names them.
#[derive(Debug)]
pub(crate) enum Misnamed {
    /// Its header is intact and names a segment id no other file of the lane has: read it
    /// as that segment.
    Place(u64),
    /// It holds nothing of ours (or is of a newer version): left alone, as unknown.
    NotOurs,
}

/// Judges a misnamed segment file (see [`Misnamed`]); `files` are the lane's segments so
/// far. An error for one that holds our records but cannot be placed (a damaged header, an
/// id another file has, an id too large to leave room for new segments after it): the lane
/// is then unusable, and its records stranded until an operator renames the file.
pub(crate) fn placeable_misnamed(
    fs: &dyn SpoolFs,
    path: &Path,
    files: &[(u64, PathBuf)],
) -> Result<Misnamed, SpoolError> {
    let scan = scan_segment(fs, path, 0, false).map_err(|e| SpoolError::io(path, e))?;
    match scan.kind {
        SegKind::Valid { segment_id, .. }
            if segment_id < u64::MAX / 2 && files.iter().all(|(id, _)| *id != segment_id) =>
        {
            Ok(Misnamed::Place(segment_id))
        }
        SegKind::Foreign | SegKind::Newer(_) | SegKind::Short => Ok(Misnamed::NotOurs),
        _ if scan.meta.records == 0 => Ok(Misnamed::NotOurs),
        _ => Err(SpoolError::io(
            path,
            io::Error::other(
                "a file named like a segment, but not as the spool names them, whose header does not say which segment it is: rename it to its segment id (see `outlast inspect`)",
            ),
        )),
    }
}

/// A file named like a segment that the spool cannot place (see [`placeable_misnamed`]),
/// read without changing it: its unacknowledged records (above `acked`), and its place in
/// the lane's numbering (for the continuity check of `inspect` only). `None` if it holds no
/// record of ours or cannot be read.
pub(crate) fn misnamed_segment(fs: &dyn SpoolFs, path: &Path, acked: u64) -> Option<(u64, Placed)> {
    let scan = scan_segment(fs, path, 0, false).ok()?;
    if matches!(scan.kind, SegKind::Foreign | SegKind::Newer(_)) || scan.meta.records == 0 {
        return None;
    }
    let header_first = match scan.kind {
        SegKind::Valid { first_seq, .. } => Some(first_seq),
        _ => None,
    };
    Some((
        scan.meta.unacked(acked),
        Placed {
            meta: scan.meta,
            header_id: None,
            header_first,
            header_version: None,
            stranded: true,
        },
    ))
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
            if is_misnamed_segment(name) && entry.file_type()?.is_file() {
                out.misnamed.push(entry.path());
            } else {
                out.unknown.push(entry.path());
            }
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
    /// The last segment if it can be appended to: (id, valid length).
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
    acked: u64,
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
    // Records lost to damage, each counted once; those acknowledged already were delivered
    // (and counted when a reader first met the damage, if it was there then).
    report.corrupt_frames_skipped += scan.holes.count_in(acked.saturating_add(1), u64::MAX);
    let mut meta = scan.meta;
    meta.holes = scan.holes;
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
        stranded: false,
    }))
}

/// Once the records missing before a segment are counted, its header is rewritten to start
/// right after the segment before it (a 32-byte overwrite, fdatasynced): the records it
/// holds are unchanged, and the next open does not count the same gap again. A failure is
/// logged (the gap would be counted again).
fn rebase_after_gaps(fs: &dyn SpoolFs, placed: &[Placed], rebase: &[(u64, u64)]) {
    for &(id, first_seq) in rebase {
        let Some(path) = placed
            .iter()
            .find(|p| p.meta.id == id)
            .map(|p| &p.meta.path)
        else {
            continue;
        };
        let header = format::encode_segment_header(id, first_seq);
        let written = fs
            .open(path, true)
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
    placed: &[Placed],
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
    rebase_after_gaps(fs, placed, &continuity.rebase);
    for &id in &continuity.misplaced {
        if let Some(p) = placed.iter().find(|p| p.meta.id == id)
            && !report.misplaced_segments.contains(&p.meta.path)
        {
            report.misplaced_segments.push(p.meta.path.clone());
        }
    }
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
    // Settled (made durable in both slots) once the segments are read: a tail found cut
    // off lowers its `next_seq` first.
    let cursor = read_cursor(fs, dir).map_err(|e| SpoolError::io(dir.join(CURSOR_FILE), e))?;
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
    let mut placed = Vec::new();
    let corrupt_before = report.corrupt_frames_skipped;
    let mut newer_here = false;
    // Files renamed by hand whose header says which segment they are: delivered in their
    // place (and reported as misplaced); one that cannot be placed makes the lane unusable
    // (its records stranded, not delivered out of order nor acknowledged past).
    let mut files: Vec<(u64, PathBuf)> = ids
        .iter()
        .map(|&id| (id, dir.join(format::segment_file_name(id))))
        .collect();
    for path in entries.misnamed {
        match placeable_misnamed(fs, &path, &files)? {
            Misnamed::Place(id) => {
                out.max_file_id = out.max_file_id.max(id);
                report.misplaced_segments.push(path.clone());
                files.push((id, path));
            }
            Misnamed::NotOurs => report.unknown_files.push(path),
        }
    }
    files.sort_unstable_by_key(|(id, _)| *id);
    for (id, path) in files {
        let scan = scan_segment(fs, &path, id, false).map_err(|e| SpoolError::io(&path, e))?;
        newer_here |= matches!(scan.kind, SegKind::Newer(_));
        if let Some(p) = recover_segment(fs, path, scan, acked, report)? {
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
    let continuity = place_segments(&mut placed, acked, cursor.state.next_seq, !newer_here);
    note_continuity(fs, dir, &placed, &continuity, report);
    out.missing = continuity.missing;
    if let Some(resume) = continuity.resume_at {
        // The numbers cut off are counted: the writer goes on right after what is left,
        // and the cursor says so before anything else happens, so that the next open does
        // not count them again.
        out.next_seq = resume;
        out.cursor.state.next_seq = resume;
        for p in &mut placed {
            if let Some(&(_, first)) = continuity.rebase.iter().find(|(id, _)| *id == p.meta.id) {
                p.header_first = Some(first);
            }
        }
    }
    out.cursor =
        settle_cursor(fs, dir, out.cursor).map_err(|e| SpoolError::io(dir.join(CURSOR_FILE), e))?;
    out.corrupt = report.corrupt_frames_skipped - corrupt_before;
    // The last segment can be appended to if it is intact, in its place, the newest by
    // name (new segments get larger ids than any file), and of the version this build
    // writes: a version-1 segment stays sealed, so an older build reading it never meets a
    // record of a newer version in it.
    if let Some(last) = placed.last()
        && !last.stranded
        && last.meta.path == dir.join(format::segment_file_name(last.meta.id))
        && last.header_id == Some(last.meta.id)
        && last.header_version == Some(format::FORMAT_VERSION)
        && last.meta.id == out.max_file_id
        && continuity.misplaced.is_empty()
    {
        out.resumable = Some((last.meta.id, last.meta.len));
    }
    out.segs = placed
        .into_iter()
        .filter(|p| !p.stranded)
        .map(|p| p.meta)
        .collect();
    Ok(out)
}
