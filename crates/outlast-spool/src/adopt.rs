//! Taking lanes: at open (the own lane, orphaned lanes of the same identity, lanes of
//! another identity reported and left alone) and later ([`Spool::adopt_released`]).
//!
//! [`Spool::adopt_released`]: crate::Spool::adopt_released

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;

use crate::config::SpoolConfig;
use crate::error::SpoolError;
use crate::fs::SpoolFs;
use crate::identity;
use crate::lane::Lane;
use crate::layout;
use crate::ledger::{Counters, Ledger};
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
    into.stranded_files.extend(from.stranded_files);
    into.stranded_records += from.stranded_records;
}

/// Whether lane `n`'s lock is there but is not a regular file (a directory, a FIFO, a
/// link): no process can lock the lane, so none will drain it.
fn lock_unusable(root: &std::path::Path, n: u32) -> bool {
    let path = layout::lane_dir(root, n).join(layout::LOCK_FILE);
    std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file())
}

/// What [`lock_and_recover`] found.
#[derive(Debug)]
pub(crate) enum Taken {
    /// Locked and recovered.
    Lane(File, recovery::RecoveredLane),
    /// Held by another process, or not a lane: not ours to count.
    Busy,
    /// No process can use it as it is (its cursor or lock is not a regular file, recovery
    /// failed): its records are stranded. The error, for the log.
    Unusable(String),
}

/// The lanes `open` took, and what it found in those it did not.
#[derive(Debug)]
pub(crate) struct Lanes {
    pub(crate) own: TakenLane,
    pub(crate) adopted: Vec<Arc<Lane>>,
    /// Lanes no spool can use, with their stranded records.
    pub(crate) stranded: BTreeMap<u32, u64>,
    /// Records found missing in lanes with nothing left to drain (their lock released):
    /// counted in the report, told to the own lane's first read.
    pub(crate) orphan_missing: u64,
}

/// A lane locked and recovered by `open`.
#[derive(Debug)]
pub(crate) struct TakenLane {
    pub(crate) n: u32,
    pub(crate) file: File,
    pub(crate) rec: recovery::RecoveredLane,
}

/// The lanes taken at open, held: the own lane's and the adopted ones' cursors prepared
/// before any record is taken, the own lane's identity recorded, and what recovery counted.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) own: Arc<Lane>,
    pub(crate) adopted: Vec<Arc<Lane>>,
    /// The own lane as recovery left it (where the appender resumes).
    pub(crate) rec: recovery::RecoveredLane,
    pub(crate) counters: Counters,
}

/// Holds the lanes `open` took (see [`Held`]).
pub(crate) fn hold(
    config: &SpoolConfig,
    fs: &dyn SpoolFs,
    lanes: Lanes,
    report: &RecoveryReport,
) -> Held {
    let Lanes {
        own: TakenLane { n, file, rec },
        adopted,
        stranded,
        orphan_missing,
    } = lanes;
    let own_dir = layout::lane_dir(config.root(), n);
    let own = Arc::new(Lane::new(n, own_dir, false, file, &rec));
    own.consumer().report_later(orphan_missing);
    if report.stranded_records > 0 || !report.unusable_lanes.is_empty() {
        tracing::warn!(
            stranded_records = report.stranded_records,
            unusable_lanes = ?report.unusable_lanes,
            stranded_files = ?report.stranded_files,
            "spool records stranded: on disk, but no spool will deliver them until the lanes or files are repaired (see `outlast verify`)"
        );
    }
    own.note_identity_absent(
        identity::read_identity(fs, own.dir()) == identity::LaneIdentity::Absent,
    );
    for l in adopted.iter().chain(std::iter::once(&own)) {
        // Before any record is taken: acknowledgements then never need new space.
        if let Err(e) = l.consumer().prepare_cursor(fs) {
            tracing::warn!(
                lane = l.id(),
                error = %e,
                "could not prepare the lane's cursor file; the lane takes no record until it can"
            );
        }
    }
    if let Err(e) = own.record_identity(fs, config.identity()) {
        tracing::warn!(
            lane = n,
            error = %e,
            "could not record the lane's identity; the lane takes no record until it can"
        );
    }
    let counters = Counters {
        corrupt: report.corrupt_frames_skipped,
        missing: report.missing_records,
        foreign_lanes: report.foreign_lanes.len(),
        stranded,
        ..Counters::default()
    };
    Held {
        own,
        adopted,
        rec,
        counters,
    }
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
) -> Result<Lanes, SpoolError> {
    let (existing, stray) = layout::list_lanes(root)?;
    report.skipped_entries.extend(stray);
    let mine = config.identity();
    let rule = config.adoption();
    let mut own: Option<TakenLane> = None;
    let mut adopted = Vec::new();
    let mut stranded = BTreeMap::new();
    let mut orphan_missing = 0;
    for &n in &existing {
        let dir = layout::lane_dir(root, n);
        let ident = identity::read_identity(fs, &dir);
        if !ident.adoptable(mine, rule) {
            report.foreign_lanes.push(foreign_lane(fs, n, &dir, ident));
            continue;
        }
        let (file, rec) = match lock_and_recover(fs, root, n, false, report)? {
            Taken::Lane(file, rec) => (file, rec),
            Taken::Busy => continue,
            Taken::Unusable(error) => {
                let records = stranded_lane(fs, root, n, report);
                tracing::warn!(
                    lane = n,
                    records,
                    error,
                    "spool lane unusable: left as it is, its records stranded until it is repaired (see `outlast verify`); another lane is used"
                );
                stranded.insert(n, records);
                continue;
            }
        };
        // Only a lane of this identity becomes the own lane (whose identity file may be
        // written): one taken under a wider adoption rule is only drained.
        if own.is_none() && ident.accepts(mine) {
            own = Some(TakenLane { n, file, rec });
        } else if rec.segs.iter().any(|s| s.records > 0) {
            adopted.push(Arc::new(Lane::new(n, dir, true, file, &rec)));
            report.adopted_lanes.push(n);
        } else {
            // The lock is released here: nothing to drain. Records recovery found missing
            // in it (counted in the report) are told to the own lane's first read.
            orphan_missing += rec.missing;
        }
    }
    if let Some(&last) = existing.last()
        && own.is_none()
    {
        tracing::debug!(last, "every existing lane is held or foreign: creating one");
    }
    if own.is_none() {
        let start = existing.last().map_or(0, |&n| n.saturating_add(1));
        for n in start..start.saturating_add(NEW_LANE_ATTEMPTS) {
            match lock_and_recover(fs, root, n, true, report)? {
                Taken::Lane(file, rec) => {
                    own = Some(TakenLane { n, file, rec });
                    break;
                }
                Taken::Busy => {}
                Taken::Unusable(error) => {
                    let records = stranded_lane(fs, root, n, report);
                    tracing::warn!(
                        lane = n,
                        records,
                        error,
                        "spool lane unusable: left as it is, its records stranded"
                    );
                    stranded.insert(n, records);
                }
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
        Some(own) => Ok(Lanes {
            own,
            adopted,
            stranded,
            orphan_missing,
        }),
        None => Err(SpoolError::Locked {
            path: root.to_path_buf(),
        }),
    }
}

/// Counts an unusable lane's records as stranded in `report` (a read-only scan) and lists
/// the lane in `unusable_lanes`; returns the count.
pub(crate) fn stranded_lane(
    fs: &dyn SpoolFs,
    root: &std::path::Path,
    n: u32,
    report: &mut RecoveryReport,
) -> u64 {
    let (records, files) = crate::inspect::read_only_stranded(fs, &layout::lane_dir(root, n), n);
    report.unusable_lanes.push(n);
    report.stranded_files.extend(files);
    report.stranded_records += records;
    records
}

/// Locks lane `n` (creating it if `create`) and recovers it. A lane no process can use is
/// [`Taken::Unusable`], for the caller to count ([`stranded_lane`]) and log.
pub(crate) fn lock_and_recover(
    fs: &dyn SpoolFs,
    root: &std::path::Path,
    n: u32,
    create: bool,
    report: &mut RecoveryReport,
) -> Result<Taken, SpoolError> {
    let Some(file) = layout::try_lock_lane(root, n, create)? else {
        if lock_unusable(root, n) {
            return Ok(Taken::Unusable("its lock is not a regular file".to_owned()));
        }
        return Ok(Taken::Busy);
    };
    let dir = layout::lane_dir(root, n);
    let mut sub = RecoveryReport::default();
    match recovery::recover_lane(fs, &dir, &mut sub) {
        Ok(rec) => {
            merge_report(report, sub);
            Ok(Taken::Lane(file, rec))
        }
        // The lock is released (dropped) here: another process may try, and fail, too.
        Err(e) => Ok(Taken::Unusable(e.to_string())),
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

/// Takes over lanes of this spool's identity whose lock was released since open (see
/// [`crate::Spool::adopt_released`]); returns how many. The drainer's.
pub(crate) fn adopt_released(ledger: &Ledger) -> Result<usize, SpoolError> {
    if ledger.is_closed() {
        return Err(SpoolError::Closed);
    }
    let root = ledger.config().root();
    let (existing, _) = layout::list_lanes(root)?;
    let held: Vec<u32> = ledger.lanes().iter().map(|l| l.id()).collect();
    let mine = ledger.config().identity();
    let rule = ledger.config().adoption();
    let (mut adopted, mut foreign) = (0, 0);
    // What this look finds stranded in the lanes not held, replacing what the last one
    // found (a lane repaired meanwhile is no longer stranded).
    let mut stranded = std::collections::BTreeMap::new();
    for n in existing.into_iter().filter(|n| !held.contains(n)) {
        let dir = layout::lane_dir(root, n);
        if !identity::read_identity(ledger.fs(), &dir).adoptable(mine, rule) {
            foreign += 1;
            continue;
        }
        let mut report = RecoveryReport::default();
        let (file, rec) = match lock_and_recover(ledger.fs(), root, n, false, &mut report)? {
            Taken::Lane(file, rec) => (file, rec),
            Taken::Busy => {
                // Held by a live process: whatever it found is its own to count. Known
                // stranded files of a lane held since stay as last seen.
                if let Some(s) = ledger.stranded_in(n) {
                    stranded.insert(n, s);
                }
                continue;
            }
            Taken::Unusable(error) => {
                let records = stranded_lane(ledger.fs(), root, n, &mut report);
                let known = ledger.stranded_in(n);
                if known != Some(records) {
                    tracing::warn!(
                        lane = n,
                        records,
                        error,
                        "spool lane unusable: left as it is, its records stranded until it is repaired (see `outlast verify`)"
                    );
                }
                stranded.insert(n, records);
                continue;
            }
        };
        if !rec.segs.iter().any(|s| s.records > 0) {
            // Nothing to drain: the lock is released here. Records recovery found
            // missing are told to the next read of the own lane (a reader counts them).
            if rec.missing > 0 {
                ledger.count_recovered(0, rec.missing);
                ledger.own().consumer().report_later(rec.missing);
            }
            continue;
        }
        let l = Arc::new(Lane::new(n, dir, true, file, &rec));
        // No open report tells the caller of this lane's damage: the first read does.
        l.consumer().report_later(rec.corrupt);
        if let Err(e) = l.consumer().prepare_cursor(ledger.fs()) {
            tracing::warn!(lane = n, error = %e, "could not prepare an adopted lane's cursor file");
        }
        ledger.count_recovered(report.corrupt_frames_skipped, report.missing_records);
        ledger.add_adopted(Arc::clone(&l));
        if let Err(e) = ledger.delete_acked(&l, &mut l.consumer()) {
            tracing::warn!(lane = n, error = %e, "could not delete acknowledged segments");
        }
        tracing::info!(
            lane = n,
            records = report.records,
            "released spool lane adopted"
        );
        adopted += 1;
    }
    // The lanes held keep what their recovery found.
    ledger.note_lanes_seen(foreign, &held, stranded);
    Ok(adopted)
}
