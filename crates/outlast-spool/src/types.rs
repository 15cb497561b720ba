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
    /// Records dropped because they were older than `max_record_age`.
    pub expired: Dropped,
    /// Damaged frames skipped while reading (each skipped region counts once).
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

impl Dropped {
    pub(crate) fn add(&mut self, records: u64, bytes: u64) {
        self.records += records;
        self.bytes += bytes;
    }
}

/// A successful append.
#[derive(Debug)]
pub struct Appended {
    /// The id of the new record.
    pub id: RecordId,
    /// Records deleted to make room ([`FullPolicy::DropOldest`](crate::FullPolicy)).
    pub evicted: Dropped,
}

/// Current gauges of a spool.
#[derive(Debug, Clone, Default)]
pub struct SpoolStats {
    /// Records stored and not yet acknowledged (approximate while records are being acked in
    /// the middle of a segment: counted from per-segment indexes).
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
    /// The cap in force: `max_total_bytes` as configured, lowered at open to what the spool
    /// held plus [`DISK_FREE_SHARE_PERCENT`](crate::DISK_FREE_SHARE_PERCENT) of the file
    /// system's free space, so that the spool never fills the disk.
    pub max_total_bytes: u64,
    /// The cap as configured.
    pub configured_max_total_bytes: u64,
    /// Records evicted by the drop-oldest policy since open.
    pub evicted: Dropped,
    /// Records dropped for age since open.
    pub expired: Dropped,
    /// Damaged frames skipped since open (recovery and reads).
    pub corrupt_skipped: u64,
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
    /// Damaged regions skipped in the middle of segments (each counts once).
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
    /// The cap in force (see [`SpoolStats::max_total_bytes`]).
    pub max_total_bytes: u64,
    /// Free bytes of the file system when the spool opened (`None`: not measurable).
    pub free_bytes_at_open: Option<u64>,
    /// Whether a lane's cursor file was missing its CRC or damaged (its lane is then read
    /// from the start: more duplicates, no loss).
    pub damaged_cursors: u64,
}
