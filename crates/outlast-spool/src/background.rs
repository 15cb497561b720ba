//! The background thread above the writer and the readers: interval fdatasyncs, the syncs
//! after a rotation, and unlinking acknowledged segments; and the durability points it
//! shares with `sync` and close.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Durability;
use crate::error::SpoolError;
use crate::ledger::{Ledger, later, lock};

/// In [`Durability::FsyncEveryAppend`] mode (which has no data fsync interval), how often
/// the background thread fsyncs the cursor: 1 s, like the default data fsync interval. Every
/// acknowledgement reaches the OS at once whatever the mode; this bounds what a power loss
/// can take back.
pub const CURSOR_FSYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Messages to the background thread.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wake {
    /// Segments were queued in `Ledger::doomed`: delete them.
    Delete,
    /// A segment was sealed: fdatasync it (and the new one's header and directory entry),
    /// then the lane's cursor.
    Rotated,
    /// The spool is closing.
    Stop,
}

/// The name of each spool's background thread (`FaultFs` can spare it its faults).
pub(crate) const SYNC_THREAD_NAME: &str = "outlast-spool-sync";

pub(crate) fn start_background(
    inner: &Arc<Ledger>,
) -> Option<(mpsc::Sender<Wake>, JoinHandle<()>)> {
    let interval = match inner.config.durability() {
        Durability::OsWrite { fsync_interval } => fsync_interval,
        Durability::FsyncEveryAppend => CURSOR_FSYNC_INTERVAL,
    };
    let weak: Weak<Ledger> = Arc::downgrade(inner);
    let (tx, rx) = mpsc::channel::<Wake>();
    let spawned = std::thread::Builder::new()
        .name(SYNC_THREAD_NAME.into())
        .spawn(move || {
            let mut next_sync = later(Instant::now(), interval);
            loop {
                let wait = next_sync.saturating_duration_since(Instant::now());
                let (mut delete, mut rotated) = match rx.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => (false, false),
                    Ok(Wake::Delete) => (true, false),
                    Ok(Wake::Rotated) => (false, true),
                    Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                };
                // What queued up meanwhile (rotations come faster than commits when appends
                // outrun the disk) is done by this one pass.
                loop {
                    match rx.try_recv() {
                        Ok(Wake::Delete) => delete = true,
                        Ok(Wake::Rotated) => rotated = true,
                        Ok(Wake::Stop) | Err(TryRecvError::Disconnected) => return,
                        Err(TryRecvError::Empty) => break,
                    }
                }
                let Some(inner) = weak.upgrade() else { return };
                if inner.closed.load(Ordering::Acquire) {
                    return;
                }
                // Deletion failures are logged inside; the files are fully acknowledged,
                // so the next open deletes them.
                let _ = inner.delete_doomed();
                if rotated && let Err(e) = inner.after_rotation() {
                    tracing::warn!(error = %e, "spool sync after rotation failed");
                }
                if (delete || rotated) && Instant::now() < next_sync {
                    continue;
                }
                next_sync = later(Instant::now(), interval);
                if let Err(e) = inner.periodic() {
                    tracing::warn!(error = %e, "spool background sync failed");
                }
            }
        });
    match spawned {
        Ok(h) => Some((tx, h)),
        Err(e) => {
            // Without the thread, data is still fsynced on rotation, sync and close.
            tracing::warn!(error = %e, "could not start the spool sync thread");
            None
        }
    }
}

impl Ledger {
    pub(crate) fn sync_all(&self) -> Result<(), SpoolError> {
        let data = self.sync_data();
        let mut first_err = data.err();
        if let Err(e) = self.delete_doomed() {
            first_err.get_or_insert(e);
        }
        for l in self.lanes() {
            if let Err(e) = l.sync_cursor(&*self.fs) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// The background thread's work after a rotation: one group commit (the sealed
    /// segments, the few records already in the new one, its header and directory entry),
    /// then the read progress. Syncing only the sealed segments was tried and was not
    /// faster for the appender (its bench runs were at or below these).
    pub(crate) fn after_rotation(&self) -> Result<(), SpoolError> {
        self.sync_data()?;
        self.own.sync_cursor(&*self.fs)
    }

    pub(crate) fn periodic(&self) -> Result<(), SpoolError> {
        let mut res = Ok(());
        if self.written_lsn.load(Ordering::Acquire) > lock(&self.sync).synced_lsn {
            res = self.sync_data();
        }
        for l in self.lanes() {
            if let Err(e) = l.sync_cursor(&*self.fs) {
                res = Err(e);
            }
        }
        res
    }
}
