//! The ledger: the spool's shared state. It knows what exists (the lanes held, each lane's
//! segment index and the bytes they take, the cap in force), what may be deleted (doomed
//! segments, fully acknowledged or dropped ones) and how to wake the background thread; the
//! writer, the readers and the background thread stand on it.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::adopt::{Lanes, TakenLane};
use crate::background::Wake;
use crate::config::SpoolConfig;
use crate::cursor::{self};
use crate::error::SpoolError;
use crate::fs::SpoolFs;
use crate::identity;
use crate::index::SegMeta;
use crate::lane::{Consumer, DropCause, Lane};
use crate::layout;
use crate::scan::PayloadArena;
use crate::types::{Dropped, RecoveryReport, SpoolStats};
use crate::writer::{SyncState, Writer, record_identity};

/// `now + d`, saturated: a duration too long to add (a user's `Duration::MAX`, or an
/// interval of centuries from an environment variable) means "not within a century", which
/// is never in practice.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// How often at most an append that does not fit under a cap lowered by the file system's
/// free space measures that free space again (a spool opened on a full disk thus takes
/// records again within this long of space returning): a `statvfs` is cheap, but a spool
/// at its cap meets this on every append, and a disk's free space does not change that
/// fast. Deleting segments measures it at once.
pub const CAP_REMEASURE_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks leaves plain data behind (no invariant spans
    // an unwinding point), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) evicted: Dropped,
    pub(crate) expired: Dropped,
    pub(crate) corrupt: u64,
    pub(crate) missing: u64,
    pub(crate) foreign_lanes: usize,
    /// Lanes no spool can use as they are, with their records that none will deliver, as
    /// last seen (a gauge: the same lane found again replaces its entry).
    pub(crate) stranded: BTreeMap<u32, u64>,
}

#[derive(Debug)]
pub(crate) struct Ledger {
    pub(crate) config: SpoolConfig,
    /// The cap in force: `spool_max_bytes`, lowered to fit the file system (see
    /// [`crate::DISK_FREE_SHARE_PERCENT`]): measured at open, and again when an append is
    /// refused for room and when segments are freed (see [`Ledger::remeasure_cap`]).
    pub(crate) cap: AtomicU64,
    /// When an append refused for room last measured the free space again.
    pub(crate) cap_measured: Mutex<Option<Instant>>,
    pub(crate) fs: Arc<dyn SpoolFs>,
    pub(crate) own: Arc<Lane>,
    pub(crate) adopted: RwLock<Vec<Arc<Lane>>>,
    pub(crate) writer: Mutex<Writer>,
    /// Bytes written by the writer since open (a log sequence number for group commit).
    pub(crate) written_lsn: AtomicU64,
    pub(crate) sync: Mutex<SyncState>,
    pub(crate) sync_cv: Condvar,
    /// The buffers payloads read for delivery are copied into (see [`PayloadArena`]).
    pub(crate) arena: Mutex<PayloadArena>,
    /// Wakes a committer that is gathering callers (see `Ledger::gather`).
    pub(crate) gather_cv: Condvar,
    pub(crate) total_bytes: AtomicU64,
    pub(crate) counters: Mutex<Counters>,
    pub(crate) closed: AtomicBool,
    /// A rewind found records lost to eviction while in flight (`Lost::evicted` of a lane):
    /// the next append or read reports them, whichever comes first.
    pub(crate) lost_pending: AtomicBool,
    /// Fully acknowledged segments already removed from the index and the byte count,
    /// waiting for the background thread to unlink them (unlinking a large file costs
    /// milliseconds; acks should not wait for it).
    pub(crate) doomed: Mutex<Vec<PathBuf>>,
    /// Held while unlinking doomed segments, so that `sync` returns only once deletions the
    /// background thread started are done too.
    pub(crate) deleting: Mutex<()>,
    /// Wakes the background thread (`None`: no thread; delete inline).
    pub(crate) wake: Mutex<Option<mpsc::Sender<Wake>>>,
}

impl Ledger {
    /// Builds the spool's state from the lanes taken: prepares the cursors (and records the
    /// identity of the own lane) before any record is taken, and sets the cap in force.
    pub(crate) fn new(
        config: SpoolConfig,
        fs: Arc<dyn SpoolFs>,
        lanes: Lanes,
        report: &mut RecoveryReport,
    ) -> Ledger {
        let Lanes {
            own: TakenLane { n, file, rec },
            adopted,
            stranded,
            orphan_missing,
        } = lanes;
        let own_dir = layout::lane_dir(config.root(), n);
        let own_lane = Arc::new(Lane::new(n, own_dir, false, file, &rec));
        lock(&own_lane.consumer).lost.unreported += orphan_missing;
        if report.stranded_records > 0 || !report.unusable_lanes.is_empty() {
            tracing::warn!(
                stranded_records = report.stranded_records,
                unusable_lanes = ?report.unusable_lanes,
                stranded_files = ?report.stranded_files,
                "spool records stranded: on disk, but no spool will deliver them until the lanes or files are repaired (see `outlast verify`)"
            );
        }
        own_lane.identity_pending.store(
            identity::read_identity(&*fs, &own_lane.dir) == identity::LaneIdentity::Absent,
            Ordering::Release,
        );
        let mut total: u64 = 0;
        for l in adopted.iter().chain(std::iter::once(&own_lane)) {
            total += lock(&l.segs).iter().map(|s| s.len).sum::<u64>();
            // Before any record is taken: acknowledgements then never need new space.
            let mut c = lock(&l.consumer);
            if let Err(e) = c.cursor.prepare(&*fs) {
                tracing::warn!(
                    lane = l.id,
                    error = %e,
                    "could not prepare the lane's cursor file; the lane takes no record until it can"
                );
            }
        }
        if let Err(e) = record_identity(&*fs, &own_lane, config.identity()) {
            tracing::warn!(
                lane = n,
                error = %e,
                "could not record the lane's identity; the lane takes no record until it can"
            );
        }
        let cap = cap_in_force(&config, &*fs, total, report);
        let writer = Writer::resume(&*fs, &config, &own_lane, &rec);
        Ledger {
            cap: AtomicU64::new(cap),
            cap_measured: Mutex::new(None),
            fs,
            own: own_lane,
            adopted: RwLock::new(adopted),
            writer: Mutex::new(writer),
            written_lsn: AtomicU64::new(0),
            sync: Mutex::new(SyncState::default()),
            sync_cv: Condvar::new(),
            arena: Mutex::new(PayloadArena::default()),
            gather_cv: Condvar::new(),
            total_bytes: AtomicU64::new(total),
            counters: Mutex::new(Counters {
                corrupt: report.corrupt_frames_skipped,
                missing: report.missing_records,
                foreign_lanes: report.foreign_lanes.len(),
                stranded,
                ..Counters::default()
            }),
            closed: AtomicBool::new(false),
            lost_pending: AtomicBool::new(false),
            doomed: Mutex::new(Vec::new()),
            deleting: Mutex::new(()),
            wake: Mutex::new(None),
            config,
        }
    }

    pub(crate) fn lanes(&self) -> Vec<Arc<Lane>> {
        let mut v: Vec<Arc<Lane>> = self
            .adopted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        v.push(self.own.clone());
        v
    }

    pub(crate) fn lane(&self, id: u32) -> Option<Arc<Lane>> {
        if id == self.own.id {
            return Some(self.own.clone());
        }
        self.adopted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|l| l.id == id)
            .cloned()
    }

    /// Takes a segment removed from the index off the byte total (what it held is counted
    /// by the caller: [`Consumer::drop_counts`], or nothing for a delivered segment).
    pub(crate) fn forget_segment(&self, m: &SegMeta) {
        let _ = self
            .total_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(m.len))
            });
    }

    /// Deletes a segment taken out of the index with records not acknowledged (evicted or
    /// expired), counting them as [`Consumer::drop_counts`] says; consumer lock held.
    pub(crate) fn drop_segment(
        &self,
        l: &Lane,
        c: &mut Consumer,
        m: SegMeta,
        cause: DropCause,
        dropped: &mut Dropped,
    ) -> io::Result<()> {
        c.drop_counts(&m, cause, dropped);
        l.note_counted(c);
        self.forget_segment(&m);
        match self.fs.remove_file(&m.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.remeasure_cap(false);
        Ok(())
    }

    /// Deletes sealed segments whose records are all acknowledged by the cursor as written
    /// (not merely in memory). Returns whether anything was deleted.
    ///
    /// The cursor is not fsynced first, and that is safe. A process crash keeps the cursor
    /// write (it is in the OS), so the cursor on disk covers every deleted segment. A power
    /// loss may keep the deletion and lose the cursor writes since its last fdatasync; then
    /// recovery sees an older `acked_through` and:
    /// - delivers again the records above it that are still in the remaining segments, all
    ///   of which were acknowledged after that fdatasync (the duplicate window the crate
    ///   documentation states; the deleted records themselves cannot come back);
    /// - never delivers garbage: it only delivers frames that pass their CRC, found in the
    ///   segments that are there;
    /// - picks a correct `next_seq`: the largest of the cursor's `next_seq`, its
    ///   `acked_through + 1`, and one past the newest sequence number (and first sequence
    ///   number) of every remaining segment. So a new record's number is above everything on
    ///   disk and above the recovered ack point, and is delivered. Numbers of deleted records
    ///   may be used again, which is harmless: they were acknowledged, nothing on disk or in
    ///   the new process refers to them, and numbers stay strictly increasing on disk.
    ///
    /// A cursor write that survives while the deletion is lost leaves a fully acknowledged
    /// segment, which the next open deletes.
    pub(crate) fn delete_acked(&self, l: &Lane, c: &mut Consumer) -> Result<bool, SpoolError> {
        let written = c.cursor.written().acked_through;
        let doomed = self.take_acked(l, c, written);
        if doomed.is_empty() {
            return Ok(false);
        }
        lock(&self.doomed).extend(doomed);
        let woken = lock(&self.wake)
            .as_ref()
            .is_some_and(|tx| tx.send(Wake::Delete).is_ok());
        if !woken {
            self.delete_doomed()?;
        }
        Ok(true)
    }

    /// The disk is full and the cursor could not record an ack: deletes, at once, the sealed
    /// segments whose records are all acknowledged in memory (delivered), so that the disk
    /// has room again. Safe without the cursor: after a crash, recovery finds an older ack
    /// point, and a missing head of the lane (as after an eviction); the delivered records
    /// are gone (never delivered twice from these segments), later ones acknowledged since
    /// the cursor's last write are delivered again (at least once).
    pub(crate) fn free_delivered(&self, l: &Lane, c: &mut Consumer) -> Result<(), SpoolError> {
        let acked = c.acked;
        let doomed = self.take_acked(l, c, acked);
        lock(&self.doomed).extend(doomed);
        self.delete_doomed()
    }

    /// Takes out of `l`'s index the segments whose records are all acknowledged through
    /// `through` (sealed ones, or any of an adopted lane), takes them off the byte total
    /// and drops the reader of one of them; returns their paths, to unlink. Consumer lock
    /// held.
    fn take_acked(&self, l: &Lane, c: &mut Consumer, through: u64) -> Vec<PathBuf> {
        let gone: Vec<SegMeta> = {
            let mut segs = lock(&l.segs);
            let (gone, kept) = std::mem::take(&mut *segs)
                .into_iter()
                .partition(|m| (m.sealed || l.adopted) && m.unacked(through) == 0);
            *segs = kept;
            gone
        };
        gone.into_iter()
            .map(|m| {
                if c.reader.as_ref().is_some_and(|(id, _)| *id == m.id) {
                    c.reader = None;
                }
                self.forget_segment(&m);
                m.path
            })
            .collect()
    }

    /// Unlinks the segments queued by [`Ledger::delete_acked`]. A failure is logged and
    /// returned; the file stays, fully acknowledged, and the next open deletes it.
    pub(crate) fn delete_doomed(&self) -> Result<(), SpoolError> {
        let _deleting = lock(&self.deleting);
        let doomed = std::mem::take(&mut *lock(&self.doomed));
        let freed = !doomed.is_empty();
        let mut first_err = None;
        for path in doomed {
            match self.fs.remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete an acknowledged segment");
                    first_err.get_or_insert(SpoolError::io(&path, e));
                }
            }
        }
        if freed {
            self.remeasure_cap(false);
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Removes an adopted lane with no segments left: its files, its directory, its lock.
    pub(crate) fn maybe_remove_lane(&self, l: &Arc<Lane>) {
        if !l.adopted || !lock(&l.segs).is_empty() {
            return;
        }
        {
            let mut lanes = self.adopted.write().unwrap_or_else(|p| p.into_inner());
            lanes.retain(|x| !Arc::ptr_eq(x, l));
        }
        // Queued segments of this lane must go before its directory can.
        let _ = self.delete_doomed();
        lock(&l.consumer).cursor.close();
        for name in [
            cursor::CURSOR_FILE,
            cursor::CURSOR_TMP_FILE,
            identity::IDENTITY_FILE,
            layout::LOCK_FILE,
        ] {
            let _ = self.fs.remove_file(&l.dir.join(name));
        }
        // Fails (and the directory stays) if files we do not own remain: fine.
        let _ = std::fs::remove_dir(&l.dir);
        drop(lock(&l.lock_file).take());
        tracing::info!(lane = l.id, "adopted lane drained and removed");
    }

    /// Measures the file system's free space again and sets the cap in force from it and
    /// what the spool holds now, so that a spool whose cap was lowered by a full disk takes
    /// records again once space returns (and holds back if others filled the disk
    /// meanwhile). `rate_limited`: at most once per [`CAP_REMEASURE_INTERVAL`] (an append
    /// refused for room); otherwise (segments were freed) whenever the cap is below the
    /// configured one. Returns whether it measured.
    pub(crate) fn remeasure_cap(&self, rate_limited: bool) -> bool {
        let configured = self.config.spool_max_bytes();
        let before = self.cap.load(Ordering::Acquire);
        if before >= configured {
            return false;
        }
        if rate_limited {
            let mut last = lock(&self.cap_measured);
            let now = Instant::now();
            if last.is_some_and(|t| now.saturating_duration_since(t) < CAP_REMEASURE_INTERVAL) {
                return false;
            }
            *last = Some(now);
        }
        let free = self.fs.free_bytes(self.config.root());
        let held = self.total_bytes.load(Ordering::Acquire);
        let cap = crate::config::effective_cap(configured, held, free);
        self.cap.store(cap, Ordering::Release);
        if cap != before {
            tracing::info!(
                configured,
                before,
                effective = cap,
                free_bytes = free,
                "spool cap measured again against the file system's free space"
            );
        }
        true
    }

    pub(crate) fn stats(&self) -> SpoolStats {
        let mut s = SpoolStats {
            bytes: self.total_bytes.load(Ordering::Acquire),
            spool_max_bytes: self.cap.load(Ordering::Acquire),
            configured_spool_max_bytes: self.config.spool_max_bytes(),
            ..SpoolStats::default()
        };
        let lanes = self.lanes();
        s.lanes = lanes.len();
        let mut oldest = u64::MAX;
        for l in &lanes {
            let acked = l.acked.load(Ordering::Acquire);
            let mut waiting = 0u64;
            for m in lock(&l.segs).iter() {
                let n = m.unacked(acked);
                if n > 0 {
                    waiting += n;
                    s.pending_bytes += m.framed_bytes_of(n);
                    oldest = oldest.min(m.oldest_ns);
                }
            }
            // Records a read counted as dropped already (expired ahead of the ack point, lost
            // to damage) are still indexed, but wait no more.
            s.records += waiting.saturating_sub(l.counted_ahead.load(Ordering::Acquire));
            // Records handed out whose segment was evicted or expired meanwhile are still
            // waiting for their fate (an ack: delivered; a rewind: lost, counted then).
            s.records += l.in_limbo.load(Ordering::Acquire);
        }
        if oldest != u64::MAX {
            s.oldest_created_at = Some(UNIX_EPOCH + Duration::from_nanos(oldest));
        }
        let c = lock(&self.counters);
        s.evicted = c.evicted;
        s.expired = c.expired;
        s.corrupt_skipped = c.corrupt;
        s.missing_records = c.missing;
        s.foreign_lanes = c.foreign_lanes;
        s.stranded_lanes = c.stranded.len();
        s.stranded_records = c.stranded.values().sum();
        s
    }
}

/// The cap in force at open (see [`crate::DISK_FREE_SHARE_PERCENT`]), noted in the report
/// and logged when it is below the configured one.
fn cap_in_force(
    config: &SpoolConfig,
    fs: &dyn SpoolFs,
    held: u64,
    report: &mut RecoveryReport,
) -> u64 {
    let free = fs.free_bytes(config.root());
    let cap = crate::config::effective_cap(config.spool_max_bytes(), held, free);
    report.spool_max_bytes = cap;
    report.free_bytes_at_open = free;
    if cap < config.spool_max_bytes() {
        tracing::info!(
            configured = config.spool_max_bytes(),
            effective = cap,
            free_bytes = free,
            "spool cap lowered to fit the file system's free space"
        );
    }
    cap
}
