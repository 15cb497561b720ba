//! Recovery of a lane: scanning its segments, placing them in sequence order, settling the
//! cursor, truncating torn tails and counting what was lost. Directory layout and locks are
//! in `layout`; the in-memory index it builds is `index::SegMeta`.

use std::io;
use std::path::{Path, PathBuf};

use crate::cursor::{CURSOR_FILE, read_cursor, settle_cursor};
use crate::error::SpoolError;
use crate::format::{self, CursorChoice};
use crate::fs::{SpoolFs, write_all_at};
use crate::index::SegMeta;
use crate::layout::list_entries;
use crate::segfile::{SegKind, SegScan, scan_segment};
use crate::types::RecoveryReport;

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
    if scan.tail_bytes > 0 || scan.spare_bytes > 0 {
        // A torn tail is counted; zeros written ahead of the records (a durable appender's
        // unused room) are not damage and go without a word.
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
