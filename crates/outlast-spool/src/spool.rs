//! The spool's front door: [`Spool`], the public API over the ledger, its one appender, its
//! one drainer and the background thread (each in its own module). The spool builds each
//! exactly once, at open: "one appender, one drain" is a fact of its fields.

use std::sync::Arc;
use std::thread::JoinHandle;

use outlast_core::Payload;

use crate::adopt::{self, take_lanes};
use crate::background::{self, start_background};
use crate::config::SpoolConfig;
use crate::error::{AppendError, SpoolError};
use crate::fs::SpoolFs;
use crate::layout;
use crate::ledger::{Ledger, Wake};
use crate::reader::Drainer;
use crate::types::{Appended, ReadBatch, RecordId, RecoveryReport, SpoolStats};
use crate::writer::Appender;

/// The disk spool. See the [crate documentation](crate) for the format and guarantees.
///
/// `Send + Sync`: share it as `Arc<Spool>`; appends and reads may run concurrently.
#[derive(Debug)]
pub struct Spool {
    /// What the spool holds; the appender and the drainer stand on it.
    ledger: Arc<Ledger>,
    /// The one appender (shared with the background thread, which syncs its data, and the
    /// drainer, which asks it to seal a drained segment).
    appender: Arc<Appender>,
    /// The one drainer.
    drainer: Drainer,
    /// The background thread (its wake-up sender is the ledger's).
    background: Option<JoinHandle<()>>,
}

impl Spool {
    /// Opens (or creates) the spool at the configured root with the real file system.
    ///
    /// Creates the root if missing (0700), takes a lane (OS file lock), recovers it, adopts
    /// orphaned lanes under the same root (their owners died), and returns what recovery
    /// found.
    ///
    /// # Errors
    ///
    /// [`SpoolError::Config`] for a bad configuration, [`SpoolError::UnsafeRoot`] for a root
    /// that is a symlink, not a directory or owned by another user, [`SpoolError::Io`] if the
    /// root or a lane cannot be created or read (read-only, permission denied...),
    /// [`SpoolError::Locked`] if no lane can be had.
    pub fn open(config: SpoolConfig) -> Result<(Spool, RecoveryReport), SpoolError> {
        Spool::open_with_fs(config, Arc::new(crate::fs::StdFs))
    }

    /// Like [`Spool::open`], with every data-file operation going through `fs` (tests inject
    /// faults this way: `outlast_spool::fault::FaultFs`, with the `fault-injection` feature).
    ///
    /// # Errors
    ///
    /// As [`Spool::open`].
    pub fn open_with_fs(
        config: SpoolConfig,
        fs: Arc<dyn SpoolFs>,
    ) -> Result<(Spool, RecoveryReport), SpoolError> {
        config.validate()?;
        let root = config.root().to_path_buf();
        layout::prepare_root(&root, true)?;
        let mut report = RecoveryReport::default();
        let lanes = take_lanes(&config, &*fs, &root, &mut report)?;
        report.lane = lanes.own.n;
        let held = adopt::hold(&config, &*fs, lanes, &report);
        let ledger = Arc::new(Ledger::new(
            config,
            fs,
            held.own,
            held.adopted,
            held.counters,
            &mut report,
        ));
        let appender = Arc::new(Appender::new(Arc::clone(&ledger), &held.rec));
        // Segments left fully acked by an earlier process can go now.
        for l in ledger.lanes() {
            let mut c = l.consumer();
            if let Err(e) = ledger.delete_acked(&l, &mut c) {
                tracing::warn!(lane = l.id(), error = %e, "could not delete acknowledged segments");
            }
        }
        let background = start_background(&appender).map(|(tx, handle)| {
            ledger.set_wake(tx);
            handle
        });
        let drainer = Drainer::new(Arc::clone(&ledger), Arc::clone(&appender));
        tracing::debug!(
            lane = report.lane,
            records = report.records,
            adopted = ?report.adopted_lanes,
            "spool opened"
        );
        Ok((
            Spool {
                ledger,
                appender,
                drainer,
                background,
            },
            report,
        ))
    }

    /// Appends one record at the tail of this process's lane.
    ///
    /// In [`OsWrite`](crate::Durability::OsWrite) mode the frame has been handed to the OS
    /// with one `write(2)` when this returns (it survives `kill -9`); in
    /// [`FsyncEveryAppend`](crate::Durability::FsyncEveryAppend) mode it has also been
    /// fsynced (this blocks: from async code call it via `spawn_blocking`), unless
    /// [`Appended::sync_error`] says that fsync failed: the record is then in the spool all
    /// the same (it is read and delivered like any other), only not yet safe from a power
    /// loss.
    ///
    /// # Errors
    ///
    /// The payload comes back in the [`AppendError`], whose
    /// [`kind`](crate::AppendErrorKind) says why: `TooLarge` if the framed record exceeds
    /// `max_record_bytes`, `HeaderTooLarge` if its key and content type encode to more than
    /// the format allows, `Full` at the cap with the drop-newest policy, `Io` if writing fails
    /// (what was stored before is unharmed; a disk full is `is_disk_full()`), `Closed` after
    /// close. An error means the record is not in the spool.
    pub fn append(&self, payload: Payload) -> Result<Appended, AppendError> {
        self.appender.append(payload)
    }

    /// Up to `max_records` (and about `max_bytes` of payload, but at least one record if any)
    /// of the oldest records not yet handed out since the last [`Spool::rewind`] (or open).
    /// Records of adopted lanes come before this lane's. Records past `max_record_age` are
    /// skipped and counted in `expired`, as acknowledged; damaged frames are skipped and
    /// counted.
    ///
    /// A record found expired behind records handed out and not yet acknowledged ends the
    /// lane's part of the batch (the batch may then be empty although records remain): it
    /// is counted by a read made once those are acknowledged (or rewound), where the ack
    /// point passes it, so that a process that stops first leaves it to the next, which
    /// counts it once. A reader that reads ahead of its acknowledgements reads again after
    /// them before it takes an empty batch for an empty spool.
    ///
    /// # Errors
    ///
    /// [`SpoolError::Io`] if a segment cannot be read, [`SpoolError::Closed`] after close.
    pub fn read_batch(&self, max_records: usize, max_bytes: u64) -> Result<ReadBatch, SpoolError> {
        self.drainer.read_batch(max_records, max_bytes)
    }

    /// Acknowledges every record of `id.lane` up to and including `id` (delivered, or
    /// dropped on purpose). Segments whose records are all acknowledged leave the index (and
    /// the byte count) at once; the background thread unlinks their files right after (as
    /// do [`Spool::sync`] and close). Every ack
    /// writes the lane's cursor with one `pwrite` (no fsync: it survives `kill -9`); the
    /// cursor is fdatasynced by the background thread on its interval, on rotation, on
    /// [`Spool::sync`] and on close. See the crate documentation for the duplicate window.
    /// Acks for a lane no longer held (an adopted lane fully drained) are ignored.
    ///
    /// # Errors
    ///
    /// [`SpoolError::UnknownRecord`] if `id` is newer than anything in its lane,
    /// [`SpoolError::Io`] if the cursor cannot be written (the ack still counts in memory,
    /// and is written again by the next ack, sync or close) or, without a background
    /// thread, a segment cannot be deleted (it stays; the next open deletes it),
    /// [`SpoolError::Closed`] after close.
    pub fn ack(&self, id: RecordId) -> Result<(), SpoolError> {
        self.drainer.ack(id)
    }

    /// Forgets what was handed out but not acknowledged: the next [`Spool::read_batch`]
    /// starts again at the oldest unacknowledged record (after a failed delivery).
    pub fn rewind(&self) {
        self.drainer.rewind();
    }

    /// Ends the reading, for a reader that stops for good (before [`Spool::close`]): forgets
    /// what was handed out but not acknowledged, as [`Spool::rewind`] does, and returns, as a
    /// batch with no records, every loss that no read or append has reported yet: records
    /// handed out whose segment the drop-oldest policy evicted, or that expired, before they
    /// were acknowledged (`evicted`, `expired`), and records recovery or an adoption found
    /// lost (`corrupt_skipped`). A caller that counts its drops from reads and appends counts
    /// these last; each is reported once, here or by a read or append, never by both. (Close
    /// counts such records in [`Spool::stats`] only.)
    pub fn settle(&self) -> ReadBatch {
        self.drainer.settle()
    }

    /// Takes over lanes of this spool's identity that were held by another process when this
    /// spool opened (or were created since) and whose lock has been released: their records
    /// are drained before this process's own. Returns the number of lanes adopted.
    ///
    /// Call it now and then (the client's drain task does, while idle and before a flush).
    ///
    /// # Errors
    ///
    /// [`SpoolError::Io`] when the spool's directory cannot be read (a lane that cannot be
    /// recovered is skipped and logged, not an error).
    /// Records found missing, damaged frames and foreign lanes seen by this call are added
    /// to [`Spool::stats`] (`missing_records`, `corrupt_skipped`, `foreign_lanes`).
    ///
    /// [`SpoolError::Closed`] after close.
    pub fn adopt_released(&self) -> Result<usize, SpoolError> {
        self.drainer.adopt_released()
    }

    /// Fsyncs everything written so far, persists the read progress of every lane, and
    /// finishes deleting fully acknowledged segments.
    ///
    /// # Errors
    ///
    /// [`SpoolError::Io`] if an fsync, a cursor write or a deletion fails.
    pub fn sync(&self) -> Result<(), SpoolError> {
        background::sync_all(&self.appender)
    }

    /// Current gauges.
    pub fn stats(&self) -> SpoolStats {
        self.ledger.stats()
    }

    /// The lane this process appends to.
    pub fn lane(&self) -> u32 {
        self.ledger.own().id()
    }

    /// The configuration the spool was opened with.
    pub fn config(&self) -> &SpoolConfig {
        self.ledger.config()
    }

    /// Syncs data and read progress and releases the lane locks. Also done (best effort) on
    /// drop.
    ///
    /// # Errors
    ///
    /// [`SpoolError::Io`] if the final fsync or cursor write fails; the locks are released
    /// anyway.
    pub fn close(mut self) -> Result<(), SpoolError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), SpoolError> {
        let wake = self.ledger.take_wake();
        if let Some(handle) = self.background.take() {
            if let Some(tx) = wake {
                let _ = tx.send(Wake::Stop);
            }
            // The thread never panics by design; if it did, there is nothing to recover.
            let _ = handle.join();
        }
        if self.ledger.close() {
            return Ok(());
        }
        self.drainer.settle_at_close();
        let result = background::sync_all(&self.appender);
        self.appender.close();
        for l in self.ledger.lanes() {
            l.consumer().close();
            l.release_lock();
        }
        result
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "spool close on drop failed");
        }
    }
}
