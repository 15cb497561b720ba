//! The ledger: what the spool holds, and what may be deleted. It knows the lanes held (each
//! with its segment index), the bytes they take and the cap in force, the segments doomed to
//! be unlinked, the counters, and how to wake the background thread. The appender
//! (`writer`), the drainer (`reader`, `adopt`) and the background thread stand on it; it
//! imports none of them.
//!
//! Its fields are private: the rooms above change it through the small methods below.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::config::SpoolConfig;
use crate::cursor;
use crate::error::SpoolError;
use crate::fs::SpoolFs;
use crate::identity;
use crate::index::SegMeta;
use crate::lane::{Consumer, DropCause, Lane};
use crate::layout;
use crate::locks::lock;
use crate::types::{Dropped, RecoveryReport, SpoolStats};

/// How often at most an append that does not fit under a cap lowered by the file system's
/// free space measures that free space again (a spool opened on a full disk thus takes
/// records again within this long of space returning): a `statvfs` is cheap, but a spool
/// at its cap meets this on every append, and a disk's free space does not change that
/// fast. Deleting segments measures it at once.
pub const CAP_REMEASURE_INTERVAL: Duration = Duration::from_secs(1);

/// Messages to the background thread (the ledger holds its sender).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wake {
    /// Segments were queued to be unlinked: delete them.
    Delete,
    /// A segment was sealed: fdatasync it (and the new one's header and directory entry),
    /// then the lane's cursor.
    Rotated,
    /// The spool is closing.
    Stop,
}

/// What the spool counted since open (the gauges of [`SpoolStats`] that are not measured
/// from the lanes).
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
    config: SpoolConfig,
    fs: Arc<dyn SpoolFs>,
    /// The cap in force: `spool_max_bytes`, lowered to fit the file system (see
    /// [`crate::DISK_FREE_SHARE_PERCENT`]): measured at open, and again when an append is
    /// refused for room and when segments are freed (see [`Ledger::remeasure_cap`]).
    cap: AtomicU64,
    /// When an append refused for room last measured the free space again.
    cap_measured: Mutex<Option<Instant>>,
    own: Arc<Lane>,
    adopted: RwLock<Vec<Arc<Lane>>>,
    total_bytes: AtomicU64,
    counters: Mutex<Counters>,
    closed: AtomicBool,
    /// A rewind found records lost to eviction while in flight (`Lost::evicted` of a lane):
    /// the next append or read reports them, whichever comes first.
    lost_pending: AtomicBool,
    /// Segments already removed from the index and the byte count, waiting for the
    /// background thread to unlink them (unlinking a large file costs milliseconds; acks
    /// and appends should not wait for it).
    doomed: Mutex<Vec<PathBuf>>,
    /// Held while unlinking doomed segments, so that `sync` returns only once deletions the
    /// background thread started are done too.
    deleting: Mutex<()>,
    /// Wakes the background thread (`None`: no thread; delete inline).
    wake: Mutex<Option<mpsc::Sender<Wake>>>,
}

impl Ledger {
    /// The ledger of the lanes taken at open (their cursors prepared, the own lane's
    /// identity recorded, by the caller), with the cap in force measured now.
    pub(crate) fn new(
        config: SpoolConfig,
        fs: Arc<dyn SpoolFs>,
        own: Arc<Lane>,
        adopted: Vec<Arc<Lane>>,
        counters: Counters,
        report: &mut RecoveryReport,
    ) -> Ledger {
        let total: u64 = adopted
            .iter()
            .chain(std::iter::once(&own))
            .map(|l| l.held_bytes())
            .sum();
        let cap = cap_in_force(&config, &*fs, total, report);
        Ledger {
            cap: AtomicU64::new(cap),
            cap_measured: Mutex::new(None),
            fs,
            own,
            adopted: RwLock::new(adopted),
            total_bytes: AtomicU64::new(total),
            counters: Mutex::new(counters),
            closed: AtomicBool::new(false),
            lost_pending: AtomicBool::new(false),
            doomed: Mutex::new(Vec::new()),
            deleting: Mutex::new(()),
            wake: Mutex::new(None),
            config,
        }
    }

    pub(crate) fn config(&self) -> &SpoolConfig {
        &self.config
    }

    pub(crate) fn fs(&self) -> &dyn SpoolFs {
        &*self.fs
    }

    /// The lane this process appends to.
    pub(crate) fn own(&self) -> &Arc<Lane> {
        &self.own
    }

    /// Every lane held: adopted ones first (their records are drained first), then the own.
    pub(crate) fn lanes(&self) -> Vec<Arc<Lane>> {
        let mut v = self.adopted();
        v.push(self.own.clone());
        v
    }

    /// The adopted lanes held, oldest adoption first.
    pub(crate) fn adopted(&self) -> Vec<Arc<Lane>> {
        self.adopted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn lane(&self, id: u32) -> Option<Arc<Lane>> {
        if id == self.own.id() {
            return Some(self.own.clone());
        }
        self.adopted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|l| l.id() == id)
            .cloned()
    }

    /// Holds a lane adopted after open: its segments' bytes count from now on.
    pub(crate) fn add_adopted(&self, l: Arc<Lane>) {
        let bytes = l.held_bytes();
        self.total_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.adopted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(l);
    }

    /// Bytes of every segment held.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Acquire)
    }

    /// Bytes written to the own lane (a frame, a new segment's header).
    pub(crate) fn add_bytes(&self, n: u64) {
        self.total_bytes.fetch_add(n, Ordering::AcqRel);
    }

    /// The cap in force.
    pub(crate) fn cap(&self) -> u64 {
        self.cap.load(Ordering::Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the spool closed; returns whether it was already.
    pub(crate) fn close(&self) -> bool {
        self.closed.swap(true, Ordering::AcqRel)
    }

    /// A rewind or a failed read left records lost to eviction for the next append or read
    /// to report.
    pub(crate) fn note_lost_pending(&self) {
        self.lost_pending.store(true, Ordering::Release);
    }

    /// The records a rewind (or a failed read) found lost to eviction while in flight, if
    /// no read reported them yet: taken, so that they are reported once (they are in the
    /// counters already).
    pub(crate) fn take_lost_in_flight(&self) -> Dropped {
        let mut lost = Dropped::default();
        if !self.lost_pending.swap(false, Ordering::AcqRel) {
            return lost;
        }
        for l in self.lanes() {
            let d = l.consumer().take_lost_evicted();
            lost.add(d.records, d.bytes);
        }
        lost
    }

    /// Counts dropped records whose fate is known now.
    pub(crate) fn count_dropped(&self, evicted: Dropped, expired: Dropped, corrupt: u64) {
        if evicted.records == 0 && expired.records == 0 && corrupt == 0 {
            return;
        }
        let mut c = lock(&self.counters);
        c.evicted.add(evicted.records, evicted.bytes);
        c.expired.add(expired.records, expired.bytes);
        c.corrupt += corrupt;
    }

    /// Counts what the recovery of a lane adopted after open found.
    pub(crate) fn count_recovered(&self, corrupt: u64, missing: u64) {
        let mut c = lock(&self.counters);
        c.corrupt += corrupt;
        c.missing += missing;
    }

    /// The records last found stranded in lane `n`, if it was found unusable.
    pub(crate) fn stranded_in(&self, n: u32) -> Option<u64> {
        lock(&self.counters).stranded.get(&n).copied()
    }

    /// What a look at the lanes not held found: `foreign` lanes of another identity, and
    /// the lanes found `stranded` (replacing those last seen, except for lanes `held`,
    /// which keep what their recovery found).
    pub(crate) fn note_lanes_seen(
        &self,
        foreign: usize,
        held: &[u32],
        stranded: BTreeMap<u32, u64>,
    ) {
        let mut c = lock(&self.counters);
        c.foreign_lanes = foreign;
        c.stranded.retain(|n, _| held.contains(n));
        c.stranded.extend(stranded);
    }

    /// Hands the background thread's sender to the ledger.
    pub(crate) fn set_wake(&self, tx: mpsc::Sender<Wake>) {
        *lock(&self.wake) = Some(tx);
    }

    /// Takes the background thread's sender back (to stop it).
    pub(crate) fn take_wake(&self) -> Option<mpsc::Sender<Wake>> {
        lock(&self.wake).take()
    }

    /// Whether a background thread runs (it may be stopping: [`Ledger::wake`] then fails).
    pub(crate) fn has_background(&self) -> bool {
        lock(&self.wake).is_some()
    }

    /// Wakes the background thread; false if there is none (or it is gone).
    pub(crate) fn wake(&self, w: Wake) -> bool {
        lock(&self.wake)
            .as_ref()
            .is_some_and(|tx| tx.send(w).is_ok())
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
    /// expired), counting them as [`Consumer::drop_counts`] says; consumer lock held. An
    /// evicted segment (an append is waiting, on a runtime worker perhaps) is unlinked by
    /// the background thread, as acknowledged ones are; an expired one, and any without
    /// the thread, here.
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
        if cause == DropCause::Evicted && self.has_background() {
            lock(&self.doomed).push(m.path);
            // If the thread cannot be woken, the spool is closing: close unlinks it.
            self.wake(Wake::Delete);
            return Ok(());
        }
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
        let written = c.written_ack();
        let doomed = self.take_acked(l, c, written);
        if doomed.is_empty() {
            return Ok(false);
        }
        lock(&self.doomed).extend(doomed);
        if !self.wake(Wake::Delete) {
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
        let acked = c.acked();
        let doomed = self.take_acked(l, c, acked);
        lock(&self.doomed).extend(doomed);
        self.delete_doomed()
    }

    /// Takes out of `l`'s index the segments whose records are all acknowledged through
    /// `through` (see [`Lane::take_doomed`]) and off the byte total; returns their paths, to
    /// unlink. Consumer lock held.
    fn take_acked(&self, l: &Lane, c: &mut Consumer, through: u64) -> Vec<PathBuf> {
        l.take_doomed(c, through)
            .into_iter()
            .map(|m| {
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
        if !l.is_adopted() || !l.is_empty() {
            return;
        }
        {
            let mut lanes = self.adopted.write().unwrap_or_else(|p| p.into_inner());
            lanes.retain(|x| !Arc::ptr_eq(x, l));
        }
        // Queued segments of this lane must go before its directory can.
        let _ = self.delete_doomed();
        l.consumer().close_cursor();
        for name in [
            cursor::CURSOR_FILE,
            cursor::CURSOR_TMP_FILE,
            identity::IDENTITY_FILE,
            layout::LOCK_FILE,
        ] {
            let _ = self.fs.remove_file(&l.dir().join(name));
        }
        // Fails (and the directory stays) if files we do not own remain: fine.
        let _ = std::fs::remove_dir(l.dir());
        l.release_lock();
        tracing::info!(lane = l.id(), "adopted lane drained and removed");
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
            let w = l.waiting();
            s.records += w.records;
            s.pending_bytes += w.bytes;
            oldest = oldest.min(w.oldest_ns);
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
