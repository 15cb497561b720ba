//! The spool directory's layout: the root's safety checks, the names and paths of lane
//! directories, listing a lane's entries, and the lane locks. It reads names and metadata
//! only, never a record.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::cursor::{CURSOR_FILE, CURSOR_TMP_FILE};
use crate::error::SpoolError;
use crate::format::parse_segment_file_name;
use crate::fs::{DIR_MODE, FILE_MODE};
use crate::identity::IDENTITY_FILE;

/// Name of a lane's lock file.
pub(crate) const LOCK_FILE: &str = "lock";

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
    /// recovery's `placeable_misnamed`).
    pub(crate) misnamed: Vec<PathBuf>,
}

/// Whether `name` looks like a segment the spool cannot place: `<digits>.seg`, but not a
/// name [`crate::format::segment_file_name`] gives.
fn is_misnamed_segment(name: &str) -> bool {
    name.strip_suffix(".seg").is_some_and(|d| {
        !d.is_empty()
            && d.bytes().all(|b| b.is_ascii_digit())
            && parse_segment_file_name(name).is_none()
    })
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
