//! A read-only scan of a spool for operators (the CLI's `inspect` and `verify`): per lane,
//! its segments, damage, acked position and record times. Never modifies anything.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cursor::{CURSOR_FILE, CURSOR_TMP_FILE};
use crate::error::SpoolError;
use crate::format::{self, parse_segment_file_name};
use crate::fs::StdFs;
use crate::lane::{self, SegKind};

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
    /// Damaged regions that a reader skips (a damaged header counts as one).
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

    /// Whether nothing is damaged: no corrupt frame, no torn tail, no damaged cursor, no
    /// damaged header. (Newer-version files are not damage.)
    pub fn is_healthy(&self) -> bool {
        self.lanes.iter().all(|l| {
            !l.cursor_damaged
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
    let Ok(file) = OpenOptions::new().read(true).open(path) else {
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
/// opening the spool at that very instant skips that lane and takes another.
///
/// # Errors
///
/// [`SpoolError::Io`] if the root or a lane directory cannot be read,
/// [`SpoolError::UnsafeRoot`] if the root is not a directory.
pub fn scan(root: &Path) -> Result<Inspection, SpoolError> {
    let meta = std::fs::metadata(root).map_err(|e| SpoolError::io(root, e))?;
    if !meta.is_dir() {
        return Err(SpoolError::UnsafeRoot {
            path: root.to_path_buf(),
            reason: "is not a directory".into(),
        });
    }
    let mut out = Inspection {
        root: root.to_path_buf(),
        lanes: Vec::new(),
    };
    for n in lane::list_lanes(root)? {
        let dir = lane::lane_dir(root, n);
        let cursor = crate::cursor::read_cursor(&StdFs, &dir)
            .map_err(|e| SpoolError::io(dir.join(CURSOR_FILE), e))?;
        let mut li = LaneInspection {
            lane: n,
            path: dir.clone(),
            lock: lock_state(&dir.join(lane::LOCK_FILE)),
            acked_through: cursor.state.acked_through,
            cursor_damaged: cursor.damaged,
            segments: Vec::new(),
            unknown_files: Vec::new(),
        };
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| SpoolError::io(&dir, e))? {
            let entry = entry.map_err(|e| SpoolError::io(&dir, e))?;
            let name = entry.file_name();
            match name.to_str() {
                Some(s) if parse_segment_file_name(s).is_some() => {
                    ids.extend(parse_segment_file_name(s));
                }
                Some(s) if s == lane::LOCK_FILE || s == CURSOR_FILE || s == CURSOR_TMP_FILE => {}
                _ => li.unknown_files.push(entry.path()),
            }
        }
        ids.sort_unstable();
        for id in ids {
            let path = dir.join(format::segment_file_name(id));
            let scan =
                lane::scan_segment(&StdFs, &path, id).map_err(|e| SpoolError::io(&path, e))?;
            let m = &scan.meta;
            let (version, header_ok, newer) = match scan.kind {
                SegKind::Valid { .. } => (Some(format::FORMAT_VERSION), true, false),
                SegKind::Damaged => (None, false, false),
                SegKind::Short | SegKind::Foreign => (None, false, false),
                SegKind::Newer(v) => (Some(v), false, true),
            };
            if scan.kind == SegKind::Foreign {
                li.unknown_files.push(path);
                continue;
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
            });
        }
        out.lanes.push(li);
    }
    Ok(out)
}
