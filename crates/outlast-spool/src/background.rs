//! The background thread above the appender and the drainer: interval fdatasyncs, the
//! syncs after a rotation, and unlinking the segments the ledger doomed; and the durability
//! points it shares with `sync` and close.

use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Durability;
use crate::error::SpoolError;
use crate::ledger::Wake;
use crate::locks::later;
use crate::writer::Appender;

/// In [`Durability::FsyncEveryAppend`] mode (which has no data fsync interval), how often
/// the background thread fsyncs the cursor: 1 s, like the default data fsync interval. Every
/// acknowledgement reaches the OS at once whatever the mode; this bounds what a power loss
/// can take back.
pub const CURSOR_FSYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The name of each spool's background thread (`FaultFs` can spare it its faults).
pub(crate) const SYNC_THREAD_NAME: &str = "outlast-spool-sync";

/// Starts the background thread; it works for `appender` (and the ledger under it) while
/// they exist. Returns its wake-up sender (for the ledger) and its handle.
pub(crate) fn start_background(
    appender: &Arc<Appender>,
) -> Option<(mpsc::Sender<Wake>, JoinHandle<()>)> {
    let interval = match appender.ledger().config().durability() {
        Durability::OsWrite { fsync_interval } => fsync_interval,
        Durability::FsyncEveryAppend => CURSOR_FSYNC_INTERVAL,
    };
    let weak: Weak<Appender> = Arc::downgrade(appender);
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
                let Some(appender) = weak.upgrade() else {
                    return;
                };
                if appender.ledger().is_closed() {
                    return;
                }
                // Deletion failures are logged inside; the files are fully acknowledged,
                // so the next open deletes them.
                let _ = appender.ledger().delete_doomed();
                if rotated && let Err(e) = after_rotation(&appender) {
                    tracing::warn!(error = %e, "spool sync after rotation failed");
                }
                if (delete || rotated) && Instant::now() < next_sync {
                    continue;
                }
                next_sync = later(Instant::now(), interval);
                if let Err(e) = periodic(&appender) {
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

/// Fsyncs everything written so far, unlinks the doomed segments, and makes every lane's
/// read progress durable (`sync` and close).
pub(crate) fn sync_all(appender: &Appender) -> Result<(), SpoolError> {
    let ledger = appender.ledger();
    let data = appender.sync_data();
    let mut first_err = data.err();
    if let Err(e) = ledger.delete_doomed() {
        first_err.get_or_insert(e);
    }
    for l in ledger.lanes() {
        if let Err(e) = l.sync_cursor(ledger.fs()) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// The background thread's work after a rotation: one group commit (the sealed segments,
/// the few records already in the new one, its header and directory entry), then the read
/// progress. Syncing only the sealed segments was tried and was not faster for the
/// appender (its bench runs were at or below these).
fn after_rotation(appender: &Appender) -> Result<(), SpoolError> {
    appender.sync_data()?;
    let ledger = appender.ledger();
    ledger.own().sync_cursor(ledger.fs())
}

fn periodic(appender: &Appender) -> Result<(), SpoolError> {
    let ledger = appender.ledger();
    let mut res = appender.sync_if_behind();
    for l in ledger.lanes() {
        if let Err(e) = l.sync_cursor(ledger.fs()) {
            res = Err(e);
        }
    }
    res
}
