//! Plain data types of the spool API: record ids, batches, counters, reports.

use std::path::PathBuf;
use std::time::SystemTime;

use outlast_core::Payload;

/// Identifies a stored record: the lane it lives in and its sequence number there.
///
/// Sequence numbers start at 1 and increase by one per append within a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId {
    /// The lane (`lane-<n>` directory under the root).
    pub lane: u32,
    /// The sequence number within the lane.
    pub seq: u64,
}

/// A record read back from the spool.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its id, to pass to [`Spool::ack`](crate::Spool::ack).
    pub id: RecordId,
    /// The payload as appended.
    pub payload: Payload,
}

/// What [`Spool::read_batch`](crate::Spool::read_batch) returns.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// The records, oldest first.
    pub records: Vec<Record>,
    /// Records dropped because they were older than `max_record_age` (also those handed out
    /// earlier, expired before they were acknowledged, and then rewound).
    pub expired: Dropped,
    /// Records handed out by an earlier read whose segment the drop-oldest policy evicted
    /// before they were acknowledged, and that a [`Spool::rewind`](crate::Spool::rewind)
    /// then declared undelivered: lost, counted once, here or in the next
    /// [`Appended::evicted`], whichever comes first. (Records evicted before anyone read
    /// them are counted in [`Appended::evicted`]; records acknowledged are delivered, not
    /// evicted.)
    pub evicted: Dropped,
    /// Records lost to damage met while reading (the numbers between the intact frames
    /// around a damaged region, each counted once, whatever the number of reads or rewinds
    /// that meet it; damage recovery counted already is not counted again), plus, once,
    /// the records recovery found missing in a lane
    /// ([`RecoveryReport::missing_records`]) and the damage found in a lane taken by
    /// [`Spool::adopt_released`](crate::Spool::adopt_released): a caller that counts its
    /// drops from reads (and the open's `corrupt_frames_skipped`) counts every loss once.
    pub corrupt_skipped: u64,
}

/// A count of dropped records and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Number of records.
    pub records: u64,
    /// Their framed bytes.
    pub bytes: u64,
}

impl Appended {
    /// Whether the append is as durable as the spool's mode promises (see
    /// [`Appended::sync_error`]).
    pub fn is_durable(&self) -> bool {
        self.sync_error.is_none()
    }
}

impl Dropped {
    pub(crate) fn add(&mut self, records: u64, bytes: u64) {
        self.records += records;
        self.bytes += bytes;
    }
}

/// A successful append: the record is in the spool, and a read will hand it out.
#[derive(Debug)]
pub struct Appended {
    /// The id of the new record.
    pub id: RecordId,
    /// In [`FsyncEveryAppend`](crate::Durability::FsyncEveryAppend) mode, the fdatasync
    /// that was to make the record durable failed (an fdatasync shared by concurrent
    /// appenders reports its failure to each of them): the record is written (it survives a
    /// process crash, and reads hand it out like any other), but a power loss before a
    /// later fdatasync succeeds may take it. Later syncs (the next durable append, the
    /// background interval, [`Spool::sync`](crate::Spool::sync), close) retry it. It is
    /// one record in the spool, not a failed append: the caller must not append it again.
    /// Always `None` in [`OsWrite`](crate::Durability::OsWrite) mode, which promises no
    /// fdatasync per append.
    pub sync_error: Option<std::io::Error>,
    /// Records deleted to make room ([`FullPolicy::DropOldest`](crate::FullPolicy)) that no
    /// read had handed out, plus records a rewind found lost to an earlier eviction while in
    /// flight, if no read reported them first (see [`ReadBatch::evicted`]).
    pub evicted: Dropped,
}

/// Current gauges of a spool.
#[derive(Debug, Clone, Default)]
pub struct SpoolStats {
    /// Records waiting to be delivered: stored and not yet acknowledged, less those a read
    /// counted as dropped already (lost to damage), plus those handed out whose
    /// segment was evicted or expired before they were acknowledged (their fate is the
    /// caller's ack or rewind). So, at every moment, records appended = delivered + dropped
    /// (each reason) + `records` (+ what recovery found lost before this open).
    pub records: u64,
    /// Bytes of all segment files (what the cap applies to). A segment's file is deleted
    /// only once all its records are acknowledged, so this stays above zero after a drain.
    pub bytes: u64,
    /// Framed bytes of the records not yet acknowledged: what is waiting to be delivered.
    /// Exact for whole segments; for a segment acknowledged part-way it is estimated in
    /// proportion to its records left.
    pub pending_bytes: u64,
    /// Creation time of the oldest stored record, if any.
    pub oldest_created_at: Option<SystemTime>,
    /// Lanes held: this process's own plus adopted ones.
    pub lanes: usize,
    /// The cap in force: `spool_max_bytes` as configured, lowered (at open, and whenever an
    /// append does not fit or segments are freed, see
    /// [`CAP_REMEASURE_INTERVAL`](crate::CAP_REMEASURE_INTERVAL)) to what the spool
    /// held plus [`DISK_FREE_SHARE_PERCENT`](crate::DISK_FREE_SHARE_PERCENT) of the file
    /// system's free space, so that the spool never fills the disk.
    pub spool_max_bytes: u64,
    /// The cap as configured.
    pub configured_spool_max_bytes: u64,
    /// Records evicted by the drop-oldest policy since open.
    pub evicted: Dropped,
    /// Records dropped for age since open.
    pub expired: Dropped,
    /// Records lost to damage since open (found by recovery or by reads; each once).
    pub corrupt_skipped: u64,
    /// Records found missing between segments by recovery (at open and by
    /// [`Spool::adopt_released`](crate::Spool::adopt_released)): known by their sequence
    /// numbers, not deliverable. See [`RecoveryReport::missing_records`].
    pub missing_records: u64,
    /// Lanes of another identity under the root, left alone (as last seen by open or
    /// [`Spool::adopt_released`](crate::Spool::adopt_released)).
    pub foreign_lanes: usize,
    /// Lanes of this spool's identity that no spool can use as they are (recovery failed on
    /// them: their cursor or lock is not a regular file, a file named like a segment that
    /// cannot be placed, a read error): their records stay
    /// on disk, undelivered, until an operator repairs the lane. As last seen by open or
    /// [`Spool::adopt_released`](crate::Spool::adopt_released). See
    /// [`RecoveryReport::unusable_lanes`].
    pub stranded_lanes: usize,
    /// Records on disk that no spool will deliver as things are: the unacknowledged records
    /// of the stranded lanes (see [`RecoveryReport::stranded_records`]). Never counted as
    /// delivered or dropped: they are still there, and delivered once the lane is repaired
    /// (then [`Spool::adopt_released`](crate::Spool::adopt_released) takes it).
    pub stranded_records: u64,
}

/// The identity a lane records (see [`SpoolConfig::identity`](crate::SpoolConfig::identity)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedIdentity {
    /// This identity.
    Named(String),
    /// The lane was created by a spool opened with no identity.
    Anonymous,
    /// The identity file is damaged or not a regular file: the lane is nobody's.
    Unreadable,
}

/// A lane of another identity, left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignLane {
    /// The lane number.
    pub lane: u32,
    /// Who it is for.
    pub identity: RecordedIdentity,
    /// Unacknowledged intact records in it (a read-only scan).
    pub records: u64,
    /// Bytes of its segment files.
    pub bytes: u64,
}

/// What [`Spool::open`](crate::Spool::open) found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Intact records found, all lanes.
    pub records: u64,
    /// Bytes of segment files kept.
    pub bytes: u64,
    /// Bytes cut off the end of segments because the last record was incomplete or damaged.
    pub torn_tail_bytes_truncated: u64,
    /// Records lost to damage in the middle of segments, above the ack point: the numbers
    /// missing between the intact frames around each damaged region (a region that
    /// destroyed no record counts nothing). Each counts once: a read meeting the same
    /// damage does not report it again.
    pub corrupt_frames_skipped: u64,
    /// Segment files of a newer format version: left untouched, not read, not deleted.
    pub newer_version_files: Vec<PathBuf>,
    /// Files in lane directories that are not spool files (or whose magic is wrong): left
    /// untouched.
    pub unknown_files: Vec<PathBuf>,
    /// Segment files removed because they held no record at all (e.g. zero-length, or a
    /// header torn at creation).
    pub empty_segments_removed: u64,
    /// The lane this process appends to.
    pub lane: u32,
    /// Lanes of dead processes taken over, to be drained before this process's own.
    pub adopted_lanes: Vec<u32>,
    /// The cap in force (see [`SpoolStats::spool_max_bytes`]).
    pub spool_max_bytes: u64,
    /// Free bytes of the file system when the spool opened (`None`: not measurable).
    pub free_bytes_at_open: Option<u64>,
    /// Records known to be lost, found by checking that sequence numbers run on from one
    /// segment to the next: the numbers missing between two segments (a segment deleted,
    /// emptied or renamed away, a damaged tail or header) and records whose numbers another
    /// segment already holds. Gaps before a lane's first segment are not counted (eviction,
    /// expiry and acknowledgements remove the head of a lane), nor anything acknowledged.
    /// They are counted here (and in [`SpoolStats::missing_records`]), never delivered, and
    /// reported once more to the first read of the lane, in
    /// [`ReadBatch::corrupt_skipped`]: a caller counting drops from reads must not add this
    /// field too.
    pub missing_records: u64,
    /// Segments whose header names another id than their file name, or that are out of
    /// sequence order by name (swapped or renamed files): their records are delivered in
    /// sequence order.
    pub misplaced_segments: Vec<PathBuf>,
    /// Segments whose header is damaged (a flipped bit in the magic, a bad CRC): their
    /// records are still read and delivered, so nothing is counted as lost for it.
    pub damaged_headers: Vec<PathBuf>,
    /// Files named like segments whose magic is damaged and that hold no readable record:
    /// left untouched (their records, if any, count in `missing_records` when the
    /// neighbouring segments show the gap).
    pub corrupt_segments: Vec<PathBuf>,
    /// Entries named like spool files or lanes that are not what they should be (a FIFO, a
    /// directory, a symbolic link, a device, a plain file where a lane directory belongs):
    /// skipped, never opened or followed.
    pub skipped_entries: Vec<PathBuf>,
    /// Lanes that could not be used (recovery failed on them: e.g. their cursor or lock is
    /// not a regular file); left as they are. This process took another lane. Their
    /// records are stranded (see [`RecoveryReport::stranded_records`]).
    pub unusable_lanes: Vec<u32>,
    /// Files in lane directories named like segments (`<digits>.seg`) but not as the spool
    /// names them (not 20 digits, or beyond `u64`: renamed by hand), holding records, whose
    /// header does not say which segment they are (damaged, or naming an id another file
    /// has): their lane is unusable (listed in `unusable_lanes`) until the file is renamed.
    /// (A renamed file whose header names its segment is read in its place instead, and
    /// listed in `misplaced_segments`.)
    pub stranded_files: Vec<PathBuf>,
    /// Unacknowledged records no spool will deliver as things are: those of
    /// `unusable_lanes` (a read-only count; a lane whose cursor cannot be read counts from
    /// its start). Logged at open, and shown in [`SpoolStats::stranded_records`].
    pub stranded_records: u64,
    /// Lanes of another identity: left alone, not locked, not adopted.
    pub foreign_lanes: Vec<ForeignLane>,
    /// Whether a lane's cursor file was missing its CRC or damaged (its lane is then read
    /// from the start: more duplicates, no loss).
    pub damaged_cursors: u64,
}
