//! Taking lanes: at open (the own lane, orphaned lanes of the same identity, lanes of
//! another identity reported and left alone) and later ([`Spool::adopt_released`]).
//!
//! [`Spool::adopt_released`]: crate::Spool::adopt_released

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::SpoolConfig;
use crate::error::SpoolError;
use crate::fs::SpoolFs;
use crate::identity;
use crate::lane::Lane;
use crate::ledger::{Ledger, lock};
use crate::recovery;
use crate::types::{ForeignLane, RecordedIdentity, RecoveryReport};

/// How many new lane numbers `open` tries when every existing lane is locked.
pub(crate) const NEW_LANE_ATTEMPTS: u32 = 64;

/// Adds one lane's recovery report to the open's.
pub(crate) fn merge_report(into: &mut RecoveryReport, from: RecoveryReport) {
    into.records += from.records;
    into.bytes += from.bytes;
    into.torn_tail_bytes_truncated += from.torn_tail_bytes_truncated;
    into.corrupt_frames_skipped += from.corrupt_frames_skipped;
    into.newer_version_files.extend(from.newer_version_files);
    into.unknown_files.extend(from.unknown_files);
    into.empty_segments_removed += from.empty_segments_removed;
    into.damaged_cursors += from.damaged_cursors;
    into.missing_records += from.missing_records;
    into.misplaced_segments.extend(from.misplaced_segments);
    into.corrupt_segments.extend(from.corrupt_segments);
    into.damaged_headers.extend(from.damaged_headers);
    into.skipped_entries.extend(from.skipped_entries);
}

/// A lane locked and recovered by `open`.
#[derive(Debug)]
pub(crate) struct TakenLane {
    pub(crate) n: u32,
    pub(crate) file: File,
    pub(crate) rec: recovery::RecoveredLane,
}

/// Takes the lanes at open: the first usable lane of this identity (or with none recorded)
/// becomes the own lane, the other unlocked ones holding records are adopted, and so are
/// those of another identity that the adoption rule takes (never as the own lane, their
/// identity file untouched); lanes of another identity left alone are scanned read-only
/// and reported; a lane that cannot be recovered
/// (or a stray entry) costs only itself. With no own lane yet, a new lane is created.
pub(crate) fn take_lanes(
    config: &SpoolConfig,
    fs: &dyn SpoolFs,
    root: &std::path::Path,
    report: &mut RecoveryReport,
) -> Result<(TakenLane, Vec<Arc<Lane>>), SpoolError> {
    let (existing, stray) = recovery::list_lanes(root)?;
    report.skipped_entries.extend(stray);
    let mine = config.identity();
    let rule = config.adoption();
    let mut own: Option<TakenLane> = None;
    let mut adopted = Vec::new();
    for &n in &existing {
        let dir = recovery::lane_dir(root, n);
        let ident = identity::read_identity(fs, &dir);
        if !ident.adoptable(mine, rule) {
            report.foreign_lanes.push(foreign_lane(fs, n, &dir, ident));
            continue;
        }
        let Some((file, rec)) = lock_and_recover(fs, root, n, false, report)? else {
            continue;
        };
        // Only a lane of this identity becomes the own lane (whose identity file may be
        // written): one taken under a wider adoption rule is only drained.
        if own.is_none() && ident.accepts(mine) {
            own = Some(TakenLane { n, file, rec });
        } else if rec.segs.iter().any(|s| s.records > 0) {
            adopted.push(Arc::new(Lane::new(n, dir, true, file, &rec)));
            report.adopted_lanes.push(n);
        }
        // Otherwise the lock is released here: nothing to drain.
    }
    if let Some(&last) = existing.last()
        && own.is_none()
    {
        tracing::debug!(last, "every existing lane is held or foreign: creating one");
    }
    if own.is_none() {
        let start = existing.last().map_or(0, |&n| n.saturating_add(1));
        for n in start..start.saturating_add(NEW_LANE_ATTEMPTS) {
            if let Some((file, rec)) = lock_and_recover(fs, root, n, true, report)? {
                own = Some(TakenLane { n, file, rec });
                break;
            }
        }
    }
    if !report.foreign_lanes.is_empty() {
        tracing::warn!(
            lanes = ?report.foreign_lanes,
            "spool lanes of another identity left alone (see `outlast inspect`; `outlast replay --any-identity` delivers them)"
        );
    }
    match own {
        Some(own) => Ok((own, adopted)),
        None => Err(SpoolError::Locked {
            path: root.to_path_buf(),
        }),
    }
}

/// Locks lane `n` (creating it if `create`) and recovers it. `Ok(None)`: held by another
/// process, not a lane, or unusable (logged and listed in `unusable_lanes`).
pub(crate) fn lock_and_recover(
    fs: &dyn SpoolFs,
    root: &std::path::Path,
    n: u32,
    create: bool,
    report: &mut RecoveryReport,
) -> Result<Option<(File, recovery::RecoveredLane)>, SpoolError> {
    let Some(file) = recovery::try_lock_lane(root, n, create)? else {
        return Ok(None);
    };
    let dir = recovery::lane_dir(root, n);
    let mut sub = RecoveryReport::default();
    match recovery::recover_lane(fs, &dir, &mut sub) {
        Ok(rec) => {
            merge_report(report, sub);
            Ok(Some((file, rec)))
        }
        Err(e) => {
            tracing::warn!(lane = n, error = %e, "spool lane unusable: left as it is, another lane is used");
            report.unusable_lanes.push(n);
            Ok(None)
        }
    }
}

/// A lane of another identity, scanned without locking or changing it.
pub(crate) fn foreign_lane(
    fs: &dyn SpoolFs,
    n: u32,
    dir: &std::path::Path,
    ident: identity::LaneIdentity,
) -> ForeignLane {
    let (records, bytes) = crate::inspect::read_only_totals(fs, dir, n);
    let identity = match ident {
        identity::LaneIdentity::Recorded(r) => r,
        identity::LaneIdentity::Absent => RecordedIdentity::Anonymous,
    };
    ForeignLane {
        lane: n,
        identity,
        records,
        bytes,
    }
}

impl Ledger {
    pub(crate) fn adopt_released(&self) -> Result<usize, SpoolError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SpoolError::Closed);
        }
        let root = self.config.root();
        let (existing, _) = recovery::list_lanes(root)?;
        let held: Vec<u32> = self.lanes().iter().map(|l| l.id).collect();
        let mine = self.config.identity();
        let rule = self.config.adoption();
        let (mut adopted, mut foreign) = (0, 0);
        for n in existing.into_iter().filter(|n| !held.contains(n)) {
            let dir = recovery::lane_dir(root, n);
            if !identity::read_identity(&*self.fs, &dir).adoptable(mine, rule) {
                foreign += 1;
                continue;
            }
            let mut report = RecoveryReport::default();
            let Some((file, rec)) = lock_and_recover(&*self.fs, root, n, false, &mut report)?
            else {
                continue;
            };
            if !rec.segs.iter().any(|s| s.records > 0) {
                continue; // Nothing to drain: the lock is released here.
            }
            let l = Arc::new(Lane::new(n, dir, true, file, &rec));
            // No open report tells the caller of this lane's damage: the first read does.
            lock(&l.consumer).lost.unreported += rec.corrupt;
            if let Err(e) = lock(&l.consumer).cursor.prepare(&*self.fs) {
                tracing::warn!(lane = n, error = %e, "could not prepare an adopted lane's cursor file");
            }
            let bytes: u64 = lock(&l.segs).iter().map(|s| s.len).sum();
            self.total_bytes.fetch_add(bytes, Ordering::AcqRel);
            {
                let mut c = lock(&self.counters);
                c.corrupt += report.corrupt_frames_skipped;
                c.missing += report.missing_records;
            }
            self.adopted
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::clone(&l));
            if let Err(e) = self.delete_acked(&l, &mut lock(&l.consumer)) {
                tracing::warn!(lane = n, error = %e, "could not delete acknowledged segments");
            }
            tracing::info!(
                lane = n,
                records = report.records,
                "released spool lane adopted"
            );
            adopted += 1;
        }
        lock(&self.counters).foreign_lanes = foreign;
        Ok(adopted)
    }
}
