//! A read-only scan of a spool for operators (the CLI's `inspect` and `verify`): per lane,
//! its segments, damage, acked position and record times. Never modifies anything.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::SpoolError;
use crate::format;
use crate::fs::{SpoolFs, StdFs};
use crate::identity;
use crate::layout;
use crate::recovery;
pub use crate::segfile::EncodingTally;
use crate::segfile::{self, SegKind};
use crate::types::RecordedIdentity;

/// Whether a lane's lock is held by a live process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Nobody holds it (its owner, if any, is gone).
    Free,
    /// Another process holds it: the lane is in use.
    Held,
    /// Could not be determined (no lock file, or the lock call failed).
    Unknown,
}

/// One segment file.
#[derive(Debug, Clone)]
pub struct SegmentInspection {
    /// Segment id (from the file name).
    pub id: u64,
    /// The file.
    pub path: PathBuf,
    /// File size.
    pub bytes: u64,
    /// Format version in the header (`None`: not readable, or not a spool segment).
    pub version: Option<u16>,
    /// Whether the header is intact (a damaged header does not stop frames being read).
    pub header_ok: bool,
    /// Whether the file is of a newer format version (then it is not read further).
    pub newer_version: bool,
    /// Intact records.
    pub records: u64,
    /// Damaged regions that a reader skips (a damaged header is not one: see `header_ok`).
    pub corrupt_frames: u64,
    /// Bytes after the last intact frame (a torn tail: cut off by the next open).
    pub torn_tail_bytes: u64,
    /// First and last sequence numbers (0: no record).
    pub first_seq: u64,
    /// Last sequence number (0: no record).
    pub last_seq: u64,
    /// Creation time of the oldest record.
    pub oldest_created_at: Option<SystemTime>,
    /// Creation time of the newest record.
    pub newest_created_at: Option<SystemTime>,
    /// Its records by content encoding, with stored and uncompressed sizes.
    pub encodings: EncodingTally,
}

/// One lane.
#[derive(Debug, Clone)]
pub struct LaneInspection {
    /// Lane number.
    pub lane: u32,
    /// Its directory.
    pub path: PathBuf,
    /// Whether a live process holds it.
    pub lock: LockState,
    /// Records up to this sequence number are acknowledged (0: none).
    pub acked_through: u64,
    /// Whether the cursor file holds no valid slot but damaged bytes (the lane would be
    /// read from the start).
    pub cursor_damaged: bool,
    /// Segment files, by id.
    pub segments: Vec<SegmentInspection>,
    /// Files that are not spool files: left alone.
    pub unknown_files: Vec<PathBuf>,
    /// Who the lane's records are for (`None`: no identity file, the lane was written
    /// before identities were recorded; any spool adopts it).
    pub identity: Option<RecordedIdentity>,
    /// Records known lost by their sequence numbers (see
    /// [`RecoveryReport::missing_records`](crate::RecoveryReport::missing_records)).
    pub missing_records: u64,
    /// Segments swapped or renamed (see
    /// [`RecoveryReport::misplaced_segments`](crate::RecoveryReport::misplaced_segments)).
    pub misplaced_segments: Vec<PathBuf>,
    /// Files named like segments with a damaged magic and no readable record.
    pub corrupt_segments: Vec<PathBuf>,
    /// Entries named like spool files that are not regular files (never opened).
    pub skipped_entries: Vec<PathBuf>,
    /// Why the cursor could not be read, if it could not (the lane is unusable as it is).
    pub cursor_error: Option<String>,
    /// Files named like segments (`<digits>.seg`) but not as the spool names them (renamed
    /// by hand: not 20 digits, or beyond `u64`), holding records, whose header does not say
    /// which segment they are (damaged, or an id another file has): no spool can place
    /// them, so none uses the lane (see [`LaneInspection::is_unusable`]). A renamed file
    /// whose header names its segment is read in its place instead, and listed in
    /// `misplaced_segments`.
    pub stranded_files: Vec<PathBuf>,
    /// Unacknowledged records in `stranded_files`.
    pub stranded_file_records: u64,
}

impl LaneInspection {
    /// Intact records not yet acknowledged (from the per-segment ranges).
    pub fn unacked_records(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.records > 0 && s.last_seq > self.acked_through)
            .map(|s| {
                if s.first_seq > self.acked_through {
                    s.records
                } else {
                    (s.last_seq - self.acked_through).min(s.records)
                }
            })
            .sum()
    }

    /// Whether no spool can use the lane as it is: its cursor cannot be read, its cursor or
    /// lock is not a regular file, or it holds a file named like a segment that cannot be
    /// placed (see `stranded_files`). Its records are stranded until it is repaired.
    pub fn is_unusable(&self) -> bool {
        self.cursor_error.is_some()
            || !self.stranded_files.is_empty()
            || self.skipped_entries.iter().any(|p| {
                p.parent() == Some(self.path.as_path())
                    && p.file_name()
                        .is_some_and(|n| n == crate::cursor::CURSOR_FILE || n == layout::LOCK_FILE)
            })
    }

    /// Records on disk in this lane that no spool will deliver as things are: all its
    /// unacknowledged records (and those of its `stranded_files`) if it
    /// [is unusable](Self::is_unusable), else none.
    pub fn stranded_records(&self) -> u64 {
        if self.is_unusable() {
            self.unacked_records() + self.stranded_file_records
        } else {
            0
        }
    }

    /// Files of a newer format version.
    pub fn newer_version_files(&self) -> impl Iterator<Item = &Path> {
        self.segments
            .iter()
            .filter(|s| s.newer_version)
            .map(|s| s.path.as_path())
    }
}

/// The whole spool.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The root scanned.
    pub root: PathBuf,
    /// Lanes by number.
    pub lanes: Vec<LaneInspection>,
    /// Entries named like lanes that are not directories: skipped.
    pub skipped_entries: Vec<PathBuf>,
}

impl Inspection {
    /// Bytes of all segment files.
    pub fn total_bytes(&self) -> u64 {
        self.lanes
            .iter()
            .flat_map(|l| &l.segments)
            .map(|s| s.bytes)
            .sum()
    }

    /// Unacknowledged intact records, all lanes.
    pub fn unacked_records(&self) -> u64 {
        self.lanes.iter().map(LaneInspection::unacked_records).sum()
    }

    /// Records no spool will deliver as things are, all lanes (see
    /// [`LaneInspection::stranded_records`]).
    pub fn stranded_records(&self) -> u64 {
        self.lanes
            .iter()
            .map(LaneInspection::stranded_records)
            .sum()
    }

    /// Whether nothing is damaged: no corrupt frame, no torn tail, no damaged cursor, no
    /// damaged header, no record missing between segments or at the end of a lane, no
    /// misplaced or corrupt segment, no stray entry, nothing stranded. (Newer-version files
    /// are not damage.)
    pub fn is_healthy(&self) -> bool {
        self.skipped_entries.is_empty()
            && self.lanes.iter().all(|l| {
                !l.cursor_damaged
                    && l.cursor_error.is_none()
                    && l.missing_records == 0
                    && l.misplaced_segments.is_empty()
                    && l.corrupt_segments.is_empty()
                    && l.skipped_entries.is_empty()
                    && l.stranded_files.is_empty()
                    && l.segments.iter().all(|s| {
                        s.corrupt_frames == 0
                            && s.torn_tail_bytes == 0
                            && (s.header_ok || s.newer_version)
                    })
            })
    }
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn lock_state(path: &Path) -> LockState {
    // Never blocks on a FIFO, never follows a link; only a regular file is probed.
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(crate::fs::safe_open_flags())
        .open(path)
    else {
        return LockState::Unknown;
    };
    let Ok(file) = crate::fs::regular(file) else {
        return LockState::Unknown;
    };
    probe(&file)
}

fn probe(file: &File) -> LockState {
    // A shared lock conflicts with the owner's exclusive one; it is released at once.
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            LockState::Free
        }
        Err(std::fs::TryLockError::WouldBlock) => LockState::Held,
        Err(std::fs::TryLockError::Error(_)) => LockState::Unknown,
    }
}

/// Scans the spool under `root` without modifying anything.
///
/// The lock probe takes a shared lock on each lane's lock file for an instant; a process
/// opening the spool at that very instant skips that lane and takes another. Nothing is
/// opened that is not a regular file, and no link is followed.
///
/// # Errors
///
/// [`SpoolError::Io`] if the root cannot be read, [`SpoolError::UnsafeRoot`] if the root is
/// not a directory. A lane that cannot be read is reported in its entry, not an error.
pub fn scan(root: &Path) -> Result<Inspection, SpoolError> {
    let meta = std::fs::metadata(root).map_err(|e| SpoolError::io(root, e))?;
    if !meta.is_dir() {
        return Err(SpoolError::UnsafeRoot {
            path: root.to_path_buf(),
            reason: "is not a directory".into(),
        });
    }
    let (lanes, stray) = layout::list_lanes(root)?;
    let mut out = Inspection {
        root: root.to_path_buf(),
        lanes: Vec::new(),
        skipped_entries: stray,
    };
    for n in lanes {
        out.lanes.push(scan_lane(&StdFs, root, n, true, true));
    }
    Ok(out)
}

/// Every unacknowledged record of lane `n` in `dir` (in its segments and in files the spool
/// cannot place), read-only and without touching its lock (not even the instant probe of
/// [`scan`]); payloads are not copied out (only their frames are checked). A cursor that
/// cannot be read counts the lane from its start.
pub(crate) fn read_only_stranded(fs: &dyn SpoolFs, dir: &Path, n: u32) -> (u64, Vec<PathBuf>) {
    let l = scan_lane(fs, dir.parent().unwrap_or(dir), n, false, false);
    (
        l.unacked_records() + l.stranded_file_records,
        l.stranded_files,
    )
}

/// As [`read_only_stranded`], for a lane of another identity: its unacknowledged intact
/// records and segment bytes.
pub(crate) fn read_only_totals(fs: &dyn SpoolFs, dir: &Path, n: u32) -> (u64, u64) {
    let l = scan_lane(fs, dir.parent().unwrap_or(dir), n, false, false);
    (
        l.unacked_records(),
        l.segments.iter().map(|s| s.bytes).sum(),
    )
}

/// Scans one lane read-only; what cannot be read is reported in the result. `probe_lock`:
/// find out whether a live process holds it (else [`LockState::Unknown`]). `bodies`: read
/// the payloads too, for the sizes of compressed records (else those stay zero).
fn scan_lane(
    fs: &dyn SpoolFs,
    root: &Path,
    n: u32,
    probe_lock: bool,
    bodies: bool,
) -> LaneInspection {
    let dir = layout::lane_dir(root, n);
    let mut li = LaneInspection {
        lane: n,
        path: dir.clone(),
        lock: if probe_lock {
            lock_state(&dir.join(layout::LOCK_FILE))
        } else {
            LockState::Unknown
        },
        acked_through: 0,
        cursor_damaged: false,
        segments: Vec::new(),
        unknown_files: Vec::new(),
        identity: match identity::read_identity(fs, &dir) {
            identity::LaneIdentity::Absent => None,
            identity::LaneIdentity::Recorded(r) => Some(r),
        },
        missing_records: 0,
        misplaced_segments: Vec::new(),
        corrupt_segments: Vec::new(),
        skipped_entries: Vec::new(),
        cursor_error: None,
        stranded_files: Vec::new(),
        stranded_file_records: 0,
    };
    let mut written_next = 0;
    match crate::cursor::read_cursor(fs, &dir) {
        Ok(c) => {
            li.acked_through = c.state.acked_through;
            li.cursor_damaged = c.damaged;
            written_next = c.state.next_seq;
        }
        Err(e) => li.cursor_error = Some(e.to_string()),
    }
    let entries = match layout::list_entries(&dir) {
        Ok(e) => e,
        Err(e) => {
            li.cursor_error
                .get_or_insert(format!("lane directory unreadable: {e}"));
            return li;
        }
    };
    li.unknown_files = entries.unknown;
    li.skipped_entries = entries.not_regular;
    let mut placed = Vec::new();
    // As recovery does: a renamed file whose header says which segment it is is read in
    // its place (and reported misplaced); one that cannot be placed strands its lane.
    let mut files: Vec<(u64, PathBuf)> = entries
        .segments
        .iter()
        .map(|&id| (id, dir.join(format::segment_file_name(id))))
        .collect();
    let mut renamed = Vec::new();
    for path in entries.misnamed {
        match recovery::placeable_misnamed(fs, &path, &files) {
            Ok(recovery::Misnamed::Place(id)) => {
                renamed.push(path.clone());
                files.push((id, path));
            }
            Ok(recovery::Misnamed::NotOurs) => li.unknown_files.push(path),
            Err(_) => match recovery::misnamed_segment(fs, &path, li.acked_through) {
                None => li.unknown_files.push(path),
                Some((n, p)) => {
                    li.stranded_file_records += n;
                    li.stranded_files.push(path);
                    placed.push(p);
                }
            },
        }
    }
    files.sort_unstable_by_key(|(id, _)| *id);
    let mut newer_here = false;
    for (id, path) in files {
        newer_here |= inspect_segment(fs, path, id, bodies, &mut li, &mut placed);
    }
    let continuity =
        recovery::place_segments(&mut placed, li.acked_through, written_next, !newer_here);
    li.missing_records = continuity.missing;
    li.misplaced_segments = renamed;
    for id in continuity.misplaced {
        if let Some(s) = li.segments.iter().find(|s| s.id == id)
            && !li.misplaced_segments.contains(&s.path)
        {
            li.misplaced_segments.push(s.path.clone());
        }
    }
    li
}

/// Scans segment `id` of the lane in `dir` into `li` (and `placed`, for the continuity
/// check). Returns whether it is of a newer format version.
fn inspect_segment(
    fs: &dyn SpoolFs,
    path: PathBuf,
    id: u64,
    bodies: bool,
    li: &mut LaneInspection,
    placed: &mut Vec<recovery::Placed>,
) -> bool {
    let scan = match segfile::scan_segment(fs, &path, id, bodies) {
        Ok(s) => s,
        Err(_) => {
            li.skipped_entries.push(path);
            return false;
        }
    };
    let m = &scan.meta;
    let (version, header_ok, newer, header) = match scan.kind {
        SegKind::Valid {
            first_seq,
            segment_id,
            version,
        } => (Some(version), true, false, Some((segment_id, first_seq))),
        SegKind::Damaged | SegKind::Short => (None, false, false, None),
        SegKind::Foreign => {
            li.corrupt_segments.push(path);
            return false;
        }
        SegKind::Newer(v) => (Some(v), false, true, None),
    };
    if !newer && scan.kind != SegKind::Short {
        placed.push(recovery::Placed {
            meta: m.clone(),
            header_id: header.map(|h| h.0),
            header_first: header.map(|h| h.1),
            header_version: version.filter(|_| header_ok),
            stranded: false,
        });
    }
    li.segments.push(SegmentInspection {
        id,
        path,
        bytes: scan.file_len,
        version,
        header_ok,
        newer_version: newer,
        records: m.records,
        corrupt_frames: scan.corrupt,
        torn_tail_bytes: if scan.kind == SegKind::Short {
            scan.file_len
        } else {
            scan.tail_bytes
        },
        first_seq: m.first_seq,
        last_seq: m.last_seq,
        oldest_created_at: (m.records > 0).then(|| time(m.oldest_ns)),
        newest_created_at: (m.records > 0).then(|| time(m.newest_ns)),
        encodings: scan.tally,
    });
    newer
}
