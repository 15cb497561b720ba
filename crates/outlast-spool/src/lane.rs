//! Lanes: the root's safety checks, lane directories and their lock files, the per-segment
//! index, the cursor file, and recovery of a lane's segments.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::cursor::{CURSOR_FILE, CURSOR_TMP_FILE, read_cursor, settle_cursor};
use crate::error::SpoolError;
use crate::format::{self, CursorChoice, HeaderCheck, SEGMENT_HEADER_LEN, parse_segment_file_name};
use crate::fs::{DIR_MODE, FILE_MODE, SpoolFs, read_full_at};
use crate::scan::{FrameReader, Next};
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

/// How a segment file's header was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegKind {
    /// Current version, intact header.
    Valid { first_seq: u64 },
    /// Current version, damaged header: frames are still read.
    Damaged,
    /// Shorter than a header: holds no record.
    Short,
    /// Not a spool segment.
    Foreign,
    /// A newer format version.
    Newer(u16),
}

/// A read-only scan of one segment file.
#[derive(Debug, Clone)]
pub(crate) struct SegScan {
    pub(crate) kind: SegKind,
    pub(crate) file_len: u64,
    pub(crate) meta: SegMeta,
    /// Damaged regions skipped before valid frames (a damaged header counts as one).
    pub(crate) corrupt: u64,
    /// Bytes after the last valid frame (torn or damaged tail).
    pub(crate) tail_bytes: u64,
}

/// Reads a segment file without changing it.
pub(crate) fn scan_segment(fs: &dyn SpoolFs, path: &Path, id: u64) -> io::Result<SegScan> {
    let file = fs.open(path, false)?;
    let file_len = file.len()?;
    let mut head = [0u8; SEGMENT_HEADER_LEN as usize];
    let n = read_full_at(&*file, &mut head, 0)?;
    let kind = match format::check_segment_header(&head[..n]) {
        HeaderCheck::Valid(h) => SegKind::Valid {
            first_seq: h.first_seq,
        },
        HeaderCheck::Damaged => SegKind::Damaged,
        HeaderCheck::Short => SegKind::Short,
        HeaderCheck::Foreign => SegKind::Foreign,
        HeaderCheck::Newer(v) => SegKind::Newer(v),
    };
    let mut scan = SegScan {
        kind,
        file_len,
        meta: SegMeta::new(id, path.to_path_buf(), file_len.min(SEGMENT_HEADER_LEN)),
        corrupt: 0,
        tail_bytes: 0,
    };
    let last_seq = match kind {
        SegKind::Valid { first_seq } => first_seq.saturating_sub(1),
        SegKind::Damaged => {
            scan.corrupt += 1;
            0
        }
        SegKind::Short | SegKind::Foreign | SegKind::Newer(_) => return Ok(scan),
    };
    let mut reader = FrameReader::new(file, SEGMENT_HEADER_LEN, file_len, RECOVERY_CHUNK, last_seq);
    loop {
        match reader.next(false)? {
            Next::Frame(f) => {
                if f.skipped.is_some() {
                    scan.corrupt += 1;
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
    Ok(scan)
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
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(root)
                .map_err(|e| SpoolError::io(root, e))?;
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

/// Lane numbers present under the root, ascending.
pub(crate) fn list_lanes(root: &Path) -> Result<Vec<u32>, SpoolError> {
    let mut lanes = Vec::new();
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
            lanes.push(n);
        }
    }
    lanes.sort_unstable();
    Ok(lanes)
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
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SpoolError::io(&path, e)),
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
}

/// Recovers a lane we hold the lock of: truncates torn tails, removes record-less stubs,
/// skips damage, leaves newer and foreign files alone, and builds the segment index.
pub(crate) fn recover_lane(
    fs: &dyn SpoolFs,
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<RecoveredLane, SpoolError> {
    let mut ids = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| SpoolError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| SpoolError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            report.unknown_files.push(entry.path());
            continue;
        };
        if let Some(id) = parse_segment_file_name(name) {
            ids.push(id);
        } else if name != LOCK_FILE && name != CURSOR_FILE && name != CURSOR_TMP_FILE {
            report.unknown_files.push(entry.path());
        }
    }
    ids.sort_unstable();
    let cursor = read_cursor(fs, dir)
        .and_then(|found| settle_cursor(fs, dir, found))
        .map_err(|e| SpoolError::io(dir.join(CURSOR_FILE), e))?;
    if cursor.damaged {
        report.damaged_cursors += 1;
    }
    let mut out = RecoveredLane {
        segs: Vec::new(),
        cursor,
        max_file_id: ids.last().copied().unwrap_or(0),
        resumable: None,
        next_seq: cursor
            .state
            .next_seq
            .max(cursor.state.acked_through + 1)
            .max(1),
    };
    let last_id = ids.last().copied();
    for id in ids {
        let path = dir.join(format::segment_file_name(id));
        let scan = scan_segment(fs, &path, id).map_err(|e| SpoolError::io(&path, e))?;
        match scan.kind {
            SegKind::Foreign => {
                report.unknown_files.push(path);
                continue;
            }
            SegKind::Newer(_) => {
                report.newer_version_files.push(path);
                continue;
            }
            SegKind::Short => {
                fs.remove_file(&path)
                    .map_err(|e| SpoolError::io(&path, e))?;
                report.empty_segments_removed += 1;
                continue;
            }
            SegKind::Valid { first_seq } => {
                out.next_seq = out.next_seq.max(first_seq);
            }
            SegKind::Damaged => {}
        }
        report.corrupt_frames_skipped += scan.corrupt;
        let mut meta = scan.meta;
        if scan.tail_bytes > 0 {
            let f = fs.open(&path, true).map_err(|e| SpoolError::io(&path, e))?;
            f.set_len(meta.len)
                .and_then(|()| f.sync_data())
                .map_err(|e| SpoolError::io(&path, e))?;
            report.torn_tail_bytes_truncated += scan.tail_bytes;
        }
        if meta.last_seq > 0 {
            out.next_seq = out.next_seq.max(meta.last_seq + 1);
        }
        report.records += meta.records;
        report.bytes += meta.len;
        meta.sealed = true;
        if Some(id) == last_id && matches!(scan.kind, SegKind::Valid { .. }) {
            out.resumable = Some((id, meta.len));
        }
        out.segs.push(meta);
    }
    Ok(out)
}
