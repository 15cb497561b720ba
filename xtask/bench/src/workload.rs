//! What the spool rows ask of either side (`outlast_on`, `outlast_off`) and of the
//! references: how an append is made durable, the read batch sizes, and what a read + ack run
//! measured.

use std::time::Duration;

use crate::measure::MIB;

/// How a spool append is made durable (mirrors the spool's `Durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendMode {
    /// `write(2)` per append, periodic fsync.
    OsWrite,
    /// fsync before the append returns (group commit).
    FsyncEveryAppend,
}

/// What a spool read + ack run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadAck {
    /// Records read.
    pub(crate) records: u64,
    /// Payload bytes read.
    pub(crate) bytes: u64,
    /// Time of the whole read + ack loop.
    pub(crate) elapsed: Duration,
    /// Part of it spent inside `read_batch` (the rest is mostly `ack`).
    pub(crate) in_read: Duration,
}

/// Records per read batch on every side that reads in batches (spool, SQLite).
pub(crate) const READ_BATCH_RECORDS: usize = 512;
/// Bytes per read batch (about); 4 MiB amortises per-batch costs without large buffers.
pub(crate) const READ_BATCH_BYTES: u64 = 4 * MIB;
